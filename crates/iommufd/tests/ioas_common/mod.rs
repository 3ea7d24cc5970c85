//! Helpers shared by the IOAS and VFIO compat tests: a context opened on a fresh `/dev/iommu`, a
//! caller whose pointers are this process's memory (under a private address-space identity, so
//! pin counts of parallel tests stay apart), page-aligned buffers, and one-line wrappers that
//! issue real ioctls with `#[repr(C)]` structs through `IommufdCtx::ioctl`. What the mock
//! selftests need as well lives in `uiommu_iommufd::testing`; this module adds the rest.
#![allow(dead_code)] // Each test binary uses its own subset.

#[path = "../io_pagetable_common/mod.rs"]
pub mod domains;

use std::sync::Arc;

use uiommu_core::{CoreConfig, IommuCore};
use uiommu_iommufd::abi::*;
use uiommu_iommufd::ctx::{Caller, Iommufd, IommufdCtx};
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::ioas::Ioas;
use uiommu_iommufd::object::{ObjId, ObjRef};
use uiommu_iommufd::pages::{FixedMemlockPolicy, LockedVm};

pub use domains::RecordingDomain;
#[allow(unused_imports)] // Each test binary uses its own subset.
pub use uiommu_iommufd::testing::{Buffer, IommufdClient, TaggedMemory, RW, UNMAPPED_VA};

/// One context and the caller that issues its ioctls.
#[derive(Debug)]
pub struct Fixture {
    pub iommufd: Arc<Iommufd>,
    pub ctx: Arc<IommufdCtx>,
    pub caller: Caller,
    pub memory: Arc<TaggedMemory>,
    pub policy: Arc<FixedMemlockPolicy>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl IommufdClient for Fixture {
    fn ctx(&self) -> &Arc<IommufdCtx> {
        &self.ctx
    }

    fn caller(&self) -> &Caller {
        &self.caller
    }
}

impl Fixture {
    /// A `/dev/iommu` context; the caller has no capability and no memlock limit.
    pub fn new() -> Fixture {
        Self::build(false, u64::MAX, false)
    }

    /// A context opened as `/dev/vfio/vfio`.
    pub fn vfio() -> Fixture {
        Self::build(true, u64::MAX, false)
    }

    /// A context whose caller may pin `limit` bytes, without `CAP_IPC_LOCK`.
    pub fn with_memlock_limit(limit: u64) -> Fixture {
        Self::build(false, limit, false)
    }

    /// A context whose caller has `CAP_SYS_RESOURCE`.
    pub fn privileged() -> Fixture {
        Self::build(false, u64::MAX, true)
    }

    fn build(vfio: bool, limit: u64, cap_sys_resource: bool) -> Fixture {
        let iommufd = Iommufd::new(Arc::new(IommuCore::new(CoreConfig::default())));
        let ctx = if vfio {
            iommufd.open_vfio()
        } else {
            iommufd.open()
        };
        let memory = Arc::new(TaggedMemory::new());
        let policy = Arc::new(FixedMemlockPolicy {
            cap_ipc_lock: false,
            limit,
            user: Arc::new(LockedVm::default()),
            mm: Arc::new(LockedVm::default()),
        });
        let mut caller = Caller::new(memory.clone(), policy.clone());
        caller.cap_sys_resource = cap_sys_resource;
        Fixture {
            iommufd,
            ctx,
            caller,
            memory,
            policy,
        }
    }

    /// `ioctl(fd, cmd, arg)` with an integer (or deliberately bad pointer) argument.
    pub fn ioctl_raw(&self, cmd: u32, arg: u64) -> Result<i32, Errno> {
        self.ctx.ioctl(&self.caller, cmd, arg)
    }

    /// `IOMMU_IOAS_MAP`; returns the IOVA written back.
    pub fn map(
        &self,
        ioas_id: u32,
        flags: u32,
        user_va: u64,
        length: u64,
        iova: u64,
    ) -> Result<u64, Errno> {
        let mut cmd = IommuIoasMap {
            size: size_of::<IommuIoasMap>() as u32,
            flags,
            ioas_id,
            user_va,
            length,
            iova,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_MAP, &mut cmd)?;
        Ok(cmd.iova)
    }

