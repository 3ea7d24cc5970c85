//! A test rig: an I/OAT function over any DMA space, with the register accessors and the
//! sequences of Linux 7.3's VFIO selftest ioat driver (init, memcpy start/wait, send_msi).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use uiommu_devices::ioat::{regs::*, Ioat, IoatConfig, IoatDescriptor, MMIO_BAR};
use uiommu_devices::pci::{regs as pci, PciFunction};
use uiommu_devices::{DmaSpace, RecordingSink};
use zerocopy::IntoBytes;

pub struct Rig {
    pub function: PciFunction,
    pub sink: Arc<RecordingSink>,
}

impl Rig {
    pub fn new(dma: Arc<dyn DmaSpace>, config: IoatConfig) -> Rig {
        let sink = Arc::new(RecordingSink::new());
        let function =
            PciFunction::new(dma, sink.clone(), |ports| Ioat::new(config, ports)).unwrap();
        Rig { function, sink }
    }

    pub fn cfg_read(&self, offset: u16, len: usize) -> u64 {
        let mut buf = [0u8; 8];
        self.function
            .config_read(u64::from(offset), &mut buf[..len])
            .unwrap();
        u64::from_le_bytes(buf)
    }

    pub fn cfg_write(&self, offset: u16, len: usize, value: u64) {
        self.function
            .config_write(u64::from(offset), &value.to_le_bytes()[..len])
            .unwrap();
    }

    pub fn read(&self, offset: u64, len: usize) -> u64 {
        let mut buf = [0u8; 8];
        self.function
            .bar_read(MMIO_BAR, offset, &mut buf[..len])
            .unwrap();
        u64::from_le_bytes(buf)
    }

    pub fn write(&self, offset: u64, len: usize, value: u64) {
        self.function
            .bar_write(MMIO_BAR, offset, &value.to_le_bytes()[..len])
            .unwrap();
    }

    pub fn status(&self) -> u64 {
        self.read(CHANSTS, 8) & CHANSTS_STATUS
    }

    /// The selftest's ioat_clear_errors, with its quirk of writing 0x148's value to 0x180.
    pub fn clear_errors(&self) {
        let errors = self.cfg_read(PCI_CHANERR_INT, 4);
        self.cfg_write(PCI_CHANERR_INT, 4, errors);
        let errors = self.cfg_read(PCI_DMAUNCERRSTS, 4);
        self.cfg_write(PCI_CHANERR_INT, 4, errors);
        let errors = self.read(CHANERR, 4);
        self.write(CHANERR, 4, errors);
    }

    /// The selftest's ioat_reset: CHANCMD must drop the reset bit and CHANSTS read HALTED.
    pub fn reset(&self) {
        self.clear_errors();
        self.write(CHANCMD, 1, u64::from(CHANCMD_RESET));
        assert_eq!(self.read(CHANCMD, 1) & u64::from(CHANCMD_RESET), 0);
        assert_eq!(self.status(), 3, "CHANSTS after reset");
    }

    /// Program MSI-X entry 0 and enable MSI-X, as VFIO does for SET_IRQS.
    pub fn enable_msix(&self) {
        self.write(0x2000, 4, 0xfee0_0000);
        self.write(0x2004, 4, 0);
        self.write(0x2008, 4, 0x4041);
        self.write(0x200c, 4, 0);
        let control = self.cfg_read(pci::MSIX_CAP + pci::MSIX_FLAGS, 2);
        self.cfg_write(
            pci::MSIX_CAP + pci::MSIX_FLAGS,
            2,
            control | u64::from(pci::MSIX_FLAGS_ENABLE),
        );
    }

    /// The selftest's ioat_init.
    pub fn init(&self) {
        self.cfg_write(
            pci::COMMAND,
            2,
            u64::from(pci::COMMAND_MEMORY | pci::COMMAND_MASTER | pci::COMMAND_INTX_DISABLE),
        );
        self.reset();
        self.write(INTRCTRL, 1, u64::from(INTRCTRL_MSIX_VECTOR_CONTROL));
        self.enable_msix();
    }

    /// The selftest's __ioat_memcpy_start: CHAINADDR, CHANCTRL, DMACOUNT.
    pub fn start(&self, chain: u64, count: u16) {
        self.write(CHAINADDR, 8, chain);
        self.write(
            CHANCTRL,
            2,
            u64::from(CHANCTRL_INT_REARM | CHANCTRL_ANY_ERR_ABORT_EN),
        );
        self.write(DMACOUNT, 2, u64::from(count));
    }

    /// The selftest's ioat_memcpy_wait, with a deadline: Ok after DONE and SUSPENDED, or the
    /// CHANERR of a halt.
    pub fn wait(&self) -> Result<(), u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.status() {
                1 => break,
                3 => return Err(self.read(CHANERR, 4) as u32),
                _ => assert!(Instant::now() < deadline, "channel never finished"),
            }
            std::thread::yield_now();
        }
        self.write(CHANCMD, 1, u64::from(CHANCMD_SUSPEND));
        assert_eq!(self.status(), 2, "suspend takes effect at once when idle");
        Ok(())
    }
}

pub fn copy_descriptor(src: u64, dst: u64, size: u32, next: u64, ctl: u32) -> IoatDescriptor {
    let mut desc = IoatDescriptor::default();
    desc.size.set(size);
    desc.ctl.set(ctl);
    desc.src.set(src);
    desc.dst.set(dst);
    desc.next.set(next);
    desc
}

pub fn bytes(desc: &IoatDescriptor) -> &[u8] {
    desc.as_bytes()
}
