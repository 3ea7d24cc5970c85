//! uiommu-pgtable: the page-table engine that IOMMU driver domains sit on.
//!
//! One radix-walk engine ([`PageTable`]) and one module per hardware format
//! ([`fmt`]), after Linux's generic page table (iommupt,
//! `drivers/iommu/generic_pt/`): AMD v1 (also the iommufd selftest mock's
//! table), Arm LPAE stage 1 and 2, VT-d second stage and x86-64. A format
//! says how big the tree is and how a PTE encodes a table or a leaf
//! ([`Format`]); the engine does the walking, allocation, large-page choice,
//! freeing and dirty tracking, with the semantics of Linux's
//! `iommu_domain_ops` and `iommu_dirty_ops`.
//!
//! Tables live in table memory, "physical" pages the engine allocates, as
//! real arrays of 64-bit PTEs in the hardware layout: a test, or an emulated
//! IOMMU walker, can read them by physical address from
//! [`PageTable::root_phys`] down.
//!
//! This crate must not know about devices, domains, iommufd or errnos: a
//! driver wraps a [`PageTable`] in its domain and turns [`Error`] into the
//! errno of its interface. It does no TLB invalidation either; whoever owns
//! the emulated IOMMU flushes after unmap.
//!
//! Not covered yet: Arm 16/64 KiB granules, 52-bit output addresses, the
//! contiguous hint and concatenated stage-2 roots; x86-64 sign extension;
//! VT-d first stage (use [`fmt::x86_64`]); parallel maps of disjoint ranges
//! (one lock per tree, see [`PageTable`]).
//!
//! # Example
//! The iommufd selftest mock's `MOCK_IOMMUPT_HUGE` table: 1 MiB leaves on an
//! AMD v1 layout with a 2 KiB granule.
//! ```
//! use uiommu_pgtable::fmt::amdv1::{self, MockPagetable};
//! use uiommu_pgtable::{DirtyMode, Prot};
//!
//! let table = MockPagetable::try_from(1)?.new_table()?;
//! let huge = amdv1::MOCK_HUGE_PAGE_SIZE;
//!
//! assert_eq!(table.map_pages(0x100_0000, 0x4000_0000, huge, 2, Prot::RW)?, 2 * huge);
//! assert_eq!(table.iova_to_phys(0x100_0000 + 0x1234), Some(0x4000_1234));
//!
//! // A write by the device dirties the whole 1 MiB leaf.
//! table.set_dirty(0x100_0000 + 0x800)?;
//! let mut dirty = Vec::new();
//! table.read_and_clear_dirty(0x100_0000, 2 * huge, DirtyMode::Clear, |iova, len| {
//!     dirty.push((iova, len))
//! })?;
//! assert_eq!(dirty, [(0x100_0000, huge)]);
//!
//! // Mapping over it fails; unmapping returns whole leaves.
//! assert!(table.map_pages(0x100_0000, 0, huge, 1, Prot::READ).is_err());
//! assert_eq!(table.unmap_pages(0x100_0000, huge, 2)?, 2 * huge);
//! assert_eq!(table.iova_to_phys(0x100_0000), None);
//! # Ok::<(), uiommu_pgtable::Error>(())
//! ```

mod error;
pub mod fmt;
mod format;
mod memory;
mod prot;
mod table;

pub use error::{Error, Result};
pub use format::{Entry, Format};
pub use memory::{LEVEL_BITS, PHYS_BASE, TABLE_BYTES, TABLE_ENTRIES};
pub use prot::Prot;
pub use table::{Config, DirtyMode, PageTable};
