//! The driver against the device, end to end: core -> driver -> virtqueues -> device -> DMA.

mod common;

use common::*;
use std::sync::Arc;
use uiommu_core::{
    CoreConfig, CoreError, DeviceDesc, DeviceId, DmaOwner, Domain, DomainRequest, DomainType,
    FwNode, Fwspec, IommuCore, Iova, PagingFlags, PhysAddr, ProbeState, Prot, ReservedKind,
};
use uiommu_virtio::{
    DeviceConfig, DriverMemory, EndpointIommu, FaultReason, VirtioDomain, VirtioIommu,
    VirtioIommuDriver,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

const MEM_SIZE: usize = 0x100_0000;
const DRIVER_AREA: u64 = 0x1_0000;
const BUF: u64 = 0x10_0000;
const IOVA: u64 = 0x4000_0000;

struct Rig {
    mem: GuestMemoryMmap,
    device: Arc<VirtioIommu>,
    driver: Arc<VirtioIommuDriver>,
    core: IommuCore,
    fwnode: FwNode,
}

fn rig_with(config: &DeviceConfig) -> Rig {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let device = Arc::new(VirtioIommu::new(config).unwrap());
    let driver = VirtioIommuDriver::probe(
        Box::new(Arc::clone(&device)),
        DriverMemory {
            mem: mem.clone(),
            base: GuestAddress(DRIVER_AREA),
        },
    )
    .unwrap();
    let core = IommuCore::new(CoreConfig::default());
    let fwnode = FwNode::new("/viot/virtio-iommu@0");
    driver.register(&core, fwnode.clone()).unwrap();
    Rig {
        mem,
        device,
        driver,
        core,
        fwnode,
    }
}

fn rig() -> Rig {
    rig_with(&config())
}

impl Rig {
    fn add(&self, name: &str, endpoint: u32) -> DeviceId {
        let fwspec = Fwspec {
            fwnode: self.fwnode.clone(),
            ids: vec![endpoint],
        };
        self.core
            .add_device(DeviceDesc::platform(name), Some(fwspec))
            .unwrap()
    }

    /// Adds "nic" at endpoint `EP` and maps `len` bytes at `IOVA` to `BUF` with `prot` in its
    /// default domain.
    fn add_mapped(&self, len: u64, prot: Prot) -> (DeviceId, Arc<Domain>) {
        let dev = self.add("nic", EP);
        let domain = self.core.default_domain(dev).unwrap();
        domain.map(Iova(IOVA), PhysAddr(BUF), len, prot).unwrap();
        (dev, domain)
    }

    fn dma(&self, endpoint: u32) -> IommuMemory<GuestMemoryMmap, EndpointIommu> {
        let iommu = self.device.endpoint_iommu(endpoint).unwrap();
        IommuMemory::new(self.mem.clone(), iommu, true, ())
    }
}

#[test]
fn probed_device_gets_a_translated_default_domain_and_dma_goes_through_it() {
    let rig = rig();
    let dev = rig.add("nic", EP);
    assert!(matches!(
        rig.core.probe_state(dev).unwrap(),
        ProbeState::Bound { .. }
    ));
    let domain = rig.core.default_domain(dev).unwrap();
    assert_eq!(domain.ty(), DomainType::Dma);
    domain
        .map(Iova(IOVA), PhysAddr(BUF), 0x2000, Prot::READ_WRITE)
        .unwrap();

    let dma = rig.dma(EP);
    dma.write_slice(b"through the iommu", GuestAddress(IOVA + 0x1000))
        .unwrap();
    let mut seen = [0u8; 17];
    rig.mem
        .read_slice(&mut seen, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&seen, b"through the iommu");
    assert_eq!(
        domain.iova_to_phys(Iova(IOVA + 0x1234)),
        Some(PhysAddr(BUF + 0x1234))
    );
}

#[test]
fn dma_to_an_unmapped_iova_faults_and_the_fault_arrives_on_the_event_queue() {
    let rig = rig();
    let (_, _domain) = rig.add_mapped(0x1000, Prot::READ_WRITE);

    let mut byte = [0u8; 1];
    assert!(rig
        .dma(EP)
        .read_slice(&mut byte, GuestAddress(IOVA + 0x5000))
        .is_err());
    let faults = rig.driver.poll_faults();
    assert_eq!(faults.len(), 1);
    let f = faults[0];
    assert_eq!(f.endpoint, EP);
    assert_eq!(f.reason, Some(FaultReason::Mapping));
    assert_eq!(f.address, Some(IOVA + 0x5000));
    assert!(f.read && !f.write);
    assert_eq!(rig.device.faults_dropped(), 0);
    // The buffer went back: more faults keep arriving.
    for _ in 0..40 {
        let _ = rig
            .dma(EP)
            .read_slice(&mut byte, GuestAddress(IOVA + 0x9000));
        assert_eq!(rig.driver.poll_faults().len(), 1);
    }
}

#[test]
fn write_through_a_read_only_mapping_is_a_permission_fault() {
    let rig = rig();
    let (_, _domain) = rig.add_mapped(0x1000, Prot::READ);
    let dma = rig.dma(EP);
    let mut byte = [0u8; 1];
    dma.read_slice(&mut byte, GuestAddress(IOVA)).unwrap();
    assert!(dma.write_slice(&[1], GuestAddress(IOVA + 8)).is_err());
    let faults = rig.driver.poll_faults();
    assert_eq!(faults.len(), 1);
    assert!(faults[0].write && !faults[0].read);
    assert_eq!(faults[0].address, Some(IOVA + 8));
}

#[test]
fn translation_reports_the_permissions_each_mapping_was_made_with() {
    let rig = rig();
    let (_, domain) = rig.add_mapped(0x1000, Prot::READ);
    domain
        .map(
            Iova(IOVA + 0x1000),
            PhysAddr(BUF + 0x1000),
            0x1000,
            Prot::WRITE,
        )
        .unwrap();
    assert_eq!(
        domain.translate(Iova(IOVA + 0x10)),
        Some((PhysAddr(BUF + 0x10), Prot::READ))
    );
    assert_eq!(
        domain.translate(Iova(IOVA + 0x1010)),
        Some((PhysAddr(BUF + 0x1010), Prot::WRITE))
    );
    assert_eq!(domain.translate(Iova(IOVA + 0x2000)), None);
}

#[test]
fn unmap_removes_the_translation_even_after_it_was_cached() {
    let rig = rig();
    let (_, domain) = rig.add_mapped(0x1000, Prot::READ_WRITE);
    let dma = rig.dma(EP);
    dma.write_slice(&[7], GuestAddress(IOVA)).unwrap();
    assert_eq!(domain.unmap(Iova(IOVA), 0x1000), 0x1000);
    assert!(dma.write_slice(&[8], GuestAddress(IOVA)).is_err());
    assert_eq!(domain.iova_to_phys(Iova(IOVA)), None);
}

#[test]
fn unmap_of_part_of_a_mapping_unmaps_nothing() {
    let rig = rig();
    let (_, domain) = rig.add_mapped(0x3000, Prot::READ_WRITE);
    assert_eq!(domain.unmap(Iova(IOVA + 0x1000), 0x1000), 0);
    rig.dma(EP)
        .write_slice(&[1], GuestAddress(IOVA + 0x2000))
        .unwrap();
}

#[test]
fn probe_reports_the_endpoint_msi_region_and_a_sw_msi_window_otherwise() {
    let rig = rig();
    let with_msi = rig.add("a", EP);
    let without = rig.add("b", EP2);
    let regions = rig.core.reserved_regions(with_msi);
    assert!(regions.iter().any(|r| r.kind == ReservedKind::Msi
        && r.start == Iova(MSI_START)
        && r.last == Iova(MSI_END)));
    assert!(!regions.iter().any(|r| r.kind == ReservedKind::SwMsi));
    let regions = rig.core.reserved_regions(without);
    assert!(regions
        .iter()
        .any(|r| r.kind == ReservedKind::SwMsi && r.start == Iova(0x800_0000)));
}

#[test]
fn device_whose_endpoint_the_iommu_does_not_know_fails_probe() {
    let rig = rig();
    let dev = rig.add("stranger", 77);
    // The driver declines it (NoDevice), which the core records as "no IOMMU".
    assert_eq!(rig.core.probe_state(dev).unwrap(), ProbeState::NoIommu);
    assert!(rig.core.default_domain(dev).is_none());
}

#[test]
fn map_over_a_reserved_region_surfaces_the_device_status_as_invalid() {
    let rig = rig();
    let dev = rig.add("nic", EP);
    let domain = rig.core.default_domain(dev).unwrap();
    let err = domain
        .map(Iova(MSI_START), PhysAddr(BUF), 0x1000, Prot::WRITE)
        .unwrap_err();
    assert!(matches!(err, CoreError::Invalid(_)), "{err:?}");
    assert_eq!(domain.iova_to_phys(Iova(MSI_START)), None);
}

#[test]
fn overlapping_map_is_exists_and_outside_aperture_is_invalid() {
    let rig = rig();
    let (_, domain) = rig.add_mapped(0x2000, Prot::READ);
    assert_eq!(
        domain.map(Iova(IOVA + 0x1000), PhysAddr(BUF), 0x1000, Prot::READ),
        Err(CoreError::Exists)
    );
    let beyond = Iova(1 << 48);
    assert!(matches!(
        domain.map(beyond, PhysAddr(BUF), 0x1000, Prot::READ),
        Err(CoreError::Invalid(_))
    ));
}

#[test]
fn device_mapping_cap_surfaces_as_no_memory() {
    let rig = rig_with(&DeviceConfig {
        max_mappings_per_domain: 1,
        ..config()
    });
    let (_, domain) = rig.add_mapped(0x1000, Prot::READ);
    assert_eq!(
        domain.map(Iova(IOVA + 0x1000), PhysAddr(BUF), 0x1000, Prot::READ),
        Err(CoreError::NoMemory)
    );
}

#[test]
fn claiming_dma_blocks_it_and_release_replays_the_default_domain_mappings() {
    let rig = rig();
    let (dev, _default) = rig.add_mapped(0x1000, Prot::READ_WRITE);
    let dma = rig.dma(EP);
    dma.write_slice(&[1], GuestAddress(IOVA)).unwrap();

    let owner = DmaOwner::new();
    rig.core.claim_dma_owner(dev, owner).unwrap();
    assert!(
        dma.write_slice(&[2], GuestAddress(IOVA)).is_err(),
        "blocked domain lets DMA through"
    );

    // A user domain, mapped before and after attach.
    let user = rig
        .core
        .domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap();
    user.map(
        Iova(0x1000),
        PhysAddr(BUF + 0x4000),
        0x1000,
        Prot::READ_WRITE,
    )
    .unwrap();
    rig.core.attach_domain(dev, &user).unwrap();
    user.map(
        Iova(0x2000),
        PhysAddr(BUF + 0x5000),
        0x1000,
        Prot::READ_WRITE,
    )
    .unwrap();
    dma.write_slice(&[3], GuestAddress(0x1000)).unwrap();
    dma.write_slice(&[4], GuestAddress(0x2000)).unwrap();
    let mut got = [0u8; 1];
    rig.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x5000))
        .unwrap();
    assert_eq!(got, [4]);

    rig.core.detach_domain(dev, &user);
    rig.core.release_dma_owner(dev);
    // The device dropped the default domain when the endpoint left; the driver replayed it.
    dma.write_slice(&[5], GuestAddress(IOVA)).unwrap();
    rig.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, [5]);
}

