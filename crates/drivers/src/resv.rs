//! Firmware-described ranges a device keeps using through its IOMMU: Intel's RMRRs, AMD's
//! IVMD unity ranges. Drivers report them as direct reserved regions; the core identity-maps
//! them into DMA default domains.

use uiommu_core::{DeviceInfo, Iova, PciAddress, Prot, ReservedKind, ReservedRegion};

/// One firmware range that must stay identity-mapped for the devices in its scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub last: u64,
    /// Rights of the mapping (RMRRs are read-write; IVMD says per range).
    pub prot: Prot,
    /// The PCI functions in scope, by address.
    pub devices: Vec<PciAddress>,
}

impl DirectRange {
    /// Whether `dev` is in this range's scope.
    pub fn covers(&self, dev: &DeviceInfo<'_>) -> bool {
        dev.desc
            .pci_function()
            .is_some_and(|f| self.devices.contains(&f.address))
    }

    /// The reserved region of `kind` this range becomes.
    pub fn region(&self, kind: ReservedKind) -> ReservedRegion {
        ReservedRegion {
            start: Iova(self.start),
            last: Iova(self.last),
            prot: self.prot,
            kind,
        }
    }
}

/// The x86 interrupt window (`0xfee00000`–`0xfeefffff`) that VT-d and AMD-Vi both report as a
/// hardware MSI region (Linux `IOAPIC_RANGE_START`/`MSI_RANGE_START`).
pub(crate) fn x86_msi_window() -> ReservedRegion {
    ReservedRegion {
        start: Iova(0xfee0_0000),
        last: Iova(0xfeef_ffff),
        prot: Prot::NONE,
        kind: ReservedKind::Msi,
    }
}
