//! VFIO type1 container compatibility on the iommufd file (Linux
//! `drivers/iommu/iommufd/vfio_compat.c`): the `VFIO_*` ioctls with numbers below 0x80, served
//! on the context's *compat IOAS*, and `IOMMU_VFIO_IOAS`, which picks that IOAS.
//!
//! # Model
//! VFIO's container ABI has no IOAS id, so each context remembers one IOAS for it. The context
//! names it without holding it (a [`WeakRef`], like the kernel's bare `ictx->vfio_ioas`
//! pointer): `IOMMU_DESTROY` of that IOAS succeeds as for any other, after which the compat
//! ioctls answer `ENODEV` as they do when none was chosen. The compat IOAS is chosen with
//! `IOMMU_VFIO_IOAS_SET`, or created on first need by [`IommufdCtx::vfio_compat_ioas_create`]
//! (what attaching a VFIO group does in Linux).
//!
//! Type1 and type1v2 differ only in unmapping: type1 may unmap part of a mapping. Setting
//! type1 disables large IO pages on the compat IOAS, after which an unmap first cuts the areas
//! at the edges of its range ([`IoPagetable::cut_iova`]); type1v2 unmaps whole areas only.
//! Unmapping a range with nothing in it succeeds with 0 bytes, unlike `IOMMU_IOAS_UNMAP`.
//!
//! # Locking
//! The compat slot has its own mutex, held only to read or replace the name, and while
//! publishing a newly created compat IOAS (it is taken before the object table's mutex, which
//! is a leaf). Ioctls work on an [`ObjRef`] looked up from the name, so the slot lock is never
//! held across engine calls.

use std::sync::{MutexGuard, PoisonError};

use uiommu_core::addr::{Iova, Prot};
use zerocopy::{FromBytes, IntoBytes};

use crate::abi::*;
use crate::ctx::{Call, IommufdCtx};
use crate::errno::Errno;
use crate::io_pagetable::{IoPagetable, IovaPlacement, IovaRange};
use crate::ioas::{iopt_errno, page_source, Ioas};
use crate::ioctl::Ucmd;
use crate::object::{ObjId, ObjRef, WeakRef};
use crate::user_memory::{UserMemory, UserVa, PAGE_SIZE};

impl IommufdCtx {
    fn vfio_slot(&self) -> MutexGuard<'_, Option<WeakRef<Ioas>>> {
        self.vfio_ioas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The compat IOAS, pinned for the caller (`get_compat_ioas()`).
    ///
    /// # Errors
    /// `ENODEV` when none is set, or it was destroyed.
    fn compat_ioas(&self) -> Result<ObjRef<'_, Ioas>, Errno> {
        let weak = self.vfio_slot().clone().ok_or(Errno::ENODEV)?;
        self.objects().upgrade(&weak).map_err(|_| Errno::ENODEV)
    }

    /// The id of the compat IOAS (`iommufd_vfio_compat_ioas_get_id()`), for a VFIO layer that
    /// attaches devices to it.
    ///
    /// # Errors
    /// `ENODEV` when there is none.
    pub fn vfio_compat_ioas_id(&self) -> Result<ObjId, Errno> {
        Ok(self.compat_ioas()?.id())
    }

    /// Make sure a compat IOAS exists, creating one if none is set
    /// (`iommufd_vfio_compat_ioas_create()`, what attaching a VFIO group to a container does).
    /// A created IOAS is an ordinary user object: `IOMMU_VFIO_IOAS_GET` reports it, and it
    /// lives until destroyed or until the context closes.
    ///
    /// # Errors
    /// `ENOMEM` or `EBUSY` when no object can be created; nothing changes then.
    pub fn vfio_compat_ioas_create(&self) -> Result<(), Errno> {
        let reservation = self.objects().reserve::<Ioas>()?;
        let ioas = Ioas::new();
        let mut slot = self.vfio_slot();
        if let Some(existing) = slot.as_ref() {
            if self.objects().upgrade(existing).is_ok() {
                return Ok(());
            }
        }
        // Publishing with an owner reference is what hands back a name for the slot; the
        // owner's reference is dropped at once, leaving the object like any other.
        let owner = reservation.finalize_owned(ioas);
        *slot = Some(owner.downgrade());
        Ok(())
    }
}

