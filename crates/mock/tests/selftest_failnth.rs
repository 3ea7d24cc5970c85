//! Fault-injection sweeps, as `iommufd_fail_nth` runs them: for N = 1, 2, … arm the thread's
//! fail-nth countdown, run one operation, and stop at the first N the operation no longer
//! reaches. Every injected failure must leave the state exactly as before the operation (no
//! object, pin, mock device or fd left behind), and every context must tear down clean.

mod selftest_common;

use selftest_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::failpoint::{fail_nth, set_fail_nth};

/// What must be unchanged after a failed operation.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    objects: usize,
    pins: u64,
    mock_devices: usize,
    fds: Vec<i32>,
}

fn snapshot(env: &Env) -> Snapshot {
    Snapshot {
        objects: env.objects(),
        pins: env.pins(),
        mock_devices: env.mock_devices(),
        fds: env.fds.open_fds(),
    }
}

/// Run `op` with failure injected at every point it reaches, one point per run.
fn sweep<S>(
    setup: impl Fn(&Env) -> S,
    op: impl Fn(&Env, &S) -> Result<(), Errno>,
    still_works: impl Fn(&Env, &S),
) -> u32 {
    for n in 1..400 {
        let env = Env::new();
        let state = setup(&env);
        let before = snapshot(&env);
        set_fail_nth(n);
        let result = op(&env, &state);
        let left = fail_nth();
        set_fail_nth(0);
        if left != 0 {
            result.unwrap_or_else(|e| panic!("clean run failed: {e}"));
            env.assert_clean_teardown();
            return n - 1;
        }
        if result.is_err() {
            assert_eq!(
                snapshot(&env),
                before,
                "failure at point {n} left state behind"
            );
            still_works(&env, &state);
        }
        env.assert_clean_teardown();
    }
    panic!("no end to the injection points after 400 runs");
}

/// An IOAS with 4 mapped pages.
fn ioas_with_area(env: &Env) -> (u32, Buffer) {
    let buf = Buffer::new(4 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), 4 * PAGE, BASE_IOVA).unwrap();
    (ioas, buf)
}

#[test]
fn mock_domain_unwinds_at_every_point() {
    let points = sweep(
        ioas_with_area,
        |env, (ioas, _)| env.mock_domain(*ioas).map(|_| ()),
        |env, (ioas, buf)| {
            let (_, hwpt, _) = env.mock_domain(*ioas).unwrap();
            env.check_map(hwpt, BASE_IOVA, 4 * PAGE, buf.addr())
                .unwrap();
        },
    );
    assert!(points >= 8, "only {points} injection points");
}

#[test]
fn hwpt_alloc_unwinds_at_every_point() {
    let points = sweep(
        |env| {
            let (ioas, buf) = ioas_with_area(env);
            let (_, _, idev) = env.mock_domain(ioas).unwrap();
            (ioas, buf, idev)
        },
        |env, (ioas, _, idev)| {
            let parent = env.hwpt_alloc(*idev, *ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)?;
            env.nested_alloc(*idev, parent, 1, None)
                .inspect_err(|_| env.destroy(parent).unwrap())
                .map(|_| ())
        },
        |env, (ioas, buf, idev)| {
            let hwpt = env.hwpt_alloc(*idev, *ioas, 0).unwrap();
            env.check_map(hwpt, BASE_IOVA, 4 * PAGE, buf.addr())
                .unwrap();
        },
    );
    assert!(points >= 6, "only {points} injection points");
}

#[test]
fn replace_unwinds_at_every_point() {
    let points = sweep(
        |env| {
            let (ioas, buf) = ioas_with_area(env);
            let other = env.ioas_alloc();
            env.map(other, buf.addr(), 4 * PAGE, BASE_IOVA + 16 * PAGE)
                .unwrap();
            let (stdev, hwpt, _) = env.mock_domain(ioas).unwrap();
            (other, buf, stdev, hwpt)
        },
        |env, (other, _, stdev, _)| env.replace(*stdev, *other).map(|_| ()),
        |env, (_, buf, _, hwpt)| {
            env.check_map(*hwpt, BASE_IOVA, 4 * PAGE, buf.addr())
                .expect("the old attachment stays");
        },
    );
    assert!(points >= 5, "only {points} injection points");
}

#[test]
fn access_pages_unwinds_at_every_point() {
    let points = sweep(
        ioas_with_area,
        |env, (ioas, buf)| {
            let fd = env.create_access(*ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)?;
            let pinned = env.access_pages(fd, BASE_IOVA, 4 * PAGE, buf.addr(), 0);
            if pinned.is_err() {
                env.close(fd).unwrap();
            }
            pinned.map(|_| ())
        },
        |env, (ioas, buf)| {
            let fd = env
                .create_access(*ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
                .unwrap();
            env.access_pages(fd, BASE_IOVA, 4 * PAGE, buf.addr(), 0)
                .unwrap();
            env.check_refs(buf.addr(), 4 * PAGE, 1).unwrap();
        },
    );
    assert!(points >= 5, "only {points} injection points");
}

#[test]
fn fault_queue_and_iopf_hwpt_unwind_at_every_point() {
    let points = sweep(
        |env| {
            let (ioas, buf) = ioas_with_area(env);
            let (stdev, _, idev) = env.mock_domain(ioas).unwrap();
            let parent = env
                .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
                .unwrap();
            (buf, stdev, idev, parent)
        },
        |env, (_, stdev, idev, parent)| {
            let (fault, fd) = env.fault_alloc()?;
            let attached = env
                .nested_alloc(*idev, *parent, 1, Some(fault))
                .and_then(|hwpt| {
                    env.replace(*stdev, hwpt).inspect_err(|_| {
                        env.destroy(hwpt).unwrap();
                    })
                });
            if attached.is_err() {
                env.close(fd).unwrap();
                env.destroy(fault).unwrap();
            }
            attached.map(|_| ())
        },
        |env, (_, _, idev, parent)| {
            let (fault, _) = env.fault_alloc().unwrap();
            env.nested_alloc(*idev, *parent, 1, Some(fault)).unwrap();
        },
    );
    assert!(points >= 6, "only {points} injection points");
}
