//! Default domains and DMA ownership.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use uiommu_core::*;

fn setup(config: CoreConfig, drv: TestDriver) -> (IommuCore, Arc<TestDriver>, FwNode) {
    let core = IommuCore::new(config);
    let node = FwNode::new("iommu");
    let drv = Arc::new(drv);
    (core, drv, node)
}

fn strict() -> CoreConfig {
    CoreConfig::default()
}

#[test]
fn global_setting_picks_the_default_domain_type() {
    for (policy, ty) in [
        (DefaultDomainPolicy::Strict, DomainType::Dma),
        (DefaultDomainPolicy::Lazy, DomainType::DmaFq),
        (DefaultDomainPolicy::Passthrough, DomainType::Identity),
    ] {
        let config = CoreConfig {
            default_domain: policy,
            ..CoreConfig::default()
        };
        let (core, drv, node) = setup(config, TestDriver::new("d"));
        drv.register(&core, "i", &node);
        let dev = core
            .add_device(DeviceDesc::platform("x"), spec(&node, 0))
            .unwrap();
        assert_eq!(core.default_domain(dev).unwrap().ty(), ty);
        assert_eq!(core.device_domain(dev).unwrap().ty(), ty);
    }
}

#[test]
fn driver_preference_beats_the_global_setting_and_static_default_beats_both() {
    let (core, drv, node) = setup(strict(), TestDriver::new("d"));
    drv.prefer("gpu", DomainType::Identity);
    drv.register(&core, "i", &node);
    let gpu = core
        .add_device(DeviceDesc::platform("gpu"), spec(&node, 0))
        .unwrap();
    assert_eq!(core.default_domain(gpu).unwrap().ty(), DomainType::Identity);

    let mut mock = TestDriver::new("mock");
    mock.static_default = Some(DomainType::Blocked);
    let (core, drv, node) = setup(strict(), mock);
    drv.prefer("m", DomainType::Identity);
    drv.register(&core, "mock", &node);
    let m = core
        .add_device(DeviceDesc::mock("m"), spec(&node, 0))
        .unwrap();
    assert_eq!(core.default_domain(m).unwrap().ty(), DomainType::Blocked);
}

/// The default domain is chosen once all devices present at registration joined the group,
/// so a later device's preference counts; conflicting preferences end in identity.
#[test]
fn default_domain_waits_for_all_devices_of_the_group() {
    let (core, drv, node) = setup(
        strict(),
        TestDriver::new("d").with_group(GroupChoice::PerInstance),
    );
    drv.prefer("b", DomainType::Identity);
    let a = core
        .add_device(DeviceDesc::platform("a"), spec(&node, 0))
        .unwrap();
    let b = core
        .add_device(DeviceDesc::platform("b"), spec(&node, 1))
        .unwrap();
    drv.register(&core, "i", &node);
    assert_eq!(core.group_of(a), core.group_of(b));
    assert_eq!(core.default_domain(a).unwrap().ty(), DomainType::Identity);

    // Hot-plugged one by one, the first device alone decides.
    let (core, drv, node) = setup(
        strict(),
        TestDriver::new("d").with_group(GroupChoice::PerInstance),
    );
    drv.prefer("b", DomainType::Identity);
    drv.register(&core, "i", &node);
    let a = core
        .add_device(DeviceDesc::platform("a"), spec(&node, 0))
        .unwrap();
    core.add_device(DeviceDesc::platform("b"), spec(&node, 1))
        .unwrap();
    assert_eq!(core.default_domain(a).unwrap().ty(), DomainType::Dma);

    let (core, drv, node) = setup(
        strict(),
        TestDriver::new("d").with_group(GroupChoice::PerInstance),
    );
    drv.prefer("a", DomainType::Dma);
    drv.prefer("b", DomainType::Identity);
    let a = core
        .add_device(DeviceDesc::platform("a"), spec(&node, 0))
        .unwrap();
    core.add_device(DeviceDesc::platform("b"), spec(&node, 1))
        .unwrap();
    drv.register(&core, "i", &node);
    assert_eq!(core.default_domain(a).unwrap().ty(), DomainType::Identity);
}

#[test]
fn a_failing_default_domain_fails_the_probe_of_a_hot_added_device() {
    let (core, drv, node) = setup(strict(), TestDriver::new("d"));
    drv.register(&core, "i", &node);
    drv.fail_attach.store(true, Ordering::Relaxed);
    let dev = core
        .add_device(DeviceDesc::platform("x"), spec(&node, 0))
        .unwrap();
    assert!(matches!(
        core.probe_state(dev).unwrap(),
        ProbeState::Failed(CoreError::Invalid(_))
    ));
    assert_eq!(core.group_of(dev), None);
    assert_eq!(*drv.released.lock().unwrap(), ["x"]);
}

