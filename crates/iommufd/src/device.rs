//! DEVICE objects: devices of the IOMMU core bound to a context, and how they attach to HWPTs
//! and IOASes (Linux `device.c`), plus `IOMMU_GET_HW_INFO`.
//!
//! # Model
//! * [`bind`] claims the DMA of a core device's group for the context (the group moves to its
//!   blocking domain) and publishes a [`Device`] object. The binder keeps a [`DeviceBinding`];
//!   its reference makes the object impossible to destroy from user space, and
//!   [`DeviceBinding::unbind`] destroys it, which releases the DMA ownership.
//! * Devices of one IOMMU group share a [`Group`] per context (the kernel's `iommufd_group`):
//!   every device of a group must be attached to the same HWPT, and only the first device's
//!   attach programs the IOMMU. Each attached device holds one user on the HWPT.
//! * Attaching to a HWPT uses it as is; attaching to an IOAS reuses the first *automatic*
//!   paging HWPT of that IOAS the device can attach to (an attach failing with `EINVAL` means
//!   "incompatible, try the next"), or allocates a new one. When the last device leaves an
//!   automatic HWPT, it is destroyed.
//! * Each attached device's reserved IOVA regions are reserved in the IOAS behind the HWPT (a
//!   nested HWPT's parent's IOAS).
//! * Page requests a device reports ([`Device::report_iopf`]) go to the fault queue of the HWPT
//!   the device's group is attached to.
//!
//! # Locking
//! Each [`Group`] has a mutex over its attachment (the kernel's `igroup->lock`). Lock order:
//! the IOAS's HWPT list → group → io page table → IOMMU core. HWPT references taken out of a
//! group are released only after the group lock is dropped, since destroying an automatic HWPT
//! takes its IOAS's list lock.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use uiommu_core::{
    Capability, CoreError, DeviceId, DmaOwner, Domain, GroupId, IommuCore, ProbeState, ReservedKind,
};

use crate::abi::*;
use crate::ctx::{Call, IommufdCtx};
use crate::errno::Errno;
use crate::failpoint::{should_fail, FailSite};
use crate::fault::{AttachHandle, FaultGroup, PageRequest};
use crate::hwpt::{self, core_errno, HwptPaging, HwptRef};
use crate::io_pagetable::{IovaRange, ReservedOwner};
use crate::ioas::{iopt_errno, Ioas};
use crate::ioctl::Ucmd;
use crate::object::{ObjId, ObjRef, ObjectKind, ObjectPayload, ObjectTable, UsersRef};
use crate::user_memory::{UserMemory, UserVa};

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

/// The per-context groups (`ictx->groups`) and the context's DMA owner token.
#[derive(Debug)]
pub struct GroupTable {
    owner: DmaOwner,
    groups: Mutex<HashMap<GroupId, Weak<Group>>>,
}

impl Default for GroupTable {
    fn default() -> Self {
        GroupTable::new()
    }
}

impl GroupTable {
    /// An empty table with a fresh DMA owner token: the context as `iommu_device_claim_dma_owner()`
    /// sees it.
    pub fn new() -> GroupTable {
        GroupTable {
            owner: DmaOwner::new(),
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// The context's group for core group `id`, created on first use (`iommufd_get_group()`).
    fn get(&self, id: GroupId) -> Result<Arc<Group>, Errno> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(group) = groups.get(&id).and_then(Weak::upgrade) {
            return Ok(group);
        }
        if should_fail(FailSite::Alloc) {
            return Err(Errno::ENOMEM);
        }
        groups.retain(|_, g| g.strong_count() > 0);
        let group = Arc::new(Group {
            id,
            state: Mutex::new(GroupState::default()),
        });
        groups.insert(id, Arc::downgrade(&group));
        Ok(group)
    }
}

impl IommufdCtx {
    /// The context's groups and DMA owner token.
    pub(crate) fn device_groups(&self) -> &GroupTable {
        &self.device_groups
    }
}

/// One IOMMU group as this context sees it (`struct iommufd_group`).
#[derive(Debug)]
pub struct Group {
    id: GroupId,
    state: Mutex<GroupState>,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The core group.
    pub fn id(&self) -> GroupId {
        self.id
    }
}

/// An attached device of a group (`device_list`), with its user on the group's HWPT.
#[derive(Debug)]
struct AttachedDevice {
    idev: ObjId,
    dev: DeviceId,
    hwpt: HwptRef,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Attached devices, in attach order; all hold the same HWPT.
    devices: Vec<AttachedDevice>,
    /// The group's attachment (`iommu_attach_handle`) and the device that made it, while any
    /// device is attached.
    handle: Option<(AttachHandle, ObjId)>,
    /// PASID attachments (`igroup->pasid_attach` without `IOMMU_NO_PASID`), each with its
    /// device and its user on the HWPT. PASIDs need single-device groups, so one device each.
    pasids: BTreeMap<u32, PasidAttachment>,
}

/// One attached PASID of a device.
#[derive(Debug)]
struct PasidAttachment {
    idev: ObjId,
    hwpt: HwptRef,
    /// The attachment's handle, naming its page requests.
    handle: AttachHandle,
}

impl GroupState {
    /// The HWPT the group is attached to (`igroup->hwpt`).
    fn hwpt(&self) -> Option<&HwptRef> {
        self.devices.first().map(|d| &d.hwpt)
    }
}

/// What an attach needs from a HWPT, which may not be published yet.
#[derive(Clone, Copy)]
struct HwptView<'a> {
    domain: &'a Arc<Domain>,
    paging: &'a HwptPaging,
    pasid_compat: bool,
}

