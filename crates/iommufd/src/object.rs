//! The per-context object table: ids, two reference counts, two-phase creation, destruction.
//!
//! This is the kernel's `ictx->objects` xarray plus the `struct iommufd_object` header that
//! every IOAS, HWPT, device, access and fault object embeds, rebuilt as the seam between the
//! ioctl handlers and the object kinds. A kind module (ioas, hwpt, device, access, fault, the
//! selftest) defines a payload type, declares its [`ObjectKind`] with [`ObjectPayload`], and
//! stores it here; handlers find it again by id with a typed [`ObjectTable::get`].
//!
//! # Where state lives
//! * The table ([`ObjectTable`]) maps ids to slots under one mutex. A slot is either *reserved*
//!   (an id handed out by [`ObjectTable::reserve`], invisible to lookups, like the kernel's
//!   `XA_ZERO_ENTRY`) or *published* (header + payload).
//! * Each published object has a header with its id, kind and two atomic counts, and its payload
//!   in a separate `Arc`, so the table can hand the payload out while still proving, before it
//!   drops the payload, that nobody else holds it.
//!
//! # The two counts (the kernel's `users` and `shortterm_users`)
//! * `users` is 1 for the table's own reference, plus 1 per live [`ObjRef`] (an ioctl-duration
//!   lookup), plus 1 per live [`UsersRef`] (a long-term edge of the object graph: a HWPT holds
//!   its IOAS, a device's owner holds the device). `IOMMU_DESTROY` succeeds only at exactly 1.
//! * `shortterm_users` is 1 (a bias held while the object is in the table) plus 1 per live
//!   [`ObjRef`]. Destruction takes the bias away and waits for it to reach zero, so no lookup is
//!   still using the payload when it is dropped; while it is zero, new lookups fail.
//!
//! # Invariants
//! * Ids are the lowest free value in `1..=max_id` (the kernel: `XA_FLAGS_ALLOC1`,
//!   `xa_limit_31b`, so `max_id` is 2^31 − 1); an id is free again once its object is destroyed
//!   or its reservation dropped, never while the object is alive.
//! * A payload is dropped exactly once, after its id left the table and its short-term users
//!   drained. The payload's `Drop` *is* the kind's destroy (and abort) operation: it releases the
//!   [`UsersRef`]s it holds on other objects, which is what makes teardown leaf-first.
//! * Payloads are never dropped and no caller code runs while the table mutex is held.
//!
//! # Lock order
//! The table mutex is a leaf: nothing else is locked while it is held. Payload locks (an IOAS's
//! `domains_rwsem` equivalent, …) are taken only by code holding an [`ObjRef`] or [`UsersRef`],
//! never under the table mutex. Dropping a guard may briefly take the table mutex (to wake a
//! destroyer), so a guard must not be dropped while holding the table mutex, which only this
//! module could do.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use crate::errno::Errno;
use crate::failpoint::{should_fail, FailSite};

/// The largest id the kernel hands out (`xa_limit_31b`).
pub const MAX_OBJ_ID: u32 = (1 << 31) - 1;

/// How long destruction waits for short-term users to go away before giving up with `EBUSY`
/// (the kernel's `iommufd_object_dec_wait_shortterm` timeout).
const SHORTTERM_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// An object id, as user space sees it (`ioas_id`, `out_hwpt_id`, `dev_id`, …). 0 is never valid.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ObjId(pub u32);

impl ObjId {
    /// The number on the wire.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ObjId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The kind of an object, 6.12's `enum iommufd_object_type` (same order; the values are not ABI).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ObjectKind {
    /// A bound device (`iommufd_device`); its binder holds a user, so users cannot destroy it.
    Device = 1,
    /// A paging HWPT: an IOMMU domain filled from an IOAS.
    HwptPaging = 2,
    /// A nested HWPT: a user-format stage-1 table on a paging parent.
    HwptNested = 3,
    /// An I/O address space.
    Ioas = 4,
    /// An in-kernel access (emulated device); its creator holds a user.
    Access = 5,
    /// A page-fault queue; its fd holds a user.
    Fault = 6,
    /// The selftest's mock device object (`IOMMUFD_OBJ_SELFTEST`, test builds only in Linux).
    Selftest = 7,
    /// A virtual IOMMU on a nesting parent (Linux ≥ 6.13).
    Viommu = 8,
    /// A device as a vIOMMU's guest sees it (Linux ≥ 6.13).
    Vdevice = 9,
    /// A vIOMMU event queue; its fd holds a user (Linux ≥ 6.15).
    Veventq = 10,
    /// A HW queue of a vIOMMU on pinned guest memory (Linux ≥ 6.17).
    HwQueue = 11,
}

impl ObjectKind {
    /// The kernel's name for the kind, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Device => "DEVICE",
            ObjectKind::HwptPaging => "HWPT_PAGING",
            ObjectKind::HwptNested => "HWPT_NESTED",
            ObjectKind::Ioas => "IOAS",
            ObjectKind::Access => "ACCESS",
            ObjectKind::Fault => "FAULT",
            ObjectKind::Selftest => "SELFTEST",
            ObjectKind::Viommu => "VIOMMU",
            ObjectKind::Vdevice => "VDEVICE",
            ObjectKind::Veventq => "VEVENTQ",
            ObjectKind::HwQueue => "HW_QUEUE",
        }
    }
}

/// A type that can live in the table: one Rust type per [`ObjectKind`].
///
/// The payload's `Drop` is the kind's destroy operation. It runs once, on the thread that
/// destroyed the object (or dropped its unfinalized creation), after the id is gone from the
/// table and no lookup can reach it; it must not fail and must release every [`UsersRef`] the
/// payload holds (dropping them does that), which is what lets the table tear a graph down
/// leaf-first.
pub trait ObjectPayload: Any + Send + Sync {
    /// The kind reported for, and checked on, objects of this type.
    const KIND: ObjectKind;
}

/// The type-erased payload seen through [`ObjectTable::get_any`].
pub type AnyPayload = dyn Any + Send + Sync;

