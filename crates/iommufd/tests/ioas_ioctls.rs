//! IOMMU_IOAS_ALLOC, IOVA_RANGES, ALLOW_IOVAS, MAP, COPY and UNMAP through the ioctl entry
//! point: each success path and each errno of the kernel reference (§1.4), in the kernel's
//! check order. Expected values come from Linux 6.12's `ioas.c`, not from our code.

mod ioas_common;

use ioas_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::io_pagetable::{IovaRange, ReservedOwner};
use uiommu_iommufd::user_memory::PAGE_SIZE;

const FIXED: u32 = IOMMU_IOAS_MAP_FIXED_IOVA;

// ---------------------------------------------------------------------------------------------
// IOMMU_IOAS_ALLOC
// ---------------------------------------------------------------------------------------------

#[test]
fn ioas_alloc_hands_out_the_lowest_free_id() {
    let f = Fixture::new();
    assert_eq!(f.ioas_alloc(), 1);
    assert_eq!(f.ioas_alloc(), 2);
    assert_eq!(f.ioas_alloc(), 3);
    f.destroy(2).unwrap();
    assert_eq!(f.ioas_alloc(), 2, "a destroyed id is reused");
    assert_eq!(f.ctx.objects().len(), 3);
}

#[test]
fn ioas_alloc_with_flags_is_eopnotsupp() {
    let f = Fixture::new();
    let mut cmd = IommuIoasAlloc {
        size: size_of::<IommuIoasAlloc>() as u32,
        flags: 1,
        out_ioas_id: 0,
    };
    assert_eq!(f.ioctl(IOMMU_IOAS_ALLOC, &mut cmd), Err(Errno::EOPNOTSUPP));
    assert_eq!(cmd.out_ioas_id, 0, "nothing written back");
    assert!(f.ctx.objects().is_empty());
}

#[test]
fn ioas_alloc_with_unwritable_response_is_efault_and_publishes_nothing() {
    let f = Fixture::new();
    let mut cmd = IommuIoasAlloc {
        size: size_of::<IommuIoasAlloc>() as u32,
        ..Default::default()
    };
    let at = std::ptr::from_mut(&mut cmd) as u64;
    f.memory
        .refuse_writes(at, size_of::<IommuIoasAlloc>() as u64);
    assert_eq!(f.ioctl_raw(IOMMU_IOAS_ALLOC, at), Err(Errno::EFAULT));
    f.memory.refuse_writes(0, 0);
    assert!(f.ctx.objects().is_empty(), "the id was aborted");
    assert_eq!(f.ioas_alloc(), 1, "and is free again");
}

#[test]
fn destroying_an_ioas_in_use_by_a_lookup_is_ebusy() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let held = f.ioas(id);
    assert_eq!(f.destroy(id), Err(Errno::EBUSY));
    drop(held);
    f.destroy(id).unwrap();
    assert_eq!(f.destroy(id), Err(Errno::ENOENT));
}

// ---------------------------------------------------------------------------------------------
// IOMMU_IOAS_IOVA_RANGES
// ---------------------------------------------------------------------------------------------

#[test]
fn iova_ranges_of_a_fresh_ioas_is_everything_with_alignment_1() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let (cmd, ranges, result) = f.iova_ranges(id, 4);
    assert_eq!(result, Ok(0));
    assert_eq!(cmd.num_iovas, 1);
    assert_eq!(cmd.out_iova_alignment, 1);
    assert_eq!(ranges[0], (0, u64::MAX));
    assert_eq!(ranges[1], (0, 0), "entries past the count stay untouched");
}

#[test]
fn iova_ranges_reports_the_holes_of_a_domain_aperture_and_its_alignment() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::mock_like());
    let (cmd, ranges, result) = f.iova_ranges(id, 1);
    assert_eq!(result, Ok(0));
    assert_eq!(cmd.num_iovas, 1);
    assert_eq!(cmd.out_iova_alignment, MOCK_IO_PAGE_SIZE);
    assert_eq!(ranges, [(MOCK_APERTURE_START, MOCK_APERTURE_LAST)]);
}