#[test]
fn identity_domain_uses_the_bypass_attach_flag() {
    let rig = rig();
    let dev = rig.add("nic", EP);
    let identity = rig.core.domain_alloc(dev, DomainRequest::Identity).unwrap();
    rig.core.claim_dma_owner(dev, DmaOwner::new()).unwrap();
    rig.core.attach_domain(dev, &identity).unwrap();
    rig.dma(EP)
        .write_slice(&[9], GuestAddress(BUF + 0x10))
        .unwrap();
    let mut got = [0u8; 1];
    rig.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x10))
        .unwrap();
    assert_eq!(got, [9]);
}

#[test]
fn identity_domain_without_bypass_config_is_not_supported() {
    let mut config = config();
    config.features.bypass_config = false;
    let rig = rig_with(&config);
    let dev = rig.add("nic", EP);
    assert_eq!(
        rig.core
            .domain_alloc(dev, DomainRequest::Identity)
            .unwrap_err(),
        CoreError::NotSupported
    );
}

#[test]
fn paging_domains_get_distinct_ids_from_the_domain_range_and_give_them_back() {
    let rig = rig_with(&DeviceConfig {
        domain_range: Some((10, 13)),
        ..config()
    });
    let dev = rig.add("nic", EP);
    // 10 is the identity domain, 11 the blocked one, the default domain took 12.
    let id = |d: &uiommu_core::Domain| {
        d.ops()
            .as_any()
            .downcast_ref::<VirtioDomain>()
            .unwrap()
            .domain_id()
    };
    assert_eq!(id(&rig.core.default_domain(dev).unwrap()), 12);
    let paging = DomainRequest::Paging {
        flags: PagingFlags::default(),
        data: None,
    };
    let extra = rig.core.domain_alloc(dev, paging).unwrap();
    assert_eq!(id(&extra), 13);
    assert_eq!(
        rig.core.domain_alloc(dev, paging).unwrap_err(),
        CoreError::NoMemory
    );
    drop(extra);
    assert_eq!(id(&rig.core.domain_alloc(dev, paging).unwrap()), 13);
}

