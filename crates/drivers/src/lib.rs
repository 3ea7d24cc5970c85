//! uiommu-drivers: the drivers for the IOMMUs that real firmware describes — Arm SMMUv3
//! ([`smmuv3`], `arm-smmu-v3`), Intel VT-d ([`vtd`], `intel-iommu`) and AMD-Vi ([`amd`],
//! `amd-iommu`) — as uiommu-core drivers.
//!
//! Each driver object is one hardware instance: whoever reads the firmware (the firmware
//! parsers, a TOML platform through the CLI) builds it from the instance's parameters
//! ([`SmmuV3::new`], [`IntelIommu::new`], [`AmdIommu::new`], or [`create_default`] by driver
//! name) and registers it with the core under the fwnode the firmware gave; the core then
//! routes to it exactly the devices whose fwspec names that fwnode. The drivers group devices
//! by Linux's rules and allocate domains on their real page-table formats from
//! uiommu-pgtable, through one shared paging domain type ([`PagingDomain`]).
//!
//! This crate must not know how firmware is parsed, nor anything of iommufd: it sees devices
//! only through the core's [`DeviceInfo`].
//!
//! # Example
//! An SMMU with a NIC on stream ID 7, translating through a stage-1 table.
//! ```
//! use uiommu_core::*;
//! use uiommu_drivers::smmuv3::{SmmuV3, SmmuV3Features};
//!
//! let core = IommuCore::default();
//! let node = FwNode::new("/smmu@2b400000");
//! let smmu = SmmuV3::new(node.clone(), SmmuV3Features::default());
//! core.register("smmu0", Some(node.clone()), smmu.clone())?;
//! let nic = core.add_device(DeviceDesc::platform("nic"), Some(Fwspec { fwnode: node, ids: vec![7] }))?;
//! assert_eq!(smmu.stream_ids(nic), [7]);
//! let domain = core.default_domain(nic).unwrap();
//! domain.map(Iova(0x10_0000), PhysAddr(0x8000_0000), 0x20_0000, Prot::READ_WRITE)?;
//! assert_eq!(domain.iova_to_phys(Iova(0x10_1234)), Some(PhysAddr(0x8000_1234)));
//! # Ok::<(), CoreError>(())
//! ```

pub mod amd;
mod paging;
mod resv;
pub mod smmuv3;
pub mod vtd;

use std::sync::Arc;

use uiommu_core::{BusKind, DeviceInfo, FwNode, GroupChoice, IommuOps};

pub use amd::{AmdFeatures, AmdIommu};
pub use paging::{DirtySupport, PagingDomain, StaticDomain};
pub use resv::DirectRange;
pub use smmuv3::{SmmuV3, SmmuV3Features};
pub use vtd::{IntelIommu, VtdFeatures};

/// The Arm SMMUv3 driver's name, as Linux calls it.
pub const DRIVER_SMMUV3: &str = "arm-smmu-v3";
/// The Intel VT-d driver's name.
pub const DRIVER_VTD: &str = "intel-iommu";
/// The AMD-Vi driver's name.
pub const DRIVER_AMD: &str = "amd-iommu";
/// Every driver name this crate answers to, for platform descriptions.
pub const DRIVER_NAMES: &[&str] = &[DRIVER_SMMUV3, DRIVER_VTD, DRIVER_AMD];

/// A driver instance for `driver` under `fwnode`, with the features QEMU's model of that
/// IOMMU reports and no firmware ranges: what a platform description that names only the
/// driver gets. `None` for a name not in [`DRIVER_NAMES`].
pub fn create_default(driver: &str, fwnode: &FwNode) -> Option<Arc<dyn IommuOps>> {
    let fwnode = fwnode.clone();
    Some(match driver {
        DRIVER_SMMUV3 => SmmuV3::new(fwnode, SmmuV3Features::default()),
        DRIVER_VTD => IntelIommu::new(fwnode, VtdFeatures::default(), Vec::new()),
        DRIVER_AMD => AmdIommu::new(fwnode, AmdFeatures::default(), Vec::new()),
        _ => return None,
    })
}

/// Grouping shared by all three drivers: `pci_device_group` for PCI, one group per device
/// for everything else (Linux's `generic_device_group`).
fn pci_or_per_device(dev: &DeviceInfo<'_>) -> GroupChoice {
    match dev.bus() {
        BusKind::Pci => GroupChoice::Pci,
        _ => GroupChoice::PerDevice,
    }
}
