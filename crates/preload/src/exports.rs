//! The exported C symbols: thin shells around [`crate::shim`].
//!
//! Each symbol turns its arguments into integers, asks the shim inside `catch_unwind` (a
//! panic must never unwind into C; it is logged and reported as `EIO`), and either forwards the
//! untouched arguments to the next definition ([`crate::real`]) or returns the emulated
//! result, setting `errno` on failure.
//!
//! Stable Rust cannot define C-variadic functions, so `open`, `openat`, `fcntl`, `ioctl` and `syscall`
//! are defined with their optional argument as a fixed one. That is sound on the supported
//! targets (x86_64 and aarch64 Linux), where a variadic argument travels in the register a
//! fixed one would use; the optional argument is only *used* when the flags or the command
//! say the caller passed one, and is otherwise forwarded as the same register contents.
//!
//! # Safety
//!
//! These functions are `unsafe extern "C"`: the program promises the pointers it passes are
//! what the C prototype says. The shim never dereferences them (it copies through the kernel,
//! which reports bad addresses as `EFAULT`), and the real functions receive them unchanged.
#![allow(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void, off_t, size_t, ssize_t, DIR};
use uiommu_iommufd::errno::Errno;

use crate::home::Direction;
use crate::shim::{self, Outcome};
use crate::{log, real, sys};

/// Ask the shim, never letting a panic escape.
fn decide(what: &str, f: impl FnOnce() -> Outcome) -> Outcome {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::line(format_args!("panic in {what}"));
        Outcome::Done(Err(Errno::EIO))
    })
}

/// An emulated result as a C return value: the value, or -1 with `errno` set.
fn finish(result: sys::SysResult<i64>) -> i64 {
    match result {
        Ok(value) => value,
        Err(errno) => {
            sys::set_errno(errno);
            -1
        }
    }
}

/// Whether an `open` with these flags passed a mode argument.
fn has_mode(flags: c_int) -> bool {
    flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

/// Defines the open-like symbols: `$shape` says whether there is a directory and a mode.
macro_rules! export_open {
    ($name:ident, $real:ident, path) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
            let mode = if has_mode(flags) { mode } else { 0 };
            match decide(stringify!($name), || shim::open(None, path as usize, flags)) {
                // SAFETY: the program's own arguments.
                Outcome::Pass => unsafe { real::$real(path, flags, mode) },
                // SAFETY: a NUL-terminated path we own, live for the call.
                Outcome::Redirect(other) => unsafe { real::$real(other.as_ptr(), flags, mode) },
                Outcome::Done(result) => finish(result) as c_int,
            }
        }
    };
    ($name:ident, $real:ident, path_nomode) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int) -> c_int {
            match decide(stringify!($name), || shim::open(None, path as usize, flags)) {
                // SAFETY: the program's own arguments.
                Outcome::Pass => unsafe { real::$real(path, flags) },
                // SAFETY: a NUL-terminated path we own, live for the call.
                Outcome::Redirect(other) => unsafe { real::$real(other.as_ptr(), flags) },
                Outcome::Done(result) => finish(result) as c_int,
            }
        }
    };
    ($name:ident, $real:ident, at) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: c_uint,
        ) -> c_int {
            let mode = if has_mode(flags) { mode } else { 0 };
            match decide(stringify!($name), || {
                shim::open(Some(dirfd), path as usize, flags)
            }) {
                // SAFETY: the program's own arguments.
                Outcome::Pass => unsafe { real::$real(dirfd, path, flags, mode) },
                // SAFETY: an absolute NUL-terminated path we own (dirfd is then ignored).
                Outcome::Redirect(other) => unsafe {
                    real::$real(dirfd, other.as_ptr(), flags, mode)
                },
                Outcome::Done(result) => finish(result) as c_int,
            }
        }
    };
    ($name:ident, $real:ident, at_nomode) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
            match decide(stringify!($name), || {
                shim::open(Some(dirfd), path as usize, flags)
            }) {
                // SAFETY: the program's own arguments.
                Outcome::Pass => unsafe { real::$real(dirfd, path, flags) },
                // SAFETY: an absolute NUL-terminated path we own (dirfd is then ignored).
                Outcome::Redirect(other) => unsafe { real::$real(dirfd, other.as_ptr(), flags) },
                Outcome::Done(result) => finish(result) as c_int,
            }
        }
    };
}

