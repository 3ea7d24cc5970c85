//! Helpers shared by the io_pagetable integration tests: a domain that records and checks
//! every map and unmap, an access that records unmap notifications, and a page source over a
//! model address space.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use uiommu_core::addr::{Iova, PhysAddr, Prot};
use uiommu_iommufd::io_pagetable::{
    AccessUnmapNotify, DomainMapError, DomainMapper, IoPagetable, IovaRange,
};
use uiommu_iommufd::pages::{FixedMemlockPolicy, PageSource, RlimitMode};
use uiommu_iommufd::user_memory::{ModelMemory, UserVa, PAGE_SIZE};

/// One map call as the domain saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub length: u64,
    pub phys: u64,
    pub prot: Prot,
}

/// A paging domain that keeps every map call as one entry and insists that maps never overlap
/// and that each unmap covers whole earlier maps exactly, as the mock driver checks.
#[derive(Debug)]
pub struct RecordingDomain {
    pgsize_bitmap: u64,
    aperture: IovaRange,
    entries: Mutex<BTreeMap<u64, Mapped>>,
    violations: Mutex<Vec<String>>,
    /// Fail the next map whose IOVA is at or above this value (u64::MAX: never).
    fail_at_or_above: Mutex<u64>,
    pub map_calls: AtomicUsize,
}

impl RecordingDomain {
    pub fn new(pgsize_bitmap: u64, aperture: IovaRange) -> Arc<Self> {
        Arc::new(RecordingDomain {
            pgsize_bitmap,
            aperture,
            entries: Mutex::new(BTreeMap::new()),
            violations: Mutex::new(Vec::new()),
            fail_at_or_above: Mutex::new(u64::MAX),
            map_calls: AtomicUsize::new(0),
        })
    }

    /// A 4 KiB-page domain over the whole IOVA space.
    pub fn page() -> Arc<Self> {
        Self::new(PAGE_SIZE | (2 << 20), IovaRange::new(0, u64::MAX))
    }

    /// The selftest mock's geometry: 2 KiB pages, aperture [16 MiB, 2 GiB - 1].
    pub fn mock_like() -> Arc<Self> {
        Self::new(2048, IovaRange::new(0x100_0000, 0x7fff_ffff))
    }

    pub fn fail_maps_from(&self, iova: u64) {
        *self.fail_at_or_above.lock().unwrap() = iova;
    }

    pub fn entries(&self) -> BTreeMap<u64, Mapped> {
        self.entries.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// The physical address `iova` translates to.
    pub fn translate(&self, iova: u64) -> Option<u64> {
        let entries = self.entries.lock().unwrap();
        let (&start, m) = entries.range(..=iova).next_back()?;
        (iova - start < m.length).then(|| m.phys + (iova - start))
    }

    pub fn as_mapper(self: &Arc<Self>) -> Arc<dyn DomainMapper> {
        self.clone()
    }
}

impl DomainMapper for RecordingDomain {
    fn map(
        &self,
        iova: Iova,
        phys: PhysAddr,
        length: u64,
        prot: Prot,
    ) -> Result<(), DomainMapError> {
        self.map_calls.fetch_add(1, Ordering::Relaxed);
        if iova.0 >= *self.fail_at_or_above.lock().unwrap() {
            return Err(DomainMapError(libc::ENOENT));
        }
        let mut entries = self.entries.lock().unwrap();
        let last = iova.0 + length - 1;
        let overlaps = entries
            .range(..=last)
            .next_back()
            .is_some_and(|(&start, m)| start + m.length > iova.0);
        if overlaps || length == 0 {
            self.violations
                .lock()
                .unwrap()
                .push(format!("overlapping map {iova:?}+{length:#x}"));
            return Err(DomainMapError(libc::EEXIST));
        }
        entries.insert(
            iova.0,
            Mapped {
                length,
                phys: phys.0,
                prot,
            },
        );
        Ok(())
    }

