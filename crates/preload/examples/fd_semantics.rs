//! Checks of what a `/dev/iommu` descriptor must behave like, meant to run under the preload
//! library (`uiommu run -- fd_semantics CHECK`). Each check is a subcommand; it prints
//! `ok CHECK` and exits 0, or prints what differed and exits 1. The checks use plain libc
//! calls, as a C program would, so they exercise exactly what the library interposes.
//!
//! # Safety
//! This program calls libc directly. Every pointer it passes is to a live local buffer of the
//! stated size, except in `wild-pointers`, which passes invalid addresses on purpose: libc and
//! the kernel (or the preload library, which copies through the kernel) must answer `EFAULT`
//! without the process touching them.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::process::ExitCode;

use uiommu_iommufd::abi::*;

mod common;

use common::{ensure, errno, report, Check};

extern "C" {
    /// glibc 2.34's `closefrom`, which the libc crate does not declare for Linux.
    fn closefrom(lowfd: libc::c_int);
}

fn open(path: &CStr, flags: i32) -> Result<i32, i32> {
    // SAFETY: `path` is a live NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

fn open_iommu(flags: i32) -> Result<i32, String> {
    open(c"/dev/iommu", flags).map_err(|e| format!("open /dev/iommu: errno {e}"))
}

fn close(fd: i32) -> Result<(), i32> {
    // SAFETY: closes a descriptor number.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn ioctl_raw(fd: i32, cmd: u32, arg: usize) -> Result<i32, i32> {
    // SAFETY: `arg` is a live struct of the size the command's first field states, an
    // integer, or (in wild-pointers) an address the kernel or library must refuse.
    let ret = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

fn ioctl<T>(fd: i32, cmd: u32, arg: &mut T) -> Result<i32, i32> {
    ioctl_raw(fd, cmd, arg as *mut T as usize)
}

fn alloc_ioas(fd: i32) -> Result<u32, String> {
    let mut alloc = IommuIoasAlloc {
        size: std::mem::size_of::<IommuIoasAlloc>() as u32,
        ..Default::default()
    };
    ioctl(fd, IOMMU_IOAS_ALLOC, &mut alloc).map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
    Ok(alloc.out_ioas_id)
}

fn destroy(fd: i32, id: u32) -> Result<i32, i32> {
    let mut cmd = IommuDestroy {
        size: std::mem::size_of::<IommuDestroy>() as u32,
        id,
    };
    ioctl(fd, IOMMU_DESTROY, &mut cmd)
}

fn mock_domain(fd: i32, ioas: u32) -> Result<TestMockDomain, String> {
    let mut cmd = IommuTestCmd::new(ioas, &TestMockDomain::default());
    ioctl(fd, IOMMU_TEST_CMD, &mut cmd).map_err(|e| format!("MOCK_DOMAIN: errno {e}"))?;
    Ok(cmd.payload())
}

fn map_fixed(fd: i32, ioas: u32, user_va: u64, length: u64, iova: u64) -> Result<(), i32> {
    let mut map = IommuIoasMap {
        size: std::mem::size_of::<IommuIoasMap>() as u32,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        user_va,
        length,
        iova,
        ..Default::default()
    };
    ioctl(fd, IOMMU_IOAS_MAP, &mut map).map(drop)
}

fn check_refs(fd: i32, uptr: u64, length: u64, refs: u32) -> Result<(), i32> {
    let mut cmd = IommuTestCmd::new(
        0,
        &TestCheckRefs {
            length,
            uptr,
            refs,
            pad: 0,
        },
    );
    ioctl(fd, IOMMU_TEST_CMD, &mut cmd).map(drop)
}

const PAGE: u64 = 4096;
const MOCK_IOVA: u64 = 1 << 24;

/// A page-aligned anonymous mapping, faulted in, never unmapped (the checks are short).
fn buffer(pages: u64) -> u64 {
    let len = (pages * PAGE) as usize;
    // SAFETY: a fresh anonymous mapping chosen by the kernel; nothing else refers to it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap");
    addr as u64
}

/// An IOAS with a mock domain, and `pages` of a buffer mapped (so pinned) into it.
fn pinned_context(flags: i32, pages: u64) -> Result<(i32, u64), String> {
    let fd = open_iommu(flags)?;
    let ioas = alloc_ioas(fd)?;
    mock_domain(fd, ioas)?;
    let va = buffer(pages);
    map_fixed(fd, ioas, va, pages * PAGE, MOCK_IOVA).map_err(|e| format!("IOAS_MAP: errno {e}"))?;
    Ok((fd, va))
}

fn dup_keeps_context() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    let ioas = alloc_ioas(fd)?;
    // SAFETY: duplicates a descriptor number.
    let copy = unsafe { libc::dup(fd) };
    ensure(copy >= 0 && copy != fd, || format!("dup gave {copy}"))?;
    close(fd).map_err(|e| format!("close: errno {e}"))?;
    ensure(destroy(copy, ioas) == Ok(0), || {
        "the IOAS is gone after closing the original".into()
    })?;
    // SAFETY: duplicates onto a chosen free number.
    let moved = unsafe { libc::fcntl(copy, libc::F_DUPFD_CLOEXEC, 100) };
    ensure(moved >= 100, || format!("F_DUPFD_CLOEXEC gave {moved}"))?;
    close(copy).map_err(|e| format!("close copy: errno {e}"))?;
    let second = alloc_ioas(moved)?;
    ensure(destroy(moved, second) == Ok(0), || {
        "context lost across F_DUPFD".into()
    })?;
    // SAFETY: duplicates onto number 50.
    ensure(unsafe { libc::dup2(moved, 50) } == 50, || "dup2".into())?;
    close(moved).map_err(|e| format!("close moved: errno {e}"))?;
    ensure(alloc_ioas(50).is_ok(), || "context lost across dup2".into())?;
    close(50).map_err(|e| format!("close 50: errno {e}"))?;
    ensure(close(50) == Err(libc::EBADF), || {
        "double close did not fail".into()
    })
}

fn cloexec() -> Check {
    let with = open_iommu(libc::O_RDWR | libc::O_CLOEXEC)?;
    let without = open_iommu(libc::O_RDWR)?;
    // SAFETY: integer fcntl commands.
    let (flags_with, flags_without) = unsafe {
        (
            libc::fcntl(with, libc::F_GETFD),
            libc::fcntl(without, libc::F_GETFD),
        )
    };
    ensure(flags_with == libc::FD_CLOEXEC, || {
        format!("O_CLOEXEC fd flags {flags_with}")
    })?;
    ensure(flags_without == 0, || {
        format!("plain fd flags {flags_without}")
    })?;
    // SAFETY: integer fcntl command.
    let access = unsafe { libc::fcntl(with, libc::F_GETFL) } & libc::O_ACCMODE;
    ensure(access == libc::O_RDWR, || {
        format!("F_GETFL access mode {access}")
    })?;
    let exe = CString::new(
        std::env::current_exe()
            .map_err(|e| e.to_string())?
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let args = [
        exe.clone(),
        CString::new("cloexec-after-exec").unwrap_or_default(),
        CString::new(with.to_string()).unwrap_or_default(),
        CString::new(without.to_string()).unwrap_or_default(),
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a NULL-terminated array of live strings; on success execv never returns.
    unsafe { libc::execv(exe.as_ptr(), argv.as_ptr()) };
    Err(format!("execv: errno {}", errno()))
}

fn cloexec_after_exec(with: i32, without: i32) -> Check {
    // SAFETY: integer fcntl command.
    let flags_with = unsafe { libc::fcntl(with, libc::F_GETFD) };
    let closed = flags_with == -1 && errno() == libc::EBADF;
    ensure(closed, || {
        format!("the O_CLOEXEC descriptor {with} survived exec")
    })?;
    // SAFETY: integer fcntl command.
    let flags_without = unsafe { libc::fcntl(without, libc::F_GETFD) };
    ensure(flags_without == 0, || {
        format!("the plain descriptor {without} was closed by exec")
    })
}

fn last_close_releases() -> Check {
    let pages = 4;
    let (fd, va) = pinned_context(libc::O_RDWR, pages)?;
    let observer = open_iommu(libc::O_RDWR)?;
    let len = pages * PAGE;
    ensure(check_refs(observer, va, len, 1).is_ok(), || {
        "mapped pages are not pinned".into()
    })?;
    // SAFETY: duplicates a descriptor number.
    let copy = unsafe { libc::dup(fd) };
    close(fd).map_err(|e| format!("close: errno {e}"))?;
    ensure(check_refs(observer, va, len, 1).is_ok(), || {
        "pins dropped while a dup is open".into()
    })?;
    close(copy).map_err(|e| format!("close copy: errno {e}"))?;
    ensure(check_refs(observer, va, len, 0).is_ok(), || {
        "pins survive the last close".into()
    })
}

fn fork_child_exit_releases() -> Check {
    let pages = 2;
    let (fd, va) = pinned_context(libc::O_RDWR, pages)?;
    let observer = open_iommu(libc::O_RDWR)?;
    // SAFETY: the child only sleeps and exits without touching the parent's state.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: a plain sleep; then leave without running atexit handlers or closing.
        unsafe {
            libc::usleep(200_000);
            libc::_exit(0)
        }
    }
    close(fd).map_err(|e| format!("close: errno {e}"))?;
    ensure(check_refs(observer, va, pages * PAGE, 1).is_ok(), || {
        "pins dropped while the child still holds the descriptor".into()
    })?;
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ensure(check_refs(observer, va, pages * PAGE, 0).is_ok(), || {
        "pins survive the exit of the last holder".into()
    })
}

fn unknown_ioctl() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    for cmd in [
        0x1234u32,
        0x3bff,
        io(IOMMUFD_TYPE, 0xf0),
        libc::TCGETS as u32,
    ] {
        let mut dummy = [0u64; 8];
        let got = ioctl(fd, cmd, &mut dummy);
        ensure(got == Err(libc::ENOTTY), || {
            format!("ioctl {cmd:#x} gave {got:?}")
        })?;
    }
    Ok(())
}

fn destroy_null_efault() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    let got = ioctl_raw(fd, IOMMU_DESTROY, 0);
    ensure(got == Err(libc::EFAULT), || {
        format!("DESTROY(NULL) gave {got:?}")
    })
}

