//! The virtio transport as the driver sees it: feature bits, config space, queue setup and
//! notification, as virtio-pci or virtio-mmio registers would provide them.

use super::vring::QueueLayout;
use crate::device::VirtioIommu;
use crate::spec;
use std::fmt;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Why the transport refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device rejected the queue setup or the notification.
    #[error(transparent)]
    Device(#[from] crate::DeviceError),
    /// A queue size the device cannot use.
    #[error("invalid queue size {0}")]
    QueueSize(u16),
}

/// Register-level access to one virtio-iommu device.
pub trait Transport: Send + Sync + fmt::Debug {
    /// The device's feature bits.
    fn device_features(&self) -> u64;
    /// Writes the driver's features; returns what the device accepted (FEATURES_OK).
    fn set_driver_features(&self, features: u64) -> u64;
    /// Reads the configuration space.
    fn read_config(&self) -> spec::Config;
    /// Writes config field `bypass`.
    fn write_bypass(&self, bypass: u8);
    /// Programs both queues and sets DRIVER_OK.
    ///
    /// # Errors
    /// When the device cannot use the queues.
    fn activate(
        &self,
        mem: &GuestMemoryMmap,
        queues: [QueueLayout; 2],
    ) -> Result<(), TransportError>;
    /// Notifies the device that `queue` has new buffers; the device handles them before this
    /// returns.
    ///
    /// # Errors
    /// When the device is not running.
    fn notify(&self, queue: u16) -> Result<(), TransportError>;
}

fn device_queue(layout: QueueLayout) -> Result<Queue, TransportError> {
    let bad = |_| TransportError::QueueSize(layout.size);
    let mut q = Queue::new(layout.size).map_err(bad)?;
    q.try_set_size(layout.size).map_err(bad)?;
    q.try_set_desc_table_address(layout.desc).map_err(bad)?;
    q.try_set_avail_ring_address(layout.avail).map_err(bad)?;
    q.try_set_used_ring_address(layout.used).map_err(bad)?;
    q.set_ready(true);
    Ok(q)
}

/// The device model in the same process: registers are method calls.
impl Transport for std::sync::Arc<VirtioIommu> {
    fn device_features(&self) -> u64 {
        VirtioIommu::device_features(self)
    }

    fn set_driver_features(&self, features: u64) -> u64 {
        VirtioIommu::set_driver_features(self, features)
    }

    fn read_config(&self) -> spec::Config {
        self.config()
    }

    fn write_bypass(&self, bypass: u8) {
        VirtioIommu::write_bypass(self, bypass)
    }

    fn activate(
        &self,
        mem: &GuestMemoryMmap,
        queues: [QueueLayout; 2],
    ) -> Result<(), TransportError> {
        let [requestq, eventq] = queues;
        VirtioIommu::activate(
            self,
            mem.clone(),
            device_queue(requestq)?,
            device_queue(eventq)?,
        )?;
        Ok(())
    }

    fn notify(&self, queue: u16) -> Result<(), TransportError> {
        VirtioIommu::notify(self, queue)?;
        Ok(())
    }
}
