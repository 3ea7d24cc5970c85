//! Linux 7.3's vIOMMU objects on the mock: IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, nested
//! HWPTs on a vIOMMU, IOMMU_HWPT_INVALIDATE of a vIOMMU (the mock device's cache slots) and
//! IOMMU_TEST_OP_DEV_CHECK_CACHE, each errno table in the kernel's check order, and the 6.12
//! answers (the commands do not exist: ENOTTY).

mod selftest_common;

use selftest_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::file::FileInstaller;
use uiommu_iommufd::version::KernelVersion;

/// `struct iommu_viommu_selftest` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ViommuSelftest {
    in_data: u32,
    out_data: u32,
    out_mmap_offset: u64,
    out_mmap_length: u64,
}

/// `struct iommu_viommu_invalidate_selftest` (12 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ViommuInvalidate {
    flags: u32,
    vdev_id: u32,
    cache_id: u32,
}

/// An IOAS, a mock device on it, and a nesting parent: (stdev, idev, parent).
fn setup(env: &Env) -> (u32, u32, u32) {
    let ioas = env.ioas_alloc();
    let (stdev, _, idev) = env.mock_domain(ioas).unwrap();
    let parent = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    (stdev, idev, parent)
}

#[allow(clippy::too_many_arguments)]
fn viommu_alloc(
    env: &Env,
    flags: u32,
    viommu_type: u32,
    dev: u32,
    hwpt: u32,
    data_uptr: u64,
    data_len: u32,
) -> Result<u32, Errno> {
    let mut cmd = IommuViommuAlloc {
        size: size_of::<IommuViommuAlloc>() as u32,
        flags,
        viommu_type,
        dev_id: dev,
        hwpt_id: hwpt,
        data_len,
        data_uptr,
        ..Default::default()
    };
    env.ioctl(IOMMU_VIOMMU_ALLOC, &mut cmd)?;
    Ok(cmd.out_viommu_id)
}

fn vdevice_alloc(env: &Env, viommu: u32, dev: u32, virt_id: u64) -> Result<u32, Errno> {
    let mut cmd = IommuVdeviceAlloc {
        size: size_of::<IommuVdeviceAlloc>() as u32,
        viommu_id: viommu,
        dev_id: dev,
        virt_id,
        ..Default::default()
    };
    env.ioctl(IOMMU_VDEVICE_ALLOC, &mut cmd)?;
    Ok(cmd.out_vdevice_id)
}

fn check_cache(env: &Env, idev: u32, slot: u32, value: u32) -> Result<(), Errno> {
    env.test_cmd(
        idev,
        &TestCheckDevCache {
            id: slot,
            cache: value,
        },
    )
    .map(|_| ())
}

fn invalidate(
    env: &Env,
    id: u32,
    data_type: u32,
    entries: &mut [ViommuInvalidate],
) -> (Result<(), Errno>, u32) {
    let mut cmd = IommuHwptInvalidate {
        size: size_of::<IommuHwptInvalidate>() as u32,
        hwpt_id: id,
        data_uptr: entries.as_mut_ptr() as u64,
        data_type,
        entry_len: size_of::<ViommuInvalidate>() as u32,
        entry_num: entries.len() as u32,
        ..Default::default()
    };
    let result = env.ioctl(IOMMU_HWPT_INVALIDATE, &mut cmd).map(|_| ());
    (result, cmd.entry_num)
}

