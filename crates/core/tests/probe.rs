//! Routing devices to drivers: every registration order, deferral, removal, and the rejected
//! call-all policy.

mod common;

use std::sync::Arc;

use common::*;
use uiommu_core::*;

/// x86-like: PCI devices served by instance A (fwnode from an ACPI-like table), mock devices
/// by instance B on its own fwnode. Each driver sees exactly its own devices.
fn x86_like(instances_first: bool) {
    let core = IommuCore::default();
    let (acpi, mock_node) = (FwNode::new("\\_SB.DMAR0"), FwNode::new("iommufd-mock"));
    let (pci_drv, mock_drv) = (
        Arc::new(TestDriver::new("pci-iommu")),
        Arc::new(TestDriver::new("mock")),
    );
    let add_devices = |core: &IommuCore| {
        let mut ids = Vec::new();
        for (i, addr) in ["00:02.0", "00:03.0", "00:1f.0"].iter().enumerate() {
            ids.push(
                core.add_device(DeviceDesc::pci(endpoint(addr), None), spec(&acpi, i as u32))
                    .unwrap(),
            );
        }
        for i in 0..2 {
            ids.push(
                core.add_device(DeviceDesc::mock(format!("mock{i}")), spec(&mock_node, 0))
                    .unwrap(),
            );
        }
        ids
    };
    let ids = if instances_first {
        pci_drv.register(&core, "dmar0", &acpi);
        mock_drv.register(&core, "mock", &mock_node);
        add_devices(&core)
    } else {
        let ids = add_devices(&core);
        assert!(ids
            .iter()
            .all(|&d| core.probe_state(d).unwrap() == ProbeState::Deferred));
        mock_drv.register(&core, "mock", &mock_node);
        pci_drv.register(&core, "dmar0", &acpi);
        ids
    };
    let mut pci_seen = pci_drv.probed_names();
    pci_seen.sort();
    assert_eq!(pci_seen, ["0000:00:02.0", "0000:00:03.0", "0000:00:1f.0"]);
    assert_eq!(mock_drv.probed_names(), ["mock0", "mock1"]);
    let reports = core.devices();
    for r in &reports {
        let want = if r.bus == BusKind::Pci {
            "pci-iommu"
        } else {
            "mock"
        };
        assert_eq!(r.driver.as_deref(), Some(want), "{}", r.name);
        assert_eq!(r.default_domain, Some(DomainType::Dma));
    }
    // Every device has its own group (the drivers group per device).
    let mut groups: Vec<_> = ids.iter().map(|&d| core.group_of(d).unwrap()).collect();
    groups.sort();
    groups.dedup();
    assert_eq!(groups.len(), ids.len());
}

#[test]
fn x86_like_platform_routes_each_device_to_its_own_driver_instances_first() {
    x86_like(true);
}

#[test]
fn x86_like_platform_routes_each_device_to_its_own_driver_devices_first() {
    x86_like(false);
}

#[test]
fn arm64_acpi_platform_devices_without_fwspec_get_no_iommu_after_mock_registered() {
    let core = IommuCore::default();
    let mock = Arc::new(TestDriver::new("mock"));
    let mock_node = FwNode::new("iommufd-mock");
    mock.register(&core, "mock", &mock_node);
    let uart = core
        .add_device(DeviceDesc::platform("uart0"), None)
        .unwrap();
    let gpio = core
        .add_device(DeviceDesc::platform("gpio0"), None)
        .unwrap();
    for dev in [uart, gpio] {
        assert_eq!(core.probe_state(dev).unwrap(), ProbeState::NoIommu);
        assert_eq!(core.group_of(dev), None);
    }
    assert!(
        mock.probed_names().is_empty(),
        "the mock driver was offered foreign devices"
    );
}

#[test]
fn single_fwnodeless_instance_serves_devices_without_fwspec_but_two_do_not() {
    let core = IommuCore::default();
    let legacy = Arc::new(TestDriver::new("legacy"));
    let before = core
        .add_device(DeviceDesc::platform("before"), None)
        .unwrap();
    let first = core.register("legacy0", None, legacy.clone()).unwrap();
    let after = core
        .add_device(DeviceDesc::platform("after"), None)
        .unwrap();
    assert_eq!(bound_instance(&core, before), Some(first));
    assert_eq!(bound_instance(&core, after), Some(first));
    // A second fwnode-less instance makes "the" global driver ambiguous: no more routing.
    core.register("legacy1", None, legacy.clone()).unwrap();
    let third = core
        .add_device(DeviceDesc::platform("third"), None)
        .unwrap();
    assert_eq!(core.probe_state(third).unwrap(), ProbeState::NoIommu);
}

