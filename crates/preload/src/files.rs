//! Emulated files and their lifetime: the kernel's `struct file`, released on last close.
//!
//! # Model: one descriptor per file
//! An emulated file is a [`ShimFile`] plus *one* open file description of the kernel: a pipe
//! reopened through `/proc/self/fd/N` with `O_RDWR` ([`new_descriptor`]), which is both its
//! own reader and writer. The program's descriptors (every `dup`, every fork child's copy)
//! all refer to that one description, so the kernel counts the references for us and closes
//! it exactly once, on the last close anywhere (or at the exit of the last holder).
//!
//! The home process (see [`crate::home`]) learns of that close through *one* inotify instance
//! ([`watcher_fd`]): each file it serves has a watch on its pipe's inode for close events, and the
//! kernel queues the event before the closing `close` (or `exit`) returns. The home's own
//! `close` drains the queue ([`release_closed`]) before returning, so an iommufd context's
//! objects and pins are gone by then, as with the kernel's release on last `fput`; the home's
//! watcher thread does the same for files whose last holder was a fork child that exited.
//!
//! A file is identified by its pipe's (device, inode) ([`ShimFile::identity`]): a descriptor
//! passed to the home over a channel names the file it refers to, which is how the home knows
//! that a caller holds the file it acts on.
//!
//! Readiness: `/dev/iommu` has no poll method, so Linux reports it always readable and
//! writable; its pipe keeps one byte, which does the same. A file an ioctl hands out (a fault
//! queue, an access) is readable exactly when the engine has something for it: [`Readiness`]
//! keeps the invariant "one byte is in the pipe iff the file is readable", writing the byte
//! when the file becomes readable (a fault queue tells us through its readiness observer) and
//! draining it on the next `read` that finds the file not readable any more. The program's
//! `read`/`write` are still served by the engine and never see the byte. The home writes and
//! drains through the program's own descriptor while it holds one (found in its descriptor
//! table, under the table's lock, so that the number cannot change meanwhile). When it closes
//! its last one while the file lives on (in fork children, or the program's `close` is about to
//! release it), it first reopens a private *stash* description through `/proc/self/fd/N`
//! ([`ShimFile::keep_readiness`]); a file made for a fork child gets its stash at creation. The
//! stash's own close never counts as a last close: its watch is removed first.
//!
//! Limits of the readiness byte: when the queue empties other than by a `read` of the file
//! (an automatic response on detach), the program's descriptor stays readable until its next
//! `read`, which returns 0 and drains the byte: one spurious wake-up, which the kernel's own
//! `poll`/`read` pair also allows for (a racing reader). A program that bypasses the
//! interposed calls (`readv` on the descriptor) can consume the byte. Anything else opening
//! the pipe through `/proc/PID/fd` (which needs ptrace rights over the program) and closing
//! it again looks like a last close.
//!
//! [`REGISTRY`] owns every file the home serves, by identity, and so keeps a file alive while
//! only other processes hold its descriptors. `fail-nth` files are not served by a home: they
//! live as long as a descriptor table entry refers to them.
//!
//! # Locking
//! [`RELEASE`] serialises releases, so that of two threads draining close events, the one that
//! does not drop the file waits until the other has finished dropping it. It is taken before
//! `REGISTRY`, which is a leaf lock held only to insert, look up or remove. Each [`Readiness`]
//! has its own mutex, taken with no other library lock held, before the descriptor table's
//! lock (to find the home's descriptor of the file) and the fault queue's own lock (it reads
//! the queue's state under it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use uiommu_iommufd::ctx::IommufdCtx;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::fault::Fault;
use uiommu_iommufd::file::{EmulatedFile, PollEvents};

use crate::fault::Task;
use crate::fdtable::PrivateFd;
use crate::sys::{self, SysResult};

/// A file's number in the log, unique within the process that serves it.
pub type FileId = u64;

/// The (device, inode) of a file's pipe: what names it across processes.
pub type Identity = (u64, u64);

/// How a file was opened (`O_ACCMODE` of the open flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessMode {
    /// Opened for reading (`O_RDONLY` or `O_RDWR`).
    pub read: bool,
    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub write: bool,
}

impl AccessMode {
    /// The mode of open `flags`. Linux gives the otherwise invalid access mode 3 the meaning
    /// "neither" (ioctl only).
    pub fn from_flags(flags: i32) -> AccessMode {
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => AccessMode {
                read: true,
                write: false,
            },
            libc::O_WRONLY => AccessMode {
                read: false,
                write: true,
            },
            libc::O_RDWR => AccessMode {
                read: true,
                write: true,
            },
            _ => AccessMode {
                read: false,
                write: false,
            },
        }
    }

    /// The `O_ACCMODE` bits of this mode.
    pub fn flags(self) -> i32 {
        match (self.read, self.write) {
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
            (false, false) => libc::O_ACCMODE,
        }
    }
}

