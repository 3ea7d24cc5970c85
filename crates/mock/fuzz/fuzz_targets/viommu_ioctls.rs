//! Feeds arbitrary command structs to the ioctls Linux 7.3 added (vIOMMU, vDEVICE, vEVENTQ,
//! HW queue, nested HWPTs on a vIOMMU, vIOMMU invalidation) and to the mock's new test ops, on
//! a context that already has an IOAS with pages mapped, a mock device, a nesting parent and a
//! vIOMMU. The caller's address space is a model ([`ModelMemory`]): every pointer in the input
//! names model memory, never this process's. Each call must answer an errno or succeed without
//! panicking; reads of the files the calls hand out must do the same.
//!
//! Input: records of `[command selector, struct length, struct bytes...]`; selector bit 7 keeps
//! the input's own `size` field, otherwise it is set to the struct's length.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use uiommu_core::IommuCore;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::file::{FdTable, FileInstaller};
use uiommu_iommufd::pages::FixedMemlockPolicy;
use uiommu_iommufd::user_memory::{ModelMemory, UserMemory, UserVa};
use uiommu_mock::{MockIommu, MockSelftest};
use zerocopy::{FromBytes, IntoBytes};

/// Where command structs go in the model address space.
const CMD_VA: u64 = 0x10_0000;
/// A model buffer the input's pointers may name; the setup maps it into the IOAS.
const DATA_VA: u64 = 0x20_0000;
const DATA_LEN: u64 = 0x4000;

const COMMANDS: [u32; 7] = [
    IOMMU_VIOMMU_ALLOC,
    IOMMU_VDEVICE_ALLOC,
    IOMMU_VEVENTQ_ALLOC,
    IOMMU_HW_QUEUE_ALLOC,
    IOMMU_HWPT_ALLOC,
    IOMMU_HWPT_INVALIDATE,
    IOMMU_TEST_CMD,
];

struct Env {
    ctx: Arc<IommufdCtx>,
    caller: Caller,
    memory: Arc<ModelMemory>,
    fds: Arc<FdTable>,
}

impl Env {
    fn raw(&self, cmd: u32, bytes: &[u8]) -> Result<i32, i32> {
        self.memory.write(UserVa(CMD_VA), bytes).expect("mapped");
        // SAFETY: the caller's memory is a ModelMemory, so `CMD_VA` and every pointer inside
        // the command name model memory, never this process's. (`unsafe` for the embedding
        // API, whose `IommufdCtx::ioctl` takes raw addresses.)
        #[allow(unused_unsafe)]
        let result = unsafe { self.ctx.ioctl(&self.caller, cmd, CMD_VA) };
        result.map_err(|errno| errno.raw())
    }

    /// Run a setup command; the struct as written back.
    fn setup<T: IntoBytes + FromBytes + zerocopy::Immutable>(&self, cmd: u32, arg: &T) -> T {
        self.raw(cmd, arg.as_bytes()).expect("setup command");
        let mut out = T::new_zeroed();
        self.memory
            .read(UserVa(CMD_VA), out.as_mut_bytes())
            .expect("mapped");
        out
    }
}

fn env() -> Env {
    let core = Arc::new(IommuCore::default());
    let mock = MockIommu::new();
    mock.register(&core).unwrap();
    let iommufd = Iommufd::new(core);
    MockSelftest::install(&iommufd, mock).unwrap();
    let fds = Arc::new(FdTable::new());
    iommufd.set_file_installer(fds.clone()).unwrap();
    let memory = Arc::new(ModelMemory::new());
    memory.map(UserVa(CMD_VA), 0x1000, true);
    memory.map(UserVa(DATA_VA), DATA_LEN, true);
    let policy = Arc::new(FixedMemlockPolicy {
        cap_ipc_lock: true,
        limit: u64::MAX,
        ..FixedMemlockPolicy::default()
    });
    let caller = Caller::new(memory.clone(), policy);
    Env {
        ctx: iommufd.open(),
        caller,
        memory,
        fds,
    }
}

/// IOAS 1 with `DATA_VA` mapped at the mock aperture, a mock device on it, a nesting parent
/// and a selftest vIOMMU.
fn populate(env: &Env) {
    let size = |n: usize| n as u32;
    let ioas = env.setup(
        IOMMU_IOAS_ALLOC,
        &IommuIoasAlloc {
            size: size(size_of::<IommuIoasAlloc>()),
            ..Default::default()
        },
    );
    env.setup(
        IOMMU_IOAS_MAP,
        &IommuIoasMap {
            size: size(size_of::<IommuIoasMap>()),
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas.out_ioas_id,
            user_va: DATA_VA,
            length: DATA_LEN,
            iova: MOCK_APERTURE_START,
            ..Default::default()
        },
    );
    let mock = env.setup(
        IOMMU_TEST_CMD,
        &IommuTestCmd::new(ioas.out_ioas_id, &TestMockDomainFlags::default()),
    );
    let idev = mock.payload::<TestMockDomainFlags>().out_idev_id;
    let parent = env.setup(
        IOMMU_HWPT_ALLOC,
        &IommuHwptAlloc {
            size: size(size_of::<IommuHwptAlloc>()),
            flags: IOMMU_HWPT_ALLOC_NEST_PARENT,
            dev_id: idev,
            pt_id: ioas.out_ioas_id,
            ..Default::default()
        },
    );
    env.setup(
        IOMMU_VIOMMU_ALLOC,
        &IommuViommuAlloc {
            size: size(size_of::<IommuViommuAlloc>()),
            viommu_type: IOMMU_VIOMMU_TYPE_SELFTEST,
            dev_id: idev,
            hwpt_id: parent.out_hwpt_id,
            ..Default::default()
        },
    );
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    populate(&env);
    let mut data = data;
    while let [selector, len, rest @ ..] = data {
        let len = usize::from(*len).min(rest.len()).min(128);
        let (bytes, tail) = rest.split_at(len);
        data = tail;
        let cmd = COMMANDS[usize::from(*selector) % COMMANDS.len()];
        let mut buf = bytes.to_vec();
        if buf.len() >= 4 && selector & 0x80 == 0 {
            let size = buf.len() as u32;
            buf[..4].copy_from_slice(&size.to_le_bytes());
        }
        let _ = env.raw(cmd, &buf);
        // Read every file handed out so far (vEVENTQ, fault and access files) into the model.
        for fd in 0..64 {
            if let Some(file) = FileInstaller::get(env.fds.as_ref(), fd) {
                let _ = file.read(env.memory.as_ref(), UserVa(DATA_VA), len * 2, 0);
            }
        }
    }
});
