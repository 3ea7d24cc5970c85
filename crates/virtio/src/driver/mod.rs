//! The virtio-iommu driver: an IOMMU instance for the core that programs the device only
//! through its virtqueues (Linux `drivers/iommu/virtio-iommu.c` is the model).
//!
//! # Model
//! * [`VirtioIommuDriver::probe`] negotiates features, reads the config space and sets up both
//!   queues in a driver-owned area of guest memory ([`DriverMemory`]); [`VirtioIommuDriver::register`]
//!   registers the instance with the core under the fwnode firmware gave the virtio-iommu node.
//!   Devices behind it carry fwspecs naming that fwnode, whose ids are endpoint ids.
//! * Every request is synchronous: written to one request buffer, made available on the request
//!   queue, notified, and its tail read back from the used buffer. A used length of zero reads
//!   as `VIRTIO_IOMMU_S_IOERR`, as Linux does.
//! * A paging domain keeps a shadow of its mappings. The device destroys a domain (and its
//!   mappings) when its last endpoint leaves, so the driver sends MAP only while the domain has
//!   endpoints, and replays the shadow when the first endpoint attaches again. The shadow also
//!   answers `iova_to_phys`.
//! * Domain ids come from `domain_range`: with BYPASS_CONFIG the first id is the identity
//!   domain (ATTACH with `VIRTIO_IOMMU_ATTACH_F_BYPASS`), the next is the blocked domain (an
//!   attached domain that never gets a mapping), the rest are allocated to paging domains.
//!
//! # Locking
//! `Inner::attached` (endpoint -> domain) -> one `DomainState::shadow` -> `Inner::channel`
//! (the queues) -> the device's own locks through [`Transport::notify`]. `Inner::ids` and
//! `Inner::devices` are leaves. The core calls `attach_dev` under its own lock, and
//! map/unmap without it; neither path takes two shadows at once.

mod transport;
mod vring;

pub use transport::{Transport, TransportError};
pub use vring::QueueLayout;

use crate::device::FaultReason;
use crate::mappings::{Mapping, Mappings};
use crate::spec::{
    self, ProbeProperty, ProbeResvMem, ReqAttach, ReqDetach, ReqHead, ReqMap, ReqProbe, ReqTail,
    ReqUnmap, Status,
};
use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::mem::size_of;
use std::sync::{Arc, Mutex, MutexGuard};
use uiommu_core::{
    Aperture, Capability, CoreError, DeviceId, DeviceInfo, DomainOps, DomainRequest, FwNode,
    GroupChoice, InstanceId, IommuCore, IommuOps, Iova, PagingFlags, PhysAddr, Prot,
    ReservedKind as CoreReservedKind, ReservedRegion as CoreReservedRegion, Result,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vring::{Buffer, DriverQueue};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Bytes of guest memory the driver needs at [`DriverMemory::base`].
pub const DRIVER_AREA_SIZE: u64 = 0x3000;
const QUEUE_SIZE: u16 = 64;
const REQUEST_BUF_OFFSET: u64 = 0x1000;
const REQUEST_BUF_LEN: u64 = 0x1000;
const EVENT_BUF_OFFSET: u64 = 0x2000;
const EVENT_BUF_LEN: u32 = 64;
const EVENT_BUFFERS: u16 = 32;
/// Linux's software MSI window, used when PROBE reports no MSI region.
const SW_MSI_BASE: u64 = 0x800_0000;
const SW_MSI_LEN: u64 = 0x10_0000;

/// The guest memory the driver may use for its rings and buffers: `DRIVER_AREA_SIZE` bytes at
/// `base`, shared with the device like any DMA memory.
#[derive(Clone, Debug)]
pub struct DriverMemory {
    /// Guest memory (the device sees the same).
    pub mem: GuestMemoryMmap,
    /// Start of the driver's area.
    pub base: GuestAddress,
}

/// A fault the device reported on the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultReport {
    /// The endpoint that faulted.
    pub endpoint: u32,
    /// Why; `None` for `VIRTIO_IOMMU_FAULT_R_UNKNOWN` or a reason this driver does not know.
    pub reason: Option<FaultReason>,
    /// The faulting address, when the device gave one.
    pub address: Option<u64>,
    /// The access was a read.
    pub read: bool,
    /// The access was a write.
    pub write: bool,
}

fn io(what: &'static str) -> CoreError {
    CoreError::Io(what)
}

