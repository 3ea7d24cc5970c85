//! `arm-smmu-v3`: the Arm System MMU v3, one instance per SMMU that firmware (IORT's SMMUv3
//! node, a DT `arm,smmu-v3` node) describes.
//!
//! Devices reach it with their stream IDs in the fwspec ids, which is how IORT id mappings
//! and DT `iommus`/`iommu-map` hand them over. As in Linux (`arm_smmu_insert_master()`), one
//! stream ID belongs to one device: a second device naming a stream ID already in the stream
//! table fails its probe with `EINVAL` (PCI RID aliases repeated within one device are fine).
//! Groups follow `arm_smmu_device_group()`: `pci_device_group` for PCI, one per device
//! otherwise.
//!
//! Paging domains are stage 1 (Arm LPAE stage 1, 4 KiB granule) when the SMMU has stage 1,
//! else stage 2; nest parents are stage 2 and need both stages. A domain allocated for dirty
//! tracking needs HTTU (hardware dirty-state update) and writes its writable leaves with DBM.
//! Identity and blocked domains are static, as in Linux. Nested (vSTE) domains are not here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uiommu_core::{
    Capability, CoreError, DeviceId, DeviceInfo, DomainOps, DomainRequest, FwNode, GroupChoice,
    InstanceId, IommuOps, Iova, Prot, ReservedKind, ReservedRegion, Result,
};
use uiommu_pgtable::fmt::arm_lpae::ArmLpae;

use crate::paging::{lock, DirtySupport, PagingDomain, StaticDomain};
use crate::{pci_or_per_device, DRIVER_SMMUV3};

/// Linux's `MSI_IOVA_BASE`: where the SMMUv3 driver places the software MSI window.
pub const MSI_IOVA_BASE: u64 = 0x800_0000;
/// Linux's `MSI_IOVA_LENGTH`.
pub const MSI_IOVA_LENGTH: u64 = 0x10_0000;

/// What an SMMU reports in its ID registers, as far as its driver cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SmmuV3Features {
    /// Stage-1 translation (`IDR0.S1P`).
    pub stage1: bool,
    /// Stage-2 translation (`IDR0.S2P`).
    pub stage2: bool,
    /// Hardware update of the dirty state (`IDR0.HTTU` = 2, access and dirty): Linux's
    /// `ARM_SMMU_FEAT_HD`, needed for dirty-tracking domains.
    pub httu_dirty: bool,
    /// Coherent table walks and DMA (`IDR0.COHACC`).
    pub coherent: bool,
    /// Width of stream IDs (`IDR1.SIDSIZE`).
    pub sid_bits: u32,
    /// Input address width of a stage-1 table (Linux caps it at 48 without 52-bit VA).
    pub va_bits: u32,
    /// Intermediate physical address width, the input of stage 2 (`IDR5.OAS` as Linux uses it).
    pub ias: u32,
}

impl Default for SmmuV3Features {
    /// QEMU's `virt` SMMUv3: both stages (since QEMU 8.2), no HTTU, coherent, 16-bit stream
    /// IDs, 48-bit addresses.
    fn default() -> Self {
        SmmuV3Features {
            stage1: true,
            stage2: true,
            httu_dirty: false,
            coherent: true,
            sid_bits: 16,
            va_bits: 48,
            ias: 48,
        }
    }
}

/// One SMMUv3 instance (Linux `struct arm_smmu_device`).
///
/// Locking: `streams` is a leaf mutex, taken under the core's state lock in probe and release.
#[derive(Debug)]
pub struct SmmuV3 {
    fwnode: FwNode,
    features: SmmuV3Features,
    streams: Mutex<Streams>,
}

/// The stream table as the driver tracks it: which device owns each stream ID.
#[derive(Debug, Default)]
struct Streams {
    owner: HashMap<u32, DeviceId>,
    of_device: HashMap<DeviceId, Vec<u32>>,
}

impl SmmuV3 {
    /// An SMMU described by firmware under `fwnode`. Register the result with the core under
    /// the same fwnode.
    pub fn new(fwnode: FwNode, features: SmmuV3Features) -> Arc<SmmuV3> {
        Arc::new(SmmuV3 {
            fwnode,
            features,
            streams: Mutex::new(Streams::default()),
        })
    }

    /// The firmware node the SMMU was described under.
    pub fn fwnode(&self) -> &FwNode {
        &self.fwnode
    }

    /// Its features.
    pub fn features(&self) -> SmmuV3Features {
        self.features
    }

