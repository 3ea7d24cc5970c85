//! An Intel I/OAT (Crystal Beach DMA) function with one channel, version 3.3, identified as
//! the Skylake-SP part (`PCI_DEVICE_ID_INTEL_IOAT_SKX`, 8086:2021), with the register
//! interface and descriptor format Linux's `drivers/dma/ioat` and the VFIO selftests' ioat
//! driver program.
//!
//! # Channel state machine
//!
//! CHANSTS bits 2:0 say ACTIVE (0), IDLE/DONE (1), SUSPENDED (2) or HALTED (3); bits 63:6
//! hold the address of the last completed descriptor. (ARMED, 4, is never reported: no Linux
//! driver waits for it.) Power-on and CHANCMD.RESET leave the channel HALTED with CHANERR 0,
//! nothing completed and the interrupt disarmed; the reset completes before the write returns,
//! so CHANCMD reads 0 right away.
//!
//! Descriptors are 64 bytes, 64-byte aligned, chained by `next`. DMACOUNT is a 16-bit running
//! total of descriptors handed to the channel since CHAINADDR was last written (which also
//! restarts the completed count and the CHANSTS address at 0). Writing DMACOUNT makes a channel
//! that is not halted by an error ACTIVE whenever it is ahead of the completed count; the
//! channel then runs descriptors from CHAINADDR along `next` until the counts meet and goes
//! IDLE. SUSPEND finishes the descriptor in flight and leaves the channel SUSPENDED; RESUME,
//! START or APPEND (or another doorbell) continues. ABORT drops the rest and halts.
//!
//! Per descriptor: a NULL descriptor (ctl bit 5) moves nothing; a copy (opcode 0) moves `size`
//! bytes, 1 to `1 << XFERCAP`, through the [`crate::DmaSpace`]. Then, with `compl_write`, the
//! CHANSTS value goes to the CHANCMP address; with `int_en` and the channel armed (CHANCTRL
//! INT_REARM written since the last interrupt), ATTNSTATUS bit 0 is set, the channel disarms,
//! and MSI-X vector 0 fires if INTRCTRL enables MSI-X vector control or the master interrupt.
//!
//! Every error halts the channel at the failing descriptor, with CHANSTS pointing at the last
//! completed one: a fault fetching a descriptor sets NEXT_ADDR_ERR, a misaligned descriptor
//! NEXT_DESC_ALIGN_ERR (CHAIN_ADDR_VALUE_ERR for the first of a chain), a source fault
//! READ_DATA_ERR, a destination fault WRITE_DATA_ERR, a bad opcode CONTROL_ERR, a size of 0 or
//! beyond XFERCAP LENGTH_ERR, a completion write fault COMPLETION_ADDR_ERR. With CHANCTRL
//! ERR_COMPLETION_EN the halted status is written to CHANCMP, with ERR_INT_EN an interrupt is
//! raised. A halted channel ignores doorbells until it is reset.
//!
//! # Execution
//!
//! A doorbell runs the channel in the writer's thread for at most
//! [`IoatConfig::inline_budget`] bytes (each descriptor counts at least 64, its own fetch),
//! so short jobs complete before the MMIO store returns. Work beyond that goes to a worker
//! thread that exists only while the channel has work and ends when it goes idle, suspended or
//! halted: an idle device has no thread and burns no CPU. A CHANSTS load that finds the channel
//! ACTIVE and its lock free also runs one descriptor, so a driver that busy-polls (as the VFIO
//! selftest does) drives the channel itself instead of waiting for the worker to be scheduled
//! on a loaded machine. Descriptors execute under the channel lock, so a register write
//! (reset, suspend) waits at most for the descriptor in flight (`1 << XFERCAP` bytes), and
//! CHANSTS is also published in an atomic that loads read without the lock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use uiommu_core::Iova;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::dma::{Access, DmaFault};
use crate::pci::{
    BarSpec, BarWidth, ConfigRegister, DevicePorts, MsixSpec, PciDeviceModel, PciIdentity,
    PciLayout,
};

/// Intel's PCI vendor id.
pub const VENDOR_INTEL: u16 = 0x8086;
/// `PCI_DEVICE_ID_INTEL_IOAT_SKX`.
pub const DEVICE_IOAT_SKX: u16 = 0x2021;
/// The BAR holding the registers and the MSI-X table.
pub const MMIO_BAR: u8 = 0;
/// Size of the register BAR.
pub const MMIO_BAR_SIZE: u64 = 16 * 1024;

