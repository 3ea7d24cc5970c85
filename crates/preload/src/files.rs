//! Emulated files and their lifetime: the kernel's `struct file`, released on last close.
//!
//! # Model
//! An emulated file is a [`ShimFile`] plus a pair of connected descriptors. The program's
//! descriptors are one end; the library keeps the other (the *kept end*) as a [`PrivateFd`].
//! The kernel then does the reference counting of the file for us: `dup`, `fork`,
//! close-on-exec and process exit all act on the program's end, and the kept end reports
//! `POLLHUP` exactly when no descriptor of the program's end is open in any process. Whenever
//! a descriptor of a file is closed (here, or in a fork child through [`crate::home`]),
//! [`release_if_unheld`] checks for that hang-up and, if it is there, drops the file before
//! `close` returns, so an iommufd context's objects and pins are gone by then, as with the
//! kernel's release on last `fput`.
//!
//! Two kinds of pair are used:
//! * a pipe ([`pipe`]): the program gets the write end. For `/dev/iommu` and `fail-nth`
//!   files, whose readiness no program waits for.
//! * a `SOCK_STREAM` UNIX socket pair ([`socket_pair`]): for files an ioctl hands out (fault
//!   queues, access fds), whose readiness is made real so that `poll`, `select` and `epoll`
//!   work on them without interposition. A socket end is writable (`EPOLLOUT`, which a fault
//!   queue always reports) and is readable exactly when data is buffered in it, so the
//!   library mirrors the file's `EPOLLIN` ([`uiommu_iommufd::file::EmulatedFile::poll`]) with
//!   *one readiness byte*: [`Readiness`] keeps the invariant "one byte is buffered in the
//!   program's end iff the file is readable". The byte is sent through the kept end when the
//!   file becomes readable (a fault queue tells us through its readiness observer), and
//!   drained through the program's own descriptor by the next `read` that finds the file not
//!   readable any more. The program's `read`/`write` are still served by the engine and never
//!   see the byte. When the peer of a stream socket is released, the kernel marks the kept
//!   end fully shut down, which `poll` reports as `POLLHUP`, as for a pipe; a byte left unread
//!   in the program's end only adds `POLLERR`.
//!
//! Limits of the readiness byte: when the queue empties other than by a `read` of the file
//! (an automatic response on detach), the program's end stays readable until its next `read`,
//! which returns 0 and drains the byte: one spurious wake-up, which the kernel's own
//! `poll`/`read` pair also allows for (a racing reader). A program that bypasses the
//! interposed calls (`recv`, `readv`, `shutdown` on the descriptor) can consume the byte or
//! fake a hang-up.
//!
//! [`REGISTRY`] owns every file this process serves, by [`FileId`], and so keeps a file alive
//! while only other processes hold its descriptors.
//!
//! # Locking
//! [`RELEASE`] serialises releases, so that of two closers racing on the last descriptors, the
//! one that does not drop the file waits until the other has finished dropping it. It is taken
//! before `REGISTRY`, which is a leaf lock held only to insert, look up or remove. Each
//! [`Readiness`] has its own mutex, taken with no other library lock held and before the
//! fault queue's own lock (it reads the queue's state under it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uiommu_iommufd::ctx::IommufdCtx;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::fault::Fault;
use uiommu_iommufd::file::{EmulatedFile, PollEvents};

use crate::fault::Task;
use crate::fdtable::PrivateFd;
use crate::sys::{self, SysResult};

/// A file's id, unique within the process that serves it.
pub type FileId = u64;

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
    /// Its id in the registry of the process serving it.
    pub id: FileId,
    /// How it was opened.
    pub mode: AccessMode,
    /// What it is.
    pub kind: FileKind,
    /// The file position, for `read` (the kernel's `f_pos`).
    pub position: AtomicU64,
    kept_end: PrivateFd,
    /// The readiness byte of a socket-backed file.
    readiness: Option<Arc<Readiness>>,
}

impl ShimFile {
    /// The library's end of the file's pair: hangs up when the program's end is closed
    /// everywhere.
    pub fn kept_end(&self) -> i32 {
        self.kept_end.get()
    }

