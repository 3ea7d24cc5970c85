//! Request decoding and one handler per request type.
//!
//! [`Core::dispatch`] turns the bytes of one request into a [`Completion`]: it finds the tail,
//! checks the buffer layout for the request's type, and hands a decoded struct to the handler.
//! Each handler returns `Result<Reply, Status>`, so the status is whatever check failed first and
//! no path can forget to answer. Check order inside a handler: feature and MUST-level field
//! checks (flags, reserved) first, then ranges and alignment, then lookups, then caps.
//!
//! Buffer layout policy (the spec leaves most of it to the device):
//! * the tail is the last 4 bytes of the device-writable part, where Linux's driver reads it;
//!   with fewer than 4 writable bytes there is no tail, so the buffers go back unwritten with
//!   used length 0, as the spec says for requests the device cannot parse;
//! * an unknown `type`, or PROBE when the device does not offer it, also gets used length 0,
//!   as the spec requires;
//! * a readable part shorter than the head, or not exactly the size of its request type, or a
//!   writable part of the wrong size (other than a short PROBE properties buffer, which the spec
//!   answers with INVAL) is a transport-level error: `VIRTIO_IOMMU_S_DEVERR`.

use super::Core;
use crate::mappings::Mapping;
use crate::spec::{
    ProbeProperty, ProbeResvMem, ReqAttach, ReqDetach, ReqHead, ReqMap, ReqProbe, ReqTail,
    ReqUnmap, Status, VIRTIO_IOMMU_ATTACH_F_BYPASS, VIRTIO_IOMMU_F_BYPASS_CONFIG,
    VIRTIO_IOMMU_F_MAP_UNMAP, VIRTIO_IOMMU_F_MMIO, VIRTIO_IOMMU_F_PROBE, VIRTIO_IOMMU_MAP_F_MMIO,
    VIRTIO_IOMMU_MAP_F_READ, VIRTIO_IOMMU_MAP_F_WRITE, VIRTIO_IOMMU_PROBE_T_RESV_MEM,
    VIRTIO_IOMMU_T_ATTACH, VIRTIO_IOMMU_T_DETACH, VIRTIO_IOMMU_T_MAP, VIRTIO_IOMMU_T_PROBE,
    VIRTIO_IOMMU_T_UNMAP,
};
use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;
use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, IntoBytes};

/// The largest device-readable part of any request the device knows (PROBE). The queue layer
/// reads at most one byte more, which is enough to tell that a request is oversized.
pub const MAX_REQUEST_SIZE: usize = size_of::<ReqProbe>();

const TAIL_SIZE: usize = size_of::<ReqTail>();

/// What a successful request returns besides `VIRTIO_IOMMU_S_OK`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing but the status.
    Done,
    /// PROBE: exactly `probe_size` bytes of properties.
    Properties(Vec<u8>),
}

/// What the device writes back for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// Return the buffers unwritten, used length 0.
    Unanswered,
    /// Write `properties` at offset 0 of the writable part and the tail at `tail_offset`.
    Answered {
        /// PROBE properties (empty for other requests and for failed PROBEs).
        properties: Vec<u8>,
        /// The request's status.
        status: Status,
        /// Where the tail goes: the last 4 writable bytes.
        tail_offset: usize,
    },
}

impl Completion {
    /// The used length to report: everything up to and including the tail.
    pub fn used_len(&self) -> usize {
        match self {
            Completion::Unanswered => 0,
            Completion::Answered { tail_offset, .. } => tail_offset + TAIL_SIZE,
        }
    }

    /// The status, if the request was answered.
    pub fn status(&self) -> Option<Status> {
        match self {
            Completion::Unanswered => None,
            Completion::Answered { status, .. } => Some(*status),
        }
    }
}