export_open!(open, open, path);
export_open!(open64, open64, path);
export_open!(__open_2, open_2, path_nomode);
export_open!(__open64_2, open64_2, path_nomode);
export_open!(openat, openat, at);
export_open!(openat64, openat64, at);
export_open!(__openat_2, openat_2, at_nomode);
export_open!(__openat64_2, openat64_2, at_nomode);

#[no_mangle]
/// # Safety
/// As libc's `close`.
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    match decide("close", || shim::close(fd)) {
        // SAFETY: the program's own argument.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::close(fd) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `close_range`.
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    match decide("close_range", || shim::close_range(first, last, flags)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::close_range(first, last, flags) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As glibc's `closefrom` (its internal `close_range` would bypass ours).
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    let first = c_uint::try_from(lowfd).unwrap_or(0);
    match decide("closefrom", || shim::close_range(first, c_uint::MAX, 0)) {
        // SAFETY: the program's own argument.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::closefrom(lowfd) },
        // closefrom reports nothing; the library's descriptors were skipped.
        Outcome::Done(_) => {}
    }
}

#[no_mangle]
/// # Safety
/// As libc's `dup`.
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    match decide("dup", || shim::dup(fd)) {
        // SAFETY: the program's own argument.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::dup(fd) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `dup2`.
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    match decide("dup2", || shim::dup3(old, new, None)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::dup2(old, new) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `dup3`.
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    match decide("dup3", || shim::dup3(old, new, Some(flags))) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::dup3(old, new, flags) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `fcntl`; `arg` is the optional argument, whatever its C type.
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match decide("fcntl", || shim::fcntl(fd, cmd, arg)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::fcntl(fd, cmd, arg) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `fcntl64`.
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match decide("fcntl64", || shim::fcntl(fd, cmd, arg)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::fcntl64(fd, cmd, arg) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `ioctl`; `arg` is the optional argument, an integer or a pointer.
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: usize) -> c_int {
    match decide("ioctl", || shim::ioctl(fd, request, arg)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::ioctl(fd, request, arg) },
        Outcome::Done(result) => finish(result) as c_int,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `read`.
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    match decide("read", || shim::read(fd, buf as usize, count, None)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::read(fd, buf, count) },
        Outcome::Done(result) => finish(result) as ssize_t,
    }
}

#[no_mangle]
/// # Safety
/// As libc's `write`.
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    match decide("write", || shim::write(fd, buf as usize, count, None)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::write(fd, buf, count) },
        Outcome::Done(result) => finish(result) as ssize_t,
    }
}

/// Defines the positional read symbols.
macro_rules! export_pread {
    ($name:ident, $real:ident) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *mut c_void,
            count: size_t,
            offset: off_t,
        ) -> ssize_t {
            match decide(stringify!($name), || {
                shim::read(fd, buf as usize, count, Some(offset))
            }) {
                // SAFETY: the program's own arguments.
                Outcome::Pass | Outcome::Redirect(_) => unsafe {
                    real::$real(fd, buf, count, offset)
                },
                Outcome::Done(result) => finish(result) as ssize_t,
            }
        }
    };
}

/// Defines the positional write symbols.
macro_rules! export_pwrite {
    ($name:ident, $real:ident) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *const c_void,
            count: size_t,
            offset: off_t,
        ) -> ssize_t {
            match decide(stringify!($name), || {
                shim::write(fd, buf as usize, count, Some(offset))
            }) {
                // SAFETY: the program's own arguments.
                Outcome::Pass | Outcome::Redirect(_) => unsafe {
                    real::$real(fd, buf, count, offset)
                },
                Outcome::Done(result) => finish(result) as ssize_t,
            }
        }
    };
}

export_pread!(pread, pread);
export_pread!(pread64, pread64);
export_pwrite!(pwrite, pwrite);
export_pwrite!(pwrite64, pwrite64);

#[no_mangle]
/// # Safety
/// As glibc's `__read_chk` (fortified `read`).
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    buflen: size_t,
) -> ssize_t {
    if count > buflen {
        real::chk_fail();
    }
    match decide("__read_chk", || shim::read(fd, buf as usize, count, None)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass | Outcome::Redirect(_) => unsafe { real::read_chk(fd, buf, count, buflen) },
        Outcome::Done(result) => finish(result) as ssize_t,
    }
}

