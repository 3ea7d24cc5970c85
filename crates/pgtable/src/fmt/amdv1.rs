//! AMD IOMMU v1 host page table ("I/O Page Tables for Host Translations",
//! AMD I/O Virtualization Technology (IOMMU) Specification §2.2.3).
//!
//! PTE layout (the same for tables and leaves):
//!
//! | bits  | field | meaning |
//! |-------|-------|---------|
//! | 0     | PR    | present |
//! | 5     | A     | accessed (set by hardware; not used here) |
//! | 6     | D     | dirty, set by hardware on a write when the DTE enables HD |
//! | 9–11  | NL    | next level: 1–6 = table at that level, 0 = leaf of the level's size, 7 = leaf whose size is encoded in the address |
//! | 12–51 | addr  | output or table address, in granule units |
//! | 60    | FC    | force coherent |
//! | 61    | IR    | read permitted |
//! | 62    | IW    | write permitted |
//!
//! With NL = 7 the leaf is `2^(n + 1)` granules, where `n` is the number of
//! consecutive 1 bits at the bottom of the address field; the PTE is repeated
//! in every entry the leaf covers. IR and IW are ANDed down the walk, so table
//! entries set both and leaves carry the real rights (as Linux does). The top
//! level (mode 6) holds no leaves, and a 512 GiB leaf is never used (Linux
//! avoids it for a hardware erratum).
//!
//! The iommufd selftest's mock (Linux 7.3 `iommu_mock.c`) uses this format
//! with a 2 KiB granule, a 56-bit input and 51-bit output space and at most 5
//! levels; [`AmdV1::mock`] builds that variant.

use crate::format::{genmask, Entry, Format};
use crate::prot::Prot;
use crate::{Config, PageTable};

/// Present.
pub const PR: u64 = 1 << 0;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty.
pub const D: u64 = 1 << 6;
/// Next-level field shift.
pub const NL_SHIFT: u32 = 9;
/// Next-level field mask (after shifting).
pub const NL_MASK: u64 = 7;
/// NL value of a leaf whose size is encoded in the address field.
pub const NL_SIZED: u64 = 7;
/// Address field: bits 12..=51.
pub const ADDR_MASK: u64 = genmask(51, 12);
/// Force coherent.
pub const FC: u64 = 1 << 60;
/// Read permission.
pub const IR: u64 = 1 << 61;
/// Write permission.
pub const IW: u64 = 1 << 62;

/// The AMD v1 format with its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmdV1 {
    granule_lg2: u32,
    top_level: u32,
    /// Highest level the hardware variant allows; it holds no leaves.
    max_top_level: u32,
    va_bits: u32,
    oa_bits: u32,
    force_coherent: bool,
}

/// The selftest mock's page-table types, by their Linux 7.3 values of
/// `iommu_hwpt_selftest.pagetable_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockPagetable {
    /// `MOCK_IOMMUPT_DEFAULT`: every page size from 2 KiB up.
    Default = 0,
    /// `MOCK_IOMMUPT_HUGE`: 1 MiB leaves only (plus the 4 KiB CPU page).
    Huge = 1,
}

impl TryFrom<u32> for MockPagetable {
    type Error = crate::Error;

    /// An unknown type is [`Error::UnknownMockType`](crate::Error::UnknownMockType).
    fn try_from(value: u32) -> crate::Result<Self> {
        match value {
            0 => Ok(MockPagetable::Default),
            1 => Ok(MockPagetable::Huge),
            other => Err(crate::Error::UnknownMockType(other)),
        }
    }
}

impl MockPagetable {
    /// A new, empty table of this type, as `mock_domain_alloc_pgtable()` builds it.
    ///
    /// # Errors
    /// None in practice; the signature keeps [`PageTable::new`]'s.
    pub fn new_table(self) -> crate::Result<PageTable<AmdV1>> {
        let pgsize_mask = match self {
            MockPagetable::Default => u64::MAX,
            MockPagetable::Huge => AmdV1::MOCK_HUGE_PGSIZES,
        };
        let config = Config {
            pgsize_mask,
            ..Config::default()
        };
        PageTable::new(AmdV1::mock(), config)
    }
}

/// Page size of the selftest mock's `MOCK_IOMMUPT_HUGE` leaves: 512 mock pages.
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * 2048;
/// The CPU page size the selftest's huge mock also accepts (Linux's `PAGE_SIZE`).
pub const MOCK_CPU_PAGE_SIZE: u64 = 4096;

