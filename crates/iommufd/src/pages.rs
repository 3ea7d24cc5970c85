//! Pinned user pages: the kernel's `iopt_pages` (`drivers/iommu/iommufd/pages.c`).
//!
//! # Model
//!
//! A [`Pages`] is one linear run of user memory, `[uptr, uptr + npages * PAGE_SIZE)` in one
//! address space ([`MmId`]), created by one `IOMMU_IOAS_MAP`. Areas of one or several IO page
//! tables point at slices of it (`IOMMU_IOAS_COPY` shares it), so a user page is pinned **once
//! per `Pages`**, however many areas, domains or accesses use it.
//!
//! The kernel stores PFNs in three tiers (an xarray, a domain, the user's page tables) because
//! reading a PFN back is expensive. Here the "PFN" of a user page is its page-aligned virtual
//! address, computed from `uptr` and the page index, so no PFN is ever stored: what remains is
//! *which* pages are pinned. A page index is pinned while some user covers it:
//!
//! * an area that is filled into at least one domain covers its page range once (not once per
//!   domain: the second domain is filled from the first one's PFNs without a new pin);
//! * each distinct access range (`iommufd_access_pin_pages`) covers its page range once and
//!   counts its own users, as the kernel's `iopt_pages_access`.
//!
//! Coverage is a per-`Pages` counter over page-index ranges. When a page goes from uncovered to
//! covered it is pinned through [`UserMemory::pin`] (the `pin_user_pages` step), added to the
//! process-wide pin table that `IOMMU_TEST_OP_MD_CHECK_REFS` reads ([`page_pin_count`]) and
//! charged to `RLIMIT_MEMLOCK`; when it goes back to uncovered all three are undone.
//!
//! # Held pages
//!
//! A kernel pin holds the physical page, so a pinned page outlives the address space that
//! mapped it. [`UserMemory::pin`] returns [`HeldPages`] for the pages it can hold that way
//! (another process's shared memory, see [`crate::shared_alias`]); each `Pages` keeps them, per
//! run of page indexes, exactly while those pages are pinned: a page's hold is split off and
//! released when its last user goes. Copies (access reads and writes) go through the mapping
//! address space while it lives, as the kernel's do, and through the holds once it is gone, as
//! the kernel's `iopt_pages_rw_slow()` reads the pinned PFNs then; a page pinned but not held
//! (a private mapping) then answers `EFAULT`, as an unpinned one does. The "PFN" stays the
//! page's user VA either way.
//!
//! # Invariants
//!
//! * Every failure path leaves coverage, pins and charges exactly as they were: pinning is
//!   probe, then pin, then charge, each undone if a later one fails.
//! * Destroy paths never fail: unpinning needs no memory and cannot be refused.
//! * Dropping a `Pages` releases whatever it still pins, so a leak of pins is impossible even
//!   if an owner forgets to unpin.
//!
//! # Vocabulary
//!
//! `index` counts `PAGE_SIZE` pages from `uptr`; `last` is inclusive and `end` exclusive, as in
//! the kernel. Page indexes are far below `u64::MAX`, so `last_index + 1` never overflows.
//!
//! # Locking
//!
//! Each `Pages` has one mutex over its coverage, access records and pinned count (the kernel's
//! `pages->mutex`); it is taken after the IO page table's locks. The process-wide pin table and
//! the account registries each have their own mutex, taken last and never held across calls
//! out. Lock order of the engine: `domains` → `iova` → `Pages::state` → pin table.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use crate::io_pagetable::IoptError;
use crate::user_memory::{
    HeldPages, HeldRun, MmId, UserMemory, UserMemoryError, UserVa, PAGE_SIZE,
};

/// Names of the engine's fault-injection points, in the kernel's words. Each is a place where
/// the kernel calls `iommufd_should_fail()` or allocates memory that fail-nth can refuse; the
/// errno each produces is listed with it.
pub mod fail_site {
    /// `iopt_alloc_pages()` allocation: `ENOMEM`.
    pub const ALLOC_PAGES: &str = "iopt_alloc_pages";
    /// `iopt_area_alloc()` allocation: `ENOMEM`.
    pub const ALLOC_AREA: &str = "iopt_area_alloc";
    /// `iopt_get_pages()` list element allocation: `ENOMEM`.
    pub const GET_PAGES: &str = "iopt_get_pages";
    /// `iopt_reserve_iova()` allocation: `ENOMEM`.
    pub const RESERVE_IOVA: &str = "iopt_reserve_iova";
    /// `iopt_table_enforce_dev_resv_regions()` entry: `EINVAL`.
    pub const ENFORCE_RESV: &str = "iopt_table_enforce_dev_resv_regions";
    /// `xa_reserve()` of a new domain slot in `iopt_table_add_domain()`: `ENOMEM`.
    pub const ADD_DOMAIN: &str = "iopt_table_add_domain";
    /// The pin batch allocation (`temp_kmalloc()` in `pfn_reader_init()`): `ENOMEM`.
    pub const PIN_BATCH: &str = "pfn_reader_init";
    /// `pfn_reader_user_pin()`, before pages are pinned: `EFAULT`.
    pub const PIN_USER: &str = "pfn_reader_user_pin";
    /// `pfn_reader_user_update_pinned()`, before the pinned count is charged: `ENOMEM`.
    pub const ACCOUNT: &str = "pfn_reader_user_update_pinned";
    /// `iopt_area_add_access()` allocation of a new access range: `ENOMEM`.
    pub const ACCESS_ALLOC: &str = "iopt_area_add_access";
    /// `pages_to_xarray()` half-way store of an access's PFNs: `EINVAL`.
    pub const ACCESS_STORE: &str = "pages_to_xarray";
    /// `iopt_pages_rw_page()`, the single-page slow path of an access read or write: `EINVAL`.
    pub const RW_PAGE: &str = "iopt_pages_rw_page";
}

/// Decides whether a fault-injection point fails (the kernel's `iommufd_should_fail()`).
///
/// The default consults the crate-wide hook; tests substitute their own predicate to drive
/// every failure path of one table without global state.
#[derive(Clone, Default)]
pub struct FaultInjector {
    hook: Option<Arc<dyn Fn(&'static str) -> bool + Send + Sync>>,
}

impl fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultInjector")
            .field("custom_hook", &self.hook.is_some())
            .finish()
    }
}

impl FaultInjector {
    /// An injector that asks `hook(site)` at each point (sites are [`fail_site`] names).
    pub fn with_hook(hook: impl Fn(&'static str) -> bool + Send + Sync + 'static) -> Self {
        FaultInjector {
            hook: Some(Arc::new(hook)),
        }
    }

    /// Whether the point `site` fails now.
    pub(crate) fn should_fail(&self, site: &'static str) -> bool {
        match &self.hook {
            Some(hook) => hook(site),
            None => fail_point(site),
        }
    }
}

/// The crate-wide fault-injection hook used when no test hook is installed: the thread's
/// fail-nth countdown, consulted with the kind of point each site is.
fn fail_point(site: &'static str) -> bool {
    use crate::failpoint::{should_fail, FailSite};
    let kind = match site {
        fail_site::PIN_USER => FailSite::Pin,
        fail_site::ACCOUNT => FailSite::Account,
        fail_site::ACCESS_STORE => FailSite::Store,
        fail_site::RW_PAGE => FailSite::UserRw,
        fail_site::ENFORCE_RESV => FailSite::ReservedRegion,
        _ => FailSite::Alloc,
    };
    should_fail(kind)
}

/// An inclusive run of page indexes (or page numbers).
type Run = (u64, u64);

fn run_pages(runs: &[Run]) -> u64 {
    runs.iter().map(|&(first, last)| last - first + 1).sum()
}

/// Counts, for every point of the `u64` line, how many users cover it, as a sorted map of
/// non-overlapping segments with non-zero counts (uncovered points are absent).
///
/// Adjacent segments with equal counts are merged, so a contiguous pinned run stays one
/// segment however it was built.
#[derive(Debug, Default)]
struct RangeCounter {
    /// Segment start → (inclusive last, count ≥ 1).
    segments: BTreeMap<u64, (u64, u32)>,
}

impl RangeCounter {
    /// Ensures no segment contains both `at - 1` and `at`.
    fn split_at(&mut self, at: u64) {
        if let Some((&start, &(last, count))) = self.segments.range(..at).next_back() {
            if last >= at {
                self.segments.insert(start, (at - 1, count));
                self.segments.insert(at, (last, count));
            }
        }
    }

