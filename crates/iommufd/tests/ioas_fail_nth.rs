//! Fault injection over every IOAS and VFIO compat ioctl, as the kernel's `iommufd_fail_nth`
//! selftest does: for N = 1, 2, … arm the thread's fail-nth countdown, run the ioctl, and stop
//! at the first N where it succeeds. After each injected failure nothing may have changed or
//! leaked: the same areas, allowed ranges, options and pins, no new object (the next
//! IOMMU_IOAS_ALLOC gets the lowest free id), and the errno is one the kernel can return there.

mod ioas_common;

use std::sync::Arc;

use ioas_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::failpoint::{fail_nth, set_fail_nth};
use uiommu_iommufd::io_pagetable::IovaRange;
use uiommu_iommufd::object::ObjId;
use uiommu_iommufd::user_memory::PAGE_SIZE;

/// Everything an ioctl could leak or half-change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    objects: usize,
    areas: Vec<Vec<(u64, u64, u64)>>,
    allowed: Vec<Vec<IovaRange>>,
    large_pages: Vec<bool>,
    pins: u64,
    charged: u64,
    domain_entries: usize,
    compat: Result<ObjId, Errno>,
}

struct Scenario {
    f: Fixture,
    ioases: Vec<u32>,
    domain: Arc<RecordingDomain>,
    buf: Buffer,
}

impl Scenario {
    /// IOAS 1 with a page domain and one 4-page area at 0x10000; IOAS 2 without a domain and
    /// one 4-page area at 0x10000; IOAS 1 is the VFIO compat IOAS.
    fn new() -> Scenario {
        let f = Fixture::new();
        let ioases = vec![f.ioas_alloc(), f.ioas_alloc()];
        let domain = RecordingDomain::page();
        f.attach(ioases[0], &domain);
        let buf = Buffer::new(16 * PAGE_SIZE as usize);
        f.map_fixed(ioases[0], buf.addr(), 4 * PAGE_SIZE, 0x10000)
            .unwrap();
        f.map_fixed(ioases[1], buf.addr(), 4 * PAGE_SIZE, 0x10000)
            .unwrap();
        let mut set = IommuVfioIoas {
            size: size_of::<IommuVfioIoas>() as u32,
            ioas_id: ioases[0],
            op: IOMMU_VFIO_IOAS_SET,
            reserved: 0,
        };
        f.ioctl(IOMMU_VFIO_IOAS, &mut set).unwrap();
        Scenario {
            f,
            ioases,
            domain,
            buf,
        }
    }

    /// What the IOAS translates, as maximal runs `(iova, length, uva)`. Area boundaries are
    /// left out on purpose: a VFIO type1 unmap that fails after its first cut keeps the cut, as
    /// in Linux, which changes no translation.
    fn translation(&self, id: u32) -> Vec<(u64, u64, u64)> {
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for area in self.f.ioas(id).iopt().areas() {
            let (iova, length, uva) = (area.iova.0, area.length, area.uptr.0);
            match runs.last_mut() {
                Some(run) if run.0 + run.1 == iova && run.2 + run.1 == uva => run.1 += length,
                _ => runs.push((iova, length, uva)),
            }
        }
        runs
    }

    fn snapshot(&self) -> Snapshot {
        let ioas = |id: u32| self.f.ioas(id);
        Snapshot {
            objects: self.f.ctx.objects().len(),
            areas: self.ioases.iter().map(|&id| self.translation(id)).collect(),
            allowed: self
                .ioases
                .iter()
                .map(|&id| ioas(id).iopt().allowed_iovas())
                .collect(),
            large_pages: self
                .ioases
                .iter()
                .map(|&id| ioas(id).iopt().large_pages_enabled())
                .collect(),
            pins: self.f.pins(),
            charged: self.f.policy.user.pages(),
            domain_entries: self.domain.entries().len(),
            compat: self.f.ctx.vfio_compat_ioas_id(),
        }
    }

