//! PCI function behaviour: configuration space masks, BAR sizing, the capability chain,
//! MSI-X routing, resets, decoding and layout validation.

mod common;

use std::sync::Arc;

use common::Rig;
use uiommu_devices::ioat::{regs::*, IoatConfig, MMIO_BAR_SIZE};
use uiommu_devices::pci::{
    regs::*, AccessError, BarSpec, BarWidth, DevicePorts, LayoutError, MsixSpec, PciDeviceModel,
    PciFunction, PciIdentity, PciLayout,
};
use uiommu_devices::{MemoryDma, RecordingSink};

fn rig() -> Rig {
    Rig::new(Arc::new(MemoryDma::new()), IoatConfig::default())
}

#[test]
fn identity_registers_are_read_only() {
    let rig = rig();
    assert_eq!(rig.cfg_read(VENDOR_ID, 2), 0x8086);
    assert_eq!(rig.cfg_read(DEVICE_ID, 2), 0x2021);
    assert_eq!(
        rig.cfg_read(REVISION, 4),
        0x0880_0004,
        "class 088000, revision 4"
    );
    assert_eq!(rig.cfg_read(HEADER_TYPE, 1), 0x80);
    assert_eq!(rig.cfg_read(INTERRUPT_PIN, 1), 1);
    for (offset, len) in [
        (VENDOR_ID, 4),
        (REVISION, 4),
        (HEADER_TYPE, 1),
        (CAPABILITY_LIST, 1),
    ] {
        let before = rig.cfg_read(offset, len);
        rig.cfg_write(offset, len, !before);
        assert_eq!(rig.cfg_read(offset, len), before, "offset {offset:#x}");
    }
    // Interrupt line is scratch; the expansion ROM BAR does not exist.
    rig.cfg_write(INTERRUPT_LINE, 1, 0x5a);
    assert_eq!(rig.cfg_read(INTERRUPT_LINE, 1), 0x5a);
    rig.cfg_write(ROM_ADDRESS, 4, 0xffff_ffff);
    assert_eq!(rig.cfg_read(ROM_ADDRESS, 4), 0);
}

#[test]
fn command_keeps_only_its_writable_bits_and_status_errors_are_write_one_to_clear() {
    let rig = rig();
    assert_eq!(rig.cfg_read(COMMAND, 2), 0, "bus master starts clear");
    rig.cfg_write(COMMAND, 2, 0xffff);
    assert_eq!(rig.cfg_read(COMMAND, 2), 0x0546);
    rig.cfg_write(COMMAND, 2, u64::from(COMMAND_MEMORY));
    assert_eq!(rig.cfg_read(COMMAND, 2), u64::from(COMMAND_MEMORY));
    assert_eq!(rig.cfg_read(STATUS, 2), u64::from(STATUS_CAP_LIST));
    rig.cfg_write(STATUS, 2, 0xffff);
    assert_eq!(rig.cfg_read(STATUS, 2), u64::from(STATUS_CAP_LIST));
}

#[test]
fn sixty_four_bit_bar_sizing_reads_back_the_size_mask() {
    let rig = rig();
    assert_eq!(
        rig.cfg_read(BAR0, 4),
        0x4,
        "memory, 64-bit, not prefetchable"
    );
    rig.cfg_write(BAR0, 4, 0xffff_ffff);
    rig.cfg_write(BAR0 + 4, 4, 0xffff_ffff);
    let low = rig.cfg_read(BAR0, 4);
    let high = rig.cfg_read(BAR0 + 4, 4);
    let mask = (high << 32) | (low & !0xf);
    assert_eq!(!mask + 1, MMIO_BAR_SIZE);
    assert_eq!(low & 0xf, 0x4);
    rig.cfg_write(BAR0, 4, 0xfe00_1234);
    rig.cfg_write(BAR0 + 4, 4, 0x1);
    assert_eq!(rig.function.bar_address(0), Some(0x1_fe00_0000));
    // Unused BAR slots read 0 and size to 0.
    for bar in 2..6u16 {
        rig.cfg_write(BAR0 + 4 * bar, 4, 0xffff_ffff);
        assert_eq!(rig.cfg_read(BAR0 + 4 * bar, 4), 0);
    }
    assert_eq!(rig.function.bar_address(2), None);
}

