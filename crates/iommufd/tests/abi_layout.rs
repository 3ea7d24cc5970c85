//! ABI layout checks. Structs that `iommufd-bindings` (bindgen output of a newer kernel
//! header) also has are compared with it field by field; everything else is compared with the
//! sizes and offsets of the 6.12 headers (`iommufd_test.h`, `vfio.h`), written down here as
//! literal facts.

use std::mem::{align_of, offset_of, size_of};

use iommufd_bindings as b;
use uiommu_iommufd::abi::*;

/// Same size and alignment, and every listed field at the same offset. Each arm lists *all*
/// of our fields (`ours => theirs` where the names differ).
macro_rules! same_layout {
    ($ours:ty, $theirs:ty, [$($field:ident $(=> $their_field:ident)?),* $(,)?]) => {{
        assert_eq!(size_of::<$ours>(), size_of::<$theirs>(), "size of {}", stringify!($ours));
        assert_eq!(align_of::<$ours>(), align_of::<$theirs>(), "align of {}", stringify!($ours));
        $(same_layout!(@field $ours, $theirs, $field, $($their_field)?);)*
    }};
    (@field $ours:ty, $theirs:ty, $field:ident, $their_field:ident) => {
        assert_eq!(
            offset_of!($ours, $field),
            offset_of!($theirs, $their_field),
            "{}::{}", stringify!($ours), stringify!($field),
        )
    };
    (@field $ours:ty, $theirs:ty, $field:ident,) => {
        same_layout!(@field $ours, $theirs, $field, $field)
    };
}

/// Size, alignment and `(field, offset)` pairs, from the C header.
macro_rules! c_layout {
    ($ours:ty, size $size:expr, align $align:expr, [$($field:ident @ $off:expr),* $(,)?]) => {{
        assert_eq!(size_of::<$ours>(), $size, "size of {}", stringify!($ours));
        assert_eq!(align_of::<$ours>(), $align, "align of {}", stringify!($ours));
        $(assert_eq!(offset_of!($ours, $field), $off, "{}::{}", stringify!($ours), stringify!($field));)*
    }};
}

#[test]
fn iommufd_structs_match_the_bindings() {
    same_layout!(IommuDestroy, b::iommu_destroy, [size, id]);
    same_layout!(
        IommuIoasAlloc,
        b::iommu_ioas_alloc,
        [size, flags, out_ioas_id]
    );
    same_layout!(IommuIovaRange, b::iommu_iova_range, [start, last]);
    same_layout!(
        IommuIoasIovaRanges,
        b::iommu_ioas_iova_ranges,
        [size, ioas_id, num_iovas, reserved => __reserved, allowed_iovas, out_iova_alignment]
    );
    same_layout!(
        IommuIoasAllowIovas,
        b::iommu_ioas_allow_iovas,
        [size, ioas_id, num_iovas, reserved => __reserved, allowed_iovas]
    );
    same_layout!(
        IommuIoasMap,
        b::iommu_ioas_map,
        [size, flags, ioas_id, reserved => __reserved, user_va, length, iova]
    );
    same_layout!(
        IommuIoasCopy,
        b::iommu_ioas_copy,
        [
            size,
            flags,
            dst_ioas_id,
            src_ioas_id,
            length,
            dst_iova,
            src_iova
        ]
    );
    same_layout!(
        IommuIoasUnmap,
        b::iommu_ioas_unmap,
        [size, ioas_id, iova, length]
    );
    same_layout!(
        IommuOption,
        b::iommu_option,
        [size, option_id, op, reserved => __reserved, object_id, val64]
    );
    same_layout!(IommuVfioIoas, b::iommu_vfio_ioas, [size, ioas_id, op, reserved => __reserved]);
    same_layout!(
        IommuHwptVtdS1,
        b::iommu_hwpt_vtd_s1,
        [flags, pgtbl_addr, addr_width, reserved => __reserved]
    );
    same_layout!(
        IommuHwptAlloc,
        b::iommu_hwpt_alloc,
        [
            size,
            flags,
            dev_id,
            pt_id,
            out_hwpt_id,
            reserved => __reserved,
            data_type,
            data_len,
            data_uptr,
            fault_id,
            reserved2 => __reserved2,
        ]
    );
    same_layout!(
        IommuHwInfoVtd,
        b::iommu_hw_info_vtd,
        [flags, reserved => __reserved, cap_reg, ecap_reg]
    );
    same_layout!(
        IommuHwInfo,
        b::iommu_hw_info,
        [
            size,
            flags,
            dev_id,
            data_len,
            data_uptr,
            out_data_type => __bindgen_anon_1,
            out_max_pasid_log2,
            reserved => __reserved,
            out_capabilities,
        ]
    );
    same_layout!(
        IommuHwptSetDirtyTracking,
        b::iommu_hwpt_set_dirty_tracking,
        [size, flags, hwpt_id, reserved => __reserved]
    );
    same_layout!(
        IommuHwptGetDirtyBitmap,
        b::iommu_hwpt_get_dirty_bitmap,
        [size, hwpt_id, flags, reserved => __reserved, iova, length, page_size, data]
    );
    same_layout!(
        IommuHwptVtdS1Invalidate,
        b::iommu_hwpt_vtd_s1_invalidate,
        [addr, npages, flags, reserved => __reserved]
    );
    same_layout!(
        IommuHwptInvalidate,
        b::iommu_hwpt_invalidate,
        [size, hwpt_id, data_uptr, data_type, entry_len, entry_num, reserved => __reserved]
    );
    same_layout!(
        IommuHwptPgfault,
        b::iommu_hwpt_pgfault,
        [flags, dev_id, pasid, grpid, perm, reserved => __reserved, addr, length, cookie]
    );
    same_layout!(
        IommuHwptPageResponse,
        b::iommu_hwpt_page_response,
        [cookie, code]
    );
    same_layout!(
        IommuFaultAlloc,
        b::iommu_fault_alloc,
        [size, flags, out_fault_id, out_fault_fd]
    );
}

