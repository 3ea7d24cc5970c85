//! The virtio-iommu wire format (virtio 1.2/1.3, "IOMMU device", device id 23).
//!
//! Everything here is a fact of the specification: numbers, field order and sizes. The structs
//! are `#[repr(C)]` over zerocopy's little-endian integer types, which have alignment 1, so no
//! struct has padding and every layout is exactly the spec's. They are read from guest buffers
//! by size-checked copy (`FromBytes::read_from_bytes`) and written with `IntoBytes::as_bytes`,
//! never by pointer cast.
//!
//! Requests travel in two parts: the device-readable part (a `Req*` struct, head first) and the
//! device-writable part (the [`ReqTail`], preceded by `probe_size` bytes of properties for PROBE).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Virtio device id of the IOMMU device.
pub const VIRTIO_ID_IOMMU: u32 = 23;
/// Index of the request virtqueue.
pub const REQUEST_QUEUE: u16 = 0;
/// Index of the event virtqueue.
pub const EVENT_QUEUE: u16 = 1;

/// Feature bit: `input_range` describes the translatable IOVA range.
pub const VIRTIO_IOMMU_F_INPUT_RANGE: u32 = 0;
/// Feature bit: `domain_range` describes the valid domain ids.
pub const VIRTIO_IOMMU_F_DOMAIN_RANGE: u32 = 1;
/// Feature bit: MAP and UNMAP requests are available.
pub const VIRTIO_IOMMU_F_MAP_UNMAP: u32 = 2;
/// Feature bit (legacy): unattached endpoints bypass translation.
pub const VIRTIO_IOMMU_F_BYPASS: u32 = 3;
/// Feature bit: the PROBE request is available.
pub const VIRTIO_IOMMU_F_PROBE: u32 = 4;
/// Feature bit: the `VIRTIO_IOMMU_MAP_F_MMIO` flag is available.
pub const VIRTIO_IOMMU_F_MMIO: u32 = 5;
/// Feature bit: config field `bypass` and `VIRTIO_IOMMU_ATTACH_F_BYPASS` are available.
pub const VIRTIO_IOMMU_F_BYPASS_CONFIG: u32 = 6;
/// Transport feature bit: the device complies with virtio 1.0 or later.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Request type: attach an endpoint to a domain (creating the domain if needed).
pub const VIRTIO_IOMMU_T_ATTACH: u8 = 1;
/// Request type: detach an endpoint from a domain.
pub const VIRTIO_IOMMU_T_DETACH: u8 = 2;
/// Request type: map an IOVA range.
pub const VIRTIO_IOMMU_T_MAP: u8 = 3;
/// Request type: unmap an IOVA range.
pub const VIRTIO_IOMMU_T_UNMAP: u8 = 4;
/// Request type: read an endpoint's properties.
pub const VIRTIO_IOMMU_T_PROBE: u8 = 5;

/// ATTACH flag: the domain is a bypass (identity) domain.
pub const VIRTIO_IOMMU_ATTACH_F_BYPASS: u32 = 1 << 0;

/// MAP flag: endpoints may read.
pub const VIRTIO_IOMMU_MAP_F_READ: u32 = 1 << 0;
/// MAP flag: endpoints may write.
pub const VIRTIO_IOMMU_MAP_F_WRITE: u32 = 1 << 1;
/// MAP flag: the physical range is memory-mapped I/O (a memory type, not a permission).
pub const VIRTIO_IOMMU_MAP_F_MMIO: u32 = 1 << 2;

/// PROBE property type: end of the property list.
pub const VIRTIO_IOMMU_PROBE_T_NONE: u16 = 0;
/// PROBE property type: a reserved IOVA region.
pub const VIRTIO_IOMMU_PROBE_T_RESV_MEM: u16 = 1;
/// Mask of the `type` bits in a property header; the top four bits are reserved.
pub const VIRTIO_IOMMU_PROBE_T_MASK: u16 = 0x0fff;

/// RESV_MEM subtype: the driver must not map these IOVAs.
pub const VIRTIO_IOMMU_RESV_MEM_T_RESERVED: u8 = 0;
/// RESV_MEM subtype: an MSI doorbell window; also not mappable.
pub const VIRTIO_IOMMU_RESV_MEM_T_MSI: u8 = 1;

/// Fault reason: unknown or internal.
pub const VIRTIO_IOMMU_FAULT_R_UNKNOWN: u8 = 0;
/// Fault reason: the endpoint is not attached to a domain (and not in bypass).
pub const VIRTIO_IOMMU_FAULT_R_DOMAIN: u8 = 1;
/// Fault reason: the address is not mapped, or the mapping forbids the access.
pub const VIRTIO_IOMMU_FAULT_R_MAPPING: u8 = 2;
/// Fault flag: the faulting access was a read.
pub const VIRTIO_IOMMU_FAULT_F_READ: u32 = 1 << 0;
/// Fault flag: the faulting access was a write.
pub const VIRTIO_IOMMU_FAULT_F_WRITE: u32 = 1 << 1;
/// Fault flag: `address` is valid.
pub const VIRTIO_IOMMU_FAULT_F_ADDRESS: u32 = 1 << 8;

