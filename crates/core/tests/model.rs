//! The core against a simple model: random sequences of registrations, additions and removals,
//! and several threads at once.

mod common;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use uiommu_core::*;

#[derive(Clone, Debug)]
enum Op {
    Register(usize),
    Unregister(usize),
    /// Add a device naming fwnode `n` (or none), with its own group or sharing the fwnode's.
    Add(Option<usize>),
    Remove(usize),
    Claim(usize),
    Release(usize),
}

const NODES: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..NODES).prop_map(Op::Register),
        (0..NODES).prop_map(Op::Unregister),
        proptest::option::weighted(0.8, 0..NODES).prop_map(Op::Add),
        (0..16usize).prop_map(Op::Remove),
        (0..16usize).prop_map(Op::Claim),
        (0..16usize).prop_map(Op::Release),
    ]
}

proptest! {
    /// A device is bound exactly when the instance under its fwnode is registered; groups are
    /// exactly the bound devices' (one per device here) with the lowest free numbers; claims
    /// put groups on blocking domains and releases take them back.
    #[test]
    fn core_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let core = IommuCore::default();
        let nodes: Vec<FwNode> = (0..NODES).map(|i| FwNode::new(format!("n{i}"))).collect();
        let drv = Arc::new(TestDriver::new("model"));
        let mut registered: BTreeMap<usize, InstanceId> = BTreeMap::new();
        let mut devices: Vec<(DeviceId, Option<usize>)> = Vec::new();
        let mut claims: BTreeMap<DeviceId, u32> = BTreeMap::new();
        let owner = DmaOwner::new();
        let mut peak_groups = 0usize;
        for op in ops {
            match op {
                Op::Register(n) => {
                    let result = core.register("i", Some(nodes[n].clone()), drv.clone());
                    match registered.entry(n) {
                        Entry::Occupied(_) => prop_assert_eq!(result, Err(CoreError::Exists)),
                        Entry::Vacant(slot) => {
                            slot.insert(result.unwrap());
                        }
                    }
                }
                Op::Unregister(n) => {
                    if let Some(id) = registered.remove(&n) {
                        core.unregister(id).unwrap();
                        devices.iter().filter(|(_, node)| *node == Some(n)).for_each(|(d, _)| {
                            claims.remove(d);
                        });
                    }
                }
                Op::Add(node) => {
                    let fwspec = node.and_then(|n| spec(&nodes[n], 0));
                    let name = format!("d{}", devices.len());
                    devices.push((core.add_device(DeviceDesc::platform(name), fwspec).unwrap(), node));
                }
                Op::Remove(i) => {
                    if i < devices.len() {
                        let (dev, _) = devices.remove(i);
                        core.remove_device(dev).unwrap();
                        claims.remove(&dev);
                    }
                }
                Op::Claim(i) => {
                    if let Some(&(dev, node)) = devices.get(i) {
                        let bound = node.is_some_and(|n| registered.contains_key(&n));
                        let result = core.claim_dma_owner(dev, owner);
                        prop_assert_eq!(result.is_ok(), bound);
                        if bound {
                            *claims.entry(dev).or_default() += 1;
                        }
                    }
                }
                Op::Release(i) => {
                    if let Some(&(dev, _)) = devices.get(i) {
                        core.release_dma_owner(dev);
                        if let Some(count) = claims.get_mut(&dev) {
                            *count -= 1;
                            if *count == 0 {
                                claims.remove(&dev);
                            }
                        }
                    }
                }
            }
            // Check the whole state against the model after every step.
            let mut groups = BTreeSet::new();
            for &(dev, node) in &devices {
                let state = core.probe_state(dev).unwrap();
                match node {
                    Some(n) if registered.contains_key(&n) => {
                        let ProbeState::Bound { instance, group } = state else {
                            return Err(TestCaseError::fail(format!("{dev:?} not bound")));
                        };
                        prop_assert_eq!(instance, registered[&n]);
                        prop_assert!(groups.insert(group.0), "group shared");
                        let want = if claims.contains_key(&dev) { DomainType::Blocked } else { DomainType::Dma };
                        prop_assert_eq!(core.device_domain(dev).unwrap().ty(), want);
                    }
                    Some(_) => prop_assert_eq!(state, ProbeState::Deferred),
                    None => prop_assert_eq!(state, ProbeState::NoIommu),
                }
            }
            // Group numbers come lowest-free first: with one group per bound device, the largest
            // number in use is below the largest count of groups ever alive at once.
            peak_groups = peak_groups.max(groups.len());
            if let Some(&top) = groups.last() {
                prop_assert!((top as usize) < peak_groups, "group {} with peak {}", top, peak_groups);
            }
            prop_assert_eq!(core.devices().len(), devices.len());
        }
    }
}

/// Eight threads add, probe, claim, attach and remove devices on one core at once; every
/// device ends where the model says and nothing is left behind.
#[test]
fn concurrent_hot_plug_keeps_the_core_consistent() {
    let core = Arc::new(IommuCore::default());
    let nodes: Vec<FwNode> = (0..4).map(|i| FwNode::new(format!("n{i}"))).collect();
    let drv = Arc::new(TestDriver::new("stress").with_group(GroupChoice::Shared(0)));
    for (i, node) in nodes.iter().enumerate() {
        if i % 2 == 0 {
            drv.register(&core, "i", node);
        }
    }
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (core, nodes, drv) = (core.clone(), nodes.clone(), drv.clone());
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..200 {
                    let node = &nodes[(t + i) % nodes.len()];
                    let dev = core
                        .add_device(
                            DeviceDesc::platform(format!("t{t}-{i}")),
                            spec(node, i as u32),
                        )
                        .unwrap();
                    if i % 3 == 0 {
                        core.remove_device(dev).unwrap();
                    } else {
                        kept.push(dev);
                    }
                    if t == 0 && i == 100 {
                        // Register the odd instances while the others keep adding devices.
                        drv.register(&core, "late1", &nodes[1]);
                        drv.register(&core, "late3", &nodes[3]);
                    }
                }
                kept
            })
        })
        .collect();
    let kept: Vec<DeviceId> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(core.devices().len(), kept.len());
    let mut groups = BTreeMap::new();
    for &dev in &kept {
        let ProbeState::Bound { instance, group } = core.probe_state(dev).unwrap() else {
            panic!("{dev:?} not bound");
        };
        // Shared(0) groups are per instance: one group per instance.
        assert_eq!(*groups.entry(instance).or_insert(group), group);
    }
    assert_eq!(groups.len(), 4);
    let members: usize = groups.values().map(|&g| core.group_devices(g).len()).sum();
    assert_eq!(members, kept.len());
}
