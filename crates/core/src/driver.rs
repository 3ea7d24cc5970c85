//! The driver interface: what an IOMMU driver implements so the core can hand it devices and
//! ask it for domains. [`IommuOps`] mirrors Linux `struct iommu_ops`, [`DomainOps`] mirrors
//! `struct iommu_domain_ops`.
//!
//! These are consumer-side seams: they say what the core needs from a driver, never how the
//! driver builds its page tables or talks to its hardware.
//!
//! Routing is the core's job. Under the default policy ([`crate::ProbePolicy::ByFwnode`]) the
//! core calls [`IommuOps::probe_device`] only for devices whose fwspec names the fwnode of one of
//! the driver's instances, and passes that instance in [`DeviceInfo::iommu`]: a driver never
//! needs an "is this my device?" check.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::addr::{Iova, PhysAddr, Prot};
use crate::device::{BusKind, DeviceDesc, DeviceId};
use crate::domain::Domain;
use crate::error::Result;
use crate::fwnode::Fwspec;
use crate::InstanceId;

/// What the core tells a driver about a device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo<'a> {
    /// The device.
    pub id: DeviceId,
    /// How it was described when added.
    pub desc: &'a DeviceDesc,
    /// Its firmware spec, if it has one.
    pub fwspec: Option<&'a Fwspec>,
    /// The instance the core routed the device to: the one registered under the fwspec's fwnode
    /// (or the single fwnode-less instance). `None` only under [`crate::ProbePolicy::CallAll`],
    /// where the driver has to decide for itself.
    pub iommu: Option<InstanceId>,
}

impl DeviceInfo<'_> {
    /// The device's bus.
    pub fn bus(&self) -> BusKind {
        self.desc.bus.kind()
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.desc.name
    }

    /// The ids listed in the device's fwspec (empty without one).
    pub fn fwspec_ids(&self) -> &[u32] {
        self.fwspec.map_or(&[], |f| f.ids.as_slice())
    }
}

/// Kinds of IOMMU domain (Linux `IOMMU_DOMAIN_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DomainType {
    /// All DMA is blocked.
    Blocked,
    /// DMA addresses are physical addresses (passthrough).
    Identity,
    /// A paging domain owned by a user such as iommufd or VFIO (`UNMANAGED`).
    Unmanaged,
    /// A paging domain used by the kernel's DMA API, strict invalidation.
    Dma,
    /// A DMA domain with a flush queue (lazy invalidation).
    DmaFq,
    /// A nested (stage-1) domain on top of a paging parent.
    Nested,
}

impl DomainType {
    /// Whether the domain translates through page tables (`__IOMMU_DOMAIN_PAGING`).
    pub fn is_paging(self) -> bool {
        matches!(
            self,
            DomainType::Unmanaged | DomainType::Dma | DomainType::DmaFq
        )
    }

    /// The name Linux shows in `/sys/kernel/iommu_groups/N/type`.
    pub fn name(self) -> &'static str {
        match self {
            DomainType::Blocked => "blocked",
            DomainType::Identity => "identity",
            DomainType::Unmanaged => "unmanaged",
            DomainType::Dma => "DMA",
            DomainType::DmaFq => "DMA-FQ",
            DomainType::Nested => "nested",
        }
    }
}

/// How a driver groups its devices (Linux `device_group` callbacks).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum GroupChoice {
    /// Every device gets its own group (`generic_device_group`).
    PerDevice,
    /// Every device of the instance shares one group (`generic_single_device_group`).
    PerInstance,
    /// PCI isolation rules: aliases, non-ACS bridges and multifunction devices share
    /// (`pci_device_group`). Non-PCI devices fall back to [`GroupChoice::PerDevice`].
    Pci,
    /// Devices of the same instance that return the same key share a group.
    Shared(u64),
}

/// Driver-specific data a user passed with a domain allocation (iommufd's `data_type` + data).
#[derive(Clone, Copy, Debug)]
pub struct UserData<'a> {
    /// The driver-defined type of `bytes` (e.g. `IOMMU_HWPT_DATA_SELFTEST`).
    pub data_type: u32,
    /// The data, already copied from the user.
    pub bytes: &'a [u8],
}

/// Options of a paging domain allocation (iommufd's `IOMMU_HWPT_ALLOC_*` flags).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PagingFlags {
    /// The domain may be the parent of nested domains.
    pub nest_parent: bool,
    /// The domain must support dirty tracking.
    pub dirty_tracking: bool,
}

