//! Random sequences of IOMMU_IOAS_MAP, UNMAP, COPY and ALLOW_IOVAS ioctls against a simple model
//! of two IOASes: one with a page-size domain attached (alignment 4 KiB, pages pinned), one
//! without (alignment 1). After every ioctl the IOASes' areas must equal the model's exactly;
//! the domain must translate exactly the modelled areas; pins must be one per page per MAP that
//! reached the domain; and everything must be unpinned once the context is dropped.

mod ioas_common;

use std::collections::{BTreeMap, BTreeSet};

use ioas_common::*;
use proptest::prelude::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::pages;
use uiommu_iommufd::user_memory::PAGE_SIZE;

/// Granule of generated lengths and offsets: half a page, so both IOASes see misalignment.
const UNIT: u64 = 0x800;
/// Where fixed IOVAs are generated.
const FIXED_BASE: u64 = 0x10_0000;
/// Pages of the buffer that maps draw from.
const BUFFER_PAGES: u64 = 64;

#[derive(Clone, Debug)]
enum Op {
    Map {
        ioas: usize,
        fixed: Option<u64>,
        page: u64,
        half: bool,
        units: u64,
        writable: bool,
    },
    Unmap {
        ioas: usize,
        slot: u64,
        units: u64,
    },
    UnmapAll {
        ioas: usize,
    },
    Copy {
        src: usize,
        dst: usize,
        src_slot: u64,
        units: u64,
        fixed: Option<u64>,
        writable: bool,
    },
    Allow {
        ioas: usize,
        windows: Vec<(u64, u64)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let ioas = 0usize..2;
    let slot = 0u64..64;
    prop_oneof![
        5 => (ioas.clone(), proptest::option::of(slot.clone()), 0..BUFFER_PAGES - 8, any::<bool>(), 1u64..9, any::<bool>())
            .prop_map(|(ioas, fixed, page, half, units, writable)| Op::Map { ioas, fixed, page, half, units, writable }),
        3 => (ioas.clone(), slot.clone(), 0u64..20).prop_map(|(ioas, slot, units)| Op::Unmap { ioas, slot, units }),
        1 => ioas.clone().prop_map(|ioas| Op::UnmapAll { ioas }),
        3 => (ioas.clone(), ioas.clone(), slot.clone(), 0u64..9, proptest::option::of(slot), any::<bool>())
            .prop_map(|(src, dst, src_slot, units, fixed, writable)| Op::Copy { src, dst, src_slot, units, fixed, writable }),
        1 => (ioas, proptest::collection::vec((0u64..8, 0u64..4), 0..4))
            .prop_map(|(ioas, windows)| Op::Allow { ioas, windows }),
    ]
}

/// The alignment automatic placement aims for (`iopt_alloc_iova()`).
fn auto_alignment(length: u64, uva: u64) -> u64 {
    let natural = length.next_power_of_two();
    let low = if uva == 0 {
        natural
    } else {
        1 << uva.trailing_zeros()
    };
    natural.min(low).min(2 << 20)
}

/// One modelled area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Area {
    length: u64,
    /// User VA of the first byte.
    uva: u64,
    writable: bool,
    /// Which MAP created the pages (pins are per MAP's pages, shared by copies).
    pages: u64,
}

#[derive(Debug, Default)]
struct ModelIoas {
    areas: BTreeMap<u64, Area>,
    allowed: Vec<(u64, u64)>,
    alignment: u64,
}

impl ModelIoas {
    fn overlaps(&self, iova: u64, length: u64) -> bool {
        let last = iova + length - 1;
        self.areas
            .range(..=last)
            .next_back()
            .is_some_and(|(&start, area)| start + area.length > iova)
    }

