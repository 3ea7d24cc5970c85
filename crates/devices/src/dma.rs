//! The DMA seam: everything a device model reads or writes in memory goes through a
//! [`DmaSpace`], addressed by IOVA, and comes back as a [`DmaFault`] when the IOMMU would not
//! let it through. A model never sees host addresses.
//!
//! Two spaces live here: [`MemoryDma`], a sparse page map for unit tests, and [`BusMasterDma`],
//! the gate a PCI function puts in front of any space so that a function whose COMMAND register
//! has bus mastering off cannot DMA at all. The space over a real uiommu-core domain is in
//! [`crate::domain_dma`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uiommu_core::{Iova, Prot};

/// Which way a DMA access goes, seen from the device.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

impl Access {
    /// The permission a mapping needs for this access.
    pub fn prot(self) -> Prot {
        match self {
            Access::Read => Prot::READ,
            Access::Write => Prot::WRITE,
        }
    }
}

/// Why a DMA access did not happen. Faults are reported before any byte of the access moved,
/// except [`DmaFault::Memory`], which the host may report part-way.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DmaFault {
    /// The IOMMU has no translation for the IOVA (an unmapped page, a blocked domain, or no
    /// domain at all).
    #[error("IOMMU translation fault at IOVA {iova:#x} ({access:?})")]
    Translation {
        /// The first IOVA that did not translate.
        iova: u64,
        /// The access attempted.
        access: Access,
    },
    /// The IOVA translates, but its mapping does not grant the access.
    #[error("IOMMU permission fault at IOVA {iova:#x} ({access:?})")]
    Permission {
        /// The first IOVA whose mapping refused the access.
        iova: u64,
        /// The access attempted.
        access: Access,
    },
    /// The function's COMMAND register has bus mastering disabled: no request leaves it.
    #[error("bus mastering is disabled ({access:?})")]
    BusMasterDisabled {
        /// The access attempted.
        access: Access,
    },
    /// The IOVA translates, but the memory behind it is not there (the host mapping went away).
    #[error("memory behind IOVA {iova:#x} is not accessible ({access:?})")]
    Memory {
        /// The first IOVA of the access that failed.
        iova: u64,
        /// The access attempted.
        access: Access,
    },
}

impl DmaFault {
    /// The access that faulted.
    pub fn access(&self) -> Access {
        match *self {
            DmaFault::Translation { access, .. }
            | DmaFault::Permission { access, .. }
            | DmaFault::BusMasterDisabled { access }
            | DmaFault::Memory { access, .. } => access,
        }
    }
}

/// A device's view of memory through its IOMMU.
///
/// Contract for implementations: translation and permissions are checked for the whole range
/// before any byte moves, so a fault leaves memory untouched (only [`DmaFault::Memory`] may
/// come part-way); no input may cause undefined behaviour. Ranges that wrap past `u64::MAX`
/// are translation faults. Methods take `&self`: a device may DMA from several threads.
pub trait DmaSpace: Send + Sync + fmt::Debug {
    /// Read `buf.len()` bytes at `iova`.
    ///
    /// # Errors
    /// The first fault of the range.
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault>;

    /// Write `data` at `iova`.
    ///
    /// # Errors
    /// The first fault of the range.
    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), DmaFault>;

    /// Copy `len` bytes from `src` to `dst`, as a DMA engine does: the source range is checked
    /// for reading and the destination for writing before anything moves. Overlapping ranges
    /// give an unspecified (but memory-safe) result, as on hardware.
    ///
    /// # Errors
    /// The source's first fault, else the destination's.
    fn copy(&self, src: Iova, dst: Iova, len: u64) -> Result<(), DmaFault>;
}

/// The last IOVA of `len > 0` bytes at `iova`, or the translation fault of a wrapping range.
pub(crate) fn range_last(iova: Iova, len: u64, access: Access) -> Result<u64, DmaFault> {
    uiommu_core::inclusive_last(iova.0, len).ok_or(DmaFault::Translation {
        iova: iova.0,
        access,
    })
}

