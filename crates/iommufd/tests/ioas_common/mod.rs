//! Helpers shared by the IOAS and VFIO compat tests: a context opened on a fresh `/dev/iommu`, a
//! caller whose pointers are this process's memory (under a private address-space identity, so
//! pin counts of parallel tests stay apart), page-aligned buffers, and one-line wrappers that
//! issue real ioctls with `#[repr(C)]` structs through `IommufdCtx::ioctl`.
#![allow(dead_code)] // Each test binary uses its own subset.

#[path = "../io_pagetable_common/mod.rs"]
pub mod domains;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uiommu_core::{CoreConfig, IommuCore};
use uiommu_iommufd::abi::*;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::ioas::Ioas;
use uiommu_iommufd::object::{ObjId, ObjRef};
use uiommu_iommufd::pages::{self, FixedMemlockPolicy, LockedVm};
use uiommu_iommufd::process_memory::ProcessMemory;
use uiommu_iommufd::user_memory::{MmId, UserMemory, UserMemoryError, UserVa, PAGE_SIZE};
use zerocopy::{FromBytes, IntoBytes};

pub use domains::RecordingDomain;

/// This process's memory under an address-space identity of its own, optionally refusing
/// writes to one range (a response struct the kernel's `copy_to_user` cannot write).
#[derive(Debug)]
pub struct TaggedMemory {
    inner: ProcessMemory,
    mm: MmId,
    unwritable: Mutex<Option<(u64, u64)>>,
    unreadable: Mutex<Option<(u64, u64)>>,
}

/// Whether `[addr, addr + len)` touches the half-open range `fence`.
fn touches(fence: Option<(u64, u64)>, addr: UserVa, len: usize) -> bool {
    fence.is_some_and(|(start, end)| addr.0 < end && addr.0 + len as u64 > start)
}

impl TaggedMemory {
    pub fn new() -> TaggedMemory {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let inner = ProcessMemory::current().expect("/proc/self readable");
        let mm = MmId {
            pid: inner.mm().pid,
            start_time: u64::MAX - NEXT.fetch_add(1, Ordering::Relaxed),
        };
        TaggedMemory {
            inner,
            mm,
            unwritable: Mutex::new(None),
            unreadable: Mutex::new(None),
        }
    }

    /// Make writes that touch `[addr, addr + len)` fail; `len` 0 lifts the restriction.
    pub fn refuse_writes(&self, addr: u64, len: u64) {
        *self.unwritable.lock().unwrap() = (len != 0).then_some((addr, addr + len));
    }

    /// Make reads that touch `[addr, addr + len)` fail; `len` 0 lifts the restriction.
    pub fn refuse_reads(&self, addr: u64, len: u64) {
        *self.unreadable.lock().unwrap() = (len != 0).then_some((addr, addr + len));
    }
}

impl UserMemory for TaggedMemory {
    fn mm(&self) -> MmId {
        self.mm
    }

    fn read(&self, addr: UserVa, buf: &mut [u8]) -> Result<(), UserMemoryError> {
        if touches(*self.unreadable.lock().unwrap(), addr, buf.len()) {
            return Err(UserMemoryError::Fault {
                addr,
                len: buf.len() as u64,
            });
        }
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: UserVa, data: &[u8]) -> Result<(), UserMemoryError> {
        if touches(*self.unwritable.lock().unwrap(), addr, data.len()) {
            return Err(UserMemoryError::Fault {
                addr,
                len: data.len() as u64,
            });
        }
        self.inner.write(addr, data)
    }

    fn probe(&self, addr: UserVa, len: u64, writable: bool) -> Result<(), UserMemoryError> {
        self.inner.probe(addr, len, writable)
    }
}

/// A page-aligned, writable region of this process's heap.
#[derive(Debug)]
pub struct Buffer {
    bytes: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Buffer {
    pub fn new(len: usize) -> Buffer {
        let bytes = vec![0u8; len + PAGE_SIZE as usize];
        let start = bytes.as_ptr() as usize;
        let offset = start.next_multiple_of(PAGE_SIZE as usize) - start;
        Buffer { bytes, offset, len }
    }

    pub fn addr(&self) -> u64 {
        (self.bytes.as_ptr() as usize + self.offset) as u64
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }
}

/// A VA that is never mapped in this process (the first page above NULL).
pub const UNMAPPED_VA: u64 = PAGE_SIZE;

/// One context and the caller that issues its ioctls.
#[derive(Debug)]
pub struct Fixture {
    pub iommufd: Arc<Iommufd>,
    pub ctx: Arc<IommufdCtx>,
    pub caller: Caller,
    pub memory: Arc<TaggedMemory>,
    pub policy: Arc<FixedMemlockPolicy>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A `/dev/iommu` context; the caller has no capability and no memlock limit.
    pub fn new() -> Fixture {
        Self::build(false, u64::MAX, false)
    }