fn other_files() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    let path = CString::new(format!("/tmp/uiommu-fd-semantics-{}", std::process::id()))
        .unwrap_or_default();
    // SAFETY: a live path; a mode is passed with O_CREAT.
    let file = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
            0o600,
        )
    };
    ensure(file >= 0, || format!("open temp file: errno {}", errno()))?;
    let data = b"hello, real file";
    // SAFETY: live buffers of the stated lengths.
    let written = unsafe { libc::pwrite(file, data.as_ptr().cast(), data.len(), 0) };
    ensure(written == data.len() as isize, || "pwrite".into())?;
    let mut back = [0u8; 16];
    // SAFETY: live buffer of the stated length.
    let read = unsafe { libc::pread(file, back.as_mut_ptr().cast(), back.len(), 0) };
    ensure(read == 16 && &back == data, || format!("pread gave {read}"))?;
    let got = ioctl_raw(file, IOMMU_IOAS_ALLOC, 0);
    ensure(got == Err(libc::ENOTTY), || {
        format!("iommufd ioctl on a file gave {got:?}")
    })?;
    // SAFETY: duplicates a real descriptor onto the iommufd's number, closing it.
    ensure(unsafe { libc::dup2(file, fd) } == fd, || {
        "dup2 over the iommufd".into()
    })?;
    let mut again = [0u8; 5];
    // SAFETY: live buffer of the stated length.
    let read = unsafe { libc::pread(fd, again.as_mut_ptr().cast(), again.len(), 7) };
    ensure(read == 5 && &again == b"real ", || {
        "the dup2'ed number is not the file".into()
    })?;
    let mut null_read = [0u8; 4];
    let dev_null = open(c"/dev/null", libc::O_RDONLY).map_err(|e| format!("/dev/null: {e}"))?;
    // SAFETY: live buffer of the stated length.
    let n = unsafe { libc::read(dev_null, null_read.as_mut_ptr().cast(), 4) };
    ensure(n == 0, || "/dev/null read".into())?;
    // SAFETY: a live path.
    unsafe { libc::unlink(path.as_ptr()) };
    for closing in [file, fd, dev_null] {
        close(closing).map_err(|e| format!("close {closing}: errno {e}"))?;
    }
    Ok(())
}