/// Test memory: IOVA-addressed 4 KiB pages, each with its own permissions, no host memory
/// involved. Unmapped pages fault with [`DmaFault::Translation`], pages without the needed
/// permission with [`DmaFault::Permission`].
///
/// Locking: one mutex over the page map, held for a whole access, so accesses are atomic with
/// respect to each other.
#[derive(Debug, Default)]
pub struct MemoryDma {
    pages: Mutex<PageMap>,
}

/// One test page: its permissions and bytes.
type Page = (Prot, Box<[u8; MemoryDma::PAGE_SIZE]>);
/// Test pages by page number.
type PageMap = BTreeMap<u64, Page>;

impl MemoryDma {
    /// The page size of the map.
    pub const PAGE_SIZE: usize = 4096;

    /// An empty memory: every access faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn pages(&self) -> MutexGuard<'_, PageMap> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Map the pages covering `[iova, iova + len)`, zero-filled, with `prot`; pages already
    /// mapped keep their contents and take the new permissions.
    pub fn map(&self, iova: u64, len: u64, prot: Prot) {
        let page = Self::PAGE_SIZE as u64;
        let Some(last) = uiommu_core::inclusive_last(iova, len) else {
            return;
        };
        let mut pages = self.pages();
        for index in (iova / page)..=(last / page) {
            pages
                .entry(index)
                .and_modify(|entry| entry.0 = prot)
                .or_insert_with(|| (prot, Box::new([0; Self::PAGE_SIZE])));
        }
    }

    /// Unmap the pages covering `[iova, iova + len)`.
    pub fn unmap(&self, iova: u64, len: u64) {
        let page = Self::PAGE_SIZE as u64;
        let Some(last) = uiommu_core::inclusive_last(iova, len) else {
            return;
        };
        self.pages()
            .retain(|&k, _| k < iova / page || k > last / page);
    }

    /// Checks `[iova, iova + len)` for `access`; the pages must be locked by the caller.
    fn check(pages: &PageMap, iova: Iova, len: u64, access: Access) -> Result<(), DmaFault> {
        if len == 0 {
            return Ok(());
        }
        let page = Self::PAGE_SIZE as u64;
        let last = range_last(iova, len, access)?;
        for index in (iova.0 / page)..=(last / page) {
            let at = (index * page).max(iova.0);
            match pages.get(&index) {
                None => return Err(DmaFault::Translation { iova: at, access }),
                Some((prot, _)) if !prot.contains(access.prot()) => {
                    return Err(DmaFault::Permission { iova: at, access })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Calls `each(page bytes, range in the page, offset in the access)` for every page piece of
    /// a checked range.
    fn for_each_piece(
        pages: &mut PageMap,
        iova: Iova,
        len: usize,
        mut each: impl FnMut(&mut [u8; Self::PAGE_SIZE], std::ops::Range<usize>, usize),
    ) {
        let mut done = 0usize;
        while done < len {
            let at = iova.0 + done as u64;
            let in_page = (at % Self::PAGE_SIZE as u64) as usize;
            let n = (Self::PAGE_SIZE - in_page).min(len - done);
            if let Some((_, bytes)) = pages.get_mut(&(at / Self::PAGE_SIZE as u64)) {
                each(bytes, in_page..in_page + n, done);
            }
            done += n;
        }
    }
}

impl DmaSpace for MemoryDma {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        let mut pages = self.pages();
        Self::check(&pages, iova, buf.len() as u64, Access::Read)?;
        Self::for_each_piece(&mut pages, iova, buf.len(), |page, range, at| {
            let n = range.len();
            buf[at..at + n].copy_from_slice(&page[range]);
        });
        Ok(())
    }

    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
        let mut pages = self.pages();
        Self::check(&pages, iova, data.len() as u64, Access::Write)?;
        Self::for_each_piece(&mut pages, iova, data.len(), |page, range, at| {
            let n = range.len();
            page[range].copy_from_slice(&data[at..at + n]);
        });
        Ok(())
    }

    fn copy(&self, src: Iova, dst: Iova, len: u64) -> Result<(), DmaFault> {
        let mut pages = self.pages();
        Self::check(&pages, src, len, Access::Read)?;
        Self::check(&pages, dst, len, Access::Write)?;
        // Checked above: both ranges are mapped, so `len` fits in memory we hold.
        let len = usize::try_from(len).map_err(|_| DmaFault::Translation {
            iova: src.0,
            access: Access::Read,
        })?;
        let mut bounce = vec![0u8; len];
        Self::for_each_piece(&mut pages, src, len, |page, range, at| {
            let n = range.len();
            bounce[at..at + n].copy_from_slice(&page[range]);
        });
        Self::for_each_piece(&mut pages, dst, len, |page, range, at| {
            let n = range.len();
            page[range].copy_from_slice(&bounce[at..at + n]);
        });
        Ok(())
    }
}

/// A PCI function's bus-master gate in front of its DMA space: with COMMAND.MASTER clear,
/// every access fails with [`DmaFault::BusMasterDisabled`] before reaching the IOMMU.
///
/// Locking: the enable bit is an atomic the function's config space flips.
#[derive(Debug)]
pub struct BusMasterDma {
    inner: Arc<dyn DmaSpace>,
    enabled: Arc<AtomicBool>,
}

impl BusMasterDma {
    /// Gate `inner` on `enabled`.
    pub fn new(inner: Arc<dyn DmaSpace>, enabled: Arc<AtomicBool>) -> Self {
        BusMasterDma { inner, enabled }
    }

    fn gate(&self, access: Access) -> Result<(), DmaFault> {
        if self.enabled.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(DmaFault::BusMasterDisabled { access })
        }
    }
}

impl DmaSpace for BusMasterDma {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        self.gate(Access::Read)?;
        self.inner.read(iova, buf)
    }

