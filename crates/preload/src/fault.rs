//! Fail-nth emulation: the files through which the kernel selftest `iommufd_fail_nth` drives
//! fault injection, served from the engine's per-thread countdown
//! ([`uiommu_iommufd::failpoint`]) instead of the kernel's.
//!
//! Only when [`crate::ENV_FAULT_INJECTION`] is `1` (set by `uiommu run`); otherwise the paths
//! below reach the real kernel untouched.
//!
//! * `/proc/self/task/TID/fail-nth`, `/proc/thread-self/fail-nth` and
//!   `/proc/PID/task/TID/fail-nth` (PID our own) open an emulated file bound to thread TID.
//!   Writing parses an unsigned number as the kernel's `kstrtouint(.., 0, ..)` does and arms
//!   that thread; reading returns `"%u\n"` of what is left, honouring the file position (Linux
//!   `proc_fail_nth_write()`/`proc_fail_nth_read()`). Another process's file is refused with
//!   `EACCES`: its countdown lives in that process.
//! * `opendir("/sys/kernel/debug")` and opens below it are redirected to a private directory
//!   holding the `failslab`, `fail_page_alloc`, `fail_iommufd` and `fail_usercopy` knobs the
//!   selftest writes, so real debugfs is never touched.
//!
//! A thread's countdown handle ([`FailNth`]) can only be taken by the thread itself, so each
//! thread registers in [`THREADS`] the first time it enters the library; a value written for a
//! thread that has not registered yet is kept as pending and applied when it does.
//!
//! Locking: `THREADS` is a leaf mutex.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::failpoint::{set_fail_nth, FailNth};

use crate::sys::{self, SysResult};

/// Whether fail-nth emulation is on ([`crate::ENV_FAULT_INJECTION`] is `1`).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var_os(crate::ENV_FAULT_INJECTION).is_some_and(|value| value == "1")
    })
}

/// The task (thread) a fail-nth file belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Its thread id.
    pub tid: u32,
}

/// What a `/proc` path names, as far as fail-nth is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailNthPath {
    /// The fail-nth file of one of our threads (whether it exists is checked at open).
    Own(Task),
    /// The fail-nth file of another process's thread.
    Foreign,
}

/// Classify `path` given our pid and the calling thread's tid; `None` when it is not a
/// fail-nth file.
pub fn parse_fail_nth_path(path: &[u8], pid: u32, tid: u32) -> Option<FailNthPath> {
    let rest = path.strip_prefix(b"/proc/")?;
    if rest == b"thread-self/fail-nth" {
        return Some(FailNthPath::Own(Task { tid }));
    }
    let (process, rest) = split_component(rest)?;
    let rest = rest.strip_prefix(b"task/")?;
    let (thread, rest) = split_component(rest)?;
    if rest != b"fail-nth" {
        return None;
    }
    let thread = parse_decimal(thread)?;
    let ours = process == b"self" || parse_decimal(process) == Some(pid);
    Some(if ours {
        FailNthPath::Own(Task { tid: thread })
    } else if parse_decimal(process).is_some() {
        FailNthPath::Foreign
    } else {
        return None;
    })
}

/// `component/rest` → (component, rest).
fn split_component(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let slash = path.iter().position(|&b| b == b'/')?;
    Some((&path[..slash], &path[slash + 1..]))
}

