//! Mock devices through `IOMMU_TEST_CMD`: MOCK_DOMAIN, MOCK_DOMAIN_REPLACE, ADD_RESERVED,
//! MD_CHECK_MAP, MD_CHECK_REFS, and IOMMU_GET_HW_INFO, with the errnos of Linux 6.12 (reference
//! §1.4, §3.3) and the selftest's fixtures.

mod selftest_common;

use selftest_common::*;
use uiommu_core::{Iova, ProbeState};
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::hwpt::HwptPaging;
use uiommu_iommufd::object::ObjId;
use uiommu_mock::MockPagingDomain;

fn paging_table(env: &Env, hwpt: u32) -> Option<(usize, Option<u64>)> {
    let hwpt = env.ctx.objects().get::<HwptPaging>(ObjId(hwpt)).ok()?;
    let table: &MockPagingDomain = hwpt.domain().ops().as_any().downcast_ref()?;
    Some((
        table.mapped_pages(),
        table.entry(Iova(BASE_IOVA)).map(|e| e.pfn),
    ))
}

#[test]
fn mock_domain_binds_a_new_device_to_an_auto_hwpt() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (stdev, hwpt, idev) = env.mock_domain(ioas).unwrap();
    assert_eq!(
        (ioas, stdev, idev, hwpt),
        (1, 2, 3, 4),
        "ids in creation order"
    );
    assert_eq!(env.mock_devices(), 1);
    let dev = env.core.devices()[0].id;
    assert!(matches!(
        env.core.probe_state(dev),
        Ok(ProbeState::Bound { .. })
    ));
    let hwpt_ref = env.ctx.objects().get::<HwptPaging>(ObjId(hwpt)).unwrap();
    assert!(hwpt_ref.auto_domain());
    assert!(std::sync::Arc::ptr_eq(
        &env.core.device_domain(dev).unwrap(),
        hwpt_ref.domain()
    ));
    drop(hwpt_ref);
    env.assert_clean_teardown();
}

#[test]
fn objects_in_use_by_a_mock_device_cannot_be_destroyed() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (stdev, hwpt, idev) = env.mock_domain(ioas).unwrap();
    assert_eq!(env.destroy(ioas), Err(Errno::EBUSY));
    assert_eq!(env.destroy(hwpt), Err(Errno::EBUSY));
    assert_eq!(env.destroy(idev), Err(Errno::EBUSY));
    env.destroy(stdev).unwrap();
    assert_eq!(
        env.mock_devices(),
        0,
        "destroying the stdev removes the device"
    );
    assert_eq!(
        env.destroy(hwpt),
        Err(Errno::ENOENT),
        "auto hwpt went with its last device"
    );
    assert_eq!(env.destroy(idev), Err(Errno::ENOENT));
    env.destroy(ioas).unwrap();
    assert_eq!(env.objects(), 0);
}

#[test]
fn two_mock_devices_share_one_auto_hwpt() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (stdev1, hwpt1, _) = env.mock_domain(ioas).unwrap();
    let (stdev2, hwpt2, _) = env.mock_domain(ioas).unwrap();
    assert_eq!(hwpt1, hwpt2);
    env.destroy(stdev1).unwrap();
    assert!(
        env.ctx.objects().get::<HwptPaging>(ObjId(hwpt1)).is_ok(),
        "still used by the second device"
    );
    env.destroy(stdev2).unwrap();
    assert!(env.ctx.objects().get::<HwptPaging>(ObjId(hwpt1)).is_err());
}

#[test]
fn mock_domain_on_a_bad_pt_fails_and_leaves_no_device() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    assert_eq!(env.mock_domain(99), Err(Errno::ENOENT));
    let (stdev, _, idev) = env.mock_domain(ioas).unwrap();
    assert_eq!(
        env.mock_domain(idev),
        Err(Errno::EINVAL),
        "a DEVICE is not a page table"
    );
    assert_eq!(env.mock_domain(stdev), Err(Errno::EINVAL));
    assert_eq!(env.mock_domain_flags(ioas, 1 << 3), Err(Errno::EINVAL));
    assert_eq!(env.mock_devices(), 1);
    assert_eq!(env.objects(), 4, "ioas, stdev, idev, hwpt: no leftovers");
}

