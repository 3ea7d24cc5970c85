//! `IOMMU_TEST_CMD`: the mock driver's side of the iommufd selftest (Linux `selftest.c`).
//!
//! [`MockSelftest`] implements iommufd's [`SelftestHook`]; [`MockSelftest::install`] registers
//! it on a `/dev/iommu`. Every `IOMMU_TEST_OP_*` of the 6.12 test header is served here, and
//! of 7.3's the device cache check, `TRIGGER_VEVENT` and the PASID ops (under 6.12, see
//! iommufd's `version` module, those answer `EOPNOTSUPP`; the dma-buf ops are not served yet),
//! with the kernel's checks in the kernel's order, through iommufd's public test API only:
//!
//! * `MOCK_DOMAIN[_FLAGS]` creates a mock device on the mock bus (its fwspec names the mock's
//!   fwnode, so the core routes it here), binds it to the context and attaches it; the result
//!   lives in a SELFTEST object whose destruction detaches, unbinds and removes the device.
//! * `CREATE_ACCESS` creates an ACCESS object owned by an access *file*: the file's number is
//!   the id later ops pass, and closing it (dropping the last reference) unpins everything and
//!   destroys the access.
//! * The checking ops read the mock's page tables through the HWPTs' domains. A user page's
//!   "physical address" is its virtual address, so `MD_CHECK_MAP` compares each 2 KiB entry
//!   with `uptr / 2048`.
//!
//! # Locking
//! Each access file has one mutex over its pinned items (the kernel's `staccess->lock`), taken
//! before the access's own lock. Everything else is iommufd's.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use uiommu_core::{BusKind, DeviceId, DomainType, IommuCore, Iova};
use uiommu_iommufd::abi::*;
use uiommu_iommufd::access::{self, Access, AccessOps};
use uiommu_iommufd::ctx::{Call, Iommufd, IommufdCtx};
use uiommu_iommufd::device::{self, Device, DeviceBinding};
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::failpoint::{should_fail, FailSite};
use uiommu_iommufd::fault::PageRequest;
use uiommu_iommufd::file::{DriverFile, EmulatedFile, FdReservation};
use uiommu_iommufd::hwpt::{HwptNested, HwptPaging};
use uiommu_iommufd::io_pagetable::{AccessPath, IoPagetable, IovaRange, ReservedOwner};
use uiommu_iommufd::ioas::Ioas;
use uiommu_iommufd::ioctl::Ucmd;
use uiommu_iommufd::object::{ObjId, ObjRef, ObjectKind, ObjectPayload, UsersRef};
use uiommu_iommufd::pages::{page_pin_count, RwBuf};
use uiommu_iommufd::selftest::SelftestHook;
use uiommu_iommufd::user_memory::{UserMemory, UserVa, PAGE_SIZE};
use uiommu_iommufd::version::KernelVersion;

use crate::domain::{MockNestedDomain, MockPagingDomain};
use crate::driver::{MockDeviceFlags, MockIommu};
use crate::{MOCK_IO_PAGE_SIZE, MOCK_NESTED_DOMAIN_IOTLB_NUM};

/// The largest ACCESS_PAGES / ACCESS_RW length (the kernel refuses more with `ENOMEM` to keep
/// syzkaller away from huge allocations).
const MAX_ACCESS_LENGTH: u64 = 16 * 1024 * 1024;

/// The most bits one `IOMMU_TEST_OP_DIRTY` bitmap may have.
const MAX_DIRTY_BITS: u64 = 16 * 1024 * 1024 * 8;

/// The smallest temporary memory limit (`sizeof(unsigned long) + sizeof(u32)`).
const MIN_TEMP_MEMORY_LIMIT: u32 = 12;

/// `iommufd_test_memory_limit`: global, as in the kernel. uiommu's pin engine has no batches to
/// bound, so the value is only kept and reported.
static TEMP_MEMORY_LIMIT: AtomicU32 = AtomicU32::new(IOMMU_TEST_MEMORY_LIMIT_DEFAULT);

/// The value last set by `IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT`.
pub fn temp_memory_limit() -> u32 {
    TEMP_MEMORY_LIMIT.load(Ordering::Relaxed)
}

fn core_errno(err: uiommu_core::CoreError) -> Errno {
    Errno::from_raw(err.errno())
}

/// The mock's `IOMMU_TEST_CMD` handler.
#[derive(Debug)]
pub struct MockSelftest {
    mock: Arc<MockIommu>,
}

