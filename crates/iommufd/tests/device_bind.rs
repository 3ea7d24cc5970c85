//! Device binding, attach/replace/detach and IOMMU_GET_HW_INFO through iommufd's public API and
//! ioctls, with a minimal driver of the test's own (iommufd knows no driver; the mock crate has
//! the selftest-level tests). Expected errnos are the kernel's (reference §1.4, §1.5).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use uiommu_core::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::device::{self, DeviceBinding};
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::hwpt::HwptPaging;
use uiommu_iommufd::ioas::Ioas;
use uiommu_iommufd::object::ObjId;
use uiommu_iommufd::pages::FixedMemlockPolicy;
use uiommu_iommufd::user_memory::ModelMemory;

/// A driver with 4 KiB paging domains over the whole IOVA space; `coherent` answers
/// `CACHE_COHERENCY`, `reserved` is every device's reserved region list.
#[derive(Debug)]
struct TinyDriver {
    coherent: bool,
    reserved: Vec<ReservedRegion>,
}

#[derive(Debug, Default)]
struct TinyDomain {
    map: Mutex<BTreeMap<u64, u64>>,
}

impl DomainOps for TinyDomain {
    fn pgsize_bitmap(&self) -> u64 {
        4096
    }
    fn map_pages(
        &self,
        iova: Iova,
        pa: PhysAddr,
        pgsize: u64,
        n: u64,
        _: Prot,
    ) -> (u64, Result<()>) {
        let mut map = self.map.lock().unwrap();
        for i in 0..n {
            map.insert(iova.0 + i * pgsize, pa.0 + i * pgsize);
        }
        (n * pgsize, Ok(()))
    }
    fn unmap_pages(&self, iova: Iova, pgsize: u64, n: u64) -> u64 {
        let mut map = self.map.lock().unwrap();
        (0..n)
            .filter(|i| map.remove(&(iova.0 + i * pgsize)).is_some())
            .count() as u64
            * pgsize
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Debug)]
struct Blocked;

impl DomainOps for Blocked {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl IommuOps for TinyDriver {
    fn name(&self) -> &str {
        "tiny"
    }
    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        dev.iommu.ok_or(CoreError::NoDevice)
    }
    fn static_default_domain(&self) -> Option<DomainType> {
        Some(DomainType::Blocked)
    }
    fn domain_alloc(
        &self,
        _: &DeviceInfo<'_>,
        request: DomainRequest<'_>,
    ) -> Result<Box<dyn DomainOps>> {
        match request {
            DomainRequest::Blocked => Ok(Box::new(Blocked)),
            DomainRequest::Paging { data: None, .. } | DomainRequest::Dma => {
                Ok(Box::new(TinyDomain::default()))
            }
            _ => Err(CoreError::NotSupported),
        }
    }
    fn capable(&self, _: &DeviceInfo<'_>, cap: Capability) -> bool {
        cap == Capability::CacheCoherency && self.coherent
    }
    fn reserved_regions(&self, _: &DeviceInfo<'_>) -> Vec<ReservedRegion> {
        self.reserved.clone()
    }
}

struct World {
    core: Arc<IommuCore>,
    iommufd: Arc<Iommufd>,
    ctx: Arc<IommufdCtx>,
    caller: Caller,
    memory: Arc<ModelMemory>,
    dev: DeviceId,
}

fn world(coherent: bool, reserved: Vec<ReservedRegion>) -> World {
    let core = Arc::new(IommuCore::default());
    let fwnode = FwNode::new("tiny");
    core.register(
        "tiny0",
        Some(fwnode.clone()),
        Arc::new(TinyDriver { coherent, reserved }),
    )
    .unwrap();
    let dev = core
        .add_device(
            DeviceDesc::platform("dev0"),
            Some(Fwspec {
                fwnode,
                ids: vec![0],
            }),
        )
        .unwrap();
    let iommufd = Iommufd::new(core.clone());
    let memory = Arc::new(ModelMemory::new());
    memory.map(
        uiommu_iommufd::user_memory::UserVa(0x10_0000),
        0x10_0000,
        true,
    );
    let caller = Caller::new(
        memory.clone(),
        Arc::new(FixedMemlockPolicy {
            cap_ipc_lock: true,
            limit: u64::MAX,
            ..Default::default()
        }),
    );
    World {
        ctx: iommufd.open(),
        core,
        iommufd,
        caller,
        memory,
        dev,
    }
}

