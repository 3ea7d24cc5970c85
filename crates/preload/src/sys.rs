//! The system calls the library makes for itself.
//!
//! The library exports `close`, `read`, `write`, `fcntl`, `dup*` and `open*`, so calling those
//! libc functions from inside it would re-enter its own wrappers. Everything here therefore
//! uses either the raw `syscall(2)` entry point or libc functions the library does not export
//! (`pipe2`, `poll`, `fstat`, sockets, `process_vm_readv`, ...). Rust's `std::fs` and
//! `OwnedFd` are never used for the library's own descriptors for the same reason.
//!
//! # Safety
//!
//! This module and [`crate::real`] and the exported symbols are the crate's only unsafe code.
//! Each call passes buffers that Rust owns and borrows for exactly the call, with their true
//! lengths, or plain integers (descriptor numbers, flags). Pointers received from the program
//! are never dereferenced: the program's memory is read and written only through
//! `process_vm_readv`/`process_vm_writev` on our own pid, which the kernel validates and
//! answers with `EFAULT` instead of a fault.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use uiommu_iommufd::errno::Errno;

/// A system call's result: the value, or the errno it set.
pub type SysResult<T> = Result<T, Errno>;

/// Errno values the library uses beyond those the iommufd ABI names.
pub const EINTR: Errno = Errno::from_raw(libc::EINTR);
/// `ENAMETOOLONG`.
pub const ENAMETOOLONG: Errno = Errno::from_raw(libc::ENAMETOOLONG);
/// `ENOSYS`.
pub const ENOSYS: Errno = Errno::from_raw(libc::ENOSYS);
/// `EACCES`.
pub const EACCES: Errno = Errno::from_raw(libc::EACCES);
/// `ENOTDIR`.
pub const ENOTDIR: Errno = Errno::from_raw(libc::ENOTDIR);

/// The calling thread's `errno`.
pub fn last_errno() -> Errno {
    Errno::from_raw(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Set the calling thread's `errno`, as a failing libc call does.
pub fn set_errno(errno: Errno) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, valid for the
    // thread's lifetime and written only by this thread.
    unsafe { *libc::__errno_location() = errno.raw() };
}

/// libc's `syscall`: the definition after this library's own (which routes the program's
/// calls into the shim, and so must never see the library's).
fn next_syscall_fn() -> Option<unsafe extern "C" fn(libc::c_long, ...) -> libc::c_long> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let mut address = SLOT.load(Ordering::Relaxed);
    if address == 0 {
        // SAFETY: a NUL-terminated symbol name; RTLD_NEXT searches the objects after this one.
        address = unsafe { libc::dlsym(libc::RTLD_NEXT, c"syscall".as_ptr()) } as usize;
        SLOT.store(address, Ordering::Relaxed);
    }
    if address == 0 {
        return None;
    }
    type Syscall = unsafe extern "C" fn(libc::c_long, ...) -> libc::c_long;
    // SAFETY: `address` is the non-null address of libc's `syscall`, of this prototype.
    Some(unsafe { std::mem::transmute::<usize, Syscall>(address) })
}

/// Call libc's `syscall` (see [`next_syscall_fn`]); `ENOSYS` if there is none.
macro_rules! next_syscall {
    ($($arg:expr),+ $(,)?) => {
        match next_syscall_fn() {
            Some(function) => function($($arg),+),
            None => {
                set_errno(ENOSYS);
                -1
            }
        }
    };
}

/// Call libc's `syscall` with the program's own seven arguments (the exported `syscall`
/// passes through what it does not serve).
///
/// # Safety
/// The arguments must be the program's own, as it passed them to `syscall`.
pub unsafe fn forward_syscall(number: libc::c_long, args: [libc::c_long; 6]) -> libc::c_long {
    let [a, b, c, d, e, f] = args;
    // SAFETY: forwarded under the caller's promise.
    unsafe { next_syscall!(number, a, b, c, d, e, f) }
}

fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret)
    }
}

/// `close(fd)`.
pub fn close(fd: i32) -> SysResult<()> {
    // SAFETY: closes a descriptor number; no memory is involved.
    check(unsafe { next_syscall!(libc::SYS_close, fd) }).map(drop)
}

