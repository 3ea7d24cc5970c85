//! The ACCESS object through its driver API (`iommufd_access_*`): attach/replace/detach
//! rules, pinning, the unmap notification and its `EDEADLOCK` give-up (reference §2.4).

use std::sync::{Arc, Mutex, Weak};

use uiommu_core::{IommuCore, Iova, Prot};
use uiommu_iommufd::access::{self, Access, AccessOps};
use uiommu_iommufd::ctx::{Iommufd, IommufdCtx};
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::io_pagetable::{AccessPath, IovaPlacement};
use uiommu_iommufd::ioas::Ioas;
use uiommu_iommufd::object::{ObjId, UsersRef};
use uiommu_iommufd::pages::{self, FixedMemlockPolicy, PageSource, RwBuf};
use uiommu_iommufd::user_memory::{ModelMemory, UserMemory, UserVa, PAGE_SIZE};

const UPTR: u64 = 0x40_0000;
const IOVA: u64 = 0x100_0000;

/// A driver that records unmap calls and unpins what it pinned, unless `stubborn`.
#[derive(Debug, Default)]
struct Driver {
    access: Mutex<Option<UsersRef<Access>>>,
    pinned: Mutex<Vec<(u64, u64)>>,
    calls: Mutex<Vec<(u64, u64)>>,
    stubborn: bool,
}

impl AccessOps for Driver {
    fn unmap(&self, iova: Iova, length: u64) {
        self.calls.lock().unwrap().push((iova.0, length));
        if self.stubborn {
            return;
        }
        let access = self.access.lock().unwrap();
        let last = iova.0.saturating_add(length - 1);
        self.pinned.lock().unwrap().retain(|&(start, len)| {
            if start > last || start + len - 1 < iova.0 {
                return true;
            }
            access.as_ref().unwrap().unpin_pages(Iova(start), len);
            false
        });
    }
}

struct World {
    ctx: Arc<IommufdCtx>,
    memory: Arc<ModelMemory>,
    source: PageSource,
}

fn world() -> World {
    let iommufd = Iommufd::new(Arc::new(IommuCore::default()));
    let memory = Arc::new(ModelMemory::new());
    memory.map(UserVa(UPTR), 16 * PAGE_SIZE, true);
    let source = PageSource {
        memory: memory.clone(),
        policy: Arc::new(FixedMemlockPolicy {
            cap_ipc_lock: true,
            limit: u64::MAX,
            ..Default::default()
        }),
        rlimit_mode: Default::default(),
    };
    World {
        ctx: iommufd.open(),
        memory,
        source,
    }
}

impl World {
    fn ioas(&self) -> ObjId {
        self.ctx
            .objects()
            .reserve::<Ioas>()
            .unwrap()
            .finalize(Ioas::new())
    }

    fn map(&self, ioas: ObjId, prot: Prot) {
        self.ctx
            .objects()
            .get::<Ioas>(ioas)
            .unwrap()
            .iopt()
            .map_user_pages(
                &self.source,
                UserVa(UPTR),
                4 * PAGE_SIZE,
                prot,
                IovaPlacement::Fixed(Iova(IOVA)),
            )
            .unwrap();
    }

    fn unmap(&self, ioas: ObjId) -> Result<u64, i32> {
        self.ctx
            .objects()
            .get::<Ioas>(ioas)
            .unwrap()
            .iopt()
            .unmap_iova(Iova(IOVA), 4 * PAGE_SIZE)
            .map_err(|e| e.errno())
    }

    fn access(&self, driver: &Arc<Driver>, pin: bool) -> UsersRef<Access> {
        let ops: Arc<dyn AccessOps> = driver.clone();
        let weak: Weak<dyn AccessOps> = Arc::downgrade(&ops);
        let access = access::create(&self.ctx, weak, pin).unwrap();
        *driver.access.lock().unwrap() = Some(access.clone());
        access
    }

    fn pins(&self) -> u64 {
        pages::total_pins(self.memory.mm())
    }
}

