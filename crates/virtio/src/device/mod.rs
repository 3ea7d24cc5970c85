//! The virtio-iommu device model: configuration space, request queue, event queue, translation.
//!
//! # Where state lives
//! * [`Params`]: fixed at construction (ranges, endpoints, offered features, caps).
//! * `Core::state` (`RwLock<State>`): domains, their mappings, which endpoint is attached where.
//!   Requests take it for writing, one request at a time; translations take it for reading.
//! * `Core::generation` (`AtomicU64`): bumped, under the state write lock, whenever a request
//!   removes or changes a translation an endpoint may have cached (UNMAP, DETACH, ATTACH, a
//!   `bypass` write, reset). Endpoint IOTLBs ([`crate::EndpointIommu`]) compare it before use
//!   and flush on change, so the device never has to reach into them. MAP only adds
//!   translations, which IOTLB misses pick up, so it does not bump it.
//! * `requestq` / `eventq` (`Mutex`): each virtqueue with the guest memory it lives in.
//!
//! Lock order: `requestq` -> `state`; an endpoint IOTLB lock -> `state`; `eventq` is a leaf:
//! faults are reported after every other lock is released.

mod config;
mod request;

pub(crate) use config::Params;
pub use config::{
    ConfigError, DeviceConfig, EndpointConfig, OfferedFeatures, ReservedKind, ReservedRegion,
};
pub(crate) use request::State;
pub use request::{Completion, Reply, MAX_REQUEST_SIZE};

use crate::spec::{
    self, Fault, ReqTail, VIRTIO_IOMMU_FAULT_F_ADDRESS, VIRTIO_IOMMU_FAULT_F_READ,
    VIRTIO_IOMMU_FAULT_F_WRITE, VIRTIO_IOMMU_F_BYPASS, VIRTIO_IOMMU_F_BYPASS_CONFIG,
    VIRTIO_IOMMU_MAP_F_READ, VIRTIO_IOMMU_MAP_F_WRITE,
};
use std::fmt;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::{GuestMemoryMmap, Permissions};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

/// Why the device could not do what its host asked (never a guest-visible status).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A queue is not ready or its rings are not inside guest memory.
    #[error("virtqueue {0} is not ready or not inside guest memory")]
    InvalidQueue(u16),
    /// Notification before [`VirtioIommu::activate`].
    #[error("the device is not activated")]
    NotActivated,
    /// No such virtqueue (the device has a request queue 0 and an event queue 1).
    #[error("no virtqueue {0}")]
    NoSuchQueue(u16),
    /// The used ring could not be written.
    #[error("virtqueue {queue}: {source}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
}

/// Why an access from an endpoint was refused (the spec's fault reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// `VIRTIO_IOMMU_FAULT_R_DOMAIN`: not attached to a domain and not in bypass.
    Domain,
    /// `VIRTIO_IOMMU_FAULT_R_MAPPING`: not mapped, or the mapping forbids the access.
    Mapping,
}

/// A contiguous translated piece of an IOVA range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub iova: u64,
    pub phys: u64,
    /// Last IOVA of the piece (inclusive).
    pub last: u64,
    pub perm: Permissions,
}

/// One snapshot's translation of an IOVA range.
#[derive(Debug)]
pub(crate) struct RangeTranslation {
    pub pieces: Vec<Piece>,
    /// The first refused byte, if any.
    pub fault: Option<(FaultReason, u64)>,
    /// `Core::generation` of the snapshot.
    pub generation: u64,
}

/// Host callback for used-buffer notifications ("interrupts"), given the queue index.
pub type Interrupt = Arc<dyn Fn(u16) + Send + Sync>;

struct ActiveQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
}

