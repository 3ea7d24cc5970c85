//! The emulated platform, and who serves an iommufd file after `fork` (the "home server").
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
//! give neither, so the child never uses its copy. Instead:
//!
//! * When a home process forks, the `pthread_atfork` prepare handler starts (once) a server
//!   thread listening on an abstract `SOCK_SEQPACKET` UNIX socket named after the home's pid.
//! * In the child, the handler turns every inherited iommufd descriptor into a
//!   [`Target::Remote`] reference (by file id) and marks the process *attached* to the home.
//!   Its copies of the home's state are leaked, never dropped, so the child cannot run the
//!   parent's destructors (or take locks another parent thread held at fork time).
//! * An attached process forwards each call on such a descriptor, and every later
//!   `/dev/iommu` open, to the home: `{op, file id, args, fail-nth countdown}`. The server
//!   identifies the caller by `SO_PEERCRED` (same uid only) and runs the engine with a
//!   [`Caller`] whose memory is the child's ([`Caller::for_pid`]); a grandchild, being
//!   attached to the same home, connects on its own (a connection is per pid).
//! * Files opened for an attached process are created by the home, which keeps its end of the
//!   pair and passes the program's end over the socket (`SCM_RIGHTS`): the last-close
//!   detection of [`crate::files`] therefore spans all processes. A child's `close` asks the
//!   home to check for release before returning, and the server also polls every file's kept
//!   end, so a child that exits without closing releases what only it held.
//! * Files an ioctl of an attached process hands out (fault queues, access fds) get numbers in
//!   *its* descriptor table: the server runs the ioctl with a [`ChildFiles`] installer in the
//!   [`Caller`], which asks the child, over the connection it waits on, to receive the program's
//!   end at its lowest free number and later to record or close it ([`Callback`]).
//! * The readiness byte of a handed-out file ([`crate::files::Readiness`]) is sent by the home
//!   (the engine's notifications arrive there) into the one socket every process's copy of
//!   the descriptor names, so a fault delivered while a child holds the fd makes the child's
//!   fd readable. A child's `read` passes its descriptor along with the request, for the home
//!   to drain the byte through it.
//!
//! Limits: the home must outlive its children's use of its files (if it exits or `exec`s
//! first, their calls fail with `EIO`); descriptors passed to unrelated processes or kept
//! across `exec` lose their emulation; a child made by a raw `clone`/`fork` system call (no
//! `pthread_atfork`) uses its copy.
//!
//! # Locking
//! `ROLE` and `CONNECTION` are mutexes held briefly; `CONNECTION` is held for a whole request
//! and reply, which serialises the requests of one attached process. See the crate's lock order.

use std::cell::RefCell;
use std::collections::HashSet;
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
use crate::files::{self, AccessMode, FileId, FileKind, ShimFile};
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

/// The abstract socket name of a home server.
#[derive(Clone, Debug)]
struct HomeAddress(Vec<u8>);

/// What this process is to iommufd files.
#[derive(Clone, Debug)]
enum Role {
    /// Has neither opened `/dev/iommu` nor inherited a home.
    Fresh,
    /// Serves the files it opened.
    Home,
    /// A fork descendant of a home, which serves its files.
    Attached(HomeAddress),
}

static ROLE: Mutex<Role> = Mutex::new(Role::Fresh);

fn role() -> MutexGuard<'static, Role> {
    ROLE.lock().unwrap_or_else(PoisonError::into_inner)
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

