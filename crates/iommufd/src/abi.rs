//! The iommufd user ABI of Linux 6.12: command structs, flag and enum values, ioctl numbers,
//! the VFIO type1 compatibility subset, and the selftest's `IOMMU_TEST_CMD`.
//!
//! Sources: `include/uapi/linux/iommufd.h`, `include/uapi/linux/vfio.h` and
//! `drivers/iommu/iommufd/iommufd_test.h` of 6.12, plus the two mainline additions the 6.12
//! selftest already uses (`IOMMU_HW_INFO_FLAG_INPUT_TYPE` with `in_data_type`, and
//! `MOCK_FLAGS_DEVICE_PASID`/`MOCK_PASID_WIDTH`), marked where they appear.
//!
//! Every struct is `#[repr(C)]`, little-endian on every target uiommu supports (x86_64,
//! aarch64), with the C struct's implicit padding spelled out as `pad` fields so that the
//! zerocopy derives can prove there is none left: each struct can be built from any bytes and
//! viewed as bytes, and is read from user memory by a size-checked copy, never a pointer cast.
//! Fields named `__reserved` in C are `reserved` here. `__aligned_u64` is `u64` (8-aligned on
//! both targets). Field names otherwise follow the C headers, so kernel code and selftests can
//! be read side by side with handlers.
//!
//! Layouts are checked in `tests/abi_layout.rs` against the `iommufd-bindings` crate and against
//! the offsets of the kernel headers.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Declares ABI structs with the representation and derives every one of them needs.
macro_rules! uapi {
    ($($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* })*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            #[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
            pub struct $name { $($body)* }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// ioctl numbers
// ---------------------------------------------------------------------------------------------

/// The ioctl type character of iommufd and of VFIO (`';'`).
pub const IOMMUFD_TYPE: u8 = b';';

/// `_IO(type, nr)`: an ioctl number with no direction and no size bits. Every iommufd and VFIO
/// ioctl is encoded this way; the struct size travels in the struct's leading `size`/`argsz`.
pub const fn io(ty: u8, nr: u32) -> u32 {
    ((ty as u32) << 8) | (nr & 0xff)
}

/// `_IOC_NR(cmd)`: the low 8 bits.
pub const fn ioc_nr(cmd: u32) -> u32 {
    cmd & 0xff
}

/// The first iommufd command number; numbers below it belong to VFIO compatibility.
pub const IOMMUFD_CMD_BASE: u32 = 0x80;
/// Command number of [`IOMMU_DESTROY`].
pub const IOMMUFD_CMD_DESTROY: u32 = 0x80;
/// Command number of [`IOMMU_IOAS_ALLOC`].
pub const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;
/// Command number of [`IOMMU_IOAS_ALLOW_IOVAS`].
pub const IOMMUFD_CMD_IOAS_ALLOW_IOVAS: u32 = 0x82;
/// Command number of [`IOMMU_IOAS_COPY`].
pub const IOMMUFD_CMD_IOAS_COPY: u32 = 0x83;
/// Command number of [`IOMMU_IOAS_IOVA_RANGES`].
pub const IOMMUFD_CMD_IOAS_IOVA_RANGES: u32 = 0x84;
/// Command number of [`IOMMU_IOAS_MAP`].
pub const IOMMUFD_CMD_IOAS_MAP: u32 = 0x85;
/// Command number of [`IOMMU_IOAS_UNMAP`].
pub const IOMMUFD_CMD_IOAS_UNMAP: u32 = 0x86;
/// Command number of [`IOMMU_OPTION`].
pub const IOMMUFD_CMD_OPTION: u32 = 0x87;
/// Command number of [`IOMMU_VFIO_IOAS`].
pub const IOMMUFD_CMD_VFIO_IOAS: u32 = 0x88;
/// Command number of [`IOMMU_HWPT_ALLOC`].
pub const IOMMUFD_CMD_HWPT_ALLOC: u32 = 0x89;
/// Command number of [`IOMMU_GET_HW_INFO`].
pub const IOMMUFD_CMD_GET_HW_INFO: u32 = 0x8a;
/// Command number of [`IOMMU_HWPT_SET_DIRTY_TRACKING`].
pub const IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: u32 = 0x8b;
/// Command number of [`IOMMU_HWPT_GET_DIRTY_BITMAP`].
pub const IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: u32 = 0x8c;
/// Command number of [`IOMMU_HWPT_INVALIDATE`].
pub const IOMMUFD_CMD_HWPT_INVALIDATE: u32 = 0x8d;
/// Command number of [`IOMMU_FAULT_QUEUE_ALLOC`].
pub const IOMMUFD_CMD_FAULT_QUEUE_ALLOC: u32 = 0x8e;
/// Command number of `IOMMU_IOAS_MAP_FILE` (Linux ≥ 6.13).
pub const IOMMUFD_CMD_IOAS_MAP_FILE: u32 = 0x8f;
/// Command number of [`IOMMU_VIOMMU_ALLOC`] (Linux ≥ 6.13).
pub const IOMMUFD_CMD_VIOMMU_ALLOC: u32 = 0x90;
/// Command number of [`IOMMU_VDEVICE_ALLOC`] (Linux ≥ 6.13).
pub const IOMMUFD_CMD_VDEVICE_ALLOC: u32 = 0x91;
/// Command number of `IOMMU_IOAS_CHANGE_PROCESS` (Linux ≥ 6.14).
pub const IOMMUFD_CMD_IOAS_CHANGE_PROCESS: u32 = 0x92;
/// Command number of `IOMMU_VEVENTQ_ALLOC` (Linux ≥ 6.15).
pub const IOMMUFD_CMD_VEVENTQ_ALLOC: u32 = 0x93;
/// Command number of `IOMMU_HW_QUEUE_ALLOC` (Linux ≥ 6.17).
pub const IOMMUFD_CMD_HW_QUEUE_ALLOC: u32 = 0x94;
/// Command number of [`IOMMU_TEST_CMD`] (`IOMMUFD_CMD_BASE + 32`).
pub const IOMMUFD_CMD_TEST: u32 = IOMMUFD_CMD_BASE + 32;

/// Destroy an object by id.
pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
/// Allocate an IOAS.
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
/// Restrict automatic IOVA allocation to given ranges.
pub const IOMMU_IOAS_ALLOW_IOVAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
/// Copy a mapping from one IOAS to another.
pub const IOMMU_IOAS_COPY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY);
/// Report the usable IOVA ranges of an IOAS.
pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES);
/// Map user memory into an IOAS.
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
/// Unmap IOVA ranges from an IOAS.
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);
/// Get or set a context or IOAS option.
pub const IOMMU_OPTION: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION);
/// Get, set or clear the IOAS used by the VFIO compatibility ioctls.
pub const IOMMU_VFIO_IOAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS);
/// Allocate a HWPT (paging or nested).
pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC);
/// Query a device's IOMMU hardware information.
pub const IOMMU_GET_HW_INFO: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO);
/// Enable or disable dirty tracking on a paging HWPT.
pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u32 =
    io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);
