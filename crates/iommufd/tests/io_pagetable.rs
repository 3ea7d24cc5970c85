//! Behaviour and errno paths of the IOVA engine, one test per rejection where possible.

mod io_pagetable_common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_pagetable_common::{
    pattern, patterned_memory, source, source_with_limit, RecordingAccess, RecordingDomain,
};
use uiommu_core::addr::{Iova, Prot};
use uiommu_iommufd::io_pagetable::{
    AccessPath, IoPagetable, IoptError, IovaPlacement, IovaRange, ReservedOwner,
};
use uiommu_iommufd::pages::{fail_site, page_pin_count, total_pins, FaultInjector, RwBuf};
use uiommu_iommufd::user_memory::{ModelMemory, UserMemory, UserVa, PAGE_SIZE};

const BUF: u64 = 0x4000_0000;
const RW: Prot = Prot::READ_WRITE;

fn fixed(iova: u64) -> IovaPlacement {
    IovaPlacement::Fixed(Iova(iova))
}

fn read_iova(table: &IoPagetable, iova: u64, len: usize) -> Result<Vec<u8>, IoptError> {
    let mut buf = vec![0u8; len];
    table.access_rw(Iova(iova), RwBuf::Read(&mut buf), AccessPath::Direct)?;
    Ok(buf)
}

#[test]
fn map_rejects_bad_lengths_and_user_ranges() {
    let memory = patterned_memory(BUF, 4);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    let map = |uptr: u64, len: u64| {
        table.map_user_pages(&source, UserVa(uptr), len, RW, IovaPlacement::Auto)
    };
    assert_eq!(map(BUF, 0), Err(IoptError::InvalidLength));
    assert_eq!(
        map(BUF, u64::MAX - PAGE_SIZE + 1),
        Err(IoptError::InvalidLength)
    );
    assert_eq!(
        map(u64::MAX - PAGE_SIZE, 2 * PAGE_SIZE),
        Err(IoptError::Overflow)
    );
    assert_eq!(
        map(BUF, u64::MAX - PAGE_SIZE).unwrap_err().errno(),
        libc::EOVERFLOW,
        "auto length ≥ 2^63"
    );
    assert!(table.areas().is_empty());
}

#[test]
fn fixed_map_checks_alignment_overflow_reserved_and_overlap_in_order() {
    let memory = patterned_memory(BUF, 8);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    let domain = RecordingDomain::mock_like();
    table.add_domain(domain.as_mapper()).unwrap();
    assert_eq!(table.iova_alignment(), 2048);
    let map =
        |iova: u64, len: u64| table.map_user_pages(&source, UserVa(BUF), len, RW, fixed(iova));
    assert_eq!(
        map(0x100_0000, 1000),
        Err(IoptError::Misaligned),
        "length not a multiple of 2 KiB"
    );
    assert_eq!(
        map(0x100_0400, PAGE_SIZE),
        Err(IoptError::Misaligned),
        "iova not 2 KiB aligned"
    );
    assert_eq!(map(u64::MAX - 2047, PAGE_SIZE), Err(IoptError::Overflow));
    assert_eq!(
        map(0x80_0000, PAGE_SIZE),
        Err(IoptError::Reserved),
        "below the aperture"
    );
    assert_eq!(
        map(0x7fff_f800, PAGE_SIZE),
        Err(IoptError::Reserved),
        "straddles the aperture end"
    );
    assert_eq!(map(0x100_0000, 2 * PAGE_SIZE), Ok(Iova(0x100_0000)));
    assert_eq!(map(0x100_1800, PAGE_SIZE), Err(IoptError::AreaExists));
    assert_eq!(
        map(0x100_1800, PAGE_SIZE).unwrap_err().errno(),
        libc::EEXIST
    );
    assert_eq!(
        map(0x100_2000, PAGE_SIZE),
        Ok(Iova(0x100_2000)),
        "adjacent areas are fine"
    );
    assert!(domain.violations().is_empty());
}

#[test]
fn sub_page_offset_must_respect_the_alignment() {
    let memory = patterned_memory(BUF, 4);
    let (source, _) = source(&memory);
    let table = Arc::new(IoPagetable::new());
    let access = RecordingAccess::new(&table, true);
    table.add_access(PAGE_SIZE, access).unwrap();
    assert_eq!(
        table.map_user_pages(&source, UserVa(BUF + 0x800), PAGE_SIZE, RW, fixed(0x10000)),
        Err(IoptError::Misaligned)
    );
    assert_eq!(
        table.map_user_pages(
            &source,
            UserVa(BUF + 0x800),
            PAGE_SIZE,
            RW,
            IovaPlacement::Auto
        ),
        Err(IoptError::AutoAlignmentTooSmall),
        "natural alignment 2 KiB is below the access's 4 KiB"
    );
}