#[test]
fn mock_domain_on_a_hwpt_attaches_directly() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (_, _, idev) = env.mock_domain(ioas).unwrap();
    let manual = env.hwpt_alloc(idev, ioas, 0).unwrap();
    let (stdev2, hwpt2, _) = env.mock_domain(manual).unwrap();
    assert_eq!(hwpt2, manual);
    env.destroy(stdev2).unwrap();
    env.destroy(manual)
        .expect("manual hwpt persists, destroyable once unused");
}

#[test]
fn attaching_fills_the_domain_from_existing_areas_and_pins_once() {
    let env = Env::new();
    let buf = Buffer::new(4 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), 4 * PAGE, BASE_IOVA).unwrap();
    env.check_refs(buf.addr(), 4 * PAGE, 0)
        .expect("no domain: nothing pinned");
    let (_, hwpt, idev) = env.mock_domain(ioas).unwrap();
    env.check_map(hwpt, BASE_IOVA, 4 * PAGE, buf.addr())
        .unwrap();
    env.check_refs(buf.addr(), 4 * PAGE, 1).unwrap();
    assert_eq!(paging_table(&env, hwpt).unwrap().0, 8, "2 KiB entries");
    assert_eq!(
        paging_table(&env, hwpt).unwrap().1,
        Some(buf.addr() / 2048),
        "pfn is the user VA / 2048"
    );
    // A second domain is filled without a second pin.
    let manual = env.hwpt_alloc(idev, ioas, 0).unwrap();
    env.check_map(manual, BASE_IOVA, 4 * PAGE, buf.addr())
        .unwrap();
    env.check_refs(buf.addr(), 4 * PAGE, 1).unwrap();
    env.unmap(ioas, BASE_IOVA, 4 * PAGE).unwrap();
    env.check_refs(buf.addr(), 4 * PAGE, 0).unwrap();
    assert_eq!(
        env.check_map(hwpt, BASE_IOVA, 4 * PAGE, buf.addr()),
        Err(Errno::EINVAL)
    );
    assert_eq!(paging_table(&env, hwpt).unwrap().0, 0);
    env.assert_clean_teardown();
}

#[test]
fn check_map_rejects_misalignment_wrong_objects_and_mismatches() {
    let env = Env::new();
    let buf = Buffer::new(2 * PAGE as usize);
    let ioas = env.ioas_alloc();
    let (stdev, hwpt, _) = env.mock_domain(ioas).unwrap();
    env.map(ioas, buf.addr(), 2 * PAGE, BASE_IOVA).unwrap();
    let check = |id, iova, len, uptr| env.check_map(id, iova, len, uptr);
    assert_eq!(
        check(hwpt, BASE_IOVA + 1, 2048, buf.addr()),
        Err(Errno::EINVAL)
    );
    assert_eq!(check(hwpt, BASE_IOVA, 2047, buf.addr()), Err(Errno::EINVAL));
    assert_eq!(
        check(hwpt, BASE_IOVA, 2048, buf.addr() + 1),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        check(hwpt, BASE_IOVA, 4096, u64::MAX - 2047),
        Err(Errno::EINVAL)
    );
    assert_eq!(check(ioas, BASE_IOVA, 2048, buf.addr()), Err(Errno::ENOENT));
    assert_eq!(
        check(stdev, BASE_IOVA, 2048, buf.addr()),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        check(hwpt, BASE_IOVA, 2048, buf.addr() + 2048),
        Err(Errno::EINVAL),
        "translation mismatch"
    );
    check(hwpt, BASE_IOVA + 2048, 3 * 2048, buf.addr() + 2048).unwrap();
    assert_eq!(
        check(hwpt, BASE_IOVA, 2048, UNMAPPED_VA),
        Err(Errno::EFAULT),
        "user page that does not exist"
    );
}

