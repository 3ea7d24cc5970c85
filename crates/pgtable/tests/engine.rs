//! The engine's semantics (Linux's `iommu_domain_ops` rules), on AMD v1.

use std::sync::Arc;
use uiommu_pgtable::fmt::amdv1::AmdV1;
use uiommu_pgtable::fmt::arm_lpae::ArmLpae;
use uiommu_pgtable::{Config, DirtyMode, Error, PageTable, Prot};

const SZ_4K: u64 = 1 << 12;
const SZ_2M: u64 = 1 << 21;
const SZ_1G: u64 = 1 << 30;

fn amd(pgsize_mask: u64) -> PageTable<AmdV1> {
    let config = Config {
        pgsize_mask,
        ..Config::default()
    };
    PageTable::new(AmdV1::new(3).unwrap(), config).unwrap()
}

#[test]
fn map_picks_the_largest_aligned_page_and_pgsize_is_a_floor() {
    let table = amd(SZ_4K | SZ_2M);
    // 2 MiB + 4 KiB starting 2 MiB-aligned: one 2 MiB leaf, one 4 KiB leaf.
    table.map_pages(SZ_2M, SZ_1G, SZ_4K, 513, Prot::RW).unwrap();
    assert_eq!(
        table.live_tables(),
        3,
        "root, level 1, and one level-0 table for the tail"
    );
    assert_eq!(
        table.unmap_pages(SZ_2M, SZ_4K, 1).unwrap(),
        SZ_2M,
        "the first leaf is 2 MiB"
    );
}

#[test]
fn overlapping_map_fails_with_already_mapped_and_changes_nothing() {
    let table = amd(SZ_4K | SZ_2M);
    table
        .map_pages(SZ_2M + 5 * SZ_4K, 0x9000_0000, SZ_4K, 1, Prot::RW)
        .unwrap();
    assert_eq!(
        table.map_pages(SZ_2M, 0, SZ_2M, 1, Prot::RW),
        Err(Error::AlreadyMapped(SZ_2M + 5 * SZ_4K))
    );
    // A run whose tail overlaps: the head it mapped is undone.
    assert_eq!(
        table.map_pages(SZ_2M, 0, SZ_4K, 8, Prot::RW),
        Err(Error::AlreadyMapped(SZ_2M + 5 * SZ_4K))
    );
    assert_eq!(table.iova_to_phys(SZ_2M), None);
    assert_eq!(table.iova_to_phys(SZ_2M + 5 * SZ_4K), Some(0x9000_0000));
    // Inside a large leaf.
    table.map_pages(2 * SZ_2M, 0, SZ_2M, 1, Prot::READ).unwrap();
    assert_eq!(
        table.map_pages(2 * SZ_2M + SZ_4K, 0, SZ_4K, 1, Prot::READ),
        Err(Error::AlreadyMapped(2 * SZ_2M + SZ_4K))
    );
}

#[test]
fn unmap_of_the_head_of_a_large_page_removes_it_whole() {
    let table = amd(SZ_4K | SZ_2M);
    table.map_pages(SZ_2M, 0, SZ_2M, 1, Prot::RW).unwrap();
    assert_eq!(
        table.unmap_pages(SZ_2M + SZ_4K, SZ_4K, 1).unwrap(),
        0,
        "a start inside the leaf unmaps nothing"
    );
    assert_eq!(table.iova_to_phys(SZ_2M + SZ_4K), Some(SZ_4K));
    assert_eq!(table.unmap_pages(SZ_2M, SZ_4K, 1).unwrap(), SZ_2M);
    assert_eq!(table.iova_to_phys(SZ_2M + SZ_4K), None);
}

#[test]
fn unmap_inside_a_contiguous_amd_leaf_removes_nothing() {
    let table = amd(u64::MAX);
    // 64 KiB leaf: 16 copies of one size-encoded PTE.
    table
        .map_pages(0x10_0000, 0x20_0000, SZ_4K, 16, Prot::RW)
        .unwrap();
    assert_eq!(table.unmap_pages(0x10_8000, SZ_4K, 8).unwrap(), 0);
    assert_eq!(table.iova_to_phys(0x10_f000), Some(0x20_f000));
    assert_eq!(table.unmap_pages(0x10_0000, SZ_4K, 1).unwrap(), 0x1_0000);
    assert_eq!(table.iova_to_phys(0x10_f000), None);
}

#[test]
fn unmap_stops_at_the_first_hole() {
    let table = amd(SZ_4K);
    table.map_pages(0x10_0000, 0, SZ_4K, 1, Prot::RW).unwrap();
    table.map_pages(0x10_2000, 0, SZ_4K, 1, Prot::RW).unwrap();
    assert_eq!(table.unmap_pages(0x10_0000, SZ_4K, 3).unwrap(), SZ_4K);
    assert_eq!(table.iova_to_phys(0x10_2000), Some(0));
    assert_eq!(table.unmap_pages(0x10_1000, SZ_4K, 2).unwrap(), 0);
}

#[test]
fn tables_are_freed_by_covering_unmaps_and_by_large_leaves() {
    let table = amd(SZ_4K | SZ_2M);
    let one = amd(SZ_4K);
    one.map_pages(0, 0, SZ_4K, 512, Prot::RW).unwrap();
    assert_eq!(one.live_tables(), 3);
    assert_eq!(one.unmap_pages(0, SZ_4K, 512).unwrap(), SZ_2M);
    assert_eq!(
        one.live_tables(),
        2,
        "the fully covered level-0 table is freed"
    );

    table.map_pages(0, 0, SZ_4K, 1, Prot::RW).unwrap();
    table.unmap_pages(0, SZ_4K, 1).unwrap();
    assert_eq!(
        table.live_tables(),
        3,
        "an unmap smaller than the table keeps it, as Linux does"
    );
    table.map_pages(0, 0, SZ_2M, 1, Prot::RW).unwrap();
    assert_eq!(
        table.live_tables(),
        2,
        "a 2 MiB leaf replaces the empty level-0 table"
    );
}