impl AmdV1 {
    /// The hardware format with `levels` levels (the DTE's "mode", 1–6): a
    /// 4 KiB granule, `12 + 9 * levels` input bits (at most 64), 52 output bits.
    ///
    /// # Errors
    /// [`Error::BadConfig`](crate::Error::BadConfig) if `levels` is outside 1–6.
    pub fn new(levels: u32) -> crate::Result<Self> {
        if !(1..=6).contains(&levels) {
            return Err(crate::Error::BadConfig("AMD v1 has 1 to 6 levels"));
        }
        Ok(AmdV1 {
            granule_lg2: 12,
            top_level: levels - 1,
            max_top_level: 5,
            va_bits: (12 + 9 * levels).min(64),
            oa_bits: 52,
            force_coherent: false,
        })
    }

    /// Sets FC in every leaf (Linux's `PT_FEAT_AMDV1_FORCE_COHERENCE`).
    pub fn with_force_coherent(mut self) -> Self {
        self.force_coherent = true;
        self
    }

    /// The iommufd selftest mock's variant (Linux 7.3, `MOCK_IOMMUPT_DEFAULT`
    /// and `MOCK_IOMMUPT_HUGE`): 2 KiB granule, 3 levels (`starting_level = 2`),
    /// so 38 input bits; 51 output bits.
    pub fn mock() -> Self {
        AmdV1 {
            granule_lg2: 11,
            top_level: 2,
            max_top_level: 4,
            va_bits: 11 + 9 * 3,
            oa_bits: 51,
            force_coherent: false,
        }
    }

    /// The `pgsize_mask` of a `MOCK_IOMMUPT_HUGE` domain: only 1 MiB leaves,
    /// plus the CPU page size that iommufd insists on.
    pub const MOCK_HUGE_PGSIZES: u64 = MOCK_HUGE_PAGE_SIZE | MOCK_CPU_PAGE_SIZE;

    fn item_lg2(&self, level: u32) -> u32 {
        self.granule_lg2 + 9 * level
    }
}

impl Format for AmdV1 {
    fn name(&self) -> &'static str {
        "amdv1"
    }

    fn granule_lg2(&self) -> u32 {
        self.granule_lg2
    }

    fn top_level(&self) -> u32 {
        self.top_level
    }

    fn va_bits(&self) -> u32 {
        self.va_bits
    }

    fn oa_bits(&self) -> u32 {
        self.oa_bits
    }

    fn leaf_sizes(&self, level: u32) -> u64 {
        if level >= self.max_top_level {
            return 0;
        }
        let item_lg2 = self.item_lg2(level);
        // Every power of two from the item size up to a full table, capped
        // by the 52-bit address field, without 512 GiB.
        genmask((item_lg2 + 8).min(51), item_lg2) & !(1 << 39)
    }

    #[inline]
    fn decode(&self, level: u32, pte: u64) -> Entry {
        if pte & PR == 0 {
            return Entry::Empty;
        }
        let next_level = (pte >> NL_SHIFT) & NL_MASK;
        let field = (pte & ADDR_MASK) >> 12;
        if next_level == NL_SIZED {
            let ones = field.trailing_ones();
            let base = field & !((1u64 << (ones + 1)) - 1);
            return Entry::Leaf {
                oa: base << self.granule_lg2,
                size_lg2: self.granule_lg2 + ones + 1,
            };
        }
        if level == 0 || next_level == 0 {
            return Entry::Leaf {
                oa: field << self.granule_lg2,
                size_lg2: self.item_lg2(level),
            };
        }
        Entry::Table {
            pa: field << self.granule_lg2,
        }
    }

    fn table_entry(&self, level: u32, table_pa: u64) -> u64 {
        // NL names the lower table's level in AMD's 1-based numbering, which
        // is this table's 0-based level.
        PR | (u64::from(level) << NL_SHIFT)
            | (((table_pa >> self.granule_lg2) << 12) & ADDR_MASK)
            | IR
            | IW
    }

    #[inline]
    fn leaf_entry(&self, level: u32, oa: u64, size_lg2: u32, prot: Prot) -> u64 {
        let mut pte = PR | (((oa >> self.granule_lg2) << 12) & ADDR_MASK);
        if size_lg2 != self.item_lg2(level) {
            let size_code = (1u64 << (size_lg2 - self.granule_lg2 - 1)) - 1;
            pte |= (NL_SIZED << NL_SHIFT) | (size_code << 12);
        }
        if prot.contains(Prot::READ) {
            pte |= IR;
        }
        if prot.contains(Prot::WRITE) {
            pte |= IW;
        }
        if self.force_coherent {
            pte |= FC;
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
