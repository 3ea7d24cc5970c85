//! What a virtio-iommu device is built from: its endpoints, ranges, features and caps.

use crate::spec::{
    self, VIRTIO_F_VERSION_1, VIRTIO_IOMMU_F_BYPASS, VIRTIO_IOMMU_F_BYPASS_CONFIG,
    VIRTIO_IOMMU_F_DOMAIN_RANGE, VIRTIO_IOMMU_F_INPUT_RANGE, VIRTIO_IOMMU_F_MAP_UNMAP,
    VIRTIO_IOMMU_F_MMIO, VIRTIO_IOMMU_F_PROBE,
};
use std::collections::BTreeMap;
use std::mem::size_of;

/// Kind of a reserved IOVA region, the RESV_MEM property's subtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservedKind {
    /// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED`: not mappable.
    Reserved,
    /// `VIRTIO_IOMMU_RESV_MEM_T_MSI`: an MSI doorbell window, not mappable either.
    Msi,
}

impl ReservedKind {
    /// The wire subtype.
    pub fn subtype(self) -> u8 {
        match self {
            ReservedKind::Reserved => spec::VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
            ReservedKind::Msi => spec::VIRTIO_IOMMU_RESV_MEM_T_MSI,
        }
    }

    /// Decodes a subtype; unknown subtypes count as reserved, as the spec tells drivers to do.
    pub fn from_subtype(subtype: u8) -> Self {
        if subtype == spec::VIRTIO_IOMMU_RESV_MEM_T_MSI {
            ReservedKind::Msi
        } else {
            ReservedKind::Reserved
        }
    }
}

/// A reserved IOVA region of one endpoint, reported by PROBE and refused by MAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReservedRegion {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub end: u64,
    /// What the region is for.
    pub kind: ReservedKind,
}

/// An endpoint the device translates for (a PCI requester id or platform device id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Endpoint id as used in ATTACH/DETACH/PROBE and the firmware topology.
    pub id: u32,
    /// Regions PROBE reports for it; at most one of kind MSI, none overlapping.
    pub reserved: Vec<ReservedRegion>,
}

/// Optional features the device offers (MAP_UNMAP and VERSION_1 are always offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferedFeatures {
    /// `VIRTIO_IOMMU_F_PROBE`.
    pub probe: bool,
    /// `VIRTIO_IOMMU_F_MMIO`.
    pub mmio: bool,
    /// `VIRTIO_IOMMU_F_BYPASS_CONFIG` (the modern bypass control).
    pub bypass_config: bool,
    /// `VIRTIO_IOMMU_F_BYPASS` (legacy; the spec says new devices should not offer it).
    pub legacy_bypass: bool,
}

impl Default for OfferedFeatures {
    fn default() -> Self {
        OfferedFeatures {
            probe: true,
            mmio: true,
            bypass_config: true,
            legacy_bypass: false,
        }
    }
}

/// Everything needed to build a [`crate::VirtioIommu`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Supported page sizes; the lowest set bit is the granule every MAP must be aligned to.
    pub page_size_mask: u64,
    /// Translatable IOVAs `(start, end)` inclusive; `Some` offers `VIRTIO_IOMMU_F_INPUT_RANGE`,
    /// `None` means the whole 64-bit space.
    pub input_range: Option<(u64, u64)>,
    /// Valid domain ids `(start, end)` inclusive; `Some` offers `VIRTIO_IOMMU_F_DOMAIN_RANGE`,
    /// `None` means any 32-bit id.
    pub domain_range: Option<(u32, u32)>,
    /// Optional features.
    pub features: OfferedFeatures,
    /// Initial value of config field `bypass` (only meaningful with BYPASS_CONFIG).
    pub bypass: bool,
    /// The endpoints behind this device.
    pub endpoints: Vec<EndpointConfig>,
    /// Most domains that may exist at once; ATTACH creating one more gets NOMEM. The guest
    /// picks domain ids freely, so without a cap it could make the host allocate without bound.
    pub max_domains: usize,
    /// Most mappings one domain may hold; MAP beyond it gets NOMEM. Each mapping costs host
    /// memory (a B-tree entry) that the guest alone decides to spend.
    pub max_mappings_per_domain: usize,
    /// Most mappings all domains together may hold; MAP beyond it gets NOMEM. The per-domain
    /// cap times the domain cap is far too much memory to be a bound on its own.
    pub max_mappings_total: usize,
}

