//! vIOMMU event queues (Linux `eventq.c`, the vEVENTQ half, 6.15 on): `IOMMU_VEVENTQ_ALLOC`,
//! the queue's file, and the report path drivers use ([`Viommu::report_event`]).
//!
//! # Model
//! A [`Veventq`] object is a bounded queue of one event type on one vIOMMU. The driver reports
//! events to the vIOMMU, which hands them to its queue of that type; user space reads them
//! from the queue's file as a header (`struct iommufd_vevent_header`: flags, sequence) followed
//! by the event's bytes. A full queue drops the event and leaves a LOST_EVENTS header (no data)
//! at its tail instead; every report, kept or lost, takes the next sequence number (31 bits),
//! so readers see the gap.
//!
//! # Locking
//! A queue's state mutex is a leaf. A vIOMMU's list of queues is locked before a queue's state
//! (report) and is itself a leaf otherwise.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::abi::*;
use crate::ctx::{Call, IommufdCtx};
use crate::errno::Errno;
use crate::failpoint::{should_fail, FailSite};
use crate::file::{EmulatedFile, FdReservation, PollEvents};
use crate::ioctl::Ucmd;
use crate::object::{ObjId, ObjectKind, ObjectPayload, UsersRef};
use crate::user_memory::{UserMemory, UserVa};
use crate::viommu::Viommu;

/// The deepest queue user space may ask for (`VEVENTQ_MAX_DEPTH`).
pub const VEVENTQ_MAX_DEPTH: u32 = 1 << 19;

/// `sizeof(struct iommufd_vevent_header)`.
const HEADER_LEN: usize = 8;

/// One queued record: an event, or the LOST_EVENTS header.
#[derive(Debug)]
struct Vevent {
    lost: bool,
    sequence: u32,
    data: Vec<u8>,
}

impl Vevent {
    fn header(&self) -> [u8; HEADER_LEN] {
        let flags = if self.lost {
            IOMMU_VEVENTQ_FLAG_LOST_EVENTS
        } else {
            0
        };
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&flags.to_le_bytes());
        header[4..].copy_from_slice(&self.sequence.to_le_bytes());
        header
    }
}

#[derive(Debug, Default)]
struct QueueState {
    deliver: VecDeque<Vevent>,
    /// Events (not LOST_EVENTS headers) queued.
    num_events: u32,
    /// The next sequence number.
    sequence: u32,
}

/// The queue of a [`Veventq`], shared with its vIOMMU's list of queues.
#[derive(Debug)]
pub struct VeventQueue {
    veventq_type: u32,
    depth: u32,
    state: Mutex<QueueState>,
}

