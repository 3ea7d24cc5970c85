//! ACCESS objects: in-process users of an IOAS that read, write and pin its pages without a
//! domain (Linux `struct iommufd_access` in `device.c`), such as emulated devices (VFIO mdev)
//! and the selftest's access fds.
//!
//! # Model
//! A driver creates an [`Access`] with [`create`], handing over its [`AccessOps`] (the kernel's
//! `iommufd_access_ops` plus `data`), and keeps the returned long-term reference until
//! [`destroy`]. The access attaches to one IOAS at a time; while attached it holds a user on the
//! IOAS and is registered with its io page table, which raises the IOAS alignment to
//! `PAGE_SIZE` if the access pins pages, and which calls [`AccessOps::unmap`] when an
//! `IOMMU_IOAS_UNMAP` hits pages the access pinned. The driver must then unpin everything
//! intersecting the range; the unmap retries and gives up with `EDEADLOCK` after 100 tries.
//!
//! The access names its ops weakly: the driver object owns the access, not the reverse, so the
//! driver's last reference going away is what releases both (an access fd's close).
//!
//! # Locking
//! One mutex per access (the kernel's `ioas_lock`) over which IOAS it is attached to; pins,
//! unpins and copies hold it around the io page table call. It is released while the driver's
//! unmap callback runs on a change of IOAS, because that callback unpins. Lock order: the
//! driver's own lock → access → io page table.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use uiommu_core::Iova;

use crate::ctx::IommufdCtx;
use crate::errno::Errno;
use crate::io_pagetable::{AccessId, AccessPath, AccessUnmapNotify};
use crate::ioas::{iopt_errno, Ioas};
use crate::object::{ObjId, ObjectKind, ObjectPayload, UsersRef};
use crate::pages::RwBuf;
use crate::user_memory::{UserVa, PAGE_SIZE};

/// What the driver behind an access must do (`struct iommufd_access_ops`).
pub trait AccessOps: Send + Sync + fmt::Debug {
    /// Unpin every range pinned through the access that intersects `[iova, iova + length)`
    /// (`ops->unmap`). Called with no iommufd lock held; may call
    /// [`Access::unpin_pages`].
    fn unmap(&self, iova: Iova, length: u64);
}

/// What the io page table calls on unmap: forwards to the driver while it exists.
#[derive(Debug)]
struct Notifier {
    ops: Weak<dyn AccessOps>,
}

impl AccessUnmapNotify for Notifier {
    fn unmap(&self, iova: Iova, length: u64) {
        // A driver that is going away is unpinning everything itself.
        if let Some(ops) = self.ops.upgrade() {
            ops.unmap(iova, length);
        }
    }
}

#[derive(Debug, Default)]
struct AccessState {
    /// The IOAS pins and copies go to; `None` while detached or changing IOAS.
    ioas: Option<UsersRef<Ioas>>,
    /// The IOAS unpins go to (`ioas_unpin`): stays set while a change of IOAS notifies the
    /// driver, so the driver can unpin what it pinned in the old one.
    ioas_unpin: Option<UsersRef<Ioas>>,
    /// The access's slot in `ioas_unpin`'s io page table.
    list_id: Option<AccessId>,
}

/// An ACCESS object (`struct iommufd_access`).
pub struct Access {
    needs_pin_pages: bool,
    ops: Weak<dyn AccessOps>,
    notifier: Arc<Notifier>,
    state: Mutex<AccessState>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("needs_pin_pages", &self.needs_pin_pages)
            .field("ioas", &self.ioas_id())
            .finish()
    }
}

impl ObjectPayload for Access {
    const KIND: ObjectKind = ObjectKind::Access;
}

/// Whether two optional IOAS references name the same IOAS.
fn same_ioas(a: Option<&UsersRef<Ioas>>, b: Option<&UsersRef<Ioas>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq::<Ioas>(&**a, &**b),
        (None, None) => true,
        _ => false,
    }
}

/// Create an access in `ctx` for a driver (`iommufd_access_create()`). The returned reference
/// is the driver's; give it back with [`destroy`].
///
/// # Errors
/// Object allocation → `ENOMEM` (or `EBUSY` with no id left).
pub fn create(
    ctx: &IommufdCtx,
    ops: Weak<dyn AccessOps>,
    needs_pin_pages: bool,
) -> Result<UsersRef<Access>, Errno> {
    let reservation = ctx.objects().reserve::<Access>()?;
    Ok(reservation.finalize_owned(Access {
        needs_pin_pages,
        notifier: Arc::new(Notifier { ops: ops.clone() }),
        ops,
        state: Mutex::new(AccessState::default()),
    }))
}

