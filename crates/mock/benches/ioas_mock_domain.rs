//! IOAS_MAP + IOAS_UNMAP through the ioctl table with mock domains attached: 1 GiB of 4 KiB
//! pages into one domain and into four, and a single 4 KiB page into one domain. Throughput is
//! reported in pages per second (criterion "elements").
//!
//! The user memory is a model address space, so 1 GiB costs no real memory; the commands live
//! in that address space too, as they would in a process.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use uiommu_core::IommuCore;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::pages::FixedMemlockPolicy;
use uiommu_iommufd::user_memory::{ModelMemory, UserMemory, UserVa, PAGE_SIZE};
use uiommu_mock::{MockIommu, MockSelftest};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Where commands are written in the model address space.
const CMD_VA: u64 = 0x1000;
/// Where the mapped memory starts.
const DATA_VA: u64 = 0x4000_0000;
const GIB: u64 = 1 << 30;
/// An IOVA inside the mock aperture with room for 1 GiB.
const IOVA: u64 = 0x4000_0000;

struct Setup {
    ctx: Arc<IommufdCtx>,
    caller: Caller,
    memory: Arc<ModelMemory>,
    ioas: u32,
    _core: Arc<IommuCore>,
}

impl Setup {
    fn ioctl<T: IntoBytes + FromBytes + Immutable>(&self, cmd: u32, arg: &mut T) {
        self.memory.write(UserVa(CMD_VA), arg.as_bytes()).unwrap();
        self.ctx
            .ioctl(&self.caller, cmd, CMD_VA)
            .unwrap_or_else(|e| panic!("ioctl {cmd:#x}: {e}"));
        self.memory
            .read(UserVa(CMD_VA), arg.as_mut_bytes())
            .unwrap();
    }

    /// A context with one IOAS, one mock device attached to it, and `domains - 1` more paging
    /// HWPTs on the same IOAS.
    fn new(domains: usize, data_len: u64) -> Setup {
        let core = Arc::new(IommuCore::default());
        let mock = MockIommu::new();
        mock.register(&core).unwrap();
        let iommufd = Iommufd::new(core.clone());
        MockSelftest::install(&iommufd, mock).unwrap();
        let memory = Arc::new(ModelMemory::new());
        memory.map(UserVa(CMD_VA), PAGE_SIZE, true);
        memory.map(UserVa(DATA_VA), data_len, true);
        let caller = Caller::new(
            memory.clone(),
            Arc::new(FixedMemlockPolicy {
                cap_ipc_lock: true,
                limit: u64::MAX,
                ..FixedMemlockPolicy::default()
            }),
        );
        let mut setup = Setup {
            ctx: iommufd.open(),
            caller,
            memory,
            ioas: 0,
            _core: core,
        };
        let mut alloc = IommuIoasAlloc {
            size: size_of::<IommuIoasAlloc>() as u32,
            ..Default::default()
        };
        setup.ioctl(IOMMU_IOAS_ALLOC, &mut alloc);
        setup.ioas = alloc.out_ioas_id;
        let mut mock_domain = IommuTestCmd::new(setup.ioas, &TestMockDomain::default());
        setup.ioctl(IOMMU_TEST_CMD, &mut mock_domain);
        let idev = mock_domain.payload::<TestMockDomain>().out_idev_id;
        for _ in 1..domains {
            let mut hwpt = IommuHwptAlloc {
                size: size_of::<IommuHwptAlloc>() as u32,
                dev_id: idev,
                pt_id: setup.ioas,
                ..Default::default()
            };
            setup.ioctl(IOMMU_HWPT_ALLOC, &mut hwpt);
        }
        setup
    }

    fn map_unmap(&self, length: u64) {
        let mut map = IommuIoasMap {
            size: size_of::<IommuIoasMap>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: self.ioas,
            user_va: DATA_VA,
            length,
            iova: IOVA,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_MAP, &mut map);
        let mut unmap = IommuIoasUnmap {
            size: size_of::<IommuIoasUnmap>() as u32,
            ioas_id: self.ioas,
            iova: IOVA,
            length,
        };
        self.ioctl(IOMMU_IOAS_UNMAP, &mut unmap);
        black_box(unmap.length);
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ioas_map_unmap_mock");
    group.sample_size(10);
    for domains in [1usize, 4] {
        let setup = Setup::new(domains, GIB);
        group.throughput(Throughput::Elements(GIB / PAGE_SIZE));
        group.bench_function(format!("1GiB_{domains}_domain"), |b| {
            b.iter(|| setup.map_unmap(GIB))
        });
        setup.ctx.objects().destroy_all();
    }
    let setup = Setup::new(1, PAGE_SIZE);
    group.throughput(Throughput::Elements(1));
    group.bench_function("4KiB_1_domain", |b| b.iter(|| setup.map_unmap(PAGE_SIZE)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