impl VeventQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `IOMMU_VEVENTQ_TYPE_*` it holds.
    pub fn veventq_type(&self) -> u32 {
        self.veventq_type
    }

    /// Queue one event, or a LOST_EVENTS header when full (`iommufd_viommu_report_event()`
    /// past the queue lookup, and `iommufd_vevent_handler()`).
    pub(crate) fn report(&self, data: &[u8]) {
        let mut state = self.lock();
        let lost = state.num_events == self.depth;
        if !lost {
            state.num_events += 1;
        }
        if state.deliver.back().is_some_and(|last| last.lost) {
            state.deliver.pop_back();
        }
        let sequence = state.sequence;
        state.sequence = (sequence + 1) & i32::MAX as u32;
        state.deliver.push_back(Vevent {
            lost,
            sequence,
            data: if lost { Vec::new() } else { data.to_vec() },
        });
    }

    /// Records waiting to be read.
    pub fn queued(&self) -> usize {
        self.lock().deliver.len()
    }

    /// `read()` of the queue's file (`iommufd_veventq_fops_read()`): whole records only.
    ///
    /// # Errors
    /// A non-zero position → `ESPIPE`; `count` below a header, or too small for the first
    /// event → `EINVAL`; an unwritable buffer before anything was read → `EFAULT`.
    pub fn read(
        &self,
        user: &dyn UserMemory,
        buf: UserVa,
        count: usize,
        pos: u64,
    ) -> Result<usize, Errno> {
        if pos != 0 {
            return Err(Errno::ESPIPE);
        }
        if count < HEADER_LEN {
            return Err(Errno::EINVAL);
        }
        let mut state = self.lock();
        let mut done = 0usize;
        let mut error = None;
        while let Some(vevent) = state.deliver.pop_front() {
            if done >= count || HEADER_LEN > count - done {
                state.deliver.push_front(vevent);
                break;
            }
            let need = HEADER_LEN + vevent.data.len();
            if !vevent.lost && need > count - done {
                state.deliver.push_front(vevent);
                if done == 0 {
                    error = Some(Errno::EINVAL);
                }
                break;
            }
            let mut record = vevent.header().to_vec();
            record.extend_from_slice(&vevent.data);
            let at = buf.checked_add(done as u64).ok_or(Errno::EFAULT);
            if at
                .and_then(|at| user.write(at, &record).map_err(|_| Errno::EFAULT))
                .is_err()
            {
                // A LOST_EVENTS header goes back only if nothing came after it.
                if !vevent.lost || state.deliver.is_empty() {
                    state.deliver.push_front(vevent);
                }
                error = Some(Errno::EFAULT);
                break;
            }
            if !vevent.lost {
                state.num_events -= 1;
            }
            done += need;
        }
        match error {
            Some(err) if done == 0 => Err(err),
            _ => Ok(done),
        }
    }

    /// `poll()` readiness: always writable-looking, readable while records wait.
    pub fn poll(&self) -> PollEvents {
        if self.lock().deliver.is_empty() {
            PollEvents::OUT
        } else {
            PollEvents::OUT
                .union(PollEvents::IN)
                .union(PollEvents::RDNORM)
        }
    }
}

/// A vEVENTQ object (`struct iommufd_veventq`).
pub struct Veventq {
    viommu: UsersRef<Viommu>,
    queue: Arc<VeventQueue>,
}

impl fmt::Debug for Veventq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Veventq")
            .field("viommu", &self.viommu.id())
            .field("queue", &self.queue)
            .finish()
    }
}

impl ObjectPayload for Veventq {
    const KIND: ObjectKind = ObjectKind::Veventq;
}

impl Veventq {
    /// The queue.
    pub fn queue(&self) -> &Arc<VeventQueue> {
        &self.queue
    }
}

impl Drop for Veventq {
    /// `iommufd_veventq_destroy()`: leave the vIOMMU's list; queued records go with it.
    fn drop(&mut self) {
        self.viommu.remove_veventq(&self.queue);
    }
}

/// The file of a vEVENTQ (`[iommufd-viommu-event]`): holds a user on its object, so the object
/// cannot be destroyed while the file is open.
pub struct VeventqFile {
    veventq: UsersRef<Veventq>,
    _ctx: Arc<IommufdCtx>,
}

impl fmt::Debug for VeventqFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VeventqFile")
            .field("veventq", &self.veventq.id())
            .finish()
    }
}

impl VeventqFile {
    /// The vEVENTQ object's id.
    pub fn veventq_id(&self) -> ObjId {
        self.veventq.id()
    }

    /// The queue.
    pub fn queue(&self) -> &VeventQueue {
        &self.veventq.queue
    }
}

