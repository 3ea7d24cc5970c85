//! The ioctl dispatcher of `/dev/iommu`: the generic checks of `iommufd_fops_ioctl()`, in the
//! kernel's order, in front of a table with one row per ioctl.
//!
//! # Model
//! The context module owns the table: a `static` slice of [`IoctlOp`] rows, each declared with
//! [`op!`](crate::ioctl::op) from the ioctl number, the handler, the ABI struct and the struct's
//! last mandatory field, plus the function that serves the VFIO type1 compatibility numbers.
//! [`IoctlTable::dispatch`] runs, for one `ioctl(fd, cmd, arg)`:
//!
//! 1. `nr = cmd & 0xff`; `nr < 0x80` or past the table's highest number → the VFIO compat
//!    function, which gets `cmd` and `arg` untouched and returns the ioctl's value.
//! 2. Read the leading `u32 size` at `arg` → `EFAULT` if unreadable.
//! 3. No row for `nr`, or the row's full number ≠ `cmd` (a size or direction encoded into it) →
//!    `ENOTTY`.
//! 4. `size < min_size` → `EINVAL`.
//! 5. `copy_struct_from_user()`: bytes past our struct must be zero (`E2BIG`; `EFAULT` if
//!    unreadable), then the common prefix is copied (`EFAULT`) and a shorter struct is
//!    zero-extended.
//! 6. The handler runs on the decoded struct ([`Ucmd::cmd`]) and answers through
//!    [`Ucmd::respond`], which writes back `min(size, sizeof(struct))` bytes.
//!
//! Handlers never repeat these checks; they start at their own flag and reserved-field checks.
//!
//! # Example
//! ```
//! use uiommu_iommufd::abi::{IommuIoasMap, IOMMU_IOAS_MAP};
//! use uiommu_iommufd::errno::Errno;
//! use uiommu_iommufd::ioctl::{op, IoctlOp, IoctlTable, Ucmd};
//! use uiommu_iommufd::user_memory::UserMemory;
//!
//! struct Ctx;
//!
//! fn map(_ctx: &Ctx, ucmd: &mut Ucmd<'_, IommuIoasMap>) -> Result<(), Errno> {
//!     ucmd.cmd.iova = 0x10_0000;
//!     ucmd.respond()
//! }
//!
//! fn vfio(_: &Ctx, _: &dyn UserMemory, _cmd: u32, _arg: u64) -> Result<i32, Errno> {
//!     Err(Errno::ENOTTY)
//! }
//!
//! static OPS: &[IoctlOp<Ctx>] = &[op!(IOMMU_IOAS_MAP, map, IommuIoasMap, iova)];
//! static TABLE: IoctlTable<Ctx> = IoctlTable::new(OPS, vfio);
//!
//! assert_eq!(TABLE.ops()[0].min_size(), 40); // offsetofend(struct iommu_ioas_map, iova)
//! ```
//!
//! # State and locking
//! None: the table is immutable and shared; the dispatcher holds no lock while a handler runs,
//! and ioctls of one context run concurrently, so handlers take `&Ctx`.

use std::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::abi::{ioc_nr, IOMMUFD_CMD_BASE};
use crate::errno::Errno;
use crate::user_memory::{UserMemory, UserVa};

/// The handler of one ioctl: the context, and the command decoded into its ABI struct `T`.
/// Returns `Ok(())` for an ioctl return value of 0; the response, if any, is written with
/// [`Ucmd::respond`] before returning.
pub type Handler<Ctx, T> = fn(&Ctx, &mut Ucmd<'_, T>) -> Result<(), Errno>;

/// The VFIO type1 compatibility entry point (`iommufd_vfio_ioctl()`): gets the raw `cmd` and
/// `arg` (an integer for `VFIO_CHECK_EXTENSION` and `VFIO_SET_IOMMU`, a user pointer otherwise)
/// and returns the ioctl's non-negative value; unknown numbers must answer `ENOTTY`.
pub type VfioCompatFn<Ctx> = fn(&Ctx, &dyn UserMemory, u32, u64) -> Result<i32, Errno>;

/// The type-erased entry of a row: decodes the struct and runs the handler.
type Execute<Ctx> = fn(&Ctx, RawUcmd<'_>) -> Result<(), Errno>;

/// One row of the ioctl table (`struct iommufd_ioctl_op`). Build it with
/// [`op!`](crate::ioctl::op), never by hand, so that `min_size` comes from the struct.
pub struct IoctlOp<Ctx: ?Sized + 'static> {
    cmd: u32,
    name: &'static str,
    size: usize,
    min_size: usize,
    execute: Execute<Ctx>,
    /// Whether the row exists for a context; `None`: always. A row that does not exist
    /// answers like a missing one (`ENOTTY`), as in a kernel without that command.
    present: Option<fn(&Ctx) -> bool>,
}

impl<Ctx: ?Sized + 'static> fmt::Debug for IoctlOp<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoctlOp")
            .field("cmd", &format_args!("{:#x}", self.cmd))
            .field("name", &self.name)
            .field("size", &self.size)
            .field("min_size", &self.min_size)
            .finish()
    }
}

