//! The I/OAT model DMAing through a real uiommu-core domain of the virtio-iommu driver, with
//! "physical" addresses that are virtual addresses of this process (the project's convention).

mod common;

use std::sync::Arc;

use common::*;
use uiommu_core::{
    CoreConfig, DeviceDesc, Domain, FwNode, Fwspec, IommuCore, Iova, PhysAddr, Prot,
};
use uiommu_devices::ioat::{regs::*, IoatConfig};
use uiommu_devices::{Access, DmaFault, DmaSpace, DomainDma};
use uiommu_virtio::{DeviceConfig, DriverMemory, EndpointConfig, VirtioIommuDriver};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const EP: u32 = 4;
const PAGE: u64 = 4096;
/// Host buffer: 64 pages.
const HOST_SIZE: usize = 64 * PAGE as usize;
const DESC_IOVA: u64 = 0x1000_0000;
const SRC_IOVA: u64 = 0x2000_0000;
const DST_IOVA: u64 = 0x3000_0000;

struct World {
    _core: IommuCore,
    _driver: Arc<VirtioIommuDriver>,
    domain: Arc<Domain>,
    /// The buffer the domain maps, by offset.
    host: GuestMemoryMmap,
    host_va: u64,
    dma: Arc<DomainDma>,
}

impl World {
    fn new() -> World {
        let driver_mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
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
        let domain = core.default_domain(dev).unwrap();
        let host = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), HOST_SIZE)]).unwrap();
        let host_va = host.get_host_address(GuestAddress(0)).unwrap() as u64;
        let dma = Arc::new(DomainDma::new(Some(domain.clone())));
        World {
            _core: core,
            _driver: driver,
            domain,
            host,
            host_va,
            dma,
        }
    }

    /// Map `pages` pages of the host buffer from page `first` at `iova`.
    fn map(&self, iova: u64, first: u64, pages: u64, prot: Prot) {
        self.domain
            .map(
                Iova(iova),
                PhysAddr(self.host_va + first * PAGE),
                pages * PAGE,
                prot,
            )
            .unwrap();
    }

    fn host_bytes(&self) -> Vec<u8> {
        let mut all = vec![0u8; HOST_SIZE];
        self.host.read_slice(&mut all, GuestAddress(0)).unwrap();
        all
    }

    fn put(&self, page: u64, offset: u64, data: &[u8]) {
        self.host
            .write_slice(data, GuestAddress(page * PAGE + offset))
            .unwrap();
    }

    fn rig(&self) -> Rig {
        let rig = Rig::new(self.dma.clone(), IoatConfig::default());
        rig.init();
        rig
    }
}