    /// The stream IDs `dev` owns in the stream table, in fwspec order without repeats.
    pub fn stream_ids(&self, dev: DeviceId) -> Vec<u32> {
        lock(&self.streams)
            .of_device
            .get(&dev)
            .cloned()
            .unwrap_or_default()
    }

    fn paging(&self, stage2: bool, dirty: bool) -> Result<Box<dyn DomainOps>> {
        let f = self.features;
        if dirty && (!f.httu_dirty || stage2) {
            return Err(CoreError::NotSupported);
        }
        let format = if stage2 {
            ArmLpae::stage2(f.ias)
        } else {
            ArmLpae::stage1(f.va_bits, dirty)
        }
        .map_err(crate::paging::to_core)?;
        let dirty = if dirty {
            DirtySupport::AlwaysOn
        } else {
            DirtySupport::None
        };
        Ok(Box::new(PagingDomain::new(format, dirty, f.coherent)?))
    }
}

impl IommuOps for SmmuV3 {
    fn name(&self) -> &str {
        DRIVER_SMMUV3
    }

    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        let instance = dev.iommu.ok_or(CoreError::NoDevice)?;
        let ids = dev.fwspec_ids();
        if ids.is_empty() {
            return Err(CoreError::NoDevice);
        }
        if ids
            .iter()
            .any(|&sid| u64::from(sid) >> self.features.sid_bits != 0)
        {
            // Linux answers ERANGE (`arm_smmu_sid_in_range()`); the core has no such errno.
            return Err(CoreError::Invalid("stream ID beyond the SMMU's SIDSIZE"));
        }
        let mut streams = lock(&self.streams);
        if ids
            .iter()
            .any(|sid| streams.owner.get(sid).is_some_and(|&owner| owner != dev.id))
        {
            return Err(CoreError::Invalid(
                "stream ID already in the stream table for another device",
            ));
        }
        let mut mine = Vec::new();
        for &sid in ids {
            if !mine.contains(&sid) {
                mine.push(sid);
                streams.owner.insert(sid, dev.id);
            }
        }
        streams.of_device.insert(dev.id, mine);
        Ok(instance)
    }

    fn release_device(&self, dev: &DeviceInfo<'_>) {
        let mut streams = lock(&self.streams);
        for sid in streams.of_device.remove(&dev.id).unwrap_or_default() {
            streams.owner.remove(&sid);
        }
    }

    fn device_group(&self, dev: &DeviceInfo<'_>) -> GroupChoice {
        pci_or_per_device(dev)
    }

    fn domain_alloc(
        &self,
        _dev: &DeviceInfo<'_>,
        request: DomainRequest<'_>,
    ) -> Result<Box<dyn DomainOps>> {
        let f = self.features;
        match request {
            DomainRequest::Blocked | DomainRequest::Identity => {
                Ok(Box::new(StaticDomain::default()))
            }
            DomainRequest::Dma => {
                if !f.stage1 && !f.stage2 {
                    return Err(CoreError::NotSupported);
                }
                self.paging(!f.stage1, false)
            }
            DomainRequest::Paging { flags, data } => {
                if data.is_some() {
                    return Err(CoreError::NotSupported);
                }
                if flags.nest_parent {
                    // Nesting needs both stages (Linux `ARM_SMMU_FEAT_NESTING`).
                    if !(f.stage1 && f.stage2) {
                        return Err(CoreError::NotSupported);
                    }
                    return self.paging(true, flags.dirty_tracking);
                }
                if !f.stage1 && !f.stage2 {
                    return Err(CoreError::NotSupported);
                }
                self.paging(!f.stage1, flags.dirty_tracking)
            }
            DomainRequest::Nested { .. } => Err(CoreError::NotSupported),
        }
    }

    fn capable(&self, _dev: &DeviceInfo<'_>, cap: Capability) -> bool {
        match cap {
            Capability::CacheCoherency | Capability::EnforceCacheCoherency => {
                self.features.coherent
            }
            Capability::DirtyTracking => self.features.httu_dirty,
        }
    }

    fn reserved_regions(&self, _dev: &DeviceInfo<'_>) -> Vec<ReservedRegion> {
        vec![ReservedRegion {
            start: Iova(MSI_IOVA_BASE),
            last: Iova(MSI_IOVA_BASE + MSI_IOVA_LENGTH - 1),
            prot: Prot::WRITE,
            kind: ReservedKind::SwMsi,
        }]
    }
}
