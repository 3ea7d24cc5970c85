//! The narrow hook through which a test driver answers `IOMMU_TEST_CMD` (Linux `selftest.c`,
//! built only with `CONFIG_IOMMUFD_TEST`).
//!
//! iommufd does not know the mock driver. The mock (crate `uiommu-mock`) implements
//! [`SelftestHook`] and registers it with [`Iommufd::set_selftest_hook`]; the ioctl table row
//! for `IOMMU_TEST_CMD` forwards every command to it after the dispatcher's generic checks.
//! Without a hook the command answers `ENOTTY`, as a kernel built without the test config does.
//!
//! What a hook needs from iommufd is public API of the object modules, the "test API":
//! * devices: [`crate::device::bind`], [`DeviceBinding`](crate::device::DeviceBinding)'s
//!   `attach`/`replace`/`detach`/`unbind`, [`Device::report_iopf`](crate::device::Device::report_iopf);
//! * objects: [`ObjectTable::get`](crate::object::ObjectTable::get) for IOASes (their
//!   [`IoPagetable`](crate::io_pagetable::IoPagetable)), HWPTs (their domains) and devices,
//!   and [`ObjectKind::Selftest`](crate::object::ObjectKind::Selftest) for the hook's own objects;
//! * accesses: [`crate::access`];
//! * files: [`Iommufd::files`] and [`crate::file`];
//! * pin counts: [`crate::pages::page_pin_count`].
//!
//! Locking: the hook is set once and read without a lock.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::abi::IommuTestCmd;
use crate::ctx::{Call, Iommufd};
use crate::errno::Errno;
use crate::ioctl::Ucmd;

/// A test driver's answer to `IOMMU_TEST_CMD` (`iommufd_test()`).
pub trait SelftestHook: Send + Sync + fmt::Debug {
    /// Serve one command: `ucmd.cmd.op` selects the operation, `ucmd.cmd.id` its main object
    /// and the union its arguments; outputs go back through `ucmd.respond()`. Unknown ops
    /// should answer `EOPNOTSUPP`.
    ///
    /// # Errors
    /// The operation's errno.
    fn test_cmd(&self, call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno>;
}

/// Where [`Iommufd`] keeps its hook.
pub(crate) type HookSlot = OnceLock<Arc<dyn SelftestHook>>;

impl Iommufd {
    /// Register the test driver's hook. Only the first registration counts; a later one is
    /// refused and returned.
    ///
    /// # Errors
    /// A hook is already registered: `hook` comes back.
    pub fn set_selftest_hook(
        &self,
        hook: Arc<dyn SelftestHook>,
    ) -> Result<(), Arc<dyn SelftestHook>> {
        self.selftest.set(hook)
    }

    /// The registered test hook, if any.
    pub fn selftest_hook(&self) -> Option<&Arc<dyn SelftestHook>> {
        self.selftest.get()
    }
}

/// `IOMMU_TEST_CMD`: forward to the hook, or `ENOTTY` without one.
pub(crate) fn test_cmd(call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
    match call.ctx.iommufd().selftest_hook() {
        Some(hook) => hook.test_cmd(call, ucmd),
        None => Err(Errno::ENOTTY),
    }
}
