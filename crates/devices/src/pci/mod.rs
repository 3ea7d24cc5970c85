//! The PCI side of an emulated device: what a device model declares ([`PciLayout`]) and
//! implements ([`PciDeviceModel`]), and the function that wraps it ([`PciFunction`]) with a
//! type 0 configuration space, BAR sizing, capabilities (MSI-X, PCI Express, power management),
//! function-level reset, MSI-X routing and the bus-master gate on DMA.
//!
//! Adding a device is one file: a struct implementing [`PciDeviceModel`], built from the
//! [`DevicePorts`] its function hands it.

mod config;
mod function;
mod msix;

use std::fmt;
use std::sync::Arc;

use crate::dma::DmaSpace;
use crate::irq::InterruptLine;

pub use config::{CONFIG_SPACE_SIZE, LEGACY_CONFIG_SIZE};
pub use function::PciFunction;

/// Capability ids and register offsets of the capabilities a [`PciFunction`] builds, fixed so
/// that drivers and tests can find them without walking.
pub mod regs {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits), then the 24-bit class code.
    pub const REVISION: u16 = 0x08;
    /// Header type (8 bits); bit 7 marks a multi-function device.
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First base address register; BAR n is at `BAR0 + 4 n`.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID (16 bits), then subsystem ID.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Expansion ROM base address (unimplemented: reads 0).
    pub const ROM_ADDRESS: u16 = 0x30;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITY_LIST: u16 = 0x34;
    /// Interrupt line (8 bits, read/write scratch).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (8 bits).
    pub const INTERRUPT_PIN: u16 = 0x3d;

    /// COMMAND: memory space decoding.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// COMMAND: bus mastering (DMA).
    pub const COMMAND_MASTER: u16 = 1 << 2;
    /// COMMAND: INTx disable.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// STATUS: the capabilities list exists.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;

    /// Capability id of power management.
    pub const CAP_ID_PM: u8 = 0x01;
    /// Capability id of PCI Express.
    pub const CAP_ID_EXP: u8 = 0x10;
    /// Capability id of MSI-X.
    pub const CAP_ID_MSIX: u8 = 0x11;

    /// Where the MSI-X capability sits (when the layout has one).
    pub const MSIX_CAP: u16 = 0x80;
    /// Where the PCI Express capability sits.
    pub const EXP_CAP: u16 = 0x90;
    /// Where the power management capability sits (when the layout has one).
    pub const PM_CAP: u16 = 0xe0;

    /// MSI-X message control, relative to the capability: table size - 1 in bits 10:0.
    pub const MSIX_FLAGS: u16 = 2;
    /// MSI-X message control: function mask.
    pub const MSIX_FLAGS_MASKALL: u16 = 1 << 14;
    /// MSI-X message control: MSI-X enable.
    pub const MSIX_FLAGS_ENABLE: u16 = 1 << 15;
    /// MSI-X table offset and BIR, relative to the capability.
    pub const MSIX_TABLE: u16 = 4;
    /// MSI-X PBA offset and BIR, relative to the capability.
    pub const MSIX_PBA: u16 = 8;
    /// Bytes per MSI-X table entry.
    pub const MSIX_ENTRY_SIZE: u64 = 16;
    /// MSI-X entry vector control: masked.
    pub const MSIX_ENTRY_CTRL_MASKBIT: u32 = 1;

    /// PCI Express device capabilities, relative to the capability.
    pub const EXP_DEVCAP: u16 = 4;
    /// Device capabilities: function-level reset supported.
    pub const EXP_DEVCAP_FLR: u32 = 1 << 28;
    /// PCI Express device control, relative to the capability.
    pub const EXP_DEVCTL: u16 = 8;
    /// Device control: initiate function-level reset (reads 0).
    pub const EXP_DEVCTL_BCR_FLR: u16 = 1 << 15;
    /// PCI Express device status, relative to the capability.
    pub const EXP_DEVSTA: u16 = 0x0a;

    /// Power management control/status, relative to the capability.
    pub const PM_CTRL: u16 = 4;
    /// PM control: the power state field (0 = D0, 3 = D3hot).
    pub const PM_CTRL_STATE_MASK: u16 = 3;
}

/// Who the function says it is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, subclass, programming interface (24 bits).
    pub class: u32,
    /// Header type bit 7: one function of several in the device.
    pub multi_function: bool,
    /// Interrupt pin (0 none, 1..=4 INTA..INTD); INTx itself is not delivered.
    pub interrupt_pin: u8,
}

