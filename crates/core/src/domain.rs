//! Domains: what a group of devices is attached to. A [`Domain`] pairs the core's bookkeeping
//! (type, owning instance) with the driver's [`DomainOps`], and adds Linux's generic
//! `iommu_map()` / `iommu_unmap()` logic: choose the largest page size that fits the alignment
//! of both addresses and the remaining length, and undo a partial map on failure.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::addr::{Iova, PhysAddr, Prot};
use crate::driver::{DomainOps, DomainType, IommuOps};
use crate::error::{CoreError, Result};
use crate::InstanceId;

/// A process-wide domain number, for display and for matching domains in tests.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DomainId(pub u64);

static NEXT_DOMAIN_ID: AtomicU64 = AtomicU64::new(1);

/// A domain allocated by a driver through the core. Shared as `Arc<Domain>`: groups hold the
/// domains they are attached to, and users (iommufd) hold the domains they allocated.
pub struct Domain {
    id: DomainId,
    ty: DomainType,
    instance: InstanceId,
    driver: Arc<dyn IommuOps>,
    ops: Box<dyn DomainOps>,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.id)
            .field("type", &self.ty)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Domain {
    pub(crate) fn new(
        ty: DomainType,
        instance: InstanceId,
        driver: Arc<dyn IommuOps>,
        ops: Box<dyn DomainOps>,
    ) -> Domain {
        Domain {
            id: DomainId(NEXT_DOMAIN_ID.fetch_add(1, Ordering::Relaxed)),
            ty,
            instance,
            driver,
            ops,
        }
    }

    /// The domain's number.
    pub fn id(&self) -> DomainId {
        self.id
    }

    /// The domain's type.
    pub fn ty(&self) -> DomainType {
        self.ty
    }

    /// The instance whose driver allocated the domain; only its devices can attach.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// The driver that allocated the domain; only groups of that driver can attach to it.
    pub fn driver(&self) -> &Arc<dyn IommuOps> {
        &self.driver
    }

    /// The driver's operations, for calls the core does not wrap.
    pub fn ops(&self) -> &dyn DomainOps {
        self.ops.as_ref()
    }

    /// The smallest page size the domain maps, if it translates at all.
    pub fn min_page_size(&self) -> Option<u64> {
        let bitmap = self.ops.pgsize_bitmap();
        (bitmap != 0).then(|| 1u64 << bitmap.trailing_zeros())
    }

    /// Map `[iova, iova + size)` to `[paddr, paddr + size)` (Linux `iommu_map()`).
    ///
    /// # Errors
    /// In Linux's order: `Invalid` for a domain that does not translate, `NoDevice` for a
    /// driver without page sizes, `Invalid` when `iova`, `paddr` or `size` is not aligned to the
    /// smallest page size or the range wraps; then the driver's error, after everything this
    /// call mapped has been unmapped again. `size == 0` maps nothing and succeeds.
    pub fn map(&self, iova: Iova, paddr: PhysAddr, size: u64, prot: Prot) -> Result<()> {
        if !self.ty.is_paging() {
            return Err(CoreError::Invalid("domain does not translate"));
        }
        let min = self.min_page_size().ok_or(CoreError::NoDevice)?;
        if (iova.0 | paddr.0 | size) & (min - 1) != 0 {
            return Err(CoreError::Invalid(
                "range not aligned to the smallest page size",
            ));
        }
        if iova.checked_add(size).is_none() && size != 0 || paddr.checked_add(size).is_none() {
            return Err(CoreError::Invalid("range wraps"));
        }
        let mut mapped = 0u64;
        while mapped < size {
            let (cur_iova, cur_paddr) = (Iova(iova.0 + mapped), PhysAddr(paddr.0 + mapped));
            let (pgsize, count) = self.pick_page_size(cur_iova.0 | cur_paddr.0, size - mapped);
            let (done, result) = self.ops.map_pages(cur_iova, cur_paddr, pgsize, count, prot);
            mapped += done;
            if let Err(err) = result {
                self.unmap(iova, mapped);
                return Err(err);
            }
            if done == 0 {
                self.unmap(iova, mapped);
                return Err(CoreError::Io("driver mapped nothing and reported no error"));
            }
        }
        self.ops.iotlb_sync();
        Ok(())
    }

    /// Unmap `[iova, iova + size)` and return how many bytes were unmapped (Linux
    /// `iommu_unmap()`): 0 for a misaligned range or a domain that does not translate; less than
    /// `size` when the driver stops at something that is not mapped.
    pub fn unmap(&self, iova: Iova, size: u64) -> u64 {
        let Some(min) = self.min_page_size().filter(|_| self.ty.is_paging()) else {
            return 0;
        };
        if (iova.0 | size) & (min - 1) != 0 || iova.checked_add(size).is_none() && size != 0 {
            return 0;
        }
        let mut unmapped = 0u64;
        while unmapped < size {
            let cur = Iova(iova.0 + unmapped);
            let (pgsize, count) = self.pick_page_size(cur.0, size - unmapped);
            let done = self.ops.unmap_pages(cur, pgsize, count);
            if done == 0 {
                break;
            }
            unmapped += done;
        }
        self.ops.iotlb_sync();
        unmapped
    }

    /// Translate an IOVA (Linux `iommu_iova_to_phys()`): identity domains return the IOVA,
    /// blocked domains nothing.
    pub fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        match self.ty {
            DomainType::Identity => Some(PhysAddr(iova.0)),
            DomainType::Blocked => None,
            _ => self.ops.iova_to_phys(iova),
        }
    }

    /// Translate an IOVA together with the access its mapping grants, for emulated devices
    /// that must tell a permission fault from a translation fault: identity domains grant
    /// everything, blocked domains translate nothing (see [`DomainOps::iova_to_phys_prot`]).
    pub fn translate(&self, iova: Iova) -> Option<(PhysAddr, Prot)> {
        match self.ty {
            DomainType::Identity => Some((PhysAddr(iova.0), Prot::READ_WRITE)),
            DomainType::Blocked => None,
            _ => self.ops.iova_to_phys_prot(iova),
        }
    }

    /// The largest supported page size for a run starting at an address whose alignment is
    /// `addr_merge` (IOVA | physical address) with `size` bytes left, and how many pages of it
    /// to map before a larger size becomes possible (Linux `iommu_pgsize()`).
    ///
    /// Callers guarantee `size` and `addr_merge` are multiples of the smallest page size.
    fn pick_page_size(&self, addr_merge: u64, size: u64) -> (u64, u64) {
        let bitmap = self.ops.pgsize_bitmap();
        // Sizes not larger than what is left.
        let mut candidates = bitmap & low_mask(63 - size.leading_zeros());
        // Sizes not larger than the alignment of both addresses.
        if addr_merge != 0 {
            candidates &= low_mask(addr_merge.trailing_zeros());
        }
        let idx = 63 - candidates.leading_zeros();
        let pgsize = 1u64 << idx;
        let mut run = size;
        // Stop at the next boundary where a larger page size would fit.
        let larger = bitmap & !low_mask(idx);
        if larger != 0 {
            let next = 1u64 << larger.trailing_zeros();
            let offset = next - (addr_merge & (next - 1));
            if offset.checked_add(next).is_some_and(|end| end <= size) {
                run = offset;
            }
        }
        (pgsize, run >> idx)
    }
}