#[test]
fn deferred_device_is_probed_when_its_fwnode_registers() {
    let core = IommuCore::default();
    let (a, b) = (FwNode::new("smmu@a"), FwNode::new("smmu@b"));
    let drv = Arc::new(TestDriver::new("smmu"));
    let ia = drv.register(&core, "smmu-a", &a);
    let dev = core
        .add_device(DeviceDesc::platform("dma0"), spec(&b, 7))
        .unwrap();
    assert_eq!(core.probe_state(dev).unwrap(), ProbeState::Deferred);
    assert_eq!(drv.probed_names(), Vec::<String>::new());
    let ib = drv.register(&core, "smmu-b", &b);
    assert_ne!(ia, ib);
    assert_eq!(bound_instance(&core, dev), Some(ib));
    assert_eq!(
        *drv.probed.lock().unwrap(),
        vec![("dma0".to_string(), Some(ib))]
    );
}

#[test]
fn registering_twice_under_one_fwnode_is_refused() {
    let core = IommuCore::default();
    let node = FwNode::new("smmu");
    let drv = Arc::new(TestDriver::new("smmu"));
    drv.register(&core, "a", &node);
    assert_eq!(
        core.register("b", Some(node), drv).unwrap_err(),
        CoreError::Exists
    );
}

#[test]
fn second_fwspec_with_another_fwnode_is_einval() {
    let core = IommuCore::default();
    let (a, b) = (FwNode::new("a"), FwNode::new("b"));
    let dev = core.add_device(DeviceDesc::platform("d"), None).unwrap();
    core.set_fwspec(dev, a.clone(), &[1]).unwrap();
    core.set_fwspec(dev, a.clone(), &[2]).unwrap();
    let err = core.set_fwspec(dev, b, &[3]).unwrap_err();
    assert_eq!(err.errno(), 22);
    let report = &core.devices()[0];
    assert_eq!(report.fwspec.as_ref().unwrap().ids, vec![1, 2]);
    assert_eq!(report.fwspec.as_ref().unwrap().fwnode, a);
}

#[test]
fn setting_a_fwspec_later_replays_the_probe() {
    let core = IommuCore::default();
    let node = FwNode::new("viommu");
    let drv = Arc::new(TestDriver::new("virtio-iommu"));
    let inst = drv.register(&core, "viommu", &node);
    let dev = core.add_device(DeviceDesc::platform("net0"), None).unwrap();
    assert_eq!(core.probe_state(dev).unwrap(), ProbeState::NoIommu);
    core.set_fwspec(dev, node, &[0x10]).unwrap();
    assert_eq!(bound_instance(&core, dev), Some(inst));
}

#[test]
fn unregister_with_live_devices_releases_them_and_reregister_probes_again() {
    let core = IommuCore::default();
    let node = FwNode::new("smmu");
    let drv = Arc::new(TestDriver::new("smmu"));
    let first = drv.register(&core, "smmu", &node);
    let devs: Vec<_> = (0..3)
        .map(|i| {
            core.add_device(DeviceDesc::platform(format!("d{i}")), spec(&node, i))
                .unwrap()
        })
        .collect();
    let groups: Vec<_> = devs.iter().map(|&d| core.group_of(d).unwrap()).collect();
    assert_eq!(groups, [GroupId(0), GroupId(1), GroupId(2)]);
    core.unregister(first).unwrap();
    assert_eq!(*drv.released.lock().unwrap(), ["d0", "d1", "d2"]);
    for &d in &devs {
        assert_eq!(core.probe_state(d).unwrap(), ProbeState::Deferred);
        assert_eq!(core.group_of(d), None);
    }
    assert_eq!(core.unregister(first), Err(CoreError::NotFound));
    let second = drv.register(&core, "smmu", &node);
    assert!(devs
        .iter()
        .all(|&d| bound_instance(&core, d) == Some(second)));
    // Group numbers were freed and are handed out again from the lowest.
    let again: Vec<_> = devs.iter().map(|&d| core.group_of(d).unwrap()).collect();
    assert_eq!(again, groups);
}