impl World {
    fn ioas(&self) -> ObjId {
        let reservation = self.ctx.objects().reserve::<Ioas>().unwrap();
        reservation.finalize(Ioas::new())
    }

    fn map(&self, ioas: ObjId, iova: u64) {
        let source = uiommu_iommufd::pages::PageSource {
            memory: self.memory.clone(),
            policy: self.caller.limits.clone(),
            rlimit_mode: Default::default(),
        };
        self.ctx
            .objects()
            .get::<Ioas>(ioas)
            .unwrap()
            .iopt()
            .map_user_pages(
                &source,
                uiommu_iommufd::user_memory::UserVa(0x10_0000),
                0x4000,
                Prot::READ_WRITE,
                uiommu_iommufd::io_pagetable::IovaPlacement::Fixed(Iova(iova)),
            )
            .unwrap();
    }

    fn bind(&self) -> std::result::Result<DeviceBinding, Errno> {
        device::bind(&self.ctx, self.dev)
    }

    fn tiny_pages(&self, hwpt: ObjId) -> usize {
        let hwpt = self.ctx.objects().get::<HwptPaging>(hwpt).unwrap();
        let tiny: &TinyDomain = hwpt.domain().ops().as_any().downcast_ref().unwrap();
        let pages = tiny.map.lock().unwrap().len();
        pages
    }
}

#[test]
fn bind_needs_cache_coherency_and_an_iommu_group() {
    let w = world(false, Vec::new());
    assert_eq!(w.bind().unwrap_err(), Errno::EINVAL);
    let w = world(true, Vec::new());
    let orphan = w
        .core
        .add_device(DeviceDesc::platform("no-iommu"), None)
        .unwrap();
    // A device without an IOMMU is not cache coherent through one either.
    assert_eq!(device::bind(&w.ctx, orphan).unwrap_err(), Errno::EINVAL);
    assert!(w.ctx.objects().is_empty());
}

#[test]
fn bind_claims_dma_ownership_against_kernel_drivers_and_other_contexts() {
    let w = world(true, Vec::new());
    w.core.use_default_domain(w.dev).unwrap();
    assert_eq!(
        w.bind().unwrap_err(),
        Errno::EPERM,
        "a kernel driver uses it"
    );
    w.core.unuse_default_domain(w.dev);
    let binding = w.bind().unwrap();
    let other = w.iommufd.open();
    assert_eq!(device::bind(&other, w.dev).unwrap_err(), Errno::EPERM);
    let again = w.bind().expect("the same context may bind again");
    assert_eq!(
        w.core.use_default_domain(w.dev).unwrap_err(),
        CoreError::Busy("group is owned by a user")
    );
    again.unbind(Some(w.ctx.objects())).unwrap();
    binding.unbind(Some(w.ctx.objects())).unwrap();
    w.core
        .use_default_domain(w.dev)
        .expect("ownership released on unbind");
    assert!(w.ctx.objects().is_empty());
}

#[test]
fn a_bound_device_is_not_user_destroyable_and_attach_holds_the_hwpt() {
    let w = world(true, Vec::new());
    let ioas = w.ioas();
    w.map(ioas, 0x1000_0000);
    let mut binding = w.bind().unwrap();
    assert_eq!(w.ctx.objects().destroy(binding.id()), Err(Errno::EBUSY));
    assert_eq!(binding.attach(&w.ctx, ObjId(99)), Err(Errno::ENOENT));
    assert_eq!(binding.attach(&w.ctx, binding.id()), Err(Errno::EINVAL));
    let hwpt = binding.attach(&w.ctx, ioas).unwrap();
    assert_eq!(w.tiny_pages(hwpt), 4, "filled from the IOAS");
    assert_eq!(binding.device().attached_hwpt(), Some(hwpt));
    assert_eq!(w.ctx.objects().destroy(hwpt), Err(Errno::EBUSY));
    assert_eq!(w.ctx.objects().destroy(ioas), Err(Errno::EBUSY));
    binding.detach(Some(w.ctx.objects()));
    assert!(
        w.ctx.objects().get::<HwptPaging>(hwpt).is_err(),
        "auto hwpt destroyed"
    );
    binding.unbind(Some(w.ctx.objects())).unwrap();
    w.ctx.objects().destroy(ioas).unwrap();
}

#[test]
fn replace_requires_an_attached_device() {
    let w = world(true, Vec::new());
    let ioas = w.ioas();
    let binding = w.bind().unwrap();
    assert_eq!(binding.replace(&w.ctx, ioas), Err(Errno::EINVAL));
    assert!(
        w.ctx
            .objects()
            .get::<Ioas>(ioas)
            .unwrap()
            .hwpts()
            .is_empty(),
        "no hwpt left behind"
    );
    binding.unbind(Some(w.ctx.objects())).unwrap();
}

