//! Virtual IOMMUs and virtual devices (Linux `viommu.c`, 6.13 on): `IOMMU_VIOMMU_ALLOC` and
//! `IOMMU_VDEVICE_ALLOC`, and the vIOMMU half of `IOMMU_HWPT_INVALIDATE`.
//!
//! # Model
//! * A [`Viommu`] is the host side of one IOMMU a guest sees: it sits on a nesting-parent
//!   paging HWPT (which it keeps alive) and holds the driver's half ([`ViommuOps`], created by
//!   the device's IOMMU driver through the core). Its table maps the guest's virtual device ids
//!   to devices.
//! * A [`Vdevice`] ties one bound device to one vIOMMU under a virtual id. It keeps its vIOMMU
//!   alive; the device knows its vDEVICE (`idev->vdev`), so a device has at most one.
//!
//! * A [`HwQueue`] is a guest queue the IOMMU reads by physical address: its guest memory,
//!   at an IOVA of the nesting parent, stays pinned (and unmappable: `EBUSY`) while it exists,
//!   through an internal access of its own.
//!
//! Event queues of a vIOMMU are [`crate::eventq`]'s. Not yet: the vIOMMU's mmap region
//! (issue 9).
//!
//! # Locking
//! A vIOMMU's `vdevs` mutex and a device's `vdev` slot are leaves; the driver's
//! `cache_invalidate` runs with no iommufd lock held.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uiommu_core::{DeviceId, InstanceId, ViommuOps};

use crate::abi::*;
use crate::access::{self, Access, AccessOps};
use crate::ctx::Call;
use crate::ctx::IommufdCtx;
use crate::device::Device;
use crate::errno::Errno;
use crate::eventq::VeventQueue;
use crate::hwpt::{core_errno, HwptPaging};
use crate::ioctl::Ucmd;
use crate::object::{ObjId, ObjectKind, ObjectPayload, UsersRef};
use crate::user_memory::{UserVa, PAGE_SIZE};
use uiommu_core::{Iova, PhysAddr};

/// The largest driver payload of `IOMMU_VIOMMU_ALLOC` read from the user: far above any
/// driver's struct, and bytes past it are left for the driver's zero check to never see.
const MAX_VIOMMU_DATA: u32 = 4096;

/// A virtual IOMMU (`struct iommufd_viommu`).
pub struct Viommu {
    viommu_type: u32,
    /// The nesting parent; the vIOMMU holds a user on it.
    hwpt: UsersRef<HwptPaging>,
    instance: InstanceId,
    ops: Box<dyn ViommuOps>,
    /// Virtual device id → device (`viommu->vdevs`).
    vdevs: Mutex<BTreeMap<u64, DeviceId>>,
    /// Its event queues, one per type (`viommu->veventqs`), see [`crate::eventq`].
    veventqs: Mutex<Vec<Arc<VeventQueue>>>,
    /// HW queue index → object id, for the driver's dependencies between queues.
    hw_queues: Mutex<BTreeMap<u32, ObjId>>,
}

impl fmt::Debug for Viommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Viommu")
            .field("type", &format_args!("{:#x}", self.viommu_type))
            .field("hwpt", &self.hwpt.id())
            .field("ops", &self.ops)
            .finish()
    }
}

impl ObjectPayload for Viommu {
    const KIND: ObjectKind = ObjectKind::Viommu;
}

impl Viommu {
    /// The `IOMMU_VIOMMU_TYPE_*` it was created with.
    pub fn viommu_type(&self) -> u32 {
        self.viommu_type
    }

    /// The driver's half, for drivers to downcast.
    pub fn ops(&self) -> &dyn ViommuOps {
        self.ops.as_ref()
    }

    /// The id of the nesting parent HWPT.
    pub fn hwpt_id(&self) -> ObjId {
        self.hwpt.id()
    }

    /// The nesting parent HWPT.
    pub(crate) fn parent(&self) -> &UsersRef<HwptPaging> {
        &self.hwpt
    }

