//! Helpers shared by the driver tests: PCI descriptions and a raw page-table walker.
#![allow(dead_code)] // each test file uses a different part of it

use uiommu_core::*;
use uiommu_drivers::PagingDomain;
use uiommu_pgtable::{Entry, Format};

/// A PCIe function.
pub fn pci(addr: &str, kind: PciKind, multifunction: bool, acs: bool) -> PciFunction {
    PciFunction {
        address: addr.parse().unwrap(),
        kind,
        multifunction,
        acs,
        dma_aliases: Vec::new(),
    }
}

/// A fwspec naming `node` with `ids`.
pub fn spec(node: &FwNode, ids: &[u32]) -> Option<Fwspec> {
    Some(Fwspec {
        fwnode: node.clone(),
        ids: ids.to_vec(),
    })
}

/// The driver's paging domain behind a core domain.
pub fn paging<F: Format>(domain: &Domain) -> &PagingDomain<F> {
    domain
        .ops()
        .as_any()
        .downcast_ref()
        .expect("a paging domain of this format")
}

/// Walks the table from its root the way the IOMMU's walker reads memory, and returns the
/// level and raw bits of the leaf PTE translating `iova`. Table pointers are followed with
/// the format's own decoding; the leaf bits are returned raw for the test to check.
pub fn leaf_pte<F: Format>(domain: &PagingDomain<F>, iova: u64) -> Option<(u32, u64)> {
    let table = domain.table();
    let format = table.format();
    let mut table_pa = table.root_phys();
    let mut level = format.top_level();
    loop {
        let shift = format.granule_lg2() + 9 * level;
        let index = (iova >> shift) & 511;
        let pte = table.read_phys(table_pa + index * 8)?;
        match format.decode(level, pte) {
            Entry::Empty => return None,
            Entry::Leaf { .. } => return Some((level, pte)),
            Entry::Table { pa } => {
                table_pa = pa;
                level = level.checked_sub(1)?;
            }
        }
    }
}

/// Every dirty range `domain` reports in `[iova, iova + len)`, clearing unless `keep`.
pub fn dirty(domain: &Domain, iova: u64, len: u64, keep: bool) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    domain
        .ops()
        .read_and_clear_dirty(Iova(iova), len, keep, &mut |at, n| out.push((at.0, n)))
        .unwrap();
    out
}