    /// Run `op` with fail-nth = 1, 2, … until it succeeds; check each failure left no trace.
    /// Returns how many failures were injected.
    fn sweep(
        &self,
        name: &str,
        allowed: &[Errno],
        op: impl Fn(&Scenario) -> Result<(), Errno>,
    ) -> u32 {
        for n in 1..10_000 {
            let before = self.snapshot();
            set_fail_nth(n);
            let result = op(self);
            let unreached = fail_nth();
            set_fail_nth(0);
            match result {
                Ok(()) => {
                    assert!(
                        unreached > 0,
                        "{name}: fail-nth {n} fired but the ioctl succeeded"
                    );
                    return n - 1;
                }
                Err(errno) => {
                    assert_eq!(
                        unreached, 0,
                        "{name}: failed with {errno} without an injection"
                    );
                    assert!(
                        allowed.contains(&errno),
                        "{name}: fail-nth {n} gave {errno}"
                    );
                    assert_eq!(self.snapshot(), before, "{name}: fail-nth {n} left a trace");
                    let next = self.f.ioas_alloc();
                    assert_eq!(next, self.ioases.len() as u32 + 1, "{name}: an id leaked");
                    self.f.destroy(next).unwrap();
                    assert!(
                        self.domain.violations().is_empty(),
                        "{name}: {:?}",
                        self.domain.violations()
                    );
                }
            }
        }
        panic!("{name} never succeeded");
    }
}

const ENOMEM: Errno = Errno::ENOMEM;
const ENOENT: Errno = Errno::ENOENT;
const EFAULT: Errno = Errno::EFAULT;
const ENODEV: Errno = Errno::ENODEV;

#[test]
fn ioas_alloc_survives_every_injected_failure() {
    let s = Scenario::new();
    let failures = s.sweep("IOAS_ALLOC", &[ENOMEM], |s| {
        let id = s.f.try_ioas_alloc()?;
        assert_eq!(id, 3);
        Ok(())
    });
    assert!(
        failures >= 2,
        "allocation and id reservation can both fail: {failures}"
    );
}

#[test]
fn map_into_a_domain_survives_every_injected_failure() {
    let s = Scenario::new();
    let failures = s.sweep("IOAS_MAP", &[ENOMEM, ENOENT, EFAULT], |s| {
        s.f.map_fixed(
            s.ioases[0],
            s.buf.addr() + 4 * PAGE_SIZE,
            4 * PAGE_SIZE,
            0x40000,
        )
        .map(|_| ())
    });
    assert!(
        failures >= 5,
        "lookup, pages, area, pin, account: {failures}"
    );
    assert_eq!(s.f.pins(), 8);
}

#[test]
fn automatic_map_without_a_domain_survives_every_injected_failure() {
    let s = Scenario::new();
    s.sweep("IOAS_MAP auto", &[ENOMEM, ENOENT], |s| {
        s.f.map(s.ioases[1], RW, s.buf.addr(), 2 * PAGE_SIZE, 0)
            .map(|_| ())
    });
}

#[test]
fn copy_into_a_domain_survives_every_injected_failure() {
    let s = Scenario::new();
    let failures = s.sweep("IOAS_COPY", &[ENOMEM, ENOENT, EFAULT], |s| {
        s.f.copy(
            s.ioases[0],
            s.ioases[1],
            RW | IOMMU_IOAS_MAP_FIXED_IOVA,
            2 * PAGE_SIZE,
            0x80000,
            0x11000,
        )
        .map(|_| ())
    });
    assert!(
        failures >= 4,
        "two lookups, get_pages, area, pin: {failures}"
    );
}

#[test]
fn unmap_survives_every_injected_failure() {
    let s = Scenario::new();
    s.sweep("IOAS_UNMAP", &[ENOENT], |s| {
        assert_eq!(
            s.f.unmap(s.ioases[0], 0x10000, 4 * PAGE_SIZE)?,
            4 * PAGE_SIZE
        );
        Ok(())
    });
    assert_eq!(s.f.pins(), 0);
}

#[test]
fn allow_iovas_survives_every_injected_failure() {
    let s = Scenario::new();
    let failures = s.sweep("IOAS_ALLOW_IOVAS", &[ENOMEM, ENOENT], |s| {
        s.f.allow_iovas(
            s.ioases[1],
            &[
                (0x100000, 0x1fffff),
                (0x300000, 0x3fffff),
                (0x500000, 0x5fffff),
            ],
        )
    });
    assert!(
        failures >= 4,
        "lookup and one allocation per range: {failures}"
    );
}