/// Register offsets and bits (BAR 0 and configuration space).
pub mod regs {
    /// Configuration space: uncorrectable DMA error status (32 bits, write 1 to clear).
    pub const PCI_DMAUNCERRSTS: u16 = 0x148;
    /// Configuration space: internal channel errors (32 bits, write 1 to clear).
    pub const PCI_CHANERR_INT: u16 = 0x180;
    /// Configuration space: internal channel error mask (32 bits).
    pub const PCI_CHANERRMSK_INT: u16 = 0x184;

    /// Number of channels (8 bits).
    pub const CHANCNT: u64 = 0x00;
    /// Largest transfer, as a power of two (8 bits).
    pub const XFERCAP: u64 = 0x01;
    /// General control (8 bits).
    pub const GENCTRL: u64 = 0x02;
    /// Interrupt control (8 bits).
    pub const INTRCTRL: u64 = 0x03;
    /// Channels wanting attention, one bit each (32 bits).
    pub const ATTNSTATUS: u64 = 0x04;
    /// Crystal Beach version (8 bits).
    pub const CBVER: u64 = 0x08;
    /// Interrupt delay (16 bits).
    pub const INTRDELAY: u64 = 0x0c;
    /// Chipset status (16 bits).
    pub const CS_STATUS: u64 = 0x0e;
    /// DMA capabilities (32 bits).
    pub const DMACAPABILITY: u64 = 0x10;

    /// Start of channel 0's registers.
    pub const CHANNEL: u64 = 0x80;
    /// Channel control (16 bits).
    pub const CHANCTRL: u64 = CHANNEL;
    /// DMA compatibility (16 bits).
    pub const DMA_COMP: u64 = CHANNEL + 0x02;
    /// Channel command (8 bits).
    pub const CHANCMD: u64 = CHANNEL + 0x04;
    /// The doorbell: running descriptor count (16 bits).
    pub const DMACOUNT: u64 = CHANNEL + 0x06;
    /// Channel status (64 bits).
    pub const CHANSTS: u64 = CHANNEL + 0x08;
    /// First descriptor of a chain (64 bits).
    pub const CHAINADDR: u64 = CHANNEL + 0x10;
    /// Completion write-back address (64 bits).
    pub const CHANCMP: u64 = CHANNEL + 0x18;
    /// Current descriptor address (64 bits).
    pub const CDAR: u64 = CHANNEL + 0x20;
    /// Channel errors (32 bits, write 1 to clear).
    pub const CHANERR: u64 = CHANNEL + 0x28;
    /// Channel error mask (32 bits).
    pub const CHANERR_MASK: u64 = CHANNEL + 0x2c;

    /// INTRCTRL: master interrupt enable.
    pub const INTRCTRL_MASTER_INT_EN: u8 = 0x01;
    /// INTRCTRL: some channel wants attention (read only).
    pub const INTRCTRL_INT_STATUS: u8 = 0x02;
    /// INTRCTRL: status and master enable (read only).
    pub const INTRCTRL_INT: u8 = 0x04;
    /// INTRCTRL: one MSI-X vector per channel.
    pub const INTRCTRL_MSIX_VECTOR_CONTROL: u8 = 0x08;

    /// CHANCTRL: arm the channel's interrupt.
    pub const CHANCTRL_INT_REARM: u16 = 0x0001;
    /// CHANCTRL: write the completion on errors.
    pub const CHANCTRL_ERR_COMPLETION_EN: u16 = 0x0004;
    /// CHANCTRL: abort on any error.
    pub const CHANCTRL_ANY_ERR_ABORT_EN: u16 = 0x0008;
    /// CHANCTRL: interrupt on errors.
    pub const CHANCTRL_ERR_INT_EN: u16 = 0x0010;

    /// CHANCMD: start (version 1 drivers).
    pub const CHANCMD_START: u8 = 0x01;
    /// CHANCMD: append (version 1 drivers).
    pub const CHANCMD_APPEND: u8 = 0x02;
    /// CHANCMD: suspend.
    pub const CHANCMD_SUSPEND: u8 = 0x04;
    /// CHANCMD: abort.
    pub const CHANCMD_ABORT: u8 = 0x08;
    /// CHANCMD: resume.
    pub const CHANCMD_RESUME: u8 = 0x10;
    /// CHANCMD: reset.
    pub const CHANCMD_RESET: u8 = 0x20;