/// Page layout of the host buffer: descriptors in page 0, source in pages 8..24, destination
/// in pages 32..48 (mapped with `dst_prot`).
fn standard(dst_prot: Prot) -> World {
    let world = World::new();
    world.map(DESC_IOVA, 0, 1, Prot::READ_WRITE);
    world.map(SRC_IOVA, 8, 16, Prot::READ);
    world.map(DST_IOVA, 32, 16, dst_prot);
    world
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

#[test]
fn memcpy_of_several_descriptors_through_a_virtio_iommu_domain() {
    let world = standard(Prot::READ_WRITE);
    let src = pattern(16 * PAGE as usize, 0xa5);
    world.put(8, 0, &src);
    // Three descriptors, crossing pages, at different offsets.
    let copies = [
        (0x10u64, 0x0u64, 0x1ff0u32),
        (0x3000, 0x2400, 0x5000),
        (0x9001, 0xa003, 0x777),
    ];
    for (i, &(s, d, n)) in copies.iter().enumerate() {
        let next = DESC_IOVA + ((i as u64 + 1) % 3) * 64;
        let desc = copy_descriptor(SRC_IOVA + s, DST_IOVA + d, n, next, 0);
        world.put(0, i as u64 * 64, bytes(&desc));
    }
    let rig = world.rig();
    rig.start(DESC_IOVA, 3);
    rig.wait().unwrap();
    let mut expected = vec![0u8; 16 * PAGE as usize];
    for &(s, d, n) in &copies {
        expected[d as usize..(d + u64::from(n)) as usize]
            .copy_from_slice(&src[s as usize..(s + u64::from(n)) as usize]);
    }
    let all = world.host_bytes();
    assert_eq!(all[32 * PAGE as usize..48 * PAGE as usize], expected[..]);
    assert_eq!(rig.read(CHANSTS, 8), (DESC_IOVA + 128) | 2);
}

#[test]
fn dma_to_an_unmapped_iova_halts_with_chanerr_and_touches_nothing() {
    let world = standard(Prot::READ_WRITE);
    world.put(8, 0, &pattern(16 * PAGE as usize, 3));
    // The last 0x100 bytes fall one page past the destination mapping.
    let desc = copy_descriptor(SRC_IOVA, DST_IOVA + 16 * PAGE - 0xf00, 0x1000, DESC_IOVA, 0);
    world.put(0, 0, bytes(&desc));
    let before = world.host_bytes();
    let rig = world.rig();
    rig.start(DESC_IOVA, 1);
    assert_eq!(rig.wait(), Err(CHANERR_WRITE_DATA_ERR));
    assert_eq!(rig.status(), 3);
    assert!(
        world.host_bytes() == before,
        "no byte of host memory changed"
    );
    // From an unmapped source, too.
    rig.reset();
    let desc = copy_descriptor(0x6000_0000, DST_IOVA, 0x10, DESC_IOVA, 0);
    world.put(0, 0, bytes(&desc));
    let before = world.host_bytes();
    rig.start(DESC_IOVA, 1);
    assert_eq!(rig.wait(), Err(CHANERR_READ_DATA_ERR));
    assert!(world.host_bytes() == before);
}

#[test]
fn write_through_a_read_only_mapping_faults() {
    let world = standard(Prot::READ);
    world.put(8, 0, &pattern(PAGE as usize, 9));
    let desc = copy_descriptor(SRC_IOVA, DST_IOVA, 0x100, DESC_IOVA, 0);
    world.put(0, 0, bytes(&desc));
    let before = world.host_bytes();
    let rig = world.rig();
    rig.start(DESC_IOVA, 1);
    assert_eq!(rig.wait(), Err(CHANERR_WRITE_DATA_ERR));
    assert!(world.host_bytes() == before);
    assert_eq!(
        world.dma.write(Iova(DST_IOVA + 8), &[1]),
        Err(DmaFault::Permission {
            iova: DST_IOVA + 8,
            access: Access::Write
        })
    );
    // A source mapped write-only cannot be read: the source is checked first.
    world.map(0x5000_0000, 60, 1, Prot::WRITE);
    assert_eq!(
        world.dma.copy(Iova(0x5000_0000), Iova(DST_IOVA), 4),
        Err(DmaFault::Permission {
            iova: 0x5000_0000,
            access: Access::Read
        })
    );
    world.dma.write(Iova(0x5000_0000), &[1]).unwrap();
}

#[test]
fn msix_interrupt_after_a_copy_through_the_domain() {
    let world = standard(Prot::READ_WRITE);
    let desc = copy_descriptor(SRC_IOVA, DST_IOVA + 64, 8, DESC_IOVA, DESC_INT_EN);
    world.put(0, 0, bytes(&desc));
    world.put(8, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let rig = world.rig();
    rig.start(DESC_IOVA, 1);
    rig.wait().unwrap();
    assert_eq!(rig.sink.delivered().len(), 1);
    let all = world.host_bytes();
    let at = 32 * PAGE as usize + 64;
    assert_eq!(all[at..at + 8], [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn detaching_blocks_dma_and_unmapping_faults_later_accesses() {
    let world = standard(Prot::READ_WRITE);
    world.dma.write(Iova(DST_IOVA), &[7; 16]).unwrap();
    let previous = world.dma.attach(None);
    assert!(previous.is_some());
    assert_eq!(
        world.dma.read(Iova(DST_IOVA), &mut [0; 4]),
        Err(DmaFault::Translation {
            iova: DST_IOVA,
            access: Access::Read
        })
    );
    world.dma.attach(previous);
    let mut buf = [0u8; 16];
    world.dma.read(Iova(DST_IOVA), &mut buf).unwrap();
    assert_eq!(buf, [7; 16]);
    assert_eq!(world.domain.unmap(Iova(DST_IOVA), 16 * PAGE), 16 * PAGE);
    assert!(matches!(
        world.dma.read(Iova(DST_IOVA), &mut buf),
        Err(DmaFault::Translation { .. })
    ));
}
