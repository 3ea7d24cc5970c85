//! Request semantics, one test per rejection, driven through `VirtioIommu::process`.

mod common;

use common::*;
use uiommu_virtio::spec::*;
use uiommu_virtio::{Completion, DeviceConfig, FaultReason, OfferedFeatures, VirtioIommu};
use vm_memory::Permissions;
use zerocopy::FromBytes;

const D: u32 = 1;

fn attached() -> VirtioIommu {
    let dev = device();
    ok(&dev, &attach(D, EP, 0));
    dev
}

// ---- buffer layout ----

#[test]
fn writable_part_too_small_for_tail_is_unanswered() {
    let dev = device();
    assert_eq!(dev.process(&attach(D, EP, 0), 3), Completion::Unanswered);
    assert_eq!(dev.process(&attach(D, EP, 0), 0).used_len(), 0);
}

#[test]
fn readable_part_shorter_than_head_is_deverr() {
    let dev = device();
    assert_eq!(
        status(&dev, &[VIRTIO_IOMMU_T_ATTACH, 0]),
        Some(Status::DevErr)
    );
}

#[test]
fn unknown_request_type_is_unanswered_with_zero_used_length() {
    let dev = device();
    let mut req = attach(D, EP, 0);
    for type_ in [0u8, 6, 0x7f, 0xff] {
        req[0] = type_;
        let c = dev.process(&req, 4);
        assert_eq!(c, Completion::Unanswered);
        assert_eq!(c.used_len(), 0);
    }
}

#[test]
fn attach_request_shorter_than_its_struct_is_deverr() {
    let dev = device();
    let req = attach(D, EP, 0);
    assert_eq!(status(&dev, &req[..req.len() - 1]), Some(Status::DevErr));
    assert!(
        dev.translate(EP, 0, Permissions::Read).is_err(),
        "nothing was attached"
    );
}

#[test]
fn map_request_longer_than_its_struct_is_deverr() {
    let dev = attached();
    let mut req = map(D, 0x1000, 0x1fff, 0x1000, RW);
    req.push(0);
    assert_eq!(status(&dev, &req), Some(Status::DevErr));
    assert_eq!(
        dev.translate(EP, 0x1000, Permissions::Read),
        Err(FaultReason::Mapping)
    );
}

#[test]
fn oversized_writable_part_is_deverr_with_tail_in_last_four_bytes() {
    let dev = device();
    let c = dev.process(&attach(D, EP, 0), 16);
    assert_eq!(
        c,
        Completion::Answered {
            properties: vec![],
            status: Status::DevErr,
            tail_offset: 12
        }
    );
    assert_eq!(c.used_len(), 16);
}

// ---- ATTACH ----

#[test]
fn attach_with_nonzero_reserved_is_inval() {
    let dev = device();
    let mut req = attach(D, EP, 0);
    req[16] = 1;
    assert_eq!(status(&dev, &req), Some(Status::Inval));
}

#[test]
fn attach_with_unknown_flag_is_inval() {
    let dev = device();
    assert_eq!(status(&dev, &attach(D, EP, 1 << 1)), Some(Status::Inval));
}

#[test]
fn attach_bypass_flag_without_bypass_config_negotiated_is_inval() {
    let dev = VirtioIommu::new(&config()).unwrap();
    dev.set_driver_features(dev.device_features() & !(1 << VIRTIO_IOMMU_F_BYPASS_CONFIG));
    assert_eq!(
        status(&dev, &attach(D, EP, VIRTIO_IOMMU_ATTACH_F_BYPASS)),
        Some(Status::Inval)
    );
}

#[test]
fn attach_unknown_endpoint_is_noent() {
    let dev = device();
    assert_eq!(status(&dev, &attach(D, 77, 0)), Some(Status::NoEnt));
}

#[test]
fn attach_domain_outside_domain_range_is_range() {
    let dev = device();
    assert_eq!(status(&dev, &attach(0, EP, 0)), Some(Status::Range));
    assert_eq!(status(&dev, &attach(0x1_0000, EP, 0)), Some(Status::Range));
}

