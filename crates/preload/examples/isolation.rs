//! Checks of who can reach a program's emulated files, and of the descriptor table's
//! robustness, meant to run under the preload library (`uiommu run -- isolation CHECK`).
//! Each check prints `ok CHECK` (after lines with what it measured) and exits 0, or prints
//! what went wrong and exits 1.
//!
//! Some checks play the attacker: a fork child that finds the channel the library gave it
//! (the only UNIX socket in its descriptor table) and writes requests on it by hand, in the
//! library's wire format (`{op: u32, fail_nth: u32, a, b, c: u64}`, little endian; op 2 is an
//! ioctl of `a` with argument `b` on the descriptor passed along).
//!
//! # Safety
//! This program calls libc directly. Every pointer it passes is to a live local buffer of the
//! stated size; the fork and vfork children call only async-signal-safe functions before
//! `_exit` (and the vfork child only `close` and `_exit`).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uiommu_iommufd::abi::*;

mod common;

use common::{ensure, errno, report, Check};

fn open_iommu() -> Result<i32, i32> {
    let path: &CStr = c"/dev/iommu";
    // SAFETY: `path` is a live NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

fn close(fd: i32) -> Result<(), i32> {
    // SAFETY: closes a descriptor number.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn ioctl<T>(fd: i32, cmd: u32, arg: &mut T) -> Result<i32, i32> {
    // SAFETY: `arg` is a live struct of the size the command's first field states.
    let ret = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg as *mut T) };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

fn alloc_ioas(fd: i32) -> Result<u32, i32> {
    let mut alloc = IommuIoasAlloc {
        size: std::mem::size_of::<IommuIoasAlloc>() as u32,
        ..Default::default()
    };
    ioctl(fd, IOMMU_IOAS_ALLOC, &mut alloc)?;
    Ok(alloc.out_ioas_id)
}

fn destroy_command(id: u32) -> IommuDestroy {
    IommuDestroy {
        size: std::mem::size_of::<IommuDestroy>() as u32,
        id,
    }
}

fn destroy(fd: i32, id: u32) -> Result<i32, i32> {
    ioctl(fd, IOMMU_DESTROY, &mut destroy_command(id))
}

/// Wait for `child` and return its exit code (or 128 + signal).
fn wait(child: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child, writing into a live int.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Run `body` in a fork child, which exits with its result (0: `true`).
fn in_child(body: impl FnOnce() -> bool) -> i32 {
    // SAFETY: the child runs `body` and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = i32::from(!body());
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code) }
    }
    child
}

/// The UNIX sockets in this process's descriptor table (descriptor, inode).
fn sockets_of(pid: &str) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
        let link = std::fs::read_link(entry.path()).ok()?;
        let inode = link
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((fd, inode))
    })
    .collect()
}

/// This child's channel to the home: its only UNIX socket.
fn channel() -> Result<i32, String> {
    match sockets_of("self").as_slice() {
        [(fd, _)] => Ok(*fd),
        other => Err(format!("expected one socket, found {other:?}")),
    }
}

/// Send one hand-made request on `channel`, passing `pass` if given.
fn send_request(channel: i32, op: u32, a: u64, b: u64, pass: Option<i32>) -> bool {
    let mut bytes = [0u8; 32];
    bytes[0..4].copy_from_slice(&op.to_le_bytes());
    bytes[8..16].copy_from_slice(&a.to_le_bytes());
    bytes[16..24].copy_from_slice(&b.to_le_bytes());
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    #[repr(C, align(8))]
    struct Control([u8; 32]);
    let mut control = Control([0; 32]);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = pass {
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer holds one aligned header with room for one int.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<i32>(), fd);
        }
    }
    // SAFETY: `msg` points at live buffers for the call.
    unsafe { libc::sendmsg(channel, &msg, libc::MSG_NOSIGNAL) == bytes.len() as isize }
}

