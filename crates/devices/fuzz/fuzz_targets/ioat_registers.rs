//! Drives an I/OAT function with arbitrary configuration and BAR accesses, over test memory
//! whose first page holds fuzz-chosen descriptor bytes: the first 256 input bytes fill it, the
//! rest is a list of 12-byte accesses (kind, length, 2-byte offset, 8-byte value). Every
//! access must be answered or refused without a panic, whatever state the channel reaches.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use uiommu_core::{Iova, Prot};
use uiommu_devices::ioat::{Ioat, IoatConfig, MMIO_BAR};
use uiommu_devices::pci::PciFunction;
use uiommu_devices::{DmaSpace, MemoryDma, RecordingSink};

fuzz_target!(|data: &[u8]| {
    if data.len() < 256 {
        return;
    }
    let (memory, accesses) = data.split_at(256);
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
    let Ok(function) = PciFunction::new(mem, Arc::new(RecordingSink::new()), |ports| {
        Ioat::new(config, ports)
    }) else {
        return;
    };
    for access in accesses.chunks_exact(12) {
        let len = [1usize, 2, 4, 8][usize::from(access[1] & 3)];
        let offset = u64::from(u16::from_le_bytes([access[2], access[3]]));
        let value = &access[4..4 + len];
        let mut buf = [0u8; 8];
        let _ = match access[0] % 4 {
            0 => function.config_write(offset & 0xfff, value),
            1 => function.config_read(offset & 0xfff, &mut buf[..len]),
            2 => function.bar_write(MMIO_BAR, offset & 0x3fff, value),
            _ => function.bar_read(MMIO_BAR, offset & 0x3fff, &mut buf[..len]),
        };
    }
});