#[test]
fn attach_replace_and_detach_follow_the_kernel_rules() {
    let w = world();
    let (a, b) = (w.ioas(), w.ioas());
    let driver = Arc::new(Driver::default());
    let access = w.access(&driver, true);
    assert_eq!(
        access.replace(&w.ctx, a),
        Err(Errno::ENOENT),
        "not attached"
    );
    assert_eq!(access.attach(&w.ctx, ObjId(99)), Err(Errno::ENOENT));
    access.attach(&w.ctx, a).unwrap();
    assert_eq!(
        access.attach(&w.ctx, b),
        Err(Errno::EINVAL),
        "already attached"
    );
    assert_eq!(w.ctx.objects().destroy(a), Err(Errno::EBUSY));
    assert_eq!(
        w.ctx
            .objects()
            .get::<Ioas>(a)
            .unwrap()
            .iopt()
            .iova_alignment(),
        PAGE_SIZE,
        "a pinning access needs page alignment"
    );
    access.replace(&w.ctx, b).unwrap();
    assert_eq!(access.ioas_id(), Some(b));
    assert_eq!(
        *driver.calls.lock().unwrap(),
        vec![(0, u64::MAX)],
        "leaving an IOAS asks the driver to unpin everything"
    );
    w.ctx.objects().destroy(a).unwrap();
    access.detach();
    assert_eq!(access.ioas_id(), None);
    w.ctx.objects().destroy(b).unwrap();
    *driver.access.lock().unwrap() = None;
    access::destroy(&w.ctx, access).unwrap();
    assert!(w.ctx.objects().is_empty());
}

#[test]
fn pins_are_checked_and_unmap_notifies_the_driver() {
    let w = world();
    let ioas = w.ioas();
    w.map(ioas, Prot::READ);
    let driver = Arc::new(Driver::default());
    let access = w.access(&driver, true);
    assert_eq!(
        access.pin_pages(Iova(IOVA), PAGE_SIZE, false),
        Err(Errno::ENOENT)
    );
    access.attach(&w.ctx, ioas).unwrap();
    assert_eq!(access.pin_pages(Iova(IOVA), 0, false), Err(Errno::EINVAL));
    assert_eq!(
        access.pin_pages(Iova(u64::MAX), 2, false),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(
        access.pin_pages(Iova(IOVA), PAGE_SIZE, true),
        Err(Errno::EPERM)
    );
    let pfns = access.pin_pages(Iova(IOVA), 2 * PAGE_SIZE, false).unwrap();
    assert_eq!(pfns, vec![UserVa(UPTR), UserVa(UPTR + PAGE_SIZE)]);
    driver.pinned.lock().unwrap().push((IOVA, 2 * PAGE_SIZE));
    assert_eq!(w.pins(), 2);
    assert_eq!(w.unmap(ioas), Ok(4 * PAGE_SIZE));
    assert_eq!(*driver.calls.lock().unwrap(), vec![(IOVA, 4 * PAGE_SIZE)]);
    assert_eq!(w.pins(), 0);
    *driver.access.lock().unwrap() = None;
    access::destroy(&w.ctx, access).unwrap();
}

#[test]
fn an_access_that_never_unpins_makes_unmap_give_up_with_edeadlock() {
    let w = world();
    let ioas = w.ioas();
    w.map(ioas, Prot::READ_WRITE);
    let driver = Arc::new(Driver {
        stubborn: true,
        ..Driver::default()
    });
    let access = w.access(&driver, true);
    access.attach(&w.ctx, ioas).unwrap();
    access.pin_pages(Iova(IOVA), PAGE_SIZE, true).unwrap();
    assert_eq!(w.unmap(ioas), Err(libc::EDEADLOCK));
    assert_eq!(
        driver.calls.lock().unwrap().len(),
        101,
        "the first call and 100 retries"
    );
    access.unpin_pages(Iova(IOVA), PAGE_SIZE);
    assert_eq!(w.unmap(ioas), Ok(4 * PAGE_SIZE));
    *driver.access.lock().unwrap() = None;
    access::destroy(&w.ctx, access).unwrap();
    assert_eq!(w.pins(), 0);
}

#[test]
fn an_access_without_pin_support_reads_and_writes_only() {
    let w = world();
    let ioas = w.ioas();
    w.map(ioas, Prot::READ_WRITE);
    let driver = Arc::new(Driver::default());
    let access = w.access(&driver, false);
    access.attach(&w.ctx, ioas).unwrap();
    assert_eq!(
        access.pin_pages(Iova(IOVA), PAGE_SIZE, false),
        Err(Errno::EINVAL)
    );
    access
        .rw(Iova(IOVA + 10), RwBuf::Write(b"hello"), AccessPath::Direct)
        .unwrap();
    let mut out = [0u8; 5];
    w.memory.read(UserVa(UPTR + 10), &mut out).unwrap();
    assert_eq!(&out, b"hello");
    let mut back = [0u8; 5];
    access
        .rw(Iova(IOVA + 10), RwBuf::Read(&mut back), AccessPath::Slow)
        .unwrap();
    assert_eq!(&back, b"hello");
    assert_eq!(
        access.rw(
            Iova(IOVA + 4 * PAGE_SIZE),
            RwBuf::Read(&mut back),
            AccessPath::Direct
        ),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        w.ctx
            .objects()
            .get::<Ioas>(ioas)
            .unwrap()
            .iopt()
            .iova_alignment(),
        1
    );
    *driver.access.lock().unwrap() = None;
    access::destroy(&w.ctx, access).unwrap();
}