impl<Ctx: ?Sized + 'static> IoctlOp<Ctx> {
    /// The row behind [`op!`](crate::ioctl::op); `execute` must decode a `T` (the macro passes
    /// [`RawUcmd::execute`] for the row's handler).
    ///
    /// # Panics
    /// At compile time, when used in a `static`, if `min_size` is 0 or larger than `T`.
    #[doc(hidden)]
    pub const fn new<T: FromBytes + IntoBytes + Immutable + KnownLayout>(
        cmd: u32,
        name: &'static str,
        min_size: usize,
        execute: Execute<Ctx>,
    ) -> IoctlOp<Ctx> {
        let size = std::mem::size_of::<T>();
        assert!(
            min_size >= 4 && min_size <= size,
            "min_size must lie within the struct"
        );
        IoctlOp {
            cmd,
            name,
            size,
            min_size,
            execute,
            present: None,
        }
    }

    /// The same row, present only for contexts where `present` says so (a command a kernel
    /// version selected per context does not have).
    pub const fn only_if(self, present: fn(&Ctx) -> bool) -> IoctlOp<Ctx> {
        IoctlOp {
            present: Some(present),
            ..self
        }
    }

    /// The full ioctl number.
    pub fn cmd(&self) -> u32 {
        self.cmd
    }

    /// The ioctl's name, as written in the row.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `sizeof` the ABI struct this implementation knows.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The smallest `size` a caller may pass: the end of the last mandatory field.
    pub fn min_size(&self) -> usize {
        self.min_size
    }
}

/// The size of the field a projection returns, usable in constants:
/// `field_size(|s: &S| &s.f)` is `size_of` the type of `S::f`.
#[doc(hidden)]
pub const fn field_size<S, F>(_projection: fn(&S) -> &F) -> usize {
    std::mem::size_of::<F>()
}

/// Declare one ioctl table row (`IOCTL_OP()` of `main.c`):
/// `op!(IOMMU_IOAS_MAP, ioas::map, IommuIoasMap, iova)` is number, handler
/// ([`Handler`]`<Ctx, IommuIoasMap>`), ABI struct and last mandatory field. The minimum size is
/// `offset_of!(IommuIoasMap, iova) + size_of` that field.
#[macro_export]
macro_rules! ioctl_op {
    ($cmd:path, $handler:path, $ty:ty, $last:ident) => {
        $crate::ioctl::IoctlOp::new::<$ty>(
            $cmd,
            stringify!($cmd),
            ::core::mem::offset_of!($ty, $last) + $crate::ioctl::field_size(|s: &$ty| &s.$last),
            |ctx, raw| $crate::ioctl::RawUcmd::execute::<_, $ty>(raw, ctx, $handler),
        )
    };
}

pub use crate::ioctl_op as op;

/// The dispatcher: a context's table of rows plus its VFIO compat entry point.
pub struct IoctlTable<Ctx: ?Sized + 'static> {
    ops: &'static [IoctlOp<Ctx>],
    /// One past the highest command number of any row: numbers from here up go to VFIO compat,
    /// as past the end of the kernel's array.
    end_nr: u32,
    vfio_compat: VfioCompatFn<Ctx>,
}

