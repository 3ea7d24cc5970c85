//! DMA through a uiommu-core [`Domain`]: the production [`DmaSpace`].
//!
//! The project's convention is that a domain's "physical" addresses are virtual addresses of
//! this process (iommufd maps a page by its user VA). Every access is translated page by page
//! with [`Domain::translate`], checked against the mapping's permissions, and only then
//! performed on host memory through [`crate::host_memory`], which never dereferences an address
//! itself. Nothing moves unless the whole range translates with the needed permission.
//!
//! The domain can be swapped at any time ([`DomainDma::attach`]), as VFIO attaches a device to
//! an IOAS or HWPT, detaches it, or resets it to blocking.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use uiommu_core::{Domain, Iova};

use crate::dma::{range_last, Access, DmaFault, DmaSpace};
use crate::host_memory::{self, HostRange};

/// Translation granule when a domain reports no page size (identity domains).
const DEFAULT_GRANULE: u64 = 4096;

/// A device's DMA through whatever domain it is attached to; with none attached, every access
/// is a translation fault (a blocking domain).
///
/// Locking: `domain` is read-locked for the whole of each access, so [`DomainDma::attach`]
/// (write lock) returns only once no DMA through the old domain is in flight.
#[derive(Debug, Default)]
pub struct DomainDma {
    domain: RwLock<Option<Arc<Domain>>>,
}

impl DomainDma {
    /// DMA through `domain`, or blocked with `None`.
    pub fn new(domain: Option<Arc<Domain>>) -> Self {
        DomainDma {
            domain: RwLock::new(domain),
        }
    }

    /// Switch to `domain` (`None` blocks all DMA) once in-flight accesses finished; returns the
    /// previous domain.
    pub fn attach(&self, domain: Option<Arc<Domain>>) -> Option<Arc<Domain>> {
        let mut guard = self.domain.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, domain)
    }

    /// The domain DMA currently goes through.
    pub fn domain(&self) -> Option<Arc<Domain>> {
        self.lock().clone()
    }

    fn lock(&self) -> RwLockReadGuard<'_, Option<Arc<Domain>>> {
        self.domain.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The host ranges behind `[iova, iova + len)`, merged where contiguous, or the first fault.
    fn translate(
        domain: Option<&Domain>,
        iova: Iova,
        len: u64,
        access: Access,
    ) -> Result<Vec<HostRange>, DmaFault> {
        let mut ranges: Vec<HostRange> = Vec::new();
        if len == 0 {
            return Ok(ranges);
        }
        let last = range_last(iova, len, access)?;
        let Some(domain) = domain else {
            return Err(DmaFault::Translation {
                iova: iova.0,
                access,
            });
        };
        let granule = domain.min_page_size().unwrap_or(DEFAULT_GRANULE);
        let mut at = iova.0;
        loop {
            let (phys, prot) = domain
                .translate(Iova(at))
                .ok_or(DmaFault::Translation { iova: at, access })?;
            if !prot.contains(access.prot()) {
                return Err(DmaFault::Permission { iova: at, access });
            }
            // Up to the end of this granule or of the access, whichever comes first.
            let piece_last = (at | (granule - 1)).min(last);
            let piece = piece_last - at + 1;
            match ranges.last_mut() {
                Some((start, n)) if *start + *n == phys.0 => *n += piece,
                _ => ranges.push((phys.0, piece)),
            }
            if piece_last == last {
                return Ok(ranges);
            }
            at = piece_last + 1;
        }
    }
}

/// The IOVA `done` bytes into an access at `iova`.
fn fault_at(iova: Iova, done: u64, access: Access) -> DmaFault {
    DmaFault::Memory {
        iova: iova.0.wrapping_add(done),
        access,
    }
}

impl DmaSpace for DomainDma {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        let guard = self.lock();
        let src = Self::translate(guard.as_deref(), iova, buf.len() as u64, Access::Read)?;
        host_memory::read(&src, buf).map_err(|f| fault_at(iova, f.done, Access::Read))
    }

    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
        let guard = self.lock();
        let dst = Self::translate(guard.as_deref(), iova, data.len() as u64, Access::Write)?;
        host_memory::write(&dst, data).map_err(|f| fault_at(iova, f.done, Access::Write))
    }

    fn copy(&self, src: Iova, dst: Iova, len: u64) -> Result<(), DmaFault> {
        let guard = self.lock();
        let from = Self::translate(guard.as_deref(), src, len, Access::Read)?;
        let to = Self::translate(guard.as_deref(), dst, len, Access::Write)?;
        // The kernel copies source to destination in one pass; a failure part-way cannot tell
        // which side faulted, so it is reported against the destination, which was written.
        host_memory::copy(&from, &to).map_err(|f| fault_at(dst, f.done, Access::Write))
    }
}
