//! A user-space driver's wait for I/O page faults, meant to run under the preload library
//! (`uiommu run -- fault_poll CHECK`): a mock device is attached to a nested HWPT with a fault
//! queue (as the kernel selftest's iopf test sets it up), and the fault fd is waited on with
//! `poll`, `select` or `epoll` instead of spinning on `read`. Each check is a subcommand; it
//! prints `ok CHECK` and exits 0, or prints what differed and exits 1.
//!
//! Checks:
//! * `poll`: no `POLLIN` (but `POLLOUT`) before a fault; `POLLIN` after
//!   `IOMMU_TEST_OP_TRIGGER_IOPF`; a read returns the record, a written response completes
//!   it, and `POLLIN` is gone; a thread blocked in `poll` wakes up for a fault.
//! * `select`: the same readiness through `select`.
//! * `epoll`: level-triggered `EPOLLIN` appears with a fault and goes with its read;
//!   edge-triggered waits report each new fault once.
//! * `fork`: a fault triggered while a fork child holds the fd (by the child, and by the
//!   parent while the child waits in `poll`) makes the child's fd readable.
//! * `close`, `close-readable`: after an automatic response, and with a fault still queued,
//!   closing the fd releases the file (the FAULT object can then be destroyed).
//! * `child-alloc`: a fork child allocates a fault queue and a selftest access on the
//!   inherited iommufd; the fds are the child's own (lowest free, close-on-exec), read, poll
//!   and name the access as the parent's would, and the child's close releases them.
//!
//! # Safety
//! This program calls libc directly. Every pointer it passes is to a live local value or
//! array of the stated size.
#![allow(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use uiommu_iommufd::abi::*;

mod common;

use common::{ensure, errno, report, Check};

fn ioctl<T>(fd: i32, cmd: u32, arg: &mut T) -> Result<(), String> {
    // SAFETY: `arg` is a live struct whose first field states its size.
    let ret = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg as *mut T) };
    if ret < 0 {
        Err(format!("ioctl {cmd:#x}: errno {}", errno()))
    } else {
        Ok(())
    }
}

fn test_cmd<P: TestOpPayload>(fd: i32, id: u32, payload: &P) -> Result<IommuTestCmd, String> {
    let mut cmd = IommuTestCmd::new(id, payload);
    ioctl(fd, IOMMU_TEST_CMD, &mut cmd)?;
    Ok(cmd)
}

/// An iommufd with a mock device on a nested HWPT whose faults go to a queue.
struct Iopf {
    iommufd: i32,
    ioas: u32,
    stdev: u32,
    idev: u32,
    nested: u32,
    fault: u32,
    fault_fd: i32,
}

/// A mock device on an IOAS, with a NEST_PARENT paging HWPT to nest fault-reporting HWPTs on.
struct Domain {
    iommufd: i32,
    ioas: u32,
    stdev: u32,
    idev: u32,
    parent: u32,
}

fn mock_nest_parent() -> Result<Domain, String> {
    // SAFETY: a literal NUL-terminated path.
    let iommufd = unsafe { libc::open(c"/dev/iommu".as_ptr(), libc::O_RDWR) };
    ensure(iommufd >= 0, || {
        format!("open /dev/iommu: errno {}", errno())
    })?;
    let mut ioas = IommuIoasAlloc {
        size: size_of::<IommuIoasAlloc>() as u32,
        ..Default::default()
    };
    ioctl(iommufd, IOMMU_IOAS_ALLOC, &mut ioas)?;
    let mock = test_cmd(iommufd, ioas.out_ioas_id, &TestMockDomain::default())?;
    let mock = mock.payload::<TestMockDomain>();
    let mut parent = IommuHwptAlloc {
        size: size_of::<IommuHwptAlloc>() as u32,
        flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
        dev_id: mock.out_idev_id,
        pt_id: ioas.out_ioas_id,
        ..Default::default()
    };
    ioctl(iommufd, IOMMU_HWPT_ALLOC, &mut parent)?;
    Ok(Domain {
        iommufd,
        ioas: ioas.out_ioas_id,
        stdev: mock.out_stdev_id,
        idev: mock.out_idev_id,
        parent: parent.out_hwpt_id,
    })
}

