//! FAULT objects: queues of I/O page faults delivered to user space (Linux `fault.c`).
//!
//! # Model
//! A [`Fault`] is created by `IOMMU_FAULT_QUEUE_ALLOC` together with a file ([`FaultFile`]).
//! HWPTs allocated with `IOMMU_HWPT_FAULT_ID_VALID` point at it; when a device attached to such
//! a HWPT reports a page request, the request's *group* (the partial requests of one page
//! request group plus the last one) is appended to the queue's `deliver` list. Reading the file
//! moves whole groups to the `pending` table under a fresh cookie and returns one 40-byte
//! `struct iommu_hwpt_pgfault` per request; writing an 8-byte `struct iommu_hwpt_page_response`
//! with that cookie completes the group.
//!
//! Completing a group sends a page response to the IOMMU driver in Linux. The uiommu core has
//! no page-response operation (the only fault-reporting driver, the mock, ignores responses),
//! so a response is counted ([`Fault::responses`]) and otherwise dropped.
//!
//! Groups are answered `INVALID` automatically when the device's attachment they came through
//! goes away (detach or replace: `Fault::auto_respond`) and when the queue is destroyed.
//!
//! # Readiness observer
//! Whoever serves the file as a real descriptor (the preload) must make it pollable: it sets a
//! [`ReadinessObserver`] with [`FaultFile::set_readiness_observer`] and is told after every
//! change of the `deliver` list (delivery, read, automatic response), then reads the current
//! state itself ([`Fault::queued`]). The observer runs with `state` released, so it may call
//! back into the queue; but delivery and automatic responses happen under the device's group
//! lock, so it must not call iommufd ioctls. A notification carries no value on purpose: a
//! value computed under `state` and reported after releasing it can be overtaken by a racing
//! change, whereas the state re-read by the last notification to run is always the final one.
//!
//! # Locking
//! One mutex (`state`, the kernel's `fault->mutex` and `fault->lock` folded together) over both
//! lists; a condition variable signals readers. It is a leaf: user memory is written under it,
//! which takes no iommufd lock. `observer` is a leaf mutex held only to set or clone the
//! observer, never while calling it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use zerocopy::IntoBytes;

use crate::abi::{
    IommuFaultAlloc, IommuHwptPageResponse, IommuHwptPgfault, IOMMUFD_PAGE_RESP_INVALID,
    IOMMUFD_PAGE_RESP_SUCCESS,
};
use crate::ctx::{Call, IommufdCtx};
use crate::errno::Errno;
use crate::failpoint::{should_fail, FailSite};
use crate::file::{EmulatedFile, FdReservation, PollEvents};
use crate::ioctl::Ucmd;
use crate::object::{ObjId, ObjectKind, ObjectPayload, UsersRef};
use crate::user_memory::{UserMemory, UserVa};

/// One page request as a device reports it (the kernel's `struct iommu_fault_page_request`),
/// with flags and permissions already in their `IOMMU_PGFAULT_*` encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PageRequest {
    /// `IOMMU_PGFAULT_FLAGS_PASID_VALID` / `IOMMU_PGFAULT_FLAGS_LAST_PAGE`.
    pub flags: u32,
    /// PASID, meaningful with `PASID_VALID`.
    pub pasid: u32,
    /// Page request group index.
    pub grpid: u32,
    /// `IOMMU_PGFAULT_PERM_*`.
    pub perm: u32,
    /// The faulting address.
    pub addr: u64,
}

/// Identity of one attachment of a group to a HWPT (the kernel's `iommu_attach_handle`): faults
/// remember the attachment they came through so that detaching can answer them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AttachHandle(pub(crate) u64);