impl MockSelftest {
    /// A handler creating its devices on `mock` (which must be registered with the core of the
    /// `/dev/iommu` it serves).
    pub fn new(mock: Arc<MockIommu>) -> Arc<MockSelftest> {
        Arc::new(MockSelftest { mock })
    }

    /// Register a handler for `mock` on `iommufd`.
    ///
    /// # Errors
    /// Another hook is registered already.
    pub fn install(iommufd: &Iommufd, mock: Arc<MockIommu>) -> Result<(), Errno> {
        iommufd
            .set_selftest_hook(MockSelftest::new(mock))
            .map_err(|_| Errno::EBUSY)
    }
}

impl SelftestHook for MockSelftest {
    fn test_cmd(&self, call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
        let cmd = ucmd.cmd;
        match cmd.op {
            IOMMU_TEST_OP_ADD_RESERVED => add_reserved(call, &cmd),
            IOMMU_TEST_OP_MOCK_DOMAIN | IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => {
                self.mock_domain(call, ucmd)
            }
            IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => mock_domain_replace(call, ucmd),
            IOMMU_TEST_OP_MD_CHECK_MAP => check_map(call, &cmd),
            IOMMU_TEST_OP_MD_CHECK_REFS => check_refs(call, &cmd),
            IOMMU_TEST_OP_MD_CHECK_IOTLB => check_iotlb(call, &cmd),
            IOMMU_TEST_OP_DEV_CHECK_CACHE if since_7_3(call) => self.check_dev_cache(call, &cmd),
            IOMMU_TEST_OP_TRIGGER_VEVENT if since_7_3(call) => trigger_vevent(call, &cmd),
            IOMMU_TEST_OP_PASID_ATTACH if since_7_3(call) => pasid_attach(call, ucmd),
            IOMMU_TEST_OP_PASID_REPLACE if since_7_3(call) => pasid_replace(call, ucmd),
            IOMMU_TEST_OP_PASID_DETACH if since_7_3(call) => pasid_detach(call, &cmd),
            IOMMU_TEST_OP_PASID_CHECK_HWPT if since_7_3(call) => pasid_check_hwpt(call, &cmd),
            IOMMU_TEST_OP_CREATE_ACCESS => create_access(call, ucmd),
            IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => access_replace_ioas(call, &cmd),
            IOMMU_TEST_OP_ACCESS_PAGES => access_pages(call, ucmd),
            IOMMU_TEST_OP_DESTROY_ACCESS_PAGES => destroy_access_pages(call, &cmd),
            IOMMU_TEST_OP_ACCESS_RW => access_rw(call, &cmd),
            IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => {
                let limit = cmd.payload::<TestMemoryLimit>().limit;
                if limit < MIN_TEMP_MEMORY_LIMIT {
                    return Err(Errno::EINVAL);
                }
                TEMP_MEMORY_LIMIT.store(limit, Ordering::Relaxed);
                Ok(())
            }
            IOMMU_TEST_OP_DIRTY => dirty(call, ucmd),
            IOMMU_TEST_OP_TRIGGER_IOPF => self.trigger_iopf(call, &cmd),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mock devices
// ---------------------------------------------------------------------------------------------

/// The SELFTEST object of a mock device (`struct selftest_obj` of type `TYPE_IDEV`).
///
/// Dropping it (`IOMMU_DESTROY` of the stdev id, or the context closing) detaches and unbinds
/// the device and removes it from the core, as `iommufd_selftest_destroy()` does. It names its
/// context weakly (mock devices take no context reference in Linux either): while the context
/// is being torn down, the DEVICE and HWPT objects are left to that teardown.
pub struct SelftestDevice {
    ctx: Weak<IommufdCtx>,
    mock: Arc<MockIommu>,
    core: Arc<IommuCore>,
    dev: DeviceId,
    binding: Option<DeviceBinding>,
}

impl fmt::Debug for SelftestDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelftestDevice")
            .field("dev", &self.dev)
            .field("idev", &self.binding.as_ref().map(DeviceBinding::id))
            .finish()
    }
}

impl ObjectPayload for SelftestDevice {
    const KIND: ObjectKind = ObjectKind::Selftest;
}

impl SelftestDevice {
    /// The core device.
    pub fn dev(&self) -> DeviceId {
        self.dev
    }

