//! Random MAP (fixed and automatic) / UNMAP / COPY / ALLOW_IOVAS / domain attach sequences on
//! two tables, checked after every step against a simple model: the exact area list, no
//! overlaps, every byte readable through its area, each domain holding exactly the areas, and
//! the pin count of every user page. Everything dropped at the end leaves no pin and no charge.

mod io_pagetable_common;

use std::collections::BTreeMap;
use std::sync::Arc;

use io_pagetable_common::{pattern, patterned_memory, source, RecordingDomain};
use proptest::prelude::*;
use uiommu_core::addr::{Iova, Prot};
use uiommu_iommufd::io_pagetable::{AccessPath, IoPagetable, IoptError, IovaPlacement, IovaRange};
use uiommu_iommufd::pages::{page_pin_count, total_pins, RwBuf};
use uiommu_iommufd::user_memory::{UserMemory, UserVa, PAGE_SIZE};

const BUF: u64 = 0x4000_0000;
const BUF_PAGES: u64 = 32;

#[derive(Debug, Clone)]
enum Op {
    MapFixed {
        t: usize,
        buf_page: u64,
        npages: u64,
        iova_page: u64,
        write: bool,
    },
    MapAuto {
        t: usize,
        buf_page: u64,
        npages: u64,
    },
    Unmap {
        t: usize,
        iova_page: u64,
        npages: u64,
    },
    UnmapAll {
        t: usize,
    },
    Copy {
        from: usize,
        to: usize,
        src_page: u64,
        npages: u64,
        dst_page: Option<u64>,
        write: bool,
    },
    Allow {
        t: usize,
        ranges: Vec<(u64, u64)>,
    },
    ToggleDomain {
        t: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..2usize;
    prop_oneof![
        4 => (t.clone(), 0..BUF_PAGES - 4, 1..5u64, 0..64u64, any::<bool>())
            .prop_map(|(t, buf_page, npages, iova_page, write)| Op::MapFixed { t, buf_page, npages, iova_page, write }),
        3 => (t.clone(), 0..BUF_PAGES - 4, 1..5u64).prop_map(|(t, buf_page, npages)| Op::MapAuto { t, buf_page, npages }),
        3 => (t.clone(), 0..80u64, 1..16u64).prop_map(|(t, iova_page, npages)| Op::Unmap { t, iova_page, npages }),
        1 => t.clone().prop_map(|t| Op::UnmapAll { t }),
        3 => (t.clone(), t.clone(), 0..64u64, 1..6u64, proptest::option::of(0..64u64), any::<bool>())
            .prop_map(|(from, to, src_page, npages, dst_page, write)| Op::Copy { from, to, src_page, npages, dst_page, write }),
        1 => (t.clone(), proptest::collection::vec((0..100u64, 1..24u64), 0..3)).prop_map(|(t, ranges)| Op::Allow { t, ranges }),
        2 => t.prop_map(|t| Op::ToggleDomain { t }),
    ]
}

/// One model area: where it is and which pages object backs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelArea {
    length: u64,
    uptr: u64,
    pages_id: usize,
    writable_pages: bool,
    prot: Prot,
}

#[derive(Debug, Default)]
struct ModelTable {
    areas: BTreeMap<u64, ModelArea>,
    allowed: Vec<(u64, u64)>,
    domain: Option<Arc<RecordingDomain>>,
}

impl ModelTable {
    fn overlaps(&self, start: u64, last: u64) -> bool {
        self.areas
            .iter()
            .any(|(&s, a)| s <= last && s + a.length > start)
    }

    /// The lowest naturally aligned free IOVA, searched independently of the engine.
    fn expected_auto(&self, uptr: u64, length: u64) -> Option<u64> {
        let alignment = length
            .next_power_of_two()
            .min(1 << uptr.trailing_zeros())
            .min(2 << 20);
        let mut spans: Vec<(u64, u64)> = Vec::new();
        if self.allowed.is_empty() {
            spans.push((PAGE_SIZE, u64::MAX - PAGE_SIZE));
        } else {
            let mut sorted = self.allowed.clone();
            sorted.sort();
            for (start, last) in sorted {
                let start = start.max(PAGE_SIZE);
                match spans.last_mut() {
                    Some(span) if span.1 + 1 == start => span.1 = last,
                    _ if start <= last => spans.push((start, last)),
                    _ => {}
                }
            }
        }
        for (start, last) in spans {
            let mut candidate = start.div_ceil(alignment) * alignment;
            while candidate
                .checked_add(length - 1)
                .is_some_and(|end| end <= last)
            {
                if !self.overlaps(candidate, candidate + length - 1) {
                    return Some(candidate);
                }
                candidate += alignment;
            }
        }
        None
    }

