//! Second mappings of another process's shared memory: how a pin outlives the address space
//! that mapped the pages.
//!
//! The kernel's `pin_user_pages()` takes a reference on each physical page, so a page pinned
//! for a domain or an access stays readable after its process unmaps it or exits (the
//! selftest's `fork_gone` maps a buffer from a child, lets it exit, and reads the buffer
//! through an access). A user-space engine has no physical pages to hold, but for a *shared*
//! mapping it can hold the object behind them: `/proc/PID/map_files/START-END` opens the very
//! file (shmem, memfd, SysV shm, a `MAP_SHARED` file) a mapping maps, and mapping the pinned
//! window of it `MAP_SHARED` into this, the serving, process gives the same pages at another
//! address. They stay there, whatever the other process does, until the window is unmapped;
//! the engine ([`crate::pages`]) keeps one window per pinned run and unmaps each page's part
//! when the page is unpinned.
//!
//! What is not held, so is reached only through the live process (and answers `EFAULT` once
//! it is gone):
//! * private mappings, anonymous or file-backed: their pages, copied on write, belong to the
//!   address space alone, and no file reaches them;
//! * hugetlbfs mappings: a window of them must be huge-page aligned and could not be split
//!   when 4 KiB pages are unpinned one run at a time;
//! * anything but regular files: opening a device node again could have side effects;
//! * everything, when this process may not open `map_files` (that takes `CAP_SYS_ADMIN` or
//!   `CAP_CHECKPOINT_RESTORE` in the initial user namespace, plus ptrace access to the target).
//!
//! A held page is the page the mapping had when it was pinned, as in the kernel, with one
//! difference: if the file is later truncated under the window, the page is lost and copies
//! through it answer `EFAULT`, where the kernel would still have the page.
//!
//! Windows are not marked `MADV_DONTFORK`: a child forked from the serving process inherits
//! them along with its copy of the engine's state, so the windows that copy owns are mapped in
//! the child too, and unmapping them there can never hit some other mapping of the child's.
//!
//! # Safety
//!
//! The unsafe code is the `mmap`, `munmap` and `fstatfs` calls. A window is mapped at an
//! address the kernel chooses (never `MAP_FIXED`), so it replaces nothing. Each [`SharedAlias`]
//! owns exactly the pages `[host, host + npages * PAGE_SIZE)` it was given, splitting divides
//! them without a system call, and dropping unmaps exactly what it owns, so every page is
//! unmapped once and no other mapping is touched. No Rust reference ever points into a
//! window: copies go through `process_vm_readv`/`process_vm_writev` on this process
//! ([`ProcessMemory`]), which turn a page that cannot be reached any more (a truncated file)
//! into `EFAULT` rather than `SIGBUS`.
#![allow(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use crate::process_memory::{ProcessMemory, Vma};
use crate::user_memory::{HeldPages, HeldRun, UserMemory, UserMemoryError, UserVa, PAGE_SIZE};

/// Holds the pages of `[addr, addr + len)` that lie in shared mappings of process `pid`
/// (listed in `vmas`): one window per mapping crossed, each covering the part of the range in
/// it. Pages that cannot be held (see the module documentation) are left out; nothing here
/// fails.
pub(crate) fn hold_shared(
    pid: u32,
    vmas: &[Vma],
    addr: UserVa,
    len: u64,
    writable: bool,
) -> Vec<HeldRun> {
    let Some(end) = addr.0.checked_add(len) else {
        return Vec::new();
    };
    vmas.iter()
        .filter(|vma| vma.shared && vma.start < end && vma.end > addr.0)
        .filter_map(|vma| {
            let start = vma.start.max(addr.0);
            let stop = vma.end.min(end);
            let alias = SharedAlias::map(pid, vma, start, stop, writable).ok()??;
            Some(HeldRun {
                addr: UserVa(start),
                pages: Box::new(alias),
            })
        })
        .collect()
}

/// Pages of another process's shared mapping, mapped a second time into this process and
/// unmapped on drop.
#[derive(Debug)]
pub struct SharedAlias {
    /// First byte of the window in this process.
    host: usize,
    npages: u64,
    writable: bool,
}