impl Default for DeviceConfig {
    /// 4 KiB granule with 2 MiB and 1 GiB hints, a 48-bit input range, domains 1..=65535,
    /// probe/MMIO/BYPASS_CONFIG offered, bypass off, no endpoints.
    fn default() -> Self {
        DeviceConfig {
            page_size_mask: 0x1000 | 0x20_0000 | 0x4000_0000,
            input_range: Some((0, (1 << 48) - 1)),
            domain_range: Some((1, 0xffff)),
            features: OfferedFeatures::default(),
            bypass: false,
            endpoints: Vec::new(),
            max_domains: 4096,
            max_mappings_per_domain: 1 << 21,
            max_mappings_total: 1 << 22,
        }
    }
}

/// Why a [`DeviceConfig`] cannot describe a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The spec requires at least one bit in `page_size_mask`.
    #[error("page_size_mask must have at least one bit set")]
    EmptyPageSizeMask,
    /// `start > end`.
    #[error("input_range start {start:#x} is above its end {end:#x}")]
    EmptyInputRange {
        /// Configured start.
        start: u64,
        /// Configured end.
        end: u64,
    },
    /// `start > end`.
    #[error("domain_range start {start} is above its end {end}")]
    EmptyDomainRange {
        /// Configured start.
        start: u32,
        /// Configured end.
        end: u32,
    },
    /// The spec says devices should not offer both bypass features.
    #[error("BYPASS and BYPASS_CONFIG must not both be offered")]
    BothBypassFeatures,
    /// Two endpoints share an id.
    #[error("endpoint id {0:#x} appears twice")]
    DuplicateEndpoint(u32),
    /// A reserved region is empty, overlaps another of the same endpoint, or is a second MSI.
    #[error("endpoint {endpoint:#x} has an invalid reserved region {start:#x}..={end:#x}")]
    BadReservedRegion {
        /// Endpoint id.
        endpoint: u32,
        /// Region start.
        start: u64,
        /// Region end.
        end: u64,
    },
    /// The PROBE buffer for the endpoint with the most regions would not fit `probe_size`.
    #[error("too many reserved regions for one PROBE buffer")]
    TooManyReservedRegions,
    /// A cap of zero would make the device useless.
    #[error("max_domains and the mapping caps must be non-zero")]
    ZeroCap,
}

/// Validated, immutable device parameters.
#[derive(Debug)]
pub(crate) struct Params {
    pub granule_mask: u64,
    pub page_size_mask: u64,
    pub input_start: u64,
    pub input_end: u64,
    pub domain_start: u32,
    pub domain_end: u32,
    pub offered: u64,
    pub probe_size: u32,
    pub endpoints: BTreeMap<u32, Vec<ReservedRegion>>,
    pub max_domains: usize,
    pub max_mappings_per_domain: usize,
    pub max_mappings_total: usize,
}

impl Params {
    pub fn new(config: &DeviceConfig) -> Result<Self, ConfigError> {
        if config.page_size_mask == 0 {
            return Err(ConfigError::EmptyPageSizeMask);
        }
        let (input_start, input_end) = config.input_range.unwrap_or((0, u64::MAX));
        if input_start > input_end {
            return Err(ConfigError::EmptyInputRange {
                start: input_start,
                end: input_end,
            });
        }
        let (domain_start, domain_end) = config.domain_range.unwrap_or((0, u32::MAX));
        if domain_start > domain_end {
            return Err(ConfigError::EmptyDomainRange {
                start: domain_start,
                end: domain_end,
            });
        }
        let f = config.features;
        if f.bypass_config && f.legacy_bypass {
            return Err(ConfigError::BothBypassFeatures);
        }
        if config.max_domains == 0
            || config.max_mappings_per_domain == 0
            || config.max_mappings_total == 0
        {
            return Err(ConfigError::ZeroCap);
        }
        let mut endpoints = BTreeMap::new();
        for ep in &config.endpoints {
            validate_reserved(ep)?;
            let mut regions = ep.reserved.clone();
            regions.sort_by_key(|r| r.start);
            if endpoints.insert(ep.id, regions).is_some() {
                return Err(ConfigError::DuplicateEndpoint(ep.id));
            }
        }
        let most_regions = endpoints.values().map(Vec::len).max().unwrap_or(0).max(1);
        let probe_size = most_regions
            .checked_mul(size_of::<spec::ProbeResvMem>())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(ConfigError::TooManyReservedRegions)?;

        let bit = |b: u32| 1u64 << b;
        let mut offered = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_IOMMU_F_MAP_UNMAP);
        for (on, b) in [
            (config.input_range.is_some(), VIRTIO_IOMMU_F_INPUT_RANGE),
            (config.domain_range.is_some(), VIRTIO_IOMMU_F_DOMAIN_RANGE),
            (f.probe, VIRTIO_IOMMU_F_PROBE),
            (f.mmio, VIRTIO_IOMMU_F_MMIO),
            (f.bypass_config, VIRTIO_IOMMU_F_BYPASS_CONFIG),
            (f.legacy_bypass, VIRTIO_IOMMU_F_BYPASS),
        ] {
            if on {
                offered |= bit(b);
            }
        }
        let granule = config.page_size_mask & config.page_size_mask.wrapping_neg();
        Ok(Params {
            granule_mask: granule - 1,
            page_size_mask: config.page_size_mask,
            input_start,
            input_end,
            domain_start,
            domain_end,
            offered,
            probe_size,
            endpoints,
            max_domains: config.max_domains,
            max_mappings_per_domain: config.max_mappings_per_domain,
            max_mappings_total: config.max_mappings_total,
        })
    }

    pub fn offers(&self, feature: u32) -> bool {
        self.offered & (1 << feature) != 0
    }
}

