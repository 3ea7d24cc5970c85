//! The mock driver through the core: routing beside another driver, its domains' page tables,
//! dirty tracking, nested invalidation and hardware info.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use uiommu_core::*;
use uiommu_mock::*;

fn core_with_mock() -> (IommuCore, Arc<MockIommu>) {
    let core = IommuCore::default();
    let mock = MockIommu::new();
    mock.register(&core).unwrap();
    (core, mock)
}

fn paging(core: &IommuCore, dev: DeviceId, dirty_tracking: bool) -> Result<Arc<Domain>> {
    core.domain_alloc(
        dev,
        DomainRequest::Paging {
            flags: PagingFlags {
                dirty_tracking,
                ..PagingFlags::default()
            },
            data: None,
        },
    )
}

fn mock_table(domain: &Domain) -> &MockPagingDomain {
    domain.ops().as_any().downcast_ref().unwrap()
}

#[test]
fn mock_devices_get_their_own_group_and_a_blocked_default_domain() {
    let (core, mock) = core_with_mock();
    let a = mock.add_device(&core, MockDeviceFlags::default()).unwrap();
    let b = mock.add_device(&core, MockDeviceFlags::default()).unwrap();
    assert_ne!(core.group_of(a), core.group_of(b));
    assert_eq!(core.default_domain(a).unwrap().ty(), DomainType::Blocked);
    let names: Vec<_> = core.devices().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["iommufd_mock0", "iommufd_mock1"]);
    mock.remove_device(&core, a).unwrap();
    assert_eq!(core.probe_state(a), Err(CoreError::NotFound));
}

#[test]
fn platform_devices_never_reach_the_mock() {
    let (core, _mock) = core_with_mock();
    let uart = core.add_device(DeviceDesc::platform("uart"), None).unwrap();
    assert_eq!(core.probe_state(uart).unwrap(), ProbeState::NoIommu);
}

#[test]
fn map_marks_the_first_and_last_page_of_each_call() {
    let (core, mock) = core_with_mock();
    let dev = mock.add_device(&core, MockDeviceFlags::default()).unwrap();
    let domain = paging(&core, dev, false).unwrap();
    assert_eq!(domain.ops().aperture().start, Iova(MOCK_APERTURE_START));
    domain
        .map(Iova(0x100_0000), PhysAddr(0x40_0000), 0x1800, Prot::READ)
        .unwrap();
    let t = mock_table(&domain);
    let e = |iova| t.entry(Iova(iova)).unwrap();
    assert_eq!((e(0x100_0000).start, e(0x100_0000).last), (true, false));
    assert_eq!((e(0x100_0800).start, e(0x100_0800).last), (false, false));
    assert_eq!((e(0x100_1000).start, e(0x100_1000).last), (false, true));
    assert_eq!(
        domain.iova_to_phys(Iova(0x100_0804)),
        Some(PhysAddr(0x40_0804))
    );
    // An unmap that covers the map exactly is clean; a partial one is flagged.
    assert_eq!(domain.unmap(Iova(0x100_0000), 0x1800), 0x1800);
    assert_eq!(t.unmap_violations(), 0);
    domain
        .map(Iova(0x100_0000), PhysAddr(0x40_0000), 0x1800, Prot::READ)
        .unwrap();
    assert_eq!(domain.unmap(Iova(0x100_0800), 0x800), 0x800);
    assert_eq!(t.unmap_violations(), 1);
    assert_eq!(
        domain.map(Iova(0x100_0000), PhysAddr(0), 0x800, Prot::READ),
        Err(CoreError::Exists)
    );
}

