//! The core's error type. Each variant is one Linux errno meaning; the errno itself is chosen
//! only at a boundary (iommufd's ioctl return, the CLI's message) through [`CoreError::errno`].

/// Why a core operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// No IOMMU serves the device, or a driver declined it (`ENODEV`).
    #[error("no IOMMU for this device")]
    NoDevice,
    /// The fwnode named by the device's fwspec has no registered instance yet (`EPROBE_DEFER`).
    #[error("IOMMU {0} not registered yet: probe deferred")]
    ProbeDeferred(String),
    /// A value is not acceptable here (`EINVAL`).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The object is in use or in the wrong state (`EBUSY`).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// Another owner holds the resource (`EPERM`).
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    /// The driver does not implement the operation (`EOPNOTSUPP`).
    #[error("operation not supported")]
    NotSupported,
    /// An allocation failed, or a driver-imposed limit was reached (`ENOMEM`).
    #[error("out of memory")]
    NoMemory,
    /// Nothing exists at that id or address (`ENOENT`).
    #[error("no such entry")]
    NotFound,
    /// A range already holds a mapping (`EEXIST`).
    #[error("already exists")]
    Exists,
    /// A driver's request to its hardware failed (`EIO`).
    #[error("I/O error: {0}")]
    Io(&'static str),
    /// User data carries non-zero bytes past the struct the driver knows (`E2BIG`, as
    /// `copy_struct_from_user()` answers).
    #[error("user data larger than the driver's struct")]
    TooBig,
}

impl CoreError {
    /// The Linux errno (positive) this error means.
    pub fn errno(&self) -> i32 {
        match self {
            CoreError::NoDevice => 19,          // ENODEV
            CoreError::ProbeDeferred(_) => 517, // EPROBE_DEFER (kernel-internal)
            CoreError::Invalid(_) => 22,        // EINVAL
            CoreError::Busy(_) => 16,           // EBUSY
            CoreError::NotPermitted(_) => 1,    // EPERM
            CoreError::NotSupported => 95,      // EOPNOTSUPP
            CoreError::NoMemory => 12,          // ENOMEM
            CoreError::NotFound => 2,           // ENOENT
            CoreError::Exists => 17,            // EEXIST
            CoreError::Io(_) => 5,              // EIO
            CoreError::TooBig => 7,             // E2BIG
        }
    }
}

/// Result of a core operation.
pub type Result<T> = std::result::Result<T, CoreError>;
