//! HWPT objects: IOMMU domains as user space sees them (Linux `hw_pagetable.c`), and their
//! ioctls: `IOMMU_HWPT_ALLOC`, `IOMMU_HWPT_SET_DIRTY_TRACKING`, `IOMMU_HWPT_GET_DIRTY_BITMAP`
//! and `IOMMU_HWPT_INVALIDATE`.
//!
//! # Model
//! * A [`HwptPaging`] owns a paging [`Domain`] allocated through the IOMMU core and is filled
//!   from one IOAS: the domain is attached to the IOAS's
//!   [`IoPagetable`](crate::io_pagetable::IoPagetable) through a [`DomainMapper`] adapter, so
//!   every area of the IOAS is mapped into it. It holds a user on the IOAS. Paging HWPTs are
//!   listed on their IOAS ([`HwptList`], the kernel's `ioas->hwpt_list`) so that attaching a
//!   device to the IOAS can reuse an *automatic* one.
//! * A [`HwptNested`] owns a nested domain (a user-managed stage 1) on a paging parent allocated
//!   with `IOMMU_HWPT_ALLOC_NEST_PARENT`; it holds a user on the parent and, optionally, on a
//!   FAULT object that receives its page requests.
//! * [`HwptRef`] is a long-term reference to either kind: what an attached device holds.
//!
//! Destroying a paging HWPT (dropping its payload) unlists it and removes its domain from the
//! IOAS, which unmaps everything (and unpins when it was the last domain).
//!
//! # Locking
//! Lock order: [`HwptList`] (the kernel's `ioas->mutex`, held across choosing or allocating an
//! automatic HWPT and until a new HWPT is finalized) → the device group's lock → the IOAS's
//! io page table locks → the IOMMU core's lock. A paging HWPT's destroy takes its IOAS's list
//! lock, so a HWPT reference must never be released while that lock is held.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::abi::*;
use crate::ctx::Call;
use crate::device::Device;
use crate::errno::Errno;
use crate::failpoint::{should_fail, FailSite};
use crate::fault::Fault;
use crate::io_pagetable::{DomainMapError, DomainMapper, IovaRange};
use crate::ioas::{iopt_errno, Ioas};
use crate::ioctl::Ucmd;
use crate::object::{ObjId, ObjRef, ObjectKind, ObjectPayload, ObjectTable, Reservation, UsersRef};
use crate::user_memory::{UserMemory, UserVa, PAGE_SIZE};
use crate::version::KernelVersion;
use crate::viommu::Viommu;
use uiommu_core::{
    Capability, CoreError, Domain, DomainId, DomainRequest, DomainType, Iova, PagingFlags,
    PhysAddr, Prot, UserData,
};

/// The errno of a core (driver) error.
pub(crate) fn core_errno(err: CoreError) -> Errno {
    Errno::from_raw(err.errno())
}

/// The most driver data `IOMMU_HWPT_ALLOC` copies in. Drivers take fixed structs far smaller
/// than a page and refuse longer data with `EINVAL` before copying it; reading one byte more
/// than this bound keeps that answer for any longer length without copying gigabytes.
const MAX_USER_DATA: u32 = PAGE_SIZE as u32 + 1;

/// How many bytes of invalidation entries are handed to the driver per call: bounds the copy of
/// an array that may be up to 2^19 entries of a page each.
const INVALIDATE_BATCH: usize = 64 * 1024;

/// The most entries one `IOMMU_HWPT_INVALIDATE` may carry (the kernel's
/// `IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX`).
const INVALIDATE_ENTRY_NUM_MAX: u32 = 1 << 19;

// ---------------------------------------------------------------------------------------------
// The HWPT list of an IOAS
// ---------------------------------------------------------------------------------------------

/// One paging HWPT built on an IOAS. Names the object by id and domain, so an id reused after a
/// destroy is never mistaken for the listed HWPT.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HwptListEntry {
    pub(crate) id: ObjId,
    pub(crate) domain: DomainId,
    pub(crate) auto_domain: bool,
    pub(crate) enforce_cache_coherency: bool,
}

/// The paging HWPTs of one IOAS (`ioas->hwpt_list` with `ioas->mutex`). Its lock is held while
/// an attach picks or allocates an automatic HWPT, which serializes those attaches per IOAS.
#[derive(Debug, Default)]
pub struct HwptList {
    entries: Mutex<Vec<HwptListEntry>>,
}