    /// CHANSTS: the state field.
    pub const CHANSTS_STATUS: u64 = 0x7;
    /// CHANSTS: the completed descriptor address field.
    pub const CHANSTS_COMPLETED_ADDR: u64 = !0x3f;

    /// CHANERR: next descriptor address error.
    pub const CHANERR_NEXT_ADDR_ERR: u32 = 0x0004;
    /// CHANERR: descriptor alignment error.
    pub const CHANERR_NEXT_DESC_ALIGN_ERR: u32 = 0x0008;
    /// CHANERR: chain address value error.
    pub const CHANERR_CHAIN_ADDR_VALUE_ERR: u32 = 0x0010;
    /// CHANERR: read data error.
    pub const CHANERR_READ_DATA_ERR: u32 = 0x0100;
    /// CHANERR: write data error.
    pub const CHANERR_WRITE_DATA_ERR: u32 = 0x0200;
    /// CHANERR: descriptor control error.
    pub const CHANERR_CONTROL_ERR: u32 = 0x0400;
    /// CHANERR: transfer size error.
    pub const CHANERR_LENGTH_ERR: u32 = 0x0800;
    /// CHANERR: completion address error.
    pub const CHANERR_COMPLETION_ADDR_ERR: u32 = 0x1000;

    /// Descriptor control: interrupt on completion.
    pub const DESC_INT_EN: u32 = 1 << 0;
    /// Descriptor control: write the completion to CHANCMP.
    pub const DESC_COMPL_WRITE: u32 = 1 << 3;
    /// Descriptor control: a NULL descriptor, moving nothing.
    pub const DESC_NULL: u32 = 1 << 5;
    /// Descriptor control: the opcode's shift (copy is 0).
    pub const DESC_OP_SHIFT: u32 = 24;
}

use regs::*;

/// Version 3.3.
const CBVER_3_3: u8 = 0x33;
/// DMA_COMP: compatible with version 2 register layout.
const DMA_COMP_V2: u16 = 0x0002;
/// Writable CHANCTRL bits besides INT_REARM: error completion/abort/interrupt enables,
/// descriptor snoop control, in-use, completion DCA, priority.
const CHANCTRL_STORED: u16 = 0xf33c;
/// Writable INTRDELAY bits: the delay.
const INTRDELAY_MASK: u16 = 0x3fff;
/// Descriptor size and alignment.
const DESC_SIZE: u64 = 64;

/// One 64-byte I/OAT DMA descriptor (Linux `struct ioat_dma_descriptor`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IoatDescriptor {
    /// Bytes to move.
    pub size: U32,
    /// Control bits (`DESC_*`) and opcode in bits 31:24.
    pub ctl: U32,
    /// Source IOVA.
    pub src: U64,
    /// Destination IOVA.
    pub dst: U64,
    /// Next descriptor's IOVA.
    pub next: U64,
    /// Reserved.
    pub reserved: [U64; 2],
    /// Software fields, ignored by the device.
    pub user: [U64; 2],
}

/// Channel states as CHANSTS bits 2:0 report them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum ChannelState {
    /// Running descriptors.
    Active = 0,
    /// Caught up with DMACOUNT (Linux calls it DONE or IDLE).
    Idle = 1,
    /// Stopped by CHANCMD.SUSPEND.
    Suspended = 2,
    /// Stopped by reset, abort or an error.
    Halted = 3,
}

/// Model parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoatConfig {
    /// XFERCAP: the largest transfer is `1 << xfercap` bytes (1..=32).
    pub xfercap: u8,
    /// Bytes a doorbell runs in the writer's thread before handing the rest to a worker.
    pub inline_budget: u64,
}

impl Default for IoatConfig {
    /// 64 KiB transfers, 256 KiB of work inline per doorbell.
    fn default() -> Self {
        IoatConfig {
            xfercap: 16,
            inline_budget: 256 * 1024,
        }
    }
}

