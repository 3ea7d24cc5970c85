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
//!
//! # Example
//! A driver with one instance, and two devices: one whose firmware names the instance's
//! fwnode, one that no firmware table mentions.
//! ```
//! use std::any::Any;
//! use std::sync::Arc;
//! use uiommu_core::*;
//!
//! #[derive(Debug)]
//! struct Passthrough;
//!
//! #[derive(Debug)]
//! struct Nothing;
//!
//! impl DomainOps for Nothing {
//!     fn as_any(&self) -> &dyn Any {
//!         self
//!     }
//! }
//!
//! impl IommuOps for Passthrough {
//!     fn name(&self) -> &str {
//!         "passthrough"
//!     }
//!     // No "is this my device?" check: the core only routes devices firmware gave us.
//!     fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
//!         dev.iommu.ok_or(CoreError::NoDevice)
//!     }
//!     fn domain_alloc(&self, _: &DeviceInfo<'_>, _: DomainRequest<'_>) -> Result<Box<dyn DomainOps>> {
//!         Ok(Box::new(Nothing))
//!     }
//! }
//!
//! let core = IommuCore::new(CoreConfig {
//!     default_domain: DefaultDomainPolicy::Passthrough,
//!     ..CoreConfig::default()
//! });
//! let node = FwNode::new("/soc/iommu@1000");
//! let spec = Fwspec { fwnode: node.clone(), ids: vec![7] };
//! // The device comes first: it waits for its IOMMU (EPROBE_DEFER).
//! let nic = core.add_device(DeviceDesc::platform("nic"), Some(spec)).unwrap();
//! assert_eq!(core.probe_state(nic).unwrap(), ProbeState::Deferred);
//! let iommu = core.register("iommu0", Some(node), Arc::new(Passthrough)).unwrap();
//! let uart = core.add_device(DeviceDesc::platform("uart"), None).unwrap();
//! assert!(matches!(core.probe_state(nic).unwrap(), ProbeState::Bound { instance, .. } if instance == iommu));
//! assert_eq!(core.default_domain(nic).unwrap().ty(), DomainType::Identity);
//! assert_eq!(core.probe_state(uart).unwrap(), ProbeState::NoIommu);
//! ```
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
    IommuOps, PagingFlags, ReservedKind, ReservedRegion, UserData, ViommuOps,
};
pub use error::{CoreError, Result};
pub use fwnode::{FwNode, Fwspec};
pub use iommu::{
    CoreConfig, DefaultDomainPolicy, DeviceReport, DmaOwner, GroupId, InstanceId, InstanceReport,
    IommuCore, ProbePolicy, ProbeState,
};