/// `IOMMU_FAULT_QUEUE_ALLOC`: the FAULT object's id and the fault fd.
fn fault_queue(iommufd: i32) -> Result<(u32, i32), String> {
    let mut fault = IommuFaultAlloc {
        size: size_of::<IommuFaultAlloc>() as u32,
        ..Default::default()
    };
    ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &mut fault)?;
    Ok((fault.out_fault_id, fault.out_fault_fd as i32))
}

/// Nest a HWPT reporting to `fault` on the domain's parent and move the device onto it.
fn nest_with_fault(domain: &Domain, fault: u32) -> Result<Iopf, String> {
    let mut data = IommuHwptSelftest { iotlb: 0 };
    let mut nested = IommuHwptAlloc {
        size: size_of::<IommuHwptAlloc>() as u32,
        flags: IOMMU_HWPT_FAULT_ID_VALID,
        dev_id: domain.idev,
        pt_id: domain.parent,
        data_type: IOMMU_HWPT_DATA_SELFTEST,
        data_len: size_of::<IommuHwptSelftest>() as u32,
        data_uptr: std::ptr::from_mut(&mut data) as u64,
        fault_id: fault,
        ..Default::default()
    };
    ioctl(domain.iommufd, IOMMU_HWPT_ALLOC, &mut nested)?;
    let replace = TestMockDomainReplace {
        pt_id: nested.out_hwpt_id,
    };
    test_cmd(domain.iommufd, domain.stdev, &replace)?;
    Ok(Iopf {
        iommufd: domain.iommufd,
        ioas: domain.ioas,
        stdev: domain.stdev,
        idev: domain.idev,
        nested: nested.out_hwpt_id,
        fault,
        fault_fd: -1,
    })
}

/// The selftest's iopf fixture: IOAS, mock domain, NEST_PARENT paging HWPT, fault queue,
/// nested HWPT with `IOMMU_HWPT_FAULT_ID_VALID`, and the device moved onto it.
fn setup() -> Result<Iopf, String> {
    let domain = mock_nest_parent()?;
    let (fault, fault_fd) = fault_queue(domain.iommufd)?;
    let iopf = nest_with_fault(&domain, fault)?;
    Ok(Iopf { fault_fd, ..iopf })
}

const FAULT_ADDR: u64 = 0xdead_beaf;

impl Iopf {
    fn trigger(&self, grpid: u32) -> Check {
        let trigger = TestTriggerIopf {
            dev_id: self.idev,
            pasid: 0,
            grpid,
            perm: IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE,
            addr: FAULT_ADDR,
        };
        test_cmd(self.iommufd, 0, &trigger).map(drop)
    }

    /// Read every queued record: (bytes read, records).
    fn read(&self) -> Result<Vec<IommuHwptPgfault>, String> {
        let mut records = [IommuHwptPgfault::default(); 4];
        // SAFETY: `records` is a live array of `size_of_val(&records)` bytes.
        let n = unsafe {
            libc::read(
                self.fault_fd,
                records.as_mut_ptr().cast(),
                size_of_val(&records),
            )
        };
        ensure(n >= 0, || {
            format!("read of the fault fd: errno {}", errno())
        })?;
        let count = n as usize / size_of::<IommuHwptPgfault>();
        Ok(records[..count].to_vec())
    }

    /// Read exactly one record of group `grpid` and answer it SUCCESS.
    fn read_and_respond(&self, grpid: u32) -> Check {
        let records = self.read()?;
        ensure(
            records.len() == 1 && records[0].grpid == grpid && records[0].addr == FAULT_ADDR,
            || format!("expected one record of group {grpid}, read {records:?}"),
        )?;
        let response = IommuHwptPageResponse {
            cookie: records[0].cookie,
            code: IOMMUFD_PAGE_RESP_SUCCESS,
        };
        // SAFETY: `response` is a live struct of the size passed.
        let n = unsafe {
            libc::write(
                self.fault_fd,
                std::ptr::from_ref(&response).cast(),
                size_of::<IommuHwptPageResponse>(),
            )
        };
        ensure(n == 8, || {
            format!("response write gave {n} (errno {})", errno())
        })
    }
}

