//! The drivers the CLI can instantiate from a platform description, by name.

use std::sync::Arc;

use uiommu_core::platform::DriverFactory;
use uiommu_core::{FwNode, IommuOps};
use uiommu_mock::MockIommu;

/// Creates the drivers uiommu ships.
#[derive(Debug, Default)]
pub struct Drivers;

/// Names accepted in a platform's `driver =` field.
pub const DRIVER_NAMES: &[&str] = &["mock"];

impl DriverFactory for Drivers {
    fn create(
        &mut self,
        driver: &str,
        name: &str,
        fwnode: &FwNode,
    ) -> Result<Arc<dyn IommuOps>, String> {
        match driver {
            "mock" => Ok(MockIommu::with_fwnode(fwnode.clone())),
            other => Err(format!(
                "IOMMU {name}: unknown driver {other:?} (known: {})",
                DRIVER_NAMES.join(", ")
            )),
        }
    }
}