/// Width of a memory BAR's address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BarWidth {
    /// A 32-bit memory BAR.
    Bits32,
    /// A 64-bit memory BAR, using the next BAR slot for the upper half.
    Bits64,
}

/// One memory BAR.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BarSpec {
    /// Slot 0..=5 (a 64-bit BAR also takes the next one).
    pub index: u8,
    /// Size in bytes: a power of two, at least 16 (4 GiB at most for a 32-bit BAR).
    pub size: u64,
    /// Address width.
    pub width: BarWidth,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// Where an MSI-X table and its pending-bit array live.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MsixSpec {
    /// Number of vectors, 1..=2048.
    pub vectors: u16,
    /// BAR holding the table and the PBA.
    pub bar: u8,
    /// Offset of the table in the BAR (8-byte aligned).
    pub table_offset: u32,
    /// Offset of the PBA in the BAR (8-byte aligned).
    pub pba_offset: u32,
}

/// A device-specific register in configuration space outside every capability: its initial
/// value and which bits software may write or clear by writing 1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConfigRegister {
    /// Offset, naturally aligned for `width`.
    pub offset: u16,
    /// 1, 2 or 4 bytes.
    pub width: u8,
    /// Value after reset.
    pub initial: u32,
    /// Read/write bits.
    pub writable: u32,
    /// Write-1-to-clear bits.
    pub write_one_to_clear: u32,
}

/// Everything a function is built from, declared once by its model.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PciLayout {
    /// Ids and class.
    pub identity: PciIdentity,
    /// Memory BARs.
    pub bars: Vec<BarSpec>,
    /// MSI-X, if the function has it.
    pub msix: Option<MsixSpec>,
    /// A power management capability whose D3hot to D0 transition resets the function
    /// (No_Soft_Reset clear).
    pub power_management: bool,
    /// Device-specific configuration registers.
    pub config_registers: Vec<ConfigRegister>,
}

/// A model's connections to the outside, handed to it when its function is built: DMA through
/// the function's bus-master gate and IOMMU, and interrupts through the function's MSI-X.
#[derive(Clone, Debug)]
pub struct DevicePorts {
    /// Memory, addressed by IOVA.
    pub dma: Arc<dyn DmaSpace>,
    /// Vectors, routed by MSI-X.
    pub irq: Arc<dyn InterruptLine>,
}

/// A device model behind a PCI function: its registers and behaviour, nothing of PCI
/// configuration space (which the function owns).
///
/// BAR accesses reach the model already checked by the function: `bar` is a BAR of the
/// layout, `offset + data.len()` lies inside it, the size is 1, 2, 4, 8 or 64 and naturally
/// aligned, memory decoding is on, and the MSI-X table and PBA are handled by the function.
/// Methods take `&self`: models synchronize internally and may DMA from their own threads.
pub trait PciDeviceModel: Send + Sync + fmt::Debug {
    /// The function's layout; called once, when the function is built.
    fn layout(&self) -> PciLayout;

    /// A load from a BAR.
    fn mmio_read(&self, bar: u8, offset: u64, data: &mut [u8]);

    /// A store to a BAR. It takes effect before the call returns, as a non-posted MMIO write
    /// observed by the next load does.
    fn mmio_write(&self, bar: u8, offset: u64, data: &[u8]);

    /// Return to power-on state (function-level reset, D3hot to D0): stop all DMA before
    /// returning.
    fn reset(&self);
}

/// Why a configuration or BAR access was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AccessError {
    /// The range does not lie inside configuration space or the BAR.
    #[error("access at {offset:#x}+{len} is out of range")]
    OutOfRange {
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
    },
    /// BAR accesses must be 1, 2, 4, 8 or 64 bytes, naturally aligned.
    #[error("BAR access at {offset:#x}+{len} is not a naturally aligned 1, 2, 4, 8 or 64 bytes")]
    Unaligned {
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
    },
    /// The function has no such BAR.
    #[error("no BAR {0}")]
    NoSuchBar(u8),
}

/// Why a model's layout cannot be built.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum LayoutError {
    /// A BAR is invalid (index, size, overlap with another BAR's slots).
    #[error("BAR {index}: {why}")]
    Bar {
        /// The BAR slot.
        index: u8,
        /// What is wrong.
        why: &'static str,
    },
    /// The MSI-X table or PBA does not fit its BAR, or the vector count is out of range.
    #[error("MSI-X: {0}")]
    Msix(&'static str),
    /// A device-specific register is misplaced.
    #[error("config register at {offset:#x}: {why}")]
    ConfigRegister {
        /// Its offset.
        offset: u16,
        /// What is wrong.
        why: &'static str,
    },
}
