//! The routing decision behind every interposed call, in safe code.
//!
//! Each function takes the call's arguments as plain integers (addresses stay numbers: the
//! program's memory is only reached through [`crate::sys::read_user`] and friends) and returns
//! an [`Outcome`]: leave the call to libc, give libc a different path, or the emulated result.
//! Calls on emulated descriptors are answered entirely here (with raw system calls on the
//! descriptor where the file needs them: see [`crate::files`] for the readiness byte), so libc
//! never sees an emulated descriptor except for the generic descriptor operations the kernel
//! itself performs before reaching a driver (`FIOCLEX`, `FIONBIO`, `F_SETFD`, ...).

use std::ffi::CString;
use std::sync::atomic::Ordering;

use uiommu_iommufd::errno::Errno;

use crate::fault::{self, FailNthPath, Task};
use crate::fdtable::{self, Target};
use crate::files::{self, AccessMode, FileKind, ShimFile};
use crate::home::{self, Direction, Node};
use crate::sys::{self, SysResult};

/// What to do with an interposed call.
#[derive(Debug)]
pub enum Outcome {
    /// Not ours: call the real function with the program's arguments.
    Pass,
    /// Call the real function with this path instead of the program's.
    Redirect(CString),
    /// Emulated: return this (a negative result becomes `-1` and `errno`).
    Done(SysResult<i64>),
}

/// `PATH_MAX`: longer paths are left to the kernel to refuse.
const PATH_MAX: usize = 4096;

/// The emulated character devices.
const DEV_IOMMU: &[u8] = b"/dev/iommu";
const DEV_VFIO_CONTAINER: &[u8] = b"/dev/vfio/vfio";

/// `open`/`openat` and variants. `dirfd` is `None` for `open`.
pub fn open(dirfd: Option<i32>, path: usize, flags: i32) -> Outcome {
    let _ = dirfd; // Relative paths are never ours: an emulated path is absolute.
    let Ok(path) = sys::read_user_cstr(path, PATH_MAX) else {
        return Outcome::Pass;
    };
    if !path.starts_with(b"/") {
        return Outcome::Pass;
    }
    let node = match path.as_slice() {
        DEV_IOMMU => Some(Node::Iommu),
        DEV_VFIO_CONTAINER => Some(Node::VfioContainer),
        _ => None,
    };
    if let Some(node) = node {
        let opened = open_char_device(flags).and_then(|flags| home::open_iommufd(node, flags));
        return Outcome::Done(opened.map(i64::from));
    }
    if !fault::enabled() {
        return Outcome::Pass;
    }
    match fault::parse_fail_nth_path(&path, sys::getpid(), sys::gettid()) {
        Some(FailNthPath::Own(task)) => Outcome::Done(open_fail_nth(task, flags).map(i64::from)),
        Some(FailNthPath::Foreign) => Outcome::Done(Err(sys::EACCES)),
        None => match fault::debugfs_redirect(&path) {
            Some(redirected) => Outcome::Redirect(redirected),
            None => Outcome::Pass,
        },
    }
}

/// The checks the VFS makes before a character device's `open`: flags that cannot apply to
/// an existing device node.
fn open_char_device(flags: i32) -> SysResult<i32> {
    if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
        return Err(Errno::EEXIST);
    }
    if flags & libc::O_DIRECTORY != 0 {
        return Err(sys::ENOTDIR);
    }
    Ok(flags)
}

fn open_fail_nth(task: fault::Task, flags: i32) -> SysResult<i32> {
    fault::register_current_thread();
    if !fault::task_exists(task) {
        return Err(Errno::ENOENT);
    }
    if flags & libc::O_DIRECTORY != 0 {
        return Err(sys::ENOTDIR);
    }
    let fd = files::new_descriptor(flags & libc::O_CLOEXEC != 0, false)?;
    match files::unserved(FileKind::FailNth(task), AccessMode::from_flags(flags), fd) {
        Ok(file) => home::install(fd, Target::Local(file)),
        Err(err) => {
            let _ = sys::close(fd);
            Err(err)
        }
    }
}

/// `opendir(name)`: only the debugfs redirect.
pub fn opendir(name: usize) -> Outcome {
    if !fault::enabled() {
        return Outcome::Pass;
    }
    match sys::read_user_cstr(name, PATH_MAX)
        .ok()
        .and_then(|path| fault::debugfs_redirect(&path))
    {
        Some(redirected) => Outcome::Redirect(redirected),
        None => Outcome::Pass,
    }
}

