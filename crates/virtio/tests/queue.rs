//! The device behind real virtqueues, driven by virtio-queue's `MockSplitQueue` as the driver.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use uiommu_virtio::spec::{
    Fault, Status, VIRTIO_IOMMU_FAULT_F_ADDRESS, VIRTIO_IOMMU_FAULT_F_WRITE,
};
use uiommu_virtio::{DeviceError, FaultReason, VirtioIommu};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};
use zerocopy::FromBytes;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const RQ: u64 = 0x1_0000;
const EQ: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

fn activated<'a>(
    mem: &'a GuestMemoryMmap,
) -> (
    Arc<VirtioIommu>,
    MockSplitQueue<'a, GuestMemoryMmap>,
    MockSplitQueue<'a, GuestMemoryMmap>,
) {
    let dev = Arc::new(device());
    let rq = MockSplitQueue::create(mem, GuestAddress(RQ), 16);
    let eq = MockSplitQueue::create(mem, GuestAddress(EQ), 16);
    dev.activate(
        mem.clone(),
        rq.create_queue::<Queue>().unwrap(),
        eq.create_queue::<Queue>().unwrap(),
    )
    .unwrap();
    (dev, rq, eq)
}

/// Puts `req` at `at` and a 4-byte tail right after it (pre-filled with 0xff), as a two
/// descriptor chain starting at descriptor `first`.
fn post(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
    first: u16,
    at: u64,
    req: &[u8],
) -> u64 {
    mem.write_slice(req, GuestAddress(at)).unwrap();
    let tail = at + req.len() as u64;
    mem.write_slice(&[0xff; 4], GuestAddress(tail)).unwrap();
    q.add_desc_chains(
        &[
            desc(at, req.len() as u32, F_NEXT, first + 1),
            desc(tail, 4, F_WRITE, 0),
        ],
        first,
    )
    .unwrap();
    tail
}

fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>, slot: u16) -> (u32, u32) {
    let elem = q.used().ring().ref_at(slot as usize).unwrap().load();
    (elem.id(), elem.len())
}

fn tail_status(mem: &GuestMemoryMmap, tail: u64) -> [u8; 4] {
    let mut raw = [0u8; 4];
    mem.read_slice(&mut raw, GuestAddress(tail)).unwrap();
    raw
}

#[test]
fn requests_on_the_queue_get_status_and_used_length() {
    let mem = memory();
    let (dev, rq, _eq) = activated(&mem);
    let t1 = post(&mem, &rq, 0, DATA, &attach(1, EP, 0));
    let t2 = post(
        &mem,
        &rq,
        2,
        DATA + 0x100,
        &map(1, 0x1000, 0x1fff, 0xa000, RW),
    );
    let t3 = post(
        &mem,
        &rq,
        4,
        DATA + 0x200,
        &map(1, 0x1000, 0x1fff, 0xa000, RW),
    );
    assert_eq!(dev.notify(0).unwrap(), 3);
    assert_eq!(rq.used().idx().load(), 3);
    assert_eq!(used(&rq, 0), (0, 4));
    assert_eq!(used(&rq, 1), (2, 4));
    assert_eq!(tail_status(&mem, t1), [Status::Ok as u8, 0, 0, 0]);
    assert_eq!(tail_status(&mem, t2), [Status::Ok as u8, 0, 0, 0]);
    assert_eq!(
        tail_status(&mem, t3)[0],
        Status::Inval as u8,
        "second map overlaps"
    );
    assert_eq!(dev.translate(EP, 0x1800, Permissions::Read), Ok(0xa800));
}

#[test]
fn request_split_over_several_readable_descriptors_is_reassembled() {
    let mem = memory();
    let (dev, rq, _eq) = activated(&mem);
    post(&mem, &rq, 0, DATA, &attach(1, EP, 0));
    let req = map(1, 0x4000, 0x4fff, 0xb000, RW);
    mem.write_slice(&req[..5], GuestAddress(DATA + 0x100))
        .unwrap();
    mem.write_slice(&req[5..20], GuestAddress(DATA + 0x200))
        .unwrap();
    mem.write_slice(&req[20..], GuestAddress(DATA + 0x300))
        .unwrap();
    rq.add_desc_chains(
        &[
            desc(DATA + 0x100, 5, F_NEXT, 3),
            desc(DATA + 0x200, 15, F_NEXT, 4),
            desc(DATA + 0x300, (req.len() - 20) as u32, F_NEXT, 5),
            desc(DATA + 0x400, 4, F_WRITE, 0),
        ],
        2,
    )
    .unwrap();
    dev.notify(0).unwrap();
    assert_eq!(tail_status(&mem, DATA + 0x400)[0], Status::Ok as u8);
    assert_eq!(dev.translate(EP, 0x4000, Permissions::Write), Ok(0xb000));
}

#[test]
fn unknown_request_type_on_the_queue_is_returned_unwritten_with_used_length_zero() {
    let mem = memory();
    let (dev, rq, _eq) = activated(&mem);
    let mut req = attach(1, EP, 0);
    req[0] = 0x42;
    let tail = post(&mem, &rq, 0, DATA, &req);
    dev.notify(0).unwrap();
    assert_eq!(used(&rq, 0), (0, 0));
    assert_eq!(tail_status(&mem, tail), [0xff; 4]);
}