/// A domain: its kind, its mappings and who is attached.
#[derive(Debug, Default)]
pub(crate) struct Domain {
    /// Created by ATTACH with `VIRTIO_IOMMU_ATTACH_F_BYPASS`: identity, no mappings.
    pub bypass: bool,
    pub mappings: crate::mappings::Mappings,
    pub endpoints: BTreeSet<u32>,
}

/// Everything requests change. Guarded by `Core::state`.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub domains: BTreeMap<u32, Domain>,
    /// endpoint id -> domain id.
    pub attached: BTreeMap<u32, u32>,
    /// Mappings over all domains, for the device-wide cap.
    pub total_mappings: usize,
}

impl State {
    /// Detaches `endpoint` from whatever domain it is in; a domain left empty ceases to exist.
    fn detach_endpoint(&mut self, endpoint: u32) {
        let Some(domain_id) = self.attached.remove(&endpoint) else {
            return;
        };
        if let Some(domain) = self.domains.get_mut(&domain_id) {
            domain.endpoints.remove(&endpoint);
            if domain.endpoints.is_empty() {
                let gone = domain.mappings.len();
                self.domains.remove(&domain_id);
                self.total_mappings -= gone;
            }
        }
    }
}

fn decode<T: FromBytes>(readable: &[u8]) -> Result<T, Status> {
    T::read_from_bytes(readable).map_err(|_| Status::DevErr)
}

fn ranges_overlap(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
    a_start <= b_end && b_start <= a_end
}

impl Core {
    /// Decodes and executes one request. `readable` is the device-readable part (possibly cut
    /// short at [`MAX_REQUEST_SIZE`] + 1 bytes), `writable_len` the size of the writable part.
    pub(crate) fn dispatch(&self, readable: &[u8], writable_len: usize) -> Completion {
        let Some(tail_offset) = writable_len.checked_sub(TAIL_SIZE) else {
            return Completion::Unanswered;
        };
        let answer = |result: Result<Reply, Status>| match result {
            Ok(Reply::Done) => Completion::Answered {
                properties: Vec::new(),
                status: Status::Ok,
                tail_offset,
            },
            Ok(Reply::Properties(properties)) => Completion::Answered {
                properties,
                status: Status::Ok,
                tail_offset,
            },
            Err(status) => Completion::Answered {
                properties: Vec::new(),
                status,
                tail_offset,
            },
        };
        let Ok((head, _)) = ReqHead::read_from_prefix(readable) else {
            return answer(Err(Status::DevErr));
        };
        // Every request but PROBE has nothing writable except the tail.
        let plain = |result: Result<Reply, Status>| {
            if writable_len != TAIL_SIZE {
                answer(Err(Status::DevErr))
            } else {
                answer(result)
            }
        };
        match head.type_ {
            VIRTIO_IOMMU_T_ATTACH => plain(decode(readable).and_then(|r| self.attach(&r))),
            VIRTIO_IOMMU_T_DETACH => plain(decode(readable).and_then(|r| self.detach(&r))),
            VIRTIO_IOMMU_T_MAP => plain(decode(readable).and_then(|r| self.map(&r))),
            VIRTIO_IOMMU_T_UNMAP => plain(decode(readable).and_then(|r| self.unmap(&r))),
            VIRTIO_IOMMU_T_PROBE if self.params.offers(VIRTIO_IOMMU_F_PROBE) => {
                answer(decode(readable).and_then(|r| self.probe(&r, tail_offset)))
            }
            // Unknown types and PROBE without the feature: the spec says leave the buffer
            // unwritten and report used length 0.
            _ => Completion::Unanswered,
        }
    }