impl AttachHandle {
    /// A new, process-unique handle.
    pub(crate) fn new() -> AttachHandle {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        AttachHandle(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A page request group on its way to user space (`struct iopf_group`).
#[derive(Clone, Debug)]
pub(crate) struct FaultGroup {
    /// The requests, oldest first; the last one has `LAST_PAGE`.
    pub(crate) requests: Vec<PageRequest>,
    /// The DEVICE object reported in every record: the device that made the attachment.
    pub(crate) dev_id: ObjId,
    /// The attachment the group came through.
    pub(crate) handle: AttachHandle,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Groups not read yet, oldest first.
    deliver: VecDeque<FaultGroup>,
    /// Groups read and waiting for a response, by cookie.
    pending: BTreeMap<u32, FaultGroup>,
}

/// How many page responses a queue has sent, by code.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ResponseCounts {
    /// `IOMMUFD_PAGE_RESP_SUCCESS` responses.
    pub success: u64,
    /// `IOMMUFD_PAGE_RESP_INVALID` responses, written by user space or automatic.
    pub invalid: u64,
}

/// Told that a queue's `deliver` list may have changed (see the module documentation); gets
/// the queue, to read its state with [`Fault::queued`].
pub type ReadinessObserver = Arc<dyn Fn(&Fault) + Send + Sync>;

/// A FAULT object (`struct iommufd_fault`). Its file holds one user.
#[derive(Default)]
pub struct Fault {
    state: Mutex<FaultState>,
    /// Signalled when a group is delivered.
    delivered: Condvar,
    success: AtomicU64,
    invalid: AtomicU64,
    /// The file's readiness observer, while its file has one.
    observer: Mutex<Option<ReadinessObserver>>,
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fault")
            .field("state", &self.state)
            .field("success", &self.success)
            .field("invalid", &self.invalid)
            .finish_non_exhaustive()
    }
}

impl ObjectPayload for Fault {
    const KIND: ObjectKind = ObjectKind::Fault;
}

impl Fault {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a group for reading (`iommufd_fault_iopf_handler()`).
    pub(crate) fn deliver(&self, group: FaultGroup) {
        self.lock().deliver.push_back(group);
        self.delivered.notify_all();
        self.notify_observer();
    }

    /// Tell the observer, if any, that the `deliver` list may have changed. Called with
    /// `state` released.
    fn notify_observer(&self) {
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer(self);
        }
    }

    /// Answer `INVALID` to every queued or pending group that came through `handle`
    /// (`iommufd_auto_response_faults()`).
    pub(crate) fn auto_respond(&self, handle: AttachHandle) {
        let mut state = self.lock();
        let before = state.deliver.len() + state.pending.len();
        state.deliver.retain(|g| g.handle != handle);
        state.pending.retain(|_, g| g.handle != handle);
        let answered = before - state.deliver.len() - state.pending.len();
        self.invalid.fetch_add(answered as u64, Ordering::Relaxed);
        drop(state);
        self.notify_observer();
    }

    /// Responses sent so far.
    pub fn responses(&self) -> ResponseCounts {
        ResponseCounts {
            success: self.success.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
        }
    }

    /// Groups waiting to be read.
    pub fn queued(&self) -> usize {
        self.lock().deliver.len()
    }

    /// Groups read and not answered yet.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    fn respond(&self, code: u32) {
        if code == IOMMUFD_PAGE_RESP_SUCCESS {
            self.success.fetch_add(1, Ordering::Relaxed);
        } else {
            self.invalid.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Fault {
    /// Every group still queued or pending is answered `INVALID` (`iommufd_fault_destroy()`).
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let left = state.deliver.len() + state.pending.len();
        state.deliver.clear();
        state.pending.clear();
        self.invalid.fetch_add(left as u64, Ordering::Relaxed);
    }
}

const RECORD: usize = size_of::<IommuHwptPgfault>();
const RESPONSE: usize = size_of::<IommuHwptPageResponse>();

/// The file of a fault queue (`[iommufd-pgfault]`): holds a user of the FAULT object and the
/// context, both released when the last clone of the file is dropped (the kernel's release).
#[derive(Debug)]
pub struct FaultFile {
    fault: UsersRef<Fault>,
    _ctx: Arc<IommufdCtx>,
}

impl FaultFile {
    /// The queue's FAULT object id.
    pub fn fault_id(&self) -> ObjId {
        self.fault.id()
    }

