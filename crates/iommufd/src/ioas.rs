//! The IOAS object and its ioctls (Linux `drivers/iommu/iommufd/ioas.c`).
//!
//! # Model
//! An [`Ioas`] is an I/O address space: one [`IoPagetable`] (areas, reserved and allowed ranges,
//! attached domains and accesses) living in a context's object table under
//! [`ObjectKind::Ioas`]. The handlers here translate the `IOMMU_IOAS_*` commands into engine
//! calls in the kernel's check order: flag and reserved-field checks (`EOPNOTSUPP`), value range
//! checks (`EOVERFLOW`), semantic checks (`EINVAL`), then the lookup, the work and the response.
//! Each lookup holds an [`ObjRef`](crate::object::ObjRef) for the duration of the ioctl, so
//! `IOMMU_DESTROY` of an IOAS in use answers `EBUSY` as in Linux.
//!
//! An IOAS is destroyed when its payload is dropped (the object table's destroy): every area is
//! released with its [`IoPagetable`], which unpins whatever was pinned. Nothing can still be
//! attached by then, because HWPTs and accesses hold a user on the IOAS.
//!
//! # Locking
//! The engine's `domains` → `iova` → pages locks cover every IOAS ioctl. The payload's one
//! lock of its own is the HWPT list's ([`HwptList`](crate::hwpt::HwptList), the kernel's
//! `ioas->mutex`), which [`crate::hwpt`] and [`crate::device`] take before the engine's.

use std::collections::BTreeMap;

use uiommu_core::addr::{Iova, Prot};
use zerocopy::IntoBytes;

use crate::abi::*;
use crate::ctx::Call;
use crate::errno::Errno;
use crate::failpoint::{should_fail, FailSite};
use crate::io_pagetable::{IoPagetable, IoptError, IovaPlacement, IovaRange};
use crate::ioctl::Ucmd;
use crate::object::{ObjId, ObjectKind, ObjectPayload};
use crate::pages::PageSource;
use crate::user_memory::{UserMemory, UserVa};

/// An I/O address space (`struct iommufd_ioas`).
///
/// Built only by [`Ioas::new`], so adding a field means extending that one constructor.
#[derive(Debug, Default)]
pub struct Ioas {
    /// The IOVA space: areas, reservations, allowed ranges, domains, accesses.
    iopt: IoPagetable,
    /// The paging HWPTs built on this IOAS (`ioas->hwpt_list` under `ioas->mutex`), see
    /// [`crate::hwpt`]: its lock comes before the engine's.
    pub(crate) hwpts: crate::hwpt::HwptList,
}

impl ObjectPayload for Ioas {
    const KIND: ObjectKind = ObjectKind::Ioas;
}

impl Ioas {
    /// An empty IOAS: no areas, alignment 1, large pages enabled (`iommufd_ioas_alloc()` minus
    /// the id, which the caller reserves).
    pub fn new() -> Ioas {
        Ioas {
            iopt: IoPagetable::new(),
            hwpts: crate::hwpt::HwptList::new(),
        }
    }

    /// The IOAS's IOVA engine (`ioas->iopt`).
    pub fn iopt(&self) -> &IoPagetable {
        &self.iopt
    }

    /// Whether every paging HWPT built on this IOAS enforces cache coherency: what VFIO's
    /// `VFIO_DMA_CC_IOMMU` extension reports (`iommufd_vfio_cc_iommu()`), true with no HWPT.
    pub fn hwpts_enforce_cache_coherency(&self) -> bool {
        self.hwpts.all_enforce_cache_coherency()
    }
}

/// The errno the kernel returns for an engine error.
pub(crate) fn iopt_errno(err: IoptError) -> Errno {
    Errno::from_raw(err.errno())
}

/// Where a mapping made by `call` takes its pages from and who pays for pinning them: the
/// caller's memory and memlock policy, charged in the context's RLIMIT_MODE.
pub(crate) fn page_source(call: &Call) -> PageSource {
    PageSource {
        memory: call.caller.memory.clone(),
        policy: call.caller.limits.clone(),
        rlimit_mode: call.ctx.rlimit_mode(),
    }
}