/// Destroy an access (`iommufd_access_destroy()`): detaches it (notifying the driver to unpin)
/// and removes the object.
///
/// # Errors
/// `EBUSY` if something else still holds the object; it then goes with the context.
pub fn destroy(ctx: &IommufdCtx, access: UsersRef<Access>) -> Result<(), Errno> {
    ctx.objects().destroy_owned(access)
}

impl Access {
    fn lock(&self) -> MutexGuard<'_, AccessState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The IOAS the access is attached to.
    pub fn ioas_id(&self) -> Option<ObjId> {
        self.lock().ioas.as_ref().map(UsersRef::id)
    }

    /// Whether the access was created to pin pages (its IOVA alignment is `PAGE_SIZE`).
    pub fn needs_pin_pages(&self) -> bool {
        self.needs_pin_pages
    }

    fn alignment(&self) -> u64 {
        if self.needs_pin_pages {
            PAGE_SIZE
        } else {
            1
        }
    }

    /// Attach to IOAS `ioas_id` (`iommufd_access_attach()`).
    ///
    /// # Errors
    /// Already attached → `EINVAL`; unknown IOAS → `ENOENT`; the IOAS cannot take the access's
    /// alignment → `EADDRINUSE`; 65536 accesses on it → `EBUSY`.
    pub fn attach(&self, ctx: &IommufdCtx, ioas_id: ObjId) -> Result<(), Errno> {
        let state = self.lock();
        if state.ioas.is_some() {
            return Err(Errno::EINVAL);
        }
        self.change_ioas_id(ctx, state, ioas_id)
    }

    /// Move to IOAS `ioas_id` (`iommufd_access_replace()`): the driver is first asked to unpin
    /// everything in the old IOAS.
    ///
    /// # Errors
    /// Not attached → `ENOENT`; then as [`Access::attach`].
    pub fn replace(&self, ctx: &IommufdCtx, ioas_id: ObjId) -> Result<(), Errno> {
        let state = self.lock();
        if state.ioas.is_none() {
            return Err(Errno::ENOENT);
        }
        self.change_ioas_id(ctx, state, ioas_id)
    }

    /// Detach from the IOAS (`iommufd_access_detach()`), asking the driver to unpin first. Does
    /// nothing when not attached.
    pub fn detach(&self) {
        let state = self.lock();
        if state.ioas.is_some() {
            let result = self.change_ioas(state, None);
            debug_assert!(result.is_ok(), "detach raced another change");
        }
    }

