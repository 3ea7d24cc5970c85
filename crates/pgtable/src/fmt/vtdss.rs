//! Intel VT-d second-stage page table (VT-d specification §3.7 and §9.8),
//! 3, 4 or 5 levels with a 4 KiB granule.
//!
//! | bits  | field | meaning |
//! |-------|-------|---------|
//! | 0     | R     | read |
//! | 1     | W     | write |
//! | 7     | PS    | page size: leaf at SS-PDE (2 MiB) or SS-PDPTE (1 GiB) |
//! | 8     | A     | accessed |
//! | 9     | D     | dirty, set by hardware on a write when SSADE is on |
//! | 11    | SNP   | snoop (not used here) |
//! | 51:12 | addr  | output or next-table address |
//!
//! There is no present bit: an entry with neither R nor W does not translate,
//! so table entries carry R and W. Like Linux, the engine treats only an
//! all-zero entry as empty.

use crate::format::{genmask, Entry, Format};
use crate::prot::Prot;

/// Read.
pub const R: u64 = 1 << 0;
/// Write.
pub const W: u64 = 1 << 1;
/// Page size (large leaf).
pub const PS: u64 = 1 << 7;
/// Accessed.
pub const A: u64 = 1 << 8;
/// Dirty.
pub const D: u64 = 1 << 9;
/// Snoop.
pub const SNP: u64 = 1 << 11;
/// Address bits 51:12.
pub const ADDR_MASK: u64 = genmask(51, 12);

/// The VT-d second-stage format with its level count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VtdSs {
    top_level: u32,
    va_bits: u32,
}

impl VtdSs {
    /// A table for a `va_bits`-bit input space (31–57): 3 levels up to 39
    /// bits, 4 up to 48, 5 up to 57, as Linux picks them.
    ///
    /// # Errors
    /// [`Error::BadConfig`](crate::Error::BadConfig) outside 31–57 bits.
    pub fn new(va_bits: u32) -> crate::Result<Self> {
        let top_level = match va_bits {
            31..=39 => 2,
            40..=48 => 3,
            49..=57 => 4,
            _ => {
                return Err(crate::Error::BadConfig(
                    "VT-d second stage takes 31 to 57 input bits",
                ))
            }
        };
        Ok(VtdSs { top_level, va_bits })
    }

    /// The adjusted guest address width code of the context entry (AW):
    /// 1 for 3 levels, 2 for 4, 3 for 5.
    pub fn aw(&self) -> u32 {
        self.top_level - 1
    }
}

impl Format for VtdSs {
    fn name(&self) -> &'static str {
        "vtd-ss"
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
        if pte == 0 {
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
        (table_pa & ADDR_MASK) | R | W
    }

    #[inline]
    fn leaf_entry(&self, level: u32, oa: u64, _size_lg2: u32, prot: Prot) -> u64 {
        let mut pte = oa & ADDR_MASK;
        if level > 0 {
            pte |= PS;
        }
        if prot.contains(Prot::READ) {
            pte |= R;
        }
        if prot.contains(Prot::WRITE) {
            pte |= W;
        }
        pte
    }

    fn tracks_dirty(&self) -> bool {
        true
    }

    #[inline]
    fn is_dirty(&self, pte: u64) -> bool {
        pte & D != 0
    }

    #[inline]
    fn cleaned(&self, pte: u64) -> u64 {
        pte & !D
    }

    fn dirtied(&self, pte: u64) -> Option<u64> {
        Some(pte | D)
    }
}
