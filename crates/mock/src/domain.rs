//! Mock domains: a paging domain whose "page table" is a sorted map with one entry per 2 KiB
//! IO page, and a nested domain that only keeps IOTLB tags for invalidation tests.
//!
//! Each entry remembers whether it was the first or last page of a map call, so unmaps can be
//! checked to cover whole earlier maps exactly (what iommufd promises its drivers), and carries
//! the dirty bit that the selftest sets and dirty tracking reads back.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uiommu_core::{
    Aperture, CoreError, DeviceInfo, Domain, DomainOps, Iova, PhysAddr, Prot, Result,
};

use uiommu_iommufd::failpoint::{should_fail, FailSite};

use crate::driver::{DeviceTable, MockDeviceFlags};
use crate::viommu::VdevTable;

use crate::{
    IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, IOMMU_TEST_INVALIDATE_FLAG_ALL, MOCK_APERTURE_LAST,
    MOCK_APERTURE_START, MOCK_HUGE_PAGE_SIZE, MOCK_IO_PAGE_SIZE, MOCK_NESTED_DOMAIN_IOTLB_NUM,
};

/// One 2 KiB IO page of a mock page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTableEntry {
    /// Physical address of the page, divided by [`MOCK_IO_PAGE_SIZE`].
    pub pfn: u64,
    /// First page of a map call.
    pub start: bool,
    /// Last page of a map call.
    pub last: bool,
    /// Mapped with the huge page size.
    pub huge: bool,
    /// Written by the "device" since dirty bits were last cleared.
    pub dirty: bool,
}

/// A mock paging domain (Linux `struct mock_iommu_domain`).
///
/// Locking: `table` guards the page table; the flags are atomics read without it.
#[derive(Debug)]
pub struct MockPagingDomain {
    table: Mutex<BTreeMap<u64, PageTableEntry>>,
    /// The page sizes offered (`pgsize_bitmap`).
    page_sizes: u64,
    /// Pages larger than [`MOCK_IO_PAGE_SIZE`] are offered.
    huge_pages: bool,
    dirty_capable: bool,
    dirty_tracking: AtomicBool,
    /// Unmaps that did not start at the first page or end at the last page of earlier maps.
    unmap_violations: AtomicU64,
    devices: DeviceTable,
}

