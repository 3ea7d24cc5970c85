//! The VFIO type1 container ioctls on the iommufd file and IOMMU_VFIO_IOAS, through the ioctl
//! entry point, against Linux 6.12's `vfio_compat.c` (reference §1.8) and the selftest's VFIO
//! compat cases.

mod ioas_common;

use ioas_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::object::ObjId;
use uiommu_iommufd::user_memory::PAGE_SIZE;
use zerocopy::FromBytes;

fn vfio_ioas(f: &Fixture, op: u16, ioas_id: u32) -> (IommuVfioIoas, Result<i32, Errno>) {
    let mut cmd = IommuVfioIoas {
        size: size_of::<IommuVfioIoas>() as u32,
        ioas_id,
        op,
        reserved: 0,
    };
    let result = f.ioctl(IOMMU_VFIO_IOAS, &mut cmd);
    (cmd, result)
}

/// A fixture whose compat IOAS is a fresh IOAS chosen with IOMMU_VFIO_IOAS_SET.
fn with_compat_ioas() -> (Fixture, u32) {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_SET, id).1, Ok(0));
    (f, id)
}

fn map_dma(f: &Fixture, flags: u32, vaddr: u64, size: u64, iova: u64) -> Result<i32, Errno> {
    let mut cmd = VfioIommuType1DmaMap {
        argsz: size_of::<VfioIommuType1DmaMap>() as u32,
        flags,
        vaddr,
        iova,
        size,
    };
    f.ioctl(VFIO_IOMMU_MAP_DMA, &mut cmd)
}

fn unmap_dma(f: &Fixture, flags: u32, iova: u64, size: u64) -> (u64, Result<i32, Errno>) {
    let mut cmd = VfioIommuType1DmaUnmap {
        argsz: size_of::<VfioIommuType1DmaUnmap>() as u32,
        flags,
        iova,
        size,
    };
    let result = f.ioctl(VFIO_IOMMU_UNMAP_DMA, &mut cmd);
    (cmd.size, result)
}

const RW_DMA: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;

// ---------------------------------------------------------------------------------------------
// IOMMU_VFIO_IOAS
// ---------------------------------------------------------------------------------------------

#[test]
fn vfio_ioas_get_without_a_compat_ioas_is_enodev() {
    let f = Fixture::new();
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_GET, 0).1, Err(Errno::ENODEV));
}

#[test]
fn vfio_ioas_set_of_an_unknown_id_is_enoent() {
    let f = Fixture::new();
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_SET, 0).1, Err(Errno::ENOENT));
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_SET, 4).1, Err(Errno::ENOENT));
}

#[test]
fn vfio_ioas_set_get_clear_round_trip() {
    let (f, id) = with_compat_ioas();
    let (cmd, result) = vfio_ioas(&f, IOMMU_VFIO_IOAS_GET, 0);
    assert_eq!((result, cmd.ioas_id), (Ok(0), id));
    assert_eq!(f.ctx.vfio_compat_ioas_id(), Ok(ObjId(id)));
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_CLEAR, 0).1, Ok(0));
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_GET, 0).1, Err(Errno::ENODEV));
    assert_eq!(
        vfio_ioas(&f, IOMMU_VFIO_IOAS_CLEAR, 0).1,
        Ok(0),
        "clearing twice is fine"
    );
    f.destroy(id).unwrap();
}

#[test]
fn vfio_ioas_holds_no_reference_and_forgets_a_destroyed_ioas() {
    let (f, id) = with_compat_ioas();
    f.destroy(id).unwrap();
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_GET, 0).1, Err(Errno::ENODEV));
    assert_eq!(f.ioas_alloc(), id, "the id is reused...");
    assert_eq!(
        vfio_ioas(&f, IOMMU_VFIO_IOAS_GET, 0).1,
        Err(Errno::ENODEV),
        "...but the new IOAS is not the compat one"
    );
}

