//! Address spaces as distinct types, so an IOVA can never be passed where a physical address
//! is expected.
//!
//! Vocabulary used across uiommu: `last` is inclusive, `end` is exclusive. A range that reaches
//! `u64::MAX` has no representable `end`, so ranges are carried as `(start, last)` and
//! [`inclusive_last`] is the one helper that turns a `(start, length)` pair into one.

use std::fmt;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + offset`, or `None` on wraparound.
            pub fn checked_add(self, offset: u64) -> Option<Self> {
                self.0.checked_add(offset).map(Self)
            }

            /// `self - offset`, or `None` below zero.
            pub fn checked_sub(self, offset: u64) -> Option<Self> {
                self.0.checked_sub(offset).map(Self)
            }

            /// Whether the address is a multiple of `align` (a power of two).
            pub fn is_aligned(self, align: u64) -> bool {
                debug_assert!(align.is_power_of_two());
                self.0 & (align - 1) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// An I/O virtual address: what a device puts on the bus, translated by a domain.
    Iova
);
address_type!(
    /// A physical address: what a domain translates an [`Iova`] to.
    PhysAddr
);

/// The last byte of a `length`-byte range starting at `start`.
///
/// Returns `None` when `length` is zero (an empty range has no last byte) or when the range
/// would wrap past `u64::MAX`.
pub fn inclusive_last(start: u64, length: u64) -> Option<u64> {
    length.checked_sub(1).and_then(|l| start.checked_add(l))
}

/// Access permissions of a mapping, in the order the kernel's `IOMMU_READ`/`IOMMU_WRITE` use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(u8);

impl Prot {
    /// Device may read memory.
    pub const READ: Prot = Prot(1);
    /// Device may write memory.
    pub const WRITE: Prot = Prot(2);
    /// Reads and writes.
    pub const READ_WRITE: Prot = Prot(3);
    /// Nothing (not a valid mapping).
    pub const NONE: Prot = Prot(0);

    /// Whether every permission in `other` is also in `self`.
    pub fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both permission sets.
    pub fn union(self, other: Prot) -> Prot {
        Prot(self.0 | other.0)
    }

    /// Whether no permission is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.contains(Prot::READ) { "r" } else { "-" };
        let w = if self.contains(Prot::WRITE) { "w" } else { "-" };
        write!(f, "Prot({r}{w})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusive_last_rejects_empty_and_wrapping_ranges() {
        assert_eq!(inclusive_last(0x1000, 0), None);
        assert_eq!(inclusive_last(u64::MAX, 2), None);
        assert_eq!(inclusive_last(u64::MAX, 1), Some(u64::MAX));
        assert_eq!(inclusive_last(0x1000, 0x1000), Some(0x1fff));
    }

    #[test]
    fn checked_arithmetic_reports_wraparound() {
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr(0).checked_sub(1), None);
        assert_eq!(Iova(0x1000).checked_add(0x10), Some(Iova(0x1010)));
        assert!(Iova(0x2000).is_aligned(0x1000));
        assert!(!Iova(0x2800).is_aligned(0x1000));
    }

    #[test]
    fn prot_contains_is_subset() {
        assert!(Prot::READ_WRITE.contains(Prot::READ));
        assert!(!Prot::READ.contains(Prot::WRITE));
        assert_eq!(Prot::READ.union(Prot::WRITE), Prot::READ_WRITE);
        assert!(Prot::NONE.is_empty());
    }
}