/// `open(node, flags)`: a new iommufd context, as a descriptor at the lowest free number.
pub fn open_iommufd(node: Node, flags: i32) -> SysResult<i32> {
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let mode = AccessMode::from_flags(flags);
    let attached = match &*role() {
        Role::Attached(home) => Some(home.clone()),
        Role::Fresh | Role::Home => None,
    };
    if let Some(home) = attached {
        let vfio = u64::from(node == Node::VfioContainer);
        let (reply, passed) = call(&home, Request::new(Op::Open, 0, flags as u64, vfio, 0))?;
        let fd = passed.ok_or(Errno::EIO)?;
        let id = reply_value(reply)? as FileId;
        if !cloexec {
            sys::fcntl(fd, libc::F_SETFD, 0)?;
        }
        let remote = RemoteFile {
            id,
            mode,
            has_io: false,
        };
        return install(fd, Target::Remote(remote));
    }
    let platform = platform()?;
    {
        let mut role = role();
        if matches!(*role, Role::Fresh) {
            *role = Role::Home;
        }
    }
    let (write_end, file) = files::create(FileKind::Iommufd(open_context(platform, node)), mode)?;
    let id = file.id;
    log::line(format_args!("open {node:?}: file {id}"));
    match files::place_lowest(write_end, cloexec) {
        Ok(fd) => install(fd, Target::Local(file)),
        Err(err) => {
            drop(file);
            files::release_if_unheld(id);
            Err(err)
        }
    }
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

/// A descriptor of `target` was closed: release the file if that was its last one anywhere.
pub fn release(target: Option<Target>) {
    match target {
        None => {}
        Some(Target::Local(file)) => {
            let id = file.id;
            drop(file);
            files::release_if_unheld(id);
        }
        Some(Target::Remote(remote)) => {
            let home = match &*role() {
                Role::Attached(home) => Some(home.clone()),
                Role::Fresh | Role::Home => None,
            };
            if let Some(home) = home {
                let _ = call(&home, Request::new(Op::Release, remote.id, 0, 0, 0));
            }
        }
    }
}

/// `ioctl(fd, cmd, arg)` on an iommufd file.
pub fn ioctl(target: &Target, cmd: u32, arg: u64) -> SysResult<i64> {
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
            let home = match &*role() {
                Role::Attached(home) => home.clone(),
                Role::Fresh | Role::Home => return Err(Errno::EBADF),
            };
            if remote.has_io {
                return Err(Errno::ENOTTY);
            }
            let (reply, passed) = call(
                &home,
                Request::new(Op::Ioctl, remote.id, cmd.into(), arg, 0),
            )?;
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
            emulated_io(file, emulated, &platform()?.caller, io, Some(fd))
        }
        Target::Remote(remote) => {
            if !remote.has_io {
                return Err(Errno::EINVAL);
            }
            let home = match &*role() {
                Role::Attached(home) => home.clone(),
                Role::Fresh | Role::Home => return Err(Errno::EBADF),
            };
            let op = match direction {
                Direction::Read => Op::Read,
                Direction::Write => Op::Write,
            };
            let offset = offset.unwrap_or(u64::MAX);
            let request = Request::new(op, remote.id, buf as u64, count as u64, offset);
            // A read may have to drain the readiness byte, through this very descriptor.
            let pass = (direction == Direction::Read).then_some(fd);
            let (reply, passed) = call_passing(&home, request, pass)?;
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

/// Serve `io` on `file` from the engine; `program_end` is a descriptor of the program's end
/// of the file, through which a read drains the readiness byte when the file is no longer
/// readable.
fn emulated_io(
    file: &ShimFile,
    emulated: &EmulatedFile,
    caller: &Caller,
    io: FileIo,
    program_end: Option<i32>,
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
            file.sync_readiness(program_end);
            done?
        }
        Direction::Write => emulated.write(user, buf, io.count, position)?,
    };
    i64::try_from(done).map_err(|_| Errno::EOVERFLOW)
}

/// The [`FileInstaller`] of a home process: numbers are real descriptors of this process, each
/// the program's end of a socket pair (see [`crate::files`]), reserved at the lowest free number with
/// close-on-exec as `get_unused_fd_flags(O_CLOEXEC)` does.
///
/// Only the home's own threads use it: a fork child's ioctls get a [`ChildFiles`] installer
/// for the child's descriptor table with their [`Caller`].
///
/// Locking: `pending` is a leaf mutex.
#[derive(Debug, Default)]
struct Installer {
    /// Reserved numbers → the library's ends of their socket pairs.
    pending: Mutex<std::collections::HashMap<i32, PrivateFd>>,
}

impl Installer {
    fn pending(&self) -> MutexGuard<'_, std::collections::HashMap<i32, PrivateFd>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FileInstaller for Installer {
    fn reserve(&self) -> Result<i32, Errno> {
        let (kept_end, program_end) = files::socket_pair()?;
        match files::place_lowest(program_end, true) {
            Ok(fd) => {
                self.pending().insert(fd, kept_end);
                Ok(fd)
            }
            Err(err) => {
                kept_end.close();
                Err(err)
            }
        }
    }

    fn unreserve(&self, fd: i32) {
        if let Some(kept_end) = self.pending().remove(&fd) {
            let _ = sys::close(fd);
            kept_end.close();
        }
    }

