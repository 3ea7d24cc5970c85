//! Access fds: CREATE_ACCESS, ACCESS_PAGES, DESTROY_ACCESS_PAGES, ACCESS_RW and
//! ACCESS_REPLACE_IOAS, the unmap notification, and what closing the fd releases (the
//! selftest's `access_pin`, `access_pin_unmap`, `access_rw*`, `user_copy`).

mod selftest_common;

use selftest_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::user_memory::{UserMemory, UserVa};

const PIN: u32 = MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES;

#[test]
fn create_access_checks_flags_and_ioas_and_leaks_no_fd() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    assert_eq!(env.create_access(ioas, 2), Err(Errno::EOPNOTSUPP));
    assert_eq!(env.create_access(77, PIN), Err(Errno::ENOENT));
    assert!(env.fds.open_fds().is_empty());
    assert_eq!(env.objects(), 1, "the failed access object is gone");
    let fd = env.create_access(ioas, PIN).unwrap();
    assert_eq!(env.fds.open_fds(), vec![fd as i32]);
    assert_eq!(
        env.destroy(ioas),
        Err(Errno::EBUSY),
        "the access holds the IOAS"
    );
    env.close(fd).unwrap();
    env.destroy(ioas).unwrap();
    assert_eq!(env.objects(), 0);
}

#[test]
fn access_pages_pins_each_range_once_and_items_count_from_zero() {
    let env = Env::new();
    let buf = Buffer::new(16 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), 16 * PAGE, BASE_IOVA).unwrap();
    let fd = env.create_access(ioas, PIN).unwrap();
    for npages in 1..16u64 {
        let id = env
            .access_pages(fd, BASE_IOVA, npages * PAGE, buf.addr(), 0)
            .unwrap();
        assert_eq!(id, (npages - 1) as u32);
        env.check_refs(buf.addr(), npages * PAGE, 1).unwrap();
        env.destroy_access_pages(fd, id).unwrap();
        env.check_refs(buf.addr(), 16 * PAGE, 0).unwrap();
    }
    // Two users of one range share the pin.
    let a = env
        .access_pages(fd, BASE_IOVA, PAGE, buf.addr(), 0)
        .unwrap();
    let b = env
        .access_pages(fd, BASE_IOVA, PAGE, buf.addr(), 0)
        .unwrap();
    env.check_refs(buf.addr(), PAGE, 1).unwrap();
    env.destroy_access_pages(fd, a).unwrap();
    env.check_refs(buf.addr(), PAGE, 1).unwrap();
    assert_eq!(env.destroy_access_pages(fd, a), Err(Errno::ENOENT));
    env.destroy_access_pages(fd, b).unwrap();
    assert_eq!(env.pins(), 0);
    env.assert_clean_teardown();
}

