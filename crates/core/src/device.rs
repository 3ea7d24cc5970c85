//! The device model: buses, devices and the PCI topology that grouping rules need.
//!
//! Devices are described by a [`DeviceDesc`] and added to the core, which hands back a
//! [`DeviceId`]. PCI functions carry what Linux reads from config space to decide isolation:
//! where they sit ([`PciAddress`], the bridge above them), what they are ([`PciKind`]), whether
//! they are multifunction, whether ACS isolation is enabled, and DMA alias quirks.

use std::fmt;
use std::str::FromStr;

/// Index of a device inside one [`crate::IommuCore`]. Not reused while the device exists.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DeviceId(pub(crate) u32);

impl DeviceId {
    /// The raw index, for display and for drivers' own tables.
    pub fn raw(self) -> u32 {
        self.0
    }
}

/// The buses the core watches for added and removed devices (Linux `iommu_buses[]`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum BusKind {
    /// Memory-mapped devices described by firmware (device tree or ACPI).
    Platform,
    /// PCI and PCI Express.
    Pci,
    /// The iommufd selftest's mock bus: its devices get their fwspec from the mock driver.
    Mock,
}

impl BusKind {
    /// The bus's name as Linux spells it in sysfs.
    pub fn name(self) -> &'static str {
        match self {
            BusKind::Platform => "platform",
            BusKind::Pci => "pci",
            BusKind::Mock => "iommufd_mock",
        }
    }
}

/// A PCI function's address: segment, bus, device and function.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7:3) and function (bits 2:0).
    pub devfn: u8,
}

impl PciAddress {
    /// Build an address from its parts. `device` must be below 32 and `function` below 8.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Option<PciAddress> {
        (device < 32 && function < 8).then_some(PciAddress {
            segment,
            bus,
            devfn: (device << 3) | function,
        })
    }

    /// The slot (device number).
    pub fn slot(self) -> u8 {
        self.devfn >> 3
    }

    /// The function number.
    pub fn function(self) -> u8 {
        self.devfn & 7
    }

    /// The 16-bit requester id a function puts on the bus: bus number and devfn.
    pub fn requester_id(self) -> u16 {
        (u16::from(self.bus) << 8) | u16::from(self.devfn)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment,
            self.bus,
            self.slot(),
            self.function()
        )
    }
}

impl fmt::Debug for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PciAddress({self})")
    }
}

/// Why a string is not a PCI address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed PCI address {0:?}: expected [SEGMENT:]BUS:DEVICE.FUNCTION in hex, device < 0x20, function < 8")]
pub struct BadPciAddress(pub String);

impl FromStr for PciAddress {
    type Err = BadPciAddress;

    /// Parses `SSSS:BB:DD.F` or `BB:DD.F` (hexadecimal, as `lspci` prints them).
    fn from_str(s: &str) -> Result<PciAddress, BadPciAddress> {
        let bad = || BadPciAddress(s.to_string());
        let (head, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (segment, bus, device) = match parts.as_slice() {
            [bus, device] => ("0", *bus, *device),
            [segment, bus, device] => (*segment, *bus, *device),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max_len: usize| -> Result<u32, BadPciAddress> {
            if t.is_empty() || t.len() > max_len {
                return Err(bad());
            }
            u32::from_str_radix(t, 16).map_err(|_| bad())
        };
        let segment = u16::try_from(hex(segment, 4)?).map_err(|_| bad())?;
        let bus = u8::try_from(hex(bus, 2)?).map_err(|_| bad())?;
        let device = u8::try_from(hex(device, 2)?).map_err(|_| bad())?;
        let function = u8::try_from(hex(function, 1)?).map_err(|_| bad())?;
        PciAddress::new(segment, bus, device, function).ok_or_else(bad)
    }
}

/// What a PCI function is, as far as DMA isolation is concerned (its PCIe port type).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PciKind {
    /// A PCIe endpoint (or root-complex integrated endpoint).
    Endpoint,
    /// A conventional PCI device: no PCIe capability, hence no ACS.
    ConventionalDevice,
    /// A PCIe root port.
    RootPort,
    /// The upstream port of a PCIe switch.
    SwitchUpstreamPort,
    /// A downstream port of a PCIe switch.
    SwitchDownstreamPort,
    /// A PCIe-to-PCI/PCI-X bridge: everything behind it reaches the IOMMU with the bridge's
    /// requester id, so nothing behind it can be isolated.
    PcieToPciBridge,
    /// A conventional PCI-to-PCI bridge (below a PCIe-to-PCI bridge, or on a legacy bus).
    ConventionalBridge,
}

impl PciKind {
    /// Whether the function has a PCIe capability (and could have ACS).
    pub fn is_pcie(self) -> bool {
        !matches!(
            self,
            PciKind::ConventionalDevice | PciKind::ConventionalBridge
        )
    }