/// Receive one message on `channel` within `timeout`: its bytes (empty at end of stream), or
/// `None` when nothing came.
fn receive(channel: i32, timeout: Duration) -> Option<Vec<u8>> {
    let mut poll = libc::pollfd {
        fd: channel,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    if unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) } <= 0 {
        return None;
    }
    let mut buf = [0u8; 64];
    // SAFETY: a live buffer of 64 bytes; passed descriptors are dropped by the kernel
    // (no control buffer).
    let n = unsafe { libc::recv(channel, buf.as_mut_ptr().cast(), buf.len(), 0) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// The value of a reply (`-errno` on failure).
fn reply_value(reply: &[u8]) -> Option<i64> {
    (reply.len() == 16).then(|| i64::from_le_bytes(reply[0..8].try_into().unwrap_or_default()))
}

/// A fork child of a home forges requests on its channel: an ioctl that names no file, one
/// that passes a descriptor the home does not serve, and one from a child that changed its
/// uid. None has an effect; the home's IOAS survives them all.
fn forged_requests() -> Check {
    let fd = open_iommu().map_err(|e| format!("open: errno {e}"))?;
    let ioas = alloc_ioas(fd).map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
    let forger = in_child(|| {
        let Ok(channel) = channel() else { return false };
        let mut command = destroy_command(ioas);
        let arg = &mut command as *mut IommuDestroy as u64;
        let devnull: &CStr = c"/dev/null";
        // SAFETY: a live NUL-terminated path.
        let other = unsafe { libc::open(devnull.as_ptr(), libc::O_RDONLY) };
        let mut refused = 0;
        for pass in [None, Some(other), Some(channel)] {
            if !send_request(channel, 2, u64::from(IOMMU_DESTROY), arg, pass) {
                return false;
            }
            let reply = receive(channel, Duration::from_secs(5));
            if reply.as_deref().and_then(reply_value) == Some(-i64::from(libc::EBADF)) {
                refused += 1;
            }
        }
        println!("forged requests refused: {refused} of 3");
        refused == 3
    });
    ensure(wait(forger) == 0, || {
        "a forged request was not refused with EBADF".into()
    })?;
    let renegade = in_child(|| {
        // SAFETY: plain system call.
        if unsafe { libc::setuid(65534) } != 0 {
            return false;
        }
        let destroyed = destroy(fd, ioas);
        let opened = open_iommu();
        println!("after setuid(65534): destroy {destroyed:?}, open {opened:?}");
        destroyed.is_err() && opened.is_err()
    });
    ensure(wait(renegade) == 0, || {
        "a child that became uid 65534 was still served".into()
    })?;
    ensure(destroy(fd, ioas) == Ok(0), || {
        "the IOAS did not survive the forged requests".into()
    })?;
    close(fd).map_err(|e| format!("close: errno {e}"))
}

/// A grandchild reaches the home's files too: its parent passed the home its channel.
fn grandchild() -> Check {
    let fd = open_iommu().map_err(|e| format!("open: errno {e}"))?;
    let ioas = alloc_ioas(fd).map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
    let child = in_child(|| {
        let grandchild = in_child(|| {
            let destroyed = destroy(fd, ioas);
            let own = open_iommu().and_then(|own| alloc_ioas(own).map(|_| own));
            println!("grandchild: destroy {destroyed:?}, own file {own:?}");
            destroyed == Ok(0) && own.is_ok()
        });
        wait(grandchild) == 0 && destroy(fd, ioas) == Err(libc::ENOENT)
    });
    ensure(wait(child) == 0, || {
        "the grandchild or child was not served".into()
    })?;
    ensure(destroy(fd, ioas) == Err(libc::ENOENT), || {
        "the grandchild's destroy did not reach the home's context".into()
    })?;
    close(fd).map_err(|e| format!("close: errno {e}"))
}

/// Hold a forked program for the test runner to probe from outside: print `ready PID CHILD`,
/// then wait until stdin closes.
fn hold() -> Check {
    let fd = open_iommu().map_err(|e| format!("open: errno {e}"))?;
    alloc_ioas(fd).map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
    let mut done = [0i32; 2];
    // SAFETY: a live array of two ints.
    unsafe { libc::pipe(done.as_mut_ptr()) };
    let child = in_child(|| {
        let mut byte = [0u8; 1];
        // SAFETY: the parent's end is not ours; then a live one-byte buffer, and the read
        // returns when the parent closes its end.
        unsafe {
            libc::close(done[1]);
            libc::read(done[0], byte.as_mut_ptr().cast(), 1)
        };
        alloc_ioas(fd).is_ok()
    });
    close(done[0]).map_err(|e| format!("close: errno {e}"))?;
    println!("ready {} {child}", std::process::id());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    close(done[1]).map_err(|e| format!("close: errno {e}"))?;
    ensure(wait(child) == 0, || "the held child lost its file".into())
}

/// From an unrelated process: try to connect to every named UNIX socket whose inode is listed
/// in the arguments (the sockets of a program under the library). Prints how many accepted.
fn connect_any(inodes: &[String]) -> Check {
    let table = std::fs::read_to_string("/proc/net/unix").map_err(|e| e.to_string())?;
    let mut attempts = 0;
    let mut connected = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(inode), Some(name)) = (fields.get(6), fields.get(7)) else {
            continue;
        };
        if !inodes.iter().any(|i| i == inode) {
            continue;
        }
        attempts += 1;
        // SAFETY: sockaddr_un is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = name.as_bytes();
        let (bytes, start) = match bytes.strip_prefix(b"@") {
            Some(rest) => (rest, 1),
            None => (bytes, 0),
        };
        for (slot, &byte) in addr.sun_path[start..].iter_mut().zip(bytes) {
            *slot = byte as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + start + bytes.len();
        for kind in [libc::SOCK_SEQPACKET, libc::SOCK_STREAM, libc::SOCK_DGRAM] {
            // SAFETY: integer arguments; `addr` is a live sockaddr_un of `len` bytes.
            unsafe {
                let sock = libc::socket(libc::AF_UNIX, kind, 0);
                if libc::connect(sock, (&addr as *const libc::sockaddr_un).cast(), len as u32) == 0
                {
                    connected += 1;
                }
                libc::close(sock);
            }
        }
    }
    // SAFETY: no arguments.
    let uid = unsafe { libc::getuid() };
    println!("uid {uid}: {attempts} named sockets of the program, {connected} connections");
    ensure(connected == 0, || "an unrelated process connected".into())
}