fn destroy(iommufd: i32, id: u32) -> Result<(), i32> {
    let mut cmd = IommuDestroy {
        size: size_of::<IommuDestroy>() as u32,
        id,
    };
    ioctl(iommufd, IOMMU_DESTROY, &mut cmd).map_err(|_| errno())
}

/// `poll` of one descriptor for `POLLIN | POLLOUT`: its `revents`.
fn poll_events(fd: i32, timeout_ms: i32) -> Result<i16, String> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
    ensure(n >= 0, || format!("poll: errno {}", errno()))?;
    Ok(poll.revents)
}

/// `poll` for `POLLIN` only, with a timeout: whether the fd became readable.
fn wait_readable(fd: i32, timeout_ms: i32) -> Result<bool, String> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
    ensure(n >= 0, || format!("poll: errno {}", errno()))?;
    Ok(poll.revents & libc::POLLIN != 0)
}

fn poll_check() -> Check {
    let iopf = setup()?;
    let fd = iopf.fault_fd;
    let idle = poll_events(fd, 50)?;
    ensure(idle == libc::POLLOUT, || {
        format!("an empty queue polled {idle:#x}, not POLLOUT only")
    })?;
    iopf.trigger(1)?;
    let pending = poll_events(fd, 0)?;
    ensure(pending == libc::POLLIN | libc::POLLOUT, || {
        format!("a queued fault polled {pending:#x}, not POLLIN|POLLOUT")
    })?;
    iopf.read_and_respond(1)?;
    let answered = poll_events(fd, 0)?;
    ensure(answered == libc::POLLOUT, || {
        format!("after the read the fd polled {answered:#x}")
    })?;
    let empty = iopf.read()?;
    ensure(empty.is_empty(), || {
        format!("an empty queue read {empty:?}")
    })?;

    // Two faults, one read takes both; POLLIN stays until then.
    iopf.trigger(2)?;
    iopf.trigger(3)?;
    ensure(wait_readable(fd, 0)?, || {
        "two queued faults not readable".into()
    })?;
    let both = iopf.read()?;
    ensure(both.len() == 2, || format!("one read took {both:?}"))?;
    ensure(!wait_readable(fd, 0)?, || {
        "readable after the queue was read".into()
    })?;

    // A thread blocked in poll wakes for a fault raised meanwhile.
    let waiter = std::thread::spawn(move || wait_readable(fd, 10_000));
    std::thread::sleep(Duration::from_millis(100));
    iopf.trigger(4)?;
    let woke = waiter.join().map_err(|_| "poll thread panicked")??;
    ensure(woke, || "a blocked poll did not wake for a fault".into())?;
    iopf.read_and_respond(4)?;
    ensure(!wait_readable(fd, 0)?, || {
        "readable after the last read".into()
    })
}

/// `select` with a zero timeout: (readable, writable).
fn select_ready(fd: i32) -> Result<(bool, bool), String> {
    // SAFETY: fd_set is plain old data; FD_ZERO/FD_SET/FD_ISSET touch only the live sets, and
    // the fault fd is far below FD_SETSIZE in this program.
    unsafe {
        let mut read_set: libc::fd_set = std::mem::zeroed();
        let mut write_set: libc::fd_set = std::mem::zeroed();
        libc::FD_ZERO(&mut read_set);
        libc::FD_ZERO(&mut write_set);
        libc::FD_SET(fd, &mut read_set);
        libc::FD_SET(fd, &mut write_set);
        let mut timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let n = libc::select(
            fd + 1,
            &mut read_set,
            &mut write_set,
            std::ptr::null_mut(),
            &mut timeout,
        );
        ensure(n >= 0, || format!("select: errno {}", errno()))?;
        Ok((
            libc::FD_ISSET(fd, &read_set),
            libc::FD_ISSET(fd, &write_set),
        ))
    }
}

fn select_check() -> Check {
    let iopf = setup()?;
    let idle = select_ready(iopf.fault_fd)?;
    ensure(idle == (false, true), || {
        format!("an empty queue selected as {idle:?}")
    })?;
    iopf.trigger(1)?;
    let pending = select_ready(iopf.fault_fd)?;
    ensure(pending == (true, true), || {
        format!("a queued fault selected as {pending:?}")
    })?;
    iopf.read_and_respond(1)?;
    let answered = select_ready(iopf.fault_fd)?;
    ensure(answered == (false, true), || {
        format!("after the read, selected as {answered:?}")
    })
}