#[test]
fn huge_iova_devices_get_1mib_pages_where_aligned() {
    let (core, mock) = core_with_mock();
    let dev = mock.add_device(&core, MockDeviceFlags::HUGE_IOVA).unwrap();
    let domain = paging(&core, dev, false).unwrap();
    domain
        .map(
            Iova(0x100_0000),
            PhysAddr(0x200_0000),
            2 * MOCK_HUGE_PAGE_SIZE,
            Prot::READ,
        )
        .unwrap();
    assert!(mock_table(&domain).entry(Iova(0x100_0000)).unwrap().huge);
    let plain = paging(
        &core,
        mock.add_device(&core, MockDeviceFlags::default()).unwrap(),
        false,
    )
    .unwrap();
    plain
        .map(
            Iova(0x100_0000),
            PhysAddr(0x200_0000),
            MOCK_HUGE_PAGE_SIZE,
            Prot::READ,
        )
        .unwrap();
    assert!(!mock_table(&plain).entry(Iova(0x100_0000)).unwrap().huge);
}

#[test]
fn dirty_tracking_reports_and_clears_written_pages() {
    let (core, mock) = core_with_mock();
    let dev = mock.add_device(&core, MockDeviceFlags::default()).unwrap();
    let domain = paging(&core, dev, true).unwrap();
    domain
        .map(Iova(0x100_0000), PhysAddr(0), 0x4000, Prot::READ_WRITE)
        .unwrap();
    let read = |keep| {
        let mut dirty = Vec::new();
        domain
            .ops()
            .read_and_clear_dirty(Iova(0x100_0000), 0x4000, keep, &mut |iova, len| {
                dirty.push((iova.0, len))
            })
            .map(|_| dirty)
    };
    assert!(
        matches!(read(false), Err(CoreError::Invalid(_))),
        "tracking is off"
    );
    domain.ops().set_dirty_tracking(true).unwrap();
    let t = mock_table(&domain);
    assert!(t.mark_dirty(Iova(0x100_0800)));
    assert!(!t.mark_dirty(Iova(0x200_0000)));
    assert_eq!(read(true).unwrap(), [(0x100_0800, 0x800)]);
    assert_eq!(read(false).unwrap(), [(0x100_0800, 0x800)]);
    assert_eq!(read(false).unwrap(), []);
}

#[test]
fn no_dirty_devices_refuse_dirty_domains() {
    let (core, mock) = core_with_mock();
    let dev = mock.add_device(&core, MockDeviceFlags::NO_DIRTY).unwrap();
    assert_eq!(
        paging(&core, dev, true).unwrap_err(),
        CoreError::NotSupported
    );
    assert!(!core.capable(dev, Capability::DirtyTracking));
    // A dirty-capable domain of another device cannot be attached to it either.
    let other = mock.add_device(&core, MockDeviceFlags::default()).unwrap();
    assert!(core.capable(other, Capability::DirtyTracking));
    let dirty = paging(&core, other, true).unwrap();
    core.claim_dma_owner(dev, DmaOwner::new()).unwrap();
    assert!(matches!(
        core.attach_domain(dev, &dirty),
        Err(CoreError::Invalid(_))
    ));
    assert_eq!(
        MockDeviceFlags::from_bits(8),
        Err(CoreError::Invalid("unknown mock device flag"))
    );
}