impl HwptList {
    /// An empty list.
    pub fn new() -> HwptList {
        HwptList::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<HwptListEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every listed HWPT enforces cache coherency (`iommufd_vfio_cc_iommu()`); true for
    /// an empty list.
    pub fn all_enforce_cache_coherency(&self) -> bool {
        self.lock().iter().all(|e| e.enforce_cache_coherency)
    }

    /// Number of paging HWPTs built on the IOAS.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No paging HWPT is built on the IOAS.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Ioas {
    /// The paging HWPTs built on this IOAS.
    pub fn hwpts(&self) -> &HwptList {
        &self.hwpts
    }
}

// ---------------------------------------------------------------------------------------------
// The domain as the IOVA engine sees it
// ---------------------------------------------------------------------------------------------

/// A core [`Domain`] as a [`DomainMapper`]: `iommu_map()`/`iommu_unmap()` and the geometry.
#[derive(Debug)]
struct DomainAdapter {
    domain: Arc<Domain>,
}

impl DomainMapper for DomainAdapter {
    fn map(
        &self,
        iova: Iova,
        phys: PhysAddr,
        length: u64,
        prot: Prot,
    ) -> Result<(), DomainMapError> {
        self.domain
            .map(iova, phys, length, prot)
            .map_err(|err| DomainMapError(err.errno()))
    }

    fn unmap(&self, iova: Iova, length: u64) -> u64 {
        self.domain.unmap(iova, length)
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.domain.ops().pgsize_bitmap()
    }

    fn aperture(&self) -> IovaRange {
        let aperture = self.domain.ops().aperture();
        IovaRange::new(aperture.start.0, aperture.last.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Paging HWPT
// ---------------------------------------------------------------------------------------------

/// A paging HWPT (`struct iommufd_hwpt_paging`): a domain filled from an IOAS.
pub struct HwptPaging {
    domain: Arc<Domain>,
    mapper: Arc<dyn DomainMapper>,
    ioas: UsersRef<Ioas>,
    auto_domain: bool,
    nest_parent: bool,
    enforce_cache_coherency: bool,
    /// The domain is attached to the IOAS's io page table.
    in_iopt: bool,
    /// Listed on the IOAS; set just before the object is published and never cleared.
    listed: AtomicBool,
    /// Allocated with `IOMMU_HWPT_ALLOC_PASID`: may be attached to PASIDs, and a device's RID
    /// on it does not keep PASID attachments away.
    pasid_compat: bool,
}

impl fmt::Debug for HwptPaging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HwptPaging")
            .field("domain", &self.domain.id())
            .field("ioas", &self.ioas.id())
            .field("auto_domain", &self.auto_domain)
            .field("nest_parent", &self.nest_parent)
            .finish()
    }
}

impl ObjectPayload for HwptPaging {
    const KIND: ObjectKind = ObjectKind::HwptPaging;
}

impl HwptPaging {
    /// The IOMMU domain.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// The IOAS the domain is filled from.
    pub fn ioas(&self) -> &Ioas {
        &self.ioas
    }

    /// The IOAS's id.
    pub fn ioas_id(&self) -> ObjId {
        self.ioas.id()
    }

    /// Created by attaching a device to an IOAS, and destroyed with its last device.
    pub fn auto_domain(&self) -> bool {
        self.auto_domain
    }

    /// May be the parent of nested HWPTs.
    pub fn nest_parent(&self) -> bool {
        self.nest_parent
    }

    /// Allocated with `IOMMU_HWPT_ALLOC_PASID` (`hwpt->pasid_compat`).
    pub fn pasid_compat(&self) -> bool {
        self.pasid_compat
    }

    /// Attach the domain to the IOAS's io page table and fill it (`iopt_table_add_domain()`).
    pub(crate) fn add_to_iopt(&mut self) -> Result<(), Errno> {
        self.ioas
            .iopt()
            .add_domain(Arc::clone(&self.mapper))
            .map_err(iopt_errno)?;
        self.in_iopt = true;
        Ok(())
    }

    fn list_entry(&self, id: ObjId) -> HwptListEntry {
        HwptListEntry {
            id,
            domain: self.domain.id(),
            auto_domain: self.auto_domain,
            enforce_cache_coherency: self.enforce_cache_coherency,
        }
    }