#[test]
fn two_endpoints_in_one_group_share_the_domain() {
    let rig = rig();
    let fwspec = Fwspec {
        fwnode: rig.fwnode.clone(),
        ids: vec![EP, EP2],
    };
    let dev = rig
        .core
        .add_device(DeviceDesc::platform("multi"), Some(fwspec))
        .unwrap();
    let domain = rig.core.default_domain(dev).unwrap();
    domain
        .map(Iova(IOVA), PhysAddr(BUF), 0x1000, Prot::READ)
        .unwrap();
    assert_eq!(
        rig.device
            .translate(EP2, IOVA, vm_memory::Permissions::Read),
        Ok(BUF)
    );
    assert_eq!(
        rig.device.translate(EP, IOVA, vm_memory::Permissions::Read),
        Ok(BUF)
    );
}

#[test]
fn removing_the_device_detaches_its_endpoint() {
    let rig = rig();
    let (dev, _domain) = rig.add_mapped(0x1000, Prot::READ);
    rig.core.remove_device(dev).unwrap();
    assert_eq!(
        rig.device.translate(EP, IOVA, vm_memory::Permissions::Read),
        Err(FaultReason::Domain)
    );
}

#[test]
fn driver_refuses_a_device_without_map_unmap() {
    struct NoMapUnmap(Arc<VirtioIommu>);
    impl std::fmt::Debug for NoMapUnmap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("NoMapUnmap")
        }
    }
    impl uiommu_virtio::Transport for NoMapUnmap {
        fn device_features(&self) -> u64 {
            self.0.device_features() & !(1 << uiommu_virtio::spec::VIRTIO_IOMMU_F_MAP_UNMAP)
        }
        fn set_driver_features(&self, f: u64) -> u64 {
            self.0.set_driver_features(f)
        }
        fn read_config(&self) -> uiommu_virtio::spec::Config {
            self.0.config()
        }
        fn write_bypass(&self, b: u8) {
            self.0.write_bypass(b)
        }
        fn activate(
            &self,
            mem: &GuestMemoryMmap,
            queues: [uiommu_virtio::driver::QueueLayout; 2],
        ) -> Result<(), uiommu_virtio::TransportError> {
            uiommu_virtio::Transport::activate(&self.0, mem, queues)
        }
        fn notify(&self, q: u16) -> Result<(), uiommu_virtio::TransportError> {
            uiommu_virtio::Transport::notify(&self.0, q)
        }
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let device = Arc::new(VirtioIommu::new(&config()).unwrap());
    let err = VirtioIommuDriver::probe(
        Box::new(NoMapUnmap(device)),
        DriverMemory {
            mem,
            base: GuestAddress(DRIVER_AREA),
        },
    )
    .unwrap_err();
    assert_eq!(err, CoreError::NotSupported);
}