impl SharedAlias {
    /// Maps `[start, stop)` of `vma`, a shared mapping of process `pid` (`start`, `stop` page
    /// aligned and inside it), into this process: readable, and writable when `writable`.
    ///
    /// # Errors
    /// `Ok(None)` when the object is not one this module holds (not a regular file, or on
    /// hugetlbfs); an I/O error when `map_files` cannot be opened (no privilege, the mapping
    /// changed) or `mmap` refuses.
    fn map(
        pid: u32,
        vma: &Vma,
        start: u64,
        stop: u64,
        writable: bool,
    ) -> io::Result<Option<SharedAlias>> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        if !start.is_multiple_of(PAGE_SIZE) || !stop.is_multiple_of(PAGE_SIZE) || start >= stop {
            return Err(invalid());
        }
        if start < vma.start || stop > vma.end {
            return Err(invalid());
        }
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end);
        // stat follows the link without opening the object: a device node is never opened.
        if !fs::metadata(&path)?.file_type().is_file() {
            return Ok(None);
        }
        let file = OpenOptions::new().read(true).write(writable).open(&path)?;
        if on_hugetlbfs(&file)? {
            return Ok(None);
        }
        let offset = vma
            .offset
            .checked_add(start - vma.start)
            .and_then(|offset| libc::off_t::try_from(offset).ok())
            .ok_or_else(invalid)?;
        let len = usize::try_from(stop - start).map_err(|_| invalid())?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping at an address the kernel picks (no MAP_FIXED), so it
        // replaces no existing mapping; `file` is a live descriptor for the call, and the
        // mapping keeps its own reference to the object after `file` is closed.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(SharedAlias {
            host: host as usize,
            npages: (stop - start) / PAGE_SIZE,
            writable,
        }))
    }

    /// The window's address of byte `offset`, if `len` bytes from there fit in the window.
    fn host_range(&self, offset: u64, len: usize) -> Result<UserVa, UserMemoryError> {
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.npages * PAGE_SIZE);
        if fits {
            Ok(UserVa(self.host as u64 + offset))
        } else {
            Err(UserMemoryError::Fault {
                addr: UserVa(self.host as u64 + offset),
                len: len as u64,
            })
        }
    }
}

/// Whether `file` lives on hugetlbfs.
fn on_hugetlbfs(file: &File) -> io::Result<bool> {
    // SAFETY: `statfs` is plain data, for which all-zero bytes are a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is a live descriptor and `stat` a live local the kernel fills.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type == libc::HUGETLBFS_MAGIC)
}

impl HeldPages for SharedAlias {
    fn npages(&self) -> u64 {
        self.npages
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), UserMemoryError> {
        let at = self.host_range(offset, buf.len())?;
        ProcessMemory::this_process().read(at, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), UserMemoryError> {
        let at = self.host_range(offset, data.len())?;
        if !self.writable {
            return Err(UserMemoryError::Fault {
                addr: at,
                len: data.len() as u64,
            });
        }
        ProcessMemory::this_process().write(at, data)
    }

    fn split_off(&mut self, at: u64) -> Box<dyn HeldPages> {
        let at = at.min(self.npages);
        let tail = SharedAlias {
            host: self.host + (at * PAGE_SIZE) as usize,
            npages: self.npages - at,
            writable: self.writable,
        };
        self.npages = at;
        Box::new(tail)
    }
}

impl Drop for SharedAlias {
    fn drop(&mut self) {
        if self.npages == 0 {
            return;
        }
        // SAFETY: exactly the pages this value owns: mapped by `SharedAlias::map` and given to
        // no other value (splits hand each page to one side), with no Rust reference into them.
        unsafe {
            libc::munmap(
                self.host as *mut libc::c_void,
                (self.npages * PAGE_SIZE) as usize,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_outside_their_mapping_are_refused() {
        let vma = Vma {
            start: 0x10000,
            end: 0x14000,
            readable: true,
            writable: true,
            shared: true,
            offset: 0,
        };
        let pid = std::process::id();
        for (start, stop) in [(0x10000, 0x10000), (0x10800, 0x11000), (0xf000, 0x11000)] {
            assert_eq!(
                SharedAlias::map(pid, &vma, start, stop, false)
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::InvalidInput,
                "{start:#x}-{stop:#x}"
            );
        }
        assert!(SharedAlias::map(pid, &vma, 0x13000, 0x15000, false).is_err());
    }
}