/// Device-level and channel registers.
#[derive(Debug)]
struct Registers {
    genctrl: u8,
    /// INTRCTRL's writable bits (master enable, MSI-X vector control).
    intrctrl: u8,
    attnstatus: u32,
    intrdelay: u16,
    chanctrl: u16,
    /// Last DMACOUNT written since CHAINADDR.
    dmacount: u16,
    /// Descriptors completed since CHAINADDR (wrapping like DMACOUNT).
    completed: u16,
    chainaddr: u64,
    /// Where the engine fetches the next descriptor.
    next_desc: u64,
    chancmp: u64,
    cdar: u64,
    chanerr: u32,
    chanerr_mask: u32,
    state: ChannelState,
    /// Address of the last completed descriptor.
    last_completed: u64,
    /// Halted by an error: doorbells are ignored until a reset.
    error_halt: bool,
    /// INT_REARM written since the last interrupt.
    armed: bool,
    /// A worker thread is running the channel.
    worker: bool,
}

impl Registers {
    fn power_on() -> Registers {
        Registers {
            genctrl: 0,
            intrctrl: 0,
            attnstatus: 0,
            intrdelay: 0,
            chanctrl: 0,
            dmacount: 0,
            completed: 0,
            chainaddr: 0,
            next_desc: 0,
            chancmp: 0,
            cdar: 0,
            chanerr: 0,
            chanerr_mask: 0,
            state: ChannelState::Halted,
            last_completed: 0,
            error_halt: false,
            armed: false,
            worker: false,
        }
    }

    fn chansts(&self) -> u64 {
        (self.last_completed & CHANSTS_COMPLETED_ADDR) | self.state as u64
    }

    fn pending(&self) -> bool {
        self.dmacount != self.completed
    }
}

/// What one step of the engine did.
enum Step {
    /// Ran a descriptor worth this many bytes of budget.
    Ran(u64),
    /// Nothing to run.
    Stopped,
}

