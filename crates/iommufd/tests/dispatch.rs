//! The dispatcher's generic rules (`iommufd_fops_ioctl` order), driven through a table with
//! one row for every 6.12 ioctl plus `IOMMU_TEST_CMD`, test handlers and a `Vec`-backed
//! `UserMemory`. Expected values come from the kernel (reference §1.1–§1.2), not from our code.

use std::mem::{offset_of, size_of};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::ioctl::{op, IoctlOp, IoctlTable, Ucmd};
use uiommu_iommufd::user_memory::{MmId, UserMemory, UserMemoryError, UserVa};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Where the test memory starts; address 0 (NULL) and everything outside is unmapped.
const BASE: u64 = 0x10_000;
const PAGE: u64 = 4096;
const PAGES: u64 = 4;

/// A flat user address space: `[BASE, BASE + PAGES * PAGE)` is mapped, optionally with a
/// read-only sub-range.
#[derive(Debug)]
struct VecMemory {
    base: u64,
    bytes: Mutex<Vec<u8>>,
    readonly: Option<Range<u64>>,
}

impl VecMemory {
    fn new() -> VecMemory {
        VecMemory::at(BASE)
    }

    fn at(base: u64) -> VecMemory {
        VecMemory {
            base,
            bytes: Mutex::new(vec![0; (PAGES * PAGE) as usize]),
            readonly: None,
        }
    }

    fn index(&self, addr: UserVa, len: usize) -> Result<Range<usize>, UserMemoryError> {
        let fault = UserMemoryError::Fault {
            addr,
            len: len as u64,
        };
        let start = addr.0.checked_sub(self.base).ok_or(fault.clone())?;
        let end = start.checked_add(len as u64).ok_or(fault.clone())?;
        if end > PAGES * PAGE {
            return Err(fault);
        }
        Ok(start as usize..end as usize)
    }

    fn put(&self, addr: u64, data: &[u8]) {
        let range = self.index(UserVa(addr), data.len()).unwrap();
        self.bytes.lock().unwrap()[range].copy_from_slice(data);
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let range = self.index(UserVa(addr), len).unwrap();
        self.bytes.lock().unwrap()[range].to_vec()
    }
}

impl UserMemory for VecMemory {
    fn mm(&self) -> MmId {
        MmId {
            pid: 1,
            start_time: 0,
        }
    }

    fn read(&self, addr: UserVa, buf: &mut [u8]) -> Result<(), UserMemoryError> {
        let range = self.index(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[range]);
        Ok(())
    }

    fn write(&self, addr: UserVa, data: &[u8]) -> Result<(), UserMemoryError> {
        let range = self.index(addr, data.len())?;
        if let Some(ro) = &self.readonly {
            if addr.0 < ro.end && addr.0 + data.len() as u64 > ro.start {
                return Err(UserMemoryError::Fault {
                    addr,
                    len: data.len() as u64,
                });
            }
        }
        self.bytes.lock().unwrap()[range].copy_from_slice(data);
        Ok(())
    }

    fn probe(&self, addr: UserVa, len: u64, _writable: bool) -> Result<(), UserMemoryError> {
        if len == 0 {
            return Ok(());
        }
        self.index(addr, len as usize).map(|_| ())
    }
}

/// What the generic handler does.
const RECORD: u8 = 0;
const FILL_AND_RESPOND: u8 = 1;
const FAIL: u8 = 2;

#[derive(Debug, Default)]
struct TestCtx {
    mode: AtomicU8,
    /// Every handler call: the struct's type and the decoded bytes.
    seen: Mutex<Vec<(&'static str, Vec<u8>)>>,
    /// Every VFIO compat call: `(cmd, arg)`.
    compat: Mutex<Vec<(u32, u64)>>,
}

impl TestCtx {
    fn with_mode(mode: u8) -> TestCtx {
        TestCtx {
            mode: AtomicU8::new(mode),
            ..TestCtx::default()
        }
    }

