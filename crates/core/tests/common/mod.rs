//! A small driver for exercising the core: records every probe, makes simple page tables.
#![allow(dead_code)] // each test file uses a different part of it

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use uiommu_core::*;

/// How the driver answers under the call-all policy, where it must decide for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manners {
    /// Accepts only devices whose fwspec names one of its fwnodes.
    Careful,
    /// Forgot the check: accepts every device it is offered.
    Careless,
}

#[derive(Debug)]
pub struct TestDriver {
    pub name: String,
    pub manners: Manners,
    pub group: GroupChoice,
    pub preference: Mutex<HashMap<String, DomainType>>,
    pub static_default: Option<DomainType>,
    pub fail_attach: AtomicBool,
    /// Every probe_device call: (device name, routed instance).
    pub probed: Mutex<Vec<(String, Option<InstanceId>)>>,
    pub released: Mutex<Vec<String>>,
    /// This driver's instances, by fwnode, for call-all decisions.
    pub instances: Mutex<HashMap<FwNode, InstanceId>>,
    /// Reserved regions reported for every device, by device name.
    pub reserved: Mutex<HashMap<String, Vec<ReservedRegion>>>,
}

impl TestDriver {
    pub fn new(name: &str) -> TestDriver {
        TestDriver {
            name: name.to_string(),
            manners: Manners::Careful,
            group: GroupChoice::PerDevice,
            preference: Mutex::new(HashMap::new()),
            static_default: None,
            fail_attach: AtomicBool::new(false),
            probed: Mutex::new(Vec::new()),
            released: Mutex::new(Vec::new()),
            instances: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_group(mut self, group: GroupChoice) -> TestDriver {
        self.group = group;
        self
    }

    pub fn careless(mut self) -> TestDriver {
        self.manners = Manners::Careless;
        self
    }

    pub fn prefer(&self, device: &str, ty: DomainType) {
        self.preference
            .lock()
            .unwrap()
            .insert(device.to_string(), ty);
    }

    /// Register an instance of this driver under `fwnode` and remember it.
    pub fn register(self: &Arc<Self>, core: &IommuCore, name: &str, fwnode: &FwNode) -> InstanceId {
        let id = core
            .register(name, Some(fwnode.clone()), self.clone())
            .expect("register");
        self.instances.lock().unwrap().insert(fwnode.clone(), id);
        id
    }

    pub fn probed_names(&self) -> Vec<String> {
        self.probed
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl IommuOps for TestDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        self.probed
            .lock()
            .unwrap()
            .push((dev.name().to_string(), dev.iommu));
        if let Some(routed) = dev.iommu {
            return Ok(routed);
        }
        let instances = self.instances.lock().unwrap();
        match self.manners {
            Manners::Careful => dev
                .fwspec
                .and_then(|spec| instances.get(&spec.fwnode).copied())
                .ok_or(CoreError::NoDevice),
            Manners::Careless => instances.values().min().copied().ok_or(CoreError::NoDevice),
        }
    }

    fn release_device(&self, dev: &DeviceInfo<'_>) {
        self.released.lock().unwrap().push(dev.name().to_string());
    }

    fn device_group(&self, _dev: &DeviceInfo<'_>) -> GroupChoice {
        self.group
    }

    fn def_domain_type(&self, dev: &DeviceInfo<'_>) -> Option<DomainType> {
        self.preference.lock().unwrap().get(dev.name()).copied()
    }

    fn static_default_domain(&self) -> Option<DomainType> {
        self.static_default
    }

    fn reserved_regions(&self, dev: &DeviceInfo<'_>) -> Vec<ReservedRegion> {
        self.reserved
            .lock()
            .unwrap()
            .get(dev.name())
            .cloned()
            .unwrap_or_default()
    }

    fn domain_alloc(
        &self,
        _dev: &DeviceInfo<'_>,
        request: DomainRequest<'_>,
    ) -> Result<Box<dyn DomainOps>> {
        let paging = matches!(request, DomainRequest::Dma | DomainRequest::Paging { .. });
        Ok(Box::new(TestDomain {
            paging,
            fail_attach: self.fail_attach.load(Ordering::Relaxed),
            attached: Mutex::new(Vec::new()),
            pages: Mutex::new(BTreeMap::new()),
        }))
    }
}

#[derive(Debug)]
pub struct TestDomain {
    pub paging: bool,
    pub fail_attach: bool,
    pub attached: Mutex<Vec<String>>,
    pub pages: Mutex<BTreeMap<u64, u64>>,
}

impl DomainOps for TestDomain {
    fn attach_dev(&self, dev: &DeviceInfo<'_>) -> Result<()> {
        if self.fail_attach {
            return Err(CoreError::Invalid("test domain refuses attach"));
        }
        self.attached.lock().unwrap().push(dev.name().to_string());
        Ok(())
    }

    fn pgsize_bitmap(&self) -> u64 {
        if self.paging {
            1 << 12
        } else {
            0
        }
    }

    fn map_pages(
        &self,
        iova: Iova,
        pa: PhysAddr,
        pgsize: u64,
        n: u64,
        _: Prot,
    ) -> (u64, Result<()>) {
        let mut pages = self.pages.lock().unwrap();
        for i in 0..n {
            if pages
                .insert(iova.0 + i * pgsize, pa.0 + i * pgsize)
                .is_some()
            {
                return (i * pgsize, Err(CoreError::Exists));
            }
        }
        (n * pgsize, Ok(()))
    }

    fn unmap_pages(&self, iova: Iova, pgsize: u64, n: u64) -> u64 {
        let mut pages = self.pages.lock().unwrap();
        (0..n)
            .take_while(|i| pages.remove(&(iova.0 + i * pgsize)).is_some())
            .count() as u64
            * pgsize
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        let pages = self.pages.lock().unwrap();
        let page = iova.0 & !0xfff;
        pages.get(&page).map(|pa| PhysAddr(pa + (iova.0 & 0xfff)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A PCIe function description.
pub fn pcie(addr: &str, kind: PciKind, multifunction: bool, acs: bool) -> PciFunction {
    PciFunction {
        address: addr.parse().unwrap(),
        kind,
        multifunction,
        acs,
        dma_aliases: Vec::new(),
    }
}

pub fn endpoint(addr: &str) -> PciFunction {
    pcie(addr, PciKind::Endpoint, false, false)
}

pub fn spec(fwnode: &FwNode, id: u32) -> Option<Fwspec> {
    Some(Fwspec {
        fwnode: fwnode.clone(),
        ids: vec![id],
    })
}

pub fn bound_instance(core: &IommuCore, dev: DeviceId) -> Option<InstanceId> {
    match core.probe_state(dev).unwrap() {
        ProbeState::Bound { instance, .. } => Some(instance),
        _ => None,
    }
}
