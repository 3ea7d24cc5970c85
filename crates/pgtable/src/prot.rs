//! Access rights of a mapping, with the values of Linux's `IOMMU_*` prot flags.

use std::fmt;
use std::ops::BitOr;

/// The `prot` argument of map: a set of Linux `IOMMU_READ`/`IOMMU_WRITE`/... bits.
///
/// Each format turns it into its own PTE bits; bits a format cannot express are
/// ignored, as the kernel's formats do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(u32);

impl Prot {
    /// Device may read (`IOMMU_READ`).
    pub const READ: Prot = Prot(1 << 0);
    /// Device may write (`IOMMU_WRITE`).
    pub const WRITE: Prot = Prot(1 << 1);
    /// Cache-coherent access (`IOMMU_CACHE`).
    pub const CACHE: Prot = Prot(1 << 2);
    /// No instruction fetch (`IOMMU_NOEXEC`).
    pub const NOEXEC: Prot = Prot(1 << 3);
    /// Device memory, e.g. an MSI doorbell (`IOMMU_MMIO`).
    pub const MMIO: Prot = Prot(1 << 4);
    /// Privileged access only (`IOMMU_PRIV`).
    pub const PRIV: Prot = Prot(1 << 5);
    /// Read and write.
    pub const RW: Prot = Prot(Self::READ.0 | Self::WRITE.0);

    /// The raw Linux bit value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// A set from raw Linux bits; unknown bits are dropped.
    pub const fn from_bits_truncate(bits: u32) -> Prot {
        Prot(bits & 0x3f)
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

impl fmt::Debug for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 6] = ["READ", "WRITE", "CACHE", "NOEXEC", "MMIO", "PRIV"];
        let names: Vec<&str> = NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect();
        write!(f, "Prot({})", names.join("|"))
    }
}
