//! The IOVA engine of an IOAS: the kernel's `io_pagetable` (`drivers/iommu/iommufd/
//! io_pagetable.c`, `io_pagetable.h`), ignorant of ioctls and of the object table.
//!
//! # Model
//!
//! An [`IoPagetable`] owns an IOVA space made of **areas**: `[iova, last]` ranges, each backed by
//! a slice of one shared [`Pages`]. Areas are kept in a `BTreeMap` keyed by their first IOVA and
//! are never merged or split (except by the VFIO type1 [`IoPagetable::cut_iova`]), because
//! unmap works on whole areas only. Beside the areas live the **reserved** ranges (domain
//! apertures, device regions, test reservations: IOVA that may not be mapped), the **allowed**
//! ranges (`IOMMU_IOAS_ALLOW_IOVAS`: where automatic IOVAs may go and reservations may not),
//! the list of attached **domains** (through the [`DomainMapper`] seam) and the list of
//! **accesses** (in-process users that pin pages and must be told about unmaps).
//!
//! An area is filled into every attached domain. The first domain pins the area's pages, later
//! domains only map them; with no domain nothing is pinned and a map of bad memory succeeds
//! until a domain is attached. Each area is mapped into a domain as one call covering the whole
//! physically contiguous run (user VA order, since a page's "PFN" is its VA), or in
//! `PAGE_SIZE` calls when large pages are disabled; it is unmapped with one call covering all
//! of it, so unmaps always cover earlier maps exactly.
//!
//! An area whose `published` flag is clear is being created or destroyed by another thread:
//! lookups treat it as absent, unmap reports `EBUSY` on it, and domain attach skips it (the
//! creating thread fills the new domain itself, because it holds the domains lock for reading
//! from the fill until it publishes).
//!
//! # Alignment
//!
//! The table's IOVA alignment is the largest of 1 (or `PAGE_SIZE` with large pages disabled),
//! each domain's smallest page size and each access's alignment. Area IOVAs, lengths and
//! in-page offsets are multiples of it.
//!
//! # Vocabulary and overflow
//!
//! `last` is inclusive, `end` exclusive. IOVAs reach `u64::MAX`, so `last + 1` is always
//! checked; page indexes are small, so `last_index + 1` is not.
//!
//! # Locking
//!
//! Lock order: `domains` → `iova` → [`Pages`] state → the process-wide pin table. `domains`
//! (the kernel's `domains_rwsem`) guards the domain and access lists and the large-page switch;
//! readers are map, unmap and copy while they fill or empty domains. `iova` (`iova_rwsem`)
//! guards areas, reserved and allowed ranges and the alignment. Domain calls are made with the
//! locks held and must not call back into the table; access unmap notifications are made with
//! no lock held, so the notified access can unpin.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use uiommu_core::addr::{Iova, PhysAddr, Prot};

use crate::pages::{fail_site, FaultInjector, PageSource, Pages, RwBuf};
use crate::user_memory::{MmId, UserMemoryError, UserVa, PAGE_SIZE};

/// Largest alignment automatic IOVA allocation aims for: the PMD huge page size, as the kernel
/// uses with transparent huge pages (`HPAGE_SIZE`).
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// How many times an unmap asks accesses to let go of an area before giving up with
/// `EDEADLOCK` (`iopt_unmap_iova_range()`).
const MAX_UNMAP_TRIES: u32 = 100;

/// Errors of the engine, one per cause; [`IoptError::errno`] gives the kernel's errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoptError {
    /// A length of zero, or one too large to describe pages: EINVAL.
    #[error("invalid length")]
    InvalidLength,
    /// Arithmetic on an IOVA or user VA would wrap: EOVERFLOW.
    #[error("address arithmetic overflows")]
    Overflow,
    /// An IOVA, length or in-page offset breaks the table's alignment: EINVAL.
    #[error("not aligned to the IOVA alignment")]
    Misaligned,
    /// Automatic placement would need less alignment than the table requires: EINVAL.
    #[error("automatic IOVA alignment is below the table's alignment")]
    AutoAlignmentTooSmall,
    /// A fixed IOVA range intersects a reserved range: EINVAL.
    #[error("IOVA range is reserved")]
    Reserved,
    /// A fixed IOVA range intersects an existing area: EEXIST.
    #[error("IOVA range is already mapped")]
    AreaExists,
    /// No free IOVA range fits an automatic placement: ENOSPC.
    #[error("no free IOVA range")]
    NoSpace,
    /// Nothing (or not everything) is mapped where required, or unmap would cut an area:
    /// ENOENT.
    #[error("IOVA range is not mapped as required")]
    NotMapped,
    /// Another thread is still creating or destroying the area: EBUSY.
    #[error("area is busy")]
    AreaBusy,
    /// Accesses did not release an area after repeated unmap notifications: EDEADLOCK.
    #[error("accesses keep the area pinned")]
    AccessDeadlock,
    /// A reservation or allowed range conflicts with an existing one, or an alignment increase
    /// conflicts with existing areas: EADDRINUSE.
    #[error("IOVA range is in use")]
    AddressInUse,
    /// An allowed range is empty, inverted or overlaps another: EINVAL.
    #[error("invalid IOVA range")]
    InvalidRange,
    /// A domain's smallest page is larger than `PAGE_SIZE`: EINVAL.
    #[error("domain page size is not supported")]
    UnsupportedPageSize,
    /// The domain is already attached: EEXIST.
    #[error("domain is already attached")]
    DomainExists,
    /// Large pages cannot be disabled while domains hold areas: EINVAL.
    #[error("large pages are in use")]
    LargePagesInUse,
    /// Writable access to pages mapped read-only, or an access whose direction the area's
    /// protection refuses: EPERM.
    #[error("pages are not mapped with the required permission")]
    ReadOnlyPages,
    /// An access range is not page aligned where the kernel needs it, or the area is being
    /// unmapped: EINVAL.
    #[error("access range not allowed")]
    AccessRange,
    /// A VFIO type1 cut is refused: the area has accesses, or sits in a domain that may use
    /// large pages: EINVAL.
    #[error("area cannot be split")]
    SplitRefused,
    /// No free access slot (16-bit ids): EBUSY.
    #[error("too many accesses")]
    TooManyAccesses,
    /// User memory could not be pinned or copied: EFAULT.
    #[error(transparent)]
    Fault(#[from] UserMemoryError),
    /// Allocation failure (injected) or `RLIMIT_MEMLOCK` exceeded: ENOMEM.
    #[error("out of memory or over RLIMIT_MEMLOCK")]
    NoMemory,
    /// An injected failure at a point where the kernel returns EINVAL.
    #[error("injected failure")]
    Injected,
    /// A domain refused a map; carries the driver's errno.
    #[error(transparent)]
    Domain(#[from] DomainMapError),
}

impl IoptError {
    /// The errno the kernel returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            IoptError::InvalidLength
            | IoptError::Misaligned
            | IoptError::AutoAlignmentTooSmall
            | IoptError::Reserved
            | IoptError::InvalidRange
            | IoptError::UnsupportedPageSize
            | IoptError::LargePagesInUse
            | IoptError::AccessRange
            | IoptError::SplitRefused
            | IoptError::Injected => libc::EINVAL,
            IoptError::Overflow => libc::EOVERFLOW,
            IoptError::AreaExists | IoptError::DomainExists => libc::EEXIST,
            IoptError::NoSpace => libc::ENOSPC,
            IoptError::NotMapped => libc::ENOENT,
            IoptError::AreaBusy | IoptError::TooManyAccesses => libc::EBUSY,
            IoptError::AccessDeadlock => libc::EDEADLOCK,
            IoptError::AddressInUse => libc::EADDRINUSE,
            IoptError::ReadOnlyPages => libc::EPERM,
            IoptError::Fault(_) => libc::EFAULT,
            IoptError::NoMemory => libc::ENOMEM,
            IoptError::Domain(err) => err.0,
        }
    }
}

