//! MSI-X routing (PCI 3.0 section 6.8.2): the table of message address, data and vector control
//! words, the pending-bit array, and the rules that decide whether a raised vector is sent or
//! left pending.

use std::sync::{Arc, Mutex, MutexGuard};

use super::regs::{MSIX_ENTRY_CTRL_MASKBIT, MSIX_ENTRY_SIZE};
use super::MsixSpec;
use crate::irq::{InterruptLine, MsiMessage, MsiSink};

/// The state software sees through the capability and the BAR.
#[derive(Debug)]
struct MsixState {
    /// Message control: MSI-X enable.
    enabled: bool,
    /// Message control: function mask.
    function_mask: bool,
    /// The table, `MSIX_ENTRY_SIZE` bytes per vector, little endian.
    table: Vec<u8>,
    /// Pending bits, one per vector.
    pending: Vec<u64>,
}

impl MsixState {
    fn power_on(vectors: u16) -> MsixState {
        let mut table = vec![0u8; usize::from(vectors) * MSIX_ENTRY_SIZE as usize];
        for entry in table.chunks_mut(MSIX_ENTRY_SIZE as usize) {
            entry[12..16].copy_from_slice(&MSIX_ENTRY_CTRL_MASKBIT.to_le_bytes());
        }
        MsixState {
            enabled: false,
            function_mask: false,
            table,
            pending: vec![0; usize::from(vectors).div_ceil(64)],
        }
    }

    fn entry_word(&self, vector: u16, word: usize) -> u32 {
        let at = usize::from(vector) * MSIX_ENTRY_SIZE as usize + 4 * word;
        u32::from_le_bytes([
            self.table[at],
            self.table[at + 1],
            self.table[at + 2],
            self.table[at + 3],
        ])
    }

    fn message(&self, vector: u16) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.entry_word(vector, 0))
                | (u64::from(self.entry_word(vector, 1)) << 32),
            data: self.entry_word(vector, 2),
        }
    }

    fn masked(&self, vector: u16) -> bool {
        self.function_mask || self.entry_word(vector, 3) & MSIX_ENTRY_CTRL_MASKBIT != 0
    }

    fn is_pending(&self, vector: u16) -> bool {
        self.pending[usize::from(vector / 64)] & (1 << (vector % 64)) != 0
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        let word = &mut self.pending[usize::from(vector / 64)];
        if pending {
            *word |= 1 << (vector % 64);
        } else {
            *word &= !(1 << (vector % 64));
        }
    }
}

/// A function's MSI-X: the device model raises vectors on it, software programs it.
///
/// Locking: `state` is held while a message is handed to the sink, so deliveries and table
/// updates are ordered; the sink must not call back into the function.
#[derive(Debug)]
pub(crate) struct Msix {
    spec: MsixSpec,
    state: Mutex<MsixState>,
    sink: Arc<dyn MsiSink>,
}

impl Msix {
    pub(crate) fn new(spec: MsixSpec, sink: Arc<dyn MsiSink>) -> Msix {
        Msix {
            spec,
            state: Mutex::new(MsixState::power_on(spec.vectors)),
            sink,
        }
    }

    fn state(&self) -> MutexGuard<'_, MsixState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn spec(&self) -> MsixSpec {
        self.spec
    }

    /// Bytes of the table in the BAR.
    pub(crate) fn table_len(&self) -> u64 {
        u64::from(self.spec.vectors) * MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA in the BAR (whole quadwords).
    pub(crate) fn pba_len(&self) -> u64 {
        u64::from(self.spec.vectors).div_ceil(64) * 8
    }

    /// Sends every pending vector that is no longer masked.
    fn flush(&self, state: &mut MsixState) {
        if !state.enabled || state.function_mask {
            return;
        }
        for vector in 0..self.spec.vectors {
            if state.is_pending(vector) && !state.masked(vector) {
                state.set_pending(vector, false);
                self.sink.deliver(vector, state.message(vector));
            }
        }
    }

    /// The capability's message control bits changed.
    pub(crate) fn set_control(&self, enabled: bool, function_mask: bool) {
        let mut state = self.state();
        state.enabled = enabled;
        state.function_mask = function_mask;
        self.flush(&mut state);
    }

    /// Load from the table, `offset` bytes into it.
    pub(crate) fn table_read(&self, offset: u64, buf: &mut [u8]) {
        let state = self.state();
        let at = offset as usize;
        buf.copy_from_slice(&state.table[at..at + buf.len()]);
    }

    /// Store to the table: addresses and data are read/write, vector control only its mask bit.
    pub(crate) fn table_write(&self, offset: u64, data: &[u8]) {
        let mut state = self.state();
        for (i, &value) in data.iter().enumerate() {
            let at = offset as usize + i;
            let in_entry = at % MSIX_ENTRY_SIZE as usize;
            state.table[at] = match in_entry {
                12 => value & MSIX_ENTRY_CTRL_MASKBIT as u8,
                13..=15 => 0,
                _ => value,
            };
        }
        self.flush(&mut state);
    }

    /// Load from the PBA, `offset` bytes into it.
    pub(crate) fn pba_read(&self, offset: u64, buf: &mut [u8]) {
        let state = self.state();
        let bytes: Vec<u8> = state.pending.iter().flat_map(|w| w.to_le_bytes()).collect();
        let at = offset as usize;
        buf.copy_from_slice(&bytes[at..at + buf.len()]);
    }

    /// Back to power-on: disabled, every vector masked, nothing pending.
    pub(crate) fn reset(&self) {
        *self.state() = MsixState::power_on(self.spec.vectors);
    }
}

impl InterruptLine for Msix {
    /// A vector beyond the table, or any vector while MSI-X is disabled, goes nowhere (the
    /// function has no other interrupt mechanism to fall back to); a masked one is left
    /// pending.
    fn raise(&self, vector: u16) {
        if vector >= self.spec.vectors {
            return;
        }
        let mut state = self.state();
        if !state.enabled {
            return;
        }
        if state.masked(vector) {
            state.set_pending(vector, true);
        } else {
            self.sink.deliver(vector, state.message(vector));
        }
    }
}
