//! Files that ioctls hand out: the seam between iommufd and whoever owns the caller's file
//! descriptor table.
//!
//! Two ioctls return new file descriptors: `IOMMU_FAULT_QUEUE_ALLOC` (a fault queue, read for
//! `struct iommu_hwpt_pgfault` records, written with `struct iommu_hwpt_page_response`) and the
//! selftest's `IOMMU_TEST_OP_CREATE_ACCESS` (an access fd whose only operation is close). The
//! kernel does this in three steps, and so does uiommu:
//!
//! 1. reserve a number (`get_unused_fd_flags(O_CLOEXEC)`), which may fail;
//! 2. report the number in the ioctl's response and finalize the objects;
//! 3. install the file under the number (`fd_install()`), which cannot fail.
//!
//! Step 3 only happens once the ioctl has fully succeeded, so a failing ioctl (fail-nth sweeps)
//! never leaves a descriptor behind that user space does not know about.
//!
//! [`FileInstaller`] is the seam: the preload implements it on top of real kernel fds; the
//! in-process default, [`FdTable`], hands out numbers from a table. A caller whose descriptor
//! table is not the device's (a fork child whose ioctls another process serves) brings its own
//! ([`crate::ctx::Caller::files`]); ioctls take theirs from [`crate::ctx::Call::files`]. An [`EmulatedFile`] is what
//! the preload serves `read`/`write`/`poll`/`close` from. Closing is dropping: each file kind
//! releases its objects in its `Drop`, which runs when the last clone goes (the kernel's last
//! `fput()`), so a lookup in flight keeps the file alive exactly as `fget()` does.
//!
//! Files hold their context (the kernel's `iommufd_ctx_get()`), so a context with open fault or
//! access files lives until they are closed, like `/dev/iommu` after `close()` with such fds
//! still open.
//!
//! Locking: [`FdTable`] has one mutex, a leaf; files are installed and looked up under it and
//! dropped outside it.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::ctx::Iommufd;
use crate::errno::Errno;
use crate::eventq::VeventqFile;
use crate::failpoint::{should_fail, FailSite};
use crate::fault::FaultFile;
use crate::user_memory::{UserMemory, UserVa};

/// `poll()` readiness bits, with the Linux `EPOLL*` values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PollEvents(pub u32);

impl PollEvents {
    /// `EPOLLIN`: data to read.
    pub const IN: PollEvents = PollEvents(0x001);
    /// `EPOLLOUT`: writing will not block.
    pub const OUT: PollEvents = PollEvents(0x004);
    /// `EPOLLRDNORM`: normal data to read.
    pub const RDNORM: PollEvents = PollEvents(0x040);
    /// `EPOLLWRNORM`: normal data may be written.
    pub const WRNORM: PollEvents = PollEvents(0x100);
    /// What the VFS reports for a file without a poll operation (`DEFAULT_POLLMASK`).
    pub const DEFAULT: PollEvents = PollEvents(0x001 | 0x004 | 0x040 | 0x100);