#[test]
fn check_refs_rejects_misalignment_and_reports_eio_on_mismatch() {
    let env = Env::new();
    let buf = Buffer::new(2 * PAGE as usize);
    assert_eq!(env.check_refs(buf.addr() + 8, PAGE, 0), Err(Errno::EINVAL));
    assert_eq!(env.check_refs(buf.addr(), PAGE + 1, 0), Err(Errno::EINVAL));
    assert_eq!(env.check_refs(buf.addr(), PAGE, 1), Err(Errno::EIO));
    assert_eq!(env.check_refs(UNMAPPED_VA, PAGE, 0), Err(Errno::EFAULT));
    env.check_refs(buf.addr(), 2 * PAGE, 0).unwrap();
}

#[test]
fn replace_moves_the_device_between_hwpts_and_frees_the_old_auto_hwpt() {
    let env = Env::new();
    let buf = Buffer::new(PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), PAGE, BASE_IOVA).unwrap();
    let (stdev, auto, idev) = env.mock_domain(ioas).unwrap();
    let manual = env.hwpt_alloc(idev, ioas, 0).unwrap();
    assert_eq!(env.replace(stdev, manual), Ok(manual));
    assert!(
        env.ctx.objects().get::<HwptPaging>(ObjId(auto)).is_err(),
        "old auto hwpt destroyed"
    );
    assert_eq!(env.destroy(manual), Err(Errno::EBUSY));
    assert_eq!(env.replace(stdev, manual), Ok(manual), "same hwpt: no-op");
    // Back to the IOAS: no auto hwpt is left, so a new one is made.
    let new_auto = env.replace(stdev, ioas).unwrap();
    assert_ne!(new_auto, manual);
    env.check_map(new_auto, BASE_IOVA, PAGE, buf.addr())
        .unwrap();
    env.destroy(manual).unwrap();
    assert_eq!(env.replace(stdev, 999), Err(Errno::ENOENT));
    assert_eq!(
        env.replace(idev, ioas),
        Err(Errno::ENOENT),
        "the id must be a SELFTEST object"
    );
    env.check_refs(buf.addr(), PAGE, 1).unwrap();
    env.assert_clean_teardown();
}

#[test]
fn replace_to_another_ioas_moves_reserved_and_pins() {
    let env = Env::new();
    let buf = Buffer::new(PAGE as usize);
    let ioas1 = env.ioas_alloc();
    let ioas2 = env.ioas_alloc();
    env.map(ioas2, buf.addr(), PAGE, BASE_IOVA).unwrap();
    let (stdev, _, _) = env.mock_domain(ioas1).unwrap();
    env.check_refs(buf.addr(), PAGE, 0).unwrap();
    let hwpt2 = env.replace(stdev, ioas2).unwrap();
    env.check_refs(buf.addr(), PAGE, 1).unwrap();
    env.check_map(hwpt2, BASE_IOVA, PAGE, buf.addr()).unwrap();
    env.destroy(ioas1)
        .expect("ioas1 is free once its auto hwpt is gone");
}

#[test]
fn add_reserved_blocks_mapping_and_checks_its_arguments() {
    let env = Env::new();
    let buf = Buffer::new(2 * PAGE as usize);
    let ioas = env.ioas_alloc();
    let reserve = |id, start, length| env.test_cmd(id, &TestAddReserved { start, length });
    assert_eq!(reserve(ioas, 0, 0).unwrap_err(), Errno::EINVAL);
    assert_eq!(reserve(ioas, u64::MAX, 2).unwrap_err(), Errno::EOVERFLOW);
    assert_eq!(reserve(42, 0x1000, 0x1000).unwrap_err(), Errno::ENOENT);
    env.map(ioas, buf.addr(), PAGE, 0x10000).unwrap();
    assert_eq!(reserve(ioas, 0x10000, PAGE).unwrap_err(), Errno::EADDRINUSE);
    reserve(ioas, 0x20000, PAGE).unwrap();
    assert_eq!(
        env.map(ioas, buf.addr(), PAGE, 0x20000),
        Err(Errno::EINVAL),
        "fixed map over a reservation"
    );
}