#[test]
fn hw_info_union_sits_at_offset_24() {
    // The mainline union { in_data_type; out_data_type; } replaced 6.12's out_data_type in place.
    assert_eq!(offset_of!(IommuHwInfo, out_data_type), 24);
    assert_eq!(offset_of!(b::iommu_hw_info__bindgen_ty_1, in_data_type), 0);
    assert_eq!(size_of::<b::iommu_hw_info__bindgen_ty_1>(), 4);
}

#[test]
fn test_cmd_matches_iommufd_test_h() {
    c_layout!(IommuTestCmd, size 72, align 8, [size @ 0, op @ 4, id @ 8, reserved @ 12, payload @ 16, last @ 64]);
    assert_eq!(size_of::<TestCmdPayload>(), 48);
    assert_eq!(align_of::<TestCmdPayload>(), 8);
}

/// Offset of a union member's field inside `struct iommu_test_cmd`.
macro_rules! in_cmd {
    ($member:ty, $field:ident) => {
        offset_of!(IommuTestCmd, payload) + offset_of!($member, $field)
    };
}

/// One union member: name, our size, the C size, our op, the C op, and
/// `(our offset in the command, C offset)` per field.
type Member = (
    &'static str,
    usize,
    usize,
    u32,
    u32,
    &'static [(usize, usize)],
);

