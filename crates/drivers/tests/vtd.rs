//! intel-iommu through the core: second-stage tables, dirty bits, RMRR direct mappings, PCI
//! groups, static domains.

mod common;

use common::*;
use uiommu_core::*;
use uiommu_drivers::{DirectRange, IntelIommu, VtdFeatures};
use uiommu_pgtable::fmt::vtdss::{self, VtdSs};

const RMRR: DirectRangeSpec = DirectRangeSpec {
    start: 0x7a00_0000,
    last: 0x7a01_ffff,
};

struct DirectRangeSpec {
    start: u64,
    last: u64,
}

fn drhd(features: VtdFeatures, rmrr_devices: &[&str]) -> (IommuCore, FwNode) {
    let core = IommuCore::default();
    let node = FwNode::new("DMAR.DRHD0");
    let rmrrs = vec![DirectRange {
        start: RMRR.start,
        last: RMRR.last,
        prot: Prot::READ_WRITE,
        devices: rmrr_devices.iter().map(|a| a.parse().unwrap()).collect(),
    }];
    core.register(
        "dmar0",
        Some(node.clone()),
        IntelIommu::new(node.clone(), features, rmrrs),
    )
    .unwrap();
    (core, node)
}

fn endpoint(core: &IommuCore, node: &FwNode, addr: &str) -> DeviceId {
    let f = pci(addr, PciKind::Endpoint, false, false);
    let rid = f.address.requester_id();
    core.add_device(DeviceDesc::pci(f, None), spec(node, &[u32::from(rid)]))
        .unwrap()
}

#[test]
fn dma_domain_maps_with_second_stage_ptes() {
    let (core, node) = drhd(VtdFeatures::default(), &[]);
    let gpu = endpoint(&core, &node, "00:02.0");
    let domain = core.default_domain(gpu).unwrap();
    assert_eq!(domain.ty(), DomainType::Dma);
    assert_eq!(domain.ops().aperture().last, Iova((1 << 48) - 1));
    domain
        .map(
            Iova(0x40_0000),
            PhysAddr(0x1_0040_0000),
            0x20_1000,
            Prot::READ_WRITE,
        )
        .unwrap();
    assert_eq!(
        domain.iova_to_phys(Iova(0x60_0abc)),
        Some(PhysAddr(0x1_0060_0abc))
    );
    let ss = paging::<VtdSs>(&domain);
    assert_eq!(ss.table().format().aw(), 2, "4 levels for 48 bits");
    let (level, pte) = leaf_pte(ss, 0x40_0000).unwrap();
    assert_eq!(level, 1);
    assert_eq!(
        pte & (vtdss::R | vtdss::W | vtdss::PS),
        vtdss::R | vtdss::W | vtdss::PS
    );
    assert_eq!(pte & vtdss::ADDR_MASK, 0x1_0040_0000);
    let (level, pte) = leaf_pte(ss, 0x60_0000).unwrap();
    assert_eq!(level, 0);
    assert_eq!(pte & (vtdss::R | vtdss::W | vtdss::PS), vtdss::R | vtdss::W);
    assert_eq!(domain.unmap(Iova(0x40_0000), 0x20_1000), 0x20_1000);
    assert!(leaf_pte(ss, 0x60_0000).is_none());
    assert_eq!(domain.iova_to_phys(Iova(0x40_0000)), None);
}

#[test]
fn rmrr_regions_are_direct_mapped_into_the_default_domain_of_their_devices() {
    let (core, node) = drhd(VtdFeatures::default(), &["00:14.0"]);
    let usb = endpoint(&core, &node, "00:14.0");
    let nic = endpoint(&core, &node, "00:19.0");
    let regions = core.reserved_regions(usb);
    assert_eq!(regions[0].kind, ReservedKind::Direct);
    assert_eq!(
        (regions[0].start, regions[0].last),
        (Iova(RMRR.start), Iova(RMRR.last))
    );
    assert!(regions
        .iter()
        .any(|r| r.kind == ReservedKind::Msi && r.start == Iova(0xfee0_0000)));
    assert!(core
        .reserved_regions(nic)
        .iter()
        .all(|r| r.kind != ReservedKind::Direct));

    let domain = core.default_domain(usb).unwrap();
    for page in (RMRR.start..RMRR.last).step_by(0x1000) {
        assert_eq!(
            domain.iova_to_phys(Iova(page + 4)),
            Some(PhysAddr(page + 4))
        );
    }
    assert_eq!(domain.iova_to_phys(Iova(RMRR.last + 1)), None);
    let (_, pte) = leaf_pte(paging::<VtdSs>(&domain), RMRR.start).unwrap();
    assert_eq!(pte & (vtdss::R | vtdss::W), vtdss::R | vtdss::W);
    // The NIC, outside the RMRR's scope, gets nothing mapped.
    assert_eq!(
        core.default_domain(nic)
            .unwrap()
            .iova_to_phys(Iova(RMRR.start)),
        None
    );
}

