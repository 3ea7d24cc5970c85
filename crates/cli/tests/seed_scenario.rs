//! The seed scenario end to end: the embedded x86-like platform with PCI devices behind a
//! virtio-iommu and mock devices behind the mock driver, both registered on one core.

use std::collections::BTreeSet;

use uiommu::machine::Machine;
use uiommu::probe::DEFAULT_PLATFORM;
use uiommu_core::*;
use uiommu_mock::MockPagingDomain;
use uiommu_virtio::FaultReason;
use vm_memory::{Bytes, GuestAddress, IommuMemory};

fn machine() -> Machine {
    Machine::build("<embedded>", DEFAULT_PLATFORM, CoreConfig::default()).unwrap()
}

fn device(m: &Machine, name: &str) -> DeviceReport {
    m.core
        .devices()
        .into_iter()
        .find(|d| d.name == name)
        .unwrap()
}

fn group(m: &Machine, name: &str) -> GroupId {
    m.core.group_of(device(m, name).id).unwrap()
}

#[test]
fn every_device_reaches_exactly_the_driver_its_firmware_names() {
    let m = machine();
    let reports = m.core.devices();
    assert_eq!(reports.len(), 13);
    for r in &reports {
        let expected = match (r.bus, r.fwspec.is_some()) {
            (BusKind::Pci, true) => Some("virtio-iommu"),
            (BusKind::Mock, true) => Some("mock"),
            _ => None,
        };
        assert_eq!(r.driver.as_deref(), expected, "{}", r.name);
    }
    // The virtio-iommu itself and the UART are outside every firmware table.
    assert_eq!(device(&m, "0000:00:01.0").state, ProbeState::NoIommu);
    assert_eq!(device(&m, "uart0").state, ProbeState::NoIommu);
    // The VIOT-like range starts at 00:02.0 (requester id 0x10) with endpoint id 0x10, so
    // 01:00.0 (requester id 0x100) is endpoint 0x10 + (0x100 - 0x10).
    assert_eq!(device(&m, "0000:01:00.0").fwspec.unwrap().ids, [0x100]);
}

#[test]
fn pci_groups_follow_isolation() {
    let m = machine();
    assert_eq!(
        group(&m, "0000:00:03.0"),
        group(&m, "0000:00:03.1"),
        "NIC without ACS"
    );
    let bridge = group(&m, "0000:02:00.0");
    assert_eq!(group(&m, "0000:03:00.0"), bridge);
    assert_eq!(group(&m, "0000:03:01.0"), bridge);
    let isolated: BTreeSet<GroupId> = [
        "0000:00:02.0",
        "0000:01:00.0",
        "0000:00:1c.0",
        "0000:00:1d.0",
    ]
    .iter()
    .map(|d| group(&m, d))
    .chain([bridge, group(&m, "0000:00:03.0")])
    .collect();
    assert_eq!(isolated.len(), 6);
    assert_ne!(group(&m, "iommufd_mock0"), group(&m, "iommufd_mock1"));
}

/// A user takes a GPU over, maps a buffer for it, and the GPU's DMA goes through the
/// virtio-iommu: translated, permission-checked, and faults reported on the event queue.
#[test]
fn dma_through_the_virtio_iommu_is_translated_checked_and_faults_are_reported() {
    let m = machine();
    let gpu = device(&m, "0000:00:02.0");
    let endpoint = gpu.fwspec.unwrap().ids[0];
    let owner = DmaOwner::new();
    m.core.claim_dma_owner(gpu.id, owner).unwrap();
    let domain = m
        .core
        .domain_alloc(
            gpu.id,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap();
    m.core.attach_domain(gpu.id, &domain).unwrap();
    const IOVA: u64 = 0x4000_0000;
    const BUF: u64 = 0x200_0000;
    domain
        .map(Iova(IOVA), PhysAddr(BUF), 0x2000, Prot::READ_WRITE)
        .unwrap();
    domain
        .map(
            Iova(IOVA + 0x2000),
            PhysAddr(BUF + 0x2000),
            0x1000,
            Prot::READ,
        )
        .unwrap();

    let virtio = &m.virtio[0];
    let dma = IommuMemory::new(
        m.ram.clone(),
        virtio.device.endpoint_iommu(endpoint).unwrap(),
        true,
        (),
    );
    dma.write_slice(b"through the IOMMU", GuestAddress(IOVA + 0x1000))
        .unwrap();
    let mut seen = [0u8; 17];
    m.ram
        .read_slice(&mut seen, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&seen, b"through the IOMMU");

    // Writing to the read-only page and reading an unmapped one both fault.
    assert!(dma.write_slice(&[1], GuestAddress(IOVA + 0x2000)).is_err());
    assert!(dma
        .read_slice(&mut seen, GuestAddress(IOVA + 0x8000))
        .is_err());
    let faults = virtio.driver.poll_faults();
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert!(faults.iter().all(|f| f.endpoint == endpoint));
    assert_eq!(faults[1].reason, Some(FaultReason::Mapping));
    assert_eq!(faults[1].address, Some(IOVA + 0x8000));

    // Releasing ownership returns the GPU to its default (DMA) domain; the user's mappings are
    // no longer reachable.
    m.core.detach_domain(gpu.id, &domain);
    m.core.release_dma_owner(gpu.id);
    assert_eq!(m.core.device_domain(gpu.id).unwrap().ty(), DomainType::Dma);
    assert!(dma
        .read_slice(&mut seen, GuestAddress(IOVA + 0x1000))
        .is_err());
}

/// The mock device beside it: its own domain, its own page table, untouched by the virtio side.
#[test]
fn the_mock_driver_translates_its_own_devices_beside_virtio() {
    let m = machine();
    let mock_dev = device(&m, "iommufd_mock0");
    m.core
        .claim_dma_owner(mock_dev.id, DmaOwner::new())
        .unwrap();
    let domain = m
        .core
        .domain_alloc(
            mock_dev.id,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap();
    m.core.attach_domain(mock_dev.id, &domain).unwrap();
    domain
        .map(
            Iova(0x100_0000),
            PhysAddr(0x7000_0000),
            0x1000,
            Prot::READ_WRITE,
        )
        .unwrap();
    assert_eq!(
        domain.iova_to_phys(Iova(0x100_0123)),
        Some(PhysAddr(0x7000_0123))
    );
    assert_eq!(domain.iova_to_phys(Iova(0x100_1000)), None, "unmapped");
    let table: &MockPagingDomain = domain.ops().as_any().downcast_ref().unwrap();
    assert_eq!(table.mapped_pages(), 2);
    // A mock domain cannot be attached to a virtio-iommu device, nor the other way round.
    let gpu = device(&m, "0000:00:02.0");
    m.core.claim_dma_owner(gpu.id, DmaOwner::new()).unwrap();
    assert!(matches!(
        m.core.attach_domain(gpu.id, &domain),
        Err(CoreError::Invalid(_))
    ));
    // Nothing was mapped on the virtio-iommu.
    assert_eq!(
        m.virtio[0]
            .device
            .translate(0x10, 0x100_0000, vm_memory::Permissions::Read)
            .ok(),
        None
    );
}
