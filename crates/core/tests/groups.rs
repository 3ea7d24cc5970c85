//! PCI isolation: which functions share an IOMMU group.

mod common;

use std::sync::Arc;

use common::*;
use uiommu_core::*;

/// A core with one PCI-grouping driver whose instance serves every requester id.
struct Pci {
    core: IommuCore,
    node: FwNode,
}

impl Pci {
    fn new() -> Pci {
        let core = IommuCore::default();
        let node = FwNode::new("\\_SB.IOMMU");
        let drv = Arc::new(TestDriver::new("iommu").with_group(GroupChoice::Pci));
        drv.register(&core, "iommu", &node);
        Pci { core, node }
    }

    fn add(&self, f: PciFunction, upstream: Option<DeviceId>) -> DeviceId {
        let rid = u32::from(f.address.requester_id());
        self.core
            .add_device(DeviceDesc::pci(f, upstream), spec(&self.node, rid))
            .unwrap()
    }

    fn group(&self, dev: DeviceId) -> GroupId {
        self.core.group_of(dev).expect("device has a group")
    }
}

#[test]
fn devices_behind_a_pcie_to_pci_bridge_share_one_group() {
    let p = Pci::new();
    let root = p.add(pcie("00:1c.0", PciKind::RootPort, false, true), None);
    let bridge = p.add(
        pcie("01:00.0", PciKind::PcieToPciBridge, false, false),
        Some(root),
    );
    let a = p.add(
        pcie("02:00.0", PciKind::ConventionalDevice, false, false),
        Some(bridge),
    );
    let b = p.add(
        pcie("02:01.0", PciKind::ConventionalDevice, false, false),
        Some(bridge),
    );
    assert_eq!(p.group(a), p.group(bridge));
    assert_eq!(p.group(b), p.group(bridge));
    assert_ne!(
        p.group(root),
        p.group(bridge),
        "the ACS root port isolates the bridge"
    );
    assert_eq!(p.core.group_devices(p.group(a)), [bridge, a, b]);
}

#[test]
fn multifunction_device_without_acs_is_one_group() {
    let p = Pci::new();
    let f0 = p.add(pcie("00:02.0", PciKind::Endpoint, true, false), None);
    let f1 = p.add(pcie("00:02.1", PciKind::Endpoint, true, false), None);
    let other = p.add(pcie("00:03.0", PciKind::Endpoint, false, false), None);
    assert_eq!(p.group(f0), p.group(f1));
    assert_ne!(p.group(f0), p.group(other), "another slot is not affected");
}

#[test]
fn multifunction_device_with_acs_isolates_its_functions() {
    let p = Pci::new();
    let f0 = p.add(pcie("00:02.0", PciKind::Endpoint, true, true), None);
    let f1 = p.add(pcie("00:02.1", PciKind::Endpoint, true, true), None);
    assert_ne!(p.group(f0), p.group(f1));
}

#[test]
fn only_the_functions_without_acs_share() {
    let p = Pci::new();
    let f0 = p.add(pcie("00:02.0", PciKind::Endpoint, true, false), None);
    let f1 = p.add(pcie("00:02.1", PciKind::Endpoint, true, true), None);
    let f2 = p.add(pcie("00:02.2", PciKind::Endpoint, true, false), None);
    assert_eq!(p.group(f0), p.group(f2));
    assert_ne!(p.group(f0), p.group(f1));
}

