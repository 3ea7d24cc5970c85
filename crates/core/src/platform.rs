//! Platform descriptions: a TOML file that says which IOMMU instances, buses, devices and
//! firmware links a machine has, and [`Platform::build`] that turns it into a populated
//! [`IommuCore`].
//!
//! The format, by example:
//! ```toml
//! [[iommu]]
//! name = "viommu"              # instance name
//! driver = "virtio-iommu"      # which driver creates it (resolved by the caller's factory)
//! fwnode = "\\_SB.PCI0.VIOT"   # the firmware node it is registered under
//!
//! [[pci]]
//! address = "0000:00:1c.0"     # [SEGMENT:]BUS:DEVICE.FUNCTION, hex
//! kind = "root-port"           # endpoint (default), conventional, root-port, switch-upstream,
//!                              # switch-downstream, pcie-to-pci-bridge, conventional-bridge
//! acs = true                   # ACS isolation enabled (default false)
//! multifunction = false
//! upstream = "0000:00:1c.0"    # the bridge above it (absent on a root bus)
//! dma-aliases = ["00:05.0"]    # quirk aliases on the same bus
//!
//! [[platform]]
//! name = "uart0"
//!
//! [[mock]]
//! name = "iommufd_mock0"
//! iommu = "mock"               # mock-bus devices get their fwspec from their bus's driver
//!
//! [[link]]                     # firmware links: VIOT/IORT id mappings, DT iommus/iommu-map
//! iommu = "viommu"
//! pci-range = { segment = 0, first = "00:00.0", last = "ff:1f.7", endpoint-base = 0x100 }
//!
//! [[link]]
//! iommu = "smmu"
//! device = "uart0"
//! ids = [3]
//! ```
//! Devices are added first, in file order (PCI, then platform, then mock), and the instances
//! registered afterwards, as on a machine whose IOMMU drivers probe after bus enumeration:
//! every device goes through the deferral path once.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::device::{DeviceDesc, PciAddress, PciFunction, PciKind};
use crate::driver::IommuOps;
use crate::fwnode::{FwNode, Fwspec};
use crate::iommu::{InstanceId, IommuCore};
use crate::DeviceId;

/// Why a platform description was refused; the message names the position in the file.
#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct PlatformError {
    /// The file name (or `<embedded>`).
    pub origin: String,
    /// 1-based line of the offending value.
    pub line: usize,
    /// 1-based column of the offending value.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Creates driver instances for [`Platform::build`]: the caller knows the drivers, the
/// platform layer only knows their names.
pub trait DriverFactory {
    /// The driver for `iommu`. `endpoints` lists the ids that firmware routes to it (every id
    /// of every fwspec naming its fwnode, sorted), for drivers whose hardware must know its
    /// endpoints up front, such as a virtio-iommu device.
    ///
    /// # Errors
    /// A message when the driver is unknown or cannot be created.
    fn create(
        &mut self,
        iommu: &IommuDesc,
        endpoints: &[u32],
    ) -> std::result::Result<Arc<dyn IommuOps>, String>;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    iommu: Vec<IommuEntry>,
    #[serde(default)]
    pci: Vec<PciEntry>,
    #[serde(default)]
    platform: Vec<NamedEntry>,
    #[serde(default)]
    mock: Vec<MockEntry>,
    #[serde(default)]
    link: Vec<LinkEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IommuEntry {
    name: Spanned<String>,
    driver: Spanned<String>,
    fwnode: Spanned<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "kebab-case")]
enum KindEntry {
    #[default]
    Endpoint,
    Conventional,
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    PcieToPciBridge,
    ConventionalBridge,
}