/// `fcntl(fd, cmd, arg)` for the integer-argument commands (`F_DUPFD*`, `F_GETFD`,
/// `F_SETFD`, `F_GETFL`).
pub fn fcntl(fd: i32, cmd: i32, arg: libc::c_long) -> SysResult<i32> {
    debug_assert!(matches!(
        cmd,
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC | libc::F_GETFD | libc::F_SETFD | libc::F_GETFL
    ));
    // SAFETY: the commands allowed above take an integer argument and touch no memory.
    check(unsafe { next_syscall!(libc::SYS_fcntl, fd, cmd, arg) }).map(|v| v as i32)
}

/// `dup(fd)`.
pub fn dup(fd: i32) -> SysResult<i32> {
    fcntl(fd, libc::F_DUPFD, 0)
}

/// `dup3(old, new, flags)`; `old == new` is `dup2`'s "check and return".
pub fn dup3(old: i32, new: i32, flags: i32) -> SysResult<i32> {
    if old == new {
        return fcntl(old, libc::F_GETFD, 0).map(|_| new);
    }
    // SAFETY: descriptor numbers and flags only.
    check(unsafe { next_syscall!(libc::SYS_dup3, old, new, flags) }).map(|v| v as i32)
}

/// `close_range(first, last, flags)`.
pub fn close_range(first: u32, last: u32, flags: u32) -> SysResult<()> {
    // SAFETY: descriptor numbers and flags only.
    check(unsafe { next_syscall!(libc::SYS_close_range, first, last, flags) }).map(drop)
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe_cloexec() -> SysResult<(i32, i32)> {
    let mut fds = [-1i32; 2];
    // SAFETY: `fds` is a live array of two ints the kernel fills.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    Ok((fds[0], fds[1]))
}

/// The (device, inode) pair naming the open file behind `fd`.
pub fn file_identity(fd: i32) -> SysResult<(u64, u64)> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` is a live, writable `struct stat` the kernel fills on success.
    check(unsafe { libc::fstat(fd, stat.as_mut_ptr()) }.into())?;
    // SAFETY: fstat succeeded, so the kernel initialised the whole struct.
    let stat = unsafe { stat.assume_init() };
    Ok((stat.st_dev, stat.st_ino))
}

/// `poll(fds, timeout_ms)`, retried on `EINTR` only when the timeout is zero.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> SysResult<usize> {
    loop {
        // SAFETY: `fds` is a live slice of pollfd the kernel updates in place, with its length.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        match check(ret.into()) {
            Err(EINTR) if timeout_ms == 0 => continue,
            other => return other.map(|n| n as usize),
        }
    }
}

/// `read(fd, buf)` on one of the library's own descriptors.
pub fn read(fd: i32, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
    check(unsafe { next_syscall!(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) })
        .map(|n| n as usize)
}

/// `write(fd, data)` on one of the library's own descriptors.
pub fn write(fd: i32, data: &[u8]) -> SysResult<usize> {
    // SAFETY: `data` is a live buffer of `data.len()` bytes the kernel only reads.
    check(unsafe { next_syscall!(libc::SYS_write, fd, data.as_ptr(), data.len()) })
        .map(|n| n as usize)
}

/// `openat(AT_FDCWD, path, flags, mode)` for the library's own files (the caller chooses
/// whether `O_CLOEXEC` is in `flags`).
pub fn open(path: &std::ffi::CStr, flags: i32, mode: u32) -> SysResult<i32> {
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    check(unsafe { next_syscall!(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, mode,) })
        .map(|fd| fd as i32)
}

/// `mkdir(path, mode)`; an existing directory is success.
pub fn mkdir(path: &std::ffi::CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    match check(unsafe { libc::mkdir(path.as_ptr(), mode) }.into()) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Whether `path` names an existing file (`access(path, F_OK)`).
pub fn exists(path: &std::ffi::CStr) -> bool {
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// The calling process's id.
pub fn getpid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// The real user id.
pub fn getuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getuid() }
}

/// The soft `RLIMIT_NOFILE`.
pub fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live rlimit the kernel fills.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Copy `buf.len()` bytes of this process's memory at `addr` into `buf`, as `copy_from_user`
/// would: all or `EFAULT`.
pub fn read_user(addr: usize, buf: &mut [u8]) -> SysResult<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: addr.checked_add(done).ok_or(Errno::EFAULT)? as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: `local` describes the unfilled tail of `buf`, live and writable for the call;
        // `remote` is a plain address range the kernel checks against our page tables.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(Errno::EFAULT);
        }
        done += n as usize;
    }
    Ok(())
}

/// Copy `data` into this process's memory at `addr` (`copy_to_user`): all or `EFAULT`.
pub fn write_user(addr: usize, data: &[u8]) -> SysResult<()> {
    let mut done = 0usize;
    while done < data.len() {
        let local = libc::iovec {
            iov_base: data[done..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        let remote = libc::iovec {
            iov_base: addr.checked_add(done).ok_or(Errno::EFAULT)? as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        // SAFETY: `local` describes the unsent tail of `data`, which the kernel only reads;
        // `remote` is a plain address range the kernel checks against our page tables.
        let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(Errno::EFAULT);
        }
        done += n as usize;
    }
    Ok(())
}

/// Read the NUL-terminated string at `addr` (without its NUL), at most `max` bytes, page by
/// page so that a string ending just before an unmapped page is still read.
///
/// # Errors
/// `EFAULT` for an unreadable byte before the NUL, `ENAMETOOLONG` past `max`.
pub fn read_user_cstr(addr: usize, max: usize) -> SysResult<Vec<u8>> {
    const PAGE: usize = 4096;
    if addr == 0 {
        return Err(Errno::EFAULT);
    }
    let mut out = Vec::new();
    let mut cursor = addr;
    while out.len() <= max {
        let chunk = PAGE - cursor % PAGE;
        let mut buf = [0u8; PAGE];
        read_user(cursor, &mut buf[..chunk])?;
        if let Some(nul) = buf[..chunk].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..nul]);
            return if out.len() > max {
                Err(ENAMETOOLONG)
            } else {
                Ok(out)
            };
        }
        out.extend_from_slice(&buf[..chunk]);
        cursor = cursor.checked_add(chunk).ok_or(Errno::EFAULT)?;
    }
    Err(ENAMETOOLONG)
}

/// Control-message buffer big enough for one descriptor, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct FdControl([u8; 64]);

/// A connected `SOCK_SEQPACKET` UNIX socket pair, close-on-exec: no name, so only the
/// processes that hold one end (by inheritance or by `SCM_RIGHTS`) can reach the other.
pub fn seqpacket_pair() -> SysResult<(i32, i32)> {
    let mut fds = [-1i32; 2];
    // SAFETY: `fds` is a live array of two ints the kernel fills.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    check(ret.into())?;
    Ok((fds[0], fds[1]))
}

fn set_socket_option<T>(fd: i32, option: i32, value: &T) -> SysResult<()> {
    // SAFETY: `value` is a live `T` of which the kernel reads `size_of::<T>()` bytes.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(ret.into()).map(drop)
}

/// `SO_PASSCRED`: every message received on `fd` carries the sender's credentials, as the
/// kernel saw them at `sendmsg`.
pub fn pass_credentials(fd: i32) -> SysResult<()> {
    set_socket_option(fd, libc::SO_PASSCRED, &1i32)
}

/// `SO_RCVTIMEO` and `SO_SNDTIMEO`: a receive, or a send into a full buffer, on `fd` gives
/// up with `EAGAIN` after `seconds`.
pub fn transfer_timeout(fd: i32, seconds: i64) -> SysResult<()> {
    let timeout = libc::timeval {
        tv_sec: seconds,
        tv_usec: 0,
    };
    set_socket_option(fd, libc::SO_RCVTIMEO, &timeout)?;
    set_socket_option(fd, libc::SO_SNDTIMEO, &timeout)
}

/// A sender's credentials, from `SCM_CREDENTIALS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The sending process.
    pub pid: u32,
    /// Its real user id.
    pub uid: u32,
}