    /// ATTACH: put `endpoint` in `domain`, creating the domain, moving the endpoint if needed.
    pub(crate) fn attach(&self, req: &ReqAttach) -> Result<Reply, Status> {
        if req.reserved != [0; 4] {
            return Err(Status::Inval);
        }
        let known_flags = if self.negotiated(VIRTIO_IOMMU_F_BYPASS_CONFIG) {
            VIRTIO_IOMMU_ATTACH_F_BYPASS
        } else {
            0
        };
        let flags = req.flags.get();
        if flags & !known_flags != 0 {
            return Err(Status::Inval);
        }
        let endpoint = req.endpoint.get();
        let reserved = self.params.endpoints.get(&endpoint).ok_or(Status::NoEnt)?;
        let domain_id = req.domain.get();
        self.check_domain_range(domain_id)?;
        let bypass = flags & VIRTIO_IOMMU_ATTACH_F_BYPASS != 0;

        let mut st = self.write_state();
        let current = st.attached.get(&endpoint).copied();
        match st.domains.get(&domain_id) {
            Some(domain) => {
                if domain.bypass != bypass {
                    return Err(Status::Inval);
                }
                // An endpoint whose reserved regions are already mapped in the domain has
                // properties incompatible with it.
                let clash = reserved
                    .iter()
                    .any(|r| domain.mappings.overlaps(r.start, r.end));
                if clash {
                    return Err(Status::Unsupp);
                }
                if current == Some(domain_id) {
                    return Ok(Reply::Done);
                }
            }
            None => {
                let frees_old = current
                    .and_then(|old| st.domains.get(&old))
                    .is_some_and(|d| d.endpoints.len() == 1);
                if st.domains.len() - usize::from(frees_old) >= self.params.max_domains {
                    return Err(Status::NoMem);
                }
            }
        }
        st.detach_endpoint(endpoint);
        let domain = st.domains.entry(domain_id).or_insert_with(|| Domain {
            bypass,
            ..Domain::default()
        });
        domain.endpoints.insert(endpoint);
        st.attached.insert(endpoint, domain_id);
        self.invalidate_translations();
        Ok(Reply::Done)
    }

    /// DETACH: take `endpoint` out of `domain`; the domain ceases to exist when it empties.
    pub(crate) fn detach(&self, req: &ReqDetach) -> Result<Reply, Status> {
        let endpoint = req.endpoint.get();
        if !self.params.endpoints.contains_key(&endpoint) {
            return Err(Status::NoEnt);
        }
        let domain_id = req.domain.get();
        self.check_domain_range(domain_id)?;
        let mut st = self.write_state();
        if st.attached.get(&endpoint) != Some(&domain_id) {
            return Err(Status::Inval);
        }
        st.detach_endpoint(endpoint);
        self.invalidate_translations();
        Ok(Reply::Done)
    }

    /// MAP: add `[virt_start, virt_end] -> phys_start` to `domain`.
    pub(crate) fn map(&self, req: &ReqMap) -> Result<Reply, Status> {
        if !self.negotiated(VIRTIO_IOMMU_F_MAP_UNMAP) {
            return Err(Status::Unsupp);
        }
        let mut known_flags = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE;
        if self.negotiated(VIRTIO_IOMMU_F_MMIO) {
            known_flags |= VIRTIO_IOMMU_MAP_F_MMIO;
        }
        let flags = req.flags.get();
        if flags & !known_flags != 0 {
            return Err(Status::Inval);
        }
        let (virt_start, virt_end, phys_start) = (
            req.virt_start.get(),
            req.virt_end.get(),
            req.phys_start.get(),
        );
        if virt_end < virt_start {
            return Err(Status::Inval);
        }
        // virt_end + 1 wraps to 0 for a mapping ending at the top, which is aligned.
        let granule = self.params.granule_mask;
        if (virt_start | phys_start | virt_end.wrapping_add(1)) & granule != 0 {
            return Err(Status::Range);
        }
        self.check_input_range(virt_start, virt_end)?;
        if phys_start.checked_add(virt_end - virt_start).is_none() {
            return Err(Status::Range);
        }
        let domain_id = req.domain.get();
        self.check_domain_range(domain_id)?;

        let mut st = self.write_state();
        let total = st.total_mappings;
        let domain = st.domains.get_mut(&domain_id).ok_or(Status::NoEnt)?;
        if domain.bypass {
            return Err(Status::Inval);
        }
        if domain.mappings.overlaps(virt_start, virt_end) {
            return Err(Status::Inval);
        }
        let hits_reserved = domain.endpoints.iter().any(|ep| {
            self.params.endpoints.get(ep).is_some_and(|regions| {
                regions
                    .iter()
                    .any(|r| ranges_overlap(r.start, r.end, virt_start, virt_end))
            })
        });
        if hits_reserved {
            return Err(Status::Inval);
        }
        if domain.mappings.len() >= self.params.max_mappings_per_domain
            || total >= self.params.max_mappings_total
        {
            return Err(Status::NoMem);
        }
        domain.mappings.insert(Mapping {
            virt_start,
            virt_end,
            phys_start,
            flags,
        });
        st.total_mappings += 1;
        Ok(Reply::Done)
    }