/// Read (and clear) the dirty bitmap of a paging HWPT.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);
/// Invalidate caches of a nested HWPT.
pub const IOMMU_HWPT_INVALIDATE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE);
/// Allocate a fault queue object and its fd.
pub const IOMMU_FAULT_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
/// The selftest's multiplexed test command (`CONFIG_IOMMUFD_TEST`).
pub const IOMMU_TEST_CMD: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_TEST);
/// Create a virtual IOMMU on a nesting parent HWPT.
pub const IOMMU_VIOMMU_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC);
/// Create a virtual device: a device as a vIOMMU's guest sees it.
pub const IOMMU_VDEVICE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC);
/// Move the pin accounting of file-backed mappings to the calling process.
pub const IOMMU_IOAS_CHANGE_PROCESS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS);
/// Create a HW queue of a vIOMMU on guest memory.
pub const IOMMU_HW_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC);
/// HW queue type: none (refused).
pub const IOMMU_HW_QUEUE_TYPE_DEFAULT: u32 = 0;
/// HW queue type of the mock driver.
pub const IOMMU_HW_QUEUE_TYPE_SELFTEST: u32 = 0xdead_beef;
/// Create a vIOMMU event queue and its fd.
pub const IOMMU_VEVENTQ_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC);

/// vEVENTQ type: none (refused).
pub const IOMMU_VEVENTQ_TYPE_DEFAULT: u32 = 0;
/// vEVENTQ type of the mock driver.
pub const IOMMU_VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;
/// vEVENT header flag: this header stands for events dropped while the queue was full.
pub const IOMMU_VEVENTQ_FLAG_LOST_EVENTS: u32 = 1 << 0;

// ---------------------------------------------------------------------------------------------
// Command structs and their constants (include/uapi/linux/iommufd.h)
// ---------------------------------------------------------------------------------------------

