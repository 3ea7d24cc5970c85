//! uiommu-core: the IOMMU core, as Linux's `drivers/iommu/iommu.c` is for the kernel.
//!
//! Drivers register IOMMU instances under firmware nodes; devices carry a fwspec naming the
//! fwnode of the IOMMU that serves them; the core routes each device to exactly that instance's
//! driver, by construction ([`ProbePolicy::ByFwnode`]), groups devices that cannot be isolated
//! from each other, gives each group a default domain, and arbitrates DMA ownership between
//! kernel drivers and users such as iommufd.
//!
//! The crate knows nothing of iommufd, of any particular driver, or of how a platform is
//! described, beyond the TOML format in [`platform`]: drivers plug in through [`IommuOps`] and
//! [`DomainOps`].
//!
//! Start at [`IommuCore`]; the driver interface is in [`driver`].
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod addr;
pub mod device;
pub mod domain;
pub mod driver;
pub mod error;
pub mod fwnode;
mod group;
mod iommu;
pub mod platform;

pub use addr::{inclusive_last, Iova, PhysAddr, Prot};
pub use device::{BusInfo, BusKind, DeviceDesc, DeviceId, PciAddress, PciFunction, PciKind};
pub use domain::{Domain, DomainId};
pub use driver::{
    Aperture, Capability, DeviceInfo, DomainOps, DomainRequest, DomainType, GroupChoice, HwInfo,
    IommuOps, PagingFlags, ReservedKind, ReservedRegion, UserData,
};
pub use error::{CoreError, Result};
pub use fwnode::{FwNode, Fwspec};
pub use iommu::{
    CoreConfig, DefaultDomainPolicy, DeviceReport, DmaOwner, GroupId, InstanceId, InstanceReport,
    IommuCore, ProbePolicy, ProbeState,
};