#[test]
fn dirty_bits_are_recorded_only_while_tracking_is_on() {
    let flags = PagingFlags {
        nest_parent: false,
        dirty_tracking: true,
    };
    let (core, node) = drhd(VtdFeatures::default(), &[]);
    let dev = endpoint(&core, &node, "00:03.0");
    assert_eq!(
        core.domain_alloc(dev, DomainRequest::Paging { flags, data: None })
            .unwrap_err(),
        CoreError::NotSupported
    );

    let (core, node) = drhd(
        VtdFeatures {
            dirty: true,
            ..VtdFeatures::default()
        },
        &[],
    );
    let dev = endpoint(&core, &node, "00:03.0");
    assert!(core.capable(dev, Capability::DirtyTracking));
    let domain = core
        .domain_alloc(dev, DomainRequest::Paging { flags, data: None })
        .unwrap();
    domain
        .map(Iova(0x8000), PhysAddr(0x3_0000), 0x2000, Prot::READ_WRITE)
        .unwrap();
    let ss = paging::<VtdSs>(&domain);
    assert!(!ss.device_write(Iova(0x8000)).unwrap(), "SSADE is off");
    let mut none = |_: Iova, _: u64| {};
    assert!(matches!(
        domain
            .ops()
            .read_and_clear_dirty(Iova(0), 0x10_0000, false, &mut none),
        Err(CoreError::Invalid(_))
    ));
    domain.ops().set_dirty_tracking(true).unwrap();
    assert!(ss.device_write(Iova(0x9000)).unwrap());
    assert_ne!(leaf_pte(ss, 0x9000).unwrap().1 & vtdss::D, 0);
    assert_eq!(leaf_pte(ss, 0x8000).unwrap().1 & vtdss::D, 0);
    assert_eq!(dirty(&domain, 0, 0x10_0000, false), [(0x9000, 0x1000)]);
    assert_eq!(leaf_pte(ss, 0x9000).unwrap().1 & vtdss::D, 0);
    assert!(ss.device_write(Iova(0xa000)).is_err(), "not mapped");
}

#[test]
fn root_port_without_acs_groups_everything_below_it() {
    let (core, node) = drhd(VtdFeatures::default(), &[]);
    let rp = core
        .add_device(
            DeviceDesc::pci(pci("00:1c.0", PciKind::RootPort, false, false), None),
            spec(&node, &[0xe0]),
        )
        .unwrap();
    let a = core
        .add_device(
            DeviceDesc::pci(pci("02:00.0", PciKind::Endpoint, false, false), Some(rp)),
            spec(&node, &[0x200]),
        )
        .unwrap();
    let acs_rp = core
        .add_device(
            DeviceDesc::pci(pci("00:1d.0", PciKind::RootPort, false, true), None),
            spec(&node, &[0xe8]),
        )
        .unwrap();
    let b = core
        .add_device(
            DeviceDesc::pci(
                pci("03:00.0", PciKind::Endpoint, false, false),
                Some(acs_rp),
            ),
            spec(&node, &[0x300]),
        )
        .unwrap();
    assert_eq!(core.group_of(a), core.group_of(rp));
    assert_ne!(core.group_of(b), core.group_of(acs_rp));
    assert_ne!(core.group_of(b), core.group_of(a));
}

#[test]
fn identity_and_blocked_domains() {
    let core = IommuCore::new(CoreConfig {
        default_domain: DefaultDomainPolicy::Passthrough,
        ..CoreConfig::default()
    });
    let node = FwNode::new("DRHD");
    core.register(
        "dmar",
        Some(node.clone()),
        IntelIommu::new(node.clone(), VtdFeatures::default(), Vec::new()),
    )
    .unwrap();
    let dev = endpoint(&core, &node, "00:05.0");
    assert_eq!(core.default_domain(dev).unwrap().ty(), DomainType::Identity);
    core.claim_dma_owner(dev, DmaOwner::new()).unwrap();
    assert_eq!(core.device_domain(dev).unwrap().ty(), DomainType::Blocked);
}