/// The header of a published object (`struct iommufd_object`).
#[derive(Debug)]
struct Header {
    id: ObjId,
    kind: ObjectKind,
    /// See the module doc: table 1 + lookups + long-term references.
    users: AtomicU32,
    /// See the module doc: table bias 1 + lookups.
    shortterm_users: AtomicU32,
}

enum Slot {
    /// An id handed out by `reserve` and not yet finalized: lookups see nothing.
    Reserved,
    Published {
        header: Arc<Header>,
        payload: Arc<AnyPayload>,
    },
}

/// Everything the table mutex guards.
#[derive(Default)]
struct TableState {
    slots: BTreeMap<u32, Slot>,
    /// Free ids below `next`; every id ≥ `next` is free. The lowest free id is therefore
    /// `free.first()` if any, else `next`.
    free: BTreeSet<u32>,
    /// One past the highest id handed out and still in use (1 when the table is empty).
    next: u32,
}

impl TableState {
    fn alloc_id(&mut self, max_id: u32) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next > max_id {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    fn free_id(&mut self, id: u32) {
        if id + 1 == self.next {
            self.next = id;
            while self.free.last().is_some_and(|&last| last + 1 == self.next) {
                self.next -= 1;
                self.free.pop_last();
            }
        } else {
            self.free.insert(id);
        }
    }
}

/// The object table of one iommufd context: `Send + Sync`, used by every ioctl of the context
/// at once. Dropping it destroys every object leaf-first, like closing the fd.
pub struct ObjectTable {
    state: Mutex<TableState>,
    /// Signalled (under `state`) when some object's short-term count reaches zero.
    shortterm_drained: Condvar,
    max_id: u32,
}

impl fmt::Debug for ObjectTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        let mut map = f.debug_map();
        for (id, slot) in &state.slots {
            match slot {
                Slot::Reserved => map.entry(id, &"reserved"),
                Slot::Published { header, .. } => map.entry(id, &header.kind.name()),
            };
        }
        map.finish()
    }
}

impl Default for ObjectTable {
    fn default() -> Self {
        Self::new()
    }
}

impl ObjectTable {
    /// An empty table with the kernel's id limit, [`MAX_OBJ_ID`].
    pub fn new() -> ObjectTable {
        Self::with_max_id(MAX_OBJ_ID)
    }

    /// An empty table whose ids stop at `max_id` (at most [`MAX_OBJ_ID`]), so that tests can
    /// reach id exhaustion without two billion objects.
    pub fn with_max_id(max_id: u32) -> ObjectTable {
        ObjectTable {
            state: Mutex::new(TableState {
                next: 1,
                ..TableState::default()
            }),
            shortterm_drained: Condvar::new(),
            max_id: max_id.min(MAX_OBJ_ID),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        // No code that can panic runs under the lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of ids in use, reserved or published.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// No id is in use (the kernel's `xa_empty`, which reservations also make non-empty).
    pub fn is_empty(&self) -> bool {
        self.lock().slots.is_empty()
    }

    /// The ids of the published objects of `kind`, in id order (a snapshot, for commands that
    /// act on every object of a kind: `iommufd_take_all_iova_rwsem()`).
    pub fn ids_of_kind(&self, kind: ObjectKind) -> Vec<ObjId> {
        self.lock()
            .slots
            .iter()
            .filter_map(|(&id, slot)| match slot {
                Slot::Published { header, .. } if header.kind == kind => Some(ObjId(id)),
                _ => None,
            })
            .collect()
    }

    /// Reserve the lowest free id for a new `T`, invisible to lookups until
    /// [`Reservation::finalize`] (`iommufd_object_alloc()`). Dropping the reservation frees it.
    ///
    /// # Errors
    /// `ENOMEM` when the allocation or the id store fails (fault injection); `EBUSY` when every
    /// id up to the limit is in use (what `xa_alloc` reports).
    pub fn reserve<T: ObjectPayload>(&self) -> Result<Reservation<'_, T>, Errno> {
        if should_fail(FailSite::Alloc) || should_fail(FailSite::IdReserve) {
            return Err(Errno::ENOMEM);
        }
        let mut state = self.lock();
        let id = state.alloc_id(self.max_id).ok_or(Errno::EBUSY)?;
        state.slots.insert(id, Slot::Reserved);
        Ok(Reservation {
            table: self,
            id: ObjId(id),
            finalized: false,
            kind: PhantomData,
        })
    }

    /// Look up a published object of type `T` and pin it for the caller's duration
    /// (`iommufd_get_object()` with a type).
    ///
    /// # Errors
    /// `ENOENT` for an id that is unknown, reserved, of another kind, being destroyed, or when
    /// fault injection fails the lookup.
    pub fn get<T: ObjectPayload>(&self, id: ObjId) -> Result<ObjRef<'_, T>, Errno> {
        self.lookup(id, Some(T::KIND))?
            .downcast::<T>()
            .map_err(|_| Errno::ENOENT)
    }

