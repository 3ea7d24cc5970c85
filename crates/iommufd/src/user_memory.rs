//! The caller's memory, as iommufd sees it: the seam between the engine and whoever hosts it.
//!
//! The kernel reaches user memory with `copy_from_user`, `copy_to_user` and
//! `pin_user_pages`. uiommu reaches it only through [`UserMemory`], so the engine never touches
//! a raw pointer: the in-process implementation validates every range before it copies, and a
//! test can substitute a model.
//!
//! A "physical frame" of user memory is its page-aligned virtual address within one address
//! space ([`MmId`]): stable while the page is mapped, and contiguous whenever the virtual range
//! is, which is what the mock driver's huge IOPTEs need.

use std::fmt;

/// A virtual address in the caller's address space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UserVa(pub u64);

impl UserVa {
    /// `self + offset`, or `None` on wraparound.
    pub fn checked_add(self, offset: u64) -> Option<UserVa> {
        self.0.checked_add(offset).map(UserVa)
    }
}

impl fmt::Debug for UserVa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserVa({:#x})", self.0)
    }
}

/// Identity of one address space (the kernel's `mm_struct`): a process id plus its start time,
/// so a recycled pid is never mistaken for the process that mapped the memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MmId {
    /// The process id.
    pub pid: u32,
    /// Start time of the process (clock ticks since boot, `/proc/PID/stat` field 22).
    pub start_time: u64,
}

/// Why a user-memory operation failed; the ioctl boundary turns every variant into `EFAULT`,
/// except [`UserMemoryError::Gone`], which pinning reports as `EFAULT` too but tests can tell apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserMemoryError {
    /// Some byte of the range is not mapped (or not writable when writing).
    #[error("user range {addr:?}+{len:#x} is not fully accessible")]
    Fault {
        /// Start of the range.
        addr: UserVa,
        /// Length of the range.
        len: u64,
    },
    /// The address space that owns the range no longer exists.
    #[error("address space {0:?} is gone")]
    Gone(MmId),
}

/// Access to one address space's memory: the consumer-side seam of the engine.
///
/// Implementations must be safe for any input: an unmapped or partly unmapped range is an
/// error, never undefined behaviour. Methods take `&self` because one context is used from many
/// threads at once.
pub trait UserMemory: Send + Sync + fmt::Debug {
    /// The address space this handle reads and writes.
    fn mm(&self) -> MmId;

    /// Copy `buf.len()` bytes from `addr` (`copy_from_user`). All or nothing.
    fn read(&self, addr: UserVa, buf: &mut [u8]) -> Result<(), UserMemoryError>;

    /// Copy `data` to `addr` (`copy_to_user`). All or nothing.
    fn write(&self, addr: UserVa, data: &[u8]) -> Result<(), UserMemoryError>;

    /// Check that `[addr, addr + len)` is mapped, and writable when `writable` is set, as
    /// `pin_user_pages` would before pinning. `len == 0` always succeeds.
    fn probe(&self, addr: UserVa, len: u64, writable: bool) -> Result<(), UserMemoryError>;
}