#[test]
fn vfio_ioas_with_reserved_or_unknown_op_is_eopnotsupp() {
    let f = Fixture::new();
    let mut cmd = IommuVfioIoas {
        size: size_of::<IommuVfioIoas>() as u32,
        op: IOMMU_VFIO_IOAS_CLEAR,
        reserved: 1,
        ..Default::default()
    };
    assert_eq!(f.ioctl(IOMMU_VFIO_IOAS, &mut cmd), Err(Errno::EOPNOTSUPP));
    assert_eq!(vfio_ioas(&f, 3, 0).1, Err(Errno::EOPNOTSUPP));
}

#[test]
fn compat_ioas_create_makes_one_ioas_once() {
    let f = Fixture::new();
    f.ctx.vfio_compat_ioas_create().unwrap();
    f.ctx.vfio_compat_ioas_create().unwrap();
    assert_eq!(f.ctx.objects().len(), 1);
    let (cmd, result) = vfio_ioas(&f, IOMMU_VFIO_IOAS_GET, 0);
    assert_eq!((result, cmd.ioas_id), (Ok(0), 1));
    f.destroy(1).unwrap();
    assert_eq!(f.ctx.vfio_compat_ioas_id(), Err(Errno::ENODEV));
    f.ctx.vfio_compat_ioas_create().unwrap();
    assert_eq!(f.ctx.vfio_compat_ioas_id(), Ok(ObjId(1)));
}

// ---------------------------------------------------------------------------------------------
// VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU, unknown numbers
// ---------------------------------------------------------------------------------------------

#[test]
fn api_version_is_0() {
    let f = Fixture::new();
    assert_eq!(f.ioctl_raw(VFIO_GET_API_VERSION, 0), Ok(0));
}

#[test]
fn check_extension_offers_type1_type1v2_and_unmap_all() {
    let f = Fixture::new();
    let check = |ext: u64| f.ioctl_raw(VFIO_CHECK_EXTENSION, ext);
    assert_eq!(check(VFIO_TYPE1_IOMMU.into()), Ok(1));
    assert_eq!(check(VFIO_TYPE1V2_IOMMU.into()), Ok(1));
    assert_eq!(check(VFIO_UNMAP_ALL.into()), Ok(1));
    assert_eq!(check(VFIO_NOIOMMU_IOMMU.into()), Ok(0));
    assert_eq!(check(VFIO_TYPE1_NESTING_IOMMU.into()), Ok(0));
    assert_eq!(check(VFIO_UPDATE_VADDR.into()), Ok(0));
    assert_eq!(check(VFIO_SPAPR_TCE_IOMMU.into()), Ok(0));
    assert_eq!(
        check((1 << 32) | u64::from(VFIO_TYPE1V2_IOMMU)),
        Ok(0),
        "the whole long counts"
    );
}

#[test]
fn check_extension_dma_cc_needs_a_compat_ioas() {
    let f = Fixture::new();
    let cc = u64::from(VFIO_DMA_CC_IOMMU);
    assert_eq!(f.ioctl_raw(VFIO_CHECK_EXTENSION, cc), Err(Errno::ENODEV));
    let (f, _) = with_compat_ioas();
    assert_eq!(
        f.ioctl_raw(VFIO_CHECK_EXTENSION, cc),
        Ok(1),
        "no HWPT that could refuse"
    );
}

#[test]
fn set_iommu_checks_the_type_before_the_compat_ioas() {
    let f = Fixture::new();
    assert_eq!(
        f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU.into()),
        Err(Errno::ENODEV)
    );
    assert_eq!(
        f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into()),
        Err(Errno::ENODEV)
    );
    assert_eq!(
        f.ioctl_raw(VFIO_SET_IOMMU, VFIO_SPAPR_TCE_IOMMU.into()),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        f.ioctl_raw(VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU.into()),
        Err(Errno::EINVAL)
    );
}

#[test]
fn set_iommu_type1_disables_huge_pages_and_type1v2_does_not() {
    let (f, id) = with_compat_ioas();
    assert_eq!(
        f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU.into()),
        Ok(0)
    );
    assert!(f.ioas(id).iopt().large_pages_enabled());
    assert_eq!(f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into()), Ok(0));
    assert!(!f.ioas(id).iopt().large_pages_enabled());
}