uapi! {
    /// `struct iommu_destroy` (8 bytes), for [`IOMMU_DESTROY`].
    pub struct IommuDestroy {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Object to destroy.
        pub id: u32,
    }

    /// `struct iommu_ioas_alloc` (12 bytes), for [`IOMMU_IOAS_ALLOC`].
    pub struct IommuIoasAlloc {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Must be 0.
        pub flags: u32,
        /// Output: the new IOAS id.
        pub out_ioas_id: u32,
    }

    /// `struct iommu_iova_range` (16 bytes): an inclusive IOVA interval, the element of the
    /// arrays of [`IommuIoasIovaRanges`] and [`IommuIoasAllowIovas`].
    pub struct IommuIovaRange {
        /// First IOVA.
        pub start: u64,
        /// Last IOVA (inclusive).
        pub last: u64,
    }

    /// `struct iommu_ioas_iova_ranges` (32 bytes), for [`IOMMU_IOAS_IOVA_RANGES`].
    pub struct IommuIoasIovaRanges {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// IOAS to query.
        pub ioas_id: u32,
        /// In: capacity of `allowed_iovas`; out: number of ranges.
        pub num_iovas: u32,
        /// Must be 0.
        pub reserved: u32,
        /// User pointer to an array of [`IommuIovaRange`].
        pub allowed_iovas: u64,
        /// Output: required IOVA alignment of the IOAS.
        pub out_iova_alignment: u64,
    }

    /// `struct iommu_ioas_allow_iovas` (24 bytes), for [`IOMMU_IOAS_ALLOW_IOVAS`].
    pub struct IommuIoasAllowIovas {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// IOAS to change.
        pub ioas_id: u32,
        /// Number of entries in `allowed_iovas`.
        pub num_iovas: u32,
        /// Must be 0.
        pub reserved: u32,
        /// User pointer to an array of [`IommuIovaRange`].
        pub allowed_iovas: u64,
    }

    /// `struct iommu_ioas_map` (40 bytes), for [`IOMMU_IOAS_MAP`].
    pub struct IommuIoasMap {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// `IOMMU_IOAS_MAP_*`.
        pub flags: u32,
        /// IOAS to map into.
        pub ioas_id: u32,
        /// Must be 0.
        pub reserved: u32,
        /// User virtual address of the memory.
        pub user_va: u64,
        /// Bytes to map.
        pub length: u64,
        /// In with `FIXED_IOVA`, otherwise out: the IOVA of the mapping.
        pub iova: u64,
    }

    /// `struct iommu_ioas_copy` (40 bytes), for [`IOMMU_IOAS_COPY`].
    pub struct IommuIoasCopy {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// `IOMMU_IOAS_MAP_*` for the new mapping.
        pub flags: u32,
        /// IOAS to map into.
        pub dst_ioas_id: u32,
        /// IOAS to copy from.
        pub src_ioas_id: u32,
        /// Bytes to copy.
        pub length: u64,
        /// In with `FIXED_IOVA`, otherwise out: the IOVA in the destination.
        pub dst_iova: u64,
        /// IOVA of the source range.
        pub src_iova: u64,
    }

    /// `struct iommu_ioas_unmap` (24 bytes), for [`IOMMU_IOAS_UNMAP`].
    pub struct IommuIoasUnmap {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// IOAS to unmap from.
        pub ioas_id: u32,
        /// First IOVA to unmap.
        pub iova: u64,
        /// In: bytes to unmap; out: bytes unmapped.
        pub length: u64,
    }

    /// `struct iommu_option` (24 bytes), for [`IOMMU_OPTION`].
    pub struct IommuOption {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// `IOMMU_OPTION_*` (RLIMIT_MODE, HUGE_PAGES).
        pub option_id: u32,
        /// `IOMMU_OPTION_OP_SET` or `_GET`.
        pub op: u16,
        /// Must be 0.
        pub reserved: u16,
        /// Object the option applies to (0 for global options).
        pub object_id: u32,
        /// In for SET, out for GET.
        pub val64: u64,
    }

    /// `struct iommu_vfio_ioas` (12 bytes), for [`IOMMU_VFIO_IOAS`].
    pub struct IommuVfioIoas {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// In for SET, out for GET.
        pub ioas_id: u32,
        /// `IOMMU_VFIO_IOAS_*`.
        pub op: u16,
        /// Must be 0.
        pub reserved: u16,
    }

    /// `struct iommu_hwpt_vtd_s1` (24 bytes): Intel VT-d stage-1 table data for HWPT_ALLOC.
    pub struct IommuHwptVtdS1 {
        /// `IOMMU_VTD_S1_*`.
        pub flags: u64,
        /// Guest physical address of the stage-1 table.
        pub pgtbl_addr: u64,
        /// Input address width of the table.
        pub addr_width: u32,
        /// Must be 0.
        pub reserved: u32,
    }

    /// `struct iommu_hwpt_alloc` (48 bytes), for [`IOMMU_HWPT_ALLOC`]. The fields after
    /// `reserved` are optional: an older, 24-byte struct is zero-extended.
    pub struct IommuHwptAlloc {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// `IOMMU_HWPT_ALLOC_*` / `IOMMU_HWPT_FAULT_ID_VALID`.
        pub flags: u32,
        /// Device the HWPT is for.
        pub dev_id: u32,
        /// IOAS (paging HWPT) or paging HWPT (nested HWPT) to build on.
        pub pt_id: u32,
        /// Output: the new HWPT id.
        pub out_hwpt_id: u32,
        /// Must be 0.
        pub reserved: u32,
        /// `IOMMU_HWPT_DATA_*` of the user data.
        pub data_type: u32,
        /// Length of the user data.
        pub data_len: u32,
        /// User pointer to the driver-specific data.
        pub data_uptr: u64,
        /// Fault object, with `IOMMU_HWPT_FAULT_ID_VALID`.
        pub fault_id: u32,
        /// Not checked by 6.12.
        pub reserved2: u32,
    }

    /// `struct iommu_hw_info_vtd` (24 bytes): Intel VT-d registers reported by GET_HW_INFO.
    pub struct IommuHwInfoVtd {
        /// `IOMMU_HW_INFO_VTD_*`.
        pub flags: u32,
        /// Must be 0.
        pub reserved: u32,
        /// The capability register.
        pub cap_reg: u64,
        /// The extended capability register.
        pub ecap_reg: u64,
    }

    /// `struct iommu_hw_info` (40 bytes), for [`IOMMU_GET_HW_INFO`]. `out_capabilities` is
    /// optional (min size 32).
    pub struct IommuHwInfo {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// 0, or [`IOMMU_HW_INFO_FLAG_INPUT_TYPE`] (mainline).
        pub flags: u32,
        /// Device to query.
        pub dev_id: u32,
        /// In: capacity of `data_uptr`; out: full length of the driver's data.
        pub data_len: u32,
        /// User pointer receiving the driver-specific data.
        pub data_uptr: u64,
        /// The C union `{ in_data_type; out_data_type; }` at offset 24: output only in 6.12;
        /// an input when `flags` has [`IOMMU_HW_INFO_FLAG_INPUT_TYPE`] (see
        /// [`IommuHwInfo::in_data_type`]).
        pub out_data_type: u32,
        /// Output: log2 of the device's PASID count, or 0.
        pub out_max_pasid_log2: u8,
        /// Must be 0.
        pub reserved: [u8; 3],
        /// Output: `IOMMU_HW_CAP_*`.
        pub out_capabilities: u64,
    }

    /// `struct iommu_hwpt_set_dirty_tracking` (16 bytes), for
    /// [`IOMMU_HWPT_SET_DIRTY_TRACKING`].
    pub struct IommuHwptSetDirtyTracking {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// [`IOMMU_HWPT_DIRTY_TRACKING_ENABLE`] or 0.
        pub flags: u32,
        /// Paging HWPT.
        pub hwpt_id: u32,
        /// Not checked by 6.12.
        pub reserved: u32,
    }

    /// `struct iommu_hwpt_get_dirty_bitmap` (48 bytes), for [`IOMMU_HWPT_GET_DIRTY_BITMAP`].
    pub struct IommuHwptGetDirtyBitmap {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Paging HWPT.
        pub hwpt_id: u32,
        /// [`IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`] or 0.
        pub flags: u32,
        /// Must be 0.
        pub reserved: u32,
        /// First IOVA of the range.
        pub iova: u64,
        /// Bytes in the range.
        pub length: u64,
        /// Bytes per bitmap bit.
        pub page_size: u64,
        /// User pointer to the bitmap.
        pub data: u64,
    }

    /// `struct iommu_hwpt_vtd_s1_invalidate` (24 bytes): one VT-d invalidation entry.
    pub struct IommuHwptVtdS1Invalidate {
        /// First address to invalidate.
        pub addr: u64,
        /// Number of 4 KiB pages.
        pub npages: u64,
        /// `IOMMU_VTD_INV_FLAGS_*`.
        pub flags: u32,
        /// Must be 0.
        pub reserved: u32,
    }

    /// `struct iommu_hwpt_invalidate` (32 bytes), for [`IOMMU_HWPT_INVALIDATE`].
    pub struct IommuHwptInvalidate {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Nested HWPT.
        pub hwpt_id: u32,
        /// User pointer to the entry array.
        pub data_uptr: u64,
        /// `IOMMU_HWPT_INVALIDATE_DATA_*` of the entries.
        pub data_type: u32,
        /// Bytes per entry.
        pub entry_len: u32,
        /// In: number of entries; out: number handled.
        pub entry_num: u32,
        /// Must be 0.
        pub reserved: u32,
    }

    /// `struct iommu_hwpt_pgfault` (40 bytes): one fault record read from a fault fd.
    pub struct IommuHwptPgfault {
        /// `IOMMU_PGFAULT_FLAGS_*`.
        pub flags: u32,
        /// Id of the faulting device object.
        pub dev_id: u32,
        /// PASID, with `PASID_VALID`.
        pub pasid: u32,
        /// Page request group index.
        pub grpid: u32,
        /// `IOMMU_PGFAULT_PERM_*`.
        pub perm: u32,
        /// Must be 0.
        pub reserved: u32,
        /// Faulting address.
        pub addr: u64,
        /// Length of the access (0 when unknown).
        pub length: u32,
        /// Cookie to answer with.
        pub cookie: u32,
    }

    /// `struct iommu_hwpt_page_response` (8 bytes): one response written to a fault fd.
    pub struct IommuHwptPageResponse {
        /// Cookie of the fault group being answered.
        pub cookie: u32,
        /// `IOMMUFD_PAGE_RESP_*`.
        pub code: u32,
    }

    /// `struct iommu_fault_alloc` (16 bytes), for [`IOMMU_FAULT_QUEUE_ALLOC`].
    pub struct IommuFaultAlloc {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Must be 0.
        pub flags: u32,
        /// Output: the new fault object id.
        pub out_fault_id: u32,
        /// Output: the new fault fd.
        pub out_fault_fd: u32,
    }

    /// `struct iommu_viommu_alloc` (40 bytes), for [`IOMMU_VIOMMU_ALLOC`]. Min size 24
    /// (`out_viommu_id`).
    pub struct IommuViommuAlloc {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Must be 0.
        pub flags: u32,
        /// `IOMMU_VIOMMU_TYPE_*` (C: `type`).
        pub viommu_type: u32,
        /// The DEVICE whose IOMMU backs the vIOMMU.
        pub dev_id: u32,
        /// The nesting-parent paging HWPT.
        pub hwpt_id: u32,
        /// Output: the new vIOMMU object id.
        pub out_viommu_id: u32,
        /// Bytes of driver data at `data_uptr` (in and out).
        pub data_len: u32,
        /// Must be 0 (not checked by Linux).
        pub reserved: u32,
        /// User pointer to the driver data.
        pub data_uptr: u64,
    }

    /// `struct iommu_veventq_alloc` (32 bytes), for [`IOMMU_VEVENTQ_ALLOC`]. Min size 28
    /// (`out_veventq_fd`).
    pub struct IommuVeventqAlloc {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Must be 0.
        pub flags: u32,
        /// The vIOMMU.
        pub viommu_id: u32,
        /// `IOMMU_VEVENTQ_TYPE_*` (C: `type`).
        pub veventq_type: u32,
        /// Most events queued before LOST_EVENTS (1..=2^19).
        pub veventq_depth: u32,
        /// Output: the new vEVENTQ object id.
        pub out_veventq_id: u32,
        /// Output: the queue's fd.
        pub out_veventq_fd: u32,
        /// Must be 0.
        pub reserved: u32,
    }

    /// `struct iommu_ioas_change_process` (8 bytes), for [`IOMMU_IOAS_CHANGE_PROCESS`]. Min
    /// size 8 (`__reserved`).
    pub struct IommuIoasChangeProcess {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Must be 0.
        pub reserved: u32,
    }

    /// `struct iommu_hw_queue_alloc` (40 bytes), for [`IOMMU_HW_QUEUE_ALLOC`]. Min size 40
    /// (`length`).
    pub struct IommuHwQueueAlloc {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// Must be 0.
        pub flags: u32,
        /// The vIOMMU.
        pub viommu_id: u32,
        /// `IOMMU_HW_QUEUE_TYPE_*` (C: `type`).
        pub queue_type: u32,
        /// The queue's index on the vIOMMU.
        pub index: u32,
        /// Output: the new HW queue object id.
        pub out_hw_queue_id: u32,
        /// Guest queue address in the vIOMMU's nesting parent.
        pub nesting_parent_iova: u64,
        /// Bytes of the guest queue.
        pub length: u64,
    }

    /// `struct iommu_vdevice_alloc` (24 bytes), for [`IOMMU_VDEVICE_ALLOC`]. Min size 24
    /// (`virt_id`).
    pub struct IommuVdeviceAlloc {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// The vIOMMU.
        pub viommu_id: u32,
        /// The DEVICE.
        pub dev_id: u32,
        /// Output: the new vDEVICE object id.
        pub out_vdevice_id: u32,
        /// The device's id as the guest sees it (a stream id, a device id…).
        pub virt_id: u64,
    }
}