impl<'a> HwptView<'a> {
    fn of(hwpt: &'a HwptRef) -> HwptView<'a> {
        HwptView {
            domain: hwpt.domain(),
            paging: hwpt.paging(),
            pasid_compat: hwpt.pasid_compat(),
        }
    }

    fn of_paging(hwpt: &'a HwptPaging) -> HwptView<'a> {
        HwptView {
            domain: hwpt.domain(),
            paging: hwpt,
            pasid_compat: hwpt.pasid_compat(),
        }
    }

    fn is(&self, hwpt: &HwptRef) -> bool {
        Arc::ptr_eq(self.domain, hwpt.domain())
    }

    fn ioas(&self) -> &'a Ioas {
        self.paging.ioas()
    }
}

// ---------------------------------------------------------------------------------------------
// The DEVICE object
// ---------------------------------------------------------------------------------------------

/// A bound device (`struct iommufd_device`).
pub struct Device {
    core: Arc<IommuCore>,
    dev: DeviceId,
    group: Arc<Group>,
    enforce_cache_coherency: bool,
    /// Page requests of groups whose last request has not come yet (`fault_param->partial`).
    partial: Mutex<Vec<PageRequest>>,
    /// The device's vDEVICE, if one exists (`idev->vdev`), see [`crate::viommu`]; the vDEVICE
    /// clears it when it goes. Its mutex is a leaf.
    pub(crate) vdev: Arc<Mutex<Option<ObjId>>>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("dev", &self.dev)
            .field("group", &self.group.id)
            .finish()
    }
}

impl ObjectPayload for Device {
    const KIND: ObjectKind = ObjectKind::Device;
}

impl Drop for Device {
    /// `iommufd_device_destroy()`: give the group's DMA back.
    fn drop(&mut self) {
        self.core.release_dma_owner(self.dev);
    }
}

impl Device {
    /// The core device.
    pub fn dev(&self) -> DeviceId {
        self.dev
    }

    /// The IOMMU core the device lives in.
    pub fn core(&self) -> &Arc<IommuCore> {
        &self.core
    }

    /// The device's IOMMU can enforce cache coherency.
    pub fn enforce_cache_coherency(&self) -> bool {
        self.enforce_cache_coherency
    }

    /// The id of the HWPT the device's group is attached to, if any.
    pub fn attached_hwpt(&self) -> Option<ObjId> {
        self.group.lock().hwpt().map(HwptRef::id)
    }

    /// Whether `domain` belongs to the IOMMU instance serving this device (the kernel compares
    /// `domain->owner` with the device's ops; uiommu compares instances).
    pub(crate) fn served_by(&self, domain: &Domain) -> bool {
        matches!(self.core.probe_state(self.dev), Ok(ProbeState::Bound { instance, .. }) if instance == domain.instance())
    }

    /// The IOMMU instance serving the device (`iommufd_device_get_iommu_dev()`).
    pub(crate) fn iommu_instance(&self) -> Option<uiommu_core::InstanceId> {
        match self.core.probe_state(self.dev) {
            Ok(ProbeState::Bound { instance, .. }) => Some(instance),
            _ => None,
        }
    }

    fn enforce_reserved(&self, ioas: &Ioas) -> Result<(), Errno> {
        enforce_reserved(&self.core, self.dev, ioas)
    }

    fn remove_reserved(&self, ioas: &Ioas) {
        ioas.iopt().remove_reserved(reserved_owner(self.dev));
    }

