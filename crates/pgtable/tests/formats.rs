//! Raw PTE bits, checked against each architecture's documented layout.
//!
//! The walks here read table memory by physical address and decode it with
//! the spec's bit positions written out as literals, not with the format's
//! own decoder, so a wrong encoder cannot pass by agreeing with itself.

use uiommu_pgtable::fmt::amdv1::{self, AmdV1};
use uiommu_pgtable::fmt::arm_lpae::ArmLpae;
use uiommu_pgtable::fmt::vtdss::VtdSs;
use uiommu_pgtable::fmt::x86_64::X86_64;
use uiommu_pgtable::{Config, DirtyMode, Format, PageTable, Prot};

const SZ_4K: u64 = 1 << 12;
const SZ_2M: u64 = 1 << 21;
const SZ_1G: u64 = 1 << 30;

/// The PTE at `level` (0 = smallest pages) for `iova`, following entries the
/// caller's `next` accepts as table pointers (returning the table's address).
fn pte_at<F: Format>(
    table: &PageTable<F>,
    iova: u64,
    level: u32,
    granule_lg2: u32,
    next: impl Fn(u64) -> Option<u64>,
) -> u64 {
    let mut table_pa = table.root_phys();
    let mut at = table.format().top_level();
    loop {
        let index = (iova >> (granule_lg2 + 9 * at)) & 511;
        let pte = table.read_phys(table_pa + index * 8).expect("table memory");
        if at == level {
            return pte;
        }
        table_pa = next(pte).unwrap_or_else(|| panic!("no table at level {at}: {pte:#x}"));
        at -= 1;
    }
}

fn amd_next(pte: u64, granule_lg2: u32) -> Option<u64> {
    let next_level = (pte >> 9) & 7;
    (pte & 1 == 1 && (1..=6).contains(&next_level))
        .then(|| ((pte >> 12) & ((1 << 40) - 1)) << granule_lg2)
}

#[test]
fn amdv1_4k_leaf_and_table_entries() {
    let table = PageTable::new(AmdV1::new(3).unwrap(), Config::default()).unwrap();
    let iova = 0x12_3456_7000;
    table
        .map_pages(iova, 0xabc_def0_1000, SZ_4K, 1, Prot::RW)
        .unwrap();
    // Level 2 and 1: PR, NL = level of the lower table (1-based), IR, IW.
    for level in [2, 1] {
        let pte = pte_at(&table, iova, level, 12, |p| amd_next(p, 12));
        assert_eq!(pte & 1, 1);
        assert_eq!((pte >> 9) & 7, u64::from(level));
        assert_eq!(pte >> 61 & 3, 0b11, "IR and IW set on tables");
    }
    let leaf = pte_at(&table, iova, 0, 12, |p| amd_next(p, 12));
    assert_eq!(leaf, 1 | 0xabc_def0_1000 | 1 << 61 | 1 << 62);
}

#[test]
fn amdv1_read_only_leaf_has_ir_only() {
    let table = PageTable::new(AmdV1::new(3).unwrap(), Config::default()).unwrap();
    table
        .map_pages(0x1000, 0x2000, SZ_4K, 1, Prot::READ)
        .unwrap();
    let leaf = pte_at(&table, 0x1000, 0, 12, |p| amd_next(p, 12));
    assert_eq!(leaf, 1 | 0x2000 | 1 << 61);
}

#[test]
fn amdv1_contiguous_16k_repeats_a_size_encoded_pte() {
    let table = PageTable::new(AmdV1::new(3).unwrap(), Config::default()).unwrap();
    let (iova, oa) = (0x40_0000 + 0x1_0000, 0x8000_0000);
    assert_eq!(
        table.map_pages(iova, oa, SZ_4K, 4, Prot::RW).unwrap(),
        4 * SZ_4K
    );
    // 16 KiB = 2^(1 + 1) granules: one trailing 1 at bit 12, then a 0 at bit 13.
    let expected = 1 | 7 << 9 | (oa | 1 << 12) | 1 << 61 | 1 << 62;
    for n in 0..4 {
        assert_eq!(
            pte_at(&table, iova + n * SZ_4K, 0, 12, |p| amd_next(p, 12)),
            expected
        );
    }
    // The neighbours stay empty.
    assert_eq!(pte_at(&table, iova - SZ_4K, 0, 12, |p| amd_next(p, 12)), 0);
    assert_eq!(
        pte_at(&table, iova + 4 * SZ_4K, 0, 12, |p| amd_next(p, 12)),
        0
    );
    assert_eq!(table.iova_to_phys(iova + 0x2345), Some(oa + 0x2345));
}

