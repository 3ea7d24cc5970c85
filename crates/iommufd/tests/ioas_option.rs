//! IOMMU_OPTION through the ioctl entry point: RLIMIT_MODE (per context, `CAP_SYS_RESOURCE`,
//! only on an empty context) and HUGE_PAGES (per IOAS), with the errno order of Linux 6.12's
//! `iommufd_option()`, `iommufd_option_rlimit_mode()` and `iommufd_ioas_option()`.

mod ioas_common;

use ioas_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::pages::RlimitMode;
use uiommu_iommufd::user_memory::PAGE_SIZE;

const GET: u16 = IOMMU_OPTION_OP_GET;
const SET: u16 = IOMMU_OPTION_OP_SET;
const RLIMIT: u32 = IOMMU_OPTION_RLIMIT_MODE;
const HUGE: u32 = IOMMU_OPTION_HUGE_PAGES;

#[test]
fn option_with_reserved_set_is_eopnotsupp() {
    let f = Fixture::new();
    let mut cmd = IommuOption {
        size: size_of::<IommuOption>() as u32,
        option_id: RLIMIT,
        op: GET,
        reserved: 1,
        ..Default::default()
    };
    assert_eq!(f.ioctl(IOMMU_OPTION, &mut cmd), Err(Errno::EOPNOTSUPP));
}

#[test]
fn unknown_option_is_eopnotsupp_even_for_a_bad_object() {
    let f = Fixture::new();
    let (_, result) = f.option(2, GET, 12345, 0);
    assert_eq!(result, Err(Errno::EOPNOTSUPP));
}

#[test]
fn rlimit_mode_defaults_to_user_on_dev_iommu() {
    let f = Fixture::new();
    let (cmd, result) = f.option(RLIMIT, GET, 0, 7);
    assert_eq!((result, cmd.val64), (Ok(0), 0));
    assert_eq!(f.ctx.rlimit_mode(), RlimitMode::User);
}

#[test]
fn rlimit_mode_defaults_to_mm_on_dev_vfio_vfio() {
    let f = Fixture::vfio();
    let (cmd, result) = f.option(RLIMIT, GET, 0, 7);
    assert_eq!((result, cmd.val64), (Ok(0), 1));
}

#[test]
fn rlimit_mode_with_an_object_id_is_eopnotsupp() {
    let f = Fixture::privileged();
    let (cmd, result) = f.option(RLIMIT, GET, 1, 7);
    assert_eq!(
        (result, cmd.val64),
        (Err(Errno::EOPNOTSUPP), 7),
        "val64 untouched"
    );
    let (_, result) = f.option(RLIMIT, SET, 1, 1);
    assert_eq!(result, Err(Errno::EOPNOTSUPP));
}

#[test]
fn rlimit_mode_set_without_cap_sys_resource_is_eperm() {
    let f = Fixture::new();
    let (_, result) = f.option(RLIMIT, SET, 0, 1);
    assert_eq!(result, Err(Errno::EPERM));
    let (_, result) = f.option(RLIMIT, SET, 0, 9);
    assert_eq!(
        result,
        Err(Errno::EPERM),
        "the capability is checked before the value"
    );
    assert_eq!(f.ctx.rlimit_mode(), RlimitMode::User);
}

#[test]
fn rlimit_mode_set_on_a_context_with_objects_is_ebusy() {
    let f = Fixture::privileged();
    let id = f.ioas_alloc();
    let (_, result) = f.option(RLIMIT, SET, 0, 1);
    assert_eq!(result, Err(Errno::EBUSY));
    let (_, result) = f.option(RLIMIT, SET, 0, 9);
    assert_eq!(
        result,
        Err(Errno::EBUSY),
        "busy is checked before the value"
    );
    f.destroy(id).unwrap();
    let (_, result) = f.option(RLIMIT, SET, 0, 1);
    assert_eq!(result, Ok(0));
}

#[test]
fn rlimit_mode_set_to_an_unknown_value_is_einval() {
    let f = Fixture::privileged();
    let (_, result) = f.option(RLIMIT, SET, 0, 2);
    assert_eq!(result, Err(Errno::EINVAL));
    assert_eq!(f.ctx.rlimit_mode(), RlimitMode::User);
}

#[test]
fn rlimit_mode_with_an_unknown_op_is_eopnotsupp() {
    let f = Fixture::privileged();
    let (_, result) = f.option(RLIMIT, 2, 0, 0);
    assert_eq!(result, Err(Errno::EOPNOTSUPP));
}

