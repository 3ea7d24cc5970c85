/* SPDX-License-Identifier: Apache-2.0 OR MIT */
/*
 * Compile-time check of conformance/include against the ABI uiommu implements: struct sizes,
 * field offsets, ioctl numbers and constant values, the same facts crates/iommufd/src/abi.rs
 * declares (and crates/iommufd/tests/abi_layout.rs checks against iommufd-bindings). A wrong
 * header makes this file fail to compile, so conformance/run never builds the selftest
 * against it. Nothing here runs.
 */
#include <stddef.h>

#include <linux/iommufd.h>
#include <linux/vfio.h>
#include "iommufd_test.h"

#define SIZE_IS(type, bytes) _Static_assert(sizeof(type) == (bytes), "sizeof(" #type ")")
#define OFFSET_IS(type, field, at) \
	_Static_assert(offsetof(type, field) == (at), #type "." #field)
#define VALUE_IS(name, value) _Static_assert((name) == (value), #name)

/* Ioctl numbers: _IO(';', nr) is 0x3b00 | nr. */
VALUE_IS(IOMMU_DESTROY, 0x3b80);
VALUE_IS(IOMMU_IOAS_ALLOC, 0x3b81);
VALUE_IS(IOMMU_IOAS_ALLOW_IOVAS, 0x3b82);
VALUE_IS(IOMMU_IOAS_COPY, 0x3b83);
VALUE_IS(IOMMU_IOAS_IOVA_RANGES, 0x3b84);
VALUE_IS(IOMMU_IOAS_MAP, 0x3b85);
VALUE_IS(IOMMU_IOAS_UNMAP, 0x3b86);
VALUE_IS(IOMMU_OPTION, 0x3b87);
VALUE_IS(IOMMU_VFIO_IOAS, 0x3b88);
VALUE_IS(IOMMU_HWPT_ALLOC, 0x3b89);
VALUE_IS(IOMMU_GET_HW_INFO, 0x3b8a);
VALUE_IS(IOMMU_HWPT_SET_DIRTY_TRACKING, 0x3b8b);
VALUE_IS(IOMMU_HWPT_GET_DIRTY_BITMAP, 0x3b8c);
VALUE_IS(IOMMU_HWPT_INVALIDATE, 0x3b8d);
VALUE_IS(IOMMU_FAULT_QUEUE_ALLOC, 0x3b8e);
VALUE_IS(IOMMU_TEST_CMD, 0x3ba0);
VALUE_IS(VFIO_GET_API_VERSION, 0x3b64);
VALUE_IS(VFIO_CHECK_EXTENSION, 0x3b65);
VALUE_IS(VFIO_SET_IOMMU, 0x3b66);
VALUE_IS(VFIO_IOMMU_GET_INFO, 0x3b70);
VALUE_IS(VFIO_IOMMU_MAP_DMA, 0x3b71);
VALUE_IS(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
VALUE_IS(VFIO_IOMMU_DIRTY_PAGES, 0x3b75);

/* iommufd command structs. */
SIZE_IS(struct iommu_destroy, 8);
OFFSET_IS(struct iommu_destroy, id, 4);

SIZE_IS(struct iommu_ioas_alloc, 12);
OFFSET_IS(struct iommu_ioas_alloc, out_ioas_id, 8);

SIZE_IS(struct iommu_iova_range, 16);
OFFSET_IS(struct iommu_iova_range, last, 8);

SIZE_IS(struct iommu_ioas_iova_ranges, 32);
OFFSET_IS(struct iommu_ioas_iova_ranges, num_iovas, 8);
OFFSET_IS(struct iommu_ioas_iova_ranges, __reserved, 12);
OFFSET_IS(struct iommu_ioas_iova_ranges, allowed_iovas, 16);
OFFSET_IS(struct iommu_ioas_iova_ranges, out_iova_alignment, 24);

SIZE_IS(struct iommu_ioas_allow_iovas, 24);
OFFSET_IS(struct iommu_ioas_allow_iovas, allowed_iovas, 16);

SIZE_IS(struct iommu_ioas_map, 40);
OFFSET_IS(struct iommu_ioas_map, ioas_id, 8);
OFFSET_IS(struct iommu_ioas_map, user_va, 16);
OFFSET_IS(struct iommu_ioas_map, length, 24);
OFFSET_IS(struct iommu_ioas_map, iova, 32);

SIZE_IS(struct iommu_ioas_copy, 40);
OFFSET_IS(struct iommu_ioas_copy, src_ioas_id, 12);
OFFSET_IS(struct iommu_ioas_copy, length, 16);
OFFSET_IS(struct iommu_ioas_copy, dst_iova, 24);
OFFSET_IS(struct iommu_ioas_copy, src_iova, 32);

SIZE_IS(struct iommu_ioas_unmap, 24);
OFFSET_IS(struct iommu_ioas_unmap, iova, 8);
OFFSET_IS(struct iommu_ioas_unmap, length, 16);

SIZE_IS(struct iommu_option, 24);
OFFSET_IS(struct iommu_option, op, 8);
OFFSET_IS(struct iommu_option, __reserved, 10);
OFFSET_IS(struct iommu_option, object_id, 12);
OFFSET_IS(struct iommu_option, val64, 16);

SIZE_IS(struct iommu_vfio_ioas, 12);
OFFSET_IS(struct iommu_vfio_ioas, op, 8);
OFFSET_IS(struct iommu_vfio_ioas, __reserved, 10);

SIZE_IS(struct iommu_hwpt_vtd_s1, 24);
OFFSET_IS(struct iommu_hwpt_vtd_s1, addr_width, 16);

SIZE_IS(struct iommu_hwpt_alloc, 48);
OFFSET_IS(struct iommu_hwpt_alloc, out_hwpt_id, 16);
OFFSET_IS(struct iommu_hwpt_alloc, __reserved, 20);
OFFSET_IS(struct iommu_hwpt_alloc, data_type, 24);
OFFSET_IS(struct iommu_hwpt_alloc, data_len, 28);
OFFSET_IS(struct iommu_hwpt_alloc, data_uptr, 32);
OFFSET_IS(struct iommu_hwpt_alloc, fault_id, 40);
OFFSET_IS(struct iommu_hwpt_alloc, __reserved2, 44);

SIZE_IS(struct iommu_hw_info_vtd, 24);
OFFSET_IS(struct iommu_hw_info_vtd, cap_reg, 8);
OFFSET_IS(struct iommu_hw_info_vtd, ecap_reg, 16);

SIZE_IS(struct iommu_hw_info, 40);
OFFSET_IS(struct iommu_hw_info, data_len, 12);
OFFSET_IS(struct iommu_hw_info, data_uptr, 16);
OFFSET_IS(struct iommu_hw_info, in_data_type, 24);
OFFSET_IS(struct iommu_hw_info, out_data_type, 24);
OFFSET_IS(struct iommu_hw_info, out_max_pasid_log2, 28);
OFFSET_IS(struct iommu_hw_info, __reserved, 29);
OFFSET_IS(struct iommu_hw_info, out_capabilities, 32);

SIZE_IS(struct iommu_hwpt_set_dirty_tracking, 16);
OFFSET_IS(struct iommu_hwpt_set_dirty_tracking, hwpt_id, 8);

SIZE_IS(struct iommu_hwpt_get_dirty_bitmap, 48);
OFFSET_IS(struct iommu_hwpt_get_dirty_bitmap, flags, 8);
OFFSET_IS(struct iommu_hwpt_get_dirty_bitmap, iova, 16);
OFFSET_IS(struct iommu_hwpt_get_dirty_bitmap, length, 24);
OFFSET_IS(struct iommu_hwpt_get_dirty_bitmap, page_size, 32);
OFFSET_IS(struct iommu_hwpt_get_dirty_bitmap, data, 40);

SIZE_IS(struct iommu_hwpt_vtd_s1_invalidate, 24);
OFFSET_IS(struct iommu_hwpt_vtd_s1_invalidate, flags, 16);

SIZE_IS(struct iommu_hwpt_invalidate, 32);
OFFSET_IS(struct iommu_hwpt_invalidate, data_uptr, 8);
OFFSET_IS(struct iommu_hwpt_invalidate, data_type, 16);
OFFSET_IS(struct iommu_hwpt_invalidate, entry_len, 20);
OFFSET_IS(struct iommu_hwpt_invalidate, entry_num, 24);

SIZE_IS(struct iommu_hwpt_pgfault, 40);
OFFSET_IS(struct iommu_hwpt_pgfault, perm, 16);
OFFSET_IS(struct iommu_hwpt_pgfault, addr, 24);
OFFSET_IS(struct iommu_hwpt_pgfault, length, 32);
OFFSET_IS(struct iommu_hwpt_pgfault, cookie, 36);

SIZE_IS(struct iommu_hwpt_page_response, 8);
OFFSET_IS(struct iommu_hwpt_page_response, code, 4);

SIZE_IS(struct iommu_fault_alloc, 16);
OFFSET_IS(struct iommu_fault_alloc, out_fault_id, 8);
OFFSET_IS(struct iommu_fault_alloc, out_fault_fd, 12);

/* iommufd values the selftest relies on, including the mainline additions. */
VALUE_IS(IOMMU_HW_INFO_TYPE_DEFAULT, 0);
VALUE_IS(IOMMU_HW_INFO_FLAG_INPUT_TYPE, 1);
VALUE_IS(IOMMU_HWPT_FAULT_ID_VALID, 4);
VALUE_IS(IOMMU_IOAS_MAP_READABLE, 4);

/* IOMMU_TEST_CMD: header, 48-byte union at 16, `last` at 64. */
SIZE_IS(struct iommu_test_cmd, 72);
OFFSET_IS(struct iommu_test_cmd, __reserved, 12);
OFFSET_IS(struct iommu_test_cmd, add_reserved, 16);
OFFSET_IS(struct iommu_test_cmd, last, 64);
OFFSET_IS(struct iommu_test_cmd, mock_domain_flags.dev_flags, 28);
OFFSET_IS(struct iommu_test_cmd, check_refs.refs, 32);
OFFSET_IS(struct iommu_test_cmd, access_pages.uptr, 40);
OFFSET_IS(struct iommu_test_cmd, access_rw.flags, 40);
OFFSET_IS(struct iommu_test_cmd, dirty.iova, 24);
OFFSET_IS(struct iommu_test_cmd, dirty.out_nr_dirty, 56);
OFFSET_IS(struct iommu_test_cmd, check_iotlb.iotlb, 20);
OFFSET_IS(struct iommu_test_cmd, trigger_iopf.addr, 32);
SIZE_IS(struct iommu_test_hw_info, 8);
SIZE_IS(struct iommu_hwpt_selftest, 4);
SIZE_IS(struct iommu_hwpt_invalidate_selftest, 8);

VALUE_IS(IOMMU_TEST_OP_TRIGGER_IOPF, 15);
VALUE_IS(MOCK_APERTURE_START, 0x1000000);
VALUE_IS(MOCK_APERTURE_LAST, 0x7fffffff);
VALUE_IS(MOCK_FLAGS_DEVICE_PASID, 4);
VALUE_IS(MOCK_PASID_WIDTH, 20);
VALUE_IS(IOMMU_HW_INFO_TYPE_SELFTEST, 0xfeedbeef);
VALUE_IS(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, 0x0dadbeef);
VALUE_IS(IOMMU_TEST_IOTLB_DEFAULT, 0x0badbeef);

/* VFIO type1 compatibility. */
SIZE_IS(struct vfio_info_cap_header, 8);
SIZE_IS(struct vfio_iommu_type1_info, 24);
OFFSET_IS(struct vfio_iommu_type1_info, iova_pgsizes, 8);
OFFSET_IS(struct vfio_iommu_type1_info, cap_offset, 16);
SIZE_IS(struct vfio_iova_range, 16);
SIZE_IS(struct vfio_iommu_type1_info_cap_iova_range, 16);
OFFSET_IS(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges, 16);
SIZE_IS(struct vfio_iommu_type1_info_dma_avail, 12);
SIZE_IS(struct vfio_iommu_type1_dma_map, 32);
OFFSET_IS(struct vfio_iommu_type1_dma_map, vaddr, 8);
OFFSET_IS(struct vfio_iommu_type1_dma_map, size, 24);
SIZE_IS(struct vfio_iommu_type1_dma_unmap, 24);
OFFSET_IS(struct vfio_iommu_type1_dma_unmap, size, 16);
VALUE_IS(VFIO_TYPE1v2_IOMMU, 3);
VALUE_IS(VFIO_DMA_UNMAP_FLAG_ALL, 2);
VALUE_IS(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 3);
