//! Configuration space storage: 4 KiB of bytes with, per bit, whether software may write it
//! or clear it by writing 1, and the power-on image that a function reset restores. The
//! layouts of the header and capabilities are zerocopy structs written into it once.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use super::regs::*;
use super::{BarWidth, LayoutError, PciLayout};

/// Bytes of a PCI Express function's configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Bytes of conventional (non-extended) configuration space.
pub const LEGACY_CONFIG_SIZE: usize = 256;

/// The type 0 header (PCI 3.0 section 6.1).
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
struct Type0Header {
    vendor: U16,
    device: U16,
    command: U16,
    status: U16,
    revision: u8,
    class: [u8; 3],
    cache_line_size: u8,
    latency_timer: u8,
    header_type: u8,
    bist: u8,
    bars: [U32; 6],
    cardbus_cis: U32,
    subsystem_vendor: U16,
    subsystem: U16,
    rom: U32,
    capabilities: u8,
    reserved: [u8; 7],
    interrupt_line: u8,
    interrupt_pin: u8,
    min_gnt: u8,
    max_lat: u8,
}

/// The MSI-X capability (PCI 3.0 section 6.8.2).
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
struct MsixCapability {
    id: u8,
    next: u8,
    control: U16,
    table: U32,
    pba: U32,
}

/// The PCI Express capability, version 2, as a root-complex integrated endpoint has it (PCIe
/// 4.0 section 7.5.3): no link, no slot, no root port registers.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
struct ExpressCapability {
    id: u8,
    next: u8,
    flags: U16,
    devcap: U32,
    devctl: U16,
    devsta: U16,
    linkcap: U32,
    linkctl: U16,
    linksta: U16,
    sltcap: U32,
    sltctl: U16,
    sltsta: U16,
    rtctl: U16,
    rtcap: U16,
    rtsta: U32,
    devcap2: U32,
    devctl2: U16,
    devsta2: U16,
    linkcap2: U32,
    linkctl2: U16,
    linksta2: U16,
    sltcap2: U32,
    sltctl2: U16,
    sltsta2: U16,
}

/// The power management capability (PCI PM 1.2).
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
struct PmCapability {
    id: u8,
    next: u8,
    pmc: U16,
    control: U16,
    bridge: u8,
    data: u8,
}

/// PCIe capability version 2, device/port type 9 (root complex integrated endpoint).
const EXP_FLAGS_RCIEP_V2: u16 = 2 | (9 << 4);
/// Device control after reset: relaxed ordering and no-snoop enabled, 512-byte read requests.
const EXP_DEVCTL_DEFAULT: u16 = (1 << 4) | (1 << 11) | (2 << 12);
/// Device control bits software may change: error reporting enables, relaxed ordering, max
/// payload, extended tags, no-snoop, max read request.
const EXP_DEVCTL_WRITABLE: u16 = 0x7fff & !((1 << 9) | (1 << 10));
/// Device status: the four error-detected bits are write-1-to-clear.
const EXP_DEVSTA_W1C: u16 = 0xf;
/// PMC: version 3 of the specification.
const PM_PMC_VERSION_3: u16 = 3;
/// COMMAND bits software may change: memory, master, parity and SERR reporting, INTx disable.
const COMMAND_WRITABLE: u16 = COMMAND_MEMORY | COMMAND_MASTER | (1 << 6) | (1 << 8) | (1 << 10);
/// STATUS error bits, write-1-to-clear.
const STATUS_W1C: u16 = 0xf900;

/// Bytes, write masks and the reset image of one function's configuration space.
#[derive(Clone, Debug)]
pub(crate) struct ConfigSpace {
    bytes: Vec<u8>,
    writable: Vec<u8>,
    write_one_to_clear: Vec<u8>,
    power_on: Vec<u8>,
}