    /// Look up a published object of any kind (`IOMMUFD_OBJ_ANY`); the caller inspects
    /// [`ObjRef::kind`] and narrows with [`ObjRef::downcast`].
    ///
    /// # Errors
    /// `ENOENT` as for [`ObjectTable::get`].
    pub fn get_any(&self, id: ObjId) -> Result<ObjRef<'_, AnyPayload>, Errno> {
        self.lookup(id, None)
    }

    fn lookup(&self, id: ObjId, kind: Option<ObjectKind>) -> Result<ObjRef<'_, AnyPayload>, Errno> {
        if should_fail(FailSite::ObjectLookup) {
            return Err(Errno::ENOENT);
        }
        let state = self.lock();
        let Some(Slot::Published { header, payload }) = state.slots.get(&id.0) else {
            return Err(Errno::ENOENT);
        };
        // Under the table lock `users` cannot be 0 (destroyers zero it and unpublish in one
        // critical section), but `shortterm_users` is 0 while an owner's destroy drains it.
        if kind.is_some_and(|k| k != header.kind) || !inc_not_zero(&header.shortterm_users) {
            return Err(Errno::ENOENT);
        }
        header.users.fetch_add(1, Ordering::AcqRel);
        Ok(ObjRef {
            payload: Arc::clone(payload),
            pin: ShorttermPin {
                table: self,
                header: Some(Arc::clone(header)),
            },
        })
    }

    /// Look up the object a [`WeakRef`] names, if it is still the same object (not destroyed,
    /// its id not reused).
    ///
    /// # Errors
    /// `ENOENT` when it is gone, or as for [`ObjectTable::get`].
    pub fn upgrade<T: ObjectPayload>(&self, weak: &WeakRef<T>) -> Result<ObjRef<'_, T>, Errno> {
        let obj = self.get::<T>(weak.id)?;
        let same = obj
            .pin
            .header
            .as_ref()
            .is_some_and(|h| std::ptr::eq(Arc::as_ptr(h), weak.header.as_ptr()));
        if same {
            Ok(obj)
        } else {
            Err(Errno::ENOENT)
        }
    }

    /// `IOMMU_DESTROY`: destroy the object `id` if only the table references it
    /// (`iommufd_object_remove(ictx, NULL, id, 0)`). Any kind qualifies; devices and accesses
    /// are protected by the reference their owner holds, not by a kind rule.
    ///
    /// # Errors
    /// `ENOENT` for an unknown or reserved id; `EBUSY` while anything else holds a user (a HWPT
    /// on an IOAS, an ioctl in flight, an owner), or if short-term users never drain.
    pub fn destroy(&self, id: ObjId) -> Result<(), Errno> {
        let (header, payload) = {
            let mut state = self.lock();
            let Some(Slot::Published { header, .. }) = state.slots.get(&id.0) else {
                return Err(Errno::ENOENT);
            };
            if header
                .users
                .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(Errno::EBUSY);
            }
            self.unpublish(&mut state, id)
        };
        self.finish_destroy(header, payload)
    }

    /// Destroy an object whose owner holds `owner`, waiting for concurrent lookups to finish
    /// first (`iommufd_object_destroy_user()`, used to unbind devices and destroy accesses).
    ///
    /// # Errors
    /// `EBUSY` if other long-term users remain (the object then stays until the context
    /// closes) or lookups did not drain in time; `ENOENT` if `owner` belongs to another table.
    /// The owner's reference is given up in every case. Lookups that start during the wait
    /// still succeed (and extend it) until the count has drained; after that they fail.
    pub fn destroy_owned<T: ObjectPayload>(&self, owner: UsersRef<T>) -> Result<(), Errno> {
        let header = owner.header();
        let UsersRef { payload, user } = owner;
        drop(payload);
        if !self.owns(&self.lock(), &header) {
            return Err(Errno::ENOENT);
        }
        if !self.drain_shortterm(&header) {
            // Put the table's bias back; the owner's user goes away with `user`.
            header.shortterm_users.fetch_add(1, Ordering::AcqRel);
            return Err(Errno::EBUSY);
        }
        let removed = {
            let mut state = self.lock();
            drop(user);
            if header
                .users
                .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                Some(self.unpublish(&mut state, header.id))
            } else {
                header.shortterm_users.store(1, Ordering::Release);
                None
            }
        };
        let (header, payload) = removed.ok_or(Errno::EBUSY)?;
        self.drop_payload(&header, payload);
        Ok(())
    }

    /// Give up a long-term reference and destroy the object if that left only the table's
    /// (`iommufd_object_put_and_try_destroy()`, how an auto-created HWPT goes away when its
    /// last device detaches). Returns whether the object was destroyed.
    pub fn put_and_try_destroy<T: ObjectPayload>(&self, reference: UsersRef<T>) -> bool {
        let header = reference.header();
        let UsersRef { payload, user } = reference;
        drop(payload);
        let removed = {
            let mut state = self.lock();
            drop(user);
            if self.owns(&state, &header)
                && header
                    .users
                    .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                Some(self.unpublish(&mut state, header.id))
            } else {
                None
            }
        };
        match removed {
            Some((header, payload)) => self.finish_destroy(header, payload).is_ok(),
            None => false,
        }
    }

    /// Destroy everything, leaf-first: repeatedly destroy, in id order, each object that only
    /// the table references, until none is left or no progress is possible (a reference cycle
    /// or a reference held outside the table). What `close()` of `/dev/iommu` does. Reserved ids
    /// are left alone. Returns how many objects were destroyed.
    pub fn destroy_all(&self) -> usize {
        let mut destroyed = 0;
        loop {
            let mut progress = 0;
            let mut cursor = 0;
            while let Some((header, payload)) = self.take_next_unused(&mut cursor) {
                // An unused object has no lookups in flight, so this cannot time out.
                let _ = self.finish_destroy(header, payload);
                progress += 1;
            }
            destroyed += progress;
            let any_published = self
                .lock()
                .slots
                .values()
                .any(|s| matches!(s, Slot::Published { .. }));
            if progress == 0 || !any_published {
                return destroyed;
            }
        }
    }

    /// Unpublish the first object with id ≥ `*cursor` whose only user is the table.
    fn take_next_unused(&self, cursor: &mut u32) -> Option<(Arc<Header>, Arc<AnyPayload>)> {
        let mut state = self.lock();
        let id = state
            .slots
            .range(*cursor..)
            .find_map(|(&id, slot)| match slot {
                Slot::Published { header, .. }
                    if header
                        .users
                        .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok() =>
                {
                    Some(id)
                }
                _ => None,
            })?;
        *cursor = id + 1;
        Some(self.unpublish(&mut state, ObjId(id)))
    }

    /// Whether `header` is the one published in this table under its id.
    fn owns(&self, state: &TableState, header: &Arc<Header>) -> bool {
        matches!(state.slots.get(&header.id.0), Some(Slot::Published { header: h, .. }) if Arc::ptr_eq(h, header))
    }

    /// Remove a published slot whose `users` the caller just set to 0, and free its id.
    fn unpublish(&self, state: &mut TableState, id: ObjId) -> (Arc<Header>, Arc<AnyPayload>) {
        match state.slots.remove(&id.0) {
            Some(Slot::Published { header, payload }) => {
                state.free_id(id.0);
                (header, payload)
            }
            // Callers check the slot under the same lock hold.
            _ => unreachable!("unpublish of a slot that is not published"),
        }
    }

    /// After unpublishing: wait for in-flight lookups to let go, then run the destroy.
    fn finish_destroy(&self, header: Arc<Header>, payload: Arc<AnyPayload>) -> Result<(), Errno> {
        if !self.drain_shortterm(&header) {
            // A lookup outlived the timeout: the payload is dropped by whoever holds it last.
            return Err(Errno::EBUSY);
        }
        self.drop_payload(&header, payload);
        Ok(())
    }

    fn drop_payload(&self, header: &Header, payload: Arc<AnyPayload>) {
        debug_assert_eq!(
            Arc::strong_count(&payload),
            1,
            "object {} still referenced",
            header.id
        );
        drop(payload);
    }

    /// Take the table's bias off `shortterm_users` and wait until it reaches zero.
    fn drain_shortterm(&self, header: &Header) -> bool {
        if header.shortterm_users.fetch_sub(1, Ordering::AcqRel) == 1 {
            return true;
        }
        let state = self.lock();
        let (_state, wait) = self
            .shortterm_drained
            .wait_timeout_while(state, SHORTTERM_DRAIN_TIMEOUT, |_| {
                header.shortterm_users.load(Ordering::Acquire) != 0
            })
            .unwrap_or_else(PoisonError::into_inner);
        !wait.timed_out()
    }

    fn publish(&self, id: ObjId, header: Arc<Header>, payload: Arc<AnyPayload>) {
        let mut state = self.lock();
        let previous = state
            .slots
            .insert(id.0, Slot::Published { header, payload });
        debug_assert!(
            matches!(previous, Some(Slot::Reserved)),
            "publishing id {id} that was not reserved"
        );
    }

    fn abort(&self, id: ObjId) {
        let mut state = self.lock();
        if matches!(state.slots.get(&id.0), Some(Slot::Reserved)) {
            state.slots.remove(&id.0);
            state.free_id(id.0);
        }
    }
}

