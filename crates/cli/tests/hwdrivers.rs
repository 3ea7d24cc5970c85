//! `uiommu probe` on platforms served by the hardware drivers: each device reaches the driver
//! its firmware names, in the group Linux would form.

use std::collections::HashMap;
use std::process::Command;

/// Probe `platform` (a file in tests/platforms) and return each device's JSON row by name.
fn probe(platform: &str) -> HashMap<String, serde_json::Value> {
    let path = format!("{}/tests/platforms/{platform}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .args(["probe", &path, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"].as_str().unwrap().to_string(), d.clone()))
        .collect()
}

fn group(devices: &HashMap<String, serde_json::Value>, name: &str) -> u64 {
    devices[name]["group"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} has no group: {}", devices[name]))
}

fn assert_driver(devices: &HashMap<String, serde_json::Value>, driver: &str, instance: &str) {
    for (name, d) in devices {
        if d["state"] == "bound" {
            assert_eq!(d["driver"], driver, "{name}");
            assert_eq!(d["instance"], instance, "{name}");
            assert_eq!(d["default_domain"], "DMA", "{name}");
        }
    }
}

#[test]
fn smmuv3_platform_groups_as_linux() {
    let d = probe("arm-smmu-v3.toml");
    assert_driver(&d, "arm-smmu-v3", "smmu0");
    let rp = group(&d, "0000:00:01.0");
    assert_eq!(group(&d, "0000:01:00.0"), rp);
    assert_eq!(group(&d, "0000:01:00.1"), rp);
    assert_ne!(group(&d, "0000:02:00.0"), group(&d, "0000:00:02.0"));
    assert_ne!(group(&d, "dma0"), group(&d, "dma1"));
    assert_eq!(d["dma1"]["ids"][0], 0x9001);
    assert_eq!(d["0000:01:00.1"]["ids"][0], 0x101);
    // One stream ID, two devices: the first owns it, the second's probe fails as in Linux.
    assert_eq!(d["sdhci0"]["state"], "bound");
    let failed = d["sdhci1"]["state"].as_str().unwrap();
    assert!(
        failed.starts_with("failed: invalid argument: stream ID already"),
        "{failed}"
    );
    assert_eq!(d.len(), 9);
}

#[test]
fn intel_platform_groups_as_linux() {
    let d = probe("intel-iommu.toml");
    assert_driver(&d, "intel-iommu", "dmar0");
    assert_eq!(group(&d, "0000:01:00.0"), group(&d, "0000:00:1c.0"));
    let lpc = group(&d, "0000:00:1f.0");
    assert_eq!(group(&d, "0000:00:1f.2"), lpc);
    assert_eq!(group(&d, "0000:00:1f.3"), lpc);
    assert_ne!(group(&d, "0000:00:02.0"), lpc);
    assert_ne!(group(&d, "0000:00:02.0"), group(&d, "0000:00:1c.0"));
}

#[test]
fn amd_platform_groups_as_linux() {
    let d = probe("amd-iommu.toml");
    assert_driver(&d, "amd-iommu", "ivhd0");
    assert_eq!(group(&d, "0000:00:05.0"), group(&d, "0000:00:05.1"));
    assert_ne!(group(&d, "0000:00:06.0"), group(&d, "0000:00:05.0"));
    let bridge = group(&d, "0000:00:07.0");
    assert_eq!(group(&d, "0000:03:00.0"), bridge);
    assert_eq!(group(&d, "0000:03:01.0"), bridge);
    assert_ne!(bridge, group(&d, "0000:00:06.0"));
}

#[test]
fn unknown_driver_names_list_the_hardware_drivers() {
    let dir = std::env::temp_dir().join(format!("uiommu-hwdrivers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[iommu]]\nname = \"x\"\ndriver = \"arm-smmu-v2\"\nfwnode = \"f\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .args(["probe", path.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown driver \"arm-smmu-v2\""), "{err}");
    assert!(err.contains("arm-smmu-v3, intel-iommu, amd-iommu"), "{err}");
}