#[test]
fn reserved_regions_go_into_the_ioas_and_conflicts_fail_the_attach() {
    let region = ReservedRegion {
        start: Iova(0x2000_0000),
        last: Iova(0x2000_ffff),
        prot: Prot::READ_WRITE,
        kind: ReservedKind::Reserved,
    };
    let relaxable = ReservedRegion {
        start: Iova(0x1000_0000),
        last: Iova(0x1000_ffff),
        kind: ReservedKind::DirectRelaxable,
        ..region
    };
    let w = world(true, vec![region, relaxable]);
    let busy = w.ioas();
    w.map(busy, 0x2000_0000);
    let mut binding = w.bind().unwrap();
    assert_eq!(binding.attach(&w.ctx, busy), Err(Errno::EADDRINUSE));
    assert!(w
        .ctx
        .objects()
        .get::<Ioas>(busy)
        .unwrap()
        .hwpts()
        .is_empty());
    let free = w.ioas();
    w.map(free, 0x1000_0000);
    binding
        .attach(&w.ctx, free)
        .expect("relaxable regions are ignored");
    let iopt_holes = w
        .ctx
        .objects()
        .get::<Ioas>(free)
        .unwrap()
        .iopt()
        .iova_ranges();
    assert!(iopt_holes
        .iter()
        .all(|r| r.last.0 < 0x2000_0000 || r.start.0 > 0x2000_ffff));
    binding.detach(Some(w.ctx.objects()));
    let holes = w
        .ctx
        .objects()
        .get::<Ioas>(free)
        .unwrap()
        .iopt()
        .iova_ranges();
    assert_eq!(holes.len(), 1, "detach removes the device's reservations");
    binding.unbind(Some(w.ctx.objects())).unwrap();
}

#[test]
fn test_cmd_without_a_hook_is_enotty_and_hw_info_without_driver_data_is_type_none() {
    let w = world(true, Vec::new());
    let cmd = IommuTestCmd::new(0, &TestMemoryLimit { limit: 100 });
    let arg = 0x10_0000u64;
    w.memory
        .write_bytes(arg, zerocopy::IntoBytes::as_bytes(&cmd));
    assert_eq!(
        w.ctx.ioctl(&w.caller, IOMMU_TEST_CMD, arg),
        Err(Errno::ENOTTY)
    );
    let binding = w.bind().unwrap();
    let info = IommuHwInfo {
        size: size_of::<IommuHwInfo>() as u32,
        dev_id: binding.id().raw(),
        data_len: 16,
        data_uptr: arg + 0x100,
        out_data_type: 0xffff,
        ..Default::default()
    };
    w.memory.write_bytes(arg + 0x100, &[0xaa; 16]);
    w.memory
        .write_bytes(arg, zerocopy::IntoBytes::as_bytes(&info));
    w.ctx.ioctl(&w.caller, IOMMU_GET_HW_INFO, arg).unwrap();
    let mut out = IommuHwInfo::default();
    w.memory
        .read_bytes(arg, zerocopy::IntoBytes::as_mut_bytes(&mut out));
    assert_eq!(
        (out.out_data_type, out.data_len, out.out_capabilities),
        (IOMMU_HW_INFO_TYPE_NONE, 0, 0)
    );
    let mut data = [0xffu8; 16];
    w.memory.read_bytes(arg + 0x100, &mut data);
    assert_eq!(data, [0; 16], "the whole user buffer is zeroed");
    binding.unbind(Some(w.ctx.objects())).unwrap();
}

/// Byte access to the model memory for building ioctl arguments.
trait Bytes {
    fn write_bytes(&self, addr: u64, data: &[u8]);
    fn read_bytes(&self, addr: u64, out: &mut [u8]);
}

impl Bytes for ModelMemory {
    fn write_bytes(&self, addr: u64, data: &[u8]) {
        uiommu_iommufd::user_memory::UserMemory::write(
            self,
            uiommu_iommufd::user_memory::UserVa(addr),
            data,
        )
        .unwrap();
    }
    fn read_bytes(&self, addr: u64, out: &mut [u8]) {
        uiommu_iommufd::user_memory::UserMemory::read(
            self,
            uiommu_iommufd::user_memory::UserVa(addr),
            out,
        )
        .unwrap();
    }
}
