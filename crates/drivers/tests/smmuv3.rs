//! arm-smmu-v3 through the core: stream IDs, groups, stage-1/stage-2 tables, HTTU dirty
//! tracking, static domains.

mod common;

use common::*;
use uiommu_core::*;
use uiommu_drivers::smmuv3::{SmmuV3, SmmuV3Features, MSI_IOVA_BASE};
use uiommu_drivers::StaticDomain;
use uiommu_pgtable::fmt::arm_lpae::{self, ArmLpae};

fn smmu(features: SmmuV3Features) -> (IommuCore, FwNode, std::sync::Arc<SmmuV3>) {
    let core = IommuCore::default();
    let node = FwNode::new("\\_SB.SMMU0");
    let drv = SmmuV3::new(node.clone(), features);
    core.register("smmu0", Some(node.clone()), drv.clone())
        .unwrap();
    (core, node, drv)
}

#[test]
fn stage1_dma_domain_maps_with_lpae_stage1_descriptors() {
    let (core, node, drv) = smmu(SmmuV3Features::default());
    let nic = core
        .add_device(
            DeviceDesc::platform("nic"),
            spec(&node, &[0x20, 0x21, 0x20]),
        )
        .unwrap();
    assert_eq!(drv.stream_ids(nic), [0x20, 0x21]);
    let domain = core.default_domain(nic).unwrap();
    assert_eq!(domain.ty(), DomainType::Dma);
    assert_eq!(
        domain.ops().pgsize_bitmap(),
        (1 << 12) | (1 << 21) | (1 << 30)
    );
    assert_eq!(domain.ops().aperture().last, Iova((1 << 48) - 1));

    domain
        .map(
            Iova(0x4000_0000),
            PhysAddr(0x8_0000_0000),
            0x20_0000,
            Prot::READ_WRITE,
        )
        .unwrap();
    domain
        .map(Iova(0x1000), PhysAddr(0x9000_3000), 0x1000, Prot::READ)
        .unwrap();
    assert_eq!(
        domain.iova_to_phys(Iova(0x4000_0000 + 0x1_2345)),
        Some(PhysAddr(0x8_0001_2345))
    );
    assert_eq!(
        domain.iova_to_phys(Iova(0x1008)),
        Some(PhysAddr(0x9000_3008))
    );

    let s1 = paging::<ArmLpae>(&domain);
    // A 2 MiB block at Arm level 2: block type, AF, inner shareable, cacheable, writable,
    // unprivileged access.
    let (level, pte) = leaf_pte(s1, 0x4000_0000).unwrap();
    assert_eq!(level, 1);
    assert_eq!(pte & arm_lpae::TYPE_MASK, arm_lpae::TYPE_BLOCK);
    assert_eq!(pte & arm_lpae::ADDR_MASK, 0x8_0000_0000);
    assert_ne!(pte & arm_lpae::AF, 0);
    assert_eq!(pte & (3 << 8), arm_lpae::SH_IS);
    assert_eq!(
        (pte >> arm_lpae::ATTR_INDEX_SHIFT) & 7,
        arm_lpae::ATTR_IDX_CACHE
    );
    assert_eq!(pte & arm_lpae::AP_RDONLY, 0);
    assert_ne!(pte & arm_lpae::AP_UNPRIV, 0);
    assert_eq!(
        pte & arm_lpae::DBM,
        0,
        "no DBM without a dirty-tracking domain"
    );
    // A 4 KiB page at Arm level 3, read-only.
    let (level, pte) = leaf_pte(s1, 0x1000).unwrap();
    assert_eq!(level, 0);
    assert_eq!(pte & arm_lpae::TYPE_MASK, arm_lpae::TYPE_TABLE_OR_PAGE);
    assert_ne!(pte & arm_lpae::AP_RDONLY, 0);

    assert_eq!(domain.unmap(Iova(0x4000_0000), 0x20_0000), 0x20_0000);
    assert_eq!(domain.iova_to_phys(Iova(0x4000_0000)), None);
    assert!(leaf_pte(s1, 0x4000_0000).is_none());
    assert_eq!(
        domain.map(Iova(0x1000), PhysAddr(0), 0x1000, Prot::READ),
        Err(CoreError::Exists)
    );
    assert!(matches!(
        domain.map(Iova(1 << 48), PhysAddr(0), 0x1000, Prot::READ),
        Err(CoreError::Invalid(_))
    ));
}

