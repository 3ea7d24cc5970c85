//! Request builders shared by the integration tests.
#![allow(dead_code)]

use uiommu_virtio::spec::*;
use uiommu_virtio::{
    Completion, DeviceConfig, EndpointConfig, ReservedKind, ReservedRegion, VirtioIommu,
};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

pub const EP: u32 = 8;
pub const EP2: u32 = 9;
pub const MSI_START: u64 = 0xfee0_0000;
pub const MSI_END: u64 = 0xfeef_ffff;
pub const RW: u32 = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE;

pub fn head(type_: u8) -> ReqHead {
    ReqHead {
        type_,
        reserved: [0; 3],
    }
}

pub fn attach(domain: u32, endpoint: u32, flags: u32) -> Vec<u8> {
    ReqAttach {
        head: head(VIRTIO_IOMMU_T_ATTACH),
        domain: U32::new(domain),
        endpoint: U32::new(endpoint),
        flags: U32::new(flags),
        reserved: [0; 4],
    }
    .as_bytes()
    .to_vec()
}

pub fn detach(domain: u32, endpoint: u32) -> Vec<u8> {
    ReqDetach {
        head: head(VIRTIO_IOMMU_T_DETACH),
        domain: U32::new(domain),
        endpoint: U32::new(endpoint),
        reserved: [0; 8],
    }
    .as_bytes()
    .to_vec()
}

pub fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> Vec<u8> {
    ReqMap {
        head: head(VIRTIO_IOMMU_T_MAP),
        domain: U32::new(domain),
        virt_start: U64::new(virt_start),
        virt_end: U64::new(virt_end),
        phys_start: U64::new(phys_start),
        flags: U32::new(flags),
    }
    .as_bytes()
    .to_vec()
}

pub fn unmap(domain: u32, virt_start: u64, virt_end: u64) -> Vec<u8> {
    ReqUnmap {
        head: head(VIRTIO_IOMMU_T_UNMAP),
        domain: U32::new(domain),
        virt_start: U64::new(virt_start),
        virt_end: U64::new(virt_end),
        reserved: [0; 4],
    }
    .as_bytes()
    .to_vec()
}

pub fn probe(endpoint: u32) -> Vec<u8> {
    ReqProbe {
        head: head(VIRTIO_IOMMU_T_PROBE),
        endpoint: U32::new(endpoint),
        reserved: [0; 64],
    }
    .as_bytes()
    .to_vec()
}

/// Two endpoints; EP has an MSI window, EP2 has none.
pub fn config() -> DeviceConfig {
    DeviceConfig {
        endpoints: vec![
            EndpointConfig {
                id: EP,
                reserved: vec![ReservedRegion {
                    start: MSI_START,
                    end: MSI_END,
                    kind: ReservedKind::Msi,
                }],
            },
            EndpointConfig {
                id: EP2,
                reserved: vec![],
            },
        ],
        ..DeviceConfig::default()
    }
}

/// A device from `config` whose driver accepted every offered feature.
pub fn device_with(config: &DeviceConfig) -> VirtioIommu {
    let dev = VirtioIommu::new(config).expect("valid config");
    dev.set_driver_features(dev.device_features());
    dev
}

pub fn device() -> VirtioIommu {
    device_with(&config())
}

/// Sends a non-PROBE request with the usual 4-byte writable tail; returns its status.
pub fn status(dev: &VirtioIommu, req: &[u8]) -> Option<Status> {
    dev.process(req, 4).status()
}

pub fn ok(dev: &VirtioIommu, req: &[u8]) {
    assert_eq!(status(dev, req), Some(Status::Ok), "request {req:x?}");
}

pub fn answered(c: &Completion) -> bool {
    !matches!(c, Completion::Unanswered)
}