/// A request status, the first byte of [`ReqTail`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The request succeeded.
    Ok = 0,
    /// Virtio communication error.
    IoErr = 1,
    /// Unsupported request.
    Unsupp = 2,
    /// Internal device error.
    DevErr = 3,
    /// Invalid parameters.
    Inval = 4,
    /// Out-of-range parameters.
    Range = 5,
    /// Entry not found.
    NoEnt = 6,
    /// Bad address.
    Fault = 7,
    /// Insufficient resources.
    NoMem = 8,
}

impl Status {
    /// Decodes a status byte; `None` for values the spec does not define.
    pub fn from_u8(raw: u8) -> Option<Self> {
        Some(match raw {
            0 => Status::Ok,
            1 => Status::IoErr,
            2 => Status::Unsupp,
            3 => Status::DevErr,
            4 => Status::Inval,
            5 => Status::Range,
            6 => Status::NoEnt,
            7 => Status::Fault,
            8 => Status::NoMem,
            _ => return None,
        })
    }
}

/// `struct virtio_iommu_range_64`: an inclusive 64-bit range.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Range64 {
    /// First address.
    pub start: U64,
    /// Last address (inclusive).
    pub end: U64,
}

/// `struct virtio_iommu_range_32`: an inclusive 32-bit range.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Range32 {
    /// First value.
    pub start: U32,
    /// Last value (inclusive).
    pub end: U32,
}

/// `struct virtio_iommu_config`: the device configuration space.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Config {
    /// Supported page sizes; the lowest set bit is the mapping granularity.
    pub page_size_mask: U64,
    /// Translatable IOVA range (valid with `VIRTIO_IOMMU_F_INPUT_RANGE`).
    pub input_range: Range64,
    /// Valid domain ids (valid with `VIRTIO_IOMMU_F_DOMAIN_RANGE`).
    pub domain_range: Range32,
    /// Size of the PROBE properties buffer (valid with `VIRTIO_IOMMU_F_PROBE`).
    pub probe_size: U32,
    /// 1 if unattached endpoints bypass translation (valid with `VIRTIO_IOMMU_F_BYPASS_CONFIG`).
    pub bypass: u8,
    /// Padding to a multiple of 8 bytes.
    pub reserved: [u8; 3],
}

/// `struct virtio_iommu_req_head`: first bytes of every request.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReqHead {
    /// One of the `VIRTIO_IOMMU_T_*` values.
    pub type_: u8,
    /// Ignored by the device.
    pub reserved: [u8; 3],
}

/// `struct virtio_iommu_req_tail`: the last device-writable bytes of every request.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReqTail {
    /// One of the [`Status`] values.
    pub status: u8,
    /// Set to zero by the device, ignored by the driver.
    pub reserved: [u8; 3],
}

/// Device-readable part of `struct virtio_iommu_req_attach`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReqAttach {
    /// Request head, type `VIRTIO_IOMMU_T_ATTACH`.
    pub head: ReqHead,
    /// Domain id, created if it does not exist.
    pub domain: U32,
    /// Endpoint id.
    pub endpoint: U32,
    /// `VIRTIO_IOMMU_ATTACH_F_*`.
    pub flags: U32,
    /// Must be zero.
    pub reserved: [u8; 4],
}

/// Device-readable part of `struct virtio_iommu_req_detach`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReqDetach {
    /// Request head, type `VIRTIO_IOMMU_T_DETACH`.
    pub head: ReqHead,
    /// Domain id the endpoint is attached to.
    pub domain: U32,
    /// Endpoint id.
    pub endpoint: U32,
    /// Ignored by the device.
    pub reserved: [u8; 8],
}

/// Device-readable part of `struct virtio_iommu_req_map`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReqMap {
    /// Request head, type `VIRTIO_IOMMU_T_MAP`.
    pub head: ReqHead,
    /// Domain id.
    pub domain: U32,
    /// First IOVA of the mapping.
    pub virt_start: U64,
    /// Last IOVA of the mapping (inclusive).
    pub virt_end: U64,
    /// Physical address `virt_start` translates to.
    pub phys_start: U64,
    /// `VIRTIO_IOMMU_MAP_F_*`.
    pub flags: U32,
}