#[test]
fn amdv1_2m_leaf_sits_at_level_1_with_next_level_0() {
    let table = PageTable::new(AmdV1::new(3).unwrap(), Config::default()).unwrap();
    table
        .map_pages(SZ_1G + SZ_2M, 0x1_0020_0000, SZ_2M, 1, Prot::WRITE)
        .unwrap();
    let pte = pte_at(&table, SZ_1G + SZ_2M, 1, 12, |p| amd_next(p, 12));
    assert_eq!(pte, 1 | 0x1_0020_0000 | 1 << 62);
    assert_eq!(
        table.live_tables(),
        2,
        "root and one level-1 table, no level-0 table"
    );
}

#[test]
fn amdv1_mock_granule_is_2k_and_bitmaps_match_linux() {
    let table = PageTable::new(AmdV1::mock(), Config::default()).unwrap();
    // Linux 7.3 mock DEFAULT: every power of two from 2 KiB to 2^37 (3 levels, 38-bit IOVA).
    assert_eq!(
        table.pgsize_bitmap(),
        ((1u64 << 38) - 1) & !((1u64 << 11) - 1)
    );
    table
        .map_pages(0x100_0800, 0x20_0800, 2048, 1, Prot::RW)
        .unwrap();
    let leaf = pte_at(&table, 0x100_0800, 0, 11, |p| amd_next(p, 11));
    // The address field holds the 2 KiB frame number at bit 12.
    assert_eq!(leaf, 1 | (0x20_0800 >> 11) << 12 | 1 << 61 | 1 << 62);
    assert_eq!(table.iova_to_phys(0x100_0fff), Some(0x20_0fff));

    assert_eq!(
        amdv1::MockPagetable::try_from(2).err(),
        Some(uiommu_pgtable::Error::UnknownMockType(2))
    );
    let default = amdv1::MockPagetable::try_from(0)
        .unwrap()
        .new_table()
        .unwrap();
    assert_eq!(default.pgsize_bitmap(), table.pgsize_bitmap());
    let table = amdv1::MockPagetable::Huge.new_table().unwrap();
    assert_eq!(table.pgsize_bitmap(), (1 << 20) | (1 << 12));
    // 4 KiB (the CPU page) is two 2 KiB copies with NL = 7 and a clear bit 12.
    table
        .map_pages(0x10_0000, 0x30_0000, 4096, 1, Prot::RW)
        .unwrap();
    for n in 0..2 {
        let pte = pte_at(&table, 0x10_0000 + n * 2048, 0, 11, |p| amd_next(p, 11));
        assert_eq!(
            pte,
            1 | 7 << 9 | (0x30_0000 >> 11) << 12 | 1 << 61 | 1 << 62
        );
    }
    // A 1 MiB leaf is one level-1 entry (512 granules) with NL = 0.
    table
        .map_pages(
            0x20_0000,
            0x40_0000,
            amdv1::MOCK_HUGE_PAGE_SIZE,
            1,
            Prot::READ,
        )
        .unwrap();
    let pte = pte_at(&table, 0x20_0000 + 0x8_0000, 1, 11, |p| amd_next(p, 11));
    assert_eq!(pte, 1 | (0x40_0000 >> 11) << 12 | 1 << 61);
}

#[test]
fn amdv1_dirty_is_bit_6_and_any_copy_dirties_the_leaf() {
    let table = PageTable::new(AmdV1::new(3).unwrap(), Config::default()).unwrap();
    table
        .map_pages(0x10_0000, 0x10_0000, SZ_4K, 4, Prot::RW)
        .unwrap();
    table.set_dirty(0x10_2000).unwrap();
    assert_eq!(
        pte_at(&table, 0x10_2000, 0, 12, |p| amd_next(p, 12)) & 0x40,
        0x40
    );
    assert_eq!(
        pte_at(&table, 0x10_0000, 0, 12, |p| amd_next(p, 12)) & 0x40,
        0
    );
    let mut seen = Vec::new();
    table
        .read_and_clear_dirty(0x10_1000, SZ_4K, DirtyMode::Clear, |iova, len| {
            seen.push((iova, len))
        })
        .unwrap();
    assert_eq!(
        seen,
        [(0x10_1000, SZ_4K)],
        "the leaf is reported clipped to the range"
    );
    assert_eq!(
        pte_at(&table, 0x10_2000, 0, 12, |p| amd_next(p, 12)) & 0x40,
        0,
        "every copy cleaned"
    );
}

