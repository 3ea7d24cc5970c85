//! Which descriptor numbers are emulated files, and which belong to the library itself.
//!
//! # Emulated descriptors
//! [`TABLE`] maps a descriptor number of the program to the emulated file behind it: a
//! [`Target::Local`] file served in this process, or a [`Target::Remote`] file served by the
//! process that opened it (after a fork; see [`crate::home`]). Each entry also records the
//! identity (device, inode) of the pipe or socket the number referred to when the entry was
//! made. glibc closes descriptors internally without going through `close` (e.g. `closedir`),
//! so a number can be silently recycled; every lookup re-checks the identity with `fstat` and drops a stale
//! entry instead of misrouting a real file's call.
//!
//! # Private descriptors
//! The library's own descriptors (the inotify instance, readiness stashes, channels, the log)
//! live at high numbers (see [`PrivateFd::adopt`]) so that they do not change which numbers
//! the program's `open` calls get. They are hidden from the program: `close` of one reports `EBADF` without closing
//! it, `close_range` skips them, and a `dup2` onto one first moves it elsewhere.
//!
//! # Locking
//! `TABLE` is a read-mostly `RwLock`; `PRIVATE` a `Mutex`. Neither is held across a call out
//! of this module, except the raw system calls of [`PrivateFd`] under `PRIVATE`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockWriteGuard, Weak};

use crate::files::{AccessMode, ShimFile};
use crate::sys::{self, SysResult};

/// Set once the library has created any descriptor; until then every call passes through
/// without taking a lock.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether the library has created any descriptor in this process (or its parent).
#[inline]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

fn activate() {
    if !ACTIVE.swap(true, Ordering::AcqRel) {
        OWNER.store(sys::getpid(), Ordering::Release);
        crate::home::register_fork_handlers();
    }
}

/// The process the library's state belongs to: where it was activated, or the fork child
/// whose fork handler took the state over.
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Whether the caller runs in a process that does not own the library's state although it
/// shares its memory: a `vfork` child (or a raw `clone`), where no fork handler ran. Its
/// descriptor table is its own, so changes to it must go straight to the kernel and leave
/// the shared state (the owner's table) alone.
pub fn foreign_process() -> bool {
    active() && sys::getpid() != OWNER.load(Ordering::Acquire)
}

/// In a fork child's handler: the state is the child's now.
pub(crate) fn take_ownership() {
    OWNER.store(sys::getpid(), Ordering::Release);
}

/// What an emulated descriptor refers to.
#[derive(Clone, Debug)]
pub enum Target {
    /// A file served by this process.
    Local(Arc<ShimFile>),
    /// A file served by the home process (this process is a fork child of it).
    Remote(RemoteFile),
}

/// A file served by the home process. The home knows which from the descriptor itself,
/// which every request on the file passes along.
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile {
    /// Whether it was opened for reading and/or writing.
    pub mode: AccessMode,
    /// Whether it has `read`/`write` methods (a file an ioctl handed out) or not (iommufd).
    pub has_io: bool,
}

impl Target {
    /// The access mode the file was opened with.
    pub fn mode(&self) -> AccessMode {
        match self {
            Target::Local(file) => file.mode,
            Target::Remote(remote) => remote.mode,
        }
    }
}

/// One emulated descriptor.
#[derive(Debug)]
pub(crate) struct Entry {
    target: Target,
    identity: (u64, u64),
}

/// Emulated descriptor number → what it refers to.
static TABLE: RwLock<Option<HashMap<i32, Entry>>> = RwLock::new(None);

fn table_write() -> RwLockWriteGuard<'static, Option<HashMap<i32, Entry>>> {
    TABLE.write().unwrap_or_else(PoisonError::into_inner)
}

