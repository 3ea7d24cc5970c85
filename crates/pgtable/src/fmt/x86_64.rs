//! x86-64 4- and 5-level paging (Intel SDM vol. 3 §4.5), the first-stage
//! format of VT-d (§9.7) and the AMD IOMMU v2 table, 4 KiB granule.
//!
//! | bits  | field | meaning |
//! |-------|-------|---------|
//! | 0     | P     | present |
//! | 1     | R/W   | writable |
//! | 2     | U/S   | user accessible (always set, as Linux does) |
//! | 5     | A     | accessed (set up front) |
//! | 6     | D     | dirty (set up front on writable leaves) |
//! | 7     | PS    | page size: 2 MiB leaf in a PDE, 1 GiB leaf in a PDPTE |
//! | 51:12 | addr  | output or next-table address |
//! | 63    | XD    | execute disable (not used, as in Linux) |
//!
//! Reads are always allowed once present. A and D are written up front, as
//! Linux's iommupt does, so the walker never needs to update them; this
//! format therefore keeps no dirty state. Only the lower (non sign-extended)
//! half of the address space is covered.

use crate::format::{genmask, Entry, Format};
use crate::prot::Prot;

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User accessible.
pub const US: u64 = 1 << 2;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty.
pub const D: u64 = 1 << 6;
/// Page size (large leaf).
pub const PS: u64 = 1 << 7;
/// Address bits 51:12.
pub const ADDR_MASK: u64 = genmask(51, 12);
/// Execute disable.
pub const XD: u64 = 1 << 63;

/// The x86-64 format with its level count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86_64 {
    top_level: u32,
    va_bits: u32,
}

impl X86_64 {
    /// A table for a `va_bits`-bit input space (31–57): 3, 4 or 5 levels.
    ///
    /// # Errors
    /// [`Error::BadConfig`](crate::Error::BadConfig) outside 31–57 bits.
    pub fn new(va_bits: u32) -> crate::Result<Self> {
        if !(31..=57).contains(&va_bits) {
            return Err(crate::Error::BadConfig(
                "x86-64 paging takes 31 to 57 input bits",
            ));
        }
        Ok(X86_64 {
            top_level: (va_bits - 31) / 9 + 2,
            va_bits,
        })
    }
}

impl Format for X86_64 {
    fn name(&self) -> &'static str {
        "x86-64"
    }

    fn granule_lg2(&self) -> u32 {
        12
    }

    fn top_level(&self) -> u32 {
        self.top_level
    }

    fn va_bits(&self) -> u32 {
        self.va_bits
    }

    fn oa_bits(&self) -> u32 {
        52
    }

    fn leaf_sizes(&self, level: u32) -> u64 {
        if level <= 2 {
            1 << (12 + 9 * level)
        } else {
            0
        }
    }

    #[inline]
    fn decode(&self, level: u32, pte: u64) -> Entry {
        if pte & P == 0 {
            Entry::Empty
        } else if level == 0 || (level <= 2 && pte & PS != 0) {
            Entry::Leaf {
                oa: pte & ADDR_MASK,
                size_lg2: 12 + 9 * level,
            }
        } else {
            Entry::Table {
                pa: pte & ADDR_MASK,
            }
        }
    }

    fn table_entry(&self, _level: u32, table_pa: u64) -> u64 {
        (table_pa & ADDR_MASK) | P | RW | US | A
    }

    #[inline]
    fn leaf_entry(&self, level: u32, oa: u64, _size_lg2: u32, prot: Prot) -> u64 {
        let mut pte = (oa & ADDR_MASK) | P | US | A;
        if level > 0 {
            pte |= PS;
        }
        if prot.contains(Prot::WRITE) {
            pte |= RW | D;
        }
        pte
    }
}