fn fork_shares_context() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    let parents = alloc_ioas(fd)?;
    let mut pipe = [0i32; 2];
    // SAFETY: a live array of two ints.
    ensure(unsafe { libc::pipe(pipe.as_mut_ptr()) } == 0, || {
        "pipe".into()
    })?;
    // SAFETY: the child uses only the inherited descriptors and exits with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = (|| -> Result<(), ()> {
            // Allocate before destroying: ids are reused lowest first.
            let childs = alloc_ioas(fd).map_err(drop)?;
            destroy(fd, parents).map_err(drop)?;
            let bytes = childs.to_ne_bytes();
            // SAFETY: live buffer of four bytes.
            let n = unsafe { libc::write(pipe[1], bytes.as_ptr().cast(), 4) };
            if n != 4 {
                return Err(());
            }
            // A fresh open in the child is served by the parent too, and independent.
            let own = open_iommu(libc::O_RDWR).map_err(drop)?;
            if destroy(own, childs) != Err(libc::ENOENT) {
                return Err(());
            }
            close(own).map_err(drop)
        })();
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(i32::from(code.is_err())) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ensure(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("child failed: status {status:#x}"),
    )?;
    let mut bytes = [0u8; 4];
    // SAFETY: live buffer of four bytes.
    let n = unsafe { libc::read(pipe[0], bytes.as_mut_ptr().cast(), 4) };
    ensure(n == 4, || "no id from the child".into())?;
    let childs = u32::from_ne_bytes(bytes);
    let again = destroy(fd, parents);
    ensure(again == Err(libc::ENOENT), || {
        format!("the child's destroy is not seen: {again:?}")
    })?;
    ensure(destroy(fd, childs) == Ok(0), || {
        "the child's IOAS is not in the parent's context".into()
    })
}

