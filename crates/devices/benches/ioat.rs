//! The emulated I/OAT through a virtio-iommu domain: memcpy throughput against a plain
//! memcpy of the same size measured in the same run, and doorbell-to-completion latency
//! (DMACOUNT store to CHANSTS reading DONE), with the job run inside the doorbell store
//! ("inline") or handed off by it ("deferred": inline budget 0, so the store only starts a
//! worker and the driver's CHANSTS polls, or the worker, run the descriptor).
//!
//! Run: `cargo bench -p uiommu-devices -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use uiommu_core::{
    CoreConfig, DeviceDesc, Domain, FwNode, Fwspec, IommuCore, Iova, PhysAddr, Prot,
};
use uiommu_devices::ioat::{regs::*, Ioat, IoatConfig, IoatDescriptor, MMIO_BAR};
use uiommu_devices::pci::{regs as pci, PciFunction};
use uiommu_devices::{DmaSpace, DomainDma, RecordingSink};
use uiommu_virtio::{DeviceConfig, DriverMemory, EndpointConfig, VirtioIommuDriver};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::IntoBytes;

const EP: u32 = 1;
const DESC: u64 = 0x1000_0000;
const SRC: u64 = 0x2000_0000;
const DST: u64 = 0x4000_0000;
const MAX: u64 = 1 << 20;

/// A virtio-iommu domain mapping one descriptor page and two 1 MiB buffers of host memory.
struct World {
    _core: IommuCore,
    _driver: Arc<VirtioIommuDriver>,
    _host: GuestMemoryMmap,
    dma: Arc<DomainDma>,
}

fn world() -> World {
    let driver_mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let config = DeviceConfig {
        endpoints: vec![EndpointConfig {
            id: EP,
            reserved: vec![],
        }],
        ..DeviceConfig::default()
    };
    let (driver, _device) = VirtioIommuDriver::with_device(
        &config,
        DriverMemory {
            mem: driver_mem,
            base: GuestAddress(0x1000),
        },
    )
    .unwrap();
    let core = IommuCore::new(CoreConfig::default());
    let fwnode = FwNode::new("/viot/virtio-iommu@0");
    driver.register(&core, fwnode.clone()).unwrap();
    let dev = core
        .add_device(
            DeviceDesc::platform("ioat"),
            Some(Fwspec {
                fwnode,
                ids: vec![EP],
            }),
        )
        .unwrap();
    let domain: Arc<Domain> = core.default_domain(dev).unwrap();
    let host_size = (2 * MAX + 4096) as usize;
    let host = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), host_size)]).unwrap();
    let va = host.get_host_address(GuestAddress(0)).unwrap() as u64;
    domain
        .map(Iova(DESC), PhysAddr(va), 4096, Prot::READ_WRITE)
        .unwrap();
    domain
        .map(Iova(SRC), PhysAddr(va + 4096), MAX, Prot::READ)
        .unwrap();
    domain
        .map(Iova(DST), PhysAddr(va + 4096 + MAX), MAX, Prot::READ_WRITE)
        .unwrap();
    let dma = Arc::new(DomainDma::new(Some(domain)));
    World {
        _core: core,
        _driver: driver,
        _host: host,
        dma,
    }
}

/// An initialised I/OAT function (the selftest driver's init) with one self-linked copy
/// descriptor of `size` bytes.
fn ioat(world: &World, config: IoatConfig, size: u32) -> PciFunction {
    let function = PciFunction::new(world.dma.clone(), Arc::new(RecordingSink::new()), |p| {
        Ioat::new(config, p)
    })
    .unwrap();
    let command = pci::COMMAND_MEMORY | pci::COMMAND_MASTER;
    function
        .config_write(u64::from(pci::COMMAND), &command.to_le_bytes())
        .unwrap();
    function
        .bar_write(MMIO_BAR, CHANCMD, &[CHANCMD_RESET])
        .unwrap();
    let mut desc = IoatDescriptor::default();
    desc.size.set(size);
    desc.src.set(SRC);
    desc.dst.set(DST);
    desc.next.set(DESC);
    world.dma.write(Iova(DESC), desc.as_bytes()).unwrap();
    function
}

/// One selftest-style job: CHAINADDR, CHANCTRL, DMACOUNT, poll for DONE, suspend.
fn run(function: &PciFunction) {
    function
        .bar_write(MMIO_BAR, CHAINADDR, &DESC.to_le_bytes())
        .unwrap();
    function
        .bar_write(
            MMIO_BAR,
            CHANCTRL,
            &(CHANCTRL_INT_REARM | CHANCTRL_ANY_ERR_ABORT_EN).to_le_bytes(),
        )
        .unwrap();
    function
        .bar_write(MMIO_BAR, DMACOUNT, &1u16.to_le_bytes())
        .unwrap();
    let mut status = [0u8; 8];
    loop {
        function.bar_read(MMIO_BAR, CHANSTS, &mut status).unwrap();
        match u64::from_le_bytes(status) & CHANSTS_STATUS {
            1 => break,
            3 => panic!("channel halted"),
            _ => std::hint::spin_loop(),
        }
    }
    function
        .bar_write(MMIO_BAR, CHANCMD, &[CHANCMD_SUSPEND])
        .unwrap();
}

fn memcpy_throughput(c: &mut Criterion) {
    let world = world();
    let mut group = c.benchmark_group("memcpy");
    for size in [64u64 << 10, 1 << 20] {
        group.throughput(Throughput::Bytes(size));
        let src = vec![0x5au8; size as usize];
        let mut dst = vec![0u8; size as usize];
        group.bench_with_input(BenchmarkId::new("plain", size), &size, |b, _| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
        let inline = IoatConfig {
            xfercap: 20,
            inline_budget: u64::MAX,
        };
        let function = ioat(&world, inline, size as u32);
        group.bench_with_input(BenchmarkId::new("ioat-inline", size), &size, |b, _| {
            b.iter(|| run(&function))
        });
        let deferred = IoatConfig {
            xfercap: 20,
            inline_budget: 0,
        };
        let function = ioat(&world, deferred, size as u32);
        group.bench_with_input(BenchmarkId::new("ioat-deferred", size), &size, |b, _| {
            b.iter(|| run(&function))
        });
    }
    group.finish();
}

fn doorbell_latency(c: &mut Criterion) {
    let world = world();
    let mut group = c.benchmark_group("doorbell-to-done");
    let inline = ioat(&world, IoatConfig::default(), 8);
    group.bench_function("8-byte-copy-inline", |b| b.iter(|| run(&inline)));
    let deferred = ioat(
        &world,
        IoatConfig {
            inline_budget: 0,
            ..IoatConfig::default()
        },
        8,
    );
    group.bench_function("8-byte-copy-deferred", |b| b.iter(|| run(&deferred)));
    group.finish();
}

criterion_group!(benches, memcpy_throughput, doorbell_latency);
criterion_main!(benches);
