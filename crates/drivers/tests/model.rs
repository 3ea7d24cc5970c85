//! Map and unmap through the core's `Domain` on each driver's real page table, against a
//! model: one entry per 4 KiB page and what it translates to.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use uiommu_core::*;
use uiommu_drivers::{create_default, DRIVER_NAMES};

/// Pages in the window the operations touch: 1 MiB, so requests stay below one 2 MiB leaf and
/// the model needs no large pages. Physical addresses are an odd number of pages away from
/// their IOVA, so no 8 KiB-or-larger leaf is ever possible either.
const PAGES: u64 = 256;
const PAGE: u64 = 0x1000;
const WINDOW: u64 = 0x4000_0000;

#[derive(Clone, Debug)]
enum Op {
    Map {
        first: u64,
        count: u64,
        shift: u64,
        write: bool,
    },
    Unmap {
        first: u64,
        count: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PAGES, 1..32u64, 0..64u64, any::<bool>()).prop_map(|(first, count, shift, write)| {
            Op::Map {
                first,
                count,
                shift: 2 * shift + 1,
                write,
            }
        }),
        (0..PAGES, 1..64u64).prop_map(|(first, count)| Op::Unmap { first, count }),
    ]
}

fn domain_of(driver: &str) -> Arc<Domain> {
    let core = IommuCore::default();
    let node = FwNode::new("iommu");
    core.register(
        "iommu",
        Some(node.clone()),
        create_default(driver, &node).unwrap(),
    )
    .unwrap();
    let dev = core
        .add_device(
            DeviceDesc::pci(
                common::pci("00:04.0", PciKind::Endpoint, false, false),
                None,
            ),
            common::spec(&node, &[0x20]),
        )
        .unwrap();
    core.domain_alloc(
        dev,
        DomainRequest::Paging {
            flags: PagingFlags::default(),
            data: None,
        },
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn map_and_unmap_follow_the_model(driver in 0..DRIVER_NAMES.len(), ops in prop::collection::vec(op(), 1..40)) {
        let domain = domain_of(DRIVER_NAMES[driver]);
        // page index -> physical address
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Map { first, count, shift, write } => {
                    let count = count.min(PAGES - first);
                    let iova = WINDOW + first * PAGE;
                    let pa = iova + shift * PAGE;
                    let prot = if write { Prot::READ_WRITE } else { Prot::READ };
                    let result = domain.map(Iova(iova), PhysAddr(pa), count * PAGE, prot);
                    let free = (first..first + count).all(|p| !model.contains_key(&p));
                    prop_assert_eq!(result.is_ok(), free, "{:?}", result);
                    if free {
                        for p in first..first + count {
                            model.insert(p, pa + (p - first) * PAGE);
                        }
                    } else {
                        prop_assert_eq!(result, Err(CoreError::Exists));
                    }
                }
                Op::Unmap { first, count } => {
                    let count = count.min(PAGES - first);
                    let got = domain.unmap(Iova(WINDOW + first * PAGE), count * PAGE);
                    // Stops at the first page that does not translate.
                    let run = (first..first + count).take_while(|p| model.contains_key(p)).count() as u64;
                    prop_assert_eq!(got, run * PAGE);
                    for p in first..first + run {
                        model.remove(&p);
                    }
                }
            }
            for p in 0..PAGES {
                let iova = WINDOW + p * PAGE + 0x18;
                prop_assert_eq!(domain.iova_to_phys(Iova(iova)), model.get(&p).map(|pa| PhysAddr(pa + 0x18)));
            }
        }
    }
}