/// What kind of domain the core or a user asks a driver for.
#[derive(Clone, Copy, Debug)]
pub enum DomainRequest<'a> {
    /// A domain that blocks all DMA.
    Blocked,
    /// A passthrough domain.
    Identity,
    /// A paging domain for the kernel's DMA API (the default domain of a translated group).
    Dma,
    /// A paging domain for a user (iommufd's `HWPT_ALLOC` without a parent).
    Paging {
        /// Allocation options.
        flags: PagingFlags,
        /// Driver-specific data, if any.
        data: Option<UserData<'a>>,
    },
    /// A nested domain whose stage 2 is `parent`.
    Nested {
        /// The paging parent, allocated with `nest_parent`.
        parent: &'a Arc<Domain>,
        /// The driver-specific stage-1 description.
        data: UserData<'a>,
    },
}

/// Capabilities a driver reports per device (Linux `enum iommu_cap`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Capability {
    /// DMA is cache coherent.
    CacheCoherency,
    /// The IOMMU can enforce cache coherency for a domain.
    EnforceCacheCoherency,
    /// The IOMMU tracks dirty pages.
    DirtyTracking,
}

/// Kinds of reserved region (Linux `enum iommu_resv_type`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReservedKind {
    /// Must be identity-mapped in every domain (RMRR-like).
    Direct,
    /// Like `Direct`, but may be dropped when the device is assigned to a user.
    DirectRelaxable,
    /// Must never be mapped.
    Reserved,
    /// A hardware MSI doorbell window.
    Msi,
    /// A software-managed MSI window.
    SwMsi,
}

/// An IOVA range a device cannot use freely.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReservedRegion {
    /// First IOVA of the region.
    pub start: Iova,
    /// Last IOVA of the region (inclusive).
    pub last: Iova,
    /// Access the region needs when it is mapped.
    pub prot: Prot,
    /// What the region is.
    pub kind: ReservedKind,
}

/// Hardware information a driver reports for a device (iommufd's `GET_HW_INFO`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HwInfo {
    /// The driver-defined type of `data` (`IOMMU_HW_INFO_TYPE_*`).
    pub data_type: u32,
    /// The driver-defined structure, in its ABI layout.
    pub data: Vec<u8>,
}

/// The range of IOVAs a domain can translate (Linux `iommu_domain_geometry`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Aperture {
    /// First translatable IOVA.
    pub start: Iova,
    /// Last translatable IOVA (inclusive).
    pub last: Iova,
}

impl Aperture {
    /// The whole 64-bit IOVA space.
    pub const FULL: Aperture = Aperture {
        start: Iova(0),
        last: Iova(u64::MAX),
    };

    /// Whether `[start, last]` lies inside the aperture.
    pub fn contains(&self, start: Iova, last: Iova) -> bool {
        start >= self.start && last <= self.last && start <= last
    }
}

/// A driver: the operations the core calls for devices and domain allocation.
///
/// One object may serve several instances (as Linux shares `iommu_ops` between
/// `iommu_device`s): [`DeviceInfo::iommu`] says which one the device was routed to.
pub trait IommuOps: Send + Sync + fmt::Debug {
    /// The driver's name, for display.
    fn name(&self) -> &str;

    /// Take `dev` on and return the instance that serves it (Linux `probe_device`).
    ///
    /// Under the default policy `dev.iommu` is the routed instance and the usual answer is
    /// `dev.iommu.ok_or(CoreError::NoDevice)` after setting up per-device state. Return
    /// [`crate::CoreError::NoDevice`] only when the device cannot work with this IOMMU.
    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId>;

    /// Forget a device that is leaving (Linux `release_device`).
    fn release_device(&self, _dev: &DeviceInfo<'_>) {}

    /// How to group the device (Linux `device_group`).
    fn device_group(&self, _dev: &DeviceInfo<'_>) -> GroupChoice {
        GroupChoice::PerDevice
    }

    /// The domain type this device needs as its default, if it has a preference
    /// (Linux `def_domain_type`).
    fn def_domain_type(&self, _dev: &DeviceInfo<'_>) -> Option<DomainType> {
        None
    }

    /// The type of the driver's static default domain, if it has one (Linux
    /// `ops->default_domain`): every group of this driver gets that type, whatever the global
    /// setting says.
    fn static_default_domain(&self) -> Option<DomainType> {
        None
    }

    /// Allocate a domain for `dev` (Linux `domain_alloc_paging`, `domain_alloc_user`, the
    /// static identity/blocked domains).
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] when the driver has no such domain type; what the
    /// driver's validation of the request finds otherwise.
    fn domain_alloc(
        &self,
        dev: &DeviceInfo<'_>,
        request: DomainRequest<'_>,
    ) -> Result<Box<dyn DomainOps>>;

