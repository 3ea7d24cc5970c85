//! The mock vIOMMU (Linux `selftest.c`'s `mock_viommu`): type `IOMMU_VIOMMU_TYPE_SELFTEST`,
//! a loopback of its creation data, and cache invalidation of its devices' cache slots.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use uiommu_core::{
    CoreError, DeviceId, Domain, DomainOps, Iova, PhysAddr, Result, UserData, ViommuOps,
};

use crate::domain::MockNestedDomain;
use crate::driver::{selftest_user_data, DeviceTable};
use crate::IOMMU_TEST_INVALIDATE_FLAG_ALL;

/// `IOMMU_HW_QUEUE_TYPE_SELFTEST`.
const IOMMU_HW_QUEUE_TYPE_SELFTEST: u32 = 0xdead_beef;
/// HW queue indexes of a mock vIOMMU (`IOMMU_TEST_HW_QUEUE_MAX`).
const IOMMU_TEST_HW_QUEUE_MAX: u32 = 2;

/// `IOMMU_HWPT_ALLOC_PASID`, the one flag a nested domain on the mock vIOMMU takes.
const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;

/// The devices a mock vIOMMU has vDEVICEs for, and their virtual ids (`viommu->vdevs` as the
/// mock's attach sees it). Shared by the vIOMMU and its nested domains; its mutex is a leaf.
#[derive(Clone, Debug, Default)]
pub(crate) struct VdevTable(Arc<Mutex<HashMap<DeviceId, u64>>>);

impl VdevTable {
    /// The virtual id of `dev` (`iommufd_viommu_get_vdev_id()`).
    pub(crate) fn virt_id(&self, dev: DeviceId) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&dev)
            .copied()
    }

    fn insert(&self, dev: DeviceId, virt_id: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dev, virt_id);
    }

    fn remove(&self, virt_id: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, id| *id != virt_id);
    }
}

