//! Map/unmap/translate speed of the engine on AMD v1, against the anchors of
//! Linux's iommupt cover letter (51–57 ns per 4 KiB map, ~1.5 ns per page for
//! 256 pages in one call, ~70 ns per unmap) and, in the same run, a naive
//! page map (`BTreeMap<page, (paddr, prot)>`, the proptests' model) as the
//! baseline for ratios.
//!
//! Run: `cargo bench -p uiommu-pgtable --bench pgtable -- --warm-up-time 1 --measurement-time 3`
//!
//! "all-sizes" tables may map 256 aligned 4 KiB pages as one 1 MiB AMD leaf
//! (iommupt does the same with AMD's full page-size bitmap); "4k-only"
//! tables are narrowed to 4 KiB leaves, one PTE per page.

use criterion::{criterion_group, criterion_main, Criterion};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};
use uiommu_pgtable::fmt::amdv1::AmdV1;
use uiommu_pgtable::{Config, PageTable, Prot};

const SZ_4K: u64 = 1 << 12;
const SZ_2M: u64 = 1 << 21;
const SZ_1G: u64 = 1 << 30;
/// 1 MiB-aligned IOVA and output bases (so the 256-page run may be one AMD leaf).
const IOVA: u64 = 0x40_0000_0000;
const PADDR: u64 = 0x1_0000_0000;
/// Single-page maps are timed in chunks this long, then torn down untimed.
const CHUNK: u64 = 1 << 14;

fn amd(pgsize_mask: u64) -> PageTable<AmdV1> {
    let config = Config {
        pgsize_mask,
        ..Config::default()
    };
    PageTable::new(AmdV1::new(4).unwrap(), config).unwrap()
}

/// The baseline: one BTreeMap entry per page.
#[derive(Default)]
struct Naive {
    pages: BTreeMap<u64, (u64, Prot)>,
}

impl Naive {
    fn map(&mut self, iova: u64, paddr: u64, pgsize: u64, count: u64, prot: Prot) {
        for n in 0..count {
            self.pages
                .insert((iova + n * pgsize) / pgsize, (paddr + n * pgsize, prot));
        }
    }
    fn unmap(&mut self, iova: u64, pgsize: u64, count: u64) -> u64 {
        (0..count)
            .filter(|n| self.pages.remove(&((iova + n * pgsize) / pgsize)).is_some())
            .count() as u64
            * pgsize
    }
    fn translate(&self, iova: u64, pgsize: u64) -> Option<u64> {
        self.pages
            .get(&(iova / pgsize))
            .map(|(pa, _)| pa + iova % pgsize)
    }
}

/// Total time of `timed(state, n)` over `iters` calls, in chunks with
/// `reset(state, chunk)` untimed between.
fn chunked<S>(
    iters: u64,
    state: &mut S,
    mut timed: impl FnMut(&mut S, u64),
    mut reset: impl FnMut(&mut S, u64),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let chunk = (iters - done).min(CHUNK);
        let start = Instant::now();
        for n in 0..chunk {
            timed(state, n);
        }
        total += start.elapsed();
        reset(state, chunk);
        done += chunk;
    }
    total
}

fn single_page(c: &mut Criterion) {
    let mut group = c.benchmark_group("4k");
    let table = amd(u64::MAX);
    group.bench_function("map/amdv1", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                &mut (),
                |_, n| {
                    black_box(
                        table
                            .map_pages(IOVA + n * SZ_4K, PADDR + n * SZ_4K, SZ_4K, 1, Prot::RW)
                            .unwrap(),
                    );
                },
                |_, chunk| {
                    table.unmap_pages(IOVA, SZ_4K, chunk).unwrap();
                },
            )
        })
    });
    let small = amd(SZ_4K);
    group.bench_function("unmap/amdv1", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let chunk = (iters - done).min(CHUNK);
                small
                    .map_pages(IOVA, PADDR, SZ_4K, chunk, Prot::RW)
                    .unwrap();
                let start = Instant::now();
                for n in 0..chunk {
                    black_box(small.unmap_pages(IOVA + n * SZ_4K, SZ_4K, 1).unwrap());
                }
                total += start.elapsed();
                done += chunk;
            }
            total
        })
    });
    group.bench_function("map_unmap/amdv1", |b| {
        b.iter(|| {
            table
                .map_pages(black_box(IOVA), PADDR, SZ_4K, 1, Prot::RW)
                .unwrap();
            table.unmap_pages(black_box(IOVA), SZ_4K, 1).unwrap()
        })
    });
    let mut naive = Naive::default();
    group.bench_function("map/naive", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                &mut Naive::default(),
                |naive, n| naive.map(IOVA + n * SZ_4K, PADDR + n * SZ_4K, SZ_4K, 1, Prot::RW),
                |naive, _| naive.pages.clear(),
            )
        })
    });
    group.bench_function("map_unmap/naive", |b| {
        b.iter(|| {
            naive.map(black_box(IOVA), PADDR, SZ_4K, 1, Prot::RW);
            naive.unmap(black_box(IOVA), SZ_4K, 1)
        })
    });
    group.finish();
}

