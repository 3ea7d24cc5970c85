//! Pinned pages outlive the process that mapped them, as the kernel selftest's `fork_gone`
//! checks: a forked child's memory is mapped through the child's address space into an IO
//! page table with a domain (so it is pinned), the child exits, and an access still reads and
//! writes the pages. That holds for shared memory, which the engine keeps through a second
//! mapping when it may open `/proc/PID/map_files` (root); private memory, and everything
//! without that privilege, answers `EFAULT` once the child is gone, as unpinned memory does.
#![allow(unsafe_code)] // fork, mmap and a pipe, to build the child process.

mod io_pagetable_common;

use std::sync::{Arc, Mutex};

use io_pagetable_common::RecordingDomain;
use uiommu_core::addr::{Iova, Prot};
use uiommu_iommufd::io_pagetable::{AccessPath, IoPagetable, IoptError, IovaPlacement};
use uiommu_iommufd::pages::{page_pin_count, FixedMemlockPolicy, PageSource, RwBuf};
use uiommu_iommufd::process_memory::ProcessMemory;
use uiommu_iommufd::user_memory::{UserMemory, UserVa, PAGE_SIZE};

const NPAGES: usize = 4;
const LEN: usize = NPAGES * PAGE_SIZE as usize;

/// The tests fork; one at a time keeps each child's inherited state simple.
static FORKING: Mutex<()> = Mutex::new(());

/// An anonymous mapping of this process, filled with a pattern, unmapped on drop.
struct Buffer {
    addr: usize,
}

impl Buffer {
    fn new(shared: bool) -> Buffer {
        let kind = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        // SAFETY: a fresh anonymous mapping at an address the kernel picks aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                kind | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let mut buffer = Buffer {
            addr: addr as usize,
        };
        for (i, byte) in buffer.bytes_mut().iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        buffer
    }

    fn va(&self) -> UserVa {
        UserVa(self.addr as u64)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is LEN readable bytes, alive as long as `self`; the engine's
        // writes to it (through the kernel) happen only while no slice is borrowed.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, LEN) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, and the mapping is writable; `&mut self` makes this slice the
        // only one.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, LEN) }
    }

    /// The inode field of this mapping's line in `/proc/self/maps`.
    fn inode(&self) -> String {
        maps_lines()
            .into_iter()
            .find(|line| line.starts_with(&format!("{:x}-", self.addr)))
            .and_then(|line| line.split_whitespace().nth(4).map(str::to_owned))
            .expect("own mapping listed")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmapping this value's own mapping, no slice of which outlives the call.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, LEN) };
    }
}

fn maps_lines() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Mappings of this process whose object is the inode `inode` of a shared mapping.
fn shared_mappings_of(inode: &str) -> usize {
    maps_lines()
        .iter()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 4 && fields[1].ends_with('s') && fields[4] == inode
        })
        .count()
}

/// A forked child that does nothing until told to exit.
struct Child {
    pid: libc::pid_t,
    release: libc::c_int,
}

impl Child {
    fn fork() -> Child {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a live array of two ints the kernel fills.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child runs only async-signal-safe calls (read, _exit) before exiting,
        // so the other threads' locks, copied mid-use, are never touched.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: reads at most one byte into a live local, then exits without unwinding.
            unsafe {
                libc::read(fds[0], (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: closing the read end, which this process no longer needs.
        unsafe { libc::close(fds[0]) };
        Child {
            pid,
            release: fds[1],
        }
    }

    fn memory(&self) -> Arc<dyn UserMemory> {
        Arc::new(ProcessMemory::for_pid(self.pid as u32).unwrap())
    }

    /// Tells the child to exit and reaps it.
    fn exit(self) {
        // SAFETY: a one-byte write from a live local, then a close of our own descriptor and
        // a wait for our own child.
        unsafe {
            assert_eq!(libc::write(self.release, [1u8].as_ptr().cast(), 1), 1);
            libc::close(self.release);
            assert_eq!(libc::waitpid(self.pid, std::ptr::null_mut(), 0), self.pid);
        }
    }
}

fn source(memory: Arc<dyn UserMemory>) -> PageSource {
    PageSource {
        memory,
        policy: Arc::new(FixedMemlockPolicy {
            cap_ipc_lock: true,
            ..Default::default()
        }),
        rlimit_mode: Default::default(),
    }
}

/// Whether this process may open `/proc/PID/map_files` links: `CAP_SYS_ADMIN` (21) or
/// `CAP_CHECKPOINT_RESTORE` (40) in the effective set.
fn may_open_map_files() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21 | 1 << 40) != 0)
}

