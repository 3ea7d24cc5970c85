//! The `uiommu` command line as a library: what the binary does, reusable by tests.
//!
//! [`machine::Machine`] wires a platform description, the IOMMU core and the drivers uiommu
//! ships (mock, virtio-iommu) into one simulated machine; [`probe`] reports on it.
#![deny(unsafe_code)]

pub mod machine;
pub mod probe;