#[test]
fn access_pages_rejections_answer_the_kernel_errno_and_leave_nothing_pinned() {
    let env = Env::new();
    let buf = Buffer::new(4 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map_flags(
        ioas,
        IOMMU_IOAS_MAP_READABLE,
        buf.addr(),
        4 * PAGE,
        BASE_IOVA,
    )
    .unwrap();
    let fd = env.create_access(ioas, PIN).unwrap();
    let no_pin = env.create_access(ioas, 0).unwrap();
    let pages = |fd, iova, len, uptr, flags| env.access_pages(fd, iova, len, uptr, flags);
    assert_eq!(
        pages(fd, BASE_IOVA, (16 << 20) + 1, 0, 0),
        Err(Errno::ENOMEM)
    );
    assert_eq!(pages(fd, BASE_IOVA, PAGE, 0, 2), Err(Errno::EOPNOTSUPP));
    assert_eq!(pages(99, BASE_IOVA, PAGE, 0, 0), Err(Errno::EBADFD));
    let (_, fault_fd) = env.fault_alloc().unwrap();
    assert_eq!(
        pages(fault_fd, BASE_IOVA, PAGE, 0, 0),
        Err(Errno::EBADFD),
        "a fault fd is not an access fd"
    );
    assert_eq!(pages(no_pin, BASE_IOVA, PAGE, 0, 0), Err(Errno::EOPNOTSUPP));
    assert_eq!(pages(fd, BASE_IOVA, 0, 0, 0), Err(Errno::EINVAL));
    assert_eq!(pages(fd, u64::MAX, 2, 0, 0), Err(Errno::EOVERFLOW));
    assert_eq!(
        pages(fd, BASE_IOVA + 8 * PAGE, PAGE, 0, 0),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        pages(fd, BASE_IOVA, PAGE, 0, MOCK_FLAGS_ACCESS_WRITE),
        Err(Errno::EPERM),
        "read-only area"
    );
    assert_eq!(
        pages(fd, BASE_IOVA, PAGE, buf.addr() + PAGE, 0),
        Err(Errno::EBADE),
        "uptr does not back the IOVA"
    );
    assert_eq!(env.pins(), 0, "failed pins are undone");
    let id = pages(fd, BASE_IOVA + PAGE, 2 * PAGE, buf.addr() + PAGE, 0).unwrap();
    assert_eq!(id, 0, "failed attempts take no item id");
    assert_eq!(env.destroy_access_pages(99, 0), Err(Errno::EBADFD));
    env.close(fd).unwrap();
    assert_eq!(env.pins(), 0, "closing the fd unpins its items");
}

#[test]
fn unmap_asks_the_access_to_unpin_and_its_item_disappears() {
    let env = Env::new();
    let buf = Buffer::new(4 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), 4 * PAGE, BASE_IOVA).unwrap();
    let fd = env.create_access(ioas, PIN).unwrap();
    let id = env
        .access_pages(fd, BASE_IOVA + PAGE, PAGE, buf.addr() + PAGE, 0)
        .unwrap();
    env.check_refs(buf.addr() + PAGE, PAGE, 1).unwrap();
    assert_eq!(env.unmap(ioas, BASE_IOVA, 4 * PAGE), Ok(4 * PAGE));
    env.check_refs(buf.addr(), 4 * PAGE, 0).unwrap();
    assert_eq!(env.destroy_access_pages(fd, id), Err(Errno::ENOENT));
}

#[test]
fn a_domain_added_and_removed_under_a_pinned_access_keeps_one_pin() {
    let env = Env::new();
    let buf = Buffer::new(4 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), 4 * PAGE, BASE_IOVA).unwrap();
    let fd = env.create_access(ioas, PIN).unwrap();
    let id = env
        .access_pages(fd, BASE_IOVA, 4 * PAGE, buf.addr(), 0)
        .unwrap();
    let (stdev, hwpt, _) = env.mock_domain(ioas).unwrap();
    env.check_map(hwpt, BASE_IOVA, 4 * PAGE, buf.addr())
        .unwrap();
    env.check_refs(buf.addr(), 4 * PAGE, 1).unwrap();
    env.destroy(stdev).unwrap();
    env.check_refs(buf.addr(), 4 * PAGE, 1).unwrap();
    env.destroy_access_pages(fd, id).unwrap();
    env.check_refs(buf.addr(), 4 * PAGE, 0).unwrap();
}

