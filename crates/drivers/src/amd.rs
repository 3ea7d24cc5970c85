//! `amd-iommu`: AMD-Vi, one instance per IVHD block of the IVRS table.
//!
//! The firmware parser routes devices to an IVHD by naming its fwnode in their fwspecs, with
//! their 16-bit device IDs as ids; an IVRS alias entry adds the alias's device ID to the same
//! fwspec, and, when the alias sits on the device's bus, gives the PCI function a DMA alias (as
//! Linux's `setup_aliases()` adds one with `pci_add_dma_alias()`), which is what makes the
//! two share a group under `pci_device_group`. The driver programs a device-table entry for
//! every device ID of a device. IVMD unity ranges become direct reserved regions; every device
//! also reports the interrupt window (MSI) and the HyperTransport hole (reserved), as
//! `amd_iommu_get_resv_regions()` does.
//!
//! Paging domains use the AMD v1 format. Dirty tracking needs `EFR.HDSup`; the hardware
//! records writes only while the DTE's HAD bits enable it. Identity and blocked domains are
//! static. Not here: v2 (x86-64) tables, nesting, PASIDs, ACPI HID devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use uiommu_core::{
    Capability, CoreError, DeviceId, DeviceInfo, DomainOps, DomainRequest, FwNode, GroupChoice,
    InstanceId, IommuOps, Iova, Prot, ReservedKind, ReservedRegion, Result,
};
use uiommu_pgtable::fmt::amdv1::AmdV1;

use crate::paging::{lock, DirtySupport, PagingDomain, StaticDomain};
use crate::resv::{x86_msi_window, DirectRange};
use crate::{pci_or_per_device, DRIVER_AMD};

/// Start of the HyperTransport reserved window (Linux `HT_RANGE_START`).
pub const HT_RANGE_START: u64 = 0xfd_0000_0000;
/// Last byte of it (Linux `HT_RANGE_END`).
pub const HT_RANGE_LAST: u64 = 0xff_ffff_ffff;

/// What an IVHD block and the IOMMU's extended feature register report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AmdFeatures {
    /// Levels of v1 page tables (the DTE "mode", 1–6; Linux's host page-table level).
    pub levels: u32,
    /// Hardware dirty bits (`EFR.HDSup`).
    pub dirty: bool,
    /// Coherent DMA: leaves get FC (force coherent) as Linux writes them.
    pub coherent: bool,
}

impl Default for AmdFeatures {
    /// QEMU's `amd-iommu`: 4-level v1 tables (48-bit IOVAs), no dirty bits, coherent.
    fn default() -> Self {
        AmdFeatures {
            levels: 4,
            dirty: false,
            coherent: true,
        }
    }
}

/// One AMD-Vi IOMMU (Linux `struct amd_iommu`).
///
/// Locking: `device_table` is a leaf mutex taken in probe and release, under the core's lock.
#[derive(Debug)]
pub struct AmdIommu {
    fwnode: FwNode,
    features: AmdFeatures,
    unity: Vec<DirectRange>,
    /// Device ID → the device whose DTE it is.
    device_table: Mutex<BTreeMap<u16, DeviceId>>,
}

impl AmdIommu {
    /// The IOMMU an IVHD block described under `fwnode`, with the IVMD unity ranges of its
    /// devices. Register the result with the core under the same fwnode.
    pub fn new(fwnode: FwNode, features: AmdFeatures, unity: Vec<DirectRange>) -> Arc<AmdIommu> {
        Arc::new(AmdIommu {
            fwnode,
            features,
            unity,
            device_table: Mutex::new(BTreeMap::new()),
        })
    }

    /// The firmware node the IOMMU was described under.
    pub fn fwnode(&self) -> &FwNode {
        &self.fwnode
    }

    /// The device IDs whose device-table entries belong to `dev`.
    pub fn device_ids(&self, dev: DeviceId) -> Vec<u16> {
        lock(&self.device_table)
            .iter()
            .filter(|(_, &d)| d == dev)
            .map(|(&id, _)| id)
            .collect()
    }

    /// A device's IDs: its fwspec ids, or its requester ID when firmware gave none.
    fn ids_of(dev: &DeviceInfo<'_>) -> Result<Vec<u16>> {
        let mut ids = Vec::new();
        for &id in dev.fwspec_ids() {
            ids.push(
                u16::try_from(id).map_err(|_| CoreError::Invalid("AMD device IDs are 16-bit"))?,
            );
        }
        if ids.is_empty() {
            if let Some(f) = dev.desc.pci_function() {
                ids.push(f.address.requester_id());
            }
        }
        if ids.is_empty() {
            return Err(CoreError::NoDevice);
        }
        Ok(ids)
    }

    fn paging(&self, dirty: bool) -> Result<Box<dyn DomainOps>> {
        if dirty && !self.features.dirty {
            return Err(CoreError::NotSupported);
        }
        let mut format = AmdV1::new(self.features.levels).map_err(crate::paging::to_core)?;
        if self.features.coherent {
            format = format.with_force_coherent();
        }
        let dirty = if dirty {
            DirtySupport::Switched
        } else {
            DirtySupport::None
        };
        Ok(Box::new(PagingDomain::new(format, dirty, false)?))
    }
}

impl IommuOps for AmdIommu {
    fn name(&self) -> &str {
        DRIVER_AMD
    }

    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        let instance = dev.iommu.ok_or(CoreError::NoDevice)?;
        let ids = Self::ids_of(dev)?;
        let mut table = lock(&self.device_table);
        // An alias shared by two devices is one DTE; the later device takes it over, as
        // Linux's clone_alias() copies the entry.
        for id in ids {
            table.insert(id, dev.id);
        }
        Ok(instance)
    }

    fn release_device(&self, dev: &DeviceInfo<'_>) {
        lock(&self.device_table).retain(|_, d| *d != dev.id);
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
                if data.is_some() || flags.nest_parent {
                    return Err(CoreError::NotSupported);
                }
                self.paging(flags.dirty_tracking)
            }
            DomainRequest::Nested { .. } => Err(CoreError::NotSupported),
        }
    }

    fn capable(&self, _dev: &DeviceInfo<'_>, cap: Capability) -> bool {
        match cap {
            Capability::CacheCoherency | Capability::EnforceCacheCoherency => {
                self.features.coherent
            }
            Capability::DirtyTracking => self.features.dirty,
        }
    }

    fn reserved_regions(&self, dev: &DeviceInfo<'_>) -> Vec<ReservedRegion> {
        let mut regions: Vec<ReservedRegion> = self
            .unity
            .iter()
            .filter(|r| r.covers(dev))
            .map(|r| r.region(ReservedKind::Direct))
            .collect();
        regions.push(x86_msi_window());
        regions.push(ReservedRegion {
            start: Iova(HT_RANGE_START),
            last: Iova(HT_RANGE_LAST),
            prot: Prot::NONE,
            kind: ReservedKind::Reserved,
        });
        regions
    }
}
