//! The emulated platform, and who serves an iommufd file after `fork` (the "home").
//!
//! # Platform
//! The first `/dev/iommu` open in a process builds its platform: an [`IommuCore`] with the mock
//! driver registered under its own fwnode, and an [`Iommufd`] over it. The process becomes the
//! *home* of every iommufd file it opens, and the calls of its own threads run the engine
//! directly, with a [`Caller`] bound to its own memory.
//!
//! # Fork
//! In the kernel a fork child's descriptor refers to the *same* file as its parent's: objects
//! created through one are seen through the other, and pages mapped from the child's memory
//! stay tied to the child's address space. A copy of the emulator in the child's memory would
//! give neither, so the child never uses its copy. Instead the home serves its descendants
//! over *channels*, and authority is possession, as in the kernel:
//!
//! * No names. A channel is a `SOCK_SEQPACKET` socket pair made by the `pthread_atfork`
//!   prepare handler of a home or attached process. After a home's fork, the parent hands its
//!   end to a new server thread and the child keeps the other end as its channel to the home.
//!   An attached process that forks passes the home's end of the new pair to the home over its
//!   own channel ([`Op::Adopt`], `SCM_RIGHTS`), so the home serves the grandchild on it. Nothing
//!   is bound or listening: only a process that inherited an end (or was handed one by a
//!   process that had one) can talk to the home.
//! * Credentials. The home's ends have `SO_PASSCRED`: each message arrives with the sender's
//!   pid and uid as the kernel saw them at `sendmsg`. A sender whose uid is not the home's
//!   (a child that changed uid, even under a root home) gets no answer and loses the channel.
//!   The verified pid is the process whose memory the home reads and writes for the request
//!   ([`Caller::for_pid`]).
//! * Possession. Every request that acts on a file passes that file's descriptor; the home
//!   recognises the file by the descriptor's pipe inode ([`files::by_descriptor`]) and never
//!   by a name the caller chooses. A request without a descriptor the home serves gets `EBADF`
//!   and has no effect.
//! * No stalls. Each channel has its own server thread, so a slow or silent process delays
//!   only its own calls; a wait for a child's answer to a [`Callback`] gives up after
//!   [`CALLBACK_TIMEOUT_SECONDS`], fails that request and closes that channel.
//!
//! In the child, the fork handler turns every inherited iommufd descriptor into a
//! [`Target::Remote`] reference and marks the process *attached*. Its copies of the home's
//! state are leaked, never dropped, so the child cannot run the parent's destructors (or take
//! locks another parent thread held at fork time). An attached process forwards each call on
//! such a descriptor, and every later `/dev/iommu` open, to the home: `{op, args, fail-nth
//! countdown}` plus the descriptor.
//!
//! Files opened for an attached process are created by the home, which passes the one
//! descriptor over the channel and keeps none: last-close detection ([`crate::files`]) spans
//! all processes. A child's `close` asks the home to process close events before returning
//! ([`Op::Sync`]), and the home's watcher thread processes them as they come, so a child that
//! exits without closing releases what only it held. Files an ioctl of an attached process
//! hands out (fault queues, access fds) get numbers in *its* descriptor table: the server
//! runs the ioctl with a [`ChildFiles`] installer in the [`Caller`], which asks the child,
//! over the channel it waits on, to receive the descriptor at its lowest free number and
//! later to record or close it, or to pass it back to name the file ([`Callback`]).
//!
//! Limits: the home must outlive its children's use of its files (if it exits or `exec`s
//! first, their calls fail with `EIO`); descriptors passed to unrelated processes or kept
//! across `exec` lose their emulation; a child made by a raw `clone`/`fork` system call (no
//! `pthread_atfork`) shares its parent's channel, and a `vfork` child's descriptor table
//! changes go straight to the kernel ([`fdtable::foreign_process`]).
//!
//! # Locking
//! `ROLE` and `CONNECTION` are mutexes held briefly; `CONNECTION` is held for a whole request
//! and reply, which serialises the requests of one attached process. See the crate's lock order.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLockWriteGuard};

use uiommu_core::IommuCore;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::failpoint;
use uiommu_iommufd::file::{EmulatedFile, FileInstaller};
use uiommu_iommufd::user_memory::UserVa;
use uiommu_mock::{MockIommu, MockSelftest};

use crate::fault;
use crate::fdtable::{self, PrivateFd, RemoteFile, Target};
use crate::files::{self, AccessMode, FileKind, ShimFile};
use crate::log;
use crate::sys::{self, SysResult};

/// The emulated machine of a home process: the mock IOMMU answers `IOMMU_TEST_CMD`, and files
/// handed out by ioctls get real descriptors from [`Installer`].
#[derive(Debug)]
struct Platform {
    iommufd: Arc<Iommufd>,
    /// The home process itself, as the caller of its own threads' ioctls.
    caller: Caller,
    /// Kept so the mock instance lives as long as the platform.
    _mock: Arc<MockIommu>,
}

fn platform() -> SysResult<&'static Platform> {
    static PLATFORM: OnceLock<Result<Platform, Errno>> = OnceLock::new();
    PLATFORM
        .get_or_init(|| {
            let core = Arc::new(IommuCore::default());
            let mock = MockIommu::new();
            mock.register(&core).map_err(|err| {
                log::line(format_args!("mock registration failed: {err}"));
                Errno::ENODEV
            })?;
            let caller = Caller::current().map_err(|err| {
                log::line(format_args!("cannot describe this process: {err}"));
                Errno::ENODEV
            })?;
            let iommufd = Iommufd::new(core);
            MockSelftest::install(&iommufd, mock.clone())?;
            iommufd
                .set_file_installer(Arc::new(Installer::default()))
                .map_err(|_| Errno::EBUSY)?;
            Ok(Platform {
                iommufd,
                caller,
                _mock: mock,
            })
        })
        .as_ref()
        .map_err(|&err| err)
}