#[test]
fn iova_ranges_too_small_is_emsgsize_with_the_count_written_back() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let ioas = f.ioas(id);
    ioas.iopt()
        .reserve_iova(IovaRange::new(0x1000, 0x1fff), ReservedOwner::Unowned)
        .unwrap();
    ioas.iopt()
        .reserve_iova(IovaRange::new(0x10000, 0x1ffff), ReservedOwner::Unowned)
        .unwrap();
    drop(ioas);
    let (cmd, ranges, result) = f.iova_ranges(id, 2);
    assert_eq!(result, Err(Errno::EMSGSIZE));
    assert_eq!(cmd.num_iovas, 3, "the total is written back");
    assert_eq!(cmd.out_iova_alignment, 1);
    assert_eq!(ranges, [(0, 0xfff), (0x2000, 0xffff)], "as many as fit");
    let (cmd, ranges, result) = f.iova_ranges(id, 3);
    assert_eq!(result, Ok(0));
    assert_eq!(cmd.num_iovas, 3);
    assert_eq!(ranges, [(0, 0xfff), (0x2000, 0xffff), (0x20000, u64::MAX)]);
    let (cmd, _, result) = f.iova_ranges(id, 0);
    assert_eq!((result, cmd.num_iovas), (Err(Errno::EMSGSIZE), 3));
}

#[test]
fn iova_ranges_ignores_allowed_ranges() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.allow_iovas(id, &[(0x10000, 0x1ffff)]).unwrap();
    let (cmd, ranges, result) = f.iova_ranges(id, 1);
    assert_eq!((result, cmd.num_iovas), (Ok(0), 1));
    assert_eq!(ranges, [(0, u64::MAX)]);
}

#[test]
fn iova_ranges_with_reserved_set_is_eopnotsupp() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let mut cmd = IommuIoasIovaRanges {
        size: size_of::<IommuIoasIovaRanges>() as u32,
        ioas_id: id,
        reserved: 1,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(IOMMU_IOAS_IOVA_RANGES, &mut cmd),
        Err(Errno::EOPNOTSUPP)
    );
    cmd.reserved = 0;
    cmd.ioas_id = id + 1;
    assert_eq!(
        f.ioctl(IOMMU_IOAS_IOVA_RANGES, &mut cmd),
        Err(Errno::ENOENT)
    );
}

#[test]
fn iova_ranges_into_an_unwritable_array_is_efault() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let mut cmd = IommuIoasIovaRanges {
        size: size_of::<IommuIoasIovaRanges>() as u32,
        ioas_id: id,
        num_iovas: 1,
        allowed_iovas: UNMAPPED_VA,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(IOMMU_IOAS_IOVA_RANGES, &mut cmd),
        Err(Errno::EFAULT)
    );
    assert_eq!(cmd.num_iovas, 1, "the struct is not written back");
}

// ---------------------------------------------------------------------------------------------
// IOMMU_IOAS_ALLOW_IOVAS
// ---------------------------------------------------------------------------------------------

#[test]
fn allowed_iovas_steer_automatic_placement() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    f.allow_iovas(id, &[(0x100_0000, 0x1ff_ffff), (0x40_0000, 0x4f_ffff)])
        .unwrap();
    let iova = f.map(id, RW, buf.addr(), PAGE_SIZE, 0).unwrap();
    assert!(
        (0x40_0000..0x50_0000).contains(&iova),
        "first fit in IOVA order: {iova:#x}"
    );
    f.allow_iovas(id, &[]).unwrap();
    let iova = f.map(id, RW, buf.addr(), PAGE_SIZE, 0).unwrap();
    assert_eq!(
        iova, PAGE_SIZE,
        "with no list, everything from page 1 up is allowed"
    );
}

#[test]
fn allowed_iovas_that_leave_no_room_give_enospc() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    f.allow_iovas(id, &[(0x10000, 0x11fff)]).unwrap();
    assert_eq!(
        f.map(id, RW, buf.addr(), 4 * PAGE_SIZE, 0),
        Err(Errno::ENOSPC)
    );
    assert_eq!(
        f.map_fixed(id, buf.addr(), 4 * PAGE_SIZE, 0x80000),
        Ok(0x80000),
        "fixed IOVAs are not limited by the allowed list"
    );
}

#[test]
fn allow_iovas_with_start_equal_to_last_is_einval() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(f.allow_iovas(id, &[(0x1000, 0x1000)]), Err(Errno::EINVAL));
    assert_eq!(f.allow_iovas(id, &[(0x2000, 0x1000)]), Err(Errno::EINVAL));
    assert!(f.ioas(id).iopt().allowed_iovas().is_empty());
}