    /// Merges equal-count neighbours around `[first, last]` after a change there.
    fn merge_around(&mut self, first: u64, last: u64) {
        let from = self
            .segments
            .range(..first)
            .next_back()
            .map_or(first, |(&start, _)| start);
        let to = last.saturating_add(1);
        let keys: Vec<u64> = self.segments.range(from..=to).map(|(&k, _)| k).collect();
        let mut previous: Option<u64> = None;
        for key in keys {
            if let Some(prev) = previous {
                let (prev_last, prev_count) = self.segments[&prev];
                let (key_last, key_count) = self.segments[&key];
                if prev_last.checked_add(1) == Some(key) && prev_count == key_count {
                    self.segments.remove(&key);
                    self.segments.insert(prev, (key_last, prev_count));
                    continue;
                }
            }
            previous = Some(key);
        }
    }

    /// Adds one user over `[first, last]`; appends to `newly` the runs that were uncovered.
    fn increment(&mut self, first: u64, last: u64, newly: &mut Vec<Run>) {
        self.split_at(first);
        if let Some(after) = last.checked_add(1) {
            self.split_at(after);
        }
        let inside: Vec<u64> = self.segments.range(first..=last).map(|(&k, _)| k).collect();
        let mut cursor = Some(first);
        let mut gaps = Vec::new();
        for start in inside {
            let Some(at) = cursor else { break };
            if start > at {
                gaps.push((at, start - 1));
            }
            let segment = self.segments.get_mut(&start).expect("key collected above");
            segment.1 += 1;
            cursor = segment.0.checked_add(1);
        }
        if let Some(at) = cursor {
            if at <= last {
                gaps.push((at, last));
            }
        }
        for &(gap_first, gap_last) in &gaps {
            self.segments.insert(gap_first, (gap_last, 1));
        }
        newly.extend(gaps);
        self.merge_around(first, last);
    }

    /// Whether every point of `[first, last]` is covered at least once.
    fn covers(&self, first: u64, last: u64) -> bool {
        let mut cursor = first;
        loop {
            match self.segments.range(..=cursor).next_back() {
                Some((_, &(segment_last, _))) if segment_last >= cursor => {
                    if segment_last >= last {
                        return true;
                    }
                    cursor = segment_last + 1;
                }
                _ => return false,
            }
        }
    }

    /// Removes one user over `[first, last]`; appends to `freed` the runs now uncovered.
    /// Returns `false`, changing nothing, if part of the range was not covered.
    fn decrement(&mut self, first: u64, last: u64, freed: &mut Vec<Run>) -> bool {
        if !self.covers(first, last) {
            return false;
        }
        self.split_at(first);
        if let Some(after) = last.checked_add(1) {
            self.split_at(after);
        }
        let inside: Vec<u64> = self.segments.range(first..=last).map(|(&k, _)| k).collect();
        for start in inside {
            let (segment_last, count) = self.segments[&start];
            if count == 1 {
                self.segments.remove(&start);
                match freed.last_mut() {
                    Some(run) if run.1.checked_add(1) == Some(start) => run.1 = segment_last,
                    _ => freed.push((start, segment_last)),
                }
            } else {
                self.segments.insert(start, (segment_last, count - 1));
            }
        }
        self.merge_around(first, last);
        true
    }

    /// Users covering `point`.
    fn count_at(&self, point: u64) -> u32 {
        match self.segments.range(..=point).next_back() {
            Some((_, &(last, count))) if last >= point => count,
            _ => 0,
        }
    }

    /// Every covered run (ignoring counts).
    fn covered_runs(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for (&start, &(last, _)) in &self.segments {
            match runs.last_mut() {
                Some(run) if run.1.checked_add(1) == Some(start) => run.1 = last,
                _ => runs.push((start, last)),
            }
        }
        runs
    }

    /// Sum over segments of length × count.
    fn total(&self) -> u64 {
        self.segments
            .iter()
            .map(|(&start, &(last, count))| (last - start + 1) * u64::from(count))
            .sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Process-wide pin counts: address space → page number (VA / `PAGE_SIZE`) → pins. One pin per
/// `Pages` that holds the page, which is what the kernel's page refcount shows the selftest.
static PAGE_PINS: LazyLock<Mutex<HashMap<MmId, RangeCounter>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn global_pin(mm: MmId, first_page: u64, runs: &[Run]) {
    if runs.is_empty() {
        return;
    }
    let mut table = lock(&PAGE_PINS);
    let counter = table.entry(mm).or_default();
    let mut ignored = Vec::new();
    for &(first, last) in runs {
        counter.increment(first_page + first, first_page + last, &mut ignored);
    }
}

fn global_unpin(mm: MmId, first_page: u64, runs: &[Run]) {
    if runs.is_empty() {
        return;
    }
    let mut table = lock(&PAGE_PINS);
    let Some(counter) = table.get_mut(&mm) else {
        return;
    };
    let mut ignored = Vec::new();
    for &(first, last) in runs {
        let released = counter.decrement(first_page + first, first_page + last, &mut ignored);
        debug_assert!(released, "unpinned a page that was not pinned");
    }
    if counter.segments.is_empty() {
        table.remove(&mm);
    }
}

/// How many `Pages` currently pin the user page containing `va` in `mm`: what
/// `IOMMU_TEST_OP_MD_CHECK_REFS` compares against (the kernel's pin count of the page).
pub fn page_pin_count(mm: MmId, va: UserVa) -> u32 {
    lock(&PAGE_PINS)
        .get(&mm)
        .map_or(0, |counter| counter.count_at(va.0 / PAGE_SIZE))
}

/// The sum of [`page_pin_count`] over every page of `mm`: zero once everything is released.
pub fn total_pins(mm: MmId) -> u64 {
    lock(&PAGE_PINS).get(&mm).map_or(0, RangeCounter::total)
}

/// A `locked_vm` counter: pages charged against `RLIMIT_MEMLOCK`, shared by every `Pages` of
/// one user (the kernel's `user_struct::locked_vm`) or one address space (`mm->locked_vm`).
#[derive(Debug, Default)]
pub struct LockedVm {
    pages: AtomicU64,
}

static USER_ACCOUNTS: LazyLock<Mutex<HashMap<u32, Weak<LockedVm>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static MM_ACCOUNTS: LazyLock<Mutex<HashMap<MmId, Weak<LockedVm>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn shared_account<K: std::hash::Hash + Eq>(
    registry: &Mutex<HashMap<K, Weak<LockedVm>>>,
    key: K,
) -> Arc<LockedVm> {
    let mut registry = lock(registry);
    registry.retain(|_, account| account.strong_count() > 0);
    if let Some(account) = registry.get(&key).and_then(Weak::upgrade) {
        return account;
    }
    let account = Arc::new(LockedVm::default());
    registry.insert(key, Arc::downgrade(&account));
    account
}

impl LockedVm {
    /// The process-wide counter of user `uid`, shared by every caller while any holds it.
    pub fn for_user(uid: u32) -> Arc<LockedVm> {
        shared_account(&USER_ACCOUNTS, uid)
    }

    /// The process-wide counter of address space `mm`.
    pub fn for_mm(mm: MmId) -> Arc<LockedVm> {
        shared_account(&MM_ACCOUNTS, mm)
    }

    /// Pages currently charged.
    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Acquire)
    }