/// The file behind `fd`, if it is emulated. A stale entry (the number now names another open
/// file) is removed and returned as the second element so the caller can release it.
///
/// The number's identity is checked under the table's read lock: [`dup_onto`] changes the
/// number and its entry together under the write lock, so an interposed `dup2` onto `fd` is
/// never mistaken for a recycled number.
pub fn lookup(fd: i32) -> (Option<Target>, Option<Target>) {
    if !active() || fd < 0 {
        return (None, None);
    }
    let expected = {
        let table = TABLE.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = table.as_ref().and_then(|t| t.get(&fd)) else {
            return (None, None);
        };
        if sys::file_identity(fd).ok() == Some(entry.identity) {
            return (Some(entry.target.clone()), None);
        }
        entry.identity
    };
    // Recycled behind our back: forget it, unless someone re-registered it meanwhile.
    let mut table = table_write();
    let stale = match table.as_mut() {
        Some(t)
            if t.get(&fd).is_some_and(|e| e.identity == expected)
                && sys::file_identity(fd).ok() != Some(expected) =>
        {
            t.remove(&fd)
        }
        _ => None,
    };
    (None, stale.map(|e| e.target))
}

/// `dup3(old, new, flags)` and the table update as one step for [`lookup`]: the real call and
/// the new entry for `new` (`source`, or none when `old` is not emulated) happen under the
/// table's write lock. Returns `new` and what it referred to before.
pub fn dup_onto(
    old: i32,
    new: i32,
    flags: i32,
    source: Option<Target>,
) -> SysResult<(i32, Option<Target>)> {
    activate();
    let mut table = table_write();
    let duplicated = sys::dup3(old, new, flags)?;
    let entries = table.get_or_insert_with(HashMap::new);
    let previous = match source {
        Some(target) => match sys::file_identity(duplicated) {
            Ok(identity) => entries.insert(duplicated, Entry { target, identity }),
            Err(_) => entries.remove(&duplicated),
        },
        None => entries.remove(&duplicated),
    };
    Ok((duplicated, previous.map(|e| e.target)))
}

/// Run `f` on a descriptor of this process that refers to the served file `identity` (checked
/// with `fstat`), with the table locked so that no interposed `close` or `dup2` changes the
/// number meanwhile. `false` when there is none.
pub fn with_descriptor_of(identity: (u64, u64), f: impl FnOnce(i32)) -> bool {
    let table = TABLE.read().unwrap_or_else(PoisonError::into_inner);
    let found = table.iter().flat_map(|t| t.iter()).find(|(&fd, entry)| {
        entry.identity == identity
            && matches!(entry.target, Target::Local(_))
            && sys::file_identity(fd).ok() == Some(identity)
    });
    match found {
        Some((&fd, _)) => {
            f(fd);
            true
        }
        None => false,
    }
}

/// Whether a descriptor of this process other than `except` is recorded for `identity`.
pub fn holds_other(identity: (u64, u64), except: i32) -> bool {
    let table = TABLE.read().unwrap_or_else(PoisonError::into_inner);
    table
        .iter()
        .flat_map(|t| t.iter())
        .any(|(&fd, entry)| fd != except && entry.identity == identity)
}

/// Record that `fd` now refers to `target`; returns the entry it replaces (a stale one).
pub fn insert(fd: i32, target: Target) -> SysResult<Option<Target>> {
    let identity = sys::file_identity(fd)?;
    activate();
    let mut table = table_write();
    let previous = table
        .get_or_insert_with(HashMap::new)
        .insert(fd, Entry { target, identity });
    Ok(previous.map(|e| e.target))
}

/// Forget `fd`; returns what it referred to.
pub fn remove(fd: i32) -> Option<Target> {
    if !active() {
        return None;
    }
    table_write()
        .as_mut()
        .and_then(|t| t.remove(&fd))
        .map(|e| e.target)
}

/// Emulated descriptors in `[first, last]`, removed from the table.
pub fn remove_range(first: u32, last: u32) -> Vec<(i32, Target)> {
    if !active() {
        return Vec::new();
    }
    let mut table = table_write();
    let Some(t) = table.as_mut() else {
        return Vec::new();
    };
    let numbers: Vec<i32> = t
        .keys()
        .copied()
        .filter(|&fd| fd >= 0 && (first..=last).contains(&(fd as u32)))
        .collect();
    numbers
        .into_iter()
        .filter_map(|fd| t.remove(&fd).map(|e| (fd, e.target)))
        .collect()
}

/// The table, locked for writing, for the fork handlers ([`crate::home`]).
pub(crate) fn lock_table() -> RwLockWriteGuard<'static, Option<HashMap<i32, Entry>>> {
    table_write()
}