#[test]
fn a_failing_default_domain_at_registration_unregisters_the_instance() {
    let (core, drv, node) = setup(strict(), TestDriver::new("d"));
    let dev = core
        .add_device(DeviceDesc::platform("x"), spec(&node, 0))
        .unwrap();
    drv.fail_attach.store(true, Ordering::Relaxed);
    assert!(matches!(
        core.register("i", Some(node.clone()), drv.clone()),
        Err(CoreError::Invalid(_))
    ));
    assert!(core.instances().is_empty());
    assert_eq!(core.probe_state(dev).unwrap(), ProbeState::Deferred);
}

fn one_device() -> (IommuCore, Arc<TestDriver>, DeviceId) {
    let (core, drv, node) = setup(
        strict(),
        TestDriver::new("d").with_group(GroupChoice::PerInstance),
    );
    drv.register(&core, "i", &node);
    let dev = core
        .add_device(DeviceDesc::platform("x"), spec(&node, 0))
        .unwrap();
    (core, drv, dev)
}

#[test]
fn claim_moves_the_group_to_a_blocking_domain_and_release_returns_it() {
    let (core, _drv, dev) = one_device();
    let default = core.default_domain(dev).unwrap();
    let owner = DmaOwner::new();
    core.claim_dma_owner(dev, owner).unwrap();
    assert_eq!(core.device_domain(dev).unwrap().ty(), DomainType::Blocked);
    // The same owner may claim again; each claim is released separately.
    core.claim_dma_owner(dev, owner).unwrap();
    core.release_dma_owner(dev);
    assert_eq!(core.device_domain(dev).unwrap().ty(), DomainType::Blocked);
    core.release_dma_owner(dev);
    assert!(Arc::ptr_eq(&core.device_domain(dev).unwrap(), &default));
}

#[test]
fn claim_is_eperm_while_another_owner_or_a_kernel_driver_holds_the_group() {
    let (core, _drv, dev) = one_device();
    core.use_default_domain(dev).unwrap();
    assert_eq!(
        core.claim_dma_owner(dev, DmaOwner::new())
            .unwrap_err()
            .errno(),
        1
    );
    core.unuse_default_domain(dev);
    let first = DmaOwner::new();
    core.claim_dma_owner(dev, first).unwrap();
    assert_eq!(
        core.claim_dma_owner(dev, DmaOwner::new())
            .unwrap_err()
            .errno(),
        1
    );
    // A kernel driver cannot bind while a user owns the group.
    assert_eq!(core.use_default_domain(dev).unwrap_err().errno(), 16);
}

#[test]
fn claim_is_ebusy_when_the_group_is_not_on_its_default_domain() {
    let (core, _drv, dev) = one_device();
    let owner = DmaOwner::new();
    let user = core
        .domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap();
    core.attach_domain(dev, &user).unwrap();
    assert_eq!(core.claim_dma_owner(dev, owner).unwrap_err().errno(), 16);
    core.detach_domain(dev, &user);
    core.claim_dma_owner(dev, owner).unwrap();
}

#[test]
fn user_domains_attach_replace_and_detach() {
    let (core, _drv, dev) = one_device();
    let owner = DmaOwner::new();
    core.claim_dma_owner(dev, owner).unwrap();
    let paging = || {
        core.domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap()
    };
    let (first, second) = (paging(), paging());
    core.attach_domain(dev, &first).unwrap();
    assert!(Arc::ptr_eq(&core.device_domain(dev).unwrap(), &first));
    assert_eq!(core.attach_domain(dev, &second).unwrap_err().errno(), 16);
    core.replace_domain(dev, &second).unwrap();
    assert!(Arc::ptr_eq(&core.device_domain(dev).unwrap(), &second));
    core.detach_domain(dev, &first); // not attached: nothing happens
    assert!(Arc::ptr_eq(&core.device_domain(dev).unwrap(), &second));
    core.detach_domain(dev, &second);
    assert_eq!(core.device_domain(dev).unwrap().ty(), DomainType::Blocked);
    // Translation goes through the attached domain's page table.
    first
        .map(Iova(0x10000), PhysAddr(0x80000), 0x2000, Prot::READ_WRITE)
        .unwrap();
    assert_eq!(first.iova_to_phys(Iova(0x11234)), Some(PhysAddr(0x81234)));
    assert_eq!(first.unmap(Iova(0x10000), 0x2000), 0x2000);
    assert_eq!(first.iova_to_phys(Iova(0x11234)), None);
}

