//! Drives an emulated function (I/OAT or DSA, by the first byte) with arbitrary configuration
//! and BAR accesses, over test memory whose first page holds fuzz-chosen descriptor bytes: the
//! next 256 input bytes fill it, the rest is a list of 12-byte accesses (kind, length, 2-byte
//! offset, 8-byte value); a DSA portal store submits one of the four 64-byte descriptors of
//! that page. Every access must be answered or refused without a panic, whatever state the
//! device reaches.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use uiommu_core::{Iova, Prot};
use uiommu_devices::dsa::Dsa;
use uiommu_devices::ioat::{Ioat, IoatConfig};
use uiommu_devices::pci::PciFunction;
use uiommu_devices::{DmaSpace, MemoryDma, RecordingSink};

fuzz_target!(|data: &[u8]| {
    let [model, rest @ ..] = data else {
        return;
    };
    if rest.len() < 256 {
        return;
    }
    let (memory, accesses) = rest.split_at(256);
    let mem = Arc::new(MemoryDma::new());
    mem.map(0, 0x4000, Prot::READ_WRITE);
    mem.map(0x4000, 0x1000, Prot::READ);
    if mem.write(Iova(0), memory).is_err() {
        return;
    }
    // Everything inline (no worker outliving the input) and small transfers, so a doorbell
    // of 65535 descriptors stays cheap.
    let config = IoatConfig {
        xfercap: 8,
        inline_budget: u64::MAX,
    };
    let sink = Arc::new(RecordingSink::new());
    let built = if model & 1 == 0 {
        PciFunction::new(mem, sink, |ports| Ioat::new(config, ports))
    } else {
        PciFunction::new(mem, sink, Dsa::new)
    };
    let Ok(function) = built else {
        return;
    };
    for access in accesses.chunks_exact(12) {
        let len = [1usize, 2, 4, 8][usize::from(access[1] & 3)];
        let offset = u64::from(u16::from_le_bytes([access[2], access[3]]));
        let value = &access[4..4 + len];
        let bar = (access[1] >> 2) & 2;
        let mut buf = [0u8; 8];
        let _ = match access[0] % 5 {
            0 => function.config_write(offset & 0xfff, value),
            1 => function.config_read(offset & 0xfff, &mut buf[..len]),
            2 => function.bar_write(bar, offset & 0x3fff, value),
            3 => function.bar_read(bar, offset & 0x3fff, &mut buf[..len]),
            _ => {
                let at = usize::from(access[2] & 3) * 64;
                function.bar_write(2, offset & 0x3fc0, &memory[at..at + 64])
            }
        };
    }
});
