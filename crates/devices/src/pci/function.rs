//! A PCI function: a device model plus the configuration space, BAR decoding, MSI-X and reset
//! logic that every PCI function has.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::config::{ConfigSpace, CONFIG_SPACE_SIZE};
use super::msix::Msix;
use super::regs::*;
use super::{AccessError, BarSpec, BarWidth, DevicePorts, LayoutError, PciDeviceModel, PciLayout};
use crate::dma::{BusMasterDma, DmaSpace};
use crate::irq::{InterruptLine, MsiSink};

/// The interrupt port handed to a model before its layout (and so its MSI-X) is known; bound
/// to the function's MSI-X right after the model is built.
#[derive(Debug, Default)]
struct IrqPort {
    msix: OnceLock<Arc<Msix>>,
}

impl InterruptLine for IrqPort {
    fn raise(&self, vector: u16) {
        if let Some(msix) = self.msix.get() {
            msix.raise(vector);
        }
    }
}

/// One emulated PCI function.
///
/// Raw hardware view: configuration writes obey the hardware's read-only and write-1-to-clear
/// bits and nothing else (virtualising COMMAND or MSI-X for a user, as VFIO does, is the
/// caller's job). Power states only matter for the D3hot to D0 reset: a function in D3hot
/// still decodes its BARs.
///
/// Locking: `config` guards configuration space. Lock order: `config` → MSI-X state → the
/// sink, and the model's own locks → MSI-X state → the sink. The function reset takes the
/// model's locks without `config`, then `config`.
pub struct PciFunction {
    layout: PciLayout,
    model: Arc<dyn PciDeviceModel>,
    config: Mutex<ConfigSpace>,
    msix: Option<Arc<Msix>>,
    /// COMMAND.MASTER, shared with the model's DMA gate.
    bus_master: Arc<AtomicBool>,
    /// COMMAND.MEMORY: BAR accesses reach the device only while set.
    memory_decode: AtomicBool,
}