    /// Where an automatic placement may go (checked, not predicted).
    fn check_auto(&self, iova: u64, length: u64, uva: u64) -> Result<(), String> {
        // `iopt_alloc_iova()`: aligned to min(next_pow2(length), lowest bit of uva, 2 MiB),
        // with the in-page offset ORed in.
        let alignment = auto_alignment(length, uva);
        let offset = uva % PAGE_SIZE;
        if iova & offset != offset || iova % alignment != uva % alignment {
            return Err(format!("auto IOVA {iova:#x} lost the offset of {uva:#x}"));
        }
        if iova < PAGE_SIZE || iova.checked_add(length).is_none() {
            return Err(format!("auto IOVA {iova:#x} outside the usable space"));
        }
        if self.overlaps(iova, length) {
            return Err(format!("auto IOVA {iova:#x} overlaps an area"));
        }
        let last = iova + length - 1;
        if !self.allowed.is_empty() && !self.allowed.iter().any(|&(s, l)| s <= iova && last <= l) {
            return Err(format!("auto IOVA {iova:#x} outside the allowed ranges"));
        }
        Ok(())
    }

    /// The placement errors shared by MAP and COPY, in the engine's order, before the
    /// per-slice checks.
    fn placement_error(&self, fixed: Option<u64>, length: u64, head_uva: u64) -> Option<Errno> {
        if !length.is_multiple_of(self.alignment) {
            return Some(Errno::EINVAL);
        }
        match fixed {
            Some(iova) => {
                if !iova.is_multiple_of(self.alignment) {
                    return Some(Errno::EINVAL);
                }
                if self.overlaps(iova, length) {
                    return Some(Errno::EEXIST);
                }
            }
            None => {
                if auto_alignment(length, head_uva) < self.alignment {
                    return Some(Errno::EINVAL);
                }
            }
        }
        None
    }

    /// `IOMMU_IOAS_UNMAP` of `[iova, iova + length)`: the walk of `iopt_unmap_iova_range()`.
    fn unmap(&mut self, iova: u64, length: u64) -> Result<u64, Errno> {
        let last = iova + length - 1;
        let hit: Vec<(u64, Area)> = self
            .areas
            .iter()
            .filter(|(&start, area)| start <= last && start + area.length > iova)
            .map(|(&start, &area)| (start, area))
            .collect();
        if hit.is_empty() {
            return Err(Errno::ENOENT);
        }
        let mut unmapped = 0;
        for (start, area) in hit {
            if start < iova || start + area.length - 1 > last {
                return Err(Errno::ENOENT);
            }
            self.areas.remove(&start);
            unmapped += area.length;
        }
        Ok(unmapped)
    }

    /// Slices of areas covering `[iova, iova + length)` contiguously, as `(uva, length,
    /// writable, pages)`, or ENOENT.
    fn slices(&self, iova: u64, length: u64) -> Result<Vec<(u64, u64, bool, u64)>, Errno> {
        let last = iova + length - 1;
        let mut out = Vec::new();
        let mut cursor = iova;
        loop {
            let (&start, area) = self
                .areas
                .range(..=cursor)
                .next_back()
                .filter(|(&start, area)| start + area.length > cursor)
                .ok_or(Errno::ENOENT)?;
            let area_last = start + area.length - 1;
            let seg_last = area_last.min(last);
            out.push((
                area.uva + (cursor - start),
                seg_last - cursor + 1,
                area.writable,
                area.pages,
            ));
            if seg_last == last {
                return Ok(out);
            }
            cursor = seg_last + 1;
        }
    }
}

struct Harness {
    f: Fixture,
    ids: [u32; 2],
    model: [ModelIoas; 2],
    domain: std::sync::Arc<RecordingDomain>,
    buf: Buffer,
    next_pages: u64,
}

impl Harness {
    fn new() -> Harness {
        let f = Fixture::new();
        let ids = [f.ioas_alloc(), f.ioas_alloc()];
        let domain = RecordingDomain::page();
        f.attach(ids[0], &domain);
        let model = [
            ModelIoas {
                alignment: PAGE_SIZE,
                ..Default::default()
            },
            ModelIoas {
                alignment: 1,
                ..Default::default()
            },
        ];
        Harness {
            f,
            ids,
            model,
            domain,
            buf: Buffer::new((BUFFER_PAGES * PAGE_SIZE) as usize),
            next_pages: 0,
        }
    }

