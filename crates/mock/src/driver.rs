//! The mock driver and its bus (Linux `mock_ops` and `mock_dev_create()`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use uiommu_core::{
    Capability, CoreError, DeviceDesc, DeviceId, DeviceInfo, Domain, DomainOps, DomainRequest,
    DomainType, FwNode, Fwspec, GroupChoice, HwInfo, InstanceId, IommuCore, IommuOps, Result,
    UserData, ViommuOps,
};

use crate::viommu::{MockViommu, IOMMU_VIOMMU_TYPE_SELFTEST};

use crate::domain::{MockNestedDomain, MockPagingDomain};
use crate::{
    IOMMU_HWPT_DATA_SELFTEST, IOMMU_HW_INFO_SELFTEST_REGVAL, IOMMU_HW_INFO_TYPE_SELFTEST,
    MOCK_HUGE_PAGE_SIZE, MOCK_IO_PAGE_SIZE, MOCK_PASID_WIDTH,
};

/// `IOMMU_HWPT_DATA_NONE`.
const IOMMU_HWPT_DATA_NONE: u32 = 0;
/// `MOCK_IOMMUPT_DEFAULT`.
const MOCK_IOMMUPT_DEFAULT: u32 = 0;
/// `MOCK_IOMMUPT_HUGE`.
const MOCK_IOMMUPT_HUGE: u32 = 1;
/// The CPU page size the HUGE page table also offers.
const CPU_PAGE_SIZE: u64 = 4096;
/// The PASID whose attaches the mock fails every other time (`IOMMU_TEST_PASID_RESERVED`).
const IOMMU_TEST_PASID_RESERVED: u32 = 1024;
/// Cache slots of a mock device (`MOCK_DEV_CACHE_NUM`).
pub(crate) const MOCK_DEV_CACHE_NUM: usize = 4;
/// Initial value of every mock device cache slot (`IOMMU_TEST_DEV_CACHE_DEFAULT`).
pub(crate) const IOMMU_TEST_DEV_CACHE_DEFAULT: u32 = 0x00ba_ddad;

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
pub(crate) struct DeviceTable(Arc<Mutex<HashMap<String, MockDeviceState>>>);

/// What the mock keeps per device (Linux `struct mock_dev`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MockDeviceState {
    /// The core's id of the device, once added.
    pub(crate) id: Option<DeviceId>,
    pub(crate) flags: MockDeviceFlags,
    /// The device's cache tags, cleared by invalidations through a mock vIOMMU.
    pub(crate) cache: [u32; MOCK_DEV_CACHE_NUM],
    /// The next attach of PASID `IOMMU_TEST_PASID_RESERVED` fails (`pasid_1024_fake_error`).
    pasid_reserved_fails: bool,
}

impl MockDeviceState {
    fn new(flags: MockDeviceFlags) -> MockDeviceState {
        MockDeviceState {
            id: None,
            flags,
            cache: [IOMMU_TEST_DEV_CACHE_DEFAULT; MOCK_DEV_CACHE_NUM],
            pasid_reserved_fails: false,
        }
    }
}

impl DeviceTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MockDeviceState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn flags(&self, dev: &DeviceInfo<'_>) -> MockDeviceFlags {
        self.lock()
            .get(dev.name())
            .map(|state| state.flags)
            .unwrap_or_default()
    }

    /// Runs `f` on the state of the mock device called `name`, if it exists.
    pub(crate) fn with_state<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut MockDeviceState) -> R,
    ) -> Option<R> {
        self.lock().get_mut(name).map(f)
    }

    /// Runs `f` on the state of the mock device `dev`, if it is one.
    pub(crate) fn with_device<R>(
        &self,
        dev: DeviceId,
        f: impl FnOnce(&mut MockDeviceState) -> R,
    ) -> Option<R> {
        self.lock()
            .values_mut()
            .find(|state| state.id == Some(dev))
            .map(f)
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
        self.devices
            .lock()
            .insert(name.clone(), MockDeviceState::new(flags));
        let fwspec = Fwspec {
            fwnode: self.fwnode.clone(),
            ids: Vec::new(),
        };
        let added = core
            .add_device(DeviceDesc::mock(name.clone()), Some(fwspec))
            .inspect_err(|_| {
                self.devices.lock().remove(&name);
            })?;
        self.devices
            .with_state(&name, |state| state.id = Some(added));
        Ok(added)
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

    /// Cache slot `slot` of the mock device called `name` (`IOMMU_TEST_OP_DEV_CHECK_CACHE`);
    /// `None` for an unknown device or slot.
    pub fn device_cache(&self, name: &str, slot: u32) -> Option<u32> {
        self.devices
            .with_state(name, |state| state.cache.get(slot as usize).copied())
            .flatten()
    }

    fn paging_domain(
        &self,
        flags: MockDeviceFlags,
        dirty_tracking: bool,
        pagetable: Option<MockPagetable>,
    ) -> Box<dyn DomainOps> {
        let page_sizes = match pagetable {
            Some(MockPagetable::Huge) => MOCK_HUGE_PAGE_SIZE | CPU_PAGE_SIZE,
            _ if flags.contains(MockDeviceFlags::HUGE_IOVA) => {
                MOCK_IO_PAGE_SIZE | MOCK_HUGE_PAGE_SIZE
            }
            _ => MOCK_IO_PAGE_SIZE,
        };
        Box::new(MockPagingDomain::new(
            page_sizes,
            dirty_tracking,
            self.devices.clone(),
        ))
    }
}