/// `IOMMU_VFIO_IOAS` (`iommufd_vfio_ioas()`): GET reports the compat IOAS, SET chooses one,
/// CLEAR forgets it.
///
/// # Errors
/// `__reserved` ≠ 0 → `EOPNOTSUPP`; GET with no compat IOAS → `ENODEV`; SET of an unknown IOAS
/// → `ENOENT`; another op → `EOPNOTSUPP`; `EFAULT` if GET's response cannot be written.
pub(crate) fn vfio_ioas(call: &Call, ucmd: &mut Ucmd<'_, IommuVfioIoas>) -> Result<(), Errno> {
    if ucmd.cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let ctx = &call.ctx;
    match ucmd.cmd.op {
        IOMMU_VFIO_IOAS_GET => {
            ucmd.cmd.ioas_id = ctx.compat_ioas()?.id().raw();
            ucmd.respond()
        }
        IOMMU_VFIO_IOAS_SET => {
            let ioas = ctx.objects().get::<Ioas>(ObjId(ucmd.cmd.ioas_id))?;
            *ctx.vfio_slot() = Some(ioas.downgrade());
            Ok(())
        }
        IOMMU_VFIO_IOAS_CLEAR => {
            *ctx.vfio_slot() = None;
            Ok(())
        }
        _ => Err(Errno::EOPNOTSUPP),
    }
}

/// The VFIO container ioctls (`iommufd_vfio_ioctl()`): numbers below 0x80 and past the iommufd
/// table. `arg` is an integer for `VFIO_CHECK_EXTENSION` and `VFIO_SET_IOMMU`, a pointer into
/// `user` otherwise.
///
/// # Errors
/// Each command's own, and `ENOTTY` for any other number, `VFIO_IOMMU_DIRTY_PAGES` included
/// (iommufd's dirty tracking replaces it).
pub(crate) fn ioctl(call: &Call, user: &dyn UserMemory, cmd: u32, arg: u64) -> Result<i32, Errno> {
    let ctx = &call.ctx;
    match cmd {
        VFIO_GET_API_VERSION => Ok(VFIO_API_VERSION),
        VFIO_SET_IOMMU => set_iommu(ctx, arg),
        VFIO_CHECK_EXTENSION => check_extension(ctx, arg),
        VFIO_IOMMU_GET_INFO => get_info(ctx, user, UserVa(arg)),
        VFIO_IOMMU_MAP_DMA => map_dma(call, user, UserVa(arg)),
        VFIO_IOMMU_UNMAP_DMA => unmap_dma(ctx, user, UserVa(arg)),
        _ => Err(Errno::ENOTTY),
    }
}

/// `VFIO_CHECK_EXTENSION` (`iommufd_vfio_check_extension()`): 1 for what the compat layer
/// implements, 0 otherwise. No-IOMMU mode is not modelled (the kernel's
/// `CONFIG_VFIO_NOIOMMU` off), so `VFIO_NOIOMMU_IOMMU` is 0 and type1 is always offered.
///
/// # Errors
/// `VFIO_DMA_CC_IOMMU` with no compat IOAS → `ENODEV`.
fn check_extension(ctx: &IommufdCtx, extension: u64) -> Result<i32, Errno> {
    const TYPE1: u64 = VFIO_TYPE1_IOMMU as u64;
    const TYPE1V2: u64 = VFIO_TYPE1V2_IOMMU as u64;
    const UNMAP_ALL: u64 = VFIO_UNMAP_ALL as u64;
    const DMA_CC: u64 = VFIO_DMA_CC_IOMMU as u64;
    match extension {
        TYPE1 | TYPE1V2 | UNMAP_ALL => Ok(1),
        DMA_CC => {
            let ioas = ctx.compat_ioas()?;
            Ok(i32::from(ioas.hwpts_enforce_cache_coherency()))
        }
        _ => Ok(0),
    }
}