fn runs(c: &mut Criterion) {
    let mut group = c.benchmark_group("run");
    // 256 x 4 KiB in one call: with all AMD sizes the engine writes one
    // 1 MiB leaf (256 copies); with 4 KiB only, 256 separate leaves.
    for (name, mask) in [
        ("256x4k/amdv1-all-sizes", u64::MAX),
        ("256x4k/amdv1-4k-only", SZ_4K),
    ] {
        let table = amd(mask);
        group.bench_function(name, |b| {
            b.iter(|| {
                table
                    .map_pages(black_box(IOVA), PADDR, SZ_4K, 256, Prot::RW)
                    .unwrap();
                table.unmap_pages(black_box(IOVA), SZ_4K, 256).unwrap()
            })
        });
    }
    // The anchor times map alone: time the map, tear down untimed.
    for (name, mask) in [
        ("256x4k-map/amdv1-all-sizes", u64::MAX),
        ("256x4k-map/amdv1-4k-only", SZ_4K),
    ] {
        let table = amd(mask);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    black_box(
                        table
                            .map_pages(black_box(IOVA), PADDR, SZ_4K, 256, Prot::RW)
                            .unwrap(),
                    );
                    total += start.elapsed();
                    table.unmap_pages(IOVA, SZ_4K, 256).unwrap();
                }
                total
            })
        });
    }
    let mut naive = Naive::default();
    group.bench_function("256x4k/naive", |b| {
        b.iter(|| {
            naive.map(black_box(IOVA), PADDR, SZ_4K, 256, Prot::RW);
            naive.unmap(black_box(IOVA), SZ_4K, 256)
        })
    });
    let table = amd(SZ_4K);
    group.bench_function("1g-in-4k/amdv1", |b| {
        b.iter(|| {
            table
                .map_pages(black_box(IOVA), PADDR, SZ_4K, SZ_1G / SZ_4K, Prot::RW)
                .unwrap();
            table
                .unmap_pages(black_box(IOVA), SZ_4K, SZ_1G / SZ_4K)
                .unwrap()
        })
    });
    group.bench_function("1g-in-4k/naive", |b| {
        b.iter(|| {
            naive.map(black_box(IOVA), PADDR, SZ_4K, SZ_1G / SZ_4K, Prot::RW);
            naive.unmap(black_box(IOVA), SZ_4K, SZ_1G / SZ_4K)
        })
    });
    let table = amd(SZ_4K | SZ_2M);
    group.bench_function("1g-in-2m/amdv1", |b| {
        b.iter(|| {
            table
                .map_pages(black_box(IOVA), PADDR, SZ_2M, SZ_1G / SZ_2M, Prot::RW)
                .unwrap();
            table
                .unmap_pages(black_box(IOVA), SZ_2M, SZ_1G / SZ_2M)
                .unwrap()
        })
    });
    group.bench_function("1g-in-2m/naive", |b| {
        b.iter(|| {
            naive.map(black_box(IOVA), PADDR, SZ_2M, SZ_1G / SZ_2M, Prot::RW);
            naive.unmap(black_box(IOVA), SZ_2M, SZ_1G / SZ_2M)
        })
    });
    group.finish();
}

fn translate(c: &mut Criterion) {
    let mut group = c.benchmark_group("iova_to_phys");
    // 64 MiB mapped in 4 KiB pages; look up a page in the middle.
    let table = amd(SZ_4K);
    table
        .map_pages(IOVA, PADDR, SZ_4K, 16384, Prot::RW)
        .unwrap();
    let mut naive = Naive::default();
    naive.map(IOVA, PADDR, SZ_4K, 16384, Prot::RW);
    let probe = IOVA + 9000 * SZ_4K + 0x123;
    group.bench_function("amdv1", |b| b.iter(|| table.iova_to_phys(black_box(probe))));
    group.bench_function("naive", |b| {
        b.iter(|| naive.translate(black_box(probe), SZ_4K))
    });
    group.finish();
}

criterion_group!(benches, single_page, runs, translate);
criterion_main!(benches);