impl fmt::Debug for PciFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciFunction")
            .field("identity", &self.layout.identity)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl PciFunction {
    /// Build the function around the model `make` returns. The model's DMA goes to `dma`
    /// behind the function's bus-master gate; its interrupts go through the function's MSI-X
    /// to `sink`.
    ///
    /// # Errors
    /// The model's layout is inconsistent.
    pub fn new<M: PciDeviceModel + 'static>(
        dma: Arc<dyn DmaSpace>,
        sink: Arc<dyn MsiSink>,
        make: impl FnOnce(DevicePorts) -> M,
    ) -> Result<PciFunction, LayoutError> {
        let bus_master = Arc::new(AtomicBool::new(false));
        let irq = Arc::new(IrqPort::default());
        let model = make(DevicePorts {
            dma: Arc::new(BusMasterDma::new(dma, Arc::clone(&bus_master))),
            irq: Arc::clone(&irq) as Arc<dyn InterruptLine>,
        });
        let layout = model.layout();
        validate(&layout)?;
        let config = ConfigSpace::build(&layout)?;
        let msix = layout.msix.map(|spec| Arc::new(Msix::new(spec, sink)));
        if let Some(msix) = &msix {
            // A fresh OnceLock: setting it cannot fail.
            let _ = irq.msix.set(Arc::clone(msix));
        }
        Ok(PciFunction {
            layout,
            model: Arc::new(model),
            config: Mutex::new(config),
            msix,
            bus_master,
            memory_decode: AtomicBool::new(false),
        })
    }

    fn config(&self) -> MutexGuard<'_, ConfigSpace> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The layout the model declared.
    pub fn layout(&self) -> &PciLayout {
        &self.layout
    }

    /// The device model.
    pub fn model(&self) -> &Arc<dyn PciDeviceModel> {
        &self.model
    }

    /// Read configuration space.
    ///
    /// # Errors
    /// `OutOfRange` unless the range lies inside the 4 KiB.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let at = config_range(offset, buf.len())?;
        self.config().read(at, buf);
        Ok(())
    }

    /// Write configuration space, then act on what changed: COMMAND's memory and master bits,
    /// MSI-X enable and function mask, a function-level reset request, a D3hot to D0
    /// transition (which resets the function too).
    ///
    /// # Errors
    /// `OutOfRange` unless the range lies inside the 4 KiB.
    pub fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let at = config_range(offset, data.len())?;
        let writes = |reg: u16, bit: u8| -> bool {
            let reg = usize::from(reg);
            reg >= at && reg < at + data.len() && data[reg - at] & (1 << bit) != 0
        };
        let reset = {
            let mut cs = self.config();
            let pm_ctrl = PM_CAP + PM_CTRL;
            let old_state = cs.word(pm_ctrl) & PM_CTRL_STATE_MASK;
            cs.write(at, data);
            let command = cs.word(COMMAND);
            self.memory_decode
                .store(command & COMMAND_MEMORY != 0, Ordering::Release);
            self.bus_master
                .store(command & COMMAND_MASTER != 0, Ordering::Release);
            if let Some(msix) = &self.msix {
                let control = cs.word(MSIX_CAP + MSIX_FLAGS);
                msix.set_control(
                    control & MSIX_FLAGS_ENABLE != 0,
                    control & MSIX_FLAGS_MASKALL != 0,
                );
            }
            // Initiate FLR is bit 15 of device control: a command, never stored.
            let flr = writes(EXP_CAP + EXP_DEVCTL + 1, 7);
            let mut d3_to_d0 = false;
            if self.layout.power_management {
                let new_state = cs.word(pm_ctrl) & PM_CTRL_STATE_MASK;
                if matches!(new_state, 1 | 2) {
                    // D1 and D2 are not supported: the write leaves the state alone.
                    let kept = (cs.word(pm_ctrl) & !PM_CTRL_STATE_MASK) | old_state;
                    cs.set_word(pm_ctrl, kept);
                }
                d3_to_d0 = old_state == 3 && new_state == 0;
            }
            flr || d3_to_d0
        };
        if reset {
            self.reset();
        }
        Ok(())
    }

    /// Function-level reset: stop DMA, reset the model, and return configuration space and
    /// MSI-X to their power-on state (COMMAND 0, BARs unprogrammed, MSI-X disabled and every
    /// vector masked), which is what Linux restores its saved state onto after an FLR.
    pub fn reset(&self) {
        self.bus_master.store(false, Ordering::Release);
        self.memory_decode.store(false, Ordering::Release);
        self.model.reset();
        let mut cs = self.config();
        cs.reset();
        if let Some(msix) = &self.msix {
            msix.reset();
        }
    }

    /// The address programmed in BAR `index` (both halves of a 64-bit BAR), type bits masked.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let spec = self.bar(index).ok()?;
        let cs = self.config();
        let low = u64::from(cs.dword(BAR0 + 4 * u16::from(index)) & !0xf);
        Some(match spec.width {
            BarWidth::Bits32 => low,
            BarWidth::Bits64 => low | u64::from(cs.dword(BAR0 + 4 * u16::from(index) + 4)) << 32,
        })
    }

    fn bar(&self, index: u8) -> Result<BarSpec, AccessError> {
        self.layout
            .bars
            .iter()
            .find(|b| b.index == index)
            .copied()
            .ok_or(AccessError::NoSuchBar(index))
    }

    /// Checks a BAR access and says whether it hits MSI-X: `Some((msix, in_table, offset))`.
    fn bar_target(
        &self,
        index: u8,
        offset: u64,
        len: usize,
    ) -> Result<Option<(&Msix, bool, u64)>, AccessError> {
        let spec = self.bar(index)?;
        if !matches!(len, 1 | 2 | 4 | 8 | 64) || !offset.is_multiple_of(len as u64) {
            return Err(AccessError::Unaligned { offset, len });
        }
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > spec.size)
        {
            return Err(AccessError::OutOfRange { offset, len });
        }
        let Some(msix) = self.msix.as_deref().filter(|m| m.spec().bar == index) else {
            return Ok(None);
        };
        let table = u64::from(msix.spec().table_offset);
        let pba = u64::from(msix.spec().pba_offset);
        let end = offset + len as u64;
        let (table_end, pba_end) = (table + msix.table_len(), pba + msix.pba_len());
        let overlaps = |start: u64, stop: u64| offset < stop && start < end;
        // MSI-X structures take accesses of up to 8 bytes that stay inside them.
        if (overlaps(table, table_end) && (offset < table || end > table_end))
            || (overlaps(pba, pba_end) && (offset < pba || end > pba_end))
        {
            return Err(AccessError::Unaligned { offset, len });
        }
        Ok(if overlaps(table, table_end) {
            Some((msix, true, offset - table))
        } else if overlaps(pba, pba_end) {
            Some((msix, false, offset - pba))
        } else {
            None
        })
    }

    /// A load from BAR `index`. With memory decoding off the function does not respond: the
    /// load reads all ones. Sizes are 1, 2, 4, 8, or 64 (a `MOVDIR64B`-style store to a work
    /// queue portal), naturally aligned.
    ///
    /// # Errors
    /// No such BAR, another size, misalignment, or a range outside the BAR.
    pub fn bar_read(&self, index: u8, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let target = self.bar_target(index, offset, buf.len())?;
        if !self.memory_decode.load(Ordering::Acquire) {
            buf.fill(0xff);
            return Ok(());
        }
        match target {
            Some((msix, true, at)) => msix.table_read(at, buf),
            Some((msix, false, at)) => msix.pba_read(at, buf),
            None => self.model.mmio_read(index, offset, buf),
        }
        Ok(())
    }

    /// A store to BAR `index`; dropped with memory decoding off. PBA stores are ignored.
    ///
    /// # Errors
    /// As [`PciFunction::bar_read`].
    pub fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let target = self.bar_target(index, offset, data.len())?;
        if !self.memory_decode.load(Ordering::Acquire) {
            return Ok(());
        }
        match target {
            Some((msix, true, at)) => msix.table_write(at, data),
            Some((_, false, _)) => {}
            None => self.model.mmio_write(index, offset, data),
        }
        Ok(())
    }
}