impl ConfigSpace {
    /// The configuration space of `layout`, whose BARs and MSI-X were validated already.
    pub(crate) fn build(layout: &PciLayout) -> Result<ConfigSpace, LayoutError> {
        let mut cs = ConfigSpace {
            bytes: vec![0; CONFIG_SPACE_SIZE],
            writable: vec![0; CONFIG_SPACE_SIZE],
            write_one_to_clear: vec![0; CONFIG_SPACE_SIZE],
            power_on: Vec::new(),
        };
        let id = &layout.identity;
        let class = id.class.to_le_bytes();
        let mut header = Type0Header {
            vendor: id.vendor.into(),
            device: id.device.into(),
            status: STATUS_CAP_LIST.into(),
            revision: id.revision,
            class: [class[0], class[1], class[2]],
            header_type: if id.multi_function { 0x80 } else { 0 },
            subsystem_vendor: id.subsystem_vendor.into(),
            subsystem: id.subsystem.into(),
            interrupt_pin: id.interrupt_pin,
            ..Default::default()
        };
        let mut bar_writable = [0u32; 6];
        for bar in &layout.bars {
            let i = usize::from(bar.index);
            let mut flags = if bar.prefetchable { 1 << 3 } else { 0 };
            if bar.width == BarWidth::Bits64 {
                flags |= 2 << 1;
                // The upper half holds address bits 63:32 above the size.
                bar_writable[i + 1] = !((bar.size - 1) >> 32) as u32;
            }
            header.bars[i] = flags.into();
            // Address bits below the size read as 0; the low four bits are the type.
            bar_writable[i] = !((bar.size - 1) as u32) & !0xf;
        }
        // Capabilities chain: MSI-X, then PCI Express, then power management.
        let mut chain: Vec<u16> = Vec::new();
        if layout.msix.is_some() {
            chain.push(MSIX_CAP);
        }
        chain.push(EXP_CAP);
        if layout.power_management {
            chain.push(PM_CAP);
        }
        header.capabilities = chain[0] as u8;
        cs.put(0, header.as_bytes());
        let next = |at: u16| -> u8 {
            let pos = chain.iter().position(|&c| c == at).unwrap_or(chain.len());
            chain.get(pos + 1).map_or(0, |&n| n as u8)
        };
        cs.mask(COMMAND, &COMMAND_WRITABLE.to_le_bytes(), false);
        cs.mask(STATUS, &STATUS_W1C.to_le_bytes(), true);
        cs.mask(0x0c, &[0xff], false); // cache line size: scratch
        cs.mask(INTERRUPT_LINE, &[0xff], false);
        for (i, w) in bar_writable.iter().enumerate() {
            cs.mask(BAR0 + 4 * i as u16, &w.to_le_bytes(), false);
        }
        if let Some(msix) = layout.msix {
            let cap = MsixCapability {
                id: CAP_ID_MSIX,
                next: next(MSIX_CAP),
                control: (msix.vectors - 1).into(),
                table: (msix.table_offset | u32::from(msix.bar)).into(),
                pba: (msix.pba_offset | u32::from(msix.bar)).into(),
            };
            cs.put(MSIX_CAP, cap.as_bytes());
            let control = MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL;
            cs.mask(MSIX_CAP + MSIX_FLAGS, &control.to_le_bytes(), false);
        }
        let exp = ExpressCapability {
            id: CAP_ID_EXP,
            next: next(EXP_CAP),
            flags: EXP_FLAGS_RCIEP_V2.into(),
            devcap: EXP_DEVCAP_FLR.into(),
            devctl: EXP_DEVCTL_DEFAULT.into(),
            ..Default::default()
        };
        cs.put(EXP_CAP, exp.as_bytes());
        cs.mask(
            EXP_CAP + EXP_DEVCTL,
            &EXP_DEVCTL_WRITABLE.to_le_bytes(),
            false,
        );
        cs.mask(EXP_CAP + EXP_DEVSTA, &EXP_DEVSTA_W1C.to_le_bytes(), true);
        if layout.power_management {
            let pm = PmCapability {
                id: CAP_ID_PM,
                next: next(PM_CAP),
                pmc: PM_PMC_VERSION_3.into(),
                ..Default::default()
            };
            cs.put(PM_CAP, pm.as_bytes());
            cs.mask(PM_CAP + PM_CTRL, &PM_CTRL_STATE_MASK.to_le_bytes(), false);
        }
        for reg in &layout.config_registers {
            cs.define(reg, &chain)?;
        }
        cs.power_on = cs.bytes.clone();
        Ok(cs)
    }

    /// Adds a device-specific register, refusing one that overlaps the header or a capability.
    fn define(&mut self, reg: &super::ConfigRegister, chain: &[u16]) -> Result<(), LayoutError> {
        let err = |why| LayoutError::ConfigRegister {
            offset: reg.offset,
            why,
        };
        let width = u16::from(reg.width);
        if !matches!(reg.width, 1 | 2 | 4) || !reg.offset.is_multiple_of(width) {
            return Err(err("width must be 1, 2 or 4, naturally aligned"));
        }
        let (start, end) = (reg.offset, reg.offset + width);
        if start < 0x40 || usize::from(end) > CONFIG_SPACE_SIZE {
            return Err(err("outside the device-specific area"));
        }
        let cap_len = |cap: u16| match cap {
            MSIX_CAP => 12,
            EXP_CAP => 0x3c,
            _ => 8,
        };
        if chain.iter().any(|&c| start < c + cap_len(c) && c < end)
            || (start < 0x104 && end > 0x100)
        {
            return Err(err("overlaps a capability"));
        }
        let w = usize::from(reg.width);
        self.put(start, &reg.initial.to_le_bytes()[..w]);
        self.mask(start, &reg.writable.to_le_bytes()[..w], false);
        self.mask(start, &reg.write_one_to_clear.to_le_bytes()[..w], true);
        Ok(())
    }

    fn put(&mut self, at: u16, data: &[u8]) {
        let at = usize::from(at);
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }

    fn mask(&mut self, at: u16, mask: &[u8], w1c: bool) {
        let at = usize::from(at);
        let target = if w1c {
            &mut self.write_one_to_clear
        } else {
            &mut self.writable
        };
        target[at..at + mask.len()].copy_from_slice(mask);
    }

    /// Copy `buf.len()` bytes from `offset`; the caller checked the range.
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.bytes[offset..offset + buf.len()]);
    }

    /// Store `data` at `offset` through the masks; the caller checked the range.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let at = offset + i;
            let (w, c) = (self.writable[at], self.write_one_to_clear[at]);
            self.bytes[at] = ((self.bytes[at] & !w) | (value & w)) & !(value & c);
        }
    }

    /// A 16-bit register.
    pub(crate) fn word(&self, at: u16) -> u16 {
        let at = usize::from(at);
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// A 32-bit register.
    pub(crate) fn dword(&self, at: u16) -> u32 {
        let at = usize::from(at);
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    /// Overwrite a 16-bit register, masks aside (for bits the function itself manages).
    pub(crate) fn set_word(&mut self, at: u16, value: u16) {
        self.put(at, &value.to_le_bytes());
    }

    /// Back to the power-on image (function-level reset).
    pub(crate) fn reset(&mut self) {
        self.bytes.copy_from_slice(&self.power_on);
    }
}