    /// List the HWPT on its IOAS under `id`, with the IOAS's list lock held by the caller:
    /// the last step before publishing, since an unpublished listed HWPT could not be dropped
    /// under that lock.
    pub(crate) fn list(&self, entries: &mut Vec<HwptListEntry>, id: ObjId) {
        entries.push(self.list_entry(id));
        self.listed.store(true, Ordering::Release);
    }
}

impl Drop for HwptPaging {
    /// `iommufd_hwpt_paging_destroy()`: unlist, then empty the domain out of the IOAS. The
    /// domain itself goes with its last reference; the IOAS user with `ioas`.
    fn drop(&mut self) {
        if self.listed.load(Ordering::Acquire) {
            let id = self.domain.id();
            self.ioas.hwpts().lock().retain(|e| e.domain != id);
        }
        if self.in_iopt {
            self.ioas.iopt().remove_domain(&self.mapper);
        }
    }
}

/// A paging HWPT being built, with its reserved id: dropping it aborts the creation.
pub(crate) struct NewPaging<'t> {
    pub(crate) reservation: Reservation<'t, HwptPaging>,
    pub(crate) hwpt: HwptPaging,
}

/// The first half of `iommufd_hwpt_paging_alloc()`: flag checks, the object id and the domain,
/// not yet attached to the IOAS's io page table.
///
/// # Errors
/// Unknown flags (`FAULT_ID_VALID` included) → `EOPNOTSUPP`; `DIRTY_TRACKING` on a device
/// without the capability → `EOPNOTSUPP`; id reservation → `ENOMEM`/`EBUSY`; the driver's
/// allocation error.
pub(crate) fn paging_new<'t>(
    objects: &'t ObjectTable,
    ioas: &ObjRef<'_, Ioas>,
    idev: &Device,
    flags: u32,
    data: Option<UserData<'_>>,
    auto_domain: bool,
) -> Result<NewPaging<'t>, Errno> {
    // PASID is 7.3's; under 6.12 the ioctl refuses it before calling here.
    const VALID: u32 =
        IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_PASID;
    if flags & !VALID != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let core = idev.core();
    let dirty_tracking = flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0;
    if dirty_tracking && !core.capable(idev.dev(), Capability::DirtyTracking) {
        return Err(Errno::EOPNOTSUPP);
    }
    let reservation = objects.reserve::<HwptPaging>()?;
    let ioas_ref = ioas.users_ref();
    let domain = core
        .domain_alloc(
            idev.dev(),
            DomainRequest::Paging {
                flags: PagingFlags {
                    nest_parent: flags & IOMMU_HWPT_ALLOC_NEST_PARENT != 0,
                    dirty_tracking,
                },
                data,
            },
        )
        .map_err(core_errno)?;
    let mapper: Arc<dyn DomainMapper> = Arc::new(DomainAdapter {
        domain: Arc::clone(&domain),
    });
    Ok(NewPaging {
        reservation,
        hwpt: HwptPaging {
            domain,
            mapper,
            ioas: ioas_ref,
            auto_domain,
            nest_parent: flags & IOMMU_HWPT_ALLOC_NEST_PARENT != 0,
            // The core has no per-domain enforcement switch: a device that can enforce
            // coherency gets domains that do.
            enforce_cache_coherency: idev.enforce_cache_coherency(),
            in_iopt: false,
            listed: AtomicBool::new(false),
            pasid_compat: flags & IOMMU_HWPT_ALLOC_PASID != 0,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Nested HWPT
// ---------------------------------------------------------------------------------------------

/// A nested HWPT (`struct iommufd_hwpt_nested`): a user-managed stage 1 on a paging parent.
pub struct HwptNested {
    domain: Arc<Domain>,
    parent: UsersRef<HwptPaging>,
    fault: Option<UsersRef<Fault>>,
    /// The vIOMMU it was allocated on, if any (kept alive by it).
    viommu: Option<UsersRef<Viommu>>,
    /// Allocated with `IOMMU_HWPT_ALLOC_PASID`.
    pasid_compat: bool,
}

impl fmt::Debug for HwptNested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HwptNested")
            .field("domain", &self.domain.id())
            .field("parent", &self.parent.id())
            .field("fault", &self.fault.as_ref().map(UsersRef::id))
            .field("viommu", &self.viommu.as_ref().map(UsersRef::id))
            .finish()
    }
}

impl ObjectPayload for HwptNested {
    const KIND: ObjectKind = ObjectKind::HwptNested;
}

impl HwptNested {
    /// The nested IOMMU domain.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// The paging parent.
    pub fn parent(&self) -> &HwptPaging {
        &self.parent
    }

    /// The fault queue receiving this HWPT's page requests, if any.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_deref()
    }

    /// The vIOMMU the HWPT was allocated on, if any.
    pub fn viommu(&self) -> Option<&Viommu> {
        self.viommu.as_deref()
    }
}

// ---------------------------------------------------------------------------------------------
// A reference to either kind
// ---------------------------------------------------------------------------------------------

/// A long-term reference to a HWPT of either kind (the kernel's `iommufd_hw_pagetable`
/// pointer with a user): what each attached device holds.
#[derive(Clone, Debug)]
pub enum HwptRef {
    /// A paging HWPT.
    Paging(UsersRef<HwptPaging>),
    /// A nested HWPT.
    Nested(UsersRef<HwptNested>),
}

impl HwptRef {
    /// The HWPT's id.
    pub fn id(&self) -> ObjId {
        match self {
            HwptRef::Paging(h) => h.id(),
            HwptRef::Nested(h) => h.id(),
        }
    }

    /// The HWPT's domain.
    pub fn domain(&self) -> &Arc<Domain> {
        match self {
            HwptRef::Paging(h) => h.domain(),
            HwptRef::Nested(h) => h.domain(),
        }
    }

    /// The paging HWPT whose IOAS the device's reserved regions go into: the HWPT itself, or a
    /// nested HWPT's parent (`find_hwpt_paging()`).
    pub fn paging(&self) -> &HwptPaging {
        match self {
            HwptRef::Paging(h) => h,
            HwptRef::Nested(h) => h.parent(),
        }
    }

