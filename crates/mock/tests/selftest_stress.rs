//! Concurrency: mock devices attach, replace and detach while other threads map and unmap on
//! the same IOAS, pin through an access and allocate HWPTs. Every ioctl must succeed (each
//! thread works on its own IOVA range), every domain must stay consistent with the IOAS, and
//! the context must tear down with nothing left.

mod selftest_common;

use std::sync::Arc;

use selftest_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::hwpt::HwptPaging;
use uiommu_iommufd::object::ObjId;
use uiommu_mock::MockPagingDomain;

const ROUNDS: u64 = 150;

#[test]
fn devices_attach_and_detach_while_others_map_and_unmap() {
    let env = Arc::new(Env::new());
    let ioas = env.ioas_alloc();
    let buf = Arc::new(Buffer::new(64 * PAGE as usize));
    // A device and a manual HWPT that stay for the whole run: the invariant witnesses.
    let (stdev, _, idev) = env.mock_domain(ioas).unwrap();
    let witness = env.hwpt_alloc(idev, ioas, 0).unwrap();

    std::thread::scope(|s| {
        // Mappers: each its own IOVA window.
        for t in 0..2u64 {
            let (env, buf) = (env.clone(), buf.clone());
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let len = ((round % 8) + 1) * PAGE;
                    let iova = BASE_IOVA + (t + 1) * 0x100_0000;
                    let uptr = buf.addr() + (round % 16) * PAGE;
                    env.map(ioas, uptr, len, iova).unwrap();
                    env.check_map(witness, iova, len, uptr).unwrap();
                    assert_eq!(env.unmap(ioas, iova, len), Ok(len));
                }
            });
        }
        // Devices coming and going on the IOAS (sharing the auto HWPT) and on the witness.
        {
            let env = env.clone();
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let pt = if round % 3 == 0 { witness } else { ioas };
                    let (stdev, hwpt, _) = env.mock_domain(pt).unwrap();
                    if pt == witness {
                        assert_eq!(hwpt, witness);
                    }
                    env.destroy(stdev).unwrap();
                }
            });
        }
        // The long-lived device moving between the witness and the IOAS's auto HWPT.
        {
            let env = env.clone();
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let pt = if round % 2 == 0 { witness } else { ioas };
                    env.replace(stdev, pt).unwrap();
                }
            });
        }
        // An access pinning and reading its own window.
        {
            let (env, buf) = (env.clone(), buf.clone());
            s.spawn(move || {
                let iova = BASE_IOVA + 0x300_0000;
                let uptr = buf.addr() + 32 * PAGE;
                env.map(ioas, uptr, 4 * PAGE, iova).unwrap();
                let fd = env
                    .create_access(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
                    .unwrap();
                let mut out = [0u8; 16];
                for _ in 0..ROUNDS {
                    let id = env.access_pages(fd, iova, 4 * PAGE, uptr, 0).unwrap();
                    env.access_rw(fd, iova + 100, out.as_mut_ptr() as u64, 16, 0)
                        .unwrap();
                    env.destroy_access_pages(fd, id).unwrap();
                }
                env.close(fd).unwrap();
                assert_eq!(env.unmap(ioas, iova, 4 * PAGE), Ok(4 * PAGE));
            });
        }
    });

    let hwpt = env.ctx.objects().get::<HwptPaging>(ObjId(witness)).unwrap();
    let table: &MockPagingDomain = hwpt.domain().ops().as_any().downcast_ref().unwrap();
    assert_eq!(
        table.mapped_pages(),
        0,
        "everything unmapped from the witness"
    );
    assert_eq!(
        table.unmap_violations(),
        0,
        "unmaps always covered whole maps"
    );
    drop(hwpt);
    assert_eq!(env.pins(), 0);
    let env = Arc::into_inner(env).expect("threads are done");
    env.assert_clean_teardown();
}