#[test]
fn auto_iova_keeps_the_in_page_offset_and_natural_alignment() {
    let memory = patterned_memory(BUF, 1024);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    let iova = table
        .map_user_pages(&source, UserVa(BUF + 0x123), 100, RW, IovaPlacement::Auto)
        .unwrap();
    assert_eq!(iova.0 % PAGE_SIZE, 0x123);
    assert!(iova.0 >= PAGE_SIZE, "IOVA page 0 is never chosen");
    let big = table
        .map_user_pages(&source, UserVa(BUF), 4 << 20, RW, IovaPlacement::Auto)
        .unwrap();
    assert_eq!(big.0 % (2 << 20), 0, "capped at the huge page size");
    let odd = table
        .map_user_pages(
            &source,
            UserVa(BUF + 3 * PAGE_SIZE),
            3 * PAGE_SIZE,
            RW,
            IovaPlacement::Auto,
        )
        .unwrap();
    assert_eq!(odd.0 % PAGE_SIZE, 0);
    assert_eq!(
        read_iova(&table, iova.0, 100).unwrap(),
        (0..100)
            .map(|i| pattern(BUF + 0x123 + i))
            .collect::<Vec<_>>()
    );
}

#[test]
fn auto_iova_avoids_reserved_and_stays_in_allowed_ranges() {
    let memory = patterned_memory(BUF, 16);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    table
        .reserve_iova(IovaRange::new(0, 0xf_ffff), ReservedOwner::Unowned)
        .unwrap();
    let auto = |len: u64| table.map_user_pages(&source, UserVa(BUF), len, RW, IovaPlacement::Auto);
    assert_eq!(auto(PAGE_SIZE), Ok(Iova(0x10_0000)));
    table
        .set_allowed_iovas(&[IovaRange::new(0x20_0000, 0x20_3fff)])
        .unwrap();
    assert_eq!(auto(2 * PAGE_SIZE), Ok(Iova(0x20_0000)));
    assert_eq!(auto(2 * PAGE_SIZE), Ok(Iova(0x20_2000)));
    assert_eq!(auto(PAGE_SIZE), Err(IoptError::NoSpace));
    assert_eq!(auto(PAGE_SIZE).unwrap_err().errno(), libc::ENOSPC);
}

#[test]
fn unmap_takes_whole_areas_only() {
    let memory = patterned_memory(BUF, 16);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    for i in 0..4u64 {
        table
            .map_user_pages(
                &source,
                UserVa(BUF + i * 2 * PAGE_SIZE),
                2 * PAGE_SIZE,
                RW,
                fixed(0x10000 + i * 2 * PAGE_SIZE),
            )
            .unwrap();
    }
    assert_eq!(
        table.unmap_iova(Iova(0x10000), 0),
        Err(IoptError::InvalidLength)
    );
    assert_eq!(
        table.unmap_iova(Iova(u64::MAX), 2),
        Err(IoptError::Overflow)
    );
    assert_eq!(
        table.unmap_iova(Iova(0x90000), PAGE_SIZE),
        Ok(0),
        "nothing there"
    );
    assert_eq!(
        table.unmap_iova(Iova(0x11000), PAGE_SIZE),
        Err(IoptError::NotMapped),
        "would cut an area"
    );
    assert_eq!(
        table.unmap_iova(Iova(0x10000), 3 * PAGE_SIZE),
        Err(IoptError::NotMapped),
        "second area sticks out"
    );
    assert_eq!(
        table.areas().len(),
        3,
        "the first area was unmapped before the error"
    );
    assert_eq!(
        table.unmap_iova(Iova(0x12000), 4 * PAGE_SIZE),
        Ok(4 * PAGE_SIZE)
    );
    assert_eq!(table.unmap_all(), Ok(2 * PAGE_SIZE));
    assert_eq!(table.unmap_all(), Ok(0), "unmap all of nothing succeeds");
}