/// Descriptors open in this process from `from` up (listed from `/proc/self/fd`; the
/// listing's own descriptor is gone by the time they are checked).
fn open_descriptors(from: i32) -> Vec<i32> {
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut open: Vec<i32> = listed
        .into_iter()
        .filter(|&fd| fd >= from)
        // SAFETY: integer fcntl command.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .collect();
    open.sort_unstable();
    open
}

fn numbers() -> Check {
    // Whatever the parent left open (not close-on-exec) is the program's too.
    let inherited = open_descriptors(0);
    let lowest_free = |skip: &[i32]| {
        (0..)
            .find(|fd| !inherited.contains(fd) && !skip.contains(fd))
            .unwrap_or(-1)
    };
    let first = open_iommu(libc::O_RDWR)?;
    ensure(first == lowest_free(&[]), || {
        format!("first open gave {first}, not the lowest free")
    })?;
    let second = open_iommu(libc::O_RDWR)?;
    ensure(second == lowest_free(&[first]), || {
        format!("second open gave {second}")
    })?;
    close(first).map_err(|e| format!("close: errno {e}"))?;
    let null = open(c"/dev/null", libc::O_RDONLY).map_err(|e| format!("/dev/null: {e}"))?;
    ensure(null == first, || {
        format!("the freed number was not reused: {null}")
    })?;
    // Descriptors the program never opened (the library's own) stay closed to it.
    let private: Vec<i32> = open_descriptors(0)
        .into_iter()
        .filter(|fd| !inherited.contains(fd) && *fd != second && *fd != null)
        .collect();
    ensure(!private.is_empty(), || {
        "the library keeps no descriptor of its own".into()
    })?;
    for &fd in &private {
        ensure(close(fd) == Err(libc::EBADF), || {
            format!("closing {fd} succeeded")
        })?;
    }
    // A close_range over everything above leaves them alone too.
    let above = (second.max(null) + 1) as u32;
    // SAFETY: closes descriptors from `above` up, which this check does not use.
    let ranged = unsafe { libc::close_range(above, u32::MAX, 0) };
    ensure(ranged == 0, || "close_range".into())?;
    let still_open = open_descriptors(0);
    ensure(private.iter().all(|fd| still_open.contains(fd)), || {
        format!("close_range closed library descriptors: {private:?} → {still_open:?}")
    })?;
    // SAFETY: closes descriptors from `above` up (glibc 2.34's closefrom).
    unsafe { closefrom(above as i32) };
    let still_open = open_descriptors(0);
    ensure(private.iter().all(|fd| still_open.contains(fd)), || {
        format!("closefrom closed library descriptors: {private:?} → {still_open:?}")
    })?;
    ensure(alloc_ioas(second).is_ok(), || {
        "closing everything broke the library".into()
    })?;
    close(second).map_err(|e| format!("close second: errno {e}"))
}