impl IommuHwInfo {
    /// The requested data type: the union member `in_data_type`, meaningful only when `flags`
    /// has [`IOMMU_HW_INFO_FLAG_INPUT_TYPE`] (otherwise the request is
    /// [`IOMMU_HW_INFO_TYPE_DEFAULT`]).
    pub fn in_data_type(&self) -> u32 {
        if self.flags & IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0 {
            self.out_data_type
        } else {
            IOMMU_HW_INFO_TYPE_DEFAULT
        }
    }
}

/// `IOMMU_IOAS_MAP` flag: `iova` is an input, not chosen by the kernel.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// `IOMMU_IOAS_MAP` flag: the device may write.
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// `IOMMU_IOAS_MAP` flag: the device may read.
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// Option: the accounting mode of pinned memory (global).
pub const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
/// Option: whether an IOAS may use huge pages (per IOAS).
pub const IOMMU_OPTION_HUGE_PAGES: u32 = 1;
/// Option op: set `val64`.
pub const IOMMU_OPTION_OP_SET: u16 = 0;
/// Option op: get into `val64`.
pub const IOMMU_OPTION_OP_GET: u16 = 1;

/// `IOMMU_VFIO_IOAS` op: report the compat IOAS.
pub const IOMMU_VFIO_IOAS_GET: u16 = 0;
/// `IOMMU_VFIO_IOAS` op: set the compat IOAS.
pub const IOMMU_VFIO_IOAS_SET: u16 = 1;
/// `IOMMU_VFIO_IOAS` op: clear the compat IOAS.
pub const IOMMU_VFIO_IOAS_CLEAR: u16 = 2;

/// HWPT_ALLOC flag: the paging HWPT can be a nesting parent.
pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
/// HWPT_ALLOC flag: allocate with dirty tracking support.
pub const IOMMU_HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
/// HWPT_ALLOC flag: `fault_id` is valid.
pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;
/// HWPT_ALLOC flag (Linux ≥ 6.14): the HWPT may be attached to PASIDs.
pub const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;

/// vIOMMU type: a vIOMMU with no driver behind it (only the generic object).
pub const IOMMU_VIOMMU_TYPE_DEFAULT: u32 = 0;
/// vIOMMU type: ARM SMMUv3.
pub const IOMMU_VIOMMU_TYPE_ARM_SMMUV3: u32 = 1;

/// VT-d stage-1 flag: supervisor requests.
pub const IOMMU_VTD_S1_SRE: u64 = 1 << 0;
/// VT-d stage-1 flag: extended access flag.
pub const IOMMU_VTD_S1_EAFE: u64 = 1 << 1;
/// VT-d stage-1 flag: write protect.
pub const IOMMU_VTD_S1_WPE: u64 = 1 << 2;

/// HWPT data type: no user data (a paging HWPT).
pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
/// HWPT data type: [`IommuHwptVtdS1`].
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;

/// VT-d hw_info flag: erratum 772415 (SPR17) present.
pub const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: u32 = 1 << 0;

/// hw_info type: no driver data.
pub const IOMMU_HW_INFO_TYPE_NONE: u32 = 0;
/// hw_info type requested by default (mainline alias of NONE; used by the 6.12 selftest).
pub const IOMMU_HW_INFO_TYPE_DEFAULT: u32 = 0;
/// hw_info type: [`IommuHwInfoVtd`].
pub const IOMMU_HW_INFO_TYPE_INTEL_VTD: u32 = 1;
/// GET_HW_INFO flag (mainline): the u32 at offset 24 is the requested type.
pub const IOMMU_HW_INFO_FLAG_INPUT_TYPE: u32 = 1 << 0;

/// Capability: the device's IOMMU can track dirty pages.
pub const IOMMU_HW_CAP_DIRTY_TRACKING: u64 = 1 << 0;
/// Capability: PCI PASID execute permission.
pub const IOMMU_HW_CAP_PCI_PASID_EXEC: u64 = 1 << 1;
/// Capability: PCI PASID privileged mode.
pub const IOMMU_HW_CAP_PCI_PASID_PRIV: u64 = 1 << 2;

/// SET_DIRTY_TRACKING flag: enable (clear to disable).
pub const IOMMU_HWPT_DIRTY_TRACKING_ENABLE: u32 = 1;
/// GET_DIRTY_BITMAP flag: report without clearing.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: u32 = 1;

/// Invalidation data type: [`IommuHwptVtdS1Invalidate`].
pub const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: u32 = 0;
/// VT-d invalidation flag: leaf entries only.
pub const IOMMU_VTD_INV_FLAGS_LEAF: u32 = 1 << 0;

/// Fault flag: `pasid` is valid.
pub const IOMMU_PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
/// Fault flag: last fault of its group.
pub const IOMMU_PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;
/// Fault permission: read.
pub const IOMMU_PGFAULT_PERM_READ: u32 = 1 << 0;
/// Fault permission: write.
pub const IOMMU_PGFAULT_PERM_WRITE: u32 = 1 << 1;
/// Fault permission: execute.
pub const IOMMU_PGFAULT_PERM_EXEC: u32 = 1 << 2;
/// Fault permission: privileged.
pub const IOMMU_PGFAULT_PERM_PRIV: u32 = 1 << 3;

/// Page response: the fault was handled.
pub const IOMMUFD_PAGE_RESP_SUCCESS: u32 = 0;
/// Page response: the fault could not be handled.
pub const IOMMUFD_PAGE_RESP_INVALID: u32 = 1;

// ---------------------------------------------------------------------------------------------
// IOMMU_TEST_CMD (drivers/iommu/iommufd/iommufd_test.h)
// ---------------------------------------------------------------------------------------------