    /// The DEVICE object's id.
    pub fn idev_id(&self) -> Option<ObjId> {
        self.binding.as_ref().map(DeviceBinding::id)
    }
}

impl Drop for SelftestDevice {
    fn drop(&mut self) {
        let ctx = self.ctx.upgrade();
        let objects = ctx.as_deref().map(IommufdCtx::objects);
        if let Some(mut binding) = self.binding.take() {
            binding.detach(objects);
            if let Err(err) = binding.unbind(objects) {
                tracing::warn!(%err, "mock device still referenced at unbind");
            }
        }
        if let Err(err) = self.mock.remove_device(&self.core, self.dev) {
            tracing::warn!(%err, "mock device already gone");
        }
    }
}

impl MockSelftest {
    /// `IOMMU_TEST_OP_MOCK_DOMAIN` / `_FLAGS` (`iommufd_test_mock_domain()`).
    fn mock_domain(&self, call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
        let cmd = ucmd.cmd;
        let objects = call.ctx.objects();
        let reservation = objects.reserve::<SelftestDevice>()?;
        let dev_flags = if cmd.op == IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS {
            cmd.payload::<TestMockDomainFlags>().dev_flags
        } else {
            0
        };
        let flags = MockDeviceFlags::from_bits(dev_flags).map_err(core_errno)?;
        if should_fail(FailSite::Alloc) {
            return Err(Errno::ENOMEM);
        }
        let core = Arc::clone(call.ctx.iommufd().core());
        let dev = self.mock.add_device(&core, flags).map_err(core_errno)?;
        // From here on, dropping `sobj` undoes whatever was done.
        let mut sobj = SelftestDevice {
            ctx: Arc::downgrade(&call.ctx),
            mock: Arc::clone(&self.mock),
            core,
            dev,
            binding: None,
        };
        let binding = sobj.binding.insert(device::bind(&call.ctx, dev)?);
        let hwpt_id = binding.attach(&call.ctx, ObjId(cmd.id))?;
        let out = TestMockDomain {
            out_stdev_id: reservation.id().raw(),
            out_hwpt_id: hwpt_id.raw(),
            out_idev_id: binding.id().raw(),
        };
        ucmd.cmd.set_payload(&out);
        ucmd.respond()?;
        reservation.finalize(sobj);
        Ok(())
    }