#[test]
fn thirty_two_bit_prefetchable_bar_sizing() {
    let function = PciFunction::new(
        Arc::new(MemoryDma::new()),
        Arc::new(RecordingSink::new()),
        |ports| Scratch::new(ports, small_layout()),
    )
    .unwrap();
    let mut buf = [0u8; 4];
    function
        .config_write(u64::from(BAR0) + 8, &[0xff; 4])
        .unwrap();
    function.config_read(u64::from(BAR0) + 8, &mut buf).unwrap();
    assert_eq!(
        u32::from_le_bytes(buf),
        0xffff_f008,
        "4 KiB, 32-bit, prefetchable"
    );
}

#[test]
fn capability_chain_walk_finds_msix_express_and_pm() {
    let rig = rig();
    let mut found = Vec::new();
    let mut at = rig.cfg_read(CAPABILITY_LIST, 1) as u16;
    while at != 0 {
        assert!(found.len() < 48, "the chain loops");
        assert_eq!(at % 4, 0);
        found.push((at, rig.cfg_read(at, 1) as u8));
        at = rig.cfg_read(at + 1, 1) as u16;
    }
    assert_eq!(
        found,
        vec![
            (MSIX_CAP, CAP_ID_MSIX),
            (EXP_CAP, CAP_ID_EXP),
            (PM_CAP, CAP_ID_PM)
        ]
    );
    // MSI-X: one vector, table at BAR0 + 0x2000, PBA at BAR0 + 0x3000.
    assert_eq!(rig.cfg_read(MSIX_CAP + MSIX_FLAGS, 2), 0);
    assert_eq!(rig.cfg_read(MSIX_CAP + MSIX_TABLE, 4), 0x2000);
    assert_eq!(rig.cfg_read(MSIX_CAP + MSIX_PBA, 4), 0x3000);
    // PCI Express v2, integrated endpoint, FLR capable.
    assert_eq!(rig.cfg_read(EXP_CAP + 2, 2), 0x92);
    assert_ne!(
        rig.cfg_read(EXP_CAP + EXP_DEVCAP, 4) & u64::from(EXP_DEVCAP_FLR),
        0
    );
    // PM version 3, D0, No_Soft_Reset clear.
    assert_eq!(rig.cfg_read(PM_CAP + 2, 2) & 7, 3);
    assert_eq!(rig.cfg_read(PM_CAP + PM_CTRL, 2), 0);
    // No extended capabilities; the I/OAT error registers sit in the gap.
    assert_eq!(rig.cfg_read(0x100, 4), 0);
    rig.cfg_write(PCI_CHANERRMSK_INT, 4, 0x1234);
    assert_eq!(rig.cfg_read(PCI_CHANERRMSK_INT, 4), 0x1234);
    assert_eq!(rig.cfg_read(PCI_CHANERR_INT, 4), 0);
}

#[test]
fn msix_cap_control_and_table_route_interrupts() {
    let rig = rig();
    rig.cfg_write(COMMAND, 2, u64::from(COMMAND_MEMORY));
    // Table size field is read-only, enable and function mask are not.
    rig.cfg_write(MSIX_CAP + MSIX_FLAGS, 2, 0xffff);
    assert_eq!(rig.cfg_read(MSIX_CAP + MSIX_FLAGS, 2), 0xc000);
    rig.cfg_write(MSIX_CAP + MSIX_FLAGS, 2, 0);
    // Power-on entry: masked; reserved control bits read 0.
    assert_eq!(rig.read(0x200c, 4), 1);
    rig.write(0x2000, 8, 0x0000_0001_fee0_1000);
    rig.write(0x2008, 4, 0x55);
    rig.write(0x200c, 4, 0xffff_fffe);
    assert_eq!(rig.read(0x2000, 8), 0x0000_0001_fee0_1000);
    assert_eq!(rig.read(0x200c, 4), 0);
    rig.write(0x200c, 4, 1);
    assert_eq!(rig.read(0x3000, 8), 0);
    // Writes to the PBA are ignored.
    rig.write(0x3000, 8, u64::MAX);
    assert_eq!(rig.read(0x3000, 8), 0);
}