#[test]
fn attach_bypass_flag_inconsistent_with_existing_domain_is_inval() {
    let dev = attached();
    assert_eq!(
        status(&dev, &attach(D, EP2, VIRTIO_IOMMU_ATTACH_F_BYPASS)),
        Some(Status::Inval)
    );
    ok(&dev, &attach(2, EP2, VIRTIO_IOMMU_ATTACH_F_BYPASS));
    assert_eq!(status(&dev, &attach(2, EP, 0)), Some(Status::Inval));
}

#[test]
fn attach_second_endpoint_shares_the_domain_mappings() {
    let dev = attached();
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    ok(&dev, &attach(D, EP2, 0));
    assert_eq!(dev.translate(EP2, 0x1234, Permissions::Read), Ok(0xa234));
}

#[test]
fn attach_moves_endpoint_and_destroys_emptied_domain() {
    let dev = attached();
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    ok(&dev, &attach(2, EP, 0));
    assert_eq!(
        dev.translate(EP, 0x1000, Permissions::Read),
        Err(FaultReason::Mapping)
    );
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW)),
        Some(Status::NoEnt)
    );
}

#[test]
fn attach_to_current_domain_again_is_ok_and_keeps_mappings() {
    let dev = attached();
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    ok(&dev, &attach(D, EP, 0));
    assert_eq!(dev.translate(EP, 0x1000, Permissions::Write), Ok(0xa000));
}

#[test]
fn attach_beyond_domain_cap_is_nomem() {
    let dev = device_with(&DeviceConfig {
        max_domains: 1,
        ..config()
    });
    ok(&dev, &attach(D, EP, 0));
    assert_eq!(status(&dev, &attach(2, EP2, 0)), Some(Status::NoMem));
    // Moving the only endpoint frees its old domain, so the cap is not exceeded.
    ok(&dev, &attach(2, EP, 0));
}

#[test]
fn attach_endpoint_whose_reserved_region_is_mapped_in_domain_is_unsupp() {
    let dev = device();
    ok(&dev, &attach(D, EP2, 0));
    ok(&dev, &map(D, MSI_START, MSI_START + 0xfff, 0x5000, RW));
    assert_eq!(status(&dev, &attach(D, EP, 0)), Some(Status::Unsupp));
}

// ---- DETACH ----

#[test]
fn detach_unknown_endpoint_is_noent() {
    let dev = attached();
    assert_eq!(status(&dev, &detach(D, 77)), Some(Status::NoEnt));
}

#[test]
fn detach_from_domain_endpoint_is_not_in_is_inval() {
    let dev = attached();
    assert_eq!(status(&dev, &detach(2, EP)), Some(Status::Inval));
    assert_eq!(status(&dev, &detach(D, EP2)), Some(Status::Inval));
}

#[test]
fn detach_domain_outside_domain_range_is_range() {
    let dev = attached();
    assert_eq!(status(&dev, &detach(0, EP)), Some(Status::Range));
}

#[test]
fn detach_ignores_reserved_field() {
    let dev = attached();
    let mut req = detach(D, EP);
    req[12] = 0xff;
    ok(&dev, &req);
}

#[test]
fn detach_last_endpoint_destroys_domain_and_blocks_dma() {
    let dev = attached();
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    ok(&dev, &detach(D, EP));
    assert_eq!(
        dev.translate(EP, 0x1000, Permissions::Read),
        Err(FaultReason::Domain)
    );
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW)),
        Some(Status::NoEnt)
    );
}

// ---- MAP ----

#[test]
fn map_without_map_unmap_negotiated_is_unsupp() {
    let dev = VirtioIommu::new(&config()).unwrap();
    dev.set_driver_features(dev.device_features() & !(1 << VIRTIO_IOMMU_F_MAP_UNMAP));
    ok(&dev, &attach(D, EP, 0));
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW)),
        Some(Status::Unsupp)
    );
}

#[test]
fn map_with_unknown_flag_is_inval() {
    let dev = attached();
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW | 1 << 3)),
        Some(Status::Inval)
    );
}

#[test]
fn map_mmio_flag_without_mmio_negotiated_is_inval() {
    let dev = VirtioIommu::new(&config()).unwrap();
    dev.set_driver_features(dev.device_features() & !(1 << VIRTIO_IOMMU_F_MMIO));
    ok(&dev, &attach(D, EP, 0));
    let req = map(D, 0x1000, 0x1fff, 0xa000, RW | VIRTIO_IOMMU_MAP_F_MMIO);
    assert_eq!(status(&dev, &req), Some(Status::Inval));
}