    fn seen(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

/// The test handler every row uses: records the decoded struct, then per mode answers with a
/// struct full of 0xee, or fails.
fn handle<T: FromBytes + IntoBytes + Immutable>(
    ctx: &TestCtx,
    ucmd: &mut Ucmd<'_, T>,
) -> Result<(), Errno> {
    ctx.seen
        .lock()
        .unwrap()
        .push((std::any::type_name::<T>(), ucmd.cmd.as_bytes().to_vec()));
    match ctx.mode.load(Ordering::SeqCst) {
        FILL_AND_RESPOND => {
            ucmd.cmd.as_mut_bytes().fill(0xee);
            ucmd.respond()
        }
        RECORD => Ok(()),
        _ => Err(Errno::EOPNOTSUPP),
    }
}

/// `IOMMU_OPTION`'s way of answering: only `val64` goes back.
fn option_val64(ctx: &TestCtx, ucmd: &mut Ucmd<'_, IommuOption>) -> Result<(), Errno> {
    ctx.seen
        .lock()
        .unwrap()
        .push(("IommuOption", ucmd.cmd.as_bytes().to_vec()));
    ucmd.cmd.val64 = 0x1122_3344_5566_7788;
    ucmd.cmd.option_id = 0xdead;
    ucmd.respond_bytes(offset_of!(IommuOption, val64), size_of::<u64>())
}

fn compat(ctx: &TestCtx, _user: &dyn UserMemory, cmd: u32, arg: u64) -> Result<i32, Errno> {
    ctx.compat.lock().unwrap().push((cmd, arg));
    match cmd {
        VFIO_GET_API_VERSION => Ok(VFIO_API_VERSION),
        VFIO_CHECK_EXTENSION => Ok(i32::from(arg == u64::from(VFIO_TYPE1V2_IOMMU))),
        _ => Err(Errno::ENOTTY),
    }
}

/// Every 6.12 ioctl with the kernel's last mandatory field (main.c `iommufd_ioctl_ops[]`).
static OPS: &[IoctlOp<TestCtx>] = &[
    op!(IOMMU_DESTROY, handle, IommuDestroy, id),
    op!(
        IOMMU_FAULT_QUEUE_ALLOC,
        handle,
        IommuFaultAlloc,
        out_fault_fd
    ),
    op!(IOMMU_GET_HW_INFO, handle, IommuHwInfo, reserved),
    op!(IOMMU_HWPT_ALLOC, handle, IommuHwptAlloc, reserved),
    op!(
        IOMMU_HWPT_GET_DIRTY_BITMAP,
        handle,
        IommuHwptGetDirtyBitmap,
        data
    ),
    op!(IOMMU_HWPT_INVALIDATE, handle, IommuHwptInvalidate, reserved),
    op!(
        IOMMU_HWPT_SET_DIRTY_TRACKING,
        handle,
        IommuHwptSetDirtyTracking,
        reserved
    ),
    op!(IOMMU_IOAS_ALLOC, handle, IommuIoasAlloc, out_ioas_id),
    op!(
        IOMMU_IOAS_ALLOW_IOVAS,
        handle,
        IommuIoasAllowIovas,
        allowed_iovas
    ),
    op!(IOMMU_IOAS_COPY, handle, IommuIoasCopy, src_iova),
    op!(
        IOMMU_IOAS_IOVA_RANGES,
        handle,
        IommuIoasIovaRanges,
        out_iova_alignment
    ),
    op!(IOMMU_IOAS_MAP, handle, IommuIoasMap, iova),
    op!(IOMMU_IOAS_UNMAP, handle, IommuIoasUnmap, length),
    op!(IOMMU_OPTION, option_val64, IommuOption, val64),
    op!(IOMMU_VFIO_IOAS, handle, IommuVfioIoas, reserved),
    op!(IOMMU_TEST_CMD, handle, IommuTestCmd, last),
];

static TABLE: IoctlTable<TestCtx> = IoctlTable::new(OPS, compat);

/// A table without `IOMMU_TEST_CMD`, as a kernel without `CONFIG_IOMMUFD_TEST` has.
static SHORT_OPS: &[IoctlOp<TestCtx>] = &[
    op!(IOMMU_DESTROY, handle, IommuDestroy, id),
    op!(
        IOMMU_FAULT_QUEUE_ALLOC,
        handle,
        IommuFaultAlloc,
        out_fault_fd
    ),
];
static SHORT_TABLE: IoctlTable<TestCtx> = IoctlTable::new(SHORT_OPS, compat);

/// `(cmd, sizeof, min_size)` from the kernel reference table §1.2.
const KERNEL_SIZES: &[(u32, usize, usize)] = &[
    (0x3b80, 8, 8),
    (0x3b81, 12, 12),
    (0x3b82, 24, 24),
    (0x3b83, 40, 40),
    (0x3b84, 32, 32),
    (0x3b85, 40, 40),
    (0x3b86, 24, 24),
    (0x3b87, 24, 24),
    (0x3b88, 12, 12),
    (0x3b89, 48, 24),
    (0x3b8a, 40, 32),
    (0x3b8b, 16, 16),
    (0x3b8c, 48, 48),
    (0x3b8d, 32, 32),
    (0x3b8e, 16, 16),
    (0x3ba0, 72, 68),
];

/// `_IOC(dir, type, nr, size)`.
fn ioc(dir: u32, ty: u8, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | (u32::from(ty) << 8) | nr
}

/// Put a command struct at `BASE` with its leading `size` set to `size`, followed by `tail`.
fn place(mem: &VecMemory, full: &[u8], size: u32, tail: &[u8]) {
    let mut bytes = full.to_vec();
    bytes[..4].copy_from_slice(&size.to_le_bytes());
    mem.put(BASE, &bytes);
    mem.put(BASE + bytes.len() as u64, tail);
}

fn row(cmd: u32) -> &'static IoctlOp<TestCtx> {
    OPS.iter().find(|op| op.cmd() == cmd).unwrap()
}

#[test]
fn row_sizes_match_the_kernel_table() {
    assert_eq!(OPS.len(), KERNEL_SIZES.len());
    for &(cmd, size, min_size) in KERNEL_SIZES {
        let op = row(cmd);
        assert_eq!(
            (op.size(), op.min_size()),
            (size, min_size),
            "{}",
            op.name()
        );
    }
    assert_eq!(row(IOMMU_IOAS_MAP).name(), "IOMMU_IOAS_MAP");
}

#[test]
fn null_argument_is_efault() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_DESTROY, 0),
        Err(Errno::EFAULT)
    );
    // The size is read before the slot is checked, so an empty slot with NULL is EFAULT too.
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, io(IOMMUFD_TYPE, 0x8f), 0),
        Err(Errno::EFAULT)
    );
    assert!(ctx.seen().is_empty());
}