#[test]
fn set_iommu_type1_with_domains_and_areas_is_einval() {
    let (f, id) = with_compat_ioas();
    f.attach(id, &RecordingDomain::page());
    let buf = Buffer::new(PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x1000).unwrap();
    assert_eq!(
        f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into()),
        Err(Errno::EINVAL)
    );
}

#[test]
fn dirty_pages_and_unknown_vfio_numbers_are_enotty() {
    let (f, _) = with_compat_ioas();
    assert_eq!(f.ioctl_raw(VFIO_IOMMU_DIRTY_PAGES, 0), Err(Errno::ENOTTY));
    assert_eq!(
        f.ioctl_raw(io(IOMMUFD_TYPE, VFIO_BASE + 5), 0),
        Err(Errno::ENOTTY)
    );
    assert_eq!(
        f.ioctl_raw(io(b'x', VFIO_BASE), 0),
        Err(Errno::ENOTTY),
        "wrong type char"
    );
}

// ---------------------------------------------------------------------------------------------
// VFIO_IOMMU_MAP_DMA
// ---------------------------------------------------------------------------------------------

#[test]
fn map_dma_checks_argsz_and_flags_before_the_compat_ioas() {
    let f = Fixture::new();
    let buf = Buffer::new(PAGE_SIZE as usize);
    let mut cmd = VfioIommuType1DmaMap {
        argsz: 1,
        flags: 0,
        vaddr: buf.addr(),
        iova: MOCK_APERTURE_START,
        size: PAGE_SIZE,
    };
    assert_eq!(f.ioctl(VFIO_IOMMU_MAP_DMA, &mut cmd), Err(Errno::EINVAL));
    cmd.argsz = size_of::<VfioIommuType1DmaMap>() as u32;
    cmd.flags = 1 << 31;
    assert_eq!(f.ioctl(VFIO_IOMMU_MAP_DMA, &mut cmd), Err(Errno::EINVAL));
    cmd.flags = VFIO_DMA_MAP_FLAG_VADDR;
    assert_eq!(f.ioctl(VFIO_IOMMU_MAP_DMA, &mut cmd), Err(Errno::EINVAL));
    cmd.flags = RW_DMA;
    assert_eq!(f.ioctl(VFIO_IOMMU_MAP_DMA, &mut cmd), Err(Errno::ENODEV));
    assert_eq!(
        f.ioctl_raw(VFIO_IOMMU_MAP_DMA, UNMAPPED_VA),
        Err(Errno::EFAULT)
    );
}

#[test]
fn map_dma_maps_at_the_fixed_iova() {
    let (f, id) = with_compat_ioas();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    assert_eq!(map_dma(&f, RW_DMA, buf.addr(), buf.len(), 0x10_0000), Ok(0));
    assert_eq!(f.areas(id), [(0x10_0000, buf.len())]);
    assert_eq!(
        map_dma(&f, RW_DMA, buf.addr(), PAGE_SIZE, 0x10_1000),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        map_dma(&f, 0, buf.addr(), PAGE_SIZE, 0x20_0000),
        Ok(0),
        "flags 0 is accepted"
    );
    let areas = f.ioas(id).iopt().areas();
    assert!(areas[1].prot.is_empty());
}

#[test]
fn map_dma_on_dev_vfio_vfio_charges_the_address_space() {
    let f = Fixture::vfio();
    let id = f.ioas_alloc();
    assert_eq!(vfio_ioas(&f, IOMMU_VFIO_IOAS_SET, id).1, Ok(0));
    f.attach(id, &RecordingDomain::page());
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    assert_eq!(map_dma(&f, RW_DMA, buf.addr(), buf.len(), 0x1000), Ok(0));
    assert_eq!((f.policy.mm.pages(), f.policy.user.pages()), (2, 0));
}

// ---------------------------------------------------------------------------------------------
// VFIO_IOMMU_UNMAP_DMA
// ---------------------------------------------------------------------------------------------

