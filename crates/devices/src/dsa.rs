//! An Intel Data Streaming Accelerator (DSA) 1.0 function, identified as the Sapphire Rapids
//! part (`PCI_DEVICE_ID_INTEL_DSA_SPR0`, 8086:0b25), with the register interface of Linux's
//! `drivers/dma/idxd/registers.h` and the descriptors and completion records of
//! `include/uapi/linux/idxd.h`: one group, one engine, one dedicated work queue.
//!
//! # Model
//!
//! BAR 0 holds the capability registers (GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP, the table
//! offsets), GENCFG/GENCTRL/GENSTS, INTCAUSE, the command interface (CMD, CMDSTS), SWERR, the
//! group configuration table at 0x400, the work queue configuration table at 0x500 and the
//! MSI-X table (vector 0 for the device, vector 1 for completions). BAR 2 holds the work
//! queue's portal: a 64-byte store (`MOVDIR64B`) there submits one descriptor.
//!
//! Commands complete before the CMD store returns (CMDSTS.ACTIVE always reads 0):
//! ENABLE_DEVICE (bus mastering and a configured group needed), DISABLE_DEVICE,
//! RESET_DEVICE (back to power-on configuration), ENABLE_WQ/DISABLE_WQ/RESET_WQ on work queue
//! 0 (a size is needed), and the drain and abort commands, which have nothing to wait for.
//! Configuration tables are writable only while the device (group table) or the work queue
//! (work queue table) is disabled.
//!
//! A submitted descriptor runs in the submitting thread before the store returns: NOOP,
//! MEMMOVE, and BATCH (2 to `1 << max_batch_shift` descriptors read from `desc_list_addr`). A
//! page fault on a source or destination, a transfer size of 0 or above `1 << max_xfer_shift`,
//! overlapping buffers, an unknown opcode or a bad batch list end the descriptor with the
//! matching completion status (bit 7 set for a fault on a write) and the fault address, written
//! to the completion record when CRAV is set (on success only with RCR); RCI raises the MSI-X
//! vector named by `int_handle`. A batch reports BATCH_FAIL when one of its descriptors failed.
//! Only what cannot be reported that way goes to SWERR: a submission while the work queue is
//! disabled, or a completion record that cannot be written. So one portal store does at most
//! `(1 << max_batch_shift) << max_xfer_shift` bytes of work; there is no worker thread.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use uiommu_core::Iova;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::dma::{Access, DmaFault};
use crate::pci::{
    BarSpec, BarWidth, DevicePorts, MsixSpec, PciDeviceModel, PciIdentity, PciLayout,
};

/// `PCI_DEVICE_ID_INTEL_DSA_SPR0`.
pub const DEVICE_DSA_SPR0: u16 = 0x0b25;
/// The register BAR.
pub const MMIO_BAR: u8 = 0;
/// The work queue portal BAR.
pub const PORTAL_BAR: u8 = 2;
/// Size of the register BAR.
pub const MMIO_BAR_SIZE: u64 = 0x4000;
/// Size of the portal BAR: one work queue, four 4 KiB portals.
pub const PORTAL_BAR_SIZE: u64 = 0x4000;