#[test]
fn map_mmio_flag_with_mmio_negotiated_is_ok() {
    let dev = attached();
    ok(
        &dev,
        &map(
            D,
            0x1000,
            0x1fff,
            0xa000,
            VIRTIO_IOMMU_MAP_F_WRITE | VIRTIO_IOMMU_MAP_F_MMIO,
        ),
    );
}

#[test]
fn map_virt_end_below_virt_start_is_inval() {
    let dev = attached();
    assert_eq!(
        status(&dev, &map(D, 0x2000, 0x1fff, 0xa000, RW)),
        Some(Status::Inval)
    );
}

#[test]
fn map_misaligned_virt_start_is_range() {
    let dev = attached();
    assert_eq!(
        status(&dev, &map(D, 0x1800, 0x2fff, 0xa000, RW)),
        Some(Status::Range)
    );
}

#[test]
fn map_misaligned_phys_start_is_range() {
    let dev = attached();
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x1fff, 0xa800, RW)),
        Some(Status::Range)
    );
}

#[test]
fn map_misaligned_virt_end_is_range() {
    let dev = attached();
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x1ffe, 0xa000, RW)),
        Some(Status::Range)
    );
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x2000, 0xa000, RW)),
        Some(Status::Range)
    );
}

#[test]
fn map_outside_input_range_is_range() {
    let dev = attached();
    let top = (1u64 << 48) - 1;
    assert_eq!(
        status(&dev, &map(D, top + 1, top + 0x1000, 0xa000, RW)),
        Some(Status::Range)
    );
    assert_eq!(
        status(&dev, &map(D, top - 0xfff, top + 0x1000, 0xa000, RW)),
        Some(Status::Range)
    );
    ok(&dev, &map(D, top - 0xfff, top, 0xa000, RW));
}

#[test]
fn map_ending_at_top_of_64_bit_space_is_ok_without_input_range() {
    let dev = device_with(&DeviceConfig {
        input_range: None,
        ..config()
    });
    ok(&dev, &attach(D, EP, 0));
    ok(&dev, &map(D, u64::MAX - 0xfff, u64::MAX, 0xa000, RW));
    assert_eq!(dev.translate(EP, u64::MAX, Permissions::Read), Ok(0xafff));
}

#[test]
fn map_whose_physical_end_overflows_is_range() {
    let dev = device_with(&DeviceConfig {
        input_range: None,
        ..config()
    });
    ok(&dev, &attach(D, EP, 0));
    assert_eq!(
        status(&dev, &map(D, 0, 0x1fff, u64::MAX - 0xfff, RW)),
        Some(Status::Range)
    );
}

#[test]
fn map_domain_outside_domain_range_is_range() {
    let dev = attached();
    assert_eq!(
        status(&dev, &map(0x1_0000, 0x1000, 0x1fff, 0xa000, RW)),
        Some(Status::Range)
    );
}

#[test]
fn map_unknown_domain_is_noent() {
    let dev = attached();
    assert_eq!(
        status(&dev, &map(5, 0x1000, 0x1fff, 0xa000, RW)),
        Some(Status::NoEnt)
    );
}

#[test]
fn map_on_bypass_domain_is_inval() {
    let dev = device();
    ok(&dev, &attach(D, EP, VIRTIO_IOMMU_ATTACH_F_BYPASS));
    assert_eq!(
        status(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW)),
        Some(Status::Inval)
    );
}

#[test]
fn map_overlapping_existing_mapping_is_inval() {
    let dev = attached();
    ok(&dev, &map(D, 0x1000, 0x3fff, 0xa000, RW));
    for (s, e) in [
        (0x0, 0x1fff),
        (0x3000, 0x4fff),
        (0x2000, 0x2fff),
        (0x0, 0x8fff),
    ] {
        assert_eq!(
            status(&dev, &map(D, s, e, 0x10000, RW)),
            Some(Status::Inval),
            "{s:#x}"
        );
    }
    assert_eq!(dev.translate(EP, 0x1000, Permissions::Read), Ok(0xa000));
}

#[test]
fn map_adjacent_to_existing_mapping_is_ok() {
    let dev = attached();
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    ok(&dev, &map(D, 0x2000, 0x2fff, 0xc000, RW));
    assert_eq!(dev.translate(EP, 0x2000, Permissions::Read), Ok(0xc000));
}