impl MockPagingDomain {
    pub(crate) fn new(
        page_sizes: u64,
        dirty_capable: bool,
        devices: DeviceTable,
    ) -> MockPagingDomain {
        MockPagingDomain {
            table: Mutex::new(BTreeMap::new()),
            page_sizes,
            huge_pages: page_sizes != MOCK_IO_PAGE_SIZE,
            dirty_capable,
            dirty_tracking: AtomicBool::new(false),
            unmap_violations: AtomicU64::new(0),
            devices,
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, PageTableEntry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry translating `iova`, if mapped.
    pub fn entry(&self, iova: Iova) -> Option<PageTableEntry> {
        self.table().get(&(iova.0 / MOCK_IO_PAGE_SIZE)).copied()
    }

    /// Number of mapped 2 KiB pages.
    pub fn mapped_pages(&self) -> usize {
        self.table().len()
    }

    /// Whether the domain was allocated with dirty tracking support.
    pub fn dirty_capable(&self) -> bool {
        self.dirty_capable
    }

    /// Whether dirty tracking is on.
    pub fn dirty_tracking(&self) -> bool {
        self.dirty_tracking.load(Ordering::Relaxed)
    }

    /// Mark the page at `iova` dirty, as a device write would; false when nothing is mapped
    /// there (the selftest's `IOMMU_TEST_OP_DIRTY`).
    pub fn mark_dirty(&self, iova: Iova) -> bool {
        match self.table().get_mut(&(iova.0 / MOCK_IO_PAGE_SIZE)) {
            Some(entry) => {
                entry.dirty = true;
                true
            }
            None => false,
        }
    }

    /// How many unmaps did not exactly cover earlier maps (should stay 0 under iommufd).
    pub fn unmap_violations(&self) -> u64 {
        self.unmap_violations.load(Ordering::Relaxed)
    }
}

impl DomainOps for MockPagingDomain {
    fn attach_dev(&self, dev: &DeviceInfo<'_>) -> Result<()> {
        if self.dirty_capable && self.devices.flags(dev).contains(MockDeviceFlags::NO_DIRTY) {
            return Err(CoreError::Invalid("device cannot track dirty pages"));
        }
        Ok(())
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.page_sizes
    }

    fn aperture(&self) -> Aperture {
        Aperture {
            start: Iova(MOCK_APERTURE_START),
            last: Iova(MOCK_APERTURE_LAST),
        }
    }

    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: u64,
        _prot: Prot,
    ) -> (u64, Result<()>) {
        // The kernel's own fault point here (its xarray retries allocations): ENOENT.
        if should_fail(FailSite::DomainMap) {
            return (0, Err(CoreError::NotFound));
        }
        let pages = pgcount.saturating_mul(pgsize / MOCK_IO_PAGE_SIZE);
        let first = iova.0 / MOCK_IO_PAGE_SIZE;
        let mut table = self.table();
        if table
            .range(first..first.saturating_add(pages))
            .next()
            .is_some()
        {
            return (0, Err(CoreError::Exists));
        }
        for i in 0..pages {
            table.insert(
                first + i,
                PageTableEntry {
                    pfn: paddr.0 / MOCK_IO_PAGE_SIZE + i,
                    start: i == 0,
                    last: i + 1 == pages,
                    huge: pgsize != MOCK_IO_PAGE_SIZE,
                    dirty: false,
                },
            );
        }
        (pages * MOCK_IO_PAGE_SIZE, Ok(()))
    }

    fn unmap_pages(&self, iova: Iova, pgsize: u64, pgcount: u64) -> u64 {
        let pages = pgcount.saturating_mul(pgsize / MOCK_IO_PAGE_SIZE);
        let first = iova.0 / MOCK_IO_PAGE_SIZE;
        let mut table = self.table();
        let mut removed = 0u64;
        for i in 0..pages {
            let Some(entry) = table.remove(&(first + i)) else {
                break;
            };
            // With huge pages the core splits one unmap into several calls, so only domains
            // without them can check the boundaries call by call.
            let edge_missing = (i == 0 && !entry.start) || (i + 1 == pages && !entry.last);
            if !self.huge_pages && edge_missing {
                self.unmap_violations.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(iova = %iova, "mock unmap does not match an earlier map");
            }
            removed += 1;
        }
        removed * MOCK_IO_PAGE_SIZE
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        let entry = self.entry(iova)?;
        Some(PhysAddr(
            entry.pfn * MOCK_IO_PAGE_SIZE + iova.0 % MOCK_IO_PAGE_SIZE,
        ))
    }

    fn set_dirty_tracking(&self, enable: bool) -> Result<()> {
        if !self.dirty_capable {
            return Err(CoreError::NotSupported);
        }
        self.dirty_tracking.store(enable, Ordering::Relaxed);
        Ok(())
    }

    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        size: u64,
        keep: bool,
        record: &mut dyn FnMut(Iova, u64),
    ) -> Result<()> {
        if !self.dirty_capable {
            return Err(CoreError::NotSupported);
        }
        if !self.dirty_tracking() {
            return Err(CoreError::Invalid("dirty tracking is off"));
        }
        let end = iova.0.saturating_add(size);
        let mut table = self.table();
        let mut cur = iova.0;
        while cur < end {
            let Some(entry) = table.get(&(cur / MOCK_IO_PAGE_SIZE)) else {
                cur += MOCK_IO_PAGE_SIZE;
                continue;
            };
            // A huge entry is one page: dirty anywhere means the whole page is dirty.
            let pgsize = if entry.huge {
                MOCK_HUGE_PAGE_SIZE
            } else {
                MOCK_IO_PAGE_SIZE
            };
            let head = cur - cur % pgsize;
            let range = head / MOCK_IO_PAGE_SIZE..(head + pgsize) / MOCK_IO_PAGE_SIZE;
            let mut dirty = false;
            for (_, e) in table.range_mut(range) {
                dirty |= e.dirty;
                if !keep {
                    e.dirty = false;
                }
            }
            if dirty {
                record(Iova(head), pgsize);
            }
            cur = head + pgsize;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A mock nested domain: a stage-1 stand-in whose only state is its IOTLB tags
/// (Linux `struct mock_iommu_domain_nested`).
#[derive(Debug)]
pub struct MockNestedDomain {
    parent: Arc<Domain>,
    iotlb: Mutex<[u32; MOCK_NESTED_DOMAIN_IOTLB_NUM]>,
    /// For a domain of a mock vIOMMU: that vIOMMU's vDEVICEs (`mock_viommu`).
    viommu_vdevs: Option<VdevTable>,
}

/// One entry of a mock invalidation request (`struct iommu_hwpt_invalidate_selftest`).
const INVALIDATE_ENTRY_LEN: u32 = 8;

impl MockNestedDomain {
    pub(crate) fn new(parent: Arc<Domain>, iotlb: u32) -> MockNestedDomain {
        MockNestedDomain {
            parent,
            iotlb: Mutex::new([iotlb; MOCK_NESTED_DOMAIN_IOTLB_NUM]),
            viommu_vdevs: None,
        }
    }

    /// The same domain, allocated on a mock vIOMMU whose vDEVICEs are `vdevs`.
    pub(crate) fn on_viommu(mut self, vdevs: VdevTable) -> MockNestedDomain {
        self.viommu_vdevs = Some(vdevs);
        self
    }

    /// The paging domain this nested domain sits on.
    pub fn parent(&self) -> &Arc<Domain> {
        &self.parent
    }

    /// The tag in IOTLB slot `slot`, if the slot exists.
    pub fn iotlb(&self, slot: usize) -> Option<u32> {
        self.iotlb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(slot)
            .copied()
    }
}

impl DomainOps for MockNestedDomain {
    /// `mock_domain_nop_attach()` for a nested domain: on a vIOMMU, the device needs its
    /// vDEVICE there (`iommufd_viommu_get_vdev_id()`: `ENOENT`).
    fn attach_dev(&self, dev: &DeviceInfo<'_>) -> Result<()> {
        if let Some(vdevs) = &self.viommu_vdevs {
            if vdevs.virt_id(dev.id).is_none() {
                return Err(CoreError::NotFound);
            }
        }
        Ok(())
    }

    fn cache_invalidate_user(
        &self,
        data_type: u32,
        entry_len: u32,
        entries: &[u8],
    ) -> (u32, Result<()>) {
        if data_type != IOMMU_HWPT_INVALIDATE_DATA_SELFTEST {
            return (0, Err(CoreError::Invalid("not a selftest invalidation")));
        }
        if entry_len != INVALIDATE_ENTRY_LEN {
            return (
                0,
                Err(CoreError::Invalid(
                    "selftest invalidation entries are 8 bytes",
                )),
            );
        }
        let mut iotlb = self.iotlb.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = 0;
        for entry in entries.chunks_exact(INVALIDATE_ENTRY_LEN as usize) {
            let word = |i: usize| u32::from_le_bytes(entry[i..i + 4].try_into().expect("4 bytes"));
            let (flags, slot) = (word(0), word(4) as usize);
            if flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                return (done, Err(CoreError::NotSupported));
            }
            if slot >= MOCK_NESTED_DOMAIN_IOTLB_NUM {
                return (done, Err(CoreError::Invalid("IOTLB slot out of range")));
            }
            if flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                *iotlb = [0; MOCK_NESTED_DOMAIN_IOTLB_NUM];
            } else {
                iotlb[slot] = 0;
            }
            done += 1;
        }
        (done, Ok(()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