    fn change_ioas_id<'s>(
        &'s self,
        ctx: &IommufdCtx,
        state: MutexGuard<'s, AccessState>,
        ioas_id: ObjId,
    ) -> Result<(), Errno> {
        let ioas = ctx.objects().get::<Ioas>(ioas_id)?;
        self.change_ioas(state, Some(ioas.users_ref()))
    }

    /// `iommufd_access_change_ioas()`, with the access locked by the caller.
    fn change_ioas<'s>(
        &'s self,
        mut state: MutexGuard<'s, AccessState>,
        new: Option<UsersRef<Ioas>>,
    ) -> Result<(), Errno> {
        // A concurrent change is between its two halves.
        if !same_ioas(state.ioas.as_ref(), state.ioas_unpin.as_ref()) {
            return Err(Errno::EBUSY);
        }
        if same_ioas(state.ioas.as_ref(), new.as_ref()) {
            return Ok(());
        }
        let current = state.ioas.take();
        let new_id = match &new {
            Some(ioas) => match ioas
                .iopt()
                .add_access(self.alignment(), self.notifier.clone())
            {
                Ok(id) => Some(id),
                Err(err) => {
                    state.ioas = current;
                    return Err(iopt_errno(err));
                }
            },
            None => None,
        };
        if let Some(current) = current {
            if let Some(ops) = self.ops.upgrade() {
                drop(state);
                ops.unmap(Iova(0), u64::MAX);
                state = self.lock();
            }
            if let Some(id) = state.list_id.take() {
                current.iopt().remove_access(id);
            }
        }
        state.ioas_unpin = new.clone();
        state.ioas = new;
        state.list_id = new_id;
        Ok(())
    }

    /// Pin the pages under `[iova, iova + length)` and return each page's "PFN" (its user VA)
    /// (`iommufd_access_pin_pages()`); `write` asks for writable pages. Undo with
    /// [`Access::unpin_pages`] over exactly the same range.
    ///
    /// # Errors
    /// An access created without `needs_pin_pages` → `EINVAL`; `length` 0 → `EINVAL`; range
    /// wraps → `EOVERFLOW`; not attached → `ENOENT`; then the io page table's errors
    /// (`EINVAL` unaligned or being unmapped, `EPERM` protection, `ENOENT` gap, pin errors).
    pub fn pin_pages(&self, iova: Iova, length: u64, write: bool) -> Result<Vec<UserVa>, Errno> {
        if !self.needs_pin_pages {
            return Err(Errno::EINVAL);
        }
        check_range(iova, length)?;
        let state = self.lock();
        let ioas = state.ioas.as_ref().ok_or(Errno::ENOENT)?;
        ioas.iopt()
            .access_pin_pages(iova, length, write)
            .map_err(iopt_errno)
    }

    /// Release a pin made by [`Access::pin_pages`] (`iommufd_access_unpin_pages()`). A range
    /// that does not match a pin is a driver bug; it is ignored, as the kernel warns and goes on.
    pub fn unpin_pages(&self, iova: Iova, length: u64) {
        if check_range(iova, length).is_err() {
            return;
        }
        let state = self.lock();
        if let Some(ioas) = &state.ioas_unpin {
            let released = ioas.iopt().access_unpin_pages(iova, length);
            debug_assert!(released.is_ok(), "unpin of a range that was not pinned");
        }
    }

    /// [`Access::pin_pages`] for an internal access whose pins the user may not unmap (Linux:
    /// `iommufd_access_pin_pages()` of an internal access, which locks the areas): unmaps of
    /// the range answer `EBUSY` until [`Access::unpin_locked_pages`].
    ///
    /// # Errors
    /// As [`Access::pin_pages`].
    pub fn pin_locked_pages(
        &self,
        iova: Iova,
        length: u64,
        write: bool,
    ) -> Result<Vec<UserVa>, Errno> {
        let pages = self.pin_pages(iova, length, write)?;
        let state = self.lock();
        if let Some(ioas) = &state.ioas {
            if let Err(err) = ioas.iopt().lock_areas(iova, length) {
                let _ = ioas.iopt().access_unpin_pages(iova, length);
                return Err(iopt_errno(err));
            }
        }
        Ok(pages)
    }

    /// Release a pin made by [`Access::pin_locked_pages`].
    pub fn unpin_locked_pages(&self, iova: Iova, length: u64) {
        {
            let state = self.lock();
            if let Some(ioas) = &state.ioas_unpin {
                ioas.iopt().unlock_areas(iova, length);
            }
        }
        self.unpin_pages(iova, length);
    }

    /// Copy to or from the IOAS at `iova` through its user memory (`iommufd_access_rw()`).
    ///
    /// # Errors
    /// Empty buffer → `EINVAL`; range wraps → `EOVERFLOW`; not attached → `ENOENT`; then the io
    /// page table's errors (`EINVAL`, `EPERM`, `EFAULT`, `ENOENT` for a gap).
    pub fn rw(&self, iova: Iova, buf: RwBuf<'_>, path: AccessPath) -> Result<(), Errno> {
        check_range(iova, buf.len() as u64)?;
        let state = self.lock();
        let ioas = state.ioas.as_ref().ok_or(Errno::ENOENT)?;
        ioas.iopt().access_rw(iova, buf, path).map_err(iopt_errno)
    }
}

/// `length` 0 → `EINVAL`; `iova + length - 1` wraps → `EOVERFLOW`.
fn check_range(iova: Iova, length: u64) -> Result<(), Errno> {
    if length == 0 {
        return Err(Errno::EINVAL);
    }
    iova.0.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
    Ok(())
}

impl Drop for Access {
    /// `iommufd_access_destroy_object()`: leave the IOAS. The driver has unpinned everything
    /// before giving its reference up.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let (Some(ioas), Some(id)) = (state.ioas_unpin.take(), state.list_id.take()) {
            ioas.iopt().remove_access(id);
        }
        state.ioas = None;
    }
}