#[cfg(test)]
impl ObjectTable {
    /// `(users, shortterm_users)` of a published object, for tests that watch a destroyer.
    fn counts(&self, id: ObjId) -> Option<(u32, u32)> {
        match self.lock().slots.get(&id.0) {
            Some(Slot::Published { header, .. }) => Some((
                header.users.load(Ordering::Acquire),
                header.shortterm_users.load(Ordering::Acquire),
            )),
            _ => None,
        }
    }
}

impl Drop for ObjectTable {
    fn drop(&mut self) {
        self.destroy_all();
    }
}

/// Increment `count` unless it is zero (`refcount_inc_not_zero`).
fn inc_not_zero(count: &AtomicU32) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n != 0).then(|| n + 1)
        })
        .is_ok()
}

/// An id reserved for a `T` under construction: the first phase of two-phase creation.
/// [`Reservation::finalize`] publishes the object; dropping the reservation instead frees the
/// id, and since the payload is only handed over at finalize, whatever the creator built is
/// dropped (destroyed) by the creator's own error path.
#[must_use = "dropping a reservation frees its id"]
pub struct Reservation<'t, T: ObjectPayload> {
    table: &'t ObjectTable,
    id: ObjId,
    finalized: bool,
    kind: PhantomData<fn() -> T>,
}

impl<T: ObjectPayload> fmt::Debug for Reservation<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("kind", &T::KIND)
            .finish()
    }
}

impl<'t, T: ObjectPayload> Reservation<'t, T> {
    /// The id the object will have (already reportable to user space before finalize).
    pub fn id(&self) -> ObjId {
        self.id
    }

    /// Publish `payload` under the reserved id (`iommufd_object_finalize()`): call only once
    /// nothing can fail any more, since from here on another thread can take references.
    pub fn finalize(self, payload: T) -> ObjId {
        let id = self.id;
        // No clone of the payload may outlive publication without a user count: a concurrent
        // IOMMU_DESTROY expects to drop the last reference.
        self.publish(Arc::new(payload), 1);
        id
    }

    /// Publish `payload` and keep a long-term reference for its owner (users = 2), as device
    /// binding, access creation and fault-fd creation do. The owner later lets go through
    /// [`ObjectTable::destroy_owned`] or by dropping the reference.
    pub fn finalize_owned(self, payload: T) -> UsersRef<T> {
        let payload = Arc::new(payload);
        // This clone is covered by the owner's user count (users = 2).
        let header = self.publish(Arc::clone(&payload), 2);
        UsersRef {
            payload,
            user: UserPin {
                header: Some(header),
            },
        }
    }

    fn publish(mut self, payload: Arc<T>, users: u32) -> Arc<Header> {
        let header = Arc::new(Header {
            id: self.id,
            kind: T::KIND,
            users: AtomicU32::new(users),
            shortterm_users: AtomicU32::new(1),
        });
        self.table
            .publish(self.id, Arc::clone(&header), payload as Arc<AnyPayload>);
        self.finalized = true;
        header
    }
}

impl<T: ObjectPayload> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        if !self.finalized {
            self.table.abort(self.id);
        }
    }
}

/// Releases one `users` and one `shortterm_users` count on drop (`iommufd_put_object()`:
/// users first, so a destroyer that sees short-term users drained never sees a stale user).
struct ShorttermPin<'t> {
    table: &'t ObjectTable,
    /// `None` only after [`ObjRef::into_users_ref`] took it over.
    header: Option<Arc<Header>>,
}

impl ShorttermPin<'_> {
    fn header(&self) -> &Arc<Header> {
        self.header.as_ref().expect("a live pin has a header")
    }

    fn release_shortterm(&self, header: &Header) {
        if header.shortterm_users.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _state = self.table.lock();
            self.table.shortterm_drained.notify_all();
        }
    }
}

