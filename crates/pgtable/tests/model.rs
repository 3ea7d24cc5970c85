//! Proptests: random map/unmap/translate/dirty sequences on every format,
//! checked against a plain map of page -> (output address, rights, dirty).

use proptest::prelude::*;
use std::collections::BTreeMap;
use uiommu_pgtable::fmt::amdv1::AmdV1;
use uiommu_pgtable::fmt::arm_lpae::ArmLpae;
use uiommu_pgtable::fmt::vtdss::VtdSs;
use uiommu_pgtable::fmt::x86_64::X86_64;
use uiommu_pgtable::{Config, DirtyMode, Error, Format, PageTable, Prot};

/// Pages the sequences touch: a window of 2048 pages straddling 4 GiB (page
/// sequences) or 1 GiB (large-leaf sequences), so that runs cross level-0 and
/// level-1 (and, for the mock, level-2) tables.
const WINDOW_PAGES: u64 = 2048;

/// Which leaves can record a write.
#[derive(Debug, Clone, Copy)]
enum DirtyRule {
    /// Every leaf (AMD v1 D, VT-d D).
    Any,
    /// Only writable leaves (Arm stage 1 with DBM).
    WritableOnly,
    /// None (Arm stage 2, x86-64).
    Never,
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        page: u64,
        count: u64,
        phys: u64,
        prot: u32,
    },
    Unmap {
        page: u64,
        count: u64,
    },
    Translate {
        page: u64,
        offset: u64,
    },
    SetDirty {
        page: u64,
        offset: u64,
    },
    ReadDirty {
        page: u64,
        count: u64,
        keep: bool,
    },
}

fn prot_strategy() -> impl Strategy<Value = u32> {
    // READ, WRITE or both, sometimes with CACHE or NOEXEC.
    (1u32..=3, prop_oneof![Just(0u32), Just(4), Just(8)]).prop_map(|(rw, extra)| rw | extra)
}

fn page_ops(max_count: u64) -> impl Strategy<Value = Vec<Op>> {
    let page = 0..WINDOW_PAGES;
    let op = prop_oneof![
        3 => (page.clone(), 1..max_count, 0u64..(1 << 20), prot_strategy())
            .prop_map(|(page, count, phys, prot)| Op::Map { page, count, phys, prot }),
        2 => (page.clone(), 1..max_count).prop_map(|(page, count)| Op::Unmap { page, count }),
        2 => (page.clone(), 0u64..(1 << 20)).prop_map(|(page, offset)| Op::Translate { page, offset }),
        2 => (page.clone(), 0u64..(1 << 20)).prop_map(|(page, offset)| Op::SetDirty { page, offset }),
        1 => (page, 1..max_count, any::<bool>()).prop_map(|(page, count, keep)| Op::ReadDirty { page, count, keep }),
    ];
    proptest::collection::vec(op, 1..60)
}

#[derive(Debug, Clone, Copy)]
struct Page {
    phys: u64,
    prot: Prot,
    dirty: bool,
}

