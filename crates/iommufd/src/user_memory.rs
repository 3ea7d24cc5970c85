//! The caller's memory, as iommufd sees it: the seam between the engine and whoever hosts it.
//!
//! The kernel reaches user memory with `copy_from_user`, `copy_to_user` and
//! `pin_user_pages`. uiommu reaches it only through [`UserMemory`], so the engine never touches
//! a raw pointer: the in-process implementation validates every range before it copies, and a
//! test can substitute a model.
//!
//! A "physical frame" of user memory is its page-aligned virtual address within one address
//! space ([`MmId`]): stable while the page is mapped, and contiguous whenever the virtual range
//! is, which is what the mock driver's huge IOPTEs need.

use std::fmt;

/// A virtual address in the caller's address space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UserVa(pub u64);

impl UserVa {
    /// `self + offset`, or `None` on wraparound.
    pub fn checked_add(self, offset: u64) -> Option<UserVa> {
        self.0.checked_add(offset).map(UserVa)
    }
}

impl fmt::Debug for UserVa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserVa({:#x})", self.0)
    }
}

/// Identity of one address space (the kernel's `mm_struct`): a process id plus its start time,
/// so a recycled pid is never mistaken for the process that mapped the memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MmId {
    /// The process id.
    pub pid: u32,
    /// Start time of the process (clock ticks since boot, `/proc/PID/stat` field 22).
    pub start_time: u64,
}

/// Why a user-memory operation failed; the ioctl boundary turns every variant into `EFAULT`,
/// except [`UserMemoryError::Gone`], which pinning reports as `EFAULT` too but tests can tell apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserMemoryError {
    /// Some byte of the range is not mapped (or not writable when writing).
    #[error("user range {addr:?}+{len:#x} is not fully accessible")]
    Fault {
        /// Start of the range.
        addr: UserVa,
        /// Length of the range.
        len: u64,
    },
    /// The address space that owns the range no longer exists.
    #[error("address space {0:?} is gone")]
    Gone(MmId),
}

/// Access to one address space's memory: the consumer-side seam of the engine.
///
/// Implementations must be safe for any input: an unmapped or partly unmapped range is an
/// error, never undefined behaviour. Methods take `&self` because one context is used from many
/// threads at once.
pub trait UserMemory: Send + Sync + fmt::Debug {
    /// The address space this handle reads and writes.
    fn mm(&self) -> MmId;

    /// Copy `buf.len()` bytes from `addr` (`copy_from_user`). All or nothing.
    fn read(&self, addr: UserVa, buf: &mut [u8]) -> Result<(), UserMemoryError>;

    /// Copy `data` to `addr` (`copy_to_user`). All or nothing.
    fn write(&self, addr: UserVa, data: &[u8]) -> Result<(), UserMemoryError>;

    /// Check that `[addr, addr + len)` is mapped, and writable when `writable` is set, as
    /// `pin_user_pages` would before pinning. `len == 0` always succeeds.
    fn probe(&self, addr: UserVa, len: u64, writable: bool) -> Result<(), UserMemoryError>;

    /// Pin `[addr, addr + len)` (`pin_user_pages()`): check it as [`UserMemory::probe`] does,
    /// then hold whatever pages of it this memory can keep reachable independently of the
    /// mapping, for as long as the returned holds live.
    ///
    /// The kernel's pin holds the physical pages, so a pinned page stays readable after the
    /// address space that mapped it unmaps it or exits. A user-space memory can do that only
    /// for some pages (see [`crate::shared_alias`]); the pages it does not hold are reached
    /// through [`UserMemory::read`] and [`UserMemory::write`], so only while the address space
    /// lives. Holding nothing is always correct, and is what this default does.
    ///
    /// `addr` is page aligned and `len` a multiple of [`PAGE_SIZE`]. The runs returned are
    /// page aligned, disjoint and inside the range; a run that is not is ignored by the engine.
    ///
    /// # Errors
    /// As [`UserMemory::probe`]; on error nothing is held.
    fn pin(&self, addr: UserVa, len: u64, writable: bool) -> Result<Vec<HeldRun>, UserMemoryError> {
        self.probe(addr, len, writable).map(|()| Vec::new())
    }
}

/// Pinned pages kept reachable whatever later becomes of the mapping they came from: the
/// part of a kernel pin that holds the physical pages.
///
/// Offsets count bytes from the first held page. The engine reads and writes held pages only
/// once the address space that mapped them is gone, as the kernel's `iopt_pages_rw_slow()`
/// falls back to the pinned PFNs then; while it lives, copies go through the mapping, as the
/// kernel's `copy_to_user` fast path does.
pub trait HeldPages: Send + Sync + fmt::Debug {
    /// Number of pages held.
    fn npages(&self) -> u64;

