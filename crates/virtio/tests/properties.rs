//! Property tests: request sequences against a simple model, and arbitrary bytes.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use uiommu_virtio::spec::{Status, VIRTIO_IOMMU_MAP_F_READ, VIRTIO_IOMMU_MAP_F_WRITE};
use uiommu_virtio::{Completion, MAX_REQUEST_SIZE};
use vm_memory::{GuestAddress, Iommu, Permissions};

const PAGE: u64 = 0x1000;

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, pages: u64, flags: u32 },
    Unmap { page: u64, pages: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..48, 1u64..6, 1u32..4).prop_map(|(page, pages, flags)| Op::Map {
            page,
            pages,
            flags
        }),
        (0u64..48, 1u64..10).prop_map(|(page, pages)| Op::Unmap { page, pages }),
    ]
}

fn allows(flags: u32, access: Permissions) -> bool {
    let read = flags & VIRTIO_IOMMU_MAP_F_READ != 0;
    let write = flags & VIRTIO_IOMMU_MAP_F_WRITE != 0;
    match access {
        Permissions::Read => read,
        Permissions::Write => write,
        Permissions::ReadWrite => read && write,
        Permissions::No => true,
    }
}

proptest! {
    // Model: start page -> (last page, phys page, flags); statuses and translations (through the
    // device and through a cached endpoint IOTLB) must match it after every request.
    #[test]
    fn map_unmap_sequences_match_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dev = Arc::new(device());
        ok(&dev, &attach(1, EP, 0));
        let iommu = dev.endpoint_iommu(EP).unwrap();
        let mut model: BTreeMap<u64, (u64, u64, u32)> = BTreeMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Map { page, pages, flags } => {
                    let last = page + pages - 1;
                    let clash = model.iter().any(|(&s, &(e, _, _))| s <= last && e >= page);
                    let phys = 0x1000 + i as u64 * 8;
                    let req = map(1, page * PAGE, (last + 1) * PAGE - 1, phys * PAGE, flags);
                    let expected = if clash { Status::Inval } else { Status::Ok };
                    prop_assert_eq!(status(&dev, &req), Some(expected));
                    if !clash {
                        model.insert(page, (last, phys, flags));
                    }
                }
                Op::Unmap { page, pages } => {
                    let last = page + pages - 1;
                    let splits = model
                        .iter()
                        .any(|(&s, &(e, _, _))| s <= last && e >= page && (s < page || e > last));
                    let expected = if splits { Status::Range } else { Status::Ok };
                    prop_assert_eq!(status(&dev, &unmap(1, page * PAGE, (last + 1) * PAGE - 1)), Some(expected));
                    if !splits {
                        model.retain(|&s, &mut (e, _, _)| !(s >= page && e <= last));
                    }
                }
            }
            for page in 0..56u64 {
                let iova = page * PAGE + 0x10;
                for access in [Permissions::Read, Permissions::Write] {
                    let expected = model
                        .range(..=page)
                        .next_back()
                        .filter(|(_, &(e, _, f))| e >= page && allows(f, access))
                        .map(|(&s, &(_, phys, _))| (phys + page - s) * PAGE + 0x10);
                    prop_assert_eq!(dev.translate(EP, iova, access).ok(), expected);
                    let cached = iommu
                        .translate(GuestAddress(iova), 1, access)
                        .ok()
                        .and_then(|mut it| it.next())
                        .map(|r| r.base.0);
                    prop_assert_eq!(cached, expected);
                }
            }
        }
    }

    // Whatever the bytes, the device answers (or declines) without panicking, and an answer
    // always fits the writable part it was given.
    #[test]
    fn arbitrary_requests_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..=MAX_REQUEST_SIZE + 1),
        type_ in 0u8..7,
        writable in 0usize..200,
    ) {
        let dev = device();
        let mut req = bytes;
        if let Some(first) = req.first_mut() {
            *first = type_;
        }
        let c = dev.process(&req, writable);
        if let Completion::Answered { properties, tail_offset, .. } = &c {
            prop_assert!(c.used_len() <= writable);
            prop_assert!(properties.len() <= *tail_offset);
        }
    }
}