/// The device state shared by the request handlers and the translation paths.
pub(crate) struct Core {
    pub(crate) params: Params,
    negotiated: AtomicU64,
    bypass: AtomicBool,
    state: RwLock<State>,
    generation: AtomicU64,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("params", &self.params)
            .field("negotiated", &self.negotiated)
            .field("bypass", &self.bypass)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Core {
    fn negotiated(&self, feature: u32) -> bool {
        self.negotiated.load(Ordering::Acquire) & (1 << feature) != 0
    }

    // A poisoned lock means a handler panicked mid-update; the state is still structurally
    // valid (every update is a few map operations), so keep serving rather than panic too.
    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the state write lock held, after the change.
    fn invalidate_translations(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether an endpoint not attached to any domain bypasses translation.
    fn unattached_bypass(&self) -> bool {
        (self.params.offers(VIRTIO_IOMMU_F_BYPASS_CONFIG) && self.bypass.load(Ordering::Acquire))
            || self.negotiated(VIRTIO_IOMMU_F_BYPASS)
    }

    /// The translation of `[start, last]` for `endpoint`, clipped to that range, and why the
    /// first untranslatable byte faults (with its address), as of one state snapshot.
    pub(crate) fn translate_range(
        &self,
        endpoint: u32,
        start: u64,
        last: u64,
        access: Permissions,
    ) -> RangeTranslation {
        let st = self.read_state();
        // Read under the state lock, so it names exactly the state the pieces come from.
        let generation = self.generation();
        let identity = Piece {
            iova: start,
            phys: start,
            last,
            perm: Permissions::ReadWrite,
        };
        let done = |pieces, fault| RangeTranslation {
            pieces,
            fault,
            generation,
        };
        let Some(domain) = st.attached.get(&endpoint).and_then(|d| st.domains.get(d)) else {
            if self.unattached_bypass() {
                return done(vec![identity], None);
            }
            return done(Vec::new(), Some((FaultReason::Domain, start)));
        };
        if domain.bypass {
            return done(vec![identity], None);
        }
        let mut pieces = Vec::new();
        let mut next = Some(start);
        let mut fault = None;
        for m in domain.mappings.intersecting(start, last) {
            let iova = m.virt_start.max(start);
            if next.is_some_and(|n| iova > n) && fault.is_none() {
                fault = next.map(|n| (FaultReason::Mapping, n));
            }
            let perm = permissions(m.flags);
            if !perm.allow(access) && fault.is_none() {
                fault = Some((FaultReason::Mapping, iova));
            }
            let piece_last = m.virt_end.min(last);
            pieces.push(Piece {
                iova,
                phys: m.phys_of(iova),
                last: piece_last,
                perm,
            });
            next = piece_last.checked_add(1);
        }
        if let Some(n) = next.filter(|&n| n <= last) {
            fault = fault.or(Some((FaultReason::Mapping, n)));
        }
        done(pieces, fault)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The access a mapping's flags allow.
fn permissions(flags: u32) -> Permissions {
    match (
        flags & VIRTIO_IOMMU_MAP_F_READ != 0,
        flags & VIRTIO_IOMMU_MAP_F_WRITE != 0,
    ) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
    }
}

/// A virtio-iommu device (virtio device id 23) with its request and event virtqueues.
///
/// Built from a [`DeviceConfig`], activated with the two queues, driven by
/// [`VirtioIommu::notify`]. All methods take `&self`: see the module docs for what each lock
/// guards. Endpoints reach guest memory through [`VirtioIommu::endpoint_iommu`].
pub struct VirtioIommu {
    core: Arc<Core>,
    requestq: Mutex<Option<ActiveQueue>>,
    eventq: Mutex<Option<ActiveQueue>>,
    interrupt: RwLock<Option<Interrupt>>,
    faults_dropped: AtomicU64,
}

impl fmt::Debug for VirtioIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioIommu")
            .field("core", &self.core)
            .field("faults_dropped", &self.faults_dropped)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioIommu {
    /// Builds a device, in reset state: no domain, every endpoint unattached.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration breaks a spec rule (see its variants).
    pub fn new(config: &DeviceConfig) -> Result<Self, ConfigError> {
        let params = Params::new(config)?;
        Ok(VirtioIommu {
            core: Arc::new(Core {
                params,
                negotiated: AtomicU64::new(0),
                bypass: AtomicBool::new(config.bypass),
                state: RwLock::new(State::default()),
                generation: AtomicU64::new(0),
            }),
            requestq: Mutex::new(None),
            eventq: Mutex::new(None),
            interrupt: RwLock::new(None),
            faults_dropped: AtomicU64::new(0),
        })
    }

    /// Device feature bits offered to the driver.
    pub fn device_features(&self) -> u64 {
        self.core.params.offered
    }

    /// Records the driver's accepted features; bits the device did not offer are dropped.
    /// Returns the negotiated set.
    pub fn set_driver_features(&self, accepted: u64) -> u64 {
        let negotiated = accepted & self.core.params.offered;
        self.core.negotiated.store(negotiated, Ordering::Release);
        negotiated
    }

    /// Negotiated feature bits.
    pub fn negotiated_features(&self) -> u64 {
        self.core.negotiated.load(Ordering::Acquire)
    }

    /// The configuration space as the driver reads it.
    pub fn config(&self) -> spec::Config {
        let p = &self.core.params;
        spec::Config {
            page_size_mask: U64::new(p.page_size_mask),
            input_range: spec::Range64 {
                start: U64::new(p.input_start),
                end: U64::new(p.input_end),
            },
            domain_range: spec::Range32 {
                start: U32::new(p.domain_start),
                end: U32::new(p.domain_end),
            },
            probe_size: U32::new(p.probe_size),
            bypass: u8::from(self.core.bypass.load(Ordering::Acquire)),
            reserved: [0; 3],
        }
    }

    /// Driver write to config field `bypass`. Only bit 0 counts (the spec tells drivers to
    /// write 0 or 1); ignored unless BYPASS_CONFIG was negotiated, the one field the spec
    /// lets drivers write.
    pub fn write_bypass(&self, value: u8) {
        if !self.core.negotiated(VIRTIO_IOMMU_F_BYPASS_CONFIG) {
            return;
        }
        let _state = self.core.write_state();
        self.core.bypass.store(value & 1 != 0, Ordering::Release);
        self.core.invalidate_translations();
    }

    /// Starts the device on `mem` with its request queue (0) and event queue (1).
    ///
    /// # Errors
    /// [`DeviceError::InvalidQueue`] if a queue is not ready or its rings lie outside `mem`.
    pub fn activate(
        &self,
        mem: GuestMemoryMmap,
        requestq: Queue,
        eventq: Queue,
    ) -> Result<(), DeviceError> {
        if !requestq.is_valid(&mem) {
            return Err(DeviceError::InvalidQueue(spec::REQUEST_QUEUE));
        }
        if !eventq.is_valid(&mem) {
            return Err(DeviceError::InvalidQueue(spec::EVENT_QUEUE));
        }
        let mut rq = lock(&self.requestq);
        let mut eq = lock(&self.eventq);
        *rq = Some(ActiveQueue {
            mem: mem.clone(),
            queue: requestq,
        });
        *eq = Some(ActiveQueue { mem, queue: eventq });
        Ok(())
    }

    /// Device reset: queues stop, every endpoint is detached, every domain is gone. The
    /// `bypass` field keeps its value, as the spec asks.
    pub fn reset(&self) {
        let mut rq = lock(&self.requestq);
        *rq = None;
        *lock(&self.eventq) = None;
        let mut st = self.core.write_state();
        *st = State::default();
        self.core.negotiated.store(0, Ordering::Release);
        self.core.invalidate_translations();
    }

    /// Sets the callback used to notify the driver of used buffers.
    pub fn set_interrupt(&self, interrupt: Option<Interrupt>) {
        *self.interrupt.write().unwrap_or_else(|e| e.into_inner()) = interrupt;
    }

    /// The driver's queue notification: processes everything available on `queue`.
    /// Returns how many buffers were used.
    ///
    /// # Errors
    /// [`DeviceError::NoSuchQueue`], [`DeviceError::NotActivated`], or
    /// [`DeviceError::Queue`] when the used ring cannot be written.
    pub fn notify(&self, queue: u16) -> Result<usize, DeviceError> {
        match queue {
            spec::REQUEST_QUEUE => self.process_request_queue(),
            // Event buffers just wait for faults.
            spec::EVENT_QUEUE => {
                if lock(&self.eventq).is_none() {
                    return Err(DeviceError::NotActivated);
                }
                Ok(0)
            }
            other => Err(DeviceError::NoSuchQueue(other)),
        }
    }

    fn process_request_queue(&self) -> Result<usize, DeviceError> {
        let mut guard = lock(&self.requestq);
        let active = guard.as_mut().ok_or(DeviceError::NotActivated)?;
        let mem = &active.mem;
        let mut used = 0;
        while let Some(chain) = active.queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.complete_request(mem, chain);
            active
                .queue
                .add_used(mem, head, len)
                .map_err(|source| DeviceError::Queue {
                    queue: spec::REQUEST_QUEUE,
                    source,
                })?;
            used += 1;
        }
        drop(guard);
        if used > 0 {
            self.raise(spec::REQUEST_QUEUE);
        }
        Ok(used)
    }

    /// Runs one request chain; returns the used length.
    fn complete_request(
        &self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        // Descriptors pointing outside guest memory: nothing can be parsed or written.
        let (Ok(reader), Ok(mut writer)) = (
            Reader::new(mem, chain.clone()),
            Writer::<()>::new(mem, chain),
        ) else {
            return 0;
        };
        let mut readable = Vec::with_capacity(MAX_REQUEST_SIZE + 1);
        if reader
            .take(MAX_REQUEST_SIZE as u64 + 1)
            .read_to_end(&mut readable)
            .is_err()
        {
            return 0;
        }
        let completion = self.process(&readable, writer.available_bytes());
        let Completion::Answered {
            properties,
            status,
            tail_offset,
        } = &completion
        else {
            return 0;
        };
        let tail = ReqTail {
            status: *status as u8,
            reserved: [0; 3],
        };
        let written = writer.write_all(properties).is_ok()
            && writer
                .split_at(tail_offset - properties.len())
                .is_ok_and(|mut at_tail| at_tail.write_all(tail.as_bytes()).is_ok());
        if !written {
            return 0;
        }
        u32::try_from(completion.used_len()).unwrap_or(0)
    }

    /// Handles one request given its readable bytes and the size of its writable part,
    /// without any virtqueue: the request parser the fuzz target drives.
    pub fn process(&self, readable: &[u8], writable_len: usize) -> Completion {
        self.core.dispatch(readable, writable_len)
    }

    fn raise(&self, queue: u16) {
        let interrupt = self
            .interrupt
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(interrupt) = interrupt {
            interrupt(queue);
        }
    }

    /// Translates one access of one byte at `iova` from `endpoint`, reporting a fault on the
    /// event queue when it is refused.
    ///
    /// # Errors
    /// The [`FaultReason`]; unknown endpoints fault with [`FaultReason::Domain`].
    pub fn translate(
        &self,
        endpoint: u32,
        iova: u64,
        access: Permissions,
    ) -> Result<u64, FaultReason> {
        if !self.core.params.endpoints.contains_key(&endpoint) {
            return Err(FaultReason::Domain);
        }
        let result = self.core.translate_range(endpoint, iova, iova, access);
        if let Some((reason, address)) = result.fault {
            self.report_fault(endpoint, reason, access, address);
            return Err(reason);
        }
        result
            .pieces
            .first()
            .map(|p| p.phys)
            .ok_or(FaultReason::Mapping)
    }

    /// Writes a fault report to the next event buffer; drops it (and counts the drop) when the
    /// driver supplied none, which the spec allows.
    pub(crate) fn report_fault(
        &self,
        endpoint: u32,
        reason: FaultReason,
        access: Permissions,
        address: u64,
    ) {
        let mut flags = VIRTIO_IOMMU_FAULT_F_ADDRESS;
        if access.allow(Permissions::Read) {
            flags |= VIRTIO_IOMMU_FAULT_F_READ;
        }
        if access.allow(Permissions::Write) {
            flags |= VIRTIO_IOMMU_FAULT_F_WRITE;
        }
        let fault = Fault {
            reason: match reason {
                FaultReason::Domain => spec::VIRTIO_IOMMU_FAULT_R_DOMAIN,
                FaultReason::Mapping => spec::VIRTIO_IOMMU_FAULT_R_MAPPING,
            },
            reserved: [0; 3],
            flags: U32::new(flags),
            endpoint: U32::new(endpoint),
            reserved1: U32::new(0),
            address: U64::new(address),
        };
        let delivered = {
            let mut guard = lock(&self.eventq);
            match guard.as_mut() {
                Some(active) => deliver(active, &fault),
                None => false,
            }
        };
        if delivered {
            self.raise(spec::EVENT_QUEUE);
        } else {
            self.faults_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fault reports dropped for want of an event buffer.
    pub fn faults_dropped(&self) -> u64 {
        self.faults_dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }
}

/// Puts `fault` in the next event buffer. A buffer too small for a report is returned
/// unwritten: the spec forbids spreading one report over several buffers.
fn deliver(active: &mut ActiveQueue, fault: &Fault) -> bool {
    let mem = &active.mem;
    let Some(chain) = active.queue.pop_descriptor_chain(mem) else {
        return false;
    };
    let head = chain.head_index();
    let mut len = 0u32;
    if let Ok(mut writer) = Writer::<()>::new(mem, chain) {
        if writer.available_bytes() >= fault.as_bytes().len()
            && writer.write_all(fault.as_bytes()).is_ok()
        {
            len = fault.as_bytes().len() as u32;
        }
    }
    active.queue.add_used(mem, head, len).is_ok() && len > 0
}