    fn unmap(&self, iova: Iova, length: u64) -> u64 {
        let mut entries = self.entries.lock().unwrap();
        let end = iova.0 + length;
        let inside: Vec<(u64, Mapped)> =
            entries.range(iova.0..end).map(|(&k, &m)| (k, m)).collect();
        let straddles = entries
            .range(..iova.0)
            .next_back()
            .is_some_and(|(&start, m)| start + m.length > iova.0);
        let mut cursor = iova.0;
        let mut exact = !straddles;
        for (start, m) in &inside {
            exact &= *start == cursor;
            cursor = start + m.length;
        }
        exact &= cursor == end;
        if !exact {
            self.violations.lock().unwrap().push(format!(
                "unmap {iova:?}+{length:#x} does not cover whole maps"
            ));
        }
        let mut unmapped = 0;
        for (start, m) in inside {
            entries.remove(&start);
            unmapped += m.length;
        }
        unmapped
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    fn aperture(&self) -> IovaRange {
        self.aperture
    }
}

/// An access that records unmap notifications and, when cooperative, unpins what it holds.
#[derive(Debug)]
pub struct RecordingAccess {
    pub table: Mutex<Option<Arc<IoPagetable>>>,
    pub pinned: Mutex<Vec<(u64, u64)>>,
    pub notifications: AtomicUsize,
    pub cooperative: AtomicBool,
}

impl RecordingAccess {
    pub fn new(table: &Arc<IoPagetable>, cooperative: bool) -> Arc<Self> {
        Arc::new(RecordingAccess {
            table: Mutex::new(Some(table.clone())),
            pinned: Mutex::new(Vec::new()),
            notifications: AtomicUsize::new(0),
            cooperative: AtomicBool::new(cooperative),
        })
    }

    pub fn pin(
        &self,
        iova: u64,
        length: u64,
        write: bool,
    ) -> Result<Vec<UserVa>, uiommu_iommufd::io_pagetable::IoptError> {
        let table = self.table.lock().unwrap().clone().unwrap();
        let pfns = table.access_pin_pages(Iova(iova), length, write)?;
        self.pinned.lock().unwrap().push((iova, length));
        Ok(pfns)
    }
}

impl AccessUnmapNotify for RecordingAccess {
    fn unmap(&self, iova: Iova, length: u64) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
        if !self.cooperative.load(Ordering::Relaxed) {
            return;
        }
        let table = self.table.lock().unwrap().clone().unwrap();
        let last = iova.0 + (length - 1);
        self.pinned.lock().unwrap().retain(|&(start, len)| {
            let intersects = start <= last && start + (len - 1) >= iova.0;
            if intersects {
                table.access_unpin_pages(Iova(start), len).unwrap();
            }
            !intersects
        });
    }
}

/// A page source over `memory` with an unlimited, uncapable policy of its own.
pub fn source(memory: &Arc<ModelMemory>) -> (PageSource, Arc<FixedMemlockPolicy>) {
    source_with_limit(memory, u64::MAX)
}

pub fn source_with_limit(
    memory: &Arc<ModelMemory>,
    limit: u64,
) -> (PageSource, Arc<FixedMemlockPolicy>) {
    let policy = Arc::new(FixedMemlockPolicy {
        limit,
        ..Default::default()
    });
    let source = PageSource {
        memory: memory.clone(),
        policy: policy.clone(),
        rlimit_mode: RlimitMode::User,
    };
    (source, policy)
}

/// A model address space with `npages` writable pages at `base`, each filled with a pattern
/// derived from its address.
pub fn patterned_memory(base: u64, npages: u64) -> Arc<ModelMemory> {
    use uiommu_iommufd::user_memory::UserMemory;
    let memory = Arc::new(ModelMemory::new());
    memory.map(UserVa(base), npages * PAGE_SIZE, true);
    let data: Vec<u8> = (0..npages * PAGE_SIZE).map(|i| pattern(base + i)).collect();
    memory.write(UserVa(base), &data).unwrap();
    memory
}

/// The byte `patterned_memory` stores at `va`.
pub fn pattern(va: u64) -> u8 {
    (va ^ (va >> 8) ^ (va >> 16)) as u8
}