#[test]
fn map_overlapping_reserved_region_is_inval() {
    let dev = attached();
    let req = map(D, MSI_START - 0x1000, MSI_START + 0xfff, 0xa000, RW);
    assert_eq!(status(&dev, &req), Some(Status::Inval));
}

#[test]
fn map_beyond_per_domain_cap_is_nomem() {
    let dev = device_with(&DeviceConfig {
        max_mappings_per_domain: 2,
        ..config()
    });
    ok(&dev, &attach(D, EP, 0));
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    ok(&dev, &map(D, 0x2000, 0x2fff, 0xa000, RW));
    assert_eq!(
        status(&dev, &map(D, 0x3000, 0x3fff, 0xa000, RW)),
        Some(Status::NoMem)
    );
    ok(&dev, &unmap(D, 0x1000, 0x1fff));
    ok(&dev, &map(D, 0x3000, 0x3fff, 0xa000, RW));
}

#[test]
fn map_beyond_device_wide_cap_is_nomem() {
    let dev = device_with(&DeviceConfig {
        max_mappings_total: 1,
        ..config()
    });
    ok(&dev, &attach(D, EP, 0));
    ok(&dev, &attach(2, EP2, 0));
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    assert_eq!(
        status(&dev, &map(2, 0x1000, 0x1fff, 0xa000, RW)),
        Some(Status::NoMem)
    );
    // Destroying a domain gives its mappings back.
    ok(&dev, &detach(D, EP));
    ok(&dev, &map(2, 0x1000, 0x1fff, 0xa000, RW));
}

#[test]
fn write_only_mapping_refuses_reads_and_read_only_refuses_writes() {
    let dev = attached();
    ok(
        &dev,
        &map(D, 0x1000, 0x1fff, 0xa000, VIRTIO_IOMMU_MAP_F_WRITE),
    );
    ok(
        &dev,
        &map(D, 0x2000, 0x2fff, 0xb000, VIRTIO_IOMMU_MAP_F_READ),
    );
    assert_eq!(dev.translate(EP, 0x1000, Permissions::Write), Ok(0xa000));
    assert_eq!(
        dev.translate(EP, 0x1000, Permissions::Read),
        Err(FaultReason::Mapping)
    );
    assert_eq!(dev.translate(EP, 0x2000, Permissions::Read), Ok(0xb000));
    assert_eq!(
        dev.translate(EP, 0x2000, Permissions::Write),
        Err(FaultReason::Mapping)
    );
}

// ---- UNMAP ----

#[test]
fn unmap_that_would_split_a_mapping_is_range_and_keeps_it() {
    let dev = attached();
    ok(&dev, &map(D, 0x0, 0x9fff, 0xa000, RW));
    assert_eq!(status(&dev, &unmap(D, 0x0, 0x4fff)), Some(Status::Range));
    assert_eq!(status(&dev, &unmap(D, 0x5000, 0xffff)), Some(Status::Range));
    assert_eq!(dev.translate(EP, 0x9000, Permissions::Read), Ok(0x13000));
}

#[test]
fn unmap_covering_mappings_and_gaps_removes_them_all() {
    let dev = attached();
    ok(&dev, &map(D, 0x0, 0x4fff, 0xa000, RW));
    ok(&dev, &map(D, 0xa000, 0xefff, 0xa000, RW));
    ok(&dev, &unmap(D, 0x0, 0xefff));
    assert_eq!(
        dev.translate(EP, 0xa000, Permissions::Read),
        Err(FaultReason::Mapping)
    );
    ok(&dev, &unmap(D, 0x0, 0x4fff));
}

#[test]
fn unmap_with_nonzero_reserved_is_inval_and_unmaps_nothing() {
    let dev = attached();
    ok(&dev, &map(D, 0x1000, 0x1fff, 0xa000, RW));
    let mut req = unmap(D, 0x1000, 0x1fff);
    req[24] = 1;
    assert_eq!(status(&dev, &req), Some(Status::Inval));
    assert_eq!(dev.translate(EP, 0x1000, Permissions::Read), Ok(0xa000));
}

#[test]
fn unmap_virt_end_below_virt_start_is_inval() {
    let dev = attached();
    assert_eq!(status(&dev, &unmap(D, 0x2000, 0x1fff)), Some(Status::Inval));
}