#[test]
fn iova_ranges_and_options_survive_every_injected_failure() {
    let s = Scenario::new();
    s.sweep("IOAS_IOVA_RANGES", &[ENOENT], |s| {
        s.f.iova_ranges(s.ioases[0], 4).2.map(|_| ())
    });
    s.sweep("OPTION HUGE_PAGES", &[ENOENT], |s| {
        s.f.option(IOMMU_OPTION_HUGE_PAGES, IOMMU_OPTION_OP_SET, s.ioases[1], 0)
            .1
            .map(|_| ())
    });
    s.sweep("VFIO_IOAS SET", &[ENOENT], |s| {
        let mut cmd = IommuVfioIoas {
            size: size_of::<IommuVfioIoas>() as u32,
            ioas_id: s.ioases[1],
            op: IOMMU_VFIO_IOAS_SET,
            reserved: 0,
        };
        s.f.ioctl(IOMMU_VFIO_IOAS, &mut cmd).map(|_| ())
    });
    assert_eq!(s.f.ctx.vfio_compat_ioas_id(), Ok(ObjId(s.ioases[1])));
}

#[test]
fn vfio_map_and_unmap_survive_every_injected_failure() {
    let s = Scenario::new();
    s.sweep("VFIO_IOMMU_MAP_DMA", &[ENOMEM, ENODEV, EFAULT], |s| {
        let mut cmd = VfioIommuType1DmaMap {
            argsz: size_of::<VfioIommuType1DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: s.buf.addr() + 8 * PAGE_SIZE,
            iova: 0x100000,
            size: 4 * PAGE_SIZE,
        };
        s.f.ioctl(VFIO_IOMMU_MAP_DMA, &mut cmd).map(|_| ())
    });
    s.sweep("VFIO_IOMMU_GET_INFO", &[ENODEV], |s| {
        let mut info = [0u8; 128];
        info[..4].copy_from_slice(&128u32.to_le_bytes());
        s.f.ioctl_raw(VFIO_IOMMU_GET_INFO, info.as_mut_ptr() as u64)
            .map(|_| ())
    });
}

#[test]
fn vfio_type1_cut_survives_every_injected_failure() {
    let f = Fixture::new();
    let id = f.ioas_alloc();
    let domain = RecordingDomain::page();
    f.attach(id, &domain);
    let buf = Buffer::new(8 * PAGE_SIZE as usize);
    let s = Scenario {
        f,
        ioases: vec![id],
        domain,
        buf,
    };
    let mut set = IommuVfioIoas {
        size: size_of::<IommuVfioIoas>() as u32,
        ioas_id: id,
        op: IOMMU_VFIO_IOAS_SET,
        reserved: 0,
    };
    s.f.ioctl(IOMMU_VFIO_IOAS, &mut set).unwrap();
    s.sweep("VFIO_SET_IOMMU", &[ENODEV], |s| {
        s.f.ioctl_raw(VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into())
            .map(|_| ())
    });
    s.f.map_fixed(id, s.buf.addr(), 8 * PAGE_SIZE, 0x10000)
        .unwrap();
    let failures = s.sweep("VFIO_IOMMU_UNMAP_DMA type1", &[ENOMEM, ENODEV], |s| {
        let mut cmd = VfioIommuType1DmaUnmap {
            argsz: size_of::<VfioIommuType1DmaUnmap>() as u32,
            flags: 0,
            iova: 0x12000,
            size: 2 * PAGE_SIZE,
        };
        s.f.ioctl(VFIO_IOMMU_UNMAP_DMA, &mut cmd)?;
        assert_eq!(cmd.size, 2 * PAGE_SIZE);
        Ok(())
    });
    assert!(
        failures >= 3,
        "compat lookup and the cut's allocations: {failures}"
    );
    assert_eq!(
        s.f.areas(id),
        [(0x10000, 2 * PAGE_SIZE), (0x14000, 4 * PAGE_SIZE)]
    );
}

#[test]
fn compat_ioas_create_survives_every_injected_failure() {
    let f = Fixture::new();
    let domain = RecordingDomain::page();
    let s = Scenario {
        f,
        ioases: Vec::new(),
        domain,
        buf: Buffer::new(PAGE_SIZE as usize),
    };
    s.sweep("vfio_compat_ioas_create", &[ENOMEM], |s| {
        s.f.ctx.vfio_compat_ioas_create()
    });
    assert_eq!(s.f.ctx.vfio_compat_ioas_id(), Ok(ObjId(1)));
}