/// `IOMMU_IOAS_ALLOC` (`iommufd_ioas_alloc_ioctl()`): a new, empty IOAS.
///
/// # Errors
/// `flags` ≠ 0 → `EOPNOTSUPP`; `ENOMEM` (allocation or id); `EBUSY` (no id left); `EFAULT` if
/// the response cannot be written, in which case the id is never published.
pub(crate) fn alloc(call: &Call, ucmd: &mut Ucmd<'_, IommuIoasAlloc>) -> Result<(), Errno> {
    if ucmd.cmd.flags != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let reservation = call.ctx.objects().reserve::<Ioas>()?;
    let ioas = Ioas::new();
    ucmd.cmd.out_ioas_id = reservation.id().raw();
    ucmd.respond()?;
    reservation.finalize(ioas);
    Ok(())
}

/// `IOMMU_IOAS_IOVA_RANGES` (`iommufd_ioas_iova_ranges()`): the usable IOVA (the holes of the
/// reserved ranges; allowed ranges are not reflected) and the IOAS's alignment.
///
/// Writes up to `num_iovas` ranges to `allowed_iovas`, then always writes the struct back with
/// `num_iovas` set to the total and `out_iova_alignment`.
///
/// # Errors
/// `__reserved` ≠ 0 → `EOPNOTSUPP`; unknown IOAS → `ENOENT`; an unwritable array element or
/// struct → `EFAULT`; more ranges than `num_iovas` → `EMSGSIZE` (after the write-back).
pub(crate) fn iova_ranges(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuIoasIovaRanges>,
) -> Result<(), Errno> {
    if ucmd.cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let ioas = call.ctx.objects().get::<Ioas>(ObjId(ucmd.cmd.ioas_id))?;
    let capacity = ucmd.cmd.num_iovas;
    let holes = ioas.iopt.iova_ranges();
    ucmd.cmd.out_iova_alignment = ioas.iopt.iova_alignment();
    let array = UserVa(ucmd.cmd.allowed_iovas);
    for (i, hole) in holes.iter().take(capacity as usize).enumerate() {
        let element = IommuIovaRange {
            start: hole.start.0,
            last: hole.last.0,
        };
        write_element(ucmd.user(), array, i as u64, element.as_bytes())?;
    }
    // At most one hole per reservation plus one: far below u32::MAX in any real table.
    ucmd.cmd.num_iovas = u32::try_from(holes.len()).unwrap_or(u32::MAX);
    ucmd.respond()?;
    if holes.len() > capacity as usize {
        return Err(Errno::EMSGSIZE);
    }
    Ok(())
}

/// Size of one `struct iommu_iova_range`.
const RANGE_SIZE: u64 = std::mem::size_of::<IommuIovaRange>() as u64;

/// Write `bytes` as element `index` of the user array at `array` (`EFAULT` on wraparound or
/// an unwritable element).
fn write_element(
    user: &dyn UserMemory,
    array: UserVa,
    index: u64,
    bytes: &[u8],
) -> Result<(), Errno> {
    let at = index
        .checked_mul(bytes.len() as u64)
        .and_then(|offset| array.checked_add(offset))
        .ok_or(Errno::EFAULT)?;
    user.write(at, bytes)?;
    Ok(())
}

/// Elements per read while loading an allowed-IOVA array: one page's worth.
const LOAD_BATCH: u64 = 4096 / RANGE_SIZE;

