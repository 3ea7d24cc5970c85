//! Eight threads map (fixed and automatic), copy, read and unmap on one table while a ninth
//! attaches and detaches a second domain: afterwards the table holds exactly the areas the
//! threads believe they own, both domains hold exactly those areas, and every pin is released
//! by the final unmap.

mod io_pagetable_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use io_pagetable_common::{pattern, patterned_memory, source, RecordingDomain};
use uiommu_core::addr::{Iova, Prot};
use uiommu_iommufd::io_pagetable::{AccessPath, IoPagetable, IovaPlacement, IovaRange};
use uiommu_iommufd::pages::{total_pins, RwBuf};
use uiommu_iommufd::user_memory::{UserMemory, UserVa, PAGE_SIZE};

const THREADS: u64 = 8;
const BUF: u64 = 0x4000_0000;
const PAGES_PER_THREAD: u64 = 16;
const SLOTS: u64 = 16;
const SLOT_SIZE: u64 = 16 * PAGE_SIZE;
const AUTO_WINDOW: IovaRange = IovaRange {
    start: Iova(1 << 30),
    last: Iova((2 << 30) - 1),
};
const ITERATIONS: u32 = 400;

fn window(thread: u64) -> u64 {
    (16 << 30) + thread * (1 << 30)
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Runs one thread's workload and returns the areas it owns at the end: IOVA → (length, uptr).
fn worker(
    table: &IoPagetable,
    source: &uiommu_iommufd::pages::PageSource,
    thread: u64,
) -> BTreeMap<u64, (u64, u64)> {
    let mut rng = Lcg(thread + 1);
    let mut owned: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let base = BUF + thread * PAGES_PER_THREAD * PAGE_SIZE;
    for _ in 0..ITERATIONS {
        let free_slot = (0..SLOTS)
            .map(|s| window(thread) + ((s + rng.below(SLOTS)) % SLOTS) * SLOT_SIZE)
            .find(|iova| !owned.contains_key(iova));
        match rng.below(6) {
            0 | 1 => {
                let Some(iova) = free_slot else { continue };
                let npages = 1 + rng.below(4);
                let uptr = base + rng.below(PAGES_PER_THREAD - npages) * PAGE_SIZE;
                let got = table.map_user_pages(
                    source,
                    UserVa(uptr),
                    npages * PAGE_SIZE,
                    Prot::READ_WRITE,
                    IovaPlacement::Fixed(Iova(iova)),
                );
                assert_eq!(got, Ok(Iova(iova)));
                owned.insert(iova, (npages * PAGE_SIZE, uptr));
            }
            2 => {
                let npages = 1 + rng.below(4);
                let uptr = base + rng.below(PAGES_PER_THREAD - npages) * PAGE_SIZE;
                let iova = table
                    .map_user_pages(
                        source,
                        UserVa(uptr),
                        npages * PAGE_SIZE,
                        Prot::READ_WRITE,
                        IovaPlacement::Auto,
                    )
                    .unwrap();
                assert!(
                    iova >= AUTO_WINDOW.start
                        && iova.0 + npages * PAGE_SIZE - 1 <= AUTO_WINDOW.last.0
                );
                assert!(!owned.contains_key(&iova.0), "auto IOVA handed out twice");
                owned.insert(iova.0, (npages * PAGE_SIZE, uptr));
            }
            3 => {
                let (Some(dst), Some((&src, &(length, uptr)))) = (
                    free_slot,
                    owned
                        .iter()
                        .nth(rng.below(owned.len().max(1) as u64) as usize),
                ) else {
                    continue;
                };
                let list = table.get_pages(Iova(src), length).unwrap();
                assert_eq!(
                    table.map_pages(&list, Prot::READ, IovaPlacement::Fixed(Iova(dst))),
                    Ok(Iova(dst))
                );
                owned.insert(dst, (length, uptr));
            }
            4 => {
                let Some((&iova, &(length, _))) = owned
                    .iter()
                    .nth(rng.below(owned.len().max(1) as u64) as usize)
                else {
                    continue;
                };
                assert_eq!(table.unmap_iova(Iova(iova), length), Ok(length));
                owned.remove(&iova);
                // Only the thread's own window is private: another thread may already have
                // been given a just-freed automatic IOVA.
                if iova >= window(thread) {
                    assert_eq!(table.unmap_iova(Iova(iova), length), Ok(0), "already gone");
                }
            }
            _ => {
                let Some((&iova, &(length, uptr))) = owned
                    .iter()
                    .nth(rng.below(owned.len().max(1) as u64) as usize)
                else {
                    continue;
                };
                let mut buf = vec![0u8; length as usize];
                table
                    .access_rw(Iova(iova), RwBuf::Read(&mut buf), AccessPath::Direct)
                    .unwrap();
                assert!(buf
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern(uptr + i as u64)));
            }
        }
    }
    owned
}

#[test]
fn concurrent_map_copy_unmap_loses_and_invents_nothing() {
    let memory = patterned_memory(BUF, THREADS * PAGES_PER_THREAD);
    let (source, policy) = source(&memory);
    let table = Arc::new(IoPagetable::new());
    let resident = RecordingDomain::page();
    table.add_domain(resident.as_mapper()).unwrap();
    table.set_allowed_iovas(&[AUTO_WINDOW]).unwrap();

    let start = Arc::new(Barrier::new(THREADS as usize + 1));
    let done = Arc::new(AtomicBool::new(false));
    let toggler = {
        let (table, start, done) = (table.clone(), start.clone(), done.clone());
        std::thread::spawn(move || {
            let flapping = RecordingDomain::page();
            start.wait();
            let mut attached = false;
            let mut toggles = 0u32;
            while !done.load(Ordering::Acquire) || attached {
                if attached {
                    assert!(table.remove_domain(&flapping.as_mapper()));
                    assert!(flapping.entries().is_empty(), "detach left entries behind");
                } else if done.load(Ordering::Acquire) {
                    break;
                } else {
                    table.add_domain(flapping.as_mapper()).unwrap();
                }
                attached = !attached;
                toggles += 1;
            }
            assert!(flapping.violations().is_empty());
            toggles
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (table, source, start) = (table.clone(), source.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                worker(&table, &source, thread)
            })
        })
        .collect();
    let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for handle in workers {
        for (iova, area) in handle.join().unwrap() {
            assert!(
                expected.insert(iova, area).is_none(),
                "two threads own {iova:#x}"
            );
        }
    }
    done.store(true, Ordering::Release);
    assert!(toggler.join().unwrap() > 0);

    let areas: BTreeMap<u64, (u64, u64)> = table
        .areas()
        .iter()
        .map(|a| (a.iova.0, (a.length, a.uptr.0)))
        .collect();
    assert_eq!(areas, expected);
    let entries: BTreeMap<u64, (u64, u64)> = resident
        .entries()
        .iter()
        .map(|(&i, m)| (i, (m.length, m.phys)))
        .collect();
    assert_eq!(
        entries, expected,
        "the resident domain holds exactly the areas"
    );
    assert!(resident.violations().is_empty());
    assert_eq!(policy.user.pages(), total_pins(memory.mm()));

    let total: u64 = expected.values().map(|&(length, _)| length).sum();
    assert_eq!(table.unmap_all(), Ok(total));
    assert!(resident.entries().is_empty());
    assert_eq!(total_pins(memory.mm()), 0);
    assert_eq!(policy.user.pages(), 0);
}