    /// Report a page request (`iommu_report_device_fault()` routed to
    /// `iommufd_fault_iopf_handler()`): requests without `LAST_PAGE` wait for the last request
    /// of their group; the last one sends the whole group to the fault queue of the HWPT the
    /// device's group is attached to.
    ///
    /// A request with `PASID_VALID` goes to the HWPT its PASID is attached to; for a PASID
    /// without an attachment, to a nested HWPT attached to the whole device when the driver
    /// keeps PASID tables in user space (`user_pasid_table`, as the mock does), and is refused
    /// otherwise.
    ///
    /// # Errors
    /// `EINVAL` when no fault-capable HWPT takes the request (the kernel then answers the
    /// device with a failure response).
    pub fn report_iopf(&self, request: PageRequest, user_pasid_table: bool) -> Result<(), Errno> {
        let state = self.group.lock();
        let pasid_attachment = (request.flags & IOMMU_PGFAULT_FLAGS_PASID_VALID != 0)
            .then(|| state.pasids.get(&request.pasid))
            .flatten();
        let (hwpt, attach) = match pasid_attachment {
            Some(attachment) => (&attachment.hwpt, Some((attachment.handle, attachment.idev))),
            None => {
                let Some(hwpt) = state.hwpt() else {
                    return Err(Errno::EINVAL);
                };
                if request.flags & IOMMU_PGFAULT_FLAGS_PASID_VALID != 0
                    && !(user_pasid_table && matches!(hwpt, HwptRef::Nested(_)))
                {
                    return Err(Errno::EINVAL);
                }
                (hwpt, state.handle)
            }
        };
        let (Some(fault), Some((handle, dev_id))) = (hwpt.fault(), attach) else {
            return Err(Errno::EINVAL);
        };
        let mut partial = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        if request.flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE == 0 {
            partial.push(request);
            return Ok(());
        }
        let mut requests: Vec<PageRequest> = Vec::new();
        partial.retain(|p| {
            let same_group = p.grpid == request.grpid;
            if same_group {
                requests.push(*p);
            }
            !same_group
        });
        requests.push(request);
        fault.deliver(FaultGroup {
            requests,
            dev_id,
            handle,
        });
        Ok(())
    }

    /// The fallible part of attaching to `hwpt` (`iommufd_hw_pagetable_attach()` without taking
    /// the user): the group's HWPT must match, the device's reserved regions go into the IOAS,
    /// and the first device attaches the group in the core.
    fn prepare_attach(
        &self,
        state: &mut GroupState,
        hwpt: HwptView<'_>,
        idev: ObjId,
    ) -> Result<(), Errno> {
        if state.hwpt().is_some_and(|cur| !hwpt.is(cur)) {
            return Err(Errno::EINVAL);
        }
        self.enforce_reserved(hwpt.ioas())?;
        if state.devices.is_empty() {
            let attached = if !rid_pasid_compat(state, hwpt) {
                Err(Errno::EINVAL)
            } else if should_fail(FailSite::Alloc) {
                Err(Errno::ENOMEM)
            } else {
                self.core
                    .attach_domain(self.dev, hwpt.domain)
                    .map_err(core_errno)
            };
            if let Err(err) = attached {
                self.remove_reserved(hwpt.ioas());
                return Err(err);
            }
            state.handle = Some((AttachHandle::new(), idev));
        }
        Ok(())
    }

    /// Undo [`Device::prepare_attach`] for a device not added to the list.
    fn unprepare_attach(&self, state: &mut GroupState, hwpt: HwptView<'_>) {
        if state.devices.is_empty() {
            self.core.detach_domain(self.dev, hwpt.domain);
            state.handle = None;
        }
        self.remove_reserved(hwpt.ioas());
    }