    /// Adds `npages` unless the total would exceed `limit_pages` (`incr_user_locked_vm()`).
    fn try_charge(&self, npages: u64, limit_pages: u64) -> bool {
        self.pages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                current
                    .checked_add(npages)
                    .filter(|&total| total <= limit_pages)
            })
            .is_ok()
    }

    fn uncharge(&self, npages: u64) {
        let result = self
            .pages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                current.checked_sub(npages)
            });
        debug_assert!(result.is_ok(), "locked_vm underflow");
    }
}

/// What the mapping task may pin: its `CAP_IPC_LOCK` and `RLIMIT_MEMLOCK`, and the counters it
/// is charged to. A trait so tests decide capability and limits without touching the host.
pub trait MemlockPolicy: Send + Sync + fmt::Debug {
    /// `capable(CAP_IPC_LOCK)`: pins made for this task are not charged at all.
    fn has_cap_ipc_lock(&self) -> bool;
    /// The task's current `RLIMIT_MEMLOCK` soft limit in bytes (`u64::MAX` when unlimited).
    /// Read at every charge, as the kernel reads `task_rlimit()` each time.
    fn memlock_limit(&self) -> u64;
    /// The user's counter, charged in [`RlimitMode::User`].
    fn user_account(&self) -> Arc<LockedVm>;
    /// The address space's counter, charged in [`RlimitMode::Mm`].
    fn mm_account(&self) -> Arc<LockedVm>;
}

/// A [`MemlockPolicy`] with fixed answers: for tests, benchmarks and hosts that decide limits
/// themselves.
#[derive(Debug, Clone, Default)]
pub struct FixedMemlockPolicy {
    /// Whether the task has `CAP_IPC_LOCK`.
    pub cap_ipc_lock: bool,
    /// `RLIMIT_MEMLOCK` in bytes.
    pub limit: u64,
    /// The user's counter.
    pub user: Arc<LockedVm>,
    /// The address space's counter.
    pub mm: Arc<LockedVm>,
}

impl MemlockPolicy for FixedMemlockPolicy {
    fn has_cap_ipc_lock(&self) -> bool {
        self.cap_ipc_lock
    }
    fn memlock_limit(&self) -> u64 {
        self.limit
    }
    fn user_account(&self) -> Arc<LockedVm> {
        self.user.clone()
    }
    fn mm_account(&self) -> Arc<LockedVm> {
        self.mm.clone()
    }
}

/// The context's `IOMMU_OPTION_RLIMIT_MODE`: which counter pins are charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RlimitMode {
    /// Per user (`IOPT_PAGES_ACCOUNT_USER`, value 0): the default for `/dev/iommu`.
    #[default]
    User,
    /// Per address space (`IOPT_PAGES_ACCOUNT_MM`, value 1): VFIO's compatible accounting.
    Mm,
}

/// How one `Pages` is charged, fixed when it is created (`pages->account_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountMode {
    /// The creator had `CAP_IPC_LOCK`: nothing is charged (`IOPT_PAGES_ACCOUNT_NONE`).
    None,
    /// Charged to the user's counter (`IOPT_PAGES_ACCOUNT_USER`).
    User,
    /// Charged to the address space's counter (`IOPT_PAGES_ACCOUNT_MM`).
    Mm,
}

/// The task that maps memory: where the pages come from and who pays for pinning them.
#[derive(Debug, Clone)]
pub struct PageSource {
    /// The address space the user VA belongs to.
    pub memory: Arc<dyn UserMemory>,
    /// The mapping task's capability and limit.
    pub policy: Arc<dyn MemlockPolicy>,
    /// The context's accounting mode.
    pub rlimit_mode: RlimitMode,
}

#[derive(Debug)]
struct Charge {
    mode: AccountMode,
    policy: Arc<dyn MemlockPolicy>,
    account: Option<Arc<LockedVm>>,
}

/// Pinned pages held independently of their mapping: page indexes `[first, last]` (`first`
/// is the key in [`PagesState::held`]), byte 0 of `pages` being page `first`.
#[derive(Debug)]
struct HeldSegment {
    last: u64,
    pages: Box<dyn HeldPages>,
}

#[derive(Debug, Default)]
struct PagesState {
    /// Users of each page index: filled areas and access ranges.
    coverage: RangeCounter,
    /// Exact access ranges → users (`iopt_pages_access`).
    accesses: BTreeMap<Run, u32>,
    /// Pages currently pinned, all of them charged outside an open [`PinTxn`].
    npinned: u64,
    /// Held runs of pinned pages by first page index, disjoint; every held page is pinned.
    held: BTreeMap<u64, HeldSegment>,
}

impl PagesState {
    /// Records the runs `memory.pin` returned for pages `[first, last]` of a `Pages` starting
    /// at `uptr`, ignoring any run that is misaligned, empty or strays outside that range.
    fn hold(&mut self, uptr: UserVa, first: u64, last: u64, runs: Vec<HeldRun>) {
        for run in runs {
            let offset = run.addr.0.wrapping_sub(uptr.0);
            let npages = run.pages.npages();
            let run_first = offset / PAGE_SIZE;
            let inside = run.addr.0 >= uptr.0
                && offset % PAGE_SIZE == 0
                && npages != 0
                && run_first >= first
                && run_first
                    .checked_add(npages - 1)
                    .is_some_and(|run_last| run_last <= last);
            let overlaps = |start: u64, end: u64| {
                self.held
                    .range(..=end)
                    .next_back()
                    .is_some_and(|(_, segment)| segment.last >= start)
            };
            if inside && !overlaps(run_first, run_first + npages - 1) {
                self.held.insert(
                    run_first,
                    HeldSegment {
                        last: run_first + npages - 1,
                        pages: run.pages,
                    },
                );
            }
        }
    }

    /// Releases the holds of pages `[first, last]`, splitting segments that straddle its ends.
    fn release_held(&mut self, first: u64, last: u64) {
        let keys: Vec<u64> = self
            .held
            .range(..=last)
            .rev()
            .take_while(|(_, segment)| segment.last >= first)
            .map(|(&key, _)| key)
            .collect();
        for key in keys {
            let Some(mut segment) = self.held.remove(&key) else {
                continue;
            };
            if segment.last > last {
                let tail = segment.pages.split_off(last + 1 - key);
                self.held.insert(
                    last + 1,
                    HeldSegment {
                        last: segment.last,
                        pages: tail,
                    },
                );
            }
            if key < first {
                // The released part, split off here, is dropped at the end of the block.
                let _released = segment.pages.split_off(first - key);
                self.held.insert(
                    key,
                    HeldSegment {
                        last: first - 1,
                        pages: segment.pages,
                    },
                );
            }
        }
    }
}