    /// Both sets of bits.
    pub const fn union(self, other: PollEvents) -> PollEvents {
        PollEvents(self.0 | other.0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: PollEvents) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A driver-owned file that only supports close, such as the selftest's access fd
/// (`[iommufd_test_staccess]`). The driver releases what it holds in its `Drop`.
pub trait DriverFile: Send + Sync + fmt::Debug {
    /// The driver's own type, so the driver can find its file again by number (`fget()` plus
    /// an `f_op` check).
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// A file object iommufd handed out, as the preload serves it.
#[derive(Clone, Debug)]
pub enum EmulatedFile {
    /// A fault queue (`[iommufd-pgfault]`).
    Fault(Arc<FaultFile>),
    /// A driver file with no I/O (the selftest's access fd).
    Access(Arc<dyn DriverFile>),
    /// A vIOMMU event queue (`[iommufd-viommu-event]`), read-only.
    Veventq(Arc<VeventqFile>),
}

impl EmulatedFile {
    /// `read(fd, buf, count)` at file position `pos` into the caller's memory `user`.
    ///
    /// # Errors
    /// A fault queue answers as [`FaultFile::read`]; a driver file has no read operation:
    /// `EINVAL`.
    pub fn read(
        &self,
        user: &dyn UserMemory,
        buf: UserVa,
        count: usize,
        pos: u64,
    ) -> Result<usize, Errno> {
        match self {
            EmulatedFile::Fault(file) => file.read(user, buf, count, pos),
            EmulatedFile::Veventq(file) => file.queue().read(user, buf, count, pos),
            EmulatedFile::Access(_) => Err(Errno::EINVAL),
        }
    }

    /// `write(fd, buf, count)` at file position `pos` from the caller's memory `user`.
    ///
    /// # Errors
    /// A fault queue answers as [`FaultFile::write`]; a driver file has no write operation:
    /// `EINVAL`.
    pub fn write(
        &self,
        user: &dyn UserMemory,
        buf: UserVa,
        count: usize,
        pos: u64,
    ) -> Result<usize, Errno> {
        match self {
            EmulatedFile::Fault(file) => file.write(user, buf, count, pos),
            EmulatedFile::Access(_) | EmulatedFile::Veventq(_) => Err(Errno::EINVAL),
        }
    }

    /// Current `poll()` readiness.
    pub fn poll(&self) -> PollEvents {
        match self {
            EmulatedFile::Fault(file) => file.poll(),
            EmulatedFile::Veventq(file) => file.queue().poll(),
            EmulatedFile::Access(_) => PollEvents::DEFAULT,
        }
    }
}

/// Where new files get their numbers: the caller's file descriptor table.
///
/// Implementations must be `Send + Sync`: ioctls of every context call them concurrently.
pub trait FileInstaller: Send + Sync + fmt::Debug {
    /// Reserve the lowest free number (`get_unused_fd_flags(O_CLOEXEC)`).
    ///
    /// # Errors
    /// The table is full (`EMFILE` in Linux; any errno the implementation chooses).
    fn reserve(&self) -> Result<i32, Errno>;

    /// Give up a reservation that will not be installed (`put_unused_fd()`).
    fn unreserve(&self, fd: i32);

    /// Install `file` under a reserved number (`fd_install()`); cannot fail.
    fn install(&self, fd: i32, file: EmulatedFile);

    /// The file installed under `fd`, if any (`fget()`).
    fn get(&self, fd: i32) -> Option<EmulatedFile>;
}

/// Where [`Iommufd`] keeps its installer.
pub(crate) type InstallerSlot = OnceLock<Arc<dyn FileInstaller>>;

impl Iommufd {
    /// Use `installer` for every file ioctls hand out from now on (the preload installs real
    /// descriptors). Only possible before the first file is handed out.
    ///
    /// # Errors
    /// An installer is already in use: `installer` comes back.
    pub fn set_file_installer(
        &self,
        installer: Arc<dyn FileInstaller>,
    ) -> Result<(), Arc<dyn FileInstaller>> {
        self.files.set(installer)
    }

    /// The installer files get their numbers from: the one set with
    /// [`Iommufd::set_file_installer`], else an in-process [`FdTable`].
    pub fn files(&self) -> &Arc<dyn FileInstaller> {
        self.files.get_or_init(|| Arc::new(FdTable::new()))
    }
}

/// A reserved number: installed with [`FdReservation::install`], released if dropped.
#[derive(Debug)]
#[must_use = "dropping a reservation releases the number"]
pub struct FdReservation<'a> {
    installer: &'a dyn FileInstaller,
    fd: i32,
    installed: bool,
}

impl<'a> FdReservation<'a> {
    /// Reserve a number from `installer`, with the allocation fault point the kernel has there.
    ///
    /// # Errors
    /// `ENOMEM` when fault injection fails the reservation; the installer's error otherwise.
    pub fn new(installer: &'a dyn FileInstaller) -> Result<FdReservation<'a>, Errno> {
        if should_fail(FailSite::Alloc) {
            return Err(Errno::ENOMEM);
        }
        let fd = installer.reserve()?;
        Ok(FdReservation {
            installer,
            fd,
            installed: false,
        })
    }

    /// The reserved number, to report before installing.
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Install `file`: the last step of a successful ioctl.
    pub fn install(mut self, file: EmulatedFile) -> i32 {
        self.installed = true;
        self.installer.install(self.fd, file);
        self.fd
    }
}

impl Drop for FdReservation<'_> {
    fn drop(&mut self) {
        if !self.installed {
            self.installer.unreserve(self.fd);
        }
    }
}

/// The in-process [`FileInstaller`]: numbers from 3 up (0–2 belong to stdio in a process),
/// lowest free first, as Linux allocates descriptors. Used when no preload installs its own.
#[derive(Debug, Default)]
pub struct FdTable {
    /// `None`: reserved, not installed yet.
    slots: Mutex<BTreeMap<i32, Option<EmulatedFile>>>,
}

/// The first number [`FdTable`] hands out.
const FIRST_FD: i32 = 3;

impl FdTable {
    /// An empty table.
    pub fn new() -> FdTable {
        FdTable::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<i32, Option<EmulatedFile>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `close(fd)`: forget the file; its release runs when the last clone of it goes.
    ///
    /// # Errors
    /// `EBADF` for a number with no installed file.
    pub fn close(&self, fd: i32) -> Result<(), Errno> {
        let file = {
            let mut slots = self.lock();
            match slots.get(&fd) {
                Some(Some(_)) => slots.remove(&fd).flatten(),
                _ => return Err(Errno::EBADF),
            }
        };
        // Released outside the lock: a file's release may close other objects.
        drop(file);
        Ok(())
    }

    /// Numbers with an installed file, ascending.
    pub fn open_fds(&self) -> Vec<i32> {
        self.lock()
            .iter()
            .filter(|(_, file)| file.is_some())
            .map(|(&fd, _)| fd)
            .collect()
    }

    /// Close every file (what process exit does to its table).
    pub fn close_all(&self) {
        let files: Vec<EmulatedFile> = std::mem::take(&mut *self.lock())
            .into_values()
            .flatten()
            .collect();
        drop(files);
    }
}

impl FileInstaller for FdTable {
    fn reserve(&self) -> Result<i32, Errno> {
        let mut slots = self.lock();
        let mut fd = FIRST_FD;
        for &used in slots.keys() {
            if used != fd {
                break;
            }
            fd = fd.checked_add(1).ok_or(Errno::ENOMEM)?;
        }
        slots.insert(fd, None);
        Ok(fd)
    }

    fn unreserve(&self, fd: i32) {
        let mut slots = self.lock();
        if matches!(slots.get(&fd), Some(None)) {
            slots.remove(&fd);
        }
    }

    fn install(&self, fd: i32, file: EmulatedFile) {
        self.lock().insert(fd, Some(file));
    }

    fn get(&self, fd: i32) -> Option<EmulatedFile> {
        self.lock().get(&fd).cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing(Arc<std::sync::atomic::AtomicBool>);

    impl DriverFile for Nothing {
        fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
            self
        }
    }

    impl Drop for Nothing {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn numbers_are_lowest_free_from_three_and_reused_after_close() {
        let table = FdTable::new();
        let a = FdReservation::new(&table).unwrap();
        let b = FdReservation::new(&table).unwrap();
        assert_eq!((a.fd(), b.fd()), (3, 4));
        drop(a);
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = FdReservation::new(&table).unwrap();
        assert_eq!(c.fd(), 3, "an abandoned reservation frees its number");
        c.install(EmulatedFile::Access(Arc::new(Nothing(flag.clone()))));
        assert_eq!(table.open_fds(), vec![3]);
        assert_eq!(table.close(4), Err(Errno::EBADF), "reserved, not installed");
        drop(b);
        table.close(3).unwrap();
        assert!(
            flag.load(std::sync::atomic::Ordering::SeqCst),
            "closing drops"
        );
        assert_eq!(table.close(3), Err(Errno::EBADF));
    }

    #[test]
    fn a_lookup_keeps_the_file_alive_past_close() {
        let table = FdTable::new();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fd = FdReservation::new(&table)
            .unwrap()
            .install(EmulatedFile::Access(Arc::new(Nothing(flag.clone()))));
        let held = table.get(fd).unwrap();
        table.close(fd).unwrap();
        assert!(!flag.load(std::sync::atomic::Ordering::SeqCst));
        assert!(table.get(fd).is_none());
        let user = crate::user_memory::ModelMemory::new();
        assert_eq!(held.read(&user, UserVa(0), 8, 0), Err(Errno::EINVAL));
        assert_eq!(held.poll(), PollEvents::DEFAULT);
        drop(held);
        assert!(flag.load(std::sync::atomic::Ordering::SeqCst));
    }
}