#[test]
fn viommu_alloc_checks_in_kernel_order() {
    let env = Env::new();
    let (_, idev, parent) = setup(&env);
    let ioas = env.ioas_alloc();
    let not_parent = env.hwpt_alloc(idev, ioas, 0).unwrap();
    let ty = IOMMU_VIOMMU_TYPE_SELFTEST;
    assert_eq!(
        viommu_alloc(&env, 1, ty, idev, parent, 0, 0),
        Err(Errno::EOPNOTSUPP),
        "flags"
    );
    assert_eq!(
        viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_DEFAULT, idev, parent, 0, 0),
        Err(Errno::EOPNOTSUPP),
        "DEFAULT type"
    );
    assert_eq!(
        viommu_alloc(&env, 0, ty, parent, parent, 0, 0),
        Err(Errno::ENOENT),
        "not a device"
    );
    assert_eq!(
        viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_ARM_SMMUV3, idev, parent, 0, 0),
        Err(Errno::EOPNOTSUPP),
        "a type the mock does not offer"
    );
    assert_eq!(
        viommu_alloc(&env, 0, ty, idev, ioas, 0, 0),
        Err(Errno::ENOENT),
        "not a HWPT"
    );
    assert_eq!(
        viommu_alloc(&env, 0, ty, idev, not_parent, 0, 0),
        Err(Errno::EINVAL),
        "not a nesting parent"
    );
    let mut data = ViommuSelftest {
        in_data: 0xbadbeef,
        ..Default::default()
    };
    let ptr = std::ptr::from_mut(&mut data) as u64;
    assert_eq!(
        viommu_alloc(&env, 0, ty, idev, parent, ptr, 7),
        Err(Errno::EINVAL),
        "short data"
    );
    assert_eq!(
        viommu_alloc(&env, 0, ty, idev, parent, 0, 24),
        Err(Errno::EFAULT),
        "unreadable"
    );
    let objects = env.objects();
    let viommu = viommu_alloc(&env, 0, ty, idev, parent, ptr, 24).unwrap();
    assert_eq!(data.out_data, 0xbadbeef, "loopback of in_data");
    assert_eq!(env.objects(), objects + 1);
    assert_eq!(
        env.destroy(parent),
        Err(Errno::EBUSY),
        "the vIOMMU holds its parent"
    );
    env.destroy(viommu).unwrap();
    env.destroy(parent).unwrap();
}

#[test]
fn vdevice_alloc_checks_in_kernel_order() {
    let env = Env::new();
    let (_, idev, parent) = setup(&env);
    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    assert_eq!(
        vdevice_alloc(&env, parent, idev, 1),
        Err(Errno::ENOENT),
        "not a vIOMMU"
    );
    assert_eq!(
        vdevice_alloc(&env, viommu, viommu, 1),
        Err(Errno::ENOENT),
        "not a device"
    );
    let vdev = vdevice_alloc(&env, viommu, idev, 0x99).unwrap();
    assert_eq!(
        vdevice_alloc(&env, viommu, idev, 0x98),
        Err(Errno::EEXIST),
        "one per device"
    );
    let ioas = env.ioas_alloc();
    let (_, _, idev2) = env.mock_domain(ioas).unwrap();
    assert_eq!(
        vdevice_alloc(&env, viommu, idev2, 0x99),
        Err(Errno::EEXIST),
        "virt_id taken"
    );
    let vdev2 = vdevice_alloc(&env, viommu, idev2, 0x98).unwrap();
    assert_eq!(
        env.destroy(viommu),
        Err(Errno::EBUSY),
        "vDEVICEs hold their vIOMMU"
    );
    env.destroy(vdev).unwrap();
    let vdev = vdevice_alloc(&env, viommu, idev, 0x99).expect("the id and the device are free");
    env.destroy(vdev).unwrap();
    env.destroy(vdev2).unwrap();
    env.destroy(viommu).unwrap();
}

