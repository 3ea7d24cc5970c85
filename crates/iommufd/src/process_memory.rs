//! The memory of a live process, normally our own: the production [`UserMemory`].
//!
//! Reads and writes go through `process_vm_readv`/`process_vm_writev`, which validate the
//! remote range in the kernel: an unmapped byte gives `EFAULT` or a short transfer, never a
//! signal, so the caller's pointers are never dereferenced here. Probing a range for pinning
//! reads one byte of each page the same way (which faults pages in, as `pin_user_pages` does),
//! or, when writability is asked, walks `/proc/PID/maps`, because writing to test would change
//! user data. The address space's identity ([`MmId`]) is the pid plus its start time from
//! `/proc/PID/stat`, re-checked before every operation on a foreign pid so a recycled pid is
//! reported as [`UserMemoryError::Gone`].
//!
//! Pinning another process's pages ([`UserMemory::pin`]) also holds those of them that lie in
//! shared mappings, through [`crate::shared_alias`], so they stay reachable after that process
//! exits. The serving process's own pages are never held: its address space cannot end while
//! it serves, and held pages are only read once the mapping address space is gone.
//!
//! [`ProcessLimits`] answers the pinning policy questions for such a process from
//! `/proc/PID/status` (`CAP_IPC_LOCK`, real uid) and `prlimit` (`RLIMIT_MEMLOCK`).
//!
//! # Safety
//!
//! This module's unsafe code is the `process_vm_readv`, `process_vm_writev` and `prlimit`
//! calls (the crate's other unsafe module, [`crate::shared_alias`], maps and unmaps windows).
//! Each passes local buffers that Rust owns and borrows for exactly the call (the kernel
//! writes at most their stated lengths into them), while the remote addresses are plain
//! numbers the kernel checks against the target's page tables. No pointer received from a
//! caller is ever dereferenced in this process. The unit tests add `mmap`/`munmap` of their
//! own anonymous mappings (never referenced from Rust) and `getrlimit` into a local.
#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::sync::Arc;

use crate::pages::{LockedVm, MemlockPolicy};
use crate::shared_alias;
use crate::user_memory::{HeldRun, MmId, UserMemory, UserMemoryError, UserVa, PAGE_SIZE};

/// Remote iovecs per `process_vm_readv` call when probing (`IOV_MAX`).
const PROBE_BATCH: usize = 1024;

/// Field 22 of `/proc/PID/stat`: the process start time in clock ticks since boot.
fn read_start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: fields after the last
    // ')' start at field 3.
    let after_comm = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    after_comm
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
}

/// One mapping (VMA) of a process, as a line of `/proc/PID/maps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vma {
    /// First byte.
    pub(crate) start: u64,
    /// One past the last byte.
    pub(crate) end: u64,
    /// `r` permission.
    pub(crate) readable: bool,
    /// `w` permission.
    pub(crate) writable: bool,
    /// `s` rather than `p`: a shared mapping, whose pages belong to the object mapped.
    pub(crate) shared: bool,
    /// Byte offset of `start` in the object mapped.
    pub(crate) offset: u64,
}

/// The mappings listed in a `/proc/PID/maps` text, in address order; malformed lines are
/// skipped.
fn parse_maps(maps: &str) -> Vec<Vma> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.as_bytes();
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            if perms.len() < 4 {
                return None;
            }
            Some(Vma {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                readable: perms[0] == b'r',
                writable: perms[1] == b'w',
                shared: perms[3] == b's',
                offset,
            })
        })
        .collect()
}

/// Whether `[addr, end)` lies in readable and writable mappings without a hole.
fn writable_in(vmas: &[Vma], addr: u64, end: u64) -> bool {
    let mut cursor = addr;
    for vma in vmas {
        if vma.end <= cursor {
            continue;
        }
        if vma.start > cursor || !(vma.readable && vma.writable) {
            return false;
        }
        cursor = vma.end;
        if cursor >= end {
            return true;
        }
    }
    false
}

/// One process's address space, reached with `process_vm_readv`/`process_vm_writev`.
#[derive(Debug, Clone)]
pub struct ProcessMemory {
    mm: MmId,
    /// Whether `mm.pid` is this process, whose identity cannot change under us.
    own: bool,
}

