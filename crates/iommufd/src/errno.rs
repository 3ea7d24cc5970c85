//! The one errno type of the ioctl boundary.
//!
//! Inside the crate every layer reports failures with its own error enum; only where an ioctl,
//! `read` or `write` answers the caller is a cause turned into an [`Errno`]. The named constants
//! are the values the iommufd ABI (and its selftest) can return, with the numbers Linux uses on
//! x86_64 and aarch64 (both take them from `asm-generic/errno*.h`). `EDEADLOCK` is the same number
//! as `EDEADLK` there, which is why only one constant exists for it.
//!
//! The kernel's internal `ENOIOCTLCMD` never reaches user space (the VFS turns it into `ENOTTY`),
//! so it has no constant: code that would return it returns [`Errno::ENOTTY`].

use std::fmt;

use crate::user_memory::UserMemoryError;

/// A positive Linux errno value, as `ioctl(2)` would leave in `errno`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(i32);

/// Name and `strerror` text of every named constant, in numeric order.
const TABLE: &[(Errno, &str, &str)] = &[
    (Errno::EPERM, "EPERM", "Operation not permitted"),
    (Errno::ENOENT, "ENOENT", "No such file or directory"),
    (Errno::ESRCH, "ESRCH", "No such process"),
    (Errno::EIO, "EIO", "Input/output error"),
    (Errno::ENXIO, "ENXIO", "No such device or address"),
    (Errno::E2BIG, "E2BIG", "Argument list too long"),
    (Errno::EBADF, "EBADF", "Bad file descriptor"),
    (Errno::EAGAIN, "EAGAIN", "Resource temporarily unavailable"),
    (Errno::ENOMEM, "ENOMEM", "Cannot allocate memory"),
    (Errno::EFAULT, "EFAULT", "Bad address"),
    (Errno::EBUSY, "EBUSY", "Device or resource busy"),
    (Errno::EEXIST, "EEXIST", "File exists"),
    (Errno::ENODEV, "ENODEV", "No such device"),
    (Errno::EINVAL, "EINVAL", "Invalid argument"),
    (Errno::ENOTTY, "ENOTTY", "Inappropriate ioctl for device"),
    (Errno::ENOSPC, "ENOSPC", "No space left on device"),
    (Errno::ESPIPE, "ESPIPE", "Illegal seek"),
    (Errno::ERANGE, "ERANGE", "Numerical result out of range"),
    (Errno::EDEADLOCK, "EDEADLOCK", "Resource deadlock avoided"),
    (Errno::EBADE, "EBADE", "Invalid exchange"),
    (
        Errno::EOVERFLOW,
        "EOVERFLOW",
        "Value too large for defined data type",
    ),
    (Errno::EBADFD, "EBADFD", "File descriptor in bad state"),
    (Errno::EMSGSIZE, "EMSGSIZE", "Message too long"),
    (Errno::EOPNOTSUPP, "EOPNOTSUPP", "Operation not supported"),
    (Errno::EADDRINUSE, "EADDRINUSE", "Address already in use"),
];

impl Errno {
    /// Operation not permitted: a capability check failed (`IOMMU_OPTION` RLIMIT_MODE set),
    /// or a COPY asks for write access to read-only pages.
    pub const EPERM: Errno = Errno(1);
    /// An object id, IOVA range or cookie does not exist (or has the wrong type).
    pub const ENOENT: Errno = Errno(2);
    /// The task behind a `/proc/PID/task/TID` file is gone.
    pub const ESRCH: Errno = Errno(3);
    /// `IOMMU_TEST_OP_MD_CHECK_REFS` found a pin count other than the expected one.
    pub const EIO: Errno = Errno(5);
    /// No such device or address.
    pub const ENXIO: Errno = Errno(6);
    /// A command struct longer than ours has non-zero bytes past our end.
    pub const E2BIG: Errno = Errno(7);
    /// Not an open file descriptor.
    pub const EBADF: Errno = Errno(9);
    /// Try again.
    pub const EAGAIN: Errno = Errno(11);
    /// An allocation, an id or the pinned-memory limit ran out.
    pub const ENOMEM: Errno = Errno(12);
    /// A user pointer could not be read or written.
    pub const EFAULT: Errno = Errno(14);
    /// The object is still referenced, or no object id is left.
    pub const EBUSY: Errno = Errno(16);
    /// A fixed-IOVA mapping overlaps an existing area.
    pub const EEXIST: Errno = Errno(17);
    /// The VFIO compatibility IOAS is not set.
    pub const ENODEV: Errno = Errno(19);
    /// A field holds a value that makes no sense for the operation.
    pub const EINVAL: Errno = Errno(22);
    /// The ioctl number is not one this file knows.
    pub const ENOTTY: Errno = Errno(25);
    /// Automatic IOVA allocation found no hole large enough.
    pub const ENOSPC: Errno = Errno(28);
    /// A fault-queue `read`/`write` at a non-zero offset or with a partial record.
    pub const ESPIPE: Errno = Errno(29);
    /// Numerical result out of range.
    pub const ERANGE: Errno = Errno(34);
    /// Unmap gave up after accesses kept re-pinning the range (also spelled `EDEADLK`).
    pub const EDEADLOCK: Errno = Errno(35);
    /// `IOMMU_TEST_OP_ACCESS_PAGES` pinned a page other than the one backing `uptr`.
    pub const EBADE: Errno = Errno(52);
    /// Arithmetic on caller-supplied values would overflow.
    pub const EOVERFLOW: Errno = Errno(75);
    /// A selftest access fd is not an access fd.
    pub const EBADFD: Errno = Errno(77);
    /// `IOMMU_IOAS_IOVA_RANGES` had more ranges than the caller's array holds.
    pub const EMSGSIZE: Errno = Errno(90);
    /// A known field holds a value this implementation does not support (flags, reserved).
    pub const EOPNOTSUPP: Errno = Errno(95);
    /// An IOVA reservation or allowed range conflicts with an existing one.
    pub const EADDRINUSE: Errno = Errno(98);