/// Register offsets, bits and codes.
pub mod regs {
    /// Version (32 bits).
    pub const VERSION: u64 = 0x00;
    /// General capabilities (64 bits).
    pub const GENCAP: u64 = 0x10;
    /// Work queue capabilities (64 bits).
    pub const WQCAP: u64 = 0x20;
    /// Group capabilities (64 bits).
    pub const GRPCAP: u64 = 0x30;
    /// Engine capabilities (64 bits).
    pub const ENGCAP: u64 = 0x38;
    /// Supported operations (256 bits).
    pub const OPCAP: u64 = 0x40;
    /// Table offsets, in units of 0x100 (128 bits).
    pub const TABLE_OFFSET: u64 = 0x60;
    /// General configuration (32 bits).
    pub const GENCFG: u64 = 0x80;
    /// General control (32 bits).
    pub const GENCTRL: u64 = 0x88;
    /// General status (32 bits): state in bits 1:0.
    pub const GENSTS: u64 = 0x90;
    /// Interrupt cause (32 bits, write 1 to clear).
    pub const INTCAUSE: u64 = 0x98;
    /// Command (32 bits): operand 19:0, command 24:20, interrupt request bit 31.
    pub const CMD: u64 = 0xa0;
    /// Command status (32 bits): error 7:0, active bit 31.
    pub const CMDSTS: u64 = 0xa8;
    /// Command capabilities (32 bits).
    pub const CMDCAP: u64 = 0xb0;
    /// Software error (256 bits; valid and overflow write 1 to clear).
    pub const SWERR: u64 = 0xc0;
    /// Group configuration table.
    pub const GRPCFG: u64 = 0x400;
    /// Work queue configuration table.
    pub const WQCFG: u64 = 0x500;
    /// Bytes of one work queue's configuration.
    pub const WQCFG_SIZE: u64 = 64;
    /// Bytes of one group's configuration.
    pub const GRPCFG_SIZE: u64 = 64;

    /// GENSTS state: disabled.
    pub const STATE_DISABLED: u32 = 0;
    /// GENSTS state: enabled.
    pub const STATE_ENABLED: u32 = 1;

    /// Command: enable the device.
    pub const CMD_ENABLE_DEVICE: u32 = 1;
    /// Command: disable the device.
    pub const CMD_DISABLE_DEVICE: u32 = 2;
    /// Command: drain all queues.
    pub const CMD_DRAIN_ALL: u32 = 3;
    /// Command: abort all queues.
    pub const CMD_ABORT_ALL: u32 = 4;
    /// Command: reset the device.
    pub const CMD_RESET_DEVICE: u32 = 5;
    /// Command: enable a work queue.
    pub const CMD_ENABLE_WQ: u32 = 6;
    /// Command: disable a work queue.
    pub const CMD_DISABLE_WQ: u32 = 7;
    /// Command: drain a work queue.
    pub const CMD_DRAIN_WQ: u32 = 8;
    /// Command: abort a work queue.
    pub const CMD_ABORT_WQ: u32 = 9;
    /// Command: reset a work queue.
    pub const CMD_RESET_WQ: u32 = 10;
    /// CMD: raise an interrupt when the command completes.
    pub const CMD_INT_REQ: u32 = 1 << 31;
    /// INTCAUSE: a software error was recorded.
    pub const INTC_ERR: u32 = 0x01;
    /// INTCAUSE: a command completed.
    pub const INTC_CMD: u32 = 0x02;

    /// CMDSTS error: unknown command.
    pub const CMDSTS_INVAL_CMD: u32 = 0x01;
    /// CMDSTS error: no such work queue.
    pub const CMDSTS_INVAL_WQIDX: u32 = 0x02;
    /// CMDSTS error: the device is already enabled.
    pub const CMDSTS_ERR_DEV_ENABLED: u32 = 0x10;
    /// CMDSTS error: the configuration is not usable.
    pub const CMDSTS_ERR_CONFIG: u32 = 0x11;
    /// CMDSTS error: bus mastering is off.
    pub const CMDSTS_ERR_BUSMASTER_EN: u32 = 0x12;
    /// CMDSTS error: the device is not enabled.
    pub const CMDSTS_ERR_DEV_NOTEN: u32 = 0x20;
    /// CMDSTS error: the work queue is already enabled.
    pub const CMDSTS_ERR_WQ_ENABLED: u32 = 0x21;
    /// CMDSTS error: the work queue size is invalid.
    pub const CMDSTS_ERR_WQ_SIZE: u32 = 0x22;
    /// CMDSTS error: the device is not enabled (work queue commands).
    pub const CMDSTS_ERR_DEV_NOT_EN: u32 = 0x32;

    /// Descriptor flag: completion record address valid.
    pub const FLAG_CRAV: u32 = 0x0004;
    /// Descriptor flag: request a completion record.
    pub const FLAG_RCR: u32 = 0x0008;
    /// Descriptor flag: request a completion interrupt.
    pub const FLAG_RCI: u32 = 0x0010;