#[test]
fn empty_slot_is_enotty() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    place(&mem, IommuDestroy::default().as_bytes(), 8, &[]);
    for nr in 0x8f..0xa0 {
        assert_eq!(
            TABLE.dispatch(&ctx, &mem, io(IOMMUFD_TYPE, nr), BASE),
            Err(Errno::ENOTTY),
            "nr {nr:#x}"
        );
    }
    assert!(
        ctx.compat.lock().unwrap().is_empty(),
        "holes inside the table are not VFIO's"
    );
    assert!(ctx.seen().is_empty());
}

#[test]
fn wrong_encoding_is_enotty() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    place(&mem, IommuDestroy::default().as_bytes(), 8, &[]);
    let with_dir_and_size = ioc(3, IOMMUFD_TYPE, 0x80, 8);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, with_dir_and_size, BASE),
        Err(Errno::ENOTTY)
    );
    let other_type = ioc(0, b'x', 0x80, 0);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, other_type, BASE),
        Err(Errno::ENOTTY)
    );
    assert!(ctx.seen().is_empty());
}

#[test]
fn vfio_range_goes_to_the_compat_handler() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    // Integer arguments are passed through, never dereferenced.
    assert_eq!(
        TABLE.dispatch(
            &ctx,
            &mem,
            VFIO_CHECK_EXTENSION,
            u64::from(VFIO_TYPE1V2_IOMMU)
        ),
        Ok(1)
    );
    assert_eq!(TABLE.dispatch(&ctx, &mem, VFIO_GET_API_VERSION, 0), Ok(0));
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, io(IOMMUFD_TYPE, 0x7f), 0),
        Err(Errno::ENOTTY)
    );
    // Past the last row (0xa0) is VFIO's range again.
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, io(IOMMUFD_TYPE, 0xa1), 0),
        Err(Errno::ENOTTY)
    );
    let calls = ctx.compat.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            (VFIO_CHECK_EXTENSION, 3),
            (VFIO_GET_API_VERSION, 0),
            (0x3b7f, 0),
            (0x3ba1, 0),
        ]
    );
    assert!(ctx.seen().is_empty());
}

#[test]
fn table_end_follows_the_highest_row() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    // Without IOMMU_TEST_CMD the table ends at 0x8e, so 0x8f and 0xa0 are VFIO numbers:
    // no size is read (NULL is fine) and the compat handler answers.
    assert_eq!(
        SHORT_TABLE.dispatch(&ctx, &mem, io(IOMMUFD_TYPE, 0x8f), 0),
        Err(Errno::ENOTTY)
    );
    assert_eq!(
        SHORT_TABLE.dispatch(&ctx, &mem, IOMMU_TEST_CMD, 0),
        Err(Errno::ENOTTY)
    );
    assert_eq!(ctx.compat.lock().unwrap().len(), 2);
    // Inside it, a hole is the table's own ENOTTY (after reading the size).
    assert_eq!(
        SHORT_TABLE.dispatch(&ctx, &mem, io(IOMMUFD_TYPE, 0x85), 0),
        Err(Errno::EFAULT)
    );
}

