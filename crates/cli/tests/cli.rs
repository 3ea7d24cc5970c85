//! The `uiommu` binary as a user runs it.

use std::process::Command;

fn uiommu(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn probe_prints_every_device_of_the_default_platform() {
    let (ok, out, err) = uiommu(&["probe"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("DEVICE"));
    assert_eq!(lines.len(), 14);
    let gpu = lines
        .iter()
        .find(|l| l.starts_with("0000:00:02.0"))
        .unwrap();
    assert!(
        gpu.contains("viommu0") && gpu.contains("virtio-iommu") && gpu.ends_with("DMA"),
        "{gpu}"
    );
    let mock = lines
        .iter()
        .find(|l| l.starts_with("iommufd_mock0"))
        .unwrap();
    assert!(
        mock.contains("iommufd-mock") && mock.ends_with("blocked"),
        "{mock}"
    );
    let uart = lines.iter().find(|l| l.starts_with("uart0")).unwrap();
    assert!(uart.contains("no IOMMU"), "{uart}");
}

#[test]
fn probe_json_is_machine_readable() {
    let (ok, out, _) = uiommu(&["probe", "--json", "--default-domain", "passthrough"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policy"], "by-fwnode");
    assert_eq!(v["instances"].as_array().unwrap().len(), 2);
    let gpu = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "0000:00:02.0")
        .unwrap();
    assert_eq!(gpu["default_domain"], "identity");
    assert_eq!(gpu["ids"][0], 0x10);
}

#[test]
fn probe_dot_draws_instances_groups_and_devices() {
    let (ok, out, _) = uiommu(&["probe", "--dot"]);
    assert!(ok);
    assert!(out.starts_with("digraph uiommu {"));
    assert!(out.contains("\"iommu:viommu0\" -> \"group:0\";"));
    assert!(out.contains("\"group:0\" -> \"dev:0000:00:02.0\";"));
    assert!(out.contains("\"dev:uart0\" [style=dashed"));
}

#[test]
fn a_bad_platform_file_is_reported_with_its_position() {
    let dir = std::env::temp_dir().join(format!("uiommu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[pci]]\naddress = \"00:00.0\"\n[[pci]]\naddress = \"00:00.9\"\n",
    )
    .unwrap();
    let (ok, out, err) = uiommu(&["probe", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(
        err.contains("bad.toml:4:11: malformed PCI address"),
        "{err}"
    );
    let (ok, _, err) = uiommu(&["probe", "/nonexistent/platform.toml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/platform.toml"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Drivers written for routing by construction carry no "is this mine?" check, so under the
/// rejected call-all policy they decline every device.
#[test]
fn call_all_policy_leaves_by_construction_drivers_without_devices() {
    let (ok, out, _) = uiommu(&["probe", "--json", "--policy", "call-all"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["driver"].is_null()));
}
