//! The selftest's view of uiommu: a `/dev/iommu` with the mock driver's `IOMMU_TEST_CMD` hook,
//! one context, a caller whose pointers are this process's memory (under an address-space
//! identity of its own, so pin counts of parallel tests stay apart), an in-process fd table,
//! and one-line wrappers issuing real ioctls with `#[repr(C)]` structs. The helpers the IOAS
//! tests need as well come from `uiommu_iommufd::testing`; this module adds the mock's own.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::sync::Arc;

use uiommu_core::{BusKind, IommuCore};
use uiommu_iommufd::abi::*;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::file::FdTable;
use uiommu_iommufd::pages::{self, FixedMemlockPolicy};
use uiommu_iommufd::user_memory::PAGE_SIZE;
use uiommu_mock::{MockIommu, MockSelftest};

#[allow(unused_imports)] // Each test binary uses its own subset.
pub use uiommu_iommufd::testing::{Buffer, IommufdClient, TaggedMemory, RW, UNMAPPED_VA};

/// The first IOVA of the mock aperture, where tests map.
pub const BASE_IOVA: u64 = MOCK_APERTURE_START;
pub const PAGE: u64 = PAGE_SIZE;

/// The mock selftest environment.
#[derive(Debug)]
pub struct Env {
    pub core: Arc<IommuCore>,
    pub mock: Arc<MockIommu>,
    pub iommufd: Arc<Iommufd>,
    pub fds: Arc<FdTable>,
    pub ctx: Arc<IommufdCtx>,
    pub caller: Caller,
    pub memory: Arc<TaggedMemory>,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl IommufdClient for Env {
    fn ctx(&self) -> &Arc<IommufdCtx> {
        &self.ctx
    }

    fn caller(&self) -> &Caller {
        &self.caller
    }
}

impl Env {
    pub fn new() -> Env {
        let core = Arc::new(IommuCore::default());
        let mock = MockIommu::new();
        mock.register(&core).unwrap();
        let iommufd = Iommufd::new(core.clone());
        MockSelftest::install(&iommufd, mock.clone()).unwrap();
        let fds = Arc::new(FdTable::new());
        iommufd.set_file_installer(fds.clone()).unwrap();
        let ctx = iommufd.open();
        let memory = Arc::new(TaggedMemory::new());
        let policy = Arc::new(FixedMemlockPolicy {
            cap_ipc_lock: true,
            limit: u64::MAX,
            ..FixedMemlockPolicy::default()
        });
        let caller = Caller::new(memory.clone(), policy);
        Env {
            core,
            mock,
            iommufd,
            fds,
            ctx,
            caller,
            memory,
        }
    }

    /// Mock devices present in the core.
    pub fn mock_devices(&self) -> usize {
        self.core
            .devices()
            .iter()
            .filter(|d| d.bus == BusKind::Mock)
            .count()
    }

    /// Objects in the context's table.
    pub fn objects(&self) -> usize {
        self.ctx.objects().len()
    }

    /// `IOMMU_TEST_CMD` with `payload` on object `id`; the command as written back.
    pub fn test_cmd<P: TestOpPayload>(&self, id: u32, payload: &P) -> Result<IommuTestCmd, Errno> {
        let mut cmd = IommuTestCmd::new(id, payload);
        self.ioctl(IOMMU_TEST_CMD, &mut cmd)?;
        Ok(cmd)
    }

    pub fn map_flags(
        &self,
        ioas: u32,
        flags: u32,
        uptr: u64,
        length: u64,
        iova: u64,
    ) -> Result<u64, Errno> {
        let mut cmd = IommuIoasMap {
            size: size_of::<IommuIoasMap>() as u32,
            flags: flags | IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id: ioas,
            user_va: uptr,
            length,
            iova,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_MAP, &mut cmd)?;
        Ok(cmd.iova)
    }

    pub fn map(&self, ioas: u32, uptr: u64, length: u64, iova: u64) -> Result<u64, Errno> {
        self.map_flags(ioas, RW, uptr, length, iova)
    }

    /// MOCK_DOMAIN on `pt`: (stdev, hwpt, idev).
    pub fn mock_domain(&self, pt: u32) -> Result<(u32, u32, u32), Errno> {
        self.mock_domain_flags(pt, 0)
    }

    pub fn mock_domain_flags(&self, pt: u32, flags: u32) -> Result<(u32, u32, u32), Errno> {
        let cmd = self.test_cmd(
            pt,
            &TestMockDomainFlags {
                dev_flags: flags,
                ..Default::default()
            },
        )?;
        let out = cmd.payload::<TestMockDomainFlags>();
        Ok((out.out_stdev_id, out.out_hwpt_id, out.out_idev_id))
    }

