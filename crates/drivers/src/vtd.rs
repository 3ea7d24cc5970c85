//! `intel-iommu`: Intel VT-d, one instance per DRHD unit of the DMAR table.
//!
//! Which devices a unit serves is the firmware parser's business (device scopes,
//! `INCLUDE_PCI_ALL`): it names the unit's fwnode in their fwspecs. The unit keeps its RMRRs:
//! each device in an RMRR's scope reports the range as a direct reserved region
//! (`IOMMU_RESV_DIRECT`), which the core identity-maps into the device's DMA default domain,
//! and every device reports the interrupt window as a hardware MSI region, as
//! `intel_iommu_get_resv_regions()` does. Groups follow `intel_iommu_device_group()`:
//! `pci_device_group` for PCI, one per device otherwise.
//!
//! Paging domains use the VT-d second-stage format. Dirty tracking needs second-stage
//! access/dirty support (`ECAP.SSADS`); the hardware records writes only while tracking is on
//! (SSADE in the PASID entry). Identity and blocked domains are static. Not here: first-stage
//! and nested domains, PASIDs, and Linux's relaxable RMRRs for USB and graphics devices (the
//! platform has no class codes), RMRR scopes that name a bridge for everything below it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use uiommu_core::{
    Capability, CoreError, DeviceId, DeviceInfo, DomainOps, DomainRequest, FwNode, GroupChoice,
    InstanceId, IommuOps, ReservedKind, ReservedRegion, Result,
};
use uiommu_pgtable::fmt::vtdss::VtdSs;

use crate::paging::{lock, DirtySupport, PagingDomain, StaticDomain};
use crate::resv::{x86_msi_window, DirectRange};
use crate::{pci_or_per_device, DRIVER_VTD};

/// What a DRHD unit reports in its capability registers, as far as its driver cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VtdFeatures {
    /// Input address width of second-stage tables (from `CAP.SAGAW`/`MGAW`: 39, 48 or 57).
    pub address_width: u32,
    /// Second-stage access/dirty bits (`ECAP.SSADS`).
    pub dirty: bool,
    /// Snoop control (`ECAP.SC`): the unit can enforce cache coherency.
    pub snoop_control: bool,
    /// Nested translation (`ECAP.NEST`): second-stage domains can be nest parents.
    pub nesting: bool,
}

impl Default for VtdFeatures {
    /// QEMU's `intel-iommu` with `aw-bits=48`: no dirty bits, no snoop control, no nesting.
    fn default() -> Self {
        VtdFeatures {
            address_width: 48,
            dirty: false,
            snoop_control: false,
            nesting: false,
        }
    }
}

/// One VT-d remapping unit (Linux `struct intel_iommu`).
///
/// Locking: `devices` is a leaf mutex taken in probe and release, under the core's lock.
#[derive(Debug)]
pub struct IntelIommu {
    fwnode: FwNode,
    features: VtdFeatures,
    rmrrs: Vec<DirectRange>,
    devices: Mutex<BTreeSet<DeviceId>>,
}

impl IntelIommu {
    /// The DRHD unit firmware described under `fwnode`, with the RMRRs whose devices it
    /// serves. Register the result with the core under the same fwnode.
    pub fn new(fwnode: FwNode, features: VtdFeatures, rmrrs: Vec<DirectRange>) -> Arc<IntelIommu> {
        Arc::new(IntelIommu {
            fwnode,
            features,
            rmrrs,
            devices: Mutex::new(BTreeSet::new()),
        })
    }

    /// The firmware node the unit was described under.
    pub fn fwnode(&self) -> &FwNode {
        &self.fwnode
    }

    /// The devices the unit has probed.
    pub fn devices(&self) -> Vec<DeviceId> {
        lock(&self.devices).iter().copied().collect()
    }

    fn paging(&self, dirty: bool) -> Result<Box<dyn DomainOps>> {
        if dirty && !self.features.dirty {
            return Err(CoreError::NotSupported);
        }
        let format = VtdSs::new(self.features.address_width).map_err(crate::paging::to_core)?;
        let dirty = if dirty {
            DirtySupport::Switched
        } else {
            DirtySupport::None
        };
        Ok(Box::new(PagingDomain::new(format, dirty, false)?))
    }
}

impl IommuOps for IntelIommu {
    fn name(&self) -> &str {
        DRIVER_VTD
    }

    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        let instance = dev.iommu.ok_or(CoreError::NoDevice)?;
        lock(&self.devices).insert(dev.id);
        Ok(instance)
    }

    fn release_device(&self, dev: &DeviceInfo<'_>) {
        lock(&self.devices).remove(&dev.id);
    }

    fn device_group(&self, dev: &DeviceInfo<'_>) -> GroupChoice {
        pci_or_per_device(dev)
    }

    fn domain_alloc(
        &self,
        _dev: &DeviceInfo<'_>,
        request: DomainRequest<'_>,
    ) -> Result<Box<dyn DomainOps>> {
        match request {
            DomainRequest::Blocked | DomainRequest::Identity => {
                Ok(Box::new(StaticDomain::default()))
            }
            DomainRequest::Dma => self.paging(false),
            DomainRequest::Paging { flags, data } => {
                if data.is_some() || (flags.nest_parent && !self.features.nesting) {
                    return Err(CoreError::NotSupported);
                }
                self.paging(flags.dirty_tracking)
            }
            DomainRequest::Nested { .. } => Err(CoreError::NotSupported),
        }
    }

    fn capable(&self, _dev: &DeviceInfo<'_>, cap: Capability) -> bool {
        match cap {
            // Linux: DMA through VT-d is always cache coherent.
            Capability::CacheCoherency => true,
            Capability::EnforceCacheCoherency => self.features.snoop_control,
            Capability::DirtyTracking => self.features.dirty,
        }
    }

    fn reserved_regions(&self, dev: &DeviceInfo<'_>) -> Vec<ReservedRegion> {
        let mut regions: Vec<ReservedRegion> = self
            .rmrrs
            .iter()
            .filter(|r| r.covers(dev))
            .map(|r| r.region(ReservedKind::Direct))
            .collect();
        regions.push(x86_msi_window());
        regions
    }
}
