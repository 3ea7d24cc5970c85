//! The I/OAT model's registers and state machine, driven as Linux 7.3's VFIO selftest ioat
//! driver drives it, over test memory.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use uiommu_core::{Iova, Prot};
use uiommu_devices::ioat::{regs::*, IoatConfig};
use uiommu_devices::pci::regs as pci;
use uiommu_devices::{DmaSpace, MemoryDma};

const DESC: u64 = 0x10_0000;
const SRC: u64 = 0x20_0000;
const DST: u64 = 0x30_0000;
const CMP: u64 = 0x50_0000;

fn rig_with(config: IoatConfig) -> (Rig, Arc<MemoryDma>) {
    let mem = Arc::new(MemoryDma::new());
    mem.map(DESC, 0x1000, Prot::READ_WRITE);
    mem.map(SRC, 0x10_0000, Prot::READ_WRITE);
    mem.map(DST, 0x10_0000, Prot::READ_WRITE);
    mem.map(CMP, 0x1000, Prot::READ_WRITE);
    (Rig::new(mem.clone(), config), mem)
}

fn rig() -> (Rig, Arc<MemoryDma>) {
    rig_with(IoatConfig::default())
}

fn fill(mem: &MemoryDma, at: u64, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    mem.write(Iova(at), &data).unwrap();
    data
}

fn read(mem: &MemoryDma, at: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read(Iova(at), &mut out).unwrap();
    out
}

#[test]
fn power_on_and_reset_state_is_what_the_selftest_driver_expects() {
    let (rig, _) = rig();
    rig.cfg_write(pci::COMMAND, 2, u64::from(pci::COMMAND_MEMORY));
    assert_eq!(rig.read(CHANCNT, 1), 1);
    assert_eq!(rig.read(XFERCAP, 1), 16);
    assert_eq!(
        rig.read(CBVER, 1),
        0x33,
        "the probe accepts 0x32 and 0x33 only"
    );
    assert_eq!(rig.status(), 3, "HALTED at power-on");
    assert_eq!(rig.read(CHANERR, 4), 0);
    assert_eq!(rig.read(ATTNSTATUS, 4), 0);
    assert_eq!(rig.read(CHANCMD, 1), 0);
    // Dirty some state, then reset: the reset bit reads 0 at once and the channel is HALTED.
    rig.write(CHANCMP, 8, CMP);
    rig.write(CHAINADDR, 8, DESC);
    rig.write(CHANERR, 4, 0xffff_ffff);
    rig.reset();
    assert_eq!(
        rig.read(CHANSTS, 8),
        3,
        "no completed descriptor after reset"
    );
    assert_eq!(rig.read(DMACOUNT, 2), 0);
    assert_eq!(
        rig.read(CHANCMP, 8),
        CMP,
        "the completion address survives a channel reset"
    );
    // 32-bit halves of a 64-bit register.
    rig.write(CHANCMP + 4, 4, 0x1);
    assert_eq!(rig.read(CHANCMP, 8), (1 << 32) | CMP);
    assert_eq!(rig.read(CHANCMP + 4, 4), 1);
}

#[test]
fn selftest_memcpy_runs_count_copies_of_a_self_linked_descriptor() {
    let (rig, mem) = rig();
    rig.init();
    let data = fill(&mem, SRC, 0x1800, 0x5a);
    mem.write(
        Iova(DESC),
        bytes(&copy_descriptor(SRC, DST, 0x1800, DESC, 0)),
    )
    .unwrap();
    rig.start(DESC, 3);
    assert_ne!(
        rig.status(),
        3,
        "CHANSTS right after the doorbell must not be HALTED"
    );
    rig.wait().unwrap();
    assert_eq!(read(&mem, DST, 0x1800), data);
    assert_eq!(
        rig.read(CHANSTS, 8),
        DESC | 2,
        "SUSPENDED, and the completed address kept"
    );
    assert!(rig.sink.delivered().is_empty(), "no MSI without int_en");
    // Start again from SUSPENDED, as every later memcpy does.
    let data = fill(&mem, SRC, 0x1800, 0x33);
    rig.start(DESC, 1);
    rig.wait().unwrap();
    assert_eq!(read(&mem, DST, 0x1800), data);
}

#[test]
fn send_msi_raises_exactly_one_interrupt_on_vector_zero() {
    let (rig, mem) = rig();
    rig.init();
    mem.write(
        Iova(DESC),
        bytes(&copy_descriptor(SRC, DST, 8, DESC, DESC_INT_EN)),
    )
    .unwrap();
    rig.start(DESC, 1);
    rig.wait().unwrap();
    let delivered = rig.sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].0, 0);
    assert_eq!(delivered[0].1.address, 0xfee0_0000);
    assert_eq!(delivered[0].1.data, 0x4041);
    assert_eq!(rig.read(ATTNSTATUS, 4), 1);
    // A second descriptor with int_en but no re-arm: no interrupt.
    rig.write(CHAINADDR, 8, DESC);
    rig.write(DMACOUNT, 2, 1);
    rig.wait().unwrap();
    assert_eq!(
        rig.sink.delivered().len(),
        1,
        "disarmed until CHANCTRL.INT_REARM"
    );
    // The selftest's send_msi re-arms each time.
    rig.start(DESC, 1);
    rig.wait().unwrap();
    assert_eq!(rig.sink.delivered().len(), 2);
    assert_eq!(rig.read(ATTNSTATUS, 4), 1);
}