    pub fn replace(&self, stdev: u32, pt: u32) -> Result<u32, Errno> {
        let cmd = self.test_cmd(stdev, &TestMockDomainReplace { pt_id: pt })?;
        Ok(cmd.payload::<TestMockDomainReplace>().pt_id)
    }

    pub fn hwpt_alloc(&self, dev: u32, pt: u32, flags: u32) -> Result<u32, Errno> {
        self.hwpt_alloc_data(dev, pt, flags, IOMMU_HWPT_DATA_NONE, 0, 0, 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn hwpt_alloc_data(
        &self,
        dev: u32,
        pt: u32,
        flags: u32,
        data_type: u32,
        data_uptr: u64,
        data_len: u32,
        fault_id: u32,
    ) -> Result<u32, Errno> {
        let mut cmd = IommuHwptAlloc {
            size: size_of::<IommuHwptAlloc>() as u32,
            flags,
            dev_id: dev,
            pt_id: pt,
            data_type,
            data_len,
            data_uptr,
            fault_id,
            ..Default::default()
        };
        self.ioctl(IOMMU_HWPT_ALLOC, &mut cmd)?;
        Ok(cmd.out_hwpt_id)
    }

    /// A nested HWPT on `parent` with IOTLB value `iotlb`, optionally with a fault queue.
    pub fn nested_alloc(
        &self,
        dev: u32,
        parent: u32,
        iotlb: u32,
        fault: Option<u32>,
    ) -> Result<u32, Errno> {
        let mut data = IommuHwptSelftest { iotlb };
        self.hwpt_alloc_data(
            dev,
            parent,
            if fault.is_some() {
                IOMMU_HWPT_FAULT_ID_VALID
            } else {
                0
            },
            IOMMU_HWPT_DATA_SELFTEST,
            std::ptr::from_mut(&mut data) as u64,
            4,
            fault.unwrap_or(0),
        )
    }

    pub fn check_map(&self, hwpt: u32, iova: u64, length: u64, uptr: u64) -> Result<(), Errno> {
        self.test_cmd(hwpt, &TestCheckMap { iova, length, uptr })
            .map(|_| ())
    }

    pub fn check_refs(&self, uptr: u64, length: u64, refs: u32) -> Result<(), Errno> {
        self.test_cmd(
            0,
            &TestCheckRefs {
                length,
                uptr,
                refs,
                pad: 0,
            },
        )
        .map(|_| ())
    }

    pub fn create_access(&self, ioas: u32, flags: u32) -> Result<u32, Errno> {
        let cmd = self.test_cmd(
            ioas,
            &TestCreateAccess {
                out_access_fd: 0,
                flags,
            },
        )?;
        Ok(cmd.payload::<TestCreateAccess>().out_access_fd)
    }

    pub fn access_pages(
        &self,
        fd: u32,
        iova: u64,
        length: u64,
        uptr: u64,
        flags: u32,
    ) -> Result<u32, Errno> {
        let cmd = self.test_cmd(
            fd,
            &TestAccessPages {
                flags,
                out_access_pages_id: 0,
                iova,
                length,
                uptr,
            },
        )?;
        Ok(cmd.payload::<TestAccessPages>().out_access_pages_id)
    }

    pub fn destroy_access_pages(&self, fd: u32, id: u32) -> Result<(), Errno> {
        self.test_cmd(
            fd,
            &TestDestroyAccessPages {
                access_pages_id: id,
            },
        )
        .map(|_| ())
    }

    pub fn access_rw(
        &self,
        fd: u32,
        iova: u64,
        uptr: u64,
        length: u64,
        flags: u32,
    ) -> Result<(), Errno> {
        self.test_cmd(
            fd,
            &TestAccessRw {
                iova,
                length,
                uptr,
                flags,
                pad: 0,
            },
        )
        .map(|_| ())
    }

    pub fn close(&self, fd: u32) -> Result<(), Errno> {
        self.fds.close(fd as i32)
    }

    /// IOMMU_FAULT_QUEUE_ALLOC: (fault id, fd).
    pub fn fault_alloc(&self) -> Result<(u32, u32), Errno> {
        let mut cmd = IommuFaultAlloc {
            size: size_of::<IommuFaultAlloc>() as u32,
            ..Default::default()
        };
        self.ioctl(IOMMU_FAULT_QUEUE_ALLOC, &mut cmd)?;
        Ok((cmd.out_fault_id, cmd.out_fault_fd))
    }

    /// Tear the context down and check that nothing is left: no pins, no mock device, no open
    /// file.
    pub fn assert_clean_teardown(self) {
        let core = self.core.clone();
        let mm = self.mm();
        drop(self);
        assert_eq!(pages::total_pins(mm), 0, "pins left after close");
        assert!(
            core.devices().iter().all(|d| d.bus != BusKind::Mock),
            "mock devices left after close"
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Open files hold the context; closing them is what process exit would do.
        self.fds.close_all();
    }
}