    /// Whether the IOMMU serving `dev` has capability `cap` (Linux `capable`).
    fn capable(&self, _dev: &DeviceInfo<'_>, _cap: Capability) -> bool {
        false
    }

    /// The device's reserved IOVA regions (Linux `get_resv_regions`).
    fn reserved_regions(&self, _dev: &DeviceInfo<'_>) -> Vec<ReservedRegion> {
        Vec::new()
    }

    /// Hardware information for iommufd's `GET_HW_INFO` (Linux `hw_info`).
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] by default.
    fn hw_info(&self, _dev: &DeviceInfo<'_>) -> Result<HwInfo> {
        Err(crate::CoreError::NotSupported)
    }

    /// How many PASIDs the IOMMU supports for `dev` (0: none).
    fn max_pasids(&self, _dev: &DeviceInfo<'_>) -> u32 {
        0
    }

    /// Point PASID `pasid` of `dev` at `domain`, or back at blocking DMA with `None` (Linux:
    /// the domain's `set_dev_pasid`, or the blocked domain's). The core has checked the PASID
    /// against [`IommuOps::max_pasids`].
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] by default (no PASID support); the driver's error,
    /// after which the PASID keeps what it had.
    fn set_dev_pasid(
        &self,
        _dev: &DeviceInfo<'_>,
        _pasid: u32,
        _domain: Option<&Arc<Domain>>,
    ) -> Result<()> {
        Err(crate::CoreError::NotSupported)
    }

    /// Whether the IOMMU serving `dev` offers virtual IOMMUs of `viommu_type` (Linux: a
    /// non-zero `get_viommu_size()`).
    fn viommu_supported(&self, _dev: &DeviceInfo<'_>, _viommu_type: u32) -> bool {
        false
    }

    /// Create a virtual IOMMU of `viommu_type` for `dev` over the nesting parent `parent`
    /// (Linux `viommu_init()`). `data` is the user's driver data (`data_uptr`/`data_len`), which
    /// the driver reads and may fill in; the caller copies it back.
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] by default; the driver's checks of `data`.
    fn viommu_init(
        &self,
        _dev: &DeviceInfo<'_>,
        _viommu_type: u32,
        _parent: &Arc<Domain>,
        _data: Option<&mut [u8]>,
    ) -> Result<Box<dyn ViommuOps>> {
        Err(crate::CoreError::NotSupported)
    }
}

/// A virtual IOMMU's driver half (Linux `struct iommufd_viommu_ops`): what the driver does for
/// a guest's commands to its vIOMMU. Dropping it is the driver's `destroy`.
pub trait ViommuOps: Send + Sync + fmt::Debug {
    /// Handle `entries` (`entry_len` bytes each) of user cache-invalidation requests of
    /// `data_type` (Linux `cache_invalidate`); `find_dev` resolves a virtual device id of this
    /// vIOMMU to its device. Returns how many entries were handled and the result.
    fn cache_invalidate(
        &self,
        _data_type: u32,
        _entry_len: u32,
        _entries: &[u8],
        _find_dev: &dyn Fn(u64) -> Option<DeviceId>,
    ) -> (u32, Result<()>) {
        (0, Err(crate::CoreError::NotSupported))
    }

    /// A nested domain on this vIOMMU (Linux `alloc_domain_nested`), described by the user's
    /// `data`; `flags` are `IOMMU_HWPT_ALLOC_*` without `FAULT_ID_VALID`.
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] by default; the driver's checks of `flags` and `data`.
    fn alloc_domain_nested(&self, _flags: u32, _data: UserData<'_>) -> Result<Box<dyn DomainOps>> {
        Err(crate::CoreError::NotSupported)
    }

    /// A virtual device `virt_id` now stands for `dev` on this vIOMMU (Linux `vdevice_init`).
    ///
    /// # Errors
    /// The driver refuses the device; by default it accepts.
    fn vdevice_init(&self, _virt_id: u64, _dev: DeviceId) -> Result<()> {
        Ok(())
    }

    /// Virtual device `virt_id` is gone (Linux: the vDEVICE's `destroy`).
    fn vdevice_destroy(&self, _virt_id: u64) {}

    /// Whether the vIOMMU has HW queues of `queue_type` (Linux: a non-zero
    /// `get_hw_queue_size()`).
    fn hw_queue_supported(&self, _queue_type: u32) -> bool {
        false
    }

    /// Set up HW queue `index` on guest memory at `base_iova` in the nesting parent, which is
    /// pinned and physically at `base_pa` (Linux `hw_queue_init_phys`). Returns the index of
    /// a queue the new one depends on, which may then not be destroyed before it.
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] by default; the driver's checks.
    fn hw_queue_init_phys(
        &self,
        _index: u32,
        _base_iova: u64,
        _base_pa: PhysAddr,
    ) -> Result<Option<u32>> {
        Err(crate::CoreError::NotSupported)
    }

    /// HW queue `index` is gone (Linux: the HW queue's `destroy`).
    fn hw_queue_destroy(&self, _index: u32) {}

    /// For drivers: downcasting to their own type.
    fn as_any(&self) -> &dyn Any;
}