    /// Copy `buf.len()` bytes from byte `offset` of the held pages. A range that does not fit
    /// in [`HeldPages::npages`] pages is an error.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), UserMemoryError>;

    /// Copy `data` to byte `offset` of the held pages. A range that does not fit is an error;
    /// so is writing pages held read-only.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), UserMemoryError>;

    /// Splits the hold at page `at`: `self` keeps pages `[0, at)` and the result holds
    /// `[at, npages)`, each released on its own. `at` beyond `npages` is taken as `npages`.
    fn split_off(&mut self, at: u64) -> Box<dyn HeldPages>;
}

/// One run of pages that [`UserMemory::pin`] holds: the user VA of its first page and the
/// hold, which covers [`HeldPages::npages`] pages from there.
#[derive(Debug)]
pub struct HeldRun {
    /// User VA of the first held page (page aligned).
    pub addr: UserVa,
    /// The held pages.
    pub pages: Box<dyn HeldPages>,
}

/// The page size the engine reasons in: pins, "PFNs" and accounting are per 4 KiB page.
pub const PAGE_SIZE: u64 = 4096;

/// A model address space: the [`UserMemory`] of tests and benchmarks that must not depend on
/// the host's memory.
///
/// It holds page-granular mappings, each readable and optionally writable, with zero-filled
/// contents allocated on first write, so a mapping of 1 GiB that is never written costs
/// nothing. Every instance gets its own [`MmId`] (a pid above the kernel's `PID_MAX_LIMIT`,
/// so it never names a real process), which keeps the process-wide pin counters of parallel
/// tests apart.
///
/// Locking: one `RwLock` over the mappings and contents; every method takes it once.
#[derive(Debug)]
pub struct ModelMemory {
    mm: MmId,
    state: std::sync::RwLock<ModelState>,
}

#[derive(Debug, Default)]
struct ModelState {
    /// Mapped ranges: first page VA → (last byte, writable). Never overlapping.
    ranges: std::collections::BTreeMap<u64, (u64, bool)>,
    /// Contents of pages written at least once, keyed by page VA.
    pages: std::collections::HashMap<u64, Box<[u8]>>,
    /// Set by [`ModelMemory::exit`]: every later access reports [`UserMemoryError::Gone`].
    gone: bool,
}

impl Default for ModelMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelMemory {
    /// An empty address space with a fresh [`MmId`].
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        // Linux pids never exceed PID_MAX_LIMIT (2^22), so 2^31 and up cannot collide.
        static NEXT_MODEL_PID: AtomicU32 = AtomicU32::new(0);
        let n = NEXT_MODEL_PID.fetch_add(1, Ordering::Relaxed);
        ModelMemory {
            mm: MmId {
                pid: 0x8000_0000 | n,
                start_time: u64::MAX,
            },
            state: std::sync::RwLock::new(ModelState::default()),
        }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, ModelState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, ModelState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `mmap(addr, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_FIXED)`: maps the pages
    /// covering `[addr, addr + len)` with zeroed contents, replacing whatever was there.
    /// `len == 0` or a range that wraps does nothing.
    pub fn map(&self, addr: UserVa, len: u64, writable: bool) {
        let Some((first, last)) = page_span(addr, len) else {
            return;
        };
        let mut state = self.write_state();
        state.remove(first, last);
        state.ranges.insert(first, (last, writable));
    }

    /// `munmap(addr, len)`: removes the pages covering `[addr, addr + len)` and their contents.
    pub fn unmap(&self, addr: UserVa, len: u64) {
        let Some((first, last)) = page_span(addr, len) else {
            return;
        };
        self.write_state().remove(first, last);
    }

    /// Ends the address space, as a process exit would: later calls fail with
    /// [`UserMemoryError::Gone`].
    pub fn exit(&self) {
        let mut state = self.write_state();
        state.gone = true;
        state.ranges.clear();
        state.pages.clear();
    }

    fn check(
        &self,
        state: &ModelState,
        addr: UserVa,
        len: u64,
        writable: bool,
    ) -> Result<(), UserMemoryError> {
        if state.gone {
            return Err(UserMemoryError::Gone(self.mm));
        }
        if len == 0 {
            return Ok(());
        }
        let fault = UserMemoryError::Fault { addr, len };
        let last = addr.0.checked_add(len - 1).ok_or(fault.clone())?;
        let mut cursor = addr.0;
        loop {
            let (start, &(range_last, range_writable)) = state
                .ranges
                .range(..=cursor)
                .next_back()
                .ok_or(fault.clone())?;
            if *start > cursor || range_last < cursor || (writable && !range_writable) {
                return Err(fault);
            }
            if range_last >= last {
                return Ok(());
            }
            cursor = range_last + 1;
        }
    }
}