/// Defines the fortified positional read symbols.
macro_rules! export_pread_chk {
    ($name:ident, $real:ident) => {
        #[no_mangle]
        /// # Safety
        /// As glibc's function of the same name.
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *mut c_void,
            count: size_t,
            offset: off_t,
            buflen: size_t,
        ) -> ssize_t {
            if count > buflen {
                real::chk_fail();
            }
            match decide(stringify!($name), || {
                shim::read(fd, buf as usize, count, Some(offset))
            }) {
                // SAFETY: the program's own arguments.
                Outcome::Pass | Outcome::Redirect(_) => unsafe {
                    real::$real(fd, buf, count, offset, buflen)
                },
                Outcome::Done(result) => finish(result) as ssize_t,
            }
        }
    };
}

export_pread_chk!(__pread_chk, pread_chk);
export_pread_chk!(__pread64_chk, pread64_chk);

/// Defines the vectored transfer symbols: `$direction` and whether there is an offset.
macro_rules! export_vectored {
    ($name:ident, $real:ident, $direction:ident) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const libc::iovec,
            iovcnt: c_int,
        ) -> ssize_t {
            match decide(stringify!($name), || {
                shim::vectored(fd, Direction::$direction, iov as usize, iovcnt, None)
            }) {
                // SAFETY: the program's own arguments.
                Outcome::Pass | Outcome::Redirect(_) => unsafe { real::$real(fd, iov, iovcnt) },
                Outcome::Done(result) => finish(result) as ssize_t,
            }
        }
    };
    ($name:ident, $real:ident, $direction:ident, offset) => {
        #[no_mangle]
        /// # Safety
        /// As libc's function of the same name.
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const libc::iovec,
            iovcnt: c_int,
            offset: off_t,
        ) -> ssize_t {
            match decide(stringify!($name), || {
                shim::vectored(
                    fd,
                    Direction::$direction,
                    iov as usize,
                    iovcnt,
                    Some(offset),
                )
            }) {
                // SAFETY: the program's own arguments.
                Outcome::Pass | Outcome::Redirect(_) => unsafe {
                    real::$real(fd, iov, iovcnt, offset)
                },
                Outcome::Done(result) => finish(result) as ssize_t,
            }
        }
    };
}

export_vectored!(readv, readv, Read);
export_vectored!(writev, writev, Write);
export_vectored!(preadv, preadv, Read, offset);
export_vectored!(preadv64, preadv64, Read, offset);
export_vectored!(pwritev, pwritev, Write, offset);
export_vectored!(pwritev64, pwritev64, Write, offset);

#[no_mangle]
/// # Safety
/// As libc's `opendir`.
pub unsafe extern "C" fn opendir(name: *const c_char) -> *mut DIR {
    match decide("opendir", || shim::opendir(name as usize)) {
        // SAFETY: a NUL-terminated path we own, live for the call.
        Outcome::Redirect(other) => unsafe { real::opendir(other.as_ptr()) },
        // SAFETY: the program's own argument.
        Outcome::Pass => unsafe { real::opendir(name) },
        Outcome::Done(result) => {
            // The shim never emulates a directory; a failure it reports is still a failure.
            if let Err(errno) = result {
                sys::set_errno(errno);
            }
            std::ptr::null_mut()
        }
    }
}

#[no_mangle]
/// # Safety
/// As libc's `syscall`. Stable Rust cannot define a C-variadic function, so the six possible
/// arguments are fixed ones (see the module documentation): the ones the call did not pass
/// are whatever their registers or stack slot hold, and are forwarded unused.
pub unsafe extern "C" fn syscall(
    number: c_long,
    a: c_long,
    b: c_long,
    c: c_long,
    d: c_long,
    e: c_long,
    f: c_long,
) -> c_long {
    let mut args = [a, b, c, d, e, f];
    match decide("syscall", || shim::syscall(number, args)) {
        // SAFETY: the program's own arguments.
        Outcome::Pass => unsafe { sys::forward_syscall(number, args) },
        Outcome::Redirect(other) => {
            // Only an open is redirected: its path argument is replaced.
            let path_at = usize::from(number == libc::SYS_openat);
            args[path_at] = other.as_ptr() as c_long;
            // SAFETY: the program's arguments with the path replaced by a NUL-terminated path
            // we own, live for the call.
            unsafe { sys::forward_syscall(number, args) }
        }
        Outcome::Done(result) => finish(result) as c_long,
    }
}