#[test]
fn masked_vectors_go_pending_and_fire_when_unmasked() {
    let sink = Arc::new(RecordingSink::new());
    let mut line = None;
    let function = PciFunction::new(Arc::new(MemoryDma::new()), sink.clone(), |ports| {
        line = Some(ports.irq.clone());
        Scratch::new(ports, small_layout())
    })
    .unwrap();
    let line = line.unwrap();
    let cfg16 = |offset: u16, value: u16| {
        function
            .config_write(u64::from(offset), &value.to_le_bytes())
            .unwrap()
    };
    let bar =
        |offset: u64, value: u32| function.bar_write(0, offset, &value.to_le_bytes()).unwrap();
    let pba = || {
        let mut buf = [0u8; 8];
        function.bar_read(0, 0x800, &mut buf).unwrap();
        u64::from_le_bytes(buf)
    };
    cfg16(COMMAND, COMMAND_MEMORY);
    line.raise(1);
    assert_eq!(pba(), 0, "MSI-X disabled: nothing is sent or remembered");
    cfg16(MSIX_CAP + MSIX_FLAGS, MSIX_FLAGS_ENABLE);
    bar(0x10, 0xfee0_0000);
    bar(0x18, 7);
    line.raise(1);
    assert_eq!(pba(), 0b10, "entry masked: pending");
    bar(0x1c, 0);
    assert_eq!(pba(), 0);
    assert_eq!(sink.delivered().len(), 1);
    assert_eq!(sink.delivered()[0].0, 1);
    assert_eq!(sink.delivered()[0].1.data, 7);
    cfg16(
        MSIX_CAP + MSIX_FLAGS,
        MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL,
    );
    line.raise(1);
    line.raise(9);
    assert_eq!(
        pba(),
        0b10,
        "function mask: pending; vectors beyond the table: dropped"
    );
    cfg16(MSIX_CAP + MSIX_FLAGS, MSIX_FLAGS_ENABLE);
    assert_eq!(sink.delivered().len(), 2);
    line.raise(1);
    assert_eq!(sink.delivered().len(), 3);
}

#[test]
fn bar_accesses_are_checked_and_need_memory_decoding() {
    let rig = rig();
    let mut buf = [0u8; 8];
    // Decoding off: all ones.
    rig.function.bar_read(0, CBVER, &mut buf[..1]).unwrap();
    assert_eq!(buf[0], 0xff);
    rig.cfg_write(COMMAND, 2, u64::from(COMMAND_MEMORY));
    rig.function.bar_read(0, CBVER, &mut buf[..1]).unwrap();
    assert_eq!(buf[0], 0x33);
    assert_eq!(
        rig.function.bar_read(0, 2, &mut buf[..4]),
        Err(AccessError::Unaligned { offset: 2, len: 4 })
    );
    let mut wide = [0u8; 64];
    assert_eq!(
        rig.function.bar_read(0, 0x2000, &mut wide),
        Err(AccessError::Unaligned {
            offset: 0x2000,
            len: 64
        }),
        "a 64-byte access does not fit the 16-byte MSI-X table"
    );
    rig.function.bar_read(0, 0x1000, &mut wide).unwrap();
    assert_eq!(
        rig.function.bar_read(0, 0, &mut buf[..3]),
        Err(AccessError::Unaligned { offset: 0, len: 3 })
    );
    assert_eq!(
        rig.function.bar_read(0, MMIO_BAR_SIZE, &mut buf[..4]),
        Err(AccessError::OutOfRange {
            offset: MMIO_BAR_SIZE,
            len: 4
        })
    );
    assert_eq!(
        rig.function.bar_read(1, 0, &mut buf[..4]),
        Err(AccessError::NoSuchBar(1)),
        "the upper half of a 64-bit BAR is no BAR"
    );
    assert_eq!(
        rig.function.config_read(4095, &mut buf[..2]),
        Err(AccessError::OutOfRange {
            offset: 4095,
            len: 2
        })
    );
    assert!(rig.function.config_read(u64::MAX, &mut buf[..2]).is_err());
}