    /// Whether the function is a bridge with a secondary bus that other functions sit on.
    pub fn is_bridge(self) -> bool {
        matches!(
            self,
            PciKind::RootPort
                | PciKind::SwitchUpstreamPort
                | PciKind::SwitchDownstreamPort
                | PciKind::PcieToPciBridge
                | PciKind::ConventionalBridge
        )
    }
}

/// A PCI function's place in the topology and its isolation properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub address: PciAddress,
    /// Its port type.
    pub kind: PciKind,
    /// Whether the function belongs to a multifunction device (header type bit 7).
    pub multifunction: bool,
    /// Whether ACS Source Validation, Request Redirect, Completion Redirect and Upstream
    /// Forwarding are all enabled (Linux `REQ_ACS_FLAGS`). Only meaningful for PCIe functions.
    pub acs: bool,
    /// Other devfns on the same bus this function also issues DMA as (Linux quirks'
    /// `dma_alias_mask`).
    pub dma_aliases: Vec<u8>,
}

/// The bus-specific part of a device description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusInfo {
    /// A platform device.
    Platform,
    /// A PCI function.
    Pci(PciFunction),
    /// A device on the mock bus.
    Mock,
}

impl BusInfo {
    /// Which bus the device is on.
    pub fn kind(&self) -> BusKind {
        match self {
            BusInfo::Platform => BusKind::Platform,
            BusInfo::Pci(_) => BusKind::Pci,
            BusInfo::Mock => BusKind::Mock,
        }
    }
}

/// Everything the core needs to know about a device when it is added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDesc {
    /// A name unique on its bus (PCI functions default to their address).
    pub name: String,
    /// The bus and its details.
    pub bus: BusInfo,
    /// For a PCI function: the bridge whose secondary bus it sits on (`None` on a root bus).
    pub upstream: Option<DeviceId>,
}

impl DeviceDesc {
    /// A platform device.
    pub fn platform(name: impl Into<String>) -> DeviceDesc {
        DeviceDesc {
            name: name.into(),
            bus: BusInfo::Platform,
            upstream: None,
        }
    }

    /// A mock-bus device.
    pub fn mock(name: impl Into<String>) -> DeviceDesc {
        DeviceDesc {
            name: name.into(),
            bus: BusInfo::Mock,
            upstream: None,
        }
    }

    /// A PCI function named after its address, below `upstream` (`None` on a root bus).
    pub fn pci(function: PciFunction, upstream: Option<DeviceId>) -> DeviceDesc {
        DeviceDesc {
            name: function.address.to_string(),
            bus: BusInfo::Pci(function),
            upstream,
        }
    }

    /// The PCI details, if this is a PCI function.
    pub fn pci_function(&self) -> Option<&PciFunction> {
        match &self.bus {
            BusInfo::Pci(f) => Some(f),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_parses_lspci_forms() {
        let a: PciAddress = "0000:03:1f.7".parse().unwrap();
        assert_eq!((a.segment, a.bus, a.slot(), a.function()), (0, 3, 0x1f, 7));
        assert_eq!(a.to_string(), "0000:03:1f.7");
        let b: PciAddress = "a:00.1".parse().unwrap();
        assert_eq!((b.bus, b.slot(), b.function()), (0xa, 0, 1));
        assert_eq!(b.requester_id(), 0x0a01);
    }

    #[test]
    fn pci_address_rejects_malformed_input() {
        for s in [
            "",
            "00:00",
            "00:20.0",
            "00:00.8",
            "1:2:3:4.0",
            "zz:00.0",
            "00:00.",
            "100:00.0",
            "00000:00:00.0",
            "00:00.00",
        ] {
            assert!(s.parse::<PciAddress>().is_err(), "{s:?} parsed");
        }
    }
}