    /// Model placement, in the kernel's check order (no reservations exist in this model).
    fn place(&self, dst_page: Option<u64>, uptr: u64, length: u64) -> Result<u64, i32> {
        match dst_page {
            Some(page) => {
                let iova = page * PAGE_SIZE;
                if self.overlaps(iova, iova + length - 1) {
                    Err(libc::EEXIST)
                } else {
                    Ok(iova)
                }
            }
            None => self.expected_auto(uptr, length).ok_or(libc::ENOSPC),
        }
    }
}

struct World {
    tables: [IoPagetable; 2],
    model: [ModelTable; 2],
    next_pages_id: usize,
}

impl World {
    fn apply(&mut self, op: &Op, source: &uiommu_iommufd::pages::PageSource) {
        match *op {
            Op::MapFixed {
                t,
                buf_page,
                npages,
                iova_page,
                write,
            } => {
                let prot = if write { Prot::READ_WRITE } else { Prot::READ };
                self.map(t, buf_page, npages, Some(iova_page), prot, source);
            }
            Op::MapAuto {
                t,
                buf_page,
                npages,
            } => {
                self.map(t, buf_page, npages, None, Prot::READ_WRITE, source);
            }
            Op::Unmap {
                t,
                iova_page,
                npages,
            } => {
                let (start, last) = (iova_page * PAGE_SIZE, (iova_page + npages) * PAGE_SIZE - 1);
                let got = self.tables[t].unmap_iova(Iova(start), last - start + 1);
                let model = &mut self.model[t];
                let hit: Vec<(u64, ModelArea)> = model
                    .areas
                    .iter()
                    .filter(|(&s, a)| s <= last && s + a.length > start)
                    .map(|(&s, &a)| (s, a))
                    .collect();
                let mut bytes = 0;
                let mut expected = Ok(0);
                for (s, a) in hit {
                    if s < start || s + a.length - 1 > last {
                        expected = Err(libc::ENOENT);
                        break;
                    }
                    model.areas.remove(&s);
                    bytes += a.length;
                    expected = Ok(bytes);
                }
                assert_eq!(got.map_err(|e| e.errno()), expected, "{op:?}");
            }
            Op::UnmapAll { t } => {
                let expected: u64 = self.model[t].areas.values().map(|a| a.length).sum();
                assert_eq!(self.tables[t].unmap_all(), Ok(expected));
                self.model[t].areas.clear();
            }
            Op::Copy {
                from,
                to,
                src_page,
                npages,
                dst_page,
                write,
            } => {
                let (start, length) = (src_page * PAGE_SIZE, npages * PAGE_SIZE);
                let prot = if write { Prot::READ_WRITE } else { Prot::READ };
                let got = self.tables[from]
                    .get_pages(Iova(start), length)
                    .and_then(|list| {
                        self.tables[to].map_pages(
                            &list,
                            prot,
                            dst_page.map_or(IovaPlacement::Auto, |p| {
                                IovaPlacement::Fixed(Iova(p * PAGE_SIZE))
                            }),
                        )
                    });
                let expected = self.model_copy(from, to, start, length, dst_page, prot);
                assert_eq!(got.map(|i| i.0).map_err(|e| e.errno()), expected, "{op:?}");
            }
            Op::Allow { t, ref ranges } => {
                let ranges: Vec<(u64, u64)> = ranges
                    .iter()
                    .map(|&(p, n)| (p * PAGE_SIZE, (p + n) * PAGE_SIZE - 1))
                    .collect();
                let list: Vec<IovaRange> =
                    ranges.iter().map(|&(s, l)| IovaRange::new(s, l)).collect();
                let got = self.tables[t].set_allowed_iovas(&list);
                let overlapping = ranges
                    .iter()
                    .enumerate()
                    .any(|(i, a)| ranges[..i].iter().any(|b| a.0 <= b.1 && b.0 <= a.1));
                if overlapping {
                    assert_eq!(got, Err(IoptError::InvalidRange));
                } else {
                    assert_eq!(got, Ok(()));
                    self.model[t].allowed = ranges;
                }
            }
            Op::ToggleDomain { t } => match self.model[t].domain.take() {
                Some(domain) => {
                    assert!(self.tables[t].remove_domain(&domain.as_mapper()));
                    assert!(domain.entries().is_empty());
                    assert!(domain.violations().is_empty());
                }
                None => {
                    let domain = RecordingDomain::page();
                    self.tables[t].add_domain(domain.as_mapper()).unwrap();
                    self.model[t].domain = Some(domain);
                }
            },
        }
    }

