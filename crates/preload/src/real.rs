//! The pass-through backend: the next definition of each interposed symbol (normally glibc's),
//! found once with `dlsym(RTLD_NEXT, name)` and cached.
//!
//! Calls the library does not emulate are forwarded here with the program's arguments
//! unchanged, so the program sees exactly what libc would have done, including fortify checks
//! (`__open_2`, `__read_chk`) and errno.
//!
//! # Safety
//!
//! Every function here is `unsafe`: it forwards raw arguments from the program to libc, and
//! the caller (an exported symbol) promises they are the program's own, unmodified. The cached
//! pointer is transmuted to the C prototype of the same symbol; a symbol libc lacks makes the
//! call fail with `ENOSYS` instead of jumping to null.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_uint, c_ulong, c_void, off_t, size_t, ssize_t, DIR};

use crate::sys;

/// Resolve `name` in the objects loaded after this one, once.
fn resolve(slot: &AtomicUsize, name: &CStr) -> usize {
    let cached = slot.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `name` is a NUL-terminated symbol name; RTLD_NEXT searches the objects after
    // this library and returns null when none defines the symbol.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(found, Ordering::Relaxed);
    found
}

/// Defines one forwarding function per symbol: `name(args) -> ret` calls the next
/// definition of `symbol` through a pointer of type `proto`.
macro_rules! forward {
    ($(
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $symbol:literal as $proto:ty;
    )*) => {$(
        $(#[$meta])*
        ///
        /// # Safety
        /// The arguments must be the program's own, as it passed them to the interposed symbol.
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let address = resolve(&SLOT, $symbol);
            if address == 0 {
                sys::set_errno(sys::ENOSYS);
                return -1 as $ret;
            }
            // SAFETY: `address` is the non-null address of the C function `$symbol`, whose
            // prototype is `$proto`.
            let function: $proto = unsafe { std::mem::transmute::<usize, $proto>(address) };
            // SAFETY: forwarded under the caller's promise (see `# Safety`).
            unsafe { function($($arg),*) }
        }
    )*};
}

forward! {
    /// `open(path, flags, mode)`.
    fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int =
        c"open" as unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    /// `open64(path, flags, mode)`.
    fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int =
        c"open64" as unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    /// `__open_2(path, flags)` (fortified `open` without a mode).
    fn open_2(path: *const c_char, flags: c_int) -> c_int =
        c"__open_2" as unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    /// `__open64_2(path, flags)`.
    fn open64_2(path: *const c_char, flags: c_int) -> c_int =
        c"__open64_2" as unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    /// `openat(dirfd, path, flags, mode)`.
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int =
        c"openat" as unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    /// `openat64(dirfd, path, flags, mode)`.
    fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int =
        c"openat64" as unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    /// `__openat_2(dirfd, path, flags)`.
    fn openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int =
        c"__openat_2" as unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    /// `__openat64_2(dirfd, path, flags)`.
    fn openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int =
        c"__openat64_2" as unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    /// `close(fd)`.
    fn close(fd: c_int) -> c_int = c"close" as unsafe extern "C" fn(c_int) -> c_int;
    /// `close_range(first, last, flags)`.
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int =
        c"close_range" as unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
    /// `dup(fd)`.
    fn dup(fd: c_int) -> c_int = c"dup" as unsafe extern "C" fn(c_int) -> c_int;
    /// `dup2(old, new)`.
    fn dup2(old: c_int, new: c_int) -> c_int =
        c"dup2" as unsafe extern "C" fn(c_int, c_int) -> c_int;
    /// `dup3(old, new, flags)`.
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int =
        c"dup3" as unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
    /// `fcntl(fd, cmd, arg)`; `arg` is an integer or a pointer, passed on as it came.
    fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int =
        c"fcntl" as unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    /// `fcntl64(fd, cmd, arg)`.
    fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int =
        c"fcntl64" as unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    /// `ioctl(fd, request, arg)`.
    fn ioctl(fd: c_int, request: c_ulong, arg: usize) -> c_int =
        c"ioctl" as unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int;
    /// `read(fd, buf, count)`.
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t =
        c"read" as unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
    /// `write(fd, buf, count)`.
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t =
        c"write" as unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
    /// `pread(fd, buf, count, offset)`.
    fn pread(fd: c_int, buf: *mut c_void, count: size_t, offset: off_t) -> ssize_t =
        c"pread" as unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
    /// `pread64(fd, buf, count, offset)`.
    fn pread64(fd: c_int, buf: *mut c_void, count: size_t, offset: off_t) -> ssize_t =
        c"pread64" as unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
    /// `pwrite(fd, buf, count, offset)`.
    fn pwrite(fd: c_int, buf: *const c_void, count: size_t, offset: off_t) -> ssize_t =
        c"pwrite" as unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
    /// `pwrite64(fd, buf, count, offset)`.
    fn pwrite64(fd: c_int, buf: *const c_void, count: size_t, offset: off_t) -> ssize_t =
        c"pwrite64" as unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
    /// `readv(fd, iov, iovcnt)`.
    fn readv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> ssize_t =
        c"readv" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> ssize_t;
    /// `writev(fd, iov, iovcnt)`.
    fn writev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> ssize_t =
        c"writev" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> ssize_t;
    /// `preadv(fd, iov, iovcnt, offset)`.
    fn preadv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, offset: off_t) -> ssize_t =
        c"preadv" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t;
    /// `preadv64(fd, iov, iovcnt, offset)`.
    fn preadv64(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, offset: off_t) -> ssize_t =
        c"preadv64" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t;
    /// `pwritev(fd, iov, iovcnt, offset)`.
    fn pwritev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, offset: off_t) -> ssize_t =
        c"pwritev" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t;
    /// `pwritev64(fd, iov, iovcnt, offset)`.
    fn pwritev64(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, offset: off_t) -> ssize_t =
        c"pwritev64" as unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t;
    /// `__read_chk(fd, buf, count, buflen)`.
    fn read_chk(fd: c_int, buf: *mut c_void, count: size_t, buflen: size_t) -> ssize_t =
        c"__read_chk" as unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t;
    /// `__pread_chk(fd, buf, count, offset, buflen)`.
    fn pread_chk(fd: c_int, buf: *mut c_void, count: size_t, offset: off_t, buflen: size_t)
        -> ssize_t = c"__pread_chk"
        as unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t, size_t) -> ssize_t;
    /// `__pread64_chk(fd, buf, count, offset, buflen)`.
    fn pread64_chk(fd: c_int, buf: *mut c_void, count: size_t, offset: off_t, buflen: size_t)
        -> ssize_t = c"__pread64_chk"
        as unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t, size_t) -> ssize_t;
}