#[test]
fn allow_iovas_with_overlapping_ranges_is_einval_and_keeps_the_old_list() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.allow_iovas(id, &[(0x1000, 0x1fff)]).unwrap();
    assert_eq!(
        f.allow_iovas(id, &[(0x10000, 0x1ffff), (0x8000, 0x10000)]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        f.allow_iovas(id, &[(0x10000, 0x1ffff), (0x1ffff, 0x2ffff)]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        f.ioas(id).iopt().allowed_iovas(),
        [IovaRange::new(0x1000, 0x1fff)]
    );
}

#[test]
fn allow_iovas_over_a_reservation_is_eaddrinuse_and_keeps_the_old_list() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::mock_like());
    f.allow_iovas(id, &[(MOCK_APERTURE_START, MOCK_APERTURE_START + 0xffff)])
        .unwrap();
    assert_eq!(
        f.allow_iovas(id, &[(0x1000, 0x1fff)]),
        Err(Errno::EADDRINUSE),
        "below the aperture is reserved"
    );
    assert_eq!(
        f.ioas(id).iopt().allowed_iovas(),
        [IovaRange::new(
            MOCK_APERTURE_START,
            MOCK_APERTURE_START + 0xffff
        )]
    );
}

#[test]
fn allow_iovas_blocks_later_reservations() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.allow_iovas(id, &[(0x1000, 0x1fff)]).unwrap();
    assert_eq!(
        f.ioas(id)
            .iopt()
            .reserve_iova(IovaRange::new(0x1800, 0x27ff), ReservedOwner::Unowned)
            .map_err(|e| e.errno()),
        Err(libc::EADDRINUSE)
    );
}

#[test]
fn allow_iovas_checks_reserved_then_id_then_the_array() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let mut cmd = IommuIoasAllowIovas {
        size: size_of::<IommuIoasAllowIovas>() as u32,
        ioas_id: id + 7,
        num_iovas: 1,
        reserved: 1,
        allowed_iovas: UNMAPPED_VA,
    };
    assert_eq!(
        f.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd),
        Err(Errno::EOPNOTSUPP)
    );
    cmd.reserved = 0;
    assert_eq!(
        f.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd),
        Err(Errno::ENOENT)
    );
    cmd.ioas_id = id;
    assert_eq!(
        f.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd),
        Err(Errno::EFAULT)
    );
    cmd.num_iovas = 0;
    assert_eq!(
        f.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd),
        Ok(0),
        "nothing to read"
    );
}

#[test]
fn allow_iovas_validates_elements_before_a_later_unreadable_one() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let mut array = vec![
        IommuIovaRange {
            start: 0x1000,
            last: 0x1fff,
        },
        IommuIovaRange { start: 5, last: 5 },
        IommuIovaRange {
            start: 0x8000,
            last: 0x8fff,
        },
    ];
    let base = array.as_mut_ptr() as u64;
    let element = size_of::<IommuIovaRange>() as u64;
    f.memory.refuse_reads(base + 2 * element, element);
    let mut cmd = IommuIoasAllowIovas {
        size: size_of::<IommuIoasAllowIovas>() as u32,
        ioas_id: id,
        num_iovas: 3,
        allowed_iovas: base,
        ..Default::default()
    };
    assert_eq!(
        f.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd),
        Err(Errno::EINVAL)
    );
    array[1] = IommuIovaRange {
        start: 0x4000,
        last: 0x4fff,
    };
    assert_eq!(
        f.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd),
        Err(Errno::EFAULT)
    );
    f.memory.refuse_reads(0, 0);
    assert_eq!(f.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd), Ok(0));
    assert_eq!(f.ioas(id).iopt().allowed_iovas().len(), 3);
}

#[test]
fn many_allowed_ranges_load_across_read_batches() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let ranges: Vec<(u64, u64)> = (0..1000u64)
        .rev()
        .map(|i| (i * 0x10000, i * 0x10000 + 0xfff))
        .collect();
    f.allow_iovas(id, &ranges).unwrap();
    let allowed = f.ioas(id).iopt().allowed_iovas();
    assert_eq!(allowed.len(), 1000);
    assert_eq!(allowed[0], IovaRange::new(0, 0xfff));
    assert_eq!(
        allowed[999],
        IovaRange::new(999 * 0x10000, 999 * 0x10000 + 0xfff)
    );
    let mut overlapping = ranges.clone();
    overlapping.push((0x5_0800, 0x5_0900));
    assert_eq!(f.allow_iovas(id, &overlapping), Err(Errno::EINVAL));
}