#[test]
fn unmap_dma_checks_argsz_and_flags_before_the_compat_ioas() {
    let f = Fixture::new();
    let mut cmd = VfioIommuType1DmaUnmap {
        argsz: 1,
        flags: 0,
        iova: MOCK_APERTURE_START,
        size: PAGE_SIZE,
    };
    assert_eq!(f.ioctl(VFIO_IOMMU_UNMAP_DMA, &mut cmd), Err(Errno::EINVAL));
    cmd.argsz = size_of::<VfioIommuType1DmaUnmap>() as u32;
    cmd.flags = 1 << 31;
    assert_eq!(f.ioctl(VFIO_IOMMU_UNMAP_DMA, &mut cmd), Err(Errno::EINVAL));
    cmd.flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
    assert_eq!(f.ioctl(VFIO_IOMMU_UNMAP_DMA, &mut cmd), Err(Errno::EINVAL));
    cmd.flags = 0;
    assert_eq!(f.ioctl(VFIO_IOMMU_UNMAP_DMA, &mut cmd), Err(Errno::ENODEV));
    assert_eq!(
        f.ioctl_raw(VFIO_IOMMU_UNMAP_DMA, UNMAPPED_VA),
        Err(Errno::EFAULT)
    );
}

#[test]
fn unmap_dma_of_an_empty_range_succeeds_with_zero_bytes() {
    let (f, _) = with_compat_ioas();
    assert_eq!(unmap_dma(&f, 0, 0x1000, PAGE_SIZE), (0, Ok(0)));
}

#[test]
fn unmap_dma_of_zero_bytes_is_einval() {
    let (f, _) = with_compat_ioas();
    assert_eq!(unmap_dma(&f, 0, 0x1000, 0).1, Err(Errno::EINVAL));
}

#[test]
fn unmap_dma_all_needs_zero_iova_and_size() {
    let (f, id) = with_compat_ioas();
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    map_dma(&f, RW_DMA, buf.addr(), buf.len(), 0x1000).unwrap();
    map_dma(&f, RW_DMA, buf.addr(), PAGE_SIZE, 0x8000).unwrap();
    let all = VFIO_DMA_UNMAP_FLAG_ALL;
    assert_eq!(unmap_dma(&f, all, 0x1000, 0).1, Err(Errno::EINVAL));
    assert_eq!(
        unmap_dma(&f, all, 0, 5),
        (5, Err(Errno::EINVAL)),
        "size not written back"
    );
    assert_eq!(unmap_dma(&f, all, 0, 0), (3 * PAGE_SIZE, Ok(0)));
    assert!(f.areas(id).is_empty());
}

#[test]
fn unmap_dma_type1v2_refuses_to_cut_a_mapping() {
    let (f, id) = with_compat_ioas();
    f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU.into())
        .unwrap();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    map_dma(&f, RW_DMA, buf.addr(), buf.len(), 0x10000).unwrap();
    assert_eq!(
        unmap_dma(&f, 0, 0x11000, PAGE_SIZE),
        (0, Err(Errno::ENOENT))
    );
    assert_eq!(f.areas(id), [(0x10000, 4 * PAGE_SIZE)]);
    assert_eq!(
        unmap_dma(&f, 0, 0x10000, 4 * PAGE_SIZE),
        (4 * PAGE_SIZE, Ok(0))
    );
}

#[test]
fn unmap_dma_type1_cuts_mappings_at_the_range_edges() {
    let (f, id) = with_compat_ioas();
    f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into())
        .unwrap();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    map_dma(&f, RW_DMA, buf.addr(), buf.len(), 0x10000).unwrap();
    assert_eq!(
        unmap_dma(&f, 0, 0x11000, 2 * PAGE_SIZE),
        (2 * PAGE_SIZE, Ok(0))
    );
    assert_eq!(f.areas(id), [(0x10000, PAGE_SIZE), (0x13000, PAGE_SIZE)]);
    let areas = f.ioas(id).iopt().areas();
    assert_eq!(
        areas[1].uptr.0,
        buf.addr() + 3 * PAGE_SIZE,
        "the tail keeps its memory"
    );
}