#[test]
fn allowed_ranges_are_validated_and_conflict_with_reservations() {
    let table = IoPagetable::new();
    assert_eq!(
        table.set_allowed_iovas(&[IovaRange::new(5, 5)]),
        Err(IoptError::InvalidRange)
    );
    assert_eq!(
        table.set_allowed_iovas(&[IovaRange::new(0, 10), IovaRange::new(10, 20)]),
        Err(IoptError::InvalidRange)
    );
    table
        .reserve_iova(IovaRange::new(0x1000, 0x1fff), ReservedOwner::Device(7))
        .unwrap();
    table
        .set_allowed_iovas(&[IovaRange::new(0x3000, 0x3fff)])
        .unwrap();
    assert_eq!(
        table.set_allowed_iovas(&[IovaRange::new(0x1800, 0x2fff)]),
        Err(IoptError::AddressInUse)
    );
    assert_eq!(
        table.allowed_iovas(),
        vec![IovaRange::new(0x3000, 0x3fff)],
        "old list kept"
    );
    assert_eq!(
        table.reserve_iova(IovaRange::new(0x3800, 0x4fff), ReservedOwner::Unowned),
        Err(IoptError::AddressInUse)
    );
    let mock = RecordingDomain::mock_like();
    assert_eq!(
        table.add_domain(mock.as_mapper()),
        Err(IoptError::AddressInUse),
        "aperture vs allowed"
    );
    assert!(
        table.iova_ranges().iter().any(|r| r.start.0 == 0x2000),
        "domain reservation rolled back"
    );
    table.set_allowed_iovas(&[]).unwrap();
    table.add_domain(mock.as_mapper()).unwrap();
}

#[test]
fn iova_ranges_are_the_holes_of_the_reservations() {
    let table = IoPagetable::new();
    assert_eq!(table.iova_ranges(), vec![IovaRange::new(0, u64::MAX)]);
    let domain = RecordingDomain::mock_like();
    table.add_domain(domain.as_mapper()).unwrap();
    assert_eq!(
        table.iova_ranges(),
        vec![IovaRange::new(0x100_0000, 0x7fff_ffff)]
    );
    table
        .reserve_iova(
            IovaRange::new(0x200_0000, 0x2ff_ffff),
            ReservedOwner::Device(1),
        )
        .unwrap();
    table
        .reserve_iova(
            IovaRange::new(0x280_0000, 0x3ff_ffff),
            ReservedOwner::Device(2),
        )
        .unwrap();
    assert_eq!(
        table.iova_ranges(),
        vec![
            IovaRange::new(0x100_0000, 0x1ff_ffff),
            IovaRange::new(0x400_0000, 0x7fff_ffff)
        ]
    );
    table.remove_reserved(ReservedOwner::Device(2));
    table.remove_domain(&domain.as_mapper());
    assert_eq!(
        table.iova_ranges(),
        vec![
            IovaRange::new(0, 0x1ff_ffff),
            IovaRange::new(0x300_0000, u64::MAX)
        ]
    );
}

#[test]
fn reserve_regions_is_all_or_nothing() {
    let memory = patterned_memory(BUF, 1);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    table
        .map_user_pages(&source, UserVa(BUF), PAGE_SIZE, RW, fixed(0x5000))
        .unwrap();
    let regions = [
        IovaRange::new(0x1000, 0x1fff),
        IovaRange::new(0x5000, 0x5fff),
    ];
    assert_eq!(
        table.reserve_regions(&regions, ReservedOwner::Device(3)),
        Err(IoptError::AddressInUse)
    );
    assert_eq!(table.iova_ranges(), vec![IovaRange::new(0, u64::MAX)]);
    let failing =
        IoPagetable::with_injector(FaultInjector::with_hook(|s| s == fail_site::ENFORCE_RESV));
    assert_eq!(
        failing
            .reserve_regions(&regions[..1], ReservedOwner::Device(3))
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
}

#[test]
fn map_without_domain_pins_nothing_and_attach_pins_once() {
    let memory = patterned_memory(BUF, 8);
    let (source, policy) = source(&memory);
    let table = IoPagetable::new();
    table
        .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    assert_eq!(total_pins(memory.mm()), 0);
    let first = RecordingDomain::page();
    let second = RecordingDomain::page();
    table.add_domain(first.as_mapper()).unwrap();
    table.add_domain(second.as_mapper()).unwrap();
    assert_eq!(
        page_pin_count(memory.mm(), UserVa(BUF)),
        1,
        "pinned once for two domains"
    );
    assert_eq!(total_pins(memory.mm()), 4);
    assert_eq!(policy.user.pages(), 4);
    for domain in [&first, &second] {
        assert_eq!(domain.translate(0x10000 + 5), Some(BUF + 5));
        assert_eq!(
            domain.entries().len(),
            1,
            "one map call for the contiguous run"
        );
    }
    assert!(table.remove_domain(&first.as_mapper()));
    assert_eq!(total_pins(memory.mm()), 4, "second domain still holds them");
    assert!(first.entries().is_empty());
    assert!(table.remove_domain(&second.as_mapper()));
    assert!(!table.remove_domain(&second.as_mapper()));
    assert_eq!(total_pins(memory.mm()), 0);
    assert_eq!(policy.user.pages(), 0);
    assert!(first.violations().is_empty() && second.violations().is_empty());
}

#[test]
fn lazy_map_of_bad_memory_fails_at_attach_and_leaves_the_domain_untouched() {
    let memory = patterned_memory(BUF, 4);
    memory.unmap(UserVa(BUF + 2 * PAGE_SIZE), PAGE_SIZE);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    table
        .map_user_pages(&source, UserVa(BUF), PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x20000))
        .unwrap();
    let domain = RecordingDomain::mock_like();
    let err = table.add_domain(domain.as_mapper()).unwrap_err();
    assert_eq!(
        err,
        IoptError::AddressInUse,
        "areas below the mock aperture"
    );
    let domain = RecordingDomain::page();
    let err = table.add_domain(domain.as_mapper()).unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    assert!(
        domain.entries().is_empty(),
        "first area was filled then rolled back"
    );
    assert_eq!(total_pins(memory.mm()), 0);
    assert_eq!(table.domain_count(), 0);
    assert_eq!(table.iova_alignment(), 1);
    let with_domain = IoPagetable::new();
    with_domain
        .add_domain(RecordingDomain::page().as_mapper())
        .unwrap();
    let err = with_domain
        .map_user_pages(
            &source,
            UserVa(BUF + PAGE_SIZE),
            2 * PAGE_SIZE,
            RW,
            IovaPlacement::Auto,
        )
        .unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT, "half-way hole");
    assert!(with_domain.areas().is_empty());
    assert_eq!(total_pins(memory.mm()), 0);
}