/// The core's error for a request status (Linux `viommu_get_req_errno`; the core has no
/// ERANGE, EFAULT or ENOSYS, so those become `Invalid`, `Io` and `NotSupported`).
fn status_result(status: u8) -> Result<()> {
    match Status::from_u8(status) {
        Some(Status::Ok) => Ok(()),
        Some(Status::Unsupp) => Err(CoreError::NotSupported),
        Some(Status::Inval) => Err(CoreError::Invalid(
            "virtio-iommu: invalid request parameters",
        )),
        Some(Status::Range) => Err(CoreError::Invalid("virtio-iommu: parameter out of range")),
        Some(Status::NoEnt) => Err(CoreError::NotFound),
        Some(Status::Fault) => Err(io("virtio-iommu: bad address")),
        Some(Status::NoMem) => Err(CoreError::NoMemory),
        Some(Status::IoErr | Status::DevErr) | None => Err(io("virtio-iommu: device error")),
    }
}

struct Channel {
    requestq: DriverQueue,
    eventq: DriverQueue,
    request_buf: GuestAddress,
    /// Event chain head -> its buffer.
    event_bufs: HashMap<u16, GuestAddress>,
}

/// Paging domain ids, lowest free first.
#[derive(Debug)]
struct IdAllocator {
    next: u64,
    last: u32,
    freed: BTreeSet<u32>,
}

impl IdAllocator {
    fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.freed.pop_first() {
            return Some(id);
        }
        let id = u32::try_from(self.next)
            .ok()
            .filter(|&id| id <= self.last)?;
        self.next += 1;
        Some(id)
    }

    fn free(&mut self, id: u32) {
        self.freed.insert(id);
    }
}

struct Inner {
    transport: Box<dyn Transport>,
    mem: GuestMemoryMmap,
    features: u64,
    page_size_mask: u64,
    aperture: Aperture,
    probe_size: u32,
    identity_id: Option<u32>,
    blocked_id: u32,
    channel: Mutex<Channel>,
    ids: Mutex<IdAllocator>,
    attached: Mutex<HashMap<u32, Arc<DomainState>>>,
    devices: Mutex<HashMap<DeviceId, Vec<CoreReservedRegion>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn negotiated(&self, feature: u32) -> bool {
        self.features & (1 << feature) != 0
    }

    /// Sends one request and returns its device-writable part (tail included) once the status
    /// says OK.
    fn send(&self, request: &[u8], writable_len: u32) -> Result<Vec<u8>> {
        let total = request.len() as u64 + u64::from(writable_len);
        if total > REQUEST_BUF_LEN || (writable_len as usize) < size_of::<ReqTail>() {
            return Err(CoreError::Invalid(
                "request does not fit the request buffer",
            ));
        }
        let mut ch = lock(&self.channel);
        let buf = ch.request_buf;
        let reply_at = GuestAddress(buf.0 + request.len() as u64);
        let mut reply = vec![0u8; writable_len as usize];
        self.mem
            .write_slice(request, buf)
            .map_err(|_| io("request buffer"))?;
        self.mem
            .write_slice(&reply, reply_at)
            .map_err(|_| io("request buffer"))?;
        let head = ch
            .requestq
            .add(&[
                Buffer {
                    addr: buf,
                    len: request.len() as u32,
                    device_writable: false,
                },
                Buffer {
                    addr: reply_at,
                    len: writable_len,
                    device_writable: true,
                },
            ])
            .map_err(|_| io("request queue full"))?;
        self.transport
            .notify(spec::REQUEST_QUEUE)
            .map_err(|_| io("virtio-iommu notification failed"))?;
        let (used_head, used_len) = ch
            .requestq
            .pop_used()
            .ok_or(io("device returned no buffer"))?;
        if used_head != head {
            return Err(io("device returned another buffer"));
        }
        if used_len == 0 {
            return status_result(Status::IoErr as u8).map(|_| Vec::new());
        }
        self.mem
            .read_slice(&mut reply, reply_at)
            .map_err(|_| io("request buffer"))?;
        let status = reply[reply.len() - size_of::<ReqTail>()];
        status_result(status)?;
        Ok(reply)
    }

    fn send_plain(&self, request: &[u8]) -> Result<()> {
        self.send(request, size_of::<ReqTail>() as u32).map(|_| ())
    }

    fn attach_request(&self, domain: u32, endpoint: u32, flags: u32) -> Result<()> {
        let req = ReqAttach {
            head: ReqHead {
                type_: spec::VIRTIO_IOMMU_T_ATTACH,
                reserved: [0; 3],
            },
            domain: U32::new(domain),
            endpoint: U32::new(endpoint),
            flags: U32::new(flags),
            reserved: [0; 4],
        };
        self.send_plain(req.as_bytes())
    }