impl Drop for ShorttermPin<'_> {
    fn drop(&mut self) {
        if let Some(header) = self.header.take() {
            header.users.fetch_sub(1, Ordering::AcqRel);
            self.release_shortterm(&header);
        }
    }
}

/// An ioctl-duration reference to a published object, from [`ObjectTable::get`]: derefs to
/// the payload; dropping it is the put. Holding it makes `IOMMU_DESTROY` of the object fail
/// with `EBUSY`, as in Linux.
pub struct ObjRef<'t, T: ?Sized + Send + Sync + 'static> {
    // Field order matters: the payload is released before the counts, so a destroyer that
    // sees the counts drop also holds the last reference to the payload.
    payload: Arc<T>,
    pin: ShorttermPin<'t>,
}

impl<T: ?Sized + Send + Sync + 'static> fmt::Debug for ObjRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjRef")
            .field("id", &self.id())
            .field("kind", &self.kind())
            .finish()
    }
}

impl<T: ?Sized + Send + Sync + 'static> Deref for ObjRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.payload
    }
}

impl<'t, T: ?Sized + Send + Sync + 'static> ObjRef<'t, T> {
    /// The object's id.
    pub fn id(&self) -> ObjId {
        self.pin.header().id
    }

    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        self.pin.header().kind
    }

    /// A weak handle that names this object without keeping it alive (the kernel keeps such
    /// raw pointers, e.g. the VFIO compat IOAS); see [`ObjectTable::upgrade`].
    pub fn downgrade(&self) -> WeakRef<T> {
        WeakRef {
            id: self.id(),
            header: Arc::downgrade(self.pin.header()),
            kind: PhantomData,
        }
    }
}

impl<'t, T: ObjectPayload> ObjRef<'t, T> {
    /// A new long-term reference, for storing in another object (`refcount_inc(&obj->users)`
    /// while holding a lookup).
    pub fn users_ref(&self) -> UsersRef<T> {
        let header = Arc::clone(self.pin.header());
        header.users.fetch_add(1, Ordering::AcqRel);
        UsersRef {
            payload: Arc::clone(&self.payload),
            user: UserPin {
                header: Some(header),
            },
        }
    }

    /// Turn this lookup into a long-term reference (`iommufd_ref_to_users()`): the user count
    /// stays, the short-term count is released.
    pub fn into_users_ref(self) -> UsersRef<T> {
        let ObjRef { payload, mut pin } = self;
        let header = pin.header.take().expect("a live pin has a header");
        pin.release_shortterm(&header);
        UsersRef {
            payload,
            user: UserPin {
                header: Some(header),
            },
        }
    }
}

impl<'t> ObjRef<'t, AnyPayload> {
    /// Narrow an untyped lookup to `T`, or give it back unchanged if the object is not a `T`.
    pub fn downcast<T: ObjectPayload>(self) -> Result<ObjRef<'t, T>, ObjRef<'t, AnyPayload>> {
        if self.kind() != T::KIND {
            return Err(self);
        }
        let ObjRef { payload, pin } = self;
        match payload.downcast::<T>() {
            Ok(payload) => Ok(ObjRef { payload, pin }),
            Err(payload) => Err(ObjRef { payload, pin }),
        }
    }
}

/// Releases one `users` count on drop.
#[derive(Debug)]
struct UserPin {
    /// `None` only while [`ObjectTable`] takes the reference apart.
    header: Option<Arc<Header>>,
}

impl Drop for UserPin {
    fn drop(&mut self) {
        if let Some(header) = self.header.take() {
            header.users.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A long-term reference (one `users` count): an edge of the object graph, stored in the
/// payload of the object that depends on the target, or held by a kernel-side owner. Not tied
/// to the table's lifetime. While it lives, `IOMMU_DESTROY` of the target fails with `EBUSY`.
pub struct UsersRef<T: ObjectPayload> {
    // Payload before pin, for the same reason as in `ObjRef`.
    payload: Arc<T>,
    user: UserPin,
}

impl<T: ObjectPayload> fmt::Debug for UsersRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsersRef")
            .field("id", &self.id())
            .field("kind", &T::KIND)
            .finish()
    }
}

impl<T: ObjectPayload> Deref for UsersRef<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.payload
    }
}

impl<T: ObjectPayload> Clone for UsersRef<T> {
    fn clone(&self) -> Self {
        let header = self.header();
        header.users.fetch_add(1, Ordering::AcqRel);
        UsersRef {
            payload: Arc::clone(&self.payload),
            user: UserPin {
                header: Some(header),
            },
        }
    }
}

impl<T: ObjectPayload> UsersRef<T> {
    /// The target's id.
    pub fn id(&self) -> ObjId {
        self.header().id
    }

    fn header(&self) -> Arc<Header> {
        Arc::clone(
            self.user
                .header
                .as_ref()
                .expect("a live reference has a header"),
        )
    }

    /// A weak handle naming the target; see [`ObjectTable::upgrade`].
    pub fn downgrade(&self) -> WeakRef<T> {
        WeakRef {
            id: self.id(),
            header: Arc::downgrade(&self.header()),
            kind: PhantomData,
        }
    }
}

/// Names an object without holding it: upgrading succeeds only while that very object is
/// still published (a destroyed object's reused id does not match).
pub struct WeakRef<T: ?Sized> {
    id: ObjId,
    header: Weak<Header>,
    kind: PhantomData<fn() -> Box<T>>,
}

impl<T: ?Sized> Clone for WeakRef<T> {
    fn clone(&self) -> Self {
        WeakRef {
            id: self.id,
            header: Weak::clone(&self.header),
            kind: PhantomData,
        }
    }
}

impl<T: ?Sized> fmt::Debug for WeakRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakRef").field("id", &self.id).finish()
    }
}