/// `IOMMU_VIOMMU_TYPE_SELFTEST`.
pub(crate) const IOMMU_VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`.
const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// Highest cache slot of a mock device (`MOCK_DEV_CACHE_ID_MAX`).
const MOCK_DEV_CACHE_ID_MAX: u32 = 3;

/// `struct iommu_viommu_selftest`: 24 bytes, of which `in_data` and `out_data` are mandatory.
const VIOMMU_DATA_SIZE: usize = 24;
const VIOMMU_DATA_MIN: usize = 8;
/// `struct iommu_viommu_invalidate_selftest`: `flags`, `vdev_id`, `cache_id`.
const INVALIDATE_ENTRY_SIZE: usize = 12;

/// One mock vIOMMU.
#[derive(Debug)]
pub(crate) struct MockViommu {
    devices: DeviceTable,
    /// The nesting parent (`s2_parent`).
    parent: Arc<Domain>,
    vdevs: VdevTable,
    /// Which HW queue indexes are set up (`hw_queue[]`, under `queue_mutex`).
    hw_queues: Mutex<[bool; IOMMU_TEST_HW_QUEUE_MAX as usize]>,
}

impl MockViommu {
    /// `mock_viommu_init()`: with data, answer `out_data = in_data`. The mmap window of the
    /// kernel's mock (two pages, `out_mmap_offset`/`out_mmap_length`) is not offered yet: both
    /// stay 0.
    pub(crate) fn new(
        devices: DeviceTable,
        parent: Arc<Domain>,
        data: Option<&mut [u8]>,
    ) -> Result<MockViommu> {
        if let Some(data) = data {
            let mut selftest = [0u8; VIOMMU_DATA_SIZE];
            copy_struct(&mut selftest, data, VIOMMU_DATA_MIN)?;
            let in_data = [selftest[0], selftest[1], selftest[2], selftest[3]];
            selftest[4..8].copy_from_slice(&in_data);
            selftest[8..].fill(0);
            let common = data.len().min(VIOMMU_DATA_SIZE);
            data[..common].copy_from_slice(&selftest[..common]);
        }
        Ok(MockViommu {
            devices,
            parent,
            vdevs: VdevTable::default(),
            hw_queues: Mutex::new([false; IOMMU_TEST_HW_QUEUE_MAX as usize]),
        })
    }
}

/// `copy_struct_from_user()` of driver data: at least `min` bytes, bytes past `dst` zero.
fn copy_struct(dst: &mut [u8], src: &[u8], min: usize) -> Result<()> {
    if src.len() < min {
        return Err(CoreError::Invalid(
            "driver data shorter than its mandatory fields",
        ));
    }
    if src.len() > dst.len() && src[dst.len()..].iter().any(|&b| b != 0) {
        return Err(CoreError::TooBig);
    }
    let common = src.len().min(dst.len());
    dst[..common].copy_from_slice(&src[..common]);
    Ok(())
}

fn word(entry: &[u8; INVALIDATE_ENTRY_SIZE], index: usize) -> u32 {
    let at = index * 4;
    u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
}

impl ViommuOps for MockViommu {
    /// `mock_viommu_cache_invalidate()`: the whole array is copied first (type and per-entry
    /// size checks), then each entry clears one or all cache slots of the device behind
    /// `vdev_id`, stopping at the first bad entry.
    fn cache_invalidate(
        &self,
        data_type: u32,
        entry_len: u32,
        entries: &[u8],
        find_dev: &dyn Fn(u64) -> Option<DeviceId>,
    ) -> (u32, Result<()>) {
        if entries.is_empty() && data_type == IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST {
            return (0, Ok(()));
        }
        if data_type != IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST {
            return (
                0,
                Err(CoreError::Invalid("not a selftest vIOMMU invalidation")),
            );
        }
        let entry_len = entry_len as usize;
        let mut copied = Vec::with_capacity(entries.len() / entry_len.max(1));
        for raw in entries.chunks(entry_len.max(1)) {
            let mut entry = [0u8; INVALIDATE_ENTRY_SIZE];
            if let Err(err) = copy_struct(&mut entry, raw, 0) {
                return (0, Err(err));
            }
            copied.push(entry);
        }
        let mut done = 0;
        for entry in &copied {
            let (flags, vdev_id, cache_id) = (word(entry, 0), word(entry, 1), word(entry, 2));
            if flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                return (done, Err(CoreError::NotSupported));
            }
            if cache_id > MOCK_DEV_CACHE_ID_MAX {
                return (done, Err(CoreError::Invalid("cache slot out of range")));
            }
            let Some(dev) = find_dev(u64::from(vdev_id)) else {
                return (done, Err(CoreError::Invalid("no vDEVICE with that id")));
            };
            let cleared = self.devices.with_device(dev, |state| {
                if flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                    state.cache.fill(0);
                } else {
                    state.cache[cache_id as usize] = 0;
                }
            });
            if cleared.is_none() {
                return (
                    done,
                    Err(CoreError::Invalid("vDEVICE of a non-mock device")),
                );
            }
            done += 1;
        }
        (done, Ok(()))
    }

    /// `mock_viommu_alloc_domain_nested()`: a mock nested domain whose attach needs the
    /// device's vDEVICE on this vIOMMU.
    fn alloc_domain_nested(&self, flags: u32, data: UserData<'_>) -> Result<Box<dyn DomainOps>> {
        if flags & !IOMMU_HWPT_ALLOC_PASID != 0 {
            return Err(CoreError::NotSupported);
        }
        let (iotlb, _) = selftest_user_data(&data)?;
        Ok(Box::new(
            MockNestedDomain::new(self.parent.clone(), iotlb).on_viommu(self.vdevs.clone()),
        ))
    }

    fn hw_queue_supported(&self, queue_type: u32) -> bool {
        queue_type == IOMMU_HW_QUEUE_TYPE_SELFTEST
    }

    /// `mock_hw_queue_init_phys()`: indexes are taken in order (each depends on the one
    /// before), and the physical address iommufd found must be the parent's translation.
    fn hw_queue_init_phys(
        &self,
        index: u32,
        base_iova: u64,
        base_pa: PhysAddr,
    ) -> Result<Option<u32>> {
        if index >= IOMMU_TEST_HW_QUEUE_MAX {
            return Err(CoreError::Invalid("HW queue index out of range"));
        }
        let mut queues = self
            .hw_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queues[index as usize] {
            return Err(CoreError::Exists);
        }
        let prev = index.checked_sub(1);
        if prev.is_some_and(|prev| !queues[prev as usize]) {
            return Err(CoreError::Io("the previous HW queue is not set up"));
        }
        // Linux answers EFAULT here; it catches only an iommufd bug, never a user's.
        if self.parent.iova_to_phys(Iova(base_iova)) != Some(base_pa) {
            return Err(CoreError::Io("HW queue address mistranslated"));
        }
        queues[index as usize] = true;
        Ok(prev)
    }

    fn hw_queue_destroy(&self, index: u32) {
        let mut queues = self
            .hw_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = queues.get_mut(index as usize) {
            *queue = false;
        }
    }

    fn vdevice_init(&self, virt_id: u64, dev: DeviceId) -> Result<()> {
        self.vdevs.insert(dev, virt_id);
        Ok(())
    }

    fn vdevice_destroy(&self, virt_id: u64) {
        self.vdevs.remove(virt_id);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mock paging domain from a real core, to be a vIOMMU's parent.
    fn test_parent() -> Arc<Domain> {
        let core = uiommu_core::IommuCore::default();
        let mock = crate::MockIommu::new();
        mock.register(&core).unwrap();
        let dev = mock
            .add_device(&core, crate::MockDeviceFlags::default())
            .unwrap();
        core.domain_alloc(
            dev,
            uiommu_core::DomainRequest::Paging {
                flags: uiommu_core::PagingFlags::default(),
                data: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn creation_data_loops_back_and_refuses_short_or_long_data() {
        let mut data = [0u8; 24];
        data[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        data[4..8].copy_from_slice(&7u32.to_le_bytes());
        MockViommu::new(DeviceTable::default(), test_parent(), Some(&mut data)).unwrap();
        assert_eq!(&data[4..8], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&data[8..], &[0u8; 16]);

        let mut short = [0u8; 7];
        assert!(matches!(
            MockViommu::new(DeviceTable::default(), test_parent(), Some(&mut short)),
            Err(CoreError::Invalid(_))
        ));
        let mut long = [0u8; 32];
        long[31] = 1;
        assert_eq!(
            MockViommu::new(DeviceTable::default(), test_parent(), Some(&mut long)).err(),
            Some(CoreError::TooBig)
        );
    }

    #[test]
    fn invalidation_checks_type_then_each_entry_in_order() {
        let viommu = MockViommu::new(DeviceTable::default(), test_parent(), None).unwrap();
        let none = |_: u64| None;
        assert_eq!(
            viommu
                .cache_invalidate(IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, 12, &[], &none)
                .1,
            Ok(())
        );
        assert!(matches!(
            viommu.cache_invalidate(1, 12, &[0; 12], &none),
            (0, Err(CoreError::Invalid(_)))
        ));
        let entry = |flags: u32, vdev: u32, cache: u32| {
            let mut e = Vec::new();
            for w in [flags, vdev, cache] {
                e.extend_from_slice(&w.to_le_bytes());
            }
            e
        };
        let data_type = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
        assert_eq!(
            viommu.cache_invalidate(data_type, 12, &entry(2, 0, 0), &none),
            (0, Err(CoreError::NotSupported))
        );
        assert!(matches!(
            viommu.cache_invalidate(data_type, 12, &entry(0, 0, 4), &none),
            (0, Err(CoreError::Invalid(_)))
        ));
        assert!(matches!(
            viommu.cache_invalidate(data_type, 12, &entry(0, 9, 0), &none),
            (0, Err(CoreError::Invalid(_)))
        ));
        let mut long = entry(0, 0, 0);
        long.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(
            viommu.cache_invalidate(data_type, 16, &long, &none),
            (0, Err(CoreError::TooBig))
        );
    }
}
