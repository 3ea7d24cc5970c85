//! Helpers for integration tests that drive `/dev/iommu` in process, shared by this crate's
//! tests and the mock driver's selftests so that both speak to the context the same way.
//!
//! Compiled only with the `test-support` feature, which the two crates enable through their
//! dev-dependencies; no release build contains it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{
    IommuDestroy, IommuIoasAlloc, IommuIoasUnmap, IOMMU_DESTROY, IOMMU_IOAS_ALLOC,
    IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_UNMAP,
};
use crate::ctx::{Caller, IommufdCtx};
use crate::errno::Errno;
use crate::pages;
use crate::process_memory::ProcessMemory;
use crate::user_memory::{MmId, UserMemory, UserMemoryError, UserVa, PAGE_SIZE};

/// `IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE`.
pub const RW: u32 = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;

/// A VA that is never mapped in this process (the first page above NULL), for faulting
/// pointers.
pub const UNMAPPED_VA: u64 = PAGE_SIZE;

/// This process's memory under an address-space identity of its own, so that pin counts of
/// tests running in parallel stay apart; optionally refusing reads or writes of one range (a
/// struct the kernel's `copy_from_user`/`copy_to_user` cannot reach).
///
/// Locking: each fence is behind its own mutex, held only to copy it out or replace it.
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

impl Default for TaggedMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl TaggedMemory {
    /// This process's memory with a fresh identity and no fence.
    ///
    /// # Panics
    /// `/proc/self` cannot be read.
    pub fn new() -> TaggedMemory {
        // Real start times count clock ticks since boot, so counting down from the top cannot
        // meet this process's own identity.
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

/// A page-aligned, zeroed, writable region of this process's heap, for `user_va` arguments.
#[derive(Debug)]
pub struct Buffer {
    bytes: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Buffer {
    /// `len` bytes starting on a page boundary.
    pub fn new(len: usize) -> Buffer {
        let bytes = vec![0u8; len + PAGE_SIZE as usize];
        let start = bytes.as_ptr() as usize;
        let offset = start.next_multiple_of(PAGE_SIZE as usize) - start;
        Buffer { bytes, offset, len }
    }

    /// The first byte's address in this process.
    pub fn addr(&self) -> u64 {
        (self.bytes.as_ptr() as usize + self.offset) as u64
    }

    /// The length asked for.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the length is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A context and the caller that issues its ioctls, with one-line wrappers that pass real
/// `#[repr(C)]` structs through [`IommufdCtx::ioctl`] and return what the kernel writes back.
pub trait IommufdClient {
    /// The context the ioctls go to.
    fn ctx(&self) -> &Arc<IommufdCtx>;

    /// Who issues them: whose memory the pointers refer to, and its limits.
    fn caller(&self) -> &Caller;

    /// `ioctl(fd, cmd, arg)` with `arg` pointing at `cmd_struct`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn ioctl<T: IntoBytes + FromBytes>(&self, cmd: u32, cmd_struct: &mut T) -> Result<i32, Errno> {
        self.ctx()
            .ioctl(self.caller(), cmd, std::ptr::from_mut(cmd_struct) as u64)
    }

    /// `IOMMU_IOAS_ALLOC`; returns the new IOAS's id.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn try_ioas_alloc(&self) -> Result<u32, Errno> {
        let mut cmd = IommuIoasAlloc {
            size: size_of::<IommuIoasAlloc>() as u32,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_ALLOC, &mut cmd)?;
        Ok(cmd.out_ioas_id)
    }

    /// `IOMMU_IOAS_ALLOC`, which the test expects to succeed.
    ///
    /// # Panics
    /// The ioctl fails.
    fn ioas_alloc(&self) -> u32 {
        self.try_ioas_alloc().expect("IOMMU_IOAS_ALLOC")
    }

    /// `IOMMU_DESTROY` of object `id`.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn destroy(&self, id: u32) -> Result<(), Errno> {
        let mut cmd = IommuDestroy {
            size: size_of::<IommuDestroy>() as u32,
            id,
        };
        self.ioctl(IOMMU_DESTROY, &mut cmd).map(|_| ())
    }

    /// `IOMMU_IOAS_UNMAP`; returns the length written back.
    ///
    /// # Errors
    /// The ioctl's errno.
    fn unmap(&self, ioas_id: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        let mut cmd = IommuIoasUnmap {
            size: size_of::<IommuIoasUnmap>() as u32,
            ioas_id,
            iova,
            length,
        };
        self.ioctl(IOMMU_IOAS_UNMAP, &mut cmd)?;
        Ok(cmd.length)
    }

    /// The caller's address space, as pin counts know it.
    fn mm(&self) -> MmId {
        self.caller().memory.mm()
    }

    /// Pages currently pinned in the caller's address space.
    fn pins(&self) -> u64 {
        pages::total_pins(self.mm())
    }
}