fn arm_next(pte: u64) -> Option<u64> {
    (pte & 3 == 3).then_some(pte & 0x0000_ffff_ffff_f000)
}

#[test]
fn arm_stage1_page_block_and_table_descriptors() {
    let table = PageTable::new(ArmLpae::stage1(48, false).unwrap(), Config::default()).unwrap();
    assert_eq!(table.format().top_level(), 3);
    assert_eq!(table.pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
    table
        .map_pages(0x8000_1000, 0x4_0000_1000, SZ_4K, 1, Prot::RW | Prot::CACHE)
        .unwrap();
    for level in [3, 2, 1] {
        let pte = pte_at(&table, 0x8000_1000, level, 12, arm_next);
        assert_eq!(
            pte & !0x0000_ffff_ffff_f000,
            0b11,
            "table: type 0b11, no attributes"
        );
    }
    // Page: type 0b11, AttrIndx 1, AP[1] (EL0), SH inner, AF, nG.
    let page = pte_at(&table, 0x8000_1000, 0, 12, arm_next);
    assert_eq!(
        page,
        0x4_0000_1000 | 0b11 | 1 << 2 | 1 << 6 | 3 << 8 | 1 << 10 | 1 << 11
    );

    // Read-only, non-cacheable 2 MiB block: type 0b01, AP[2], SH outer, XN.
    table
        .map_pages(SZ_1G, 0x20_0000, SZ_2M, 1, Prot::READ | Prot::NOEXEC)
        .unwrap();
    let block = pte_at(&table, SZ_1G, 1, 12, arm_next);
    assert_eq!(
        block,
        0x20_0000 | 0b01 | 1 << 6 | 1 << 7 | 2 << 8 | 1 << 10 | 1 << 11 | 3 << 53
    );

    // Device memory, privileged: AttrIndx 2, no AP[1].
    table
        .map_pages(0, 0x900_0000, SZ_4K, 1, Prot::RW | Prot::MMIO | Prot::PRIV)
        .unwrap();
    let page = pte_at(&table, 0, 0, 12, arm_next);
    assert_eq!(
        page,
        0x900_0000 | 0b11 | 2 << 2 | 2 << 8 | 1 << 10 | 1 << 11
    );
}

#[test]
fn arm_stage1_hardware_dirty_uses_dbm_and_ap2() {
    let table = PageTable::new(ArmLpae::stage1(39, true).unwrap(), Config::default()).unwrap();
    assert_eq!(table.format().top_level(), 2);
    table.map_pages(0x1000, 0x1000, SZ_4K, 1, Prot::RW).unwrap();
    let page = pte_at(&table, 0x1000, 0, 12, arm_next);
    assert_eq!(
        page & (1 << 51 | 1 << 7),
        1 << 51 | 1 << 7,
        "writable-clean: DBM and AP[2]"
    );
    table.set_dirty(0x1000).unwrap();
    let page = pte_at(&table, 0x1000, 0, 12, arm_next);
    assert_eq!(
        page & (1 << 51 | 1 << 7),
        1 << 51,
        "the write cleared AP[2]"
    );
    let mut seen = Vec::new();
    table
        .read_and_clear_dirty(0, SZ_2M, DirtyMode::Clear, |iova, len| {
            seen.push((iova, len))
        })
        .unwrap();
    assert_eq!(seen, [(0x1000, SZ_4K)]);
    assert_eq!(pte_at(&table, 0x1000, 0, 12, arm_next) & (1 << 7), 1 << 7);

    // A read-only leaf has no DBM and cannot become dirty.
    table
        .map_pages(0x2000, 0x2000, SZ_4K, 1, Prot::READ)
        .unwrap();
    assert_eq!(
        table.set_dirty(0x2000),
        Err(uiommu_pgtable::Error::DirtyUnsupported)
    );
}

#[test]
fn arm_stage2_s2ap_and_memattr() {
    let table = PageTable::new(ArmLpae::stage2(40).unwrap(), Config::default()).unwrap();
    assert_eq!(table.format().top_level(), 3);
    table
        .map_pages(0x1000, 0x5000, SZ_4K, 1, Prot::RW | Prot::CACHE)
        .unwrap();
    let page = pte_at(&table, 0x1000, 0, 12, arm_next);
    assert_eq!(
        page,
        0x5000 | 0b11 | 0xf << 2 | 1 << 6 | 1 << 7 | 3 << 8 | 1 << 10
    );
    table
        .map_pages(SZ_1G, SZ_1G, SZ_1G, 1, Prot::WRITE)
        .unwrap();
    let block = pte_at(&table, SZ_1G, 2, 12, arm_next);
    assert_eq!(block, SZ_1G | 0b01 | 0x5 << 2 | 1 << 7 | 2 << 8 | 1 << 10);
    assert_eq!(
        table.read_and_clear_dirty(0, SZ_4K, DirtyMode::Keep, |_, _| {}),
        Err(uiommu_pgtable::Error::DirtyUnsupported)
    );
}

#[test]
fn vtd_second_stage_bits() {
    let table = PageTable::new(VtdSs::new(48).unwrap(), Config::default()).unwrap();
    assert_eq!(table.format().top_level(), 3);
    let next =
        |pte: u64| (pte & 3 != 0 && pte & (1 << 7) == 0).then_some(pte & 0x000f_ffff_ffff_f000);
    table
        .map_pages(0x3000, 0x7000, SZ_4K, 1, Prot::READ)
        .unwrap();
    for level in [3, 2, 1] {
        assert_eq!(
            pte_at(&table, 0x3000, level, 12, next) & 0xfff,
            0b11,
            "tables carry R and W"
        );
    }
    assert_eq!(pte_at(&table, 0x3000, 0, 12, next), 0x7000 | 1);
    table
        .map_pages(SZ_2M, 0x4_0000_0000, SZ_2M, 1, Prot::RW)
        .unwrap();
    assert_eq!(
        pte_at(&table, SZ_2M, 1, 12, next),
        0x4_0000_0000 | 0b11 | 1 << 7
    );
    table.set_dirty(SZ_2M + 0x1000).unwrap();
    assert_eq!(
        pte_at(&table, SZ_2M, 1, 12, next) & (1 << 9),
        1 << 9,
        "D is bit 9"
    );
    let mut seen = Vec::new();
    table
        .read_and_clear_dirty(0, SZ_1G, DirtyMode::Keep, |iova, len| {
            seen.push((iova, len))
        })
        .unwrap();
    assert_eq!(seen, [(SZ_2M, SZ_2M)]);
    assert_eq!(
        pte_at(&table, SZ_2M, 1, 12, next) & (1 << 9),
        1 << 9,
        "Keep leaves D set"
    );
    assert_eq!(VtdSs::new(39).unwrap().aw(), 1);
    assert_eq!(VtdSs::new(57).unwrap().aw(), 3);
}

#[test]
fn x86_64_bits() {
    let table = PageTable::new(X86_64::new(48).unwrap(), Config::default()).unwrap();
    assert_eq!(table.format().top_level(), 3);
    let next =
        |pte: u64| (pte & 1 == 1 && pte & (1 << 7) == 0).then_some(pte & 0x000f_ffff_ffff_f000);
    table
        .map_pages(0x5000, 0x9000, SZ_4K, 1, Prot::READ)
        .unwrap();
    for level in [3, 2, 1] {
        // P, R/W, U/S, A.
        assert_eq!(pte_at(&table, 0x5000, level, 12, next) & 0xfff, 0b10_0111);
    }
    assert_eq!(pte_at(&table, 0x5000, 0, 12, next), 0x9000 | 0b10_0101);
    table
        .map_pages(SZ_1G, 0x8000_0000, SZ_1G, 1, Prot::RW)
        .unwrap();
    // P, R/W, U/S, A, D, PS.
    assert_eq!(
        pte_at(&table, SZ_1G, 2, 12, next),
        0x8000_0000 | 0b1110_0111
    );
    assert_eq!(
        table.set_dirty(SZ_1G),
        Err(uiommu_pgtable::Error::DirtyUnsupported)
    );
    assert_eq!(X86_64::new(57).unwrap().top_level(), 4);
}