#[test]
fn add_domain_checks_page_size_and_alignment() {
    let memory = patterned_memory(BUF, 4);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    let huge_only = RecordingDomain::new(2 << 20, IovaRange::new(0, u64::MAX));
    assert_eq!(
        table.add_domain(huge_only.as_mapper()),
        Err(IoptError::UnsupportedPageSize)
    );
    let empty = RecordingDomain::new(0, IovaRange::new(0, u64::MAX));
    assert_eq!(
        table.add_domain(empty.as_mapper()),
        Err(IoptError::UnsupportedPageSize)
    );
    table
        .map_user_pages(&source, UserVa(BUF + 0x800), 0x800, RW, fixed(0x10800))
        .unwrap();
    let domain = RecordingDomain::page();
    assert_eq!(
        table.add_domain(domain.as_mapper()),
        Err(IoptError::AddressInUse)
    );
    table.unmap_all().unwrap();
    table.add_domain(domain.as_mapper()).unwrap();
    assert_eq!(
        table.add_domain(domain.as_mapper()),
        Err(IoptError::DomainExists)
    );
}

#[test]
fn domain_map_failure_unwinds_every_domain_and_pin() {
    let memory = patterned_memory(BUF, 8);
    let (source, policy) = source(&memory);
    let table = IoPagetable::new();
    let good = RecordingDomain::page();
    let bad = RecordingDomain::page();
    table.add_domain(good.as_mapper()).unwrap();
    table.add_domain(bad.as_mapper()).unwrap();
    bad.fail_maps_from(0x20000);
    table
        .map_user_pages(&source, UserVa(BUF), PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    let err = table
        .map_user_pages(
            &source,
            UserVa(BUF + PAGE_SIZE),
            2 * PAGE_SIZE,
            RW,
            fixed(0x20000),
        )
        .unwrap_err();
    assert_eq!(
        err.errno(),
        libc::ENOENT,
        "the driver's errno passes through"
    );
    assert_eq!(good.entries().len(), 1);
    assert_eq!(total_pins(memory.mm()), 1);
    assert_eq!(policy.user.pages(), 1);
    assert_eq!(table.areas().len(), 1);
    let third = RecordingDomain::page();
    third.fail_maps_from(0);
    assert_eq!(
        table.add_domain(third.as_mapper()).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(table.domain_count(), 2);
}

#[test]
fn rlimit_memlock_bounds_pins_and_failure_leaves_none() {
    let memory = patterned_memory(BUF, 8);
    let (source, policy) = source_with_limit(&memory, 3 * PAGE_SIZE);
    let table = IoPagetable::new();
    table
        .add_domain(RecordingDomain::page().as_mapper())
        .unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), 2 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    let err = table
        .map_user_pages(
            &source,
            UserVa(BUF + 2 * PAGE_SIZE),
            2 * PAGE_SIZE,
            RW,
            fixed(0x20000),
        )
        .unwrap_err();
    assert_eq!(err, IoptError::NoMemory);
    assert_eq!(policy.user.pages(), 2);
    assert_eq!(total_pins(memory.mm()), 2);
    table
        .map_user_pages(
            &source,
            UserVa(BUF + 2 * PAGE_SIZE),
            PAGE_SIZE,
            RW,
            fixed(0x20000),
        )
        .unwrap();
    assert_eq!(policy.user.pages(), 3);
}

#[test]
fn copy_shares_pages_and_survives_the_source_unmap() {
    let memory = patterned_memory(BUF, 8);
    let (source, policy) = source(&memory);
    let src = IoPagetable::new();
    let dst = IoPagetable::new();
    let src_domain = RecordingDomain::page();
    let dst_domain = RecordingDomain::page();
    src.add_domain(src_domain.as_mapper()).unwrap();
    dst.add_domain(dst_domain.as_mapper()).unwrap();
    src.map_user_pages(&source, UserVa(BUF), 2 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    src.map_user_pages(
        &source,
        UserVa(BUF + 4 * PAGE_SIZE),
        2 * PAGE_SIZE,
        Prot::READ,
        fixed(0x12000),
    )
    .unwrap();
    assert_eq!(
        src.get_pages(Iova(0x10000), 0).unwrap_err(),
        IoptError::InvalidLength
    );
    assert_eq!(
        src.get_pages(Iova(u64::MAX), 2).unwrap_err(),
        IoptError::Overflow
    );
    assert_eq!(
        src.get_pages(Iova(0x11000), 4 * PAGE_SIZE).unwrap_err(),
        IoptError::NotMapped,
        "ends past the areas"
    );
    assert_eq!(
        src.get_pages(Iova(0xf000), 2 * PAGE_SIZE).unwrap_err(),
        IoptError::NotMapped,
        "starts in a hole"
    );

    let list = src.get_pages(Iova(0x11000), 2 * PAGE_SIZE).unwrap();
    assert_eq!(list.length(), 2 * PAGE_SIZE);
    assert_eq!(
        dst.map_pages(&list, RW, IovaPlacement::Auto).unwrap_err(),
        IoptError::ReadOnlyPages
    );
    let iova = dst.map_pages(&list, Prot::READ, fixed(0x40000)).unwrap();
    assert_eq!(iova, Iova(0x40000));
    assert_eq!(dst.areas().len(), 2, "one area per source area");
    assert_eq!(total_pins(memory.mm()), 4, "no second pin");
    assert_eq!(policy.user.pages(), 4, "no second charge");
    assert_eq!(src.unmap_all(), Ok(4 * PAGE_SIZE));
    assert_eq!(
        total_pins(memory.mm()),
        2,
        "the copy keeps its pages pinned"
    );
    let expected: Vec<u8> = (0..2 * PAGE_SIZE)
        .map(|i| {
            pattern(
                BUF + PAGE_SIZE
                    + if i < PAGE_SIZE {
                        i
                    } else {
                        3 * PAGE_SIZE + i - PAGE_SIZE
                    },
            )
        })
        .collect();
    assert_eq!(
        read_iova(&dst, 0x40000, 2 * PAGE_SIZE as usize).unwrap(),
        expected
    );
    assert_eq!(dst_domain.translate(0x41000), Some(BUF + 4 * PAGE_SIZE));
    dst.unmap_all().unwrap();
    assert_eq!(total_pins(memory.mm()), 0);
    assert_eq!(policy.user.pages(), 0);
}

#[test]
fn huge_pages_option_maps_page_by_page() {
    let memory = patterned_memory(BUF, 8);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    assert!(table.large_pages_enabled());
    table
        .map_user_pages(&source, UserVa(BUF + 0x800), 0x800, RW, fixed(0x10800))
        .unwrap();
    assert_eq!(
        table.disable_large_pages(),
        Err(IoptError::AddressInUse),
        "area not page aligned"
    );
    assert!(table.large_pages_enabled());
    table.unmap_all().unwrap();
    table.disable_large_pages().unwrap();
    assert_eq!(table.iova_alignment(), PAGE_SIZE);
    let domain = RecordingDomain::page();
    table.add_domain(domain.as_mapper()).unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    assert_eq!(domain.entries().len(), 4, "one map per page");
    table.enable_large_pages();
    assert_eq!(table.disable_large_pages(), Err(IoptError::LargePagesInUse));
    assert_eq!(table.unmap_all(), Ok(4 * PAGE_SIZE));
    assert!(domain.entries().is_empty());
    assert!(
        domain.violations().is_empty(),
        "one unmap covered the four page maps"
    );
}

#[test]
fn access_pins_block_unmap_until_released() {
    let memory = patterned_memory(BUF, 8);
    let (source, _) = source(&memory);
    let table = Arc::new(IoPagetable::new());
    let access = RecordingAccess::new(&table, true);
    let id = table.add_access(PAGE_SIZE, access.clone()).unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    let pfns = access.pin(0x11000, 2 * PAGE_SIZE, true).unwrap();
    assert_eq!(
        pfns,
        vec![UserVa(BUF + PAGE_SIZE), UserVa(BUF + 2 * PAGE_SIZE)]
    );
    assert_eq!(page_pin_count(memory.mm(), UserVa(BUF + PAGE_SIZE)), 1);
    assert_eq!(
        page_pin_count(memory.mm(), UserVa(BUF)),
        0,
        "no domain: only the access pins"
    );
    assert_eq!(table.unmap_all(), Ok(4 * PAGE_SIZE));
    assert_eq!(access.notifications.load(Ordering::Relaxed), 1);
    assert_eq!(total_pins(memory.mm()), 0);
    assert!(table.remove_access(id));
    assert!(!table.remove_access(id));
}

#[test]
fn an_access_that_never_unpins_gets_edeadlock() {
    let memory = patterned_memory(BUF, 2);
    let (source, _) = source(&memory);
    let table = Arc::new(IoPagetable::new());
    let access = RecordingAccess::new(&table, false);
    table.add_access(PAGE_SIZE, access.clone()).unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    access.pin(0x10000, PAGE_SIZE, false).unwrap();
    let err = table.unmap_iova(Iova(0x10000), PAGE_SIZE).unwrap_err();
    assert_eq!(err, IoptError::AccessDeadlock);
    assert_eq!(err.errno(), libc::EDEADLOCK);
    assert_eq!(access.notifications.load(Ordering::Relaxed), 101);
    assert_eq!(
        access.pin(0x10000, PAGE_SIZE, false).unwrap_err(),
        IoptError::AccessRange,
        "prevent_access"
    );
    assert_eq!(table.access_unpin_pages(Iova(0x10000), PAGE_SIZE), Ok(()));
    assert_eq!(table.unmap_iova(Iova(0x10000), PAGE_SIZE), Ok(PAGE_SIZE));
    assert_eq!(total_pins(memory.mm()), 0);
}

#[test]
fn access_pin_checks_range_alignment_protection_and_gaps() {
    let memory = patterned_memory(BUF, 8);
    let (source, _) = source(&memory);
    let table = Arc::new(IoPagetable::new());
    let access = RecordingAccess::new(&table, true);
    table.add_access(PAGE_SIZE, access.clone()).unwrap();
    table
        .map_user_pages(
            &source,
            UserVa(BUF),
            2 * PAGE_SIZE,
            Prot::READ,
            fixed(0x10000),
        )
        .unwrap();
    table
        .map_user_pages(
            &source,
            UserVa(BUF + 4 * PAGE_SIZE),
            PAGE_SIZE,
            RW,
            fixed(0x13000),
        )
        .unwrap();
    let pin = |iova: u64, len: u64, write: bool| table.access_pin_pages(Iova(iova), len, write);
    assert_eq!(pin(0x10000, 0, false), Err(IoptError::InvalidLength));
    assert_eq!(pin(u64::MAX, 2, false), Err(IoptError::Overflow));
    assert_eq!(
        pin(0x10800, 0x800, false),
        Err(IoptError::AccessRange),
        "not page aligned"
    );
    assert_eq!(pin(0x10000, PAGE_SIZE, true), Err(IoptError::ReadOnlyPages));
    assert_eq!(
        pin(0x10000, 4 * PAGE_SIZE, false),
        Err(IoptError::NotMapped),
        "gap after the first area"
    );
    assert_eq!(
        total_pins(memory.mm()),
        0,
        "the first area's pin was undone"
    );
    assert_eq!(pin(0x20000, PAGE_SIZE, false), Err(IoptError::NotMapped));
    pin(0x10000, 0x1800, false).unwrap();
    assert_eq!(
        table.access_unpin_pages(Iova(0x10000), PAGE_SIZE),
        Err(IoptError::NotMapped),
        "not the pinned range"
    );
    table.access_unpin_pages(Iova(0x10000), 0x1800).unwrap();
    assert_eq!(total_pins(memory.mm()), 0);
}

#[test]
fn access_rw_copies_through_user_memory_and_checks_permissions() {
    let memory = patterned_memory(BUF, 8);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    table
        .map_user_pages(
            &source,
            UserVa(BUF + 100),
            PAGE_SIZE,
            RW,
            fixed(0x10000 + 100),
        )
        .unwrap();
    table
        .map_user_pages(
            &source,
            UserVa(BUF + 100 + PAGE_SIZE),
            PAGE_SIZE,
            Prot::READ,
            fixed(0x11000 + 100),
        )
        .unwrap();
    let data = vec![0xabu8; 300];
    table
        .access_rw(
            Iova(0x10000 + 100 + PAGE_SIZE - 150),
            RwBuf::Write(&data[..150]),
            AccessPath::Slow,
        )
        .unwrap();
    let mut back = [0u8; 150];
    memory
        .read(UserVa(BUF + 100 + PAGE_SIZE - 150), &mut back)
        .unwrap();
    assert_eq!(back, [0xab; 150]);
    let across = read_iova(&table, 0x10000 + 100 + PAGE_SIZE - 10, 20).unwrap();
    assert_eq!(&across[..10], &[0xab; 10]);
    assert_eq!(across[10], pattern(BUF + 100 + PAGE_SIZE));
    let err = table.access_rw(Iova(0x11000 + 100), RwBuf::Write(&data), AccessPath::Direct);
    assert_eq!(err, Err(IoptError::ReadOnlyPages));
    assert_eq!(
        table.access_rw(Iova(0x10000), RwBuf::Write(&data), AccessPath::Direct),
        Err(IoptError::NotMapped)
    );
    assert_eq!(
        table.access_rw(Iova(0x10100), RwBuf::Write(&[]), AccessPath::Direct),
        Err(IoptError::InvalidLength)
    );
    memory.unmap(UserVa(BUF), 8 * PAGE_SIZE);
    assert_eq!(
        read_iova(&table, 0x10000 + 100, 10).unwrap_err().errno(),
        libc::EFAULT
    );
    let failing = IoPagetable::with_injector(FaultInjector::with_hook(|s| s == fail_site::RW_PAGE));
    let memory = patterned_memory(BUF, 1);
    let (source, _) = io_pagetable_common::source(&memory);
    failing
        .map_user_pages(&source, UserVa(BUF), PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    let mut one = [0u8; 1];
    assert_eq!(
        failing.access_rw(Iova(0x10000), RwBuf::Read(&mut one), AccessPath::Slow),
        Err(IoptError::Injected)
    );
    assert_eq!(
        failing.access_rw(Iova(0x10000), RwBuf::Read(&mut one), AccessPath::Direct),
        Ok(())
    );
}

#[test]
fn adding_an_access_raises_the_alignment_or_fails() {
    let memory = patterned_memory(BUF, 2);
    let (source, _) = source(&memory);
    let table = Arc::new(IoPagetable::new());
    table
        .map_user_pages(&source, UserVa(BUF + 0x10), 0x20, RW, fixed(0x10010))
        .unwrap();
    let access = RecordingAccess::new(&table, true);
    assert_eq!(
        table.add_access(PAGE_SIZE, access.clone()).unwrap_err(),
        IoptError::AddressInUse
    );
    let id = table.add_access(1, access.clone()).unwrap();
    assert_eq!(table.iova_alignment(), 1);
    table.unmap_all().unwrap();
    let paged = table.add_access(PAGE_SIZE, access).unwrap();
    assert_eq!(table.iova_alignment(), PAGE_SIZE);
    assert!(table.remove_access(paged));
    assert_eq!(table.iova_alignment(), 1, "alignment shrinks back");
    assert!(table.remove_access(id));
}

#[test]
fn cut_iova_splits_for_vfio_type1() {
    let memory = patterned_memory(BUF, 8);
    let (source, _) = source(&memory);
    let table = IoPagetable::new();
    let domain = RecordingDomain::page();
    table.add_domain(domain.as_mapper()).unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    assert_eq!(
        table.cut_iova(&[Iova(0x10fff)]),
        Err(IoptError::SplitRefused),
        "may use large pages"
    );
    table.unmap_all().unwrap();
    table.remove_domain(&domain.as_mapper());
    table.disable_large_pages().unwrap();
    table.add_domain(domain.as_mapper()).unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    assert_eq!(table.cut_iova(&[Iova(0x107ff)]), Err(IoptError::Misaligned));
    table
        .cut_iova(&[Iova(0x10fff), Iova(0x10000), Iova(0x90000)])
        .unwrap();
    assert_eq!(
        table
            .areas()
            .iter()
            .map(|a| (a.iova.0, a.length))
            .collect::<Vec<_>>(),
        vec![(0x10000, PAGE_SIZE), (0x11000, 3 * PAGE_SIZE)]
    );
    assert_eq!(table.unmap_iova(Iova(0x10000), PAGE_SIZE), Ok(PAGE_SIZE));
    assert_eq!(page_pin_count(memory.mm(), UserVa(BUF)), 0);
    assert_eq!(page_pin_count(memory.mm(), UserVa(BUF + PAGE_SIZE)), 1);
    assert_eq!(
        read_iova(&table, 0x11000, 4).unwrap(),
        (0..4)
            .map(|i| pattern(BUF + PAGE_SIZE + i))
            .collect::<Vec<_>>()
    );
    table.unmap_all().unwrap();
    assert!(domain.violations().is_empty());
    assert_eq!(total_pins(memory.mm()), 0);
}

#[test]
fn every_injected_failure_leaves_no_pins_charges_or_areas() {
    let sites = [
        fail_site::ALLOC_PAGES,
        fail_site::ALLOC_AREA,
        fail_site::PIN_BATCH,
        fail_site::PIN_USER,
        fail_site::ACCOUNT,
        fail_site::GET_PAGES,
        fail_site::RESERVE_IOVA,
        fail_site::ADD_DOMAIN,
        fail_site::ACCESS_ALLOC,
        fail_site::ACCESS_STORE,
    ];
    for site in sites {
        let memory = patterned_memory(BUF, 8);
        let (source, policy) = source(&memory);
        let table = Arc::new(IoPagetable::with_injector(FaultInjector::with_hook(
            move |s| s == site,
        )));
        let access = RecordingAccess::new(&table, true);
        table.add_access(PAGE_SIZE, access.clone()).unwrap();
        let map = table.map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x100_0000));
        let domain = RecordingDomain::mock_like();
        let attach = table.add_domain(domain.as_mapper());
        let copy = table.get_pages(Iova(0x100_0000), PAGE_SIZE);
        let pin = access.pin(0x100_0000, PAGE_SIZE, true);
        let failed = [map.is_err(), attach.is_err(), copy.is_err(), pin.is_err()];
        assert!(failed.iter().any(|&f| f), "{site} was never reached");
        if attach.is_err() {
            assert!(domain.entries().is_empty(), "{site}");
            assert_eq!(
                table.iova_ranges(),
                vec![IovaRange::new(0, u64::MAX)],
                "{site}"
            );
        }
        let expected_pins = match (map.is_ok(), attach.is_ok()) {
            (true, true) => 4,
            _ => u64::from(pin.is_ok()),
        };
        assert_eq!(total_pins(memory.mm()), expected_pins, "{site}");
        assert_eq!(policy.user.pages(), expected_pins, "{site}");
        access.cooperative.store(true, Ordering::Relaxed);
        table.unmap_all().unwrap();
        assert_eq!(total_pins(memory.mm()), 0, "{site}");
        assert_eq!(policy.user.pages(), 0, "{site}");
    }
}

#[test]
fn dropping_the_table_empties_domains_and_pins() {
    let memory = Arc::new(ModelMemory::new());
    memory.map(UserVa(BUF), 4 * PAGE_SIZE, true);
    let (source, policy) = source(&memory);
    let domain = RecordingDomain::page();
    {
        let table = IoPagetable::new();
        table.add_domain(domain.as_mapper()).unwrap();
        table
            .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, IovaPlacement::Auto)
            .unwrap();
        assert_eq!(total_pins(memory.mm()), 4);
    }
    assert!(domain.entries().is_empty());
    assert_eq!(total_pins(memory.mm()), 0);
    assert_eq!(policy.user.pages(), 0);
}