// ---------------------------------------------------------------------------------------------
// IOMMU_IOAS_MAP
// ---------------------------------------------------------------------------------------------

#[test]
fn map_fixed_places_the_area_exactly() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    assert_eq!(
        f.map_fixed(id, buf.addr(), buf.len(), 0x10_0000),
        Ok(0x10_0000)
    );
    assert_eq!(f.areas(id), [(0x10_0000, 4 * PAGE_SIZE)]);
    let area = &f.ioas(id).iopt().areas()[0];
    assert_eq!(area.uptr.0, buf.addr());
    assert_eq!(area.mm, f.mm());
}

#[test]
fn map_automatic_keeps_the_in_page_offset() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    let iova = f.map(id, RW, buf.addr() + 0x123, 0x100, 0).unwrap();
    assert_eq!(iova % PAGE_SIZE, 0x123);
    let iova2 = f
        .map(id, IOMMU_IOAS_MAP_READABLE, buf.addr() + 0x800, 0x800, 0)
        .unwrap();
    assert_eq!(iova2 % PAGE_SIZE, 0x800);
    assert_eq!(f.areas(id).len(), 2);
}

#[test]
fn map_without_a_domain_pins_nothing_and_accepts_unmapped_memory() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(f.map_fixed(id, UNMAPPED_VA, PAGE_SIZE, 0x1000), Ok(0x1000));
    assert_eq!(f.pins(), 0);
}

#[test]
fn map_with_a_domain_pins_and_maps_the_pages() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let domain = RecordingDomain::page();
    f.attach(id, &domain);
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), buf.len(), 0x40_0000).unwrap();
    assert_eq!(f.pins(), 4);
    assert_eq!(domain.translate(0x40_1000), Some(buf.addr() + 0x1000));
    assert_eq!(f.unmap(id, 0x40_0000, buf.len()), Ok(buf.len()));
    assert_eq!(f.pins(), 0);
    assert!(domain.entries().is_empty());
    assert!(domain.violations().is_empty());
}

#[test]
fn map_of_unmapped_memory_with_a_domain_is_efault() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::page());
    assert_eq!(
        f.map_fixed(id, UNMAPPED_VA, PAGE_SIZE, 0x1000),
        Err(Errno::EFAULT)
    );
    assert!(f.areas(id).is_empty());
}

#[test]
fn map_over_the_memlock_limit_is_enomem_and_unpins() {
    let f = Fixture::with_memlock_limit(2 * PAGE_SIZE);
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::page());
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    assert_eq!(
        f.map_fixed(id, buf.addr(), buf.len(), 0x1000),
        Err(Errno::ENOMEM)
    );
    assert_eq!(f.pins(), 0);
    assert_eq!(f.policy.user.pages(), 0);
    assert_eq!(
        f.map_fixed(id, buf.addr(), 2 * PAGE_SIZE, 0x1000),
        Ok(0x1000)
    );
    assert_eq!(f.policy.user.pages(), 2, "charged to the user by default");
    assert_eq!(f.policy.mm.pages(), 0);
}

#[test]
fn map_flag_and_reserved_checks_come_first() {
    let f = Fixture::new();
    let buf = Buffer::new(PAGE_SIZE as usize);
    // Unknown flag with every later check failing too: EOPNOTSUPP wins.
    assert_eq!(
        f.map(99, 1 << 3, buf.addr(), u64::MAX, u64::MAX),
        Err(Errno::EOPNOTSUPP)
    );
    let mut cmd = IommuIoasMap {
        size: size_of::<IommuIoasMap>() as u32,
        flags: RW,
        ioas_id: 99,
        reserved: 1,
        user_va: buf.addr(),
        length: PAGE_SIZE,
        iova: 0,
    };
    assert_eq!(f.ioctl(IOMMU_IOAS_MAP, &mut cmd), Err(Errno::EOPNOTSUPP));
}

