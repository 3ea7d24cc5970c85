//! The mock driver and its bus (Linux `mock_ops` and `mock_dev_create()`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use uiommu_core::{
    Capability, CoreError, DeviceDesc, DeviceId, DeviceInfo, DomainOps, DomainRequest, DomainType,
    FwNode, Fwspec, GroupChoice, HwInfo, InstanceId, IommuCore, IommuOps, Result,
};

use crate::domain::{MockNestedDomain, MockPagingDomain};
use crate::{
    IOMMU_HWPT_DATA_SELFTEST, IOMMU_HW_INFO_SELFTEST_REGVAL, IOMMU_HW_INFO_TYPE_SELFTEST,
    MOCK_PASID_WIDTH,
};

/// Properties of a mock device (the selftest's `MOCK_FLAGS_DEVICE_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct MockDeviceFlags(u32);

impl MockDeviceFlags {
    /// The device's IOMMU cannot track dirty pages.
    pub const NO_DIRTY: MockDeviceFlags = MockDeviceFlags(1);
    /// Domains of the device also map 1 MiB pages.
    pub const HUGE_IOVA: MockDeviceFlags = MockDeviceFlags(2);
    /// The device supports PASIDs (a newer mock flag the 6.12.117 selftest already uses).
    pub const PASID: MockDeviceFlags = MockDeviceFlags(4);

    /// Flags from their ABI value.
    ///
    /// # Errors
    /// `Invalid` for bits the mock does not know (the kernel's `EINVAL`).
    pub fn from_bits(bits: u32) -> Result<MockDeviceFlags> {
        let known = Self::NO_DIRTY.0 | Self::HUGE_IOVA.0 | Self::PASID.0;
        if bits & !known != 0 {
            return Err(CoreError::Invalid("unknown mock device flag"));
        }
        Ok(MockDeviceFlags(bits))
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: MockDeviceFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The mock IOMMU driver: one instance, under its own fwnode, serving the mock bus.
///
/// Locking: `devices` guards the per-device flags; it is taken inside core callbacks (so after
/// the core's lock) and never held while calling the core.
#[derive(Debug)]
pub struct MockIommu {
    fwnode: FwNode,
    instance: OnceLock<InstanceId>,
    devices: DeviceTable,
    next_device: AtomicU32,
}

/// Mock device flags by device name, shared with the paging domains that check them at attach.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceTable(Arc<Mutex<HashMap<String, MockDeviceFlags>>>);

impl DeviceTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MockDeviceFlags>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn flags(&self, dev: &DeviceInfo<'_>) -> MockDeviceFlags {
        self.lock().get(dev.name()).copied().unwrap_or_default()
    }
}

impl MockIommu {
    /// A mock driver with a fresh software fwnode, not registered yet.
    pub fn new() -> Arc<MockIommu> {
        MockIommu::with_fwnode(FwNode::new("iommufd-mock"))
    }

    /// A mock driver that will register under `fwnode` (for platform descriptions that name it).
    pub fn with_fwnode(fwnode: FwNode) -> Arc<MockIommu> {
        Arc::new(MockIommu {
            fwnode,
            instance: OnceLock::new(),
            devices: DeviceTable::default(),
            next_device: AtomicU32::new(0),
        })
    }

    /// Register the mock instance with `core` (Linux `iommu_device_register_bus()` in 6.18,
    /// which also creates the software fwnode).
    ///
    /// # Errors
    /// The core's registration error; `Exists` if this driver is already registered.
    pub fn register(self: &Arc<Self>, core: &IommuCore) -> Result<InstanceId> {
        if self.instance.get().is_some() {
            return Err(CoreError::Exists);
        }
        let id = core.register("iommufd-mock", Some(self.fwnode.clone()), self.clone())?;
        // Registration is serialized by the check above only for one caller; a racing second
        // registration fails in the core with `Exists` before reaching here.
        let _ = self.instance.set(id);
        Ok(id)
    }

    /// The fwnode the mock instance registers under.
    pub fn fwnode(&self) -> &FwNode {
        &self.fwnode
    }

    /// Create a mock device on the mock bus and add it to `core` with a fwspec naming the mock
    /// fwnode (Linux `mock_dev_create()` → `iommu_mock_device_add()`).
    ///
    /// # Errors
    /// The core's error when the device cannot be added.
    pub fn add_device(&self, core: &IommuCore, flags: MockDeviceFlags) -> Result<DeviceId> {
        let name = format!(
            "iommufd_mock{}",
            self.next_device.fetch_add(1, Ordering::Relaxed)
        );
        self.devices.lock().insert(name.clone(), flags);
        let fwspec = Fwspec {
            fwnode: self.fwnode.clone(),
            ids: Vec::new(),
        };
        core.add_device(DeviceDesc::mock(name.clone()), Some(fwspec))
            .inspect_err(|_| {
                self.devices.lock().remove(&name);
            })
    }