#[test]
fn below_min_size_is_einval_and_min_size_is_accepted() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    for &(cmd, size, min_size) in KERNEL_SIZES {
        let full = vec![0u8; size];
        place(&mem, &full, (min_size - 1) as u32, &[]);
        assert_eq!(
            TABLE.dispatch(&ctx, &mem, cmd, BASE),
            Err(Errno::EINVAL),
            "{cmd:#x} at min-1"
        );
        place(&mem, &full, min_size as u32, &[]);
        assert_eq!(
            TABLE.dispatch(&ctx, &mem, cmd, BASE),
            Ok(0),
            "{cmd:#x} at min"
        );
        place(&mem, &full, 0, &[]);
        assert_eq!(
            TABLE.dispatch(&ctx, &mem, cmd, BASE),
            Err(Errno::EINVAL),
            "{cmd:#x} at 0"
        );
    }
    assert_eq!(
        ctx.seen().len(),
        KERNEL_SIZES.len(),
        "only the min-size calls reached handlers"
    );
}

#[test]
fn longer_struct_needs_a_zero_tail() {
    let mem = VecMemory::new();
    for &(cmd, size, _) in KERNEL_SIZES {
        let ctx = TestCtx::default();
        let full: Vec<u8> = (0..size as u8).map(|b| b | 0x40).collect();
        place(&mem, &full, size as u32 + 1, &[1]);
        assert_eq!(
            TABLE.dispatch(&ctx, &mem, cmd, BASE),
            Err(Errno::E2BIG),
            "{cmd:#x}"
        );
        assert!(ctx.seen().is_empty());
        // sizeof + 1 with a zero byte behaves exactly like sizeof.
        place(&mem, &full, size as u32 + 1, &[0]);
        assert_eq!(TABLE.dispatch(&ctx, &mem, cmd, BASE), Ok(0), "{cmd:#x}");
        place(&mem, &full, size as u32, &[0xff]);
        assert_eq!(TABLE.dispatch(&ctx, &mem, cmd, BASE), Ok(0), "{cmd:#x}");
        let seen = ctx.seen();
        assert_eq!(seen.len(), 2);
        // Only the `size` field itself differs.
        assert_eq!(seen[0].1[..4], (size as u32 + 1).to_le_bytes());
        assert_eq!(seen[1].1[..4], (size as u32).to_le_bytes());
        assert_eq!(
            seen[0].1[4..],
            seen[1].1[4..],
            "{cmd:#x}: the zero tail changed what the handler saw"
        );
    }
}

#[test]
fn tail_is_checked_across_pages() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    let size = (2 * PAGE + 100) as u32;
    place(&mem, IommuDestroy::default().as_bytes(), size, &[]);
    assert_eq!(TABLE.dispatch(&ctx, &mem, IOMMU_DESTROY, BASE), Ok(0));
    mem.put(BASE + 2 * PAGE + 50, &[9]);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_DESTROY, BASE),
        Err(Errno::E2BIG)
    );
}

#[test]
fn unreadable_tail_is_efault_unless_a_nonzero_byte_comes_first() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    // The caller claims a size that runs past the end of its mapping.
    let size = (PAGES * PAGE + 16) as u32;
    place(&mem, IommuDestroy::default().as_bytes(), size, &[]);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_DESTROY, BASE),
        Err(Errno::EFAULT)
    );
    mem.put(BASE + PAGE + 3, &[1]);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_DESTROY, BASE),
        Err(Errno::E2BIG)
    );
    assert!(ctx.seen().is_empty());
}

#[test]
fn tail_that_wraps_the_address_space_is_efault() {
    let ctx = TestCtx::default();
    // The mapping ends at the very top of the address space.
    let top = u64::MAX - PAGES * PAGE + 1;
    let mem = VecMemory::at(top);
    let at = u64::MAX - 15;
    mem.put(at, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_DESTROY, at),
        Err(Errno::EFAULT)
    );
    assert!(ctx.seen().is_empty());
}

#[test]
fn unreadable_struct_is_efault() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    // The size is readable, the rest of the 40-byte struct is past the mapping's end.
    let at = BASE + PAGES * PAGE - 8;
    mem.put(at, &40u32.to_le_bytes());
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_IOAS_MAP, at),
        Err(Errno::EFAULT)
    );
    assert!(ctx.seen().is_empty());
}