#[test]
fn chained_descriptors_run_in_ring_order_up_to_dmacount() {
    let (rig, mem) = rig();
    rig.init();
    let data = fill(&mem, SRC, 0x4000, 7);
    // Four descriptors in a ring; each copies its own 4 KiB quarter.
    for i in 0..4u64 {
        let next = DESC + ((i + 1) % 4) * 64;
        let desc = copy_descriptor(SRC + i * 0x1000, DST + i * 0x1000, 0x1000, next, 0);
        mem.write(Iova(DESC + i * 64), bytes(&desc)).unwrap();
    }
    rig.start(DESC, 2);
    rig.wait().unwrap();
    assert_eq!(read(&mem, DST, 0x2000), data[..0x2000]);
    assert_eq!(
        read(&mem, DST + 0x2000, 0x2000),
        vec![0; 0x2000],
        "beyond DMACOUNT"
    );
    assert_eq!(rig.read(CHANSTS, 8), (DESC + 64) | 2);
    // The running count goes on from where the channel stopped, without a new CHAINADDR.
    rig.write(CHANCMD, 1, u64::from(CHANCMD_RESUME));
    rig.write(DMACOUNT, 2, 4);
    rig.wait().unwrap();
    assert_eq!(read(&mem, DST, 0x4000), data);
    assert_eq!(rig.read(CHANSTS, 8) & CHANSTS_COMPLETED_ADDR, DESC + 3 * 64);
}

#[test]
fn completion_write_stores_chansts_at_chancmp() {
    let (rig, mem) = rig();
    rig.init();
    rig.write(CHANCMP, 8, CMP);
    let null = copy_descriptor(0, 0, 1, DESC + 64, DESC_NULL | DESC_COMPL_WRITE);
    let copy = copy_descriptor(SRC, DST, 16, DESC, DESC_COMPL_WRITE);
    mem.write(Iova(DESC), bytes(&null)).unwrap();
    mem.write(Iova(DESC + 64), bytes(&copy)).unwrap();
    rig.start(DESC, 2);
    rig.wait().unwrap();
    let completion = u64::from_le_bytes(read(&mem, CMP, 8).try_into().unwrap());
    assert_eq!(
        completion,
        (DESC + 64) | 1,
        "last descriptor's address, IDLE"
    );
}

#[test]
fn faults_halt_the_channel_with_the_matching_chanerr_bit_and_touch_nothing() {
    let unmapped = 0x8000_0000u64;
    let cases: [(IoatDescriptorCase, u32); 6] = [
        ((unmapped, DST, 0x100, 0), CHANERR_READ_DATA_ERR),
        ((SRC, unmapped, 0x100, 0), CHANERR_WRITE_DATA_ERR),
        ((SRC, DST + 0xff800, 0x1000, 0), CHANERR_WRITE_DATA_ERR),
        ((SRC, DST, 0, 0), CHANERR_LENGTH_ERR),
        ((SRC, DST, (1 << 16) + 1, 0), CHANERR_LENGTH_ERR),
        (
            (SRC, DST, 0x100, 0x01 << DESC_OP_SHIFT),
            CHANERR_CONTROL_ERR,
        ),
    ];
    for ((src, dst, size, ctl), err) in cases {
        let (rig, mem) = rig();
        rig.init();
        fill(&mem, SRC, 0x1000, 1);
        mem.write(
            Iova(DESC),
            bytes(&copy_descriptor(src, dst, size, DESC, ctl)),
        )
        .unwrap();
        rig.start(DESC, 1);
        assert_eq!(
            rig.wait(),
            Err(err),
            "descriptor {src:#x} -> {dst:#x} size {size:#x}"
        );
        assert_eq!(rig.read(CHANSTS, 8), 3, "nothing completed");
        assert_eq!(read(&mem, DST, 0x1000), vec![0; 0x1000]);
        assert_eq!(read(&mem, DST + 0xff000, 0x1000), vec![0; 0x1000]);
        assert!(
            rig.sink.delivered().is_empty(),
            "no interrupt without ERR_INT_EN"
        );
        // Halted by an error: doorbells are ignored until reset.
        rig.write(DMACOUNT, 2, 2);
        assert_eq!(rig.status(), 3);
        rig.reset();
        assert_eq!(rig.read(CHANERR, 4), 0);
    }
}

