//! The DSA model driven as Linux 7.3's VFIO selftest dsa driver drives it: reset, read the
//! capabilities, configure work queue 0 and group 0, enable, submit copies and batches through
//! the portal with 64-byte stores, poll completion records.

use std::sync::Arc;

use uiommu_core::{Iova, Prot};
use uiommu_devices::dsa::{regs::*, Dsa, DsaDescriptor, MMIO_BAR, PORTAL_BAR};
use uiommu_devices::pci::{regs as pci, PciFunction};
use uiommu_devices::{DmaSpace, MemoryDma, RecordingSink};
use zerocopy::IntoBytes;

const DESCS: u64 = 0x10_0000;
const COMPLETION: u64 = 0x11_0000;
const BATCH_COMPLETION: u64 = 0x11_0040;
const SRC: u64 = 0x20_0000;
const DST: u64 = 0x30_0000;

struct Rig {
    function: PciFunction,
    mem: Arc<MemoryDma>,
    sink: Arc<RecordingSink>,
}

impl Rig {
    fn new() -> Rig {
        let mem = Arc::new(MemoryDma::new());
        mem.map(DESCS, 0x1_0000, Prot::READ_WRITE);
        mem.map(COMPLETION, 0x1000, Prot::READ_WRITE);
        mem.map(SRC, 0x10_0000, Prot::READ);
        mem.map(DST, 0x10_0000, Prot::READ_WRITE);
        let sink = Arc::new(RecordingSink::new());
        let function = PciFunction::new(mem.clone(), sink.clone(), Dsa::new).unwrap();
        Rig {
            function,
            mem,
            sink,
        }
    }

    fn read(&self, offset: u64, len: usize) -> u64 {
        let mut buf = [0u8; 8];
        self.function
            .bar_read(MMIO_BAR, offset, &mut buf[..len])
            .unwrap();
        u64::from_le_bytes(buf)
    }

    fn write(&self, offset: u64, len: usize, value: u64) {
        self.function
            .bar_write(MMIO_BAR, offset, &value.to_le_bytes()[..len])
            .unwrap();
    }

    /// The selftest's dsa_command: CMDSTS must not be active and report no error.
    fn command(&self, cmd: u32, operand: u32) -> u32 {
        self.write(CMD, 4, u64::from((cmd << 20) | operand));
        let status = self.read(CMDSTS, 4) as u32;
        assert_eq!(status & 0x8000_0000, 0, "commands complete at once");
        assert_eq!(self.read(SWERR, 8) & 1, 0, "no software error");
        status & 0xff
    }

    /// The selftest's dsa_init.
    fn init(&self) {
        let command = pci::COMMAND_MEMORY | pci::COMMAND_MASTER | pci::COMMAND_INTX_DISABLE;
        self.function
            .config_write(u64::from(pci::COMMAND), &command.to_le_bytes())
            .unwrap();
        assert_eq!(self.command(CMD_RESET_DEVICE, 0), 0);
        let gencap = self.read(GENCAP, 8);
        assert_eq!(
            gencap & (1 << 4),
            0,
            "no command capability register to check"
        );
        let wqcap = self.read(WQCAP, 8);
        let (total, num_wqs, wqcfg_size) =
            (wqcap & 0xffff, (wqcap >> 16) & 0xff, (wqcap >> 24) & 0xf);
        assert!(total > 0 && num_wqs > 0);
        assert!(self.read(GRPCAP, 8) & 0xff > 0 && self.read(ENGCAP, 8) & 0xff > 0);
        let offsets = self.read(TABLE_OFFSET, 8);
        let grpcfg = (offsets & 0xffff) * 0x100;
        let wqcfg = ((offsets >> 16) & 0xffff) * 0x100;
        // WQCFG: size, dedicated, priority 1, the device's shifts, MEMMOVE and BATCH allowed.
        let mut dwords = [0u32; 16];
        dwords[0] = total as u32;
        dwords[2] = 1 | (1 << 4);
        dwords[3] = (((gencap >> 16) & 0x1f) | (((gencap >> 21) & 0xf) << 5)) as u32;
        dwords[8] = (1 << OP_MEMMOVE) | (1 << OP_BATCH);
        for (i, d) in dwords
            .iter()
            .take((1usize << (wqcfg_size + 5)) / 4)
            .enumerate()
        {
            self.write(wqcfg + 4 * i as u64, 4, u64::from(*d));
        }
        self.write(grpcfg, 8, 1);
        self.write(grpcfg + 32, 8, 1);
        assert_eq!(self.command(CMD_ENABLE_DEVICE, 0), 0);
        assert_eq!(self.command(CMD_ENABLE_WQ, 0), 0);
        assert_eq!(self.read(GENSTS, 4) & 3, u64::from(STATE_ENABLED));
        // MSI-X vector 1, as VFIO enables it for the driver.
        self.write(0x2010, 8, 0xfee0_0000);
        self.write(0x2018, 4, 0x21);
        self.write(0x201c, 4, 0);
        let control = pci::MSIX_FLAGS_ENABLE;
        self.function
            .config_write(
                u64::from(pci::MSIX_CAP + pci::MSIX_FLAGS),
                &control.to_le_bytes(),
            )
            .unwrap();
    }