/// One linear run of user memory, pinned on demand and shared by areas (`struct iopt_pages`).
///
/// Created by [`crate::io_pagetable::IoPagetable::map_user_pages`]; shared through
/// [`crate::io_pagetable::PagesList`]. Immutable apart from `state`.
#[derive(Debug)]
pub struct Pages {
    memory: Arc<dyn UserMemory>,
    mm: MmId,
    /// Page-aligned start of the run.
    uptr: UserVa,
    npages: u64,
    writable: bool,
    charge: Charge,
    /// Guards coverage, access ranges and the pinned count (`pages->mutex`).
    state: Mutex<PagesState>,
}

impl Pages {
    /// Describes `[uptr, uptr + length)` of `source` without pinning anything
    /// (`iopt_alloc_pages()`).
    ///
    /// # Errors
    /// In check order: `length` zero or above `u64::MAX - PAGE_SIZE` →
    /// [`IoptError::InvalidLength`] (EINVAL); `uptr + length` wraps → [`IoptError::Overflow`]
    /// (EOVERFLOW); injected allocation failure → [`IoptError::NoMemory`] (ENOMEM).
    pub fn new(
        source: &PageSource,
        uptr: UserVa,
        length: u64,
        writable: bool,
        injector: &FaultInjector,
    ) -> Result<Arc<Pages>, IoptError> {
        if length == 0 || length > u64::MAX - PAGE_SIZE {
            return Err(IoptError::InvalidLength);
        }
        uptr.0.checked_add(length).ok_or(IoptError::Overflow)?;
        if injector.should_fail(fail_site::ALLOC_PAGES) {
            return Err(IoptError::NoMemory);
        }
        let start = uptr.0 & !(PAGE_SIZE - 1);
        let npages = (length + (uptr.0 - start)).div_ceil(PAGE_SIZE);
        let policy = source.policy.clone();
        let (mode, account) = if policy.has_cap_ipc_lock() {
            (AccountMode::None, None)
        } else {
            match source.rlimit_mode {
                RlimitMode::User => (AccountMode::User, Some(policy.user_account())),
                RlimitMode::Mm => (AccountMode::Mm, Some(policy.mm_account())),
            }
        };
        Ok(Arc::new(Pages {
            mm: source.memory.mm(),
            memory: source.memory.clone(),
            uptr: UserVa(start),
            npages,
            writable,
            charge: Charge {
                mode,
                policy,
                account,
            },
            state: Mutex::new(PagesState::default()),
        }))
    }

    /// The address space the pages belong to.
    pub fn mm(&self) -> MmId {
        self.mm
    }

    /// The page-aligned start of the run.
    pub fn uptr(&self) -> UserVa {
        self.uptr
    }

    /// Number of pages in the run.
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// Whether the pages were mapped writable (and so are pinned for writing).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// How pins are charged.
    pub fn account_mode(&self) -> AccountMode {
        self.charge.mode
    }

    /// Pages currently pinned.
    pub fn npinned(&self) -> u64 {
        lock(&self.state).npinned
    }

    /// The "PFN" of page `index`: its user VA.
    pub fn page_va(&self, index: u64) -> UserVa {
        UserVa(self.uptr.0 + index * PAGE_SIZE)
    }

    fn first_page_number(&self) -> u64 {
        self.uptr.0 / PAGE_SIZE
    }