/// What an emulated file is.
#[derive(Debug)]
pub enum FileKind {
    /// An open `/dev/iommu` (or `/dev/vfio/vfio`).
    Iommufd(Arc<IommufdCtx>),
    /// A file an ioctl handed out (a fault queue, the selftest's access).
    Emulated(EmulatedFile),
    /// A task's `fail-nth` file under `/proc`.
    FailNth(Task),
}

/// One emulated open file.
#[derive(Debug)]
pub struct ShimFile {
    /// Its number in the log.
    pub id: FileId,
    /// How it was opened.
    pub mode: AccessMode,
    /// What it is.
    pub kind: FileKind,
    /// The file position, for `read` (the kernel's `f_pos`).
    pub position: AtomicU64,
    /// Its pipe's identity.
    pub identity: Identity,
    /// The home's close watch on its pipe (none for files the home does not serve).
    watch: Option<i32>,
    /// The readiness byte of a file an ioctl handed out.
    readiness: Option<Arc<Readiness>>,
}

impl ShimFile {
    /// Bring the readiness byte in line with the file's state (after a `read`, or once the
    /// byte has a way into the pipe again). Files without a readiness byte ignore it.
    pub fn sync_readiness(&self) {
        if let (Some(readiness), FileKind::Emulated(emulated)) = (&self.readiness, &self.kind) {
            readiness.sync(|| readable(emulated));
        }
    }

    /// Whether the file keeps a readiness byte (a file an ioctl handed out, served here).
    pub fn has_readiness(&self) -> bool {
        self.readiness.is_some()
    }

    /// The home is about to close `fd`, its last descriptor of this file: open the readiness
    /// stash through it first, so that the byte still reaches the file's other holders.
    pub fn keep_readiness(&self, fd: i32) {
        let Some(readiness) = &self.readiness else {
            return;
        };
        match sys::open(&proc_fd_path(fd), libc::O_RDWR | libc::O_CLOEXEC, 0) {
            Ok(opened) => {
                let stash = PrivateFd::adopt(opened);
                let mut state = readiness.lock();
                if state.stash.is_none() && !state.closed {
                    state.stash = Some(stash);
                } else {
                    stash.close();
                }
            }
            Err(err) => {
                crate::log::line(format_args!("file {}: no readiness stash: {err}", self.id));
            }
        }
        self.sync_readiness();
    }
}

impl Drop for ShimFile {
    fn drop(&mut self) {
        if let (Some(wd), Some(watcher)) = (self.watch, watcher()) {
            // Before the stash closes: its close must not look like another last close.
            sys::unwatch(watcher.get(), wd);
        }
        if let Some(readiness) = &self.readiness {
            // Closes the stash under the readiness lock, so that an observer running now does
            // not write to a number the kernel may have reused.
            readiness.close();
        }
    }
}

/// Whether the program should see `file` readable (its `EPOLLIN`).
fn readable(file: &EmulatedFile) -> bool {
    file.poll().contains(PollEvents::IN)
}

/// The readiness byte of a file an ioctl handed out (see the module documentation).
///
/// Locking: `state` is held for each whole check-and-update, including the file's state read
/// (which takes the fault queue's lock) and the byte's write or drain, so that concurrent
/// updates apply in some order and the last one leaves the invariant true.
#[derive(Debug)]
pub struct Readiness {
    /// The file's pipe, to find the home's descriptors of it.
    identity: Identity,
    state: Mutex<ReadinessState>,
}

#[derive(Debug, Default)]
struct ReadinessState {
    /// A readiness byte is in the pipe.
    signalled: bool,
    /// The file is released: nothing more to signal.
    closed: bool,
    /// The home's own description of the pipe, once it has no descriptor of the program's.
    stash: Option<PrivateFd>,
}

impl Readiness {
    fn lock(&self) -> MutexGuard<'_, ReadinessState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start mirroring `file`'s readiness: a fault queue reports each change of its queue.
    fn watch(self: &Arc<Self>, file: &EmulatedFile) {
        if let EmulatedFile::Fault(fault_file) = file {
            let readiness = Arc::clone(self);
            fault_file.set_readiness_observer(Arc::new(move |fault: &Fault| {
                readiness.sync(|| fault.queued() > 0);
            }));
        }
        self.sync(|| readable(file));
    }

