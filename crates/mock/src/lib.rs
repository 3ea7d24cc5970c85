//! uiommu-mock: the iommufd selftest's mock IOMMU driver (Linux
//! `drivers/iommu/iommufd/selftest.c`), registered with the core like any other driver.
//!
//! The mock instance registers under its own software fwnode, and the mock bus gives each
//! mock device a fwspec naming that fwnode before adding it (the 2025 outcome of the 2023
//! discussion, Linux 6.18). So the core routes mock devices to the mock driver and nothing else
//! to it, and the driver needs no "is this a mock device?" check.
//!
//! The driver knows only the core's driver interface. The `IOMMU_TEST_CMD` handlers
//! ([`MockSelftest`]) are iommufd's test hook and use iommufd's public test API; they reach mock
//! domains through [`DomainOps::as_any`](uiommu_core::DomainOps::as_any). iommufd does not
//! depend on this crate.
//!
//! The mock vIOMMU (Linux 7.3, `IOMMU_VIOMMU_TYPE_SELFTEST`) is the core's
//! [`ViommuOps`](uiommu_core::ViommuOps) of this driver: a loopback of its creation data, cache
//! invalidation of its devices' cache slots, nested domains that need the device's vDEVICE, and
//! HW queues.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod domain;
mod driver;
mod selftest;
mod viommu;

pub use domain::{MockNestedDomain, MockPagingDomain, PageTableEntry};
pub use driver::{MockDeviceFlags, MockIommu};
pub use selftest::{temp_memory_limit, MockSelftest, SelftestAccess, SelftestDevice};

/// The mock's smallest IO page: half a CPU page, so iommufd's page-size handling is exercised.
pub const MOCK_IO_PAGE_SIZE: u64 = 2048;
/// The mock's large IO page, offered to devices created with [`MockDeviceFlags::HUGE_IOVA`].
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_IO_PAGE_SIZE;
/// First IOVA of a mock paging domain's aperture.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// Last IOVA of a mock paging domain's aperture.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// Number of IOTLB slots of a mock nested domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: usize = 4;
/// `IOMMU_HW_INFO_TYPE_SELFTEST`.
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// The register value the mock reports in its hw_info.
pub const IOMMU_HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;
/// `IOMMU_HWPT_DATA_SELFTEST`: the user data type of a mock nested domain.
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_TEST_INVALIDATE_FLAG_ALL`: invalidate every IOTLB slot.
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1;
/// Log2 of the PASID space of a PASID-capable mock device (`MOCK_PASID_WIDTH`).
pub const MOCK_PASID_WIDTH: u32 = 20;
