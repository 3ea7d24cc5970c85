//! Arm VMSAv8-64 long-descriptor (LPAE) translation tables with a 4 KiB
//! granule, stage 1 and stage 2, as the SMMU walks them (Arm ARM D8.3; the
//! attribute choices follow Linux's `io-pgtable-arm.c`).
//!
//! Descriptor bits shared by both stages:
//!
//! | bits  | field | meaning |
//! |-------|-------|---------|
//! | 1:0   | type  | `0b11` table (levels 1–2 in Arm numbering) or page (level 3); `0b01` block (levels 1–2); bit 0 clear = invalid |
//! | 9:8   | SH    | shareability: inner (`0b11`) for `CACHE`, outer (`0b10`) otherwise |
//! | 10    | AF    | access flag, always set (no access-flag faults) |
//! | 47:12 | addr  | output or next-table address |
//! | 51    | DBM   | dirty bit modifier (stage 1 with hardware dirty) |
//! | 54:53 | XN    | execute-never, for `NOEXEC` |
//!
//! Stage 1: AttrIndx `4:2` (0 non-cacheable, 1 cacheable, 2 device), `AP[1]`
//! bit 6 (unprivileged access, unless `PRIV`), `AP[2]` bit 7 (read-only),
//! nG bit 11. With hardware dirty tracking a writable leaf is written
//! "writable-clean" (`AP[2]` and DBM set); the SMMU clears `AP[2]` on the first
//! write, so dirty means DBM set and `AP[2]` clear.
//!
//! Stage 2: MemAttr `5:2` (`0b1111` write-back, `0b0101` non-cacheable,
//! `0b0001` device), S2AP bit 6 read, bit 7 write. No dirty tracking.
//!
//! Level numbering: our level 0 is Arm level 3 (4 KiB pages), level 1 is Arm
//! level 2 (2 MiB blocks), level 2 is Arm level 1 (1 GiB blocks), level 3 is
//! Arm level 0 (tables only). Not covered: 16/64 KiB granules, 52-bit
//! addresses, the contiguous hint, concatenated stage-2 root tables.

use crate::format::{genmask, Entry, Format};
use crate::prot::Prot;

/// Valid.
pub const VALID: u64 = 1 << 0;
/// Descriptor type bits `1:0`.
pub const TYPE_MASK: u64 = 0b11;
/// Table (levels 1–2) or page (level 3) descriptor.
pub const TYPE_TABLE_OR_PAGE: u64 = 0b11;
/// Block descriptor.
pub const TYPE_BLOCK: u64 = 0b01;
/// Stage-1 AttrIndx shift.
pub const ATTR_INDEX_SHIFT: u32 = 2;
/// Stage-1 MAIR index of normal non-cacheable memory (Linux's `ARM_LPAE_MAIR_ATTR_IDX_NC`).
pub const ATTR_IDX_NC: u64 = 0;
/// Stage-1 MAIR index of normal write-back memory (`ARM_LPAE_MAIR_ATTR_IDX_CACHE`).
pub const ATTR_IDX_CACHE: u64 = 1;
/// Stage-1 MAIR index of device memory (`ARM_LPAE_MAIR_ATTR_IDX_DEV`).
pub const ATTR_IDX_DEV: u64 = 2;
/// Stage-2 MemAttr: outer and inner write-back.
pub const MEMATTR_OIWB: u64 = 0xf << 2;
/// Stage-2 MemAttr: normal non-cacheable.
pub const MEMATTR_NC: u64 = 0x5 << 2;
/// Stage-2 MemAttr: device.
pub const MEMATTR_DEV: u64 = 0x1 << 2;
/// Stage-1 `AP[1]`: accessible at EL0 (unprivileged).
pub const AP_UNPRIV: u64 = 1 << 6;
/// Stage-1 `AP[2]`: read-only.
pub const AP_RDONLY: u64 = 1 << 7;
/// Stage-2 S2AP read.
pub const S2AP_READ: u64 = 1 << 6;
/// Stage-2 S2AP write.
pub const S2AP_WRITE: u64 = 1 << 7;
/// Shareability: outer shareable.
pub const SH_OS: u64 = 2 << 8;
/// Shareability: inner shareable.
pub const SH_IS: u64 = 3 << 8;
/// Access flag.
pub const AF: u64 = 1 << 10;
/// Stage-1 not-global.
pub const NG: u64 = 1 << 11;
/// Output/table address bits 47:12.
pub const ADDR_MASK: u64 = genmask(47, 12);
/// Dirty bit modifier.
pub const DBM: u64 = 1 << 51;
/// Execute-never (both XN bits, as Linux writes them).
pub const XN: u64 = 3 << 53;

/// Which translation stage the table serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1 (VA to IPA/PA), AP and AttrIndx attributes.
    One,
    /// Stage 2 (IPA to PA), S2AP and MemAttr attributes.
    Two,
}

/// The Arm LPAE 4 KiB-granule format with its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmLpae {
    stage: Stage,
    top_level: u32,
    va_bits: u32,
    hardware_dirty: bool,
}