/// A fork child sends an ioctl that makes the home call it back, and never answers; another
/// child's ioctls meanwhile are not delayed, and the silent child's channel is closed after
/// the home's timeout.
fn silent_peer() -> Check {
    let fd = open_iommu().map_err(|e| format!("open: errno {e}"))?;
    let ioas = alloc_ioas(fd).map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
    let mut sent = [0i32; 2];
    // SAFETY: a live array of two ints.
    unsafe { libc::pipe(sent.as_mut_ptr()) };
    let silent = in_child(|| {
        let Ok(channel) = channel() else { return false };
        let mut command = IommuTestCmd::new(ioas, &TestCreateAccess::default());
        let arg = &mut command as *mut IommuTestCmd as u64;
        if !send_request(channel, 2, u64::from(IOMMU_TEST_CMD), arg, Some(fd)) {
            return false;
        }
        let start = Instant::now();
        // SAFETY: a live one-byte buffer.
        unsafe { libc::write(sent[1], [1u8].as_ptr().cast(), 1) };
        // Read (and never answer) the home's callback; then wait for the channel to close.
        let callback = receive(channel, Duration::from_secs(10));
        let closed = receive(channel, Duration::from_secs(10));
        println!(
            "silent child: callback of {} bytes, channel closed after {:?}",
            callback.map_or(0, |c| c.len()),
            start.elapsed()
        );
        closed.is_some_and(|c| c.is_empty())
    });
    let mut byte = [0u8; 1];
    // SAFETY: a live one-byte buffer; the silent child writes once its request is out.
    unsafe { libc::read(sent[0], byte.as_mut_ptr().cast(), 1) };
    let busy = in_child(|| {
        let mut slowest = Duration::ZERO;
        for _ in 0..200 {
            let start = Instant::now();
            let Ok(id) = alloc_ioas(fd) else { return false };
            if destroy(fd, id).is_err() {
                return false;
            }
            slowest = slowest.max(start.elapsed());
        }
        println!("other child: slowest of 200 ioctl pairs took {slowest:?}");
        slowest < Duration::from_millis(500)
    });
    ensure(wait(busy) == 0, || {
        "another child's ioctls were stalled by the silent one".into()
    })?;
    ensure(wait(silent) == 0, || {
        "the silent child's channel was not closed after the timeout".into()
    })?;
    ensure(destroy(fd, ioas) == Ok(0), || {
        "the silent child's failed ioctl left an access behind".into()
    })?;
    close(fd).map_err(|e| format!("close: errno {e}"))
}