impl ProcessMemory {
    /// The calling process's memory.
    ///
    /// # Errors
    /// `/proc/self/stat` unreadable or malformed.
    pub fn current() -> io::Result<Self> {
        let pid = std::process::id();
        Ok(ProcessMemory {
            mm: MmId {
                pid,
                start_time: read_start_time(pid)?,
            },
            own: true,
        })
    }

    /// The memory of process `pid`, identified by its current start time.
    ///
    /// # Errors
    /// No such process (`NotFound`), or its stat file is malformed.
    pub fn for_pid(pid: u32) -> io::Result<Self> {
        let own = pid == std::process::id();
        Ok(ProcessMemory {
            mm: MmId {
                pid,
                start_time: read_start_time(pid)?,
            },
            own,
        })
    }

    /// The calling process's memory, without reading its start time: for copies to and from
    /// memory this process mapped itself (the windows of [`crate::shared_alias`]), where no
    /// identity is compared. The pid is read at the call, so a forked child gets its own.
    pub(crate) fn this_process() -> Self {
        ProcessMemory {
            mm: MmId {
                pid: std::process::id(),
                start_time: 0,
            },
            own: true,
        }
    }

    /// `Gone` unless the pid still names the process this handle was made for.
    fn check_alive(&self) -> Result<(), UserMemoryError> {
        if self.own || read_start_time(self.mm.pid).ok() == Some(self.mm.start_time) {
            Ok(())
        } else {
            Err(UserMemoryError::Gone(self.mm))
        }
    }

    fn error(&self, err: io::Error, addr: UserVa, len: u64) -> UserMemoryError {
        if err.raw_os_error() == Some(libc::ESRCH) {
            UserMemoryError::Gone(self.mm)
        } else {
            UserMemoryError::Fault { addr, len }
        }
    }

    /// Transfers between `local` and `[addr, addr + local.len())` until done; a transfer
    /// that makes no progress or fails ends it.
    fn transfer(
        &self,
        addr: UserVa,
        len: usize,
        mut step: impl FnMut(usize) -> io::Result<usize>,
    ) -> Result<(), UserMemoryError> {
        let fault = UserMemoryError::Fault {
            addr,
            len: len as u64,
        };
        if addr.0.checked_add(len as u64).is_none() {
            return Err(fault);
        }
        let mut done = 0usize;
        while done < len {
            match step(done) {
                Ok(0) => return Err(fault),
                Ok(n) => done += n,
                Err(err) => return Err(self.error(err, addr, len as u64)),
            }
        }
        Ok(())
    }

    /// Whether every page of `[addr, addr + len)` is readable, by reading one byte of each.
    fn probe_readable(&self, addr: UserVa, len: u64) -> Result<(), UserMemoryError> {
        let fault = UserMemoryError::Fault { addr, len };
        let first_page = addr.0 & !(PAGE_SIZE - 1);
        let last_page = (addr.0 + (len - 1)) & !(PAGE_SIZE - 1);
        let npages = (last_page - first_page) / PAGE_SIZE + 1;
        let mut sink = [0u8; PROBE_BATCH];
        let mut page = 0u64;
        while page < npages {
            let batch = (npages - page).min(PROBE_BATCH as u64) as usize;
            let remote: Vec<libc::iovec> = (0..batch as u64)
                .map(|i| {
                    // The first byte of the range in its page, then each later page's start.
                    let va = (first_page + (page + i) * PAGE_SIZE).max(addr.0);
                    libc::iovec {
                        iov_base: va as *mut libc::c_void,
                        iov_len: 1,
                    }
                })
                .collect();
            let local = libc::iovec {
                iov_base: sink.as_mut_ptr().cast(),
                iov_len: batch,
            };
            // SAFETY: `local` describes `batch` bytes of `sink`, a live stack buffer of
            // PROBE_BATCH ≥ batch bytes borrowed mutably for the call; `remote` is a live
            // vector of `batch` iovecs whose addresses the kernel validates in the target.
            let copied = unsafe {
                libc::process_vm_readv(
                    self.mm.pid as libc::pid_t,
                    &local,
                    1,
                    remote.as_ptr(),
                    batch as libc::c_ulong,
                    0,
                )
            };
            if copied < 0 {
                return Err(self.error(io::Error::last_os_error(), addr, len));
            }
            if copied as usize != batch {
                return Err(fault);
            }
            page += batch as u64;
        }
        Ok(())
    }

