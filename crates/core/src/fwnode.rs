//! Firmware nodes and per-device firmware specs: how a device names the IOMMU that serves it.
//!
//! A [`FwNode`] is an identity: two handles are the same node exactly when they come from the
//! same [`FwNode::new`] call, whatever their names. This mirrors Linux's `struct fwnode_handle`,
//! whose pointer is the identity the core compares (`iommu_ops_from_fwnode`). The name is only
//! for people (a device-tree path, an ACPI path, a software-node name).
//!
//! A [`Fwspec`] (Linux `struct iommu_fwspec`) says which fwnode serves a device and which
//! ids (stream ids, requester ids, endpoint ids) the device uses on that IOMMU.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A firmware node: an identity compared by address, carrying a human-readable path.
#[derive(Clone)]
pub struct FwNode(Arc<str>);

impl FwNode {
    /// Create a new node. Each call creates a distinct identity, even for equal names.
    pub fn new(path: impl AsRef<str>) -> FwNode {
        FwNode(Arc::from(path.as_ref()))
    }

    /// The node's path or name, for display only.
    pub fn path(&self) -> &str {
        &self.0
    }
}

impl PartialEq for FwNode {
    fn eq(&self, other: &FwNode) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FwNode {}

impl Hash for FwNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Identity, not name: consistent with `PartialEq`.
        std::ptr::hash(Arc::as_ptr(&self.0) as *const u8, state);
    }
}

impl fmt::Debug for FwNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FwNode({:?})", self.path())
    }
}

impl fmt::Display for FwNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// The IOMMU a device is wired to, as firmware (or the device's bus code) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fwspec {
    /// The fwnode of the IOMMU instance that serves the device.
    pub fwnode: FwNode,
    /// The device's ids on that IOMMU, in the order firmware listed them.
    pub ids: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fwnode_identity_is_not_its_name() {
        let a = FwNode::new("/soc/iommu@0");
        let b = FwNode::new("/soc/iommu@0");
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
        let set: HashSet<FwNode> = [a.clone(), b.clone(), a.clone()].into_iter().collect();
        assert_eq!(set.len(), 2);
    }
}