    fn submit(&self, desc: &DsaDescriptor) {
        self.function
            .bar_write(PORTAL_BAR, 0, desc.as_bytes())
            .unwrap();
    }

    fn status(&self, at: u64) -> u8 {
        let mut status = [0u8; 1];
        self.mem.read(Iova(at), &mut status).unwrap();
        status[0]
    }

    fn fault_addr(&self, at: u64) -> u64 {
        let mut addr = [0u8; 8];
        self.mem.read(Iova(at + 8), &mut addr).unwrap();
        u64::from_le_bytes(addr)
    }
}

fn memmove(src: u64, dst: u64, size: u32, flags: u32, completion: u64) -> DsaDescriptor {
    let mut desc = DsaDescriptor::default();
    desc.pasid_priv.set(1 << 31);
    desc.flags_opcode.set(flags | (u32::from(OP_MEMMOVE) << 24));
    desc.completion_addr.set(completion);
    desc.src.set(src);
    desc.dst.set(dst);
    desc.size.set(size);
    desc
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ 0x3c)
        .collect()
}

#[test]
fn selftest_init_and_one_copy() {
    let rig = Rig::new();
    rig.init();
    assert_eq!(rig.read(VERSION, 4), 0x100);
    let data = pattern(0x3000);
    rig.mem.map(SRC, 0x10_0000, Prot::READ_WRITE);
    rig.mem.write(Iova(SRC), &data).unwrap();
    rig.submit(&memmove(SRC, DST, 0x3000, FLAG_CRAV | FLAG_RCR, COMPLETION));
    assert_eq!(rig.status(COMPLETION), COMP_SUCCESS);
    let mut out = vec![0u8; 0x3000];
    rig.mem.read(Iova(DST), &mut out).unwrap();
    assert_eq!(out, data);
    assert!(rig.sink.delivered().is_empty());
}

#[test]
fn send_msi_raises_the_vector_in_int_handle() {
    let rig = Rig::new();
    rig.init();
    let mut desc = memmove(SRC, DST, 8, FLAG_CRAV | FLAG_RCR | FLAG_RCI, COMPLETION);
    desc.int_handle.set(1);
    rig.submit(&desc);
    assert_eq!(rig.status(COMPLETION), COMP_SUCCESS);
    let delivered = rig.sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!((delivered[0].0, delivered[0].1.data), (1, 0x21));
}

#[test]
fn batches_run_every_copy_and_report_once() {
    let rig = Rig::new();
    rig.init();
    // 300 copies of 4 KiB, each to its own destination slot modulo 256.
    let count = 300u64;
    for i in 0..count {
        let desc = memmove(
            SRC + (i % 16) * 0x1000,
            DST + (i % 256) * 0x1000,
            0x1000,
            FLAG_CRAV,
            COMPLETION,
        );
        rig.mem
            .write(Iova(DESCS + 64 * i), desc.as_bytes())
            .unwrap();
    }
    let mut batch = DsaDescriptor::default();
    batch
        .flags_opcode
        .set(FLAG_CRAV | FLAG_RCR | (u32::from(OP_BATCH) << 24));
    batch.completion_addr.set(BATCH_COMPLETION);
    batch.src.set(DESCS);
    batch.size.set(count as u32);
    rig.submit(&batch);
    assert_eq!(rig.status(BATCH_COMPLETION), COMP_SUCCESS);
    assert_eq!(
        rig.status(COMPLETION),
        0,
        "sub-descriptors without RCR write no record"
    );
    // Count 1 and a misaligned list are refused.
    batch.size.set(1);
    rig.submit(&batch);
    assert_eq!(rig.status(BATCH_COMPLETION), COMP_DESC_CNT_ERANGE);
    batch.size.set(2);
    batch.src.set(DESCS + 8);
    rig.submit(&batch);
    assert_eq!(rig.status(BATCH_COMPLETION), COMP_DESCLIST_ALIGN);
}