#[test]
fn map_of_u64_max_iova_or_length_is_eoverflow_before_einval_and_enoent() {
    let f = Fixture::new();
    let buf = Buffer::new(PAGE_SIZE as usize);
    assert_eq!(
        f.map(99, 0, buf.addr(), PAGE_SIZE, u64::MAX),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(f.map(99, 0, buf.addr(), u64::MAX, 0), Err(Errno::EOVERFLOW));
    assert_eq!(
        f.map(99, 0, buf.addr(), PAGE_SIZE, 0),
        Err(Errno::EINVAL),
        "no R/W"
    );
    assert_eq!(f.map(99, RW, buf.addr(), PAGE_SIZE, 0), Err(Errno::ENOENT));
}

#[test]
fn map_of_an_id_that_is_not_an_ioas_is_enoent() {
    let f = Fixture::new();
    let buf = Buffer::new(PAGE_SIZE as usize);
    assert_eq!(f.map(0, RW, buf.addr(), PAGE_SIZE, 0), Err(Errno::ENOENT));
}

#[test]
fn map_of_zero_length_is_einval() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(PAGE_SIZE as usize);
    assert_eq!(f.map(id, RW, buf.addr(), 0, 0), Err(Errno::EINVAL));
    assert_eq!(f.map_fixed(id, buf.addr(), 0, 0x1000), Err(Errno::EINVAL));
}

#[test]
fn map_whose_user_range_wraps_is_eoverflow() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(
        f.map_fixed(id, u64::MAX - PAGE_SIZE + 1, 2 * PAGE_SIZE, 0x1000),
        Err(Errno::EOVERFLOW)
    );
}

#[test]
fn map_whose_fixed_range_wraps_is_eoverflow() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    assert_eq!(
        f.map_fixed(id, buf.addr(), 2 * PAGE_SIZE, u64::MAX - PAGE_SIZE + 1),
        Err(Errno::EOVERFLOW)
    );
}

#[test]
fn map_misaligned_to_the_ioas_alignment_is_einval() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::page());
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    assert_eq!(f.ioas(id).iopt().iova_alignment(), PAGE_SIZE);
    assert_eq!(
        f.map_fixed(id, buf.addr(), 0x800, 0x1000),
        Err(Errno::EINVAL),
        "length"
    );
    assert_eq!(
        f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x1800),
        Err(Errno::EINVAL),
        "iova"
    );
    assert_eq!(
        f.map_fixed(id, buf.addr() + 0x800, PAGE_SIZE, 0x1000),
        Err(Errno::EINVAL),
        "in-page offset"
    );
    assert_eq!(
        f.map(id, RW, buf.addr() + 0x800, PAGE_SIZE, 0),
        Err(Errno::EINVAL),
        "automatic alignment below the IOAS's"
    );
    assert!(f.areas(id).is_empty());
}

#[test]
fn map_fixed_into_a_reserved_range_is_einval() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    f.attach(id, &RecordingDomain::mock_like());
    let buf = Buffer::new(PAGE_SIZE as usize);
    assert_eq!(
        f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x1000),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        f.map_fixed(id, buf.addr(), PAGE_SIZE, MOCK_APERTURE_START),
        Ok(MOCK_APERTURE_START)
    );
}

#[test]
fn map_fixed_over_an_existing_area_is_eexist() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), 2 * PAGE_SIZE, 0x10000).unwrap();
    assert_eq!(
        f.map_fixed(id, buf.addr(), 2 * PAGE_SIZE, 0xf000),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x11000),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x12000),
        Ok(0x12000),
        "adjacent is fine"
    );
    assert_eq!(f.map_fixed(id, buf.addr(), PAGE_SIZE, 0xf000), Ok(0xf000));
}

#[test]
fn map_with_an_unwritable_response_is_efault_but_the_mapping_stays() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(PAGE_SIZE as usize);
    let mut cmd = IommuIoasMap {
        size: size_of::<IommuIoasMap>() as u32,
        flags: RW,
        ioas_id: id,
        user_va: buf.addr(),
        length: PAGE_SIZE,
        ..Default::default()
    };
    let at = std::ptr::from_mut(&mut cmd) as u64;
    f.memory.refuse_writes(at, size_of::<IommuIoasMap>() as u64);
    assert_eq!(f.ioctl_raw(IOMMU_IOAS_MAP, at), Err(Errno::EFAULT));
    f.memory.refuse_writes(0, 0);
    assert_eq!(f.areas(id).len(), 1, "as in Linux, the map is not undone");
}

// ---------------------------------------------------------------------------------------------
// IOMMU_IOAS_UNMAP
// ---------------------------------------------------------------------------------------------