    /// `IOMMU_TEST_OP_TRIGGER_IOPF` (`iommufd_test_trigger_iopf()`): report a last-page request
    /// from a mock device. The report's outcome is not returned, as in Linux.
    /// `IOMMU_TEST_OP_DEV_CHECK_CACHE` (`iommufd_test_dev_check_cache()`): `cmd.id` is a
    /// DEVICE id; the slot must exist and hold the expected value.
    fn check_dev_cache(&self, call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
        let args = cmd.payload::<TestCheckDevCache>();
        let idev = call.ctx.objects().get::<Device>(ObjId(cmd.id))?;
        let name = device_name(idev.core(), idev.dev()).ok_or(Errno::EINVAL)?;
        if args.id > MOCK_DEV_CACHE_ID_MAX
            || self.mock.device_cache(&name, args.id) != Some(args.cache)
        {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn trigger_iopf(&self, call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
        let args = cmd.payload::<TestTriggerIopf>();
        let idev = call.ctx.objects().get::<Device>(ObjId(args.dev_id))?;
        if !is_mock_device(idev.core(), idev.dev()) {
            return Err(Errno::EINVAL);
        }
        let mut flags = IOMMU_PGFAULT_FLAGS_LAST_PAGE;
        if args.pasid != 0 {
            flags |= IOMMU_PGFAULT_FLAGS_PASID_VALID;
        }
        let request = PageRequest {
            flags,
            pasid: args.pasid,
            grpid: args.grpid,
            perm: args.perm,
            addr: args.addr,
        };
        // The mock keeps PASID tables in user space (`user_pasid_table`).
        let _ = idev.report_iopf(request, true);
        Ok(())
    }
}

/// Whether `dev` sits on the mock bus (`iommufd_selftest_is_mock_dev()`).
/// Test ops that Linux 7.3 has and 6.12 does not answer `EOPNOTSUPP` under 6.12.
fn since_7_3(call: &Call) -> bool {
    call.kernel_version() >= KernelVersion::V7_3
}

fn device_name(core: &IommuCore, dev: DeviceId) -> Option<String> {
    core.devices()
        .into_iter()
        .find(|d| d.id == dev && d.bus == BusKind::Mock)
        .map(|d| d.name)
}

fn is_mock_device(core: &IommuCore, dev: DeviceId) -> bool {
    core.devices()
        .iter()
        .any(|d| d.id == dev && d.bus == BusKind::Mock)
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE` (`iommufd_test_mock_domain_replace()`).
fn mock_domain_replace(call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let objects = call.ctx.objects();
    let sobj = objects.get::<SelftestDevice>(ObjId(cmd.id))?;
    let binding = sobj.binding.as_ref().ok_or(Errno::EINVAL)?;
    let pt_id = cmd.payload::<TestMockDomainReplace>().pt_id;
    let hwpt_id = binding.replace(&call.ctx, ObjId(pt_id))?;
    ucmd.cmd.set_payload(&TestMockDomainReplace {
        pt_id: hwpt_id.raw(),
    });
    ucmd.respond()
}

/// `IOMMU_TEST_OP_TRIGGER_VEVENT` (`iommufd_test_trigger_vevent()`): the device, attached to a
/// nested HWPT of a vIOMMU where it has a non-zero virtual id, reports one selftest vEVENT
/// (`struct iommu_viommu_event_selftest`: that virtual id).
fn trigger_vevent(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestTriggerVevent>();
    let objects = call.ctx.objects();
    let idev = objects.get::<Device>(ObjId(args.dev_id))?;
    let nested = idev
        .attached_hwpt()
        .and_then(|id| objects.get::<HwptNested>(id).ok())
        .ok_or(Errno::ENOENT)?;
    let viommu = nested.viommu().ok_or(Errno::ENOENT)?;
    let virt_id = viommu
        .virt_id_of(idev.dev())
        .filter(|&id| id != 0)
        .ok_or(Errno::ENOENT)?;
    viommu.report_event(IOMMU_VEVENTQ_TYPE_SELFTEST, &(virt_id as u32).to_le_bytes())
}

/// The binding of the mock device behind stdev id `id`.
fn stdev_binding<'c>(call: &'c Call, id: u32) -> Result<ObjRef<'c, SelftestDevice>, Errno> {
    let sobj = call.ctx.objects().get::<SelftestDevice>(ObjId(id))?;
    if sobj.binding.is_none() {
        return Err(Errno::EINVAL);
    }
    Ok(sobj)
}

fn binding(sobj: &SelftestDevice) -> &DeviceBinding {
    sobj.binding.as_ref().expect("checked by stdev_binding")
}

/// `IOMMU_TEST_OP_PASID_ATTACH` (`iommufd_test_pasid_attach()`); PASID 0 is the RID.
fn pasid_attach(call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let args = cmd.payload::<TestPasidAttach>();
    let sobj = stdev_binding(call, cmd.id)?;
    if args.pasid == 0 {
        // The RID is attached from MOCK_DOMAIN on: a second attach of the same device is
        // the kernel's EBUSY.
        return Err(Errno::EBUSY);
    }
    binding(&sobj).pasid_attach(&call.ctx, args.pasid, ObjId(args.pt_id))?;
    if let Err(err) = ucmd.respond() {
        binding(&sobj).pasid_detach(Some(call.ctx.objects()), args.pasid);
        return Err(err);
    }
    Ok(())
}

/// `IOMMU_TEST_OP_PASID_REPLACE` (`iommufd_test_pasid_replace()`); PASID 0 is the RID.
fn pasid_replace(call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let args = cmd.payload::<TestPasidReplace>();
    let sobj = stdev_binding(call, cmd.id)?;
    if args.pasid == 0 {
        binding(&sobj).replace(&call.ctx, ObjId(args.pt_id))?;
    } else {
        binding(&sobj).pasid_replace(&call.ctx, args.pasid, ObjId(args.pt_id))?;
    }
    ucmd.respond()
}

/// `IOMMU_TEST_OP_PASID_DETACH` (`iommufd_test_pasid_detach()`): never fails once the device
/// is found.
fn pasid_detach(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestPasidDetach>();
    let sobj = stdev_binding(call, cmd.id)?;
    binding(&sobj).pasid_detach(Some(call.ctx.objects()), args.pasid);
    Ok(())
}

/// `IOMMU_TEST_OP_PASID_CHECK_HWPT` (`iommufd_test_pasid_check_hwpt()`): `hwpt_id` 0 asks
/// that the PASID be detached; otherwise it must be attached to that HWPT.
fn pasid_check_hwpt(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestPasidCheck>();
    let sobj = stdev_binding(call, cmd.id)?;
    let attached = binding(&sobj).pasid_hwpt(args.pasid);
    if args.hwpt_id == 0 {
        return if attached.is_some() {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        };
    }
    let hwpt = call.ctx.objects().get_any(ObjId(args.hwpt_id))?;
    if !matches!(hwpt.kind(), ObjectKind::HwptPaging | ObjectKind::HwptNested) {
        return Err(Errno::EINVAL);
    }
    if attached != Some(ObjId(args.hwpt_id)) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// IOAS and domain checks
// ---------------------------------------------------------------------------------------------

fn iopt_errno(err: uiommu_iommufd::io_pagetable::IoptError) -> Errno {
    Errno::from_raw(err.errno())
}

/// `IOMMU_TEST_OP_ADD_RESERVED` (`iommufd_test_add_reserved()`).
fn add_reserved(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestAddReserved>();
    if args.length == 0 {
        return Err(Errno::EINVAL);
    }
    let last = args
        .start
        .checked_add(args.length - 1)
        .ok_or(Errno::EOVERFLOW)?;
    let ioas = call.ctx.objects().get::<Ioas>(ObjId(cmd.id))?;
    ioas.iopt()
        .reserve_iova(IovaRange::new(args.start, last), ReservedOwner::Unowned)
        .map_err(iopt_errno)
}

/// The mock paging domain of paging HWPT `id` (`get_md_pagetable()`).
///
/// # Errors
/// Not a paging HWPT → `ENOENT`; not a mock paging domain → `EINVAL`.
fn mock_paging(call: &Call, id: u32) -> Result<ObjRef<'_, HwptPaging>, Errno> {
    let hwpt = call.ctx.objects().get::<HwptPaging>(ObjId(id))?;
    let domain = hwpt.domain();
    if domain.ty() != DomainType::Unmanaged
        || domain
            .ops()
            .as_any()
            .downcast_ref::<MockPagingDomain>()
            .is_none()
    {
        return Err(Errno::EINVAL);
    }
    Ok(hwpt)
}

fn mock_table(hwpt: &HwptPaging) -> &MockPagingDomain {
    hwpt.domain()
        .ops()
        .as_any()
        .downcast_ref()
        .expect("checked by mock_paging")
}

/// Whether the user page containing `va` is mapped (`get_user_pages_fast()` of one page).
fn probe_page(user: &dyn UserMemory, va: u64) -> Result<(), Errno> {
    user.probe(UserVa(va & !(PAGE_SIZE - 1)), 1, false)
        .map_err(|_| Errno::EFAULT)
}

/// `IOMMU_TEST_OP_MD_CHECK_MAP` (`iommufd_test_md_check_pa()`): every 2 KiB IO page of
/// `[iova, iova + length)` must translate to the matching 2 KiB of `[uptr, uptr + length)`.
fn check_map(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestCheckMap>();
    if args.iova % MOCK_IO_PAGE_SIZE != 0
        || args.length % MOCK_IO_PAGE_SIZE != 0
        || args.uptr % MOCK_IO_PAGE_SIZE != 0
        || args.uptr.checked_add(args.length).is_none()
    {
        return Err(Errno::EINVAL);
    }
    let hwpt = mock_paging(call, cmd.id)?;
    let table = mock_table(&hwpt);
    let user = call.caller.memory.as_ref();
    // One probe of the whole range when it is all mapped; page by page otherwise, so that a
    // mismatch before the first hole still answers EINVAL.
    let all_mapped = user.probe(UserVa(args.uptr), args.length, false).is_ok();
    let mut offset = 0;
    while offset < args.length {
        let (iova, uptr) = (args.iova.wrapping_add(offset), args.uptr + offset);
        if !all_mapped {
            probe_page(user, uptr)?;
        }
        match table.entry(Iova(iova)) {
            Some(entry) if entry.pfn == uptr / MOCK_IO_PAGE_SIZE => {}
            _ => return Err(Errno::EINVAL),
        }
        offset += MOCK_IO_PAGE_SIZE;
    }
    Ok(())
}

/// `IOMMU_TEST_OP_MD_CHECK_REFS` (`iommufd_test_md_check_refs()`): every page of
/// `[uptr, uptr + length)` must be pinned `refs` times.
fn check_refs(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestCheckRefs>();
    if args.length % PAGE_SIZE != 0
        || args.uptr % PAGE_SIZE != 0
        || args.uptr.checked_add(args.length).is_none()
    {
        return Err(Errno::EINVAL);
    }
    let user = call.caller.memory.as_ref();
    let mm = user.mm();
    let all_mapped = user.probe(UserVa(args.uptr), args.length, false).is_ok();
    let mut offset = 0;
    while offset < args.length {
        let va = args.uptr + offset;
        if !all_mapped {
            probe_page(user, va)?;
        }
        if page_pin_count(mm, UserVa(va)) != args.refs {
            return Err(Errno::EIO);
        }
        offset += PAGE_SIZE;
    }
    Ok(())
}

/// `IOMMU_TEST_OP_MD_CHECK_IOTLB` (`iommufd_test_md_check_iotlb()`).
fn check_iotlb(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestCheckIotlb>();
    let hwpt = call.ctx.objects().get::<HwptNested>(ObjId(cmd.id))?;
    let domain = hwpt.domain();
    let Some(nested) = domain
        .ops()
        .as_any()
        .downcast_ref::<MockNestedDomain>()
        .filter(|_| domain.ty() == DomainType::Nested)
    else {
        return Err(Errno::EINVAL);
    };
    if args.id as usize >= MOCK_NESTED_DOMAIN_IOTLB_NUM
        || nested.iotlb(args.id as usize) != Some(args.iotlb)
    {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// `IOMMU_TEST_OP_DIRTY` (`iommufd_test_dirty()`): for every set bit `i` of the user's bitmap,
/// mark dirty the mock entry at index `(iova + i * page_size) / page_size` (the kernel's
/// indexing, which matches the IOVA when `page_size` is the mock's page size).
fn dirty(call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let mut args = cmd.payload::<TestDirty>();
    if args.page_size == 0
        || args.length == 0
        || args.iova % args.page_size != 0
        || args.length % args.page_size != 0
        || args.uptr == 0
    {
        return Err(Errno::EINVAL);
    }
    let bits = args.length / args.page_size;
    if bits > MAX_DIRTY_BITS {
        return Err(Errno::EOVERFLOW);
    }
    let hwpt = mock_paging(call, cmd.id)?;
    let table = mock_table(&hwpt);
    if !table.dirty_tracking() {
        return Err(Errno::EINVAL);
    }
    if should_fail(FailSite::Alloc) {
        return Err(Errno::ENOMEM);
    }
    let mut bitmap = vec![0u8; bits.div_ceil(8) as usize];
    call.caller
        .memory
        .read(UserVa(args.uptr), &mut bitmap)
        .map_err(|_| Errno::EFAULT)?;
    let mut count = 0u64;
    let v7_3 = since_7_3(call);
    for i in 0..bits {
        if bitmap[(i / 8) as usize] & (1 << (i % 8)) == 0 {
            continue;
        }
        let cur = args.iova.wrapping_add(i.wrapping_mul(args.page_size));
        if v7_3 {
            // 7.3 sets the dirty bit of the PTE translating `cur` and counts every set bit. Its
            // mock page table maps CPU pages with one PTE: mark both 2 KiB halves (a huge
            // entry is reported whole by the domain anyway).
            let pte = cur & !(PAGE_SIZE - 1);
            table.mark_dirty(Iova(pte));
            table.mark_dirty(Iova(pte + MOCK_IO_PAGE_SIZE));
            count += 1;
        } else {
            // 6.12 marks the entry of mock page `cur / page_size` and counts only mapped ones.
            let index = cur / args.page_size;
            if table.mark_dirty(Iova(index.wrapping_mul(MOCK_IO_PAGE_SIZE))) {
                count += 1;
            }
        }
    }
    args.out_nr_dirty = count;
    ucmd.cmd.set_payload(&args);
    ucmd.respond()
}

// ---------------------------------------------------------------------------------------------
// Access files
// ---------------------------------------------------------------------------------------------

/// One range pinned by `ACCESS_PAGES` (`struct selftest_access_item`).
#[derive(Clone, Copy, Debug)]
struct AccessItem {
    iova: u64,
    length: u64,
    id: u32,
}

#[derive(Debug, Default)]
struct AccessItems {
    items: Vec<AccessItem>,
    /// Ids start at 0, per access.
    next_id: u32,
}

/// The selftest's access file (`struct selftest_access`, `[iommufd_test_staccess]`): owns one
/// ACCESS object and the ranges pinned through it. Closing the file (dropping its last
/// reference) unpins every range and destroys the access.
pub struct SelftestAccess {
    ctx: Arc<IommufdCtx>,
    access: OnceLock<UsersRef<Access>>,
    items: Mutex<AccessItems>,
}

impl fmt::Debug for SelftestAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelftestAccess")
            .field("access", &self.access.get().map(UsersRef::id))
            .field("items", &self.lock_items().items.len())
            .finish()
    }
}

impl SelftestAccess {
    fn lock_items(&self) -> MutexGuard<'_, AccessItems> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ACCESS object.
    fn access(&self) -> Result<&UsersRef<Access>, Errno> {
        self.access.get().ok_or(Errno::EBADFD)
    }

    /// Ranges currently pinned.
    pub fn pinned_items(&self) -> usize {
        self.lock_items().items.len()
    }

    /// Unpin every item intersecting `[iova, last]`, with the items locked.
    fn unmap_locked(&self, items: &mut AccessItems, iova: u64, last: u64) {
        let Some(access) = self.access.get() else {
            return;
        };
        items.items.retain(|item| {
            let item_last = item.iova + (item.length - 1);
            if iova > item_last || last < item.iova {
                return true;
            }
            access.unpin_pages(Iova(item.iova), item.length);
            false
        });
    }
}

impl AccessOps for SelftestAccess {
    /// `iommufd_test_access_unmap()`.
    fn unmap(&self, iova: Iova, length: u64) {
        let last = iova.0.saturating_add(length.saturating_sub(1));
        let mut items = self.lock_items();
        self.unmap_locked(&mut items, iova.0, last);
    }
}

impl DriverFile for SelftestAccess {
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

impl Drop for SelftestAccess {
    /// `iommufd_test_staccess_release()`.
    fn drop(&mut self) {
        let items = std::mem::take(self.items.get_mut().unwrap_or_else(PoisonError::into_inner));
        if let Some(access) = self.access.take() {
            for item in items.items {
                access.unpin_pages(Iova(item.iova), item.length);
            }
            if let Err(err) = access::destroy(&self.ctx, access) {
                tracing::warn!(%err, "selftest access still referenced at close");
            }
        }
    }
}

/// The access file behind fd `fd` (`iommufd_access_get()`).
///
/// # Errors
/// No file, or not an access file → `EBADFD`.
fn access_file(call: &Call, fd: u32) -> Result<Arc<SelftestAccess>, Errno> {
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADFD)?;
    match call.files().get(fd) {
        Some(EmulatedFile::Access(file)) => file.as_any().downcast().map_err(|_| Errno::EBADFD),
        _ => Err(Errno::EBADFD),
    }
}

/// `IOMMU_TEST_OP_CREATE_ACCESS` (`iommufd_test_create_access()`).
fn create_access(call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let args = cmd.payload::<TestCreateAccess>();
    if args.flags & !MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    // The staccess allocation and its anonymous file.
    if should_fail(FailSite::Alloc) {
        return Err(Errno::ENOMEM);
    }
    let staccess = Arc::new(SelftestAccess {
        ctx: Arc::clone(&call.ctx),
        access: OnceLock::new(),
        items: Mutex::new(AccessItems::default()),
    });
    let fd = FdReservation::new(call.files().as_ref()).map_err(|_| Errno::ENOMEM)?;
    let ops: Weak<dyn AccessOps> = {
        let ops: Arc<dyn AccessOps> = staccess.clone();
        Arc::downgrade(&ops)
    };
    let needs_pin_pages = args.flags & MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0;
    let access = access::create(&call.ctx, ops, needs_pin_pages)?;
    let attached = access.attach(&call.ctx, ObjId(cmd.id)).and_then(|()| {
        ucmd.cmd.set_payload(&TestCreateAccess {
            out_access_fd: fd.fd() as u32,
            flags: args.flags,
        });
        ucmd.respond()
    });
    if let Err(err) = attached {
        if let Err(busy) = access::destroy(&call.ctx, access) {
            tracing::warn!(%busy, "new access still referenced");
        }
        return Err(err);
    }
    let _ = staccess.access.set(access);
    fd.install(EmulatedFile::Access(staccess));
    Ok(())
}

/// `IOMMU_TEST_OP_ACCESS_REPLACE_IOAS` (`iommufd_test_access_replace_ioas()`).
fn access_replace_ioas(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestAccessReplaceIoas>();
    let staccess = access_file(call, cmd.id)?;
    staccess.access()?.replace(&call.ctx, ObjId(args.ioas_id))
}

/// The syzkaller IOVA translation (`__iommufd_test_syz_conv_iova()`): the IOVA argument holds
/// `{u32 nth_area; u32 offset}`; the result is that area's IOVA plus the offset, or 0.
fn syz_conv_iova(iopt: &IoPagetable, iova: u64) -> u64 {
    let nth = (iova & 0xffff_ffff) as usize;
    let offset = iova >> 32;
    iopt.areas()
        .get(nth)
        .map_or(0, |area| area.iova.0.wrapping_add(offset))
}

fn access_syz_iova(call: &Call, access: &Access, iova: u64) -> u64 {
    access
        .ioas_id()
        .and_then(|id| call.ctx.objects().get::<Ioas>(id).ok())
        .map_or(0, |ioas| syz_conv_iova(ioas.iopt(), iova))
}

/// `IOMMU_TEST_OP_ACCESS_PAGES` (`iommufd_test_access_pages()`).
fn access_pages(call: &Call, ucmd: &mut Ucmd<'_, IommuTestCmd>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let mut args = cmd.payload::<TestAccessPages>();
    if args.length > MAX_ACCESS_LENGTH {
        return Err(Errno::ENOMEM);
    }
    if args.flags & !(MOCK_FLAGS_ACCESS_WRITE | MOCK_FLAGS_ACCESS_SYZ) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let staccess = access_file(call, cmd.id)?;
    let access = staccess.access()?;
    if !access.needs_pin_pages() {
        return Err(Errno::EOPNOTSUPP);
    }
    let mut iova = args.iova;
    if args.flags & MOCK_FLAGS_ACCESS_SYZ != 0 {
        iova = access_syz_iova(call, access, iova);
    }
    // The page array.
    if should_fail(FailSite::Alloc) {
        return Err(Errno::ENOMEM);
    }
    let mut items = staccess.lock_items();
    let write = args.flags & MOCK_FLAGS_ACCESS_WRITE != 0;
    let pages = access.pin_pages(Iova(iova), args.length, write)?;
    let unpin = || access.unpin_pages(Iova(iova), args.length);
    if args.uptr != 0 {
        let first = args.uptr.wrapping_sub(iova % PAGE_SIZE);
        if let Err(err) = check_pages(call.caller.memory.as_ref(), first, &pages) {
            unpin();
            return Err(err);
        }
    }
    // The item allocation.
    if should_fail(FailSite::Alloc) {
        unpin();
        return Err(Errno::ENOMEM);
    }
    let id = items.next_id;
    items.next_id = items.next_id.wrapping_add(1);
    args.out_access_pages_id = id;
    ucmd.cmd.set_payload(&args);
    if let Err(err) = ucmd.respond() {
        unpin();
        return Err(err);
    }
    items.items.push(AccessItem {
        iova,
        length: args.length,
        id,
    });
    Ok(())
}

/// `iommufd_test_check_pages()`: page `i` pinned must be the page backing `first + i * PAGE_SIZE`.
fn check_pages(user: &dyn UserMemory, first: u64, pages: &[UserVa]) -> Result<(), Errno> {
    for (i, page) in pages.iter().enumerate() {
        let va = first.wrapping_add(i as u64 * PAGE_SIZE);
        probe_page(user, va)?;
        if page.0 != va & !(PAGE_SIZE - 1) {
            return Err(Errno::EBADE);
        }
    }
    Ok(())
}

/// `IOMMU_TEST_OP_DESTROY_ACCESS_PAGES` (`iommufd_test_access_item_destroy()`).
fn destroy_access_pages(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let id = cmd.payload::<TestDestroyAccessPages>().access_pages_id;
    let staccess = access_file(call, cmd.id)?;
    let access = staccess.access()?;
    let mut items = staccess.lock_items();
    let index = items
        .items
        .iter()
        .position(|item| item.id == id)
        .ok_or(Errno::ENOENT)?;
    let item = items.items.remove(index);
    access.unpin_pages(Iova(item.iova), item.length);
    Ok(())
}

/// `IOMMU_TEST_OP_ACCESS_RW` (`iommufd_test_access_rw()`).
fn access_rw(call: &Call, cmd: &IommuTestCmd) -> Result<(), Errno> {
    let args = cmd.payload::<TestAccessRw>();
    if args.length > MAX_ACCESS_LENGTH {
        return Err(Errno::ENOMEM);
    }
    if args.flags & !(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH | MOCK_FLAGS_ACCESS_SYZ) != 0
    {
        return Err(Errno::EOPNOTSUPP);
    }
    let staccess = access_file(call, cmd.id)?;
    let access = staccess.access()?;
    if should_fail(FailSite::Alloc) {
        return Err(Errno::ENOMEM);
    }
    let user = call.caller.memory.as_ref();
    let mut tmp = vec![0u8; args.length as usize];
    let write = args.flags & MOCK_ACCESS_RW_WRITE != 0;
    if write {
        user.read(UserVa(args.uptr), &mut tmp)
            .map_err(|_| Errno::EFAULT)?;
    }
    let mut iova = args.iova;
    if args.flags & MOCK_FLAGS_ACCESS_SYZ != 0 {
        iova = access_syz_iova(call, access, iova);
    }
    let path = if args.flags & MOCK_ACCESS_RW_SLOW_PATH != 0 {
        AccessPath::Slow
    } else {
        AccessPath::Direct
    };
    if write {
        access.rw(Iova(iova), RwBuf::Write(&tmp), path)
    } else {
        access.rw(Iova(iova), RwBuf::Read(&mut tmp), path)?;
        user.write(UserVa(args.uptr), &tmp)
            .map_err(|_| Errno::EFAULT)
    }
}