fn config_range(offset: u64, len: usize) -> Result<usize, AccessError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= CONFIG_SPACE_SIZE as u64 => Ok(offset as usize),
        _ => Err(AccessError::OutOfRange { offset, len }),
    }
}

/// Checks BARs and MSI-X placement.
fn validate(layout: &PciLayout) -> Result<(), LayoutError> {
    let mut used = [false; 6];
    for bar in &layout.bars {
        let err = |why| LayoutError::Bar {
            index: bar.index,
            why,
        };
        let slots = match bar.width {
            BarWidth::Bits32 => 1,
            BarWidth::Bits64 => 2,
        };
        let first = usize::from(bar.index);
        if first + slots > 6 {
            return Err(err("slot out of range"));
        }
        if used[first..first + slots].iter().any(|&u| u) {
            return Err(err("slot already used"));
        }
        used[first..first + slots].fill(true);
        if !bar.size.is_power_of_two() || bar.size < 16 {
            return Err(err("size must be a power of two, at least 16"));
        }
        if bar.width == BarWidth::Bits32 && bar.size > 1 << 32 {
            return Err(err("a 32-bit BAR holds at most 4 GiB"));
        }
    }
    if let Some(msix) = layout.msix {
        if !(1..=2048).contains(&msix.vectors) {
            return Err(LayoutError::Msix("1 to 2048 vectors"));
        }
        let bar = layout
            .bars
            .iter()
            .find(|b| b.index == msix.bar)
            .ok_or(LayoutError::Msix("no such BAR"))?;
        let table = (
            u64::from(msix.table_offset),
            u64::from(msix.vectors) * MSIX_ENTRY_SIZE,
        );
        let pba = (
            u64::from(msix.pba_offset),
            u64::from(msix.vectors).div_ceil(64) * 8,
        );
        if (table.0 | pba.0) % 8 != 0 {
            return Err(LayoutError::Msix("table and PBA must be 8-byte aligned"));
        }
        if table.0 + table.1 > bar.size || pba.0 + pba.1 > bar.size {
            return Err(LayoutError::Msix("table or PBA beyond the BAR"));
        }
        if table.0 < pba.0 + pba.1 && pba.0 < table.0 + table.1 {
            return Err(LayoutError::Msix("table and PBA overlap"));
        }
    }
    Ok(())
}