#[test]
fn nest_parent_is_a_stage2_table_and_needs_both_stages() {
    let (core, node, _) = smmu(SmmuV3Features::default());
    let dev = core
        .add_device(DeviceDesc::platform("gpu"), spec(&node, &[3]))
        .unwrap();
    let parent = core
        .domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: PagingFlags {
                    nest_parent: true,
                    dirty_tracking: false,
                },
                data: None,
            },
        )
        .unwrap();
    parent
        .map(
            Iova(0x20_0000),
            PhysAddr(0x4000_0000),
            0x1000,
            Prot::READ_WRITE,
        )
        .unwrap();
    let s2 = paging::<ArmLpae>(&parent);
    let (_, pte) = leaf_pte(s2, 0x20_0000).unwrap();
    assert_eq!(
        pte & (arm_lpae::S2AP_READ | arm_lpae::S2AP_WRITE),
        arm_lpae::S2AP_READ | arm_lpae::S2AP_WRITE
    );
    assert_eq!(pte & (0xf << 2), arm_lpae::MEMATTR_OIWB);
    assert_eq!(pte & arm_lpae::TYPE_MASK, arm_lpae::TYPE_TABLE_OR_PAGE);

    // Stage 1 only: no nest parent; stage 2 only: DMA domains are stage 2.
    let (core, node, _) = smmu(SmmuV3Features {
        stage2: false,
        ..SmmuV3Features::default()
    });
    let dev = core
        .add_device(DeviceDesc::platform("gpu"), spec(&node, &[3]))
        .unwrap();
    let nest = PagingFlags {
        nest_parent: true,
        dirty_tracking: false,
    };
    assert_eq!(
        core.domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: nest,
                data: None
            }
        )
        .unwrap_err(),
        CoreError::NotSupported
    );
    let (core, node, _) = smmu(SmmuV3Features {
        stage1: false,
        ..SmmuV3Features::default()
    });
    let dev = core
        .add_device(DeviceDesc::platform("gpu"), spec(&node, &[3]))
        .unwrap();
    let domain = core.default_domain(dev).unwrap();
    domain
        .map(Iova(0), PhysAddr(0x1000), 0x1000, Prot::READ)
        .unwrap();
    let (_, pte) = leaf_pte(paging::<ArmLpae>(&domain), 0).unwrap();
    assert_eq!(
        pte & (arm_lpae::S2AP_READ | arm_lpae::S2AP_WRITE),
        arm_lpae::S2AP_READ
    );
}