fn access_fd() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    let ioas = alloc_ioas(fd)?;
    let mut cmd = IommuTestCmd::new(ioas, &TestCreateAccess::default());
    ioctl(fd, IOMMU_TEST_CMD, &mut cmd).map_err(|e| format!("CREATE_ACCESS: errno {e}"))?;
    let access = cmd.payload::<TestCreateAccess>().out_access_fd as i32;
    // SAFETY: integer fcntl command.
    let flags = unsafe { libc::fcntl(access, libc::F_GETFD) };
    ensure(flags == libc::FD_CLOEXEC, || {
        format!("access fd {access} flags {flags}")
    })?;
    let mut byte = [0u8; 1];
    // SAFETY: live buffer of one byte.
    let n = unsafe { libc::read(access, byte.as_mut_ptr().cast(), 1) };
    ensure(n == -1 && errno() == libc::EINVAL, || {
        "read of an access fd".into()
    })?;
    ensure(close(access) == Ok(()), || {
        "close of the access fd failed".into()
    })?;
    ensure(destroy(fd, ioas) == Ok(0), || {
        "the IOAS stayed busy after the access closed".into()
    })
}

fn fork_child_uses_handed_out_files() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    let ioas = alloc_ioas(fd)?;
    let mut cmd = IommuTestCmd::new(ioas, &TestCreateAccess::default());
    ioctl(fd, IOMMU_TEST_CMD, &mut cmd).map_err(|e| format!("CREATE_ACCESS: errno {e}"))?;
    let access = cmd.payload::<TestCreateAccess>().out_access_fd as i32;
    // SAFETY: the child uses only inherited descriptors and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let mut byte = [0u8; 1];
        // SAFETY: live buffer of one byte.
        let read = unsafe { libc::read(access, byte.as_mut_ptr().cast(), 1) };
        let read_refused = read == -1 && errno() == libc::EINVAL;
        let ioctl_refused = ioctl(access, IOMMU_IOAS_ALLOC, &mut byte) == Err(libc::ENOTTY);
        let closed = close(access).is_ok();
        let code = i32::from(!(read_refused && ioctl_refused && closed));
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ensure(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("the child's read/ioctl/close of the access fd misbehaved: {status:#x}"),
    )?;
    ensure(destroy(fd, ioas) == Err(libc::EBUSY), || {
        "the access died with the child's copy of its descriptor".into()
    })?;
    close(access).map_err(|e| format!("close access: errno {e}"))?;
    ensure(destroy(fd, ioas) == Ok(0), || {
        "the last close of the access did not release it".into()
    })
}

/// `VFIO_GET_API_VERSION` and `VFIO_CHECK_EXTENSION` (`_IO(';', 100 + n)`).
const VFIO_GET_API_VERSION: u32 = io(IOMMUFD_TYPE, 100);
const VFIO_CHECK_EXTENSION: u32 = io(IOMMUFD_TYPE, 101);
const VFIO_TYPE1V2_IOMMU: usize = 3;

fn vfio_container() -> Check {
    let fd = open(c"/dev/vfio/vfio", libc::O_RDWR).map_err(|e| format!("open: errno {e}"))?;
    let version = ioctl_raw(fd, VFIO_GET_API_VERSION, 0);
    ensure(version == Ok(0), || {
        format!("VFIO_GET_API_VERSION gave {version:?}")
    })?;
    let type1v2 = ioctl_raw(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU);
    ensure(type1v2 == Ok(1), || {
        format!("VFIO_CHECK_EXTENSION(TYPE1v2) gave {type1v2:?}")
    })?;
    ensure(alloc_ioas(fd).is_ok(), || {
        "the container is not an iommufd".into()
    })?;
    close(fd).map_err(|e| format!("close: errno {e}"))
}

/// Addresses no program owns: null, low, unmapped, non-canonical, kernel, the top.
const WILD: [usize; 7] = [
    0,
    1,
    0x1000,
    0xdead_beef_0000,
    0x8000_0000_0000_0000,
    0xffff_8000_0000_0000,
    usize::MAX,
];

