//! Diagnostics, to the file named by [`crate::ENV_LOG`] and nowhere else: programs under the
//! library print test results on stdout and stderr, which must stay exactly theirs.
//!
//! The file is opened once (append, close-on-exec) as a private descriptor; each line is one
//! `write`, so lines of concurrent threads and forked processes do not interleave.

use std::fmt;
use std::sync::OnceLock;

use crate::fdtable::PrivateFd;
use crate::sys;

/// The log file, once opened; `None` inside when logging is off or the file cannot be opened.
static FD: OnceLock<Option<PrivateFd>> = OnceLock::new();

fn log_fd() -> Option<&'static PrivateFd> {
    FD.get_or_init(|| {
        use std::os::unix::ffi::OsStrExt;
        let path = std::env::var_os(crate::ENV_LOG)?;
        let path = std::ffi::CString::new(path.as_bytes()).ok()?;
        let fd = sys::open(
            &path,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        )
        .ok()?;
        Some(PrivateFd::adopt(fd))
    })
    .as_ref()
}

/// Append one line (prefixed with pid and tid) to the log, if logging is on.
pub fn line(args: fmt::Arguments<'_>) {
    if let Some(fd) = log_fd() {
        let text = format!(
            "uiommu-preload[{}/{}]: {args}\n",
            sys::getpid(),
            sys::gettid()
        );
        let _ = sys::write(fd.get(), text.as_bytes());
    }
}

/// The log's descriptor, if it is open, so a fork child keeps it.
pub(crate) fn descriptor() -> Option<i32> {
    FD.get().and_then(Option::as_ref).map(PrivateFd::get)
}

/// `1`: the library may tell the user, on stderr, about calls it cannot serve ([`notice_once`]).
/// `uiommu run` sets it; without it stderr stays the program's alone.
pub const ENV_NOTICES: &str = "UIOMMU_NOTICES";

/// Tell the user once per process that something reached an emulated descriptor that the
/// library cannot serve: in the log, and on stderr when [`ENV_NOTICES`] allows.
pub fn notice_once(args: fmt::Arguments<'_>) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    line(args);
    if std::env::var_os(ENV_NOTICES).is_some_and(|v| v == "1") {
        let text = format!("uiommu: {args}\n");
        let _ = sys::write(2, text.as_bytes());
    }
}