/// Leaves of one size only (`2^page_lg2` bytes, one or several PTE copies),
/// so every op has an exact page-level answer.
fn run_pages<F: Format>(
    format: F,
    page_lg2: u32,
    rule: DirtyRule,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let granule = 1u64 << page_lg2;
    let config = Config {
        pgsize_mask: granule,
        ..Config::default()
    };
    let table = PageTable::new(format, config).unwrap();
    let base = (1u64 << 32) - WINDOW_PAGES / 2 * granule;
    let iova_of = |page: u64| base + page * granule;
    let mut model: BTreeMap<u64, Page> = BTreeMap::new();

    for op in ops {
        match *op {
            Op::Map {
                page,
                count,
                phys,
                prot,
            } => {
                let count = count.min(WINDOW_PAGES - page);
                let prot = Prot::from_bits_truncate(prot);
                let got = table.map_pages(iova_of(page), phys * granule, granule, count, prot);
                match (page..page + count).find(|p| model.contains_key(p)) {
                    Some(taken) => prop_assert_eq!(got, Err(Error::AlreadyMapped(iova_of(taken)))),
                    None => {
                        prop_assert_eq!(got, Ok(count * granule));
                        for n in 0..count {
                            let entry = Page {
                                phys: (phys + n) * granule,
                                prot,
                                dirty: false,
                            };
                            model.insert(page + n, entry);
                        }
                    }
                }
            }
            Op::Unmap { page, count } => {
                let count = count.min(WINDOW_PAGES - page);
                let run = (page..page + count)
                    .take_while(|p| model.contains_key(p))
                    .count() as u64;
                for p in page..page + run {
                    model.remove(&p);
                }
                prop_assert_eq!(
                    table.unmap_pages(iova_of(page), granule, count),
                    Ok(run * granule)
                );
            }
            Op::Translate { page, offset } => {
                let offset = offset % granule;
                let want = model.get(&page).map(|entry| entry.phys + offset);
                prop_assert_eq!(table.iova_to_phys(iova_of(page) + offset), want);
            }
            Op::SetDirty { page, offset } => {
                // Any byte of the leaf, so writes land on every PTE copy.
                let iova = iova_of(page) + offset % granule;
                let got = table.set_dirty(iova);
                match (model.get_mut(&page), rule) {
                    (_, DirtyRule::Never) => prop_assert_eq!(got, Err(Error::DirtyUnsupported)),
                    (None, _) => prop_assert_eq!(got, Err(Error::NotMapped(iova))),
                    (Some(entry), DirtyRule::WritableOnly) if !entry.prot.contains(Prot::WRITE) => {
                        prop_assert_eq!(got, Err(Error::DirtyUnsupported))
                    }
                    (Some(entry), _) => {
                        prop_assert_eq!(got, Ok(()));
                        entry.dirty = true;
                    }
                }
            }
            Op::ReadDirty { page, count, keep } => {
                let count = count.min(WINDOW_PAGES - page);
                let mode = if keep {
                    DirtyMode::Keep
                } else {
                    DirtyMode::Clear
                };
                let mut seen = Vec::new();
                let got = table.read_and_clear_dirty(
                    iova_of(page),
                    count * granule,
                    mode,
                    |iova, len| seen.push((iova, len)),
                );
                if let DirtyRule::Never = rule {
                    prop_assert_eq!(got, Err(Error::DirtyUnsupported));
                    continue;
                }
                prop_assert_eq!(got, Ok(()));
                let mut want = Vec::new();
                for (p, entry) in model.range_mut(page..page + count) {
                    if entry.dirty {
                        want.push((iova_of(*p), granule));
                        entry.dirty &= keep;
                    }
                }
                prop_assert_eq!(seen, want);
            }
        }
    }
    // Everything the model holds translates; tear down and check it is gone.
    for (page, entry) in &model {
        prop_assert_eq!(table.iova_to_phys(iova_of(*page)), Some(entry.phys));
    }
    for (page, _) in std::mem::take(&mut model) {
        prop_assert_eq!(table.unmap_pages(iova_of(page), granule, 1), Ok(granule));
        prop_assert_eq!(table.iova_to_phys(iova_of(page)), None);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum LargeOp {
    /// Map `count` granules; the output address keeps the IOVA's alignment
    /// modulo `512 * granule` when `shift` is 0, so large leaves appear.
    Map {
        page: u64,
        count: u64,
        phys_block: u64,
        shift: u64,
    },
    /// Unmap the `span` consecutive mapped extents starting at extent `first`.
    Unmap {
        first: usize,
        span: usize,
    },
    Translate {
        page: u64,
        offset: u64,
    },
}

fn large_ops() -> impl Strategy<Value = Vec<LargeOp>> {
    let page = 0..WINDOW_PAGES;
    let op = prop_oneof![
        3 => (page.clone(), 1u64..1100, 0u64..64, prop_oneof![3 => Just(0u64), 1 => 1u64..4])
            .prop_map(|(page, count, phys_block, shift)| LargeOp::Map { page, count, phys_block, shift }),
        2 => (0usize..16, 1usize..4).prop_map(|(first, span)| LargeOp::Unmap { first, span }),
        2 => (page, 0u64..4096).prop_map(|(page, offset)| LargeOp::Translate { page, offset }),
    ];
    proptest::collection::vec(op, 1..40)
}

/// The format's whole bitmap: the engine picks leaf sizes. Unmaps cover whole
/// earlier maps, so no leaf straddles their edges and the model stays exact.
fn run_large<F: Format>(format: F, ops: &[LargeOp]) -> Result<(), TestCaseError> {
    let granule = 1u64 << format.granule_lg2();
    let table = PageTable::new(format, Config::default()).unwrap();
    let base = (1u64 << 30) - WINDOW_PAGES / 2 * granule;
    let iova_of = |page: u64| base + page * granule;
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    // Mapped extents by first page: page count.
    let mut extents: BTreeMap<u64, u64> = BTreeMap::new();

    for op in ops {
        match *op {
            LargeOp::Map {
                page,
                count,
                phys_block,
                shift,
            } => {
                let count = count.min(WINDOW_PAGES - page);
                let phys_page = (page + 512 * phys_block + shift) + 512 * 1024;
                let got =
                    table.map_pages(iova_of(page), phys_page * granule, granule, count, Prot::RW);
                if (page..page + count).any(|p| model.contains_key(&p)) {
                    prop_assert!(matches!(got, Err(Error::AlreadyMapped(_))), "{:?}", got);
                } else {
                    prop_assert_eq!(got, Ok(count * granule));
                    for n in 0..count {
                        model.insert(page + n, (phys_page + n) * granule);
                    }
                    extents.insert(page, count);
                }
            }
            LargeOp::Unmap { first, span } => {
                let chosen: Vec<(u64, u64)> = extents
                    .iter()
                    .skip(first)
                    .take(span)
                    .map(|(&p, &c)| (p, c))
                    .collect();
                let (Some(&(start, _)), Some(&(last_start, last_count))) =
                    (chosen.first(), chosen.last())
                else {
                    continue;
                };
                let count = last_start + last_count - start;
                let run = (start..start + count)
                    .take_while(|p| model.contains_key(p))
                    .count() as u64;
                prop_assert_eq!(
                    table.unmap_pages(iova_of(start), granule, count),
                    Ok(run * granule)
                );
                for p in start..start + run {
                    model.remove(&p);
                }
                // Extents fully inside the unmapped run are gone.
                extents.retain(|&p, &mut c| !(p >= start && p + c <= start + run));
            }
            LargeOp::Translate { page, offset } => {
                let offset = offset % granule;
                let want = model.get(&page).map(|phys| phys + offset);
                prop_assert_eq!(table.iova_to_phys(iova_of(page) + offset), want);
            }
        }
    }
    for (page, phys) in &model {
        prop_assert_eq!(table.iova_to_phys(iova_of(*page) + 1), Some(phys + 1));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn amdv1_pages(ops in page_ops(64)) {
        run_pages(AmdV1::new(3).unwrap(), 12, DirtyRule::Any, &ops)?;
    }

    #[test]
    fn amdv1_mock_pages(ops in page_ops(64)) {
        run_pages(AmdV1::mock(), 11, DirtyRule::Any, &ops)?;
    }

    #[test]
    fn arm_s1_pages(ops in page_ops(64)) {
        run_pages(ArmLpae::stage1(48, true).unwrap(), 12, DirtyRule::WritableOnly, &ops)?;
    }

    #[test]
    fn arm_s2_pages(ops in page_ops(64)) {
        run_pages(ArmLpae::stage2(40).unwrap(), 12, DirtyRule::Never, &ops)?;
    }

    #[test]
    fn vtdss_pages(ops in page_ops(64)) {
        run_pages(VtdSs::new(39).unwrap(), 12, DirtyRule::Any, &ops)?;
    }

    #[test]
    fn x86_64_pages(ops in page_ops(64)) {
        run_pages(X86_64::new(48).unwrap(), 12, DirtyRule::Never, &ops)?;
    }

    /// 16 KiB leaves: four size-encoded copies each.
    #[test]
    fn amdv1_contiguous_pages(ops in page_ops(64)) {
        run_pages(AmdV1::new(3).unwrap(), 14, DirtyRule::Any, &ops)?;
    }

    /// The selftest's `MOCK_IOMMUPT_HUGE` leaves: 1 MiB, one level-1 entry.
    #[test]
    fn amdv1_mock_huge_pages(ops in page_ops(64)) {
        run_pages(AmdV1::mock(), 20, DirtyRule::Any, &ops)?;
    }

    /// 2 MiB blocks with DBM.
    #[test]
    fn arm_s1_block_pages(ops in page_ops(16)) {
        run_pages(ArmLpae::stage1(48, true).unwrap(), 21, DirtyRule::WritableOnly, &ops)?;
    }

    #[test]
    fn amdv1_large(ops in large_ops()) {
        run_large(AmdV1::new(3).unwrap(), &ops)?;
    }

    #[test]
    fn amdv1_mock_large(ops in large_ops()) {
        run_large(AmdV1::mock(), &ops)?;
    }

    #[test]
    fn arm_s1_large(ops in large_ops()) {
        run_large(ArmLpae::stage1(39, false).unwrap(), &ops)?;
    }

    #[test]
    fn vtdss_large(ops in large_ops()) {
        run_large(VtdSs::new(48).unwrap(), &ops)?;
    }

    #[test]
    fn x86_64_large(ops in large_ops()) {
        run_large(X86_64::new(39).unwrap(), &ops)?;
    }
}