    /// A context opened as `/dev/vfio/vfio`.
    pub fn vfio() -> Fixture {
        Self::build(true, u64::MAX, false)
    }

    /// A context whose caller may pin `limit` bytes, without `CAP_IPC_LOCK`.
    pub fn with_memlock_limit(limit: u64) -> Fixture {
        Self::build(false, limit, false)
    }

    /// A context whose caller has `CAP_SYS_RESOURCE`.
    pub fn privileged() -> Fixture {
        Self::build(false, u64::MAX, true)
    }

    fn build(vfio: bool, limit: u64, cap_sys_resource: bool) -> Fixture {
        let iommufd = Iommufd::new(Arc::new(IommuCore::new(CoreConfig::default())));
        let ctx = if vfio {
            iommufd.open_vfio()
        } else {
            iommufd.open()
        };
        let memory = Arc::new(TaggedMemory::new());
        let policy = Arc::new(FixedMemlockPolicy {
            cap_ipc_lock: false,
            limit,
            user: Arc::new(LockedVm::default()),
            mm: Arc::new(LockedVm::default()),
        });
        let mut caller = Caller::new(memory.clone(), policy.clone());
        caller.cap_sys_resource = cap_sys_resource;
        Fixture {
            iommufd,
            ctx,
            caller,
            memory,
            policy,
        }
    }

    /// The caller's address space, as pin counts know it.
    pub fn mm(&self) -> MmId {
        self.memory.mm()
    }

    /// Pages currently pinned in the caller's address space.
    pub fn pins(&self) -> u64 {
        pages::total_pins(self.mm())
    }

    /// `ioctl(fd, cmd, arg)` with `arg` pointing at `cmd_struct`.
    pub fn ioctl<T: IntoBytes + FromBytes>(
        &self,
        cmd: u32,
        cmd_struct: &mut T,
    ) -> Result<i32, Errno> {
        self.ctx
            .ioctl(&self.caller, cmd, std::ptr::from_mut(cmd_struct) as u64)
    }

    /// `ioctl(fd, cmd, arg)` with an integer (or deliberately bad pointer) argument.
    pub fn ioctl_raw(&self, cmd: u32, arg: u64) -> Result<i32, Errno> {
        self.ctx.ioctl(&self.caller, cmd, arg)
    }

    pub fn try_ioas_alloc(&self) -> Result<u32, Errno> {
        let mut cmd = IommuIoasAlloc {
            size: size_of::<IommuIoasAlloc>() as u32,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_ALLOC, &mut cmd)?;
        Ok(cmd.out_ioas_id)
    }

    pub fn ioas_alloc(&self) -> u32 {
        self.try_ioas_alloc().expect("IOMMU_IOAS_ALLOC")
    }

    pub fn destroy(&self, id: u32) -> Result<(), Errno> {
        let mut cmd = IommuDestroy {
            size: size_of::<IommuDestroy>() as u32,
            id,
        };
        self.ioctl(IOMMU_DESTROY, &mut cmd).map(|_| ())
    }

    /// `IOMMU_IOAS_MAP`; returns the IOVA written back.
    pub fn map(
        &self,
        ioas_id: u32,
        flags: u32,
        user_va: u64,
        length: u64,
        iova: u64,
    ) -> Result<u64, Errno> {
        let mut cmd = IommuIoasMap {
            size: size_of::<IommuIoasMap>() as u32,
            flags,
            ioas_id,
            user_va,
            length,
            iova,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_MAP, &mut cmd)?;
        Ok(cmd.iova)
    }

    /// A readable and writable map at a fixed IOVA.
    pub fn map_fixed(
        &self,
        ioas_id: u32,
        user_va: u64,
        length: u64,
        iova: u64,
    ) -> Result<u64, Errno> {
        self.map(
            ioas_id,
            RW | IOMMU_IOAS_MAP_FIXED_IOVA,
            user_va,
            length,
            iova,
        )
    }