impl ArmLpae {
    /// A stage-1 table for a `va_bits`-bit input space (25–48); with
    /// `hardware_dirty`, writable leaves use DBM (Linux's `IO_PGTABLE_QUIRK_ARM_HD`).
    ///
    /// # Errors
    /// [`Error::BadConfig`](crate::Error::BadConfig) for `va_bits` outside 25–48.
    pub fn stage1(va_bits: u32, hardware_dirty: bool) -> crate::Result<Self> {
        Self::build(Stage::One, va_bits, hardware_dirty)
    }

    /// A stage-2 table for a `va_bits`-bit IPA space (25–48), starting at
    /// the level that resolves it without concatenated root tables.
    ///
    /// # Errors
    /// [`Error::BadConfig`](crate::Error::BadConfig) for `va_bits` outside 25–48.
    pub fn stage2(va_bits: u32) -> crate::Result<Self> {
        Self::build(Stage::Two, va_bits, false)
    }

    fn build(stage: Stage, va_bits: u32, hardware_dirty: bool) -> crate::Result<Self> {
        if !(25..=48).contains(&va_bits) {
            return Err(crate::Error::BadConfig(
                "Arm LPAE input size must be 25 to 48 bits",
            ));
        }
        // Each level resolves 9 bits above the 12-bit page offset.
        let top_level = (va_bits - 12).div_ceil(9) - 1;
        Ok(ArmLpae {
            stage,
            top_level,
            va_bits,
            hardware_dirty,
        })
    }
}

impl Format for ArmLpae {
    fn name(&self) -> &'static str {
        match self.stage {
            Stage::One => "arm-lpae-s1",
            Stage::Two => "arm-lpae-s2",
        }
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
        48
    }

    fn leaf_sizes(&self, level: u32) -> u64 {
        // 4 KiB pages, 2 MiB and 1 GiB blocks; Arm level 0 holds only tables.
        if level <= 2 {
            1 << (12 + 9 * level)
        } else {
            0
        }
    }

    #[inline]
    fn decode(&self, level: u32, pte: u64) -> Entry {
        if pte & VALID == 0 {
            return Entry::Empty;
        }
        let kind = pte & TYPE_MASK;
        match (level, kind) {
            (0, TYPE_TABLE_OR_PAGE) => Entry::Leaf {
                oa: pte & ADDR_MASK,
                size_lg2: 12,
            },
            (1 | 2, TYPE_BLOCK) => Entry::Leaf {
                oa: pte & ADDR_MASK,
                size_lg2: 12 + 9 * level,
            },
            (1.., TYPE_TABLE_OR_PAGE) => Entry::Table {
                pa: pte & ADDR_MASK,
            },
            // A block at level 0 (Arm level 3) or at Arm level 0: reserved,
            // the walker faults on it.
            _ => Entry::Empty,
        }
    }

    fn table_entry(&self, _level: u32, table_pa: u64) -> u64 {
        (table_pa & ADDR_MASK) | TYPE_TABLE_OR_PAGE
    }

    #[inline]
    fn leaf_entry(&self, level: u32, oa: u64, _size_lg2: u32, prot: Prot) -> u64 {
        let mut pte = (oa & ADDR_MASK) | AF;
        pte |= if level == 0 {
            TYPE_TABLE_OR_PAGE
        } else {
            TYPE_BLOCK
        };
        pte |= if prot.contains(Prot::CACHE) {
            SH_IS
        } else {
            SH_OS
        };
        if prot.contains(Prot::NOEXEC) {
            pte |= XN;
        }
        match self.stage {
            Stage::One => {
                pte |= NG;
                if prot.contains(Prot::READ) && !prot.contains(Prot::WRITE) {
                    pte |= AP_RDONLY;
                } else if self.hardware_dirty {
                    pte |= AP_RDONLY | DBM;
                }
                if !prot.contains(Prot::PRIV) {
                    pte |= AP_UNPRIV;
                }
                let index = if prot.contains(Prot::MMIO) {
                    ATTR_IDX_DEV
                } else if prot.contains(Prot::CACHE) {
                    ATTR_IDX_CACHE
                } else {
                    ATTR_IDX_NC
                };
                pte |= index << ATTR_INDEX_SHIFT;
            }
            Stage::Two => {
                if prot.contains(Prot::READ) {
                    pte |= S2AP_READ;
                }
                if prot.contains(Prot::WRITE) {
                    pte |= S2AP_WRITE;
                }
                pte |= if prot.contains(Prot::MMIO) {
                    MEMATTR_DEV
                } else if prot.contains(Prot::CACHE) {
                    MEMATTR_OIWB
                } else {
                    MEMATTR_NC
                };
            }
        }
        pte
    }

    fn tracks_dirty(&self) -> bool {
        self.stage == Stage::One && self.hardware_dirty
    }

    #[inline]
    fn is_dirty(&self, pte: u64) -> bool {
        pte & (DBM | AP_RDONLY) == DBM
    }

    #[inline]
    fn cleaned(&self, pte: u64) -> u64 {
        if pte & DBM != 0 {
            pte | AP_RDONLY
        } else {
            pte
        }
    }

    fn dirtied(&self, pte: u64) -> Option<u64> {
        (pte & DBM != 0).then_some(pte & !AP_RDONLY)
    }
}