/// Test op: reserve an IOVA range in an IOAS ([`TestAddReserved`]).
pub const IOMMU_TEST_OP_ADD_RESERVED: u32 = 1;
/// Test op: create a mock device attached to a HWPT or IOAS ([`TestMockDomain`]).
pub const IOMMU_TEST_OP_MOCK_DOMAIN: u32 = 2;
/// Test op: compare a mock domain's IOPTEs with user memory ([`TestCheckMap`]).
pub const IOMMU_TEST_OP_MD_CHECK_MAP: u32 = 3;
/// Test op: check pin counts of user pages ([`TestCheckRefs`]).
pub const IOMMU_TEST_OP_MD_CHECK_REFS: u32 = 4;
/// Test op: create an access and its fd ([`TestCreateAccess`]).
pub const IOMMU_TEST_OP_CREATE_ACCESS: u32 = 5;
/// Test op: unpin pages pinned through an access ([`TestDestroyAccessPages`]).
pub const IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: u32 = 6;
/// Test op: pin pages through an access ([`TestAccessPages`]).
pub const IOMMU_TEST_OP_ACCESS_PAGES: u32 = 7;
/// Test op: read or write IOVA through an access ([`TestAccessRw`]).
pub const IOMMU_TEST_OP_ACCESS_RW: u32 = 8;
/// Test op: set the global temporary-memory limit ([`TestMemoryLimit`]).
pub const IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: u32 = 9;
/// Test op: re-attach a mock device ([`TestMockDomainReplace`]).
pub const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
/// Test op: move an access to another IOAS ([`TestAccessReplaceIoas`]).
pub const IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: u32 = 11;
/// Test op: MOCK_DOMAIN with device flags ([`TestMockDomainFlags`]).
pub const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
/// Test op: mark mock IOPTEs dirty from a bitmap ([`TestDirty`]).
pub const IOMMU_TEST_OP_DIRTY: u32 = 13;
/// Test op: check one IOTLB slot of a mock nested domain ([`TestCheckIotlb`]).
pub const IOMMU_TEST_OP_MD_CHECK_IOTLB: u32 = 14;
/// Test op: report a page fault from a mock device ([`TestTriggerIopf`]).
pub const IOMMU_TEST_OP_TRIGGER_IOPF: u32 = 15;
/// Test op (Linux ≥ 6.14): compare a mock device's cache slot ([`TestCheckDevCache`]).
pub const IOMMU_TEST_OP_DEV_CHECK_CACHE: u32 = 16;
/// Test op (Linux ≥ 6.15): raise a vEVENT for a mock device.
pub const IOMMU_TEST_OP_TRIGGER_VEVENT: u32 = 17;
/// Test op (Linux ≥ 6.16): attach a PASID of a mock device.
pub const IOMMU_TEST_OP_PASID_ATTACH: u32 = 18;
/// Test op: replace what a PASID of a mock device is attached to.
pub const IOMMU_TEST_OP_PASID_REPLACE: u32 = 19;
/// Test op: detach a PASID of a mock device.
pub const IOMMU_TEST_OP_PASID_DETACH: u32 = 20;
/// Test op: check what a PASID of a mock device is attached to.
pub const IOMMU_TEST_OP_PASID_CHECK_HWPT: u32 = 21;
/// Test op (Linux ≥ 6.19): create an emulated dma-buf.
pub const IOMMU_TEST_OP_DMABUF_GET: u32 = 22;
/// Test op: revoke an emulated dma-buf.
pub const IOMMU_TEST_OP_DMABUF_REVOKE: u32 = 23;

/// Bytes of the union in [`IommuTestCmd`] (its largest member is [`TestDirty`]).
pub const TEST_CMD_PAYLOAD_SIZE: usize = 48;

/// The 48-byte, 8-aligned union of [`IommuTestCmd`]; read and write it as the member its op
/// selects, with [`IommuTestCmd::payload`] and [`IommuTestCmd::set_payload`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TestCmdPayload(pub [u8; TEST_CMD_PAYLOAD_SIZE]);

impl Default for TestCmdPayload {
    fn default() -> Self {
        TestCmdPayload([0; TEST_CMD_PAYLOAD_SIZE])
    }
}

uapi! {
    /// `struct iommu_test_cmd` (72 bytes), for [`IOMMU_TEST_CMD`]. Min size 68 (`last`).
    pub struct IommuTestCmd {
        /// `sizeof` the caller's struct.
        pub size: u32,
        /// `IOMMU_TEST_OP_*`.
        pub op: u32,
        /// The op's main object (IOAS, HWPT, stdev, access fd…).
        pub id: u32,
        /// Not checked by 6.12.
        pub reserved: u32,
        /// The union of the op's arguments.
        pub payload: TestCmdPayload,
        /// Last mandatory field; unused.
        pub last: u32,
        /// The C struct's tail padding.
        pub pad: u32,
    }
}

/// A member of the [`IommuTestCmd`] union, tied to the op that uses it.
pub trait TestOpPayload: FromBytes + IntoBytes + Immutable + KnownLayout + Sized {
    /// The `IOMMU_TEST_OP_*` that reads this member.
    const OP: u32;
}

impl IommuTestCmd {
    /// A full-size command for `P::OP` on object `id` with the union set to `payload`.
    pub fn new<P: TestOpPayload>(id: u32, payload: &P) -> IommuTestCmd {
        let mut cmd = IommuTestCmd {
            size: std::mem::size_of::<IommuTestCmd>() as u32,
            op: P::OP,
            id,
            ..IommuTestCmd::default()
        };
        cmd.set_payload(payload);
        cmd
    }

    /// The union read as member `P` (whatever `op` says).
    pub fn payload<P: TestOpPayload>(&self) -> P {
        let mut member = P::new_zeroed();
        let len = std::mem::size_of::<P>();
        member
            .as_mut_bytes()
            .copy_from_slice(&self.payload.0[..len]);
        member
    }

    /// Write member `P` into the union, leaving the bytes past it unchanged (as a C union
    /// member store does).
    pub fn set_payload<P: TestOpPayload>(&mut self, member: &P) {
        let len = std::mem::size_of::<P>();
        self.payload.0[..len].copy_from_slice(member.as_bytes());
    }
}

