//! Fault injection: the kernel's per-task `fail-nth` countdown, per thread.
//!
//! The kernel selftest `iommufd_fail_nth` writes N to `/proc/self/task/TID/fail-nth` and runs an
//! ioctl sequence: every fault-injection check that task makes afterwards (slab allocations,
//! page allocations, `iommufd_should_fail()` points) decrements the countdown, and the check that
//! brings it to zero fails. Reading the file returns what is left, so the test knows whether the
//! N-th point was reached. uiommu keeps one such countdown per thread (a thread is a task) and
//! consults it through [`should_fail`] at every point where the kernel can fail: each allocation,
//! id reservation, object lookup, page pin, accounting step and domain map.
//!
//! Where state lives: each thread owns an `Arc<AtomicU32>` countdown, created on first use; a
//! [`FailNth`] handle to it can be sent to another thread (the preload's emulation of another
//! task's `fail-nth` file writes through one). One process-wide flag records whether any thread
//! was ever armed, so an unarmed process pays one relaxed atomic load per check and never touches
//! its thread-local state.
//!
//! Invariants: the countdown only moves down by checks of its own thread, or is overwritten by
//! [`FailNth::set`]; a check that sees zero does nothing; the check that moves it from 1 to 0
//! fails, which leaves the countdown disarmed. No locks: every access is one atomic operation.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Set once any thread's countdown is armed; never cleared, so the fast path stays one load.
static ANY_ARMED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's countdown (the kernel's `current->fail_nth`).
    static COUNTDOWN: Arc<AtomicU32> = Arc::new(AtomicU32::new(0));
    /// The site of the most recent injected failure on this thread, for diagnostics.
    static LAST_INJECTED: Cell<Option<FailSite>> = const { Cell::new(None) };
}

/// The kind of point consulting the countdown, mirroring where Linux can fail. The caller
/// chooses the errno; each variant says what the kernel returns at such a point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FailSite {
    /// A memory allocation (`kzalloc`, `kvcalloc`, an interval-tree node): `ENOMEM`.
    Alloc,
    /// Reserving an object id in the context's table (`xa_alloc`): `ENOMEM`.
    IdReserve,
    /// Looking an object up by id (`iommufd_get_object`): `ENOENT`.
    ObjectLookup,
    /// Pinning user pages (`pin_user_pages`): `EFAULT`.
    Pin,
    /// Charging pinned pages to `RLIMIT_MEMLOCK` or the mm's `pinned_vm`: `ENOMEM`.
    Account,
    /// Mapping into an IOMMU domain (`iommu_map`, the mock's `map_pages`): the driver's errno,
    /// `ENOENT` for the mock.
    DomainMap,
    /// Copying one page of an access read/write (`iopt_pages_rw_page`): `EINVAL`.
    UserRw,
    /// Storing into a pinned-PFN array half-way through a batch (`xa_store`): `EINVAL`.
    Store,
    /// Enforcing a device's reserved IOVA regions on an IOAS: `EINVAL`.
    ReservedRegion,
}

/// Should the operation at `site` fail now? The one fault-injection check, after the kernel's
/// `should_fail_ex()` fail-nth rule: while this thread's countdown is non-zero, decrement it, and
/// answer `true` when the decrement reaches zero.
///
/// Costs one relaxed atomic load when no thread has ever been armed.
#[inline]
pub fn should_fail(site: FailSite) -> bool {
    if !ANY_ARMED.load(Ordering::Relaxed) {
        return false;
    }
    countdown_step(site)
}

/// The armed path of [`should_fail`], kept out of line so the fast path inlines small.
#[cold]
fn countdown_step(site: FailSite) -> bool {
    let fired = COUNTDOWN.with(|countdown| {
        countdown
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok_and(|before| before == 1)
    });
    if fired {
        LAST_INJECTED.with(|last| last.set(Some(site)));
    }
    fired
}

/// Arm (N > 0) or disarm (0) the calling thread: its N-th check from now fails. The equivalent
/// of writing N to `/proc/self/task/TID/fail-nth` from the thread itself.
pub fn set_fail_nth(n: u32) {
    FailNth::current().set(n);
}