#[test]
fn short_struct_is_zero_extended() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    let alloc = IommuHwptAlloc {
        flags: 1,
        dev_id: 2,
        pt_id: 3,
        data_type: 0xaaaa,
        data_len: 0xbbbb,
        data_uptr: 0xcccc,
        fault_id: 0xdddd,
        reserved2: 0xeeee,
        ..IommuHwptAlloc::default()
    };
    // Only the first 24 bytes are the caller's; memory after them holds the rest (garbage
    // from the caller's point of view).
    place(&mem, alloc.as_bytes(), 24, &[]);
    assert_eq!(TABLE.dispatch(&ctx, &mem, IOMMU_HWPT_ALLOC, BASE), Ok(0));
    let seen = ctx.seen();
    let decoded = IommuHwptAlloc::read_from_bytes(&seen[0].1).unwrap();
    let expected = IommuHwptAlloc {
        size: 24,
        flags: 1,
        dev_id: 2,
        pt_id: 3,
        ..IommuHwptAlloc::default()
    };
    assert_eq!(decoded, expected);
}

#[test]
fn response_is_truncated_to_the_callers_size() {
    let ctx = TestCtx::with_mode(FILL_AND_RESPOND);
    let mem = VecMemory::new();
    let sentinel = [0x5a; 8];
    place(&mem, IommuHwInfo::default().as_bytes(), 32, &[]);
    mem.put(BASE + 32, &sentinel);
    assert_eq!(TABLE.dispatch(&ctx, &mem, IOMMU_GET_HW_INFO, BASE), Ok(0));
    assert_eq!(mem.get(BASE, 32), vec![0xee; 32]);
    assert_eq!(
        mem.get(BASE + 32, 8),
        sentinel,
        "out_capabilities is beyond the caller's struct"
    );
}

#[test]
fn response_to_a_larger_struct_writes_only_ours() {
    let ctx = TestCtx::with_mode(FILL_AND_RESPOND);
    let mem = VecMemory::new();
    place(&mem, IommuIoasAlloc::default().as_bytes(), 20, &[0; 8]);
    assert_eq!(TABLE.dispatch(&ctx, &mem, IOMMU_IOAS_ALLOC, BASE), Ok(0));
    assert_eq!(mem.get(BASE, 12), vec![0xee; 12]);
    assert_eq!(mem.get(BASE + 12, 8), vec![0; 8]);
}

#[test]
fn partial_response_writes_only_the_named_field() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    let option = IommuOption {
        option_id: 1,
        op: IOMMU_OPTION_OP_GET,
        object_id: 5,
        ..IommuOption::default()
    };
    place(&mem, option.as_bytes(), 24, &[]);
    assert_eq!(TABLE.dispatch(&ctx, &mem, IOMMU_OPTION, BASE), Ok(0));
    let back = IommuOption::read_from_bytes(&mem.get(BASE, 24)).unwrap();
    assert_eq!(
        back,
        IommuOption {
            size: 24,
            val64: 0x1122_3344_5566_7788,
            ..option
        }
    );
}

#[test]
fn unwritable_response_is_efault() {
    let ctx = TestCtx::with_mode(FILL_AND_RESPOND);
    let mut mem = VecMemory::new();
    mem.readonly = Some(BASE..BASE + PAGE);
    place(&mem, IommuIoasAlloc::default().as_bytes(), 12, &[]);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_IOAS_ALLOC, BASE),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        ctx.seen().len(),
        1,
        "the handler ran; only its answer failed"
    );
}

#[test]
fn handler_errors_pass_through() {
    let ctx = TestCtx::with_mode(FAIL);
    let mem = VecMemory::new();
    place(&mem, IommuDestroy::default().as_bytes(), 8, &[]);
    assert_eq!(
        TABLE.dispatch(&ctx, &mem, IOMMU_DESTROY, BASE),
        Err(Errno::EOPNOTSUPP)
    );
}

#[test]
fn handlers_see_the_callers_fields() {
    let ctx = TestCtx::default();
    let mem = VecMemory::new();
    let map = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_READABLE,
        ioas_id: 7,
        user_va: 0x1000,
        length: 0x2000,
        iova: 0x3000,
        ..IommuIoasMap::default()
    };
    place(&mem, map.as_bytes(), 40, &[]);
    assert_eq!(TABLE.dispatch(&ctx, &mem, IOMMU_IOAS_MAP, BASE), Ok(0));
    let seen = ctx.seen();
    assert!(seen[0].0.ends_with("IommuIoasMap"));
    assert_eq!(IommuIoasMap::read_from_bytes(&seen[0].1).unwrap(), map);
}
