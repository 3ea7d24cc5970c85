//! PCI grouping: which PCI functions cannot be isolated from each other (Linux
//! `pci_device_group()`).
//!
//! Two functions must share a group when the IOMMU cannot tell their DMA apart (they alias the
//! same requester id) or when DMA between them can bypass the IOMMU (peer-to-peer below a
//! bridge or port without ACS, or between functions of a multifunction device without ACS).
//! The walk, in Linux's order:
//! 1. the device's DMA aliases, up through PCIe-to-PCI and conventional bridges: join the group
//!    of the first alias that has one; the top-most alias becomes the reference device;
//! 2. upstream bridges without an ACS-isolated path to the root: each becomes the reference
//!    device; join its group if it has one;
//! 3. functions on the reference device's bus that alias it or that it aliases;
//! 4. other functions of the reference device's slot, when it is multifunction without ACS;
//! 5. otherwise a new group.
//!
//! Deviation: Linux would put devices served by different IOMMU instances into one group if the
//! topology says so; uiommu only joins groups of the same instance, because a group's domains
//! come from one driver.

use crate::device::{DeviceId, PciFunction, PciKind};
use crate::iommu::{GroupId, State};
use crate::InstanceId;

/// The group `dev` must join, or `None` when it gets a new one.
pub(crate) fn pci_device_group(st: &State, dev: DeviceId, instance: InstanceId) -> Option<GroupId> {
    let walk = Walk { st, instance };
    walk.pci_function(dev)?;
    // Step 1: aliases, including the bridges that take over the requester id.
    let mut reference = dev;
    for alias in walk.dma_aliases(dev) {
        if let Some(group) = walk.group(alias) {
            return Some(group);
        }
        reference = alias;
    }
    // Step 2: bridges above the reference device, up to the first ACS-isolated path.
    let mut bridge = walk.upstream(reference);
    while let Some(b) = bridge {
        if walk.acs_path_enabled(b) {
            break;
        }
        reference = b;
        if let Some(group) = walk.group(b) {
            return Some(group);
        }
        bridge = walk.upstream(b);
    }
    // Steps 3 and 4 share one visited set, as Linux's devfn bitmap.
    let mut visited = [false; 256];
    walk.alias_group(reference, &mut visited)
        .or_else(|| walk.function_alias_group(reference, &mut visited))
}

struct Walk<'a> {
    st: &'a State,
    instance: InstanceId,
}

impl Walk<'_> {
    fn pci_function(&self, dev: DeviceId) -> Option<&PciFunction> {
        self.st.device(dev).ok()?.desc.pci_function()
    }

    fn upstream(&self, dev: DeviceId) -> Option<DeviceId> {
        self.st.device(dev).ok()?.desc.upstream
    }

    /// The group of `dev`, if it has one served by our instance.
    fn group(&self, dev: DeviceId) -> Option<GroupId> {
        match self.st.device(dev).ok()?.state {
            crate::ProbeState::Bound { instance, group } if instance == self.instance => {
                Some(group)
            }
            _ => None,
        }
    }

    /// Functions on the same bus as `dev`, in the order they were added.
    fn same_bus(&self, dev: DeviceId) -> impl Iterator<Item = (DeviceId, &PciFunction)> + '_ {
        let addr = self.pci_function(dev).map(|f| f.address);
        addr.and_then(|a| self.st.pci_by_bus.get(&(a.segment, a.bus)))
            .into_iter()
            .flatten()
            .filter(move |&&d| d != dev)
            .filter_map(|&d| Some((d, self.pci_function(d)?)))
    }

    /// Everything `dev` issues DMA as, in Linux's `pci_for_each_dma_alias()` order: itself,
    /// its quirk aliases on the same bus, then each bridge on the way up that replaces the
    /// requester id (PCIe-to-PCI bridges and conventional bridges).
    fn dma_aliases(&self, dev: DeviceId) -> Vec<DeviceId> {
        let mut out = vec![dev];
        if let Some(f) = self.pci_function(dev) {
            out.extend(
                self.same_bus(dev)
                    .filter(|(_, other)| f.dma_aliases.contains(&other.address.devfn))
                    .map(|(d, _)| d),
            );
        }
        let mut bridge = self.upstream(dev);
        while let Some(b) = bridge {
            if let Some(kind) = self.pci_function(b).map(|f| f.kind) {
                if matches!(kind, PciKind::PcieToPciBridge | PciKind::ConventionalBridge) {
                    out.push(b);
                }
            }
            bridge = self.upstream(b);
        }
        out
    }

    /// Whether ACS isolates this function (Linux `pci_acs_enabled()` with `REQ_ACS_FLAGS`).
    fn acs_enabled(&self, dev: DeviceId) -> bool {
        let Some(f) = self.pci_function(dev) else {
            return false;
        };
        match f.kind {
            PciKind::ConventionalDevice
            | PciKind::ConventionalBridge
            | PciKind::PcieToPciBridge => false,
            PciKind::RootPort | PciKind::SwitchDownstreamPort => f.acs,
            // Endpoints and upstream ports only need ACS to isolate sibling functions.
            PciKind::Endpoint | PciKind::SwitchUpstreamPort => !f.multifunction || f.acs,
        }
    }

    /// Whether `dev` and every bridge above it have ACS (Linux `pci_acs_path_enabled()` up to
    /// the root).
    fn acs_path_enabled(&self, dev: DeviceId) -> bool {
        let mut cur = Some(dev);
        while let Some(d) = cur {
            if !self.acs_enabled(d) {
                return false;
            }
            cur = self.upstream(d);
        }
        true
    }

    /// Step 3 (Linux `get_pci_alias_group()`): `dev`'s group, or that of a same-bus function
    /// related to it by a DMA alias, recursively.
    fn alias_group(&self, dev: DeviceId, visited: &mut [bool; 256]) -> Option<GroupId> {
        let f = self.pci_function(dev)?;
        if std::mem::replace(&mut visited[usize::from(f.address.devfn)], true) {
            return None;
        }
        if let Some(group) = self.group(dev) {
            return Some(group);
        }
        let related: Vec<DeviceId> = self
            .same_bus(dev)
            .filter(|(_, other)| {
                f.dma_aliases.contains(&other.address.devfn)
                    || other.dma_aliases.contains(&f.address.devfn)
            })
            .map(|(d, _)| d)
            .collect();
        related.into_iter().find_map(|other| {
            self.alias_group(other, visited)
                .or_else(|| self.function_alias_group(other, visited))
        })
    }

    /// Step 4 (Linux `get_pci_function_alias_group()`): for a multifunction device without
    /// ACS, the group of another function of the same slot that has no ACS either.
    fn function_alias_group(&self, dev: DeviceId, visited: &mut [bool; 256]) -> Option<GroupId> {
        let f = self.pci_function(dev)?;
        if !f.multifunction || self.acs_enabled(dev) {
            return None;
        }
        let siblings: Vec<DeviceId> = self
            .same_bus(dev)
            .filter(|(d, other)| other.address.slot() == f.address.slot() && !self.acs_enabled(*d))
            .map(|(d, _)| d)
            .collect();
        siblings
            .into_iter()
            .find_map(|other| self.alias_group(other, visited))
    }
}