    /// Bring the readiness byte in line with the file's state after a `read` through
    /// `program_end`, a descriptor of the program's end (draining needs one). Files without
    /// a readiness byte ignore it.
    pub fn sync_readiness(&self, program_end: Option<i32>) {
        if let (Some(readiness), FileKind::Emulated(emulated)) = (&self.readiness, &self.kind) {
            readiness.sync(|| readable(emulated), program_end);
        }
    }
}

impl Drop for ShimFile {
    fn drop(&mut self) {
        match &self.readiness {
            // Closes the kept end under the readiness lock, so that an observer running now
            // does not send to a number the kernel may have reused.
            Some(readiness) => readiness.close(),
            None => self.kept_end.close(),
        }
    }
}

/// Whether the program should see `file` readable (its `EPOLLIN`).
fn readable(file: &EmulatedFile) -> bool {
    file.poll().contains(PollEvents::IN)
}

/// The readiness byte of a socket-backed file (see the module documentation).
///
/// Locking: `state` is held for each whole check-and-update, including the file's state read
/// (which takes the fault queue's lock) and the byte's send or drain, so that concurrent
/// updates apply in some order and the last one leaves the invariant true.
#[derive(Debug)]
pub struct Readiness {
    kept_end: PrivateFd,
    state: Mutex<ReadinessState>,
}

#[derive(Debug, Default)]
struct ReadinessState {
    /// A readiness byte is buffered in the program's end.
    signalled: bool,
    /// The kept end is closed: nothing more to signal.
    closed: bool,
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
                readiness.sync(|| fault.queued() > 0, None);
            }));
        }
        self.sync(|| readable(file), None);
    }

    /// Send the byte if `readable()` now says so and none is buffered; drain it through
    /// `program_end` if `readable()` says no and one is buffered. Without `program_end`, a
    /// byte that is no longer wanted stays until a later call has one.
    fn sync(&self, readable: impl FnOnce() -> bool, program_end: Option<i32>) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let wanted = readable();
        if wanted && !state.signalled {
            // MSG_NOSIGNAL: a program end closed meanwhile gives EPIPE, not SIGPIPE.
            state.signalled = sys::send_message(self.kept_end.get(), &[1], None).is_ok();
        } else if !wanted && state.signalled {
            if let Some(program_end) = program_end {
                drain_one(program_end);
                state.signalled = false;
            }
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.kept_end.close();
    }
}

/// Read the readiness byte from `program_end` if one is there (checked first, so this never
/// blocks on a byte someone consumed behind the library's back).
fn drain_one(program_end: i32) {
    let mut poll = [libc::pollfd {
        fd: program_end,
        events: libc::POLLIN,
        revents: 0,
    }];
    if sys::poll(&mut poll, 0).is_ok() && poll[0].revents & libc::POLLIN != 0 {
        let mut byte = [0u8; 1];
        let _ = sys::read(program_end, &mut byte);
    }
}

