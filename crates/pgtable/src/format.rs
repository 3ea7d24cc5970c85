//! The seam between the engine and a hardware page-table format.
//!
//! The engine owns the radix walk: which table, which index, when to allocate
//! or free a table, how a range splits into leaves. A format owns only the
//! bits: how big the tree is, which leaf sizes each level holds, and how a
//! 64-bit entry encodes "empty", "next table at PA" or "leaf of size S at OA
//! with these rights". Levels are numbered as in iommupt: level 0 holds the
//! smallest pages, the root is at [`Format::top_level`].
//!
//! A leaf larger than one entry of its level (AMD v1's "page size" encoding)
//! is written as `size / item size` identical copies of the same PTE, aligned
//! in the table; the engine writes, reads, cleans and clears such a group as
//! one leaf.

use crate::prot::Prot;
use std::fmt::Debug;

/// What one PTE means, as a hardware walker would read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Not present: translation faults here.
    Empty,
    /// Points to the next-lower-level table at this physical address.
    Table {
        /// Physical address of the lower table.
        pa: u64,
    },
    /// Translates a whole leaf.
    Leaf {
        /// Output address of the first byte of the leaf (of the whole group,
        /// for a leaf written as several copies).
        oa: u64,
        /// log2 of the leaf's size in bytes.
        size_lg2: u32,
    },
}

/// A hardware page-table format: geometry and PTE encoding.
///
/// Implementations are small `Copy` values holding their configuration (levels,
/// address widths, features). The engine is generic over `F: Format`, so every
/// format gets its own inlined walker, as iommupt compiles one per format.
pub trait Format: Copy + Debug + Send + Sync + 'static {
    /// Short name, e.g. `"amdv1"`.
    fn name(&self) -> &'static str;
    /// log2 of the bytes one entry of a level-0 table translates (the granule).
    fn granule_lg2(&self) -> u32;
    /// Level of the root table; the tree has `top_level() + 1` levels.
    fn top_level(&self) -> u32;
    /// Width of the input (IOVA) space; at most `granule_lg2 + 9 * (top_level + 1)`.
    fn va_bits(&self) -> u32;
    /// Width of the output address space the PTEs can encode.
    fn oa_bits(&self) -> u32;
    /// Leaf sizes (a bitmap of powers of two) a leaf at `level` may have;
    /// each is at least the level's item size. 0 if the level holds no leaves.
    fn leaf_sizes(&self, level: u32) -> u64;
    /// Decodes a PTE found at `level`.
    fn decode(&self, level: u32, pte: u64) -> Entry;
    /// The PTE at `level` that points to a lower table at `table_pa`.
    fn table_entry(&self, level: u32, table_pa: u64) -> u64;
    /// The PTE (written to every entry of the group) for a leaf of
    /// `2^size_lg2` bytes at `level` translating to `oa`, with rights `prot`.
    fn leaf_entry(&self, level: u32, oa: u64, size_lg2: u32, prot: Prot) -> u64;
    /// Whether leaves carry a hardware-set dirty state.
    fn tracks_dirty(&self) -> bool {
        false
    }
    /// Whether this leaf PTE says "written since last cleaned".
    fn is_dirty(&self, _pte: u64) -> bool {
        false
    }
    /// The PTE with its dirty state cleared.
    fn cleaned(&self, pte: u64) -> u64 {
        pte
    }
    /// The PTE as hardware would leave it after a write, or `None` if this
    /// leaf cannot record a write.
    fn dirtied(&self, _pte: u64) -> Option<u64> {
        None
    }
}

/// Bits `lo..=hi` set.
pub(crate) const fn genmask(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}