/// `opendir(name)`: null with `errno` set on failure.
///
/// # Safety
/// `name` must be the program's own argument, or a NUL-terminated string the library owns.
pub unsafe fn opendir(name: *const c_char) -> *mut DIR {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let address = resolve(&SLOT, c"opendir");
    if address == 0 {
        sys::set_errno(sys::ENOSYS);
        return std::ptr::null_mut();
    }
    type Opendir = unsafe extern "C" fn(*const c_char) -> *mut DIR;
    // SAFETY: `address` is the non-null address of libc's `opendir`.
    let function: Opendir = unsafe { std::mem::transmute::<usize, Opendir>(address) };
    // SAFETY: forwarded under the caller's promise.
    unsafe { function(name) }
}

/// `closefrom(lowfd)`; without a next definition (glibc before 2.34) it does nothing, as the
/// program could not have called it either.
///
/// # Safety
/// `lowfd` must be the program's own argument.
pub unsafe fn closefrom(lowfd: c_int) {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let address = resolve(&SLOT, c"closefrom");
    if address != 0 {
        type Closefrom = unsafe extern "C" fn(c_int);
        // SAFETY: `address` is the non-null address of libc's `closefrom`.
        let function: Closefrom = unsafe { std::mem::transmute::<usize, Closefrom>(address) };
        // SAFETY: forwarded under the caller's promise.
        unsafe { function(lowfd) }
    }
}

/// Abort the program as glibc's fortify checks do (`__chk_fail`), for a fortified read whose
/// length exceeds its buffer.
pub fn chk_fail() -> ! {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let address = resolve(&SLOT, c"__chk_fail");
    if address != 0 {
        type ChkFail = unsafe extern "C" fn() -> !;
        // SAFETY: `address` is glibc's `__chk_fail`, which takes nothing and never returns.
        let function: ChkFail = unsafe { std::mem::transmute::<usize, ChkFail>(address) };
        // SAFETY: no arguments; it reports "buffer overflow detected" and aborts.
        unsafe { function() }
    }
    std::process::abort()
}