#[test]
fn a_mock_domain_narrows_the_iova_ranges_to_its_aperture() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    env.mock_domain(ioas).unwrap();
    let mut ranges = [IommuIovaRange::default(); 4];
    let mut cmd = IommuIoasIovaRanges {
        size: size_of::<IommuIoasIovaRanges>() as u32,
        ioas_id: ioas,
        num_iovas: 4,
        allowed_iovas: ranges.as_mut_ptr() as u64,
        ..Default::default()
    };
    env.ioctl(IOMMU_IOAS_IOVA_RANGES, &mut cmd).unwrap();
    assert_eq!(cmd.num_iovas, 1);
    assert_eq!(
        (ranges[0].start, ranges[0].last),
        (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
    );
    assert_eq!(cmd.out_iova_alignment, MOCK_IO_PAGE_SIZE);
}

#[test]
fn closing_the_context_releases_devices_hwpts_and_pins() {
    let env = Env::new();
    let buf = Buffer::new(4 * PAGE as usize);
    let ioas = env.ioas_alloc();
    env.map(ioas, buf.addr(), 4 * PAGE, BASE_IOVA).unwrap();
    let (_, _, idev) = env.mock_domain(ioas).unwrap();
    env.mock_domain(ioas).unwrap();
    env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    assert_eq!(env.pins(), 4);
    env.assert_clean_teardown();
}