    /// The IOMMU instance the vIOMMU belongs to.
    pub(crate) fn instance(&self) -> InstanceId {
        self.instance
    }

    /// The device behind virtual id `virt_id` (`iommufd_viommu_find_dev()`).
    pub fn find_dev(&self, virt_id: u64) -> Option<DeviceId> {
        self.lock_vdevs().get(&virt_id).copied()
    }

    fn lock_vdevs(&self) -> MutexGuard<'_, BTreeMap<u64, DeviceId>> {
        self.vdevs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The virtual id of `dev` on this vIOMMU (`iommufd_viommu_get_vdev_id()`).
    pub fn virt_id_of(&self, dev: DeviceId) -> Option<u64> {
        self.lock_vdevs()
            .iter()
            .find(|(_, &d)| d == dev)
            .map(|(&virt_id, _)| virt_id)
    }

    fn hw_queue_id(&self, index: u32) -> Option<ObjId> {
        self.hw_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&index)
            .copied()
    }

    fn set_hw_queue_id(&self, index: u32, id: ObjId) {
        self.hw_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(index, id);
    }

    pub(crate) fn lock_veventqs(&self) -> MutexGuard<'_, Vec<Arc<VeventQueue>>> {
        self.veventqs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn remove_veventq(&self, queue: &Arc<VeventQueue>) {
        self.lock_veventqs().retain(|q| !Arc::ptr_eq(q, queue));
    }

    /// Report an event of `veventq_type` to user space (`iommufd_viommu_report_event()`), for
    /// drivers: `data` is the driver's event record.
    ///
    /// # Errors
    /// Empty `data` → `EINVAL`; no queue of that type → `EOPNOTSUPP`. A full queue is no
    /// error: the event is counted as lost.
    pub fn report_event(&self, veventq_type: u32, data: &[u8]) -> Result<(), Errno> {
        if data.is_empty() {
            return Err(Errno::EINVAL);
        }
        let queues = self.lock_veventqs();
        let queue = queues
            .iter()
            .find(|q| q.veventq_type() == veventq_type)
            .ok_or(Errno::EOPNOTSUPP)?;
        queue.report(data);
        Ok(())
    }

    /// The driver's cache invalidation for `IOMMU_HWPT_INVALIDATE` on this vIOMMU: handled
    /// entries and the result.
    pub(crate) fn cache_invalidate(
        &self,
        data_type: u32,
        entry_len: u32,
        entries: &[u8],
    ) -> (u32, Result<(), Errno>) {
        let (done, result) = self
            .ops
            .cache_invalidate(data_type, entry_len, entries, &|id| self.find_dev(id));
        (done, result.map_err(core_errno))
    }
}

/// A virtual device (`struct iommufd_vdevice`).
pub struct Vdevice {
    viommu: UsersRef<Viommu>,
    virt_id: u64,
    dev: DeviceId,
    /// The device's `vdev` slot, cleared when this vDEVICE goes.
    device_slot: Arc<Mutex<Option<ObjId>>>,
}

impl fmt::Debug for Vdevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vdevice")
            .field("viommu", &self.viommu.id())
            .field("virt_id", &self.virt_id)
            .field("dev", &self.dev)
            .finish()
    }
}

impl ObjectPayload for Vdevice {
    const KIND: ObjectKind = ObjectKind::Vdevice;
}

impl Vdevice {
    /// The guest's id of the device.
    pub fn virt_id(&self) -> u64 {
        self.virt_id
    }

    /// The device.
    pub fn dev(&self) -> DeviceId {
        self.dev
    }
}