#[test]
fn httu_dirty_tracking_uses_dbm_and_reports_written_leaves() {
    let dirty_flags = PagingFlags {
        nest_parent: false,
        dirty_tracking: true,
    };
    // Without HTTU there is no dirty-tracking domain.
    let (core, node, _) = smmu(SmmuV3Features::default());
    let dev = core
        .add_device(DeviceDesc::platform("nic"), spec(&node, &[1]))
        .unwrap();
    assert!(!core.capable(dev, Capability::DirtyTracking));
    let req = DomainRequest::Paging {
        flags: dirty_flags,
        data: None,
    };
    assert_eq!(
        core.domain_alloc(dev, req).unwrap_err(),
        CoreError::NotSupported
    );
    let plain = core.default_domain(dev).unwrap();
    assert_eq!(
        plain.ops().set_dirty_tracking(true),
        Err(CoreError::NotSupported)
    );

    let (core, node, _) = smmu(SmmuV3Features {
        httu_dirty: true,
        ..SmmuV3Features::default()
    });
    let dev = core
        .add_device(DeviceDesc::platform("nic"), spec(&node, &[1]))
        .unwrap();
    assert!(core.capable(dev, Capability::DirtyTracking));
    let domain = core.domain_alloc(dev, req).unwrap();
    domain.ops().set_dirty_tracking(true).unwrap();
    domain
        .map(
            Iova(0x10_0000),
            PhysAddr(0x5000_0000),
            0x4000,
            Prot::READ_WRITE,
        )
        .unwrap();
    domain
        .map(Iova(0x20_0000), PhysAddr(0x6000_0000), 0x1000, Prot::READ)
        .unwrap();
    let s1 = paging::<ArmLpae>(&domain);
    // Writable-clean: DBM with AP[2] (read-only) until the SMMU sees a write.
    let (_, pte) = leaf_pte(s1, 0x10_1000).unwrap();
    assert_eq!(
        pte & (arm_lpae::DBM | arm_lpae::AP_RDONLY),
        arm_lpae::DBM | arm_lpae::AP_RDONLY
    );
    assert!(dirty(&domain, 0x10_0000, 0x20_1000, false).is_empty());
    assert!(s1.device_write(Iova(0x10_1000)).unwrap());
    assert!(!s1.device_write(Iova(0x20_0000)).unwrap(), "read-only leaf");
    let (_, pte) = leaf_pte(s1, 0x10_1000).unwrap();
    assert_eq!(pte & (arm_lpae::DBM | arm_lpae::AP_RDONLY), arm_lpae::DBM);
    assert_eq!(
        dirty(&domain, 0x10_0000, 0x20_1000, true),
        [(0x10_1000, 0x1000)]
    );
    assert_eq!(
        dirty(&domain, 0x10_0000, 0x20_1000, false),
        [(0x10_1000, 0x1000)]
    );
    assert!(dirty(&domain, 0x10_0000, 0x20_1000, false).is_empty());
    let (_, pte) = leaf_pte(s1, 0x10_1000).unwrap();
    assert_ne!(
        pte & arm_lpae::AP_RDONLY,
        0,
        "cleaned back to writable-clean"
    );
}

#[test]
fn identity_and_blocked_domains() {
    let core = IommuCore::new(CoreConfig {
        default_domain: DefaultDomainPolicy::Passthrough,
        ..CoreConfig::default()
    });
    let node = FwNode::new("/smmu");
    core.register(
        "smmu",
        Some(node.clone()),
        SmmuV3::new(node.clone(), SmmuV3Features::default()),
    )
    .unwrap();
    let dev = core
        .add_device(DeviceDesc::platform("nic"), spec(&node, &[9]))
        .unwrap();
    let identity = core.default_domain(dev).unwrap();
    assert_eq!(identity.ty(), DomainType::Identity);
    assert_eq!(
        identity.iova_to_phys(Iova(0x1234_5000)),
        Some(PhysAddr(0x1234_5000))
    );
    let static_domain: &StaticDomain = identity.ops().as_any().downcast_ref().unwrap();
    assert_eq!(static_domain.attached(), [dev]);

    core.claim_dma_owner(dev, DmaOwner::new()).unwrap();
    let blocked = core.device_domain(dev).unwrap();
    assert_eq!(blocked.ty(), DomainType::Blocked);
    assert_eq!(blocked.iova_to_phys(Iova(0x1000)), None);
    assert!(matches!(
        blocked.map(Iova(0), PhysAddr(0), 0x1000, Prot::READ),
        Err(CoreError::Invalid(_))
    ));
    let regions = core.reserved_regions(dev);
    assert_eq!(regions[0].kind, ReservedKind::SwMsi);
    assert_eq!(regions[0].start, Iova(MSI_IOVA_BASE));
}