#[test]
fn test_cmd_union_members_match_iommufd_test_h() {
    let cases: &[Member] = &[
        // (member, our size, C size, our op, C op, [(our offset in cmd, C offset)])
        (
            "add_reserved",
            size_of::<TestAddReserved>(),
            16,
            TestAddReserved::OP,
            1,
            &[
                (in_cmd!(TestAddReserved, start), 16),
                (in_cmd!(TestAddReserved, length), 24),
            ],
        ),
        (
            "mock_domain",
            size_of::<TestMockDomain>(),
            12,
            TestMockDomain::OP,
            2,
            &[
                (in_cmd!(TestMockDomain, out_stdev_id), 16),
                (in_cmd!(TestMockDomain, out_hwpt_id), 20),
                (in_cmd!(TestMockDomain, out_idev_id), 24),
            ],
        ),
        (
            "check_map",
            size_of::<TestCheckMap>(),
            24,
            TestCheckMap::OP,
            3,
            &[
                (in_cmd!(TestCheckMap, iova), 16),
                (in_cmd!(TestCheckMap, length), 24),
                (in_cmd!(TestCheckMap, uptr), 32),
            ],
        ),
        (
            "check_refs",
            size_of::<TestCheckRefs>(),
            24,
            TestCheckRefs::OP,
            4,
            &[
                (in_cmd!(TestCheckRefs, length), 16),
                (in_cmd!(TestCheckRefs, uptr), 24),
                (in_cmd!(TestCheckRefs, refs), 32),
            ],
        ),
        (
            "create_access",
            size_of::<TestCreateAccess>(),
            8,
            TestCreateAccess::OP,
            5,
            &[
                (in_cmd!(TestCreateAccess, out_access_fd), 16),
                (in_cmd!(TestCreateAccess, flags), 20),
            ],
        ),
        (
            "destroy_access_pages",
            size_of::<TestDestroyAccessPages>(),
            4,
            TestDestroyAccessPages::OP,
            6,
            &[(in_cmd!(TestDestroyAccessPages, access_pages_id), 16)],
        ),
        (
            "access_pages",
            size_of::<TestAccessPages>(),
            32,
            TestAccessPages::OP,
            7,
            &[
                (in_cmd!(TestAccessPages, flags), 16),
                (in_cmd!(TestAccessPages, out_access_pages_id), 20),
                (in_cmd!(TestAccessPages, iova), 24),
                (in_cmd!(TestAccessPages, length), 32),
                (in_cmd!(TestAccessPages, uptr), 40),
            ],
        ),
        (
            "access_rw",
            size_of::<TestAccessRw>(),
            32,
            TestAccessRw::OP,
            8,
            &[
                (in_cmd!(TestAccessRw, iova), 16),
                (in_cmd!(TestAccessRw, length), 24),
                (in_cmd!(TestAccessRw, uptr), 32),
                (in_cmd!(TestAccessRw, flags), 40),
            ],
        ),
        (
            "memory_limit",
            size_of::<TestMemoryLimit>(),
            4,
            TestMemoryLimit::OP,
            9,
            &[(in_cmd!(TestMemoryLimit, limit), 16)],
        ),
        (
            "mock_domain_replace",
            size_of::<TestMockDomainReplace>(),
            4,
            TestMockDomainReplace::OP,
            10,
            &[(in_cmd!(TestMockDomainReplace, pt_id), 16)],
        ),
        (
            "access_replace_ioas",
            size_of::<TestAccessReplaceIoas>(),
            4,
            TestAccessReplaceIoas::OP,
            11,
            &[(in_cmd!(TestAccessReplaceIoas, ioas_id), 16)],
        ),
        (
            "mock_domain_flags",
            size_of::<TestMockDomainFlags>(),
            16,
            TestMockDomainFlags::OP,
            12,
            &[
                (in_cmd!(TestMockDomainFlags, out_stdev_id), 16),
                (in_cmd!(TestMockDomainFlags, out_hwpt_id), 20),
                (in_cmd!(TestMockDomainFlags, out_idev_id), 24),
                (in_cmd!(TestMockDomainFlags, dev_flags), 28),
            ],
        ),
        (
            "dirty",
            size_of::<TestDirty>(),
            48,
            TestDirty::OP,
            13,
            &[
                (in_cmd!(TestDirty, flags), 16),
                (in_cmd!(TestDirty, iova), 24),
                (in_cmd!(TestDirty, length), 32),
                (in_cmd!(TestDirty, page_size), 40),
                (in_cmd!(TestDirty, uptr), 48),
                (in_cmd!(TestDirty, out_nr_dirty), 56),
            ],
        ),
        (
            "check_iotlb",
            size_of::<TestCheckIotlb>(),
            8,
            TestCheckIotlb::OP,
            14,
            &[
                (in_cmd!(TestCheckIotlb, id), 16),
                (in_cmd!(TestCheckIotlb, iotlb), 20),
            ],
        ),
        (
            "trigger_iopf",
            size_of::<TestTriggerIopf>(),
            24,
            TestTriggerIopf::OP,
            15,
            &[
                (in_cmd!(TestTriggerIopf, dev_id), 16),
                (in_cmd!(TestTriggerIopf, pasid), 20),
                (in_cmd!(TestTriggerIopf, grpid), 24),
                (in_cmd!(TestTriggerIopf, perm), 28),
                (in_cmd!(TestTriggerIopf, addr), 32),
            ],
        ),
    ];
    assert_eq!(cases.len(), 15, "one member per IOMMU_TEST_OP_*");
    for (name, size, c_size, op, c_op, offsets) in cases {
        assert_eq!(size, c_size, "size of {name}");
        assert_eq!(op, c_op, "op of {name}");
        for (i, (ours, c)) in offsets.iter().enumerate() {
            assert_eq!(ours, c, "{name} field #{i}");
        }
    }
}