#[test]
fn d3hot_to_d0_resets_the_function() {
    let rig = rig();
    rig.cfg_write(COMMAND, 2, u64::from(COMMAND_MEMORY));
    rig.write(INTRCTRL, 1, 0x8);
    rig.cfg_write(PM_CAP + PM_CTRL, 2, 3);
    assert_eq!(rig.cfg_read(PM_CAP + PM_CTRL, 2), 3);
    rig.cfg_write(PM_CAP + PM_CTRL, 2, 1);
    assert_eq!(
        rig.cfg_read(PM_CAP + PM_CTRL, 2),
        3,
        "D1 is unsupported: ignored"
    );
    assert_eq!(rig.cfg_read(COMMAND, 2), u64::from(COMMAND_MEMORY));
    rig.cfg_write(PM_CAP + PM_CTRL, 2, 0);
    assert_eq!(rig.cfg_read(PM_CAP + PM_CTRL, 2), 0);
    assert_eq!(rig.cfg_read(COMMAND, 2), 0, "reset to power-on");
    rig.cfg_write(COMMAND, 2, u64::from(COMMAND_MEMORY));
    assert_eq!(rig.read(INTRCTRL, 1), 0);
}

#[test]
fn inconsistent_layouts_are_refused() {
    let build = |layout: PciLayout| {
        PciFunction::new(
            Arc::new(MemoryDma::new()),
            Arc::new(RecordingSink::new()),
            |ports| Scratch::new(ports, layout),
        )
        .map(|_| ())
    };
    let mut bad = small_layout();
    bad.bars[0].size = 0x1800;
    assert!(matches!(build(bad), Err(LayoutError::Bar { index: 0, .. })));
    let mut bad = small_layout();
    bad.bars.push(BarSpec {
        index: 1,
        size: 0x1000,
        width: BarWidth::Bits32,
        prefetchable: false,
    });
    assert!(matches!(build(bad), Err(LayoutError::Bar { index: 1, .. })));
    let mut bad = small_layout();
    bad.bars[0].index = 5;
    assert!(matches!(build(bad), Err(LayoutError::Bar { index: 5, .. })));
    let mut bad = small_layout();
    bad.msix.as_mut().unwrap().pba_offset = 0x10;
    assert!(matches!(build(bad), Err(LayoutError::Msix(_))));
    let mut bad = small_layout();
    bad.msix.as_mut().unwrap().table_offset = 0x1ff8;
    assert!(matches!(build(bad), Err(LayoutError::Msix(_))));
    let mut bad = small_layout();
    bad.config_registers
        .push(uiommu_devices::pci::ConfigRegister {
            offset: EXP_CAP + 4,
            width: 4,
            initial: 0,
            writable: !0,
            write_one_to_clear: 0,
        });
    assert!(matches!(
        build(bad),
        Err(LayoutError::ConfigRegister { .. })
    ));
    build(small_layout()).unwrap();
}

/// A 64-bit BAR 0 of 8 KiB with a 4-vector MSI-X table at 0 and PBA at 0x800, and a 4 KiB
/// 32-bit prefetchable BAR 2.
fn small_layout() -> PciLayout {
    PciLayout {
        identity: PciIdentity {
            vendor: 0x1af4,
            device: 0x10ff,
            subsystem_vendor: 0,
            subsystem: 0,
            revision: 0,
            class: 0xff_00_00,
            multi_function: false,
            interrupt_pin: 0,
        },
        bars: vec![
            BarSpec {
                index: 0,
                size: 0x2000,
                width: BarWidth::Bits64,
                prefetchable: false,
            },
            BarSpec {
                index: 2,
                size: 0x1000,
                width: BarWidth::Bits32,
                prefetchable: true,
            },
        ],
        msix: Some(MsixSpec {
            vectors: 4,
            bar: 0,
            table_offset: 0,
            pba_offset: 0x800,
        }),
        power_management: false,
        config_registers: vec![],
    }
}

/// A model with no behaviour, for PCI-level tests.
#[derive(Debug)]
struct Scratch {
    layout: PciLayout,
}

impl Scratch {
    fn new(_ports: DevicePorts, layout: PciLayout) -> Scratch {
        Scratch { layout }
    }
}

impl PciDeviceModel for Scratch {
    fn layout(&self) -> PciLayout {
        self.layout.clone()
    }
    fn mmio_read(&self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn mmio_write(&self, _bar: u8, _offset: u64, _data: &[u8]) {}
    fn reset(&self) {}
}
