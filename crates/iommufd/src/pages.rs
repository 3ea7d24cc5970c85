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
//! covered it is probed through [`UserMemory::probe`] (the `pin_user_pages` step), added to the
//! process-wide pin table that `IOMMU_TEST_OP_MD_CHECK_REFS` reads ([`page_pin_count`]) and
//! charged to `RLIMIT_MEMLOCK`; when it goes back to uncovered all three are undone.
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
use crate::user_memory::{MmId, UserMemory, UserVa, PAGE_SIZE};

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

#[derive(Debug, Default)]
struct PagesState {
    /// Users of each page index: filled areas and access ranges.
    coverage: RangeCounter,
    /// Exact access ranges → users (`iopt_pages_access`).
    accesses: BTreeMap<Run, u32>,
    /// Pages currently pinned, all of them charged outside an open [`PinTxn`].
    npinned: u64,
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
        let probed = if injector.should_fail(fail_site::PIN_USER) {
            Err(IoptError::Fault(
                crate::user_memory::UserMemoryError::Fault {
                    addr: self.page_va(newly[0].0),
                    len: PAGE_SIZE,
                },
            ))
        } else {
            newly.iter().try_for_each(|&(run_first, run_last)| {
                self.memory
                    .probe(
                        self.page_va(run_first),
                        (run_last - run_first + 1) * PAGE_SIZE,
                        self.writable,
                    )
                    .map_err(IoptError::Fault)
            })
        };
        if let Err(err) = probed {
            let mut ignored = Vec::new();
            state.coverage.decrement(first, last, &mut ignored);
            return Err(err);
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
    ///
    /// # Errors
    /// Writing read-only pages → EPERM; injected single-page failure → EINVAL; memory not
    /// accessible → EFAULT.
    pub(crate) fn rw(
        &self,
        start_byte: u64,
        buf: RwBuf<'_>,
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
        match buf {
            RwBuf::Read(out) => self.memory.read(addr, out),
            RwBuf::Write(data) => self.memory.write(addr, data),
        }
        .map_err(IoptError::Fault)
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