    /// The fallible part of replacing the group's HWPT with `hwpt` (`iommufd_device_do_replace()`
    /// up to the reference moves). `Ok(false)`: `hwpt` is already the group's.
    fn prepare_replace(
        &self,
        state: &mut GroupState,
        hwpt: HwptView<'_>,
        idev: ObjId,
    ) -> Result<bool, Errno> {
        let Some(old) = state.hwpt() else {
            return Err(Errno::EINVAL);
        };
        if !state.devices.iter().any(|d| d.idev == idev) {
            return Err(Errno::EINVAL);
        }
        if hwpt.is(old) {
            return Ok(false);
        }
        let old_ioas = old.paging().ioas();
        let new_ioas = hwpt.ioas();
        let ioas_changes = !std::ptr::eq(old_ioas, new_ioas);
        let group_devices: Vec<DeviceId> = state.devices.iter().map(|d| d.dev).collect();
        let remove_all = |ioas: &Ioas| {
            for &dev in &group_devices {
                ioas.iopt().remove_reserved(reserved_owner(dev));
            }
        };
        if ioas_changes {
            for attached in &state.devices {
                if let Err(err) = enforce_reserved(&self.core, attached.dev, new_ioas) {
                    remove_all(new_ioas);
                    return Err(err);
                }
            }
        }
        let replaced = if !rid_pasid_compat(state, hwpt) {
            Err(Errno::EINVAL)
        } else if should_fail(FailSite::Alloc) {
            Err(Errno::ENOMEM)
        } else {
            self.core
                .replace_domain(self.dev, hwpt.domain)
                .map_err(core_errno)
        };
        if let Err(err) = replaced {
            if ioas_changes {
                remove_all(new_ioas);
            }
            return Err(err);
        }
        if let (Some(fault), Some((handle, _))) = (old.fault(), state.handle) {
            fault.auto_respond(handle);
        }
        if ioas_changes {
            remove_all(old_ioas);
        }
        state.handle = Some((AttachHandle::new(), idev));
        Ok(true)
    }

    /// `iommufd_hw_pagetable_detach()`: leave the group's list; the last device detaches the
    /// group in the core and answers its queued faults. Returns the device's HWPT reference,
    /// for the caller to put once the group lock is gone.
    fn detach(&self, idev: ObjId) -> Option<HwptRef> {
        let mut state = self.group.lock();
        let index = state.devices.iter().position(|d| d.idev == idev)?;
        let attached = state.devices.remove(index);
        if state.devices.is_empty() {
            self.core.detach_domain(self.dev, attached.hwpt.domain());
            if let (Some(fault), Some((handle, _))) = (attached.hwpt.fault(), state.handle) {
                fault.auto_respond(handle);
            }
            state.handle = None;
        }
        self.remove_reserved(attached.hwpt.paging().ioas());
        Some(attached.hwpt)
    }
}

/// `iommufd_hwpt_pasid_compat()` for the RID: a HWPT without `IOMMU_HWPT_ALLOC_PASID` may not
/// take the RID while PASIDs are attached.
fn rid_pasid_compat(state: &GroupState, hwpt: HwptView<'_>) -> bool {
    hwpt.pasid_compat || state.pasids.is_empty()
}

/// `iommufd_hwpt_pasid_compat()` for a PASID: the HWPT must allow PASIDs, and the RID's HWPT,
/// if any, too.
fn pasid_compat(state: &GroupState, hwpt: &HwptRef) -> bool {
    hwpt.pasid_compat() && state.hwpt().is_none_or(HwptRef::pasid_compat)
}

/// Who owns the reservations made for `dev`'s reserved regions.
fn reserved_owner(dev: DeviceId) -> ReservedOwner {
    ReservedOwner::Device(u64::from(dev.raw()))
}

