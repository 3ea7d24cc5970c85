//! Random descriptor chains against a model memcpy: the channel must copy exactly what a
//! sequential memcpy of the first DMACOUNT descriptors copies, and on the first fault stop
//! with the right CHANERR bit, CHANSTS at the last completed descriptor, memory untouched by
//! the faulting descriptor.

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use uiommu_core::{Iova, Prot};
use uiommu_devices::ioat::{regs::*, IoatConfig};
use uiommu_devices::{DmaSpace, MemoryDma};

const DESC: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const PAGES: usize = 16;
const PAGE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageKind {
    ReadWrite,
    ReadOnly,
    Unmapped,
}

#[derive(Clone, Debug)]
struct Copy {
    src: usize,
    dst: usize,
    size: usize,
    null: bool,
}

fn copy_strategy() -> impl Strategy<Value = Copy> {
    (
        0..PAGES * PAGE,
        0..PAGES * PAGE,
        1usize..6000,
        prop::bool::weighted(0.15),
    )
        .prop_map(|(src, dst, size, null)| {
            let size = size.min(PAGES * PAGE - src).min(PAGES * PAGE - dst).max(1);
            Copy {
                src,
                dst,
                size,
                null,
            }
        })
        .prop_filter("source and destination must not overlap", |c| {
            c.null || c.src + c.size <= c.dst || c.dst + c.size <= c.src
        })
        .prop_filter("ranges fit the region", |c| {
            c.src + c.size <= PAGES * PAGE && c.dst + c.size <= PAGES * PAGE
        })
}

fn page_strategy() -> impl Strategy<Value = PageKind> {
    prop_oneof![
        8 => Just(PageKind::ReadWrite),
        1 => Just(PageKind::ReadOnly),
        1 => Just(PageKind::Unmapped),
    ]
}

/// What the channel should end with: memory, CHANERR, completed descriptors.
fn model(memory: &mut [u8], pages: &[PageKind], copies: &[Copy], count: usize) -> (u32, usize) {
    let all = |from: usize, len: usize, ok: &dyn Fn(PageKind) -> bool| {
        (from / PAGE..=(from + len - 1) / PAGE).all(|p| ok(pages[p]))
    };
    for (i, c) in copies.iter().take(count).enumerate() {
        if c.null {
            continue;
        }
        if !all(c.src, c.size, &|k| k != PageKind::Unmapped) {
            return (CHANERR_READ_DATA_ERR, i);
        }
        if !all(c.dst, c.size, &|k| k == PageKind::ReadWrite) {
            return (CHANERR_WRITE_DATA_ERR, i);
        }
        let data = memory[c.src..c.src + c.size].to_vec();
        memory[c.dst..c.dst + c.size].copy_from_slice(&data);
    }
    (0, count)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn descriptor_chains_match_a_sequential_memcpy(
        copies in prop::collection::vec(copy_strategy(), 1..8),
        pages in prop::collection::vec(page_strategy(), PAGES),
        count_seed in any::<usize>(),
        seed in any::<u8>(),
        inline_budget in prop_oneof![Just(1u64 << 30), Just(1024u64)],
    ) {
        let count = 1 + count_seed % copies.len();
        let mem = Arc::new(MemoryDma::new());
        mem.map(DESC, 0x1000, Prot::READ_WRITE);
        let mut memory: Vec<u8> =
            (0..PAGES * PAGE).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
        mem.map(DATA, (PAGES * PAGE) as u64, Prot::READ_WRITE);
        mem.write(Iova(DATA), &memory).unwrap();
        for (p, kind) in pages.iter().enumerate() {
            let at = DATA + (p * PAGE) as u64;
            match kind {
                PageKind::ReadWrite => {}
                PageKind::ReadOnly => mem.map(at, PAGE as u64, Prot::READ),
                PageKind::Unmapped => mem.unmap(at, PAGE as u64),
            }
        }
        for (i, c) in copies.iter().enumerate() {
            let next = DESC + (((i + 1) % copies.len()) * 64) as u64;
            let ctl = if c.null { DESC_NULL } else { 0 };
            let desc = copy_descriptor(
                DATA + c.src as u64,
                DATA + c.dst as u64,
                c.size as u32,
                next,
                ctl,
            );
            mem.write(Iova(DESC + (i * 64) as u64), bytes(&desc)).unwrap();
        }
        let rig = Rig::new(mem.clone(), IoatConfig { xfercap: 16, inline_budget });
        rig.init();
        rig.start(DESC, count as u16);
        let result = rig.wait();

        let (chanerr, completed) = model(&mut memory, &pages, &copies, count);
        if chanerr == 0 {
            prop_assert_eq!(result, Ok(()));
        } else {
            prop_assert_eq!(result, Err(chanerr));
        }
        let status = rig.read(CHANSTS, 8) & CHANSTS_COMPLETED_ADDR;
        let expected = if completed == 0 { 0 } else { DESC + ((completed - 1) * 64) as u64 };
        prop_assert_eq!(status, expected);
        for (p, kind) in pages.iter().enumerate() {
            if *kind == PageKind::Unmapped {
                continue;
            }
            let mut got = vec![0u8; PAGE];
            mem.read(Iova(DATA + (p * PAGE) as u64), &mut got).unwrap();
            prop_assert!(got[..] == memory[p * PAGE..(p + 1) * PAGE], "page {}", p);
        }
    }
}