/// A `inotify` instance, non-blocking and close-on-exec.
pub fn inotify() -> SysResult<i32> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) }.into())
        .map(|fd| fd as i32)
}

/// Watch the inode `path` names (following links) for the close of any open file on it.
pub fn watch_closes(inotify: i32, path: &std::ffi::CStr) -> SysResult<i32> {
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    let ret = unsafe {
        libc::inotify_add_watch(
            inotify,
            path.as_ptr(),
            libc::IN_CLOSE_WRITE | libc::IN_CLOSE_NOWRITE,
        )
    };
    check(ret.into()).map(|wd| wd as i32)
}

/// Remove watch `wd`.
pub fn unwatch(inotify: i32, wd: i32) {
    // SAFETY: integer arguments only.
    unsafe { libc::inotify_rm_watch(inotify, wd) };
}

/// The watches with a close event queued on `inotify` (non-blocking: none when empty).
pub fn closed_watches(inotify: i32) -> Vec<i32> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut closed = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(len) = read(inotify, &mut buf) {
        let mut at = 0;
        while at + HEADER <= len {
            let field = |offset: usize| {
                u32::from_ne_bytes(
                    buf[at + offset..at + offset + 4]
                        .try_into()
                        .unwrap_or_default(),
                )
            };
            let (wd, mask, name_len) = (field(0) as i32, field(4), field(12) as usize);
            if mask & (libc::IN_CLOSE_WRITE | libc::IN_CLOSE_NOWRITE) != 0 {
                closed.push(wd);
            }
            at += HEADER + name_len;
        }
        if len == 0 {
            break;
        }
    }
    closed
}