/// Every file this process serves.
static REGISTRY: Mutex<Option<HashMap<FileId, Arc<ShimFile>>>> = Mutex::new(None);
/// Serialises releases (see the module documentation).
static RELEASE: Mutex<()> = Mutex::new(());

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, Option<HashMap<FileId, Arc<ShimFile>>>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new pipe for a file: the read end, kept by the library, and the write end (close-on-exec,
/// at whatever number the kernel chose; the caller places it).
pub fn pipe() -> SysResult<(PrivateFd, i32)> {
    let (read_end, write_end) = sys::pipe_cloexec()?;
    Ok((PrivateFd::adopt(read_end), write_end))
}

/// A new socket pair for a file an ioctl hands out: the end kept by the library, and the
/// program's end (close-on-exec, at whatever number the kernel chose; the caller places it).
///
/// `UnixStream::pair` is `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`, a libc function
/// the library does not interpose; both ends leave `std` at once as raw numbers, so no `std`
/// destructor ever closes them (which would re-enter the library's `close`).
pub fn socket_pair() -> SysResult<(PrivateFd, i32)> {
    use std::os::fd::IntoRawFd;
    let (kept, program) = std::os::unix::net::UnixStream::pair()
        .map_err(|err| err.raw_os_error().map_or(Errno::ENOMEM, Errno::from_raw))?;
    Ok((PrivateFd::adopt(kept.into_raw_fd()), program.into_raw_fd()))
}

/// Register a file whose kept end is `kept_end`: a pipe's read end, or for an
/// [`FileKind::Emulated`] file the library's end of a [`socket_pair`].
pub fn register(kind: FileKind, mode: AccessMode, kept_end: PrivateFd) -> Arc<ShimFile> {
    let readiness = match &kind {
        FileKind::Emulated(emulated) => {
            let readiness = Arc::new(Readiness {
                kept_end: kept_end.clone(),
                state: Mutex::new(ReadinessState::default()),
            });
            readiness.watch(emulated);
            Some(readiness)
        }
        FileKind::Iommufd(_) | FileKind::FailNth(_) => None,
    };
    let file = Arc::new(ShimFile {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        mode,
        kind,
        position: AtomicU64::new(0),
        kept_end,
        readiness,
    });
    registry()
        .get_or_insert_with(HashMap::new)
        .insert(file.id, file.clone());
    crate::home::files_changed();
    file
}

/// Create and register a file: returns the write end of its pipe (see [`pipe`]) and the file.
pub fn create(kind: FileKind, mode: AccessMode) -> SysResult<(i32, Arc<ShimFile>)> {
    let (read_end, write_end) = pipe()?;
    Ok((write_end, register(kind, mode, read_end)))
}

/// Move a fresh write end to the lowest free descriptor number, as `open` would have returned,
/// with close-on-exec as asked.
pub fn place_lowest(write_end: i32, cloexec: bool) -> SysResult<i32> {
    let command = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    let placed = sys::fcntl(write_end, command, 0);
    let _ = sys::close(write_end);
    placed
}

/// The registered file `id`.
pub fn get(id: FileId) -> Option<Arc<ShimFile>> {
    registry().as_ref().and_then(|r| r.get(&id)).cloned()
}

/// The id and kept end of every registered file, for the home server's poll loop.
pub fn kept_ends() -> Vec<(FileId, i32)> {
    registry()
        .iter()
        .flat_map(|r| r.values())
        .map(|f| (f.id, f.kept_end()))
        .collect()
}

/// Drop file `id` if no descriptor of it is open in any process any more; return only once
/// it is dropped (or known to be still held).
pub fn release_if_unheld(id: FileId) {
    let _serial = RELEASE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(file) = get(id) else { return };
    if !sys::pipe_hung_up(file.kept_end()) {
        return;
    }
    registry().as_mut().and_then(|r| r.remove(&id));
    crate::log::line(format_args!("release file {id}"));
    drop(file);
}

/// Drop every file whose descriptors are all closed, in every process; return once they are
/// dropped. One pass under the release lock, so a release another thread has started is
/// finished before this returns.
pub fn release_all_unheld() {
    let _serial = RELEASE.lock().unwrap_or_else(PoisonError::into_inner);
    let unheld: Vec<Arc<ShimFile>> = {
        let mut registry = registry();
        let Some(files) = registry.as_mut() else {
            return;
        };
        let ids: Vec<FileId> = files
            .values()
            .filter(|f| sys::pipe_hung_up(f.kept_end()))
            .map(|f| f.id)
            .collect();
        ids.iter().filter_map(|id| files.remove(id)).collect()
    };
    for file in unheld {
        crate::log::line(format_args!("release file {}", file.id));
        drop(file);
    }
}

/// The release lock, for the fork handlers.
pub(crate) fn lock_release() -> MutexGuard<'static, ()> {
    RELEASE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registry, locked, for the fork handlers.
pub(crate) fn lock_registry() -> MutexGuard<'static, Option<HashMap<FileId, Arc<ShimFile>>>> {
    registry()
}

/// In a fork child: forget (without dropping) the files the home process serves, keep the
/// others, and return the kept ends of the kept ones.
pub(crate) fn keep_local_only(
    registry: &mut Option<HashMap<FileId, Arc<ShimFile>>>,
    served_by_home: impl Fn(&ShimFile) -> bool,
) -> Vec<i32> {
    let Some(files) = registry.as_mut() else {
        return Vec::new();
    };
    let served: Vec<FileId> = files
        .values()
        .filter(|f| served_by_home(f))
        .map(|f| f.id)
        .collect();
    for id in served {
        if let Some(file) = files.remove(&id) {
            std::mem::forget(file);
        }
    }
    files.values().map(|f| f.kept_end()).collect()
}