    /// Opcode: no operation.
    pub const OP_NOOP: u8 = 0;
    /// Opcode: batch.
    pub const OP_BATCH: u8 = 1;
    /// Opcode: memory move.
    pub const OP_MEMMOVE: u8 = 3;

    /// Completion status: success.
    pub const COMP_SUCCESS: u8 = 0x01;
    /// Completion status: page fault.
    pub const COMP_PAGE_FAULT_NOBOF: u8 = 0x03;
    /// Completion status: a batch descriptor failed.
    pub const COMP_BATCH_FAIL: u8 = 0x05;
    /// Completion status: page fault reading the batch list.
    pub const COMP_BATCH_PAGE_FAULT: u8 = 0x06;
    /// Completion status: unknown opcode.
    pub const COMP_BAD_OPCODE: u8 = 0x10;
    /// Completion status: transfer size out of range.
    pub const COMP_XFER_ERANGE: u8 = 0x13;
    /// Completion status: batch count out of range.
    pub const COMP_DESC_CNT_ERANGE: u8 = 0x14;
    /// Completion status: overlapping source and destination.
    pub const COMP_OVERLAP_BUFFERS: u8 = 0x16;
    /// Completion status: misaligned batch list.
    pub const COMP_DESCLIST_ALIGN: u8 = 0x18;
    /// Completion status: the completion record address does not translate.
    pub const COMP_CRA_XLAT: u8 = 0x1a;
    /// Completion status: misaligned completion record.
    pub const COMP_CRA_ALIGN: u8 = 0x1b;
    /// Completion status: hardware error (the model's code for a submission to a disabled
    /// work queue, reported in SWERR).
    pub const COMP_HW_ERR1: u8 = 0x20;
    /// Completion status bit: the fault was on a write.
    pub const COMP_STATUS_WRITE: u8 = 0x80;
}

use regs::*;

/// Largest transfer is `1 << MAX_XFER_SHIFT` bytes.
const MAX_XFER_SHIFT: u64 = 20;
/// Largest batch is `1 << MAX_BATCH_SHIFT` descriptors.
const MAX_BATCH_SHIFT: u64 = 10;
/// Work queue entries.
const TOTAL_WQ_SIZE: u64 = 32;
/// Operations supported: NOOP, BATCH, MEMMOVE.
const OPCAP_BITS: u64 = (1 << OP_NOOP) | (1 << OP_BATCH) | (1 << OP_MEMMOVE);
/// Completion records are 32 bytes, 32-byte aligned.
const COMPLETION_SIZE: u64 = 32;
/// WQCFG dword 6, bits 31:30: work queue state (1 = enabled).
const WQCFG_STATE_DWORD: usize = 6;

/// One 64-byte DSA descriptor (Linux `struct dsa_hw_desc`), as the fields the model reads.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DsaDescriptor {
    /// PASID in bits 19:0, privilege in bit 31.
    pub pasid_priv: U32,
    /// Flags in bits 23:0, opcode in bits 31:24.
    pub flags_opcode: U32,
    /// Completion record IOVA.
    pub completion_addr: U64,
    /// Source IOVA, or the batch list.
    pub src: U64,
    /// Destination IOVA.
    pub dst: U64,
    /// Transfer size, or the batch count.
    pub size: U32,
    /// MSI-X vector for RCI.
    pub int_handle: U16,
    /// Reserved.
    pub reserved: U16,
    /// Operation-specific fields.
    pub op_specific: [u8; 24],
}

impl DsaDescriptor {
    fn opcode(&self) -> u8 {
        (self.flags_opcode.get() >> 24) as u8
    }

    fn flags(&self) -> u32 {
        self.flags_opcode.get() & 0xff_ffff
    }
}

/// A DSA completion record (Linux `struct dsa_completion_record`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DsaCompletion {
    /// Status; 0 until the device writes the record.
    pub status: u8,
    /// Operation result.
    pub result: u8,
    /// Reserved.
    pub reserved: U16,
    /// Bytes moved before a fault.
    pub bytes_completed: U32,
    /// The faulting IOVA.
    pub fault_addr: U64,
    /// Operation-specific fields.
    pub op_specific: [u8; 16],
}