    /// Write the byte if `readable()` now says so and none is there; drain it if `readable()`
    /// says no and one is there.
    fn sync(&self, readable: impl FnOnce() -> bool) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let wanted = readable();
        if wanted && !state.signalled {
            let mut written = false;
            self.through(&state, |pipe| written = sys::write(pipe, &[1]).is_ok());
            state.signalled = written;
        } else if !wanted && state.signalled && self.through(&state, drain_one) {
            state.signalled = false;
        }
    }

    /// Run `f` on a descriptor of the pipe: the stash, else one of the home's descriptors of
    /// the program's (under the table's lock). `false` when there is none (a closing home
    /// descriptor whose stash is not attached yet: [`ShimFile::keep_readiness`] syncs again).
    fn through(&self, state: &ReadinessState, f: impl FnOnce(i32)) -> bool {
        match &state.stash {
            Some(stash) => {
                f(stash.get());
                true
            }
            None => crate::fdtable::with_descriptor_of(self.identity, f),
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        if let Some(stash) = state.stash.take() {
            stash.close();
        }
    }
}

/// Read the readiness byte from `pipe` if one is there (checked first, so this never blocks
/// on a byte someone consumed behind the library's back).
fn drain_one(pipe: i32) {
    let mut poll = [libc::pollfd {
        fd: pipe,
        events: libc::POLLIN,
        revents: 0,
    }];
    if sys::poll(&mut poll, 0).is_ok() && poll[0].revents & libc::POLLIN != 0 {
        let mut byte = [0u8; 1];
        let _ = sys::read(pipe, &mut byte);
    }
}

/// `/proc/self/fd/N`, NUL-terminated.
fn proc_fd_path(fd: i32) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// A new file's single descriptor, at the lowest free number as `open` would have returned it,
/// with close-on-exec as asked: a pipe reopened `O_RDWR` through `/proc/self/fd`. `filled`
/// leaves one byte in the pipe (always readable and writable, as `/dev/iommu`). At most two
/// descriptors are open at any moment.
pub fn new_descriptor(cloexec: bool, filled: bool) -> SysResult<i32> {
    let (read_end, write_end) = sys::pipe_cloexec()?;
    let filled_ok = !filled || sys::write(write_end, &[0]).is_ok();
    let _ = sys::close(write_end);
    let cloexec_flag = if cloexec { libc::O_CLOEXEC } else { 0 };
    let reopened = if filled_ok {
        sys::open(&proc_fd_path(read_end), libc::O_RDWR | cloexec_flag, 0)
    } else {
        Err(Errno::ENOMEM)
    };
    let reopened = match reopened {
        Ok(fd) => fd,
        Err(err) => {
            let _ = sys::close(read_end);
            return Err(err);
        }
    };
    if read_end < reopened {
        // The read end held the lowest free number: move there.
        let moved = sys::dup3(reopened, read_end, cloexec_flag);
        let _ = sys::close(reopened);
        if moved.is_err() {
            let _ = sys::close(read_end);
        }
        moved
    } else {
        let _ = sys::close(read_end);
        Ok(reopened)
    }
}

/// The home's inotify instance, with the pid that created it (a fork child's copy of this
/// static is not its own: it is closed by the fork handler and never used).
static WATCHER: OnceLock<(u32, Result<PrivateFd, Errno>)> = OnceLock::new();

/// This process's watcher, if it made one.
fn watcher() -> Option<&'static PrivateFd> {
    match WATCHER.get() {
        Some((pid, Ok(fd))) if *pid == sys::getpid() => Some(fd),
        _ => None,
    }
}

/// The close-event queue of the home, created on first use.
pub fn watcher_fd() -> SysResult<i32> {
    let (pid, fd) = WATCHER.get_or_init(|| (sys::getpid(), sys::inotify().map(PrivateFd::adopt)));
    if *pid != sys::getpid() {
        return Err(Errno::EIO);
    }
    fd.as_ref().map(PrivateFd::get).map_err(|&err| err)
}

/// A file being set up by the home: its descriptor's identity, close watch and (for files an
/// ioctl hands out to a fork child) readiness stash. [`register`] turns it into a served file; dropping it
/// instead removes the watch and closes the stash.
#[derive(Debug)]
pub struct Prepared {
    identity: Identity,
    watch: i32,
    stash: Option<PrivateFd>,
}