/// `VFIO_SET_IOMMU` (`iommufd_vfio_set_iommu()`): type1 disables large IO pages on the compat
/// IOAS so any mapping can later be cut; type1v2 changes nothing.
///
/// # Errors
/// A type other than type1 or type1v2 → `EINVAL`; no compat IOAS → `ENODEV`; type1 on an
/// IOAS with both domains and areas → `EINVAL` (or `EADDRINUSE` for misaligned areas).
fn set_iommu(ctx: &IommufdCtx, iommu_type: u64) -> Result<i32, Errno> {
    let type1 = iommu_type == u64::from(VFIO_TYPE1_IOMMU);
    if !type1 && iommu_type != u64::from(VFIO_TYPE1V2_IOMMU) {
        return Err(Errno::EINVAL);
    }
    let ioas = ctx.compat_ioas()?;
    if type1 {
        ioas.iopt().disable_large_pages().map_err(iopt_errno)?;
    }
    Ok(0)
}

/// Read the first `size_of::<T>()` bytes of a VFIO command at `at` (`copy_from_user(minsz)`).
fn read_cmd<T: FromBytes + IntoBytes>(user: &dyn UserMemory, at: UserVa) -> Result<T, Errno> {
    let mut cmd = T::new_zeroed();
    user.read(at, cmd.as_mut_bytes())?;
    Ok(cmd)
}

/// `user.write(base + offset, bytes)`, with `EFAULT` for an address that wraps.
fn write_at(user: &dyn UserMemory, base: UserVa, offset: u64, bytes: &[u8]) -> Result<(), Errno> {
    let at = base.checked_add(offset).ok_or(Errno::EFAULT)?;
    user.write(at, bytes)?;
    Ok(())
}

/// The page sizes VFIO reports (`iommufd_get_pagesizes()`): what every domain supports, with
/// sizes below `PAGE_SIZE` folded into `PAGE_SIZE`, and at least the IOAS's alignment.
fn pagesizes(iopt: &IoPagetable) -> u64 {
    let mut bitmap = iopt.domains_pgsize_bitmap();
    let page_mask = !(PAGE_SIZE - 1);
    if bitmap & !page_mask != 0 {
        bitmap = (bitmap & page_mask) | PAGE_SIZE;
    }
    bitmap.max(iopt.iova_alignment())
}

/// `offsetofend(struct vfio_iommu_type1_info, iova_pgsizes)`: the part every caller provides.
const INFO_MINSZ: u32 = 16;
/// `sizeof(struct vfio_iommu_type1_info)`: where the capability chain starts.
const INFO_SIZE: u64 = std::mem::size_of::<VfioIommuType1Info>() as u64;
/// Offset of `next` in a capability header.
const CAP_NEXT_OFFSET: u64 = std::mem::offset_of!(VfioInfoCapHeader, next) as u64;

/// Capabilities are laid out at 8-byte boundaries.
fn align_cap(size: u64) -> u64 {
    size.next_multiple_of(8)
}

/// Write the DMA_AVAIL capability at `arg + at` if `avail` bytes fit it
/// (`iommufd_fill_cap_dma_avail()`); returns its unaligned size either way.
fn fill_cap_dma_avail(
    user: &dyn UserMemory,
    arg: UserVa,
    at: u64,
    avail: u64,
) -> Result<u64, Errno> {
    let cap = VfioIommuType1InfoDmaAvail {
        header: VfioInfoCapHeader {
            id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
            version: 1,
            next: 0,
        },
        // iommufd's limit is the memory cgroup's, not a count: report the most VFIO can say.
        avail: u32::MAX,
    };
    let size = std::mem::size_of_val(&cap) as u64;
    if avail >= size {
        write_at(user, arg, at, cap.as_bytes())?;
    }
    Ok(size)
}