/// Bits `0..=bit` set.
fn low_mask(bit: u32) -> u64 {
    if bit >= 63 {
        u64::MAX
    } else {
        (1u64 << (bit + 1)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::any::Any;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A page table that records every call, with 4 KiB and 2 MiB pages.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<(u64, u64, u64)>>,
        pages: Mutex<BTreeMap<u64, (u64, u64)>>,
        fail_at: Option<u64>,
    }

    impl DomainOps for Recorder {
        fn pgsize_bitmap(&self) -> u64 {
            (1 << 12) | (1 << 21)
        }
        fn map_pages(
            &self,
            iova: Iova,
            pa: PhysAddr,
            pgsize: u64,
            n: u64,
            _: Prot,
        ) -> (u64, Result<()>) {
            self.calls.lock().unwrap().push((iova.0, pgsize, n));
            let mut pages = self.pages.lock().unwrap();
            for i in 0..n {
                let at = iova.0 + i * pgsize;
                if self.fail_at == Some(at) {
                    return (i * pgsize, Err(CoreError::NoMemory));
                }
                pages.insert(at, (pa.0 + i * pgsize, pgsize));
            }
            (n * pgsize, Ok(()))
        }
        fn unmap_pages(&self, iova: Iova, pgsize: u64, n: u64) -> u64 {
            let mut pages = self.pages.lock().unwrap();
            let mut done = 0;
            for i in 0..n {
                if pages.remove(&(iova.0 + i * pgsize)).is_none() {
                    break;
                }
                done += pgsize;
            }
            done
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    /// A driver that only exists to own the test domains.
    #[derive(Debug)]
    struct NoDriver;

    impl IommuOps for NoDriver {
        fn name(&self) -> &str {
            "none"
        }
        fn probe_device(&self, _: &crate::DeviceInfo<'_>) -> Result<InstanceId> {
            Err(CoreError::NoDevice)
        }
        fn domain_alloc(
            &self,
            _: &crate::DeviceInfo<'_>,
            _: crate::DomainRequest<'_>,
        ) -> Result<Box<dyn DomainOps>> {
            Err(CoreError::NotSupported)
        }
    }

    fn domain_of(ty: DomainType, rec: Recorder) -> Domain {
        Domain::new(ty, InstanceId(0), Arc::new(NoDriver), Box::new(rec))
    }

    fn domain(fail_at: Option<u64>) -> Domain {
        let rec = Recorder {
            fail_at,
            ..Recorder::default()
        };
        domain_of(DomainType::Unmanaged, rec)
    }

    fn recorder(d: &Domain) -> &Recorder {
        d.ops().as_any().downcast_ref().unwrap()
    }

    #[test]
    fn map_uses_large_pages_only_where_both_addresses_align() {
        let d = domain(None);
        // 4 KiB below the 2 MiB boundary, then one 2 MiB page, then a 4 KiB tail.
        let start = 0x20_0000 - 0x1000;
        d.map(
            Iova(start),
            PhysAddr(start),
            0x1000 + 0x20_0000 + 0x1000,
            Prot::READ,
        )
        .unwrap();
        assert_eq!(
            *recorder(&d).calls.lock().unwrap(),
            vec![
                (start, 0x1000, 1),
                (0x20_0000, 0x20_0000, 1),
                (0x40_0000, 0x1000, 1)
            ]
        );
        // Misaligned physical address: 4 KiB pages only.
        let d = domain(None);
        d.map(Iova(0x20_0000), PhysAddr(0x1000), 0x20_0000, Prot::READ)
            .unwrap();
        assert_eq!(
            *recorder(&d).calls.lock().unwrap(),
            vec![(0x20_0000, 0x1000, 512)]
        );
    }

    #[test]
    fn map_rejects_misalignment_and_non_paging_domains() {
        let d = domain(None);
        assert!(matches!(
            d.map(Iova(0x800), PhysAddr(0), 0x1000, Prot::READ),
            Err(CoreError::Invalid(_))
        ));
        assert!(matches!(
            d.map(Iova(u64::MAX - 0xfff), PhysAddr(0), 0x2000, Prot::READ),
            Err(CoreError::Invalid(_))
        ));
        let blocked = domain_of(DomainType::Blocked, Recorder::default());
        assert!(matches!(
            blocked.map(Iova(0), PhysAddr(0), 0x1000, Prot::READ),
            Err(CoreError::Invalid(_))
        ));
    }

    #[test]
    fn failed_map_leaves_nothing_mapped() {
        let d = domain(Some(0x3000));
        assert_eq!(
            d.map(Iova(0), PhysAddr(0), 0x10000, Prot::READ),
            Err(CoreError::NoMemory)
        );
        assert!(recorder(&d).pages.lock().unwrap().is_empty());
    }

    #[test]
    fn unmap_stops_at_holes_and_translation_follows_mappings() {
        let d = domain(None);
        d.map(Iova(0x10000), PhysAddr(0x50000), 0x2000, Prot::READ)
            .unwrap();
        assert_eq!(d.unmap(Iova(0x10000), 0x4000), 0x2000);
        assert_eq!(d.unmap(Iova(0x10000), 0x1000), 0);
        assert_eq!(
            d.unmap(Iova(0x10800), 0x1000),
            0,
            "misaligned unmap does nothing"
        );
        let identity = domain_of(DomainType::Identity, Recorder::default());
        assert_eq!(identity.iova_to_phys(Iova(0x1234)), Some(PhysAddr(0x1234)));
        assert_eq!(
            identity.translate(Iova(0x1234)),
            Some((PhysAddr(0x1234), Prot::READ_WRITE))
        );
        let blocked = domain_of(DomainType::Blocked, Recorder::default());
        assert_eq!(blocked.translate(Iova(0x1234)), None);
    }
}