/// `epoll_wait` for at most one event: its event bits, or `None` after `timeout_ms`.
fn epoll_wait_one(epoll: i32, timeout_ms: i32) -> Result<Option<u32>, String> {
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: one live epoll_event.
    let n = unsafe { libc::epoll_wait(epoll, &mut event, 1, timeout_ms) };
    ensure(n >= 0, || format!("epoll_wait: errno {}", errno()))?;
    Ok((n == 1).then_some(event.events))
}

fn epoll_for(fd: i32, events: u32) -> Result<i32, String> {
    // SAFETY: integer flags.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    ensure(epoll >= 0, || format!("epoll_create1: errno {}", errno()))?;
    let mut event = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: one live epoll_event.
    let added = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    ensure(added == 0, || format!("epoll_ctl: errno {}", errno()))?;
    Ok(epoll)
}

fn epoll_check() -> Check {
    let iopf = setup()?;
    let level = epoll_for(iopf.fault_fd, libc::EPOLLIN as u32)?;
    ensure(epoll_wait_one(level, 50)?.is_none(), || {
        "EPOLLIN on an empty queue".into()
    })?;
    iopf.trigger(1)?;
    let got = epoll_wait_one(level, 1000)?;
    ensure(got == Some(libc::EPOLLIN as u32), || {
        format!("a fault gave {got:?}")
    })?;
    let again = epoll_wait_one(level, 0)?;
    ensure(again == Some(libc::EPOLLIN as u32), || {
        format!("level-triggered EPOLLIN did not persist: {again:?}")
    })?;
    iopf.read_and_respond(1)?;
    ensure(epoll_wait_one(level, 50)?.is_none(), || {
        "EPOLLIN after the queue was read".into()
    })?;

    let all = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
    let out = epoll_for(iopf.fault_fd, all)?;
    let writable = epoll_wait_one(out, 0)?;
    ensure(writable == Some(libc::EPOLLOUT as u32), || {
        format!("an empty queue gave {writable:?}, not EPOLLOUT")
    })?;

    let edge = epoll_for(iopf.fault_fd, (libc::EPOLLIN | libc::EPOLLET) as u32)?;
    iopf.trigger(2)?;
    let first = epoll_wait_one(edge, 1000)?;
    ensure(first == Some(libc::EPOLLIN as u32), || {
        format!("edge-triggered wait gave {first:?}")
    })?;
    ensure(epoll_wait_one(edge, 0)?.is_none(), || {
        "an edge was reported twice".into()
    })?;
    iopf.read_and_respond(2)?;
    iopf.trigger(3)?;
    let second = epoll_wait_one(edge, 1000)?;
    ensure(second == Some(libc::EPOLLIN as u32), || {
        format!("the next fault's edge gave {second:?}")
    })?;
    iopf.read_and_respond(3)
}

/// The child's side of `fork`: wait for the parent's fault, then raise and handle its own.
fn fork_child(iopf: &Iopf, ready: i32) -> Check {
    ensure(!wait_readable(iopf.fault_fd, 0)?, || {
        "the child's fd was readable before any fault".into()
    })?;
    // Tell the parent we are about to wait, then wait for its fault.
    // SAFETY: a live one-byte buffer.
    unsafe { libc::write(ready, [1u8].as_ptr().cast(), 1) };
    ensure(wait_readable(iopf.fault_fd, 10_000)?, || {
        "the parent's fault did not make the child's fd readable".into()
    })?;
    iopf.read_and_respond(1)?;
    ensure(!wait_readable(iopf.fault_fd, 0)?, || {
        "the child's fd stayed readable after its read".into()
    })?;
    iopf.trigger(2)?;
    ensure(wait_readable(iopf.fault_fd, 1000)?, || {
        "the child's own fault did not make its fd readable".into()
    })?;
    iopf.read_and_respond(2)?;
    ensure(!wait_readable(iopf.fault_fd, 0)?, || {
        "readable after the child's second read".into()
    })
}