/// A domain's operations (Linux `struct iommu_domain_ops`). Page-size splitting, alignment
/// checks and undo on failure live in [`Domain::map`] and [`Domain::unmap`], so drivers only
/// handle runs of equal, supported page sizes.
pub trait DomainOps: Send + Sync + fmt::Debug {
    /// Attach `dev` to this domain (Linux `attach_dev`). Attaching implicitly detaches the
    /// device from its previous domain.
    fn attach_dev(&self, _dev: &DeviceInfo<'_>) -> Result<()> {
        Ok(())
    }

    /// The page sizes this domain maps, as a bitmap of powers of two. 0 for domains that do
    /// not translate.
    fn pgsize_bitmap(&self) -> u64 {
        0
    }

    /// The IOVA range this domain translates.
    fn aperture(&self) -> Aperture {
        Aperture::FULL
    }

    /// Map `pgcount` pages of `pgsize` bytes, IOVA-contiguous and physically contiguous, and
    /// return how many bytes were mapped before any failure (Linux `map_pages`).
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] for domains that do not translate; driver errors
    /// (`Exists` for an already-mapped IOVA, `NoMemory`). The bytes reported as mapped on error
    /// are unmapped again by the caller.
    fn map_pages(
        &self,
        _iova: Iova,
        _paddr: PhysAddr,
        _pgsize: u64,
        _pgcount: u64,
        _prot: Prot,
    ) -> (u64, Result<()>) {
        (0, Err(crate::CoreError::NotSupported))
    }

    /// Unmap `pgcount` pages of `pgsize` bytes and return how many bytes were unmapped (Linux
    /// `unmap_pages`). Unmapping what is not mapped stops early.
    fn unmap_pages(&self, _iova: Iova, _pgsize: u64, _pgcount: u64) -> u64 {
        0
    }

    /// Translate one IOVA (Linux `iova_to_phys`).
    fn iova_to_phys(&self, _iova: Iova) -> Option<PhysAddr> {
        None
    }

    /// Translate one IOVA and report the access its mapping grants. Linux has no such op (its
    /// hardware checks permissions during the page walk); emulated devices need it to fault on
    /// a write through a read-only mapping. The default grants reads and writes wherever
    /// [`DomainOps::iova_to_phys`] translates: right for drivers that do not keep permissions
    /// (the mock, like Linux's), and what drivers that do keep them override.
    fn iova_to_phys_prot(&self, iova: Iova) -> Option<(PhysAddr, Prot)> {
        self.iova_to_phys(iova).map(|pa| (pa, Prot::READ_WRITE))
    }

    /// Make earlier map and unmap calls visible to the hardware (Linux `iotlb_sync`).
    fn iotlb_sync(&self) {}

    /// Start or stop dirty tracking (Linux `set_dirty_tracking`).
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] by default.
    fn set_dirty_tracking(&self, _enable: bool) -> Result<()> {
        Err(crate::CoreError::NotSupported)
    }

    /// Report the dirty pages of `[iova, iova + size)` through `record` and, unless `keep` is
    /// set, clear their dirty bits (Linux `read_and_clear_dirty`).
    ///
    /// # Errors
    /// [`crate::CoreError::NotSupported`] by default.
    fn read_and_clear_dirty(
        &self,
        _iova: Iova,
        _size: u64,
        _keep: bool,
        _record: &mut dyn FnMut(Iova, u64),
    ) -> Result<()> {
        Err(crate::CoreError::NotSupported)
    }

    /// Invalidate caches as a user described them: `entries` holds an array of `entry_len`-byte
    /// entries of type `data_type`. Returns how many entries were handled, and the error that
    /// stopped the loop (Linux `cache_invalidate_user`).
    fn cache_invalidate_user(
        &self,
        _data_type: u32,
        _entry_len: u32,
        _entries: &[u8],
    ) -> (u32, Result<()>) {
        (0, Err(crate::CoreError::NotSupported))
    }

    /// The driver's own type, for drivers and test hooks that inspect their domains.
    fn as_any(&self) -> &dyn Any;
}