/// A `/proc` directory name: decimal digits only, no sign, no leading zeros.
fn parse_decimal(text: &[u8]) -> Option<u32> {
    if text.is_empty() || (text.len() > 1 && text[0] == b'0') {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Whether thread `task` belongs to this process.
pub fn task_exists(task: Task) -> bool {
    CString::new(format!("/proc/self/task/{}", task.tid)).is_ok_and(|path| sys::exists(&path))
}

/// Parse what a program wrote to a fail-nth file, as `kstrtouint_from_user(buf, count, 0, ..)`:
/// at most 34 bytes are looked at, up to the first NUL; an optional `+`, then a `0x` (hex),
/// `0` (octal) or decimal number, then an optional newline.
///
/// # Errors
/// `EINVAL` for anything else, `ERANGE` for a value that does not fit in 32 bits.
pub fn parse_value(written: &[u8]) -> SysResult<u32> {
    let written = &written[..written.len().min(34)];
    let text = match written.iter().position(|&b| b == 0) {
        Some(nul) => &written[..nul],
        None => written,
    };
    let text = text.strip_prefix(b"+").unwrap_or(text);
    let (radix, digits) = match text {
        [b'0', x, next, ..] if x.eq_ignore_ascii_case(&b'x') && next.is_ascii_hexdigit() => {
            (16, &text[2..])
        }
        [b'0', ..] => (8, text),
        _ => (10, text),
    };
    let end = digits
        .iter()
        .position(|&b| !(b as char).is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return Err(Errno::EINVAL);
    }
    match &digits[end..] {
        [] | [b'\n'] => {}
        _ => return Err(Errno::EINVAL),
    }
    let mut value: u32 = 0;
    for &b in &digits[..end] {
        let digit = (b as char).to_digit(radix).ok_or(Errno::EINVAL)?;
        value = value
            .checked_mul(radix)
            .and_then(|v| v.checked_add(digit))
            .ok_or(Errno::ERANGE)?;
    }
    Ok(value)
}

/// What reading a fail-nth file returns: `"%u\n"`.
pub fn format_value(value: u32) -> Vec<u8> {
    format!("{value}\n").into_bytes()
}

/// A thread's countdown as far as the registry knows it.
#[derive(Debug)]
pub(crate) enum Slot {
    /// The thread has registered: its live countdown.
    Known(FailNth),
    /// Written before the thread registered; applied when it does.
    Pending(u32),
}

/// Thread id → its countdown. Entries of exited threads stay until their id is reused and the
/// new thread registers over them.
static THREADS: Mutex<Option<HashMap<u32, Slot>>> = Mutex::new(None);

thread_local! {
    /// Whether this thread has registered in [`THREADS`] (reset in a fork child).
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn threads() -> MutexGuard<'static, Option<HashMap<u32, Slot>>> {
    THREADS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Make the calling thread's countdown reachable through its fail-nth file, applying a value
/// written before it got here. Cheap after the first call on a thread.
pub fn register_current_thread() {
    if !enabled() || REGISTERED.with(Cell::get) {
        return;
    }
    let tid = sys::gettid();
    let previous = threads()
        .get_or_insert_with(HashMap::new)
        .insert(tid, Slot::Known(FailNth::current()));
    if let Some(Slot::Pending(n)) = previous {
        set_fail_nth(n);
    }
    REGISTERED.with(|registered| registered.set(true));
}

/// The countdown of `task`, as its fail-nth file reads.
pub fn get(task: Task) -> u32 {
    match threads().as_ref().and_then(|t| t.get(&task.tid)) {
        Some(Slot::Known(handle)) => handle.get(),
        Some(Slot::Pending(n)) => *n,
        None => 0,
    }
}

/// Arm (or disarm, with 0) `task`, as writing its fail-nth file does.
pub fn set(task: Task, n: u32) {
    let mut threads = threads();
    let threads = threads.get_or_insert_with(HashMap::new);
    match threads.get(&task.tid) {
        Some(Slot::Known(handle)) => handle.set(n),
        _ => {
            threads.insert(task.tid, Slot::Pending(n));
        }
    }
}

/// The registry, locked, for the fork handlers.
pub(crate) fn lock_threads() -> MutexGuard<'static, Option<HashMap<u32, Slot>>> {
    threads()
}

/// In a fork child: the parent's thread ids mean nothing here; forget them, and let the one
/// thread the child has register again under its own id.
pub(crate) fn forget_threads(threads: &mut Option<HashMap<u32, Slot>>) {
    if let Some(map) = threads.take() {
        // The handles point at the parent's thread-local countdowns (copied memory); dropping
        // them only drops copies of reference counts, which is harmless.
        drop(map);
    }
    REGISTERED.with(|registered| registered.set(false));
}

/// The knob files the selftest's constructor writes (relative to debugfs).
const DEBUGFS_FILES: &[&str] = &[
    "failslab/ignore-gfp-wait",
    "failslab/verbose",
    "fail_page_alloc/ignore-gfp-wait",
    "fail_page_alloc/ignore-gfp-highmem",
    "fail_page_alloc/verbose",
    "fail_iommufd/verbose",
    "fail_usercopy/verbose",
];

/// The directory standing in for debugfs, created and populated on first use; `None` when
/// it cannot be made.
fn debugfs_dir() -> Option<&'static [u8]> {
    static DIR: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::ffi::OsStringExt;
        let dir = match std::env::var_os(crate::ENV_DEBUGFS_DIR) {
            Some(dir) => dir.into_vec(),
            None => {
                let tmp = std::env::var_os("TMPDIR")
                    .map(OsStringExt::into_vec)
                    .unwrap_or_else(|| b"/tmp".to_vec());
                let mut dir = tmp;
                dir.extend_from_slice(format!("/uiommu-debugfs-{}", sys::getpid()).as_bytes());
                dir
            }
        };
        populate_debugfs(&dir).ok()?;
        Some(dir)
    })
    .as_deref()
}