/// Shared between the MMIO path and the worker.
///
/// Locking: `regs` guards every register; a descriptor executes under it. `chansts` mirrors
/// CHANSTS, stored under `regs` and loaded without it.
struct Inner {
    config: IoatConfig,
    ports: DevicePorts,
    regs: Mutex<Registers>,
    chansts: AtomicU64,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ioat")
            .field("config", &self.config)
            .field("chansts", &self.chansts.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The I/OAT function's device model.
#[derive(Debug)]
pub struct Ioat {
    inner: Arc<Inner>,
}

impl Ioat {
    /// A channel in its power-on state (HALTED); `config.xfercap` is clamped to 1..=32.
    pub fn new(config: IoatConfig, ports: DevicePorts) -> Ioat {
        let config = IoatConfig {
            xfercap: config.xfercap.clamp(1, 32),
            ..config
        };
        let regs = Registers::power_on();
        let chansts = AtomicU64::new(regs.chansts());
        Ioat {
            inner: Arc::new(Inner {
                config,
                ports,
                regs: Mutex::new(regs),
                chansts,
            }),
        }
    }
}

impl Inner {
    fn regs(&self) -> MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, regs: &Registers) {
        self.chansts.store(regs.chansts(), Ordering::Release);
    }

    fn max_transfer(&self) -> u64 {
        1u64 << self.config.xfercap
    }

    /// The device-level and channel register block as software reads it.
    fn image(&self, regs: &Registers) -> [u8; 0x100] {
        let mut image = [0u8; 0x100];
        let mut put = |at: u64, bytes: &[u8]| {
            let at = at as usize;
            image[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let status = regs.attnstatus != 0;
        let mut intrctrl = regs.intrctrl;
        if status {
            intrctrl |= INTRCTRL_INT_STATUS;
            if regs.intrctrl & INTRCTRL_MASTER_INT_EN != 0 {
                intrctrl |= INTRCTRL_INT;
            }
        }
        put(CHANCNT, &[1]);
        put(XFERCAP, &[self.config.xfercap]);
        put(GENCTRL, &[regs.genctrl]);
        put(INTRCTRL, &[intrctrl]);
        put(ATTNSTATUS, &regs.attnstatus.to_le_bytes());
        put(CBVER, &[CBVER_3_3]);
        put(INTRDELAY, &regs.intrdelay.to_le_bytes());
        put(CS_STATUS, &0u16.to_le_bytes());
        put(DMACAPABILITY, &0u32.to_le_bytes());
        put(CHANCTRL, &regs.chanctrl.to_le_bytes());
        put(DMA_COMP, &DMA_COMP_V2.to_le_bytes());
        put(CHANCMD, &[0]);
        put(DMACOUNT, &regs.dmacount.to_le_bytes());
        put(CHANSTS, &regs.chansts().to_le_bytes());
        put(CHAINADDR, &regs.chainaddr.to_le_bytes());
        put(CHANCMP, &regs.chancmp.to_le_bytes());
        put(CDAR, &regs.cdar.to_le_bytes());
        put(CHANERR, &regs.chanerr.to_le_bytes());
        put(CHANERR_MASK, &regs.chanerr_mask.to_le_bytes());
        image
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        if offset >= CHANSTS && end <= CHANSTS + 8 {
            // The hot path of every polling driver: no lock. A driver polling an ACTIVE
            // channel lends its thread for one descriptor when the channel lock is free, so
            // progress does not wait for the worker to be scheduled.
            if self.chansts.load(Ordering::Acquire) & CHANSTS_STATUS == ChannelState::Active as u64
            {
                if let Ok(mut regs) = self.regs.try_lock() {
                    self.step(&mut regs);
                }
            }
            let value = self.chansts.load(Ordering::Acquire).to_le_bytes();
            let at = (offset - CHANSTS) as usize;
            buf.copy_from_slice(&value[at..at + buf.len()]);
        } else if end <= 0x100 {
            let image = self.image(&self.regs());
            buf.copy_from_slice(&image[offset as usize..end as usize]);
        } else {
            buf.fill(0);
        }
    }

    fn write(self: &Arc<Self>, offset: u64, data: &[u8]) {
        /// Writable registers: offset, width, and whether bytes not written count as 0
        /// (write-1-to-clear and command registers) rather than keeping their value.
        const WRITABLE: [(u64, u64, bool); 10] = [
            (GENCTRL, 1, false),
            (INTRCTRL, 1, false),
            (INTRDELAY, 2, false),
            (CHANCTRL, 2, false),
            (CHANCMD, 1, true),
            (DMACOUNT, 2, false),
            (CHAINADDR, 8, false),
            (CHANCMP, 8, false),
            (CHANERR, 4, true),
            (CHANERR_MASK, 4, false),
        ];
        let end = offset + data.len() as u64;
        let mut regs = self.regs();
        let mut kick = false;
        for (at, width, zero_rest) in WRITABLE {
            if at >= end || at + width <= offset {
                continue;
            }
            let mut bytes = [0u8; 8];
            if !zero_rest {
                let image = self.image(&regs);
                bytes[..width as usize].copy_from_slice(&image[at as usize..(at + width) as usize]);
            }
            for (i, byte) in bytes.iter_mut().enumerate().take(width as usize) {
                let pos = at + i as u64;
                if pos >= offset && pos < end {
                    *byte = data[(pos - offset) as usize];
                }
            }
            let value = u64::from_le_bytes(bytes);
            kick |= self.write_register(&mut regs, at, value);
        }
        if kick {
            self.run(regs);
        }
    }

    /// Applies a register write; true when the channel may have work to start.
    fn write_register(&self, regs: &mut Registers, at: u64, value: u64) -> bool {
        match at {
            GENCTRL => regs.genctrl = value as u8 & 1,
            INTRCTRL => {
                regs.intrctrl =
                    value as u8 & (INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL)
            }
            INTRDELAY => regs.intrdelay = value as u16 & INTRDELAY_MASK,
            CHANCTRL => {
                regs.chanctrl = value as u16 & CHANCTRL_STORED;
                if value as u16 & CHANCTRL_INT_REARM != 0 {
                    regs.armed = true;
                    regs.attnstatus &= !1;
                }
            }
            CHANCMD => return self.command(regs, value as u8),
            DMACOUNT => {
                regs.dmacount = value as u16;
                if !regs.error_halt && regs.state != ChannelState::Active && regs.pending() {
                    regs.state = ChannelState::Active;
                    self.publish(regs);
                }
                return true;
            }
            CHAINADDR => {
                regs.chainaddr = value;
                regs.next_desc = value;
                regs.dmacount = 0;
                regs.completed = 0;
                regs.last_completed = 0;
                self.publish(regs);
            }
            CHANCMP => regs.chancmp = value,
            CHANERR => regs.chanerr &= !(value as u32),
            CHANERR_MASK => regs.chanerr_mask = value as u32,
            _ => {}
        }
        false
    }

    /// CHANCMD: reset beats abort beats suspend beats resume/start/append.
    fn command(&self, regs: &mut Registers, cmd: u8) -> bool {
        if cmd & CHANCMD_RESET != 0 {
            let keep = (
                regs.chanctrl,
                regs.chainaddr,
                regs.chancmp,
                regs.chanerr_mask,
            );
            let device = (regs.genctrl, regs.intrctrl, regs.intrdelay);
            let worker = regs.worker;
            *regs = Registers::power_on();
            (
                regs.chanctrl,
                regs.chainaddr,
                regs.chancmp,
                regs.chanerr_mask,
            ) = keep;
            (regs.genctrl, regs.intrctrl, regs.intrdelay) = device;
            regs.next_desc = regs.chainaddr;
            regs.worker = worker;
        } else if cmd & CHANCMD_ABORT != 0 {
            regs.completed = regs.dmacount;
            regs.state = ChannelState::Halted;
        } else if cmd & CHANCMD_SUSPEND != 0 {
            if matches!(regs.state, ChannelState::Active | ChannelState::Idle) {
                regs.state = ChannelState::Suspended;
            }
        } else if cmd & (CHANCMD_RESUME | CHANCMD_START | CHANCMD_APPEND) != 0
            && regs.state == ChannelState::Suspended
        {
            regs.state = if regs.pending() {
                ChannelState::Active
            } else {
                ChannelState::Idle
            };
            self.publish(regs);
            return true;
        } else {
            return false;
        }
        self.publish(regs);
        false
    }

    /// Runs the channel in this thread up to the inline budget, then hands it to a worker.
    fn run(self: &Arc<Self>, mut regs: MutexGuard<'_, Registers>) {
        if regs.worker {
            return;
        }
        let mut spent = 0u64;
        while spent < self.config.inline_budget {
            match self.step(&mut regs) {
                Step::Ran(cost) => spent += cost,
                Step::Stopped => return,
            }
        }
        regs.worker = true;
        drop(regs);
        let inner = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("ioat-channel".into())
            .spawn(move || inner.work());
        if spawned.is_err() {
            // No thread to be had: finish here rather than leave the channel ACTIVE forever.
            let mut regs = self.regs();
            regs.worker = false;
            while let Step::Ran(_) = self.step(&mut regs) {}
        }
    }

    /// The worker: runs descriptors, releasing the lock between them, until the channel stops.
    fn work(&self) {
        loop {
            let mut regs = self.regs();
            if let Step::Stopped = self.step(&mut regs) {
                regs.worker = false;
                return;
            }
        }
    }

    /// Runs one descriptor if the channel is active and behind DMACOUNT.
    fn step(&self, regs: &mut Registers) -> Step {
        if regs.state != ChannelState::Active {
            return Step::Stopped;
        }
        if !regs.pending() {
            regs.state = ChannelState::Idle;
            self.publish(regs);
            return Step::Stopped;
        }
        let addr = regs.next_desc;
        regs.cdar = addr;
        if !addr.is_multiple_of(DESC_SIZE) {
            let first = regs.completed == 0 && addr == regs.chainaddr;
            self.halt(
                regs,
                if first {
                    CHANERR_CHAIN_ADDR_VALUE_ERR
                } else {
                    CHANERR_NEXT_DESC_ALIGN_ERR
                },
            );
            return Step::Ran(DESC_SIZE);
        }
        let mut desc = IoatDescriptor::new_zeroed();
        if self
            .ports
            .dma
            .read(Iova(addr), desc.as_mut_bytes())
            .is_err()
        {
            self.halt(regs, CHANERR_NEXT_ADDR_ERR);
            return Step::Ran(DESC_SIZE);
        }
        let ctl = desc.ctl.get();
        let size = u64::from(desc.size.get());
        if ctl >> DESC_OP_SHIFT != 0 {
            self.halt(regs, CHANERR_CONTROL_ERR);
            return Step::Ran(DESC_SIZE);
        }
        if size == 0 || size > self.max_transfer() {
            self.halt(regs, CHANERR_LENGTH_ERR);
            return Step::Ran(DESC_SIZE);
        }
        if ctl & DESC_NULL == 0 {
            if let Err(fault) =
                self.ports
                    .dma
                    .copy(Iova(desc.src.get()), Iova(desc.dst.get()), size)
            {
                self.halt(regs, data_error(&fault));
                return Step::Ran(DESC_SIZE + size);
            }
        }
        regs.completed = regs.completed.wrapping_add(1);
        regs.last_completed = addr;
        regs.next_desc = desc.next.get();
        if !regs.pending() {
            regs.state = ChannelState::Idle;
        }
        if ctl & DESC_COMPL_WRITE != 0 && self.write_completion(regs).is_err() {
            self.halt(regs, CHANERR_COMPLETION_ADDR_ERR);
            return Step::Ran(DESC_SIZE + size);
        }
        self.publish(regs);
        if ctl & DESC_INT_EN != 0 && regs.armed {
            self.interrupt(regs);
        }
        Step::Ran(DESC_SIZE + size.max(1))
    }

    fn write_completion(&self, regs: &Registers) -> Result<(), DmaFault> {
        self.ports
            .dma
            .write(Iova(regs.chancmp), &regs.chansts().to_le_bytes())
    }

    /// Sets ATTNSTATUS, disarms, and raises the channel's vector if interrupts are enabled.
    fn interrupt(&self, regs: &mut Registers) {
        regs.attnstatus |= 1;
        regs.armed = false;
        if regs.intrctrl & (INTRCTRL_MSIX_VECTOR_CONTROL | INTRCTRL_MASTER_INT_EN) != 0 {
            self.ports.irq.raise(0);
        }
    }

    /// Halts the channel on an error.
    fn halt(&self, regs: &mut Registers, error: u32) {
        regs.chanerr |= error;
        regs.state = ChannelState::Halted;
        regs.error_halt = true;
        if regs.chanctrl & CHANCTRL_ERR_COMPLETION_EN != 0 {
            // A completion address that faults too has nothing left to report to.
            if self.write_completion(regs).is_err() {
                regs.chanerr |= CHANERR_COMPLETION_ADDR_ERR;
            }
        }
        self.publish(regs);
        if regs.chanctrl & CHANCTRL_ERR_INT_EN != 0 {
            self.interrupt(regs);
        }
    }
}

/// The CHANERR bit for a fault moving data.
fn data_error(fault: &DmaFault) -> u32 {
    match fault.access() {
        Access::Read => CHANERR_READ_DATA_ERR,
        Access::Write => CHANERR_WRITE_DATA_ERR,
    }
}

impl PciDeviceModel for Ioat {
    fn layout(&self) -> PciLayout {
        let reg = |offset, writable, write_one_to_clear| ConfigRegister {
            offset,
            width: 4,
            initial: 0,
            writable,
            write_one_to_clear,
        };
        PciLayout {
            identity: PciIdentity {
                vendor: VENDOR_INTEL,
                device: DEVICE_IOAT_SKX,
                subsystem_vendor: VENDOR_INTEL,
                subsystem: 0,
                revision: 0x04,
                class: 0x08_80_00,
                multi_function: true,
                interrupt_pin: 1,
            },
            bars: vec![BarSpec {
                index: MMIO_BAR,
                size: MMIO_BAR_SIZE,
                width: BarWidth::Bits64,
                prefetchable: false,
            }],
            msix: Some(MsixSpec {
                vectors: 1,
                bar: MMIO_BAR,
                table_offset: 0x2000,
                pba_offset: 0x3000,
            }),
            power_management: true,
            config_registers: vec![
                reg(PCI_DMAUNCERRSTS, 0, !0),
                reg(PCI_CHANERR_INT, 0, !0),
                reg(PCI_CHANERRMSK_INT, !0, 0),
            ],
        }
    }

    fn mmio_read(&self, _bar: u8, offset: u64, data: &mut [u8]) {
        self.inner.read(offset, data);
    }

    fn mmio_write(&self, _bar: u8, offset: u64, data: &[u8]) {
        self.inner.write(offset, data);
    }

    fn reset(&self) {
        let mut regs = self.inner.regs();
        let worker = regs.worker;
        *regs = Registers::power_on();
        regs.worker = worker;
        self.inner.publish(&regs);
    }
}