/// The emulated file behind `fd`, releasing a stale entry found on the way.
fn emulated(fd: i32) -> Option<Target> {
    let (found, stale) = fdtable::lookup(fd);
    home::release(stale);
    found
}

/// `close(fd)`.
pub fn close(fd: i32) -> Outcome {
    if !fdtable::active() || fdtable::foreign_process() {
        return Outcome::Pass;
    }
    if fdtable::is_private(fd) {
        // Not the program's descriptor: to the program it is not open.
        return Outcome::Done(Err(Errno::EBADF));
    }
    if emulated(fd).is_none() {
        return Outcome::Pass;
    }
    let target = fdtable::remove(fd);
    home::before_close(target.as_ref(), fd);
    let closed = sys::close(fd);
    home::release(target);
    Outcome::Done(closed.map(|()| 0))
}

/// `close_range(first, last, flags)`: the library's own descriptors in the range are skipped,
/// emulated ones released.
pub fn close_range(first: u32, last: u32, flags: i32) -> Outcome {
    let known = (libc::CLOSE_RANGE_CLOEXEC | libc::CLOSE_RANGE_UNSHARE) as i32;
    if !fdtable::active() || first > last || flags & !known != 0 || fdtable::foreign_process() {
        return Outcome::Pass;
    }
    let private = fdtable::private_in_range(first, last);
    let only_mark = flags & libc::CLOSE_RANGE_CLOEXEC as i32 != 0;
    let released = if only_mark {
        Vec::new()
    } else {
        fdtable::remove_range(first, last)
    };
    if private.is_empty() && released.is_empty() {
        return Outcome::Pass;
    }
    for (fd, target) in &released {
        home::before_close(Some(target), *fd);
    }
    let mut result = Ok(());
    let mut start = u64::from(first);
    for hole in private.into_iter().map(|fd| fd as u64) {
        if start < hole {
            result = result.and(sys::close_range(
                start as u32,
                (hole - 1) as u32,
                flags as u32,
            ));
        }
        start = hole + 1;
    }
    if start <= u64::from(last) {
        result = result.and(sys::close_range(start as u32, last, flags as u32));
    }
    for (_, target) in released {
        home::release(Some(target));
    }
    Outcome::Done(result.map(|()| 0))
}

/// `dup(fd)`.
pub fn dup(fd: i32) -> Outcome {
    if !fdtable::active() || fdtable::foreign_process() {
        return Outcome::Pass;
    }
    let Some(target) = emulated(fd) else {
        return Outcome::Pass;
    };
    Outcome::Done(
        sys::dup(fd)
            .and_then(|new| home::install(new, target))
            .map(i64::from),
    )
}

/// `dup2(old, new)` (`flags == None`) or `dup3(old, new, flags)`.
pub fn dup3(old: i32, new: i32, flags: Option<i32>) -> Outcome {
    if !fdtable::active() || fdtable::foreign_process() {
        return Outcome::Pass;
    }
    let source = emulated(old);
    let replacing = emulated(new);
    let replaced = replacing.is_some();
    let private = fdtable::is_private(new);
    if source.is_none() && !replaced && !private {
        return Outcome::Pass;
    }
    if old == new {
        // dup2 checks `old` and returns it; dup3 refuses. Neither changes anything.
        return match flags {
            None => Outcome::Pass,
            Some(_) => Outcome::Done(Err(Errno::EINVAL)),
        };
    }
    if private {
        if let Err(err) = fdtable::evict(new) {
            return Outcome::Done(Err(err));
        }
    }
    // The file at `new` loses this descriptor.
    home::before_close(replacing.as_ref(), new);
    // The real dup3 and the table's new entry form one step for concurrent lookups of `new`,
    // as the kernel's replacement of a table slot is one step for concurrent ioctls.
    match fdtable::dup_onto(old, new, flags.unwrap_or(0), source) {
        Ok((duplicated, previous)) => {
            home::release(previous);
            Outcome::Done(Ok(duplicated.into()))
        }
        Err(err) => Outcome::Done(Err(err)),
    }
}

/// `fcntl(fd, cmd, arg)`: duplication and `F_GETFL` of emulated descriptors.
pub fn fcntl(fd: i32, cmd: i32, arg: usize) -> Outcome {
    if !fdtable::active() || !matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC | libc::F_GETFL) {
        return Outcome::Pass;
    }
    if cmd != libc::F_GETFL && fdtable::foreign_process() {
        return Outcome::Pass;
    }
    let Some(target) = emulated(fd) else {
        return Outcome::Pass;
    };
    let result = if cmd == libc::F_GETFL {
        // The pipe or socket end has its own access mode; the program opened the file with its.
        sys::fcntl(fd, libc::F_GETFL, 0)
            .map(|flags| (flags & !libc::O_ACCMODE) | target.mode().flags())
    } else {
        sys::fcntl(fd, cmd, arg as libc::c_long).and_then(|new| home::install(new, target))
    };
    Outcome::Done(result.map(i64::from))
}