#[test]
fn unmap_outside_input_range_is_range() {
    let dev = attached();
    assert_eq!(status(&dev, &unmap(D, 0, u64::MAX)), Some(Status::Range));
}

#[test]
fn unmap_domain_outside_domain_range_is_range() {
    let dev = attached();
    assert_eq!(status(&dev, &unmap(0, 0x1000, 0x1fff)), Some(Status::Range));
}

#[test]
fn unmap_unknown_domain_is_noent() {
    let dev = attached();
    assert_eq!(status(&dev, &unmap(3, 0x1000, 0x1fff)), Some(Status::NoEnt));
}

#[test]
fn unmap_on_bypass_domain_is_inval() {
    let dev = device();
    ok(&dev, &attach(D, EP, VIRTIO_IOMMU_ATTACH_F_BYPASS));
    assert_eq!(status(&dev, &unmap(D, 0x1000, 0x1fff)), Some(Status::Inval));
}

#[test]
fn unmap_without_map_unmap_negotiated_is_unsupp() {
    let dev = VirtioIommu::new(&config()).unwrap();
    dev.set_driver_features(0);
    ok(&dev, &attach(D, EP, 0));
    assert_eq!(
        status(&dev, &unmap(D, 0x1000, 0x1fff)),
        Some(Status::Unsupp)
    );
}

// ---- PROBE ----

fn probe_size(dev: &VirtioIommu) -> usize {
    dev.config().probe_size.get() as usize
}

#[test]
fn probe_reports_resv_mem_properties_padded_to_probe_size() {
    let dev = device();
    let size = probe_size(&dev);
    let c = dev.process(&probe(EP), size + 4);
    let Completion::Answered {
        properties,
        status: Status::Ok,
        tail_offset,
    } = c
    else {
        panic!("unexpected {c:?}");
    };
    assert_eq!(tail_offset, size);
    assert_eq!(properties.len(), size);
    let (prop, rest) = ProbeResvMem::read_from_prefix(&properties).unwrap();
    assert_eq!(prop.head.type_.get(), VIRTIO_IOMMU_PROBE_T_RESV_MEM);
    assert_eq!(prop.head.length.get(), 20);
    assert_eq!(prop.subtype, VIRTIO_IOMMU_RESV_MEM_T_MSI);
    assert_eq!((prop.start.get(), prop.end.get()), (MSI_START, MSI_END));
    assert!(rest.iter().all(|&b| b == 0));
}

#[test]
fn probe_endpoint_without_regions_gets_only_zeroes() {
    let dev = device();
    let size = probe_size(&dev);
    let c = dev.process(&probe(EP2), size + 4);
    let Completion::Answered {
        properties,
        status: Status::Ok,
        ..
    } = c
    else {
        panic!("unexpected {c:?}");
    };
    assert_eq!(properties, vec![0; size]);
}

#[test]
fn probe_unknown_endpoint_is_noent() {
    let dev = device();
    let c = dev.process(&probe(77), probe_size(&dev) + 4);
    assert_eq!(c.status(), Some(Status::NoEnt));
}

#[test]
fn probe_properties_buffer_smaller_than_probe_size_is_inval_without_properties() {
    let dev = device();
    let c = dev.process(&probe(EP), probe_size(&dev) + 3);
    assert_eq!(
        c,
        Completion::Answered {
            properties: vec![],
            status: Status::Inval,
            tail_offset: probe_size(&dev) - 1
        }
    );
}

#[test]
fn probe_properties_buffer_larger_than_probe_size_is_deverr() {
    let dev = device();
    assert_eq!(
        dev.process(&probe(EP), probe_size(&dev) + 8).status(),
        Some(Status::DevErr)
    );
}

#[test]
fn probe_ignores_reserved_field() {
    let dev = device();
    let mut req = probe(EP);
    req[10] = 0xaa;
    assert_eq!(
        dev.process(&req, probe_size(&dev) + 4).status(),
        Some(Status::Ok)
    );
}

#[test]
fn probe_when_feature_not_offered_is_unanswered() {
    let config = DeviceConfig {
        features: OfferedFeatures {
            probe: false,
            ..OfferedFeatures::default()
        },
        ..config()
    };
    let dev = device_with(&config);
    assert_eq!(dev.process(&probe(EP), 28), Completion::Unanswered);
}