#[test]
fn selftest_driver_structs_match_iommufd_test_h() {
    c_layout!(IommuTestHwInfo, size 8, align 4, [flags @ 0, test_reg @ 4]);
    c_layout!(IommuHwptSelftest, size 4, align 4, [iotlb @ 0]);
    c_layout!(IommuHwptInvalidateSelftest, size 8, align 4, [flags @ 0, iotlb_id @ 4]);
}

#[test]
fn vfio_structs_match_vfio_h() {
    c_layout!(VfioIommuType1Info, size 24, align 8, [argsz @ 0, flags @ 4, iova_pgsizes @ 8, cap_offset @ 16, pad @ 20]);
    c_layout!(VfioInfoCapHeader, size 8, align 4, [id @ 0, version @ 2, next @ 4]);
    c_layout!(VfioIovaRange, size 16, align 8, [start @ 0, end @ 8]);
    c_layout!(VfioIommuType1InfoCapIovaRange, size 16, align 4, [header @ 0, nr_iovas @ 8, reserved @ 12]);
    c_layout!(VfioIommuType1InfoDmaAvail, size 12, align 4, [header @ 0, avail @ 8]);
    c_layout!(VfioIommuType1DmaMap, size 32, align 8, [argsz @ 0, flags @ 4, vaddr @ 8, iova @ 16, size @ 24]);
    c_layout!(VfioIommuType1DmaUnmap, size 24, align 8, [argsz @ 0, flags @ 4, iova @ 8, size @ 16]);
}

#[test]
fn ioctl_numbers_match_the_kernel() {
    let table = [
        (IOMMU_DESTROY, 0x3b80, b::IOMMUFD_CMD_DESTROY),
        (IOMMU_IOAS_ALLOC, 0x3b81, b::IOMMUFD_CMD_IOAS_ALLOC),
        (
            IOMMU_IOAS_ALLOW_IOVAS,
            0x3b82,
            b::IOMMUFD_CMD_IOAS_ALLOW_IOVAS,
        ),
        (IOMMU_IOAS_COPY, 0x3b83, b::IOMMUFD_CMD_IOAS_COPY),
        (
            IOMMU_IOAS_IOVA_RANGES,
            0x3b84,
            b::IOMMUFD_CMD_IOAS_IOVA_RANGES,
        ),
        (IOMMU_IOAS_MAP, 0x3b85, b::IOMMUFD_CMD_IOAS_MAP),
        (IOMMU_IOAS_UNMAP, 0x3b86, b::IOMMUFD_CMD_IOAS_UNMAP),
        (IOMMU_OPTION, 0x3b87, b::IOMMUFD_CMD_OPTION),
        (IOMMU_VFIO_IOAS, 0x3b88, b::IOMMUFD_CMD_VFIO_IOAS),
        (IOMMU_HWPT_ALLOC, 0x3b89, b::IOMMUFD_CMD_HWPT_ALLOC),
        (IOMMU_GET_HW_INFO, 0x3b8a, b::IOMMUFD_CMD_GET_HW_INFO),
        (
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            0x3b8b,
            b::IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING,
        ),
        (
            IOMMU_HWPT_GET_DIRTY_BITMAP,
            0x3b8c,
            b::IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP,
        ),
        (
            IOMMU_HWPT_INVALIDATE,
            0x3b8d,
            b::IOMMUFD_CMD_HWPT_INVALIDATE,
        ),
        (
            IOMMU_FAULT_QUEUE_ALLOC,
            0x3b8e,
            b::IOMMUFD_CMD_FAULT_QUEUE_ALLOC,
        ),
    ];
    for (ours, cmd, nr) in table {
        assert_eq!(ours, cmd, "{cmd:#x}");
        assert_eq!(ioc_nr(ours), nr, "{cmd:#x}");
        assert_eq!((ours >> 8) & 0xff, u32::from(b::IOMMUFD_TYPE));
    }
    assert_eq!(IOMMUFD_CMD_BASE, b::IOMMUFD_CMD_BASE);
    assert_eq!(IOMMU_TEST_CMD, 0x3ba0);
    assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
    assert_eq!(VFIO_CHECK_EXTENSION, 0x3b65);
    assert_eq!(VFIO_SET_IOMMU, 0x3b66);
    assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
    assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
    assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
    assert_eq!(VFIO_IOMMU_DIRTY_PAGES, 0x3b75);
}