    /// The process's mappings, from `/proc/PID/maps`. `addr` and `len` name the range the
    /// caller is about, for the error.
    fn mappings(&self, addr: UserVa, len: u64) -> Result<Vec<Vma>, UserMemoryError> {
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.mm.pid)).map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                UserMemoryError::Gone(self.mm)
            } else {
                UserMemoryError::Fault { addr, len }
            }
        })?;
        Ok(parse_maps(&maps))
    }

    /// Whether `[addr, addr + len)` lies in readable and writable mappings, per
    /// `/proc/PID/maps`.
    fn probe_writable(&self, addr: UserVa, len: u64) -> Result<(), UserMemoryError> {
        // The caller checked that `addr + len` cannot wrap.
        if writable_in(&self.mappings(addr, len)?, addr.0, addr.0 + len) {
            Ok(())
        } else {
            Err(UserMemoryError::Fault { addr, len })
        }
    }
}

impl UserMemory for ProcessMemory {
    fn mm(&self) -> MmId {
        self.mm
    }

    fn read(&self, addr: UserVa, buf: &mut [u8]) -> Result<(), UserMemoryError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check_alive()?;
        let len = buf.len();
        let pid = self.mm.pid as libc::pid_t;
        self.transfer(addr, len, |done| {
            let local = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: len - done,
            };
            let remote = libc::iovec {
                iov_base: (addr.0 + done as u64) as *mut libc::c_void,
                iov_len: len - done,
            };
            // SAFETY: `local` covers exactly `buf[done..]`, which is mutably borrowed for the
            // call; `remote` is only an address the kernel checks in the target process.
            let copied = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            if copied < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(copied as usize)
            }
        })
    }

    fn write(&self, addr: UserVa, data: &[u8]) -> Result<(), UserMemoryError> {
        if data.is_empty() {
            return Ok(());
        }
        self.check_alive()?;
        let len = data.len();
        // A write that fails half-way would leave a prefix written: check every page first
        // when there is more than one.
        let last = addr
            .0
            .checked_add(len as u64 - 1)
            .ok_or(UserMemoryError::Fault {
                addr,
                len: len as u64,
            })?;
        if addr.0 / PAGE_SIZE != last / PAGE_SIZE {
            self.probe_writable(addr, len as u64)?;
        }
        let pid = self.mm.pid as libc::pid_t;
        self.transfer(addr, len, |done| {
            let local = libc::iovec {
                iov_base: data[done..].as_ptr().cast_mut().cast(),
                iov_len: len - done,
            };
            let remote = libc::iovec {
                iov_base: (addr.0 + done as u64) as *mut libc::c_void,
                iov_len: len - done,
            };
            // SAFETY: `local` covers exactly `data[done..]`, borrowed for the call, which the
            // kernel only reads; `remote` is only an address checked in the target process.
            let copied = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
            if copied < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(copied as usize)
            }
        })
    }

    fn probe(&self, addr: UserVa, len: u64, writable: bool) -> Result<(), UserMemoryError> {
        if len == 0 {
            return Ok(());
        }
        self.check_alive()?;
        if addr.0.checked_add(len).is_none() {
            return Err(UserMemoryError::Fault { addr, len });
        }
        if writable {
            self.probe_writable(addr, len)
        } else {
            self.probe_readable(addr, len)
        }
    }

    /// Probes as [`UserMemory::probe`], then, for another process, holds the pages of the
    /// range that lie in shared mappings ([`crate::shared_alias`]); one read of
    /// `/proc/PID/maps` serves both.
    fn pin(&self, addr: UserVa, len: u64, writable: bool) -> Result<Vec<HeldRun>, UserMemoryError> {
        if self.own || len == 0 {
            return self.probe(addr, len, writable).map(|()| Vec::new());
        }
        self.check_alive()?;
        let end = addr
            .0
            .checked_add(len)
            .ok_or(UserMemoryError::Fault { addr, len })?;
        let vmas = self.mappings(addr, len)?;
        if writable {
            if !writable_in(&vmas, addr.0, end) {
                return Err(UserMemoryError::Fault { addr, len });
            }
        } else {
            self.probe_readable(addr, len)?;
        }
        Ok(shared_alias::hold_shared(
            self.mm.pid,
            &vmas,
            addr,
            len,
            writable,
        ))
    }
}