/// Read and validate `num` allowed ranges at `array`, in list order
/// (`iommufd_ioas_load_iovas()`).
///
/// # Errors
/// For the first element that fails, in order: unreadable → `EFAULT`; `start >= last` →
/// `EINVAL`; overlapping an earlier element → `EINVAL`; allocation failure → `ENOMEM`.
fn load_iovas(user: &dyn UserMemory, array: UserVa, num: u32) -> Result<Vec<IovaRange>, Errno> {
    // Non-overlapping so far: start → last, searched like the kernel's interval tree.
    let mut loaded: BTreeMap<u64, u64> = BTreeMap::new();
    let mut batch = vec![IommuIovaRange::default(); LOAD_BATCH as usize];
    let mut index = 0u64;
    while index < u64::from(num) {
        let count = LOAD_BATCH.min(u64::from(num) - index) as usize;
        let elements = &mut batch[..count];
        let start = index
            .checked_mul(RANGE_SIZE)
            .and_then(|offset| array.checked_add(offset));
        let whole = start.is_some_and(|at| user.read(at, elements.as_mut_bytes()).is_ok());
        for (k, element) in elements.iter_mut().enumerate() {
            if !whole {
                // Some element of this batch is unreadable: read one at a time, so that the
                // elements before it are validated first, as the kernel's loop does.
                read_element(user, array, index + k as u64, element)?;
            }
            let (first, last) = (element.start, element.last);
            if first >= last {
                return Err(Errno::EINVAL);
            }
            let overlaps = loaded
                .range(..=last)
                .next_back()
                .is_some_and(|(_, &prev_last)| prev_last >= first);
            if overlaps {
                return Err(Errno::EINVAL);
            }
            if should_fail(FailSite::Alloc) {
                return Err(Errno::ENOMEM);
            }
            loaded.insert(first, last);
        }
        index += count as u64;
    }
    Ok(loaded
        .into_iter()
        .map(|(start, last)| IovaRange::new(start, last))
        .collect())
}

/// Read element `index` of the user array at `array` into `element`.
fn read_element(
    user: &dyn UserMemory,
    array: UserVa,
    index: u64,
    element: &mut IommuIovaRange,
) -> Result<(), Errno> {
    let at = index
        .checked_mul(RANGE_SIZE)
        .and_then(|offset| array.checked_add(offset))
        .ok_or(Errno::EFAULT)?;
    user.read(at, element.as_mut_bytes())?;
    Ok(())
}

/// `IOMMU_IOAS_ALLOW_IOVAS` (`iommufd_ioas_allow_iovas()`): replace the ranges automatic IOVA
/// allocation may use; an empty list allows everything again. All or nothing.
///
/// # Errors
/// `__reserved` ≠ 0 → `EOPNOTSUPP`; unknown IOAS → `ENOENT`; then as `load_iovas` (`EFAULT`,
/// `EINVAL`, `ENOMEM`); a range that intersects a reservation → `EADDRINUSE`, keeping the old
/// list.
pub(crate) fn allow_iovas(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuIoasAllowIovas>,
) -> Result<(), Errno> {
    if ucmd.cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let ioas = call.ctx.objects().get::<Ioas>(ObjId(ucmd.cmd.ioas_id))?;
    let ranges = load_iovas(
        ucmd.user(),
        UserVa(ucmd.cmd.allowed_iovas),
        ucmd.cmd.num_iovas,
    )?;
    ioas.iopt.set_allowed_iovas(&ranges).map_err(iopt_errno)
}

/// The flags `IOMMU_IOAS_MAP` and `IOMMU_IOAS_COPY` accept.
const MAP_FLAGS: u32 =
    IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

/// The protection of a mapping made with `IOMMU_IOAS_MAP_*` flags (`conv_iommu_prot()`; the
/// kernel's `IOMMU_CACHE` is implied, since binding demands coherent devices).
fn map_prot(flags: u32) -> Prot {
    let mut prot = Prot::NONE;
    if flags & IOMMU_IOAS_MAP_WRITEABLE != 0 {
        prot = prot.union(Prot::WRITE);
    }
    if flags & IOMMU_IOAS_MAP_READABLE != 0 {
        prot = prot.union(Prot::READ);
    }
    prot
}

/// Where a mapping goes: at `iova` with `FIXED_IOVA`, else wherever the engine finds room.
fn placement(flags: u32, iova: u64) -> IovaPlacement {
    if flags & IOMMU_IOAS_MAP_FIXED_IOVA != 0 {
        IovaPlacement::Fixed(Iova(iova))
    } else {
        IovaPlacement::Auto
    }
}

