//! uiommu-iommufd: the `/dev/iommu` object model (in progress).
#![deny(unsafe_code)]
pub mod abi;
pub mod access;
pub mod ctx;
pub mod device;
pub mod errno;
pub mod failpoint;
pub mod fault;
pub mod file;
pub mod hwpt;
pub mod io_pagetable;
pub mod ioas;
pub mod ioctl;
pub mod object;
pub mod option;
pub mod pages;
pub mod process_memory;
pub mod selftest;
pub mod user_memory;
pub mod vfio_compat;