impl<Ctx: ?Sized + 'static> fmt::Debug for IoctlTable<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoctlTable")
            .field("ops", &self.ops)
            .field("end_nr", &self.end_nr)
            .finish()
    }
}

impl<Ctx: ?Sized + 'static> IoctlTable<Ctx> {
    /// A dispatcher over `ops`, sending VFIO-range numbers to `vfio_compat`.
    ///
    /// # Panics
    /// (At compile time when used in a `static`.) If a row's number is below
    /// [`IOMMUFD_CMD_BASE`] or two rows share a command number.
    pub const fn new(ops: &'static [IoctlOp<Ctx>], vfio_compat: VfioCompatFn<Ctx>) -> Self {
        let mut end_nr = IOMMUFD_CMD_BASE;
        let mut i = 0;
        while i < ops.len() {
            let nr = ioc_nr(ops[i].cmd);
            assert!(
                nr >= IOMMUFD_CMD_BASE,
                "iommufd ioctl numbers start at 0x80"
            );
            let mut j = i + 1;
            while j < ops.len() {
                assert!(
                    ioc_nr(ops[j].cmd) != nr,
                    "two rows with the same command number"
                );
                j += 1;
            }
            if nr + 1 > end_nr {
                end_nr = nr + 1;
            }
            i += 1;
        }
        IoctlTable {
            ops,
            end_nr,
            vfio_compat,
        }
    }

    /// The rows, in declaration order.
    pub fn ops(&self) -> &'static [IoctlOp<Ctx>] {
        self.ops
    }

    /// Run `ioctl(fd, cmd, arg)` on a context (`iommufd_fops_ioctl()`), with `user` as the
    /// caller's memory. Returns the ioctl's value (0 for every iommufd command).
    ///
    /// # Errors
    /// In check order: whatever the VFIO compat function returns for its range; `EFAULT` if
    /// the leading `u32` at `arg` is unreadable; `ENOTTY` for an unknown number or encoding;
    /// `EINVAL` below the row's minimum size; `E2BIG` for non-zero bytes past the struct (or
    /// `EFAULT` if they are unreadable); `EFAULT` if the struct is unreadable; then the
    /// handler's errors.
    pub fn dispatch(
        &self,
        ctx: &Ctx,
        user: &dyn UserMemory,
        cmd: u32,
        arg: u64,
    ) -> Result<i32, Errno> {
        let nr = ioc_nr(cmd);
        if nr < IOMMUFD_CMD_BASE || nr >= self.end_nr {
            return (self.vfio_compat)(ctx, user, cmd, arg);
        }
        let ubuffer = UserVa(arg);
        let mut size = [0u8; 4];
        user.read(ubuffer, &mut size)?;
        let user_size = u32::from_le_bytes(size);
        let op = self
            .ops
            .iter()
            .find(|op| ioc_nr(op.cmd) == nr)
            .filter(|op| op.cmd == cmd && op.present.is_none_or(|present| present(ctx)))
            .ok_or(Errno::ENOTTY)?;
        if (user_size as usize) < op.min_size {
            return Err(Errno::EINVAL);
        }
        (op.execute)(
            ctx,
            RawUcmd {
                user,
                ubuffer,
                user_size,
            },
        )?;
        Ok(0)
    }
}

/// A command that passed the size checks but is not decoded yet; only
/// [`op!`](crate::ioctl::op) rows use it.
#[doc(hidden)]
#[derive(Debug)]
pub struct RawUcmd<'a> {
    user: &'a dyn UserMemory,
    ubuffer: UserVa,
    user_size: u32,
}

impl<'a> RawUcmd<'a> {
    /// Decode a `T` (`copy_struct_from_user()`) and run `handler` on it.
    #[doc(hidden)]
    pub fn execute<Ctx: ?Sized, T>(self, ctx: &Ctx, handler: Handler<Ctx, T>) -> Result<(), Errno>
    where
        T: FromBytes + IntoBytes + Immutable + KnownLayout,
    {
        let cmd = copy_struct_from_user::<T>(self.user, self.ubuffer, self.user_size)?;
        let mut ucmd = Ucmd {
            cmd,
            user: self.user,
            ubuffer: self.ubuffer,
            user_size: self.user_size,
        };
        handler(ctx, &mut ucmd)
    }
}