/// `IOMMU_VEVENTQ_ALLOC` (`iommufd_veventq_alloc()`).
///
/// # Errors
/// In the kernel's order: flags, `__reserved` or the DEFAULT type → `EOPNOTSUPP`; a depth of 0
/// or above [`VEVENTQ_MAX_DEPTH`] → `EINVAL`; unknown vIOMMU → `ENOENT`; a queue of that type
/// exists on the vIOMMU → `EEXIST`; object, file or fd allocation → `ENOMEM`/the installer's
/// error; the response → `EFAULT`.
pub(crate) fn veventq_alloc(
    call: &Call,
    ucmd: &mut Ucmd<'_, IommuVeventqAlloc>,
) -> Result<(), Errno> {
    let cmd = ucmd.cmd;
    if cmd.flags != 0 || cmd.reserved != 0 || cmd.veventq_type == IOMMU_VEVENTQ_TYPE_DEFAULT {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.veventq_depth == 0 || cmd.veventq_depth > VEVENTQ_MAX_DEPTH {
        return Err(Errno::EINVAL);
    }
    let objects = call.ctx.objects();
    let viommu = objects.get::<Viommu>(ObjId(cmd.viommu_id))?;
    let mut queues = viommu.lock_veventqs();
    if queues.iter().any(|q| q.veventq_type == cmd.veventq_type) {
        return Err(Errno::EEXIST);
    }
    let reservation = objects.reserve::<Veventq>()?;
    // anon_inode_getfile()
    if should_fail(FailSite::Alloc) {
        return Err(Errno::ENOMEM);
    }
    let fd = FdReservation::new(call.files().as_ref())?;
    ucmd.cmd.out_veventq_id = reservation.id().raw();
    ucmd.cmd.out_veventq_fd = fd.fd() as u32;
    ucmd.respond()?;
    let queue = Arc::new(VeventQueue {
        veventq_type: cmd.veventq_type,
        depth: cmd.veventq_depth,
        state: Mutex::new(QueueState::default()),
    });
    queues.push(Arc::clone(&queue));
    drop(queues);
    let veventq = reservation.finalize_owned(Veventq {
        viommu: viommu.users_ref(),
        queue,
    });
    fd.install(EmulatedFile::Veventq(Arc::new(VeventqFile {
        veventq,
        _ctx: Arc::clone(&call.ctx),
    })));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_memory::ModelMemory;

    const BUF: u64 = 0x10000;

    fn queue(depth: u32) -> VeventQueue {
        VeventQueue {
            veventq_type: 1,
            depth,
            state: Mutex::new(QueueState::default()),
        }
    }

    fn read(q: &VeventQueue, count: usize) -> Result<Vec<(u32, u32, Vec<u8>)>, Errno> {
        let user = ModelMemory::new();
        user.map(UserVa(BUF), 4096, true);
        let n = q.read(&user, UserVa(BUF), count, 0)?;
        let mut buf = vec![0u8; n];
        user.read(UserVa(BUF), &mut buf).unwrap();
        let mut records = Vec::new();
        let mut at = 0;
        while at < n {
            let flags = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
            let sequence = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let len = if flags & IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
                0
            } else {
                4
            };
            records.push((flags, sequence, buf[at + 8..at + 8 + len].to_vec()));
            at += 8 + len;
        }
        Ok(records)
    }

    #[test]
    fn reads_take_whole_records_and_refuse_short_counts() {
        let q = queue(4);
        assert_eq!(read(&q, 7), Err(Errno::EINVAL), "below a header");
        assert_eq!(read(&q, 8), Ok(vec![]), "empty");
        q.report(&[1, 0, 0, 0]);
        q.report(&[2, 0, 0, 0]);
        assert_eq!(
            read(&q, 8),
            Err(Errno::EINVAL),
            "the header fits, the event does not"
        );
        assert_eq!(
            read(&q, 20),
            Ok(vec![(0, 0, vec![1, 0, 0, 0])]),
            "one of two fits"
        );
        assert_eq!(read(&q, 24), Ok(vec![(0, 1, vec![2, 0, 0, 0])]));
        let user = ModelMemory::new();
        assert_eq!(q.read(&user, UserVa(BUF), 12, 1), Err(Errno::ESPIPE));
        q.report(&[3, 0, 0, 0]);
        assert_eq!(
            q.read(&user, UserVa(BUF), 12, 0),
            Err(Errno::EFAULT),
            "unmapped buffer"
        );
        assert_eq!(q.queued(), 1, "the event stays");
    }

    #[test]
    fn a_full_queue_keeps_one_lost_events_header_at_its_tail() {
        let q = queue(2);
        for i in 0..4u8 {
            q.report(&[i, 0, 0, 0]);
        }
        assert_eq!(q.queued(), 3, "two events and one LOST_EVENTS header");
        let records = read(&q, 64).unwrap();
        assert_eq!(
            records,
            vec![
                (0, 0, vec![0, 0, 0, 0]),
                (0, 1, vec![1, 0, 0, 0]),
                (IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 3, vec![]),
            ]
        );
        q.report(&[9, 0, 0, 0]);
        assert_eq!(read(&q, 64).unwrap(), vec![(0, 4, vec![9, 0, 0, 0])]);
    }
}