    fn detach_request(&self, domain: u32, endpoint: u32) -> Result<()> {
        let req = ReqDetach {
            head: ReqHead {
                type_: spec::VIRTIO_IOMMU_T_DETACH,
                reserved: [0; 3],
            },
            domain: U32::new(domain),
            endpoint: U32::new(endpoint),
            reserved: [0; 8],
        };
        self.send_plain(req.as_bytes())
    }

    fn map_request(&self, domain: u32, m: &Mapping) -> Result<()> {
        let req = ReqMap {
            head: ReqHead {
                type_: spec::VIRTIO_IOMMU_T_MAP,
                reserved: [0; 3],
            },
            domain: U32::new(domain),
            virt_start: U64::new(m.virt_start),
            virt_end: U64::new(m.virt_end),
            phys_start: U64::new(m.phys_start),
            flags: U32::new(m.flags),
        };
        self.send_plain(req.as_bytes())
    }

    fn unmap_request(&self, domain: u32, start: u64, end: u64) -> Result<()> {
        let req = ReqUnmap {
            head: ReqHead {
                type_: spec::VIRTIO_IOMMU_T_UNMAP,
                reserved: [0; 3],
            },
            domain: U32::new(domain),
            virt_start: U64::new(start),
            virt_end: U64::new(end),
            reserved: [0; 4],
        };
        self.send_plain(req.as_bytes())
    }

    /// PROBE one endpoint and turn its RESV_MEM properties into the core's reserved regions.
    fn probe_endpoint(&self, endpoint: u32, out: &mut Vec<CoreReservedRegion>) -> Result<()> {
        let req = ReqProbe {
            head: ReqHead {
                type_: spec::VIRTIO_IOMMU_T_PROBE,
                reserved: [0; 3],
            },
            endpoint: U32::new(endpoint),
            reserved: [0; 64],
        };
        let writable = self.probe_size + size_of::<ReqTail>() as u32;
        let reply = self.send(req.as_bytes(), writable)?;
        parse_properties(&reply[..self.probe_size as usize], out);
        Ok(())
    }
}

/// Walks a PROBE property list as the spec tells drivers to: stop at a NONE property or the
/// end, skip unknown types and properties with reserved bits, never trust a length to fit.
fn parse_properties(mut props: &[u8], out: &mut Vec<CoreReservedRegion>) {
    while let Ok((head, _)) = ProbeProperty::read_from_prefix(props) {
        let raw = head.type_.get();
        let type_ = raw & spec::VIRTIO_IOMMU_PROBE_T_MASK;
        if type_ == spec::VIRTIO_IOMMU_PROBE_T_NONE {
            return;
        }
        let Some(size) = (head.length.get() as usize).checked_add(size_of::<ProbeProperty>())
        else {
            return;
        };
        let Some(property) = props.get(..size) else {
            return;
        };
        let reserved_bits = raw & !spec::VIRTIO_IOMMU_PROBE_T_MASK != 0;
        if !reserved_bits && type_ == spec::VIRTIO_IOMMU_PROBE_T_RESV_MEM {
            if let Ok((mem, _)) = ProbeResvMem::read_from_prefix(property) {
                let (start, last) = (mem.start.get(), mem.end.get());
                if start <= last {
                    let msi =
                        crate::ReservedKind::from_subtype(mem.subtype) == crate::ReservedKind::Msi;
                    out.push(CoreReservedRegion {
                        start: Iova(start),
                        last: Iova(last),
                        prot: if msi { Prot::WRITE } else { Prot::NONE },
                        kind: if msi {
                            CoreReservedKind::Msi
                        } else {
                            CoreReservedKind::Reserved
                        },
                    });
                }
            }
        }
        props = &props[size..];
    }
}

/// The virtio-iommu driver for one device; registered with the core as one instance.
pub struct VirtioIommuDriver {
    inner: Arc<Inner>,
}

impl fmt::Debug for VirtioIommuDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioIommuDriver")
            .field("features", &format_args!("{:#x}", self.inner.features))
            .field(
                "page_size_mask",
                &format_args!("{:#x}", self.inner.page_size_mask),
            )
            .field("aperture", &self.inner.aperture)
            .finish_non_exhaustive()
    }
}