#[test]
fn unmap_dma_type1_from_iova_0_needs_no_front_cut() {
    let (f, id) = with_compat_ioas();
    f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into())
        .unwrap();
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    map_dma(&f, RW_DMA, buf.addr(), buf.len(), 0).unwrap();
    assert_eq!(unmap_dma(&f, 0, 0, PAGE_SIZE), (PAGE_SIZE, Ok(0)));
    assert_eq!(f.areas(id), [(PAGE_SIZE, PAGE_SIZE)]);
}

#[test]
fn unmap_dma_type1_page_by_page_through_a_domain() {
    let (f, id) = with_compat_ioas();
    let domain = RecordingDomain::mock_like();
    f.attach(id, &domain);
    f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into())
        .unwrap();
    let pages = 16u64;
    let buf = Buffer::new((pages * PAGE_SIZE) as usize);
    map_dma(&f, RW_DMA, buf.addr(), buf.len(), MOCK_APERTURE_START).unwrap();
    assert_eq!(f.pins(), pages);
    // A fixed pseudo-random order (the selftest shuffles).
    let mut order: Vec<u64> = (0..pages).collect();
    let n = order.len();
    for i in 0..n {
        order.swap(i, (i * 7 + 3) % n);
    }
    for (done, page) in order.into_iter().enumerate() {
        let iova = MOCK_APERTURE_START + page * PAGE_SIZE;
        assert_eq!(unmap_dma(&f, 0, iova, PAGE_SIZE), (PAGE_SIZE, Ok(0)));
        let mapped: u64 = f.areas(id).iter().map(|&(_, length)| length).sum();
        assert_eq!(mapped, (pages - 1 - done as u64) * PAGE_SIZE);
        assert_eq!(domain.translate(iova), None);
    }
    assert!(domain.entries().is_empty());
    assert!(domain.violations().is_empty(), "{:?}", domain.violations());
    assert_eq!(f.pins(), 0);
}

// ---------------------------------------------------------------------------------------------
// VFIO_IOMMU_GET_INFO
// ---------------------------------------------------------------------------------------------

const INFO_SIZE: usize = size_of::<VfioIommuType1Info>();

/// Issue GET_INFO with `argsz` on a buffer filled with 0xAA past `argsz`, check nothing past
/// `argsz` was written, and return the buffer.
fn get_info(f: &Fixture, argsz: u32) -> (Vec<u8>, Result<i32, Errno>) {
    // Only the first 16 bytes are input; everything else starts as a canary.
    let mut buf = vec![0xAAu8; 512];
    buf[..16].fill(0);
    buf[..4].copy_from_slice(&argsz.to_le_bytes());
    let result = f.ioctl_raw(VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as u64);
    let end = (argsz as usize).max(16);
    assert!(
        buf[end..].iter().all(|&b| b == 0xAA),
        "wrote past argsz {argsz}"
    );
    (buf, result)
}

fn info_of(buf: &[u8]) -> VfioIommuType1Info {
    VfioIommuType1Info::read_from_prefix(buf).unwrap().0
}

#[test]
fn get_info_checks_argsz_before_the_compat_ioas() {
    let f = Fixture::new();
    assert_eq!(get_info(&f, 1).1, Err(Errno::EINVAL));
    assert_eq!(get_info(&f, 15).1, Err(Errno::EINVAL));
    assert_eq!(get_info(&f, INFO_SIZE as u32).1, Err(Errno::ENODEV));
    assert_eq!(
        f.ioctl_raw(VFIO_IOMMU_GET_INFO, UNMAPPED_VA),
        Err(Errno::EFAULT)
    );
}