#[test]
fn iommufd_constants_match_the_bindings() {
    let u32s = [
        (
            IOMMU_IOAS_MAP_FIXED_IOVA,
            b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
        ),
        (
            IOMMU_IOAS_MAP_WRITEABLE,
            b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
        ),
        (
            IOMMU_IOAS_MAP_READABLE,
            b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE,
        ),
        (
            IOMMU_OPTION_RLIMIT_MODE,
            b::iommufd_option_IOMMU_OPTION_RLIMIT_MODE,
        ),
        (
            IOMMU_OPTION_HUGE_PAGES,
            b::iommufd_option_IOMMU_OPTION_HUGE_PAGES,
        ),
        (
            IOMMU_HWPT_ALLOC_NEST_PARENT,
            b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT,
        ),
        (
            IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
        ),
        (
            IOMMU_HWPT_FAULT_ID_VALID,
            b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_FAULT_ID_VALID,
        ),
        (
            IOMMU_HWPT_DATA_NONE,
            b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE,
        ),
        (
            IOMMU_HWPT_DATA_VTD_S1,
            b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1,
        ),
        (
            IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
            b::iommu_hw_info_vtd_flags_IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
        ),
        (
            IOMMU_HW_INFO_TYPE_NONE,
            b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_NONE,
        ),
        (
            IOMMU_HW_INFO_TYPE_DEFAULT,
            b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_DEFAULT,
        ),
        (
            IOMMU_HW_INFO_TYPE_INTEL_VTD,
            b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD,
        ),
        (
            IOMMU_HW_INFO_FLAG_INPUT_TYPE,
            b::iommufd_hw_info_flags_IOMMU_HW_INFO_FLAG_INPUT_TYPE,
        ),
        (
            IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
            b::iommufd_hwpt_set_dirty_tracking_flags_IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
        ),
        (
            IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
            b::iommufd_hwpt_get_dirty_bitmap_flags_IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
        ),
        (
            IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
            b::iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        ),
        (
            IOMMU_VTD_INV_FLAGS_LEAF,
            b::iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF,
        ),
        (
            IOMMU_PGFAULT_FLAGS_PASID_VALID,
            b::iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_PASID_VALID,
        ),
        (
            IOMMU_PGFAULT_FLAGS_LAST_PAGE,
            b::iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_LAST_PAGE,
        ),
        (
            IOMMU_PGFAULT_PERM_READ,
            b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_READ,
        ),
        (
            IOMMU_PGFAULT_PERM_WRITE,
            b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_WRITE,
        ),
        (
            IOMMU_PGFAULT_PERM_EXEC,
            b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_EXEC,
        ),
        (
            IOMMU_PGFAULT_PERM_PRIV,
            b::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_PRIV,
        ),
        (
            IOMMUFD_PAGE_RESP_SUCCESS,
            b::iommufd_page_response_code_IOMMUFD_PAGE_RESP_SUCCESS,
        ),
        (
            IOMMUFD_PAGE_RESP_INVALID,
            b::iommufd_page_response_code_IOMMUFD_PAGE_RESP_INVALID,
        ),
    ];
    for (i, (ours, theirs)) in u32s.iter().enumerate() {
        assert_eq!(ours, theirs, "u32 constant #{i}");
    }
    let u16s = [
        (
            u32::from(IOMMU_OPTION_OP_SET),
            b::iommufd_option_ops_IOMMU_OPTION_OP_SET,
        ),
        (
            u32::from(IOMMU_OPTION_OP_GET),
            b::iommufd_option_ops_IOMMU_OPTION_OP_GET,
        ),
        (
            u32::from(IOMMU_VFIO_IOAS_GET),
            b::iommufd_vfio_ioas_op_IOMMU_VFIO_IOAS_GET,
        ),
        (
            u32::from(IOMMU_VFIO_IOAS_SET),
            b::iommufd_vfio_ioas_op_IOMMU_VFIO_IOAS_SET,
        ),
        (
            u32::from(IOMMU_VFIO_IOAS_CLEAR),
            b::iommufd_vfio_ioas_op_IOMMU_VFIO_IOAS_CLEAR,
        ),
    ];
    for (i, (ours, theirs)) in u16s.iter().enumerate() {
        assert_eq!(ours, theirs, "u16 constant #{i}");
    }
    let u64s = [
        (
            IOMMU_VTD_S1_SRE,
            b::iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_SRE,
        ),
        (
            IOMMU_VTD_S1_EAFE,
            b::iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_EAFE,
        ),
        (
            IOMMU_VTD_S1_WPE,
            b::iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_WPE,
        ),
        (
            IOMMU_HW_CAP_DIRTY_TRACKING,
            b::iommufd_hw_capabilities_IOMMU_HW_CAP_DIRTY_TRACKING,
        ),
        (
            IOMMU_HW_CAP_PCI_PASID_EXEC,
            b::iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_EXEC,
        ),
        (
            IOMMU_HW_CAP_PCI_PASID_PRIV,
            b::iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_PRIV,
        ),
    ];
    for (i, (ours, theirs)) in u64s.iter().enumerate() {
        assert_eq!(*ours, u64::from(*theirs), "u64 constant #{i}");
    }
}