    /// Remove a mock device from `core` and forget it.
    ///
    /// # Errors
    /// `NotFound` for an unknown device.
    pub fn remove_device(&self, core: &IommuCore, dev: DeviceId) -> Result<()> {
        let name = core
            .devices()
            .into_iter()
            .find(|d| d.id == dev)
            .map(|d| d.name)
            .ok_or(CoreError::NotFound)?;
        core.remove_device(dev)?;
        self.devices.lock().remove(&name);
        Ok(())
    }

    fn flags(&self, dev: &DeviceInfo<'_>) -> MockDeviceFlags {
        self.devices.flags(dev)
    }

    fn paging_domain(&self, flags: MockDeviceFlags, dirty_tracking: bool) -> Box<dyn DomainOps> {
        Box::new(MockPagingDomain::new(
            flags.contains(MockDeviceFlags::HUGE_IOVA),
            dirty_tracking,
            self.devices.clone(),
        ))
    }
}

impl IommuOps for MockIommu {
    fn name(&self) -> &str {
        "mock"
    }

    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        dev.iommu.ok_or(CoreError::NoDevice)
    }

    fn device_group(&self, _dev: &DeviceInfo<'_>) -> GroupChoice {
        GroupChoice::PerDevice
    }

    fn static_default_domain(&self) -> Option<DomainType> {
        Some(DomainType::Blocked)
    }

    fn domain_alloc(
        &self,
        dev: &DeviceInfo<'_>,
        request: DomainRequest<'_>,
    ) -> Result<Box<dyn DomainOps>> {
        let flags = self.flags(dev);
        match request {
            DomainRequest::Blocked => Ok(Box::new(MockStaticDomain::Blocked)),
            DomainRequest::Identity => Ok(Box::new(MockStaticDomain::Identity)),
            DomainRequest::Dma => Ok(self.paging_domain(flags, false)),
            DomainRequest::Paging {
                flags: paging,
                data,
            } => {
                if data.is_some() {
                    return Err(CoreError::NotSupported);
                }
                if paging.dirty_tracking && flags.contains(MockDeviceFlags::NO_DIRTY) {
                    return Err(CoreError::NotSupported);
                }
                Ok(self.paging_domain(flags, paging.dirty_tracking))
            }
            DomainRequest::Nested { parent, data } => {
                if data.data_type != IOMMU_HWPT_DATA_SELFTEST {
                    return Err(CoreError::NotSupported);
                }
                if parent
                    .ops()
                    .as_any()
                    .downcast_ref::<MockPagingDomain>()
                    .is_none()
                {
                    return Err(CoreError::Invalid("parent is not a mock paging domain"));
                }
                let iotlb: [u8; 4] = data
                    .bytes
                    .try_into()
                    .map_err(|_| CoreError::Invalid("selftest nested data is 4 bytes"))?;
                Ok(Box::new(MockNestedDomain::new(
                    parent.clone(),
                    u32::from_le_bytes(iotlb),
                )))
            }
        }
    }

    fn capable(&self, dev: &DeviceInfo<'_>, cap: Capability) -> bool {
        match cap {
            Capability::CacheCoherency => true,
            Capability::DirtyTracking => !self.flags(dev).contains(MockDeviceFlags::NO_DIRTY),
            Capability::EnforceCacheCoherency => false,
        }
    }

    fn hw_info(&self, _dev: &DeviceInfo<'_>) -> Result<HwInfo> {
        // struct iommu_test_hw_info { __u32 flags; __u32 test_reg; }
        let mut data = Vec::with_capacity(8);
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&IOMMU_HW_INFO_SELFTEST_REGVAL.to_le_bytes());
        Ok(HwInfo {
            data_type: IOMMU_HW_INFO_TYPE_SELFTEST,
            data,
        })
    }

    fn max_pasids(&self, dev: &DeviceInfo<'_>) -> u32 {
        if self.flags(dev).contains(MockDeviceFlags::PASID) {
            1 << MOCK_PASID_WIDTH
        } else {
            0
        }
    }
}

/// The mock's static blocked and identity domains: nothing to translate, attach refuses
/// nothing.
#[derive(Debug)]
enum MockStaticDomain {
    Blocked,
    Identity,
}

impl DomainOps for MockStaticDomain {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