/// The pinning policy of a real process: the real uid and `CAP_IPC_LOCK` from
/// `/proc/PID/status`, read once when the policy is made (re-reading the file at every MAP
/// cost 20 µs, most of a MAP), `RLIMIT_MEMLOCK` from `prlimit` at every charge as the kernel
/// does, and the process-wide [`LockedVm`] counters of that user and address space.
#[derive(Debug, Clone)]
pub struct ProcessLimits {
    mm: MmId,
    uid: u32,
    cap_ipc_lock: bool,
}

/// `CAP_IPC_LOCK`'s bit in the capability sets.
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_RESOURCE`'s bit in the capability sets.
pub const CAP_SYS_RESOURCE: u32 = 24;

fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
}

/// Linux `capable(cap)` for process `pid`: `cap` is in its effective set (`CapEff` of
/// `/proc/PID/status`) and the process lives in the initial user namespace, because Linux's
/// `capable()` asks about that namespace: root of a user namespace made by `unshare -Ur` has
/// every capability in its own namespace and none that counts here. `false` when unreadable.
pub fn capable(pid: u32, cap: u32) -> bool {
    let effective = status_field(pid, "CapEff:")
        .and_then(|caps| u64::from_str_radix(&caps, 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0);
    effective
        && fs::read_to_string(format!("/proc/{pid}/uid_map"))
            .is_ok_and(|map| is_initial_uid_map(&map))
}

/// Whether a `uid_map` is the initial user namespace's: the identity over all 2^32 uids.
fn is_initial_uid_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    lines == [vec!["0", "0", "4294967295"]]
}

impl ProcessLimits {
    /// The policy of the process behind `memory`.
    ///
    /// # Errors
    /// `/proc/PID/status` unreadable (the process is gone) or without a `Uid:` line.
    pub fn for_process(memory: &ProcessMemory) -> io::Result<Self> {
        let mm = memory.mm();
        let uid = status_field(mm.pid, "Uid:")
            .and_then(|uids| {
                uids.split_whitespace()
                    .next()
                    .and_then(|real| real.parse().ok())
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no Uid in status"))?;
        Ok(ProcessLimits {
            mm,
            uid,
            cap_ipc_lock: capable(mm.pid, CAP_IPC_LOCK),
        })
    }
}

impl MemlockPolicy for ProcessLimits {
    fn has_cap_ipc_lock(&self) -> bool {
        self.cap_ipc_lock
    }

    fn memlock_limit(&self) -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a live local the kernel writes one `rlimit` into; the new-limit
        // pointer is null, so nothing is changed.
        let rc = unsafe {
            libc::prlimit(
                self.mm.pid as libc::pid_t,
                libc::RLIMIT_MEMLOCK,
                std::ptr::null(),
                &mut limit,
            )
        };
        match rc {
            0 if limit.rlim_cur == libc::RLIM_INFINITY => u64::MAX,
            0 => limit.rlim_cur,
            // The process is gone or not ours to ask: nothing may be pinned for it.
            _ => 0,
        }
    }

    fn user_account(&self) -> Arc<LockedVm> {
        LockedVm::for_user(self.uid)
    }

    fn mm_account(&self) -> Arc<LockedVm> {
        LockedVm::for_mm(self.mm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_identity_map_over_all_uids_is_the_initial_user_namespace() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0          0          1\n"));
        assert!(!is_initial_uid_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_initial_uid_map(""));
    }

    /// An anonymous private mapping, unmapped on drop.
    struct Mapping {
        addr: usize,
        len: usize,
    }

    impl Mapping {
        fn new(len: usize, prot: libc::c_int) -> Mapping {
            // SAFETY: a fresh anonymous mapping chosen by the kernel aliases nothing.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(addr, libc::MAP_FAILED);
            Mapping {
                addr: addr as usize,
                len,
            }
        }

        fn va(&self, offset: usize) -> UserVa {
            UserVa((self.addr + offset) as u64)
        }

        /// Punches a hole of whole pages at `offset`.
        fn unmap_pages(&self, offset: usize, len: usize) {
            // SAFETY: the range lies inside this mapping, which no Rust reference points into.
            let rc = unsafe { libc::munmap((self.addr + offset) as *mut libc::c_void, len) };
            assert_eq!(rc, 0);
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping our own mapping (holes in it are ignored by munmap).
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }

    const PAGE: usize = PAGE_SIZE as usize;

    #[test]
    fn reads_back_what_it_writes_across_pages() {
        let mem = ProcessMemory::current().unwrap();
        let map = Mapping::new(4 * PAGE, libc::PROT_READ | libc::PROT_WRITE);
        let data: Vec<u8> = (0..2 * PAGE + 100).map(|i| (i % 251) as u8).collect();
        mem.write(map.va(PAGE - 50), &data).unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read(map.va(PAGE - 50), &mut back).unwrap();
        assert_eq!(back, data);
        assert!(mem.probe(map.va(0), 4 * PAGE as u64, true).is_ok());
        assert!(mem.probe(map.va(1), 4 * PAGE as u64 - 1, false).is_ok());
    }

    #[test]
    fn null_and_holes_fault_without_touching_memory() {
        let mem = ProcessMemory::current().unwrap();
        let map = Mapping::new(4 * PAGE, libc::PROT_READ | libc::PROT_WRITE);
        map.unmap_pages(2 * PAGE, PAGE);
        let mut buf = vec![0u8; 2 * PAGE];
        assert!(matches!(
            mem.read(UserVa(0), &mut buf[..8]),
            Err(UserMemoryError::Fault { .. })
        ));
        assert!(
            matches!(
                mem.read(map.va(PAGE), &mut buf),
                Err(UserMemoryError::Fault { .. })
            ),
            "short read"
        );
        assert!(mem.read(map.va(PAGE), &mut buf[..PAGE]).is_ok());
        let ones = vec![1u8; 2 * PAGE];
        assert!(mem.write(map.va(PAGE), &ones).is_err());
        let mut first = [0u8; 1];
        mem.read(map.va(PAGE), &mut first).unwrap();
        assert_eq!(
            first,
            [0],
            "a failed multi-page write leaves nothing written"
        );
        for writable in [false, true] {
            assert!(
                mem.probe(map.va(0), 4 * PAGE as u64, writable).is_err(),
                "writable={writable}"
            );
            assert!(mem.probe(map.va(3 * PAGE), PAGE as u64, writable).is_ok());
            assert!(mem.probe(UserVa(0), 1, writable).is_err());
        }
        assert!(mem.probe(UserVa(u64::MAX - 1), 4, false).is_err());
    }

    #[test]
    fn read_only_memory_probes_readable_but_not_writable() {
        let mem = ProcessMemory::current().unwrap();
        let map = Mapping::new(2 * PAGE, libc::PROT_READ);
        assert!(mem.probe(map.va(0), 2 * PAGE as u64, false).is_ok());
        assert!(mem.probe(map.va(0), 2 * PAGE as u64, true).is_err());
        assert!(mem.write(map.va(0), &[1]).is_err());
        let none = Mapping::new(PAGE, libc::PROT_NONE);
        assert!(mem.probe(none.va(0), 1, false).is_err());
    }

    #[test]
    fn a_dead_process_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mem = ProcessMemory::for_pid(child.id()).unwrap();
        assert_eq!(mem.mm().pid, child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            mem.read(UserVa(0x1000), &mut buf),
            Err(UserMemoryError::Gone(mem.mm()))
        );
        assert_eq!(
            mem.probe(UserVa(0x1000), 4, true),
            Err(UserMemoryError::Gone(mem.mm()))
        );
    }

    #[test]
    fn own_identity_is_stable_and_limits_are_readable() {
        let a = ProcessMemory::current().unwrap();
        let b = ProcessMemory::for_pid(std::process::id()).unwrap();
        assert_eq!(a.mm(), b.mm());
        let limits = ProcessLimits::for_process(&a).unwrap();
        let mut expected = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `expected` is a live local the kernel fills.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut expected) };
        assert_eq!(rc, 0);
        let expected = if expected.rlim_cur == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            expected.rlim_cur
        };
        assert_eq!(limits.memlock_limit(), expected);
        assert!(Arc::ptr_eq(&limits.mm_account(), &LockedVm::for_mm(a.mm())));
    }
}