/// A switch: root port → upstream port → two downstream ports, an endpoint below each.
fn switch(
    p: &Pci,
    root_acs: bool,
    downstream_acs: bool,
) -> (DeviceId, DeviceId, DeviceId, DeviceId) {
    let root = p.add(pcie("00:01.0", PciKind::RootPort, false, root_acs), None);
    let up = p.add(
        pcie("01:00.0", PciKind::SwitchUpstreamPort, false, false),
        Some(root),
    );
    let d1 = p.add(
        pcie(
            "02:01.0",
            PciKind::SwitchDownstreamPort,
            false,
            downstream_acs,
        ),
        Some(up),
    );
    let d2 = p.add(
        pcie(
            "02:02.0",
            PciKind::SwitchDownstreamPort,
            false,
            downstream_acs,
        ),
        Some(up),
    );
    let e1 = p.add(endpoint("03:00.0"), Some(d1));
    let e2 = p.add(endpoint("04:00.0"), Some(d2));
    (d1, d2, e1, e2)
}

#[test]
fn endpoints_below_acs_ports_get_their_own_groups() {
    let p = Pci::new();
    let (d1, d2, e1, e2) = switch(&p, true, true);
    let groups = [p.group(d1), p.group(d2), p.group(e1), p.group(e2)];
    let mut unique = groups.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{groups:?}");
}

#[test]
fn endpoints_below_ports_without_acs_share_the_port_group() {
    let p = Pci::new();
    let (d1, d2, e1, e2) = switch(&p, true, false);
    // Each endpoint joins its non-isolating downstream port; the ports themselves sit below
    // an upstream port whose path to the root is isolated, so they stay apart.
    assert_eq!(p.group(e1), p.group(d1));
    assert_eq!(p.group(e2), p.group(d2));
    assert_ne!(p.group(e1), p.group(e2));
}

#[test]
fn without_acs_at_the_root_port_the_whole_switch_is_one_group() {
    let p = Pci::new();
    let root = p.add(pcie("00:01.0", PciKind::RootPort, false, false), None);
    let up = p.add(
        pcie("01:00.0", PciKind::SwitchUpstreamPort, false, false),
        Some(root),
    );
    let d1 = p.add(
        pcie("02:01.0", PciKind::SwitchDownstreamPort, false, true),
        Some(up),
    );
    let e1 = p.add(endpoint("03:00.0"), Some(d1));
    assert_eq!(p.group(up), p.group(root));
    assert_eq!(p.group(d1), p.group(root));
    assert_eq!(p.group(e1), p.group(root));
}

#[test]
fn dma_alias_quirk_joins_the_aliased_function() {
    let p = Pci::new();
    let a = p.add(endpoint("00:05.0"), None);
    let mut quirky = endpoint("00:06.0");
    quirky.dma_aliases = vec![0x28]; // devfn of 00:05.0
    let b = p.add(quirky, None);
    let c = p.add(endpoint("00:07.0"), None);
    assert_eq!(p.group(a), p.group(b));
    assert_ne!(p.group(a), p.group(c));
}

#[test]
fn non_pci_devices_of_a_pci_grouping_driver_get_their_own_group() {
    let p = Pci::new();
    let a = p
        .core
        .add_device(DeviceDesc::platform("a"), spec(&p.node, 1))
        .unwrap();
    let b = p
        .core
        .add_device(DeviceDesc::platform("b"), spec(&p.node, 2))
        .unwrap();
    assert_ne!(p.group(a), p.group(b));
}

#[test]
fn bad_pci_topology_is_rejected() {
    let p = Pci::new();
    let ep = p.add(endpoint("00:02.0"), None);
    let err = p
        .core
        .add_device(DeviceDesc::pci(endpoint("01:00.0"), Some(ep)), None);
    assert!(matches!(err, Err(CoreError::Invalid(_))), "{err:?}");
    let root = p.add(pcie("00:01.0", PciKind::RootPort, false, true), None);
    let err = p
        .core
        .add_device(DeviceDesc::pci(endpoint("00:03.0"), Some(root)), None);
    assert!(
        matches!(err, Err(CoreError::Invalid(_))),
        "same bus as its bridge: {err:?}"
    );
    let err = p
        .core
        .add_device(DeviceDesc::pci(endpoint("00:02.0"), None), None);
    assert_eq!(err, Err(CoreError::Exists));
}
