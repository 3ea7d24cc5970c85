//! Map and unmap throughput of the IOVA engine, in pages per second.
//!
//! * `areas_4k/{1,4}_domains`: 1 GiB as 262144 separate 4 KiB `MAP`s (fixed IOVAs, each its own
//!   area and pages object, each pinned and mapped into every domain), then one unmap-all.
//! * `one_area_small_pages/{1,4}_domains`: one 1 GiB `MAP` with large pages disabled, so each
//!   domain receives 262144 `PAGE_SIZE` map calls; then one unmap (one call per domain).
//! * `single_4k`: one 4 KiB map and unmap into one domain.
//!
//! User memory is a model address space with 1 GiB mapped and never touched; the domains keep
//! one ordered-map entry per map call, like the mock driver's page table but without 2 KiB
//! granularity, so the figures measure the engine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use uiommu_core::addr::{Iova, PhysAddr, Prot};
use uiommu_iommufd::io_pagetable::{
    DomainMapError, DomainMapper, IoPagetable, IovaPlacement, IovaRange,
};
use uiommu_iommufd::pages::{FixedMemlockPolicy, PageSource, RlimitMode};
use uiommu_iommufd::user_memory::{ModelMemory, UserVa, PAGE_SIZE};

const BUF: u64 = 0x40_0000_0000;
const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB / PAGE_SIZE;
const IOVA_BASE: u64 = 1 << 32;

#[derive(Debug, Default)]
struct BenchDomain {
    entries: Mutex<BTreeMap<u64, (u64, u64)>>,
}

impl DomainMapper for BenchDomain {
    fn map(
        &self,
        iova: Iova,
        phys: PhysAddr,
        length: u64,
        _prot: Prot,
    ) -> Result<(), DomainMapError> {
        self.entries
            .lock()
            .unwrap()
            .insert(iova.0, (length, phys.0));
        Ok(())
    }

    fn unmap(&self, iova: Iova, length: u64) -> u64 {
        let mut entries = self.entries.lock().unwrap();
        let keys: Vec<u64> = entries
            .range(iova.0..iova.0 + length)
            .map(|(&k, _)| k)
            .collect();
        keys.iter()
            .map(|k| entries.remove(k).map_or(0, |(len, _)| len))
            .sum()
    }

    fn pgsize_bitmap(&self) -> u64 {
        PAGE_SIZE | (2 << 20) | GIB
    }

    fn aperture(&self) -> IovaRange {
        IovaRange::new(0, u64::MAX)
    }
}

fn setup() -> PageSource {
    let memory = Arc::new(ModelMemory::new());
    memory.map(UserVa(BUF), GIB, true);
    PageSource {
        memory,
        policy: Arc::new(FixedMemlockPolicy {
            limit: u64::MAX,
            ..Default::default()
        }),
        rlimit_mode: RlimitMode::User,
    }
}

fn table_with(domains: usize, small_pages: bool) -> (IoPagetable, Vec<Arc<BenchDomain>>) {
    let table = IoPagetable::new();
    if small_pages {
        table.disable_large_pages().unwrap();
    }
    let domains: Vec<Arc<BenchDomain>> = (0..domains).map(|_| Arc::default()).collect();
    for domain in &domains {
        table.add_domain(domain.clone()).unwrap();
    }
    (table, domains)
}

fn bench(c: &mut Criterion) {
    let source = setup();
    let mut group = c.benchmark_group("io_pagetable_1g");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PAGES));
    for domains in [1usize, 4] {
        group.bench_function(format!("areas_4k/{domains}_domains"), |b| {
            b.iter(|| {
                let (table, _domains) = table_with(domains, false);
                for page in 0..PAGES {
                    table
                        .map_user_pages(
                            &source,
                            UserVa(BUF + page * PAGE_SIZE),
                            PAGE_SIZE,
                            Prot::READ_WRITE,
                            IovaPlacement::Fixed(Iova(IOVA_BASE + page * PAGE_SIZE)),
                        )
                        .unwrap();
                }
                assert_eq!(table.unmap_all(), Ok(GIB));
            })
        });
        group.bench_function(format!("one_area_small_pages/{domains}_domains"), |b| {
            b.iter(|| {
                let (table, domains) = table_with(domains, true);
                table
                    .map_user_pages(
                        &source,
                        UserVa(BUF),
                        GIB,
                        Prot::READ_WRITE,
                        IovaPlacement::Fixed(Iova(IOVA_BASE)),
                    )
                    .unwrap();
                assert_eq!(domains[0].entries.lock().unwrap().len() as u64, PAGES);
                assert_eq!(table.unmap_all(), Ok(GIB));
            })
        });
    }
    group.finish();

    let mut single = c.benchmark_group("io_pagetable_4k");
    single.throughput(Throughput::Elements(1));
    let (table, _domains) = table_with(1, false);
    single.bench_function("single_4k", |b| {
        b.iter(|| {
            let iova = table
                .map_user_pages(
                    &source,
                    UserVa(BUF),
                    PAGE_SIZE,
                    Prot::READ_WRITE,
                    IovaPlacement::Fixed(Iova(IOVA_BASE)),
                )
                .unwrap();
            table.unmap_iova(iova, PAGE_SIZE).unwrap()
        })
    });
    single.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