fn fork_check() -> Check {
    fork_and_fault(false)
}

/// As `fork`, but the parent closes its copy of the fault fd right after the fork: the child's
/// copy still polls readable when a fault is queued.
fn fork_parent_closed_check() -> Check {
    fork_and_fault(true)
}

fn fork_and_fault(parent_closes: bool) -> Check {
    let iopf = setup()?;
    let mut ready = [0i32; 2];
    // SAFETY: a live array of two ints.
    ensure(unsafe { libc::pipe(ready.as_mut_ptr()) } == 0, || {
        "pipe".into()
    })?;
    // SAFETY: the child uses inherited descriptors and its own memory, and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = match fork_child(&iopf, ready[1]) {
            Ok(()) => 0,
            Err(what) => {
                println!("child: {what}");
                1
            }
        };
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code) }
    }
    if parent_closes {
        // SAFETY: closes our copy of the fault fd; the child keeps its own.
        ensure(unsafe { libc::close(iopf.fault_fd) } == 0, || {
            "close of the parent's fault fd".into()
        })?;
    }
    let mut byte = [0u8; 1];
    // SAFETY: a live one-byte buffer.
    let n = unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) };
    ensure(n == 1, || "the child did not get ready".into())?;
    std::thread::sleep(Duration::from_millis(50));
    iopf.trigger(1)?;
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ensure(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("the child failed: status {status:#x}"),
    )?;
    if parent_closes {
        return Ok(());
    }
    ensure(!wait_readable(iopf.fault_fd, 0)?, || {
        "the parent's fd is readable after the child handled every fault".into()
    })
}

/// A fault answered automatically (the device leaves the HWPT) leaves the fd readable until
/// the next read, which returns nothing; closing the fd with a fault queued still releases the
/// file, so the FAULT object can be destroyed.
fn close_check() -> Check {
    let iopf = setup()?;
    iopf.trigger(1)?;
    let back = TestMockDomainReplace { pt_id: iopf.ioas };
    test_cmd(iopf.iommufd, iopf.stdev, &back)?;
    let spurious = iopf.read()?;
    ensure(spurious.is_empty(), || {
        format!("an automatically answered fault was still read: {spurious:?}")
    })?;
    ensure(!wait_readable(iopf.fault_fd, 0)?, || {
        "readable after a read of the emptied queue".into()
    })?;
    destroy(iopf.iommufd, iopf.nested).map_err(|e| format!("destroy nested: errno {e}"))?;
    let held = destroy(iopf.iommufd, iopf.fault);
    ensure(held == Err(libc::EBUSY), || {
        format!("destroying the FAULT with its fd open gave {held:?}")
    })?;
    // SAFETY: closes our descriptor.
    ensure(unsafe { libc::close(iopf.fault_fd) } == 0, || {
        format!("close: errno {}", errno())
    })?;
    destroy(iopf.iommufd, iopf.fault)
        .map_err(|e| format!("the FAULT stayed busy after its fd was closed: errno {e}"))
}

/// A fault fd closed with a fault queued (its readiness byte unread) is released all the same.
fn close_readable_check() -> Check {
    let iopf = setup()?;
    iopf.trigger(1)?;
    ensure(wait_readable(iopf.fault_fd, 0)?, || "not readable".into())?;
    // SAFETY: closes our descriptor.
    ensure(unsafe { libc::close(iopf.fault_fd) } == 0, || {
        format!("close: errno {}", errno())
    })?;
    let back = TestMockDomainReplace { pt_id: iopf.ioas };
    test_cmd(iopf.iommufd, iopf.stdev, &back)?;
    destroy(iopf.iommufd, iopf.nested).map_err(|e| format!("destroy nested: errno {e}"))?;
    destroy(iopf.iommufd, iopf.fault)
        .map_err(|e| format!("the FAULT stayed busy after its fd was closed: errno {e}"))
}

/// The lowest descriptor number free now (what the next `open` would return).
fn lowest_free() -> Result<i32, String> {
    // SAFETY: duplicates stdin's slot probe onto the lowest free number, closed at once.
    let probe = unsafe { libc::fcntl(0, libc::F_DUPFD, 0) };
    ensure(probe >= 0, || format!("F_DUPFD: errno {}", errno()))?;
    // SAFETY: closes the probe just made.
    unsafe { libc::close(probe) };
    Ok(probe)
}