#[test]
fn viommu_invalidation_clears_the_device_cache_slots() {
    let env = Env::new();
    let (_, idev, parent) = setup(&env);
    for slot in 0..4 {
        check_cache(&env, idev, slot, IOMMU_TEST_DEV_CACHE_DEFAULT).unwrap();
    }
    assert_eq!(
        check_cache(&env, idev, 4, IOMMU_TEST_DEV_CACHE_DEFAULT),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        check_cache(&env, idev, 0, 0),
        Err(Errno::EINVAL),
        "wrong value"
    );
    assert_eq!(
        check_cache(&env, parent, 0, 0),
        Err(Errno::ENOENT),
        "not a device"
    );

    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    vdevice_alloc(&env, viommu, idev, 0x99).unwrap();
    let ty = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
    let entry = |flags, vdev_id, cache_id| ViommuInvalidate {
        flags,
        vdev_id,
        cache_id,
    };
    assert_eq!(
        invalidate(&env, viommu, ty, &mut []),
        (Ok(()), 0),
        "empty array"
    );
    assert_eq!(
        invalidate(&env, viommu, ty + 1, &mut [entry(0, 0x99, 0)]),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(
        invalidate(&env, viommu, ty, &mut [entry(2, 0x99, 0)]),
        (Err(Errno::EOPNOTSUPP), 0)
    );
    assert_eq!(
        invalidate(&env, viommu, ty, &mut [entry(0, 0x99, 4)]),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(
        invalidate(
            &env,
            viommu,
            ty,
            &mut [entry(0, 0x99, 1), entry(0, 0x42, 0)]
        ),
        (Err(Errno::EINVAL), 1),
        "the second entry names no vDEVICE"
    );
    check_cache(&env, idev, 1, 0).unwrap();
    check_cache(&env, idev, 0, IOMMU_TEST_DEV_CACHE_DEFAULT).unwrap();
    assert_eq!(
        invalidate(
            &env,
            viommu,
            ty,
            &mut [entry(IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0)]
        ),
        (Ok(()), 1)
    );
    for slot in 0..4 {
        check_cache(&env, idev, slot, 0).unwrap();
    }
}

#[test]
fn nested_hwpt_on_a_viommu() {
    let env = Env::new();
    let (_, idev, parent) = setup(&env);
    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    let mut data = IommuHwptSelftestPagetable {
        iotlb: IOMMU_TEST_IOTLB_DEFAULT,
        pagetable_type: 0,
    };
    let ptr = std::ptr::from_mut(&mut data) as u64;
    let alloc = |flags, len| {
        env.hwpt_alloc_data(idev, viommu, flags, IOMMU_HWPT_DATA_SELFTEST, ptr, len, 0)
    };
    assert_eq!(
        alloc(IOMMU_HWPT_ALLOC_NEST_PARENT, 8),
        Err(Errno::EOPNOTSUPP),
        "flags"
    );
    let nested = alloc(0, 8).unwrap();
    assert_eq!(
        env.destroy(viommu),
        Err(Errno::EBUSY),
        "the nested HWPT holds its vIOMMU"
    );
    env.destroy(nested).unwrap();
    env.destroy(viommu).unwrap();
}

#[test]
fn linux_6_12_has_no_viommu_commands() {
    let env = Env::new();
    let (_, idev, parent) = setup(&env);
    env.iommufd.set_kernel_version(KernelVersion::V6_12);
    assert_eq!(
        viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0),
        Err(Errno::ENOTTY)
    );
    assert_eq!(vdevice_alloc(&env, 1, idev, 1), Err(Errno::ENOTTY));
    assert_eq!(
        check_cache(&env, idev, 0, IOMMU_TEST_DEV_CACHE_DEFAULT),
        Err(Errno::EOPNOTSUPP),
        "6.12's mock has no DEV_CHECK_CACHE"
    );
    let mut short = IommuViommuAlloc {
        size: 8,
        ..Default::default()
    };
    assert_eq!(
        env.ioctl(IOMMU_VIOMMU_ALLOC, &mut short),
        Err(Errno::ENOTTY)
    );
    env.iommufd.set_kernel_version(KernelVersion::V7_3);
    assert_eq!(
        env.ioctl(IOMMU_VIOMMU_ALLOC, &mut short),
        Err(Errno::EINVAL),
        "7.3: too short"
    );
}

#[test]
fn attaching_to_a_viommu_nested_hwpt_needs_the_vdevice() {
    let env = Env::new();
    let (stdev, idev, parent) = setup(&env);
    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    let mut data = IommuHwptSelftestPagetable {
        iotlb: IOMMU_TEST_IOTLB_DEFAULT,
        pagetable_type: 0,
    };
    let ptr = std::ptr::from_mut(&mut data) as u64;
    let nested = env
        .hwpt_alloc_data(idev, viommu, 0, IOMMU_HWPT_DATA_SELFTEST, ptr, 8, 0)
        .unwrap();
    assert_eq!(
        env.replace(stdev, nested),
        Err(Errno::ENOENT),
        "no vDEVICE yet"
    );
    let vdev = vdevice_alloc(&env, viommu, idev, 0x99).unwrap();
    env.replace(stdev, nested).unwrap();
    env.replace(stdev, parent).unwrap();
    env.destroy(vdev).unwrap();
    assert_eq!(
        env.replace(stdev, nested),
        Err(Errno::ENOENT),
        "the vDEVICE is gone"
    );
}

#[test]
fn a_device_takes_its_vdevice_along() {
    let env = Env::new();
    let (stdev, idev, parent) = setup(&env);
    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    let vdev = vdevice_alloc(&env, viommu, idev, 0x99).unwrap();
    env.destroy(stdev).unwrap();
    assert_eq!(env.destroy(vdev), Err(Errno::ENOENT));
    env.destroy(viommu)
        .expect("no vDEVICE holds the vIOMMU any more");
}

fn veventq_alloc(env: &Env, viommu: u32, ty: u32, depth: u32) -> Result<(u32, u32), Errno> {
    let mut cmd = IommuVeventqAlloc {
        size: size_of::<IommuVeventqAlloc>() as u32,
        viommu_id: viommu,
        veventq_type: ty,
        veventq_depth: depth,
        ..Default::default()
    };
    env.ioctl(IOMMU_VEVENTQ_ALLOC, &mut cmd)?;
    Ok((cmd.out_veventq_id, cmd.out_veventq_fd))
}

fn trigger_vevent(env: &Env, idev: u32) -> Result<(), Errno> {
    env.test_cmd(0, &TestTriggerVevent { dev_id: idev })
        .map(|_| ())
}

/// `read()` of an emulated fd into a fresh buffer: the bytes read.
fn read_fd(env: &Env, fd: u32, count: usize) -> Result<Vec<u8>, Errno> {
    let file = FileInstaller::get(env.fds.as_ref(), fd as i32).ok_or(Errno::EBADF)?;
    let mut buf = vec![0u8; count];
    let n = file.read(
        env.memory.as_ref(),
        uiommu_iommufd::user_memory::UserVa(buf.as_mut_ptr() as u64),
        count,
        0,
    )?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn veventq_alloc_checks_in_kernel_order() {
    let env = Env::new();
    let (_, idev, parent) = setup(&env);
    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    let ty = IOMMU_VEVENTQ_TYPE_SELFTEST;
    let mut cmd = IommuVeventqAlloc {
        size: size_of::<IommuVeventqAlloc>() as u32,
        flags: 1,
        viommu_id: viommu,
        veventq_type: ty,
        veventq_depth: 2,
        ..Default::default()
    };
    assert_eq!(
        env.ioctl(IOMMU_VEVENTQ_ALLOC, &mut cmd),
        Err(Errno::EOPNOTSUPP),
        "flags"
    );
    cmd.flags = 0;
    cmd.reserved = 1;
    assert_eq!(
        env.ioctl(IOMMU_VEVENTQ_ALLOC, &mut cmd),
        Err(Errno::EOPNOTSUPP),
        "__reserved"
    );
    assert_eq!(
        veventq_alloc(&env, viommu, IOMMU_VEVENTQ_TYPE_DEFAULT, 2),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        veventq_alloc(&env, viommu, ty, 0),
        Err(Errno::EINVAL),
        "depth 0"
    );
    assert_eq!(
        veventq_alloc(&env, viommu, ty, (1 << 19) + 1),
        Err(Errno::EINVAL),
        "too deep"
    );
    assert_eq!(
        veventq_alloc(&env, parent, ty, 2),
        Err(Errno::ENOENT),
        "not a vIOMMU"
    );
    let (veventq, fd) = veventq_alloc(&env, viommu, ty, 1 << 19).unwrap();
    assert_eq!(
        veventq_alloc(&env, viommu, ty, 2),
        Err(Errno::EEXIST),
        "one per type"
    );
    assert_eq!(
        env.destroy(veventq),
        Err(Errno::EBUSY),
        "the open file holds the queue"
    );
    assert_eq!(
        env.destroy(viommu),
        Err(Errno::EBUSY),
        "the queue holds the vIOMMU"
    );
    env.close(fd).unwrap();
    env.destroy(veventq).unwrap();
    veventq_alloc(&env, viommu, ty, 2).expect("the type is free again");
}

#[test]
fn vevents_reach_the_queue_in_sequence_and_overflow_as_lost_events() {
    let env = Env::new();
    let (stdev, idev, parent) = setup(&env);
    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    let mut data = IommuHwptSelftestPagetable::default();
    let ptr = std::ptr::from_mut(&mut data) as u64;
    let nested = env
        .hwpt_alloc_data(idev, viommu, 0, IOMMU_HWPT_DATA_SELFTEST, ptr, 8, 0)
        .unwrap();
    assert_eq!(
        trigger_vevent(&env, idev),
        Err(Errno::ENOENT),
        "not on a vIOMMU's HWPT"
    );
    let (_, fd) = veventq_alloc(&env, viommu, IOMMU_VEVENTQ_TYPE_SELFTEST, 2).unwrap();
    vdevice_alloc(&env, viommu, idev, 0x99).unwrap();
    env.replace(stdev, nested).unwrap();
    assert_eq!(read_fd(&env, fd, 7), Err(Errno::EINVAL), "below a header");

    trigger_vevent(&env, idev).unwrap();
    assert_eq!(
        read_fd(&env, fd, 8),
        Err(Errno::EINVAL),
        "the event does not fit"
    );
    let record = |flags: u32, seq: u32, virt: Option<u32>| {
        let mut r = flags.to_le_bytes().to_vec();
        r.extend_from_slice(&seq.to_le_bytes());
        r.extend(virt.iter().flat_map(|v| v.to_le_bytes()));
        r
    };
    assert_eq!(read_fd(&env, fd, 64), Ok(record(0, 0, Some(0x99))));

    for _ in 0..3 {
        trigger_vevent(&env, idev).unwrap();
    }
    let mut expected = record(0, 1, Some(0x99));
    expected.extend(record(0, 2, Some(0x99)));
    expected.extend(record(IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 3, None));
    assert_eq!(
        read_fd(&env, fd, 64),
        Ok(expected),
        "depth 2: the third is lost"
    );
    trigger_vevent(&env, idev).unwrap();
    assert_eq!(read_fd(&env, fd, 64), Ok(record(0, 4, Some(0x99))));
    env.replace(stdev, parent).unwrap();
}

fn hw_queue_alloc(
    env: &Env,
    viommu: u32,
    queue_type: u32,
    index: u32,
    iova: u64,
    length: u64,
) -> Result<u32, Errno> {
    let mut cmd = IommuHwQueueAlloc {
        size: size_of::<IommuHwQueueAlloc>() as u32,
        viommu_id: viommu,
        queue_type,
        index,
        nesting_parent_iova: iova,
        length,
        ..Default::default()
    };
    env.ioctl(IOMMU_HW_QUEUE_ALLOC, &mut cmd)?;
    Ok(cmd.out_hw_queue_id)
}

#[test]
fn hw_queue_alloc_checks_in_kernel_order_and_locks_its_pages() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (_, _, idev) = env.mock_domain(ioas).unwrap();
    let parent = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    let viommu = viommu_alloc(&env, 0, IOMMU_VIOMMU_TYPE_SELFTEST, idev, parent, 0, 0).unwrap();
    let ty = IOMMU_HW_QUEUE_TYPE_SELFTEST;
    let iova = BASE_IOVA;
    let q = |ty, index, iova, len| hw_queue_alloc(&env, viommu, ty, index, iova, len);
    assert_eq!(
        q(IOMMU_HW_QUEUE_TYPE_DEFAULT, 0, iova, PAGE),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(q(ty, 0, iova, 0), Err(Errno::EINVAL), "length 0");
    assert_eq!(q(ty, 0, u64::MAX, PAGE), Err(Errno::EOVERFLOW));
    assert_eq!(
        hw_queue_alloc(&env, parent, ty, 0, iova, PAGE),
        Err(Errno::ENOENT),
        "no vIOMMU"
    );
    assert_eq!(
        q(ty + 1, 0, iova, PAGE),
        Err(Errno::EOPNOTSUPP),
        "a type the mock lacks"
    );
    assert_eq!(
        q(ty, 0, iova, PAGE),
        Err(Errno::ENOENT),
        "nothing mapped there"
    );

    let buf = Buffer::new(2 * PAGE as usize);
    env.map(ioas, buf.addr(), PAGE, iova).unwrap();
    env.map(ioas, buf.addr() + PAGE, PAGE, iova + PAGE).unwrap();
    assert_eq!(
        q(ty, 1, iova, PAGE),
        Err(Errno::EIO),
        "index 1 before index 0"
    );
    assert_eq!(
        q(ty, 2, iova, PAGE),
        Err(Errno::EINVAL),
        "index past the mock's two"
    );
    let first = q(ty, 0, iova, PAGE).unwrap();
    assert_eq!(q(ty, 0, iova, PAGE), Err(Errno::EEXIST));
    assert_eq!(
        env.unmap(ioas, iova, PAGE),
        Err(Errno::EBUSY),
        "the queue's page is locked"
    );
    env.unmap(ioas, iova + PAGE, PAGE)
        .expect("the second page is not the queue's");
    let second = q(ty, 1, iova + PAGE / 2, PAGE / 2).unwrap();
    assert_eq!(
        env.destroy(first),
        Err(Errno::EBUSY),
        "the second queue depends on it"
    );
    assert_eq!(
        env.destroy(viommu),
        Err(Errno::EBUSY),
        "queues hold their vIOMMU"
    );
    env.destroy(second).unwrap();
    env.destroy(first).unwrap();
    env.unmap(ioas, iova, PAGE)
        .expect("unlocked with its last queue");
    env.destroy(viommu).unwrap();
}
