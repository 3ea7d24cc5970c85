//! amd-iommu through the core: AMD v1 tables, dirty bits, IVRS aliases, unity ranges, static
//! domains.

mod common;

use common::*;
use uiommu_core::*;
use uiommu_drivers::amd::HT_RANGE_START;
use uiommu_drivers::{AmdFeatures, AmdIommu, DirectRange};
use uiommu_pgtable::fmt::amdv1::{self, AmdV1};

fn ivhd(
    features: AmdFeatures,
    unity: Vec<DirectRange>,
) -> (IommuCore, FwNode, std::sync::Arc<AmdIommu>) {
    let core = IommuCore::default();
    let node = FwNode::new("IVRS.IVHD0");
    let drv = AmdIommu::new(node.clone(), features, unity);
    core.register("ivhd0", Some(node.clone()), drv.clone())
        .unwrap();
    (core, node, drv)
}

fn endpoint(core: &IommuCore, node: &FwNode, f: PciFunction, ids: &[u32]) -> DeviceId {
    core.add_device(DeviceDesc::pci(f, None), spec(node, ids))
        .unwrap()
}

#[test]
fn dma_domain_maps_with_v1_ptes() {
    let (core, node, drv) = ivhd(AmdFeatures::default(), Vec::new());
    let nic = endpoint(
        &core,
        &node,
        pci("00:03.0", PciKind::Endpoint, false, false),
        &[0x18],
    );
    assert_eq!(drv.device_ids(nic), [0x18]);
    let domain = core.default_domain(nic).unwrap();
    domain
        .map(
            Iova(0x1000),
            PhysAddr(0x7_0000_1000),
            0x3000,
            Prot::READ_WRITE,
        )
        .unwrap();
    domain
        .map(Iova(0x20_0000), PhysAddr(0x40_0000), 0x20_0000, Prot::READ)
        .unwrap();
    assert_eq!(
        domain.iova_to_phys(Iova(0x2010)),
        Some(PhysAddr(0x7_0000_2010))
    );
    assert_eq!(
        domain.iova_to_phys(Iova(0x3f_ffff)),
        Some(PhysAddr(0x5f_ffff))
    );
    let v1 = paging::<AmdV1>(&domain);
    let (level, pte) = leaf_pte(v1, 0x2000).unwrap();
    assert_eq!(level, 0);
    assert_eq!(
        pte & (amdv1::PR | amdv1::IR | amdv1::IW | amdv1::FC),
        amdv1::PR | amdv1::IR | amdv1::IW | amdv1::FC
    );
    assert_eq!(pte & amdv1::ADDR_MASK, 0x7_0000_2000);
    let (level, pte) = leaf_pte(v1, 0x20_0000).unwrap();
    assert_eq!(level, 1);
    assert_eq!(pte & (amdv1::IR | amdv1::IW), amdv1::IR);
    assert_eq!(
        (pte >> amdv1::NL_SHIFT) & amdv1::NL_MASK,
        0,
        "a leaf has next level 0"
    );
    assert_eq!(domain.unmap(Iova(0x1000), 0x3000), 0x3000);
    assert!(leaf_pte(v1, 0x2000).is_none());
    let regions = core.reserved_regions(nic);
    assert!(regions.iter().any(|r| r.kind == ReservedKind::Msi));
    assert!(regions
        .iter()
        .any(|r| r.kind == ReservedKind::Reserved && r.start == Iova(HT_RANGE_START)));
}

