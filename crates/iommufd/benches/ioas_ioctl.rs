//! IOAS map and unmap through the ioctl entry point (`IommufdCtx::ioctl` with real
//! `#[repr(C)]` structs in this process's memory), with no domain attached, so the figures are
//! the dispatcher, the object lookup and the IOVA engine without pinning.
//!
//! * `map_unmap_4k`: one fixed-IOVA `IOMMU_IOAS_MAP` of 4 KiB and its `IOMMU_IOAS_UNMAP`.
//! * `map_1g_as_4k_then_unmap_all`: 262144 fixed 4 KiB maps (1 GiB, each its own area), then
//!   one unmap-all; throughput in pages.
//!
//! The user VA is never touched without a domain, so it need not be mapped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use uiommu_core::{CoreConfig, IommuCore};
use uiommu_iommufd::abi::*;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::user_memory::PAGE_SIZE;

const USER_VA: u64 = 0x40_0000_0000;
const IOVA_BASE: u64 = 1 << 32;
const PAGES_1G: u64 = (1 << 30) / PAGE_SIZE;

struct Bench {
    ctx: Arc<IommufdCtx>,
    caller: Caller,
    ioas_id: u32,
}

impl Bench {
    fn new() -> Bench {
        let iommufd = Iommufd::new(Arc::new(IommuCore::new(CoreConfig::default())));
        let ctx = iommufd.open();
        let caller = Caller::current().expect("/proc/self readable");
        let mut alloc = IommuIoasAlloc {
            size: size_of::<IommuIoasAlloc>() as u32,
            ..Default::default()
        };
        ctx.ioctl(
            &caller,
            IOMMU_IOAS_ALLOC,
            std::ptr::from_mut(&mut alloc) as u64,
        )
        .unwrap();
        Bench {
            ctx,
            caller,
            ioas_id: alloc.out_ioas_id,
        }
    }

    fn map(&self, cmd: &mut IommuIoasMap, user_va: u64, iova: u64) {
        cmd.user_va = user_va;
        cmd.iova = iova;
        self.ctx
            .ioctl(&self.caller, IOMMU_IOAS_MAP, std::ptr::from_mut(cmd) as u64)
            .unwrap();
    }

    fn unmap(&self, iova: u64, length: u64) -> u64 {
        let mut cmd = IommuIoasUnmap {
            size: size_of::<IommuIoasUnmap>() as u32,
            ioas_id: self.ioas_id,
            iova,
            length,
        };
        self.ctx
            .ioctl(
                &self.caller,
                IOMMU_IOAS_UNMAP,
                std::ptr::from_mut(&mut cmd) as u64,
            )
            .unwrap();
        cmd.length
    }

    fn map_cmd(&self) -> IommuIoasMap {
        IommuIoasMap {
            size: size_of::<IommuIoasMap>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: self.ioas_id,
            length: PAGE_SIZE,
            ..Default::default()
        }
    }
}

fn map_unmap_4k(c: &mut Criterion) {
    let bench = Bench::new();
    let mut cmd = bench.map_cmd();
    let mut group = c.benchmark_group("ioas_ioctl");
    group.throughput(Throughput::Elements(1));
    group.bench_function("map_unmap_4k", |b| {
        b.iter(|| {
            bench.map(&mut cmd, USER_VA, IOVA_BASE);
            assert_eq!(bench.unmap(IOVA_BASE, PAGE_SIZE), PAGE_SIZE);
        })
    });
    group.finish();
}

fn map_1g_as_4k(c: &mut Criterion) {
    let bench = Bench::new();
    let mut cmd = bench.map_cmd();
    let mut group = c.benchmark_group("ioas_ioctl");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PAGES_1G));
    group.bench_function("map_1g_as_4k_then_unmap_all", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for page in 0..PAGES_1G {
                    let offset = page * PAGE_SIZE;
                    bench.map(&mut cmd, USER_VA + offset, IOVA_BASE + offset);
                }
                assert_eq!(bench.unmap(0, u64::MAX), PAGES_1G * PAGE_SIZE);
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, map_unmap_4k, map_1g_as_4k);
criterion_main!(benches);