/// Bytes per read while checking a long tail: tail reads never cross a page, so a non-zero
/// byte in a readable page is reported as `E2BIG` even if a later page is unmapped, as the
/// kernel's word-by-word `check_zeroed_user()` does.
const TAIL_CHUNK: u64 = 4096;

/// `copy_struct_from_user()`: `user_size` bytes at `src` into a zero-initialised `T`.
fn copy_struct_from_user<T: FromBytes + IntoBytes>(
    user: &dyn UserMemory,
    src: UserVa,
    user_size: u32,
) -> Result<T, Errno> {
    let ksize = std::mem::size_of::<T>() as u64;
    let usize_ = u64::from(user_size);
    if usize_ > ksize {
        check_zeroed_user(
            user,
            src.checked_add(ksize).ok_or(Errno::EFAULT)?,
            usize_ - ksize,
        )?;
    }
    let mut cmd = T::new_zeroed();
    let common = ksize.min(usize_) as usize;
    user.read(src, &mut cmd.as_mut_bytes()[..common])?;
    Ok(cmd)
}

/// `E2BIG` unless the `len` bytes at `from` are all zero; `EFAULT` if a page before the first
/// non-zero byte is unreadable or the range wraps.
fn check_zeroed_user(user: &dyn UserMemory, from: UserVa, len: u64) -> Result<(), Errno> {
    from.checked_add(len).ok_or(Errno::EFAULT)?;
    let mut buf = [0u8; TAIL_CHUNK as usize];
    let mut addr = from.0;
    let end = from.0 + len;
    while addr < end {
        let page_end = (addr / TAIL_CHUNK + 1).saturating_mul(TAIL_CHUNK);
        let n = (page_end.min(end) - addr) as usize;
        user.read(UserVa(addr), &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(Errno::E2BIG);
        }
        addr += n as u64;
    }
    Ok(())
}

/// A decoded command (`struct iommufd_ucmd`): the struct, and where it came from so the
/// handler can answer.
pub struct Ucmd<'a, T> {
    /// The caller's struct, zero-extended to our size; handlers read inputs from it and store
    /// outputs into it before [`Ucmd::respond`].
    pub cmd: T,
    user: &'a dyn UserMemory,
    ubuffer: UserVa,
    user_size: u32,
}

impl<T: fmt::Debug> fmt::Debug for Ucmd<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ucmd")
            .field("cmd", &self.cmd)
            .field("ubuffer", &self.ubuffer)
            .field("user_size", &self.user_size)
            .finish()
    }
}

impl<'a, T: IntoBytes + Immutable> Ucmd<'a, T> {
    /// The caller's memory, for the handler's own user pointers (`allowed_iovas`, `data_uptr`…).
    pub fn user(&self) -> &'a dyn UserMemory {
        self.user
    }

    /// The `size` the caller passed.
    pub fn user_size(&self) -> u32 {
        self.user_size
    }

    /// Where the caller's struct lives.
    pub fn ubuffer(&self) -> UserVa {
        self.ubuffer
    }

    /// Copy the whole struct back, truncated to the caller's size (`iommufd_ucmd_respond()`).
    ///
    /// # Errors
    /// `EFAULT` if the caller's struct is not writable.
    pub fn respond(&self) -> Result<(), Errno> {
        self.respond_bytes(0, std::mem::size_of::<T>())
    }

    /// Copy back only `len` bytes at `offset` of the struct (`IOMMU_OPTION` returns only
    /// `val64`), clipped like [`Ucmd::respond`] to the caller's size. Pass offsets from
    /// `offset_of!`.
    ///
    /// # Errors
    /// `EFAULT` if that part of the caller's struct is not writable.
    pub fn respond_bytes(&self, offset: usize, len: usize) -> Result<(), Errno> {
        let bytes = self.cmd.as_bytes();
        let limit = bytes.len().min(self.user_size as usize);
        let start = offset.min(limit);
        let end = offset.saturating_add(len).min(limit);
        if start == end {
            return Ok(());
        }
        let dst = self
            .ubuffer
            .checked_add(start as u64)
            .ok_or(Errno::EFAULT)?;
        self.user.write(dst, &bytes[start..end])?;
        Ok(())
    }
}
