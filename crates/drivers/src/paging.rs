//! The domain types every driver here shares: a paging domain on a uiommu-pgtable tree in the
//! driver's hardware format, and the two static domains (identity, blocked).
//!
//! A driver decides the format, the aperture and whether the domain can track dirty pages;
//! this module does the rest of Linux's `iommu_domain_ops` and `iommu_dirty_ops` on top of
//! the engine, and turns engine errors into core errors.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use uiommu_core::{
    Aperture, CoreError, DeviceId, DeviceInfo, DomainOps, Iova, PhysAddr, Prot, Result,
};
use uiommu_pgtable::{DirtyMode, Format, PageTable};

/// How a paging domain keeps dirty state, fixed at allocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DirtySupport {
    /// The domain was not allocated for dirty tracking (or the IOMMU cannot do it).
    None,
    /// The hardware records writes in the PTEs whatever the tracking switch says (SMMUv3
    /// HTTU: DBM is in every writable leaf of a dirty-tracking domain, and Linux's
    /// `set_dirty_tracking` has nothing to switch).
    AlwaysOn,
    /// The hardware records writes only while tracking is switched on (VT-d's SSADE in the
    /// PASID entry, AMD's HAD bits in the DTE).
    Switched,
}

/// A paging domain on a page table of format `F`.
///
/// Locking: the page table has its own lock (a leaf lock, see [`PageTable`]); `tracking` is an
/// atomic; `attached` is a leaf mutex taken only by attach and [`PagingDomain::attached`].
#[derive(Debug)]
pub struct PagingDomain<F: Format> {
    table: PageTable<F>,
    aperture: Aperture,
    dirty: DirtySupport,
    tracking: AtomicBool,
    /// Extra rights every mapping gets, e.g. `CACHE` on a coherent IOMMU (Linux's dma-iommu
    /// adds `IOMMU_CACHE` for coherent devices).
    extra_prot: uiommu_pgtable::Prot,
    attached: Mutex<BTreeSet<DeviceId>>,
}

impl<F: Format> PagingDomain<F> {
    /// A domain on a new, empty table in `format`, translating `[0, 2^va_bits)`.
    ///
    /// # Errors
    /// `Invalid` when the format refuses its geometry, `NoMemory` when no root table fits.
    pub fn new(format: F, dirty: DirtySupport, coherent: bool) -> Result<PagingDomain<F>> {
        if dirty != DirtySupport::None && !format.tracks_dirty() {
            return Err(CoreError::NotSupported);
        }
        let va_bits = format.va_bits();
        let table = PageTable::new(format, uiommu_pgtable::Config::default()).map_err(to_core)?;
        let last = if va_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << va_bits) - 1
        };
        Ok(PagingDomain {
            table,
            aperture: Aperture {
                start: Iova(0),
                last: Iova(last),
            },
            dirty,
            tracking: AtomicBool::new(false),
            extra_prot: if coherent {
                uiommu_pgtable::Prot::CACHE
            } else {
                uiommu_pgtable::Prot::default()
            },
            attached: Mutex::new(BTreeSet::new()),
        })
    }

    /// The page table, for tests and emulated table walkers: read it from
    /// [`PageTable::root_phys`] down with [`PageTable::read_phys`].
    pub fn table(&self) -> &PageTable<F> {
        &self.table
    }

    /// The devices attached now.
    pub fn attached(&self) -> Vec<DeviceId> {
        lock(&self.attached).iter().copied().collect()
    }

    /// Whether dirty tracking is switched on.
    pub fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// Record a DMA write at `iova` the way the IOMMU's table walker would: mark the leaf
    /// dirty if this domain's hardware records writes now. Returns whether it did.
    ///
    /// # Errors
    /// `NotFound` when `iova` does not translate.
    pub fn device_write(&self, iova: Iova) -> Result<bool> {
        let records = match self.dirty {
            DirtySupport::None => false,
            DirtySupport::AlwaysOn => true,
            DirtySupport::Switched => self.is_tracking(),
        };
        if self.table.iova_to_phys(iova.0).is_none() {
            return Err(CoreError::NotFound);
        }
        if !records {
            return Ok(false);
        }
        match self.table.set_dirty(iova.0) {
            Ok(()) => Ok(true),
            // A read-only leaf cannot be written: nothing to record.
            Err(uiommu_pgtable::Error::DirtyUnsupported) => Ok(false),
            Err(err) => Err(to_core(err)),
        }
    }
}