/// Write as much of the IOVA_RANGE capability at `arg + at` as `avail` bytes hold: each range
/// that fits whole, and the header only if all of them fit (`iommufd_fill_cap_iova()`). Returns
/// the capability's full unaligned size.
fn fill_cap_iova(
    user: &dyn UserMemory,
    arg: UserVa,
    at: u64,
    avail: u64,
    holes: &[IovaRange],
) -> Result<u64, Errno> {
    let header_size = std::mem::size_of::<VfioIommuType1InfoCapIovaRange>() as u64;
    let range_size = std::mem::size_of::<VfioIovaRange>() as u64;
    let size_with = |n: u64| header_size + n * range_size;
    for (i, hole) in (0u64..).zip(holes) {
        if avail >= size_with(i + 1) {
            let range = VfioIovaRange {
                start: hole.start.0,
                end: hole.last.0,
            };
            write_at(user, arg, at + size_with(i), range.as_bytes())?;
        }
    }
    let nr = holes.len() as u64;
    if avail >= size_with(nr) {
        let cap = VfioIommuType1InfoCapIovaRange {
            header: VfioInfoCapHeader {
                id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
                version: 1,
                next: 0,
            },
            nr_iovas: u32::try_from(nr).unwrap_or(u32::MAX),
            reserved: 0,
        };
        write_at(user, arg, at, cap.as_bytes())?;
    }
    Ok(size_with(nr))
}

/// `VFIO_IOMMU_GET_INFO` (`iommufd_vfio_iommu_get_info()`): page sizes, then a capability
/// chain after the struct (DMA_AVAIL, then IOVA_RANGE with the usable IOVA), written only as
/// far as the caller's `argsz` reaches. `argsz` comes back as the size the whole chain needs,
/// `cap_offset` is set only when it all fit, and nothing is written past `argsz`.
///
/// # Errors
/// Unreadable struct → `EFAULT`; `argsz` below 16 → `EINVAL`; no compat IOAS → `ENODEV`;
/// unwritable capability or struct → `EFAULT`.
fn get_info(ctx: &IommufdCtx, user: &dyn UserMemory, arg: UserVa) -> Result<i32, Errno> {
    let mut head = [0u8; INFO_MINSZ as usize];
    user.read(arg, &mut head)?;
    let mut info = VfioIommuType1Info::default();
    info.as_mut_bytes()[..head.len()].copy_from_slice(&head);
    if info.argsz < INFO_MINSZ {
        return Err(Errno::EINVAL);
    }
    let reply_size = (info.argsz as usize).min(INFO_SIZE as usize);
    let argsz = u64::from(info.argsz);
    let ioas = ctx.compat_ioas()?;
    info.flags = VFIO_IOMMU_INFO_PGSIZES;
    info.iova_pgsizes = pagesizes(ioas.iopt());
    info.cap_offset = 0;

    let holes = ioas.iopt().iova_ranges();
    let mut total = INFO_SIZE;
    let mut last_cap: Option<u64> = None;
    for cap in 0..2 {
        let avail = argsz.saturating_sub(total);
        let size = if cap == 0 {
            fill_cap_dma_avail(user, arg, total, avail)?
        } else {
            fill_cap_iova(user, arg, total, avail, &holes)?
        };
        if let Some(previous) = last_cap {
            if argsz >= total {
                let next = u32::try_from(total).map_err(|_| Errno::EFAULT)?;
                write_at(user, arg, previous + CAP_NEXT_OFFSET, next.as_bytes())?;
            }
        }
        last_cap = Some(total);
        total += align_cap(size);
    }

    if argsz >= total {
        info.cap_offset = INFO_SIZE as u32;
    }
    info.argsz = u32::try_from(total).unwrap_or(u32::MAX);
    info.flags |= VFIO_IOMMU_INFO_CAPS;
    user.write(arg, &info.as_bytes()[..reply_size])?;
    Ok(0)
}

/// `offsetofend(struct vfio_iommu_type1_dma_map, size)`.
const MAP_MINSZ: u32 = std::mem::size_of::<VfioIommuType1DmaMap>() as u32;