/// `IOMMU_IOAS_MAP` (`iommufd_ioas_map()`): map `[user_va, user_va + length)` of the caller's
/// memory at a fixed or automatic IOVA and report the IOVA. An automatic IOVA keeps the
/// in-page offset of `user_va`. With no domain attached nothing is pinned yet.
///
/// # Errors
/// Unknown flags or `__reserved` ≠ 0 → `EOPNOTSUPP`; `iova` or `length` = `u64::MAX` →
/// `EOVERFLOW`; neither READABLE nor WRITEABLE → `EINVAL`; unknown IOAS → `ENOENT`; then the
/// engine's errors in its order (see [`IoPagetable::map_user_pages`]): `EINVAL`, `EOVERFLOW`,
/// `ENOMEM`, `ENOSPC`, `EEXIST`, and with domains `EFAULT`, `ENOMEM`, domain errors; `EFAULT`
/// if the response cannot be written (the mapping stays, as in Linux).
pub(crate) fn map(call: &Call, ucmd: &mut Ucmd<'_, IommuIoasMap>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags & !MAP_FLAGS != 0 || cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.iova == u64::MAX || cmd.length == u64::MAX {
        return Err(Errno::EOVERFLOW);
    }
    if cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) == 0 {
        return Err(Errno::EINVAL);
    }
    let ioas = call.ctx.objects().get::<Ioas>(ObjId(cmd.ioas_id))?;
    let iova = ioas
        .iopt
        .map_user_pages(
            &page_source(call),
            UserVa(cmd.user_va),
            cmd.length,
            map_prot(cmd.flags),
            placement(cmd.flags, cmd.iova),
        )
        .map_err(iopt_errno)?;
    ucmd.cmd.iova = iova.0;
    ucmd.respond()
}

/// `IOMMU_IOAS_COPY` (`iommufd_ioas_copy()`): map the pages behind
/// `[src_iova, src_iova + length)` of one IOAS into another (or the same) at a fixed or
/// automatic IOVA, sharing the pages: nothing is pinned or charged twice.
///
/// # Errors
/// Unknown flags → `EOPNOTSUPP`; `length`, `src_iova` or `dst_iova` = `u64::MAX` →
/// `EOVERFLOW`; neither READABLE nor WRITEABLE → `EINVAL`; unknown source IOAS → `ENOENT`;
/// source range: length 0 → `EINVAL`, wraps → `EOVERFLOW`, not fully covered by contiguous
/// areas → `ENOENT`; unknown destination IOAS → `ENOENT`; then as `IOMMU_IOAS_MAP`'s
/// placement, plus `EPERM` for a writable copy of read-only pages.
pub(crate) fn copy(call: &Call, ucmd: &mut Ucmd<'_, IommuIoasCopy>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags & !MAP_FLAGS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.length == u64::MAX || cmd.src_iova == u64::MAX || cmd.dst_iova == u64::MAX {
        return Err(Errno::EOVERFLOW);
    }
    if cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) == 0 {
        return Err(Errno::EINVAL);
    }
    let objects = call.ctx.objects();
    let pages = {
        let src = objects.get::<Ioas>(ObjId(cmd.src_ioas_id))?;
        src.iopt
            .get_pages(Iova(cmd.src_iova), cmd.length)
            .map_err(iopt_errno)?
    };
    let dst = objects.get::<Ioas>(ObjId(cmd.dst_ioas_id))?;
    let iova = dst
        .iopt
        .map_pages(
            &pages,
            map_prot(cmd.flags),
            placement(cmd.flags, cmd.dst_iova),
        )
        .map_err(iopt_errno)?;
    ucmd.cmd.dst_iova = iova.0;
    ucmd.respond()
}