/// The calling thread's remaining countdown: 0 once the injected failure has fired (or when
/// never armed), as reading `fail-nth` reports.
pub fn fail_nth() -> u32 {
    FailNth::current().get()
}

/// The site of the most recent failure injected on this thread, if any.
pub fn last_injected() -> Option<FailSite> {
    LAST_INJECTED.with(Cell::get)
}

/// A handle to one thread's countdown, usable from any thread: what a `fail-nth` file of
/// `/proc/PID/task/TID/` is to its task.
#[derive(Clone, Debug)]
pub struct FailNth(Arc<AtomicU32>);

impl FailNth {
    /// The calling thread's countdown.
    pub fn current() -> FailNth {
        FailNth(COUNTDOWN.with(Arc::clone))
    }

    /// Overwrite the countdown: N > 0 arms the owning thread so that its N-th check fails,
    /// 0 disarms it.
    pub fn set(&self, n: u32) {
        if n != 0 {
            ANY_ARMED.store(true, Ordering::Relaxed);
        }
        self.0.store(n, Ordering::Release);
    }

    /// The remaining countdown.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many checks run before the injected failure, for a countdown of `n` (`None` when
    /// the first `limit` checks all pass).
    fn first_failure(n: u32, limit: u32) -> Option<u32> {
        set_fail_nth(n);
        let hit = (1..=limit).find(|_| should_fail(FailSite::Alloc));
        set_fail_nth(0);
        hit
    }

    #[test]
    fn unarmed_thread_never_fails() {
        set_fail_nth(0);
        assert!((0..1000).all(|_| !should_fail(FailSite::Pin)));
        assert_eq!(fail_nth(), 0);
    }

    #[test]
    fn nth_check_fails_and_only_that_one() {
        for n in 1..=20 {
            assert_eq!(first_failure(n, 100), Some(n), "countdown {n}");
        }
    }

    #[test]
    fn countdown_reads_back_like_proc_fail_nth() {
        set_fail_nth(3);
        assert_eq!(fail_nth(), 3);
        assert!(!should_fail(FailSite::ObjectLookup));
        assert_eq!(fail_nth(), 2);
        assert!(!should_fail(FailSite::ObjectLookup));
        assert_eq!(fail_nth(), 1);
        assert!(should_fail(FailSite::DomainMap));
        assert_eq!(fail_nth(), 0, "reads 0 once the failure fired");
        assert_eq!(last_injected(), Some(FailSite::DomainMap));
        assert!(
            !should_fail(FailSite::DomainMap),
            "fires once, then disarmed"
        );
    }

    #[test]
    fn unreached_countdown_stays_positive() {
        set_fail_nth(10);
        for _ in 0..4 {
            assert!(!should_fail(FailSite::Account));
        }
        assert_eq!(
            fail_nth(),
            6,
            "the selftest stops iterating when this is non-zero"
        );
        set_fail_nth(0);
    }

    #[test]
    fn countdown_is_per_thread() {
        set_fail_nth(1);
        let other = std::thread::spawn(|| {
            let clean = (0..50).all(|_| !should_fail(FailSite::Alloc));
            (clean, fail_nth())
        })
        .join()
        .unwrap();
        assert_eq!(other, (true, 0), "another thread is not armed by ours");
        assert!(
            should_fail(FailSite::Alloc),
            "our countdown was not consumed by theirs"
        );
    }

    #[test]
    fn a_handle_arms_the_thread_it_was_taken_from() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(FailNth::current()).unwrap();
            go_rx.recv().unwrap();
            let fired_at = (1..=10).find(|_| should_fail(FailSite::Store));
            (fired_at, last_injected())
        });
        let handle = rx.recv().unwrap();
        handle.set(2);
        assert_eq!(handle.get(), 2);
        go_tx.send(()).unwrap();
        let (fired_at, site) = worker.join().unwrap();
        assert_eq!(fired_at, Some(2));
        assert_eq!(site, Some(FailSite::Store));
        assert_eq!(handle.get(), 0);
    }
}
