//! Linux 7.3's PASID attachments on the mock: IOMMU_HWPT_ALLOC_PASID and the test ops
//! PASID_ATTACH, PASID_REPLACE, PASID_DETACH and PASID_CHECK_HWPT, with the kernel's errno
//! order, the RID/PASID compatibility rule and the mock's reserved PASID 1024.

mod selftest_common;

use selftest_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::version::KernelVersion;

const PASID: u32 = 100;
const RESERVED_PASID: u32 = 1024;

fn attach(env: &Env, stdev: u32, pasid: u32, pt_id: u32) -> Result<(), Errno> {
    env.test_cmd(stdev, &TestPasidAttach { pasid, pt_id })
        .map(|_| ())
}

fn replace(env: &Env, stdev: u32, pasid: u32, pt_id: u32) -> Result<(), Errno> {
    env.test_cmd(stdev, &TestPasidReplace { pasid, pt_id })
        .map(|_| ())
}

fn detach(env: &Env, stdev: u32, pasid: u32) -> Result<(), Errno> {
    env.test_cmd(stdev, &TestPasidDetach { pasid }).map(|_| ())
}

fn check(env: &Env, stdev: u32, pasid: u32, hwpt_id: u32) -> Result<(), Errno> {
    env.test_cmd(stdev, &TestPasidCheck { pasid, hwpt_id })
        .map(|_| ())
}

/// A PASID-capable mock device on an IOAS whose RID sits on a PASID-compatible HWPT:
/// (ioas, stdev, idev, that HWPT).
fn pasid_device(env: &Env) -> (u32, u32, u32, u32) {
    let ioas = env.ioas_alloc();
    let (stdev, _, idev) = env
        .mock_domain_flags(ioas, MOCK_FLAGS_DEVICE_PASID)
        .unwrap();
    let rid_hwpt = env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    env.replace(stdev, rid_hwpt).unwrap();
    (ioas, stdev, idev, rid_hwpt)
}

#[test]
fn pasid_attach_checks_in_kernel_order() {
    let env = Env::new();
    let (ioas, stdev, idev, rid_hwpt) = pasid_device(&env);
    let compat = env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    let plain = env.hwpt_alloc(idev, ioas, 0).unwrap();

    assert_eq!(
        attach(&env, 999, PASID, compat),
        Err(Errno::ENOENT),
        "no such stdev"
    );
    assert_eq!(
        attach(&env, stdev, PASID, 999),
        Err(Errno::ENOENT),
        "no such pt"
    );
    assert_eq!(
        attach(&env, stdev, PASID, ioas),
        Err(Errno::EINVAL),
        "an IOAS"
    );
    assert_eq!(
        attach(&env, stdev, PASID, idev),
        Err(Errno::EINVAL),
        "a device"
    );
    assert_eq!(
        attach(&env, stdev, PASID, plain),
        Err(Errno::EINVAL),
        "not PASID-compatible"
    );
    assert_eq!(
        attach(&env, stdev, 1 << MOCK_PASID_WIDTH, compat),
        Err(Errno::EINVAL),
        "past the device's PASID width"
    );
    check(&env, stdev, PASID, 0).unwrap();

    attach(&env, stdev, PASID, compat).unwrap();
    check(&env, stdev, PASID, compat).unwrap();
    assert_eq!(check(&env, stdev, PASID, rid_hwpt), Err(Errno::EINVAL));
    assert_eq!(
        check(&env, stdev, PASID, 0),
        Err(Errno::EINVAL),
        "attached, not detached"
    );
    assert_eq!(
        attach(&env, stdev, PASID, compat),
        Err(Errno::EBUSY),
        "attached already"
    );
    assert_eq!(
        attach(&env, stdev, PASID, rid_hwpt),
        Err(Errno::EBUSY),
        "even elsewhere"
    );
    assert_eq!(
        env.destroy(compat),
        Err(Errno::EBUSY),
        "the PASID holds its HWPT"
    );

    // While a PASID is attached, the RID may only move to PASID-compatible HWPTs.
    assert_eq!(env.replace(stdev, plain), Err(Errno::EINVAL));
    env.replace(stdev, rid_hwpt).unwrap();

    detach(&env, stdev, PASID).unwrap();
    detach(&env, stdev, PASID).expect("detaching twice is no error");
    check(&env, stdev, PASID, 0).unwrap();
    env.destroy(compat).unwrap();

    // A RID on a HWPT without IOMMU_HWPT_ALLOC_PASID keeps PASIDs away.
    let other = env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    env.replace(stdev, plain).unwrap();
    assert_eq!(attach(&env, stdev, PASID, other), Err(Errno::EINVAL));
}

#[test]
fn pasid_replace_keeps_the_old_hwpt_on_failure() {
    let env = Env::new();
    let (ioas, stdev, idev, rid_hwpt) = pasid_device(&env);
    let a = env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    let b = env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    let plain = env.hwpt_alloc(idev, ioas, 0).unwrap();

    assert_eq!(
        replace(&env, stdev, PASID, a),
        Err(Errno::EINVAL),
        "not attached"
    );
    attach(&env, stdev, PASID, a).unwrap();
    assert_eq!(
        replace(&env, stdev, PASID, ioas),
        Err(Errno::EINVAL),
        "an IOAS"
    );
    assert_eq!(
        replace(&env, stdev, PASID, plain),
        Err(Errno::EINVAL),
        "not compatible"
    );
    check(&env, stdev, PASID, a).unwrap();
    replace(&env, stdev, PASID, b).unwrap();
    check(&env, stdev, PASID, b).unwrap();
    env.destroy(a).expect("the replace gave A's user back");
    replace(&env, stdev, PASID, b).expect("to the same HWPT: nothing to do");

    // The mock fails every second attach of PASID 1024: a failed replace keeps the old HWPT.
    attach(&env, stdev, RESERVED_PASID, rid_hwpt).unwrap();
    assert_eq!(replace(&env, stdev, RESERVED_PASID, b), Err(Errno::ENOMEM));
    check(&env, stdev, RESERVED_PASID, rid_hwpt).unwrap();
    replace(&env, stdev, RESERVED_PASID, b).unwrap();
    check(&env, stdev, RESERVED_PASID, b).unwrap();
    detach(&env, stdev, RESERVED_PASID).unwrap();
    detach(&env, stdev, PASID).unwrap();
}

#[test]
fn pasids_need_a_pasid_capable_device() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (stdev, _, idev) = env.mock_domain(ioas).unwrap();
    let compat = env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_PASID).unwrap();
    env.replace(stdev, compat).unwrap();
    assert_eq!(attach(&env, stdev, PASID, compat), Err(Errno::EINVAL));
    assert_eq!(
        attach(&env, stdev, 0, compat),
        Err(Errno::EBUSY),
        "PASID 0 is the attached RID"
    );
}

#[test]
fn linux_6_12_has_no_pasid_attachments() {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (stdev, _, idev) = env
        .mock_domain_flags(ioas, MOCK_FLAGS_DEVICE_PASID)
        .unwrap();
    env.iommufd.set_kernel_version(KernelVersion::V6_12);
    assert_eq!(
        env.hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_PASID),
        Err(Errno::EOPNOTSUPP),
        "an unknown HWPT_ALLOC flag"
    );
    let hwpt = env.hwpt_alloc(idev, ioas, 0).unwrap();
    assert_eq!(attach(&env, stdev, PASID, hwpt), Err(Errno::EOPNOTSUPP));
    assert_eq!(check(&env, stdev, PASID, 0), Err(Errno::EOPNOTSUPP));
}