/// What this process is to iommufd files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Has neither opened `/dev/iommu` nor inherited a home.
    Fresh,
    /// Serves the files it opened.
    Home,
    /// A fork descendant of a home, which serves its files over [`CONNECTION`].
    Attached,
}

static ROLE: Mutex<Role> = Mutex::new(Role::Fresh);

fn role() -> MutexGuard<'static, Role> {
    ROLE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_attached() -> bool {
    *role() == Role::Attached
}

/// The file kinds a home serves to its descendants (the rest stay per process).
fn served_by_home(file: &ShimFile) -> bool {
    matches!(file.kind, FileKind::Iommufd(_) | FileKind::Emulated(_))
}

/// Which node an iommufd context is opened through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// `/dev/iommu`.
    Iommu,
    /// `/dev/vfio/vfio` served by iommufd (VFIO container compatibility): pins are charged
    /// per address space, as VFIO type1 charges them.
    VfioContainer,
}

fn open_context(platform: &Platform, node: Node) -> Arc<IommufdCtx> {
    match node {
        Node::Iommu => platform.iommufd.open(),
        Node::VfioContainer => platform.iommufd.open_vfio(),
    }
}

/// A new served iommufd file in this (the home) process: its descriptor, at the lowest free
/// number, and the file.
fn create_iommufd(node: Node, mode: AccessMode, cloexec: bool) -> SysResult<(i32, Arc<ShimFile>)> {
    let platform = platform()?;
    // One byte: /dev/iommu polls always readable and writable.
    let fd = files::new_descriptor(cloexec, true)?;
    let prepared = match files::Prepared::watch(fd, false) {
        Ok(prepared) => prepared,
        Err(err) => {
            let _ = sys::close(fd);
            return Err(err);
        }
    };
    let file = files::register(
        FileKind::Iommufd(open_context(platform, node)),
        mode,
        prepared,
    );
    Ok((fd, file))
}

/// `open(node, flags)`: a new iommufd context, as a descriptor at the lowest free number.
pub fn open_iommufd(node: Node, flags: i32) -> SysResult<i32> {
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let mode = AccessMode::from_flags(flags);
    if is_attached() {
        let vfio = u64::from(node == Node::VfioContainer);
        let (reply, passed) = call(Request::new(Op::Open, flags as u64, vfio, 0), None)?;
        let fd = passed.ok_or(Errno::EIO)?;
        reply_value(reply)?;
        if !cloexec {
            sys::fcntl(fd, libc::F_SETFD, 0)?;
        }
        let remote = RemoteFile {
            mode,
            has_io: false,
        };
        return install(fd, Target::Remote(remote));
    }
    platform()?;
    {
        let mut role = role();
        if *role == Role::Fresh {
            *role = Role::Home;
        }
    }
    let (fd, file) = create_iommufd(node, mode, cloexec)?;
    log::line(format_args!("open {node:?}: file {}", file.id));
    install(fd, Target::Local(file))
}

/// Record `fd` as `target` and return it; on failure close it and release the file.
pub fn install(fd: i32, target: Target) -> SysResult<i32> {
    match fdtable::insert(fd, target.clone()) {
        Ok(replaced) => {
            release(replaced);
            Ok(fd)
        }
        Err(err) => {
            let _ = sys::close(fd);
            release(Some(target));
            Err(err)
        }
    }
}

/// The program is about to close `fd`, whose table entry (`target`) is already gone: if it was
/// the home's last descriptor of a file with a readiness byte, keep a way into the pipe.
pub fn before_close(target: Option<&Target>, fd: i32) {
    if let Some(Target::Local(file)) = target {
        if file.has_readiness() && !fdtable::holds_other(file.identity, fd) {
            file.keep_readiness(fd);
        }
    }
}

/// A descriptor of `target` was closed: release the file if that was its last one anywhere.
pub fn release(target: Option<Target>) {
    match target {
        None => {}
        Some(Target::Local(file)) => {
            drop(file);
            files::release_closed();
        }
        Some(Target::Remote(_)) if is_attached() => {
            let _ = call(Request::new(Op::Sync, 0, 0, 0), None);
        }
        Some(Target::Remote(_)) => {}
    }
}

/// `ioctl(fd, cmd, arg)` on an iommufd file `target`, which `fd` refers to.
pub fn ioctl(target: &Target, fd: i32, cmd: u32, arg: u64) -> SysResult<i64> {
    match target {
        Target::Local(file) => match &file.kind {
            FileKind::Iommufd(ctx) => {
                fault::register_current_thread();
                reap_orphans();
                ctx.ioctl(&platform()?.caller, cmd, arg).map(i64::from)
            }
            // Neither fault queues nor access files nor /proc files have an ioctl method.
            FileKind::Emulated(_) | FileKind::FailNth(_) => Err(Errno::ENOTTY),
        },
        Target::Remote(remote) => {
            if !is_attached() {
                return Err(Errno::EBADF);
            }
            if remote.has_io {
                return Err(Errno::ENOTTY);
            }
            let request = Request::new(Op::Ioctl, cmd.into(), arg, 0);
            let (reply, passed) = call(request, Some(fd))?;
            if let Some(unexpected) = passed {
                let _ = sys::close(unexpected);
            }
            reply_value(reply)
        }
    }
}

/// Which way a `read`/`write` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `read`: from the file into the program's buffer.
    Read,
    /// `write`: from the program's buffer into the file.
    Write,
}