/// `VFIO_IOMMU_MAP_DMA` (`iommufd_vfio_map_dma()`): map `[vaddr, vaddr + size)` at exactly
/// `iova` in the compat IOAS, charged in the context's RLIMIT_MODE. Flags 0 is accepted and
/// maps with no device access, as in Linux.
///
/// # Errors
/// Unreadable struct → `EFAULT`; `argsz` below 32 or flags other than READ/WRITE → `EINVAL`;
/// no compat IOAS → `ENODEV`; then as `IOMMU_IOAS_MAP` with a fixed IOVA.
fn map_dma(call: &Call, user: &dyn UserMemory, arg: UserVa) -> Result<i32, Errno> {
    let map: VfioIommuType1DmaMap = read_cmd(user, arg)?;
    if map.argsz < MAP_MINSZ || map.flags & !(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) != 0
    {
        return Err(Errno::EINVAL);
    }
    let mut prot = Prot::NONE;
    if map.flags & VFIO_DMA_MAP_FLAG_READ != 0 {
        prot = prot.union(Prot::READ);
    }
    if map.flags & VFIO_DMA_MAP_FLAG_WRITE != 0 {
        prot = prot.union(Prot::WRITE);
    }
    let ioas = call.ctx.compat_ioas()?;
    ioas.iopt()
        .map_user_pages(
            &page_source(call),
            UserVa(map.vaddr),
            map.size,
            prot,
            IovaPlacement::Fixed(Iova(map.iova)),
        )
        .map_err(iopt_errno)?;
    Ok(0)
}

/// `offsetofend(struct vfio_iommu_type1_dma_unmap, size)`.
const UNMAP_MINSZ: u32 = std::mem::size_of::<VfioIommuType1DmaUnmap>() as u32;

/// `VFIO_IOMMU_UNMAP_DMA` (`iommufd_vfio_unmap_dma()`): unmap `[iova, iova + size)` (or
/// everything with `VFIO_DMA_UNMAP_FLAG_ALL`) from the compat IOAS and write the bytes
/// unmapped back to `size`. In type1 mode (large pages disabled) the areas are first cut at
/// `iova - 1` and `iova + size - 1`, so part of a mapping can go; in type1v2 an area crossing
/// the range's edge fails with `ENOENT`. An empty range succeeds with 0 bytes.
///
/// # Errors
/// Unreadable struct → `EFAULT`; `argsz` below 24 or flags other than ALL → `EINVAL`; no compat
/// IOAS → `ENODEV`; ALL with a non-zero `iova` or `size` → `EINVAL`; a refused cut (`EBUSY`,
/// `EINVAL`, `ENOMEM`) with nothing written back; then the unmap's errors (`EINVAL` for size 0,
/// `EOVERFLOW`, `ENOENT`, `EBUSY`, `EDEADLOCK`), after writing `size` back; `EFAULT` if that
/// write fails.
fn unmap_dma(ctx: &IommufdCtx, user: &dyn UserMemory, arg: UserVa) -> Result<i32, Errno> {
    let mut unmap: VfioIommuType1DmaUnmap = read_cmd(user, arg)?;
    if unmap.argsz < UNMAP_MINSZ || unmap.flags & !VFIO_DMA_UNMAP_FLAG_ALL != 0 {
        return Err(Errno::EINVAL);
    }
    let ioas = ctx.compat_ioas()?;
    let iopt = ioas.iopt();
    let result = if unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 {
        if unmap.iova != 0 || unmap.size != 0 {
            return Err(Errno::EINVAL);
        }
        iopt.unmap_all()
    } else {
        if !iopt.large_pages_enabled() {
            // The cut points are the range's last byte and the byte before it; address
            // arithmetic wraps as the kernel's unsigned long does, and a range starting at 0
            // needs no cut in front.
            let cuts = [
                Iova(unmap.iova.wrapping_add(unmap.size).wrapping_sub(1)),
                Iova(unmap.iova.wrapping_sub(1)),
            ];
            let count = if unmap.iova == 0 { 1 } else { 2 };
            iopt.cut_iova(&cuts[..count]).map_err(iopt_errno)?;
        }
        iopt.unmap_iova(Iova(unmap.iova), unmap.size)
    };
    // The engine does not report partial progress of a failed unmap: 0 is written then.
    unmap.size = *result.as_ref().unwrap_or(&0);
    user.write(arg, unmap.as_bytes())?;
    result.map(|_| 0).map_err(iopt_errno)
}
