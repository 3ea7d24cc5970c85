//! The engine's one error type.
//!
//! Each variant names the kernel errno that Linux's page-table code (iommupt,
//! `drivers/iommu/generic_pt/iommu_pt.h`) or the IOMMU core answers for the same
//! cause; the errno itself is chosen by whoever turns this into a syscall answer.

/// Why a page-table operation was refused. A refused operation changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The length (`pgsize * pgcount`) is zero. Linux: `EINVAL`.
    #[error("zero-length range")]
    ZeroLength,
    /// `pgsize * pgcount`, or `iova + length - 1`, does not fit in 64 bits. Linux: `EOVERFLOW`.
    #[error("range arithmetic overflows 64 bits")]
    Overflow,
    /// `pgsize` is not one of the table's page sizes ([`PageTable::pgsize_bitmap`]).
    /// Linux: `EINVAL` (the core checks against the domain's `pgsize_bitmap`).
    ///
    /// [`PageTable::pgsize_bitmap`]: crate::PageTable::pgsize_bitmap
    #[error("page size {0:#x} is not supported by this table")]
    UnsupportedPageSize(u64),
    /// The IOVA or the physical address is not aligned to `pgsize`. Linux: `EINVAL`.
    #[error("iova {iova:#x} or address {paddr:#x} is not aligned to the page size {pgsize:#x}")]
    Misaligned {
        /// Requested IOVA.
        iova: u64,
        /// Requested output address (0 for unmap).
        paddr: u64,
        /// Requested page size.
        pgsize: u64,
    },
    /// The mapping grants neither read nor write. Linux: `EINVAL`.
    #[error("a mapping must allow read or write")]
    NoAccess,
    /// The IOVA range ends beyond the table's input address width. Linux: `ERANGE`.
    #[error("iova range ends at {last:#x}, beyond the {va_bits}-bit input space")]
    IovaOutOfRange {
        /// Last IOVA of the request (inclusive).
        last: u64,
        /// Width of the table's input address space.
        va_bits: u32,
    },
    /// The output range ends beyond what the format can encode. Linux: `ERANGE`.
    #[error("output address range ends at {last:#x}, beyond the {oa_bits}-bit output space")]
    PhysOutOfRange {
        /// Last output address of the request (inclusive).
        last: u64,
        /// Width of the format's output address space.
        oa_bits: u32,
    },
    /// Part of the range is already mapped. Linux: `EADDRINUSE` (iommupt;
    /// io-pgtable answered `EEXIST`).
    #[error("iova {0:#x} is already mapped")]
    AlreadyMapped(u64),
    /// Nothing is mapped at this IOVA. Linux: `ENOENT`.
    #[error("iova {0:#x} is not mapped")]
    NotMapped(u64),
    /// The format keeps no dirty state, or this leaf cannot become dirty
    /// (an ARM stage-1 read-only leaf). Linux: `EOPNOTSUPP`.
    #[error("dirty tracking is not available here")]
    DirtyUnsupported,
    /// The table memory cap ([`Config::max_tables`]) is reached. Linux: `ENOMEM`.
    ///
    /// [`Config::max_tables`]: crate::Config::max_tables
    #[error("out of page-table memory")]
    NoMemory,
    /// Not a selftest mock page-table type (`iommu_hwpt_selftest.pagetable_type`).
    /// Linux: `EOPNOTSUPP`.
    #[error("unknown mock page-table type {0}")]
    UnknownMockType(u32),
    /// The format rejected its geometry (e.g. an unsupported level count). Linux: `EINVAL`.
    #[error("invalid page-table configuration: {0}")]
    BadConfig(&'static str),
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, Error>;