/// `IOMMU_IOAS_UNMAP` (`iommufd_ioas_unmap()`): unmap every area inside
/// `[iova, iova + length)` and report the bytes unmapped. Areas are never cut; `(0, u64::MAX)`
/// unmaps everything and succeeds even when nothing was mapped.
///
/// # Errors
/// Unknown IOAS → `ENOENT`; outside the unmap-all form, `iova` or `length` = `u64::MAX` →
/// `EOVERFLOW`, `length` 0 → `EINVAL`, `iova + length - 1` wraps → `EOVERFLOW`; an area
/// crossing the range's edge → `ENOENT` (areas already removed stay removed); an area still
/// being created → `EBUSY`; accesses that never let go → `EDEADLOCK`; nothing unmapped →
/// `ENOENT`; `EFAULT` if the response cannot be written.
pub(crate) fn unmap(call: &Call, ucmd: &mut Ucmd<'_, IommuIoasUnmap>) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    let ioas = call.ctx.objects().get::<Ioas>(ObjId(cmd.ioas_id))?;
    let unmapped = if cmd.iova == 0 && cmd.length == u64::MAX {
        ioas.iopt.unmap_all().map_err(iopt_errno)?
    } else {
        if cmd.iova == u64::MAX || cmd.length == u64::MAX {
            return Err(Errno::EOVERFLOW);
        }
        match ioas.iopt.unmap_iova(Iova(cmd.iova), cmd.length) {
            Ok(0) => return Err(Errno::ENOENT),
            Ok(unmapped) => unmapped,
            Err(err) => return Err(iopt_errno(err)),
        }
    };
    ucmd.cmd.length = unmapped;
    ucmd.respond()
}

/// `IOMMU_OPTION_HUGE_PAGES` on the IOAS `object_id` (`iommufd_ioas_option()`): GET reports
/// whether large IO pages are allowed; SET 0 disables them (as VFIO type1 needs), SET 1
/// enables them. The dispatcher of [`crate::option`] has checked `__reserved` already.
///
/// # Errors
/// Unknown IOAS (including id 0) → `ENOENT`; SET 0 while the IOAS has both domains and areas →
/// `EINVAL`, or with areas that break `PAGE_SIZE` alignment → `EADDRINUSE`; SET with another
/// value → `EINVAL`; another op → `EOPNOTSUPP`.
pub(crate) fn huge_pages_option(call: &Call, cmd: &mut IommuOption) -> Result<(), Errno> {
    let ioas = call.ctx.objects().get::<Ioas>(ObjId(cmd.object_id))?;
    match cmd.op {
        IOMMU_OPTION_OP_GET => {
            cmd.val64 = u64::from(ioas.iopt.large_pages_enabled());
            Ok(())
        }
        IOMMU_OPTION_OP_SET => match cmd.val64 {
            0 => ioas.iopt.disable_large_pages().map_err(iopt_errno),
            1 => {
                ioas.iopt.enable_large_pages();
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        },
        _ => Err(Errno::EOPNOTSUPP),
    }
}

/// `IOMMU_IOAS_CHANGE_PROCESS` (`iommufd_ioas_change_process()`, 7.3): move the pin
/// accounting of every file-backed mapping to the caller. uiommu maps no files yet (no
/// `IOMMU_IOAS_MAP_FILE`), so every area is one the command refuses, and with no areas there
/// is nothing to move.
///
/// # Errors
/// `__reserved` → `EOPNOTSUPP`; then, over the IOASes in id order and their areas in IOVA
/// order, the first area decides: one being created or destroyed → `EBUSY`, any other (not
/// file-backed) → `EINVAL`.
pub(crate) fn change_process(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuIoasChangeProcess>,
) -> Result<(), Errno> {
    if ucmd.cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let objects = call.ctx.objects();
    for id in objects.ids_of_kind(ObjectKind::Ioas) {
        let Ok(ioas) = objects.get::<Ioas>(id) else {
            continue;
        };
        match ioas.iopt().first_area_busy() {
            Some(true) => return Err(Errno::EBUSY),
            Some(false) => return Err(Errno::EINVAL),
            None => {}
        }
    }
    Ok(())
}
