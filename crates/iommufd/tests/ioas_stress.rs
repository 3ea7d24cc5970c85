//! Eight threads on one context: each maps, copies and unmaps in its own window of a shared
//! IOAS (attached to a domain, so pages are pinned and mapped), places automatic mappings in a
//! shared allowed window, and creates, fills, copies from and destroys private IOASes. Each
//! thread keeps an exact model of its own window and checks every result against it; at the
//! end the shared IOAS and its domain must hold exactly the union of the models, and closing
//! the context must unpin everything.

mod ioas_common;

use std::collections::BTreeMap;

use ioas_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::pages;
use uiommu_iommufd::user_memory::PAGE_SIZE;

const THREADS: u64 = 8;
const ROUNDS: usize = 1000;
const BUFFER_PAGES: u64 = 64;
/// Automatic placements go here (the allowed window); fixed ones never do.
const AUTO_WINDOW: (u64, u64) = (1 << 32, (1 << 40) - 1);

fn window_of(thread: u64) -> u64 {
    (1 << 44) + thread * (1 << 32)
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What one thread believes it has mapped in the shared IOAS: IOVA → (length, uva).
#[derive(Default)]
struct Model {
    fixed: BTreeMap<u64, (u64, u64)>,
    auto: Vec<(u64, u64, u64)>,
}

impl Model {
    fn overlaps(&self, iova: u64, length: u64) -> bool {
        self.fixed
            .range(..iova + length)
            .next_back()
            .is_some_and(|(&start, &(len, _))| start + len > iova)
    }

    /// The walk of `iopt_unmap_iova_range()` over this thread's window.
    fn unmap(&mut self, iova: u64, length: u64) -> Result<u64, Errno> {
        let last = iova + length - 1;
        let hit: Vec<(u64, u64)> = self
            .fixed
            .range(..=last)
            .filter(|(&start, &(len, _))| start + len > iova)
            .map(|(&start, &(len, _))| (start, len))
            .collect();
        if hit.is_empty() {
            return Err(Errno::ENOENT);
        }
        let mut unmapped = 0;
        for (start, len) in hit {
            if start < iova || start + len - 1 > last {
                return Err(Errno::ENOENT);
            }
            self.fixed.remove(&start);
            unmapped += len;
        }
        Ok(unmapped)
    }
}

/// One thread's run; returns its model and the buffer its mappings point into, which must
/// outlive the mappings.
fn worker(f: &Fixture, shared: u32, thread: u64) -> (Model, Buffer) {
    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (thread + 1).wrapping_mul(0x1234_5678_9abc_def1);
    let buf = Buffer::new((BUFFER_PAGES * PAGE_SIZE) as usize);
    let base = window_of(thread);
    let mut model = Model::default();
    for _ in 0..ROUNDS {
        let slot = xorshift(&mut rng) % 64;
        let pages = xorshift(&mut rng) % 4 + 1;
        let iova = base + slot * PAGE_SIZE;
        let length = pages * PAGE_SIZE;
        let uva = buf.addr() + (xorshift(&mut rng) % (BUFFER_PAGES - 4)) * PAGE_SIZE;
        match xorshift(&mut rng) % 6 {
            0 => {
                let expected = if model.overlaps(iova, length) {
                    Err(Errno::EEXIST)
                } else {
                    Ok(iova)
                };
                assert_eq!(f.map_fixed(shared, uva, length, iova), expected);
                if expected.is_ok() {
                    model.fixed.insert(iova, (length, uva));
                }
            }
            1 => {
                let got = f.map(shared, RW, uva, length, 0).expect("automatic map");
                assert!(got >= AUTO_WINDOW.0 && got + length - 1 <= AUTO_WINDOW.1);
                model.auto.push((got, length, uva));
            }
            2 => {
                let expected = model.unmap(iova, length);
                assert_eq!(f.unmap(shared, iova, length), expected);
            }
            3 => {
                if let Some(k) = (!model.auto.is_empty()).then(|| slot as usize % model.auto.len())
                {
                    let (at, len, _) = model.auto.swap_remove(k);
                    assert_eq!(f.unmap(shared, at, len), Ok(len));
                }
            }
            4 => {
                // A private IOAS: map, copy into our window, destroy.
                let private = f.ioas_alloc();
                f.map_fixed(private, uva, length, 0x10000).unwrap();
                let expected = if model.overlaps(iova, length) {
                    Err(Errno::EEXIST)
                } else {
                    Ok(iova)
                };
                let got = f.copy(
                    shared,
                    private,
                    RW | IOMMU_IOAS_MAP_FIXED_IOVA,
                    length,
                    iova,
                    0x10000,
                );
                assert_eq!(got, expected);
                if expected.is_ok() {
                    model.fixed.insert(iova, (length, uva));
                }
                f.destroy(private).unwrap();
            }
            _ => {
                // Our window holds exactly what we mapped, whatever the others do.
                let ioas = f.ioas(shared);
                let mine: Vec<(u64, u64, u64)> = ioas
                    .iopt()
                    .areas()
                    .iter()
                    .filter(|a| a.iova.0 >= base && a.iova.0 < base + (1 << 32))
                    .map(|a| (a.iova.0, a.length, a.uptr.0))
                    .collect();
                let want: Vec<(u64, u64, u64)> =
                    model.fixed.iter().map(|(&i, &(l, u))| (i, l, u)).collect();
                assert_eq!(mine, want, "thread {thread}");
            }
        }
    }
    (model, buf)
}

#[test]
fn concurrent_ioas_ioctls_neither_lose_nor_invent_mappings() {
    let f = Fixture::new();
    let shared = f.ioas_alloc();
    let domain = RecordingDomain::page();
    f.attach(shared, &domain);
    f.allow_iovas(shared, &[AUTO_WINDOW]).unwrap();
    let results: Vec<(Model, Buffer)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let f = &f;
                s.spawn(move || worker(f, shared, t))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut want: Vec<(u64, u64, u64)> = results
        .iter()
        .flat_map(|(m, _)| {
            m.fixed
                .iter()
                .map(|(&i, &(l, u))| (i, l, u))
                .chain(m.auto.iter().copied())
        })
        .collect();
    want.sort();
    let real: Vec<(u64, u64, u64)> = f
        .ioas(shared)
        .iopt()
        .areas()
        .iter()
        .map(|a| (a.iova.0, a.length, a.uptr.0))
        .collect();
    assert_eq!(real, want, "no mapping lost or invented");
    for &(iova, length, uva) in &want {
        assert_eq!(domain.translate(iova), Some(uva));
        assert_eq!(domain.translate(iova + length - 1), Some(uva + length - 1));
    }
    let mapped: u64 = domain.entries().values().map(|e| e.length).sum();
    assert_eq!(mapped, want.iter().map(|&(_, l, _)| l).sum::<u64>());
    assert!(domain.violations().is_empty(), "{:?}", domain.violations());
    assert_eq!(f.ctx.objects().len(), 1, "every private IOAS was destroyed");

    let mm = f.mm();
    drop(f);
    drop(results);
    assert_eq!(pages::total_pins(mm), 0);
    assert!(domain.entries().is_empty());
}
