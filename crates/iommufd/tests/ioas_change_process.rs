//! IOMMU_IOAS_CHANGE_PROCESS (Linux 7.3): its errno table while uiommu maps no files, and the
//! 6.12 answer (no such command).

mod ioas_common;

use ioas_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::user_memory::PAGE_SIZE;
use uiommu_iommufd::version::KernelVersion;

fn change_process(f: &Fixture, reserved: u32) -> Result<i32, Errno> {
    let mut cmd = IommuIoasChangeProcess {
        size: size_of::<IommuIoasChangeProcess>() as u32,
        reserved,
    };
    f.ioctl(IOMMU_IOAS_CHANGE_PROCESS, &mut cmd)
}

#[test]
fn change_process_refuses_memory_mappings_and_moves_nothing_else() {
    let f = Fixture::new();
    assert_eq!(change_process(&f, 1), Err(Errno::EOPNOTSUPP), "__reserved");
    assert_eq!(change_process(&f, 0), Ok(0), "no IOAS: nothing to move");
    let empty = f.ioas_alloc();
    let ioas = f.ioas_alloc();
    assert_eq!(change_process(&f, 0), Ok(0), "IOASes without areas");
    let buf = Buffer::new(PAGE_SIZE as usize);
    let iova = f.map(ioas, RW, buf.addr(), PAGE_SIZE, 0).unwrap();
    assert_eq!(
        change_process(&f, 0),
        Err(Errno::EINVAL),
        "a memory (not file) mapping"
    );
    f.unmap(ioas, iova, PAGE_SIZE).unwrap();
    assert_eq!(change_process(&f, 0), Ok(0));
    f.destroy(empty).unwrap();
}

#[test]
fn linux_6_12_has_no_change_process() {
    let f = Fixture::new();
    f.iommufd.set_kernel_version(KernelVersion::V6_12);
    assert_eq!(change_process(&f, 0), Err(Errno::ENOTTY));
    let mut short = IommuIoasChangeProcess {
        size: 4,
        reserved: 0,
    };
    assert_eq!(
        f.ioctl(IOMMU_IOAS_CHANGE_PROCESS, &mut short),
        Err(Errno::ENOTTY)
    );
    f.iommufd.set_kernel_version(KernelVersion::V7_3);
    assert_eq!(
        f.ioctl(IOMMU_IOAS_CHANGE_PROCESS, &mut short),
        Err(Errno::EINVAL),
        "7.3: shorter than __reserved's end"
    );
}