    /// The fault queue of the HWPT, if it was allocated with one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            HwptRef::Paging(_) => None,
            HwptRef::Nested(h) => h.fault(),
        }
    }

    /// Allocated with `IOMMU_HWPT_ALLOC_PASID` (`hwpt->pasid_compat`).
    pub fn pasid_compat(&self) -> bool {
        match self {
            HwptRef::Paging(h) => h.pasid_compat,
            HwptRef::Nested(h) => h.pasid_compat,
        }
    }

    /// Whether both name the same HWPT.
    pub fn same(&self, other: &HwptRef) -> bool {
        Arc::ptr_eq(self.domain(), other.domain())
    }

    /// Give the reference up (`iommufd_hw_pagetable_put()`): an automatic paging HWPT is
    /// destroyed with its last user. With no table (the context is being torn down), the
    /// reference is only dropped and the teardown destroys the HWPT.
    pub fn put(self, objects: Option<&ObjectTable>) {
        match (self, objects) {
            (HwptRef::Paging(h), Some(objects)) if h.auto_domain() => {
                objects.put_and_try_destroy(h);
            }
            (reference, _) => drop(reference),
        }
    }
}

/// Look up a HWPT of either kind as a long-term reference, for attaching (`pt_obj` of
/// `iommufd_device_change_pt()`); `None` if `pt` is of another kind.
pub(crate) fn hwpt_ref(pt: ObjRef<'_, crate::object::AnyPayload>) -> Option<HwptRef> {
    match pt.kind() {
        ObjectKind::HwptPaging => pt
            .downcast::<HwptPaging>()
            .ok()
            .map(|h| HwptRef::Paging(h.users_ref())),
        ObjectKind::HwptNested => pt
            .downcast::<HwptNested>()
            .ok()
            .map(|h| HwptRef::Nested(h.users_ref())),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// IOMMU_HWPT_ALLOC
// ---------------------------------------------------------------------------------------------

/// The driver data of `IOMMU_HWPT_ALLOC`, read from the user before the driver sees it.
///
/// The kernel lets the driver copy the data itself, after its own checks. The core's driver
/// interface takes bytes, so uiommu reads them first; if they cannot be read, the driver gets
/// zeroes of the same length, and `EFAULT` is reported only if the driver accepts them (its
/// checks come first in Linux too).
struct DriverData {
    data_type: u32,
    bytes: Vec<u8>,
    unreadable: bool,
}

impl DriverData {
    fn read(user: &dyn UserMemory, cmd: &IommuHwptAlloc) -> Option<DriverData> {
        if cmd.data_len == 0 {
            return None;
        }
        let mut bytes = vec![0u8; cmd.data_len.min(MAX_USER_DATA) as usize];
        let unreadable = user.read(UserVa(cmd.data_uptr), &mut bytes).is_err();
        if unreadable {
            bytes.fill(0);
        }
        Some(DriverData {
            data_type: cmd.data_type,
            bytes,
            unreadable,
        })
    }

    fn user_data(&self) -> UserData<'_> {
        UserData {
            data_type: self.data_type,
            bytes: &self.bytes,
        }
    }
}

/// `IOMMU_HWPT_ALLOC` (`iommufd_hwpt_alloc()`): a paging HWPT on an IOAS, or a nested HWPT on
/// a paging parent.
///
/// # Errors
/// In the kernel's order: `__reserved` → `EOPNOTSUPP`; data type and length disagree →
/// `EINVAL`; unknown device → `ENOENT`; unknown `pt_id` → `EINVAL`; then per kind (see
/// [`paging_new`] and the nested checks below); `pt_id` of another kind → `EINVAL`; fault
/// lookup → `ENOENT`; response → `EFAULT`.
pub(crate) fn alloc(call: &Call, ucmd: &mut Ucmd<'_, IommuHwptAlloc>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if (cmd.data_type == IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0) {
        return Err(Errno::EINVAL);
    }
    let objects = call.ctx.objects();
    let idev = objects.get::<Device>(ObjId(cmd.dev_id))?;
    let pt = objects
        .get_any(ObjId(cmd.pt_id))
        .map_err(|_| Errno::EINVAL)?;
    let data = DriverData::read(ucmd.user(), &cmd);
    match pt.kind() {
        ObjectKind::Ioas => {
            let Ok(ioas) = pt.downcast::<Ioas>() else {
                return Err(Errno::EINVAL);
            };
            if cmd.flags & IOMMU_HWPT_ALLOC_PASID != 0 && !pasid_flag_known(call) {
                return Err(Errno::EOPNOTSUPP);
            }
            // 6.12's drivers take no data for paging domains (the mock refuses it, after the
            // flag checks that also answer EOPNOTSUPP); 7.3's mock reads its page-table type.
            if data.is_some() && !pasid_flag_known(call) {
                return Err(Errno::EOPNOTSUPP);
            }
            alloc_paging(objects, ucmd, &ioas, &idev, data.as_ref())
        }
        ObjectKind::HwptPaging => {
            let Ok(parent) = pt.downcast::<HwptPaging>() else {
                return Err(Errno::EINVAL);
            };
            let valid = if pasid_flag_known(call) {
                IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID
            } else {
                IOMMU_HWPT_FAULT_ID_VALID
            };
            alloc_nested(objects, ucmd, &parent, &idev, data.as_ref(), valid)
        }
        ObjectKind::Viommu if call.kernel_version() >= KernelVersion::V7_3 => {
            let Ok(viommu) = pt.downcast::<Viommu>() else {
                return Err(Errno::EINVAL);
            };
            alloc_on_viommu(objects, ucmd, &viommu, &idev, data.as_ref())
        }
        _ => Err(Errno::EINVAL),
    }
}