impl<T: ?Sized> WeakRef<T> {
    /// The id the object had (and has, while it lives).
    pub fn id(&self) -> ObjId {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failpoint::set_fail_nth;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicUsize;

    /// A payload that records its creation id and counts its drops.
    #[derive(Debug)]
    struct Probe {
        id: ObjId,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl ObjectPayload for Probe {
        const KIND: ObjectKind = ObjectKind::Ioas;
    }

    /// A payload that appends its name to a shared log when destroyed.
    struct Logged<const K: u8> {
        name: &'static str,
        log: Arc<Mutex<Vec<&'static str>>>,
        _holds: Option<UsersRef<Logged<0>>>,
        _holds_paging: Option<UsersRef<Logged<1>>>,
    }

    impl<const K: u8> Drop for Logged<K> {
        fn drop(&mut self) {
            self.log.lock().unwrap().push(self.name);
        }
    }

    impl ObjectPayload for Logged<0> {
        const KIND: ObjectKind = ObjectKind::Ioas;
    }
    impl ObjectPayload for Logged<1> {
        const KIND: ObjectKind = ObjectKind::HwptPaging;
    }
    impl ObjectPayload for Logged<2> {
        const KIND: ObjectKind = ObjectKind::HwptNested;
    }

    fn logged<const K: u8>(name: &'static str, log: &Arc<Mutex<Vec<&'static str>>>) -> Logged<K> {
        holding(name, log, None, None)
    }

    fn holding<const K: u8>(
        name: &'static str,
        log: &Arc<Mutex<Vec<&'static str>>>,
        ioas: Option<UsersRef<Logged<0>>>,
        paging: Option<UsersRef<Logged<1>>>,
    ) -> Logged<K> {
        Logged {
            name,
            log: Arc::clone(log),
            _holds: ioas,
            _holds_paging: paging,
        }
    }

    fn add_probe(table: &ObjectTable, drops: &Arc<AtomicUsize>) -> ObjId {
        let r = table.reserve::<Probe>().unwrap();
        let id = r.id();
        r.finalize(Probe {
            id,
            drops: Arc::clone(drops),
        })
    }

    /// Like [`add_probe`], keeping an owner's reference (users = 2).
    fn add_owned_probe(table: &ObjectTable, drops: &Arc<AtomicUsize>) -> (ObjId, UsersRef<Probe>) {
        let r = table.reserve::<Probe>().unwrap();
        let id = r.id();
        let owner = r.finalize_owned(Probe {
            id,
            drops: Arc::clone(drops),
        });
        (id, owner)
    }

    #[test]
    fn table_and_refs_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ObjectTable>();
        check::<ObjRef<'static, Probe>>();
        check::<UsersRef<Probe>>();
        check::<Reservation<'static, Probe>>();
    }

    #[test]
    fn ids_start_at_one_and_reuse_the_lowest_free() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let ids: Vec<_> = (0..4).map(|_| add_probe(&table, &drops)).collect();
        assert_eq!(ids, [ObjId(1), ObjId(2), ObjId(3), ObjId(4)]);
        table.destroy(ObjId(3)).unwrap();
        table.destroy(ObjId(2)).unwrap();
        assert_eq!(add_probe(&table, &drops), ObjId(2));
        assert_eq!(add_probe(&table, &drops), ObjId(3));
        assert_eq!(add_probe(&table, &drops), ObjId(5));
    }

