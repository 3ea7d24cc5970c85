//! The iommufd context: what one open of `/dev/iommu` is (Linux `struct iommufd_ctx`), and the
//! one table that routes its ioctls (Linux `main.c`).
//!
//! # Model
//! * [`Iommufd`] is the character device: shared by every context, it knows the IOMMU core
//!   the devices live in.
//! * [`IommufdCtx`] is one open file: an object table (IOAS, HWPT, device, access, fault
//!   objects) and the per-file settings. Dropping the last handle destroys every object,
//!   leaf first, synchronously: when the drop returns, every pin is gone.
//! * [`Caller`] is who issues an ioctl: the address space its pointers refer to and the limits
//!   pinning is charged against. Areas keep the caller's address space, so memory mapped by
//!   one process stays reachable through it after another process (a fork child) uses the fd.
//! * Each ioctl runs as a [`Call`]: the context plus the caller, the `Ctx` of the dispatch
//!   table in [`crate::ioctl`].
//!
//! # Locking
//! No context-wide lock: the object table has its own (a leaf lock), and each object kind
//! documents its own. Ioctls of one context run concurrently.

use std::io;
use std::sync::Arc;

use uiommu_core::IommuCore;

use crate::abi::*;
use crate::errno::Errno;
use crate::ioctl::{op, IoctlOp, IoctlTable, Ucmd};
use crate::object::{ObjId, ObjectTable};
use crate::pages::MemlockPolicy;
use crate::process_memory::{ProcessLimits, ProcessMemory};
use crate::user_memory::UserMemory;

/// The `/dev/iommu` device: the IOMMU core its contexts bind devices from.
#[derive(Debug)]
pub struct Iommufd {
    core: Arc<IommuCore>,
}

impl Iommufd {
    /// A `/dev/iommu` over `core`.
    pub fn new(core: Arc<IommuCore>) -> Arc<Iommufd> {
        Arc::new(Iommufd { core })
    }

    /// The IOMMU core.
    pub fn core(&self) -> &Arc<IommuCore> {
        &self.core
    }

    /// Open a new context (`iommufd_fops_open()`).
    pub fn open(self: &Arc<Self>) -> Arc<IommufdCtx> {
        Arc::new(IommufdCtx {
            iommufd: self.clone(),
            objects: ObjectTable::new(),
        })
    }
}

/// Who issues an ioctl.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The address space the ioctl's pointers refer to.
    pub memory: Arc<dyn UserMemory>,
    /// The caller's `CAP_IPC_LOCK` and `RLIMIT_MEMLOCK`.
    pub limits: Arc<dyn MemlockPolicy>,
}

impl Caller {
    /// The calling process itself.
    ///
    /// # Errors
    /// `/proc/self` cannot be read.
    pub fn current() -> io::Result<Caller> {
        let memory = ProcessMemory::current()?;
        let limits = ProcessLimits::for_process(&memory)?;
        Ok(Caller {
            memory: Arc::new(memory),
            limits: Arc::new(limits),
        })
    }
}

/// One open `/dev/iommu` (Linux `struct iommufd_ctx`).
#[derive(Debug)]
pub struct IommufdCtx {
    iommufd: Arc<Iommufd>,
    objects: ObjectTable,
}

/// One ioctl in flight: the dispatch table's context.
#[derive(Debug)]
pub struct Call {
    /// The context the ioctl was issued on.
    pub ctx: Arc<IommufdCtx>,
    /// Who issued it.
    pub caller: Caller,
}

impl IommufdCtx {
    /// The device this context was opened on.
    pub fn iommufd(&self) -> &Arc<Iommufd> {
        &self.iommufd
    }

    /// The context's objects.
    pub fn objects(&self) -> &ObjectTable {
        &self.objects
    }

    /// Run `ioctl(fd, cmd, arg)` for `caller` (`iommufd_fops_ioctl()`): returns the ioctl's
    /// non-negative value or the errno.
    pub fn ioctl(self: &Arc<Self>, caller: &Caller, cmd: u32, arg: u64) -> Result<i32, Errno> {
        let call = Call {
            ctx: self.clone(),
            caller: caller.clone(),
        };
        TABLE.dispatch(&call, caller.memory.as_ref(), cmd, arg)
    }
}

impl Drop for IommufdCtx {
    fn drop(&mut self) {
        self.objects.destroy_all();
    }
}

/// `IOMMU_DESTROY` (`iommufd_destroy()`).
fn destroy(call: &Call, ucmd: &mut Ucmd<'_, IommuDestroy>) -> Result<(), Errno> {
    call.ctx.objects.destroy(ObjId(ucmd.cmd.id))
}

/// The VFIO type1 compatibility numbers; none are served yet.
fn vfio_compat(_: &Call, _: &dyn UserMemory, _cmd: u32, _arg: u64) -> Result<i32, Errno> {
    Err(Errno::ENOTTY)
}

/// Every ioctl of `/dev/iommu`, one row each: number, handler, struct, last mandatory field.
static OPS: &[IoctlOp<Call>] = &[op!(IOMMU_DESTROY, destroy, IommuDestroy, id)];

static TABLE: IoctlTable<Call> = IoctlTable::new(OPS, vfio_compat);
