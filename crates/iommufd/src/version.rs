//! Which Linux iommufd uiommu answers as: the newest it knows (7.3) by default, or 6.12.
//!
//! A few ioctls answer differently in the two kernels (a new errno, a new ioctl, a larger
//! struct); every such place asks [`Iommufd::kernel_version`] and the table of all differences
//! is in `conformance/README.md`. Commands Linux 6.12 did not have are absent from the ioctl
//! table under 6.12 (`since_7_3`), so they answer `ENOTTY` as 6.12 does.
//!
//! A new [`Iommufd`] starts from [`KernelVersion::from_env`]: the environment variable
//! `UIOMMU_KERNEL` (`6.12` or `7.3`), so that a process serving `/dev/iommu` through the
//! preload answers as the kernel `uiommu run --kernel` asked for (the conformance runner sets it
//! for the 6.12 suite); [`Iommufd::set_kernel_version`] overrides it.
//!
//! Locking: the setting is one atomic, read without a lock; change it before handing out
//! contexts (a change is seen by the next ioctl of every context).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use crate::ctx::{Call, Iommufd};

/// A Linux version whose iommufd uAPI uiommu can present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelVersion {
    /// Linux 6.12 (the uAPI of Debian 12's `linux-source-6.12`, plus the mainline additions its
    /// selftest already uses).
    V6_12,
    /// Linux 7.3: vIOMMU objects, MAP_FILE, PASID attach, CHANGE_PROCESS.
    #[default]
    V7_3,
}

impl KernelVersion {
    /// Every version, oldest first.
    pub const ALL: [KernelVersion; 2] = [KernelVersion::V6_12, KernelVersion::V7_3];

    /// The name of the environment variable [`KernelVersion::from_env`] reads.
    pub const ENV: &'static str = "UIOMMU_KERNEL";

    /// The version `UIOMMU_KERNEL` names, or the default (the newest) when it is unset. An
    /// unknown value is reported once through `tracing` and ignored.
    pub fn from_env() -> KernelVersion {
        match std::env::var(Self::ENV) {
            Ok(value) => value.parse().unwrap_or_else(|err: UnknownKernelVersion| {
                tracing::warn!(%err, "ignoring {}", Self::ENV);
                KernelVersion::default()
            }),
            Err(_) => KernelVersion::default(),
        }
    }

    pub(crate) fn to_raw(self) -> u8 {
        match self {
            KernelVersion::V6_12 => 0,
            KernelVersion::V7_3 => 1,
        }
    }

    pub(crate) fn from_raw(raw: u8) -> KernelVersion {
        if raw == 0 {
            KernelVersion::V6_12
        } else {
            KernelVersion::V7_3
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelVersion::V6_12 => "6.12",
            KernelVersion::V7_3 => "7.3",
        })
    }
}

/// A version string that names no version uiommu presents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kernel version '{0}' (known: 6.12, 7.3)")]
pub struct UnknownKernelVersion(pub String);

impl FromStr for KernelVersion {
    type Err = UnknownKernelVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "6.12" => Ok(KernelVersion::V6_12),
            "7.3" => Ok(KernelVersion::V7_3),
            _ => Err(UnknownKernelVersion(s.to_owned())),
        }
    }
}

impl Iommufd {
    /// The kernel whose answers this device gives.
    pub fn kernel_version(&self) -> KernelVersion {
        KernelVersion::from_raw(self.kernel_version.load(Ordering::Relaxed))
    }

    /// Answer as `version` from the next ioctl on (`uiommu run --kernel`).
    pub fn set_kernel_version(&self, version: KernelVersion) {
        self.kernel_version
            .store(version.to_raw(), Ordering::Relaxed);
    }
}

impl Call {
    /// The kernel whose answers this ioctl gives.
    pub fn kernel_version(&self) -> KernelVersion {
        self.ctx.iommufd().kernel_version()
    }
}

/// The ioctl-table gate of commands Linux 6.12 did not have.
pub(crate) fn since_7_3(call: &Call) -> bool {
    call.kernel_version() >= KernelVersion::V7_3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_print_and_order() {
        for version in KernelVersion::ALL {
            assert_eq!(version.to_string().parse::<KernelVersion>(), Ok(version));
            assert_eq!(KernelVersion::from_raw(version.to_raw()), version);
        }
        assert!(KernelVersion::V6_12 < KernelVersion::V7_3);
        assert_eq!(KernelVersion::default(), KernelVersion::V7_3);
        assert_eq!(
            "6.1".parse::<KernelVersion>(),
            Err(UnknownKernelVersion("6.1".into()))
        );
    }
}