impl<F: Format> DomainOps for PagingDomain<F> {
    fn attach_dev(&self, dev: &DeviceInfo<'_>) -> Result<()> {
        lock(&self.attached).insert(dev.id);
        Ok(())
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.table.pgsize_bitmap()
    }

    fn aperture(&self) -> Aperture {
        self.aperture
    }

    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: u64,
        prot: Prot,
    ) -> (u64, Result<()>) {
        let prot = to_pgtable_prot(prot) | self.extra_prot;
        match self.table.map_pages(iova.0, paddr.0, pgsize, pgcount, prot) {
            Ok(len) => (len, Ok(())),
            Err(err) => (0, Err(to_core(err))),
        }
    }

    fn unmap_pages(&self, iova: Iova, pgsize: u64, pgcount: u64) -> u64 {
        // Linux answers bad arguments with "nothing unmapped".
        self.table.unmap_pages(iova.0, pgsize, pgcount).unwrap_or(0)
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        self.table.iova_to_phys(iova.0).map(PhysAddr)
    }

    fn set_dirty_tracking(&self, enable: bool) -> Result<()> {
        if self.dirty == DirtySupport::None {
            return Err(CoreError::NotSupported);
        }
        self.tracking.store(enable, Ordering::Relaxed);
        Ok(())
    }

    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        size: u64,
        keep: bool,
        record: &mut dyn FnMut(Iova, u64),
    ) -> Result<()> {
        match self.dirty {
            DirtySupport::None => return Err(CoreError::NotSupported),
            // VT-d and AMD refuse to report while tracking is off (Linux's
            // `intel_iommu_read_and_clear_dirty()`, `amd_iommu_read_and_clear_dirty()`).
            DirtySupport::Switched if !self.is_tracking() => {
                return Err(CoreError::Invalid("dirty tracking is off"))
            }
            _ => {}
        }
        let mode = if keep {
            DirtyMode::Keep
        } else {
            DirtyMode::Clear
        };
        self.table
            .read_and_clear_dirty(iova.0, size, mode, |at, len| record(Iova(at), len))
            .map_err(to_core)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A domain that does not translate: identity (passthrough) or blocked. The core answers
/// `iova_to_phys` for both by type; the driver only records attachments.
#[derive(Debug, Default)]
pub struct StaticDomain {
    attached: Mutex<BTreeSet<DeviceId>>,
}

impl StaticDomain {
    /// The devices attached now.
    pub fn attached(&self) -> Vec<DeviceId> {
        lock(&self.attached).iter().copied().collect()
    }
}

impl DomainOps for StaticDomain {
    fn attach_dev(&self, dev: &DeviceInfo<'_>) -> Result<()> {
        lock(&self.attached).insert(dev.id);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The core's read/write rights as the engine's `IOMMU_*` bits.
pub(crate) fn to_pgtable_prot(prot: Prot) -> uiommu_pgtable::Prot {
    let mut out = uiommu_pgtable::Prot::default();
    if prot.contains(Prot::READ) {
        out = out | uiommu_pgtable::Prot::READ;
    }
    if prot.contains(Prot::WRITE) {
        out = out | uiommu_pgtable::Prot::WRITE;
    }
    out
}

/// An engine error as the core's: the errno each engine variant documents, where the core
/// has one (the core has no `ERANGE`/`EOVERFLOW`; those become `EINVAL`).
pub(crate) fn to_core(err: uiommu_pgtable::Error) -> CoreError {
    use uiommu_pgtable::Error as E;
    match err {
        E::AlreadyMapped(_) => CoreError::Exists,
        E::NotMapped(_) => CoreError::NotFound,
        E::NoMemory => CoreError::NoMemory,
        E::DirtyUnsupported | E::UnknownMockType(_) => CoreError::NotSupported,
        E::ZeroLength | E::UnsupportedPageSize(_) | E::Misaligned { .. } | E::NoAccess => {
            CoreError::Invalid("page-table request refused")
        }
        E::Overflow | E::IovaOutOfRange { .. } | E::PhysOutOfRange { .. } => {
            CoreError::Invalid("address out of the page table's range")
        }
        E::BadConfig(why) => CoreError::Invalid(why),
    }
}

/// Locks a leaf mutex; a poisoned one still holds a consistent set.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