#[test]
fn rlimit_mode_mm_charges_pins_to_the_address_space() {
    let f = Fixture::privileged();
    let (_, result) = f.option(RLIMIT, SET, 0, 1);
    assert_eq!(result, Ok(0));
    let (cmd, _) = f.option(RLIMIT, GET, 0, 0);
    assert_eq!(cmd.val64, 1);
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::page());
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), buf.len(), 0x1000).unwrap();
    assert_eq!((f.policy.mm.pages(), f.policy.user.pages()), (2, 0));
    f.unmap(id, 0, u64::MAX).unwrap();
    assert_eq!(f.policy.mm.pages(), 0);
    f.destroy(id).unwrap();
    let (_, result) = f.option(RLIMIT, SET, 0, 0);
    assert_eq!(result, Ok(0), "back to user once the context is empty");
    assert_eq!(f.ctx.rlimit_mode(), RlimitMode::User);
}

#[test]
fn huge_pages_of_a_missing_object_is_enoent() {
    let f = Fixture::new();
    let (cmd, result) = f.option(HUGE, GET, 0, 7);
    assert_eq!((result, cmd.val64), (Err(Errno::ENOENT), 7));
    let (_, result) = f.option(HUGE, 2, 3, 0);
    assert_eq!(
        result,
        Err(Errno::ENOENT),
        "the lookup comes before the op check"
    );
}

#[test]
fn huge_pages_get_set_round_trip() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let (cmd, result) = f.option(HUGE, GET, id, 7);
    assert_eq!((result, cmd.val64), (Ok(0), 1));
    assert_eq!(f.option(HUGE, SET, id, 0).1, Ok(0));
    assert_eq!(f.option(HUGE, GET, id, 7).0.val64, 0);
    let (cmd, _, _) = f.iova_ranges(id, 1);
    assert_eq!(
        cmd.out_iova_alignment, PAGE_SIZE,
        "disabling large pages aligns to pages"
    );
    assert_eq!(f.option(HUGE, SET, id, 1).1, Ok(0));
    assert_eq!(f.option(HUGE, GET, id, 7).0.val64, 1);
    let (cmd, _, _) = f.iova_ranges(id, 1);
    assert_eq!(cmd.out_iova_alignment, 1);
}

#[test]
fn huge_pages_set_to_an_unknown_value_is_einval() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(f.option(HUGE, SET, id, 2).1, Err(Errno::EINVAL));
    assert_eq!(f.option(HUGE, 2, id, 0).1, Err(Errno::EOPNOTSUPP));
}

#[test]
fn huge_pages_of_a_non_ioas_object_is_enoent() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(f.option(HUGE, GET, id + 1, 0).1, Err(Errno::ENOENT));
}

#[test]
fn disabling_huge_pages_with_domains_and_areas_is_einval() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::page());
    assert_eq!(
        f.option(HUGE, SET, id, 0).1,
        Ok(0),
        "domains alone are fine"
    );
    assert_eq!(f.option(HUGE, SET, id, 1).1, Ok(0));
    let buf = Buffer::new(PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x1000).unwrap();
    assert_eq!(f.option(HUGE, SET, id, 0).1, Err(Errno::EINVAL));
    assert_eq!(f.option(HUGE, GET, id, 0).0.val64, 1);
}

#[test]
fn disabling_huge_pages_under_misaligned_areas_is_eaddrinuse() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), 0x800, 0x1800).unwrap();
    assert_eq!(f.option(HUGE, SET, id, 0).1, Err(Errno::EADDRINUSE));
    assert_eq!(f.option(HUGE, GET, id, 0).0.val64, 1, "nothing changed");
}

#[test]
fn option_writes_back_only_val64() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let mut cmd = IommuOption {
        size: size_of::<IommuOption>() as u32,
        option_id: HUGE,
        op: GET,
        object_id: id,
        val64: 9,
        ..Default::default()
    };
    let at = std::ptr::from_mut(&mut cmd) as u64;
    // The head of the struct is unwritable: a whole-struct response would fault.
    f.memory.refuse_writes(at, 16);
    assert_eq!(f.ioctl_raw(IOMMU_OPTION, at), Ok(0));
    f.memory.refuse_writes(0, 0);
    assert_eq!(cmd.val64, 1);
    f.memory.refuse_writes(at + 16, 8);
    assert_eq!(f.ioctl_raw(IOMMU_OPTION, at), Err(Errno::EFAULT));
    f.memory.refuse_writes(0, 0);
}