#[test]
fn unmap_removes_whole_areas_and_reports_bytes() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    for i in 0..4 {
        f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x10000 + i * PAGE_SIZE)
            .unwrap();
    }
    assert_eq!(f.unmap(id, 0x11000, 2 * PAGE_SIZE), Ok(2 * PAGE_SIZE));
    assert_eq!(f.areas(id), [(0x10000, PAGE_SIZE), (0x13000, PAGE_SIZE)]);
    assert_eq!(
        f.unmap(id, 0, 0x20000),
        Ok(2 * PAGE_SIZE),
        "holes in the range are fine"
    );
    assert!(f.areas(id).is_empty());
}

#[test]
fn unmap_of_part_of_an_area_is_enoent_and_keeps_areas_removed_before_it() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), PAGE_SIZE, 0x10000).unwrap();
    f.map_fixed(id, buf.addr(), 2 * PAGE_SIZE, 0x11000).unwrap();
    assert_eq!(f.unmap(id, 0x11000, PAGE_SIZE), Err(Errno::ENOENT));
    assert_eq!(f.areas(id).len(), 2, "no splitting");
    assert_eq!(f.unmap(id, 0x10000, 2 * PAGE_SIZE), Err(Errno::ENOENT));
    assert_eq!(
        f.areas(id),
        [(0x11000, 2 * PAGE_SIZE)],
        "the first area is gone already"
    );
}

#[test]
fn unmap_of_nothing_is_enoent() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(f.unmap(id, 0x10000, PAGE_SIZE), Err(Errno::ENOENT));
}

#[test]
fn unmap_all_succeeds_even_when_empty() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    assert_eq!(f.unmap(id, 0, u64::MAX), Ok(0));
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), PAGE_SIZE, 0).unwrap();
    f.map_fixed(id, buf.addr(), 2 * PAGE_SIZE, u64::MAX - 2 * PAGE_SIZE + 1)
        .unwrap();
    assert_eq!(f.unmap(id, 0, u64::MAX), Ok(3 * PAGE_SIZE));
    assert!(f.areas(id).is_empty());
}

#[test]
fn unmap_looks_the_ioas_up_before_checking_the_range() {
    let f = Fixture::new();
    assert_eq!(f.unmap(5, u64::MAX, u64::MAX), Err(Errno::ENOENT));
    let id = f.ioas_alloc();
    assert_eq!(f.unmap(id, u64::MAX, 1), Err(Errno::EOVERFLOW));
    assert_eq!(f.unmap(id, 1, u64::MAX), Err(Errno::EOVERFLOW));
    assert_eq!(f.unmap(id, 0x1000, 0), Err(Errno::EINVAL));
    assert_eq!(f.unmap(id, u64::MAX - 1, 3), Err(Errno::EOVERFLOW));
}

// ---------------------------------------------------------------------------------------------
// IOMMU_IOAS_COPY
// ---------------------------------------------------------------------------------------------

#[test]
fn copy_shares_pages_without_pinning_twice() {
    let f = Fixture::new();
    let src = f.ioas_alloc();
    let dst = f.ioas_alloc();
    let (d1, d2) = (RecordingDomain::page(), RecordingDomain::page());
    f.attach(src, &d1);
    f.attach(dst, &d2);
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    f.map_fixed(src, buf.addr(), buf.len(), 0x10000).unwrap();
    assert_eq!(f.pins(), 4);
    let iova = f
        .copy(dst, src, RW | FIXED, 2 * PAGE_SIZE, 0x80000, 0x11000)
        .unwrap();
    assert_eq!(iova, 0x80000);
    assert_eq!(f.pins(), 4, "the copy shares the pinned pages");
    assert_eq!(d2.translate(0x80000), Some(buf.addr() + PAGE_SIZE));
    assert_eq!(f.unmap(src, 0, u64::MAX), Ok(4 * PAGE_SIZE));
    assert_eq!(f.pins(), 2, "the copy keeps its slice pinned");
    assert_eq!(d2.translate(0x81000), Some(buf.addr() + 2 * PAGE_SIZE));
    assert_eq!(f.unmap(dst, 0x80000, 2 * PAGE_SIZE), Ok(2 * PAGE_SIZE));
    assert_eq!(f.pins(), 0);
}