/// `ioctl` requests the VFS answers for every file before the driver sees the call.
const GENERIC_IOCTLS: [u32; 4] = [
    libc::FIOCLEX as u32,
    libc::FIONCLEX as u32,
    libc::FIONBIO as u32,
    libc::FIOASYNC as u32,
];

/// `ioctl(fd, request, arg)`. The request is truncated to 32 bits, as the kernel's
/// `unsigned int cmd` is.
pub fn ioctl(fd: i32, request: u64, arg: usize) -> Outcome {
    if !fdtable::active() {
        return Outcome::Pass;
    }
    let Some(target) = emulated(fd) else {
        return Outcome::Pass;
    };
    let cmd = request as u32;
    if GENERIC_IOCTLS.contains(&cmd) {
        return Outcome::Pass;
    }
    Outcome::Done(home::ioctl(&target, fd, cmd, arg as u64))
}

/// `read`/`pread` (`offset` given) into the program's `buf`.
pub fn read(fd: i32, buf: usize, count: usize, offset: Option<i64>) -> Outcome {
    transfer(fd, Direction::Read, buf, count, offset)
}

/// `write`/`pwrite` from the program's `buf`. The position is irrelevant to every emulated
/// file (`proc_fail_nth_write()` ignores it), but a negative one is still refused.
pub fn write(fd: i32, buf: usize, count: usize, offset: Option<i64>) -> Outcome {
    transfer(fd, Direction::Write, buf, count, offset)
}

/// Linux's `UIO_MAXIOV`: the most iovecs one vectored call takes.
const UIO_MAXIOV: i32 = 1024;

/// `readv`/`writev` (`preadv`/`pwritev` with `offset`) on `fd` if it is emulated: each iovec in
/// turn through the file's `read`/`write`, stopping at the first short transfer, as the
/// kernel does for a file without `read_iter`/`write_iter`.
pub fn vectored(
    fd: i32,
    direction: Direction,
    iov: usize,
    iovcnt: i32,
    offset: Option<i64>,
) -> Outcome {
    if !fdtable::active() {
        return Outcome::Pass;
    }
    let Some(target) = emulated(fd) else {
        return Outcome::Pass;
    };
    Outcome::Done(vectored_transfer(
        &target, fd, direction, iov, iovcnt, offset,
    ))
}

