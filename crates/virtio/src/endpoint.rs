//! One endpoint's view of guest memory through the device: a [`vm_memory::Iommu`].
//!
//! Any rust-vmm device model can wrap guest memory in
//! `vm_memory::IommuMemory::new(mem, endpoint_iommu, true, ())` and DMA by IOVA; every access is
//! checked against the endpoint's domain (permissions included) and refused accesses are reported
//! on the device's event queue.
//!
//! Each view keeps an [`Iotlb`] of translations it has used. The device never touches it; instead
//! the view compares the device's translation generation (see [`crate::device`]) before using the
//! cache and flushes it when a request has removed or changed translations since. An access that
//! races with an UNMAP may still use the old translation, as DMA in flight does on hardware; any
//! access that starts after the UNMAP completed sees the new state.
//!
//! Locking: `iotlb` (read for hits, write for fills) is taken before the device's state lock;
//! `cached_generation` is written only with `iotlb` held for writing.

use crate::device::{FaultReason, VirtioIommu};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use vm_memory::iommu::{Error as IommuError, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Iommu, Iotlb, Permissions};

/// The DMA view of one endpoint, implementing [`vm_memory::Iommu`].
pub struct EndpointIommu {
    device: Arc<VirtioIommu>,
    endpoint: u32,
    iotlb: RwLock<Iotlb>,
    cached_generation: AtomicU64,
}

impl fmt::Debug for EndpointIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointIommu")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl VirtioIommu {
    /// The DMA view of `endpoint`, or `None` if the device does not manage it.
    pub fn endpoint_iommu(self: &Arc<Self>, endpoint: u32) -> Option<EndpointIommu> {
        if !self.core().params.endpoints.contains_key(&endpoint) {
            return None;
        }
        Some(EndpointIommu {
            device: Arc::clone(self),
            endpoint,
            iotlb: RwLock::new(Iotlb::new()),
            // Never a real generation's value until the first fill, so the first use flushes.
            cached_generation: AtomicU64::new(u64::MAX),
        })
    }
}

impl EndpointIommu {
    /// The endpoint id.
    pub fn endpoint(&self) -> u32 {
        self.endpoint
    }

    fn read_tlb(&self) -> RwLockReadGuard<'_, Iotlb> {
        self.iotlb.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Refills the IOTLB for `[iova, last]` from the device; returns the first fault.
    fn fill(&self, iova: u64, last: u64, access: Permissions) -> Option<(FaultReason, u64)> {
        let mut tlb = self.iotlb.write().unwrap_or_else(|e| e.into_inner());
        let result = self
            .device
            .core()
            .translate_range(self.endpoint, iova, last, access);
        if self.cached_generation.load(Ordering::Acquire) != result.generation {
            tlb.invalidate_all();
            self.cached_generation
                .store(result.generation, Ordering::Release);
        }
        for piece in &result.pieces {
            // Pieces are clipped to the request, whose length is a usize.
            let Ok(len) = usize::try_from(piece.last - piece.iova + 1) else {
                continue;
            };
            // set_mapping cannot fail; a failure would only mean a later miss.
            let _ = tlb.set_mapping(
                GuestAddress(piece.iova),
                GuestAddress(piece.phys),
                len,
                piece.perm,
            );
        }
        result.fault
    }
}

fn unresolved(iova: GuestAddress, length: usize, reason: String) -> IommuError {
    IommuError::CannotResolve {
        iova_range: IovaRange { base: iova, length },
        reason,
    }
}

impl Iommu for EndpointIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    /// Translates `[iova, iova + length)` for `access`.
    ///
    /// # Errors
    /// `CannotResolve` when the range wraps around the address space, or when any byte of it is
    /// unmapped, mapped without the needed permission, or the endpoint is not attached and not
    /// in bypass; the last three are also reported on the event queue.
    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        // The IOTLB adds base and length unchecked, so a wrapping range must stop here.
        let Some(end) = iova.0.checked_add(length as u64) else {
            return Err(unresolved(
                iova,
                length,
                "range wraps around the address space".into(),
            ));
        };
        if length == 0 {
            return Iotlb::lookup(self.read_tlb(), iova, 0, access)
                .map_err(|_| unresolved(iova, 0, "empty range".into()));
        }
        if self.cached_generation.load(Ordering::Acquire) == self.device.core().generation() {
            if let Ok(hit) = Iotlb::lookup(self.read_tlb(), iova, length, access) {
                return Ok(hit);
            }
        }
        if let Some((reason, address)) = self.fill(iova.0, end - 1, access) {
            self.device
                .report_fault(self.endpoint, reason, access, address);
            return Err(unresolved(
                iova,
                length,
                format!("{reason:?} fault at {address:#x}"),
            ));
        }
        Iotlb::lookup(self.read_tlb(), iova, length, access)
            .map_err(|_| unresolved(iova, length, "translation changed concurrently".into()))
    }
}
