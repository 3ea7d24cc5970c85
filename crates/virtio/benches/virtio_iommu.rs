//! virtio-iommu benchmarks: a MAP + UNMAP round trip through the driver, the virtqueues and the
//! device; and translation lookups in a domain holding 1k and 1M mappings.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use uiommu_core::{CoreConfig, DeviceDesc, FwNode, Fwspec, IommuCore, Iova, PhysAddr, Prot};
use uiommu_virtio::spec::{ReqAttach, ReqHead, ReqMap, VIRTIO_IOMMU_T_ATTACH, VIRTIO_IOMMU_T_MAP};
use uiommu_virtio::{DeviceConfig, DriverMemory, EndpointConfig, VirtioIommu, VirtioIommuDriver};
use vm_memory::{GuestAddress, GuestMemoryMmap, Iommu, Permissions};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

const EP: u32 = 8;
const PAGE: u64 = 0x1000;

fn config() -> DeviceConfig {
    DeviceConfig {
        endpoints: vec![EndpointConfig {
            id: EP,
            reserved: vec![],
        }],
        ..DeviceConfig::default()
    }
}

fn map_unmap_round_trip(c: &mut Criterion) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let device = Arc::new(VirtioIommu::new(&config()).unwrap());
    let driver = VirtioIommuDriver::probe(
        Box::new(Arc::clone(&device)),
        DriverMemory {
            mem,
            base: GuestAddress(0x1_0000),
        },
    )
    .unwrap();
    let core = IommuCore::new(CoreConfig::default());
    let fwnode = FwNode::new("/viot/virtio-iommu@0");
    driver.register(&core, fwnode.clone()).unwrap();
    let dev = core
        .add_device(
            DeviceDesc::platform("bench"),
            Some(Fwspec {
                fwnode,
                ids: vec![EP],
            }),
        )
        .unwrap();
    let domain = core.default_domain(dev).unwrap();

    let mut group = c.benchmark_group("virtio_request");
    group.throughput(Throughput::Elements(2));
    group.bench_function("map_unmap_4k_round_trip", |b| {
        b.iter(|| {
            domain
                .map(
                    Iova(0x4000_0000),
                    PhysAddr(0x10_0000),
                    PAGE,
                    Prot::READ_WRITE,
                )
                .unwrap();
            assert_eq!(domain.unmap(Iova(0x4000_0000), PAGE), PAGE);
        })
    });
    group.finish();
}

/// A device whose domain 1 (endpoint EP attached) holds `count` 4 KiB mappings at every other
/// page, built through the request parser.
fn populated(count: u64) -> Arc<VirtioIommu> {
    let dev = Arc::new(VirtioIommu::new(&config()).unwrap());
    dev.set_driver_features(dev.device_features());
    let attach = ReqAttach {
        head: ReqHead {
            type_: VIRTIO_IOMMU_T_ATTACH,
            reserved: [0; 3],
        },
        domain: U32::new(1),
        endpoint: U32::new(EP),
        ..Default::default()
    };
    assert!(dev.process(attach.as_bytes(), 4).status() == Some(uiommu_virtio::spec::Status::Ok));
    for i in 0..count {
        let iova = 2 * i * PAGE;
        let req = ReqMap {
            head: ReqHead {
                type_: VIRTIO_IOMMU_T_MAP,
                reserved: [0; 3],
            },
            domain: U32::new(1),
            virt_start: U64::new(iova),
            virt_end: U64::new(iova + PAGE - 1),
            phys_start: U64::new(i * PAGE),
            flags: U32::new(3),
        };
        assert!(dev.process(req.as_bytes(), 4).status() == Some(uiommu_virtio::spec::Status::Ok));
    }
    dev
}

/// Deterministic scattered page indices (an LCG), so lookups are not cache-friendly.
fn probes(count: u64) -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..4096)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            2 * ((x >> 33) % count) * PAGE + 0x123
        })
        .collect()
}

fn translate(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Elements(4096));
    for count in [1_000u64, 1_000_000] {
        let dev = populated(count);
        let iovas = probes(count);
        group.bench_with_input(
            BenchmarkId::new("device_lookup", count),
            &iovas,
            |b, iovas| {
                b.iter(|| {
                    for &iova in iovas {
                        black_box(dev.translate(EP, iova, Permissions::Read).unwrap());
                    }
                })
            },
        );
        let iommu = dev.endpoint_iommu(EP).unwrap();
        group.bench_with_input(
            BenchmarkId::new("endpoint_iotlb", count),
            &iovas,
            |b, iovas| {
                b.iter(|| {
                    for &iova in iovas {
                        let mut hit = iommu
                            .translate(GuestAddress(iova), 8, Permissions::Read)
                            .unwrap();
                        black_box(hit.next());
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, map_unmap_round_trip, translate);
criterion_main!(benches);