    /// The queue.
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    /// Call `observer` after every change of the queue's `deliver` list from now on, until
    /// the file is dropped (it replaces any earlier observer). See the module documentation
    /// for what it may do.
    pub fn set_readiness_observer(&self, observer: ReadinessObserver) {
        *self
            .fault
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// `read()` (`iommufd_fault_fops_read()`): moves whole groups to the pending table and
    /// writes one record per request to `buf`. Never blocks; an empty queue reads 0 bytes.
    ///
    /// # Errors
    /// `pos != 0` or `count` not a multiple of 40 → `ESPIPE`; the first group does not fit →
    /// `EINVAL`; cookie allocation fails (fault injection) → `ENOMEM`; `buf` not writable →
    /// `EFAULT`. Errors are reported only when nothing was read; otherwise the byte count of
    /// the groups read before the error.
    pub fn read(
        &self,
        user: &dyn UserMemory,
        buf: UserVa,
        count: usize,
        pos: u64,
    ) -> Result<usize, Errno> {
        if pos != 0 || !count.is_multiple_of(RECORD) {
            return Err(Errno::ESPIPE);
        }
        let mut state = self.fault.lock();
        let mut done = 0usize;
        let mut error = None;
        while let Some(group) = state.deliver.pop_front() {
            let need = group.requests.len() * RECORD;
            if done >= count || need > count - done {
                state.deliver.push_front(group);
                if done == 0 {
                    error = Some(Errno::EINVAL);
                }
                break;
            }
            let Some(cookie) = free_cookie(&state.pending) else {
                state.deliver.push_front(group);
                error = Some(Errno::ENOMEM);
                break;
            };
            if let Err(err) = write_records(user, buf, done, &group, cookie) {
                state.deliver.push_front(group);
                error = Some(err);
                break;
            }
            done += need;
            state.pending.insert(cookie, group);
        }
        drop(state);
        if done > 0 {
            self.fault.notify_observer();
        }
        match error {
            Some(err) if done == 0 => Err(err),
            _ => Ok(done),
        }
    }

    /// `write()` (`iommufd_fault_fops_write()`): each 8-byte response completes the pending
    /// group with its cookie.
    ///
    /// # Errors
    /// `pos != 0` or `count` not a multiple of 8 → `ESPIPE`; unreadable `buf` → `EFAULT`; a
    /// code other than SUCCESS/INVALID, or an unknown cookie → `EINVAL`. Errors are reported
    /// only when no response was processed; otherwise the bytes processed.
    pub fn write(
        &self,
        user: &dyn UserMemory,
        buf: UserVa,
        count: usize,
        pos: u64,
    ) -> Result<usize, Errno> {
        if pos != 0 || !count.is_multiple_of(RESPONSE) {
            return Err(Errno::ESPIPE);
        }
        let mut state = self.fault.lock();
        let mut done = 0usize;
        let mut error = None;
        while count > done {
            let mut response = IommuHwptPageResponse::default();
            let at = buf.checked_add(done as u64).ok_or(Errno::EFAULT);
            if let Err(err) =
                at.and_then(|at| user.read(at, response.as_mut_bytes()).map_err(Errno::from))
            {
                error = Some(err);
                break;
            }
            if response.code != IOMMUFD_PAGE_RESP_SUCCESS
                && response.code != IOMMUFD_PAGE_RESP_INVALID
            {
                error = Some(Errno::EINVAL);
                break;
            }
            if state.pending.remove(&response.cookie).is_none() {
                error = Some(Errno::EINVAL);
                break;
            }
            self.fault.respond(response.code);
            done += RESPONSE;
        }
        match error {
            Some(err) if done == 0 => Err(err),
            _ => Ok(done),
        }
    }

    /// `poll()`: always writable; readable while groups are queued.
    pub fn poll(&self) -> PollEvents {
        if self.fault.lock().deliver.is_empty() {
            PollEvents::OUT
        } else {
            PollEvents::OUT
                .union(PollEvents::IN)
                .union(PollEvents::RDNORM)
        }
    }

    /// Wait up to `timeout` for a group to be queued, then report [`FaultFile::poll`]: what a
    /// blocking `poll()` on the fd does.
    pub fn wait_readable(&self, timeout: Duration) -> PollEvents {
        let state = self.fault.lock();
        let _state = self
            .fault
            .delivered
            .wait_timeout_while(state, timeout, |s| s.deliver.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        drop(_state);
        self.poll()
    }
}

impl Drop for FaultFile {
    /// The observer belongs to the file: deliveries to the object after the last close are
    /// nobody's to signal.
    fn drop(&mut self) {
        *self
            .fault
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The lowest free cookie ≥ 1 (`xa_alloc()` with `XA_FLAGS_ALLOC1`), or `None` when the
/// allocation fails.
fn free_cookie(pending: &BTreeMap<u32, FaultGroup>) -> Option<u32> {
    if should_fail(FailSite::Alloc) {
        return None;
    }
    let mut cookie = 1u32;
    for &used in pending.keys() {
        if used != cookie {
            break;
        }
        cookie = cookie.checked_add(1)?;
    }
    Some(cookie)
}

/// `iommufd_compose_fault_message()` for each request of `group`, written at `buf + offset`.
fn write_records(
    user: &dyn UserMemory,
    buf: UserVa,
    offset: usize,
    group: &FaultGroup,
    cookie: u32,
) -> Result<(), Errno> {
    for (i, request) in group.requests.iter().enumerate() {
        let record = IommuHwptPgfault {
            flags: request.flags,
            dev_id: group.dev_id.raw(),
            pasid: request.pasid,
            grpid: request.grpid,
            perm: request.perm,
            reserved: 0,
            addr: request.addr,
            length: 0,
            cookie,
        };
        let at = buf
            .checked_add((offset + i * RECORD) as u64)
            .ok_or(Errno::EFAULT)?;
        user.write(at, record.as_bytes())?;
    }
    Ok(())
}

/// `IOMMU_FAULT_QUEUE_ALLOC` (`iommufd_fault_alloc()`).
///
/// # Errors
/// In order: `flags != 0` → `EOPNOTSUPP`; object or file allocation → `ENOMEM`; no free fd
/// number → the installer's error; response not writable → `EFAULT`.
pub(crate) fn alloc(call: &Call, ucmd: &mut Ucmd<'_, IommuFaultAlloc>) -> Result<(), Errno> {
    if ucmd.cmd.flags != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let objects = call.ctx.objects();
    let reservation = objects.reserve::<Fault>()?;
    // anon_inode_getfile()
    if should_fail(FailSite::Alloc) {
        return Err(Errno::ENOMEM);
    }
    let fd = FdReservation::new(call.files().as_ref())?;
    ucmd.cmd.out_fault_id = reservation.id().raw();
    ucmd.cmd.out_fault_fd = fd.fd() as u32;
    ucmd.respond()?;
    let fault = reservation.finalize_owned(Fault::default());
    fd.install(EmulatedFile::Fault(Arc::new(FaultFile {
        fault,
        _ctx: Arc::clone(&call.ctx),
    })));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(handle: AttachHandle) -> FaultGroup {
        FaultGroup {
            requests: vec![PageRequest {
                flags: crate::abi::IOMMU_PGFAULT_FLAGS_LAST_PAGE,
                ..PageRequest::default()
            }],
            dev_id: ObjId(1),
            handle,
        }
    }

    #[test]
    fn the_observer_sees_each_delivery_and_automatic_response_with_the_lock_released() {
        let fault = Fault::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        // Reading the queue inside the observer would deadlock if `state` were still held.
        *fault.observer.lock().unwrap() = Some(Arc::new(move |f: &Fault| {
            log.lock().unwrap().push(f.queued());
        }));
        let (a, b) = (AttachHandle::new(), AttachHandle::new());
        fault.deliver(group(a));
        fault.deliver(group(b));
        fault.auto_respond(a);
        fault.auto_respond(b);
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 1, 0]);
    }
}