    /// Adds one user over `[first, last]` and pins the pages that had none: probe, then the
    /// global pin. Charging is left to the caller. On error nothing changed.
    fn cover(
        &self,
        state: &mut PagesState,
        first: u64,
        last: u64,
        injector: &FaultInjector,
    ) -> Result<Vec<Run>, IoptError> {
        debug_assert!(first <= last && last < self.npages);
        let mut newly = Vec::new();
        state.coverage.increment(first, last, &mut newly);
        if newly.is_empty() {
            return Ok(newly);
        }
        let pinned = if injector.should_fail(fail_site::PIN_USER) {
            Err(IoptError::Fault(UserMemoryError::Fault {
                addr: self.page_va(newly[0].0),
                len: PAGE_SIZE,
            }))
        } else {
            newly
                .iter()
                .map(|&(run_first, run_last)| {
                    self.memory
                        .pin(
                            self.page_va(run_first),
                            (run_last - run_first + 1) * PAGE_SIZE,
                            self.writable,
                        )
                        .map(|held| (run_first, run_last, held))
                        .map_err(IoptError::Fault)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let pinned = match pinned {
            Ok(pinned) => pinned,
            Err(err) => {
                let mut ignored = Vec::new();
                state.coverage.decrement(first, last, &mut ignored);
                return Err(err);
            }
        };
        for (run_first, run_last, held) in pinned {
            state.hold(self.uptr, run_first, run_last, held);
        }
        global_pin(self.mm, self.first_page_number(), &newly);
        state.npinned += run_pages(&newly);
        Ok(newly)
    }

    /// Removes one user over `[first, last]` and unpins what no user holds any more; the
    /// freed pages are uncharged when `charged`. Returns `false` if the range was not covered.
    fn uncover(&self, state: &mut PagesState, first: u64, last: u64, charged: bool) -> bool {
        let mut freed = Vec::new();
        if !state.coverage.decrement(first, last, &mut freed) {
            return false;
        }
        global_unpin(self.mm, self.first_page_number(), &freed);
        for &(run_first, run_last) in &freed {
            state.release_held(run_first, run_last);
        }
        let npages = run_pages(&freed);
        state.npinned -= npages;
        if charged {
            if let Some(account) = &self.charge.account {
                account.uncharge(npages);
            }
        }
        true
    }

    /// Charges `npages` newly pinned pages (`pfn_reader_user_update_pinned()`).
    fn charge(&self, npages: u64, injector: &FaultInjector) -> Result<(), IoptError> {
        if npages == 0 {
            return Ok(());
        }
        if injector.should_fail(fail_site::ACCOUNT) {
            return Err(IoptError::NoMemory);
        }
        let Some(account) = &self.charge.account else {
            return Ok(());
        };
        // The mm path re-checks the capability at charge time, as __account_locked_vm() does.
        if self.charge.mode == AccountMode::Mm && self.charge.policy.has_cap_ipc_lock() {
            return account
                .try_charge(npages, u64::MAX)
                .then_some(())
                .ok_or(IoptError::NoMemory);
        }
        let limit_pages = self.charge.policy.memlock_limit() / PAGE_SIZE;
        if account.try_charge(npages, limit_pages) {
            Ok(())
        } else {
            Err(IoptError::NoMemory)
        }
    }

    /// Pins `[first, last]` for a domain fill and keeps the pages locked until the returned
    /// transaction is committed (charged) or dropped (undone), so domain maps happen under
    /// the pages lock as in `iopt_area_fill_domains()`.
    ///
    /// # Errors
    /// Injected batch allocation → ENOMEM; injected pin failure or a page not mapped (or not
    /// writable for writable pages) → EFAULT.
    pub(crate) fn pin(
        &self,
        first: u64,
        last: u64,
        injector: &FaultInjector,
    ) -> Result<PinTxn<'_>, IoptError> {
        let mut state = lock(&self.state);
        if injector.should_fail(fail_site::PIN_BATCH) {
            return Err(IoptError::NoMemory);
        }
        let newly = self.cover(&mut state, first, last, injector)?;
        Ok(PinTxn {
            pages: self,
            state,
            first,
            last,
            newly_pinned: run_pages(&newly),
            committed: false,
        })
    }

    /// Drops one user of `[first, last]`, unpinning and uncharging pages nobody else holds
    /// (the unpin half of `iopt_area_unfill_domain()`).
    pub(crate) fn unpin(&self, first: u64, last: u64) {
        let mut state = lock(&self.state);
        let released = self.uncover(&mut state, first, last, true);
        debug_assert!(released, "unpin of a range that was not pinned");
    }

    /// Records an access over `[first, last]`, pinning as needed, and returns the "PFN" (user
    /// VA) of every page (`iopt_area_add_access()`). An identical range already held only gains
    /// a user.
    ///
    /// # Errors
    /// Write access to read-only pages → EPERM; injected allocation → ENOMEM; pin failures →
    /// EFAULT; injected store failure → EINVAL; over `RLIMIT_MEMLOCK` → ENOMEM.
    pub(crate) fn add_access(
        &self,
        first: u64,
        last: u64,
        write: bool,
        injector: &FaultInjector,
    ) -> Result<Vec<UserVa>, IoptError> {
        if write && !self.writable {
            return Err(IoptError::ReadOnlyPages);
        }
        let mut state = lock(&self.state);
        let pfns = (first..=last).map(|index| self.page_va(index)).collect();
        if let Some(users) = state.accesses.get_mut(&(first, last)) {
            *users += 1;
            return Ok(pfns);
        }
        if injector.should_fail(fail_site::ACCESS_ALLOC) {
            return Err(IoptError::NoMemory);
        }
        let newly = self.cover(&mut state, first, last, injector)?;
        let stored = if injector.should_fail(fail_site::ACCESS_STORE) {
            Err(IoptError::Injected)
        } else {
            self.charge(run_pages(&newly), injector)
        };
        if let Err(err) = stored {
            self.uncover(&mut state, first, last, false);
            return Err(err);
        }
        state.accesses.insert((first, last), 1);
        Ok(pfns)
    }

    /// Drops one user of the access range `[first, last]`, unpinning when it was the last
    /// (`iopt_area_remove_access()`). Returns `false` if no such range is held.
    pub(crate) fn remove_access(&self, first: u64, last: u64) -> bool {
        let mut state = lock(&self.state);
        let Some(users) = state.accesses.get_mut(&(first, last)) else {
            return false;
        };
        *users -= 1;
        if *users == 0 {
            state.accesses.remove(&(first, last));
            self.uncover(&mut state, first, last, true);
        }
        true
    }

    /// Copies between `buf` and the bytes at `start_byte` of the run (`iopt_pages_rw_access()`).
    /// `slow_path` models the cross-mm path, whose single-page variant has its own fault point.
    /// The copy goes through the mapping address space; once that is gone, through the held
    /// pages (the kernel's `iopt_pages_rw_slow()` over pinned PFNs), all of which it needs.
    ///
    /// # Errors
    /// Writing read-only pages → EPERM; injected single-page failure → EINVAL; memory not
    /// accessible, or the address space gone and some page of the range not held → EFAULT.
    pub(crate) fn rw(
        &self,
        start_byte: u64,
        mut buf: RwBuf<'_>,
        slow_path: bool,
        injector: &FaultInjector,
    ) -> Result<(), IoptError> {
        let length = buf.len() as u64;
        if matches!(buf, RwBuf::Write(_)) && !self.writable {
            return Err(IoptError::ReadOnlyPages);
        }
        let single_page =
            start_byte / PAGE_SIZE == (start_byte + length.saturating_sub(1)) / PAGE_SIZE;
        if slow_path && single_page && injector.should_fail(fail_site::RW_PAGE) {
            return Err(IoptError::Injected);
        }
        let addr = UserVa(self.uptr.0 + start_byte);
        let live = match &mut buf {
            RwBuf::Read(out) => self.memory.read(addr, out),
            RwBuf::Write(data) => self.memory.write(addr, data),
        };
        match live {
            Err(UserMemoryError::Gone(_)) => self.rw_held(start_byte, buf),
            other => other.map_err(IoptError::Fault),
        }
    }

    /// Copies between `buf` and the bytes at `start_byte` through the held pages, after
    /// checking that every page of the range is held, so nothing is copied when one is not.
    fn rw_held(&self, start_byte: u64, mut buf: RwBuf<'_>) -> Result<(), IoptError> {
        let length = buf.len() as u64;
        let end = start_byte + length; // Inside the run, which ends below u64::MAX.
        let state = lock(&self.state);
        let mut chunks = Vec::new();
        let mut cursor = start_byte;
        while cursor < end {
            let page = cursor / PAGE_SIZE;
            let held = state
                .held
                .range(..=page)
                .next_back()
                .filter(|(_, segment)| segment.last >= page);
            let Some((&key, segment)) = held else {
                return Err(IoptError::Fault(UserMemoryError::Gone(self.mm)));
            };
            let chunk_end = ((segment.last + 1) * PAGE_SIZE).min(end);
            chunks.push((key, cursor, chunk_end));
            cursor = chunk_end;
        }
        for (key, from, to) in chunks {
            let pages = &state.held[&key].pages;
            let offset = from - key * PAGE_SIZE;
            let copied = match buf.slice((from - start_byte) as usize, (to - start_byte) as usize) {
                RwBuf::Read(out) => pages.read(offset, out),
                RwBuf::Write(data) => pages.write(offset, data),
            };
            copied.map_err(|_| {
                IoptError::Fault(UserMemoryError::Fault {
                    addr: UserVa(self.uptr.0 + from),
                    len: to - from,
                })
            })?;
        }
        Ok(())
    }

    /// Number of pinned pages currently held independently of their mapping.
    pub fn nheld(&self) -> u64 {
        lock(&self.state)
            .held
            .values()
            .map(|segment| segment.pages.npages())
            .sum()
    }
}

/// The buffer of an access read or write.
#[derive(Debug)]
pub enum RwBuf<'a> {
    /// Copy from the IOAS into this buffer.
    Read(&'a mut [u8]),
    /// Copy this data into the IOAS.
    Write(&'a [u8]),
}

impl RwBuf<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            RwBuf::Read(buf) => buf.len(),
            RwBuf::Write(data) => data.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sub-buffer `[from, to)`.
    pub(crate) fn slice(&mut self, from: usize, to: usize) -> RwBuf<'_> {
        match self {
            RwBuf::Read(buf) => RwBuf::Read(&mut buf[from..to]),
            RwBuf::Write(data) => RwBuf::Write(&data[from..to]),
        }
    }
}

impl Drop for Pages {
    /// Releases pins and charges that no owner released: normally there are none.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let runs = state.coverage.covered_runs();
        global_unpin(self.mm, self.uptr.0 / PAGE_SIZE, &runs);
        if let Some(account) = &self.charge.account {
            account.uncharge(state.npinned);
        }
        state.npinned = 0;
    }
}

/// Pages pinned for a domain fill but not yet charged; the pages lock is held throughout.
/// Dropping it without a successful [`PinTxn::commit`] undoes the pin, so a caller that must
/// unmap before unpinning drops it after unmapping.
pub(crate) struct PinTxn<'a> {
    pages: &'a Pages,
    state: MutexGuard<'a, PagesState>,
    first: u64,
    last: u64,
    newly_pinned: u64,
    committed: bool,
}