#[test]
fn descriptor_outside_guest_memory_gets_used_length_zero() {
    let mem = memory();
    let (dev, rq, _eq) = activated(&mem);
    rq.add_desc_chains(
        &[desc(0x7000_0000, 20, F_NEXT, 1), desc(DATA, 4, F_WRITE, 0)],
        0,
    )
    .unwrap();
    assert_eq!(dev.notify(0).unwrap(), 1);
    assert_eq!(used(&rq, 0), (0, 0));
}

#[test]
fn chain_without_writable_descriptor_gets_used_length_zero() {
    let mem = memory();
    let (dev, rq, _eq) = activated(&mem);
    let req = attach(1, EP, 0);
    mem.write_slice(&req, GuestAddress(DATA)).unwrap();
    rq.add_desc_chains(&[desc(DATA, req.len() as u32, 0, 0)], 0)
        .unwrap();
    dev.notify(0).unwrap();
    assert_eq!(used(&rq, 0), (0, 0));
    assert_eq!(
        dev.translate(EP, 0, Permissions::Read),
        Err(FaultReason::Domain)
    );
}

#[test]
fn fault_is_written_to_the_next_event_buffer_and_interrupts_the_driver() {
    let mem = memory();
    let (dev, rq, eq) = activated(&mem);
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&interrupts);
    dev.set_interrupt(Some(Arc::new(move |queue| {
        if queue == 1 {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })));
    post(&mem, &rq, 0, DATA, &attach(1, EP, 0));
    dev.notify(0).unwrap();
    eq.add_desc_chains(&[desc(DATA + 0x1000, 64, F_WRITE, 0)], 0)
        .unwrap();
    assert_eq!(dev.notify(1).unwrap(), 0);

    assert_eq!(
        dev.translate(EP, 0x9000, Permissions::Write),
        Err(FaultReason::Mapping)
    );
    assert_eq!(eq.used().idx().load(), 1);
    assert_eq!(used(&eq, 0), (0, 24));
    let mut raw = [0u8; 24];
    mem.read_slice(&mut raw, GuestAddress(DATA + 0x1000))
        .unwrap();
    let fault = Fault::read_from_bytes(&raw).unwrap();
    assert_eq!(
        fault.reason,
        uiommu_virtio::spec::VIRTIO_IOMMU_FAULT_R_MAPPING
    );
    assert_eq!(fault.endpoint.get(), EP);
    assert_eq!(fault.address.get(), 0x9000);
    assert_eq!(
        fault.flags.get(),
        VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS
    );
    assert_eq!(interrupts.load(Ordering::Relaxed), 1);

    // No buffer left: the next fault is dropped and counted.
    assert!(dev.translate(EP, 0x9000, Permissions::Read).is_err());
    assert_eq!(dev.faults_dropped(), 1);
    assert_eq!(interrupts.load(Ordering::Relaxed), 1);
}

#[test]
fn event_buffer_too_small_for_a_report_is_returned_unwritten() {
    let mem = memory();
    let (dev, _rq, eq) = activated(&mem);
    mem.write_slice(&[0xee; 16], GuestAddress(DATA)).unwrap();
    eq.add_desc_chains(&[desc(DATA, 16, F_WRITE, 0)], 0)
        .unwrap();
    assert_eq!(
        dev.translate(EP, 0x1000, Permissions::Read),
        Err(FaultReason::Domain)
    );
    assert_eq!(used(&eq, 0), (0, 0));
    let mut raw = [0u8; 16];
    mem.read_slice(&mut raw, GuestAddress(DATA)).unwrap();
    assert_eq!(raw, [0xee; 16]);
    assert_eq!(dev.faults_dropped(), 1);
}

#[test]
fn notify_before_activation_or_on_a_missing_queue_is_an_error() {
    let dev = device();
    assert!(matches!(dev.notify(0), Err(DeviceError::NotActivated)));
    assert!(matches!(dev.notify(1), Err(DeviceError::NotActivated)));
    assert!(matches!(dev.notify(2), Err(DeviceError::NoSuchQueue(2))));
}

#[test]
fn activation_with_a_queue_outside_guest_memory_is_refused() {
    let mem = memory();
    let far =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000_0000), 0x10_0000)]).unwrap();
    let rq = MockSplitQueue::create(&mem, GuestAddress(RQ), 16);
    let eq = MockSplitQueue::create(&far, GuestAddress(0x1000_0000), 16);
    let dev = device();
    let err = dev
        .activate(
            mem.clone(),
            rq.create_queue::<Queue>().unwrap(),
            eq.create_queue::<Queue>().unwrap(),
        )
        .unwrap_err();
    assert!(matches!(err, DeviceError::InvalidQueue(1)));
}

#[test]
fn reset_stops_the_queues() {
    let mem = memory();
    let (dev, _rq, _eq) = activated(&mem);
    dev.reset();
    assert!(matches!(dev.notify(0), Err(DeviceError::NotActivated)));
}