#[test]
fn faults_end_in_the_completion_record_not_in_swerr() {
    let rig = Rig::new();
    rig.init();
    let unmapped = 0x8000_0000u64;
    rig.submit(&memmove(
        unmapped,
        DST,
        0x100,
        FLAG_CRAV | FLAG_RCR,
        COMPLETION,
    ));
    assert_eq!(rig.status(COMPLETION), COMP_PAGE_FAULT_NOBOF);
    assert_eq!(rig.fault_addr(COMPLETION), unmapped);
    // A write fault, into the read-only source: status bit 7 says so.
    rig.submit(&memmove(DST, SRC, 0x100, FLAG_CRAV, COMPLETION));
    assert_eq!(
        rig.status(COMPLETION),
        COMP_PAGE_FAULT_NOBOF | COMP_STATUS_WRITE
    );
    assert_eq!(rig.fault_addr(COMPLETION), SRC);
    let mut dst = vec![1u8; 0x100];
    rig.mem.read(Iova(DST), &mut dst).unwrap();
    assert_eq!(dst, vec![0; 0x100], "nothing moved");
    rig.submit(&memmove(SRC, DST, 0, FLAG_CRAV, COMPLETION));
    assert_eq!(rig.status(COMPLETION), COMP_XFER_ERANGE);
    rig.submit(&memmove(DST, DST + 0x80, 0x100, FLAG_CRAV, COMPLETION));
    assert_eq!(rig.status(COMPLETION), COMP_OVERLAP_BUFFERS);
    // A batch with one bad copy fails as a whole, and the bad copy reports itself.
    let good = memmove(SRC, DST, 0x10, FLAG_CRAV, COMPLETION + 0x80);
    let bad = memmove(unmapped, DST, 0x10, FLAG_CRAV, COMPLETION + 0xa0);
    rig.mem.write(Iova(DESCS), good.as_bytes()).unwrap();
    rig.mem.write(Iova(DESCS + 64), bad.as_bytes()).unwrap();
    let mut batch = DsaDescriptor::default();
    batch
        .flags_opcode
        .set(FLAG_CRAV | FLAG_RCR | (u32::from(OP_BATCH) << 24));
    batch.completion_addr.set(BATCH_COMPLETION);
    batch.src.set(DESCS);
    batch.size.set(2);
    rig.submit(&batch);
    assert_eq!(rig.status(BATCH_COMPLETION), COMP_BATCH_FAIL);
    assert_eq!(rig.status(COMPLETION + 0x80), 0);
    assert_eq!(rig.status(COMPLETION + 0xa0), COMP_PAGE_FAULT_NOBOF);
    assert_eq!(rig.read(SWERR, 8) & 1, 0);
}

#[test]
fn software_errors_for_what_no_record_can_carry() {
    let rig = Rig::new();
    rig.init();
    // A completion record that does not translate.
    rig.submit(&memmove(SRC, DST, 8, FLAG_CRAV | FLAG_RCR, 0x9000_0000));
    let swerr = rig.read(SWERR, 8);
    assert_eq!(swerr & 1, 1);
    assert_eq!((swerr >> 8) & 0xff, u64::from(COMP_CRA_XLAT));
    assert_eq!(
        rig.read(INTCAUSE, 4) & u64::from(INTC_ERR),
        u64::from(INTC_ERR)
    );
    rig.write(SWERR, 8, 3);
    assert_eq!(rig.read(SWERR, 8) & 3, 0);
    // Submitting to a disabled work queue.
    assert_eq!(rig.command(CMD_DISABLE_WQ, 0), 0);
    rig.submit(&memmove(SRC, DST, 8, FLAG_CRAV | FLAG_RCR, COMPLETION));
    assert_eq!(rig.read(SWERR, 8) & 1, 1);
    assert_eq!(rig.status(COMPLETION), 0);
}

#[test]
fn commands_check_their_preconditions() {
    let rig = Rig::new();
    let command = pci::COMMAND_MEMORY;
    rig.function
        .config_write(u64::from(pci::COMMAND), &command.to_le_bytes())
        .unwrap();
    assert_eq!(rig.command(CMD_ENABLE_WQ, 0), CMDSTS_ERR_DEV_NOTEN);
    assert_eq!(rig.command(CMD_ENABLE_DEVICE, 0), CMDSTS_ERR_BUSMASTER_EN);
    let command = pci::COMMAND_MEMORY | pci::COMMAND_MASTER;
    rig.function
        .config_write(u64::from(pci::COMMAND), &command.to_le_bytes())
        .unwrap();
    assert_eq!(rig.command(CMD_ENABLE_DEVICE, 0), CMDSTS_ERR_CONFIG);
    assert_eq!(rig.command(0x1f, 0), CMDSTS_INVAL_CMD);
    rig.init();
    assert_eq!(rig.command(CMD_ENABLE_DEVICE, 0), CMDSTS_ERR_DEV_ENABLED);
    assert_eq!(rig.command(CMD_ENABLE_WQ, 0), CMDSTS_ERR_WQ_ENABLED);
    assert_eq!(rig.command(CMD_ENABLE_WQ, 3), CMDSTS_INVAL_WQIDX);
    // Reset: disabled, configuration gone.
    assert_eq!(rig.command(CMD_RESET_DEVICE, 0), 0);
    assert_eq!(rig.read(GENSTS, 4) & 3, 0);
    assert_eq!(rig.read(WQCFG, 4), 0);
    // Interrupt on command completion, on vector 0.
    rig.write(0x200c, 4, 0);
    rig.write(CMD, 4, u64::from((CMD_DRAIN_ALL << 20) | CMD_INT_REQ));
    assert_eq!(rig.sink.delivered().len(), 1);
    assert_eq!(rig.sink.delivered()[0].0, 0);
}