impl Drop for Vdevice {
    /// `iommufd_vdevice_destroy()`: leave the vIOMMU's table and the device's slot.
    fn drop(&mut self) {
        let mut vdevs = self.viommu.lock_vdevs();
        if vdevs.get(&self.virt_id) == Some(&self.dev) {
            vdevs.remove(&self.virt_id);
            self.viommu.ops.vdevice_destroy(self.virt_id);
        }
        drop(vdevs);
        *self
            .device_slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// `IOMMU_VIOMMU_ALLOC` (`iommufd_viommu_alloc_ioctl()`).
///
/// # Errors
/// In the kernel's order: flags, or the DEFAULT type → `EOPNOTSUPP`; unknown device →
/// `ENOENT`; a device without an IOMMU, or whose IOMMU has no vIOMMU of that type →
/// `EOPNOTSUPP`; unknown paging HWPT → `ENOENT`; not a nesting parent → `EINVAL`; id
/// reservation → `ENOMEM`; the driver's checks of its data (`EINVAL`, `E2BIG`, `EFAULT`); the
/// write-back of the data or of the command → `EFAULT`.
pub(crate) fn viommu_alloc(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuViommuAlloc>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags != 0 || cmd.viommu_type == IOMMU_VIOMMU_TYPE_DEFAULT {
        return Err(Errno::EOPNOTSUPP);
    }
    let objects = call.ctx.objects();
    let idev = objects.get::<Device>(ObjId(cmd.dev_id))?;
    let Some(instance) = idev.iommu_instance() else {
        return Err(Errno::EOPNOTSUPP);
    };
    if !idev.core().viommu_supported(idev.dev(), cmd.viommu_type) {
        return Err(Errno::EOPNOTSUPP);
    }
    let hwpt = objects.get::<HwptPaging>(ObjId(cmd.hwpt_id))?;
    if !hwpt.nest_parent() {
        return Err(Errno::EINVAL);
    }
    let reservation = objects.reserve::<Viommu>()?;
    // The kernel's driver copies its data itself; uiommu reads it first, and reports an
    // unreadable buffer only if the driver gets that far (its type checks come first).
    let mut data = vec![0u8; cmd.data_len.min(MAX_VIOMMU_DATA) as usize];
    let readable = data.is_empty() || ucmd.user().read(UserVa(cmd.data_uptr), &mut data).is_ok();
    let ops = idev
        .core()
        .viommu_init(
            idev.dev(),
            cmd.viommu_type,
            hwpt.domain(),
            (!data.is_empty()).then_some(data.as_mut_slice()),
        )
        .map_err(core_errno)?;
    if !readable {
        return Err(Errno::EFAULT);
    }
    if !data.is_empty() {
        ucmd.user()
            .write(UserVa(cmd.data_uptr), &data)
            .map_err(|_| Errno::EFAULT)?;
    }
    ucmd.cmd.out_viommu_id = reservation.id().raw();
    ucmd.respond()?;
    reservation.finalize(Viommu {
        viommu_type: cmd.viommu_type,
        hwpt: hwpt.users_ref(),
        instance,
        ops,
        vdevs: Mutex::new(BTreeMap::new()),
        veventqs: Mutex::new(Vec::new()),
        hw_queues: Mutex::new(BTreeMap::new()),
    });
    Ok(())
}

/// `IOMMU_VDEVICE_ALLOC` (`iommufd_vdevice_alloc_ioctl()`).
///
/// # Errors
/// In the kernel's order: unknown vIOMMU → `ENOENT`; unknown device → `ENOENT`; the device is
/// behind another IOMMU → `EINVAL`; the device has a vDEVICE already → `EEXIST`; id
/// reservation → `ENOMEM`; the virtual id is taken → `EEXIST`; the response → `EFAULT`.
pub(crate) fn vdevice_alloc(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuVdeviceAlloc>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let objects = call.ctx.objects();
    let viommu = objects.get::<Viommu>(ObjId(cmd.viommu_id))?;
    let idev = objects.get::<Device>(ObjId(cmd.dev_id))?;
    if idev.iommu_instance() != Some(viommu.instance) {
        return Err(Errno::EINVAL);
    }
    let mut slot = idev.vdev.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_some() {
        return Err(Errno::EEXIST);
    }
    let reservation = objects.reserve::<Vdevice>()?;
    {
        let mut vdevs = viommu.lock_vdevs();
        if vdevs.contains_key(&cmd.virt_id) {
            return Err(Errno::EEXIST);
        }
        viommu
            .ops
            .vdevice_init(cmd.virt_id, idev.dev())
            .map_err(core_errno)?;
        vdevs.insert(cmd.virt_id, idev.dev());
    }
    let vdevice = Vdevice {
        viommu: viommu.users_ref(),
        virt_id: cmd.virt_id,
        dev: idev.dev(),
        device_slot: Arc::clone(&idev.vdev),
    };
    ucmd.cmd.out_vdevice_id = reservation.id().raw();
    if let Err(err) = ucmd.respond() {
        drop(slot);
        drop(vdevice);
        return Err(err);
    }
    *slot = Some(reservation.id());
    drop(slot);
    reservation.finalize(vdevice);
    Ok(())
}

/// A HW queue (`struct iommufd_hw_queue`).
pub struct HwQueue {
    viommu: UsersRef<Viommu>,
    index: u32,
    /// The internal access pinning the queue's pages, and the pinned range.
    access: Option<UsersRef<Access>>,
    pinned: (Iova, u64),
    /// The queue this one depends on (`iommufd_hw_queue_depend()`).
    _depends_on: Option<UsersRef<HwQueue>>,
    ctx: std::sync::Weak<IommufdCtx>,
    _ops: Arc<InternalAccess>,
}

impl fmt::Debug for HwQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HwQueue")
            .field("viommu", &self.viommu.id())
            .field("index", &self.index)
            .field("pinned", &self.pinned)
            .finish()
    }
}

