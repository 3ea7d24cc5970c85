//! A simulated machine: RAM, an IOMMU core, and the drivers a platform description names.
//!
//! Each virtio-iommu instance gets a device model and a driver talking to it through
//! virtqueues in the machine's RAM; each mock instance gets the selftest mock driver under the
//! fwnode the description gives it.

use std::sync::Arc;

use uiommu_core::platform::{Built, DriverFactory, IommuDesc, Platform};
use uiommu_core::{CoreConfig, IommuCore, IommuOps};
use uiommu_mock::MockIommu;
use uiommu_virtio::{
    DeviceConfig, DriverMemory, EndpointConfig, VirtioIommu, VirtioIommuDriver, DRIVER_AREA_SIZE,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Size of the machine's RAM. The mapping is reserved, not touched, so it costs nothing until
/// devices write to it.
pub const RAM_SIZE: usize = 64 << 20;
/// Where the virtio-iommu drivers' virtqueues live: one `DRIVER_AREA_SIZE` slot per instance
/// from here, below what devices are expected to DMA to.
const DRIVER_AREAS: u64 = 0x10_0000;
/// Most virtio-iommu instances a machine may have (their queue areas must fit below 16 MiB).
const MAX_VIRTIO_INSTANCES: u64 = (0x100_0000 - DRIVER_AREAS) / DRIVER_AREA_SIZE;

/// The driver names a platform's `driver =` field accepts: these two, and the hardware
/// drivers of uiommu-drivers ([`uiommu_drivers::DRIVER_NAMES`]).
pub const DRIVER_NAMES: &[&str] = &["mock", "virtio-iommu"];

/// A virtio-iommu instance of a machine.
#[derive(Debug)]
pub struct VirtioInstance {
    /// The instance name.
    pub name: String,
    /// The device model.
    pub device: Arc<VirtioIommu>,
    /// The driver registered with the core.
    pub driver: Arc<VirtioIommuDriver>,
}

/// A mock instance of a machine.
#[derive(Debug)]
pub struct MockInstance {
    /// The instance name.
    pub name: String,
    /// The driver registered with the core.
    pub driver: Arc<MockIommu>,
}

/// A platform, built.
#[derive(Debug)]
pub struct Machine {
    /// The IOMMU core every device and instance lives in.
    pub core: IommuCore,
    /// The machine's RAM, shared by the virtio-iommu queues and device DMA.
    pub ram: GuestMemoryMmap,
    /// The virtio-iommu instances, in description order.
    pub virtio: Vec<VirtioInstance>,
    /// The mock instances, in description order.
    pub mock: Vec<MockInstance>,
    /// The core's ids for the description's instances and devices.
    pub built: Built,
}

struct Factory {
    ram: GuestMemoryMmap,
    virtio: Vec<VirtioInstance>,
    mock: Vec<MockInstance>,
}

impl DriverFactory for Factory {
    fn create(
        &mut self,
        iommu: &IommuDesc,
        endpoints: &[u32],
    ) -> Result<Arc<dyn IommuOps>, String> {
        match iommu.driver.as_str() {
            "mock" => {
                let driver = MockIommu::with_fwnode(iommu.fwnode.clone());
                self.mock.push(MockInstance {
                    name: iommu.name.clone(),
                    driver: driver.clone(),
                });
                Ok(driver)
            }
            "virtio-iommu" => {
                let slot = self.virtio.len() as u64;
                if slot >= MAX_VIRTIO_INSTANCES {
                    return Err(format!(
                        "IOMMU {}: too many virtio-iommu instances",
                        iommu.name
                    ));
                }
                let config = DeviceConfig {
                    endpoints: endpoints
                        .iter()
                        .map(|&id| EndpointConfig {
                            id,
                            reserved: Vec::new(),
                        })
                        .collect(),
                    ..DeviceConfig::default()
                };
                let memory = DriverMemory {
                    mem: self.ram.clone(),
                    base: GuestAddress(DRIVER_AREAS + slot * DRIVER_AREA_SIZE),
                };
                let (driver, device) = VirtioIommuDriver::with_device(&config, memory)
                    .map_err(|e| format!("IOMMU {}: {e}", iommu.name))?;
                self.virtio.push(VirtioInstance {
                    name: iommu.name.clone(),
                    device,
                    driver: driver.clone(),
                });
                Ok(driver)
            }
            other => uiommu_drivers::create_default(other, &iommu.fwnode).ok_or_else(|| {
                format!(
                    "IOMMU {}: unknown driver {other:?} (known: {}, {})",
                    iommu.name,
                    DRIVER_NAMES.join(", "),
                    uiommu_drivers::DRIVER_NAMES.join(", ")
                )
            }),
        }
    }
}

impl Machine {
    /// Parse a platform description and build it. `origin` names the text in error messages.
    ///
    /// # Errors
    /// The description's first error, with its position; or the device or instance the core
    /// or a driver refused.
    pub fn build(origin: &str, text: &str, config: CoreConfig) -> Result<Machine, String> {
        let platform = Platform::parse(origin, text).map_err(|e| e.to_string())?;
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)])
            .map_err(|e| format!("cannot allocate the machine's RAM: {e}"))?;
        let core = IommuCore::new(config);
        let mut factory = Factory {
            ram: ram.clone(),
            virtio: Vec::new(),
            mock: Vec::new(),
        };
        let built = platform.build(&core, &mut factory)?;
        Ok(Machine {
            core,
            ram,
            virtio: factory.virtio,
            mock: factory.mock,
            built,
        })
    }
}