fn validate_reserved(ep: &EndpointConfig) -> Result<(), ConfigError> {
    let bad = |r: &ReservedRegion| ConfigError::BadReservedRegion {
        endpoint: ep.id,
        start: r.start,
        end: r.end,
    };
    let mut sorted = ep.reserved.clone();
    sorted.sort_by_key(|r| r.start);
    let mut msi_seen = false;
    for (i, r) in sorted.iter().enumerate() {
        if r.start > r.end {
            return Err(bad(r));
        }
        if r.kind == ReservedKind::Msi {
            if msi_seen {
                return Err(bad(r));
            }
            msi_seen = true;
        }
        if i > 0 && sorted[i - 1].end >= r.start {
            return Err(bad(r));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_page_size_mask_is_rejected() {
        let config = DeviceConfig {
            page_size_mask: 0,
            ..Default::default()
        };
        assert_eq!(
            Params::new(&config).unwrap_err(),
            ConfigError::EmptyPageSizeMask
        );
    }

    #[test]
    fn offering_both_bypass_features_is_rejected() {
        let mut config = DeviceConfig::default();
        config.features.legacy_bypass = true;
        assert_eq!(
            Params::new(&config).unwrap_err(),
            ConfigError::BothBypassFeatures
        );
    }

    #[test]
    fn duplicate_endpoint_is_rejected() {
        let ep = EndpointConfig {
            id: 8,
            reserved: vec![],
        };
        let config = DeviceConfig {
            endpoints: vec![ep.clone(), ep],
            ..Default::default()
        };
        assert_eq!(
            Params::new(&config).unwrap_err(),
            ConfigError::DuplicateEndpoint(8)
        );
    }

    #[test]
    fn overlapping_or_second_msi_region_is_rejected() {
        let r = |start, end, kind| ReservedRegion { start, end, kind };
        for reserved in [
            vec![
                r(0, 9, ReservedKind::Reserved),
                r(9, 20, ReservedKind::Reserved),
            ],
            vec![r(0, 9, ReservedKind::Msi), r(10, 20, ReservedKind::Msi)],
            vec![r(5, 4, ReservedKind::Reserved)],
        ] {
            let config = DeviceConfig {
                endpoints: vec![EndpointConfig { id: 1, reserved }],
                ..Default::default()
            };
            assert!(matches!(
                Params::new(&config),
                Err(ConfigError::BadReservedRegion { .. })
            ));
        }
    }

    #[test]
    fn granule_is_lowest_page_size_and_probe_size_fits_largest_endpoint() {
        let r = |start, end| ReservedRegion {
            start,
            end,
            kind: ReservedKind::Reserved,
        };
        let config = DeviceConfig {
            page_size_mask: 0x1_0000 | 0x20_0000,
            endpoints: vec![
                EndpointConfig {
                    id: 1,
                    reserved: vec![r(0, 9)],
                },
                EndpointConfig {
                    id: 2,
                    reserved: vec![r(0, 9), r(20, 29), r(40, 49)],
                },
            ],
            ..Default::default()
        };
        let p = Params::new(&config).unwrap();
        assert_eq!(p.granule_mask, 0xffff);
        assert_eq!(p.probe_size, 3 * 24);
    }
}