impl ObjectPayload for HwQueue {
    const KIND: ObjectKind = ObjectKind::HwQueue;
}

impl HwQueue {
    /// The queue's index on its vIOMMU.
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl Drop for HwQueue {
    /// `iommufd_hw_queue_destroy()`: the driver's destroy, then unpin and drop the access.
    fn drop(&mut self) {
        self.viommu.ops.hw_queue_destroy(self.index);
        if let Some(access) = self.access.take() {
            release_internal_access(self.ctx.upgrade().as_deref(), access, self.pinned);
        }
    }
}

/// The ops of a HW queue's internal access: its pins are locked, so unmaps never reach it.
#[derive(Debug)]
pub(crate) struct InternalAccess;

impl AccessOps for InternalAccess {
    fn unmap(&self, _iova: Iova, _length: u64) {}
}

fn release_internal_access(
    ctx: Option<&IommufdCtx>,
    access: UsersRef<Access>,
    pinned: (Iova, u64),
) {
    access.unpin_locked_pages(pinned.0, pinned.1);
    access.detach();
    if let Some(ctx) = ctx {
        if let Err(err) = access::destroy(ctx, access) {
            debug_assert_eq!(err, Errno::EBUSY);
        }
    }
}

/// A HW queue's pinned guest memory.
struct PinnedQueue {
    access: UsersRef<Access>,
    /// The pinned, page-aligned range.
    range: (Iova, u64),
    /// The physical address of the queue's first byte.
    base_pa: PhysAddr,
}

/// `iommufd_hw_queue_alloc_phys()`: pin the queue's pages through an internal access on the
/// parent's IOAS; they must be physically contiguous.
fn hw_queue_pin(
    call: &Call,
    viommu: &Viommu,
    ops: &Arc<InternalAccess>,
    iova: u64,
    length: u64,
) -> Result<PinnedQueue, Errno> {
    let aligned = iova & !(PAGE_SIZE - 1);
    let offset = iova - aligned;
    let span = offset
        .checked_add(length)
        .and_then(|n| n.checked_add(PAGE_SIZE - 1))
        .ok_or(Errno::ERANGE)?
        & !(PAGE_SIZE - 1);
    let weak_ops: std::sync::Weak<dyn AccessOps> = {
        let ops: Arc<dyn AccessOps> = ops.clone();
        Arc::downgrade(&ops)
    };
    let access = access::create(&call.ctx, weak_ops, true)?;
    let undo = |access: UsersRef<Access>| {
        if let Err(err) = access::destroy(&call.ctx, access) {
            debug_assert_eq!(err, Errno::EBUSY);
        }
    };
    if let Err(err) = access.attach(&call.ctx, viommu.parent().ioas_id()) {
        undo(access);
        return Err(err);
    }
    let pages = match access.pin_locked_pages(Iova(aligned), span, false) {
        Ok(pages) => pages,
        Err(err) => {
            access.detach();
            undo(access);
            return Err(err);
        }
    };
    let contiguous = pages.windows(2).all(|w| w[1].0 == w[0].0 + PAGE_SIZE);
    if !contiguous {
        access.unpin_locked_pages(Iova(aligned), span);
        access.detach();
        undo(access);
        return Err(Errno::EFAULT);
    }
    Ok(PinnedQueue {
        access,
        range: (Iova(aligned), span),
        base_pa: PhysAddr(pages[0].0 + offset),
    })
}

/// `IOMMU_HW_QUEUE_ALLOC` (`iommufd_hw_queue_alloc_ioctl()`).
///
/// # Errors
/// In the kernel's order: flags, or the DEFAULT type → `EOPNOTSUPP`; `length` 0 → `EINVAL`;
/// the range wraps → `EOVERFLOW`; unknown vIOMMU → `ENOENT`; no HW queue of that type →
/// `EOPNOTSUPP`; id reservation → `ENOMEM`; pinning: an unmapped range → `ENOENT` (and the
/// other pin errors), physically scattered pages → `EFAULT`; the driver's checks (mock: index
/// out of range `EINVAL`, taken `EEXIST`, out of order `EIO`); the response → `EFAULT`.
pub(crate) fn hw_queue_alloc(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuHwQueueAlloc>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags != 0 || cmd.queue_type == IOMMU_HW_QUEUE_TYPE_DEFAULT {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.length == 0 {
        return Err(Errno::EINVAL);
    }
    cmd.nesting_parent_iova
        .checked_add(cmd.length - 1)
        .ok_or(Errno::EOVERFLOW)?;
    let objects = call.ctx.objects();
    let viommu = objects.get::<Viommu>(ObjId(cmd.viommu_id))?;
    if !viommu.ops.hw_queue_supported(cmd.queue_type) {
        return Err(Errno::EOPNOTSUPP);
    }
    let reservation = objects.reserve::<HwQueue>()?;
    let ops = Arc::new(InternalAccess);
    let PinnedQueue {
        access,
        range: pinned,
        base_pa,
    } = hw_queue_pin(call, &viommu, &ops, cmd.nesting_parent_iova, cmd.length)?;
    let depends = match viommu
        .ops
        .hw_queue_init_phys(cmd.index, cmd.nesting_parent_iova, base_pa)
    {
        Ok(depends) => depends,
        Err(err) => {
            release_internal_access(Some(&call.ctx), access, pinned);
            return Err(core_errno(err));
        }
    };
    let depends_on = depends.and_then(|index| viommu.hw_queue_id(index));
    let queue = HwQueue {
        viommu: viommu.users_ref(),
        index: cmd.index,
        access: Some(access),
        pinned,
        _depends_on: depends_on
            .and_then(|id| objects.get::<HwQueue>(id).ok().map(|q| q.users_ref())),
        ctx: Arc::downgrade(&call.ctx),
        _ops: ops,
    };
    ucmd.cmd.out_hw_queue_id = reservation.id().raw();
    ucmd.respond()?;
    viommu.set_hw_queue_id(cmd.index, reservation.id());
    reservation.finalize(queue);
    Ok(())
}