    /// `IOMMU_IOAS_UNMAP`; returns the length written back.
    pub fn unmap(&self, ioas_id: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        let mut cmd = IommuIoasUnmap {
            size: size_of::<IommuIoasUnmap>() as u32,
            ioas_id,
            iova,
            length,
        };
        self.ioctl(IOMMU_IOAS_UNMAP, &mut cmd)?;
        Ok(cmd.length)
    }

    /// `IOMMU_IOAS_COPY`; returns the destination IOVA written back.
    pub fn copy(
        &self,
        dst_ioas_id: u32,
        src_ioas_id: u32,
        flags: u32,
        length: u64,
        dst_iova: u64,
        src_iova: u64,
    ) -> Result<u64, Errno> {
        let mut cmd = IommuIoasCopy {
            size: size_of::<IommuIoasCopy>() as u32,
            flags,
            dst_ioas_id,
            src_ioas_id,
            length,
            dst_iova,
            src_iova,
        };
        self.ioctl(IOMMU_IOAS_COPY, &mut cmd)?;
        Ok(cmd.dst_iova)
    }

    /// `IOMMU_IOAS_ALLOW_IOVAS` with `ranges` as `(start, last)`.
    pub fn allow_iovas(&self, ioas_id: u32, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        let mut array: Vec<IommuIovaRange> = ranges
            .iter()
            .map(|&(start, last)| IommuIovaRange { start, last })
            .collect();
        let mut cmd = IommuIoasAllowIovas {
            size: size_of::<IommuIoasAllowIovas>() as u32,
            ioas_id,
            num_iovas: array.len() as u32,
            allowed_iovas: array.as_mut_ptr() as u64,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd).map(|_| ())
    }

    /// `IOMMU_IOAS_IOVA_RANGES` with room for `capacity` ranges: the command as written back,
    /// the ranges, and the ioctl's result.
    pub fn iova_ranges(
        &self,
        ioas_id: u32,
        capacity: u32,
    ) -> (IommuIoasIovaRanges, Vec<(u64, u64)>, Result<i32, Errno>) {
        let mut array = vec![IommuIovaRange::default(); capacity as usize];
        let mut cmd = IommuIoasIovaRanges {
            size: size_of::<IommuIoasIovaRanges>() as u32,
            ioas_id,
            num_iovas: capacity,
            allowed_iovas: array.as_mut_ptr() as u64,
            ..Default::default()
        };
        let result = self.ioctl(IOMMU_IOAS_IOVA_RANGES, &mut cmd);
        let ranges = array.iter().map(|r| (r.start, r.last)).collect();
        (cmd, ranges, result)
    }

    /// `IOMMU_OPTION`: the command as written back and the result.
    pub fn option(
        &self,
        option_id: u32,
        op: u16,
        object_id: u32,
        val64: u64,
    ) -> (IommuOption, Result<i32, Errno>) {
        let mut cmd = IommuOption {
            size: size_of::<IommuOption>() as u32,
            option_id,
            op,
            object_id,
            val64,
            ..Default::default()
        };
        let result = self.ioctl(IOMMU_OPTION, &mut cmd);
        (cmd, result)
    }

    /// The IOAS object itself, for attaching test domains and reading its areas. Drop it before
    /// destroying the IOAS.
    pub fn ioas(&self, id: u32) -> ObjRef<'_, Ioas> {
        self.ctx
            .objects()
            .get::<Ioas>(ObjId(id))
            .expect("IOAS exists")
    }

    /// Attach `domain` to the IOAS (what a HWPT does), filling it with the IOAS's areas.
    pub fn attach(&self, ioas_id: u32, domain: &Arc<RecordingDomain>) {
        self.ioas(ioas_id)
            .iopt()
            .add_domain(domain.as_mapper())
            .expect("attach domain");
    }

    /// The IOAS's areas as `(iova, length)`.
    pub fn areas(&self, ioas_id: u32) -> Vec<(u64, u64)> {
        self.ioas(ioas_id)
            .iopt()
            .areas()
            .iter()
            .map(|area| (area.iova.0, area.length))
            .collect()
    }
}

/// READABLE | WRITEABLE.
pub const RW: u32 = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
