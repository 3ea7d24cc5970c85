//! Feeds arbitrary request bytes to the device: byte 0 picks the writable size, byte 1 whether
//! a domain is attached first, the rest is the device-readable part. The device must answer
//! or decline every input without panicking, and never claim more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uiommu_virtio::{
    Completion, DeviceConfig, EndpointConfig, ReservedKind, ReservedRegion, VirtioIommu,
};

fuzz_target!(|data: &[u8]| {
    let [writable, setup, request @ ..] = data else {
        return;
    };
    let config = DeviceConfig {
        endpoints: vec![EndpointConfig {
            id: 8,
            reserved: vec![ReservedRegion {
                start: 0xfee0_0000,
                end: 0xfeef_ffff,
                kind: ReservedKind::Msi,
            }],
        }],
        ..DeviceConfig::default()
    };
    let Ok(dev) = VirtioIommu::new(&config) else {
        return;
    };
    dev.set_driver_features(dev.device_features());
    if setup & 1 != 0 {
        // ATTACH endpoint 8 to domain 1, so MAP/UNMAP reach the mapping code.
        let attach = [1u8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        dev.process(&attach, 4);
    }
    let writable = usize::from(*writable);
    let completion = dev.process(request, writable);
    if let Completion::Answered {
        properties,
        tail_offset,
        ..
    } = &completion
    {
        assert!(completion.used_len() <= writable);
        assert!(properties.len() <= *tail_offset);
    }
});