/// Device-readable part of `struct virtio_iommu_req_unmap`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReqUnmap {
    /// Request head, type `VIRTIO_IOMMU_T_UNMAP`.
    pub head: ReqHead,
    /// Domain id.
    pub domain: U32,
    /// First IOVA of the range.
    pub virt_start: U64,
    /// Last IOVA of the range (inclusive).
    pub virt_end: U64,
    /// Should be zero.
    pub reserved: [u8; 4],
}

/// Device-readable part of `struct virtio_iommu_req_probe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ReqProbe {
    /// Request head, type `VIRTIO_IOMMU_T_PROBE`.
    pub head: ReqHead,
    /// Endpoint id.
    pub endpoint: U32,
    /// Room for future device-readable fields; ignored by the device.
    pub reserved: [u8; 64],
}

/// `struct virtio_iommu_probe_property`: header of each PROBE property.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ProbeProperty {
    /// Bits 0-11: `VIRTIO_IOMMU_PROBE_T_*`; bits 12-15 reserved.
    pub type_: U16,
    /// Size of the property after this header, in bytes.
    pub length: U16,
}

/// `struct virtio_iommu_probe_resv_mem`: a RESV_MEM property, header included.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ProbeResvMem {
    /// Header, type `VIRTIO_IOMMU_PROBE_T_RESV_MEM`.
    pub head: ProbeProperty,
    /// `VIRTIO_IOMMU_RESV_MEM_T_*`.
    pub subtype: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// First reserved IOVA.
    pub start: U64,
    /// Last reserved IOVA (inclusive).
    pub end: U64,
}

/// `struct virtio_iommu_fault`: an event-queue fault report.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Fault {
    /// `VIRTIO_IOMMU_FAULT_R_*`.
    pub reason: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// `VIRTIO_IOMMU_FAULT_F_*`.
    pub flags: U32,
    /// Endpoint that faulted.
    pub endpoint: U32,
    /// Zero.
    pub reserved1: U32,
    /// Faulting address when `VIRTIO_IOMMU_FAULT_F_ADDRESS` is set.
    pub address: U64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn config_layout_matches_spec() {
        assert_eq!(offset_of!(Config, page_size_mask), 0);
        assert_eq!(offset_of!(Config, input_range), 8);
        assert_eq!(
            offset_of!(Config, input_range) + offset_of!(Range64, end),
            16
        );
        assert_eq!(offset_of!(Config, domain_range), 24);
        assert_eq!(
            offset_of!(Config, domain_range) + offset_of!(Range32, end),
            28
        );
        assert_eq!(offset_of!(Config, probe_size), 32);
        assert_eq!(offset_of!(Config, bypass), 36);
        assert_eq!(offset_of!(Config, reserved), 37);
        assert_eq!(size_of::<Config>(), 40);
    }

    #[test]
    fn request_layouts_match_spec() {
        assert_eq!(size_of::<ReqHead>(), 4);
        assert_eq!(size_of::<ReqTail>(), 4);
        assert_eq!(size_of::<ReqAttach>(), 20);
        assert_eq!(offset_of!(ReqAttach, flags), 12);
        assert_eq!(size_of::<ReqDetach>(), 20);
        assert_eq!(size_of::<ReqMap>(), 36);
        assert_eq!(offset_of!(ReqMap, virt_start), 8);
        assert_eq!(offset_of!(ReqMap, phys_start), 24);
        assert_eq!(offset_of!(ReqMap, flags), 32);
        assert_eq!(size_of::<ReqUnmap>(), 28);
        assert_eq!(size_of::<ReqProbe>(), 72);
        assert_eq!(size_of::<ProbeProperty>(), 4);
        assert_eq!(size_of::<ProbeResvMem>(), 24);
        assert_eq!(offset_of!(ProbeResvMem, start), 8);
        assert_eq!(size_of::<Fault>(), 24);
        assert_eq!(offset_of!(Fault, address), 16);
    }

    #[test]
    fn map_request_is_little_endian_on_the_wire() {
        let req = ReqMap {
            head: ReqHead {
                type_: VIRTIO_IOMMU_T_MAP,
                reserved: [0; 3],
            },
            domain: U32::new(0x0102_0304),
            virt_start: U64::new(0x1122_3344_5566_7788),
            ..Default::default()
        };
        let bytes = req.as_bytes();
        assert_eq!(&bytes[4..8], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(bytes[8], 0x88);
        assert_eq!(bytes[15], 0x11);
    }

    #[test]
    fn status_round_trips_and_rejects_undefined_values() {
        for raw in 0..=8u8 {
            assert_eq!(Status::from_u8(raw).map(|s| s as u8), Some(raw));
        }
        assert_eq!(Status::from_u8(9), None);
        assert_eq!(Status::from_u8(0xff), None);
    }
}