#[test]
fn unknown_test_ops_are_eopnotsupp() {
    let env = Env::new();
    let mut cmd = IommuTestCmd::new(0, &TestMemoryLimit { limit: 100 });
    cmd.op = 99;
    assert_eq!(env.ioctl(IOMMU_TEST_CMD, &mut cmd), Err(Errno::EOPNOTSUPP));
    assert_eq!(
        env.test_cmd(0, &TestMemoryLimit { limit: 11 }).unwrap_err(),
        Errno::EINVAL
    );
    env.test_cmd(0, &TestMemoryLimit { limit: 12 }).unwrap();
    assert_eq!(uiommu_mock::temp_memory_limit(), 12);
    env.test_cmd(
        0,
        &TestMemoryLimit {
            limit: IOMMU_TEST_MEMORY_LIMIT_DEFAULT,
        },
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// IOMMU_GET_HW_INFO
// ---------------------------------------------------------------------------------------------

fn hw_info(
    env: &Env,
    dev: u32,
    flags: u32,
    data_type: u32,
    data: &mut [u8],
) -> Result<IommuHwInfo, Errno> {
    let mut cmd = IommuHwInfo {
        size: size_of::<IommuHwInfo>() as u32,
        flags,
        dev_id: dev,
        data_len: data.len() as u32,
        data_uptr: if data.is_empty() {
            0
        } else {
            data.as_mut_ptr() as u64
        },
        out_data_type: data_type,
        ..Default::default()
    };
    env.ioctl(IOMMU_GET_HW_INFO, &mut cmd)?;
    Ok(cmd)
}

#[test]
fn get_hw_info_copies_truncates_and_zero_fills() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (_, _, idev) = env.mock_domain(ioas).unwrap();
    let info = hw_info(&env, idev, 0, 0, &mut []).unwrap();
    assert_eq!(info.data_len, 8);
    assert_eq!(info.out_data_type, IOMMU_HW_INFO_TYPE_SELFTEST);
    assert_eq!(info.out_capabilities, IOMMU_HW_CAP_DIRTY_TRACKING);
    assert_eq!(info.out_max_pasid_log2, 0);
    let mut exact = [0xffu8; 8];
    hw_info(&env, idev, 0, 0, &mut exact).unwrap();
    assert_eq!(exact, [0, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
    let mut larger = [0xffu8; 16];
    hw_info(&env, idev, 0, 0, &mut larger).unwrap();
    assert_eq!(&larger[..8], &exact);
    assert_eq!(&larger[8..], &[0; 8], "trailing bytes zeroed");
    let mut smaller = [0xffu8; 4];
    let info = hw_info(&env, idev, 0, 0, &mut smaller).unwrap();
    assert_eq!(smaller, [0; 4]);
    assert_eq!(info.data_len, 8, "full length reported");
}

#[test]
fn get_hw_info_input_type_must_be_default_or_the_drivers() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (_, _, idev) = env.mock_domain(ioas).unwrap();
    let flag = IOMMU_HW_INFO_FLAG_INPUT_TYPE;
    let mut buf = [0u8; 8];
    assert_eq!(
        hw_info(&env, idev, flag, IOMMU_HW_INFO_TYPE_SELFTEST + 1, &mut buf).unwrap_err(),
        Errno::EOPNOTSUPP
    );
    hw_info(&env, idev, flag, IOMMU_HW_INFO_TYPE_SELFTEST, &mut buf).unwrap();
    hw_info(&env, idev, flag, IOMMU_HW_INFO_TYPE_DEFAULT, &mut buf).unwrap();
    // Without the flag the field is output only: any value is ignored.
    hw_info(&env, idev, 0, 0x1234, &mut buf).unwrap();
    assert_eq!(
        hw_info(&env, idev, 2, 0, &mut buf).unwrap_err(),
        Errno::EOPNOTSUPP
    );
    let mut cmd = IommuHwInfo {
        size: size_of::<IommuHwInfo>() as u32,
        dev_id: idev,
        reserved: [0, 1, 0],
        ..Default::default()
    };
    assert_eq!(
        env.ioctl(IOMMU_GET_HW_INFO, &mut cmd),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        hw_info(&env, ioas, 0, 0, &mut buf).unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(
        hw_info(&env, idev, 0, 0, &mut []).and_then(|_| {
            let mut cmd = IommuHwInfo {
                size: size_of::<IommuHwInfo>() as u32,
                dev_id: idev,
                data_len: 8,
                data_uptr: UNMAPPED_VA,
                ..Default::default()
            };
            env.ioctl(IOMMU_GET_HW_INFO, &mut cmd).map(|_| cmd)
        }),
        Err(Errno::EFAULT)
    );
}

#[test]
fn get_hw_info_reports_pasid_width_and_dirty_capability_per_device() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (_, _, pasid_dev) = env
        .mock_domain_flags(ioas, MOCK_FLAGS_DEVICE_PASID)
        .unwrap();
    let info = hw_info(&env, pasid_dev, 0, 0, &mut []).unwrap();
    assert_eq!(u32::from(info.out_max_pasid_log2), MOCK_PASID_WIDTH);
    let ioas2 = env.ioas_alloc();
    let (_, _, no_dirty) = env
        .mock_domain_flags(ioas2, MOCK_FLAGS_DEVICE_NO_DIRTY)
        .unwrap();
    let info = hw_info(&env, no_dirty, 0, 0, &mut []).unwrap();
    assert_eq!(info.out_capabilities, 0);
    // A 32-byte (6.6-era) struct gets no capabilities field back, and is accepted.
    let mut short = [0u8; 32];
    short[..4].copy_from_slice(&32u32.to_le_bytes());
    short[8..12].copy_from_slice(&pasid_dev.to_le_bytes());
    env.ctx
        .ioctl(&env.caller, IOMMU_GET_HW_INFO, short.as_mut_ptr() as u64)
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(short[24..28].try_into().unwrap()),
        IOMMU_HW_INFO_TYPE_SELFTEST
    );
}
