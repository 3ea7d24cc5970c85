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
use std::sync::{Arc, Mutex};

use uiommu_core::IommuCore;

use crate::abi::*;
use crate::errno::Errno;
use crate::file::FileInstaller;
use crate::ioas::{self, Ioas};
use crate::ioctl::{op, IoctlOp, IoctlTable, Ucmd};
use crate::object::{ObjId, ObjectTable, WeakRef};
use crate::option;
use crate::pages::{MemlockPolicy, RlimitMode};
use crate::process_memory::{capable, ProcessLimits, ProcessMemory, CAP_SYS_RESOURCE};
use crate::user_memory::UserMemory;
use crate::vfio_compat;

/// The `/dev/iommu` device: the IOMMU core its contexts bind devices from.
#[derive(Debug)]
pub struct Iommufd {
    core: Arc<IommuCore>,
    /// The test driver answering `IOMMU_TEST_CMD`, see [`crate::selftest`]; set once.
    pub(crate) selftest: crate::selftest::HookSlot,
    /// Where files returned by ioctls get their numbers, see [`crate::file`]; set once.
    pub(crate) files: crate::file::InstallerSlot,
    /// The [`KernelVersion`](crate::version::KernelVersion) answered as, see
    /// [`crate::version`].
    pub(crate) kernel_version: std::sync::atomic::AtomicU8,
}

impl Iommufd {
    /// A `/dev/iommu` over `core`.
    pub fn new(core: Arc<IommuCore>) -> Arc<Iommufd> {
        Arc::new(Iommufd {
            core,
            selftest: Default::default(),
            files: Default::default(),
            kernel_version: std::sync::atomic::AtomicU8::new(
                crate::version::KernelVersion::from_env().to_raw(),
            ),
        })
    }

    /// The IOMMU core.
    pub fn core(&self) -> &Arc<IommuCore> {
        &self.core
    }

    /// Open a new context (`iommufd_fops_open()`).
    pub fn open(self: &Arc<Self>) -> Arc<IommufdCtx> {
        self.open_with_mode(RlimitMode::User)
    }

    /// Open a new context as `/dev/vfio/vfio` (`iommufd_fops_open()` on the VFIO container
    /// node): the same file, but pins are charged per address space, as VFIO charges them.
    pub fn open_vfio(self: &Arc<Self>) -> Arc<IommufdCtx> {
        self.open_with_mode(RlimitMode::Mm)
    }