#[test]
fn hot_add_and_removal_manage_groups() {
    let core = IommuCore::default();
    let node = FwNode::new("iommu");
    let drv = Arc::new(TestDriver::new("iommu").with_group(GroupChoice::Shared(1)));
    drv.register(&core, "iommu", &node);
    let a = core
        .add_device(DeviceDesc::platform("a"), spec(&node, 0))
        .unwrap();
    let b = core
        .add_device(DeviceDesc::platform("b"), spec(&node, 1))
        .unwrap();
    let group = core.group_of(a).unwrap();
    assert_eq!(core.group_of(b), Some(group));
    assert_eq!(core.group_devices(group), [a, b]);
    // The hot-added second device joined the group's existing default domain.
    let domain = core.default_domain(b).unwrap();
    let test_domain: &TestDomain = domain.ops().as_any().downcast_ref().unwrap();
    assert_eq!(*test_domain.attached.lock().unwrap(), ["a", "b"]);
    core.remove_device(a).unwrap();
    assert_eq!(core.group_devices(group), [b]);
    assert_eq!(core.probe_state(a), Err(CoreError::NotFound));
    core.remove_device(b).unwrap();
    assert!(core.group_devices(group).is_empty());
    assert_eq!(*drv.released.lock().unwrap(), ["a", "b"]);
    // A new device gets a fresh group under the freed number.
    let c = core
        .add_device(DeviceDesc::platform("c"), spec(&node, 2))
        .unwrap();
    assert_eq!(core.group_of(c), Some(group));
    assert_eq!(core.remove_device(a), Err(CoreError::NotFound));
}

#[test]
fn removing_a_deferred_device_forgets_it() {
    let core = IommuCore::default();
    let node = FwNode::new("late");
    let drv = Arc::new(TestDriver::new("late"));
    let dev = core
        .add_device(DeviceDesc::platform("d"), spec(&node, 0))
        .unwrap();
    core.remove_device(dev).unwrap();
    drv.register(&core, "late", &node);
    assert!(drv.probed_names().is_empty());
}

/// The failure mode of the rejected design: one driver that forgets its "is this mine?"
/// check silently takes devices meant for another driver.
#[test]
fn call_all_policy_lets_a_careless_driver_steal_devices() {
    let core = IommuCore::new(CoreConfig {
        policy: ProbePolicy::CallAll,
        ..CoreConfig::default()
    });
    let (mock_node, smmu_node) = (FwNode::new("mock"), FwNode::new("smmu"));
    let mock = Arc::new(TestDriver::new("mock").careless());
    let smmu = Arc::new(TestDriver::new("smmu"));
    mock.register(&core, "mock", &mock_node);
    smmu.register(&core, "smmu", &smmu_node);
    let nic = core
        .add_device(DeviceDesc::platform("nic"), spec(&smmu_node, 3))
        .unwrap();
    let uart = core.add_device(DeviceDesc::platform("uart"), None).unwrap();
    let devices = core.devices();
    assert_eq!(
        devices[nic.raw() as usize].driver.as_deref(),
        Some("mock"),
        "stolen"
    );
    assert_eq!(
        devices[uart.raw() as usize].driver.as_deref(),
        Some("mock"),
        "no IOMMU at all"
    );
    assert!(
        smmu.probed_names().is_empty(),
        "the rightful driver was never asked"
    );
    // Both drivers were asked about devices that were not theirs.
    assert_eq!(mock.probed_names(), ["nic", "uart"]);
}

/// The same careless driver under the default policy cannot take anything.
#[test]
fn by_fwnode_policy_never_offers_a_driver_foreign_devices() {
    let core = IommuCore::default();
    let (mock_node, smmu_node) = (FwNode::new("mock"), FwNode::new("smmu"));
    let mock = Arc::new(TestDriver::new("mock").careless());
    let smmu = Arc::new(TestDriver::new("smmu"));
    mock.register(&core, "mock", &mock_node);
    smmu.register(&core, "smmu", &smmu_node);
    let nic = core
        .add_device(DeviceDesc::platform("nic"), spec(&smmu_node, 3))
        .unwrap();
    let uart = core.add_device(DeviceDesc::platform("uart"), None).unwrap();
    let devices = core.devices();
    assert_eq!(devices[nic.raw() as usize].driver.as_deref(), Some("smmu"));
    assert_eq!(devices[uart.raw() as usize].driver, None);
    assert!(mock.probed_names().is_empty());
    assert_eq!(smmu.probed_names(), ["nic"]);
}

#[test]
fn careful_drivers_work_under_call_all_too() {
    let core = IommuCore::new(CoreConfig {
        policy: ProbePolicy::CallAll,
        ..CoreConfig::default()
    });
    let (a_node, b_node) = (FwNode::new("a"), FwNode::new("b"));
    let (a, b) = (
        Arc::new(TestDriver::new("a")),
        Arc::new(TestDriver::new("b")),
    );
    let ia = a.register(&core, "a", &a_node);
    let ib = b.register(&core, "b", &b_node);
    let da = core
        .add_device(DeviceDesc::platform("da"), spec(&a_node, 0))
        .unwrap();
    let db = core
        .add_device(DeviceDesc::platform("db"), spec(&b_node, 0))
        .unwrap();
    assert_eq!(bound_instance(&core, da), Some(ia));
    assert_eq!(bound_instance(&core, db), Some(ib));
    // Every driver was asked about every device until one took it.
    assert_eq!(a.probed_names(), ["da", "db"]);
    assert_eq!(b.probed_names(), ["db"]);
}