/// A domain's refusal to map, carrying the driver's errno unchanged (the mock answers `ENOENT`
/// to an injected failure, real drivers `ENOMEM` or `EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("domain map failed with errno {0}")]
pub struct DomainMapError(pub i32);

/// The engine's view of an attached paging domain: what `iommu_map()`/`iommu_unmap()` and the
/// domain's geometry give the kernel's io_pagetable.
///
/// Implementations split a map into the page sizes they support, as `iommu_map()` does. They
/// are called with the table's locks held and must not call back into it.
pub trait DomainMapper: Send + Sync + fmt::Debug {
    /// Maps `[iova, iova + length)` to `[phys, phys + length)`. `phys` is the user VA of the
    /// backing memory in the mapping address space (a page's "PFN" is its VA), so a run is
    /// contiguous exactly when the user range is. On failure nothing of this call stays mapped.
    fn map(
        &self,
        iova: Iova,
        phys: PhysAddr,
        length: u64,
        prot: Prot,
    ) -> Result<(), DomainMapError>;

    /// Unmaps `[iova, iova + length)`, which always covers whole earlier maps, and returns the
    /// bytes unmapped. Must not fail (`iommu_unmap_nofail()`).
    fn unmap(&self, iova: Iova, length: u64) -> u64;

    /// Supported page sizes as a bitmap (`domain->pgsize_bitmap`); the lowest bit sets the
    /// table's alignment.
    fn pgsize_bitmap(&self) -> u64;

    /// The inclusive range of IOVA the domain can translate (`domain->geometry`).
    fn aperture(&self) -> IovaRange;
}

/// Told when an unmap hits pages it pinned (the access's `ops->unmap`). It must unpin every
/// range it holds that intersects `[iova, iova + length)` before returning; it is called with no
/// table lock held.
pub trait AccessUnmapNotify: Send + Sync + fmt::Debug {
    /// Release whatever intersects `[iova, iova + length)`.
    fn unmap(&self, iova: Iova, length: u64);
}

/// An inclusive IOVA range `[start, last]`, as `struct iommu_iova_range`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct IovaRange {
    /// First IOVA.
    pub start: Iova,
    /// Last IOVA (inclusive).
    pub last: Iova,
}

impl IovaRange {
    /// `[start, last]`.
    pub fn new(start: u64, last: u64) -> Self {
        IovaRange {
            start: Iova(start),
            last: Iova(last),
        }
    }

    fn intersects(&self, start: u64, last: u64) -> bool {
        self.start.0 <= last && self.last.0 >= start
    }
}

/// Identity of an attached domain, used as the owner of its aperture reservations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DomainKey(usize);

impl DomainKey {
    fn of(domain: &Arc<dyn DomainMapper>) -> Self {
        DomainKey(Arc::as_ptr(domain).cast::<()>() as usize)
    }
}

/// Who made a reservation, so it can be removed with its owner (`iopt_reserved::owner`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReservedOwner {
    /// Outside an attached domain's aperture.
    Domain(DomainKey),
    /// A device's reserved region; the value is the caller's device identifier.
    Device(u64),
    /// No owner (`IOMMU_TEST_OP_ADD_RESERVED`): lives as long as the table.
    Unowned,
}

/// Where a new mapping goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IovaPlacement {
    /// Exactly at this IOVA (`IOMMU_IOAS_MAP_FIXED_IOVA`).
    Fixed(Iova),
    /// Wherever [`IoPagetable`] finds room (`IOPT_ALLOC_IOVA`).
    Auto,
}

/// Which copy path an access read or write models.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum AccessPath {
    /// Straight through the mapping address space (`copy_to_user`).
    #[default]
    Direct,
    /// The cross-address-space path (`__IOMMUFD_ACCESS_RW_SLOW_PATH`), with its own fault
    /// point for single-page copies.
    Slow,
}

/// An attached access's slot in the table (`iopt_access_list_id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct AccessId(u16);

/// A snapshot of one area, for reports and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AreaInfo {
    /// First IOVA.
    pub iova: Iova,
    /// Length in bytes.
    pub length: u64,
    /// User VA of the first byte.
    pub uptr: UserVa,
    /// The address space the memory belongs to.
    pub mm: MmId,
    /// Protection of the mapping.
    pub prot: Prot,
}

/// Slices of [`Pages`] covering an IOVA range of one table, ready to be mapped into another
/// (`struct iopt_pages_list`, built by [`IoPagetable::get_pages`]). Holds references, not pins.
#[derive(Debug, Clone)]
pub struct PagesList {
    slices: Vec<PagesSlice>,
    length: u64,
}

#[derive(Debug, Clone)]
struct PagesSlice {
    pages: Arc<Pages>,
    /// Byte offset of the slice from the page-aligned start of `pages`.
    start_byte: u64,
    length: u64,
}

impl PagesList {
    /// Total length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }
}

/// One mapped IOVA range (`struct iopt_area`). Fields other than `published`, `prevent_access`
/// and `num_accesses` never change after insertion.
#[derive(Debug)]
struct Area {
    last: u64,
    pages: Arc<Pages>,
    /// Byte offset of the area's first IOVA from the page-aligned start of `pages`.
    start_byte: u64,
    prot: Prot,
    /// Clear while the area is being created or destroyed. Written under `iova` for writing.
    published: bool,
    /// Set by an unmap that is waiting for accesses; refuses new accesses. Written under `iova`
    /// for writing.
    prevent_access: bool,
    /// Access ranges held on this area; changed under `iova` for reading plus the pages lock.
    num_accesses: AtomicU32,
    /// Pins that refuse unmapping (`num_locks`: a HW queue's internal access); changed under
    /// `iova` for reading.
    num_locks: AtomicU32,
}

impl Area {
    fn length(&self, first: u64) -> u64 {
        self.last - first + 1
    }

    /// Byte offset in `pages` of `iova` (`iopt_area_start_byte()`).
    fn start_byte_of(&self, first: u64, iova: u64) -> u64 {
        self.start_byte + (iova - first)
    }

    /// Page index in `pages` of `iova` (`iopt_area_iova_to_index()`).
    fn index_of(&self, first: u64, iova: u64) -> u64 {
        self.start_byte_of(first, iova) / PAGE_SIZE
    }

    fn first_index(&self) -> u64 {
        self.start_byte / PAGE_SIZE
    }

    fn last_index(&self, first: u64) -> u64 {
        (self.start_byte + self.length(first) - 1) / PAGE_SIZE
    }

    /// The "physical address" of the first byte: its user VA.
    fn phys(&self) -> PhysAddr {
        PhysAddr(self.pages.uptr().0 + self.start_byte)
    }
}