fn wild_pointers() -> Check {
    let fd = open_iommu(libc::O_RDWR)?;
    let ioas = alloc_ioas(fd)?;
    for &wild in &WILD {
        for cmd in [
            IOMMU_DESTROY,
            IOMMU_IOAS_ALLOC,
            IOMMU_IOAS_MAP,
            IOMMU_IOAS_UNMAP,
            IOMMU_IOAS_IOVA_RANGES,
            IOMMU_OPTION,
            IOMMU_TEST_CMD,
            IOMMU_HWPT_ALLOC,
        ] {
            let got = ioctl_raw(fd, cmd, wild);
            ensure(got == Err(libc::EFAULT), || {
                format!("ioctl {cmd:#x} on {wild:#x} gave {got:?}")
            })?;
        }
        // A valid struct whose pointers are wild.
        let mut map = IommuIoasMap {
            size: std::mem::size_of::<IommuIoasMap>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
            ioas_id: ioas,
            user_va: wild as u64,
            length: PAGE,
            iova: MOCK_IOVA,
            ..Default::default()
        };
        let got = ioctl(fd, IOMMU_IOAS_MAP, &mut map);
        // No domain is attached, so nothing is pinned yet: a wild user_va may be accepted;
        // one whose range wraps is refused.
        let refused = [libc::EFAULT, libc::EINVAL, libc::EOVERFLOW];
        ensure(
            got.is_ok() || got.is_err_and(|e| refused.contains(&e)),
            || format!("IOAS_MAP of {wild:#x} gave {got:?}"),
        )?;
        if got.is_ok() {
            let mut unmap = IommuIoasUnmap {
                size: std::mem::size_of::<IommuIoasUnmap>() as u32,
                ioas_id: ioas,
                iova: MOCK_IOVA,
                length: PAGE,
            };
            ioctl(fd, IOMMU_IOAS_UNMAP, &mut unmap).map_err(|e| format!("unmap: errno {e}"))?;
        }
        let mut ranges = IommuIoasIovaRanges {
            size: std::mem::size_of::<IommuIoasIovaRanges>() as u32,
            ioas_id: ioas,
            num_iovas: 4,
            allowed_iovas: wild as u64,
            ..Default::default()
        };
        let got = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &mut ranges);
        ensure(got == Err(libc::EFAULT), || {
            format!("IOVA_RANGES into {wild:#x} gave {got:?}")
        })?;
        // SAFETY: a wild path pointer: libc or the library must answer EFAULT.
        let opened = unsafe { libc::open(wild as *const libc::c_char, libc::O_RDONLY) };
        ensure(
            opened == -1 && (errno() == libc::EFAULT || errno() == libc::ENOENT),
            || format!("open({wild:#x}) gave {opened}, errno {}", errno()),
        )?;
        // SAFETY: a wild buffer on an emulated descriptor.
        let n = unsafe { libc::read(fd, wild as *mut libc::c_void, 8) };
        ensure(n == -1, || format!("read into {wild:#x} gave {n}"))?;
    }
    // The context still works.
    ensure(destroy(fd, ioas) == Ok(0), || {
        "context broken by wild pointers".into()
    })
}

fn fail_nth_path() -> CString {
    // SAFETY: no arguments.
    let tid = unsafe { libc::gettid() };
    CString::new(format!("/proc/self/task/{tid}/fail-nth")).unwrap_or_default()
}

fn read_fail_nth(fd: i32) -> Result<String, String> {
    let mut buf = [0u8; 32];
    // SAFETY: live buffer of the stated length.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    ensure(n > 0, || format!("pread fail-nth: errno {}", errno()))?;
    Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

fn write_fail_nth(fd: i32, text: &str) -> Result<isize, i32> {
    // SAFETY: live buffer of the stated length.
    let n = unsafe { libc::pwrite(fd, text.as_ptr().cast(), text.len(), 0) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n)
    }
}