    #[test]
    fn reserved_id_is_invisible_until_finalized() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let r = table.reserve::<Probe>().unwrap();
        let id = r.id();
        assert_eq!(table.get::<Probe>(id).unwrap_err(), Errno::ENOENT);
        assert_eq!(table.get_any(id).unwrap_err(), Errno::ENOENT);
        assert_eq!(table.destroy(id).unwrap_err(), Errno::ENOENT);
        assert_eq!(table.len(), 1, "the reservation holds the id");
        r.finalize(Probe {
            id,
            drops: Arc::clone(&drops),
        });
        assert_eq!(table.get::<Probe>(id).unwrap().id, id);
    }

    #[test]
    fn dropped_reservation_frees_its_id() {
        let table = ObjectTable::new();
        let first = table.reserve::<Probe>().unwrap();
        let second = table.reserve::<Probe>().unwrap();
        assert_eq!((first.id(), second.id()), (ObjId(1), ObjId(2)));
        drop(first);
        assert_eq!(table.reserve::<Probe>().unwrap().id(), ObjId(1));
        drop(second);
        assert!(table.is_empty());
    }

    #[test]
    fn lookups_check_the_kind() {
        let table = ObjectTable::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let ioas = table
            .reserve::<Logged<0>>()
            .unwrap()
            .finalize(logged("ioas", &log));
        assert_eq!(table.get::<Logged<1>>(ioas).unwrap_err(), Errno::ENOENT);
        let any = table.get_any(ioas).unwrap();
        assert_eq!(any.kind(), ObjectKind::Ioas);
        let any = any.downcast::<Logged<1>>().unwrap_err();
        let typed = any.downcast::<Logged<0>>().unwrap();
        assert_eq!(typed.name, "ioas");
        assert_eq!(typed.id(), ioas);
    }

    #[test]
    fn destroy_of_unknown_ids_is_enoent() {
        let table = ObjectTable::new();
        assert_eq!(table.destroy(ObjId(0)).unwrap_err(), Errno::ENOENT);
        assert_eq!(table.destroy(ObjId(1)).unwrap_err(), Errno::ENOENT);
        assert_eq!(table.destroy(ObjId(u32::MAX)).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn destroy_is_busy_while_a_lookup_is_held() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let id = add_probe(&table, &drops);
        let held = table.get::<Probe>(id).unwrap();
        assert_eq!(table.destroy(id).unwrap_err(), Errno::EBUSY);
        drop(held);
        table.destroy(id).unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(table.destroy(id).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn destroy_is_busy_while_another_object_depends_on_it() {
        let table = ObjectTable::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let ioas = table
            .reserve::<Logged<0>>()
            .unwrap()
            .finalize(logged("ioas", &log));
        let edge = table.get::<Logged<0>>(ioas).unwrap().into_users_ref();
        let hwpt =
            table
                .reserve::<Logged<1>>()
                .unwrap()
                .finalize(holding("hwpt", &log, Some(edge), None));
        assert_eq!(table.destroy(ioas).unwrap_err(), Errno::EBUSY);
        table.destroy(hwpt).unwrap();
        table.destroy(ioas).unwrap();
        assert_eq!(*log.lock().unwrap(), ["hwpt", "ioas"]);
    }

    #[test]
    fn destroy_all_tears_down_leaf_first() {
        let table = ObjectTable::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let ioas = table
            .reserve::<Logged<0>>()
            .unwrap()
            .finalize(logged("ioas", &log));
        let ioas_edge = table.get::<Logged<0>>(ioas).unwrap().users_ref();
        let paging = table.reserve::<Logged<1>>().unwrap().finalize(holding(
            "paging",
            &log,
            Some(ioas_edge),
            None,
        ));
        let paging_edge = table.get::<Logged<1>>(paging).unwrap().users_ref();
        table.reserve::<Logged<2>>().unwrap().finalize(holding(
            "nested",
            &log,
            None,
            Some(paging_edge),
        ));
        let unrelated = table
            .reserve::<Logged<0>>()
            .unwrap()
            .finalize(logged("other", &log));
        assert_eq!(unrelated, ObjId(4));
        assert_eq!(table.destroy_all(), 4);
        assert!(table.is_empty());
        // Pass 1 (id order): ioas and paging are held, nested (3) and other (4) go;
        // pass 2: paging; pass 3: ioas.
        assert_eq!(*log.lock().unwrap(), ["nested", "other", "paging", "ioas"]);
    }

    #[test]
    fn dropping_the_table_destroys_everything() {
        let drops = Arc::new(AtomicUsize::new(0));
        {
            let table = ObjectTable::new();
            for _ in 0..5 {
                add_probe(&table, &drops);
            }
        }
        assert_eq!(drops.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn destroy_all_stops_at_objects_held_from_outside() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let id = add_probe(&table, &drops);
        add_probe(&table, &drops);
        let outside = table.get::<Probe>(id).unwrap().into_users_ref();
        assert_eq!(table.destroy_all(), 1);
        assert_eq!(table.len(), 1);
        drop(outside);
        assert_eq!(table.destroy_all(), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn owned_objects_resist_user_destroy() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let (id, owner) = add_owned_probe(&table, &drops);
        assert_eq!(owner.id(), id);
        assert_eq!(table.destroy(id).unwrap_err(), Errno::EBUSY);
        table.destroy_owned(owner).unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn destroy_owned_is_busy_with_other_long_term_users() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let (id, owner) = add_owned_probe(&table, &drops);
        let other = owner.clone();
        assert_eq!(table.destroy_owned(owner).unwrap_err(), Errno::EBUSY);
        assert_eq!(
            table.get::<Probe>(id).unwrap().id,
            id,
            "still published and reachable"
        );
        drop(other);
        table.destroy(id).unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn destroy_owned_rejects_a_reference_from_another_table() {
        let table = ObjectTable::new();
        let other_table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let r = other_table.reserve::<Probe>().unwrap();
        let id = r.id();
        let foreign = r.finalize_owned(Probe {
            id,
            drops: Arc::clone(&drops),
        });
        add_probe(&table, &drops);
        assert_eq!(table.destroy_owned(foreign).unwrap_err(), Errno::ENOENT);
        assert_eq!(other_table.get::<Probe>(id).unwrap().id, id);
        other_table.destroy(id).unwrap();
    }

    #[test]
    fn destroy_owned_waits_for_lookups_in_flight() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let (id, owner) = add_owned_probe(&table, &drops);
        let held = table.get::<Probe>(id).unwrap();
        assert_eq!(
            table.counts(id),
            Some((3, 2)),
            "table + owner + lookup; bias + lookup"
        );
        std::thread::scope(|s| {
            let destroyer = s.spawn(|| table.destroy_owned(owner));
            // The destroyer has taken the bias away and now waits for our lookup.
            let mut waiting = false;
            for _ in 0..1_000_000 {
                if table
                    .counts(id)
                    .is_some_and(|(_, shortterm)| shortterm == 1)
                {
                    waiting = true;
                    break;
                }
                std::thread::yield_now();
            }
            assert!(waiting, "the destroyer never started draining");
            assert_eq!(
                drops.load(Ordering::SeqCst),
                0,
                "not destroyed while a lookup is held"
            );
            drop(held);
            assert_eq!(destroyer.join().unwrap(), Ok(()));
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn put_and_try_destroy_only_destroys_the_last_user() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let (_, first) = add_owned_probe(&table, &drops);
        let second = first.clone();
        assert!(!table.put_and_try_destroy(first));
        assert_eq!(table.len(), 1);
        assert!(table.put_and_try_destroy(second));
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn into_users_ref_keeps_the_object_busy() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let id = add_probe(&table, &drops);
        let long_term = table.get::<Probe>(id).unwrap().into_users_ref();
        assert_eq!(long_term.id, id);
        assert_eq!(table.destroy(id).unwrap_err(), Errno::EBUSY);
        drop(long_term);
        table.destroy(id).unwrap();
    }

    #[test]
    fn weak_refs_do_not_follow_a_reused_id() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let id = add_probe(&table, &drops);
        let weak = table.get::<Probe>(id).unwrap().downgrade();
        assert_eq!(table.upgrade(&weak).unwrap().id, id);
        table.destroy(id).unwrap();
        assert_eq!(table.upgrade(&weak).unwrap_err(), Errno::ENOENT);
        assert_eq!(add_probe(&table, &drops), id, "the id is reused");
        assert_eq!(table.upgrade(&weak).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn exhausted_ids_give_ebusy() {
        let table = ObjectTable::with_max_id(3);
        let drops = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            add_probe(&table, &drops);
        }
        assert_eq!(table.reserve::<Probe>().unwrap_err(), Errno::EBUSY);
        table.destroy(ObjId(2)).unwrap();
        assert_eq!(add_probe(&table, &drops), ObjId(2));
    }

    #[test]
    fn fault_injection_fails_reserve_and_lookup() {
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        set_fail_nth(1);
        assert_eq!(table.reserve::<Probe>().unwrap_err(), Errno::ENOMEM);
        set_fail_nth(2);
        assert_eq!(table.reserve::<Probe>().unwrap_err(), Errno::ENOMEM);
        assert!(table.is_empty(), "a failed reservation leaves no id behind");
        let id = add_probe(&table, &drops);
        set_fail_nth(1);
        assert_eq!(table.get::<Probe>(id).unwrap_err(), Errno::ENOENT);
        set_fail_nth(0);
        assert_eq!(table.get::<Probe>(id).unwrap().id, id);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve,
        Finalize(usize),
        Abort(usize),
        Destroy(u32),
        Get(u32),
        Hold(u32),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Reserve),
            3 => any::<usize>().prop_map(Op::Finalize),
            1 => any::<usize>().prop_map(Op::Abort),
            3 => (0u32..12).prop_map(Op::Destroy),
            2 => (0u32..12).prop_map(Op::Get),
            1 => (0u32..12).prop_map(Op::Hold),
            1 => any::<usize>().prop_map(Op::Release),
        ]
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum ModelSlot {
        Reserved,
        Published,
    }

    proptest! {
        #[test]
        fn table_matches_a_model(ops in proptest::collection::vec(op(), 1..80)) {
            let table = ObjectTable::new();
            let drops = Arc::new(AtomicUsize::new(0));
            let mut model: BTreeMap<u32, ModelSlot> = BTreeMap::new();
            let mut pending: Vec<Reservation<'_, Probe>> = Vec::new();
            let mut holds: Vec<UsersRef<Probe>> = Vec::new();
            let mut finalized = 0usize;
            for op in ops {
                match op {
                    Op::Reserve => {
                        let expected = (1..).find(|id| !model.contains_key(id)).unwrap();
                        let r = table.reserve::<Probe>().unwrap();
                        prop_assert_eq!(r.id(), ObjId(expected));
                        model.insert(expected, ModelSlot::Reserved);
                        pending.push(r);
                    }
                    Op::Finalize(k) if !pending.is_empty() => {
                        let r = pending.remove(k % pending.len());
                        let id = r.id();
                        prop_assert_eq!(r.finalize(Probe { id, drops: Arc::clone(&drops) }), id);
                        model.insert(id.0, ModelSlot::Published);
                        finalized += 1;
                    }
                    Op::Abort(k) if !pending.is_empty() => {
                        let r = pending.remove(k % pending.len());
                        model.remove(&r.id().0);
                    }
                    Op::Destroy(id) => {
                        let held = holds.iter().any(|h| h.id() == ObjId(id));
                        let expected = match model.get(&id) {
                            Some(ModelSlot::Published) if held => Err(Errno::EBUSY),
                            Some(ModelSlot::Published) => Ok(()),
                            _ => Err(Errno::ENOENT),
                        };
                        prop_assert_eq!(table.destroy(ObjId(id)), expected);
                        if expected.is_ok() {
                            model.remove(&id);
                        }
                    }
                    Op::Get(id) => {
                        let got = table.get::<Probe>(ObjId(id));
                        let published = model.get(&id) == Some(&ModelSlot::Published);
                        prop_assert_eq!(got.is_ok(), published);
                        if let Ok(obj) = got {
                            prop_assert_eq!(obj.id, ObjId(id), "the id names the object created under it");
                        }
                    }
                    Op::Hold(id) => {
                        if let Ok(obj) = table.get::<Probe>(ObjId(id)) {
                            holds.push(obj.into_users_ref());
                        }
                    }
                    Op::Release(k) if !holds.is_empty() => {
                        holds.remove(k % holds.len());
                    }
                    _ => {}
                }
                prop_assert_eq!(table.len(), model.len());
                let destroyed = finalized - model.values().filter(|s| **s == ModelSlot::Published).count();
                prop_assert_eq!(drops.load(Ordering::SeqCst), destroyed);
            }
            drop(holds);
            drop(pending);
            prop_assert_eq!(table.destroy_all(), model.values().filter(|s| **s == ModelSlot::Published).count());
            prop_assert!(table.is_empty());
            prop_assert_eq!(drops.load(Ordering::SeqCst), finalized);
        }
    }

    /// Small deterministic generator for the stress test (no shared RNG state between threads).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn concurrent_create_lookup_destroy_keeps_ids_and_payloads_consistent() {
        const THREADS: u64 = 4;
        const ROUNDS: usize = 3000;
        let table = ObjectTable::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let created = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (table, drops, created) = (&table, &drops, &created);
                s.spawn(move || {
                    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                    let mut holds = Vec::new();
                    for _ in 0..ROUNDS {
                        let id = ObjId((xorshift(&mut rng) % 24) as u32 + 1);
                        match xorshift(&mut rng) % 6 {
                            0 | 1 => {
                                let r = table.reserve::<Probe>().unwrap();
                                let rid = r.id();
                                if xorshift(&mut rng).is_multiple_of(8) {
                                    drop(r);
                                } else {
                                    r.finalize(Probe {
                                        id: rid,
                                        drops: Arc::clone(drops),
                                    });
                                    created.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            2 => {
                                if let Ok(obj) = table.get::<Probe>(id) {
                                    assert_eq!(obj.id, id);
                                    assert_eq!(obj.id(), id);
                                }
                            }
                            3 => match table.destroy(id) {
                                Ok(()) | Err(Errno::ENOENT) | Err(Errno::EBUSY) => {}
                                Err(e) => panic!("unexpected {e}"),
                            },
                            4 => {
                                if let Ok(obj) = table.get::<Probe>(id) {
                                    holds.push(obj.into_users_ref());
                                }
                            }
                            _ => {
                                holds.pop();
                            }
                        }
                    }
                });
            }
        });
        let created = created.load(Ordering::SeqCst);
        let live = table.len();
        assert_eq!(drops.load(Ordering::SeqCst) + live, created);
        assert_eq!(table.destroy_all(), live);
        assert!(table.is_empty());
        assert_eq!(drops.load(Ordering::SeqCst), created);
    }
}
