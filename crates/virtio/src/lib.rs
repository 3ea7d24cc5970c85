//! uiommu-virtio: the virtio-iommu device (virtio device id 23) and, on top of the core's driver
//! traits, a driver that talks to it only through virtqueues.
//!
//! The device side ([`VirtioIommu`]) follows the virtio 1.2/1.3 "IOMMU device" section: the
//! request queue (ATTACH, DETACH, MAP, UNMAP, PROBE) processed with `virtio-queue`, fault reports
//! on the event queue, bypass and BYPASS_CONFIG, and one [`vm_memory::Iommu`] per endpoint
//! ([`EndpointIommu`]) so any rust-vmm device model can DMA through a domain with permission
//! checks. The wire format lives in [`spec`].
//!
//! This crate must not know about iommufd or the mock driver: it sees the IOMMU core only through
//! the core's driver traits, and guest memory only through `vm-memory`.
//!
//! Lock order (each lock is documented where it is declared): the driver's `attached` → a
//! domain's `shadow` → the driver's `channel` → the device's `requestq` → the device's `state`;
//! an endpoint IOTLB lock → the device's `state`. The device's `eventq` and the driver's `ids`
//! and `devices` are leaves.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod device;
pub mod driver;
mod endpoint;
mod mappings;
pub mod spec;

pub use device::{
    Completion, ConfigError, DeviceConfig, DeviceError, EndpointConfig, FaultReason, Interrupt,
    OfferedFeatures, Reply, ReservedKind, ReservedRegion, VirtioIommu, MAX_REQUEST_SIZE,
};
pub use driver::{
    DriverMemory, FaultReport, Transport, TransportError, VirtioDomain, VirtioIommuDriver,
    DRIVER_AREA_SIZE,
};
pub use endpoint::EndpointIommu;
pub use mappings::{Mapping, Mappings, WouldSplit};