#[test]
fn argument_errors_in_check_order() {
    let table = amd(u64::MAX);
    assert_eq!(
        table.map_pages(0, 0, SZ_4K, 1, Prot::CACHE),
        Err(Error::NoAccess)
    );
    assert_eq!(
        table.map_pages(0, 0, 3 * SZ_4K, 1, Prot::RW),
        Err(Error::UnsupportedPageSize(3 * SZ_4K))
    );
    assert_eq!(
        table.map_pages(0, 0, 1 << 11, 1, Prot::RW),
        Err(Error::UnsupportedPageSize(1 << 11))
    );
    assert_eq!(
        table.map_pages(0, 0, SZ_4K, 0, Prot::RW),
        Err(Error::ZeroLength)
    );
    assert_eq!(
        table.map_pages(0, 0, SZ_4K, u64::MAX, Prot::RW),
        Err(Error::Overflow)
    );
    assert!(matches!(
        table.map_pages(0x800, 0, SZ_4K, 1, Prot::RW),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        table.map_pages(0, 0x800, SZ_4K, 1, Prot::RW),
        Err(Error::Misaligned { .. })
    ));
    assert_eq!(
        table.map_pages(1 << 39, 0, SZ_4K, 1, Prot::RW),
        Err(Error::IovaOutOfRange {
            last: (1 << 39) + SZ_4K - 1,
            va_bits: 39
        })
    );
    assert_eq!(
        table.map_pages(0, 1 << 52, SZ_4K, 1, Prot::RW),
        Err(Error::PhysOutOfRange {
            last: (1 << 52) + SZ_4K - 1,
            oa_bits: 52
        })
    );
    assert_eq!(table.unmap_pages(0, SZ_4K, 0), Err(Error::ZeroLength));
    assert!(matches!(
        table.unmap_pages(0x800, SZ_4K, 1),
        Err(Error::Misaligned { .. })
    ));
    assert_eq!(table.set_dirty(0), Err(Error::NotMapped(0)));
    assert_eq!(
        table.read_and_clear_dirty(0, 0, DirtyMode::Clear, |_, _| {}),
        Err(Error::ZeroLength)
    );
    assert_eq!(table.iova_to_phys(1 << 39), None);
    assert!(matches!(AmdV1::new(7), Err(Error::BadConfig(_))));
    assert!(matches!(
        ArmLpae::stage1(49, false),
        Err(Error::BadConfig(_))
    ));
    let none = Config {
        pgsize_mask: 1 << 11,
        ..Config::default()
    };
    assert!(matches!(
        PageTable::new(AmdV1::new(3).unwrap(), none),
        Err(Error::BadConfig(_))
    ));
}

#[test]
fn a_64_bit_amd_table_maps_the_last_page() {
    let table = PageTable::new(AmdV1::new(6).unwrap(), Config::default()).unwrap();
    let last_page = u64::MAX - (SZ_4K - 1);
    table
        .map_pages(last_page, 0x1000, SZ_4K, 1, Prot::RW)
        .unwrap();
    assert_eq!(table.iova_to_phys(u64::MAX), Some(0x1fff));
    assert_eq!(table.unmap_pages(last_page, SZ_4K, 1).unwrap(), SZ_4K);
}

#[test]
fn table_memory_cap_gives_no_memory_and_no_change() {
    let config = Config {
        pgsize_mask: u64::MAX,
        max_tables: 2,
    };
    let table = PageTable::new(AmdV1::new(3).unwrap(), config).unwrap();
    assert_eq!(
        table.map_pages(0, 0, SZ_4K, 1, Prot::RW),
        Err(Error::NoMemory)
    );
    assert_eq!(table.iova_to_phys(0), None);
    // A 2 MiB leaf needs only the level-1 table, which the failed map left behind.
    table.map_pages(SZ_2M, 0, SZ_2M, 1, Prot::RW).unwrap();
}

#[test]
fn dirty_keep_reports_without_cleaning() {
    let table = amd(SZ_4K);
    table.map_pages(0, 0, SZ_4K, 4, Prot::RW).unwrap();
    table.set_dirty(SZ_4K).unwrap();
    table.set_dirty(3 * SZ_4K).unwrap();
    let read = |mode| {
        let mut seen = Vec::new();
        table
            .read_and_clear_dirty(0, 4 * SZ_4K, mode, |iova, len| seen.push((iova, len)))
            .unwrap();
        seen
    };
    assert_eq!(read(DirtyMode::Keep), [(SZ_4K, SZ_4K), (3 * SZ_4K, SZ_4K)]);
    assert_eq!(read(DirtyMode::Clear), [(SZ_4K, SZ_4K), (3 * SZ_4K, SZ_4K)]);
    assert_eq!(read(DirtyMode::Clear), []);
}

#[test]
fn disjoint_maps_from_many_threads() {
    let table = Arc::new(amd(SZ_4K));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                for n in 0..256u64 {
                    let iova = t * SZ_1G + n * SZ_4K;
                    table
                        .map_pages(iova, iova + SZ_1G, SZ_4K, 1, Prot::RW)
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    for t in 0..4u64 {
        for n in 0..256u64 {
            let iova = t * SZ_1G + n * SZ_4K;
            assert_eq!(table.iova_to_phys(iova + 7), Some(iova + SZ_1G + 7));
        }
    }
}
