//! IOMMU_HWPT_ALLOC (paging and nested), IOMMU_HWPT_INVALIDATE, MD_CHECK_IOTLB and dirty
//! tracking (IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP, IOMMU_TEST_OP_DIRTY),
//! with the kernel's errno order and the selftest's `alloc_hwpt_nested` and dirty fixtures.

mod selftest_common;

use selftest_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::user_memory::{UserMemory, UserVa};
use uiommu_iommufd::version::KernelVersion;

/// An IOAS with one mock device (`device_id`) attached to an auto HWPT.
fn with_device(env: &Env) -> (u32, u32, u32, u32) {
    let ioas = env.ioas_alloc();
    let (stdev, hwpt, idev) = env.mock_domain(ioas).unwrap();
    (ioas, stdev, hwpt, idev)
}

#[test]
fn hwpt_alloc_checks_in_kernel_order() {
    let env = Env::new();
    let (ioas, _, _, idev) = with_device(&env);
    let mut cmd = IommuHwptAlloc {
        size: size_of::<IommuHwptAlloc>() as u32,
        dev_id: idev,
        pt_id: ioas,
        reserved: 1,
        ..Default::default()
    };
    assert_eq!(
        env.ioctl(IOMMU_HWPT_ALLOC, &mut cmd),
        Err(Errno::EOPNOTSUPP)
    );
    cmd.reserved = 0;
    cmd.reserved2 = 7;
    env.ioctl(IOMMU_HWPT_ALLOC, &mut cmd)
        .expect("__reserved2 is not checked");
    let alloc = |dev, pt, flags, ty, len| env.hwpt_alloc_data(dev, pt, flags, ty, 0, len, 0);
    assert_eq!(
        alloc(idev, ioas, 0, 0, 4),
        Err(Errno::EINVAL),
        "type NONE with data"
    );
    assert_eq!(
        alloc(idev, ioas, 0, IOMMU_HWPT_DATA_SELFTEST, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        alloc(ioas, ioas, 0, 0, 0),
        Err(Errno::ENOENT),
        "dev_id not a device"
    );
    assert_eq!(
        alloc(idev, 999, 0, 0, 0),
        Err(Errno::EINVAL),
        "unknown pt is EINVAL"
    );
    assert_eq!(
        alloc(idev, idev, 0, 0, 0),
        Err(Errno::EINVAL),
        "pt of another kind"
    );
    assert_eq!(alloc(idev, ioas, 1 << 7, 0, 0), Err(Errno::EOPNOTSUPP));
    assert_eq!(
        alloc(idev, ioas, IOMMU_HWPT_FAULT_ID_VALID, 0, 0),
        Err(Errno::EOPNOTSUPP),
        "a paging hwpt takes no fault"
    );
    assert_eq!(
        alloc(
            idev,
            ioas,
            IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_FAULT_ID_VALID,
            0,
            0
        ),
        Err(Errno::EOPNOTSUPP)
    );
    let mut data = IommuHwptSelftest { iotlb: 1 };
    let mut with_data = || {
        env.hwpt_alloc_data(
            idev,
            ioas,
            0,
            IOMMU_HWPT_DATA_SELFTEST,
            std::ptr::from_mut(&mut data) as u64,
            4,
            0,
        )
    };
    env.iommufd.set_kernel_version(KernelVersion::V6_12);
    assert_eq!(
        with_data(),
        Err(Errno::EOPNOTSUPP),
        "6.12's mock takes no data for paging domains"
    );
    // Every failure above left nothing behind: ioas, stdev, idev, auto hwpt, manual hwpt.
    assert_eq!(env.objects(), 5);
    env.iommufd.set_kernel_version(KernelVersion::V7_3);
    with_data().expect("7.3's mock reads its page-table type (DEFAULT here)");
}

/// 7.3: `struct iommu_hwpt_selftest` has 8 bytes; `pagetable_type` picks the mock's page sizes.
#[test]
fn paging_alloc_takes_the_mock_pagetable_type() {
    let env = Env::new();
    let (ioas, _, _, idev) = with_device(&env);
    let alloc = |ty, pagetable_type, len| {
        let mut data = IommuHwptSelftestPagetable {
            iotlb: 0,
            pagetable_type,
        };
        let ptr = std::ptr::from_mut(&mut data) as u64;
        env.hwpt_alloc_data(idev, ioas, 0, ty, ptr, len, 0)
    };
    // IOVA_RANGES writes the alignment back even when its range array is too small.
    let alignment = || {
        let mut ranges = IommuIoasIovaRanges {
            size: size_of::<IommuIoasIovaRanges>() as u32,
            ioas_id: ioas,
            ..Default::default()
        };
        let _ = env.ioctl(IOMMU_IOAS_IOVA_RANGES, &mut ranges);
        ranges.out_iova_alignment
    };
    let selftest = IOMMU_HWPT_DATA_SELFTEST;
    assert_eq!(
        alloc(selftest + 1, MOCK_IOMMUPT_HUGE, 8),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        alloc(selftest, MOCK_IOMMUPT_HUGE, 3),
        Err(Errno::EINVAL),
        "no iotlb"
    );
    let huge = alloc(selftest, MOCK_IOMMUPT_HUGE, 8).unwrap();
    assert_eq!(
        alignment(),
        PAGE,
        "HUGE offers 4 KiB and 1 MiB pages: the IOAS aligns to 4 KiB"
    );
    env.destroy(huge).unwrap();
    assert_eq!(
        alloc(selftest, 2, 8),
        Err(Errno::EOPNOTSUPP),
        "unknown type"
    );
    let default = alloc(selftest, MOCK_IOMMUPT_DEFAULT, 8).unwrap();
    assert_eq!(alignment(), MOCK_IO_PAGE_SIZE);
    env.destroy(default).unwrap();
}

#[test]
fn dirty_tracking_hwpt_needs_a_capable_device() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (_, _, no_dirty) = env
        .mock_domain_flags(ioas, MOCK_FLAGS_DEVICE_NO_DIRTY)
        .unwrap();
    assert_eq!(
        env.hwpt_alloc(no_dirty, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING),
        Err(Errno::EOPNOTSUPP)
    );
    let ioas2 = env.ioas_alloc();
    let (_, _, capable) = env.mock_domain(ioas2).unwrap();
    let dirty = env
        .hwpt_alloc(capable, ioas2, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        .unwrap();
    // enforce_dirty: a NO_DIRTY device cannot attach to a dirty-tracking domain.
    assert_eq!(
        env.mock_domain_flags(dirty, MOCK_FLAGS_DEVICE_NO_DIRTY),
        Err(Errno::EINVAL)
    );
    assert_eq!(env.mock_devices(), 2);
}

#[test]
fn nested_alloc_follows_the_selftest_negative_cases() {
    let env = Env::new();
    let (ioas, _, _, idev) = with_device(&env);
    let parent = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    let not_parent = env.hwpt_alloc(idev, ioas, 0).unwrap();
    let mut data = IommuHwptSelftest {
        iotlb: IOMMU_TEST_IOTLB_DEFAULT,
    };
    let ptr = std::ptr::from_mut(&mut data) as u64;
    let nested = |pt, flags, ty, uptr, len| env.hwpt_alloc_data(idev, pt, flags, ty, uptr, len, 0);
    assert_eq!(
        nested(parent, 0, IOMMU_HWPT_DATA_NONE, ptr, 4),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        nested(parent, 0, IOMMU_HWPT_DATA_SELFTEST + 1, ptr, 4),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        nested(parent, 0, IOMMU_HWPT_DATA_SELFTEST, ptr, 3),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        nested(parent, 0, IOMMU_HWPT_DATA_SELFTEST, 0, 4),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        nested(
            parent,
            IOMMU_HWPT_ALLOC_NEST_PARENT,
            IOMMU_HWPT_DATA_SELFTEST,
            ptr,
            4
        ),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        nested(not_parent, 0, IOMMU_HWPT_DATA_SELFTEST, ptr, 4),
        Err(Errno::EINVAL)
    );
    // Longer data than the mock's struct is fine while the excess is zero (E2BIG otherwise).
    let zeros = Buffer::new(PAGE as usize);
    let long = nested(parent, 0, IOMMU_HWPT_DATA_SELFTEST, zeros.addr(), 64).unwrap();
    env.destroy(long).unwrap();
    env.memory.write(UserVa(zeros.addr() + 8), &[1]).unwrap();
    assert_eq!(
        nested(parent, 0, IOMMU_HWPT_DATA_SELFTEST, zeros.addr(), 64),
        Err(Errno::E2BIG),
        "non-zero bytes past the struct"
    );
    let n0 = nested(parent, 0, IOMMU_HWPT_DATA_SELFTEST, ptr, 4).unwrap();
    assert_eq!(
        nested(n0, 0, IOMMU_HWPT_DATA_SELFTEST, ptr, 4),
        Err(Errno::EINVAL),
        "nested on nested"
    );
    assert_eq!(env.destroy(parent), Err(Errno::EBUSY));
    assert_eq!(
        env.hwpt_alloc_data(
            idev,
            parent,
            IOMMU_HWPT_FAULT_ID_VALID,
            IOMMU_HWPT_DATA_SELFTEST,
            ptr,
            4,
            u32::MAX
        ),
        Err(Errno::ENOENT),
        "unknown fault"
    );
    for slot in 0..4 {
        check_iotlb(&env, n0, slot, IOMMU_TEST_IOTLB_DEFAULT).unwrap();
    }
    env.destroy(n0).unwrap();
    env.destroy(parent).unwrap();
}

#[test]
fn an_auto_hwpt_cannot_be_a_nest_parent() {
    let env = Env::new();
    let (_, _, auto, idev) = with_device(&env);
    assert_eq!(env.nested_alloc(idev, auto, 1, None), Err(Errno::EINVAL));
}

fn check_iotlb(env: &Env, hwpt: u32, slot: u32, value: u32) -> Result<(), Errno> {
    env.test_cmd(
        hwpt,
        &TestCheckIotlb {
            id: slot,
            iotlb: value,
        },
    )
    .map(|_| ())
}

fn invalidate(
    env: &Env,
    hwpt: u32,
    reqs: &mut [IommuHwptInvalidateSelftest],
    data_type: u32,
    entry_len: u32,
    num: u32,
) -> (Result<i32, Errno>, u32) {
    let mut cmd = IommuHwptInvalidate {
        size: size_of::<IommuHwptInvalidate>() as u32,
        hwpt_id: hwpt,
        data_uptr: if reqs.is_empty() {
            0
        } else {
            reqs.as_mut_ptr() as u64
        },
        data_type,
        entry_len,
        entry_num: num,
        reserved: 0,
    };
    let result = env.ioctl(IOMMU_HWPT_INVALIDATE, &mut cmd);
    (result, cmd.entry_num)
}

#[test]
fn invalidate_processes_entries_in_order_and_reports_how_many() {
    let env = Env::new();
    let (ioas, _, _, idev) = with_device(&env);
    let parent = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    let n = env
        .nested_alloc(idev, parent, IOMMU_TEST_IOTLB_DEFAULT, None)
        .unwrap();
    let ty = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    let len = size_of::<IommuHwptInvalidateSelftest>() as u32;
    let mut reqs = [IommuHwptInvalidateSelftest::default(); 2];

    assert_eq!(
        invalidate(&env, parent, &mut reqs, ty, len, 1),
        (Err(Errno::EINVAL), 0),
        "paging hwpts take no invalidation (7.3: EINVAL)"
    );
    env.iommufd.set_kernel_version(KernelVersion::V6_12);
    assert_eq!(
        invalidate(&env, parent, &mut reqs, ty, len, 1),
        (Err(Errno::ENOENT), 0),
        "6.12 looks for a nested HWPT: ENOENT"
    );
    env.iommufd.set_kernel_version(KernelVersion::V7_3);
    assert_eq!(invalidate(&env, n, &mut reqs, ty, len, 0), (Ok(0), 0));
    assert_eq!(
        invalidate(
            &env,
            n,
            &mut reqs,
            IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID,
            len,
            0
        ),
        (Err(Errno::EINVAL), 0),
        "an empty array still checks the type"
    );
    assert_eq!(
        invalidate(
            &env,
            n,
            &mut reqs,
            IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID,
            len,
            1
        ),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(
        invalidate(&env, n, &mut reqs, ty, len + 1, 1),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(
        invalidate(&env, n, &mut reqs, ty, 1, 1),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(
        invalidate(&env, n, &mut reqs, ty, 0, 1),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(
        invalidate(&env, n, &mut [], ty, len, 1),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(
        invalidate(&env, n, &mut reqs, ty, 4097, 1),
        (Err(Errno::EINVAL), 0),
        "entry_len above a page"
    );
    reqs[0].flags = 0xffff_ffff;
    assert_eq!(
        invalidate(&env, n, &mut reqs, ty, len, 1),
        (Err(Errno::EOPNOTSUPP), 0)
    );
    reqs[0] = IommuHwptInvalidateSelftest {
        flags: 0,
        iotlb_id: MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1,
    };
    assert_eq!(
        invalidate(&env, n, &mut reqs, ty, len, 1),
        (Err(Errno::EINVAL), 0)
    );
    // First entry done, second fails.
    reqs[0] = IommuHwptInvalidateSelftest {
        flags: 0,
        iotlb_id: 0,
    };
    reqs[1] = IommuHwptInvalidateSelftest {
        flags: 0xffff_ffff,
        iotlb_id: 1,
    };
    assert_eq!(
        invalidate(&env, n, &mut reqs, ty, len, 2),
        (Err(Errno::EOPNOTSUPP), 1)
    );
    check_iotlb(&env, n, 0, 0).unwrap();
    check_iotlb(&env, n, 1, IOMMU_TEST_IOTLB_DEFAULT).unwrap();
    reqs[1] = IommuHwptInvalidateSelftest {
        flags: 0,
        iotlb_id: 1,
    };
    assert_eq!(invalidate(&env, n, &mut reqs, ty, len, 2), (Ok(0), 2));
    check_iotlb(&env, n, 1, 0).unwrap();
    check_iotlb(&env, n, 2, IOMMU_TEST_IOTLB_DEFAULT).unwrap();
    reqs[0].flags = IOMMU_TEST_INVALIDATE_FLAG_ALL;
    assert_eq!(invalidate(&env, n, &mut reqs, ty, len, 1), (Ok(0), 1));
    for slot in 0..4 {
        check_iotlb(&env, n, slot, 0).unwrap();
    }
    assert_eq!(check_iotlb(&env, n, 4, 0), Err(Errno::EINVAL));
    assert_eq!(check_iotlb(&env, n, 0, 1), Err(Errno::EINVAL));
    assert_eq!(check_iotlb(&env, parent, 0, 0), Err(Errno::ENOENT));
    // An unreadable second entry after a good first one: one handled, then EFAULT.
    let mut cmd = IommuHwptInvalidate {
        size: size_of::<IommuHwptInvalidate>() as u32,
        hwpt_id: n,
        data_uptr: UNMAPPED_VA,
        data_type: ty,
        entry_len: len,
        entry_num: 2,
        reserved: 0,
    };
    assert_eq!(
        env.ioctl(IOMMU_HWPT_INVALIDATE, &mut cmd),
        Err(Errno::EFAULT)
    );
    assert_eq!(cmd.entry_num, 0);
    cmd.reserved = 1;
    cmd.entry_num = 5;
    assert_eq!(
        env.ioctl(IOMMU_HWPT_INVALIDATE, &mut cmd),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(cmd.entry_num, 0, "written back even on EOPNOTSUPP");
}

#[test]
fn devices_move_between_nested_hwpts_which_are_busy_while_attached() {
    let env = Env::new();
    let (ioas, stdev, _, idev) = with_device(&env);
    let parent = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    let n0 = env.nested_alloc(idev, parent, 1, None).unwrap();
    let n1 = env.nested_alloc(idev, parent, 2, None).unwrap();
    assert_eq!(env.replace(stdev, n0), Ok(n0));
    assert_eq!(env.destroy(n0), Err(Errno::EBUSY));
    assert_eq!(env.replace(stdev, n1), Ok(n1));
    assert_eq!(env.destroy(n1), Err(Errno::EBUSY));
    env.destroy(n0).unwrap();
    assert_eq!(env.replace(stdev, parent), Ok(parent));
    env.destroy(n1).unwrap();
    let auto = env.replace(stdev, ioas).unwrap();
    assert_ne!(auto, parent);
    env.destroy(parent).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Dirty tracking
// ---------------------------------------------------------------------------------------------

fn set_dirty_tracking(env: &Env, hwpt: u32, flags: u32) -> Result<i32, Errno> {
    let mut cmd = IommuHwptSetDirtyTracking {
        size: size_of::<IommuHwptSetDirtyTracking>() as u32,
        flags,
        hwpt_id: hwpt,
        reserved: 0,
    };
    env.ioctl(IOMMU_HWPT_SET_DIRTY_TRACKING, &mut cmd)
}

fn get_dirty_bitmap(
    env: &Env,
    hwpt: u32,
    iova: u64,
    length: u64,
    page_size: u64,
    bitmap: &mut [u64],
    flags: u32,
) -> Result<i32, Errno> {
    let mut cmd = IommuHwptGetDirtyBitmap {
        size: size_of::<IommuHwptGetDirtyBitmap>() as u32,
        hwpt_id: hwpt,
        flags,
        reserved: 0,
        iova,
        length,
        page_size,
        data: bitmap.as_mut_ptr() as u64,
    };
    env.ioctl(IOMMU_HWPT_GET_DIRTY_BITMAP, &mut cmd)
}

fn mark_dirty(
    env: &Env,
    hwpt: u32,
    iova: u64,
    length: u64,
    page_size: u64,
    bitmap: &[u64],
) -> Result<u64, Errno> {
    let cmd = env.test_cmd(
        hwpt,
        &TestDirty {
            iova,
            length,
            page_size,
            uptr: bitmap.as_ptr() as u64,
            ..Default::default()
        },
    )?;
    Ok(cmd.payload::<TestDirty>().out_nr_dirty)
}

fn bit(bitmap: &[u64], n: usize) -> bool {
    bitmap[n / 64] & (1 << (n % 64)) != 0
}

#[test]
fn set_dirty_tracking_checks_flags_object_and_capability() {
    let env = Env::new();
    let (ioas, _, auto, idev) = with_device(&env);
    assert_eq!(set_dirty_tracking(&env, auto, 2), Err(Errno::EOPNOTSUPP));
    assert_eq!(set_dirty_tracking(&env, ioas, 1), Err(Errno::ENOENT));
    assert_eq!(
        set_dirty_tracking(&env, auto, 1),
        Err(Errno::EOPNOTSUPP),
        "a domain allocated without DIRTY_TRACKING"
    );
    let dirty = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        .unwrap();
    set_dirty_tracking(&env, dirty, 1).unwrap();
    set_dirty_tracking(&env, dirty, 1).unwrap();
    set_dirty_tracking(&env, dirty, 0).unwrap();
}

/// The selftest's `_test_mock_dirty_bitmaps` on a 64-page (128 KiB) buffer.
#[test]
fn dirty_bits_marked_by_the_device_come_back_once_unless_no_clear() {
    for (no_clear, version) in [false, true]
        .into_iter()
        .flat_map(|n| KernelVersion::ALL.map(|v| (n, v)))
    {
        let env = Env::new();
        env.iommufd.set_kernel_version(version);
        // 7.3's mock sets the dirty bit of a whole CPU-page PTE: both 2 KiB bits come back.
        let v7_3 = version == KernelVersion::V7_3;
        let len = 32 * PAGE;
        let buf = Buffer::new(len as usize);
        let ioas = env.ioas_alloc();
        let (_, _, idev) = env.mock_domain(ioas).unwrap();
        let hwpt = env
            .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
            .unwrap();
        env.map(ioas, buf.addr(), len, BASE_IOVA).unwrap();
        let page_size = MOCK_IO_PAGE_SIZE;
        let nbits = (len / page_size) as usize;
        let mut bitmap = vec![0u64; nbits.div_ceil(64)];
        assert_eq!(
            mark_dirty(&env, hwpt, BASE_IOVA, len, page_size, &bitmap),
            Err(Errno::EINVAL),
            "tracking not enabled"
        );
        set_dirty_tracking(&env, hwpt, IOMMU_HWPT_DIRTY_TRACKING_ENABLE).unwrap();
        for i in (0..nbits).step_by(2) {
            bitmap[i / 64] |= 1 << (i % 64);
        }
        assert_eq!(
            mark_dirty(&env, hwpt, BASE_IOVA, len, page_size, &bitmap),
            Ok(nbits as u64 / 2)
        );
        let flags = if no_clear {
            IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
        } else {
            0
        };
        bitmap.fill(0);
        get_dirty_bitmap(&env, hwpt, BASE_IOVA, len, page_size, &mut bitmap, flags).unwrap();
        for i in 0..nbits {
            assert_eq!(bit(&bitmap, i), v7_3 || i % 2 == 0, "bit {i}");
        }
        bitmap.fill(0);
        get_dirty_bitmap(&env, hwpt, BASE_IOVA, len, page_size, &mut bitmap, flags).unwrap();
        for i in 0..nbits {
            assert_eq!(
                bit(&bitmap, i),
                no_clear && (v7_3 || i % 2 == 0),
                "second read, bit {i}"
            );
        }
        // Bits are only ever set: an unaligned bitmap pointer and pre-set bits.
        let mut bytes = vec![0u8; nbits / 8 + 9];
        bytes[1] = 0x80;
        let mut cmd = IommuHwptGetDirtyBitmap {
            size: size_of::<IommuHwptGetDirtyBitmap>() as u32,
            hwpt_id: hwpt,
            iova: BASE_IOVA,
            length: len,
            page_size,
            data: bytes.as_mut_ptr() as u64 + 1,
            ..Default::default()
        };
        env.ioctl(IOMMU_HWPT_GET_DIRTY_BITMAP, &mut cmd).unwrap();
        assert_eq!(bytes[0], 0);
        let still_dirty = if v7_3 { 0xff } else { 0x55 };
        assert_eq!(bytes[1], if no_clear { 0x80 | still_dirty } else { 0x80 });
    }
}

#[test]
fn get_dirty_bitmap_checks_range_and_page_size() {
    let env = Env::new();
    let (ioas, _, auto, idev) = with_device(&env);
    let hwpt = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        .unwrap();
    let mut bitmap = [0u64; 4];
    let mut get = |id, iova, len, page, flags| {
        get_dirty_bitmap(&env, id, iova, len, page, &mut bitmap, flags)
    };
    assert_eq!(get(hwpt, BASE_IOVA, PAGE, PAGE, 2), Err(Errno::EOPNOTSUPP));
    assert_eq!(get(ioas, BASE_IOVA, PAGE, PAGE, 0), Err(Errno::ENOENT));
    assert_eq!(get(hwpt, BASE_IOVA, 0, PAGE, 0), Err(Errno::EINVAL));
    assert_eq!(
        get(hwpt, u64::MAX - 10, PAGE, PAGE, 0),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(
        get(hwpt, BASE_IOVA + 1024, PAGE, PAGE, 0),
        Err(Errno::EINVAL),
        "below the IOAS alignment (2 KiB)"
    );
    assert_eq!(get(hwpt, BASE_IOVA, PAGE, 0, 0), Err(Errno::EINVAL));
    assert_eq!(
        get(hwpt, BASE_IOVA + 2048, PAGE, PAGE, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(get(auto, BASE_IOVA, PAGE, PAGE, 0), Err(Errno::EOPNOTSUPP));
    get(hwpt, BASE_IOVA, PAGE, PAGE, 0).expect("nothing mapped: nothing to report");
    let mut cmd = IommuHwptGetDirtyBitmap {
        size: size_of::<IommuHwptGetDirtyBitmap>() as u32,
        hwpt_id: hwpt,
        reserved: 1,
        iova: BASE_IOVA,
        length: PAGE,
        page_size: PAGE,
        ..Default::default()
    };
    assert_eq!(
        env.ioctl(IOMMU_HWPT_GET_DIRTY_BITMAP, &mut cmd),
        Err(Errno::EOPNOTSUPP)
    );
}

#[test]
fn dirty_test_op_checks_its_arguments() {
    let env = Env::new();
    let (ioas, _, auto, idev) = with_device(&env);
    let hwpt = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        .unwrap();
    let bitmap = [0u64; 2];
    let mark = |id, iova, len, page, map: &[u64]| mark_dirty(&env, id, iova, len, page, map);
    assert_eq!(mark(hwpt, BASE_IOVA, PAGE, 0, &bitmap), Err(Errno::EINVAL));
    assert_eq!(mark(hwpt, BASE_IOVA, 0, 2048, &bitmap), Err(Errno::EINVAL));
    assert_eq!(
        mark(hwpt, BASE_IOVA + 1, PAGE, 2048, &bitmap),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        mark(hwpt, BASE_IOVA, PAGE + 1, 2048, &bitmap),
        Err(Errno::EINVAL)
    );
    let null_bitmap = TestDirty {
        iova: BASE_IOVA,
        length: PAGE,
        page_size: 2048,
        uptr: 0,
        ..Default::default()
    };
    assert_eq!(env.test_cmd(hwpt, &null_bitmap).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        mark(hwpt, 0, 1 << 40, 1, &bitmap),
        Err(Errno::EOVERFLOW),
        "more than 2^27 bits"
    );
    assert_eq!(
        mark(ioas, BASE_IOVA, PAGE, 2048, &bitmap),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        mark(auto, BASE_IOVA, PAGE, 2048, &bitmap),
        Err(Errno::EINVAL)
    );
}