/// Whether `fd` is open with close-on-exec, as handed-out files are.
fn is_cloexec(fd: i32) -> bool {
    // SAFETY: integer fcntl command.
    unsafe { libc::fcntl(fd, libc::F_GETFD) == libc::FD_CLOEXEC }
}

const ACCESS_IOVA: u64 = 1 << 24;
const PAGE: usize = 4096;

/// The child's half of `child-alloc`: it allocates a fault queue and an access on the
/// inherited iommufd, uses both, reports the FAULT and nested HWPT ids on `to_parent`, and
/// closes both once the parent writes to `to_child`.
fn child_alloc(domain: &Domain, to_parent: i32, to_child: i32) -> Check {
    let expected = lowest_free()?;
    let (fault, fault_fd) = fault_queue(domain.iommufd)?;
    ensure(fault_fd == expected, || {
        format!("the fault fd is {fault_fd}, the lowest free number was {expected}")
    })?;
    ensure(is_cloexec(fault_fd), || {
        "the fault fd is not close-on-exec".into()
    })?;
    let iopf = Iopf {
        fault_fd,
        ..nest_with_fault(domain, fault)?
    };
    ensure(poll_events(fault_fd, 0)? == libc::POLLOUT, || {
        "the child's new fault fd polled other than POLLOUT".into()
    })?;
    iopf.trigger(1)?;
    ensure(wait_readable(fault_fd, 1000)?, || {
        "the child's fault did not make its fault fd readable".into()
    })?;
    iopf.read_and_respond(1)?;
    ensure(poll_events(fault_fd, 0)? == libc::POLLOUT, || {
        "the child's fault fd stayed readable after its read".into()
    })?;

    let expected = lowest_free()?;
    let access = test_cmd(domain.iommufd, domain.ioas, &TestCreateAccess::default())?
        .payload::<TestCreateAccess>()
        .out_access_fd as i32;
    ensure(access == expected, || {
        format!("the access fd is {access}, the lowest free number was {expected}")
    })?;
    ensure(is_cloexec(access), || {
        "the access fd is not close-on-exec".into()
    })?;
    // The access reads the child's memory mapped into the IOAS: the engine finds the access
    // by the child's number.
    // SAFETY: a fresh anonymous page chosen by the kernel; nothing else refers to it.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure(page != libc::MAP_FAILED, || "mmap".into())?;
    let pattern = 0x0123_4567_89ab_cdefu64.to_ne_bytes();
    // SAFETY: the page is mapped writable and larger than the pattern.
    unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), page.cast::<u8>(), 8) };
    let mut map = IommuIoasMap {
        size: size_of::<IommuIoasMap>() as u32,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: domain.ioas,
        user_va: page as u64,
        length: PAGE as u64,
        iova: ACCESS_IOVA,
        ..Default::default()
    };
    ioctl(domain.iommufd, IOMMU_IOAS_MAP, &mut map)?;
    let mut read_back = [0u8; 8];
    let rw = TestAccessRw {
        iova: ACCESS_IOVA,
        length: 8,
        uptr: read_back.as_mut_ptr() as u64,
        ..Default::default()
    };
    test_cmd(domain.iommufd, access as u32, &rw)?;
    ensure(read_back == pattern, || {
        format!("ACCESS_RW through the child's access fd read {read_back:x?}")
    })?;
    let not_access = test_cmd(domain.iommufd, fault_fd as u32, &rw);
    ensure(not_access.is_err() && errno() == libc::EBADFD, || {
        "ACCESS_RW through the fault fd was not EBADFD".into()
    })?;
    let mut byte = [0u8; 1];
    // SAFETY: a live one-byte buffer.
    let n = unsafe { libc::read(access, byte.as_mut_ptr().cast(), 1) };
    ensure(n == -1 && errno() == libc::EINVAL, || {
        "a read of the child's access fd was not EINVAL".into()
    })?;

    let ids = [fault, iopf.nested];
    // SAFETY: a live array of the stated size.
    let n = unsafe { libc::write(to_parent, ids.as_ptr().cast(), size_of_val(&ids)) };
    ensure(n == size_of_val(&ids) as isize, || "report ids".into())?;
    // SAFETY: a live one-byte buffer.
    let n = unsafe { libc::read(to_child, byte.as_mut_ptr().cast(), 1) };
    ensure(n == 1, || "the parent did not answer".into())?;
    for fd in [fault_fd, access] {
        // SAFETY: closes our descriptor.
        ensure(unsafe { libc::close(fd) } == 0, || {
            format!("close {fd}: errno {}", errno())
        })?;
    }
    Ok(())
}