fn populate_debugfs(dir: &[u8]) -> SysResult<()> {
    let path = |rel: &str| {
        let mut full = dir.to_vec();
        if !rel.is_empty() {
            full.push(b'/');
            full.extend_from_slice(rel.as_bytes());
        }
        CString::new(full).map_err(|_| Errno::EINVAL)
    };
    sys::mkdir(&path("")?, 0o700)?;
    for file in DEBUGFS_FILES {
        let (parent, _) = file.split_once('/').unwrap_or(("", file));
        sys::mkdir(&path(parent)?, 0o700)?;
        let fd = sys::open(
            &path(file)?,
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        )?;
        let _ = sys::close(fd);
    }
    Ok(())
}

/// Where `path` goes when it names something under `/sys/kernel/debug` and fault injection
/// is on: the same place under the private directory.
pub fn debugfs_redirect(path: &[u8]) -> Option<CString> {
    if !enabled() {
        return None;
    }
    let rest = path.strip_prefix(b"/sys/kernel/debug")?;
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return None;
    }
    let mut redirected = debugfs_dir()?.to_vec();
    redirected.extend_from_slice(rest);
    CString::new(redirected).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_nth_paths_name_our_threads() {
        let own = |tid| Some(FailNthPath::Own(Task { tid }));
        assert_eq!(
            parse_fail_nth_path(b"/proc/self/task/12/fail-nth", 10, 11),
            own(12)
        );
        assert_eq!(
            parse_fail_nth_path(b"/proc/10/task/12/fail-nth", 10, 11),
            own(12)
        );
        assert_eq!(
            parse_fail_nth_path(b"/proc/thread-self/fail-nth", 10, 11),
            own(11)
        );
        assert_eq!(
            parse_fail_nth_path(b"/proc/99/task/12/fail-nth", 10, 11),
            Some(FailNthPath::Foreign)
        );
        for other in [
            &b"/proc/self/task/12/fail-nthx"[..],
            b"/proc/self/task/012/fail-nth",
            b"/proc/self/task//fail-nth",
            b"/proc/self/fail-nth",
            b"/proc/self/task/12/comm",
            b"/proc/abc/task/12/fail-nth",
            b"/dev/iommu",
        ] {
            assert_eq!(parse_fail_nth_path(other, 10, 11), None, "{other:?}");
        }
    }

    #[test]
    fn values_parse_like_kstrtouint_base_0() {
        assert_eq!(parse_value(b"17"), Ok(17));
        assert_eq!(parse_value(b"17\n"), Ok(17));
        assert_eq!(parse_value(b"+5"), Ok(5));
        assert_eq!(parse_value(b"0x1f"), Ok(31));
        assert_eq!(parse_value(b"0X1F\n"), Ok(31));
        assert_eq!(parse_value(b"010"), Ok(8));
        assert_eq!(parse_value(b"0"), Ok(0));
        assert_eq!(parse_value(b"4294967295"), Ok(u32::MAX));
        assert_eq!(parse_value(b"3\0junk"), Ok(3));
        assert_eq!(parse_value(b"4294967296"), Err(Errno::ERANGE));
        for bad in [
            &b""[..],
            b"\n",
            b"-1",
            b" 1",
            b"1 ",
            b"1\n\n",
            b"08",
            b"0x",
            b"0xg",
            b"x1",
        ] {
            assert_eq!(parse_value(bad), Err(Errno::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn reads_format_with_newline() {
        assert_eq!(format_value(0), b"0\n");
        assert_eq!(format_value(400), b"400\n");
    }
}
