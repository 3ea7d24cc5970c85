/* SPDX-License-Identifier: Apache-2.0 OR MIT */
/*
 * Compile-time check of the 7.3 headers (conformance/include-7.3 over conformance/include):
 * everything abi_check.c asserts for 6.12 that 7.3 kept, plus the 7.3 additions. The values
 * are the facts of crates/iommufd/src/abi.rs. Nothing here runs.
 */
#include <stddef.h>

#include <linux/iommufd.h>
#include <linux/vfio.h>
#include "iommufd_test.h"

#define SIZE_IS(type, bytes) _Static_assert(sizeof(type) == (bytes), "sizeof(" #type ")")
#define OFFSET_IS(type, field, at) \
	_Static_assert(offsetof(type, field) == (at), #type "." #field)
#define VALUE_IS(name, value) _Static_assert((name) == (value), #name)

/* New commands: _IO(';', nr) is 0x3b00 | nr. */
VALUE_IS(IOMMU_IOAS_MAP_FILE, 0x3b8f);
VALUE_IS(IOMMU_VIOMMU_ALLOC, 0x3b90);
VALUE_IS(IOMMU_VDEVICE_ALLOC, 0x3b91);
VALUE_IS(IOMMU_IOAS_CHANGE_PROCESS, 0x3b92);
VALUE_IS(IOMMU_VEVENTQ_ALLOC, 0x3b93);
VALUE_IS(IOMMU_HW_QUEUE_ALLOC, 0x3b94);
VALUE_IS(IOMMU_IOAS_NOIOMMU_GET_PA, 0x3b95);
VALUE_IS(IOMMU_TEST_CMD, 0x3ba0);

/* New structs. */
SIZE_IS(struct iommu_ioas_map_file, 40);
OFFSET_IS(struct iommu_ioas_map_file, fd, 12);
OFFSET_IS(struct iommu_ioas_map_file, iova, 32);
SIZE_IS(struct iommu_ioas_noiommu_get_pa, 40);
SIZE_IS(struct iommu_viommu_alloc, 40);
OFFSET_IS(struct iommu_viommu_alloc, out_viommu_id, 20);
OFFSET_IS(struct iommu_viommu_alloc, data_uptr, 32);
SIZE_IS(struct iommu_vdevice_alloc, 24);
OFFSET_IS(struct iommu_vdevice_alloc, virt_id, 16);
SIZE_IS(struct iommu_ioas_change_process, 8);
SIZE_IS(struct iommufd_vevent_header, 8);
SIZE_IS(struct iommu_veventq_alloc, 32);
OFFSET_IS(struct iommu_veventq_alloc, out_veventq_fd, 24);
SIZE_IS(struct iommu_hw_queue_alloc, 40);
OFFSET_IS(struct iommu_hw_queue_alloc, nesting_parent_iova, 24);
SIZE_IS(struct iommu_hwpt_arm_smmuv3, 16);
SIZE_IS(struct iommu_hwpt_amd_guest, 32);
SIZE_IS(struct iommu_viommu_arm_smmuv3_invalidate, 16);

/* New values. */
VALUE_IS(IOMMU_HWPT_ALLOC_PASID, 1 << 3);
VALUE_IS(IOMMU_HWPT_DATA_ARM_SMMUV3, 2);
VALUE_IS(IOMMU_HWPT_DATA_AMD_GUEST, 3);
VALUE_IS(IOMMU_HW_INFO_TYPE_ARM_SMMUV3, 2);
VALUE_IS(IOMMU_HW_INFO_TYPE_AMD, 4);
VALUE_IS(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED, 1 << 3);
VALUE_IS(IOMMU_VIOMMU_TYPE_DEFAULT, 0);
VALUE_IS(IOMMU_VIOMMU_TYPE_ARM_SMMUV3, 1);
VALUE_IS(IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 1);
VALUE_IS(IOMMU_VEVENTQ_TYPE_DEFAULT, 0);
VALUE_IS(IOMMU_HW_QUEUE_TYPE_DEFAULT, 0);

/* The 7.3 test header. */
SIZE_IS(struct iommu_test_cmd, 72);
OFFSET_IS(struct iommu_test_cmd, last, 64);
OFFSET_IS(struct iommu_test_cmd, check_dev_cache.cache, 20);
OFFSET_IS(struct iommu_test_cmd, pasid_attach.pt_id, 20);
OFFSET_IS(struct iommu_test_cmd, pasid_check.hwpt_id, 20);
OFFSET_IS(struct iommu_test_cmd, dmabuf_get.open_flags, 20);
OFFSET_IS(struct iommu_test_cmd, dmabuf_revoke.revoked, 20);
VALUE_IS(IOMMU_TEST_OP_DEV_CHECK_CACHE, 16);
VALUE_IS(IOMMU_TEST_OP_TRIGGER_VEVENT, 17);
VALUE_IS(IOMMU_TEST_OP_PASID_ATTACH, 18);
VALUE_IS(IOMMU_TEST_OP_PASID_REPLACE, 19);
VALUE_IS(IOMMU_TEST_OP_PASID_DETACH, 20);
VALUE_IS(IOMMU_TEST_OP_PASID_CHECK_HWPT, 21);
VALUE_IS(IOMMU_TEST_OP_DMABUF_GET, 22);
VALUE_IS(IOMMU_TEST_OP_DMABUF_REVOKE, 23);
VALUE_IS(MOCK_IOMMUPT_DEFAULT, 0);
VALUE_IS(MOCK_IOMMUPT_HUGE, 1);
VALUE_IS(MOCK_PAGE_SIZE, 2048);
VALUE_IS(MOCK_HUGE_PAGE_SIZE, 1 << 20);
VALUE_IS(MOCK_FLAGS_DEVICE_PASID, 1 << 2);
VALUE_IS(MOCK_DEV_CACHE_ID_MAX, 3);
VALUE_IS(MOCK_DEV_CACHE_NUM, 4);
VALUE_IS(IOMMU_TEST_PASID_RESERVED, 1024);
VALUE_IS(IOMMU_TEST_DEV_CACHE_DEFAULT, 0xbaddad);
SIZE_IS(struct iommu_hwpt_selftest, 8);
OFFSET_IS(struct iommu_hwpt_selftest, pagetable_type, 4);
VALUE_IS(IOMMU_VIOMMU_TYPE_SELFTEST, 0xdeadbeef);
SIZE_IS(struct iommu_viommu_selftest, 24);
OFFSET_IS(struct iommu_viommu_selftest, out_mmap_offset, 8);
VALUE_IS(IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, 0xdeadbeef);
VALUE_IS(IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID, 0xdadbeef);
SIZE_IS(struct iommu_viommu_invalidate_selftest, 12);
VALUE_IS(IOMMU_VEVENTQ_TYPE_SELFTEST, 0xbeefbeef);
SIZE_IS(struct iommu_viommu_event_selftest, 4);
VALUE_IS(IOMMU_HW_QUEUE_TYPE_SELFTEST, 0xdeadbeef);
VALUE_IS(IOMMU_TEST_HW_QUEUE_MAX, 2);