impl ModelState {
    /// Drops mappings and contents inside the page span `[first, last]`, trimming ranges that
    /// straddle its ends.
    fn remove(&mut self, first: u64, last: u64) {
        let overlapping: Vec<(u64, (u64, bool))> = self
            .ranges
            .range(..=last)
            .rev()
            .take_while(|(_, &(range_last, _))| range_last >= first)
            .map(|(&start, &value)| (start, value))
            .collect();
        for (start, (range_last, writable)) in overlapping {
            self.ranges.remove(&start);
            if start < first {
                self.ranges.insert(start, (first - 1, writable));
            }
            if range_last > last {
                self.ranges.insert(last + 1, (range_last, writable));
            }
        }
        self.pages.retain(|&page, _| page < first || page > last);
    }
}

/// The first page VA and the last byte of the pages covering `[addr, addr + len)`.
fn page_span(addr: UserVa, len: u64) -> Option<(u64, u64)> {
    let last = addr.0.checked_add(len.checked_sub(1)?)?;
    let first = addr.0 & !(PAGE_SIZE - 1);
    let last = last | (PAGE_SIZE - 1);
    Some((first, last))
}

impl UserMemory for ModelMemory {
    fn mm(&self) -> MmId {
        self.mm
    }

    fn read(&self, addr: UserVa, buf: &mut [u8]) -> Result<(), UserMemoryError> {
        let state = self.read_state();
        self.check(&state, addr, buf.len() as u64, false)?;
        let mut done = 0usize;
        while done < buf.len() {
            let va = addr.0 + done as u64;
            let page = va & !(PAGE_SIZE - 1);
            let offset = (va - page) as usize;
            let chunk = (PAGE_SIZE as usize - offset).min(buf.len() - done);
            match state.pages.get(&page) {
                Some(data) => {
                    buf[done..done + chunk].copy_from_slice(&data[offset..offset + chunk])
                }
                None => buf[done..done + chunk].fill(0),
            }
            done += chunk;
        }
        Ok(())
    }

    fn write(&self, addr: UserVa, data: &[u8]) -> Result<(), UserMemoryError> {
        let mut state = self.write_state();
        self.check(&state, addr, data.len() as u64, true)?;
        let mut done = 0usize;
        while done < data.len() {
            let va = addr.0 + done as u64;
            let page = va & !(PAGE_SIZE - 1);
            let offset = (va - page) as usize;
            let chunk = (PAGE_SIZE as usize - offset).min(data.len() - done);
            let contents = state
                .pages
                .entry(page)
                .or_insert_with(|| vec![0u8; PAGE_SIZE as usize].into_boxed_slice());
            contents[offset..offset + chunk].copy_from_slice(&data[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }

    fn probe(&self, addr: UserVa, len: u64, writable: bool) -> Result<(), UserMemoryError> {
        self.check(&self.read_state(), addr, len, writable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_memory_reads_back_writes_across_pages() {
        let mem = ModelMemory::new();
        mem.map(UserVa(0x10000), 3 * PAGE_SIZE, true);
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        mem.write(UserVa(0x10ff0), &data).unwrap();
        let mut back = vec![0u8; 6000];
        mem.read(UserVa(0x10ff0), &mut back).unwrap();
        assert_eq!(back, data);
        let mut untouched = [1u8; 16];
        mem.read(UserVa(0x10000), &mut untouched).unwrap();
        assert_eq!(untouched, [0u8; 16]);
    }

    #[test]
    fn model_memory_faults_on_holes_and_read_only_writes() {
        let mem = ModelMemory::new();
        mem.map(UserVa(0x10000), 4 * PAGE_SIZE, true);
        mem.unmap(UserVa(0x11000), PAGE_SIZE);
        mem.map(UserVa(0x13000), PAGE_SIZE, false);
        assert!(mem.probe(UserVa(0x10000), PAGE_SIZE, true).is_ok());
        assert!(matches!(
            mem.probe(UserVa(0x10000), 2 * PAGE_SIZE, false),
            Err(UserMemoryError::Fault { .. })
        ));
        assert!(mem.probe(UserVa(0x12000), 2 * PAGE_SIZE, false).is_ok());
        assert!(mem.probe(UserVa(0x12000), 2 * PAGE_SIZE, true).is_err());
        assert!(mem.write(UserVa(0x13000), &[1]).is_err());
        assert!(mem.probe(UserVa(u64::MAX), 2, false).is_err());
        assert!(mem.probe(UserVa(0), 0, true).is_ok());
    }

    #[test]
    fn model_memory_reports_gone_after_exit() {
        let mem = ModelMemory::new();
        mem.map(UserVa(0x10000), PAGE_SIZE, true);
        mem.exit();
        assert_eq!(
            mem.probe(UserVa(0x10000), 1, false),
            Err(UserMemoryError::Gone(mem.mm()))
        );
        assert_ne!(ModelMemory::new().mm(), mem.mm());
    }
}