/// How one descriptor ended.
struct Outcome {
    status: u8,
    fault_addr: u64,
}

impl Outcome {
    fn status(status: u8) -> Outcome {
        Outcome {
            status,
            fault_addr: 0,
        }
    }

    fn fault(fault: &DmaFault, at: u64) -> Outcome {
        let write = fault.access() == Access::Write;
        Outcome {
            status: COMP_PAGE_FAULT_NOBOF | if write { COMP_STATUS_WRITE } else { 0 },
            fault_addr: match *fault {
                DmaFault::Translation { iova, .. }
                | DmaFault::Permission { iova, .. }
                | DmaFault::Memory { iova, .. } => iova,
                DmaFault::BusMasterDisabled { .. } => at,
            },
        }
    }
}

/// Everything software can change.
#[derive(Debug)]
struct Registers {
    gencfg: u32,
    genctrl: u32,
    enabled: bool,
    intcause: u32,
    cmdsts: u32,
    swerr: [u64; 4],
    grpcfg: [u8; GRPCFG_SIZE as usize],
    wqcfg: [u8; WQCFG_SIZE as usize],
}

impl Registers {
    fn power_on() -> Registers {
        Registers {
            gencfg: 0,
            genctrl: 0,
            enabled: false,
            intcause: 0,
            cmdsts: 0,
            swerr: [0; 4],
            grpcfg: [0; GRPCFG_SIZE as usize],
            wqcfg: [0; WQCFG_SIZE as usize],
        }
    }

    fn wqcfg_dword(&self, index: usize) -> u32 {
        let at = 4 * index;
        u32::from_le_bytes([
            self.wqcfg[at],
            self.wqcfg[at + 1],
            self.wqcfg[at + 2],
            self.wqcfg[at + 3],
        ])
    }

    fn wq_enabled(&self) -> bool {
        self.wqcfg_dword(WQCFG_STATE_DWORD) >> 30 == 1
    }

    fn set_wq_enabled(&mut self, enabled: bool) {
        let at = 4 * WQCFG_STATE_DWORD + 3;
        self.wqcfg[at] = (self.wqcfg[at] & 0x3f) | if enabled { 0x40 } else { 0 };
    }

    fn wq_size(&self) -> u32 {
        self.wqcfg_dword(0) & 0xffff
    }

    /// The work queue's transfer limit: its configured shift, capped by the device's.
    fn max_xfer(&self) -> u64 {
        let shift = u64::from(self.wqcfg_dword(3) & 0x1f);
        1 << if shift == 0 {
            MAX_XFER_SHIFT
        } else {
            shift.min(MAX_XFER_SHIFT)
        }
    }

    /// The work queue's batch limit, likewise.
    fn max_batch(&self) -> u64 {
        let shift = u64::from((self.wqcfg_dword(3) >> 5) & 0xf);
        1 << if shift == 0 {
            MAX_BATCH_SHIFT
        } else {
            shift.min(MAX_BATCH_SHIFT)
        }
    }
}

/// The DSA function's device model.
///
/// Locking: `regs` guards every register and is held while a submitted descriptor runs, so a
/// reset waits for the work in flight.
pub struct Dsa {
    ports: DevicePorts,
    regs: Mutex<Registers>,
}

impl fmt::Debug for Dsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dsa").finish_non_exhaustive()
    }
}

impl Dsa {
    /// A device in its power-on state: disabled, nothing configured.
    pub fn new(ports: DevicePorts) -> Dsa {
        Dsa {
            ports,
            regs: Mutex::new(Registers::power_on()),
        }
    }

