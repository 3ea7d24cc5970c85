//! uiommu-iommufd: the `/dev/iommu` object model (in progress).
#![deny(unsafe_code)]
pub mod abi;
pub mod ctx;
pub mod errno;
pub mod failpoint;
pub mod io_pagetable;
pub mod ioctl;
pub mod object;
pub mod pages;
pub mod process_memory;
pub mod user_memory;