#[test]
fn ivrs_alias_joins_two_devices_in_one_group() {
    let (core, node, drv) = ivhd(AmdFeatures::default(), Vec::new());
    // IVRS: device 00:05.0 issues DMA as 00:05.1 as well (an alias entry); the firmware
    // parser gives it both device IDs and the same-bus DMA alias.
    let mut aliased = pci("00:05.0", PciKind::Endpoint, false, false);
    aliased.dma_aliases = vec![(5 << 3) | 1];
    let a = endpoint(&core, &node, aliased, &[0x28, 0x29]);
    let b = endpoint(
        &core,
        &node,
        pci("00:05.1", PciKind::Endpoint, false, false),
        &[0x29],
    );
    let c = endpoint(
        &core,
        &node,
        pci("00:06.0", PciKind::Endpoint, false, false),
        &[0x30],
    );
    assert_eq!(core.group_of(a), core.group_of(b));
    assert_ne!(core.group_of(a), core.group_of(c));
    assert!(std::sync::Arc::ptr_eq(
        &core.default_domain(a).unwrap(),
        &core.default_domain(b).unwrap()
    ));
    // One DTE per device ID; the shared alias ID is the later device's.
    assert_eq!(drv.device_ids(a), [0x28]);
    assert_eq!(drv.device_ids(b), [0x29]);
    core.remove_device(b).unwrap();
    assert_eq!(drv.device_ids(b), Vec::<u16>::new());
}

#[test]
fn unity_ranges_are_direct_mapped_and_dirty_bits_follow_had() {
    let unity = DirectRange {
        start: 0xd000_0000,
        last: 0xd000_3fff,
        prot: Prot::READ,
        devices: vec!["00:07.0".parse().unwrap()],
    };
    let (core, node, _) = ivhd(
        AmdFeatures {
            dirty: true,
            ..AmdFeatures::default()
        },
        vec![unity],
    );
    let dev = endpoint(
        &core,
        &node,
        pci("00:07.0", PciKind::Endpoint, false, false),
        &[0x38],
    );
    let domain = core.default_domain(dev).unwrap();
    let (_, pte) = leaf_pte(paging::<AmdV1>(&domain), 0xd000_2000).unwrap();
    assert_eq!(
        pte & (amdv1::PR | amdv1::IR | amdv1::IW),
        amdv1::PR | amdv1::IR
    );
    assert_eq!(
        domain.iova_to_phys(Iova(0xd000_3fff)),
        Some(PhysAddr(0xd000_3fff))
    );
    assert_eq!(domain.iova_to_phys(Iova(0xd000_4000)), None);

    let flags = PagingFlags {
        nest_parent: false,
        dirty_tracking: true,
    };
    let user = core
        .domain_alloc(dev, DomainRequest::Paging { flags, data: None })
        .unwrap();
    user.map(Iova(0), PhysAddr(0x40_0000), 0x20_0000, Prot::READ_WRITE)
        .unwrap();
    let v1 = paging::<AmdV1>(&user);
    assert!(!v1.device_write(Iova(0x1000)).unwrap(), "HAD off");
    user.ops().set_dirty_tracking(true).unwrap();
    assert!(v1.device_write(Iova(0x1000)).unwrap());
    assert_ne!(leaf_pte(v1, 0x1000).unwrap().1 & amdv1::D, 0);
    // The 2 MiB leaf is dirty as a whole.
    assert_eq!(dirty(&user, 0, 0x20_0000, false), [(0, 0x20_0000)]);
    assert!(dirty(&user, 0, 0x20_0000, false).is_empty());

    let (core, node, _) = ivhd(AmdFeatures::default(), Vec::new());
    let dev = endpoint(
        &core,
        &node,
        pci("00:07.0", PciKind::Endpoint, false, false),
        &[0x38],
    );
    assert_eq!(
        core.domain_alloc(dev, DomainRequest::Paging { flags, data: None })
            .unwrap_err(),
        CoreError::NotSupported
    );
}

#[test]
fn identity_and_blocked_domains() {
    let core = IommuCore::new(CoreConfig {
        default_domain: DefaultDomainPolicy::Passthrough,
        ..CoreConfig::default()
    });
    let node = FwNode::new("IVHD");
    core.register(
        "ivhd",
        Some(node.clone()),
        AmdIommu::new(node.clone(), AmdFeatures::default(), Vec::new()),
    )
    .unwrap();
    let dev = endpoint(
        &core,
        &node,
        pci("00:02.0", PciKind::Endpoint, false, false),
        &[],
    );
    assert_eq!(core.default_domain(dev).unwrap().ty(), DomainType::Identity);
    core.claim_dma_owner(dev, DmaOwner::new()).unwrap();
    assert_eq!(core.device_domain(dev).unwrap().ty(), DomainType::Blocked);
}