    fn install(&self, fd: i32, file: EmulatedFile) {
        let Some(kept_end) = self.pending().remove(&fd) else {
            return;
        };
        let mode = AccessMode::from_flags(libc::O_RDWR);
        let shim = files::register(FileKind::Emulated(file), mode, kept_end);
        log::line(format_args!("install file {} at fd {fd}", shim.id));
        let _ = install(fd, Target::Local(shim));
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

/// The [`FileInstaller`] for one ioctl of a fork child, run by the home server: numbers are
/// descriptors of the *child*, which the home reaches over the child's connection while the
/// child waits for the ioctl's reply (see [`Callback`]).
///
/// * `reserve`: the home makes the socket pair, keeps its end and passes the program's end to
///   the child (`SCM_RIGHTS`), which receives it at its lowest free number, close-on-exec (as
///   `get_unused_fd_flags(O_CLOEXEC)` allocates), and answers with the number. A child whose
///   table is full receives no descriptor and answers `EMFILE`.
/// * `install`: the home registers the file, as for its own ioctls, and the child records its
///   number as a reference to it ([`Target::Remote`]).
/// * `unreserve`: the child closes the number and the home its kept end, so a failed ioctl
///   leaves no descriptor in either process.
/// * `get`: the child names the file its number refers to.
///
/// Locking: `pending` is a leaf mutex; the connection is the server thread's alone while the
/// ioctl runs.
#[derive(Debug)]
struct ChildFiles {
    /// The server's end of the child's connection.
    connection: i32,
    /// Reserved numbers of the child → the library's ends of their socket pairs.
    pending: Mutex<std::collections::HashMap<i32, PrivateFd>>,
}

impl ChildFiles {
    fn new(connection: i32) -> ChildFiles {
        ChildFiles {
            connection,
            pending: Mutex::default(),
        }
    }

    fn pending(&self) -> MutexGuard<'_, std::collections::HashMap<i32, PrivateFd>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ask the child to carry out `callback` (with `pass` passed along) and return its answer.
    /// A child that is gone or answers garbage: `EIO`.
    fn ask(&self, callback: Callback, pass: Option<i32>) -> SysResult<i64> {
        sys::send_message(self.connection, &callback.encode(), pass).map_err(|_| Errno::EIO)?;
        let mut buf = [0u8; REPLY_LEN + 1];
        let (len, passed) =
            sys::receive_message(self.connection, &mut buf).map_err(|_| Errno::EIO)?;
        if let Some(unexpected) = passed {
            let _ = sys::close(unexpected);
        }
        reply_value(Reply::decode(&buf[..len]).ok_or(Errno::EIO)?)
    }
}

impl FileInstaller for ChildFiles {
    fn reserve(&self) -> Result<i32, Errno> {
        let (kept_end, program_end) = files::socket_pair()?;
        let answer = self.ask(Callback::Reserve, Some(program_end));
        let _ = sys::close(program_end);
        match answer.and_then(|fd| i32::try_from(fd).map_err(|_| Errno::EIO)) {
            Ok(fd) => {
                self.pending().insert(fd, kept_end);
                Ok(fd)
            }
            Err(err) => {
                kept_end.close();
                Err(err)
            }
        }
    }

    fn unreserve(&self, fd: i32) {
        if let Some(kept_end) = self.pending().remove(&fd) {
            if let Err(err) = self.ask(Callback::Unreserve { fd }, None) {
                log::line(format_args!("child could not give up fd {fd}: {err}"));
            }
            kept_end.close();
        }
    }

    fn install(&self, fd: i32, file: EmulatedFile) {
        let Some(kept_end) = self.pending().remove(&fd) else {
            return;
        };
        let mode = AccessMode::from_flags(libc::O_RDWR);
        let shim = files::register(FileKind::Emulated(file), mode, kept_end);
        log::line(format_args!(
            "install file {} at a child's fd {fd}",
            shim.id
        ));
        // Should the child be gone, its end is closed with it and the server's poll of the
        // kept ends releases the file.
        if let Err(err) = self.ask(Callback::Install { fd, file: shim.id }, None) {
            log::line(format_args!("child could not install fd {fd}: {err}"));
        }
    }

    fn get(&self, fd: i32) -> Option<EmulatedFile> {
        let id = self.ask(Callback::Lookup { fd }, None).ok()?;
        let file = files::get(FileId::try_from(id).ok()?)?;
        match &file.kind {
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
    /// Open `/dev/iommu` with flags `a`; the reply passes the program's end of the new file.
    Open = 1,
    /// `ioctl(file, a, b)`.
    Ioctl = 2,
    /// A descriptor of `file` was closed: release it if that was the last.
    Release = 3,
    /// `read(file, a, b)` at offset `c` (`u64::MAX`: the file position); the request passes
    /// the reader's descriptor, through which the home drains the readiness byte.
    Read = 4,
    /// `write(file, a, b)` at offset `c` (`u64::MAX`: the file position).
    Write = 5,
}

/// One request: `op`, the caller's fail-nth countdown, a file id and three arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    op: Op,
    fail_nth: u32,
    file: FileId,
    a: u64,
    b: u64,
    c: u64,
}

const REQUEST_LEN: usize = 40;
const REPLY_LEN: usize = 16;

impl Request {
    fn new(op: Op, file: FileId, a: u64, b: u64, c: u64) -> Request {
        Request {
            op,
            fail_nth: 0,
            file,
            a,
            b,
            c,
        }
    }

    fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&(self.op as u32).to_le_bytes());
        out[4..8].copy_from_slice(&self.fail_nth.to_le_bytes());
        out[8..16].copy_from_slice(&self.file.to_le_bytes());
        out[16..24].copy_from_slice(&self.a.to_le_bytes());
        out[24..32].copy_from_slice(&self.b.to_le_bytes());
        out[32..40].copy_from_slice(&self.c.to_le_bytes());
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
            3 => Op::Release,
            4 => Op::Read,
            5 => Op::Write,
            _ => return None,
        };
        Some(Request {
            op,
            fail_nth: u32_at(4),
            file: u64_at(8),
            a: u64_at(16),
            b: u64_at(24),
            c: u64_at(32),
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
    /// `fd`, reserved earlier in this ioctl, now refers to the home's file `file`.
    Install { fd: i32, file: FileId },
    /// Answer the id of the home's file `fd` refers to.
    Lookup { fd: i32 },
}

/// A callback's length, distinct from [`REPLY_LEN`]: it is how a child tells the two apart.
const CALLBACK_LEN: usize = 24;

impl Callback {
    fn encode(&self) -> [u8; CALLBACK_LEN] {
        let (tag, fd, file) = match *self {
            Callback::Reserve => (1u32, -1, 0),
            Callback::Unreserve { fd } => (2, fd, 0),
            Callback::Install { fd, file } => (3, fd, file),
            Callback::Lookup { fd } => (4, fd, 0),
        };
        let mut out = [0u8; CALLBACK_LEN];
        out[0..4].copy_from_slice(&tag.to_le_bytes());
        out[4..8].copy_from_slice(&fd.to_le_bytes());
        out[8..16].copy_from_slice(&file.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Callback> {
        let bytes: &[u8; CALLBACK_LEN] = bytes.try_into().ok()?;
        let fd = i32::from_le_bytes(bytes[4..8].try_into().ok()?);
        let file = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
        match u32::from_le_bytes(bytes[0..4].try_into().ok()?) {
            1 => Some(Callback::Reserve),
            2 => Some(Callback::Unreserve { fd }),
            3 => Some(Callback::Install { fd, file }),
            4 => Some(Callback::Lookup { fd }),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side (attached processes).

/// This process's connection to its home.
#[derive(Debug)]
struct Connection {
    fd: PrivateFd,
    /// The pid that connected: a connection inherited over fork is not ours.
    pid: u32,
}

static CONNECTION: Mutex<Option<Connection>> = Mutex::new(None);

fn connection() -> MutexGuard<'static, Option<Connection>> {
    CONNECTION.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Send `request` to the home and wait for its reply (and the descriptor it passes, if any).
/// The calling thread's fail-nth countdown travels with it and comes back updated.
fn call(home: &HomeAddress, request: Request) -> SysResult<(Reply, Option<i32>)> {
    call_passing(home, request, None)
}

/// [`call`], passing the descriptor `pass` with the request.
fn call_passing(
    home: &HomeAddress,
    mut request: Request,
    pass: Option<i32>,
) -> SysResult<(Reply, Option<i32>)> {
    if fault::enabled() {
        fault::register_current_thread();
        request.fail_nth = failpoint::fail_nth();
    }
    let mut slot = connection();
    let pid = sys::getpid();
    let fd = match &*slot {
        Some(conn) if conn.pid == pid => conn.fd.get(),
        _ => {
            let fd = sys::connect_abstract(&home.0).map_err(|err| {
                log::line(format_args!("cannot reach the home server: {err}"));
                Errno::EIO
            })?;
            let fd = PrivateFd::adopt(fd);
            let number = fd.get();
            *slot = Some(Connection { fd, pid });
            number
        }
    };
    // Numbers the home reserved in this process during the request and has not installed yet,
    // and stale table entries met meanwhile (released once the connection is free again).
    let mut reserved: Vec<i32> = Vec::new();
    let mut stale: Vec<Target> = Vec::new();
    let mut exchange = || -> SysResult<(Reply, Option<i32>)> {
        sys::send_message(fd, &request.encode(), pass)?;
        loop {
            let mut buf = [0u8; CALLBACK_LEN + 1];
            let (len, passed) = sys::receive_message(fd, &mut buf)?;
            if let Some(callback) = Callback::decode(&buf[..len]) {
                let answer = answer_callback(callback, passed, &mut reserved, &mut stale);
                sys::send_message(fd, &Reply::from_result(answer, 0).encode(), None)?;
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
    let result = match exchanged {
        Ok((reply, passed)) => {
            if fault::enabled() {
                failpoint::set_fail_nth(reply.fail_nth);
            }
            Ok((reply, passed))
        }
        Err(err) => {
            log::line(format_args!(
                "home server request {:?} failed: {err}",
                request.op
            ));
            if let Some(conn) = slot.take() {
                conn.fd.close();
            }
            Err(Errno::EIO)
        }
    };
    drop(slot);
    for target in stale {
        release(Some(target));
    }
    result
}

/// Carry out `callback` of the home for this process's descriptor table, during a request
/// (see [`ChildFiles`]); `passed` is the descriptor that came with it, `reserved` the numbers
/// reserved so far, and `stale` collects table entries to release afterwards.
fn answer_callback(
    callback: Callback,
    passed: Option<i32>,
    reserved: &mut Vec<i32>,
    stale: &mut Vec<Target>,
) -> SysResult<i64> {
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
            let fd = passed.ok_or(Errno::from_raw(libc::EMFILE))?;
            reserved.push(fd);
            Ok(fd.into())
        }
        Callback::Unreserve { fd } => {
            take_reserved(fd)?;
            let _ = sys::close(fd);
            Ok(0)
        }
        Callback::Install { fd, file } => {
            take_reserved(fd)?;
            let remote = RemoteFile {
                id: file,
                mode: AccessMode::from_flags(libc::O_RDWR),
                has_io: true,
            };
            match fdtable::insert(fd, Target::Remote(remote)) {
                Ok(replaced) => {
                    stale.extend(replaced);
                    Ok(0)
                }
                Err(err) => {
                    let _ = sys::close(fd);
                    Err(err)
                }
            }
        }
        Callback::Lookup { fd } => {
            let (found, old) = fdtable::lookup(fd);
            stale.extend(old);
            match found {
                Some(Target::Remote(remote)) if remote.has_io => {
                    i64::try_from(remote.id).map_err(|_| Errno::EBADF)
                }
                _ => Err(Errno::EBADF),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server side (the home process).

/// The running home server of this process.
#[derive(Debug)]
struct Server {
    /// The process the server thread runs in (a fork child sees its parent's copy).
    pid: u32,
    address: HomeAddress,
    wake: PrivateFd,
}

static SERVER: OnceLock<Result<Server, Errno>> = OnceLock::new();

fn ensure_server() -> SysResult<&'static Server> {
    SERVER
        .get_or_init(start_server)
        .as_ref()
        .map_err(|&err| err)
}

fn start_server() -> SysResult<Server> {
    let pid = sys::getpid();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let address = HomeAddress(format!("uiommu-preload/{pid}/{nonce}").into_bytes());
    let listener = PrivateFd::adopt(sys::listen_abstract(&address.0)?);
    let wake = PrivateFd::adopt(sys::eventfd()?);
    let server_wake = wake.clone();
    std::thread::Builder::new()
        .name("uiommu-home".into())
        .spawn(move || serve(listener, server_wake))
        .map_err(|_| Errno::EAGAIN)?;
    log::line(format_args!("home server started"));
    Ok(Server { pid, address, wake })
}

/// Release the files whose last descriptors were held by fork children that exited since.
///
/// The server thread notices such hang-ups too, but asynchronously; the kernel releases a file
/// during the exit of its last holder, so once a parent's `waitpid` returns, the release is
/// done. Checking before each ioctl of the home gives the parent that ordering. Only after a
/// fork (when a server runs) is there anything to check.
fn reap_orphans() {
    let serving = matches!(SERVER.get(), Some(Ok(server)) if server.pid == sys::getpid());
    if !serving {
        return;
    }
    files::release_all_unheld();
}

/// The registry of files changed: the server re-reads it.
pub fn files_changed() {
    if let Some(Ok(server)) = SERVER.get() {
        if server.pid == sys::getpid() {
            let _ = sys::write(server.wake.get(), &1u64.to_ne_bytes());
        }
    }
}

/// One attached process connected to the server.
#[derive(Debug)]
struct Client {
    fd: PrivateFd,
    pid: u32,
    caller: Option<Caller>,
}

impl Client {
    fn caller(&mut self) -> SysResult<&Caller> {
        if self.caller.is_none() {
            self.caller = Some(Caller::for_pid(self.pid).map_err(|_| Errno::ESRCH)?);
        }
        self.caller.as_ref().ok_or(Errno::ESRCH)
    }
}

/// The server loop: accept attached processes, answer their requests, and release files whose
/// descriptors are all gone.
fn serve(listener: PrivateFd, wake: PrivateFd) {
    let mut clients: Vec<Client> = Vec::new();
    let uid = sys::getuid();
    loop {
        let files = files::kept_ends();
        let mut fds: Vec<libc::pollfd> = [listener.get(), wake.get()]
            .into_iter()
            .chain(clients.iter().map(|c| c.fd.get()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .chain(files.iter().map(|&(_, fd)| libc::pollfd {
                fd,
                events: 0,
                revents: 0,
            }))
            .collect();
        if sys::poll(&mut fds, -1).is_err() {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Ok(fd) = sys::accept(listener.get()) {
                let fd = PrivateFd::adopt(fd);
                match sys::peer_credentials(fd.get()) {
                    Ok((pid, peer_uid)) if peer_uid == uid || uid == 0 => clients.push(Client {
                        fd,
                        pid,
                        caller: None,
                    }),
                    _ => fd.close(),
                }
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let mut counter = [0u8; 8];
            let _ = sys::read(wake.get(), &mut counter);
        }
        let client_count = clients.len();
        let client_events: Vec<i16> = fds[2..2 + client_count].iter().map(|p| p.revents).collect();
        let mut index = 0;
        for revents in client_events {
            let keep =
                revents == 0 || (revents & libc::POLLIN != 0 && serve_one(&mut clients[index]));
            if keep {
                index += 1;
            } else {
                clients.remove(index).fd.close();
            }
        }
        for (&(id, _), poll) in files.iter().zip(&fds[2 + client_count..]) {
            if poll.revents & (libc::POLLHUP | libc::POLLNVAL) != 0 {
                files::release_if_unheld(id);
            }
        }
    }
}

/// Answer one request of `client`; `false` when the client is gone.
fn serve_one(client: &mut Client) -> bool {
    let mut buf = [0u8; REQUEST_LEN + 1];
    let (len, passed) = match sys::receive_message(client.fd.get(), &mut buf) {
        Ok((0, _)) | Err(_) => return false,
        Ok(received) => received,
    };
    let (reply, pass) = match Request::decode(&buf[..len]) {
        Some(request) => answer(client, request, passed),
        None => (Reply::from_result(Err(Errno::EINVAL), 0), None),
    };
    if let Some(passed) = passed {
        let _ = sys::close(passed);
    }
    let sent = sys::send_message(client.fd.get(), &reply.encode(), pass).is_ok();
    if let Some(fd) = pass {
        let _ = sys::close(fd);
    }
    sent
}

/// Answer `request` on this (the server's) thread, with the requesting thread's fail-nth
/// countdown armed here for the duration, and report what is left of it. `passed` is the
/// descriptor the request came with (the caller closes it).
fn answer(client: &mut Client, request: Request, passed: Option<i32>) -> (Reply, Option<i32>) {
    failpoint::set_fail_nth(request.fail_nth);
    let (result, pass) = match perform(client, request, passed) {
        Ok((value, pass)) => (Ok(value), pass),
        Err(err) => (Err(err), None),
    };
    let left = failpoint::fail_nth();
    failpoint::set_fail_nth(0);
    (Reply::from_result(result, left), pass)
}

/// The work of one request: its value, and a descriptor to pass back.
fn perform(
    client: &mut Client,
    request: Request,
    passed: Option<i32>,
) -> SysResult<(i64, Option<i32>)> {
    match request.op {
        Op::Open => {
            let platform = platform()?;
            let mode = AccessMode::from_flags(request.a as i32);
            let node = if request.b == 1 {
                Node::VfioContainer
            } else {
                Node::Iommu
            };
            let context = open_context(platform, node);
            let (write_end, file) = files::create(FileKind::Iommufd(context), mode)?;
            log::line(format_args!(
                "open {node:?} for pid {}: file {}",
                client.pid, file.id
            ));
            Ok((file.id as i64, Some(write_end)))
        }
        Op::Ioctl => {
            let file = files::get(request.file);
            let Some(FileKind::Iommufd(ctx)) = file.as_deref().map(|f| &f.kind) else {
                return Err(Errno::EBADF);
            };
            // Files the ioctl hands out belong in the child's descriptor table.
            let mut caller = client.caller()?.clone();
            caller.files = Some(Arc::new(ChildFiles::new(client.fd.get())));
            let value = ctx.ioctl(&caller, request.a as u32, request.b)?;
            Ok((value.into(), None))
        }
        Op::Release => {
            files::release_if_unheld(request.file);
            Ok((0, None))
        }
        Op::Read | Op::Write => {
            let file = files::get(request.file);
            let Some((file, FileKind::Emulated(emulated))) = file.as_deref().map(|f| (f, &f.kind))
            else {
                return Err(Errno::EBADF);
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
            // The child's library passes the descriptor it read from (one its descriptor table
            // maps to this file); without one, a stale readiness byte stays until a later read.
            let caller = client.caller()?;
            let value = emulated_io(file, emulated, caller, io, passed)?;
            Ok((value, None))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fork handlers.

/// Every lock of the library, held across `fork` so that the child's copies are consistent.
struct ForkGuards {
    _release: MutexGuard<'static, ()>,
    role: MutexGuard<'static, Role>,
    connection: MutexGuard<'static, Option<Connection>>,
    registry: MutexGuard<'static, Option<std::collections::HashMap<FileId, Arc<ShimFile>>>>,
    table: RwLockWriteGuard<'static, Option<std::collections::HashMap<i32, fdtable::Entry>>>,
    private: MutexGuard<
        'static,
        std::collections::BTreeMap<i32, std::sync::Weak<std::sync::atomic::AtomicI32>>,
    >,
    threads: MutexGuard<'static, Option<std::collections::HashMap<u32, fault::Slot>>>,
}

thread_local! {
    static FORK_GUARDS: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
}

/// Install the fork handlers, once per process image.
pub fn register_fork_handlers() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| sys::atfork(prepare_fork, parent_after_fork, child_after_fork));
}

extern "C" fn prepare_fork() {
    let _ = std::panic::catch_unwind(|| {
        if matches!(*role(), Role::Home) {
            if let Err(err) = ensure_server() {
                log::line(format_args!("cannot start the home server: {err}"));
            }
        }
        let guards = ForkGuards {
            _release: files::lock_release(),
            role: role(),
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
    });
}

extern "C" fn child_after_fork() {
    let _ = std::panic::catch_unwind(|| {
        let Some(mut guards) = FORK_GUARDS.with(|slot| slot.borrow_mut().take()) else {
            return;
        };
        let home = match &*guards.role {
            Role::Fresh => None,
            Role::Attached(home) => Some(home.clone()),
            Role::Home => match SERVER.get() {
                Some(Ok(server)) => Some(server.address.clone()),
                _ => None,
            },
        };
        let mut keep: HashSet<i32> = HashSet::new();
        if let Some(home) = home {
            *guards.role = Role::Attached(home);
            fdtable::make_remote(&mut guards.table, served_by_home);
            keep.extend(files::keep_local_only(&mut guards.registry, served_by_home));
        } else {
            keep.extend(files::keep_local_only(&mut guards.registry, |_| false));
        }
        // The parent's connection to its home is the parent's: leak our copy's handle (its
        // descriptor is closed below with the other private descriptors we do not keep).
        if let Some(inherited) = guards.connection.take() {
            std::mem::forget(inherited);
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
            file: 42,
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
}