/// Send one message, optionally passing the descriptor `pass` with `SCM_RIGHTS`.
pub fn send_message(fd: i32, data: &[u8], pass: Option<i32>) -> SysResult<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = FdControl([0; 64]);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(passed) = pass {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `control`, which holds `space` ≤ 64 aligned bytes, so
        // the first header and its data lie inside it.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<i32>(), passed);
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (describing `data`) and `control`, all live for the call.
        let ret = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        match check(ret as libc::c_long) {
            Ok(_) => return Ok(()),
            Err(EINTR) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Receive one message into `buf`: its length (0 at end of stream) and the descriptor passed
/// with it, if any (installed close-on-exec).
pub fn receive_message(fd: i32, buf: &mut [u8]) -> SysResult<(usize, Option<i32>)> {
    receive_message_from(fd, buf).map(|(len, passed, _)| (len, passed))
}

/// [`receive_message`], with the sender's credentials when `fd` has [`pass_credentials`] on.
/// Of several descriptors passed at once, all but the first are closed.
pub fn receive_message_from(
    fd: i32,
    buf: &mut [u8],
) -> SysResult<(usize, Option<i32>, Option<Credentials>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = FdControl([0; 64]);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    let len = loop {
        // SAFETY: `msg` points at `iov` (describing `buf`) and `control`, live and writable.
        let ret = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check(ret as libc::c_long) {
            Ok(n) => break n as usize,
            Err(EINTR) => continue,
            Err(err) => return Err(err),
        }
    };
    let mut passed = None;
    let mut credentials = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG macros walk
    // only within that length; SCM_RIGHTS data holds whole ints and SCM_CREDENTIALS a ucred.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            let data = libc::CMSG_DATA(header);
            let data_len = (*header).cmsg_len as usize - (data as usize - header as usize);
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                for index in 0..data_len / std::mem::size_of::<i32>() {
                    let fd = std::ptr::read_unaligned(data.cast::<i32>().add(index));
                    if passed.is_none() {
                        passed = Some(fd);
                    } else {
                        let _ = close(fd);
                    }
                }
            } else if (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == libc::SCM_CREDENTIALS
                && data_len >= std::mem::size_of::<libc::ucred>()
            {
                let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                credentials = Some(Credentials {
                    pid: cred.pid as u32,
                    uid: cred.uid,
                });
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    Ok((len, passed, credentials))
}

/// Register fork handlers (`pthread_atfork`).
pub fn atfork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: the handlers are plain functions that live as long as the library (it is
    // never unloaded: LD_PRELOAD libraries stay mapped until exit).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}