#[test]
fn stream_ids_belong_to_one_device_as_in_linux() {
    let (core, node, drv) = smmu(SmmuV3Features {
        sid_bits: 8,
        ..SmmuV3Features::default()
    });
    let a = core
        .add_device(DeviceDesc::platform("dma0"), spec(&node, &[5]))
        .unwrap();
    // Linux's arm_smmu_insert_master(): "stream 5 already in tree", EINVAL, no IOMMU.
    let b = core
        .add_device(DeviceDesc::platform("dma1"), spec(&node, &[6, 5]))
        .unwrap();
    assert!(matches!(
        core.probe_state(b).unwrap(),
        ProbeState::Failed(CoreError::Invalid(_))
    ));
    assert_eq!(drv.stream_ids(b), Vec::<u32>::new());
    // Out of SIDSIZE.
    let c = core
        .add_device(DeviceDesc::platform("dma2"), spec(&node, &[0x100]))
        .unwrap();
    assert!(matches!(
        core.probe_state(c).unwrap(),
        ProbeState::Failed(_)
    ));
    // The stream ID is free again once its owner leaves.
    core.remove_device(a).unwrap();
    let d = core
        .add_device(DeviceDesc::platform("dma3"), spec(&node, &[5]))
        .unwrap();
    assert_eq!(drv.stream_ids(d), [5]);
}

#[test]
fn groups_follow_pci_rules_for_pci_and_one_per_platform_device() {
    let (core, node, _) = smmu(SmmuV3Features::default());
    let rp = core
        .add_device(
            DeviceDesc::pci(pci("00:01.0", PciKind::RootPort, false, false), None),
            spec(&node, &[0x8]),
        )
        .unwrap();
    let f0 = core
        .add_device(
            DeviceDesc::pci(pci("01:00.0", PciKind::Endpoint, true, false), Some(rp)),
            spec(&node, &[0x100]),
        )
        .unwrap();
    let f1 = core
        .add_device(
            DeviceDesc::pci(pci("01:00.1", PciKind::Endpoint, true, false), Some(rp)),
            spec(&node, &[0x101]),
        )
        .unwrap();
    let g = core.group_of(rp).unwrap();
    assert_eq!(core.group_of(f0), Some(g));
    assert_eq!(core.group_of(f1), Some(g));
    let u0 = core
        .add_device(DeviceDesc::platform("uart0"), spec(&node, &[1]))
        .unwrap();
    let u1 = core
        .add_device(DeviceDesc::platform("uart1"), spec(&node, &[2]))
        .unwrap();
    assert_ne!(core.group_of(u0), core.group_of(u1));
    assert_ne!(core.group_of(u0), Some(g));
}

#[test]
fn devices_behind_a_pcie_to_pci_bridge_collide_on_the_bridge_alias() {
    // IORT gives each function its own RID and, through pci_for_each_dma_alias, the alias the
    // bridge puts on the bus (secondary bus, devfn 0). Both functions then name stream 0x0300:
    // the second one's probe fails, which is what Linux does with such a bridge.
    let (core, node, drv) = smmu(SmmuV3Features::default());
    let bridge = core
        .add_device(
            DeviceDesc::pci(pci("00:03.0", PciKind::PcieToPciBridge, false, false), None),
            spec(&node, &[0x18]),
        )
        .unwrap();
    let conventional = |addr: &str| {
        DeviceDesc::pci(
            pci(addr, PciKind::ConventionalDevice, false, false),
            Some(bridge),
        )
    };
    let a = core
        .add_device(conventional("03:01.0"), spec(&node, &[0x308, 0x300]))
        .unwrap();
    let b = core
        .add_device(conventional("03:02.0"), spec(&node, &[0x310, 0x300]))
        .unwrap();
    assert_eq!(drv.stream_ids(a), [0x308, 0x300]);
    assert_eq!(core.group_of(a), core.group_of(bridge));
    assert!(matches!(
        core.probe_state(b).unwrap(),
        ProbeState::Failed(CoreError::Invalid(_))
    ));
}