/// In a fork child: every local file whose kind is served by the home process becomes a
/// remote reference to it. The local references are leaked on purpose: the child must never
/// run the parent's release of a file the parent still serves.
pub(crate) fn make_remote(
    table: &mut Option<HashMap<i32, Entry>>,
    served_by_home: impl Fn(&ShimFile) -> bool,
) {
    for entry in table.iter_mut().flat_map(|t| t.values_mut()) {
        if let Target::Local(file) = &entry.target {
            if served_by_home(file) {
                let remote = RemoteFile {
                    mode: file.mode,
                    has_io: matches!(file.kind, crate::files::FileKind::Emulated(_)),
                };
                let local = std::mem::replace(&mut entry.target, Target::Remote(remote));
                std::mem::forget(local);
            }
        }
    }
}

/// A descriptor of the library's own, at a high number, hidden from the program. The number
/// can change (when the program `dup2`s onto it), so read it with [`PrivateFd::get`] at each
/// use. Dropping the handle does not close the descriptor; [`PrivateFd::close`] does. Clones
/// share the slot, so every holder sees a move.
#[derive(Clone, Debug)]
pub struct PrivateFd(Arc<AtomicI32>);

/// Private descriptor number → its handle's slot.
static PRIVATE: Mutex<BTreeMap<i32, Weak<AtomicI32>>> = Mutex::new(BTreeMap::new());

fn private_lock() -> MutexGuard<'static, BTreeMap<i32, Weak<AtomicI32>>> {
    PRIVATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lowest number private descriptors are moved to: three quarters of the descriptor
/// limit, at most 4096 (a huge limit would make the kernel grow the descriptor table).
fn private_base() -> i32 {
    let limit = sys::nofile_limit().min(1 << 20) as i32;
    (limit / 4 * 3).clamp(16, 4096)
}

impl PrivateFd {
    /// Take ownership of `fd` (close-on-exec), moving it to the private range when possible.
    pub fn adopt(fd: i32) -> PrivateFd {
        activate();
        let mut private = private_lock();
        let number = match sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, private_base().into()) {
            Ok(high) => {
                let _ = sys::close(fd);
                high
            }
            Err(_) => fd,
        };
        let slot = Arc::new(AtomicI32::new(number));
        private.insert(number, Arc::downgrade(&slot));
        PrivateFd(slot)
    }

    /// The descriptor number now.
    pub fn get(&self) -> i32 {
        self.0.load(Ordering::Acquire)
    }

    /// Close the descriptor.
    pub fn close(&self) {
        let mut private = private_lock();
        let number = self.get();
        private.remove(&number);
        let _ = sys::close(number);
    }
}

/// Whether `fd` is one of the library's own descriptors.
pub fn is_private(fd: i32) -> bool {
    active() && private_lock().contains_key(&fd)
}

/// Make room for the program at `fd`: if it is private, move it elsewhere first.
pub fn evict(fd: i32) -> SysResult<()> {
    if !active() {
        return Ok(());
    }
    let mut private = private_lock();
    let Some(slot) = private.get(&fd).and_then(Weak::upgrade) else {
        private.remove(&fd);
        return Ok(());
    };
    let moved = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, private_base().into())?;
    slot.store(moved, Ordering::Release);
    private.remove(&fd);
    private.insert(moved, Arc::downgrade(&slot));
    let _ = sys::close(fd);
    Ok(())
}

/// The private descriptors in `[first, last]`, ascending.
pub fn private_in_range(first: u32, last: u32) -> Vec<i32> {
    if !active() {
        return Vec::new();
    }
    private_lock()
        .keys()
        .copied()
        .filter(|&fd| fd >= 0 && (first..=last).contains(&(fd as u32)))
        .collect()
}

/// The private set, locked, for the fork handlers.
pub(crate) fn lock_private() -> MutexGuard<'static, BTreeMap<i32, Weak<AtomicI32>>> {
    private_lock()
}

/// In a fork child: close the private descriptors that are not in `keep` (the parent's
/// inotify instance, stashes and channels), so the child's descriptor table holds only what
/// it uses.
pub(crate) fn close_private_except(
    private: &mut BTreeMap<i32, Weak<AtomicI32>>,
    keep: &std::collections::HashSet<i32>,
) {
    let doomed: Vec<i32> = private
        .keys()
        .copied()
        .filter(|fd| !keep.contains(fd))
        .collect();
    for fd in doomed {
        private.remove(&fd);
        let _ = sys::close(fd);
    }
}
