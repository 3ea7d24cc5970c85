//! uiommu-iommufd: the `/dev/iommu` object model (in progress).
#![deny(unsafe_code)]
pub mod user_memory;
