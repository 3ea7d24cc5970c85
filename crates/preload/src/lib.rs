//! uiommu-preload: an `LD_PRELOAD` library that gives unmodified programs uiommu's
//! `/dev/iommu` (Linux `drivers/iommu/iommufd/main.c` as seen from user space).
//!
//! The library interposes the libc calls a program uses to reach a character device (`open`
//! and its fortified and LFS variants, `close`, `dup*`, `fcntl`, `ioctl`, `read`/`write` and
//! their positional, vectored and fortified variants, `close_range`, `closefrom`, `opendir`, and
//! `syscall` for the same system calls made through it). Opening `/dev/iommu` returns an
//! *emulated file*: one real kernel file descriptor (a pipe reopened read-write) whose ioctls
//! are served by uiommu's iommufd engine over an in-process IOMMU core with the mock driver
//! registered. Every other call goes to the real libc untouched.
//!
//! What the crate owns, and where:
//! * [`fdtable`]: which descriptor numbers are emulated, and the library's own private
//!   descriptors (kept out of the program's way).
//! * [`files`]: emulated files, their single descriptor, release on last close (one inotify
//!   watch per file on one inotify instance), and the readiness that makes handed-out files
//!   pollable.
//! * [`home`]: the emulated platform, and how forked children keep using their parent's files:
//!   channels inherited through `fork`, credentials checked on every message, and files named
//!   only by a descriptor the caller passes (possession, as in the kernel).
//! * [`fault`]: fail-nth emulation (`/proc/.../fail-nth` and the debugfs knobs).
//! * [`shim`]: the routing decisions behind every interposed call, in safe code.
//! * `exports` (built only into the library, not its unit tests), [`real`] and [`sys`]: the
//!   only modules with unsafe code — the exported C symbols, the pass-through to the next
//!   definition of each symbol, and the raw system calls the library makes for itself (through
//!   libc's `syscall` found with `dlsym(RTLD_NEXT)`, never the library's own exports).
//!
//! What it must not know: IOMMU semantics. It holds no IOMMU logic; it turns libc calls into
//! calls of [`uiommu_iommufd::ctx::IommufdCtx::ioctl`] and results into `errno`.
//!
//! # Environment
//! The variables below are read once; [`ENV_LOG`] is the only output the library writes,
//! except the one-line notices of [`log::notice_once`] on stderr when `uiommu run` asks for
//! them (programs under test print TAP on stdout and stderr).
//!
//! # Locking
//! Lock order (each lock is documented where it is declared): `files::RELEASE` →
//! `home::ROLE` → `home::CONNECTION` → `files::REGISTRY` → `fdtable::TABLE` →
//! `fdtable::PRIVATE` → `fault::THREADS`. The fork handlers take all of them in this order
//! (after the prepare handler has made the new child's channel, which may take
//! `home::CONNECTION` alone to pass the home its end). `home::ROLE` is only read or set, never
//! held across another lock, except by the fork handlers. An attached process answers the
//! home's callbacks for its descriptor table under `home::CONNECTION`, taking `fdtable::TABLE`
//! after it. The file installers' reservation tables (`home::Installer`, and each
//! `home::ChildFiles` on a server thread) are leaves outside this order, as is each file's
//! readiness lock (`files::Readiness`), taken with no library lock held and before
//! `fdtable::TABLE` (read, to write the readiness byte through the home's descriptor of the
//! file) and the fault queue's own lock. `fdtable::TABLE` is held for writing across the real `dup3` of a
//! `dup2`/`dup3` onto a number, so that the change is atomic to lookups.

pub mod fault;
pub mod fdtable;
pub mod files;
pub mod home;
pub mod log;
pub mod real;
pub mod shim;
pub mod sys;

#[cfg(not(test))]
mod exports;

/// Path of a file the library appends its diagnostics to; unset means no logging.
pub const ENV_LOG: &str = "UIOMMU_PRELOAD_LOG";
/// `1` enables fail-nth emulation: `/proc/.../fail-nth` files drive the engine's countdown and
/// `/sys/kernel/debug` is redirected to a private directory.
pub const ENV_FAULT_INJECTION: &str = "UIOMMU_FAULT_INJECTION";
/// The directory standing in for `/sys/kernel/debug` under fault injection. When unset the
/// library creates `$TMPDIR/uiommu-debugfs-PID` (or under `/tmp`) and leaves it behind;
/// `uiommu run` sets it to a directory it removes afterwards.
pub const ENV_DEBUGFS_DIR: &str = "UIOMMU_DEBUGFS_DIR";
