/* SPDX-License-Identifier: Apache-2.0 OR MIT */
/*
 * uiommu's own statement of what Linux 7.3 added to the iommufd user ABI since 6.12: MAP_FILE,
 * the vIOMMU objects (vIOMMU, vDEVICE, vEVENTQ, HW queue), CHANGE_PROCESS, PASID-capable HWPTs
 * and the new driver type numbers. The 6.12 statement, conformance/include/linux/iommufd.h, is
 * included first (#include_next: conformance/run puts this directory before that one); every
 * 6.12 definition is unchanged in 7.3, so this file only adds.
 *
 * Same facts as crates/iommufd/src/abi.rs; asserted by conformance/abi_check-7.3.c.
 */
#ifndef UIOMMU_CONFORMANCE_LINUX_IOMMUFD_7_3_H
#define UIOMMU_CONFORMANCE_LINUX_IOMMUFD_7_3_H

#include_next <linux/iommufd.h>

/* Command numbers added after 6.12. */
enum {
	IOMMUFD_CMD_IOAS_MAP_FILE = 0x8f,
	IOMMUFD_CMD_VIOMMU_ALLOC = 0x90,
	IOMMUFD_CMD_VDEVICE_ALLOC = 0x91,
	IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92,
	IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93,
	IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94,
	IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA = 0x95,
};

/* IOMMU_IOAS_MAP_FILE: map [start, start + length) of the file behind `fd` (a memfd, shmem
 * or dma-buf), with IOMMU_IOAS_MAP flags. */
struct iommu_ioas_map_file {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__s32 fd;
	__aligned_u64 start;
	__aligned_u64 length;
	__aligned_u64 iova;
};
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)

/* IOMMU_IOAS_NOIOMMU_GET_PA: the physical address behind an IOVA of a no-IOMMU IOAS. */
struct iommu_ioas_noiommu_get_pa {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__u32 __reserved;
	__aligned_u64 iova;
	__aligned_u64 length;
	__aligned_u64 out_phys;
};
#define IOMMU_IOAS_NOIOMMU_GET_PA _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA)

/* IOMMU_HWPT_ALLOC flag: the HWPT may be attached to PASIDs of a device. */
#define IOMMU_HWPT_ALLOC_PASID (1 << 3)

/* Driver data types of IOMMU_HWPT_ALLOC added after 6.12. */
enum {
	IOMMU_HWPT_DATA_ARM_SMMUV3 = 2,
	IOMMU_HWPT_DATA_AMD_GUEST = 3,
};

struct iommu_hwpt_arm_smmuv3 {
	__aligned_le64 ste[2];
};

struct iommu_hwpt_amd_guest {
	__aligned_u64 dte[4];
};

/* GET_HW_INFO types and capability added after 6.12. */
enum {
	IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2,
	IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3,
	IOMMU_HW_INFO_TYPE_AMD = 4,
};
#define IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED (1 << 3)

/* IOMMU_HWPT_INVALIDATE data type for an ARM SMMUv3 vIOMMU (its `hwpt_id` is a vIOMMU id). */
#define IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 1

struct iommu_viommu_arm_smmuv3_invalidate {
	__aligned_le64 cmd[2];
};

/* IOMMU_VIOMMU_ALLOC: a virtual IOMMU of `type` for the device `dev_id`, on the nesting
 * parent `hwpt_id`; `data_uptr`/`data_len` carry the driver's own data both ways. */
enum iommu_viommu_type {
	IOMMU_VIOMMU_TYPE_DEFAULT = 0,
	IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = 2,
};

struct iommu_viommu_alloc {
	__u32 size;
	__u32 flags;
	__u32 type;
	__u32 dev_id;
	__u32 hwpt_id;
	__u32 out_viommu_id;
	__u32 data_len;
	__u32 __reserved;
	__aligned_u64 data_uptr;
};
#define IOMMU_VIOMMU_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)

/* IOMMU_VDEVICE_ALLOC: the device `dev_id` as the vIOMMU sees it, under the guest's id. */
struct iommu_vdevice_alloc {
	__u32 size;
	__u32 viommu_id;
	__u32 dev_id;
	__u32 out_vdevice_id;
	__aligned_u64 virt_id;
};
#define IOMMU_VDEVICE_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)

/* IOMMU_IOAS_CHANGE_PROCESS: move the pin accounting of every file mapping to the caller. */
struct iommu_ioas_change_process {
	__u32 size;
	__u32 __reserved;
};
#define IOMMU_IOAS_CHANGE_PROCESS _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)

/* A vEVENTQ's read() returns records of this header and one event; LOST_EVENTS marks a
 * header that stands for events dropped while the queue was full. */
enum iommu_veventq_flag {
	IOMMU_VEVENTQ_FLAG_LOST_EVENTS = (1U << 0),
};

struct iommufd_vevent_header {
	__u32 flags;
	__u32 sequence;
};

enum iommu_veventq_type {
	IOMMU_VEVENTQ_TYPE_DEFAULT = 0,
	IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = 2,
};

struct iommu_veventq_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type;
	__u32 veventq_depth;
	__u32 out_veventq_id;
	__u32 out_veventq_fd;
	__u32 __reserved;
};
#define IOMMU_VEVENTQ_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)

/* IOMMU_HW_QUEUE_ALLOC: a guest queue of `length` bytes at `nesting_parent_iova`. */
enum iommu_hw_queue_type {
	IOMMU_HW_QUEUE_TYPE_DEFAULT = 0,
	IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = 1,
};

struct iommu_hw_queue_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type;
	__u32 index;
	__u32 out_hw_queue_id;
	__aligned_u64 nesting_parent_iova;
	__aligned_u64 length;
};
#define IOMMU_HW_QUEUE_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC)

#endif /* UIOMMU_CONFORMANCE_LINUX_IOMMUFD_7_3_H */