    /// UNMAP: remove every mapping inside `[virt_start, virt_end]`, refusing to split one.
    pub(crate) fn unmap(&self, req: &ReqUnmap) -> Result<Reply, Status> {
        if !self.negotiated(VIRTIO_IOMMU_F_MAP_UNMAP) {
            return Err(Status::Unsupp);
        }
        // The spec lets the device answer INVAL here; it then chooses not to unmap.
        if req.reserved != [0; 4] {
            return Err(Status::Inval);
        }
        let (virt_start, virt_end) = (req.virt_start.get(), req.virt_end.get());
        if virt_end < virt_start {
            return Err(Status::Inval);
        }
        self.check_input_range(virt_start, virt_end)?;
        let domain_id = req.domain.get();
        self.check_domain_range(domain_id)?;

        let mut st = self.write_state();
        let domain = st.domains.get_mut(&domain_id).ok_or(Status::NoEnt)?;
        if domain.bypass {
            return Err(Status::Inval);
        }
        let removed = domain
            .mappings
            .unmap(virt_start, virt_end)
            .map_err(|_| Status::Range)?;
        st.total_mappings -= removed;
        if removed > 0 {
            self.invalidate_translations();
        }
        Ok(Reply::Done)
    }

    /// PROBE: report `endpoint`'s reserved regions as RESV_MEM properties.
    pub(crate) fn probe(&self, req: &ReqProbe, properties_len: usize) -> Result<Reply, Status> {
        let probe_size = self.params.probe_size as usize;
        if properties_len < probe_size {
            return Err(Status::Inval);
        }
        if properties_len > probe_size {
            return Err(Status::DevErr);
        }
        let regions = self
            .params
            .endpoints
            .get(&req.endpoint.get())
            .ok_or(Status::NoEnt)?;
        let mut properties = Vec::with_capacity(probe_size);
        for region in regions {
            let property = ProbeResvMem {
                head: ProbeProperty {
                    type_: U16::new(VIRTIO_IOMMU_PROBE_T_RESV_MEM),
                    length: U16::new(
                        (size_of::<ProbeResvMem>() - size_of::<ProbeProperty>()) as u16,
                    ),
                },
                subtype: region.kind.subtype(),
                reserved: [0; 3],
                start: U64::new(region.start),
                end: U64::new(region.end),
            };
            properties.extend_from_slice(property.as_bytes());
        }
        // probe_size was sized for the endpoint with the most regions, so this only pads.
        properties.resize(probe_size, 0);
        Ok(Reply::Properties(properties))
    }

    fn check_domain_range(&self, domain: u32) -> Result<(), Status> {
        if domain < self.params.domain_start || domain > self.params.domain_end {
            return Err(Status::Range);
        }
        Ok(())
    }

    fn check_input_range(&self, start: u64, end: u64) -> Result<(), Status> {
        if start < self.params.input_start || end > self.params.input_end {
            return Err(Status::Range);
        }
        Ok(())
    }
}