impl From<KindEntry> for PciKind {
    fn from(k: KindEntry) -> PciKind {
        match k {
            KindEntry::Endpoint => PciKind::Endpoint,
            KindEntry::Conventional => PciKind::ConventionalDevice,
            KindEntry::RootPort => PciKind::RootPort,
            KindEntry::SwitchUpstream => PciKind::SwitchUpstreamPort,
            KindEntry::SwitchDownstream => PciKind::SwitchDownstreamPort,
            KindEntry::PcieToPciBridge => PciKind::PcieToPciBridge,
            KindEntry::ConventionalBridge => PciKind::ConventionalBridge,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PciEntry {
    address: Spanned<String>,
    #[serde(default)]
    kind: KindEntry,
    #[serde(default)]
    acs: bool,
    #[serde(default)]
    multifunction: bool,
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    dma_aliases: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedEntry {
    name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MockEntry {
    name: Spanned<String>,
    iommu: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LinkEntry {
    iommu: Spanned<String>,
    device: Option<Spanned<String>>,
    #[serde(default)]
    ids: Vec<u32>,
    pci_range: Option<Spanned<PciRangeEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PciRangeEntry {
    #[serde(default)]
    segment: u16,
    first: String,
    last: String,
    #[serde(default)]
    endpoint_base: u32,
}

/// A requester-id range routed to one IOMMU (a VIOT PCI range node, an IORT id mapping, a
/// device tree `iommu-map` entry): id = `endpoint_base + (rid - first)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciRangeLink {
    /// The PCI segment.
    pub segment: u16,
    /// First requester id (bus << 8 | devfn).
    pub first: u16,
    /// Last requester id, inclusive.
    pub last: u16,
    /// The IOMMU id of the first requester id.
    pub endpoint_base: u32,
}

/// One IOMMU instance of a platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuDesc {
    /// Instance name.
    pub name: String,
    /// Driver name.
    pub driver: String,
    /// Its firmware node.
    pub fwnode: FwNode,
}

/// A validated platform description, ready to [`build`](Platform::build).
#[derive(Clone, Debug)]
pub struct Platform {
    /// The IOMMU instances, in file order.
    pub iommus: Vec<IommuDesc>,
    /// The devices in the order they are added, each with its upstream bridge (an index into
    /// this list) and the fwspec firmware gives it.
    devices: Vec<(DeviceDesc, Option<usize>, Option<Fwspec>)>,
}

/// What [`Platform::build`] made.
#[derive(Debug)]
pub struct Built {
    /// The instances, in file order.
    pub instances: Vec<InstanceId>,
    /// The devices, in the order they were added.
    pub devices: Vec<DeviceId>,
}

/// Turns byte offsets into line and column for messages.
struct Positions<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Positions<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> PlatformError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        PlatformError {
            origin: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl Platform {
    /// Parse and validate a description. `origin` names the file in error messages.
    ///
    /// # Errors
    /// Syntax errors, unknown fields, malformed PCI addresses, duplicate devices, names of
    /// IOMMUs or devices that are not declared, ranges that do not fit, each with its position.
    pub fn parse(origin: &str, text: &str) -> Result<Platform, PlatformError> {
        let pos = Positions { origin, text };
        let file: File = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            pos.error(e.span().unwrap_or(0..0), message)
        })?;

        let mut iommus = Vec::new();
        let mut by_name: HashMap<String, FwNode> = HashMap::new();
        let mut fwnode_paths = HashSet::new();
        for entry in &file.iommu {
            let name = entry.name.get_ref();
            if by_name.contains_key(name) {
                return Err(pos.error(entry.name.span(), format!("duplicate IOMMU {name:?}")));
            }
            if !fwnode_paths.insert(entry.fwnode.get_ref().clone()) {
                return Err(pos.error(
                    entry.fwnode.span(),
                    format!(
                        "fwnode {:?} already names another IOMMU",
                        entry.fwnode.get_ref()
                    ),
                ));
            }
            let fwnode = FwNode::new(entry.fwnode.get_ref());
            by_name.insert(name.clone(), fwnode.clone());
            iommus.push(IommuDesc {
                name: name.clone(),
                driver: entry.driver.get_ref().clone(),
                fwnode,
            });
        }
        let lookup_iommu = |name: &Spanned<String>| {
            by_name.get(name.get_ref()).cloned().ok_or_else(|| {
                pos.error(name.span(), format!("unknown IOMMU {:?}", name.get_ref()))
            })
        };

        let mut devices: Vec<(DeviceDesc, Option<usize>, Option<Fwspec>)> = Vec::new();
        let mut index_by_name: HashMap<String, usize> = HashMap::new();
        let mut pci_index: HashMap<PciAddress, usize> = HashMap::new();
        let parse_address = |s: &Spanned<String>| {
            s.get_ref()
                .parse::<PciAddress>()
                .map_err(|e| pos.error(s.span(), e.to_string()))
        };
        for entry in &file.pci {
            let address = parse_address(&entry.address)?;
            if pci_index.contains_key(&address) {
                return Err(pos.error(entry.address.span(), format!("duplicate device {address}")));
            }
            let upstream = match &entry.upstream {
                Some(up) => {
                    let up_addr = parse_address(up)?;
                    let idx = *pci_index.get(&up_addr).ok_or_else(|| {
                        pos.error(
                            up.span(),
                            format!("upstream {up_addr} is not declared before this device"),
                        )
                    })?;
                    let bridge = devices[idx].0.pci_function().expect("pci index holds PCI");
                    if !bridge.kind.is_bridge() {
                        return Err(
                            pos.error(up.span(), format!("upstream {up_addr} is not a bridge"))
                        );
                    }
                    if bridge.address.segment != address.segment
                        || bridge.address.bus >= address.bus
                    {
                        return Err(pos.error(
                            entry.address.span(),
                            format!("{address} cannot sit below {up_addr}: its bus must be higher, same segment"),
                        ));
                    }
                    Some(idx)
                }
                None => None,
            };
            let mut dma_aliases = Vec::new();
            for alias in &entry.dma_aliases {
                let a = parse_address(alias)?;
                if (a.segment, a.bus) != (address.segment, address.bus) {
                    return Err(pos.error(alias.span(), "a DMA alias must be on the same bus"));
                }
                dma_aliases.push(a.devfn);
            }
            let function = PciFunction {
                address,
                kind: entry.kind.into(),
                multifunction: entry.multifunction,
                acs: entry.acs,
                dma_aliases,
            };
            pci_index.insert(address, devices.len());
            index_by_name.insert(address.to_string(), devices.len());
            devices.push((DeviceDesc::pci(function, None), upstream, None));
        }
        let mut add_named = |name: &Spanned<String>,
                             desc: DeviceDesc,
                             fwspec: Option<Fwspec>,
                             devices: &mut Vec<_>|
         -> Result<(), PlatformError> {
            if index_by_name.contains_key(name.get_ref()) {
                return Err(pos.error(
                    name.span(),
                    format!("duplicate device {:?}", name.get_ref()),
                ));
            }
            index_by_name.insert(name.get_ref().clone(), devices.len());
            devices.push((desc, None, fwspec));
            Ok(())
        };
        for entry in &file.platform {
            add_named(
                &entry.name,
                DeviceDesc::platform(entry.name.get_ref()),
                None,
                &mut devices,
            )?;
        }
        for entry in &file.mock {
            let fwnode = lookup_iommu(&entry.iommu)?;
            let fwspec = Some(Fwspec {
                fwnode,
                ids: Vec::new(),
            });
            add_named(
                &entry.name,
                DeviceDesc::mock(entry.name.get_ref()),
                fwspec,
                &mut devices,
            )?;
        }

        for link in &file.link {
            let fwnode = lookup_iommu(&link.iommu)?;
            let mut targets: Vec<(usize, Vec<u32>)> = Vec::new();
            match (&link.device, &link.pci_range) {
                (Some(dev), None) => {
                    let idx = *index_by_name.get(dev.get_ref()).ok_or_else(|| {
                        pos.error(dev.span(), format!("unknown device {:?}", dev.get_ref()))
                    })?;
                    targets.push((idx, link.ids.clone()));
                }
                (None, Some(range)) => {
                    let r = range.get_ref();
                    let rid = |s: &str| {
                        format!("{:x}:{s}", r.segment)
                            .parse::<PciAddress>()
                            .map(PciAddress::requester_id)
                            .map_err(|e| pos.error(range.span(), e.to_string()))
                    };
                    let (first, last) = (rid(&r.first)?, rid(&r.last)?);
                    if first > last {
                        return Err(pos.error(range.span(), "pci-range ends before it starts"));
                    }
                    if r.endpoint_base
                        .checked_add(u32::from(last - first))
                        .is_none()
                    {
                        return Err(
                            pos.error(range.span(), "pci-range endpoint ids overflow 32 bits")
                        );
                    }
                    if !link.ids.is_empty() {
                        return Err(pos.error(range.span(), "ids come from the range; drop `ids`"));
                    }
                    for (addr, &idx) in &pci_index {
                        let id = addr.requester_id();
                        if addr.segment == r.segment && (first..=last).contains(&id) {
                            targets.push((idx, vec![r.endpoint_base + u32::from(id - first)]));
                        }
                    }
                }
                _ => {
                    return Err(pos.error(
                        link.iommu.span(),
                        "a link names either `device` (with `ids`) or `pci-range`",
                    ))
                }
            }
            for (idx, ids) in targets {
                let slot = &mut devices[idx].2;
                match slot {
                    Some(spec) if spec.fwnode != fwnode => {
                        return Err(pos.error(
                            link.iommu.span(),
                            format!(
                                "device {} is already linked to another IOMMU",
                                devices[idx].0.name
                            ),
                        ))
                    }
                    Some(spec) => spec.ids.extend(ids),
                    None => {
                        *slot = Some(Fwspec {
                            fwnode: fwnode.clone(),
                            ids,
                        })
                    }
                }
            }
        }
        Ok(Platform { iommus, devices })
    }

    /// Every id firmware routes to `fwnode`, sorted and without repeats.
    pub fn endpoints_of(&self, fwnode: &FwNode) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .devices
            .iter()
            .filter_map(|(_, _, spec)| spec.as_ref().filter(|s| &s.fwnode == fwnode))
            .flat_map(|s| s.ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Add every device to `core`, then create and register every instance through `factory`.
    ///
    /// # Errors
    /// A message naming the device or instance that the core or the factory refused.
    pub fn build(
        &self,
        core: &IommuCore,
        factory: &mut dyn DriverFactory,
    ) -> Result<Built, String> {
        let mut devices = Vec::with_capacity(self.devices.len());
        for (desc, upstream, fwspec) in &self.devices {
            let mut desc = desc.clone();
            desc.upstream = upstream.map(|i| devices[i]);
            let id = core
                .add_device(desc.clone(), fwspec.clone())
                .map_err(|e| format!("device {}: {e}", desc.name))?;
            devices.push(id);
        }
        let mut instances = Vec::new();
        for iommu in &self.iommus {
            let ops = factory.create(iommu, &self.endpoints_of(&iommu.fwnode))?;
            let id = core
                .register(iommu.name.clone(), Some(iommu.fwnode.clone()), ops)
                .map_err(|e| format!("IOMMU {}: {e}", iommu.name))?;
            instances.push(id);
        }
        Ok(Built { instances, devices })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> PlatformError {
        Platform::parse("t.toml", text).unwrap_err()
    }

    #[test]
    fn errors_point_at_the_offending_value() {
        let e = err("[[iommu]]\nname = \"a\"\ndriver = \"x\"\nfwnode = \"f\"\n[[mock]]\nname = \"m\"\niommu = \"nope\"\n");
        assert_eq!((e.line, e.column), (7, 9), "{e}");
        assert!(e.message.contains("unknown IOMMU \"nope\""), "{e}");
        assert!(e.to_string().starts_with("t.toml:7:9: "), "{e}");

        let e = err("[[pci]]\naddress = \"00:20.0\"\n");
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        assert!(e.message.contains("malformed PCI address"), "{e}");

        let e = err("[[pci]]\naddress = \"00:01.0\"\n[[pci]]\naddress = \"0000:00:01.0\"\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("duplicate device 0000:00:01.0"), "{e}");

        let e = err("[[platform]]\nname = \"u\"\n[[platform]]\nname = \"u\"\n");
        assert_eq!(e.line, 4, "{e}");

        let e = err("[[pci]]\naddress = \"00:01.0\"\ncolour = 3\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err("[[pci]]\naddress = \"01:00.0\"\nupstream = \"00:01.0\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("not declared before"), "{e}");

        let e = err("[[pci]]\naddress = \"00:01.0\"\n[[pci]]\naddress = \"01:00.0\"\nupstream = \"00:01.0\"\n");
        assert!(e.message.contains("not a bridge"), "{e}");
    }

    #[test]
    fn links_become_fwspecs() {
        let p = Platform::parse(
            "t",
            r#"
            [[iommu]]
            name = "v"
            driver = "virtio-iommu"
            fwnode = "VIOT"
            [[pci]]
            address = "00:02.0"
            [[pci]]
            address = "00:03.1"
            [[platform]]
            name = "uart"
            [[link]]
            iommu = "v"
            pci-range = { first = "00:00.0", last = "00:1f.7", endpoint-base = 0x100 }
            [[link]]
            iommu = "v"
            device = "uart"
            ids = [7]
            "#,
        )
        .unwrap();
        let specs: Vec<_> = p
            .devices
            .iter()
            .map(|(d, _, f)| (d.name.clone(), f.as_ref().map(|f| f.ids.clone())))
            .collect();
        assert_eq!(
            specs,
            [
                ("0000:00:02.0".to_string(), Some(vec![0x110])),
                ("0000:00:03.1".to_string(), Some(vec![0x119])),
                ("uart".to_string(), Some(vec![7])),
            ]
        );
        assert!(p
            .devices
            .iter()
            .all(|(_, _, f)| f.as_ref().unwrap().fwnode == p.iommus[0].fwnode));
    }
}