impl VirtioIommuDriver {
    /// Virtio driver probe (Linux `viommu_probe()`): negotiate features, read the config space,
    /// set up the request and event queues in `memory`, and post event buffers.
    ///
    /// # Errors
    /// `NotSupported` when the device does not offer MAP_UNMAP (the spec tells drivers to give
    /// up gracefully); `Invalid` for an empty page-size mask, an unusable domain range or a
    /// probe size too large for the request buffer; `Io` when the queues cannot be set up.
    pub fn probe(transport: Box<dyn Transport>, memory: DriverMemory) -> Result<Arc<Self>> {
        let bit = |b: u32| 1u64 << b;
        let offered = transport.device_features();
        if offered & bit(spec::VIRTIO_IOMMU_F_MAP_UNMAP) == 0 {
            return Err(CoreError::NotSupported);
        }
        let wanted = [
            spec::VIRTIO_F_VERSION_1,
            spec::VIRTIO_IOMMU_F_MAP_UNMAP,
            spec::VIRTIO_IOMMU_F_INPUT_RANGE,
            spec::VIRTIO_IOMMU_F_DOMAIN_RANGE,
            spec::VIRTIO_IOMMU_F_PROBE,
            spec::VIRTIO_IOMMU_F_MMIO,
            spec::VIRTIO_IOMMU_F_BYPASS_CONFIG,
        ]
        .into_iter()
        .fold(0, |acc, b| acc | bit(b));
        let features = transport.set_driver_features(offered & wanted);
        let has = |b: u32| features & bit(b) != 0;
        let config = transport.read_config();

        let page_size_mask = config.page_size_mask.get();
        if page_size_mask == 0 {
            return Err(CoreError::Invalid("virtio-iommu: empty page_size_mask"));
        }
        let aperture = if has(spec::VIRTIO_IOMMU_F_INPUT_RANGE) {
            let (start, last) = (config.input_range.start.get(), config.input_range.end.get());
            if start > last {
                return Err(CoreError::Invalid("virtio-iommu: empty input_range"));
            }
            Aperture {
                start: Iova(start),
                last: Iova(last),
            }
        } else {
            Aperture::FULL
        };
        let (mut first_domain, last_domain) = if has(spec::VIRTIO_IOMMU_F_DOMAIN_RANGE) {
            (
                config.domain_range.start.get(),
                config.domain_range.end.get(),
            )
        } else {
            (0, u32::MAX)
        };
        let mut reserve = || {
            let id = first_domain;
            (id <= last_domain && id < u32::MAX)
                .then(|| first_domain += 1)
                .map(|_| id)
        };
        let identity_id = if has(spec::VIRTIO_IOMMU_F_BYPASS_CONFIG) {
            Some(reserve().ok_or(CoreError::Invalid("virtio-iommu: domain_range too small"))?)
        } else {
            None
        };
        let blocked_id =
            reserve().ok_or(CoreError::Invalid("virtio-iommu: domain_range too small"))?;
        let probe_size = if has(spec::VIRTIO_IOMMU_F_PROBE) {
            config.probe_size.get()
        } else {
            0
        };
        let probe_request = size_of::<ReqProbe>() as u64 + u64::from(probe_size) + 4;
        if probe_request > REQUEST_BUF_LEN {
            return Err(CoreError::Invalid("virtio-iommu: probe_size too large"));
        }

        let base = memory.base.0;
        let at = |offset: u64| GuestAddress(base + offset);
        let requestq_layout = QueueLayout {
            size: QUEUE_SIZE,
            desc: at(0x000),
            avail: at(0x400),
            used: at(0x500),
        };
        let eventq_layout = QueueLayout {
            size: QUEUE_SIZE,
            desc: at(0x800),
            avail: at(0xc00),
            used: at(0xd00),
        };
        if base.checked_add(DRIVER_AREA_SIZE).is_none() {
            return Err(CoreError::Invalid("driver area wraps"));
        }
        let mem = memory.mem;
        // Claim (and clear) the whole area now, so a short one fails here, not mid-request.
        mem.write_slice(&[0u8; DRIVER_AREA_SIZE as usize], memory.base)
            .map_err(|_| io("driver area is not in guest memory"))?;
        let requestq = DriverQueue::new(mem.clone(), requestq_layout)
            .map_err(|_| io("driver area is not in guest memory"))?;
        let mut eventq = DriverQueue::new(mem.clone(), eventq_layout)
            .map_err(|_| io("driver area is not in guest memory"))?;
        transport
            .activate(&mem, [requestq_layout, eventq_layout])
            .map_err(|_| io("virtio-iommu rejected the queues"))?;
        let mut event_bufs = HashMap::new();
        for i in 0..u64::from(EVENT_BUFFERS) {
            let addr = at(EVENT_BUF_OFFSET + i * u64::from(EVENT_BUF_LEN));
            let head = eventq
                .add(&[Buffer {
                    addr,
                    len: EVENT_BUF_LEN,
                    device_writable: true,
                }])
                .map_err(|_| io("event queue"))?;
            event_bufs.insert(head, addr);
        }
        transport
            .notify(spec::EVENT_QUEUE)
            .map_err(|_| io("virtio-iommu notification failed"))?;

        Ok(Arc::new(VirtioIommuDriver {
            inner: Arc::new(Inner {
                transport,
                mem,
                features,
                page_size_mask,
                aperture,
                probe_size,
                identity_id,
                blocked_id,
                channel: Mutex::new(Channel {
                    requestq,
                    eventq,
                    request_buf: at(REQUEST_BUF_OFFSET),
                    event_bufs,
                }),
                ids: Mutex::new(IdAllocator {
                    next: u64::from(first_domain),
                    last: last_domain,
                    freed: BTreeSet::new(),
                }),
                attached: Mutex::new(HashMap::new()),
                devices: Mutex::new(HashMap::new()),
            }),
        }))
    }