/// Reserve `dev`'s reserved regions in `ioas`, all or none
/// (`iopt_table_enforce_dev_resv_regions()`). `DIRECT_RELAXABLE` regions do not count.
///
/// # Errors
/// Injected failure → `EINVAL`; a region intersects an area or allowed range → `EADDRINUSE`;
/// more than one software MSI window, or one mixed with hardware MSI windows → `EINVAL`.
fn enforce_reserved(core: &IommuCore, dev: DeviceId, ioas: &Ioas) -> Result<(), Errno> {
    let regions = core.reserved_regions(dev);
    let sw_msi = regions
        .iter()
        .filter(|r| r.kind == ReservedKind::SwMsi)
        .count();
    let hw_msi = regions
        .iter()
        .filter(|r| r.kind == ReservedKind::Msi)
        .count();
    let ranges: Vec<IovaRange> = regions
        .iter()
        .filter(|r| r.kind != ReservedKind::DirectRelaxable)
        .map(|r| IovaRange::new(r.start.0, r.last.0))
        .collect();
    ioas.iopt()
        .reserve_regions(&ranges, reserved_owner(dev))
        .map_err(iopt_errno)?;
    if sw_msi > 1 || (sw_msi > 0 && hw_msi > 0) {
        ioas.iopt().remove_reserved(reserved_owner(dev));
        return Err(Errno::EINVAL);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Binding, attach, replace, detach
// ---------------------------------------------------------------------------------------------

/// A driver's hold on a bound device (what `iommufd_device_bind()` returns): the long-term
/// user that keeps the DEVICE object from being destroyed by user space, plus the user an
/// attachment adds.
#[derive(Debug)]
pub struct DeviceBinding {
    device: UsersRef<Device>,
    attached: Option<UsersRef<Device>>,
}

/// Whether [`DeviceBinding::change_pt`] attaches or replaces.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Change {
    Attach,
    Replace,
}

/// Bind core device `dev` to `ctx` (`iommufd_device_bind()`).
///
/// uiommu has no interrupt-remapping model, so the kernel's isolated-MSI check (`EPERM`
/// unless `allow_unsafe_interrupts`) is not made.
///
/// # Errors
/// In order: the device's IOMMU does not report cache coherency → `EINVAL`; no IOMMU group →
/// `ENODEV`; group allocation → `ENOMEM`; DMA ownership: another owner or a kernel driver →
/// `EPERM`, group not on its default domain → `EBUSY`; object allocation → `ENOMEM`.
pub fn bind(ctx: &IommufdCtx, dev: DeviceId) -> Result<DeviceBinding, Errno> {
    let core = ctx.iommufd().core();
    if !core.capable(dev, Capability::CacheCoherency) {
        return Err(Errno::EINVAL);
    }
    let group_id = core.group_of(dev).ok_or(Errno::ENODEV)?;
    let groups = ctx.device_groups();
    let group = groups.get(group_id)?;
    core.claim_dma_owner(dev, groups.owner)
        .map_err(core_errno)?;
    let reservation = match ctx.objects().reserve::<Device>() {
        Ok(reservation) => reservation,
        Err(err) => {
            core.release_dma_owner(dev);
            return Err(err);
        }
    };
    let device = reservation.finalize_owned(Device {
        core: Arc::clone(core),
        dev,
        group,
        enforce_cache_coherency: core.capable(dev, Capability::EnforceCacheCoherency),
        partial: Mutex::new(Vec::new()),
        vdev: Arc::default(),
    });
    Ok(DeviceBinding {
        device,
        attached: None,
    })
}

impl DeviceBinding {
    /// The DEVICE object's id (`iommufd_device_to_id()`).
    pub fn id(&self) -> ObjId {
        self.device.id()
    }

    /// The bound device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether [`DeviceBinding::attach`] succeeded and no detach followed.
    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// Attach to the HWPT or IOAS `pt_id` and return the HWPT used (`iommufd_device_attach()`).
    ///
    /// # Errors
    /// Unknown `pt_id` → `ENOENT`; an object that is neither a HWPT nor an IOAS → `EINVAL`;
    /// the group is attached to another HWPT → `EINVAL`; reserved regions conflict →
    /// `EADDRINUSE` (`EINVAL` injected); the driver's attach error; for an IOAS, the errors of
    /// allocating a HWPT (as `IOMMU_HWPT_ALLOC`) and of filling its domain.
    pub fn attach(&mut self, ctx: &IommufdCtx, pt_id: ObjId) -> Result<ObjId, Errno> {
        let id = self.change_pt(ctx, pt_id, Change::Attach)?;
        self.attached = Some(self.device.clone());
        Ok(id)
    }

    /// Move the attached device's group to the HWPT or IOAS `pt_id` with no blocked window in
    /// between, and return the HWPT used (`iommufd_device_replace()`). On failure the old
    /// attachment stays.
    ///
    /// # Errors
    /// As [`DeviceBinding::attach`]; and `EINVAL` when the device is not attached.
    pub fn replace(&self, ctx: &IommufdCtx, pt_id: ObjId) -> Result<ObjId, Errno> {
        self.change_pt(ctx, pt_id, Change::Replace)
    }

    /// Detach from the current HWPT (`iommufd_device_detach()`): the group goes back to its
    /// blocking domain when its last device leaves, and an automatic HWPT is destroyed with its
    /// last device. With `objects` `None` (the context is being torn down) the HWPT reference
    /// is only dropped, and the teardown destroys the HWPT.
    pub fn detach(&mut self, objects: Option<&ObjectTable>) {
        if self.attached.take().is_none() {
            return;
        }
        if let Some(hwpt) = self.device.detach(self.device.id()) {
            hwpt.put(objects);
        }
    }

    /// Attach PASID `pasid` (not 0) of the device to the HWPT `pt_id`
    /// (`iommufd_device_attach()` with a PASID, 7.3). The attachment holds a user on the HWPT
    /// until [`DeviceBinding::pasid_detach`].
    ///
    /// # Errors
    /// In the kernel's order: unknown `pt_id` → `ENOENT`; an IOAS or another kind → `EINVAL`
    /// (PASIDs take no automatic domains: those lack `IOMMU_HWPT_ALLOC_PASID`); the PASID is
    /// attached already → `EBUSY`; the HWPT, or the RID's HWPT, not PASID-compatible →
    /// `EINVAL`; a PASID the device cannot use → `EINVAL`; the driver's error.
    pub fn pasid_attach(&self, ctx: &IommufdCtx, pasid: u32, pt_id: ObjId) -> Result<(), Errno> {
        let hwpt = self.pasid_target(ctx, pt_id)?;
        let device = &self.device;
        let mut state = device.group.lock();
        if state.pasids.contains_key(&pasid) {
            return Err(Errno::EBUSY);
        }
        if !pasid_compat(&state, &hwpt) {
            return Err(Errno::EINVAL);
        }
        device
            .core
            .set_dev_pasid(device.dev, pasid, hwpt.domain())
            .map_err(core_errno)?;
        state.pasids.insert(
            pasid,
            PasidAttachment {
                idev: self.id(),
                hwpt,
                handle: AttachHandle::new(),
            },
        );
        Ok(())
    }

    /// Move attached PASID `pasid` to the HWPT `pt_id` (`iommufd_device_replace()` with a
    /// PASID). On failure the old attachment stays.
    ///
    /// # Errors
    /// Unknown `pt_id` → `ENOENT`; an IOAS or another kind → `EINVAL`; the PASID is not
    /// attached → `EINVAL`; not PASID-compatible → `EINVAL`; the driver's error.
    pub fn pasid_replace(&self, ctx: &IommufdCtx, pasid: u32, pt_id: ObjId) -> Result<(), Errno> {
        let hwpt = self.pasid_target(ctx, pt_id)?;
        let device = &self.device;
        let mut state = device.group.lock();
        let Some(current) = state.pasids.get(&pasid) else {
            return Err(Errno::EINVAL);
        };
        if current.hwpt.same(&hwpt) {
            return Ok(());
        }
        if !pasid_compat(&state, &hwpt) {
            return Err(Errno::EINVAL);
        }
        device
            .core
            .set_dev_pasid(device.dev, pasid, hwpt.domain())
            .map_err(core_errno)?;
        let old = state.pasids.get_mut(&pasid).map(|attachment| {
            let old_handle = std::mem::replace(&mut attachment.handle, AttachHandle::new());
            let old = std::mem::replace(&mut attachment.hwpt, hwpt);
            if let Some(fault) = old.fault() {
                fault.auto_respond(old_handle);
            }
            old
        });
        drop(state);
        if let Some(old) = old {
            old.put(Some(ctx.objects()));
        }
        Ok(())
    }

    /// Detach PASID `pasid` (`iommufd_device_detach()` with a PASID); nothing happens if it is
    /// not attached. With `objects` `None` (teardown) the HWPT reference is only dropped.
    pub fn pasid_detach(&self, objects: Option<&ObjectTable>, pasid: u32) {
        let device = &self.device;
        let mut state = device.group.lock();
        let Some(attachment) = state.pasids.remove(&pasid) else {
            return;
        };
        device.core.clear_dev_pasid(device.dev, pasid);
        if let Some(fault) = attachment.hwpt.fault() {
            fault.auto_respond(attachment.handle);
        }
        drop(state);
        attachment.hwpt.put(objects);
    }

    /// The id of the HWPT PASID `pasid` is attached to, if any.
    pub fn pasid_hwpt(&self, pasid: u32) -> Option<ObjId> {
        self.device
            .group
            .lock()
            .pasids
            .get(&pasid)
            .map(|attachment| attachment.hwpt.id())
    }

    /// The HWPT a PASID operation names (`iommufd_device_change_pt()` with a PASID).
    fn pasid_target(&self, ctx: &IommufdCtx, pt_id: ObjId) -> Result<HwptRef, Errno> {
        let pt = ctx.objects().get_any(pt_id)?;
        match pt.kind() {
            ObjectKind::HwptPaging | ObjectKind::HwptNested => {
                hwpt::hwpt_ref(pt).ok_or(Errno::EINVAL)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Unbind (`iommufd_device_unbind()`): detach if attached, destroy the DEVICE object and
    /// give the group's DMA back. With `objects` `None` (teardown), the object is left to the
    /// teardown.
    ///
    /// # Errors
    /// `EBUSY` if something else still holds the object (it then goes away with the context).
    pub fn unbind(mut self, objects: Option<&ObjectTable>) -> Result<(), Errno> {
        self.detach(objects);
        // Linux waits for PASID users to detach first; uiommu's callers are gone, so detach.
        let idev = self.id();
        let pasids: Vec<u32> = {
            let state = self.device.group.lock();
            state
                .pasids
                .iter()
                .filter(|(_, attachment)| attachment.idev == idev)
                .map(|(&pasid, _)| pasid)
                .collect()
        };
        for pasid in pasids {
            self.pasid_detach(objects, pasid);
        }
        // `iommufd_device_remove_vdev()`: the device's vDEVICE goes with it (Linux keeps its
        // id as a tombstone until the context closes; here the id is free again).
        let vdev = *self
            .device
            .vdev
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let (Some(vdev), Some(objects)) = (vdev, objects) {
            if let Err(err) = objects.destroy(vdev) {
                debug_assert_eq!(err, Errno::ENOENT, "a vDEVICE has no long-term users");
            }
        }
        let DeviceBinding { device, .. } = self;
        match objects {
            Some(objects) => objects.destroy_owned(device),
            None => Ok(()),
        }
    }

    /// `iommufd_device_change_pt()`.
    fn change_pt(&self, ctx: &IommufdCtx, pt_id: ObjId, change: Change) -> Result<ObjId, Errno> {
        let objects = ctx.objects();
        let pt = objects.get_any(pt_id)?;
        let (id, old) = match pt.kind() {
            ObjectKind::HwptPaging | ObjectKind::HwptNested => {
                let hwpt = hwpt::hwpt_ref(pt).ok_or(Errno::EINVAL)?;
                (pt_id, self.change_to(change, hwpt)?)
            }
            ObjectKind::Ioas => {
                let ioas = pt.downcast::<Ioas>().map_err(|_| Errno::EINVAL)?;
                self.auto_get_domain(objects, &ioas, change)?
            }
            _ => return Err(Errno::EINVAL),
        };
        // Released with no lock held: an automatic HWPT may be destroyed here.
        if let Some(old) = old {
            old.put(Some(objects));
        }
        Ok(id)
    }

    /// Attach or replace with an existing HWPT; returns the reference to put, if any.
    fn change_to(&self, change: Change, hwpt: HwptRef) -> Result<Option<HwptRef>, Errno> {
        let device = &self.device;
        let idev = device.id();
        let mut state = device.group.lock();
        match change {
            Change::Attach => {
                device.prepare_attach(&mut state, HwptView::of(&hwpt), idev)?;
                state.devices.push(AttachedDevice {
                    idev,
                    dev: device.dev,
                    hwpt,
                });
                Ok(None)
            }
            Change::Replace => {
                if !device.prepare_replace(&mut state, HwptView::of(&hwpt), idev)? {
                    return Ok(None);
                }
                Ok(move_users(&mut state, &hwpt))
            }
        }
    }

    /// `iommufd_device_auto_get_domain()`: reuse an automatic HWPT of `ioas` or make one.
    fn auto_get_domain(
        &self,
        objects: &ObjectTable,
        ioas: &ObjRef<'_, Ioas>,
        change: Change,
    ) -> Result<(ObjId, Option<HwptRef>), Errno> {
        let mut list = ioas.hwpts().lock();
        let candidates: Vec<_> = list.iter().filter(|e| e.auto_domain).copied().collect();
        for entry in candidates {
            let Ok(found) = objects.get::<HwptPaging>(entry.id) else {
                continue;
            };
            if found.domain().id() != entry.domain {
                continue;
            }
            match self.change_to(change, HwptRef::Paging(found.users_ref())) {
                Ok(old) => return Ok((entry.id, old)),
                Err(Errno::EINVAL) => continue,
                Err(err) => return Err(err),
            }
        }

        let device = &self.device;
        let idev = device.id();
        let mut new = hwpt::paging_new(objects, ioas, device, 0, None, true)?;
        let id = new.reservation.id();
        match change {
            Change::Attach => {
                // The kernel attaches before filling the domain ("immediate attach").
                let mut state = device.group.lock();
                device.prepare_attach(&mut state, HwptView::of_paging(&new.hwpt), idev)?;
                if let Err(err) = new.hwpt.add_to_iopt() {
                    device.unprepare_attach(&mut state, HwptView::of_paging(&new.hwpt));
                    return Err(err);
                }
                new.hwpt.list(&mut list, id);
                let hwpt = HwptRef::Paging(new.reservation.finalize_owned(new.hwpt));
                state.devices.push(AttachedDevice {
                    idev,
                    dev: device.dev,
                    hwpt,
                });
                Ok((id, None))
            }
            Change::Replace => {
                new.hwpt.add_to_iopt()?;
                let mut state = device.group.lock();
                if !device.prepare_replace(&mut state, HwptView::of_paging(&new.hwpt), idev)? {
                    // The group cannot already be on a HWPT nobody has seen.
                    return Err(Errno::EINVAL);
                }
                new.hwpt.list(&mut list, id);
                let hwpt = HwptRef::Paging(new.reservation.finalize_owned(new.hwpt));
                let old = move_users(&mut state, &hwpt);
                drop(hwpt);
                Ok((id, old))
            }
        }
    }
}

/// Point every attached device's user at `hwpt` and return one of the old users for the
/// caller to put (the others are plain drops: the kernel's `refcount_sub`).
fn move_users(state: &mut GroupState, hwpt: &HwptRef) -> Option<HwptRef> {
    let mut old = None;
    for attached in &mut state.devices {
        let previous = std::mem::replace(&mut attached.hwpt, hwpt.clone());
        old.get_or_insert(previous);
    }
    old
}

// ---------------------------------------------------------------------------------------------
// IOMMU_GET_HW_INFO
// ---------------------------------------------------------------------------------------------

/// Bytes zeroed per write when clearing the tail of a large user buffer.
const CLEAR_CHUNK: usize = 4096;

/// `IOMMU_GET_HW_INFO` (`iommufd_get_hw_info()`, with the mainline `IOMMU_HW_INFO_FLAG_INPUT_TYPE`
/// the 6.12 selftest uses): the driver's hardware data, truncated to `data_len` or zero-filled
/// up to it; `data_len` comes back as the driver's full length.
///
/// # Errors
/// Unknown flags or `__reserved` → `EOPNOTSUPP`; unknown device → `ENOENT`; a requested
/// `in_data_type` other than the default or the driver's → `EOPNOTSUPP`; the driver's error;
/// a driver reporting type NONE with data → `ENODEV`; the buffer or the response → `EFAULT`.
pub(crate) fn get_hw_info(call: &Call, ucmd: &mut Ucmd<'_, IommuHwInfo>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags & !IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0 || cmd.reserved != [0; 3] {
        return Err(Errno::EOPNOTSUPP);
    }
    let requested = cmd.in_data_type();
    let idev = call.ctx.objects().get::<Device>(ObjId(cmd.dev_id))?;
    let core = idev.core();
    let (data_type, data) = match core.hw_info(idev.dev()) {
        Ok(info) => {
            if requested != IOMMU_HW_INFO_TYPE_DEFAULT && requested != info.data_type {
                return Err(Errno::EOPNOTSUPP);
            }
            if info.data_type == IOMMU_HW_INFO_TYPE_NONE {
                return Err(Errno::ENODEV);
            }
            (info.data_type, info.data)
        }
        Err(CoreError::NotSupported) => (IOMMU_HW_INFO_TYPE_NONE, Vec::new()),
        Err(err) => return Err(core_errno(err)),
    };
    let user = ucmd.user();
    let copy_len = (cmd.data_len as usize).min(data.len());
    if copy_len > 0 {
        user.write(UserVa(cmd.data_uptr), &data[..copy_len])?;
    }
    clear_user(user, cmd.data_uptr, copy_len, cmd.data_len as usize)?;
    ucmd.cmd.data_len = u32::try_from(data.len()).map_err(|_| Errno::EOVERFLOW)?;
    ucmd.cmd.out_data_type = data_type;
    ucmd.cmd.out_capabilities = 0;
    if core.capable(idev.dev(), Capability::DirtyTracking) {
        ucmd.cmd.out_capabilities |= IOMMU_HW_CAP_DIRTY_TRACKING;
    }
    let max_pasids = core.max_pasids(idev.dev());
    ucmd.cmd.out_max_pasid_log2 = if max_pasids == 0 {
        0
    } else {
        max_pasids.ilog2() as u8
    };
    ucmd.respond()
}

/// `clear_user(base + from, to - from)`.
fn clear_user(user: &dyn UserMemory, base: u64, from: usize, to: usize) -> Result<(), Errno> {
    let zeroes = [0u8; CLEAR_CHUNK];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CLEAR_CHUNK);
        let addr = base.checked_add(at as u64).ok_or(Errno::EFAULT)?;
        user.write(UserVa(addr), &zeroes[..n])?;
        at += n;
    }
    Ok(())
}