    fn write(&self, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
        self.gate(Access::Write)?;
        self.inner.write(iova, data)
    }

    fn copy(&self, src: Iova, dst: Iova, len: u64) -> Result<(), DmaFault> {
        self.gate(Access::Read)?;
        self.inner.copy(src, dst, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_dma_checks_the_whole_range_before_moving_bytes() {
        let mem = MemoryDma::new();
        mem.map(0x1000, 0x1000, Prot::READ_WRITE);
        mem.map(0x2000, 0x1000, Prot::READ);
        // Crosses into a read-only page: permission fault, first page untouched.
        assert_eq!(
            mem.write(Iova(0x1ff0), &[7; 0x20]),
            Err(DmaFault::Permission {
                iova: 0x2000,
                access: Access::Write
            })
        );
        let mut buf = [1u8; 0x10];
        mem.read(Iova(0x1ff0), &mut buf).unwrap();
        assert_eq!(buf, [0; 0x10]);
        assert_eq!(
            mem.read(Iova(0x2ff8), &mut [0; 0x10]),
            Err(DmaFault::Translation {
                iova: 0x3000,
                access: Access::Read
            })
        );
        assert!(matches!(
            mem.read(Iova(u64::MAX), &mut [0; 2]),
            Err(DmaFault::Translation { .. })
        ));
    }

    #[test]
    fn memory_dma_copy_crosses_pages() {
        let mem = MemoryDma::new();
        mem.map(0x1000, 0x3000, Prot::READ_WRITE);
        let data: Vec<u8> = (0..0x1800u32).map(|i| (i % 251) as u8).collect();
        mem.write(Iova(0x1400), &data).unwrap();
        mem.copy(Iova(0x1400), Iova(0x2a00), 0x1600).unwrap();
        let mut out = vec![0u8; 0x1600];
        mem.read(Iova(0x2a00), &mut out).unwrap();
        assert_eq!(out, data[..0x1600]);
        mem.unmap(0x3000, 0x1000);
        assert!(matches!(
            mem.copy(Iova(0x1000), Iova(0x2800), 0x1000),
            Err(DmaFault::Translation { iova: 0x3000, .. })
        ));
    }

    #[test]
    fn bus_master_gate_blocks_every_access_while_clear() {
        let mem = Arc::new(MemoryDma::new());
        mem.map(0, 0x1000, Prot::READ_WRITE);
        let enabled = Arc::new(AtomicBool::new(false));
        let gated = BusMasterDma::new(mem, Arc::clone(&enabled));
        assert_eq!(
            gated.write(Iova(0), &[1]),
            Err(DmaFault::BusMasterDisabled {
                access: Access::Write
            })
        );
        enabled.store(true, Ordering::Release);
        gated.write(Iova(0), &[1]).unwrap();
    }
}
