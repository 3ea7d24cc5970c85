/* SPDX-License-Identifier: Apache-2.0 OR MIT */
/*
 * uiommu's own statement of the VFIO container / type1 IOMMU user ABI that iommufd serves on
 * /dev/iommu for compatibility (command numbers below IOMMUFD_CMD_BASE). Only this subset is
 * declared: the device, group, region, irq and migration parts of VFIO are not uiommu's.
 *
 * Same facts as the VFIO section of crates/iommufd/src/abi.rs; layouts are asserted by
 * conformance/abi_check.c.
 */
#ifndef UIOMMU_CONFORMANCE_LINUX_VFIO_H
#define UIOMMU_CONFORMANCE_LINUX_VFIO_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* VFIO_GET_API_VERSION answers this. */
#define VFIO_API_VERSION 0

/* IOMMU models, also usable as VFIO_CHECK_EXTENSION arguments. */
#define VFIO_TYPE1_IOMMU 1
#define VFIO_SPAPR_TCE_IOMMU 2
#define VFIO_TYPE1v2_IOMMU 3
#define VFIO_DMA_CC_IOMMU 4
#define VFIO_EEH 5
#define VFIO_TYPE1_NESTING_IOMMU 6
#define VFIO_SPAPR_TCE_v2_IOMMU 7
#define VFIO_NOIOMMU_IOMMU 8
#define VFIO_UNMAP_ALL 9
#define VFIO_UPDATE_VADDR 10

/* VFIO shares iommufd's ioctl type character; its numbers start at 100. */
#define VFIO_TYPE (';')
#define VFIO_BASE 100

/* Container ioctls: the argument is an integer, the result is the return value. */
#define VFIO_GET_API_VERSION _IO(VFIO_TYPE, VFIO_BASE + 0)
#define VFIO_CHECK_EXTENSION _IO(VFIO_TYPE, VFIO_BASE + 1)
#define VFIO_SET_IOMMU _IO(VFIO_TYPE, VFIO_BASE + 2)

/* Link of a capability chain inside an info struct; `next` is an offset from its start. */
struct vfio_info_cap_header {
	__u16 id;
	__u16 version;
	__u32 next;
};

/* VFIO_IOMMU_GET_INFO: 24 bytes, followed by a capability chain within argsz. */
struct vfio_iommu_type1_info {
	__u32 argsz;
	__u32 flags;
#define VFIO_IOMMU_INFO_PGSIZES (1 << 0)
#define VFIO_IOMMU_INFO_CAPS (1 << 1)
	__aligned_u64 iova_pgsizes;
	__u32 cap_offset;
	__u32 pad;
};

/* Capability: the usable IOVA ranges (`end` inclusive). */
#define VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE 1

struct vfio_iova_range {
	__u64 start;
	__u64 end;
};

struct vfio_iommu_type1_info_cap_iova_range {
	struct vfio_info_cap_header header;
	__u32 nr_iovas;
	__u32 reserved;
	struct vfio_iova_range iova_ranges[];
};

/* Capability: dirty page tracking for migration (never reported by iommufd). */
#define VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION 2

/* Capability: how many more DMA mappings are allowed. 12 bytes. */
#define VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL 3

struct vfio_iommu_type1_info_dma_avail {
	struct vfio_info_cap_header header;
	__u32 avail;
};

#define VFIO_IOMMU_GET_INFO _IO(VFIO_TYPE, VFIO_BASE + 12)

/* VFIO_IOMMU_MAP_DMA: 32 bytes. */
struct vfio_iommu_type1_dma_map {
	__u32 argsz;
	__u32 flags;
#define VFIO_DMA_MAP_FLAG_READ (1 << 0)
#define VFIO_DMA_MAP_FLAG_WRITE (1 << 1)
#define VFIO_DMA_MAP_FLAG_VADDR (1 << 2)
	__u64 vaddr;
	__u64 iova;
	__u64 size;
};

#define VFIO_IOMMU_MAP_DMA _IO(VFIO_TYPE, VFIO_BASE + 13)

/* VFIO_IOMMU_UNMAP_DMA: 24 bytes plus optional data; size is in/out (bytes unmapped). */
struct vfio_iommu_type1_dma_unmap {
	__u32 argsz;
	__u32 flags;
#define VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP (1 << 0)
#define VFIO_DMA_UNMAP_FLAG_ALL (1 << 1)
#define VFIO_DMA_UNMAP_FLAG_VADDR (1 << 2)
	__u64 iova;
	__u64 size;
	__u8 data[];
};

#define VFIO_IOMMU_UNMAP_DMA _IO(VFIO_TYPE, VFIO_BASE + 14)

/* Not served by iommufd (ENOTTY); declared so callers can probe for it. */
#define VFIO_IOMMU_DIRTY_PAGES _IO(VFIO_TYPE, VFIO_BASE + 17)

#endif /* UIOMMU_CONFORMANCE_LINUX_VFIO_H */