impl PinTxn<'_> {
    /// Charges the pages this fill pinned.
    ///
    /// # Errors
    /// Over `RLIMIT_MEMLOCK`, or injected → ENOMEM; dropping the transaction then undoes the
    /// pin.
    pub(crate) fn commit(&mut self, injector: &FaultInjector) -> Result<(), IoptError> {
        self.pages.charge(self.newly_pinned, injector)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PinTxn<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let (first, last) = (self.first, self.last);
            self.pages.uncover(&mut self.state, first, last, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_memory::ModelMemory;

    fn source(memory: Arc<ModelMemory>, limit: u64) -> (PageSource, Arc<FixedMemlockPolicy>) {
        let policy = Arc::new(FixedMemlockPolicy {
            limit,
            ..Default::default()
        });
        let source = PageSource {
            memory,
            policy: policy.clone(),
            rlimit_mode: RlimitMode::User,
        };
        (source, policy)
    }

    #[test]
    fn range_counter_reports_transitions_and_merges() {
        let mut counter = RangeCounter::default();
        let mut newly = Vec::new();
        counter.increment(10, 19, &mut newly);
        assert_eq!(newly, vec![(10, 19)]);
        newly.clear();
        counter.increment(5, 24, &mut newly);
        assert_eq!(newly, vec![(5, 9), (20, 24)]);
        assert_eq!(counter.count_at(15), 2);
        assert_eq!(counter.count_at(5), 1);
        assert_eq!(counter.count_at(25), 0);
        let mut freed = Vec::new();
        assert!(counter.decrement(10, 19, &mut freed));
        assert!(freed.is_empty());
        assert_eq!(
            counter.segments.len(),
            1,
            "equal counts merge back into one segment"
        );
        assert!(
            !counter.decrement(0, 5, &mut freed),
            "uncovered point refuses the decrement"
        );
        assert!(counter.decrement(5, 24, &mut freed));
        assert_eq!(freed, vec![(5, 24)]);
        assert!(counter.segments.is_empty());
    }

    #[test]
    fn range_counter_handles_the_top_of_the_line() {
        let mut counter = RangeCounter::default();
        let mut newly = Vec::new();
        counter.increment(u64::MAX - 1, u64::MAX, &mut newly);
        counter.increment(u64::MAX, u64::MAX, &mut newly);
        assert_eq!(newly, vec![(u64::MAX - 1, u64::MAX)]);
        assert_eq!(counter.count_at(u64::MAX), 2);
        assert_eq!(counter.total(), 3);
    }

    #[test]
    fn new_rejects_bad_lengths_in_kernel_order() {
        let memory = Arc::new(ModelMemory::new());
        let (source, _) = source(memory, u64::MAX);
        let none = FaultInjector::default();
        assert_eq!(
            Pages::new(&source, UserVa(0x1000), 0, true, &none).unwrap_err(),
            IoptError::InvalidLength
        );
        assert_eq!(
            Pages::new(
                &source,
                UserVa(0x1000),
                u64::MAX - PAGE_SIZE + 1,
                true,
                &none
            )
            .unwrap_err(),
            IoptError::InvalidLength
        );
        assert_eq!(
            Pages::new(&source, UserVa(u64::MAX - 10), 11, true, &none).unwrap_err(),
            IoptError::Overflow
        );
        let failing = FaultInjector::with_hook(|site| site == fail_site::ALLOC_PAGES);
        assert_eq!(
            Pages::new(&source, UserVa(0x1000), 1, true, &failing).unwrap_err(),
            IoptError::NoMemory
        );
        let pages = Pages::new(&source, UserVa(0x1ff0), 0x20, true, &none).unwrap();
        assert_eq!((pages.uptr(), pages.npages()), (UserVa(0x1000), 2));
    }

    #[test]
    fn pins_are_counted_once_per_pages_and_charged() {
        let memory = Arc::new(ModelMemory::new());
        memory.map(UserVa(0x10000), 8 * PAGE_SIZE, true);
        let (source, policy) = source(memory.clone(), u64::MAX);
        let none = FaultInjector::default();
        let pages = Pages::new(&source, UserVa(0x10000), 8 * PAGE_SIZE, true, &none).unwrap();
        pages.pin(0, 3, &none).unwrap().commit(&none).unwrap();
        pages.pin(2, 5, &none).unwrap().commit(&none).unwrap();
        assert_eq!(pages.npinned(), 6);
        assert_eq!(policy.user.pages(), 6);
        assert_eq!(page_pin_count(memory.mm(), UserVa(0x12000)), 1);
        assert_eq!(page_pin_count(memory.mm(), UserVa(0x16000)), 0);
        let other = Pages::new(&source, UserVa(0x10000), PAGE_SIZE, true, &none).unwrap();
        other.pin(0, 0, &none).unwrap().commit(&none).unwrap();
        assert_eq!(
            page_pin_count(memory.mm(), UserVa(0x10000)),
            2,
            "one pin per Pages"
        );
        pages.unpin(0, 3);
        assert_eq!(
            page_pin_count(memory.mm(), UserVa(0x12000)),
            1,
            "still held by 2..=5"
        );
        pages.unpin(2, 5);
        assert_eq!(pages.npinned(), 0);
        drop(other);
        assert_eq!(total_pins(memory.mm()), 0);
        assert_eq!(
            policy.user.pages(),
            0,
            "dropping Pages uncharges what it held"
        );
    }

    #[test]
    fn every_pin_failure_leaves_nothing_pinned() {
        let memory = Arc::new(ModelMemory::new());
        memory.map(UserVa(0x10000), 4 * PAGE_SIZE, true);
        memory.unmap(UserVa(0x12000), PAGE_SIZE);
        let (source, policy) = source(memory.clone(), 2 * PAGE_SIZE);
        let none = FaultInjector::default();
        let pages = Pages::new(&source, UserVa(0x10000), 4 * PAGE_SIZE, true, &none).unwrap();
        assert!(
            matches!(pages.pin(0, 3, &none), Err(IoptError::Fault(_))),
            "hole at page 2"
        );
        assert!(matches!(
            pages.pin(0, 1, &none).unwrap().commit(&none),
            Ok(())
        ));
        assert_eq!(
            pages.pin(3, 3, &none).unwrap().commit(&none),
            Err(IoptError::NoMemory),
            "rlimit"
        );
        for site in [fail_site::PIN_BATCH, fail_site::PIN_USER] {
            let failing = FaultInjector::with_hook(move |s| s == site);
            assert!(pages.pin(3, 3, &failing).is_err(), "{site}");
        }
        let failing = FaultInjector::with_hook(|s| s == fail_site::ACCOUNT);
        assert_eq!(
            pages.pin(3, 3, &none).map(|_| ()),
            Ok(()),
            "dropped uncommitted"
        );
        assert_eq!(
            pages.pin(3, 3, &none).unwrap().commit(&failing),
            Err(IoptError::NoMemory)
        );
        assert_eq!(pages.npinned(), 2);
        assert_eq!(policy.user.pages(), 2);
        assert_eq!(page_pin_count(memory.mm(), UserVa(0x13000)), 0);
        pages.unpin(0, 1);
        assert_eq!(total_pins(memory.mm()), 0);
        assert_eq!(policy.user.pages(), 0);
    }

    #[test]
    fn cap_ipc_lock_and_mm_mode_pick_the_account() {
        let memory = Arc::new(ModelMemory::new());
        memory.map(UserVa(0x10000), PAGE_SIZE, true);
        let none = FaultInjector::default();
        let capable = Arc::new(FixedMemlockPolicy {
            cap_ipc_lock: true,
            limit: 0,
            ..Default::default()
        });
        let source = PageSource {
            memory: memory.clone(),
            policy: capable.clone(),
            rlimit_mode: RlimitMode::User,
        };
        let pages = Pages::new(&source, UserVa(0x10000), PAGE_SIZE, false, &none).unwrap();
        assert_eq!(pages.account_mode(), AccountMode::None);
        pages.pin(0, 0, &none).unwrap().commit(&none).unwrap();
        assert_eq!(capable.user.pages(), 0);

        let policy = Arc::new(FixedMemlockPolicy {
            limit: PAGE_SIZE,
            ..Default::default()
        });
        let source = PageSource {
            memory: memory.clone(),
            policy: policy.clone(),
            rlimit_mode: RlimitMode::Mm,
        };
        let pages = Pages::new(&source, UserVa(0x10000), PAGE_SIZE, false, &none).unwrap();
        assert_eq!(pages.account_mode(), AccountMode::Mm);
        pages.pin(0, 0, &none).unwrap().commit(&none).unwrap();
        assert_eq!((policy.mm.pages(), policy.user.pages()), (1, 0));
    }

    #[test]
    fn access_ranges_share_exact_matches_and_check_writability() {
        let memory = Arc::new(ModelMemory::new());
        memory.map(UserVa(0x10000), 4 * PAGE_SIZE, true);
        let (source, _) = source(memory.clone(), u64::MAX);
        let none = FaultInjector::default();
        let read_only = Pages::new(&source, UserVa(0x10000), 4 * PAGE_SIZE, false, &none).unwrap();
        assert_eq!(
            read_only.add_access(0, 1, true, &none),
            Err(IoptError::ReadOnlyPages)
        );
        let pfns = read_only.add_access(1, 2, false, &none).unwrap();
        assert_eq!(pfns, vec![UserVa(0x11000), UserVa(0x12000)]);
        read_only.add_access(1, 2, false, &none).unwrap();
        assert_eq!(page_pin_count(memory.mm(), UserVa(0x11000)), 1);
        for site in [
            fail_site::ACCESS_ALLOC,
            fail_site::ACCESS_STORE,
            fail_site::ACCOUNT,
        ] {
            let failing = FaultInjector::with_hook(move |s| s == site);
            assert!(
                read_only.add_access(0, 3, false, &failing).is_err(),
                "{site}"
            );
            assert_eq!(read_only.npinned(), 2, "{site} left extra pins");
        }
        assert!(read_only.remove_access(1, 2));
        assert_eq!(read_only.npinned(), 2, "one user left");
        assert!(read_only.remove_access(1, 2));
        assert!(!read_only.remove_access(1, 2));
        assert_eq!(total_pins(memory.mm()), 0);
    }

    /// A model address space whose pins hold a copy of the pages taken at pin time, with a
    /// count of the pages held by live holds.
    #[derive(Debug, Default)]
    struct HoldingMemory {
        inner: ModelMemory,
        held: Arc<AtomicU64>,
    }

    /// A copy of some pages, counted in the shared counter while it lives.
    #[derive(Debug)]
    struct CopiedPages {
        data: Mutex<Vec<u8>>,
        held: Arc<AtomicU64>,
    }

    impl CopiedPages {
        fn new(data: Vec<u8>, held: Arc<AtomicU64>) -> Box<CopiedPages> {
            held.fetch_add(data.len() as u64 / PAGE_SIZE, Ordering::Relaxed);
            Box::new(CopiedPages {
                data: Mutex::new(data),
                held,
            })
        }
    }

    impl Drop for CopiedPages {
        fn drop(&mut self) {
            let npages = lock(&self.data).len() as u64 / PAGE_SIZE;
            self.held.fetch_sub(npages, Ordering::Relaxed);
        }
    }

    impl HeldPages for CopiedPages {
        fn npages(&self) -> u64 {
            lock(&self.data).len() as u64 / PAGE_SIZE
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), UserMemoryError> {
            let data = lock(&self.data);
            let range = offset as usize..offset as usize + buf.len();
            buf.copy_from_slice(data.get(range).ok_or(UserMemoryError::Gone(MM_NONE))?);
            Ok(())
        }
        fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), UserMemoryError> {
            let mut data = lock(&self.data);
            let range = offset as usize..offset as usize + bytes.len();
            data.get_mut(range)
                .ok_or(UserMemoryError::Gone(MM_NONE))?
                .copy_from_slice(bytes);
            Ok(())
        }
        fn split_off(&mut self, at: u64) -> Box<dyn HeldPages> {
            let mut data = lock(&self.data);
            let at = (at * PAGE_SIZE).min(data.len() as u64) as usize;
            let tail = data.split_off(at);
            self.held
                .fetch_sub(tail.len() as u64 / PAGE_SIZE, Ordering::Relaxed);
            CopiedPages::new(tail, self.held.clone())
        }
    }

    const MM_NONE: MmId = MmId {
        pid: 0,
        start_time: 0,
    };

    impl UserMemory for HoldingMemory {
        fn mm(&self) -> MmId {
            self.inner.mm()
        }
        fn read(&self, addr: UserVa, buf: &mut [u8]) -> Result<(), UserMemoryError> {
            self.inner.read(addr, buf)
        }
        fn write(&self, addr: UserVa, data: &[u8]) -> Result<(), UserMemoryError> {
            self.inner.write(addr, data)
        }
        fn probe(&self, addr: UserVa, len: u64, writable: bool) -> Result<(), UserMemoryError> {
            self.inner.probe(addr, len, writable)
        }
        fn pin(
            &self,
            addr: UserVa,
            len: u64,
            writable: bool,
        ) -> Result<Vec<HeldRun>, UserMemoryError> {
            self.inner.probe(addr, len, writable)?;
            let mut data = vec![0u8; len as usize];
            self.inner.read(addr, &mut data)?;
            Ok(vec![HeldRun {
                addr,
                pages: CopiedPages::new(data, self.held.clone()),
            }])
        }
    }

    const HELD_BASE: u64 = 0x10000;

    /// A `Pages` over 16 writable pages of a [`HoldingMemory`], byte `i` of which is `i / 7`.
    fn holding_pages() -> (Arc<HoldingMemory>, Arc<Pages>) {
        let memory = Arc::new(HoldingMemory::default());
        memory.inner.map(UserVa(HELD_BASE), 16 * PAGE_SIZE, true);
        let pattern: Vec<u8> = (0..16 * PAGE_SIZE).map(|i| (i / 7) as u8).collect();
        memory.inner.write(UserVa(HELD_BASE), &pattern).unwrap();
        let source = PageSource {
            memory: memory.clone(),
            policy: Arc::new(FixedMemlockPolicy {
                cap_ipc_lock: true,
                ..Default::default()
            }),
            rlimit_mode: RlimitMode::User,
        };
        let none = FaultInjector::default();
        let pages = Pages::new(&source, UserVa(HELD_BASE), 16 * PAGE_SIZE, true, &none).unwrap();
        (memory, pages)
    }

    fn read_at(pages: &Pages, start_byte: u64, len: usize) -> Result<Vec<u8>, IoptError> {
        let mut buf = vec![0u8; len];
        pages.rw(
            start_byte,
            RwBuf::Read(&mut buf),
            false,
            &FaultInjector::default(),
        )?;
        Ok(buf)
    }

    #[test]
    fn copies_use_the_mapping_while_it_lives_and_held_pages_after() {
        let (memory, pages) = holding_pages();
        let none = FaultInjector::default();
        pages.pin(1, 3, &none).unwrap().commit(&none).unwrap();
        assert_eq!((pages.nheld(), memory.held.load(Ordering::Relaxed)), (3, 3));
        memory
            .inner
            .write(UserVa(HELD_BASE + PAGE_SIZE), &[0xee])
            .unwrap();
        assert_eq!(
            read_at(&pages, PAGE_SIZE, 2).unwrap(),
            [0xee, ((PAGE_SIZE + 1) / 7) as u8],
            "the live mapping, not the copy taken at pin time"
        );

        memory.inner.exit();
        let held = read_at(&pages, PAGE_SIZE + 100, 2 * PAGE_SIZE as usize).unwrap();
        let expected: Vec<u8> = (PAGE_SIZE + 100..3 * PAGE_SIZE + 100)
            .map(|i| (i / 7) as u8)
            .collect();
        assert_eq!(held, expected, "pages 1..=3 as pinned");
        pages
            .rw(4 * PAGE_SIZE - 2, RwBuf::Write(&[1, 2]), false, &none)
            .unwrap();
        assert_eq!(read_at(&pages, 4 * PAGE_SIZE - 2, 2).unwrap(), [1, 2]);

        let gone = IoptError::Fault(UserMemoryError::Gone(memory.mm()));
        assert_eq!(
            read_at(&pages, 3 * PAGE_SIZE, PAGE_SIZE as usize + 1),
            Err(gone.clone())
        );
        assert_eq!(
            read_at(&pages, 0, 1),
            Err(gone.clone()),
            "page 0 was never pinned"
        );
        assert_eq!(
            pages.rw(4 * PAGE_SIZE - 2, RwBuf::Write(&[9, 9, 9]), false, &none),
            Err(gone.clone()),
            "a write reaching an unheld page"
        );
        assert_eq!(
            read_at(&pages, 4 * PAGE_SIZE - 2, 2).unwrap(),
            [1, 2],
            "left nothing written"
        );
        assert_eq!(
            pages.rw(PAGE_SIZE, RwBuf::Write(&[1]), false, &none),
            Ok(())
        );
        pages.unpin(1, 3);
        assert_eq!(
            read_at(&pages, PAGE_SIZE, 1),
            Err(gone.clone()),
            "unpinned, so released"
        );
        assert_eq!(memory.held.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn holds_split_and_release_with_their_pins() {
        let (memory, pages) = holding_pages();
        let none = FaultInjector::default();
        let held = || memory.held.load(Ordering::Relaxed);
        pages.add_access(0, 9, true, &none).unwrap();
        pages.add_access(5, 14, true, &none).unwrap();
        pages.pin(12, 15, &none).unwrap().commit(&none).unwrap();
        assert_eq!((pages.nheld(), held()), (16, 16));
        assert!(pages.remove_access(0, 9));
        assert_eq!((pages.nheld(), held()), (11, 11), "pages 0..=4 released");
        memory.inner.exit();
        assert!(read_at(&pages, 4 * PAGE_SIZE, 1).is_err());
        let tail = read_at(&pages, 5 * PAGE_SIZE, 11 * PAGE_SIZE as usize).unwrap();
        assert_eq!(tail[0], (5 * PAGE_SIZE / 7) as u8);
        assert!(pages.remove_access(5, 14));
        assert_eq!((pages.nheld(), held()), (4, 4), "12..=15 still pinned");
        assert!(read_at(&pages, 11 * PAGE_SIZE, 1).is_err());
        assert!(read_at(&pages, 12 * PAGE_SIZE, 4 * PAGE_SIZE as usize).is_ok());
        drop(pages);
        assert_eq!(held(), 0, "dropping the Pages releases its holds");
    }

    #[test]
    fn a_failed_pin_holds_nothing() {
        let (memory, pages) = holding_pages();
        memory
            .inner
            .unmap(UserVa(HELD_BASE + 5 * PAGE_SIZE), PAGE_SIZE);
        let none = FaultInjector::default();
        pages.pin(0, 1, &none).unwrap().commit(&none).unwrap();
        assert!(
            pages.add_access(0, 7, false, &none).is_err(),
            "hole at page 5"
        );
        let failing = FaultInjector::with_hook(|site| site == fail_site::ACCOUNT);
        assert!(pages.pin(2, 3, &none).unwrap().commit(&failing).is_err());
        assert!(pages.pin(2, 3, &none).is_ok(), "dropped uncommitted");
        assert_eq!((pages.nheld(), memory.held.load(Ordering::Relaxed)), (2, 2));
    }

    /// One operation on a [`Pages`] of 16 pages, for the hold model.
    #[derive(Debug, Clone)]
    enum HoldOp {
        Access(u64, u64),
        RemoveAccess(usize),
        Fill(u64, u64),
        Unfill(usize),
    }

    fn hold_op() -> impl proptest::strategy::Strategy<Value = HoldOp> {
        use proptest::prelude::*;
        let range = (0u64..16, 0u64..16).prop_map(|(a, b)| (a.min(b), a.max(b)));
        prop_oneof![
            range.clone().prop_map(|(a, b)| HoldOp::Access(a, b)),
            (0usize..8).prop_map(HoldOp::RemoveAccess),
            range.prop_map(|(a, b)| HoldOp::Fill(a, b)),
            (0usize..8).prop_map(HoldOp::Unfill),
        ]
    }

    proptest::proptest! {
        /// Holds follow pins exactly: after any sequence of pins and unpins, the held pages
        /// are the pinned pages (a page-by-page model of coverage), each held once, and the
        /// held bytes are the pattern the pages had.
        #[test]
        fn held_pages_are_exactly_the_pinned_pages(
            ops in proptest::collection::vec(hold_op(), 1..40)
        ) {
            let (memory, pages) = holding_pages();
            let none = FaultInjector::default();
            let mut accesses: Vec<Run> = Vec::new();
            let mut fills: Vec<Run> = Vec::new();
            for op in ops {
                match op {
                    HoldOp::Access(a, b) => {
                        pages.add_access(a, b, false, &none).unwrap();
                        accesses.push((a, b));
                    }
                    HoldOp::RemoveAccess(i) if i < accesses.len() => {
                        let (a, b) = accesses.remove(i);
                        proptest::prop_assert!(pages.remove_access(a, b));
                    }
                    HoldOp::Fill(a, b) => {
                        pages.pin(a, b, &none).unwrap().commit(&none).unwrap();
                        fills.push((a, b));
                    }
                    HoldOp::Unfill(i) if i < fills.len() => {
                        let (a, b) = fills.remove(i);
                        pages.unpin(a, b);
                    }
                    _ => {}
                }
                let pinned: Vec<bool> = (0..16)
                    .map(|p| accesses.iter().chain(&fills).any(|&(a, b)| a <= p && p <= b))
                    .collect();
                let npinned = pinned.iter().filter(|&&p| p).count() as u64;
                proptest::prop_assert_eq!(pages.npinned(), npinned);
                proptest::prop_assert_eq!(pages.nheld(), npinned);
                proptest::prop_assert_eq!(memory.held.load(Ordering::Relaxed), npinned);
            }
            memory.inner.exit();
            for page in 0..16u64 {
                let pinned = accesses.iter().chain(&fills).any(|&(a, b)| a <= page && page <= b);
                let read = read_at(&pages, page * PAGE_SIZE + 3, 1);
                if pinned {
                    proptest::prop_assert_eq!(read, Ok(vec![((page * PAGE_SIZE + 3) / 7) as u8]));
                } else {
                    proptest::prop_assert!(read.is_err());
                }
            }
        }
    }

    #[test]
    fn shared_accounts_are_per_key() {
        let a = LockedVm::for_user(4_000_001);
        let b = LockedVm::for_user(4_000_001);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &LockedVm::for_user(4_000_002)));
        assert!(a.try_charge(3, 3));
        assert!(!b.try_charge(1, 3));
        a.uncharge(3);
        assert_eq!(b.pages(), 0);
    }
}
