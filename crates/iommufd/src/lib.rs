//! uiommu-iommufd: `/dev/iommu`, as Linux's `drivers/iommu/iommufd/` is for the kernel.
//!
//! One entry point, [`ctx::IommufdCtx::ioctl`], takes an ioctl number and the address of the
//! caller's struct and answers with Linux's exact semantics and errno order. Behind it:
//! * the dispatcher and its one table ([`ioctl`], the table itself in [`ctx`]);
//! * the object table with two-phase creation and two reference counts ([`object`]);
//! * one module per object kind: [`ioas`], [`hwpt`], [`device`], [`access`], [`fault`],
//!   [`viommu`] (vIOMMU and vDEVICE), [`eventq`] (vIOMMU event queues), plus
//!   [`option`], [`vfio_compat`] and the selftest hook [`selftest`];
//! * the engines, ignorant of ioctls: [`io_pagetable`] (areas and IOVA allocation) and
//!   [`pages`] (pinning and accounting);
//! * the seams to the host: [`user_memory`] (the caller's memory; [`process_memory`] is the
//!   in-process implementation, [`shared_alias`] keeps its pinned shared pages reachable) and
//!   [`file`](mod@file) (files such as fault queues that become fds);
//! * [`abi`] (the uAPI structs), [`errno`], [`failpoint`] (fail-nth fault injection), and
//!   [`version`] (which Linux, 6.12 or 7.3, the answers follow).
//!
//! The crate is a client of the IOMMU core (`uiommu-core`): it binds devices, claims their DMA
//! ownership and allocates domains only through it. It does not know the mock driver, which
//! reaches it through [`selftest::SelftestHook`].
//!
//! Lock order (each lock is documented where it is declared): an IOAS's HWPT list → a device
//! group → the io page table (`domains` → `iova` → `Pages::state` → pin table) → the IOMMU
//! core; a test driver's lock → an access → the io page table; the VFIO compat slot → the
//! object table. The object table's and the fd table's mutexes are leaves.
//!
//! Unsafe code is denied here and allowed only in [`process_memory`] and [`shared_alias`],
//! each under its own `# Safety` paragraph.
#![deny(unsafe_code)]
#![deny(missing_docs)]
pub mod abi;
pub mod access;
pub mod ctx;
pub mod device;
pub mod errno;
pub mod eventq;
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
pub mod shared_alias;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod user_memory;
pub mod version;
pub mod vfio_compat;
pub mod viommu;