/// Threads hammer ioctls on one number while another thread `dup2`s two emulated files onto
/// it in turn: the number always refers to an iommufd, so no ioctl may see `ENOTTY`.
fn dup2_race() -> Check {
    let a = open_iommu().map_err(|e| format!("open: errno {e}"))?;
    let b = open_iommu().map_err(|e| format!("open: errno {e}"))?;
    // SAFETY: duplicates a descriptor number.
    let target = unsafe { libc::dup(a) };
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let enotty = Arc::new(AtomicU64::new(0));
    let hammers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, total, enotty) = (stop.clone(), total.clone(), enotty.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if destroy(target, 0) == Err(libc::ENOTTY) {
                        enotty.fetch_add(1, Ordering::Relaxed);
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut dup_failures = 0;
    for round in 0..20_000 {
        let source = if round % 2 == 0 { b } else { a };
        // SAFETY: descriptor numbers only.
        if unsafe { libc::dup2(source, target) } != target {
            dup_failures += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for hammer in hammers {
        let _ = hammer.join();
    }
    let (total, enotty) = (
        total.load(Ordering::Relaxed),
        enotty.load(Ordering::Relaxed),
    );
    println!("dup2 race: 20000 dup2s, {total} ioctls, {enotty} ENOTTY");
    ensure(dup_failures == 0, || format!("{dup_failures} dup2s failed"))?;
    ensure(enotty == 0, || {
        format!("{enotty} of {total} ioctls saw ENOTTY")
    })?;
    ensure(total > 0, || "no ioctl ran".into())
}

/// A vfork child (our memory, its own descriptor table, no fork handlers) closes the
/// program's iommufd descriptor; the parent's stays served.
fn vfork_close() -> Check {
    let fd = open_iommu().map_err(|e| format!("open: errno {e}"))?;
    let ioas = alloc_ioas(fd).map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
    // SAFETY: the child only calls close and _exit, then the parent resumes. (The libc crate
    // deprecates vfork because Rust code after it can corrupt the parent; this child runs
    // none.)
    #[allow(deprecated)]
    let child = unsafe { libc::vfork() };
    if child == 0 {
        // SAFETY: plain descriptor calls, then leaving without touching our memory.
        unsafe {
            libc::close(fd);
            libc::_exit(0)
        }
    }
    ensure(wait(child) == 0, || "the vfork child failed".into())?;
    ensure(alloc_ioas(fd).is_ok(), || {
        "the parent's descriptor broke after the vfork child's close".into()
    })?;
    ensure(destroy(fd, ioas) == Ok(0), || {
        "the parent's IOAS is gone".into()
    })?;
    close(fd).map_err(|e| format!("close: errno {e}"))
}

/// With a soft limit of 1024 descriptors, open `/dev/iommu` until `EMFILE`: each emulated
/// file costs one descriptor, so nearly all free numbers are usable.
fn fd_count() -> Check {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a live rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur = 1024;
    // SAFETY: a live rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(format!("setrlimit: errno {}", errno()));
    }
    let had = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) - 1;
    let mut opened = Vec::new();
    let failure = loop {
        match open_iommu() {
            Ok(fd) => opened.push(fd),
            Err(err) => break err,
        }
        if opened.len() > 2048 {
            break 0;
        }
    };
    let count = opened.len();
    println!("fd count: {count} /dev/iommu opens under a limit of 1024 (with {had} open before)");
    ensure(failure == libc::EMFILE, || {
        format!("the opens stopped with errno {failure}")
    })?;
    ensure(count + had + 4 >= 1024, || {
        format!("only {count} opens fit next to {had} descriptors")
    })?;
    let ioas = alloc_ioas(opened[count - 1]).map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
    ensure(destroy(opened[count - 1], ioas) == Ok(0), || {
        "the last file does not work".into()
    })?;
    for fd in opened {
        close(fd).map_err(|e| format!("close {fd}: errno {e}"))?;
    }
    Ok(())
}

fn syscall_result(ret: libc::c_long) -> Result<i64, i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// `open`, `ioctl`, `dup`, `readv` and `close` made through `syscall(2)` are served like the
/// libc calls; a system call the library cannot serve on an emulated descriptor is reported
/// (once, on stderr under `uiommu run`).
fn through_syscall() -> Check {
    let path: &CStr = c"/dev/iommu";
    // SAFETY: a live NUL-terminated path.
    let fd = syscall_result(unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDWR,
        )
    })
    .map_err(|e| format!("syscall(SYS_openat): errno {e}"))? as i32;
    let mut alloc = IommuIoasAlloc {
        size: std::mem::size_of::<IommuIoasAlloc>() as u32,
        ..Default::default()
    };
    // SAFETY: a live IOAS_ALLOC argument.
    let allocated = syscall_result(unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd,
            IOMMU_IOAS_ALLOC as libc::c_ulong,
            &mut alloc as *mut IommuIoasAlloc,
        )
    });
    ensure(allocated == Ok(0) && alloc.out_ioas_id != 0, || {
        format!("syscall(SYS_ioctl, IOAS_ALLOC): {allocated:?}")
    })?;
    // SAFETY: a descriptor number.
    let copy = syscall_result(unsafe { libc::syscall(libc::SYS_dup, fd) })
        .map_err(|e| format!("syscall(SYS_dup): errno {e}"))? as i32;
    ensure(destroy(copy, alloc.out_ioas_id) == Ok(0), || {
        "the duplicate does not reach the context".into()
    })?;
    let mut byte = [0u8; 1];
    let iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Vectored reads are served as the kernel serves /dev/iommu's: it has no read (EINVAL).
    // SAFETY: a live iovec of one byte.
    let readv = unsafe { libc::readv(fd, &iov, 1) };
    ensure(readv == -1 && errno() == libc::EINVAL, || {
        format!("readv gave {readv} (errno {})", errno())
    })?;
    // SAFETY: a live iovec of one byte.
    let readv = unsafe { libc::syscall(libc::SYS_readv, fd, &iov as *const libc::iovec, 1) };
    ensure(readv == -1 && errno() == libc::EINVAL, || {
        format!("syscall(SYS_readv) gave {readv} (errno {})", errno())
    })?;
    for _ in 0..2 {
        // Not served (the library says so once); the kernel refuses a positional read of the
        // pipe behind the descriptor.
        // SAFETY: a live iovec of one byte.
        unsafe {
            libc::syscall(
                libc::SYS_preadv2,
                fd,
                &iov as *const libc::iovec,
                1,
                0,
                0,
                0,
            )
        };
    }
    for fd in [fd, copy] {
        // SAFETY: a descriptor number.
        let closed = syscall_result(unsafe { libc::syscall(libc::SYS_close, fd) });
        ensure(closed == Ok(0), || {
            format!("syscall(SYS_close): {closed:?}")
        })?;
    }
    // SAFETY: integer fcntl command.
    let gone = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 && errno() == libc::EBADF;
    ensure(gone, || "the descriptor stayed open".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("");
    let result = match name {
        "forged-requests" => forged_requests(),
        "hold" => hold(),
        "grandchild" => grandchild(),
        "connect-any" => connect_any(&args[1..]),
        "silent-peer" => silent_peer(),
        "dup2-race" => dup2_race(),
        "vfork-close" => vfork_close(),
        "fd-count" => fd_count(),
        "through-syscall" => through_syscall(),
        other => Err(format!("unknown check {other:?}")),
    };
    report(name, result)
}