#[test]
fn shared_engine_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<IoPagetable>();
    assert_send_sync::<uiommu_iommufd::pages::Pages>();
    assert_send_sync::<uiommu_iommufd::io_pagetable::PagesList>();
}

#[test]
fn detaching_the_last_domain_keeps_access_pins() {
    let memory = patterned_memory(BUF, 4);
    let (source, policy) = source(&memory);
    let table = Arc::new(IoPagetable::new());
    let access = RecordingAccess::new(&table, true);
    table.add_access(PAGE_SIZE, access.clone()).unwrap();
    let domain = RecordingDomain::page();
    table.add_domain(domain.as_mapper()).unwrap();
    table
        .map_user_pages(&source, UserVa(BUF), 4 * PAGE_SIZE, RW, fixed(0x10000))
        .unwrap();
    access.pin(0x11000, PAGE_SIZE, false).unwrap();
    assert_eq!(
        total_pins(memory.mm()),
        4,
        "the access shares the domain's pin"
    );
    assert!(table.remove_domain(&domain.as_mapper()));
    assert_eq!(
        total_pins(memory.mm()),
        1,
        "only the access's page stays pinned"
    );
    assert_eq!(page_pin_count(memory.mm(), UserVa(BUF + PAGE_SIZE)), 1);
    assert_eq!(policy.user.pages(), 1);
    table.add_domain(domain.as_mapper()).unwrap();
    assert_eq!(total_pins(memory.mm()), 4);
    assert_eq!(table.unmap_all(), Ok(4 * PAGE_SIZE));
    assert_eq!(total_pins(memory.mm()), 0);
    assert_eq!(policy.user.pages(), 0);
}
