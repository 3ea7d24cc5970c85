//! uiommu-core: the IOMMU core (in progress).
#![deny(unsafe_code)]
pub mod addr;