    fn map(
        &mut self,
        t: usize,
        buf_page: u64,
        npages: u64,
        iova_page: Option<u64>,
        prot: Prot,
        source: &uiommu_iommufd::pages::PageSource,
    ) {
        let (uptr, length) = (BUF + buf_page * PAGE_SIZE, npages * PAGE_SIZE);
        let placement = iova_page.map_or(IovaPlacement::Auto, |p| {
            IovaPlacement::Fixed(Iova(p * PAGE_SIZE))
        });
        let got = self.tables[t].map_user_pages(source, UserVa(uptr), length, prot, placement);
        let expected = self.model[t].place(iova_page, uptr, length);
        assert_eq!(
            got.map(|i| i.0).map_err(|e| e.errno()),
            expected,
            "map {uptr:#x}+{length:#x} at {iova_page:?}"
        );
        if let Ok(iova) = expected {
            let pages_id = self.next_pages_id;
            self.next_pages_id += 1;
            let writable_pages = prot.contains(Prot::WRITE);
            self.model[t].areas.insert(
                iova,
                ModelArea {
                    length,
                    uptr,
                    pages_id,
                    writable_pages,
                    prot,
                },
            );
        }
    }

    fn model_copy(
        &mut self,
        from: usize,
        to: usize,
        start: u64,
        length: u64,
        dst_page: Option<u64>,
        prot: Prot,
    ) -> Result<u64, i32> {
        let src = &self.model[from];
        let mut segments = Vec::new();
        let mut cur = start;
        let last = start + length - 1;
        while cur <= last {
            let Some((&s, a)) = src
                .areas
                .range(..=cur)
                .next_back()
                .filter(|(&s, a)| s + a.length > cur)
            else {
                return Err(libc::ENOENT);
            };
            if cur != start && s != cur {
                return Err(libc::ENOENT);
            }
            let seg_last = last.min(s + a.length - 1);
            segments.push(ModelArea {
                length: seg_last - cur + 1,
                uptr: a.uptr + (cur - s),
                prot,
                ..*a
            });
            cur = seg_last + 1;
        }
        let iova = self.model[to].place(dst_page, segments[0].uptr, length)?;
        if prot.contains(Prot::WRITE) && segments.iter().any(|s| !s.writable_pages) {
            return Err(libc::EPERM);
        }
        let mut at = iova;
        for segment in segments {
            self.model[to].areas.insert(at, segment);
            at += segment.length;
        }
        Ok(iova)
    }

    fn check(&self, memory: &Arc<impl UserMemory>) {
        let mut expected_pins: BTreeMap<u64, std::collections::BTreeSet<usize>> = BTreeMap::new();
        for (table, model) in self.tables.iter().zip(&self.model) {
            let areas: Vec<(u64, u64, u64, Prot)> = table
                .areas()
                .iter()
                .map(|a| (a.iova.0, a.length, a.uptr.0, a.prot))
                .collect();
            let want: Vec<(u64, u64, u64, Prot)> = model
                .areas
                .iter()
                .map(|(&i, a)| (i, a.length, a.uptr, a.prot))
                .collect();
            assert_eq!(areas, want);
            for (&iova, area) in &model.areas {
                let mut buf = vec![0u8; area.length as usize];
                table
                    .access_rw(Iova(iova), RwBuf::Read(&mut buf), AccessPath::Direct)
                    .unwrap();
                assert!(
                    buf.iter()
                        .enumerate()
                        .all(|(i, &b)| b == pattern(area.uptr + i as u64)),
                    "data at {iova:#x}"
                );
            }
            if let Some(domain) = &model.domain {
                let entries: Vec<(u64, u64, u64)> = domain
                    .entries()
                    .iter()
                    .map(|(&i, m)| (i, m.length, m.phys))
                    .collect();
                let want: Vec<(u64, u64, u64)> = model
                    .areas
                    .iter()
                    .map(|(&i, a)| (i, a.length, a.uptr))
                    .collect();
                assert_eq!(entries, want, "domain contents");
                assert!(domain.violations().is_empty());
                for area in model.areas.values() {
                    for page in (area.uptr..area.uptr + area.length).step_by(PAGE_SIZE as usize) {
                        expected_pins.entry(page).or_default().insert(area.pages_id);
                    }
                }
            }
        }
        for page in 0..BUF_PAGES {
            let va = BUF + page * PAGE_SIZE;
            let want = expected_pins.get(&va).map_or(0, |ids| ids.len() as u32);
            assert_eq!(
                page_pin_count(memory.mm(), UserVa(va)),
                want,
                "pins of page {page}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let memory = patterned_memory(BUF, BUF_PAGES);
        let (source, policy) = source(&memory);
        let mut world = World {
            tables: [IoPagetable::new(), IoPagetable::new()],
            model: [ModelTable::default(), ModelTable::default()],
            next_pages_id: 0,
        };
        for op in &ops {
            world.apply(op, &source);
            world.check(&memory);
            prop_assert_eq!(policy.user.pages(), total_pins(memory.mm()), "charged = pinned");
        }
        let domains: Vec<Arc<RecordingDomain>> = world.model.iter().filter_map(|m| m.domain.clone()).collect();
        drop(world);
        for domain in domains {
            prop_assert!(domain.entries().is_empty());
            prop_assert!(domain.violations().is_empty());
        }
        prop_assert_eq!(total_pins(memory.mm()), 0);
        prop_assert_eq!(policy.user.pages(), 0);
    }
}