    fn open_with_mode(self: &Arc<Self>, rlimit_mode: RlimitMode) -> Arc<IommufdCtx> {
        Arc::new(IommufdCtx {
            iommufd: self.clone(),
            objects: ObjectTable::new(),
            rlimit_mode: Mutex::new(rlimit_mode),
            vfio_ioas: Mutex::new(None),
            device_groups: crate::device::GroupTable::new(),
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
    /// `capable(CAP_SYS_RESOURCE)`: may change the context's RLIMIT_MODE.
    pub cap_sys_resource: bool,
    /// The caller's descriptor table, when it is not the device's
    /// ([`Iommufd::files`]): a process serving another's ioctls (a fork child's, through the
    /// preload) cannot reserve numbers in that process's table with its own installer. Files
    /// that ioctls hand out get their numbers here, see [`Call::files`].
    pub files: Option<Arc<dyn FileInstaller>>,
}

impl Caller {
    /// A caller with `memory` and `limits` and no `CAP_SYS_RESOURCE`.
    pub fn new(memory: Arc<dyn UserMemory>, limits: Arc<dyn MemlockPolicy>) -> Caller {
        Caller {
            memory,
            limits,
            cap_sys_resource: false,
            files: None,
        }
    }

    /// The calling process itself.
    ///
    /// # Errors
    /// `/proc/self` cannot be read.
    pub fn current() -> io::Result<Caller> {
        Caller::for_memory(ProcessMemory::current()?)
    }

    /// Process `pid` (a fork child whose ioctls another process serves), with its memory,
    /// limits and `CAP_SYS_RESOURCE`.
    ///
    /// # Errors
    /// `/proc/PID` cannot be read (the process is gone).
    pub fn for_pid(pid: u32) -> io::Result<Caller> {
        Caller::for_memory(ProcessMemory::for_pid(pid)?)
    }

    fn for_memory(memory: ProcessMemory) -> io::Result<Caller> {
        let limits = ProcessLimits::for_process(&memory)?;
        let cap_sys_resource = capable(memory.mm().pid, CAP_SYS_RESOURCE);
        Ok(Caller {
            memory: Arc::new(memory),
            limits: Arc::new(limits),
            cap_sys_resource,
            files: None,
        })
    }
}

/// One open `/dev/iommu` (Linux `struct iommufd_ctx`).
#[derive(Debug)]
pub struct IommufdCtx {
    iommufd: Arc<Iommufd>,
    objects: ObjectTable,
    /// `IOMMU_OPTION_RLIMIT_MODE` (`ictx->account_mode`), see [`crate::option`]: taken before
    /// the object table's mutex.
    pub(crate) rlimit_mode: Mutex<RlimitMode>,
    /// The VFIO compat IOAS (`ictx->vfio_ioas`), named without a reference, see
    /// [`crate::vfio_compat`]: taken before the object table's mutex.
    pub(crate) vfio_ioas: Mutex<Option<WeakRef<Ioas>>>,
    /// The IOMMU groups of bound devices (`ictx->groups`) and the context's DMA owner token,
    /// see [`crate::device`]: its mutex is a leaf.
    pub(crate) device_groups: crate::device::GroupTable,
}

/// One ioctl in flight: the dispatch table's context.
#[derive(Debug)]
pub struct Call {
    /// The context the ioctl was issued on.
    pub ctx: Arc<IommufdCtx>,
    /// Who issued it.
    pub caller: Caller,
}

impl Call {
    /// Where files this ioctl hands out get their numbers: the caller's installer, else the
    /// device's.
    pub fn files(&self) -> &Arc<dyn FileInstaller> {
        self.caller
            .files
            .as_ref()
            .unwrap_or_else(|| self.ctx.iommufd.files())
    }
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

/// Every ioctl of `/dev/iommu`, one row each: number, handler, struct, last mandatory field.
static OPS: &[IoctlOp<Call>] = &[
    op!(IOMMU_DESTROY, destroy, IommuDestroy, id),
    op!(IOMMU_IOAS_ALLOC, ioas::alloc, IommuIoasAlloc, out_ioas_id),
    op!(
        IOMMU_IOAS_ALLOW_IOVAS,
        ioas::allow_iovas,
        IommuIoasAllowIovas,
        allowed_iovas
    ),
    op!(IOMMU_IOAS_COPY, ioas::copy, IommuIoasCopy, src_iova),
    op!(
        IOMMU_IOAS_IOVA_RANGES,
        ioas::iova_ranges,
        IommuIoasIovaRanges,
        out_iova_alignment
    ),
    op!(IOMMU_IOAS_MAP, ioas::map, IommuIoasMap, iova),
    op!(IOMMU_IOAS_UNMAP, ioas::unmap, IommuIoasUnmap, length),
    op!(IOMMU_OPTION, option::option, IommuOption, val64),
    op!(
        IOMMU_VFIO_IOAS,
        vfio_compat::vfio_ioas,
        IommuVfioIoas,
        reserved
    ),
    op!(
        IOMMU_HWPT_ALLOC,
        crate::hwpt::alloc,
        IommuHwptAlloc,
        reserved
    ),
    op!(
        IOMMU_GET_HW_INFO,
        crate::device::get_hw_info,
        IommuHwInfo,
        reserved
    ),
    op!(
        IOMMU_HWPT_SET_DIRTY_TRACKING,
        crate::hwpt::set_dirty_tracking,
        IommuHwptSetDirtyTracking,
        reserved
    ),
    op!(
        IOMMU_HWPT_GET_DIRTY_BITMAP,
        crate::hwpt::get_dirty_bitmap,
        IommuHwptGetDirtyBitmap,
        data
    ),
    op!(
        IOMMU_HWPT_INVALIDATE,
        crate::hwpt::invalidate,
        IommuHwptInvalidate,
        reserved
    ),
    op!(
        IOMMU_FAULT_QUEUE_ALLOC,
        crate::fault::alloc,
        IommuFaultAlloc,
        out_fault_fd
    ),
    op!(
        IOMMU_VIOMMU_ALLOC,
        crate::viommu::viommu_alloc,
        IommuViommuAlloc,
        out_viommu_id
    )
    .only_if(crate::version::since_7_3),
    op!(
        IOMMU_VDEVICE_ALLOC,
        crate::viommu::vdevice_alloc,
        IommuVdeviceAlloc,
        virt_id
    )
    .only_if(crate::version::since_7_3),
    op!(
        IOMMU_IOAS_CHANGE_PROCESS,
        ioas::change_process,
        IommuIoasChangeProcess,
        reserved
    )
    .only_if(crate::version::since_7_3),
    op!(
        IOMMU_VEVENTQ_ALLOC,
        crate::eventq::veventq_alloc,
        IommuVeventqAlloc,
        out_veventq_fd
    )
    .only_if(crate::version::since_7_3),
    op!(
        IOMMU_HW_QUEUE_ALLOC,
        crate::viommu::hw_queue_alloc,
        IommuHwQueueAlloc,
        length
    )
    .only_if(crate::version::since_7_3),
    op!(
        IOMMU_TEST_CMD,
        crate::selftest::test_cmd,
        IommuTestCmd,
        last
    ),
];

static TABLE: IoctlTable<Call> = IoctlTable::new(OPS, vfio_compat::ioctl);