// ---- bypass ----

#[test]
fn unattached_endpoint_faults_with_domain_reason_when_bypass_is_off() {
    let dev = device();
    assert_eq!(
        dev.translate(EP, 0x1000, Permissions::Read),
        Err(FaultReason::Domain)
    );
}

#[test]
fn unattached_endpoint_is_identity_mapped_when_config_bypass_is_set() {
    let dev = device_with(&DeviceConfig {
        bypass: true,
        ..config()
    });
    assert_eq!(
        dev.translate(EP, 0x1234, Permissions::ReadWrite),
        Ok(0x1234)
    );
    ok(&dev, &attach(D, EP, 0));
    assert_eq!(
        dev.translate(EP, 0x1234, Permissions::Read),
        Err(FaultReason::Mapping)
    );
}

#[test]
fn driver_write_to_bypass_field_switches_unattached_endpoints() {
    let dev = device();
    dev.write_bypass(1);
    assert_eq!(dev.config().bypass, 1);
    assert_eq!(dev.translate(EP, 0x5000, Permissions::Write), Ok(0x5000));
    dev.write_bypass(0);
    assert_eq!(
        dev.translate(EP, 0x5000, Permissions::Write),
        Err(FaultReason::Domain)
    );
}

#[test]
fn bypass_field_applies_even_if_driver_did_not_accept_bypass_config() {
    let dev = VirtioIommu::new(&DeviceConfig {
        bypass: true,
        ..config()
    })
    .unwrap();
    dev.set_driver_features(1 << VIRTIO_IOMMU_F_MAP_UNMAP);
    assert_eq!(dev.translate(EP, 0x5000, Permissions::Read), Ok(0x5000));
    // ...but the driver may not write it.
    dev.write_bypass(0);
    assert_eq!(dev.config().bypass, 1);
}

#[test]
fn legacy_bypass_feature_negotiated_lets_unattached_endpoints_through() {
    let config = DeviceConfig {
        features: OfferedFeatures {
            bypass_config: false,
            legacy_bypass: true,
            ..OfferedFeatures::default()
        },
        ..config()
    };
    let dev = device_with(&config);
    assert_eq!(dev.translate(EP, 0x7000, Permissions::Read), Ok(0x7000));
}

#[test]
fn attach_with_bypass_flag_makes_an_identity_domain() {
    let dev = device();
    ok(&dev, &attach(D, EP, VIRTIO_IOMMU_ATTACH_F_BYPASS));
    assert_eq!(
        dev.translate(EP, 0xdead_0000, Permissions::ReadWrite),
        Ok(0xdead_0000)
    );
    ok(&dev, &detach(D, EP));
    assert_eq!(
        dev.translate(EP, 0xdead_0000, Permissions::Read),
        Err(FaultReason::Domain)
    );
}

#[test]
fn reset_detaches_everything_and_keeps_bypass_value() {
    let dev = device();
    dev.write_bypass(1);
    ok(&dev, &attach(D, EP, 0));
    dev.reset();
    assert_eq!(dev.negotiated_features(), 0);
    assert_eq!(dev.config().bypass, 1);
    assert_eq!(dev.translate(EP, 0x1000, Permissions::Read), Ok(0x1000));
}

#[test]
fn config_space_reports_configured_ranges() {
    let dev = device();
    let c = dev.config();
    assert_eq!(c.page_size_mask.get(), 0x1000 | 0x20_0000 | 0x4000_0000);
    assert_eq!(
        (c.input_range.start.get(), c.input_range.end.get()),
        (0, (1 << 48) - 1)
    );
    assert_eq!(
        (c.domain_range.start.get(), c.domain_range.end.get()),
        (1, 0xffff)
    );
    assert_eq!(c.probe_size.get(), 24);
    let f = dev.device_features();
    for bit in [
        VIRTIO_IOMMU_F_MAP_UNMAP,
        VIRTIO_IOMMU_F_PROBE,
        VIRTIO_IOMMU_F_BYPASS_CONFIG,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_IOMMU_F_BYPASS), 0);
}

#[test]
fn driver_cannot_negotiate_features_not_offered() {
    let dev = VirtioIommu::new(&config()).unwrap();
    assert_eq!(dev.set_driver_features(u64::MAX), dev.device_features());
}