/// Files an ioctl of a fork child hands out are the child's: its lowest free numbers,
/// close-on-exec, readable, pollable and usable by number; the parent sees the objects, and
/// the child's closes release them before `waitpid` returns.
fn child_alloc_check() -> Check {
    let domain = mock_nest_parent()?;
    let mut to_parent = [0i32; 2];
    let mut to_child = [0i32; 2];
    // SAFETY: live arrays of two ints.
    let piped = unsafe {
        libc::pipe(to_parent.as_mut_ptr()) == 0 && libc::pipe(to_child.as_mut_ptr()) == 0
    };
    ensure(piped, || "pipe".into())?;
    // SAFETY: the child uses inherited descriptors and its own memory, and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = match child_alloc(&domain, to_parent[1], to_child[0]) {
            Ok(()) => 0,
            Err(what) => {
                println!("child: {what}");
                1
            }
        };
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code) }
    }
    // SAFETY: closes our copies of the child's ends, so a dead child reads as end of file.
    unsafe {
        libc::close(to_parent[1]);
        libc::close(to_child[0]);
    }
    let mut ids = [0u32; 2];
    // SAFETY: a live array of the stated size.
    let n = unsafe { libc::read(to_parent[0], ids.as_mut_ptr().cast(), size_of_val(&ids)) };
    let reported = n == size_of_val(&ids) as isize;
    let [fault, nested] = ids;
    let busy = reported.then(|| destroy(domain.iommufd, fault));
    // SAFETY: a live one-byte buffer.
    unsafe { libc::write(to_child[1], [1u8].as_ptr().cast(), 1) };
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ensure(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("the child failed: status {status:#x}"),
    )?;
    ensure(busy == Some(Err(libc::EBUSY)), || {
        format!("destroying the child's FAULT while it held the fd gave {busy:?}")
    })?;
    let back = TestMockDomainReplace { pt_id: domain.ioas };
    test_cmd(domain.iommufd, domain.stdev, &back)?;
    destroy(domain.iommufd, nested).map_err(|e| format!("destroy nested: errno {e}"))?;
    destroy(domain.iommufd, fault)
        .map_err(|e| format!("the child's close did not release the fault fd: errno {e}"))?;
    destroy(domain.iommufd, domain.stdev).map_err(|e| format!("destroy stdev: errno {e}"))?;
    destroy(domain.iommufd, domain.parent).map_err(|e| format!("destroy parent: errno {e}"))?;
    destroy(domain.iommufd, domain.ioas)
        .map_err(|e| format!("the child's close did not release the access: errno {e}"))
}

/// A named check.
type NamedCheck = (&'static str, fn() -> Check);

fn main() -> ExitCode {
    let checks: [NamedCheck; 8] = [
        ("poll", poll_check),
        ("select", select_check),
        ("epoll", epoll_check),
        ("fork", fork_check),
        ("fork-parent-closed", fork_parent_closed_check),
        ("close", close_check),
        ("close-readable", close_readable_check),
        ("child-alloc", child_alloc_check),
    ];
    let Some(name) = std::env::args().nth(1) else {
        eprintln!(
            "usage: fault_poll CHECK (one of poll, select, epoll, fork, fork-parent-closed, close, \
             close-readable, child-alloc)"
        );
        return ExitCode::FAILURE;
    };
    let Some((_, check)) = checks.iter().find(|(n, _)| *n == name) else {
        eprintln!("unknown check {name}");
        return ExitCode::FAILURE;
    };
    report(&name, check())
}