fn vectored_transfer(
    target: &Target,
    fd: i32,
    direction: Direction,
    iov: usize,
    iovcnt: i32,
    offset: Option<i64>,
) -> SysResult<i64> {
    if !(0..=UIO_MAXIOV).contains(&iovcnt) {
        return Err(Errno::EINVAL);
    }
    const IOVEC: usize = std::mem::size_of::<libc::iovec>();
    let mut vectors = vec![0u8; iovcnt as usize * IOVEC];
    sys::read_user(iov, &mut vectors)?;
    let mut done: i64 = 0;
    for vector in vectors.chunks_exact(IOVEC) {
        const WORD: usize = std::mem::size_of::<usize>();
        let field =
            |at: usize| usize::from_ne_bytes(vector[at..at + WORD].try_into().unwrap_or_default());
        let (base, len) = (field(0), field(WORD));
        let at = offset.map(|o| o.saturating_add(done));
        match file_transfer(target, fd, direction, base, len, at) {
            Ok(n) => {
                done += n;
                if (n as usize) < len {
                    break;
                }
            }
            Err(err) if done == 0 => return Err(err),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// `read`/`write` in `direction` on `fd` if it is emulated.
fn transfer(
    fd: i32,
    direction: Direction,
    buf: usize,
    count: usize,
    offset: Option<i64>,
) -> Outcome {
    if !fdtable::active() {
        return Outcome::Pass;
    }
    let Some(target) = emulated(fd) else {
        return Outcome::Pass;
    };
    Outcome::Done(file_transfer(&target, fd, direction, buf, count, offset))
}

/// The VFS's checks (access mode, then a negative position), then the file's own method:
/// fail-nth files are served here; iommufd has no read or write method (EINVAL) and
/// handed-out files have their own.
fn file_transfer(
    target: &Target,
    fd: i32,
    direction: Direction,
    buf: usize,
    count: usize,
    offset: Option<i64>,
) -> SysResult<i64> {
    let mode = target.mode();
    let permitted = match direction {
        Direction::Read => mode.read,
        Direction::Write => mode.write,
    };
    if !permitted {
        return Err(Errno::EBADF);
    }
    if offset.is_some_and(|o| o < 0) {
        return Err(Errno::EINVAL);
    }
    let fail_nth = match target {
        Target::Local(file) => match &file.kind {
            FileKind::FailNth(task) => Some((file, *task)),
            _ => None,
        },
        Target::Remote(_) => None,
    };
    let Some((file, task)) = fail_nth else {
        return home::file_io(target, fd, direction, buf, count, offset.map(|o| o as u64));
    };
    fault::register_current_thread();
    match direction {
        Direction::Read => read_fail_nth(file, task, buf, count, offset),
        Direction::Write => write_fail_nth(task, buf, count),
    }
}

/// Read of `/proc/<tid>/fail-nth`: the value as text, from the file position or `offset`.
fn read_fail_nth(
    file: &ShimFile,
    task: Task,
    buf: usize,
    count: usize,
    offset: Option<i64>,
) -> SysResult<i64> {
    let text = fault::format_value(fault::get(task));
    let position = offset.map_or_else(|| file.position.load(Ordering::Acquire), |o| o as u64);
    let Some(available) = usize::try_from(position).ok().and_then(|p| text.get(p..)) else {
        return Ok(0);
    };
    let n = available.len().min(count);
    sys::write_user(buf, &available[..n])?;
    if offset.is_none() {
        file.position.store(position + n as u64, Ordering::Release);
    }
    Ok(n as i64)
}

/// Write of `/proc/<tid>/fail-nth`: parse the value and arm it; the position is ignored.
fn write_fail_nth(task: Task, buf: usize, count: usize) -> SysResult<i64> {
    let mut text = [0u8; 34];
    let len = count.min(text.len());
    sys::read_user(buf, &mut text[..len])?;
    let value = fault::parse_value(&text[..len])?;
    if !fault::task_exists(task) {
        return Err(Errno::ESRCH);
    }
    fault::set(task, value);
    Ok(count as i64)
}

/// `syscall(number, args...)`: the system calls that reach a device through libc's wrappers
/// are routed to the same decisions as those wrappers (a program that makes its ioctls with
/// `syscall(SYS_ioctl, ...)` is served as one that calls `ioctl`); everything else passes
/// through. A call on an emulated descriptor that the library cannot serve is logged once.
pub fn syscall(number: i64, args: [i64; 6]) -> Outcome {
    let [a, b, c, d, _, _] = args;
    let fd = a as i32;
    match number {
        libc::SYS_ioctl => ioctl(fd, b as u64, c as usize),
        libc::SYS_openat => open(Some(fd), b as usize, c as i32),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => open(None, a as usize, b as i32),
        libc::SYS_close => close(fd),
        libc::SYS_close_range => close_range(a as u32, b as u32, c as i32),
        libc::SYS_dup => dup(fd),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_dup2 => dup3(fd, b as i32, None),
        libc::SYS_dup3 => dup3(fd, b as i32, Some(c as i32)),
        libc::SYS_fcntl => fcntl(fd, b as i32, c as usize),
        libc::SYS_read => read(fd, b as usize, c as usize, None),
        libc::SYS_write => write(fd, b as usize, c as usize, None),
        libc::SYS_pread64 => read(fd, b as usize, c as usize, Some(d)),
        libc::SYS_pwrite64 => write(fd, b as usize, c as usize, Some(d)),
        libc::SYS_readv => vectored(fd, Direction::Read, b as usize, c as i32, None),
        libc::SYS_writev => vectored(fd, Direction::Write, b as usize, c as i32, None),
        libc::SYS_preadv => vectored(fd, Direction::Read, b as usize, c as i32, Some(d)),
        libc::SYS_pwritev => vectored(fd, Direction::Write, b as usize, c as i32, Some(d)),
        libc::SYS_preadv2 | libc::SYS_pwritev2 | libc::SYS_mmap => {
            let fd = if number == libc::SYS_mmap {
                args[4] as i32
            } else {
                fd
            };
            if fdtable::active() && emulated(fd).is_some() {
                crate::log::notice_once(format_args!(
                    "system call {number} on the emulated descriptor {fd} is not served \
                     (open, close, dup, fcntl, ioctl, read and write and their variants are)"
                ));
            }
            Outcome::Pass
        }
        _ => Outcome::Pass,
    }
}