/// Declares union members of [`IommuTestCmd`], checking at compile time that each fits.
macro_rules! test_payloads {
    ($($(#[$meta:meta])* $op:ident => pub struct $name:ident { $($body:tt)* })*) => {
        uapi! { $($(#[$meta])* pub struct $name { $($body)* })* }
        $(
            impl TestOpPayload for $name {
                const OP: u32 = $op;
            }
            const _: () = assert!(std::mem::size_of::<$name>() <= TEST_CMD_PAYLOAD_SIZE);
        )*
    };
}

test_payloads! {
    /// `add_reserved` (16 bytes at offset 16).
    IOMMU_TEST_OP_ADD_RESERVED => pub struct TestAddReserved {
        /// First IOVA to reserve.
        pub start: u64,
        /// Bytes to reserve.
        pub length: u64,
    }

    /// `mock_domain` (12 bytes at offset 16).
    IOMMU_TEST_OP_MOCK_DOMAIN => pub struct TestMockDomain {
        /// Output: the SELFTEST object id of the mock device.
        pub out_stdev_id: u32,
        /// Output: the HWPT the device was attached to.
        pub out_hwpt_id: u32,
        /// Output: the DEVICE object id of the binding.
        pub out_idev_id: u32,
    }

    /// `mock_domain_flags` (16 bytes at offset 16).
    IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => pub struct TestMockDomainFlags {
        /// Output: the SELFTEST object id of the mock device.
        pub out_stdev_id: u32,
        /// Output: the HWPT the device was attached to.
        pub out_hwpt_id: u32,
        /// Output: the DEVICE object id of the binding.
        pub out_idev_id: u32,
        /// `MOCK_FLAGS_DEVICE_*`.
        pub dev_flags: u32,
    }

    /// `mock_domain_replace` (4 bytes at offset 16).
    IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => pub struct TestMockDomainReplace {
        /// In: the HWPT or IOAS to move to; out: the resulting HWPT.
        pub pt_id: u32,
    }

    /// `check_map` (24 bytes at offset 16).
    IOMMU_TEST_OP_MD_CHECK_MAP => pub struct TestCheckMap {
        /// First IOVA to check.
        pub iova: u64,
        /// Bytes to check.
        pub length: u64,
        /// User address the IOVA range should translate to.
        pub uptr: u64,
    }

    /// `check_refs` (24 bytes at offset 16).
    IOMMU_TEST_OP_MD_CHECK_REFS => pub struct TestCheckRefs {
        /// Bytes to check.
        pub length: u64,
        /// First user address.
        pub uptr: u64,
        /// Expected pin count of each page.
        pub refs: u32,
        /// The C struct's tail padding.
        pub pad: u32,
    }

    /// `create_access` (8 bytes at offset 16).
    IOMMU_TEST_OP_CREATE_ACCESS => pub struct TestCreateAccess {
        /// Output: the access fd.
        pub out_access_fd: u32,
        /// `MOCK_FLAGS_ACCESS_CREATE_*`.
        pub flags: u32,
    }

    /// `destroy_access_pages` (4 bytes at offset 16).
    IOMMU_TEST_OP_DESTROY_ACCESS_PAGES => pub struct TestDestroyAccessPages {
        /// Item returned by ACCESS_PAGES.
        pub access_pages_id: u32,
    }

    /// `access_pages` (32 bytes at offset 16).
    IOMMU_TEST_OP_ACCESS_PAGES => pub struct TestAccessPages {
        /// `MOCK_FLAGS_ACCESS_*`.
        pub flags: u32,
        /// Output: the item id for DESTROY_ACCESS_PAGES.
        pub out_access_pages_id: u32,
        /// First IOVA to pin.
        pub iova: u64,
        /// Bytes to pin.
        pub length: u64,
        /// If non-zero, the user address the pinned pages must back.
        pub uptr: u64,
    }

    /// `access_rw` (32 bytes at offset 16).
    IOMMU_TEST_OP_ACCESS_RW => pub struct TestAccessRw {
        /// First IOVA.
        pub iova: u64,
        /// Bytes to copy.
        pub length: u64,
        /// User buffer.
        pub uptr: u64,
        /// `MOCK_ACCESS_RW_*`.
        pub flags: u32,
        /// The C struct's tail padding.
        pub pad: u32,
    }

    /// `memory_limit` (4 bytes at offset 16).
    IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => pub struct TestMemoryLimit {
        /// New limit (at least 12).
        pub limit: u32,
    }

    /// `access_replace_ioas` (4 bytes at offset 16).
    IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => pub struct TestAccessReplaceIoas {
        /// IOAS to move the access to.
        pub ioas_id: u32,
    }

    /// `dirty` (48 bytes at offset 16).
    IOMMU_TEST_OP_DIRTY => pub struct TestDirty {
        /// Unused by 6.12.
        pub flags: u32,
        /// Padding before the 8-aligned `iova`.
        pub pad: u32,
        /// First IOVA.
        pub iova: u64,
        /// Bytes covered by the bitmap.
        pub length: u64,
        /// Bytes per bit.
        pub page_size: u64,
        /// User pointer to the bitmap.
        pub uptr: u64,
        /// Output: number of entries marked dirty.
        pub out_nr_dirty: u64,
    }

    /// `check_iotlb` (8 bytes at offset 16).
    IOMMU_TEST_OP_MD_CHECK_IOTLB => pub struct TestCheckIotlb {
        /// IOTLB slot (0..=3).
        pub id: u32,
        /// Expected value.
        pub iotlb: u32,
    }

    /// `check_dev_cache` (8 bytes at offset 16); `id` of the command is the DEVICE id.
    IOMMU_TEST_OP_DEV_CHECK_CACHE => pub struct TestCheckDevCache {
        /// Cache slot (0..=3).
        pub id: u32,
        /// Expected value.
        pub cache: u32,
    }

    /// `trigger_vevent` (4 bytes at offset 16).
    IOMMU_TEST_OP_TRIGGER_VEVENT => pub struct TestTriggerVevent {
        /// DEVICE object id of a mock device.
        pub dev_id: u32,
    }

    /// `pasid_attach` (8 bytes at offset 16); `id` of the command is the stdev id.
    IOMMU_TEST_OP_PASID_ATTACH => pub struct TestPasidAttach {
        /// The PASID.
        pub pasid: u32,
        /// The HWPT (or IOAS) to attach it to.
        pub pt_id: u32,
    }

    /// `pasid_replace` (8 bytes at offset 16); `id` of the command is the stdev id.
    IOMMU_TEST_OP_PASID_REPLACE => pub struct TestPasidReplace {
        /// The PASID.
        pub pasid: u32,
        /// The HWPT (or IOAS) to move it to.
        pub pt_id: u32,
    }

    /// `pasid_detach` (4 bytes at offset 16); `id` of the command is the stdev id.
    IOMMU_TEST_OP_PASID_DETACH => pub struct TestPasidDetach {
        /// The PASID.
        pub pasid: u32,
    }

    /// `pasid_check` (8 bytes at offset 16); `id` of the command is the stdev id.
    IOMMU_TEST_OP_PASID_CHECK_HWPT => pub struct TestPasidCheck {
        /// The PASID.
        pub pasid: u32,
        /// The HWPT it should be attached to; 0: it should be detached.
        pub hwpt_id: u32,
    }

    /// `trigger_iopf` (24 bytes at offset 16).
    IOMMU_TEST_OP_TRIGGER_IOPF => pub struct TestTriggerIopf {
        /// DEVICE object id of a mock device.
        pub dev_id: u32,
        /// PASID (0: none).
        pub pasid: u32,
        /// Page request group index.
        pub grpid: u32,
        /// `IOMMU_PGFAULT_PERM_*`.
        pub perm: u32,
        /// Faulting address.
        pub addr: u64,
    }
}

uapi! {
    /// `struct iommu_test_hw_info` (8 bytes): the mock driver's GET_HW_INFO data.
    pub struct IommuTestHwInfo {
        /// Always 0.
        pub flags: u32,
        /// [`IOMMU_HW_INFO_SELFTEST_REGVAL`].
        pub test_reg: u32,
    }

    /// `struct iommu_hwpt_selftest` (4 bytes): HWPT_ALLOC data for a mock nested domain.
    pub struct IommuHwptSelftest {
        /// Initial value of every IOTLB slot.
        pub iotlb: u32,
    }

    /// `struct iommu_hwpt_selftest` as Linux 7.3 has it (8 bytes): the 6.12 struct plus the
    /// mock page-table type, read also for paging (not only nested) allocations.
    pub struct IommuHwptSelftestPagetable {
        /// Initial value of every IOTLB slot (nested allocations).
        pub iotlb: u32,
        /// [`MOCK_IOMMUPT_DEFAULT`] or [`MOCK_IOMMUPT_HUGE`] (paging allocations).
        pub pagetable_type: u32,
    }

    /// `struct iommu_hwpt_invalidate_selftest` (8 bytes): one mock invalidation entry.
    pub struct IommuHwptInvalidateSelftest {
        /// [`IOMMU_TEST_INVALIDATE_FLAG_ALL`] or 0.
        pub flags: u32,
        /// Slot to clear, without the ALL flag.
        pub iotlb_id: u32,
    }
}

/// Mock access flag for ACCESS_PAGES: pin writable.
pub const MOCK_FLAGS_ACCESS_WRITE: u32 = 1 << 0;
/// Mock flag for ACCESS_PAGES and ACCESS_RW: syzkaller IOVA translation (test-only).
pub const MOCK_FLAGS_ACCESS_SYZ: u32 = 1 << 16;
/// ACCESS_RW flag: write from `uptr` into the IOAS.
pub const MOCK_ACCESS_RW_WRITE: u32 = 1 << 0;
/// ACCESS_RW flag: force the slow (cross-mm) path.
pub const MOCK_ACCESS_RW_SLOW_PATH: u32 = 1 << 2;
/// CREATE_ACCESS flag: the access pins pages (so it needs PAGE_SIZE alignment).
pub const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: u32 = 1 << 0;
/// Mock device flag: no dirty tracking capability.
pub const MOCK_FLAGS_DEVICE_NO_DIRTY: u32 = 1 << 0;
/// Mock device flag: domain supports 1 MiB IOPTEs.
pub const MOCK_FLAGS_DEVICE_HUGE_IOVA: u32 = 1 << 1;
/// Mock device flag (mainline, used by the 6.12 selftest): the device has
/// [`MOCK_PASID_WIDTH`] PASID bits.
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;
/// PASID width of a `MOCK_FLAGS_DEVICE_PASID` device (mainline).
pub const MOCK_PASID_WIDTH: u32 = 20;

/// Highest IOTLB slot index of a mock nested domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: u32 = 3;
/// Number of IOTLB slots of a mock nested domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: u32 = 4;
/// Highest cache slot index of a mock device (Linux ≥ 6.14).
pub const MOCK_DEV_CACHE_ID_MAX: u32 = 3;
/// Number of cache slots of a mock device.
pub const MOCK_DEV_CACHE_NUM: u32 = 4;
/// Initial value of every mock device cache slot.
pub const IOMMU_TEST_DEV_CACHE_DEFAULT: u32 = 0x00ba_ddad;
/// `pagetable_type` of [`IommuHwptSelftest`]: the default mock page table.
pub const MOCK_IOMMUPT_DEFAULT: u32 = 0;
/// `pagetable_type` of [`IommuHwptSelftest`]: a mock page table with 1 MiB pages.
pub const MOCK_IOMMUPT_HUGE: u32 = 1;
/// vIOMMU type of the mock driver.
pub const IOMMU_VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
/// Invalidation data type of `struct iommu_viommu_invalidate_selftest` (sent to a mock vIOMMU).
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// Default IOTLB value for mock nested domains.
pub const IOMMU_TEST_IOTLB_DEFAULT: u32 = 0x0bad_beef;
/// hw_info type of the mock driver.
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// `test_reg` value the mock reports in [`IommuTestHwInfo`].
pub const IOMMU_HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;
/// HWPT data type of [`IommuHwptSelftest`].
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
/// Invalidation data type of [`IommuHwptInvalidateSelftest`].
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// An invalidation data type no driver accepts (the selftest's negative case).
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0x0dad_beef;
/// Mock invalidation flag: clear every IOTLB slot.
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1 << 0;
/// Initial value of the global limit set by SET_TEMP_MEMORY_LIMIT
/// (`iommufd_test_memory_limit`).
pub const IOMMU_TEST_MEMORY_LIMIT_DEFAULT: u32 = 65536;

// Mock IOMMU "hardware" (drivers/iommu/iommufd/selftest.c), for 4 KiB CPU pages.

/// The mock IOMMU's page size: `PAGE_SIZE / 2`.
pub const MOCK_IO_PAGE_SIZE: u64 = 2048;
/// The mock's huge IOPTE size, with `MOCK_FLAGS_DEVICE_HUGE_IOVA`: 512 mock pages.
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_IO_PAGE_SIZE;
/// First IOVA of a mock paging domain's aperture.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// Last IOVA (inclusive) of a mock paging domain's aperture.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// Bits of a mock IOPTE holding `paddr / MOCK_IO_PAGE_SIZE`.
pub const MOCK_PFN_MASK: u64 = u64::MAX / MOCK_IO_PAGE_SIZE;
/// Mock IOPTE bit: first entry written by one map call.
pub const MOCK_PFN_START_IOVA: u64 = MOCK_PFN_MASK + 1;
/// Mock IOPTE bit: last entry written by one map call (the same bit as START).
pub const MOCK_PFN_LAST_IOVA: u64 = MOCK_PFN_MASK + 1;
/// Mock IOPTE bit: dirty.
pub const MOCK_PFN_DIRTY_IOVA: u64 = (MOCK_PFN_MASK + 1) << 1;
/// Mock IOPTE bit: written by a huge-page map call.
pub const MOCK_PFN_HUGE_IOVA: u64 = (MOCK_PFN_MASK + 1) << 2;

// ---------------------------------------------------------------------------------------------
// VFIO type1 compatibility (include/uapi/linux/vfio.h), served on the same fd below nr 0x80
// ---------------------------------------------------------------------------------------------

/// First VFIO command number.
pub const VFIO_BASE: u32 = 100;
/// The VFIO API version reported by `VFIO_GET_API_VERSION`.
pub const VFIO_API_VERSION: i32 = 0;

/// `VFIO_GET_API_VERSION`: returns [`VFIO_API_VERSION`].
pub const VFIO_GET_API_VERSION: u32 = io(IOMMUFD_TYPE, VFIO_BASE);
/// `VFIO_CHECK_EXTENSION`: arg is an extension number; returns 0 or 1.
pub const VFIO_CHECK_EXTENSION: u32 = io(IOMMUFD_TYPE, VFIO_BASE + 1);
/// `VFIO_SET_IOMMU`: arg is the IOMMU model.
pub const VFIO_SET_IOMMU: u32 = io(IOMMUFD_TYPE, VFIO_BASE + 2);
/// `VFIO_IOMMU_GET_INFO` with [`VfioIommuType1Info`].
pub const VFIO_IOMMU_GET_INFO: u32 = io(IOMMUFD_TYPE, VFIO_BASE + 12);
/// `VFIO_IOMMU_MAP_DMA` with [`VfioIommuType1DmaMap`].
pub const VFIO_IOMMU_MAP_DMA: u32 = io(IOMMUFD_TYPE, VFIO_BASE + 13);
/// `VFIO_IOMMU_UNMAP_DMA` with [`VfioIommuType1DmaUnmap`].
pub const VFIO_IOMMU_UNMAP_DMA: u32 = io(IOMMUFD_TYPE, VFIO_BASE + 14);
/// `VFIO_IOMMU_DIRTY_PAGES`: not provided by iommufd (ENOTTY).
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = io(IOMMUFD_TYPE, VFIO_BASE + 17);

/// Extension / IOMMU model: type1.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// Extension / IOMMU model: sPAPR TCE.
pub const VFIO_SPAPR_TCE_IOMMU: u32 = 2;
/// Extension / IOMMU model: type1 v2 (C name `VFIO_TYPE1v2_IOMMU`).
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
/// Extension: every domain enforces cache coherency.
pub const VFIO_DMA_CC_IOMMU: u32 = 4;
/// Extension: sPAPR EEH.
pub const VFIO_EEH: u32 = 5;
/// Extension / IOMMU model: type1 nesting.
pub const VFIO_TYPE1_NESTING_IOMMU: u32 = 6;
/// Extension / IOMMU model: sPAPR TCE v2 (C name `VFIO_SPAPR_TCE_v2_IOMMU`).
pub const VFIO_SPAPR_TCE_V2_IOMMU: u32 = 7;
/// Extension / IOMMU model: no-IOMMU mode.
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;
/// Extension: `VFIO_DMA_UNMAP_FLAG_ALL`.
pub const VFIO_UNMAP_ALL: u32 = 9;
/// Extension: `VFIO_DMA_MAP_FLAG_VADDR` updates.
pub const VFIO_UPDATE_VADDR: u32 = 10;

/// GET_INFO flag: `iova_pgsizes` is valid.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
/// GET_INFO flag: `cap_offset` is valid.
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
/// Capability id: [`VfioIommuType1InfoCapIovaRange`].
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// Capability id: migration (not provided by iommufd).
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
/// Capability id: [`VfioIommuType1InfoDmaAvail`].
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

/// MAP_DMA flag: readable from the device.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// MAP_DMA flag: writable from the device.
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// MAP_DMA flag: update the vaddr of an existing mapping.
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;
/// UNMAP_DMA flag: return a dirty bitmap.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// UNMAP_DMA flag: unmap everything.
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// UNMAP_DMA flag: invalidate vaddrs only.
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

uapi! {
    /// `struct vfio_iommu_type1_info` (24 bytes), for [`VFIO_IOMMU_GET_INFO`]; a capability
    /// chain may follow within `argsz`.
    pub struct VfioIommuType1Info {
        /// Bytes the caller provided (in) / needed (out).
        pub argsz: u32,
        /// `VFIO_IOMMU_INFO_*`.
        pub flags: u32,
        /// Supported page sizes.
        pub iova_pgsizes: u64,
        /// Offset of the first capability, or 0.
        pub cap_offset: u32,
        /// Padding.
        pub pad: u32,
    }

    /// `struct vfio_info_cap_header` (8 bytes): the link of a capability chain.
    pub struct VfioInfoCapHeader {
        /// `VFIO_IOMMU_TYPE1_INFO_*` capability id.
        pub id: u16,
        /// Capability version.
        pub version: u16,
        /// Offset of the next capability, or 0.
        pub next: u32,
    }

    /// `struct vfio_iova_range` (16 bytes): an inclusive range (`end` is the last IOVA).
    pub struct VfioIovaRange {
        /// First IOVA.
        pub start: u64,
        /// Last IOVA (inclusive).
        pub end: u64,
    }

    /// `struct vfio_iommu_type1_info_cap_iova_range` (16 bytes, then `nr_iovas`
    /// [`VfioIovaRange`] entries).
    pub struct VfioIommuType1InfoCapIovaRange {
        /// Chain link.
        pub header: VfioInfoCapHeader,
        /// Number of ranges that follow.
        pub nr_iovas: u32,
        /// Must be 0.
        pub reserved: u32,
    }

    /// `struct vfio_iommu_type1_info_dma_avail` (12 bytes; the chain aligns the next entry to 8).
    pub struct VfioIommuType1InfoDmaAvail {
        /// Chain link.
        pub header: VfioInfoCapHeader,
        /// Mappings still available.
        pub avail: u32,
    }

    /// `struct vfio_iommu_type1_dma_map` (32 bytes), for [`VFIO_IOMMU_MAP_DMA`].
    pub struct VfioIommuType1DmaMap {
        /// `sizeof` the caller's struct.
        pub argsz: u32,
        /// `VFIO_DMA_MAP_FLAG_*`.
        pub flags: u32,
        /// User virtual address.
        pub vaddr: u64,
        /// IOVA to map at.
        pub iova: u64,
        /// Bytes to map.
        pub size: u64,
    }

    /// `struct vfio_iommu_type1_dma_unmap` (24 bytes, then optional data), for
    /// [`VFIO_IOMMU_UNMAP_DMA`].
    pub struct VfioIommuType1DmaUnmap {
        /// `sizeof` the caller's struct.
        pub argsz: u32,
        /// `VFIO_DMA_UNMAP_FLAG_*`.
        pub flags: u32,
        /// First IOVA to unmap.
        pub iova: u64,
        /// In: bytes to unmap; out: bytes unmapped.
        pub size: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cmd_payload_round_trips_through_the_union() {
        let dirty = TestDirty {
            flags: 1,
            iova: 2,
            length: 3,
            page_size: 4,
            uptr: 5,
            out_nr_dirty: 6,
            ..TestDirty::default()
        };
        let cmd = IommuTestCmd::new(7, &dirty);
        assert_eq!((cmd.size, cmd.op, cmd.id), (72, IOMMU_TEST_OP_DIRTY, 7));
        assert_eq!(cmd.payload::<TestDirty>(), dirty);
        // iova sits at offset 24 of the command, i.e. byte 8 of the union.
        assert_eq!(&cmd.as_bytes()[24..32], &2u64.to_le_bytes());
    }

    #[test]
    fn set_payload_leaves_the_rest_of_the_union_alone() {
        let mut cmd = IommuTestCmd::new(
            1,
            &TestAddReserved {
                start: u64::MAX,
                length: u64::MAX,
            },
        );
        cmd.set_payload(&TestMemoryLimit { limit: 12 });
        assert_eq!(cmd.payload::<TestMemoryLimit>().limit, 12);
        assert_eq!(&cmd.payload.0[4..16], &[0xff; 12]);
        assert_eq!(
            cmd.op, IOMMU_TEST_OP_ADD_RESERVED,
            "set_payload does not change op"
        );
    }

    #[test]
    fn in_data_type_depends_on_the_input_flag() {
        let mut info = IommuHwInfo {
            out_data_type: IOMMU_HW_INFO_TYPE_SELFTEST,
            ..IommuHwInfo::default()
        };
        assert_eq!(info.in_data_type(), IOMMU_HW_INFO_TYPE_DEFAULT);
        info.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE;
        assert_eq!(info.in_data_type(), IOMMU_HW_INFO_TYPE_SELFTEST);
    }

    #[test]
    fn ioc_nr_extracts_the_command_number() {
        assert_eq!(ioc_nr(IOMMU_IOAS_MAP), IOMMUFD_CMD_IOAS_MAP);
        assert_eq!(ioc_nr(0xc018_3b85), 0x85);
    }
}