impl Prepared {
    /// Watch `fd`, a fresh [`new_descriptor`] of this process, for its last close; `stash`
    /// also opens the readiness stash (before the watch, so it never reports its own open).
    pub fn watch(fd: i32, stash: bool) -> SysResult<Prepared> {
        let watcher = watcher_fd()?;
        let identity = sys::file_identity(fd)?;
        let path = proc_fd_path(fd);
        let stash = if stash {
            let opened = sys::open(&path, libc::O_RDWR | libc::O_CLOEXEC, 0)?;
            Some(PrivateFd::adopt(opened))
        } else {
            None
        };
        match sys::watch_closes(watcher, &path) {
            Ok(watch) => Ok(Prepared {
                identity,
                watch,
                stash,
            }),
            Err(err) => {
                if let Some(stash) = stash {
                    stash.close();
                }
                Err(err)
            }
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(watcher) = watcher() {
            sys::unwatch(watcher.get(), self.watch);
        }
        if let Some(stash) = self.stash.take() {
            stash.close();
        }
    }
}

/// Every file the home serves, by identity, and the identity behind each watch.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    files: HashMap<Identity, Arc<ShimFile>>,
    watches: HashMap<i32, Identity>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
/// Serialises releases (see the module documentation).
static RELEASE: Mutex<()> = Mutex::new(());

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, Option<Registry>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serve `kind` as the file `prepared` describes.
pub fn register(kind: FileKind, mode: AccessMode, mut prepared: Prepared) -> Arc<ShimFile> {
    let readiness = matches!(kind, FileKind::Emulated(_)).then(|| {
        Arc::new(Readiness {
            identity: prepared.identity,
            state: Mutex::new(ReadinessState {
                stash: prepared.stash.take(),
                ..ReadinessState::default()
            }),
        })
    });
    let watch = prepared.watch;
    let identity = prepared.identity;
    // The watch now belongs to the file.
    std::mem::forget(prepared);
    let file = Arc::new(ShimFile {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        mode,
        kind,
        position: AtomicU64::new(0),
        identity,
        watch: Some(watch),
        readiness,
    });
    if let (Some(readiness), FileKind::Emulated(emulated)) = (&file.readiness, &file.kind) {
        readiness.watch(emulated);
    }
    let mut registry = registry();
    let registry = registry.get_or_insert_with(Registry::default);
    registry.watches.insert(watch, identity);
    registry.files.insert(identity, file.clone());
    file
}

/// A file no home serves (a `fail-nth` file): it lives while descriptor table entries hold it.
pub fn unserved(kind: FileKind, mode: AccessMode, fd: i32) -> SysResult<Arc<ShimFile>> {
    Ok(Arc::new(ShimFile {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        mode,
        kind,
        position: AtomicU64::new(0),
        identity: sys::file_identity(fd)?,
        watch: None,
        readiness: None,
    }))
}

/// The served file `fd` (a descriptor of this process, e.g. one a caller passed) refers to.
pub fn by_descriptor(fd: i32) -> Option<Arc<ShimFile>> {
    let identity = sys::file_identity(fd).ok()?;
    registry()
        .as_ref()
        .and_then(|r| r.files.get(&identity))
        .cloned()
}

/// Drop every served file whose description has been closed for the last time; return once
/// they are dropped. One pass under the release lock, so a release another thread has started
/// is finished before this returns.
pub fn release_closed() {
    let Some(watcher) = watcher() else { return };
    let _serial = RELEASE.lock().unwrap_or_else(PoisonError::into_inner);
    let closed = sys::closed_watches(watcher.get());
    if closed.is_empty() {
        return;
    }
    let released: Vec<Arc<ShimFile>> = {
        let mut registry = registry();
        let Some(registry) = registry.as_mut() else {
            return;
        };
        closed
            .iter()
            .filter_map(|wd| registry.watches.remove(wd))
            .filter_map(|identity| registry.files.remove(&identity))
            .collect()
    };
    for file in released {
        crate::log::line(format_args!("release file {}", file.id));
        drop(file);
    }
}

/// The release lock, for the fork handlers.
pub(crate) fn lock_release() -> MutexGuard<'static, ()> {
    RELEASE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registry, locked, for the fork handlers.
pub(crate) fn lock_registry() -> MutexGuard<'static, Option<Registry>> {
    registry()
}

/// In a fork child: forget (without dropping) every file the home serves; the home keeps
/// serving them, and the child must never run their release.
pub(crate) fn forget_served(registry: &mut Option<Registry>) {
    if let Some(registry) = registry.take() {
        std::mem::forget(registry);
    }
}