#[test]
fn driver_area_outside_guest_memory_is_an_io_error() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
    let device = Arc::new(VirtioIommu::new(&config()).unwrap());
    let err = VirtioIommuDriver::probe(
        Box::new(device),
        DriverMemory {
            mem,
            base: GuestAddress(0x1000),
        },
    )
    .unwrap_err();
    assert!(matches!(err, CoreError::Io(_)), "{err:?}");
}

#[test]
fn platform_description_with_a_viot_pci_range_routes_devices_to_the_driver() {
    use uiommu_core::platform::{DriverFactory, IommuDesc, Platform};
    use uiommu_core::IommuOps;
    use uiommu_virtio::EndpointConfig;

    // Requester ids 00:00.0..=00:1f.7 map to endpoints 0x100 + rid.
    let text = r#"
        [[iommu]]
        name = "viommu"
        driver = "virtio-iommu"
        fwnode = "VIOT"
        [[pci]]
        address = "00:02.0"
        [[pci]]
        address = "00:03.0"
        [[link]]
        iommu = "viommu"
        pci-range = { segment = 0, first = "00:00.0", last = "00:1f.7", endpoint-base = 0x100 }
    "#;
    struct Factory {
        mem: GuestMemoryMmap,
        device: Option<Arc<VirtioIommu>>,
    }
    impl DriverFactory for Factory {
        fn create(
            &mut self,
            iommu: &IommuDesc,
            endpoints: &[u32],
        ) -> Result<Arc<dyn IommuOps>, String> {
            assert_eq!(iommu.driver, "virtio-iommu");
            assert_eq!(
                endpoints,
                [0x110, 0x118],
                "the ids firmware routes to the IOMMU"
            );
            let config = DeviceConfig {
                endpoints: endpoints
                    .iter()
                    .map(|&id| EndpointConfig {
                        id,
                        reserved: vec![],
                    })
                    .collect(),
                ..DeviceConfig::default()
            };
            let memory = DriverMemory {
                mem: self.mem.clone(),
                base: GuestAddress(DRIVER_AREA),
            };
            let (driver, device) =
                VirtioIommuDriver::with_device(&config, memory).map_err(|e| e.to_string())?;
            self.device = Some(device);
            Ok(driver)
        }
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut factory = Factory {
        mem: mem.clone(),
        device: None,
    };
    let core = IommuCore::new(CoreConfig::default());
    let platform = Platform::parse("viot.toml", text).unwrap();
    let built = platform.build(&core, &mut factory).unwrap();
    let device = factory.device.unwrap();
    let nic = built.devices[1]; // 00:03.0: requester id 0x18, endpoint 0x118
    assert!(matches!(
        core.probe_state(nic).unwrap(),
        ProbeState::Bound { .. }
    ));
    let domain = core.default_domain(nic).unwrap();
    domain
        .map(Iova(IOVA), PhysAddr(BUF), 0x1000, Prot::READ)
        .unwrap();
    assert_eq!(
        device.translate(0x118, IOVA, vm_memory::Permissions::Read),
        Ok(BUF)
    );
    assert_eq!(
        device.translate(0x110, IOVA, vm_memory::Permissions::Read),
        Err(FaultReason::Mapping),
        "00:02.0 has its own domain"
    );
}