    /// Builds a device model from `config` and probes a driver for it over `memory`: the
    /// in-process pairing a VMM or a platform driver factory wants. Returns both, the device
    /// for DMA views ([`crate::VirtioIommu::endpoint_iommu`]), the driver for the core.
    ///
    /// # Errors
    /// `Invalid` for a configuration the device refuses; then as [`VirtioIommuDriver::probe`].
    pub fn with_device(
        config: &crate::DeviceConfig,
        memory: DriverMemory,
    ) -> Result<(Arc<Self>, Arc<crate::VirtioIommu>)> {
        let device = Arc::new(
            crate::VirtioIommu::new(config)
                .map_err(|_| CoreError::Invalid("virtio-iommu device configuration"))?,
        );
        let driver = VirtioIommuDriver::probe(Box::new(Arc::clone(&device)), memory)?;
        Ok((driver, device))
    }

    /// Registers this driver with `core` as the instance behind `fwnode` (Linux
    /// `iommu_device_register()` at the end of `viommu_probe()`); devices whose fwspec names
    /// `fwnode` are probed now or when they are added.
    ///
    /// # Errors
    /// The core's: `Exists` when `fwnode` already has an instance.
    pub fn register(self: &Arc<Self>, core: &IommuCore, fwnode: FwNode) -> Result<InstanceId> {
        core.register(
            "virtio-iommu",
            Some(fwnode),
            Arc::clone(self) as Arc<dyn IommuOps>,
        )
    }

    /// Negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.inner.features
    }

    /// Reads the fault reports the device has put on the event queue and gives the buffers
    /// back. Reports with non-zero reserved fields are dropped, as the spec requires.
    pub fn poll_faults(&self) -> Vec<FaultReport> {
        let inner = &self.inner;
        let mut ch = lock(&inner.channel);
        let mut reports = Vec::new();
        let mut reposted = false;
        while let Some((head, len)) = ch.eventq.pop_used() {
            let Some(addr) = ch.event_bufs.remove(&head) else {
                continue;
            };
            let mut raw = [0u8; size_of::<spec::Fault>()];
            if len as usize >= raw.len() && inner.mem.read_slice(&mut raw, addr).is_ok() {
                if let Some(report) = decode_fault(&raw) {
                    reports.push(report);
                }
            }
            if let Ok(head) = ch.eventq.add(&[Buffer {
                addr,
                len: EVENT_BUF_LEN,
                device_writable: true,
            }]) {
                ch.event_bufs.insert(head, addr);
                reposted = true;
            }
        }
        drop(ch);
        if reposted {
            // A failed notification only delays the device's use of the new buffers.
            let _ = inner.transport.notify(spec::EVENT_QUEUE);
        }
        reports
    }

    fn paging_domain(&self) -> Result<Box<dyn DomainOps>> {
        let id = lock(&self.inner.ids).alloc().ok_or(CoreError::NoMemory)?;
        Ok(Box::new(VirtioDomain(Arc::new(DomainState::new(
            &self.inner,
            id,
            DomainKind::Paging,
        )))))
    }
}

fn decode_fault(raw: &[u8]) -> Option<FaultReport> {
    let fault = spec::Fault::read_from_bytes(raw).ok()?;
    if fault.reserved != [0; 3] {
        return None;
    }
    let flags = fault.flags.get();
    Some(FaultReport {
        endpoint: fault.endpoint.get(),
        reason: match fault.reason {
            spec::VIRTIO_IOMMU_FAULT_R_DOMAIN => Some(FaultReason::Domain),
            spec::VIRTIO_IOMMU_FAULT_R_MAPPING => Some(FaultReason::Mapping),
            _ => None,
        },
        address: (flags & spec::VIRTIO_IOMMU_FAULT_F_ADDRESS != 0).then(|| fault.address.get()),
        read: flags & spec::VIRTIO_IOMMU_FAULT_F_READ != 0,
        write: flags & spec::VIRTIO_IOMMU_FAULT_F_WRITE != 0,
    })
}