#[test]
fn copy_automatic_spans_contiguous_areas_and_keeps_the_offset() {
    let f = Fixture::new();
    let src = f.ioas_alloc();
    let dst = f.ioas_alloc();
    let buf = Buffer::new(4 * PAGE_SIZE as usize);
    f.map_fixed(src, buf.addr(), PAGE_SIZE, 0x10000).unwrap();
    f.map_fixed(src, buf.addr() + PAGE_SIZE, PAGE_SIZE, 0x11000)
        .unwrap();
    let iova = f
        .copy(dst, src, IOMMU_IOAS_MAP_READABLE, 0x1000, 0, 0x10800)
        .unwrap();
    assert_eq!(iova % PAGE_SIZE, 0x800);
    assert_eq!(
        f.areas(dst),
        [(iova, 0x800), (iova + 0x800, 0x800)],
        "one area per source slice"
    );
    let copy = f.copy(src, src, RW, PAGE_SIZE, 0, 0x10000).unwrap();
    assert_ne!(copy, 0x10000, "copy within one IOAS lands elsewhere");
}

#[test]
fn copy_flag_overflow_and_prot_checks_come_first() {
    let f = Fixture::new();
    assert_eq!(f.copy(9, 9, 1 << 5, u64::MAX, 0, 0), Err(Errno::EOPNOTSUPP));
    assert_eq!(f.copy(9, 9, RW, u64::MAX, 0, 0), Err(Errno::EOVERFLOW));
    assert_eq!(f.copy(9, 9, RW, 1, u64::MAX, 0), Err(Errno::EOVERFLOW));
    assert_eq!(f.copy(9, 9, RW, 1, 0, u64::MAX), Err(Errno::EOVERFLOW));
    assert_eq!(f.copy(9, 9, FIXED, 1, 0, 0), Err(Errno::EINVAL));
    assert_eq!(f.copy(9, 9, RW, 1, 0, 0), Err(Errno::ENOENT));
}

#[test]
fn copy_checks_the_source_range_before_the_destination_id() {
    let f = Fixture::new();
    let src = f.ioas_alloc();
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    f.map_fixed(src, buf.addr(), PAGE_SIZE, 0x10000).unwrap();
    f.map_fixed(src, buf.addr(), PAGE_SIZE, 0x12000).unwrap();
    assert_eq!(
        f.copy(77, src, RW, 0, 0, 0x10000),
        Err(Errno::EINVAL),
        "length 0"
    );
    assert_eq!(
        f.copy(77, src, RW, 3, 0, u64::MAX - 1),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(
        f.copy(77, src, RW, 2 * PAGE_SIZE, 0, 0x10000),
        Err(Errno::ENOENT),
        "hole"
    );
    assert_eq!(
        f.copy(77, src, RW, PAGE_SIZE, 0, 0x20000),
        Err(Errno::ENOENT),
        "nothing"
    );
    assert_eq!(
        f.copy(77, src, RW, PAGE_SIZE, 0, 0x10000),
        Err(Errno::ENOENT),
        "dst id"
    );
}

#[test]
fn copy_fixed_over_an_area_is_eexist() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    f.map_fixed(id, buf.addr(), 2 * PAGE_SIZE, 0x10000).unwrap();
    assert_eq!(
        f.copy(id, id, RW | FIXED, PAGE_SIZE, 0x11000, 0x10000),
        Err(Errno::EEXIST)
    );
}

#[test]
fn writable_copy_of_read_only_pages_is_eperm() {
    let f = Fixture::new();
    let src = f.ioas_alloc();
    let dst = f.ioas_alloc();
    let buf = Buffer::new(PAGE_SIZE as usize);
    f.map(
        src,
        IOMMU_IOAS_MAP_READABLE | FIXED,
        buf.addr(),
        PAGE_SIZE,
        0x10000,
    )
    .unwrap();
    assert_eq!(
        f.copy(dst, src, IOMMU_IOAS_MAP_WRITEABLE, PAGE_SIZE, 0, 0x10000),
        Err(Errno::EPERM)
    );
    assert!(f.areas(dst).is_empty());
    assert!(f
        .copy(dst, src, IOMMU_IOAS_MAP_READABLE, PAGE_SIZE, 0, 0x10000)
        .is_ok());
}

#[test]
fn copy_into_a_destination_with_larger_alignment_checks_the_offset() {
    let f = Fixture::new();
    let src = f.ioas_alloc();
    let dst = f.ioas_alloc();
    f.attach(dst, &RecordingDomain::page());
    let buf = Buffer::new(2 * PAGE_SIZE as usize);
    f.map_fixed(src, buf.addr() + 0x800, PAGE_SIZE, 0x10800)
        .unwrap();
    assert_eq!(
        f.copy(dst, src, RW | FIXED, PAGE_SIZE, 0x20000, 0x10800),
        Err(Errno::EINVAL)
    );
}