#[test]
fn replace_needs_an_owner_and_domains_stay_with_their_driver() {
    let (core, _drv, dev) = one_device();
    let user = core
        .domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap();
    assert_eq!(core.replace_domain(dev, &user).unwrap_err().errno(), 22);

    let other_node = FwNode::new("other");
    let other = Arc::new(TestDriver::new("other"));
    other.register(&core, "other", &other_node);
    let foreign_dev = core
        .add_device(DeviceDesc::platform("y"), spec(&other_node, 0))
        .unwrap();
    let foreign = core
        .domain_alloc(
            foreign_dev,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap();
    assert_eq!(core.attach_domain(dev, &foreign).unwrap_err().errno(), 22);
}

#[test]
fn failed_attach_keeps_the_previous_domain() {
    let (core, drv, dev) = one_device();
    let default = core.default_domain(dev).unwrap();
    drv.fail_attach.store(true, Ordering::Relaxed);
    let bad = core
        .domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: PagingFlags::default(),
                data: None,
            },
        )
        .unwrap();
    assert!(core.attach_domain(dev, &bad).is_err());
    assert!(Arc::ptr_eq(&core.device_domain(dev).unwrap(), &default));
}

#[test]
fn devices_without_an_iommu_have_no_ownership_to_claim() {
    let core = IommuCore::default();
    let dev = core.add_device(DeviceDesc::platform("x"), None).unwrap();
    assert_eq!(
        core.claim_dma_owner(dev, DmaOwner::new()),
        Err(CoreError::NoDevice)
    );
    assert_eq!(core.use_default_domain(dev), Ok(()));
    assert!(core
        .domain_alloc(dev, DomainRequest::Dma)
        .is_err_and(|e| e == CoreError::NoDevice));
}

fn region(start: u64, last: u64, kind: ReservedKind) -> ReservedRegion {
    ReservedRegion {
        start: Iova(start),
        last: Iova(last),
        prot: Prot::READ_WRITE,
        kind,
    }
}

#[test]
fn direct_regions_are_identity_mapped_into_dma_default_domains_only() {
    let (core, drv, node) = setup(
        strict(),
        TestDriver::new("d").with_group(GroupChoice::PerInstance),
    );
    drv.reserved.lock().unwrap().insert(
        "usb".into(),
        vec![
            // Rounded up at both ends: the partial first page is dropped, the last one kept.
            region(0xe_0800, 0xe_2fff, ReservedKind::Direct),
            region(0xf_0000, 0xf_0fff, ReservedKind::DirectRelaxable),
            region(0xfee0_0000, 0xfeef_ffff, ReservedKind::Msi),
        ],
    );
    drv.reserved.lock().unwrap().insert(
        "gpu".into(),
        vec![region(0x20_0000, 0x20_0fff, ReservedKind::Direct)],
    );
    let usb = core
        .add_device(DeviceDesc::platform("usb"), spec(&node, 0))
        .unwrap();
    drv.register(&core, "i", &node);
    let domain = core.default_domain(usb).unwrap();
    assert_eq!(domain.ty(), DomainType::Dma);
    assert_eq!(domain.iova_to_phys(Iova(0xe_0000)), None);
    for page in [0xe_1000, 0xe_2000, 0xf_0000] {
        assert_eq!(
            domain.iova_to_phys(Iova(page + 8)),
            Some(PhysAddr(page + 8))
        );
    }
    assert_eq!(domain.iova_to_phys(Iova(0xe_3000)), None);
    assert_eq!(
        domain.iova_to_phys(Iova(0xfee0_0000)),
        None,
        "MSI is not direct"
    );
    // A device joining the group later brings its own region into the same domain.
    let gpu = core
        .add_device(DeviceDesc::platform("gpu"), spec(&node, 1))
        .unwrap();
    assert!(Arc::ptr_eq(&core.default_domain(gpu).unwrap(), &domain));
    assert_eq!(
        domain.iova_to_phys(Iova(0x20_0010)),
        Some(PhysAddr(0x20_0010))
    );

    // Identity default domains are left alone (they translate everything anyway).
    let config = CoreConfig {
        default_domain: DefaultDomainPolicy::Passthrough,
        ..CoreConfig::default()
    };
    let (core, drv, node) = setup(config, TestDriver::new("d"));
    drv.reserved.lock().unwrap().insert(
        "usb".into(),
        vec![region(0xe_0000, 0xe_0fff, ReservedKind::Direct)],
    );
    drv.register(&core, "i", &node);
    let usb = core
        .add_device(DeviceDesc::platform("usb"), spec(&node, 0))
        .unwrap();
    let domain = core.default_domain(usb).unwrap();
    assert_eq!(domain.ty(), DomainType::Identity);
    let test_domain: &TestDomain = domain.ops().as_any().downcast_ref().unwrap();
    assert!(test_domain.pages.lock().unwrap().is_empty());
}