impl IommuOps for VirtioIommuDriver {
    fn name(&self) -> &str {
        "virtio-iommu"
    }

    /// Linux `viommu_probe_device()`: PROBE every endpoint id of the fwspec for its reserved
    /// regions; add the software MSI window when the device reported no MSI region.
    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        let instance = dev.iommu.ok_or(CoreError::NoDevice)?;
        let ids = dev.fwspec_ids();
        if ids.is_empty() {
            return Err(CoreError::NoDevice);
        }
        let mut regions = Vec::new();
        if self.inner.negotiated(spec::VIRTIO_IOMMU_F_PROBE) {
            for &endpoint in ids {
                match self.inner.probe_endpoint(endpoint, &mut regions) {
                    Err(CoreError::NotFound) => return Err(CoreError::NoDevice),
                    other => other?,
                }
            }
        }
        if !regions.iter().any(|r| r.kind == CoreReservedKind::Msi) {
            regions.push(CoreReservedRegion {
                start: Iova(SW_MSI_BASE),
                last: Iova(SW_MSI_BASE + SW_MSI_LEN - 1),
                prot: Prot::WRITE,
                kind: CoreReservedKind::SwMsi,
            });
        }
        lock(&self.inner.devices).insert(dev.id, regions);
        Ok(instance)
    }

    /// Linux `viommu_release_device()`: detach the endpoints and forget the device.
    fn release_device(&self, dev: &DeviceInfo<'_>) {
        let inner = &self.inner;
        let mut attached = lock(&inner.attached);
        for endpoint in dev.fwspec_ids() {
            if let Some(domain) = attached.remove(endpoint) {
                // Nothing to do about a failure: the device is leaving either way.
                let _ = inner.detach_request(domain.id, *endpoint);
                let mut shadow = lock(&domain.shadow);
                shadow.endpoints = shadow.endpoints.saturating_sub(1);
            }
        }
        drop(attached);
        lock(&inner.devices).remove(&dev.id);
    }

    /// PCI devices are grouped by PCI isolation rules, others one per group.
    fn device_group(&self, _dev: &DeviceInfo<'_>) -> GroupChoice {
        GroupChoice::Pci
    }

    fn domain_alloc(
        &self,
        _dev: &DeviceInfo<'_>,
        request: DomainRequest<'_>,
    ) -> Result<Box<dyn DomainOps>> {
        let shared = |id, kind| -> Box<dyn DomainOps> {
            Box::new(VirtioDomain(Arc::new(DomainState::new(
                &self.inner,
                id,
                kind,
            ))))
        };
        match request {
            DomainRequest::Blocked => Ok(shared(self.inner.blocked_id, DomainKind::Blocked)),
            DomainRequest::Identity => match self.inner.identity_id {
                Some(id) => Ok(shared(id, DomainKind::Identity)),
                None => Err(CoreError::NotSupported),
            },
            DomainRequest::Dma => self.paging_domain(),
            DomainRequest::Paging { flags, data: None } if flags == PagingFlags::default() => {
                self.paging_domain()
            }
            DomainRequest::Paging { .. } | DomainRequest::Nested { .. } => {
                Err(CoreError::NotSupported)
            }
        }
    }

    fn capable(&self, _dev: &DeviceInfo<'_>, cap: Capability) -> bool {
        cap == Capability::CacheCoherency
    }

    fn reserved_regions(&self, dev: &DeviceInfo<'_>) -> Vec<CoreReservedRegion> {
        lock(&self.inner.devices)
            .get(&dev.id)
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DomainKind {
    Paging,
    Identity,
    Blocked,
}

#[derive(Debug, Default)]
struct Shadow {
    mappings: Mappings,
    /// Endpoints attached through this domain object; the device holds the domain (and its
    /// mappings) only while this is non-zero.
    endpoints: usize,
}

struct DomainState {
    driver: Arc<Inner>,
    id: u32,
    kind: DomainKind,
    shadow: Mutex<Shadow>,
}

impl fmt::Debug for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainState")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl DomainState {
    fn new(driver: &Arc<Inner>, id: u32, kind: DomainKind) -> Self {
        DomainState {
            driver: Arc::clone(driver),
            id,
            kind,
            shadow: Mutex::new(Shadow::default()),
        }
    }
}

impl Drop for DomainState {
    fn drop(&mut self) {
        if self.kind == DomainKind::Paging {
            lock(&self.driver.ids).free(self.id);
        }
    }
}

/// A domain of this driver, as the core holds it.
#[derive(Debug)]
pub struct VirtioDomain(Arc<DomainState>);