/// The page-table types of `struct iommu_hwpt_selftest` (`MOCK_IOMMUPT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MockPagetable {
    /// 2 KiB pages in the mock aperture.
    Default,
    /// 1 MiB pages (and 4 KiB, which iommufd needs to accept a domain).
    Huge,
}

/// The bytes of a selftest HWPT_ALLOC payload read as `struct iommu_hwpt_selftest`
/// (`iommu_copy_struct_from_user()` up to `iotlb`): the type must be the selftest's, at least
/// `iotlb` must be there, and bytes past the 8-byte struct must be zero. Returns `iotlb` and
/// `pagetable_type`.
pub(crate) fn selftest_user_data(data: &UserData<'_>) -> Result<(u32, u32)> {
    const MIN: usize = 4;
    const SIZE: usize = 8;
    if data.data_type != IOMMU_HWPT_DATA_SELFTEST || data.bytes.len() < MIN {
        return Err(CoreError::Invalid("not a selftest HWPT payload"));
    }
    if data.bytes.len() > SIZE && data.bytes[SIZE..].iter().any(|&b| b != 0) {
        return Err(CoreError::TooBig);
    }
    let mut raw = [0u8; SIZE];
    let common = data.bytes.len().min(SIZE);
    raw[..common].copy_from_slice(&data.bytes[..common]);
    let iotlb = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let pagetable_type = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    Ok((iotlb, pagetable_type))
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
            DomainRequest::Dma => Ok(self.paging_domain(flags, false, None)),
            DomainRequest::Paging {
                flags: paging,
                data,
            } => {
                if paging.dirty_tracking && flags.contains(MockDeviceFlags::NO_DIRTY) {
                    return Err(CoreError::NotSupported);
                }
                let Some(data) = data else {
                    return Ok(self.paging_domain(flags, paging.dirty_tracking, None));
                };
                // Linux 7.3's mock takes selftest data (its page-table type) for paging
                // domains too; iommufd under 6.12 never passes data for them.
                if data.data_type != IOMMU_HWPT_DATA_SELFTEST
                    && data.data_type != IOMMU_HWPT_DATA_NONE
                {
                    return Err(CoreError::NotSupported);
                }
                let (_, pagetable_type) = selftest_user_data(&data)?;
                let pagetable = match pagetable_type {
                    MOCK_IOMMUPT_DEFAULT => MockPagetable::Default,
                    MOCK_IOMMUPT_HUGE => MockPagetable::Huge,
                    _ => return Err(CoreError::NotSupported),
                };
                Ok(self.paging_domain(flags, paging.dirty_tracking, Some(pagetable)))
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
                let (iotlb, _) = selftest_user_data(&data)?;
                Ok(Box::new(MockNestedDomain::new(parent.clone(), iotlb)))
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

    /// `mock_domain_set_dev_pasid_nop()`: accepted, except that attaches of PASID
    /// `IOMMU_TEST_PASID_RESERVED` (1024) alternate between success and `ENOMEM`, so the core's
    /// undo of a failed replace can be tested; blocking it resets the alternation.
    fn set_dev_pasid(
        &self,
        dev: &DeviceInfo<'_>,
        pasid: u32,
        domain: Option<&Arc<Domain>>,
    ) -> Result<()> {
        if pasid != IOMMU_TEST_PASID_RESERVED {
            return Ok(());
        }
        let failed = self.devices.with_state(dev.name(), |state| {
            if domain.is_none() {
                state.pasid_reserved_fails = false;
                return false;
            }
            let fail = state.pasid_reserved_fails;
            state.pasid_reserved_fails = !fail;
            fail
        });
        if failed == Some(true) {
            return Err(CoreError::NoMemory);
        }
        Ok(())
    }

    fn viommu_supported(&self, _dev: &DeviceInfo<'_>, viommu_type: u32) -> bool {
        viommu_type == IOMMU_VIOMMU_TYPE_SELFTEST
    }

    fn viommu_init(
        &self,
        _dev: &DeviceInfo<'_>,
        viommu_type: u32,
        parent: &Arc<Domain>,
        data: Option<&mut [u8]>,
    ) -> Result<Box<dyn ViommuOps>> {
        if viommu_type != IOMMU_VIOMMU_TYPE_SELFTEST {
            return Err(CoreError::NotSupported);
        }
        Ok(Box::new(MockViommu::new(
            self.devices.clone(),
            parent.clone(),
            data,
        )?))
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