fn read(table: &IoPagetable, iova: Iova, offset: u64, len: usize) -> Result<Vec<u8>, IoptError> {
    let mut buf = vec![0u8; len];
    table.access_rw(
        Iova(iova.0 + offset),
        RwBuf::Read(&mut buf),
        AccessPath::Direct,
    )?;
    Ok(buf)
}

#[test]
fn shared_pages_pinned_by_a_child_stay_readable_after_it_exits() {
    let _one = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    let mut buffer = Buffer::new(true);
    let inode = buffer.inode();
    let child = Child::fork();
    let child_memory = child.memory();
    let mm = child_memory.mm();
    let table = IoPagetable::new();
    table
        .add_domain(RecordingDomain::page().as_mapper())
        .unwrap();
    let iova = table
        .map_user_pages(
            &source(child_memory),
            buffer.va(),
            LEN as u64,
            Prot::READ_WRITE,
            IovaPlacement::Auto,
        )
        .unwrap();
    assert_eq!(
        page_pin_count(mm, UserVa(buffer.va().0 + PAGE_SIZE)),
        1,
        "pinned in the child's address space, at the buffer's VA"
    );
    let held = may_open_map_files();
    assert_eq!(
        shared_mappings_of(&inode),
        if held { 2 } else { 1 },
        "our buffer, plus the window holding the pinned pages when privileged"
    );
    child.exit();

    let offset = PAGE_SIZE - 50;
    let got = read(&table, iova, offset, 100);
    if !held {
        assert_eq!(got.unwrap_err().errno(), libc::EFAULT);
        return;
    }
    assert_eq!(
        got.unwrap(),
        buffer.bytes()[offset as usize..offset as usize + 100]
    );
    buffer.bytes_mut()[10] = 0xaa;
    assert_eq!(read(&table, iova, 10, 1).unwrap(), [0xaa], "the same pages");
    let data: Vec<u8> = (0..LEN - 3).map(|i| (i % 13) as u8).collect();
    table
        .access_rw(Iova(iova.0 + 3), RwBuf::Write(&data), AccessPath::Slow)
        .unwrap();
    assert_eq!(
        &buffer.bytes()[3..],
        &data[..],
        "a device write reaches them"
    );
    assert_eq!(read(&table, iova, 0, LEN).unwrap(), buffer.bytes());

    table.unmap_iova(iova, LEN as u64).unwrap();
    assert_eq!(page_pin_count(mm, buffer.va()), 0);
    assert_eq!(
        shared_mappings_of(&inode),
        1,
        "the window went with the pin"
    );
}

#[test]
fn private_pages_of_a_dead_child_fault() {
    let _one = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    let buffer = Buffer::new(false);
    let child = Child::fork();
    let table = IoPagetable::new();
    table
        .add_domain(RecordingDomain::page().as_mapper())
        .unwrap();
    let iova = table
        .map_user_pages(
            &source(child.memory()),
            buffer.va(),
            LEN as u64,
            Prot::READ_WRITE,
            IovaPlacement::Auto,
        )
        .unwrap();
    assert_eq!(
        read(&table, iova, 5, 10).unwrap(),
        buffer.bytes()[5..15],
        "the child's copy, while it lives"
    );
    child.exit();
    assert_eq!(read(&table, iova, 5, 10).unwrap_err().errno(), libc::EFAULT);
    assert_eq!(
        table
            .access_rw(iova, RwBuf::Write(&[1]), AccessPath::Direct)
            .unwrap_err()
            .errno(),
        libc::EFAULT
    );
}

#[test]
fn pinning_after_the_child_is_gone_faults() {
    let _one = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    let buffer = Buffer::new(true);
    let child = Child::fork();
    let table = IoPagetable::new();
    let iova = table
        .map_user_pages(
            &source(child.memory()),
            buffer.va(),
            LEN as u64,
            Prot::READ_WRITE,
            IovaPlacement::Auto,
        )
        .unwrap();
    child.exit();
    assert_eq!(
        table
            .add_domain(RecordingDomain::page().as_mapper())
            .unwrap_err()
            .errno(),
        libc::EFAULT,
        "nothing was pinned while the child lived"
    );
    assert_eq!(read(&table, iova, 0, 1).unwrap_err().errno(), libc::EFAULT);
}