impl VirtioDomain {
    /// The virtio domain id the device knows this domain by.
    pub fn domain_id(&self) -> u32 {
        self.0.id
    }
}

fn prot_flags(prot: Prot) -> u32 {
    let mut flags = 0;
    if prot.contains(Prot::READ) {
        flags |= spec::VIRTIO_IOMMU_MAP_F_READ;
    }
    if prot.contains(Prot::WRITE) {
        flags |= spec::VIRTIO_IOMMU_MAP_F_WRITE;
    }
    flags
}

impl DomainOps for VirtioDomain {
    /// Linux `viommu_attach_dev()`: ATTACH every endpoint of the device, then replay the shadow
    /// mappings if the domain had no endpoint (the device dropped them when it emptied).
    fn attach_dev(&self, dev: &DeviceInfo<'_>) -> Result<()> {
        let state = &self.0;
        let inner = &state.driver;
        let ids = dev.fwspec_ids();
        if ids.is_empty() {
            return Err(CoreError::NoDevice);
        }
        let flags = if state.kind == DomainKind::Identity {
            spec::VIRTIO_IOMMU_ATTACH_F_BYPASS
        } else {
            0
        };
        let mut attached = lock(&inner.attached);
        let mut moved = Vec::new();
        let result = {
            let mut shadow = lock(&state.shadow);
            let mut result = Ok(());
            for &endpoint in ids {
                if attached
                    .get(&endpoint)
                    .is_some_and(|d| Arc::ptr_eq(d, state))
                {
                    continue;
                }
                if let Err(err) = inner.attach_request(state.id, endpoint, flags) {
                    result = Err(err);
                    break;
                }
                if shadow.endpoints == 0 && moved.is_empty() {
                    for m in shadow.mappings.iter() {
                        if let Err(err) = inner.map_request(state.id, m) {
                            result = Err(err);
                            break;
                        }
                    }
                }
                moved.push(endpoint);
                if result.is_err() {
                    break;
                }
            }
            shadow.endpoints += moved.len();
            result
        };
        for endpoint in moved {
            if let Some(previous) = attached.insert(endpoint, Arc::clone(state)) {
                let mut shadow = lock(&previous.shadow);
                shadow.endpoints = shadow.endpoints.saturating_sub(1);
            }
        }
        result
    }

    fn pgsize_bitmap(&self) -> u64 {
        match self.0.kind {
            DomainKind::Paging => self.0.driver.page_size_mask,
            DomainKind::Identity | DomainKind::Blocked => 0,
        }
    }

    fn aperture(&self) -> Aperture {
        self.0.driver.aperture
    }