#[test]
fn selftest_and_vfio_constants_match_the_headers() {
    // iommufd_test.h / selftest.c (4 KiB pages) and vfio.h values.
    assert_eq!(MOCK_APERTURE_START, 0x100_0000);
    assert_eq!(MOCK_APERTURE_LAST, 0x7fff_ffff);
    assert_eq!(MOCK_IO_PAGE_SIZE, 2048);
    assert_eq!(MOCK_HUGE_PAGE_SIZE, 1 << 20);
    assert_eq!(MOCK_PFN_MASK, (1 << 53) - 1);
    assert_eq!(MOCK_PFN_START_IOVA, 1 << 53);
    assert_eq!(MOCK_PFN_LAST_IOVA, 1 << 53);
    assert_eq!(MOCK_PFN_DIRTY_IOVA, 1 << 54);
    assert_eq!(MOCK_PFN_HUGE_IOVA, 1 << 55);
    assert_eq!(
        (
            MOCK_NESTED_DOMAIN_IOTLB_ID_MAX,
            MOCK_NESTED_DOMAIN_IOTLB_NUM
        ),
        (3, 4)
    );
    assert_eq!(IOMMU_TEST_IOTLB_DEFAULT, 0xbad_beef);
    assert_eq!(IOMMU_HW_INFO_TYPE_SELFTEST, 0xfeed_beef);
    assert_eq!(IOMMU_HW_INFO_SELFTEST_REGVAL, 0xdead_beef);
    assert_eq!(IOMMU_HWPT_DATA_SELFTEST, 0xdead);
    assert_eq!(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 0xdead_beef);
    assert_eq!(IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, 0xdad_beef);
    assert_eq!(IOMMU_TEST_INVALIDATE_FLAG_ALL, 1);
    assert_eq!(IOMMU_TEST_MEMORY_LIMIT_DEFAULT, 65536);
    assert_eq!(
        (
            MOCK_FLAGS_DEVICE_NO_DIRTY,
            MOCK_FLAGS_DEVICE_HUGE_IOVA,
            MOCK_FLAGS_DEVICE_PASID
        ),
        (1, 2, 4)
    );
    assert_eq!(MOCK_PASID_WIDTH, 20);
    assert_eq!(MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES, 1);
    assert_eq!(
        (MOCK_FLAGS_ACCESS_WRITE, MOCK_FLAGS_ACCESS_SYZ),
        (1, 1 << 16)
    );
    assert_eq!((MOCK_ACCESS_RW_WRITE, MOCK_ACCESS_RW_SLOW_PATH), (1, 4));
    assert_eq!(VFIO_API_VERSION, 0);
    assert_eq!(
        [
            VFIO_TYPE1_IOMMU,
            VFIO_TYPE1V2_IOMMU,
            VFIO_DMA_CC_IOMMU,
            VFIO_TYPE1_NESTING_IOMMU
        ],
        [1, 3, 4, 6]
    );
    assert_eq!(
        [VFIO_NOIOMMU_IOMMU, VFIO_UNMAP_ALL, VFIO_UPDATE_VADDR],
        [8, 9, 10]
    );
    assert_eq!((VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_INFO_CAPS), (1, 2));
    assert_eq!(
        (
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        ),
        (1, 3)
    );
    assert_eq!((VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE), (1, 2));
    assert_eq!(VFIO_DMA_UNMAP_FLAG_ALL, 2);
}