fn fail_nth() -> Check {
    let iommu = open_iommu(libc::O_RDWR)?;
    let knob =
        open(&fail_nth_path(), libc::O_RDWR).map_err(|e| format!("open fail-nth: errno {e}"))?;
    ensure(read_fail_nth(knob)? == "0\n", || {
        "unarmed fail-nth does not read 0".into()
    })?;
    ensure(write_fail_nth(knob, "3") == Ok(1), || "arming".into())?;
    ensure(read_fail_nth(knob)? == "3\n", || {
        "armed fail-nth does not read back".into()
    })?;
    // Sweep: some operation must fail once the countdown runs out, and the file then reads 0.
    let mut failures = 0;
    for _ in 0..20 {
        if let Err(e) = alloc_ioas(iommu) {
            failures += 1;
            ensure(e.contains("errno"), || e.clone())?;
        }
    }
    ensure(failures == 1, || {
        format!("{failures} injected failures instead of 1")
    })?;
    ensure(read_fail_nth(knob)? == "0\n", || {
        "fired fail-nth does not read 0".into()
    })?;
    ensure(write_fail_nth(knob, "bogus") == Err(libc::EINVAL), || {
        "garbage accepted".into()
    })?;
    let mut buf = [0u8; 2];
    // SAFETY: live two-byte buffer; plain read at the file position.
    let n = unsafe { libc::read(knob, buf.as_mut_ptr().cast(), 1) };
    ensure(n == 1 && buf[0] == b'0', || "read at position 0".into())?;
    // SAFETY: as above, continuing at position 1.
    let n = unsafe { libc::read(knob, buf.as_mut_ptr().cast(), 2) };
    ensure(n == 1 && buf[0] == b'\n', || "read at position 1".into())?;
    // SAFETY: a wild buffer must give EFAULT.
    let n = unsafe { libc::pwrite(knob, 8 as *const libc::c_void, 1, 0) };
    ensure(n == -1 && errno() == libc::EFAULT, || {
        "pwrite of a wild buffer".into()
    })?;
    let other = open(c"/proc/1/task/1/fail-nth", libc::O_RDWR);
    ensure(other == Err(libc::EACCES), || {
        format!("another process's fail-nth: {other:?}")
    })?;
    close(knob).map_err(|e| format!("close: errno {e}"))
}

fn fail_nth_in_child() -> Check {
    let iommu = open_iommu(libc::O_RDWR)?;
    // SAFETY: the child uses inherited descriptors and its own files, and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = (|| -> Result<(), String> {
            // The child's own thread, whose countdown travels with its requests to the parent.
            let knob = open(&fail_nth_path(), libc::O_RDWR).map_err(|e| format!("open {e}"))?;
            write_fail_nth(knob, "1").map_err(|e| format!("arm {e}"))?;
            ensure(alloc_ioas(iommu).is_err(), || {
                "the armed child's ioctl succeeded".into()
            })?;
            ensure(read_fail_nth(knob)? == "0\n", || {
                "the countdown did not come back".into()
            })?;
            write_fail_nth(knob, "100").map_err(|e| format!("arm {e}"))?;
            ensure(alloc_ioas(iommu).is_ok(), || {
                "a far countdown failed the ioctl".into()
            })?;
            let left = read_fail_nth(knob)?;
            ensure(left != "100\n" && left != "0\n", || {
                format!("countdown left {left:?}")
            })
        })();
        if let Err(message) = &code {
            println!("child: {message}");
        }
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(i32::from(code.is_err())) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ensure(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("child failed: status {status:#x}"),
    )?;
    // The parent's own thread was never armed.
    ensure(alloc_ioas(iommu).is_ok(), || {
        "the parent's ioctl failed".into()
    })
}

/// In a fork child, sweep fail-nth over `ioctl` (which hands out one file, returned by
/// `handed_out` from the ioctl's response): every failed attempt leaves the child's descriptor
/// table as it was, and the first success adds exactly the returned descriptor. Returns how
/// many attempts failed.
fn sweep_file_ioctl(
    knob: i32,
    mut attempt: impl FnMut() -> Result<i32, i32>,
) -> Result<u32, String> {
    let mut failures = 0;
    for nth in 1..=64 {
        let before = open_descriptors(0);
        write_fail_nth(knob, &nth.to_string()).map_err(|e| format!("arm {e}"))?;
        let result = attempt();
        write_fail_nth(knob, "0").map_err(|e| format!("disarm {e}"))?;
        let after = open_descriptors(0);
        match result {
            Err(_) => {
                failures += 1;
                ensure(after == before, || {
                    format!("failure {nth} left descriptors behind: {before:?} → {after:?}")
                })?;
            }
            Ok(fd) => {
                let added: Vec<i32> = after
                    .iter()
                    .copied()
                    .filter(|f| !before.contains(f))
                    .collect();
                ensure(added == [fd], || {
                    format!("success at {nth} returned {fd}, added {added:?}")
                })?;
                close(fd).map_err(|e| format!("close {fd}: errno {e}"))?;
                return Ok(failures);
            }
        }
    }
    Err("no attempt succeeded".into())
}