#[test]
fn get_info_pre_cap_abi_gets_page_sizes_only() {
    let (f, _) = with_compat_ioas();
    let (buf, result) = get_info(&f, 16);
    assert_eq!(result, Ok(0));
    let info = info_of(&buf);
    assert_eq!(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert_eq!(
        info.iova_pgsizes,
        !(PAGE_SIZE - 1),
        "no domain: every size from a page up"
    );
    assert_eq!(info.argsz, 72, "the size the whole chain needs");
}

#[test]
fn get_info_reports_the_chain_size_then_the_chain() {
    let (f, id) = with_compat_ioas();
    f.attach(id, &RecordingDomain::mock_like());
    let (buf, result) = get_info(&f, INFO_SIZE as u32);
    assert_eq!(result, Ok(0));
    let info = info_of(&buf);
    // 24 + DMA_AVAIL (12, aligned to 16) + IOVA_RANGE (16 + one 16-byte range).
    assert_eq!(info.argsz, 72);
    assert_eq!(info.cap_offset, 0, "the chain did not fit");
    assert_eq!(
        info.iova_pgsizes, PAGE_SIZE,
        "2 KiB pages fold into PAGE_SIZE"
    );

    let (buf, result) = get_info(&f, 72);
    assert_eq!(result, Ok(0));
    let info = info_of(&buf);
    assert_eq!((info.argsz, info.cap_offset), (72, 24));
    let dma = VfioIommuType1InfoDmaAvail::read_from_prefix(&buf[24..])
        .unwrap()
        .0;
    assert_eq!(
        (
            dma.header.id,
            dma.header.version,
            dma.header.next,
            dma.avail
        ),
        (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 40, u32::MAX)
    );
    let iova = VfioIommuType1InfoCapIovaRange::read_from_prefix(&buf[40..])
        .unwrap()
        .0;
    assert_eq!(
        (
            iova.header.id,
            iova.header.version,
            iova.header.next,
            iova.nr_iovas
        ),
        (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0, 1)
    );
    let range = VfioIovaRange::read_from_prefix(&buf[56..]).unwrap().0;
    assert_eq!(
        (range.start, range.end),
        (MOCK_APERTURE_START, MOCK_APERTURE_LAST)
    );
}

#[test]
fn get_info_never_writes_a_corrupt_chain_for_any_argsz() {
    let (f, id) = with_compat_ioas();
    f.attach(id, &RecordingDomain::mock_like());
    for argsz in INFO_SIZE as u32..96 {
        let (buf, result) = get_info(&f, argsz);
        assert_eq!(result, Ok(0));
        let info = info_of(&buf);
        assert_eq!(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
        assert_eq!(info.argsz, 72);
        if info.cap_offset == 0 {
            assert!(argsz < 72);
            continue;
        }
        // Walk the chain as the selftest does.
        let mut at = info.cap_offset as usize;
        let mut seen = Vec::new();
        loop {
            let header = VfioInfoCapHeader::read_from_prefix(&buf[at..]).unwrap().0;
            seen.push(header.id);
            if header.next == 0 {
                break;
            }
            assert!(header.next as usize > at && header.next as usize + 8 <= argsz as usize);
            at = header.next as usize;
        }
        assert_eq!(
            seen,
            [
                VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
                VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
            ]
        );
    }
}

#[test]
fn get_info_with_room_for_only_the_first_capability_links_nothing() {
    let (f, _) = with_compat_ioas();
    let (buf, result) = get_info(&f, 40);
    assert_eq!(result, Ok(0));
    let dma = VfioIommuType1InfoDmaAvail::read_from_prefix(&buf[24..])
        .unwrap()
        .0;
    assert_eq!(dma.header.id, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
    assert_eq!(
        dma.header.next, 40,
        "the link is written once the next cap's start fits"
    );
    assert_eq!(info_of(&buf).cap_offset, 0);
    let (buf, _) = get_info(&f, 39);
    assert_eq!(
        VfioInfoCapHeader::read_from_prefix(&buf[24..])
            .unwrap()
            .0
            .next,
        0,
        "below 40 the link is not written"
    );
}

#[test]
fn get_info_page_sizes_follow_the_domains() {
    let (f, id) = with_compat_ioas();
    f.attach(id, &RecordingDomain::page());
    let (buf, _) = get_info(&f, 16);
    assert_eq!(info_of(&buf).iova_pgsizes, PAGE_SIZE | (2 << 20));
    f.attach(
        id,
        &RecordingDomain::new(
            PAGE_SIZE,
            uiommu_iommufd::io_pagetable::IovaRange::new(0, u64::MAX),
        ),
    );
    let (buf, _) = get_info(&f, 16);
    assert_eq!(
        info_of(&buf).iova_pgsizes,
        PAGE_SIZE,
        "the AND of every domain"
    );
}