/// `read`/`write` (at `offset`, or the file position when `None`) on `fd`, a file an ioctl
/// handed out, with the program's buffer at `buf`.
pub fn file_io(
    target: &Target,
    fd: i32,
    direction: Direction,
    buf: usize,
    count: usize,
    offset: Option<u64>,
) -> SysResult<i64> {
    match target {
        Target::Local(file) => {
            let FileKind::Emulated(emulated) = &file.kind else {
                return Err(Errno::EINVAL);
            };
            fault::register_current_thread();
            let io = FileIo {
                direction,
                buf,
                count,
                offset,
            };
            emulated_io(file, emulated, &platform()?.caller, io)
        }
        Target::Remote(remote) => {
            if !remote.has_io {
                return Err(Errno::EINVAL);
            }
            if !is_attached() {
                return Err(Errno::EBADF);
            }
            let op = match direction {
                Direction::Read => Op::Read,
                Direction::Write => Op::Write,
            };
            let offset = offset.unwrap_or(u64::MAX);
            let request = Request::new(op, buf as u64, count as u64, offset);
            let (reply, passed) = call(request, Some(fd))?;
            if let Some(unexpected) = passed {
                let _ = sys::close(unexpected);
            }
            reply_value(reply)
        }
    }
}

/// One `read`/`write` call: which way, the program's buffer, and the offset (`None`: the file
/// position).
#[derive(Clone, Copy, Debug)]
struct FileIo {
    direction: Direction,
    buf: usize,
    count: usize,
    offset: Option<u64>,
}

/// Serve `io` on `file` from the engine; a read then brings the readiness byte in line.
fn emulated_io(
    file: &ShimFile,
    emulated: &EmulatedFile,
    caller: &Caller,
    io: FileIo,
) -> SysResult<i64> {
    use std::sync::atomic::Ordering;
    let position = io
        .offset
        .unwrap_or_else(|| file.position.load(Ordering::Acquire));
    let user = caller.memory.as_ref();
    let buf = UserVa(io.buf as u64);
    let done = match io.direction {
        Direction::Read => {
            let done = emulated.read(user, buf, io.count, position);
            file.sync_readiness();
            done?
        }
        Direction::Write => emulated.write(user, buf, io.count, position)?,
    };
    i64::try_from(done).map_err(|_| Errno::EOVERFLOW)
}

/// A file an ioctl is handing out, between `reserve` and `install`: its close watch and
/// readiness stash, made in the home (see [`files::Prepared`]).
type PendingFiles = Mutex<HashMap<i32, files::Prepared>>;

fn pending(files: &PendingFiles) -> MutexGuard<'_, HashMap<i32, files::Prepared>> {
    files.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The [`FileInstaller`] of a home process: numbers are real descriptors of this process, each
/// the one descriptor of a new file (see [`crate::files`]), reserved at the lowest free number
/// with close-on-exec as `get_unused_fd_flags(O_CLOEXEC)` does.
///
/// Only the home's own threads use it: a fork child's ioctls get a [`ChildFiles`] installer
/// for the child's descriptor table with their [`Caller`].
///
/// Locking: `pending` is a leaf mutex.
#[derive(Debug, Default)]
struct Installer {
    /// Reserved numbers → their files' watches and stashes.
    pending: PendingFiles,
}

impl FileInstaller for Installer {
    fn reserve(&self) -> Result<i32, Errno> {
        let fd = files::new_descriptor(true, false)?;
        // No stash: the home holds the program's descriptor (see `files::Readiness`).
        match files::Prepared::watch(fd, false) {
            Ok(prepared) => {
                pending(&self.pending).insert(fd, prepared);
                Ok(fd)
            }
            Err(err) => {
                let _ = sys::close(fd);
                Err(err)
            }
        }
    }

    fn unreserve(&self, fd: i32) {
        let prepared = pending(&self.pending).remove(&fd);
        if let Some(prepared) = prepared {
            // The watch goes first: this close is not a release.
            drop(prepared);
            let _ = sys::close(fd);
        }
    }

    fn install(&self, fd: i32, file: EmulatedFile) {
        let Some(prepared) = pending(&self.pending).remove(&fd) else {
            return;
        };
        let mode = AccessMode::from_flags(libc::O_RDWR);
        let shim = files::register(FileKind::Emulated(file), mode, prepared);
        log::line(format_args!("install file {} at fd {fd}", shim.id));
        if install(fd, Target::Local(shim.clone())).is_ok() {
            // The readiness byte can reach the pipe now that the table knows the number.
            shim.sync_readiness();
        }
    }

    fn get(&self, fd: i32) -> Option<EmulatedFile> {
        let (found, stale) = fdtable::lookup(fd);
        release(stale);
        match found? {
            Target::Local(file) => match &file.kind {
                FileKind::Emulated(emulated) => Some(emulated.clone()),
                FileKind::Iommufd(_) | FileKind::FailNth(_) => None,
            },
            Target::Remote(_) => None,
        }
    }
}

/// How long the home waits for a child's answer to a [`Callback`] (or for room to send to it)
/// before it fails the child's request and closes its channel.
pub const CALLBACK_TIMEOUT_SECONDS: i64 = 3;