    fn flags(writable: bool, fixed: bool) -> u32 {
        let mut flags = IOMMU_IOAS_MAP_READABLE;
        if writable {
            flags |= IOMMU_IOAS_MAP_WRITEABLE;
        }
        if fixed {
            flags |= IOMMU_IOAS_MAP_FIXED_IOVA;
        }
        flags
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Map {
                ioas,
                fixed,
                page,
                half,
                units,
                writable,
            } => {
                let uva = self.buf.addr() + page * PAGE_SIZE + if half { UNIT } else { 0 };
                let length = units * UNIT;
                let fixed = fixed.map(|slot| FIXED_BASE + slot * UNIT);
                let m = &self.model[ioas];
                let expected = m.placement_error(fixed, length, uva).or_else(|| {
                    (!(uva % PAGE_SIZE).is_multiple_of(m.alignment)).then_some(Errno::EINVAL)
                });
                let got = self.f.map(
                    self.ids[ioas],
                    Self::flags(writable, fixed.is_some()),
                    uva,
                    length,
                    fixed.unwrap_or(0),
                );
                match (expected, got) {
                    (Some(errno), got) => prop_assert_eq!(got, Err(errno), "{:?}", op),
                    (None, Ok(iova)) => {
                        match fixed {
                            Some(want) => prop_assert_eq!(iova, want),
                            None => m
                                .check_auto(iova, length, uva)
                                .map_err(TestCaseError::fail)?,
                        }
                        self.next_pages += 1;
                        let pages = self.next_pages;
                        self.model[ioas].areas.insert(
                            iova,
                            Area {
                                length,
                                uva,
                                writable,
                                pages,
                            },
                        );
                    }
                    (None, Err(errno)) => prop_assert!(false, "{:?} failed with {}", op, errno),
                }
            }
            Op::Unmap { ioas, slot, units } => {
                let iova = FIXED_BASE + slot * UNIT;
                let length = units * UNIT;
                let got = self.f.unmap(self.ids[ioas], iova, length);
                let expected = if length == 0 {
                    Err(Errno::EINVAL)
                } else {
                    self.model[ioas].unmap(iova, length)
                };
                prop_assert_eq!(got, expected, "{:?}", op);
            }
            Op::UnmapAll { ioas } => {
                let total: u64 = self.model[ioas].areas.values().map(|a| a.length).sum();
                prop_assert_eq!(self.f.unmap(self.ids[ioas], 0, u64::MAX), Ok(total));
                self.model[ioas].areas.clear();
            }
            Op::Copy {
                src,
                dst,
                src_slot,
                units,
                fixed,
                writable,
            } => {
                // Copy from where areas are: the n-th area's start plus a slot offset.
                let src_iova = self.model[src]
                    .areas
                    .keys()
                    .nth(src_slot as usize % self.model[src].areas.len().max(1))
                    .map_or(FIXED_BASE, |&start| start + (src_slot % 4) * UNIT);
                let length = units * UNIT;
                let fixed = fixed.map(|slot| FIXED_BASE + slot * UNIT);
                let expected: Result<Vec<_>, Errno> = if length == 0 {
                    Err(Errno::EINVAL)
                } else {
                    self.model[src].slices(src_iova, length).and_then(|slices| {
                        let m = &self.model[dst];
                        if let Some(errno) = m.placement_error(fixed, length, slices[0].0) {
                            return Err(errno);
                        }
                        for &(uva, _, slice_writable, _) in &slices {
                            if writable && !slice_writable {
                                return Err(Errno::EPERM);
                            }
                            if !(uva % PAGE_SIZE).is_multiple_of(m.alignment) {
                                return Err(Errno::EINVAL);
                            }
                        }
                        Ok(slices)
                    })
                };
                let got = self.f.copy(
                    self.ids[dst],
                    self.ids[src],
                    Self::flags(writable, fixed.is_some()),
                    length,
                    fixed.unwrap_or(0),
                    src_iova,
                );
                match (expected, got) {
                    (Err(errno), got) => prop_assert_eq!(got, Err(errno), "{:?}", op),
                    (Ok(slices), Ok(iova)) => {
                        match fixed {
                            Some(want) => prop_assert_eq!(iova, want),
                            None => self.model[dst]
                                .check_auto(iova, length, slices[0].0)
                                .map_err(TestCaseError::fail)?,
                        }
                        let mut at = iova;
                        for (uva, length, slice_writable, pages) in slices {
                            self.model[dst].areas.insert(
                                at,
                                Area {
                                    length,
                                    uva,
                                    writable: slice_writable,
                                    pages,
                                },
                            );
                            at += length;
                        }
                    }
                    (Ok(_), Err(errno)) => prop_assert!(false, "{:?} failed with {}", op, errno),
                }
            }
            Op::Allow { ioas, ref windows } => {
                // Windows of up to 6 MiB every 16 MiB from 16 MiB up; size 0 makes start == last,
                // which is invalid.
                let ranges: Vec<(u64, u64)> = windows
                    .iter()
                    .map(|&(k, size)| {
                        let start = (16 + 16 * k) << 20;
                        (start, start + (size << 21).saturating_sub(1))
                    })
                    .collect();
                let mut expected = Ok(());
                for (i, &(start, last)) in ranges.iter().enumerate() {
                    let overlaps = ranges[..i].iter().any(|&(s, l)| s <= last && l >= start);
                    if start >= last || overlaps {
                        expected = Err(Errno::EINVAL);
                        break;
                    }
                }
                prop_assert_eq!(
                    self.f.allow_iovas(self.ids[ioas], &ranges),
                    expected,
                    "{:?}",
                    op
                );
                if expected.is_ok() {
                    self.model[ioas].allowed = ranges;
                }
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for (m, &id) in self.model.iter().zip(&self.ids) {
            let ioas = self.f.ioas(id);
            let real: Vec<(u64, u64, u64)> = ioas
                .iopt()
                .areas()
                .iter()
                .map(|a| (a.iova.0, a.length, a.uptr.0))
                .collect();
            let want: Vec<(u64, u64, u64)> =
                m.areas.iter().map(|(&i, a)| (i, a.length, a.uva)).collect();
            prop_assert_eq!(real, want);
        }
        // The domain maps exactly the areas of the first IOAS.
        let mapped: u64 = self.domain.entries().values().map(|e| e.length).sum();
        let modelled: u64 = self.model[0].areas.values().map(|a| a.length).sum();
        prop_assert_eq!(mapped, modelled);
        for (&iova, area) in &self.model[0].areas {
            prop_assert_eq!(self.domain.translate(iova), Some(area.uva));
            prop_assert_eq!(
                self.domain.translate(iova + area.length - 1),
                Some(area.uva + area.length - 1)
            );
        }
        prop_assert!(
            self.domain.violations().is_empty(),
            "{:?}",
            self.domain.violations()
        );
        // Pins: one per page of each MAP's pages that some area of the domain's IOAS covers.
        let pinned: BTreeSet<(u64, u64)> = self.model[0]
            .areas
            .values()
            .flat_map(|a| {
                (a.uva / PAGE_SIZE..=(a.uva + a.length - 1) / PAGE_SIZE).map(move |p| (a.pages, p))
            })
            .collect();
        prop_assert_eq!(self.f.pins(), pinned.len() as u64);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ioas_ioctls_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op)?;
        }
        let mm = h.f.mm();
        let domain = h.domain.clone();
        drop(h);
        prop_assert_eq!(pages::total_pins(mm), 0, "closing the context unpins everything");
        prop_assert!(domain.entries().is_empty(), "and empties the domain");
    }
}