    fn regs(&self) -> MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// BAR 0 below the MSI-X table, as software reads it.
    fn image(&self, regs: &Registers) -> Vec<u8> {
        let mut image = vec![0u8; 0x600];
        let mut put = |at: u64, bytes: &[u8]| {
            let at = at as usize;
            image[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(VERSION, &0x100u32.to_le_bytes());
        let gencap = (MAX_XFER_SHIFT << 16) | (MAX_BATCH_SHIFT << 21);
        put(GENCAP, &gencap.to_le_bytes());
        // Total size, one queue, 64-byte WQCFG, dedicated mode, priority, op config.
        let wqcap = TOTAL_WQ_SIZE | (1 << 16) | (1 << 24) | (1 << 49) | (1 << 51) | (1 << 54);
        put(WQCAP, &wqcap.to_le_bytes());
        put(GRPCAP, &1u64.to_le_bytes());
        put(ENGCAP, &1u64.to_le_bytes());
        put(OPCAP, &OPCAP_BITS.to_le_bytes());
        let offsets = (GRPCFG / 0x100) | ((WQCFG / 0x100) << 16);
        put(TABLE_OFFSET, &offsets.to_le_bytes());
        put(GENCFG, &regs.gencfg.to_le_bytes());
        put(GENCTRL, &regs.genctrl.to_le_bytes());
        let state = if regs.enabled {
            STATE_ENABLED
        } else {
            STATE_DISABLED
        };
        put(GENSTS, &state.to_le_bytes());
        put(INTCAUSE, &regs.intcause.to_le_bytes());
        put(CMDSTS, &regs.cmdsts.to_le_bytes());
        for (i, word) in regs.swerr.iter().enumerate() {
            put(SWERR + 8 * i as u64, &word.to_le_bytes());
        }
        put(GRPCFG, &regs.grpcfg);
        put(WQCFG, &regs.wqcfg);
        image
    }

    fn write_registers(&self, offset: u64, data: &[u8]) {
        let mut regs = self.regs();
        let end = offset + data.len() as u64;
        let byte = |at: u64| (at >= offset && at < end).then(|| data[(at - offset) as usize]);
        let dword = |at: u64| {
            let bytes: Vec<u8> = (at..at + 4).map(|a| byte(a).unwrap_or(0)).collect();
            u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        };
        let touches = |at: u64, len: u64| at < end && offset < at + len;
        if touches(GENCFG, 4) && !regs.enabled {
            regs.gencfg = dword(GENCFG);
        }
        if touches(GENCTRL, 4) {
            regs.genctrl = dword(GENCTRL) & 0x7;
        }
        if touches(INTCAUSE, 4) {
            regs.intcause &= !dword(INTCAUSE);
        }
        if touches(SWERR, 8) {
            regs.swerr[0] &= !u64::from(dword(SWERR) & 0x3);
        }
        if touches(GRPCFG, GRPCFG_SIZE) && !regs.enabled {
            for at in GRPCFG..GRPCFG + GRPCFG_SIZE {
                if let Some(b) = byte(at) {
                    regs.grpcfg[(at - GRPCFG) as usize] = b;
                }
            }
        }
        if touches(WQCFG, WQCFG_SIZE) && !regs.wq_enabled() {
            for at in WQCFG..WQCFG + WQCFG_SIZE {
                // The state field (top bits of dword 6) is the device's.
                if at == WQCFG + 4 * WQCFG_STATE_DWORD as u64 + 3 {
                    continue;
                }
                if let Some(b) = byte(at) {
                    regs.wqcfg[(at - WQCFG) as usize] = b;
                }
            }
        }
        if touches(CMD, 4) {
            self.command(&mut regs, dword(CMD));
        }
    }

    fn command(&self, regs: &mut Registers, value: u32) {
        let cmd = (value >> 20) & 0x1f;
        let operand = value & 0xf_ffff;
        let error = match cmd {
            CMD_ENABLE_DEVICE => self.enable_device(regs),
            CMD_DISABLE_DEVICE => {
                regs.enabled = false;
                regs.set_wq_enabled(false);
                0
            }
            CMD_DRAIN_ALL | CMD_ABORT_ALL => 0,
            CMD_RESET_DEVICE => {
                let genctrl = regs.genctrl;
                *regs = Registers::power_on();
                regs.genctrl = genctrl;
                0
            }
            CMD_ENABLE_WQ..=CMD_RESET_WQ if operand != 0 => CMDSTS_INVAL_WQIDX,
            CMD_ENABLE_WQ if !regs.enabled => CMDSTS_ERR_DEV_NOTEN,
            CMD_ENABLE_WQ if regs.wq_enabled() => CMDSTS_ERR_WQ_ENABLED,
            CMD_ENABLE_WQ if regs.wq_size() == 0 || u64::from(regs.wq_size()) > TOTAL_WQ_SIZE => {
                CMDSTS_ERR_WQ_SIZE
            }
            CMD_ENABLE_WQ => {
                regs.set_wq_enabled(true);
                0
            }
            CMD_DISABLE_WQ..=CMD_ABORT_WQ if !regs.enabled => CMDSTS_ERR_DEV_NOT_EN,
            CMD_DISABLE_WQ => {
                regs.set_wq_enabled(false);
                0
            }
            CMD_DRAIN_WQ | CMD_ABORT_WQ => 0,
            CMD_RESET_WQ => {
                regs.wqcfg = [0; WQCFG_SIZE as usize];
                0
            }
            _ => CMDSTS_INVAL_CMD,
        };
        regs.cmdsts = error;
        if value & CMD_INT_REQ != 0 {
            regs.intcause |= INTC_CMD;
            self.ports.irq.raise(0);
        }
    }

    fn enable_device(&self, regs: &mut Registers) -> u32 {
        if regs.enabled {
            return CMDSTS_ERR_DEV_ENABLED;
        }
        // Bus mastering is probed with a zero-length read, which the gate refuses when off.
        if self.ports.dma.read(Iova(0), &mut []).is_err() {
            return CMDSTS_ERR_BUSMASTER_EN;
        }
        let wqs = u64::from_le_bytes(regs.grpcfg[0..8].try_into().unwrap_or([0; 8]));
        let engines = u64::from_le_bytes(regs.grpcfg[32..40].try_into().unwrap_or([0; 8]));
        if wqs & 1 == 0 || engines & 1 == 0 {
            return CMDSTS_ERR_CONFIG;
        }
        regs.enabled = true;
        0
    }

    /// Records a software error that no completion record can carry.
    fn software_error(&self, regs: &mut Registers, error: u8, desc: Option<&DsaDescriptor>) {
        if regs.swerr[0] & 1 != 0 {
            regs.swerr[0] |= 2;
            return;
        }
        let mut word = 1 | (u64::from(error) << 8);
        if let Some(desc) = desc {
            word |= (1 << 2) | (1 << 3) | (u64::from(desc.opcode()) << 32);
            regs.swerr[2] = desc.completion_addr.get();
        }
        regs.swerr[0] = word;
        regs.intcause |= INTC_ERR;
        if regs.genctrl & 1 != 0 {
            self.ports.irq.raise(0);
        }
    }

    /// A 64-byte portal store: one descriptor for work queue 0.
    fn submit(&self, data: &[u8]) {
        let mut regs = self.regs();
        let Ok(desc) = DsaDescriptor::read_from_bytes(data) else {
            // Narrower stores to a portal are dropped, as the hardware drops them.
            return;
        };
        if !regs.enabled || !regs.wq_enabled() {
            self.software_error(&mut regs, COMP_HW_ERR1, Some(&desc));
            return;
        }
        self.run(&mut regs, &desc, false);
    }

    /// Runs one descriptor and reports it; returns whether it succeeded.
    fn run(&self, regs: &mut Registers, desc: &DsaDescriptor, in_batch: bool) -> bool {
        let outcome = match desc.opcode() {
            OP_NOOP => Outcome::status(COMP_SUCCESS),
            OP_MEMMOVE => self.memmove(regs, desc),
            OP_BATCH if !in_batch => self.batch(regs, desc),
            _ => Outcome::status(COMP_BAD_OPCODE),
        };
        let ok = outcome.status == COMP_SUCCESS;
        let flags = desc.flags();
        if flags & FLAG_CRAV != 0 && (!ok || flags & FLAG_RCR != 0) {
            let addr = desc.completion_addr.get();
            let mut record = DsaCompletion::new_zeroed();
            record.fault_addr.set(outcome.fault_addr);
            let written = if !addr.is_multiple_of(COMPLETION_SIZE) {
                Err(COMP_CRA_ALIGN)
            } else {
                // Everything but the status first, then the status byte that software polls.
                self.ports
                    .dma
                    .write(Iova(addr + 1), &record.as_bytes()[1..])
                    .and_then(|()| self.ports.dma.write(Iova(addr), &[outcome.status]))
                    .map_err(|_| COMP_CRA_XLAT)
            };
            if let Err(error) = written {
                self.software_error(regs, error, Some(desc));
                return false;
            }
        }
        if flags & FLAG_RCI != 0 {
            self.ports.irq.raise(desc.int_handle.get());
        }
        ok
    }

    fn memmove(&self, regs: &Registers, desc: &DsaDescriptor) -> Outcome {
        let size = u64::from(desc.size.get());
        if size == 0 || size > regs.max_xfer() {
            return Outcome::status(COMP_XFER_ERANGE);
        }
        let (src, dst) = (desc.src.get(), desc.dst.get());
        let overlap = src < dst.saturating_add(size) && dst < src.saturating_add(size);
        if overlap {
            return Outcome::status(COMP_OVERLAP_BUFFERS);
        }
        match self.ports.dma.copy(Iova(src), Iova(dst), size) {
            Ok(()) => Outcome::status(COMP_SUCCESS),
            Err(fault) => Outcome::fault(&fault, src),
        }
    }

    fn batch(&self, regs: &mut Registers, desc: &DsaDescriptor) -> Outcome {
        let count = u64::from(desc.size.get());
        if count < 2 || count > regs.max_batch() {
            return Outcome::status(COMP_DESC_CNT_ERANGE);
        }
        let list = desc.src.get();
        if !list.is_multiple_of(64) {
            return Outcome::status(COMP_DESCLIST_ALIGN);
        }
        let mut failed = false;
        for i in 0..count {
            let at = list.wrapping_add(64 * i);
            let mut sub = DsaDescriptor::new_zeroed();
            if let Err(fault) = self.ports.dma.read(Iova(at), sub.as_mut_bytes()) {
                let mut outcome = Outcome::fault(&fault, at);
                outcome.status = COMP_BATCH_PAGE_FAULT;
                return outcome;
            }
            failed |= !self.run(regs, &sub, true);
        }
        Outcome::status(if failed {
            COMP_BATCH_FAIL
        } else {
            COMP_SUCCESS
        })
    }
}

impl PciDeviceModel for Dsa {
    fn layout(&self) -> PciLayout {
        PciLayout {
            identity: PciIdentity {
                vendor: crate::ioat::VENDOR_INTEL,
                device: DEVICE_DSA_SPR0,
                subsystem_vendor: crate::ioat::VENDOR_INTEL,
                subsystem: 0,
                revision: 0,
                class: 0x08_80_00,
                multi_function: false,
                interrupt_pin: 0,
            },
            bars: vec![
                BarSpec {
                    index: MMIO_BAR,
                    size: MMIO_BAR_SIZE,
                    width: BarWidth::Bits64,
                    prefetchable: false,
                },
                BarSpec {
                    index: PORTAL_BAR,
                    size: PORTAL_BAR_SIZE,
                    width: BarWidth::Bits64,
                    prefetchable: true,
                },
            ],
            msix: Some(MsixSpec {
                vectors: 2,
                bar: MMIO_BAR,
                table_offset: 0x2000,
                pba_offset: 0x3000,
            }),
            power_management: true,
            config_registers: vec![],
        }
    }

    fn mmio_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
        let end = offset as usize + data.len();
        if bar != MMIO_BAR || end > 0x600 {
            data.fill(0);
            return;
        }
        let image = self.image(&self.regs());
        data.copy_from_slice(&image[offset as usize..end]);
    }

    fn mmio_write(&self, bar: u8, offset: u64, data: &[u8]) {
        if bar == PORTAL_BAR {
            // Only the first portal (unlimited, MSI-X) of work queue 0 exists.
            if offset < 0x1000 {
                self.submit(data);
            }
        } else {
            self.write_registers(offset, data);
        }
    }

    fn reset(&self) {
        *self.regs() = Registers::power_on();
    }
}