#[test]
fn access_rw_copies_bytes_across_pages_both_paths() {
    let env = Env::new();
    let buf = Buffer::new(4 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), 4 * PAGE, BASE_IOVA).unwrap();
    let fd = env.create_access(ioas, 0).unwrap();
    let mem = env.memory.clone();
    for (flags, at) in [(0, PAGE - 5), (MOCK_ACCESS_RW_SLOW_PATH, 2 * PAGE - 3)] {
        let data: Vec<u8> = (0..10u8).map(|i| i.wrapping_add(at as u8)).collect();
        let mut tmp = data.clone();
        env.access_rw(
            fd,
            BASE_IOVA + at,
            tmp.as_mut_ptr() as u64,
            10,
            flags | MOCK_ACCESS_RW_WRITE,
        )
        .unwrap();
        let mut direct = vec![0u8; 10];
        mem.read(UserVa(buf.addr() + at), &mut direct).unwrap();
        assert_eq!(direct, data, "written through to the user pages");
        let mut back = vec![0u8; 10];
        env.access_rw(fd, BASE_IOVA + at, back.as_mut_ptr() as u64, 10, flags)
            .unwrap();
        assert_eq!(back, data);
    }
    let mut one = [0u8; 1];
    let ptr = one.as_mut_ptr() as u64;
    assert_eq!(env.access_rw(fd, BASE_IOVA, ptr, 0, 0), Err(Errno::EINVAL));
    assert_eq!(
        env.access_rw(fd, BASE_IOVA, ptr, 1, 1 << 1),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        env.access_rw(fd, BASE_IOVA, ptr, (16 << 20) + 1, 0),
        Err(Errno::ENOMEM)
    );
    assert_eq!(
        env.access_rw(fd, BASE_IOVA + 4 * PAGE, ptr, 1, 0),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        env.access_rw(fd, BASE_IOVA, UNMAPPED_VA, 1, 0),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        env.access_rw(fd, BASE_IOVA, UNMAPPED_VA, 1, MOCK_ACCESS_RW_WRITE),
        Err(Errno::EFAULT)
    );
    assert_eq!(env.access_rw(77, BASE_IOVA, ptr, 1, 0), Err(Errno::EBADFD));
}

#[test]
fn replace_ioas_drops_old_pins_and_reads_the_new_ioas() {
    let env = Env::new();
    let a = Buffer::new(PAGE as usize);
    let b = Buffer::new(PAGE as usize);
    env.memory.write(UserVa(a.addr()), b"aaaa").unwrap();
    env.memory.write(UserVa(b.addr()), b"bbbb").unwrap();
    let ioas1 = env.ioas_alloc();
    let ioas2 = env.ioas_alloc();
    env.map(ioas1, a.addr(), PAGE, BASE_IOVA).unwrap();
    env.map(ioas2, b.addr(), PAGE, BASE_IOVA).unwrap();
    let fd = env.create_access(ioas1, PIN).unwrap();
    env.access_pages(fd, BASE_IOVA, PAGE, a.addr(), 0).unwrap();
    env.check_refs(a.addr(), PAGE, 1).unwrap();
    let replace = |fd, ioas| env.test_cmd(fd, &TestAccessReplaceIoas { ioas_id: ioas });
    assert_eq!(replace(fd, 55).unwrap_err(), Errno::ENOENT);
    assert_eq!(replace(55, ioas2).unwrap_err(), Errno::EBADFD);
    replace(fd, ioas2).unwrap();
    env.check_refs(a.addr(), PAGE, 0).unwrap();
    let mut out = [0u8; 4];
    env.access_rw(fd, BASE_IOVA, out.as_mut_ptr() as u64, 4, 0)
        .unwrap();
    assert_eq!(&out, b"bbbb");
    env.destroy(ioas1)
        .expect("the access no longer holds the old IOAS");
    assert_eq!(env.destroy(ioas2), Err(Errno::EBUSY));
}

#[test]
fn the_access_fd_keeps_the_context_alive_until_closed() {
    let mut env = Env::new();
    let buf = Buffer::new(PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), PAGE, BASE_IOVA).unwrap();
    let fd = env.create_access(ioas, PIN).unwrap();
    env.access_pages(fd, BASE_IOVA, PAGE, buf.addr(), 0)
        .unwrap();
    // close(/dev/iommu) with the access fd still open.
    let fresh = env.iommufd.open();
    let old = std::mem::replace(&mut env.ctx, fresh);
    let weak = std::sync::Arc::downgrade(&old);
    drop(old);
    assert!(weak.upgrade().is_some(), "the access fd holds the context");
    assert_eq!(env.pins(), 1);
    env.close(fd).unwrap();
    assert!(weak.upgrade().is_none(), "the last close releases it");
    assert_eq!(env.pins(), 0);
}