fn fail_nth_child_files() -> Check {
    let iommu = open_iommu(libc::O_RDWR)?;
    let ioas = alloc_ioas(iommu)?;
    // SAFETY: the child uses inherited descriptors and its own files, and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = (|| -> Result<(), String> {
            let knob = open(&fail_nth_path(), libc::O_RDWR).map_err(|e| format!("open {e}"))?;
            // The library's connection to the parent is made by the child's first request:
            // made now, it is not mistaken for a descriptor a failed ioctl left behind.
            alloc_ioas(iommu)?;
            let access_failures = sweep_file_ioctl(knob, || {
                let mut cmd = IommuTestCmd::new(ioas, &TestCreateAccess::default());
                ioctl(iommu, IOMMU_TEST_CMD, &mut cmd)?;
                Ok(cmd.payload::<TestCreateAccess>().out_access_fd as i32)
            })?;
            let fault_failures = sweep_file_ioctl(knob, || {
                let mut fault = IommuFaultAlloc {
                    size: std::mem::size_of::<IommuFaultAlloc>() as u32,
                    ..Default::default()
                };
                ioctl(iommu, IOMMU_FAULT_QUEUE_ALLOC, &mut fault)?;
                Ok(fault.out_fault_fd as i32)
            })?;
            ensure(access_failures > 0 && fault_failures > 0, || {
                format!("only {access_failures} and {fault_failures} injected failures")
            })
        })();
        if let Err(message) = &code {
            println!("child: {message}");
        }
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(i32::from(code.is_err())) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ensure(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("child failed: status {status:#x}"),
    )?;
    // Every access the child made (failed or closed) is gone: the IOAS is free.
    ensure(destroy(iommu, ioas) == Ok(0), || {
        "the child's accesses outlived it".into()
    })
}

fn debugfs_redirect() -> Check {
    // SAFETY: a live path.
    let dir = unsafe { libc::opendir(c"/sys/kernel/debug/".as_ptr()) };
    ensure(!dir.is_null(), || format!("opendir: errno {}", errno()))?;
    // SAFETY: `dir` is a live DIR.
    let dfd = unsafe { libc::dirfd(dir) };
    // SAFETY: a live relative path under the directory descriptor.
    let knob = unsafe { libc::openat(dfd, c"failslab/ignore-gfp-wait".as_ptr(), libc::O_WRONLY) };
    ensure(knob >= 0, || {
        format!("openat failslab/ignore-gfp-wait: errno {}", errno())
    })?;
    // SAFETY: live buffer of one byte.
    let written = unsafe { libc::write(knob, c"N".as_ptr().cast(), 1) };
    ensure(written == 1, || "write knob".into())?;
    close(knob).map_err(|e| format!("close: errno {e}"))?;
    let mut names = Vec::new();
    loop {
        // SAFETY: `dir` is a live DIR; readdir returns null at the end.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name of a live dirent is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: closes the live DIR.
    unsafe { libc::closedir(dir) };
    for expected in [
        "failslab",
        "fail_page_alloc",
        "fail_iommufd",
        "fail_usercopy",
    ] {
        ensure(names.iter().any(|n| n == expected), || {
            format!("no {expected} in {names:?}")
        })?;
    }
    let redirected = std::env::var("UIOMMU_DEBUGFS_DIR").map_err(|e| e.to_string())?;
    let written = std::fs::read_to_string(format!("{redirected}/failslab/ignore-gfp-wait"))
        .map_err(|e| e.to_string())?;
    ensure(written == "N", || {
        format!("the knob went elsewhere: {written:?}")
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("");
    let result = match name {
        "dup-keeps-context" => dup_keeps_context(),
        "cloexec" => cloexec(),
        "cloexec-after-exec" => {
            let fd = |i: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(-1);
            cloexec_after_exec(fd(1), fd(2))
        }
        "last-close-releases" => last_close_releases(),
        "fork-child-exit-releases" => fork_child_exit_releases(),
        "unknown-ioctl" => unknown_ioctl(),
        "destroy-null-efault" => destroy_null_efault(),
        "other-files" => other_files(),
        "fork-shares-context" => fork_shares_context(),
        "numbers" => numbers(),
        "access-fd" => access_fd(),
        "fork-child-uses-handed-out-files" => fork_child_uses_handed_out_files(),
        "vfio-container" => vfio_container(),
        "wild-pointers" => wild_pointers(),
        "fail-nth" => fail_nth(),
        "fail-nth-in-child" => fail_nth_in_child(),
        "fail-nth-child-files" => fail_nth_child_files(),
        "debugfs-redirect" => debugfs_redirect(),
        other => Err(format!("unknown check {other:?}")),
    };
    // The exec'd half of `cloexec` reports for the whole check.
    report(name.strip_suffix("-after-exec").unwrap_or(name), result)
}
