//! Interrupt seams. A device model raises numbered vectors on an [`InterruptLine`] handed to
//! it; its PCI function routes them through MSI-X (enable, masks, pending bits) to an
//! [`MsiSink`] that the platform provides: VFIO later turns a delivery into a write to the
//! vector's eventfd.

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An MSI message as its table entry programs it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct MsiMessage {
    /// Message address (the entry's upper and lower address words).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Where a function's message-signalled interrupts go.
///
/// Called with the function's MSI-X lock held: an implementation must not call back into the
/// function that delivers to it.
pub trait MsiSink: Send + Sync + fmt::Debug {
    /// Vector `vector` fired with `message`.
    fn deliver(&self, vector: u16, message: MsiMessage);
}

/// What a device model raises: vector `vector` of its function. Whether and where it is
/// delivered is the function's business (MSI-X enable and masks).
pub trait InterruptLine: Send + Sync + fmt::Debug {
    /// Signal vector `vector`.
    fn raise(&self, vector: u16);
}

/// An [`MsiSink`] that records deliveries, for tests and benches.
///
/// Locking: one mutex over the record, with a condition variable for waiters.
#[derive(Debug, Default)]
pub struct RecordingSink {
    delivered: Mutex<Vec<(u16, MsiMessage)>>,
    changed: Condvar,
}

impl RecordingSink {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&self) -> MutexGuard<'_, Vec<(u16, MsiMessage)>> {
        self.delivered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything delivered so far, in order.
    pub fn delivered(&self) -> Vec<(u16, MsiMessage)> {
        self.record().clone()
    }

    /// Wait up to `timeout` until at least `count` deliveries happened; returns how many did.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut record = self.record();
        while record.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            record = self
                .changed
                .wait_timeout(record, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        record.len()
    }
}

impl MsiSink for RecordingSink {
    fn deliver(&self, vector: u16, message: MsiMessage) {
        self.record().push((vector, message));
        self.changed.notify_all();
    }
}