/// The [`FileInstaller`] for one ioctl of a fork child, run by the home's server thread for
/// that child: numbers are descriptors of the *child*, which the home reaches over the child's
/// channel while the child waits for the ioctl's reply (see [`Callback`]).
///
/// * `reserve`: the home makes the file's descriptor (with its watch and stash), passes it to
///   the child (`SCM_RIGHTS`) and closes its own copy; the child receives it at its lowest free
///   number, close-on-exec (as `get_unused_fd_flags(O_CLOEXEC)` allocates), and answers with
///   the number. A child whose table is full receives no descriptor and answers `EMFILE`.
/// * `install`: the home registers the file, as for its own ioctls, and the child records its
///   number as a reference to it ([`Target::Remote`]).
/// * `unreserve`: the child closes the number and the home drops the watch and stash, so a
///   failed ioctl leaves no descriptor in either process.
/// * `get`: the child passes back the descriptor at that number; the home looks it up.
///
/// Locking: `pending` is a leaf mutex; the channel is this server thread's alone.
#[derive(Debug)]
struct ChildFiles {
    /// The home's end of the child's channel.
    channel: i32,
    /// The home's uid: the only one it answers.
    uid: u32,
    /// Reserved numbers of the child → their files' watches and stashes.
    pending: PendingFiles,
    /// The child did not answer in time, or answered wrongly: the channel must be closed.
    broken: std::sync::atomic::AtomicBool,
}