    /// The positive number, as stored in `errno`.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The errno for a raw value, including numbers without a named constant here (they come
    /// back unchanged from [`Errno::raw`] and print as `errno N`).
    pub const fn from_raw(raw: i32) -> Errno {
        Errno(raw)
    }

    /// The symbolic name (`"ENOENT"`), for the named constants only.
    pub fn name(self) -> Option<&'static str> {
        TABLE
            .iter()
            .find(|(e, _, _)| *e == self)
            .map(|(_, name, _)| *name)
    }

    /// The `strerror` text, for the named constants only.
    fn description(self) -> Option<&'static str> {
        TABLE
            .iter()
            .find(|(e, _, _)| *e == self)
            .map(|(_, _, text)| *text)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Errno::{name}"),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.description()) {
            (Some(name), Some(text)) => write!(f, "{name} ({text})"),
            _ => write!(f, "errno {}", self.0),
        }
    }
}

impl std::error::Error for Errno {}

/// Every user-memory failure is `EFAULT` at the ioctl boundary, as `copy_{from,to}_user` and
/// `pin_user_pages` failures are in the kernel.
impl From<UserMemoryError> for Errno {
    fn from(_: UserMemoryError) -> Errno {
        Errno::EFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_memory::{MmId, UserVa};

    #[test]
    fn values_match_linux_asm_generic() {
        // Numbers from include/uapi/asm-generic/errno-base.h and errno.h.
        let expected = [
            (Errno::EPERM, 1),
            (Errno::ENOENT, 2),
            (Errno::ESRCH, 3),
            (Errno::EIO, 5),
            (Errno::ENXIO, 6),
            (Errno::E2BIG, 7),
            (Errno::EBADF, 9),
            (Errno::EAGAIN, 11),
            (Errno::ENOMEM, 12),
            (Errno::EFAULT, 14),
            (Errno::EBUSY, 16),
            (Errno::EEXIST, 17),
            (Errno::ENODEV, 19),
            (Errno::EINVAL, 22),
            (Errno::ENOTTY, 25),
            (Errno::ENOSPC, 28),
            (Errno::ESPIPE, 29),
            (Errno::ERANGE, 34),
            (Errno::EDEADLOCK, 35),
            (Errno::EBADE, 52),
            (Errno::EOVERFLOW, 75),
            (Errno::EBADFD, 77),
            (Errno::EMSGSIZE, 90),
            (Errno::EOPNOTSUPP, 95),
            (Errno::EADDRINUSE, 98),
        ];
        for (errno, raw) in expected {
            assert_eq!(errno.raw(), raw, "{errno:?}");
            assert_eq!(Errno::from_raw(raw), errno);
        }
        assert_eq!(
            expected.len(),
            TABLE.len(),
            "every named constant is checked"
        );
    }

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(TABLE.windows(2).all(|w| w[0].0 .0 < w[1].0 .0));
    }

    #[test]
    fn display_names_known_and_numbers_unknown() {
        assert_eq!(
            Errno::ENOTTY.to_string(),
            "ENOTTY (Inappropriate ioctl for device)"
        );
        assert_eq!(format!("{:?}", Errno::E2BIG), "Errno::E2BIG");
        let unknown = Errno::from_raw(4095);
        assert_eq!(unknown.raw(), 4095);
        assert_eq!(unknown.name(), None);
        assert_eq!(unknown.to_string(), "errno 4095");
        assert_eq!(format!("{unknown:?}"), "Errno(4095)");
    }

    #[test]
    fn user_memory_errors_become_efault() {
        let fault = UserMemoryError::Fault {
            addr: UserVa(0x1000),
            len: 8,
        };
        assert_eq!(Errno::from(fault), Errno::EFAULT);
        let gone = UserMemoryError::Gone(MmId {
            pid: 1,
            start_time: 2,
        });
        assert_eq!(Errno::from(gone), Errno::EFAULT);
    }
}