    /// Linux `viommu_map_pages()`: record the mapping, and send MAP if the device holds the
    /// domain now (otherwise the first ATTACH replays it).
    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: u64,
        prot: Prot,
    ) -> (u64, Result<()>) {
        let state = &self.0;
        if state.kind != DomainKind::Paging {
            return (0, Err(CoreError::NotSupported));
        }
        let Some(size) = pgsize.checked_mul(pgcount).filter(|&s| s > 0) else {
            return (0, Err(CoreError::Invalid("empty or overflowing map")));
        };
        let Some(last) = uiommu_core::inclusive_last(iova.0, size) else {
            return (0, Err(CoreError::Invalid("range wraps")));
        };
        if paddr.checked_add(size - 1).is_none() {
            return (0, Err(CoreError::Invalid("range wraps")));
        }
        if !state.driver.aperture.contains(iova, Iova(last)) {
            return (0, Err(CoreError::Invalid("range outside the aperture")));
        }
        let flags = prot_flags(prot);
        if flags == 0 {
            return (0, Err(CoreError::Invalid("mapping without access")));
        }
        let mapping = Mapping {
            virt_start: iova.0,
            virt_end: last,
            phys_start: paddr.0,
            flags,
        };
        let mut shadow = lock(&state.shadow);
        if shadow.mappings.overlaps(iova.0, last) {
            return (0, Err(CoreError::Exists));
        }
        if shadow.endpoints > 0 {
            if let Err(err) = state.driver.map_request(state.id, &mapping) {
                return (0, Err(err));
            }
        }
        shadow.mappings.insert(mapping);
        (size, Ok(()))
    }

    /// Linux `viommu_unmap_pages()`: remove every mapping starting in the range, whole (the
    /// device cannot split one), and UNMAP what they covered. Returns 0 when the range starts
    /// inside a mapping.
    fn unmap_pages(&self, iova: Iova, pgsize: u64, pgcount: u64) -> u64 {
        let state = &self.0;
        if state.kind != DomainKind::Paging {
            return 0;
        }
        let Some(last) = pgsize
            .checked_mul(pgcount)
            .and_then(|s| uiommu_core::inclusive_last(iova.0, s))
        else {
            return 0;
        };
        let mut shadow = lock(&state.shadow);
        let Ok(removed) = shadow.mappings.take_starting_in(iova.0, last) else {
            return 0;
        };
        let Some(end) = removed.iter().map(|m| m.virt_end).max() else {
            return 0;
        };
        if shadow.endpoints > 0 && state.driver.unmap_request(state.id, iova.0, end).is_err() {
            // The device kept them: so does the shadow.
            for m in removed {
                shadow.mappings.insert(m);
            }
            return 0;
        }
        removed.iter().map(|m| m.virt_end - m.virt_start + 1).sum()
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        let shadow = lock(&self.0.shadow);
        shadow
            .mappings
            .lookup(iova.0)
            .map(|m| PhysAddr(m.phys_of(iova.0)))
    }

    /// The shadow keeps each mapping's MAP flags: READ and WRITE become the permissions.
    fn iova_to_phys_prot(&self, iova: Iova) -> Option<(PhysAddr, Prot)> {
        let shadow = lock(&self.0.shadow);
        shadow.mappings.lookup(iova.0).map(|m| {
            let mut prot = Prot::NONE;
            if m.flags & spec::VIRTIO_IOMMU_MAP_F_READ != 0 {
                prot = prot.union(Prot::READ);
            }
            if m.flags & spec::VIRTIO_IOMMU_MAP_F_WRITE != 0 {
                prot = prot.union(Prot::WRITE);
            }
            (PhysAddr(m.phys_of(iova.0)), prot)
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_parser_skips_unknown_and_reserved_and_stops_at_none() {
        let resv = |start: u64, end: u64, raw_type: u16| {
            let p = ProbeResvMem {
                head: ProbeProperty {
                    type_: zerocopy::little_endian::U16::new(raw_type),
                    length: zerocopy::little_endian::U16::new(20),
                },
                subtype: spec::VIRTIO_IOMMU_RESV_MEM_T_MSI,
                reserved: [0; 3],
                start: U64::new(start),
                end: U64::new(end),
            };
            p.as_bytes().to_vec()
        };
        let mut props = Vec::new();
        props.extend(resv(0x1000, 0x1fff, 1 | 0x1000)); // reserved bit set: ignored
        props.extend([7, 0, 4, 0, 0xaa, 0xbb, 0xcc, 0xdd]); // unknown type 7, 4-byte value
        props.extend(resv(0x3000, 0x3fff, 1));
        props.extend([0; 4]); // NONE ends the list
        props.extend(resv(0x5000, 0x5fff, 1));
        let mut out = Vec::new();
        parse_properties(&props, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].last), (Iova(0x3000), Iova(0x3fff)));
        assert_eq!(out[0].kind, CoreReservedKind::Msi);
    }

    #[test]
    fn property_parser_stops_at_a_length_past_the_end() {
        let mut out = Vec::new();
        parse_properties(&[1, 0, 0xff, 0xff, 0, 0, 0, 0], &mut out);
        parse_properties(&[1, 0], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn status_maps_to_core_errors() {
        assert_eq!(status_result(0), Ok(()));
        assert_eq!(status_result(Status::NoEnt as u8), Err(CoreError::NotFound));
        assert_eq!(status_result(Status::NoMem as u8), Err(CoreError::NoMemory));
        assert_eq!(
            status_result(Status::Unsupp as u8),
            Err(CoreError::NotSupported)
        );
        assert!(matches!(
            status_result(Status::Range as u8),
            Err(CoreError::Invalid(_))
        ));
        assert!(matches!(
            status_result(Status::DevErr as u8),
            Err(CoreError::Io(_))
        ));
        assert!(matches!(status_result(200), Err(CoreError::Io(_))));
    }

    #[test]
    fn id_allocator_reuses_lowest_freed_and_stops_at_the_end() {
        let mut ids = IdAllocator {
            next: 5,
            last: 6,
            freed: BTreeSet::new(),
        };
        assert_eq!(ids.alloc(), Some(5));
        assert_eq!(ids.alloc(), Some(6));
        assert_eq!(ids.alloc(), None);
        ids.free(5);
        assert_eq!(ids.alloc(), Some(5));
        let mut top = IdAllocator {
            next: u64::from(u32::MAX),
            last: u32::MAX,
            freed: BTreeSet::new(),
        };
        assert_eq!(top.alloc(), Some(u32::MAX));
        assert_eq!(top.alloc(), None);
    }
}
