//! uiommu-devices: emulated PCI devices whose DMA goes only through their IOMMU domain, so
//! that user-space drivers (the kernel's VFIO selftests, DPDK-style programs) can drive a real
//! device model on uiommu's simulated platform and every byte it moves is translated and
//! permission-checked by a uiommu-core domain.
//!
//! The pieces: the DMA seam ([`DmaSpace`], with [`DomainDma`] over a core [`uiommu_core::Domain`]
//! and [`MemoryDma`] for tests), the interrupt seams ([`InterruptLine`] for models, [`MsiSink`]
//! for whoever delivers), the PCI function ([`pci::PciFunction`]: configuration space, BARs,
//! MSI-X, reset) around a [`pci::PciDeviceModel`], and the models: [`ioat::Ioat`] and
//! [`dsa::Dsa`].
//!
//! This crate must not know about VFIO, iommufd, sysfs or how BAR accesses are trapped: it
//! offers config and BAR accesses as calls, DMA through whichever domain it is handed, and
//! interrupts to whichever sink it is given.
//!
//! Lock order: a function's configuration space → its MSI-X state → the sink; a model's
//! registers → the DMA space's domain lock, and → MSI-X state → the sink. A function reset
//! takes the model's registers and then configuration space, never both at once.

#![deny(missing_docs)]

mod dma;
mod domain_dma;
pub mod dsa;
mod host_memory;
pub mod ioat;
mod irq;
pub mod pci;

pub use dma::{Access, BusMasterDma, DmaFault, DmaSpace, MemoryDma};
pub use domain_dma::DomainDma;
pub use irq::{InterruptLine, MsiMessage, MsiSink, RecordingSink};