impl ChildFiles {
    fn new(channel: i32, uid: u32) -> ChildFiles {
        ChildFiles {
            channel,
            uid,
            pending: Mutex::default(),
            broken: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Ask the child to carry out `callback` (with `pass` passed along) and return its answer
    /// and the descriptor it passed. A child that is gone, silent past the timeout, of another
    /// uid, or answering garbage: `EIO`, and the channel is marked broken.
    fn ask(&self, callback: Callback, pass: Option<i32>) -> SysResult<(i64, Option<i32>)> {
        if self.broken() {
            return Err(Errno::EIO);
        }
        let exchanged = (|| {
            sys::send_message(self.channel, &callback.encode(), pass).ok()?;
            let mut buf = [0u8; REPLY_LEN + 1];
            let (len, passed, credentials) =
                sys::receive_message_from(self.channel, &mut buf).ok()?;
            let trusted = credentials.is_some_and(|c| c.uid == self.uid);
            match Reply::decode(&buf[..len]).filter(|_| trusted) {
                Some(reply) => Some((reply, passed)),
                None => {
                    if let Some(fd) = passed {
                        let _ = sys::close(fd);
                    }
                    None
                }
            }
        })();
        let Some((reply, passed)) = exchanged else {
            log::line(format_args!(
                "child gave no answer to {callback:?}: channel closed"
            ));
            self.broken
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(Errno::EIO);
        };
        match reply_value(reply) {
            Ok(value) => Ok((value, passed)),
            Err(err) => {
                if let Some(fd) = passed {
                    let _ = sys::close(fd);
                }
                Err(err)
            }
        }
    }

    /// [`ChildFiles::ask`] for a callback answered without a descriptor.
    fn ask_value(&self, callback: Callback) -> SysResult<i64> {
        let (value, passed) = self.ask(callback, None)?;
        if let Some(unexpected) = passed {
            let _ = sys::close(unexpected);
        }
        Ok(value)
    }
}

impl FileInstaller for ChildFiles {
    fn reserve(&self) -> Result<i32, Errno> {
        let fd = files::new_descriptor(true, false)?;
        let prepared = match files::Prepared::watch(fd, true) {
            Ok(prepared) => prepared,
            Err(err) => {
                let _ = sys::close(fd);
                return Err(err);
            }
        };
        let answer = self.ask(Callback::Reserve, Some(fd));
        // The descriptor now lives in the child (or in the message to it); none stays here.
        let _ = sys::close(fd);
        let answer = answer.and_then(|(number, passed)| {
            if let Some(unexpected) = passed {
                let _ = sys::close(unexpected);
            }
            i32::try_from(number).map_err(|_| Errno::EIO)
        });
        match answer {
            Ok(number) => {
                pending(&self.pending).insert(number, prepared);
                Ok(number)
            }
            Err(err) => Err(err),
        }
    }

    fn unreserve(&self, fd: i32) {
        let prepared = pending(&self.pending).remove(&fd);
        if let Some(prepared) = prepared {
            drop(prepared);
            if let Err(err) = self.ask_value(Callback::Unreserve { fd }) {
                log::line(format_args!("child could not give up fd {fd}: {err}"));
            }
        }
    }

    fn install(&self, fd: i32, file: EmulatedFile) {
        let Some(prepared) = pending(&self.pending).remove(&fd) else {
            return;
        };
        let mode = AccessMode::from_flags(libc::O_RDWR);
        let shim = files::register(FileKind::Emulated(file), mode, prepared);
        log::line(format_args!(
            "install file {} at a child's fd {fd}",
            shim.id
        ));
        // Should the child be gone, its descriptor closed with it and the watcher releases
        // the file.
        if let Err(err) = self.ask_value(Callback::Install { fd }) {
            log::line(format_args!("child could not install fd {fd}: {err}"));
        }
    }

    fn get(&self, fd: i32) -> Option<EmulatedFile> {
        let (_, passed) = self.ask(Callback::Lookup { fd }, None).ok()?;
        let passed = passed?;
        let file = files::by_descriptor(passed);
        let _ = sys::close(passed);
        match &file?.kind {
            FileKind::Emulated(emulated) => Some(emulated.clone()),
            FileKind::Iommufd(_) | FileKind::FailNth(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire protocol: one SOCK_SEQPACKET message per request and per reply, little endian.

/// What a request asks the home to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Op {
    /// Open `/dev/iommu` with flags `a` (`b == 1`: `/dev/vfio/vfio`); the reply passes the
    /// new file's descriptor.
    Open = 1,
    /// `ioctl(passed, a, b)`.
    Ioctl = 2,
    /// A descriptor was closed: process the close events queued so far before replying.
    Sync = 3,
    /// `read(passed, a, b)` at offset `c` (`u64::MAX`: the file position).
    Read = 4,
    /// `write(passed, a, b)` at offset `c` (`u64::MAX`: the file position).
    Write = 5,
    /// Serve the channel end passed along (a new fork child of the sender).
    Adopt = 6,
}

/// One request: `op`, the caller's fail-nth countdown and three arguments. The file it acts
/// on, if any, is the descriptor passed with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    op: Op,
    fail_nth: u32,
    a: u64,
    b: u64,
    c: u64,
}

const REQUEST_LEN: usize = 32;
const REPLY_LEN: usize = 16;

impl Request {
    fn new(op: Op, a: u64, b: u64, c: u64) -> Request {
        Request {
            op,
            fail_nth: 0,
            a,
            b,
            c,
        }
    }

    fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&(self.op as u32).to_le_bytes());
        out[4..8].copy_from_slice(&self.fail_nth.to_le_bytes());
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..24].copy_from_slice(&self.b.to_le_bytes());
        out[24..32].copy_from_slice(&self.c.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Request> {
        let bytes: &[u8; REQUEST_LEN] = bytes.try_into().ok()?;
        let u32_at =
            |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let op = match u32_at(0) {
            1 => Op::Open,
            2 => Op::Ioctl,
            3 => Op::Sync,
            4 => Op::Read,
            5 => Op::Write,
            6 => Op::Adopt,
            _ => return None,
        };
        Some(Request {
            op,
            fail_nth: u32_at(4),
            a: u64_at(8),
            b: u64_at(16),
            c: u64_at(24),
        })
    }
}

/// One reply: the call's value (negative: `-errno`) and the caller's countdown afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reply {
    value: i64,
    fail_nth: u32,
}

impl Reply {
    fn from_result(result: SysResult<i64>, fail_nth: u32) -> Reply {
        Reply {
            value: result.unwrap_or_else(|err| -i64::from(err.raw())),
            fail_nth,
        }
    }

    fn encode(&self) -> [u8; REPLY_LEN] {
        let mut out = [0u8; REPLY_LEN];
        out[0..8].copy_from_slice(&self.value.to_le_bytes());
        out[8..12].copy_from_slice(&self.fail_nth.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Reply> {
        let bytes: &[u8; REPLY_LEN] = bytes.try_into().ok()?;
        Some(Reply {
            value: i64::from_le_bytes(bytes[0..8].try_into().ok()?),
            fail_nth: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
        })
    }
}

fn reply_value(reply: Reply) -> SysResult<i64> {
    if reply.value < 0 {
        Err(Errno::from_raw(
            i32::try_from(-reply.value).unwrap_or(libc::EIO),
        ))
    } else {
        Ok(reply.value)
    }
}

/// What the home asks of a child in the middle of the child's ioctl, for the child's
/// descriptor table ([`ChildFiles`]). The child answers each with a [`Reply`] (its `fail_nth`
/// unused) and keeps waiting for the ioctl's own reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Callback {
    /// Keep the descriptor passed along (at the lowest free number) and answer its number.
    Reserve,
    /// Close `fd`, a number reserved earlier in this ioctl.
    Unreserve { fd: i32 },
    /// `fd`, reserved earlier in this ioctl, now refers to a file the home serves.
    Install { fd: i32 },
    /// Pass back the descriptor at `fd` if it is a file the home serves with `read`/`write`.
    Lookup { fd: i32 },
}

/// A callback's length, distinct from [`REPLY_LEN`]: it is how a child tells the two apart.
const CALLBACK_LEN: usize = 24;

impl Callback {
    fn encode(&self) -> [u8; CALLBACK_LEN] {
        let (tag, fd) = match *self {
            Callback::Reserve => (1u32, -1),
            Callback::Unreserve { fd } => (2, fd),
            Callback::Install { fd } => (3, fd),
            Callback::Lookup { fd } => (4, fd),
        };
        let mut out = [0u8; CALLBACK_LEN];
        out[0..4].copy_from_slice(&tag.to_le_bytes());
        out[4..8].copy_from_slice(&fd.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Callback> {
        let bytes: &[u8; CALLBACK_LEN] = bytes.try_into().ok()?;
        let fd = i32::from_le_bytes(bytes[4..8].try_into().ok()?);
        match u32::from_le_bytes(bytes[0..4].try_into().ok()?) {
            1 => Some(Callback::Reserve),
            2 => Some(Callback::Unreserve { fd }),
            3 => Some(Callback::Install { fd }),
            4 => Some(Callback::Lookup { fd }),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side (attached processes).

/// This process's channel to its home (`None` when the fork handler could not make one).
static CONNECTION: Mutex<Option<PrivateFd>> = Mutex::new(None);

fn connection() -> MutexGuard<'static, Option<PrivateFd>> {
    CONNECTION.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Send `request` to the home, passing the descriptor `pass` with it, and wait for its reply
/// (and the descriptor it passes, if any). The calling thread's fail-nth countdown travels
/// with it and comes back updated.
fn call(mut request: Request, pass: Option<i32>) -> SysResult<(Reply, Option<i32>)> {
    if fault::enabled() {
        fault::register_current_thread();
        request.fail_nth = failpoint::fail_nth();
    }
    let slot = connection();
    let Some(fd) = slot.as_ref().map(PrivateFd::get) else {
        return Err(Errno::EIO);
    };
    // Numbers the home reserved in this process during the request and has not installed yet,
    // and stale table entries met meanwhile (released once the channel is free again).
    let mut reserved: Vec<i32> = Vec::new();
    let mut stale: Vec<Target> = Vec::new();
    let mut exchange = || -> SysResult<(Reply, Option<i32>)> {
        sys::send_message(fd, &request.encode(), pass)?;
        loop {
            let mut buf = [0u8; CALLBACK_LEN + 1];
            let (len, passed) = sys::receive_message(fd, &mut buf)?;
            if len == 0 {
                return Err(Errno::EIO);
            }
            if let Some(callback) = Callback::decode(&buf[..len]) {
                let (answer, give) = answer_callback(callback, passed, &mut reserved, &mut stale);
                sys::send_message(fd, &Reply::from_result(answer, 0).encode(), give)?;
                continue;
            }
            return match Reply::decode(&buf[..len]) {
                Some(reply) => Ok((reply, passed)),
                None => {
                    if let Some(fd) = passed {
                        let _ = sys::close(fd);
                    }
                    Err(Errno::EIO)
                }
            };
        }
    };
    let exchanged = exchange();
    // The home gives up or installs every reservation before it replies; one left over means
    // the exchange broke off, and the ioctl failed: no descriptor stays behind.
    for fd in reserved {
        let _ = sys::close(fd);
    }
    drop(slot);
    for target in stale {
        release(Some(target));
    }
    match exchanged {
        Ok((reply, passed)) => {
            if fault::enabled() {
                failpoint::set_fail_nth(reply.fail_nth);
            }
            Ok((reply, passed))
        }
        Err(err) => {
            log::line(format_args!("home request {:?} failed: {err}", request.op));
            Err(Errno::EIO)
        }
    }
}

/// Carry out `callback` of the home for this process's descriptor table, during a request
/// (see [`ChildFiles`]); `passed` is the descriptor that came with it, `reserved` the numbers
/// reserved so far, and `stale` collects table entries to release afterwards. Returns the
/// answer and a descriptor to pass back with it.
fn answer_callback(
    callback: Callback,
    passed: Option<i32>,
    reserved: &mut Vec<i32>,
    stale: &mut Vec<Target>,
) -> (SysResult<i64>, Option<i32>) {
    if callback != Callback::Reserve {
        if let Some(unexpected) = passed {
            let _ = sys::close(unexpected);
        }
    }
    let mut take_reserved = |fd: i32| match reserved.iter().position(|&r| r == fd) {
        Some(at) => {
            reserved.swap_remove(at);
            Ok(())
        }
        None => Err(Errno::EBADF),
    };
    match callback {
        Callback::Reserve => {
            // The kernel passes no descriptor to a process whose table is full.
            let Some(fd) = passed else {
                return (Err(Errno::from_raw(libc::EMFILE)), None);
            };
            reserved.push(fd);
            (Ok(fd.into()), None)
        }
        Callback::Unreserve { fd } => {
            let result = take_reserved(fd).map(|()| {
                let _ = sys::close(fd);
                0
            });
            (result, None)
        }
        Callback::Install { fd } => {
            if let Err(err) = take_reserved(fd) {
                return (Err(err), None);
            }
            let remote = RemoteFile {
                mode: AccessMode::from_flags(libc::O_RDWR),
                has_io: true,
            };
            match fdtable::insert(fd, Target::Remote(remote)) {
                Ok(replaced) => {
                    stale.extend(replaced);
                    (Ok(0), None)
                }
                Err(err) => {
                    let _ = sys::close(fd);
                    (Err(err), None)
                }
            }
        }
        Callback::Lookup { fd } => {
            let (found, old) = fdtable::lookup(fd);
            stale.extend(old);
            match found {
                Some(Target::Remote(remote)) if remote.has_io => (Ok(0), Some(fd)),
                _ => (Err(Errno::EBADF), None),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server side (the home process).

/// Whether this home has forked since it started serving (so children may hold its files).
static FORKED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Release the files whose last descriptors were held by fork children that exited since.
///
/// The watcher thread notices such closes too, but asynchronously; the kernel releases a file
/// during the exit of its last holder, so once a parent's `waitpid` returns, the release is
/// done. Processing the close events before each ioctl of the home gives the parent that
/// ordering. Only after a fork is there anything to process.
fn reap_orphans() {
    if FORKED.load(std::sync::atomic::Ordering::Acquire) == sys::getpid() {
        files::release_closed();
    }
}

/// Start (once per home process) the thread that releases files as their close events come.
fn ensure_watcher_thread() {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let pid = sys::getpid();
    if STARTED.swap(pid, std::sync::atomic::Ordering::AcqRel) == pid {
        return;
    }
    let Ok(watcher) = files::watcher_fd() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("uiommu-release".into())
        .spawn(move || loop {
            let mut fds = [libc::pollfd {
                fd: watcher,
                events: libc::POLLIN,
                revents: 0,
            }];
            if sys::poll(&mut fds, -1).is_ok() && fds[0].revents & libc::POLLNVAL != 0 {
                return;
            }
            files::release_closed();
        });
    if spawned.is_err() {
        log::line(format_args!("cannot start the release watcher"));
    }
}

/// Make `fd`, the home's end of a channel, ready for serving: credentials on every message, a
/// bounded wait for answers (and for room to send to a child that reads nothing).
fn configure_channel(fd: i32) -> SysResult<()> {
    sys::pass_credentials(fd)?;
    sys::transfer_timeout(fd, CALLBACK_TIMEOUT_SECONDS)
}

/// Serve the channel `channel` on a thread of its own.
fn spawn_server(channel: PrivateFd) {
    let thread_channel = channel.clone();
    let spawned = std::thread::Builder::new()
        .name("uiommu-home".into())
        .spawn(move || serve(thread_channel));
    if spawned.is_err() {
        log::line(format_args!("cannot start a server thread: channel closed"));
        channel.close();
    }
}

/// The process a channel's requests come from, with its memory (cached per pid).
#[derive(Debug, Default)]
struct Peer {
    caller: Option<(u32, Caller)>,
}

impl Peer {
    fn caller(&mut self, pid: u32) -> SysResult<&Caller> {
        if self.caller.as_ref().map(|(p, _)| *p) != Some(pid) {
            let caller = Caller::for_pid(pid).map_err(|_| Errno::ESRCH)?;
            self.caller = Some((pid, caller));
        }
        self.caller.as_ref().map(|(_, c)| c).ok_or(Errno::ESRCH)
    }
}

/// One server thread: answer the requests on `channel` until the child is gone or breaks the
/// rules, then close it.
fn serve(channel: PrivateFd) {
    let uid = sys::getuid();
    let mut peer = Peer::default();
    loop {
        let mut buf = [0u8; REQUEST_LEN + 1];
        let (len, passed, credentials) = match sys::receive_message_from(channel.get(), &mut buf) {
            Ok((0, passed, _)) => {
                if let Some(fd) = passed {
                    let _ = sys::close(fd);
                }
                break;
            }
            Ok(received) => received,
            // The receive timeout only bounds answers to callbacks; between requests, wait on.
            Err(err) if err == Errno::EAGAIN => continue,
            Err(_) => break,
        };
        let Some(credentials) = credentials.filter(|c| c.uid == uid) else {
            if let Some(fd) = passed {
                let _ = sys::close(fd);
            }
            log::line(format_args!(
                "refused a request from {credentials:?}: not uid {uid}; channel closed"
            ));
            break;
        };
        let installer = Arc::new(ChildFiles::new(channel.get(), uid));
        let (reply, pass) = match Request::decode(&buf[..len]) {
            Some(request) => answer(&mut peer, credentials.pid, &installer, request, passed),
            None => (Reply::from_result(Err(Errno::EINVAL), 0), None),
        };
        if let Some(passed) = passed {
            let _ = sys::close(passed);
        }
        if installer.broken() {
            if let Some(fd) = pass {
                let _ = sys::close(fd);
            }
            break;
        }
        let sent = sys::send_message(channel.get(), &reply.encode(), pass).is_ok();
        if let Some(fd) = pass {
            let _ = sys::close(fd);
        }
        if !sent {
            break;
        }
    }
    channel.close();
}

/// Answer `request` of process `pid` on this thread, with the requesting thread's fail-nth
/// countdown armed here for the duration, and report what is left of it. `passed` is the
/// descriptor the request came with (the caller closes it).
fn answer(
    peer: &mut Peer,
    pid: u32,
    installer: &Arc<ChildFiles>,
    request: Request,
    passed: Option<i32>,
) -> (Reply, Option<i32>) {
    failpoint::set_fail_nth(request.fail_nth);
    let (result, pass) = match perform(peer, pid, installer, request, passed) {
        Ok((value, pass)) => (Ok(value), pass),
        Err(err) => (Err(err), None),
    };
    let left = failpoint::fail_nth();
    failpoint::set_fail_nth(0);
    (Reply::from_result(result, left), pass)
}

/// The work of one request: its value, and a descriptor to pass back.
fn perform(
    peer: &mut Peer,
    pid: u32,
    installer: &Arc<ChildFiles>,
    request: Request,
    passed: Option<i32>,
) -> SysResult<(i64, Option<i32>)> {
    // The file a request acts on is the one whose descriptor it passed: possession.
    let held = || passed.and_then(files::by_descriptor).ok_or(Errno::EBADF);
    match request.op {
        Op::Open => {
            let mode = AccessMode::from_flags(request.a as i32);
            let node = if request.b == 1 {
                Node::VfioContainer
            } else {
                Node::Iommu
            };
            let (fd, file) = create_iommufd(node, mode, true)?;
            log::line(format_args!(
                "open {node:?} for pid {pid}: file {}",
                file.id
            ));
            Ok((0, Some(fd)))
        }
        Op::Ioctl => {
            let file = held()?;
            let FileKind::Iommufd(ctx) = &file.kind else {
                return Err(Errno::ENOTTY);
            };
            // Files the ioctl hands out belong in the child's descriptor table.
            let mut caller = peer.caller(pid)?.clone();
            caller.files = Some(installer.clone());
            let value = ctx.ioctl(&caller, request.a as u32, request.b)?;
            Ok((value.into(), None))
        }
        Op::Sync => {
            files::release_closed();
            Ok((0, None))
        }
        Op::Read | Op::Write => {
            let file = held()?;
            let FileKind::Emulated(emulated) = &file.kind else {
                return Err(Errno::EINVAL);
            };
            let direction = if request.op == Op::Read {
                Direction::Read
            } else {
                Direction::Write
            };
            let io = FileIo {
                direction,
                buf: usize::try_from(request.a).map_err(|_| Errno::EFAULT)?,
                count: usize::try_from(request.b).map_err(|_| Errno::EINVAL)?,
                offset: (request.c != u64::MAX).then_some(request.c),
            };
            let value = emulated_io(&file, emulated, peer.caller(pid)?, io)?;
            Ok((value, None))
        }
        Op::Adopt => {
            let fd = passed.ok_or(Errno::EBADF)?;
            let duplicate = sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0)?;
            let channel = PrivateFd::adopt(duplicate);
            if let Err(err) = configure_channel(channel.get()) {
                channel.close();
                return Err(err);
            }
            spawn_server(channel);
            Ok((0, None))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fork handlers.

/// Every lock of the library, held across `fork` so that the child's copies are consistent.
struct ForkGuards {
    _release: MutexGuard<'static, ()>,
    role: MutexGuard<'static, Role>,
    connection: MutexGuard<'static, Option<PrivateFd>>,
    registry: MutexGuard<'static, Option<files::Registry>>,
    table: RwLockWriteGuard<'static, Option<HashMap<i32, fdtable::Entry>>>,
    private: MutexGuard<
        'static,
        std::collections::BTreeMap<i32, std::sync::Weak<std::sync::atomic::AtomicI32>>,
    >,
    threads: MutexGuard<'static, Option<HashMap<u32, fault::Slot>>>,
}

/// The channel a fork is making: the home's end and the child's end.
struct NewChannel {
    /// The home's end, when this process is the home (an attached process has passed it on).
    home_end: Option<PrivateFd>,
    child_end: PrivateFd,
}

thread_local! {
    static FORK_GUARDS: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
    static NEW_CHANNEL: RefCell<Option<NewChannel>> = const { RefCell::new(None) };
}

/// Install the fork handlers, once per process image.
pub fn register_fork_handlers() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| sys::atfork(prepare_fork, parent_after_fork, child_after_fork));
}

/// A channel for the child about to be made, if this process is a home or attached to one.
fn new_channel(role: Role) -> Option<NewChannel> {
    if role == Role::Fresh {
        return None;
    }
    let made = sys::seqpacket_pair().and_then(|(home_end, child_end)| {
        let (home_end, child_end) = (PrivateFd::adopt(home_end), PrivateFd::adopt(child_end));
        let ready = match role {
            Role::Home => configure_channel(home_end.get()),
            // The home serves the new child on the end it receives.
            _ => call(Request::new(Op::Adopt, 0, 0, 0), Some(home_end.get()))
                .and_then(|(reply, _)| reply_value(reply))
                .map(drop),
        };
        match ready {
            Ok(()) if role == Role::Home => Ok(NewChannel {
                home_end: Some(home_end),
                child_end,
            }),
            Ok(()) => {
                home_end.close();
                Ok(NewChannel {
                    home_end: None,
                    child_end,
                })
            }
            Err(err) => {
                home_end.close();
                child_end.close();
                Err(err)
            }
        }
    });
    match made {
        Ok(channel) => Some(channel),
        Err(err) => {
            log::line(format_args!(
                "cannot make a channel for a fork child: {err}"
            ));
            None
        }
    }
}

extern "C" fn prepare_fork() {
    let _ = std::panic::catch_unwind(|| {
        let role = *role();
        let channel = new_channel(role);
        NEW_CHANNEL.with(|slot| *slot.borrow_mut() = channel);
        let guards = ForkGuards {
            _release: files::lock_release(),
            role: self::role(),
            connection: connection(),
            registry: files::lock_registry(),
            table: fdtable::lock_table(),
            private: fdtable::lock_private(),
            threads: fault::lock_threads(),
        };
        FORK_GUARDS.with(|slot| *slot.borrow_mut() = Some(guards));
    });
}

extern "C" fn parent_after_fork() {
    let _ = std::panic::catch_unwind(|| {
        FORK_GUARDS.with(|slot| drop(slot.borrow_mut().take()));
        let Some(channel) = NEW_CHANNEL.with(|slot| slot.borrow_mut().take()) else {
            return;
        };
        channel.child_end.close();
        if let Some(home_end) = channel.home_end {
            FORKED.store(sys::getpid(), std::sync::atomic::Ordering::Release);
            ensure_watcher_thread();
            spawn_server(home_end);
        }
    });
}

extern "C" fn child_after_fork() {
    let _ = std::panic::catch_unwind(|| {
        let Some(mut guards) = FORK_GUARDS.with(|slot| slot.borrow_mut().take()) else {
            return;
        };
        fdtable::take_ownership();
        let channel = NEW_CHANNEL.with(|slot| slot.borrow_mut().take());
        let mut keep: HashSet<i32> = HashSet::new();
        if *guards.role != Role::Fresh {
            *guards.role = Role::Attached;
            fdtable::make_remote(&mut guards.table, served_by_home);
            files::forget_served(&mut guards.registry);
            // The parent's channel is the parent's: leak our copy's handle (its descriptor is
            // closed below with the other private descriptors we do not keep).
            if let Some(inherited) = guards.connection.take() {
                std::mem::forget(inherited);
            }
            if let Some(channel) = channel {
                // The home's end is the parent's (or the home's): closed below.
                std::mem::forget(channel.home_end);
                keep.insert(channel.child_end.get());
                *guards.connection = Some(channel.child_end);
            }
        }
        keep.extend(log::descriptor());
        fdtable::close_private_except(&mut guards.private, &keep);
        fault::forget_threads(&mut guards.threads);
        drop(guards);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_their_encoding() {
        let request = Request {
            op: Op::Ioctl,
            fail_nth: 7,
            a: 0x3b81,
            b: 0x7fff_1234_5678,
            c: u64::MAX,
        };
        assert_eq!(Request::decode(&request.encode()), Some(request));
        assert_eq!(Request::decode(&request.encode()[..REQUEST_LEN - 1]), None);
        let mut unknown = request.encode();
        unknown[0] = 9;
        assert_eq!(Request::decode(&unknown), None);
    }

    #[test]
    fn replies_carry_values_and_errnos() {
        let ok = Reply::from_result(Ok(3), 2);
        assert_eq!(Reply::decode(&ok.encode()), Some(ok));
        assert_eq!(reply_value(ok), Ok(3));
        let failed = Reply::from_result(Err(Errno::ENOTTY), 0);
        assert_eq!(
            reply_value(Reply::decode(&failed.encode()).unwrap()),
            Err(Errno::ENOTTY)
        );
    }

    #[test]
    fn callbacks_round_trip_and_differ_in_length_from_replies() {
        for callback in [
            Callback::Reserve,
            Callback::Unreserve { fd: 5 },
            Callback::Install { fd: 7 },
            Callback::Lookup { fd: 9 },
        ] {
            assert_eq!(Callback::decode(&callback.encode()), Some(callback));
        }
        assert_ne!(CALLBACK_LEN, REPLY_LEN);
    }
}