    /// A readable and writable map at a fixed IOVA.
    pub fn map_fixed(
        &self,
        ioas_id: u32,
        user_va: u64,
        length: u64,
        iova: u64,
    ) -> Result<u64, Errno> {
        self.map(
            ioas_id,
            RW | IOMMU_IOAS_MAP_FIXED_IOVA,
            user_va,
            length,
            iova,
        )
    }

    /// `IOMMU_IOAS_COPY`; returns the destination IOVA written back.
    pub fn copy(
        &self,
        dst_ioas_id: u32,
        src_ioas_id: u32,
        flags: u32,
        length: u64,
        dst_iova: u64,
        src_iova: u64,
    ) -> Result<u64, Errno> {
        let mut cmd = IommuIoasCopy {
            size: size_of::<IommuIoasCopy>() as u32,
            flags,
            dst_ioas_id,
            src_ioas_id,
            length,
            dst_iova,
            src_iova,
        };
        self.ioctl(IOMMU_IOAS_COPY, &mut cmd)?;
        Ok(cmd.dst_iova)
    }

    /// `IOMMU_IOAS_ALLOW_IOVAS` with `ranges` as `(start, last)`.
    pub fn allow_iovas(&self, ioas_id: u32, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        let mut array: Vec<IommuIovaRange> = ranges
            .iter()
            .map(|&(start, last)| IommuIovaRange { start, last })
            .collect();
        let mut cmd = IommuIoasAllowIovas {
            size: size_of::<IommuIoasAllowIovas>() as u32,
            ioas_id,
            num_iovas: array.len() as u32,
            allowed_iovas: array.as_mut_ptr() as u64,
            ..Default::default()
        };
        self.ioctl(IOMMU_IOAS_ALLOW_IOVAS, &mut cmd).map(|_| ())
    }

    /// `IOMMU_IOAS_IOVA_RANGES` with room for `capacity` ranges: the command as written back,
    /// the ranges, and the ioctl's result.
    pub fn iova_ranges(
        &self,
        ioas_id: u32,
        capacity: u32,
    ) -> (IommuIoasIovaRanges, Vec<(u64, u64)>, Result<i32, Errno>) {
        let mut array = vec![IommuIovaRange::default(); capacity as usize];
        let mut cmd = IommuIoasIovaRanges {
            size: size_of::<IommuIoasIovaRanges>() as u32,
            ioas_id,
            num_iovas: capacity,
            allowed_iovas: array.as_mut_ptr() as u64,
            ..Default::default()
        };
        let result = self.ioctl(IOMMU_IOAS_IOVA_RANGES, &mut cmd);
        let ranges = array.iter().map(|r| (r.start, r.last)).collect();
        (cmd, ranges, result)
    }

    /// `IOMMU_OPTION`: the command as written back and the result.
    pub fn option(
        &self,
        option_id: u32,
        op: u16,
        object_id: u32,
        val64: u64,
    ) -> (IommuOption, Result<i32, Errno>) {
        let mut cmd = IommuOption {
            size: size_of::<IommuOption>() as u32,
            option_id,
            op,
            object_id,
            val64,
            ..Default::default()
        };
        let result = self.ioctl(IOMMU_OPTION, &mut cmd);
        (cmd, result)
    }

    /// The IOAS object itself, for attaching test domains and reading its areas. Drop it before
    /// destroying the IOAS.
    pub fn ioas(&self, id: u32) -> ObjRef<'_, Ioas> {
        self.ctx
            .objects()
            .get::<Ioas>(ObjId(id))
            .expect("IOAS exists")
    }

    /// Attach `domain` to the IOAS (what a HWPT does), filling it with the IOAS's areas.
    pub fn attach(&self, ioas_id: u32, domain: &Arc<RecordingDomain>) {
        self.ioas(ioas_id)
            .iopt()
            .add_domain(domain.as_mapper())
            .expect("attach domain");
    }

    /// The IOAS's areas as `(iova, length)`.
    pub fn areas(&self, ioas_id: u32) -> Vec<(u64, u64)> {
        self.ioas(ioas_id)
            .iopt()
            .areas()
            .iter()
            .map(|area| (area.iova.0, area.length))
            .collect()
    }
}