#[derive(Debug)]
struct AccessEntry {
    id: AccessId,
    alignment: u64,
    notifier: Arc<dyn AccessUnmapNotify>,
}

/// State under the `domains` lock.
#[derive(Debug, Default)]
struct DomainsState {
    /// Attached domains, dense; removal moves the last one into the hole, as the kernel does.
    domains: Vec<Arc<dyn DomainMapper>>,
    accesses: Vec<AccessEntry>,
    large_pages_disabled: bool,
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    range: IovaRange,
    owner: ReservedOwner,
}

/// State under the `iova` lock.
#[derive(Debug)]
struct IovaState {
    areas: BTreeMap<u64, Area>,
    /// Sorted, non-overlapping.
    allowed: Vec<IovaRange>,
    /// Sorted by start; may overlap (two devices can reserve the same region).
    reserved: Vec<Reservation>,
    alignment: u64,
}

impl IovaState {
    /// The area containing `iova`.
    fn area_containing(&self, iova: u64) -> Option<(u64, &Area)> {
        self.areas
            .range(..=iova)
            .next_back()
            .filter(|(_, area)| area.last >= iova)
            .map(|(&first, area)| (first, area))
    }

    /// The lowest area intersecting `[start, last]`.
    fn first_area_in(&self, start: u64, last: u64) -> Option<(u64, &Area)> {
        self.area_containing(start).or_else(|| {
            self.areas
                .range(start..=last)
                .next()
                .map(|(&first, area)| (first, area))
        })
    }

    fn reserved_intersects(&self, start: u64, last: u64) -> bool {
        self.reserved
            .iter()
            .any(|r| r.range.intersects(start, last))
    }

    fn allowed_intersects(&self, start: u64, last: u64) -> bool {
        self.allowed.iter().any(|r| r.intersects(start, last))
    }

    /// Fixed-IOVA checks (`iopt_check_iova()`).
    fn check_iova(&self, iova: u64, length: u64) -> Result<(), IoptError> {
        if iova & (self.alignment - 1) != 0 {
            return Err(IoptError::Misaligned);
        }
        let last = iova.checked_add(length - 1).ok_or(IoptError::Overflow)?;
        if self.reserved_intersects(iova, last) {
            return Err(IoptError::Reserved);
        }
        if self.first_area_in(iova, last).is_some() {
            return Err(IoptError::AreaExists);
        }
        Ok(())
    }

    /// Automatic placement (`iopt_alloc_iova()`): first fit, in ascending IOVA order, over the
    /// allowed ranges (or everything) clipped to `[PAGE_SIZE, u64::MAX - PAGE_SIZE]`, minus
    /// reserved ranges and areas, keeping the user address's in-page offset.
    fn alloc_iova(&self, uptr: u64, length: u64) -> Result<u64, IoptError> {
        if length == 0 || length >= u64::MAX / 2 {
            return Err(IoptError::Overflow);
        }
        let page_offset = uptr % PAGE_SIZE;
        let natural = length.next_power_of_two();
        let mut alignment = if uptr == 0 {
            natural
        } else {
            natural.min(1 << uptr.trailing_zeros())
        };
        alignment = alignment.min(HUGE_PAGE_SIZE);
        if alignment < self.alignment {
            return Err(IoptError::AutoAlignmentTooSmall);
        }
        let fits = |start: u64, last: u64| -> Option<u64> {
            let aligned = (start.checked_add(alignment - 1)? & !(alignment - 1)) | page_offset;
            (aligned < last && last - aligned >= length - 1).then_some(aligned)
        };
        let (low, high) = (PAGE_SIZE, u64::MAX - PAGE_SIZE);
        let spans: Vec<(u64, u64)> = if self.allowed.is_empty() {
            vec![(low, high)]
        } else {
            let mut spans: Vec<(u64, u64)> = Vec::new();
            for range in &self.allowed {
                let (start, last) = (range.start.0.max(low), range.last.0.min(high));
                if start > last {
                    continue;
                }
                match spans.last_mut() {
                    Some(span) if span.1.checked_add(1) == Some(start) => span.1 = last,
                    _ => spans.push((start, last)),
                }
            }
            spans
        };
        for (span_start, span_last) in spans {
            if fits(span_start, span_last).is_none() {
                continue;
            }
            if let Some(iova) = self.first_fit_hole(span_start, span_last, &fits) {
                return Ok(iova);
            }
        }
        Err(IoptError::NoSpace)
    }

    /// The first hole of reserved ∪ areas inside `[start, last]` that `fits`.
    fn first_fit_hole(
        &self,
        start: u64,
        last: u64,
        fits: &dyn Fn(u64, u64) -> Option<u64>,
    ) -> Option<u64> {
        let before = self
            .area_containing(start)
            .map(|(first, area)| (first, area.last));
        let mut areas = before
            .into_iter()
            .chain(
                self.areas
                    .range(start..=last)
                    .map(|(&first, area)| (first, area.last))
                    .filter(move |&(first, _)| Some(first) != before.map(|b| b.0)),
            )
            .peekable();
        let mut reserved = self
            .reserved
            .iter()
            .filter(|r| r.range.intersects(start, last))
            .map(|r| (r.range.start.0, r.range.last.0))
            .peekable();
        let mut cursor = start;
        loop {
            let next = match (areas.peek(), reserved.peek()) {
                (Some(a), Some(r)) if a.0 <= r.0 => areas.next(),
                (Some(_), Some(_)) => reserved.next(),
                (Some(_), None) => areas.next(),
                (None, Some(_)) => reserved.next(),
                (None, None) => None,
            };
            let Some((used_start, used_last)) = next else {
                return fits(cursor, last);
            };
            if used_start > cursor {
                if let Some(iova) = fits(cursor, used_start - 1) {
                    return Some(iova);
                }
            }
            if used_last >= last {
                return None;
            }
            cursor = cursor.max(used_last + 1);
        }
    }

    /// Whether every area conforms to `alignment` (`iopt_check_iova_alignment()`).
    fn check_alignment(&self, alignment: u64) -> Result<(), IoptError> {
        let mask = alignment - 1;
        let misaligned = self.areas.iter().any(|(&first, area)| {
            first & mask != 0
                || area.length(first) & mask != 0
                || (area.start_byte % PAGE_SIZE) & mask != 0
        });
        if misaligned {
            Err(IoptError::AddressInUse)
        } else {
            Ok(())
        }
    }

    /// `iopt_reserve_iova()`.
    fn reserve(
        &mut self,
        range: IovaRange,
        owner: ReservedOwner,
        injector: &FaultInjector,
    ) -> Result<(), IoptError> {
        let (start, last) = (range.start.0, range.last.0);
        if self.first_area_in(start, last).is_some() || self.allowed_intersects(start, last) {
            return Err(IoptError::AddressInUse);
        }
        if injector.should_fail(fail_site::RESERVE_IOVA) {
            return Err(IoptError::NoMemory);
        }
        let at = self
            .reserved
            .partition_point(|r| r.range.start <= range.start);
        self.reserved.insert(at, Reservation { range, owner });
        Ok(())
    }

    fn remove_reserved(&mut self, owner: ReservedOwner) {
        self.reserved.retain(|r| r.owner != owner);
    }

