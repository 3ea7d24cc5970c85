//! The `uiommu` command line as a library: what the binary does, reusable by tests.
//!
//! [`machine::Machine`] wires a platform description, the IOMMU core and the drivers uiommu
//! ships (mock, virtio-iommu) into one simulated machine; [`probe`] reports on it.
//!
//! The crate only wires and reports: it holds no IOMMU logic of its own (routing, grouping
//! and domains are the core's, page tables the drivers'), and it does not link the preload
//! library, whose interposition would catch the binary's own libc calls (see `uiommu run`).
#![deny(unsafe_code)]

pub mod machine;
pub mod probe;
