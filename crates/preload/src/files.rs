//! Emulated files and their lifetime: the kernel's `struct file`, released on last close.
//!
//! # Model
//! An emulated file is a [`ShimFile`] plus a pipe. The program's descriptors are the pipe's
//! write end; the library keeps the read end as a [`PrivateFd`]. The kernel then does the
//! reference counting of the file for us: `dup`, `fork`, close-on-exec and process exit all
//! act on the write end, and the read end reports `POLLHUP` exactly when no write end is open
//! in any process. Whenever a descriptor of a file is closed (here, or in a fork child through
//! [`crate::home`]), [`release_if_unheld`] checks for that hang-up and, if it is there, drops
//! the file before `close` returns, so an iommufd context's objects and pins are gone by then,
//! as with the kernel's release on last `fput`.
//!
//! [`REGISTRY`] owns every file this process serves, by [`FileId`], and so keeps a file alive
//! while only other processes hold its descriptors.
//!
//! # Locking
//! [`RELEASE`] serialises releases, so that of two closers racing on the last descriptors, the
//! one that does not drop the file waits until the other has finished dropping it. It is taken
//! before `REGISTRY`, which is a leaf lock held only to insert, look up or remove.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uiommu_iommufd::ctx::IommufdCtx;
use uiommu_iommufd::file::EmulatedFile;

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
    read_end: PrivateFd,
}

impl ShimFile {
    /// The read end of the file's pipe.
    pub fn read_end(&self) -> i32 {
        self.read_end.get()
    }
}

impl Drop for ShimFile {
    fn drop(&mut self) {
        self.read_end.close();
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

/// Register a file whose pipe's read end is `read_end`.
pub fn register(kind: FileKind, mode: AccessMode, read_end: PrivateFd) -> Arc<ShimFile> {
    let file = Arc::new(ShimFile {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        mode,
        kind,
        position: AtomicU64::new(0),
        read_end,
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

/// The id and pipe read end of every registered file, for the home server's poll loop.
pub fn read_ends() -> Vec<(FileId, i32)> {
    registry()
        .iter()
        .flat_map(|r| r.values())
        .map(|f| (f.id, f.read_end()))
        .collect()
}

/// Drop file `id` if no descriptor of it is open in any process any more; return only once
/// it is dropped (or known to be still held).
pub fn release_if_unheld(id: FileId) {
    let _serial = RELEASE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(file) = get(id) else { return };
    if !sys::pipe_hung_up(file.read_end()) {
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
            .filter(|f| sys::pipe_hung_up(f.read_end()))
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
/// others, and return the read ends of the kept ones.
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
    files.values().map(|f| f.read_end()).collect()
}