    /// Walks the areas that contiguously cover `[iova, last]`, calling `visit(area_first,
    /// area, cur, seg_last)` for each (`iopt_for_each_contig_area()`), then fails with
    /// [`IoptError::NotMapped`] if they stop short. Unpublished areas count as holes.
    fn for_each_contig<'s>(
        &'s self,
        iova: u64,
        last: u64,
        mut visit: impl FnMut(u64, &'s Area, u64, u64) -> Result<(), IoptError>,
    ) -> Result<(), IoptError> {
        let mut cur = iova;
        let Some((mut first, mut area)) = self.area_containing(cur) else {
            return Err(IoptError::NotMapped);
        };
        loop {
            if !area.published {
                return Err(IoptError::NotMapped);
            }
            visit(first, area, cur, last.min(area.last))?;
            if area.last >= last {
                return Ok(());
            }
            cur = area.last + 1;
            area = self.areas.get(&cur).ok_or(IoptError::NotMapped)?;
            first = cur;
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Maps one area into one domain, in `PAGE_SIZE` calls when large pages are disabled
/// (`batch_to_domain()` / `batch_iommu_map_small()`). On failure nothing stays mapped.
fn map_area(
    domain: &dyn DomainMapper,
    first: u64,
    area: &Area,
    small_pages: bool,
) -> Result<(), IoptError> {
    let length = area.length(first);
    let phys = area.phys().0;
    if !small_pages {
        return domain
            .map(Iova(first), PhysAddr(phys), length, area.prot)
            .map_err(IoptError::Domain);
    }
    let mut done = 0;
    while done < length {
        let chunk = PAGE_SIZE.min(length - done);
        if let Err(err) = domain.map(Iova(first + done), PhysAddr(phys + done), chunk, area.prot) {
            if done != 0 {
                domain.unmap(Iova(first), done);
            }
            return Err(IoptError::Domain(err));
        }
        done += chunk;
    }
    Ok(())
}

/// Pins an area and maps it into every domain, charging last (`iopt_area_fill_domains()`).
/// On failure every domain and the pins are as before.
fn fill_domains(
    domains: &DomainsState,
    first: u64,
    area: &Area,
    injector: &FaultInjector,
) -> Result<(), IoptError> {
    if domains.domains.is_empty() {
        return Ok(());
    }
    let mut txn = area
        .pages
        .pin(area.first_index(), area.last_index(first), injector)?;
    for (done, domain) in domains.domains.iter().enumerate() {
        if let Err(err) = map_area(domain.as_ref(), first, area, domains.large_pages_disabled) {
            for mapped in &domains.domains[..done] {
                mapped.unmap(Iova(first), area.length(first));
            }
            return Err(err);
        }
    }
    if let Err(err) = txn.commit(injector) {
        for mapped in &domains.domains {
            mapped.unmap(Iova(first), area.length(first));
        }
        drop(txn);
        return Err(err);
    }
    Ok(())
}

/// Unmaps an area from every domain, then unpins it (`iopt_area_unfill_domains()`).
fn unfill_domains(domains: &DomainsState, first: u64, area: &Area) {
    if domains.domains.is_empty() {
        return;
    }
    for domain in &domains.domains {
        domain.unmap(Iova(first), area.length(first));
    }
    area.pages.unpin(area.first_index(), area.last_index(first));
}

/// One IOAS's IOVA space (`struct io_pagetable`). `Send + Sync`; see the module's locking
/// section.
#[derive(Debug)]
pub struct IoPagetable {
    domains: RwLock<DomainsState>,
    iova: RwLock<IovaState>,
    injector: FaultInjector,
}

impl Default for IoPagetable {
    fn default() -> Self {
        Self::new()
    }
}

impl IoPagetable {
    /// An empty table with alignment 1 and large pages enabled (`iopt_init_table()`), using the
    /// crate's fault-injection hook.
    pub fn new() -> Self {
        Self::with_injector(FaultInjector::default())
    }

    /// An empty table whose fault points ask `injector`.
    pub fn with_injector(injector: FaultInjector) -> Self {
        IoPagetable {
            domains: RwLock::new(DomainsState::default()),
            iova: RwLock::new(IovaState {
                areas: BTreeMap::new(),
                allowed: Vec::new(),
                reserved: Vec::new(),
                alignment: 1,
            }),
            injector,
        }
    }

    /// The current IOVA alignment (`iopt->iova_alignment`, reported by
    /// `IOMMU_IOAS_IOVA_RANGES`).
    pub fn iova_alignment(&self) -> u64 {
        read(&self.iova).alignment
    }

    /// Whether large IO pages are allowed (`IOMMU_OPTION_HUGE_PAGES` GET).
    pub fn large_pages_enabled(&self) -> bool {
        !read(&self.domains).large_pages_disabled
    }

    /// Number of attached domains.
    pub fn domain_count(&self) -> usize {
        read(&self.domains).domains.len()
    }

    /// The page sizes every attached domain supports: the AND of their bitmaps, all ones with
    /// no domain (the start of VFIO compat's `iommufd_get_pagesizes()`).
    pub fn domains_pgsize_bitmap(&self) -> u64 {
        read(&self.domains)
            .domains
            .iter()
            .fold(u64::MAX, |bitmap, domain| bitmap & domain.pgsize_bitmap())
    }

    /// Whether the lowest area, if any, is still being created or destroyed (`Some(true)`) or
    /// published (`Some(false)`); `None` without areas.
    pub fn first_area_busy(&self) -> Option<bool> {
        read(&self.iova)
            .areas
            .values()
            .next()
            .map(|area| !area.published)
    }

    /// A snapshot of the published areas, in IOVA order.
    pub fn areas(&self) -> Vec<AreaInfo> {
        read(&self.iova)
            .areas
            .iter()
            .filter(|(_, area)| area.published)
            .map(|(&first, area)| AreaInfo {
                iova: Iova(first),
                length: area.length(first),
                uptr: UserVa(area.pages.uptr().0 + area.start_byte),
                mm: area.pages.mm(),
                prot: area.prot,
            })
            .collect()
    }

    /// Maps `[uptr, uptr + length)` of `source` at a fixed or automatic IOVA and returns the
    /// IOVA (`iopt_map_user_pages()`). With domains attached the pages are pinned and mapped
    /// into all of them before the area becomes visible; without, nothing is pinned.
    ///
    /// # Errors
    /// In the kernel's order: [`Pages::new`]'s EINVAL/EOVERFLOW/ENOMEM; then as
    /// [`IoPagetable::map_pages`].
    pub fn map_user_pages(
        &self,
        source: &PageSource,
        uptr: UserVa,
        length: u64,
        prot: Prot,
        placement: IovaPlacement,
    ) -> Result<Iova, IoptError> {
        let pages = Pages::new(
            source,
            uptr,
            length,
            prot.contains(Prot::WRITE),
            &self.injector,
        )?;
        let list = PagesList {
            slices: vec![PagesSlice {
                start_byte: uptr.0 - pages.uptr().0,
                length,
                pages,
            }],
            length,
        };
        self.map_pages(&list, prot, placement)
    }

    /// Collects the pages behind `[iova, iova + length)` for `IOMMU_IOAS_COPY`
    /// (`iopt_get_pages()`). Any sub-range of contiguous, published areas will do.
    ///
    /// # Errors
    /// `length` zero → EINVAL; wrap → EOVERFLOW; injected allocation → ENOMEM; not fully
    /// covered by contiguous published areas → ENOENT.
    pub fn get_pages(&self, iova: Iova, length: u64) -> Result<PagesList, IoptError> {
        if length == 0 {
            return Err(IoptError::InvalidLength);
        }
        let last = iova.0.checked_add(length - 1).ok_or(IoptError::Overflow)?;
        let state = read(&self.iova);
        let mut slices = Vec::new();
        state.for_each_contig(iova.0, last, |first, area, cur, seg_last| {
            if self.injector.should_fail(fail_site::GET_PAGES) {
                return Err(IoptError::NoMemory);
            }
            slices.push(PagesSlice {
                pages: area.pages.clone(),
                start_byte: area.start_byte_of(first, cur),
                length: seg_last - cur + 1,
            });
            Ok(())
        })?;
        Ok(PagesList { slices, length })
    }

    /// Maps a list of page slices as consecutive areas starting at a fixed or automatic IOVA
    /// (`iopt_map_pages()`), sharing the pages: nothing is pinned or charged twice.
    ///
    /// # Errors
    /// In the kernel's order: injected area allocation → ENOMEM; length zero or not a multiple
    /// of the alignment → EINVAL; automatic: EOVERFLOW (length ≥ 2^63), EINVAL (natural
    /// alignment below the table's), ENOSPC; fixed: misaligned → EINVAL, wrap → EOVERFLOW,
    /// reserved → EINVAL, overlap → EEXIST; writable map of read-only pages → EPERM; in-page
    /// offset misaligned → EINVAL; then, with domains: EFAULT, ENOMEM (rlimit), domain errors.
    pub fn map_pages(
        &self,
        list: &PagesList,
        prot: Prot,
        placement: IovaPlacement,
    ) -> Result<Iova, IoptError> {
        for _ in &list.slices {
            if self.injector.should_fail(fail_site::ALLOC_AREA) {
                return Err(IoptError::NoMemory);
            }
        }
        let length = list.length;
        let inserted = {
            let mut state = write(&self.iova);
            if length == 0 || length & (state.alignment - 1) != 0 {
                return Err(IoptError::Misaligned);
            }
            let Some(head) = list.slices.first() else {
                return Err(IoptError::InvalidLength);
            };
            let iova = match placement {
                IovaPlacement::Auto => {
                    state.alloc_iova(head.pages.uptr().0 + head.start_byte, length)?
                }
                IovaPlacement::Fixed(iova) => {
                    state.check_iova(iova.0, length)?;
                    iova.0
                }
            };
            let mut inserted = Vec::with_capacity(list.slices.len());
            let mut cur = iova;
            for slice in &list.slices {
                if let Err(err) = insert_area(&mut state, slice, cur, prot) {
                    for first in &inserted {
                        state.areas.remove(first);
                    }
                    return Err(err);
                }
                inserted.push(cur);
                cur = cur.wrapping_add(slice.length);
            }
            inserted
        };

        let domains = read(&self.domains);
        if let Err(err) = self.fill_new_areas(&domains, &inserted) {
            let mut state = write(&self.iova);
            for first in &inserted {
                state.areas.remove(first);
            }
            return Err(err);
        }
        let mut state = write(&self.iova);
        for first in &inserted {
            if let Some(area) = state.areas.get_mut(first) {
                area.published = true;
            }
        }
        Ok(Iova(inserted[0]))
    }

    /// Fills freshly inserted (unpublished) areas into all domains; on failure the ones
    /// already filled are emptied again (`iopt_fill_domains_pages()`).
    fn fill_new_areas(&self, domains: &DomainsState, inserted: &[u64]) -> Result<(), IoptError> {
        if domains.domains.is_empty() {
            return Ok(());
        }
        let state = read(&self.iova);
        for (done, first) in inserted.iter().enumerate() {
            let area = &state.areas[first];
            if let Err(err) = fill_domains(domains, *first, area, &self.injector) {
                for undo in &inserted[..done] {
                    unfill_domains(domains, *undo, &state.areas[undo]);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Unmaps every area inside `[iova, iova + length)` and returns the bytes unmapped, zero
    /// when there were none (`iopt_unmap_iova()`; `IOMMU_IOAS_UNMAP` turns zero into ENOENT,
    /// VFIO compatibility does not). Areas are never cut.
    ///
    /// # Errors
    /// `length` zero → EINVAL; wrap → EOVERFLOW; then as [`IoPagetable::unmap_all`].
    pub fn unmap_iova(&self, iova: Iova, length: u64) -> Result<u64, IoptError> {
        if length == 0 {
            return Err(IoptError::InvalidLength);
        }
        let last = iova.0.checked_add(length - 1).ok_or(IoptError::Overflow)?;
        self.unmap_range(iova.0, last)
    }

    /// Unmaps everything and returns the bytes unmapped (`iopt_unmap_all()`).
    ///
    /// # Errors
    /// Walking areas in IOVA order: an area still being created → EBUSY; an area sticking out
    /// of the range → ENOENT; accesses that keep an area pinned through 100 notifications →
    /// EDEADLOCK. Areas unmapped before the error stay unmapped.
    pub fn unmap_all(&self) -> Result<u64, IoptError> {
        self.unmap_range(0, u64::MAX)
    }

    /// `iopt_unmap_iova_range()`.
    fn unmap_range(&self, mut start: u64, last: u64) -> Result<u64, IoptError> {
        let mut unmapped = 0u64;
        let mut tries = 0u32;
        'again: loop {
            let domains = read(&self.domains);
            let mut state = write(&self.iova);
            loop {
                let Some((first, area)) = state.first_area_in(start, last) else {
                    return Ok(unmapped);
                };
                if !area.published {
                    return Err(IoptError::AreaBusy);
                }
                if first < start || area.last > last {
                    return Err(IoptError::NotMapped);
                }
                if area.num_locks.load(Ordering::Acquire) != 0 {
                    return Err(IoptError::AreaBusy);
                }
                if first != start {
                    tries = 0;
                }
                let area_last = area.last;
                if area.num_accesses.load(Ordering::Acquire) != 0 {
                    let length = area.length(first);
                    start = first;
                    if let Some(area) = state.areas.get_mut(&first) {
                        area.prevent_access = true;
                    }
                    let notifiers: Vec<Arc<dyn AccessUnmapNotify>> = domains
                        .accesses
                        .iter()
                        .map(|a| a.notifier.clone())
                        .collect();
                    drop(state);
                    drop(domains);
                    for notifier in notifiers {
                        notifier.unmap(Iova(first), length);
                    }
                    tries += 1;
                    if tries > MAX_UNMAP_TRIES {
                        return Err(IoptError::AccessDeadlock);
                    }
                    continue 'again;
                }
                if let Some(area) = state.areas.get_mut(&first) {
                    area.published = false;
                }
                drop(state);
                {
                    let state = read(&self.iova);
                    unfill_domains(&domains, first, &state.areas[&first]);
                }
                state = write(&self.iova);
                state.areas.remove(&first);
                unmapped += area_last - first + 1;
                if area_last >= last {
                    return Ok(unmapped);
                }
                start = area_last + 1;
            }
        }
    }

    /// Replaces the allowed ranges (`IOMMU_IOAS_ALLOW_IOVAS`: `iommufd_ioas_load_iovas()` then
    /// `iopt_set_allow_iova()`). An empty list allows everything again.
    ///
    /// # Errors
    /// A range with `start >= last`, or overlapping an earlier one → EINVAL (checked in list
    /// order); a range intersecting a reservation → EADDRINUSE, leaving the old list.
    pub fn set_allowed_iovas(&self, ranges: &[IovaRange]) -> Result<(), IoptError> {
        for (i, range) in ranges.iter().enumerate() {
            if range.start >= range.last {
                return Err(IoptError::InvalidRange);
            }
            if ranges[..i]
                .iter()
                .any(|r| r.intersects(range.start.0, range.last.0))
            {
                return Err(IoptError::InvalidRange);
            }
        }
        let mut state = write(&self.iova);
        if ranges
            .iter()
            .any(|r| state.reserved_intersects(r.start.0, r.last.0))
        {
            return Err(IoptError::AddressInUse);
        }
        let mut allowed = ranges.to_vec();
        allowed.sort();
        state.allowed = allowed;
        Ok(())
    }

    /// The allowed ranges, sorted.
    pub fn allowed_iovas(&self) -> Vec<IovaRange> {
        read(&self.iova).allowed.clone()
    }

    /// Reserves `range` for `owner` (`iopt_reserve_iova()`; `IOMMU_TEST_OP_ADD_RESERVED` uses
    /// [`ReservedOwner::Unowned`]).
    ///
    /// # Errors
    /// `start > last` → EINVAL; an area or allowed range intersects → EADDRINUSE; injected
    /// allocation → ENOMEM.
    pub fn reserve_iova(&self, range: IovaRange, owner: ReservedOwner) -> Result<(), IoptError> {
        if range.start > range.last {
            return Err(IoptError::InvalidRange);
        }
        write(&self.iova).reserve(range, owner, &self.injector)
    }

    /// Reserves all of a device's regions or none (the reservation loop of
    /// `iopt_table_enforce_dev_resv_regions()`; choosing which regions count is the caller's).
    ///
    /// # Errors
    /// Injected failure on entry → EINVAL; otherwise as [`IoPagetable::reserve_iova`], after
    /// removing every reservation of `owner`.
    pub fn reserve_regions(
        &self,
        regions: &[IovaRange],
        owner: ReservedOwner,
    ) -> Result<(), IoptError> {
        if self.injector.should_fail(fail_site::ENFORCE_RESV) {
            return Err(IoptError::Injected);
        }
        let mut state = write(&self.iova);
        for &range in regions {
            let result = if range.start > range.last {
                Err(IoptError::InvalidRange)
            } else {
                state.reserve(range, owner, &self.injector)
            };
            if let Err(err) = result {
                state.remove_reserved(owner);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Drops every reservation of `owner` (`iopt_remove_reserved_iova()`).
    pub fn remove_reserved(&self, owner: ReservedOwner) {
        write(&self.iova).remove_reserved(owner);
    }

    /// The usable IOVA: holes of the reserved ranges over the whole space, ignoring allowed
    /// ranges, as `IOMMU_IOAS_IOVA_RANGES` reports.
    pub fn iova_ranges(&self) -> Vec<IovaRange> {
        let state = read(&self.iova);
        let mut holes = Vec::new();
        let mut cursor = Some(0u64);
        for reservation in &state.reserved {
            let Some(at) = cursor else { break };
            let (start, last) = (reservation.range.start.0, reservation.range.last.0);
            if start > at {
                holes.push(IovaRange::new(at, start - 1));
            }
            if last >= at {
                cursor = last.checked_add(1);
            }
        }
        if let Some(at) = cursor {
            holes.push(IovaRange::new(at, u64::MAX));
        }
        holes
    }

    /// Attaches a domain and fills it with every area (`iopt_table_add_domain()`). The first
    /// domain pins the areas' pages; later ones only map. On failure nothing changes.
    ///
    /// # Errors
    /// Already attached → EEXIST; empty page-size bitmap or smallest page above `PAGE_SIZE` →
    /// EINVAL; existing areas break the raised alignment → EADDRINUSE; areas or allowed ranges
    /// outside the aperture → EADDRINUSE; injected allocation → ENOMEM; fill errors (EFAULT,
    /// ENOMEM, domain errors).
    pub fn add_domain(&self, domain: Arc<dyn DomainMapper>) -> Result<(), IoptError> {
        let mut domains = write(&self.domains);
        let mut state = write(&self.iova);
        if domains.domains.iter().any(|d| Arc::ptr_eq(d, &domain)) {
            return Err(IoptError::DomainExists);
        }
        let bitmap = domain.pgsize_bitmap();
        if bitmap == 0 {
            return Err(IoptError::UnsupportedPageSize);
        }
        let alignment = (1u64 << bitmap.trailing_zeros()).max(state.alignment);
        if alignment > PAGE_SIZE {
            return Err(IoptError::UnsupportedPageSize);
        }
        if alignment != state.alignment {
            state.check_alignment(alignment)?;
        }
        let owner = ReservedOwner::Domain(DomainKey::of(&domain));
        let aperture = domain.aperture();
        let result = (|| {
            if aperture.start.0 != 0 {
                state.reserve(
                    IovaRange::new(0, aperture.start.0 - 1),
                    owner,
                    &self.injector,
                )?;
            }
            if aperture.last.0 != u64::MAX {
                state.reserve(
                    IovaRange::new(aperture.last.0 + 1, u64::MAX),
                    owner,
                    &self.injector,
                )?;
            }
            if self.injector.should_fail(fail_site::ADD_DOMAIN) {
                return Err(IoptError::NoMemory);
            }
            self.fill_domain(&domains, &state, domain.as_ref())
        })();
        if let Err(err) = result {
            state.remove_reserved(owner);
            return Err(err);
        }
        state.alignment = alignment;
        domains.domains.push(domain);
        Ok(())
    }

    /// Fills every published area into a domain being attached (`iopt_fill_domain()`).
    fn fill_domain(
        &self,
        domains: &DomainsState,
        state: &IovaState,
        domain: &dyn DomainMapper,
    ) -> Result<(), IoptError> {
        let pins = domains.domains.is_empty();
        let small = domains.large_pages_disabled;
        let mut filled: Vec<u64> = Vec::new();
        let result = state
            .areas
            .iter()
            .filter(|(_, area)| area.published)
            .try_for_each(|(&first, area)| {
                if pins {
                    let mut txn = area.pages.pin(
                        area.first_index(),
                        area.last_index(first),
                        &self.injector,
                    )?;
                    map_area(domain, first, area, small)?;
                    if let Err(err) = txn.commit(&self.injector) {
                        domain.unmap(Iova(first), area.length(first));
                        drop(txn);
                        return Err(err);
                    }
                } else {
                    map_area(domain, first, area, small)?;
                }
                filled.push(first);
                Ok(())
            });
        if result.is_err() {
            for first in filled {
                let area = &state.areas[&first];
                domain.unmap(Iova(first), area.length(first));
                if pins {
                    area.pages.unpin(area.first_index(), area.last_index(first));
                }
            }
        }
        result
    }

    /// Detaches a domain: unmaps every area from it, unpins when it was the last domain, drops
    /// its aperture reservations and recomputes the alignment (`iopt_table_remove_domain()`).
    /// Returns `false` if the domain was not attached.
    pub fn remove_domain(&self, domain: &Arc<dyn DomainMapper>) -> bool {
        let mut domains = write(&self.domains);
        let mut state = write(&self.iova);
        let Some(index) = domains.domains.iter().position(|d| Arc::ptr_eq(d, domain)) else {
            return false;
        };
        domains.domains.swap_remove(index);
        let last_one = domains.domains.is_empty();
        for (&first, area) in state.areas.iter().filter(|(_, area)| area.published) {
            domain.unmap(Iova(first), area.length(first));
            if last_one {
                area.pages.unpin(area.first_index(), area.last_index(first));
            }
        }
        state.remove_reserved(ReservedOwner::Domain(DomainKey::of(domain)));
        // Shrinking never conflicts, and nothing can have raised it: ignore as the kernel WARNs.
        let _ = recalculate_alignment(&domains, &mut state);
        true
    }

    /// `IOMMU_OPTION_HUGE_PAGES` = 0 (`iopt_disable_large_pages()`): later domain maps use
    /// `PAGE_SIZE` calls and the alignment becomes at least `PAGE_SIZE`.
    ///
    /// # Errors
    /// Domains and areas both exist → EINVAL; existing areas break `PAGE_SIZE` alignment →
    /// EADDRINUSE (nothing changes).
    pub fn disable_large_pages(&self) -> Result<(), IoptError> {
        let mut domains = write(&self.domains);
        let mut state = write(&self.iova);
        if domains.large_pages_disabled {
            return Ok(());
        }
        if !domains.domains.is_empty() && !state.areas.is_empty() {
            return Err(IoptError::LargePagesInUse);
        }
        domains.large_pages_disabled = true;
        if let Err(err) = recalculate_alignment(&domains, &mut state) {
            domains.large_pages_disabled = false;
            return Err(err);
        }
        Ok(())
    }

    /// `IOMMU_OPTION_HUGE_PAGES` = 1 (`iopt_enable_large_pages()`).
    pub fn enable_large_pages(&self) {
        let mut domains = write(&self.domains);
        let mut state = write(&self.iova);
        domains.large_pages_disabled = false;
        // The alignment can only shrink here.
        let _ = recalculate_alignment(&domains, &mut state);
    }

    /// Registers an access with its alignment (`PAGE_SIZE` if it pins pages, else 1) and its
    /// unmap callback (`iopt_add_access()`).
    ///
    /// # Errors
    /// 65536 accesses already → EBUSY; existing areas break the raised alignment → EADDRINUSE.
    pub fn add_access(
        &self,
        alignment: u64,
        notifier: Arc<dyn AccessUnmapNotify>,
    ) -> Result<AccessId, IoptError> {
        let mut domains = write(&self.domains);
        let mut state = write(&self.iova);
        let id = (0..=u16::MAX)
            .find(|id| domains.accesses.iter().all(|a| a.id.0 != *id))
            .ok_or(IoptError::TooManyAccesses)?;
        domains.accesses.push(AccessEntry {
            id: AccessId(id),
            alignment: alignment.max(1),
            notifier,
        });
        if let Err(err) = recalculate_alignment(&domains, &mut state) {
            domains.accesses.pop();
            return Err(err);
        }
        Ok(AccessId(id))
    }

    /// Unregisters an access and recomputes the alignment (`iopt_remove_access()`). Returns
    /// `false` if the id was unknown.
    pub fn remove_access(&self, id: AccessId) -> bool {
        let mut domains = write(&self.domains);
        let mut state = write(&self.iova);
        let Some(index) = domains.accesses.iter().position(|a| a.id == id) else {
            return false;
        };
        domains.accesses.remove(index);
        let _ = recalculate_alignment(&domains, &mut state);
        true
    }

    /// Pins the pages under `[iova, iova + length)` for an access and returns each page's
    /// "PFN" (user VA), in order (the body of `iommufd_access_pin_pages()`). Undo with
    /// [`IoPagetable::access_unpin_pages`] over exactly the same range.
    ///
    /// # Errors
    /// `length` zero → EINVAL; wrap → EOVERFLOW; then per area in IOVA order: being unmapped or
    /// not page aligned at area boundaries → EINVAL; protection refuses the direction → EPERM;
    /// pin errors (EPERM, ENOMEM, EFAULT, EINVAL); finally a gap → ENOENT. On error nothing
    /// stays pinned.
    pub fn access_pin_pages(
        &self,
        iova: Iova,
        length: u64,
        write: bool,
    ) -> Result<Vec<UserVa>, IoptError> {
        if length == 0 {
            return Err(IoptError::InvalidLength);
        }
        let last = iova.0.checked_add(length - 1).ok_or(IoptError::Overflow)?;
        let state = read(&self.iova);
        let mut pfns = Vec::new();
        let mut pinned_last: Option<u64> = None;
        let result = state.for_each_contig(iova.0, last, |first, area, cur, seg_last| {
            let aligned = area.start_byte_of(first, cur) % PAGE_SIZE == 0
                && (area.last >= last
                    || area.start_byte_of(first, area.last) % PAGE_SIZE == PAGE_SIZE - 1);
            if area.prevent_access || !aligned {
                return Err(IoptError::AccessRange);
            }
            if !prot_allows(area.prot, write) {
                return Err(IoptError::ReadOnlyPages);
            }
            let index = area.index_of(first, cur);
            let last_index = area.index_of(first, seg_last);
            pfns.extend(
                area.pages
                    .add_access(index, last_index, write, &self.injector)?,
            );
            area.num_accesses.fetch_add(1, Ordering::AcqRel);
            pinned_last = Some(seg_last);
            Ok(())
        });
        if let Err(err) = result {
            if let Some(undo_last) = pinned_last {
                let _ = remove_accesses(&state, iova.0, undo_last);
            }
            return Err(err);
        }
        Ok(pfns)
    }

    /// Marks the areas under `[iova, iova + length)`, pinned by an access, as locked: unmaps
    /// of them answer EBUSY until [`IoPagetable::unlock_areas`] (`area->num_locks`, for HW
    /// queues).
    ///
    /// # Errors
    /// The range is not fully mapped → ENOENT (nothing is locked then).
    pub fn lock_areas(&self, iova: Iova, length: u64) -> Result<(), IoptError> {
        let last = iova
            .0
            .checked_add(length.saturating_sub(1))
            .ok_or(IoptError::Overflow)?;
        let state = read(&self.iova);
        let mut areas = Vec::new();
        state.for_each_contig(iova.0, last, |_, area, _, _| {
            areas.push(area);
            Ok(())
        })?;
        for area in areas {
            area.num_locks.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Undoes [`IoPagetable::lock_areas`] over the same range.
    pub fn unlock_areas(&self, iova: Iova, length: u64) {
        let Some(last) = iova.0.checked_add(length.saturating_sub(1)) else {
            return;
        };
        let state = read(&self.iova);
        let _ = state.for_each_contig(iova.0, last, |_, area, _, _| {
            area.num_locks.fetch_sub(1, Ordering::AcqRel);
            Ok(())
        });
    }

    /// Releases a pin made by [`IoPagetable::access_pin_pages`] over exactly the same range
    /// (`iommufd_access_unpin_pages()`).
    ///
    /// # Errors
    /// The range is not contiguously mapped, or no pin over exactly this range exists →
    /// ENOENT (whatever matched is still released, as the kernel does before warning).
    pub fn access_unpin_pages(&self, iova: Iova, length: u64) -> Result<(), IoptError> {
        if length == 0 {
            return Err(IoptError::InvalidLength);
        }
        let last = iova.0.checked_add(length - 1).ok_or(IoptError::Overflow)?;
        remove_accesses(&read(&self.iova), iova.0, last)
    }

    /// Copies `buf` to or from the IOAS at `iova` through the areas' user memory (the body of
    /// `iommufd_access_rw()`). Nothing is pinned.
    ///
    /// # Errors
    /// Empty buffer → EINVAL; wrap → EOVERFLOW; per area: being unmapped → EINVAL, protection
    /// refuses the direction → EPERM, writing read-only pages → EPERM, injected single-page
    /// slow-path failure → EINVAL, memory not accessible → EFAULT; a gap → ENOENT.
    pub fn access_rw(
        &self,
        iova: Iova,
        mut buf: RwBuf<'_>,
        path: AccessPath,
    ) -> Result<(), IoptError> {
        if buf.is_empty() {
            return Err(IoptError::InvalidLength);
        }
        let write = matches!(buf, RwBuf::Write(_));
        let last = iova
            .0
            .checked_add(buf.len() as u64 - 1)
            .ok_or(IoptError::Overflow)?;
        let state = read(&self.iova);
        let mut done = 0usize;
        state.for_each_contig(iova.0, last, |first, area, cur, seg_last| {
            if area.prevent_access {
                return Err(IoptError::AccessRange);
            }
            if !prot_allows(area.prot, write) {
                return Err(IoptError::ReadOnlyPages);
            }
            let bytes = (seg_last - cur + 1) as usize;
            area.pages.rw(
                area.start_byte_of(first, cur),
                buf.slice(done, done + bytes),
                path == AccessPath::Slow,
                &self.injector,
            )?;
            done += bytes;
            Ok(())
        })
    }

    /// VFIO type1 compatibility: splits areas so that each given IOVA becomes the last byte of
    /// an area (`iopt_cut_iova()`). Stops at the first failure.
    ///
    /// # Errors
    /// Area being created or unmapped → EBUSY; the cut breaks the alignment → EINVAL; injected
    /// allocation → ENOMEM; the area has accesses, or sits in a domain that may use large
    /// pages → EINVAL.
    pub fn cut_iova(&self, iovas: &[Iova]) -> Result<(), IoptError> {
        let domains = read(&self.domains);
        let mut state = write(&self.iova);
        for &iova in iovas {
            let Some((first, area)) = state.area_containing(iova.0) else {
                continue;
            };
            if iova.0 == first || iova.0 == area.last {
                continue;
            }
            if !area.published || area.prevent_access {
                return Err(IoptError::AreaBusy);
            }
            let new_start = iova.0 + 1;
            let mask = state.alignment - 1;
            if new_start & mask != 0 || area.start_byte_of(first, new_start) & mask != 0 {
                return Err(IoptError::Misaligned);
            }
            for _ in 0..2 {
                if self.injector.should_fail(fail_site::ALLOC_AREA) {
                    return Err(IoptError::NoMemory);
                }
            }
            if area.num_accesses.load(Ordering::Acquire) != 0 {
                return Err(IoptError::SplitRefused);
            }
            if !domains.domains.is_empty() && !domains.large_pages_disabled {
                return Err(IoptError::SplitRefused);
            }
            let area = state.areas.remove(&first).expect("found above");
            let rhs = Area {
                last: area.last,
                pages: area.pages.clone(),
                start_byte: area.start_byte_of(first, new_start),
                prot: area.prot,
                published: true,
                prevent_access: false,
                num_accesses: AtomicU32::new(0),
                num_locks: AtomicU32::new(0),
            };
            let lhs = Area {
                last: iova.0,
                ..area
            };
            state.areas.insert(first, lhs);
            state.areas.insert(new_start, rhs);
        }
        Ok(())
    }
}

fn prot_allows(prot: Prot, write: bool) -> bool {
    prot.contains(if write { Prot::WRITE } else { Prot::READ })
}

/// Releases the access ranges over `[iova, last]`, area by area.
fn remove_accesses(state: &IovaState, iova: u64, last: u64) -> Result<(), IoptError> {
    let mut all_found = true;
    let walked = state.for_each_contig(iova, last, |first, area, cur, seg_last| {
        if area
            .pages
            .remove_access(area.index_of(first, cur), area.index_of(first, seg_last))
        {
            area.num_accesses.fetch_sub(1, Ordering::AcqRel);
        } else {
            all_found = false;
        }
        Ok(())
    });
    walked?;
    if all_found {
        Ok(())
    } else {
        Err(IoptError::NotMapped)
    }
}

/// Inserts one unpublished area for `slice` at `iova` (`iopt_insert_area()`).
fn insert_area(
    state: &mut IovaState,
    slice: &PagesSlice,
    iova: u64,
    prot: Prot,
) -> Result<(), IoptError> {
    if prot.contains(Prot::WRITE) && !slice.pages.writable() {
        return Err(IoptError::ReadOnlyPages);
    }
    if (slice.start_byte % PAGE_SIZE) & (state.alignment - 1) != 0 {
        return Err(IoptError::Misaligned);
    }
    let last = iova
        .checked_add(slice.length - 1)
        .ok_or(IoptError::Overflow)?;
    let last_byte = slice
        .start_byte
        .checked_add(slice.length - 1)
        .ok_or(IoptError::Overflow)?;
    if last_byte / PAGE_SIZE >= slice.pages.npages() {
        return Err(IoptError::Overflow);
    }
    state.areas.insert(
        iova,
        Area {
            last,
            pages: slice.pages.clone(),
            start_byte: slice.start_byte,
            prot,
            published: false,
            prevent_access: false,
            num_accesses: AtomicU32::new(0),
            num_locks: AtomicU32::new(0),
        },
    );
    Ok(())
}

/// Recomputes the alignment from the large-page switch, domains and accesses
/// (`iopt_calculate_iova_alignment()`). Raising it requires existing areas to conform.
fn recalculate_alignment(domains: &DomainsState, state: &mut IovaState) -> Result<(), IoptError> {
    let mut alignment = if domains.large_pages_disabled {
        PAGE_SIZE
    } else {
        1
    };
    for domain in &domains.domains {
        alignment = alignment.max(1 << domain.pgsize_bitmap().trailing_zeros());
    }
    for access in &domains.accesses {
        alignment = alignment.max(access.alignment);
    }
    if alignment > state.alignment {
        state.check_alignment(alignment)?;
    }
    state.alignment = alignment;
    Ok(())
}

impl Drop for IoPagetable {
    /// Empties the domains still attached, so their page tables do not keep stale entries;
    /// the pins go with the last reference to each [`Pages`].
    fn drop(&mut self) {
        let domains = self
            .domains
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let state = self.iova.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (&first, area) in state.areas.iter().filter(|(_, area)| area.published) {
            unfill_domains(domains, first, area);
        }
    }
}