/// A nested HWPT on a vIOMMU (`iommufd_viommu_alloc_hwpt_nested()`): the stage 2 is the
/// vIOMMU's nesting parent.
///
/// # Errors
/// The device is behind another IOMMU → `EINVAL`; flags other than `FAULT_ID_VALID`/`PASID`,
/// or no data → `EOPNOTSUPP`; then as a nested allocation on a paging parent.
fn alloc_on_viommu(
    objects: &ObjectTable,
    ucmd: &mut Ucmd<'_, IommuHwptAlloc>,
    viommu: &ObjRef<'_, Viommu>,
    idev: &Device,
    data: Option<&DriverData>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if idev.iommu_instance() != Some(viommu.instance()) {
        return Err(Errno::EINVAL);
    }
    if cmd.flags & !(IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let Some(data) = data else {
        return Err(Errno::EOPNOTSUPP);
    };
    let reservation = objects.reserve::<HwptNested>()?;
    let parent = viommu.parent().clone();
    let domain = idev
        .core()
        .viommu_domain_alloc(
            idev.dev(),
            viommu.ops(),
            cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID,
            data.user_data(),
        )
        .map_err(core_errno)?;
    if data.unreadable {
        return Err(Errno::EFAULT);
    }
    if domain.ty() != DomainType::Nested {
        return Err(Errno::EOPNOTSUPP);
    }
    let fault = if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0 {
        Some(objects.get::<Fault>(ObjId(cmd.fault_id))?.into_users_ref())
    } else {
        None
    };
    ucmd.cmd.out_hwpt_id = reservation.id().raw();
    ucmd.respond()?;
    reservation.finalize(HwptNested {
        domain,
        parent,
        fault,
        viommu: Some(viommu.users_ref()),
        pasid_compat: cmd.flags & IOMMU_HWPT_ALLOC_PASID != 0,
    });
    Ok(())
}

/// `IOMMU_HWPT_ALLOC_PASID` exists from 7.3 on (6.14 upstream).
fn pasid_flag_known(call: &Call) -> bool {
    call.kernel_version() >= KernelVersion::V7_3
}

fn alloc_paging(
    objects: &ObjectTable,
    ucmd: &mut Ucmd<'_, IommuHwptAlloc>,
    ioas: &ObjRef<'_, Ioas>,
    idev: &Device,
    data: Option<&DriverData>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let mut list = ioas.hwpts().lock();
    let mut new = paging_new(
        objects,
        ioas,
        idev,
        cmd.flags,
        data.map(DriverData::user_data),
        false,
    )?;
    if data.is_some_and(|d| d.unreadable) {
        return Err(Errno::EFAULT);
    }
    new.hwpt.add_to_iopt()?;
    let id = new.reservation.id();
    ucmd.cmd.out_hwpt_id = id.raw();
    ucmd.respond()?;
    new.hwpt.list(&mut list, id);
    new.reservation.finalize(new.hwpt);
    Ok(())
}

fn alloc_nested(
    objects: &ObjectTable,
    ucmd: &mut Ucmd<'_, IommuHwptAlloc>,
    parent: &ObjRef<'_, HwptPaging>,
    idev: &Device,
    data: Option<&DriverData>,
    valid_flags: u32,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let Some(data) = data.filter(|_| cmd.flags & !valid_flags == 0) else {
        return Err(Errno::EOPNOTSUPP);
    };
    if parent.auto_domain() || !parent.nest_parent() || !idev.served_by(parent.domain()) {
        return Err(Errno::EINVAL);
    }
    let reservation = objects.reserve::<HwptNested>()?;
    let parent_ref = parent.users_ref();
    let domain = idev
        .core()
        .domain_alloc(
            idev.dev(),
            DomainRequest::Nested {
                parent: parent.domain(),
                data: data.user_data(),
            },
        )
        .map_err(core_errno)?;
    if data.unreadable {
        return Err(Errno::EFAULT);
    }
    if domain.ty() != DomainType::Nested {
        return Err(Errno::EINVAL);
    }
    let fault = if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0 {
        Some(objects.get::<Fault>(ObjId(cmd.fault_id))?.into_users_ref())
    } else {
        None
    };
    ucmd.cmd.out_hwpt_id = reservation.id().raw();
    ucmd.respond()?;
    reservation.finalize(HwptNested {
        domain,
        parent: parent_ref,
        fault,
        viommu: None,
        pasid_compat: cmd.flags & IOMMU_HWPT_ALLOC_PASID != 0,
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dirty tracking
// ---------------------------------------------------------------------------------------------

/// `IOMMU_HWPT_SET_DIRTY_TRACKING` (`iommufd_hwpt_set_dirty_tracking()`).
///
/// Linux clears every area's dirty bits and then enables tracking; uiommu enables first and
/// then clears, because the core's dirty interface cannot tell the driver that a clear reports
/// to nobody, and drivers refuse to read dirty bits while tracking is off. Either order leaves
/// a clean snapshot.
///
/// # Errors
/// Unknown flags → `EOPNOTSUPP`; unknown paging HWPT → `ENOENT`; a domain without dirty
/// tracking → `EOPNOTSUPP`; the driver's error.
pub(crate) fn set_dirty_tracking(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuHwptSetDirtyTracking>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let hwpt = call.ctx.objects().get::<HwptPaging>(ObjId(cmd.hwpt_id))?;
    let enable = cmd.flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0;
    let ops = hwpt.domain.ops();
    ops.set_dirty_tracking(enable).map_err(core_errno)?;
    if enable {
        for area in hwpt.ioas.iopt().areas() {
            ops.read_and_clear_dirty(area.iova, area.length, false, &mut |_, _| {})
                .map_err(core_errno)?;
        }
    }
    Ok(())
}

/// The user's dirty bitmap, collected in memory and OR-ed into user memory at the end
/// (`struct iova_bitmap`): bit `n` stands for `[iova + n * page_size, + page_size)`.
struct DirtyBitmap {
    iova: u64,
    last: u64,
    page_shift: u32,
    /// Byte index in the user bitmap → bits to set.
    bytes: BTreeMap<u64, u8>,
}

impl DirtyBitmap {
    /// `iova_bitmap_set()`: mark `[iova, iova + length)`, clipped to the bitmap's range.
    fn set(&mut self, iova: u64, length: u64) {
        let Some(last) = iova.checked_add(length.saturating_sub(1)) else {
            return;
        };
        if length == 0 || last < self.iova || iova > self.last {
            return;
        }
        let first_bit = (iova.max(self.iova) - self.iova) >> self.page_shift;
        let last_bit = (last.min(self.last) - self.iova) >> self.page_shift;
        for bit in first_bit..=last_bit {
            *self.bytes.entry(bit / 8).or_default() |= 1 << (bit % 8);
        }
    }

    /// OR the collected bits into the user's bitmap at `data`, a run of touched bytes at a
    /// time. Runs that cannot be read or written are skipped, as the kernel skips bitmap pages
    /// it cannot pin.
    fn flush(&self, user: &dyn UserMemory, data: u64) {
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        for (&index, &bits) in &self.bytes {
            match runs.last_mut() {
                Some((start, run)) if *start + run.len() as u64 == index => run.push(bits),
                _ => runs.push((index, vec![bits])),
            }
        }
        for (start, bits) in runs {
            let Some(at) = data.checked_add(start).map(UserVa) else {
                continue;
            };
            let mut current = vec![0u8; bits.len()];
            if user.read(at, &mut current).is_err() {
                continue;
            }
            for (byte, set) in current.iter_mut().zip(&bits) {
                *byte |= set;
            }
            let _ = user.write(at, &current);
        }
    }
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP` (`iommufd_hwpt_get_dirty_bitmap()`): set (never clear) one bit
/// per dirty `page_size` page of `[iova, iova + length)`, reading through the domain's dirty
/// tracking only where areas are mapped, and clear the dirty state unless `NO_CLEAR`.
///
/// As in 6.12, a failure while walking (a gap between areas, tracking disabled, an unwritable
/// bitmap) stops the walk but is not reported: the ioctl still succeeds.
///
/// # Errors
/// Unknown flags or `__reserved` → `EOPNOTSUPP`; unknown paging HWPT → `ENOENT`; `length` 0 →
/// `EINVAL`; range wraps → `EOVERFLOW`; range not aligned to the IOAS alignment → `EINVAL`;
/// `page_size` 0 or range not aligned to it → `EINVAL`; no dirty tracking → `EOPNOTSUPP`;
/// bitmap allocation → `ENOMEM`.
pub(crate) fn get_dirty_bitmap(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuHwptGetDirtyBitmap>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags & !IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0 || cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let hwpt = call.ctx.objects().get::<HwptPaging>(ObjId(cmd.hwpt_id))?;
    let iopt = hwpt.ioas.iopt();
    if cmd.length == 0 {
        return Err(Errno::EINVAL);
    }
    let last = cmd
        .iova
        .checked_add(cmd.length - 1)
        .ok_or(Errno::EOVERFLOW)?;
    let end = last.wrapping_add(1);
    let alignment = iopt.iova_alignment();
    if cmd.iova & (alignment - 1) != 0 || end & (alignment - 1) != 0 {
        return Err(Errno::EINVAL);
    }
    if cmd.page_size == 0 {
        return Err(Errno::EINVAL);
    }
    // Linux masks with page_size - 1, so a page size that is not a power of two behaves as the
    // mask says; uiommu needs a shift for the bit index, which only a power of two has.
    if !cmd.page_size.is_power_of_two()
        || cmd.iova & (cmd.page_size - 1) != 0
        || end & (cmd.page_size - 1) != 0
    {
        return Err(Errno::EINVAL);
    }
    let ops = hwpt.domain.ops();
    let keep = cmd.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0;
    if matches!(
        ops.read_and_clear_dirty(Iova(cmd.iova), 0, true, &mut |_, _| {}),
        Err(CoreError::NotSupported)
    ) {
        return Err(Errno::EOPNOTSUPP);
    }
    if should_fail(FailSite::Alloc) {
        return Err(Errno::ENOMEM);
    }
    let mut bitmap = DirtyBitmap {
        iova: cmd.iova,
        last,
        page_shift: cmd.page_size.trailing_zeros(),
        bytes: BTreeMap::new(),
    };
    let mut cursor = cmd.iova;
    for area in iopt.areas() {
        let area_last = area.iova.0 + (area.length - 1);
        if area_last < cursor {
            continue;
        }
        if area.iova.0 > cursor {
            break; // a gap: the walk stops, silently.
        }
        let chunk_last = area_last.min(last);
        let walked = ops.read_and_clear_dirty(
            Iova(cursor),
            chunk_last - cursor + 1,
            keep,
            &mut |iova, size| bitmap.set(iova.0, size),
        );
        if walked.is_err() || chunk_last == last {
            break;
        }
        cursor = chunk_last + 1;
    }
    bitmap.flush(ucmd.user(), cmd.data);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// IOMMU_HWPT_INVALIDATE
// ---------------------------------------------------------------------------------------------

/// `IOMMU_HWPT_INVALIDATE` (`iommufd_hwpt_invalidate()`): hand the user's array of entries to
/// the nested domain's driver, which processes them in order and stops at the first error.
/// `entry_num` is written back with the number handled, whatever the outcome.
///
/// Entries are copied a batch at a time; an entry that cannot be read ends the array, and if
/// the driver handled everything before it, the answer is `EFAULT` (where Linux's per-entry
/// copy fails).
///
/// # Errors
/// `__reserved` → `EOPNOTSUPP`; with entries: no array, `entry_len` 0 or above a page, or more
/// than 2^19 entries → `EINVAL`; not a nested HWPT → `ENOENT`; the driver's error; an
/// unreadable entry → `EFAULT`; the write-back → `EFAULT`.
pub(crate) fn invalidate(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuHwptInvalidate>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let (done, result) = invalidate_entries(call, ucmd.user(), &cmd);
    ucmd.cmd.entry_num = done;
    ucmd.respond().map_err(|_| Errno::EFAULT)?;
    result
}

fn invalidate_entries(
    call: &Call,
    user: &dyn UserMemory,
    cmd: &IommuHwptInvalidate,
) -> (u32, Result<(), Errno>) {
    if cmd.reserved != 0 {
        return (0, Err(Errno::EOPNOTSUPP));
    }
    if cmd.entry_num != 0
        && (cmd.data_uptr == 0
            || cmd.entry_len == 0
            || u64::from(cmd.entry_len) > PAGE_SIZE
            || cmd.entry_num > INVALIDATE_ENTRY_NUM_MAX)
    {
        return (0, Err(Errno::EINVAL));
    }
    let hwpt = match call.ctx.objects().get::<HwptNested>(ObjId(cmd.hwpt_id)) {
        Ok(hwpt) => hwpt,
        Err(err) => {
            if call.kernel_version() >= KernelVersion::V7_3 {
                if let Ok(viommu) = call.ctx.objects().get::<Viommu>(ObjId(cmd.hwpt_id)) {
                    return invalidate_viommu(user, cmd, &viommu);
                }
            }
            return (0, Err(invalidate_lookup_errno(call, cmd.hwpt_id, err)));
        }
    };
    let ops = hwpt.domain.ops();
    if cmd.entry_num == 0 {
        let (_, result) = ops.cache_invalidate_user(cmd.data_type, cmd.entry_len, &[]);
        return (0, result.map_err(core_errno));
    }
    let entry_len = cmd.entry_len as usize;
    let per_batch = (INVALIDATE_BATCH / entry_len).max(1);
    let mut done = 0u32;
    while done < cmd.entry_num {
        let count = per_batch.min((cmd.entry_num - done) as usize);
        let (entries, readable) = read_entries(user, cmd, done, count);
        let (handled, result) = ops.cache_invalidate_user(cmd.data_type, cmd.entry_len, &entries);
        done += handled;
        if let Err(err) = result {
            return (done, Err(core_errno(err)));
        }
        if handled < readable as u32 {
            // The driver stopped early without an error: nothing more to hand it.
            return (done, Ok(()));
        }
        if readable < count {
            return (done, Err(Errno::EFAULT));
        }
    }
    (done, Ok(()))
}

/// `IOMMU_HWPT_INVALIDATE` on a vIOMMU: the array goes to the driver in pieces of at most
/// [`INVALIDATE_BATCH`] bytes (the mock copies its array in one piece; arrays that large differ
/// only in where an error stops); an unreadable piece is `EFAULT` before the driver sees it.
fn invalidate_viommu(
    user: &dyn UserMemory,
    cmd: &IommuHwptInvalidate,
    viommu: &Viommu,
) -> (u32, Result<(), Errno>) {
    if cmd.entry_num == 0 {
        return viommu.cache_invalidate(cmd.data_type, cmd.entry_len, &[]);
    }
    let entry_len = cmd.entry_len as usize;
    let per_batch = (INVALIDATE_BATCH / entry_len).max(1);
    let mut done = 0u32;
    while done < cmd.entry_num {
        let count = per_batch.min((cmd.entry_num - done) as usize);
        let mut entries = vec![0u8; count * entry_len];
        let at = cmd.data_uptr + u64::from(done) * entry_len as u64;
        if user.read(UserVa(at), &mut entries).is_err() {
            return (done, Err(Errno::EFAULT));
        }
        let (handled, result) = viommu.cache_invalidate(cmd.data_type, cmd.entry_len, &entries);
        done += handled;
        if result.is_err() || (handled as usize) < count {
            return (done, result);
        }
    }
    (done, Ok(()))
}

/// The errno of an `IOMMU_HWPT_INVALIDATE` whose id names no nested HWPT. 6.12 looks the id
/// up as a nested HWPT (`ENOENT` for any other kind); 7.3 looks up any object and refuses
/// kinds it cannot invalidate with `EINVAL` (a vIOMMU is served before this).
fn invalidate_lookup_errno(call: &Call, id: u32, err: Errno) -> Errno {
    if call.kernel_version() < KernelVersion::V7_3 {
        return err;
    }
    match call.ctx.objects().get_any(ObjId(id)) {
        Ok(_) => Errno::EINVAL,
        Err(err) => err,
    }
}

/// Read `count` entries from index `first`: the bytes of the readable prefix and its length in
/// entries.
fn read_entries(
    user: &dyn UserMemory,
    cmd: &IommuHwptInvalidate,
    first: u32,
    count: usize,
) -> (Vec<u8>, usize) {
    let entry_len = cmd.entry_len as usize;
    let start = cmd
        .data_uptr
        .checked_add(u64::from(first) * entry_len as u64);
    let mut bytes = vec![0u8; count * entry_len];
    let Some(start) = start else {
        return (Vec::new(), 0);
    };
    if user.read(UserVa(start), &mut bytes).is_ok() {
        return (bytes, count);
    }
    // Some entry is unreadable: find the readable prefix, entry by entry.
    let mut readable = 0;
    while readable < count {
        let at = start + (readable * entry_len) as u64;
        let slot = &mut bytes[readable * entry_len..(readable + 1) * entry_len];
        if user.read(UserVa(at), slot).is_err() {
            break;
        }
        readable += 1;
    }
    bytes.truncate(readable * entry_len);
    (bytes, readable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_bitmap_clips_records_to_its_range_and_ors_into_user_memory() {
        let user = crate::user_memory::ModelMemory::new();
        user.map(UserVa(0x10000), 4096, true);
        user.write(UserVa(0x10000), &[0x80, 0, 0]).unwrap();
        let mut bitmap = DirtyBitmap {
            iova: 0x100_0000,
            last: 0x100_0000 + 16 * 2048 - 1,
            page_shift: 11,
            bytes: BTreeMap::new(),
        };
        // Starts before the range: only the part inside counts.
        bitmap.set(0x100_0000 - 4096, 3 * 2048);
        // Ends past the range: clipped at bit 15.
        bitmap.set(0x100_0000 + 14 * 2048, 8 * 2048);
        bitmap.set(0x200_0000, 2048);
        bitmap.flush(&user, 0x10000);
        let mut out = [0u8; 3];
        user.read(UserVa(0x10000), &mut out).unwrap();
        assert_eq!(
            out,
            [0x81, 0xc0, 0],
            "existing bits stay, bits past 15 are not set"
        );
    }
}
