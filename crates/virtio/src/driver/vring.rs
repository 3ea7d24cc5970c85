//! The driver's half of a split virtqueue (virtio 1.x, "Split Virtqueues"): it writes
//! descriptors and the available ring, and reads the used ring, all in guest memory the device
//! reads with `virtio-queue`.
//!
//! Layout in guest memory (little-endian): descriptor table of `size` 16-byte entries
//! `{addr: le64, len: le32, flags: le16, next: le16}`; available ring
//! `{flags: le16, idx: le16, ring: [le16; size], used_event: le16}`; used ring
//! `{flags: le16, idx: le16, ring: [{id: le32, len: le32}; size], avail_event: le16}`.
//! The ring indices are free-running `u16`s; `idx % size` picks the slot.

use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Descriptor flag: the chain continues at `next`.
const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
const VIRTQ_DESC_F_WRITE: u16 = 2;

#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Descriptor {
    addr: U64,
    len: U32,
    flags: U16,
    next: U16,
}

#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct UsedElem {
    id: U32,
    len: U32,
}

/// Where a queue's three parts live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Descriptor table address (16-byte aligned).
    pub desc: GuestAddress,
    /// Available ring address (2-byte aligned).
    pub avail: GuestAddress,
    /// Used ring address (4-byte aligned).
    pub used: GuestAddress,
}

impl QueueLayout {
    /// Bytes the descriptor table takes.
    pub fn desc_bytes(size: u16) -> u64 {
        16 * u64::from(size)
    }

    /// Bytes the available ring takes (with `used_event`).
    pub fn avail_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }

    /// Bytes the used ring takes (with `avail_event`).
    pub fn used_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
    pub device_writable: bool,
}

/// Why the ring could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum RingError {
    /// Not enough free descriptors for the chain (or an empty chain).
    Full,
    /// Guest memory could not be accessed at a ring address.
    Memory,
}

/// Driver-side state of one split virtqueue. Not shared: the owner serializes access.
#[derive(Debug)]
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    layout: QueueLayout,
    free: Vec<u16>,
    next_avail: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Takes over `layout` in `mem` and zeroes it: no descriptors in use, both rings empty.
    pub fn new(mem: GuestMemoryMmap, layout: QueueLayout) -> Result<Self, RingError> {
        for (addr, len) in [
            (layout.desc, QueueLayout::desc_bytes(layout.size)),
            (layout.avail, QueueLayout::avail_bytes(layout.size)),
            (layout.used, QueueLayout::used_bytes(layout.size)),
        ] {
            let zeroes = vec![0u8; len as usize];
            mem.write_slice(&zeroes, addr)
                .map_err(|_| RingError::Memory)?;
        }
        Ok(DriverQueue {
            mem,
            layout,
            free: (0..layout.size).rev().collect(),
            next_avail: 0,
            last_used: 0,
        })
    }

    fn desc_addr(&self, index: u16) -> GuestAddress {
        GuestAddress(self.layout.desc.0 + 16 * u64::from(index))
    }

    /// Makes a chain of `buffers` available; returns its head descriptor index.
    pub fn add(&mut self, buffers: &[Buffer]) -> Result<u16, RingError> {
        if buffers.is_empty() || buffers.len() > self.free.len() {
            return Err(RingError::Full);
        }
        let indices: Vec<u16> = (0..buffers.len()).filter_map(|_| self.free.pop()).collect();
        for (i, (buffer, &index)) in buffers.iter().zip(&indices).enumerate() {
            let next = indices.get(i + 1).copied();
            let mut flags = if buffer.device_writable {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            };
            if next.is_some() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let desc = Descriptor {
                addr: U64::new(buffer.addr.0),
                len: U32::new(buffer.len),
                flags: U16::new(flags),
                next: U16::new(next.unwrap_or(0)),
            };
            if self
                .mem
                .write_slice(desc.as_bytes(), self.desc_addr(index))
                .is_err()
            {
                self.free.extend(&indices);
                return Err(RingError::Memory);
            }
        }
        let head = indices[0];
        let slot = self.next_avail % self.layout.size;
        let ring_entry = GuestAddress(self.layout.avail.0 + 4 + 2 * u64::from(slot));
        let idx_addr = GuestAddress(self.layout.avail.0 + 2);
        self.next_avail = self.next_avail.wrapping_add(1);
        let published = self.mem.write_slice(&head.to_le_bytes(), ring_entry).is_ok()
            // The device reads idx with Acquire: the entry must be visible before idx.
            && self.mem.store(self.next_avail.to_le(), idx_addr, Ordering::Release).is_ok();
        if !published {
            self.next_avail = self.next_avail.wrapping_sub(1);
            self.free.extend(&indices);
            return Err(RingError::Memory);
        }
        Ok(head)
    }

    /// Takes the next used chain, if the device returned one: `(head index, used length)`.
    /// Its descriptors become free again.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx_addr = GuestAddress(self.layout.used.0 + 2);
        let used_idx = u16::from_le(self.mem.load(idx_addr, Ordering::Acquire).ok()?);
        if used_idx == self.last_used {
            return None;
        }
        let slot = self.last_used % self.layout.size;
        let entry_addr = GuestAddress(self.layout.used.0 + 4 + 8 * u64::from(slot));
        let mut raw = [0u8; 8];
        self.mem.read_slice(&mut raw, entry_addr).ok()?;
        let elem = UsedElem::read_from_bytes(&raw).ok()?;
        self.last_used = self.last_used.wrapping_add(1);
        let head = u16::try_from(elem.id.get()).ok()?;
        self.free_chain(head);
        Some((head, elem.len.get()))
    }

    /// Returns the descriptors of the chain at `head` to the free list; stops at anything a
    /// confused device could have made of the table (bad index, loop).
    fn free_chain(&mut self, head: u16) {
        let mut index = head;
        for _ in 0..self.layout.size {
            if index >= self.layout.size || self.free.contains(&index) {
                return;
            }
            self.free.push(index);
            let mut raw = [0u8; 16];
            if self
                .mem
                .read_slice(&mut raw, self.desc_addr(index))
                .is_err()
            {
                return;
            }
            let Ok(desc) = Descriptor::read_from_bytes(&raw) else {
                return;
            };
            if desc.flags.get() & VIRTQ_DESC_F_NEXT == 0 {
                return;
            }
            index = desc.next.get();
        }
    }
}
