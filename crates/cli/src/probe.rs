//! `uiommu probe`: build a platform and report where every device ended up.

use std::fmt::Write;

use serde::Serialize;
use uiommu_core::{CoreConfig, ProbePolicy, ProbeState};

use crate::machine::Machine;

/// The embedded default platform.
pub const DEFAULT_PLATFORM: &str = include_str!("../platforms/x86-virtio-mock.toml");

/// One device of the report.
#[derive(Debug, Serialize)]
pub struct Row {
    device: String,
    bus: &'static str,
    fwnode: Option<String>,
    ids: Vec<u32>,
    instance: Option<String>,
    driver: Option<String>,
    group: Option<u32>,
    default_domain: Option<&'static str>,
    domain: Option<&'static str>,
    state: String,
}

/// What `uiommu probe` prints.
#[derive(Debug, Serialize)]
pub struct Topology {
    policy: String,
    instances: Vec<InstanceRow>,
    devices: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct InstanceRow {
    name: String,
    driver: String,
    fwnode: Option<String>,
}

/// Parse `text`, build it into a core configured by `config`, and collect the report.
pub fn probe(origin: &str, text: &str, config: CoreConfig) -> Result<Topology, String> {
    let machine = Machine::build(origin, text, config)?;
    let core = &machine.core;
    let devices = core
        .devices()
        .into_iter()
        .map(|d| {
            let (group, state) = match &d.state {
                ProbeState::Bound { group, .. } => (Some(group.0), "bound".to_string()),
                ProbeState::Deferred => (None, "deferred".to_string()),
                ProbeState::NoIommu => (None, "no IOMMU".to_string()),
                ProbeState::Failed(e) => (None, format!("failed: {e}")),
            };
            Row {
                device: d.name,
                bus: d.bus.name(),
                fwnode: d.fwspec.as_ref().map(|f| f.fwnode.path().to_string()),
                ids: d.fwspec.map(|f| f.ids).unwrap_or_default(),
                instance: d.instance_name,
                driver: d.driver,
                group,
                default_domain: d.default_domain.map(|t| t.name()),
                domain: d.domain.map(|t| t.name()),
                state,
            }
        })
        .collect();
    let instances = core
        .instances()
        .into_iter()
        .map(|i| InstanceRow {
            name: i.name,
            driver: i.driver,
            fwnode: i.fwnode.map(|f| f.path().to_string()),
        })
        .collect();
    Ok(Topology {
        policy: match config.policy {
            ProbePolicy::ByFwnode => "by-fwnode",
            ProbePolicy::CallAll => "call-all",
        }
        .to_string(),
        instances,
        devices,
    })
}

fn or_dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

impl Topology {
    /// A table, one device per line.
    pub fn to_table(&self) -> String {
        let header = [
            "DEVICE",
            "BUS",
            "FWNODE",
            "IDS",
            "INSTANCE",
            "DRIVER",
            "GROUP",
            "DEFAULT DOMAIN",
        ];
        let rows: Vec<[String; 8]> = self
            .devices
            .iter()
            .map(|r| {
                let ids = r
                    .ids
                    .iter()
                    .map(|i| format!("{i:#x}"))
                    .collect::<Vec<_>>()
                    .join(",");
                [
                    r.device.clone(),
                    r.bus.to_string(),
                    or_dash(&r.fwnode),
                    if ids.is_empty() { "-".to_string() } else { ids },
                    r.instance.clone().unwrap_or_else(|| r.state.clone()),
                    or_dash(&r.driver),
                    or_dash(&r.group),
                    or_dash(&r.default_domain),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].len())
                    .chain([header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let text: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", text.join("  ").trim_end());
        };
        line(&header.map(String::from));
        for row in &rows {
            line(row);
        }
        out
    }

    /// Machine-readable JSON.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("plain data serializes");
        s.push('\n');
        s
    }

    /// A Graphviz digraph: instances → groups → devices; devices without an IOMMU stand alone.
    pub fn to_dot(&self) -> String {
        let quote = |s: &str| {
            let escaped = s
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("\"{escaped}\"")
        };
        let mut out = String::from("digraph uiommu {\n  rankdir=LR;\n  node [shape=box];\n");
        for i in &self.instances {
            let label = format!(
                "{}\n{} @ {}",
                i.name,
                i.driver,
                i.fwnode.as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                out,
                "  {} [shape=component, label={}];",
                quote(&format!("iommu:{}", i.name)),
                quote(&label)
            );
        }
        let mut groups_seen = std::collections::BTreeSet::new();
        for r in &self.devices {
            let dev = quote(&format!("dev:{}", r.device));
            let _ = writeln!(
                out,
                "  {dev} [label={}];",
                quote(&format!("{} ({})", r.device, r.bus))
            );
            match (&r.instance, r.group) {
                (Some(inst), Some(g)) => {
                    let group = quote(&format!("group:{g}"));
                    if groups_seen.insert(g) {
                        let label = format!("group {g}: {}", r.default_domain.unwrap_or("-"));
                        let _ =
                            writeln!(out, "  {group} [shape=ellipse, label={}];", quote(&label));
                        let _ = writeln!(out, "  {} -> {group};", quote(&format!("iommu:{inst}")));
                    }
                    let _ = writeln!(out, "  {group} -> {dev};");
                }
                _ => {
                    let _ = writeln!(out, "  {dev} [style=dashed, xlabel={}];", quote(&r.state));
                }
            }
        }
        out.push_str("}\n");
        out
    }
}