#[test]
fn nested_domains_keep_iotlb_tags_until_invalidated() {
    let (core, mock) = core_with_mock();
    let dev = mock.add_device(&core, MockDeviceFlags::default()).unwrap();
    let parent = core
        .domain_alloc(
            dev,
            DomainRequest::Paging {
                flags: PagingFlags {
                    nest_parent: true,
                    ..Default::default()
                },
                data: None,
            },
        )
        .unwrap();
    let tag = 0x0bad_beefu32.to_le_bytes();
    let data = UserData {
        data_type: IOMMU_HWPT_DATA_SELFTEST,
        bytes: &tag,
    };
    let nested = core
        .domain_alloc(
            dev,
            DomainRequest::Nested {
                parent: &parent,
                data,
            },
        )
        .unwrap();
    let n: &MockNestedDomain = nested.ops().as_any().downcast_ref().unwrap();
    assert!((0..4).all(|slot| n.iotlb(slot) == Some(0x0bad_beef)));
    let entry = |flags: u32, slot: u32| [flags.to_le_bytes(), slot.to_le_bytes()].concat();
    let ops = nested.ops();
    assert_eq!(
        ops.cache_invalidate_user(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, &entry(0, 1)),
        (1, Ok(()))
    );
    assert_eq!(n.iotlb(1), Some(0));
    assert_eq!(n.iotlb(2), Some(0x0bad_beef));
    let two = [entry(0, 2), entry(0, 9)].concat();
    let (done, result) = ops.cache_invalidate_user(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, &two);
    assert_eq!(done, 1);
    assert!(matches!(result, Err(CoreError::Invalid(_))));
    assert_eq!(
        ops.cache_invalidate_user(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, &entry(2, 0))
            .1,
        Err(CoreError::NotSupported)
    );
    assert_eq!(
        ops.cache_invalidate_user(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, &entry(1, 0)),
        (1, Ok(()))
    );
    assert!((0..4).all(|slot| n.iotlb(slot) == Some(0)));
    assert!(matches!(
        ops.cache_invalidate_user(0, 8, &entry(1, 0)),
        (0, Err(CoreError::Invalid(_)))
    ));
    // Wrong sizes and wrong types of nested data.
    let short = UserData {
        data_type: IOMMU_HWPT_DATA_SELFTEST,
        bytes: &tag[..3],
    };
    assert!(matches!(
        core.domain_alloc(
            dev,
            DomainRequest::Nested {
                parent: &parent,
                data: short
            }
        ),
        Err(CoreError::Invalid(_))
    ));
    let wrong = UserData {
        data_type: 1,
        bytes: &tag,
    };
    assert_eq!(
        core.domain_alloc(
            dev,
            DomainRequest::Nested {
                parent: &parent,
                data: wrong
            }
        )
        .unwrap_err(),
        CoreError::NotSupported
    );
}

#[test]
fn hw_info_is_the_selftest_regval_and_only_pasid_devices_have_pasids() {
    let (core, mock) = core_with_mock();
    let plain = mock.add_device(&core, MockDeviceFlags::default()).unwrap();
    let pasid = mock.add_device(&core, MockDeviceFlags::PASID).unwrap();
    let info = core.hw_info(plain).unwrap();
    assert_eq!(info.data_type, 0xfeed_beef);
    assert_eq!(info.data, [0, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
    assert_eq!(core.max_pasids(plain), 0);
    assert_eq!(core.max_pasids(pasid), 1 << 20);
}

proptest! {
    /// Random maps and unmaps through the core's page-size logic agree with a byte-level model.
    #[test]
    fn page_table_matches_model(ops in proptest::collection::vec((0u64..64, 1u64..8, any::<bool>()), 1..40)) {
        let (core, mock) = core_with_mock();
        let dev = mock.add_device(&core, MockDeviceFlags::HUGE_IOVA).unwrap();
        let domain = paging(&core, dev, false).unwrap();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // iova page → pfn
        for (slot, pages, unmap) in ops {
            let iova = MOCK_APERTURE_START + slot * MOCK_IO_PAGE_SIZE;
            let size = pages * MOCK_IO_PAGE_SIZE;
            let pa = 0x4000_0000 + slot * 0x10_0000;
            let range: Vec<u64> = (0..pages).map(|i| iova / MOCK_IO_PAGE_SIZE + i).collect();
            if unmap {
                // The domain stops at the first hole; the model does the same.
                let expect = range.iter().take_while(|p| model.remove(p).is_some()).count() as u64;
                prop_assert_eq!(domain.unmap(Iova(iova), size), expect * MOCK_IO_PAGE_SIZE);
            } else {
                let free = range.iter().all(|p| !model.contains_key(p));
                let result = domain.map(Iova(iova), PhysAddr(pa), size, Prot::READ);
                prop_assert_eq!(result.is_ok(), free);
                if free {
                    for (i, p) in range.iter().enumerate() {
                        model.insert(*p, pa / MOCK_IO_PAGE_SIZE + i as u64);
                    }
                }
            }
            let table = mock_table(&domain);
            prop_assert_eq!(table.mapped_pages(), model.len());
            for (&page, &pfn) in &model {
                prop_assert_eq!(table.entry(Iova(page * MOCK_IO_PAGE_SIZE)).map(|e| e.pfn), Some(pfn));
            }
        }
    }
}
