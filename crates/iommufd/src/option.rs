//! `IOMMU_OPTION`: per-context and per-object settings (Linux `iommufd_option()` in `main.c`
//! and `iommufd_option_rlimit_mode()` in `ioas.c`).
//!
//! # Model
//! Two options exist in 6.12:
//! * `IOMMU_OPTION_RLIMIT_MODE` (global, `object_id` 0) selects which counter pins made through
//!   the context are charged to: the user's (`/dev/iommu`'s default) or the address space's
//!   (VFIO's accounting, the default of contexts opened as `/dev/vfio/vfio`). Changing it needs
//!   `CAP_SYS_RESOURCE` and a context with no object at all, reserved ids included, so every
//!   `Pages` of a context is charged the same way.
//! * `IOMMU_OPTION_HUGE_PAGES` (per IOAS) is served by [`crate::ioas`].
//!
//! Only `val64` is written back, and only on success.
//!
//! # Locking
//! The mode is a mutex-guarded value in the context, taken before the object table's mutex
//! (which is a leaf) while a SET checks that the table is empty. A concurrent `IOMMU_IOAS_ALLOC`
//! does not take it, so an IOAS created while a SET is in flight may see either mode; it can
//! have no mapping charged under the old one, since MAP reads the mode after the IOAS exists.

use std::mem::{offset_of, size_of};
use std::sync::PoisonError;

use crate::abi::*;
use crate::ctx::{Call, IommufdCtx};
use crate::errno::Errno;
use crate::ioas;
use crate::ioctl::Ucmd;
use crate::pages::RlimitMode;

impl IommufdCtx {
    /// The context's `IOMMU_OPTION_RLIMIT_MODE` (`ictx->account_mode`), which new mappings are
    /// charged in.
    pub fn rlimit_mode(&self) -> RlimitMode {
        *self
            .rlimit_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `IOMMU_OPTION` (`iommufd_option()`).
///
/// # Errors
/// `__reserved` ≠ 0 → `EOPNOTSUPP`; unknown `option_id` → `EOPNOTSUPP`; then the option's own
/// errors; `EFAULT` if `val64` cannot be written back.
pub(crate) fn option(call: &Call, ucmd: &mut Ucmd<'_, IommuOption>) -> Result<(), Errno> {
    if ucmd.cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    match ucmd.cmd.option_id {
        IOMMU_OPTION_RLIMIT_MODE => rlimit_mode(call, &mut ucmd.cmd)?,
        IOMMU_OPTION_HUGE_PAGES => ioas::huge_pages_option(call, &mut ucmd.cmd)?,
        _ => return Err(Errno::EOPNOTSUPP),
    }
    ucmd.respond_bytes(offset_of!(IommuOption, val64), size_of::<u64>())
}

/// `IOMMU_OPTION_RLIMIT_MODE` (`iommufd_option_rlimit_mode()`): GET reports 1 for address-space
/// accounting, 0 for per-user; SET 0 or 1 selects it.
///
/// # Errors
/// `object_id` ≠ 0 → `EOPNOTSUPP`; SET: the caller lacks `CAP_SYS_RESOURCE` → `EPERM`, the
/// context holds any object (or reserved id) → `EBUSY`, a value other than 0 or 1 → `EINVAL`;
/// another op → `EOPNOTSUPP`.
fn rlimit_mode(call: &Call, cmd: &mut IommuOption) -> Result<(), Errno> {
    if cmd.object_id != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    match cmd.op {
        IOMMU_OPTION_OP_GET => {
            cmd.val64 = u64::from(call.ctx.rlimit_mode() == RlimitMode::Mm);
            Ok(())
        }
        IOMMU_OPTION_OP_SET => {
            if !call.caller.cap_sys_resource {
                return Err(Errno::EPERM);
            }
            let mut mode = call
                .ctx
                .rlimit_mode
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !call.ctx.objects().is_empty() {
                return Err(Errno::EBUSY);
            }
            *mode = match cmd.val64 {
                0 => RlimitMode::User,
                1 => RlimitMode::Mm,
                _ => return Err(Errno::EINVAL),
            };
            Ok(())
        }
        _ => Err(Errno::EOPNOTSUPP),
    }
}