type IoatDescriptorCase = (u64, u64, u32, u32);

#[test]
fn descriptor_fetch_faults_and_misalignment_are_descriptor_errors() {
    let (rig, mem) = rig();
    rig.init();
    rig.start(0x7000_0000, 1);
    assert_eq!(rig.wait(), Err(CHANERR_NEXT_ADDR_ERR));
    rig.reset();
    rig.start(DESC + 8, 1);
    assert_eq!(rig.wait(), Err(CHANERR_CHAIN_ADDR_VALUE_ERR));
    rig.reset();
    // The second descriptor's address comes from `next` and is misaligned.
    mem.write(
        Iova(DESC),
        bytes(&copy_descriptor(SRC, DST, 8, DESC + 72, 0)),
    )
    .unwrap();
    rig.start(DESC, 2);
    assert_eq!(rig.wait(), Err(CHANERR_NEXT_DESC_ALIGN_ERR));
    assert_eq!(rig.read(CHANSTS, 8), DESC | 3, "the first one completed");
    assert_eq!(rig.read(CDAR, 8), DESC + 72);
}

#[test]
fn error_completion_and_error_interrupt_follow_chanctrl() {
    let (rig, mem) = rig();
    rig.init();
    rig.write(CHANCMP, 8, CMP);
    mem.write(
        Iova(DESC),
        bytes(&copy_descriptor(0x9000_0000, DST, 8, DESC, 0)),
    )
    .unwrap();
    rig.write(CHAINADDR, 8, DESC);
    rig.write(
        CHANCTRL,
        2,
        u64::from(CHANCTRL_INT_REARM | CHANCTRL_ERR_COMPLETION_EN | CHANCTRL_ERR_INT_EN),
    );
    rig.write(DMACOUNT, 2, 1);
    assert_eq!(rig.status(), 3);
    assert_eq!(read(&mem, CMP, 8), 3u64.to_le_bytes());
    assert_eq!(rig.sink.delivered().len(), 1);
}

#[test]
fn dma_needs_bus_mastering() {
    let (rig, mem) = rig();
    rig.init();
    rig.cfg_write(pci::COMMAND, 2, u64::from(pci::COMMAND_MEMORY));
    mem.write(Iova(DESC), bytes(&copy_descriptor(SRC, DST, 8, DESC, 0)))
        .unwrap();
    rig.start(DESC, 1);
    assert_eq!(rig.wait(), Err(CHANERR_NEXT_ADDR_ERR));
}

#[test]
fn large_jobs_finish_on_the_worker_and_reset_stops_them() {
    let config = IoatConfig {
        xfercap: 20,
        inline_budget: 4096,
    };
    let (rig, mem) = rig_with(config);
    rig.init();
    let data = fill(&mem, SRC, 0x10_0000, 9);
    mem.write(
        Iova(DESC),
        bytes(&copy_descriptor(SRC, DST, 0x10_0000, DESC, 0)),
    )
    .unwrap();
    rig.start(DESC, 50);
    assert_ne!(rig.status(), 3);
    rig.wait().unwrap();
    assert_eq!(read(&mem, DST, 0x10_0000), data);
    // A long job interrupted by a reset ends HALTED at once and stays there.
    rig.start(DESC, 60_000);
    rig.reset();
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        assert_eq!(rig.status(), 3);
    }
}

#[test]
fn flr_returns_the_model_and_config_space_to_power_on() {
    let (rig, mem) = rig();
    rig.init();
    mem.write(Iova(DESC), bytes(&copy_descriptor(SRC, DST, 8, DESC, 0)))
        .unwrap();
    rig.start(DESC, 1);
    rig.wait().unwrap();
    rig.write(INTRCTRL, 1, 0x9);
    let devctl = rig.cfg_read(pci::EXP_CAP + pci::EXP_DEVCTL, 2);
    rig.cfg_write(
        pci::EXP_CAP + pci::EXP_DEVCTL,
        2,
        devctl | u64::from(pci::EXP_DEVCTL_BCR_FLR),
    );
    assert_eq!(rig.cfg_read(pci::COMMAND, 2), 0);
    assert_eq!(rig.cfg_read(pci::BAR0, 4), 0x4, "64-bit type bits only");
    assert_eq!(rig.cfg_read(pci::MSIX_CAP + pci::MSIX_FLAGS, 2), 0);
    assert_eq!(
        rig.cfg_read(pci::EXP_CAP + pci::EXP_DEVCTL, 2) & u64::from(pci::EXP_DEVCTL_BCR_FLR),
        0
    );
    rig.cfg_write(pci::COMMAND, 2, u64::from(pci::COMMAND_MEMORY));
    assert_eq!(rig.read(CHANSTS, 8), 3);
    assert_eq!(rig.read(INTRCTRL, 1), 0);
    assert_eq!(rig.read(0x200c, 4), 1, "MSI-X vector masked again");
}
