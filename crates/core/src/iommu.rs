//! The IOMMU core itself: instances, devices, probing, groups, default domains and DMA
//! ownership (Linux `drivers/iommu/iommu.c`).
//!
//! # Model
//! * An **instance** is one IOMMU, registered by its driver under a fwnode
//!   ([`IommuCore::register`]). `by_fwnode` indexes instances by fwnode identity, so routing a
//!   device costs one hash lookup whatever the number of instances.
//! * A **device** is added with an optional [`Fwspec`]. Under [`ProbePolicy::ByFwnode`] it goes
//!   to the instance registered under its fwspec's fwnode; if that fwnode has no instance yet
//!   the device waits in `waiting` (Linux `EPROBE_DEFER`) and is probed when the instance
//!   registers. A device without a fwspec gets no IOMMU, unless exactly one instance was
//!   registered without a fwnode (the legacy global driver).
//! * A **group** is the unit of isolation: every device of a group is attached to the same
//!   domain. Its default domain is chosen once all devices present at probe time have joined.
//!   A DMA default domain gets the direct-mapped reserved regions of its devices (RMRRs, unity
//!   maps) identity-mapped before its first attach, and again for every device that joins later.
//! * **DMA ownership**: a kernel driver bound to a device uses the default domain
//!   ([`IommuCore::use_default_domain`]); a user such as iommufd claims the whole group
//!   ([`IommuCore::claim_dma_owner`]), which moves it to a blocking domain until the user
//!   attaches its own.
//!
//! # Locking
//! One mutex (`state`, Linux's `iommu_probe_device_lock` and the group mutexes folded into one)
//! serializes all probing, registration, attach and ownership changes. Driver callbacks run
//! under it, so a driver must not call back into the core from a callback. Domain map/unmap
//! calls do not take it. Lock order: `IommuCore::state` → driver-internal locks.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::addr::{Iova, PhysAddr};
use crate::device::{BusInfo, DeviceDesc, DeviceId, PciAddress};
use crate::domain::Domain;
use crate::driver::{
    Capability, DeviceInfo, DomainRequest, DomainType, GroupChoice, HwInfo, IommuOps, PagingFlags,
    ReservedKind, ReservedRegion,
};
use crate::error::{CoreError, Result};
use crate::fwnode::{FwNode, Fwspec};
use crate::group::pci_device_group;

/// A registered IOMMU instance (Linux `struct iommu_device`). Ids are not reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct InstanceId(pub(crate) u32);

impl InstanceId {
    /// The raw index, for drivers' own tables and for display.
    pub fn raw(self) -> u32 {
        self.0
    }
}

/// An IOMMU group number: the lowest free number at creation, reused after the group is freed
/// (Linux allocates them from an IDA).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GroupId(pub u32);

/// Who owns a group's DMA when a user (not a kernel driver) claims it (Linux passes the
/// owner's address as a cookie). Tokens are unique per [`DmaOwner::new`] call.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DmaOwner(u64);

impl DmaOwner {
    /// A new, unique owner token.
    #[allow(clippy::new_without_default)]
    pub fn new() -> DmaOwner {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        DmaOwner(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// How the core finds the driver for a device.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum ProbePolicy {
    /// Look the device's fwspec fwnode up among registered instances: each device reaches
    /// exactly the driver that firmware named, by construction.
    #[default]
    ByFwnode,
    /// Offer each device to every registered driver in registration order until one accepts;
    /// drivers must reject foreign devices with [`CoreError::NoDevice`]. Kept only to compare
    /// with [`ProbePolicy::ByFwnode`]: one careless driver takes devices from the others.
    CallAll,
}

/// The global default-domain setting (Linux `iommu.passthrough=` and `iommu.strict=`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum DefaultDomainPolicy {
    /// Identity default domains: DMA bypasses translation.
    Passthrough,
    /// Translated DMA with deferred invalidation (`DMA-FQ`).
    Lazy,
    /// Translated DMA with synchronous invalidation (`DMA`).
    #[default]
    Strict,
}

impl DefaultDomainPolicy {
    fn domain_type(self) -> DomainType {
        match self {
            DefaultDomainPolicy::Passthrough => DomainType::Identity,
            DefaultDomainPolicy::Lazy => DomainType::DmaFq,
            DefaultDomainPolicy::Strict => DomainType::Dma,
        }
    }
}

/// Settings fixed when the core is created.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CoreConfig {
    /// How devices are routed to drivers.
    pub policy: ProbePolicy,
    /// The default domain type when drivers state no preference.
    pub default_domain: DefaultDomainPolicy,
}

/// Where a device stands with the IOMMU core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeState {
    /// Bound to an instance and a member of a group.
    Bound {
        /// The instance serving it.
        instance: InstanceId,
        /// Its group.
        group: GroupId,
    },
    /// Its fwspec names a fwnode no instance is registered under yet.
    Deferred,
    /// No IOMMU serves it.
    NoIommu,
    /// Its driver's probe failed.
    Failed(CoreError),
}

struct Instance {
    name: String,
    fwnode: Option<FwNode>,
    ops: Arc<dyn IommuOps>,
}

pub(crate) struct DeviceEntry {
    pub(crate) desc: DeviceDesc,
    pub(crate) fwspec: Option<Fwspec>,
    pub(crate) state: ProbeState,
}

impl DeviceEntry {
    pub(crate) fn group(&self) -> Option<GroupId> {
        match self.state {
            ProbeState::Bound { group, .. } => Some(group),
            _ => None,
        }
    }
}

/// Lookup key for groups that are shared by choice of the driver.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum SharedKey {
    Instance(InstanceId),
    Driver(InstanceId, u64),
}

struct Group {
    instance: InstanceId,
    devices: Vec<DeviceId>,
    shared_key: Option<SharedKey>,
    default_domain: Option<Arc<Domain>>,
    blocking_domain: Option<Arc<Domain>>,
    /// The domain the group's devices are attached to now.
    domain: Option<Arc<Domain>>,
    /// Set while a user owns the group's DMA; `owner_count` counts its claims, or the kernel
    /// drivers using the default domain when `owner` is `None`.
    owner: Option<DmaOwner>,
    owner_count: u32,
}

/// Everything the core knows, guarded by [`IommuCore`]'s one mutex.
pub(crate) struct State {
    config: CoreConfig,
    instances: Vec<Option<Instance>>,
    by_fwnode: HashMap<FwNode, InstanceId>,
    fwnodeless: Vec<InstanceId>,
    /// Devices deferred until an instance registers under this fwnode, in probe order.
    waiting: HashMap<FwNode, BTreeSet<DeviceId>>,
    pub(crate) devices: Vec<Option<DeviceEntry>>,
    pub(crate) pci_by_bus: HashMap<(u16, u8), Vec<DeviceId>>,
    pci_by_address: HashMap<PciAddress, DeviceId>,
    groups: HashMap<GroupId, Group>,
    shared_groups: HashMap<SharedKey, GroupId>,
    free_group_ids: BTreeSet<u32>,
    next_group_id: u32,
}

/// The IOMMU core: the registry of instances and devices, and the owner of groups.
///
/// `Send + Sync`: every method takes `&self` and locks the one state mutex (see the module
/// documentation for the lock order).
pub struct IommuCore {
    state: Mutex<State>,
}

impl std::fmt::Debug for IommuCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("IommuCore")
            .field("config", &st.config)
            .field("instances", &st.instances.iter().flatten().count())
            .field("devices", &st.devices.iter().flatten().count())
            .field("groups", &st.groups.len())
            .finish()
    }
}

impl Default for IommuCore {
    fn default() -> IommuCore {
        IommuCore::new(CoreConfig::default())
    }
}

/// One device as the core sees it, for reports (`uiommu probe`) and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    /// The device.
    pub id: DeviceId,
    /// Its name.
    pub name: String,
    /// Its bus.
    pub bus: crate::device::BusKind,
    /// Its fwspec.
    pub fwspec: Option<Fwspec>,
    /// Where it stands.
    pub state: ProbeState,
    /// Name of the instance serving it.
    pub instance_name: Option<String>,
    /// Name of that instance's driver.
    pub driver: Option<String>,
    /// Type of its group's default domain.
    pub default_domain: Option<DomainType>,
    /// Type of the domain it is attached to now.
    pub domain: Option<DomainType>,
}

/// One instance as the core sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceReport {
    /// The instance.
    pub id: InstanceId,
    /// Its name.
    pub name: String,
    /// Its driver's name.
    pub driver: String,
    /// The fwnode it was registered under.
    pub fwnode: Option<FwNode>,
}

impl IommuCore {
    /// An empty core: no instances, no devices.
    pub fn new(config: CoreConfig) -> IommuCore {
        IommuCore {
            state: Mutex::new(State {
                config,
                instances: Vec::new(),
                by_fwnode: HashMap::new(),
                fwnodeless: Vec::new(),
                waiting: HashMap::new(),
                devices: Vec::new(),
                pci_by_bus: HashMap::new(),
                pci_by_address: HashMap::new(),
                groups: HashMap::new(),
                shared_groups: HashMap::new(),
                free_group_ids: BTreeSet::new(),
                next_group_id: 0,
            }),
        }
    }

    /// The settings the core was created with.
    pub fn config(&self) -> CoreConfig {
        self.lock().config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A driver callback that panicked leaves the state consistent at the granularity of
        // one probe step; keep serving rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register an IOMMU instance and probe the devices it serves (Linux
    /// `iommu_device_register()`).
    ///
    /// Under [`ProbePolicy::ByFwnode`] that is every device waiting for `fwnode`, or, for the
    /// first instance registered without a fwnode, every device without a fwspec. Devices of a
    /// new group get the group's default domain once all of them have joined.
    ///
    /// # Errors
    /// `Exists` when an instance is already registered under `fwnode`. A failure to set up a
    /// default domain unregisters the instance again and returns the error.
    pub fn register(
        &self,
        name: impl Into<String>,
        fwnode: Option<FwNode>,
        ops: Arc<dyn IommuOps>,
    ) -> Result<InstanceId> {
        let mut st = self.lock();
        if let Some(node) = &fwnode {
            if st.by_fwnode.contains_key(node) {
                return Err(CoreError::Exists);
            }
        }
        let id = InstanceId(u32::try_from(st.instances.len()).map_err(|_| CoreError::NoMemory)?);
        st.instances.push(Some(Instance {
            name: name.into(),
            fwnode: fwnode.clone(),
            ops,
        }));
        let candidates: Vec<DeviceId> = match (&fwnode, st.config.policy) {
            (_, ProbePolicy::CallAll) => st.unbound_devices(),
            (Some(node), ProbePolicy::ByFwnode) => {
                st.by_fwnode.insert(node.clone(), id);
                st.waiting
                    .remove(node)
                    .map(|set| set.into_iter().collect())
                    .unwrap_or_default()
            }
            (None, ProbePolicy::ByFwnode) => {
                st.fwnodeless.push(id);
                if st.fwnodeless.len() == 1 {
                    st.unbound_devices_without_fwspec()
                } else {
                    Vec::new()
                }
            }
        };
        if let Err(err) = st.probe_many(&candidates) {
            st.unregister(id);
            return Err(err);
        }
        tracing::debug!(
            instance = id.0,
            probed = candidates.len(),
            "registered IOMMU instance"
        );
        Ok(id)
    }

    /// Unregister an instance (Linux `iommu_device_unregister()`): release every device it
    /// serves and free their groups. Devices keep their fwspec and wait for the fwnode again.
    ///
    /// # Errors
    /// `NotFound` for an unknown or already unregistered instance.
    pub fn unregister(&self, id: InstanceId) -> Result<()> {
        let mut st = self.lock();
        st.instance(id)?;
        st.unregister(id);
        Ok(())
    }

    /// Add a device, with its fwspec if firmware or its bus gave it one, and probe it (Linux
    /// `device_add()` followed by the bus notifier's `iommu_probe_device()`).
    ///
    /// Probe outcomes (deferred, no IOMMU, a driver's failure) are not errors of the add: read
    /// them back with [`IommuCore::probe_state`].
    ///
    /// # Errors
    /// `Invalid` for a PCI function whose upstream device is unknown or not a bridge, or that
    /// does not sit on a bus below it; `Exists` for a PCI address already present.
    pub fn add_device(&self, desc: DeviceDesc, fwspec: Option<Fwspec>) -> Result<DeviceId> {
        let mut st = self.lock();
        let id = st.insert_device(desc, fwspec)?;
        st.probe_one(id);
        Ok(id)
    }

    /// Remove a device (Linux `device_del()` → `iommu_release_device()`): it leaves its group,
    /// its driver forgets it, and the group is freed with its last device.
    ///
    /// # Errors
    /// `NotFound` for an unknown device.
    pub fn remove_device(&self, dev: DeviceId) -> Result<()> {
        let mut st = self.lock();
        st.device(dev)?;
        st.release_device(dev);
        let entry = st.devices[dev.0 as usize].take().expect("checked above");
        if let Some(pci) = entry.desc.pci_function() {
            st.pci_by_address.remove(&pci.address);
            if let Some(list) = st
                .pci_by_bus
                .get_mut(&(pci.address.segment, pci.address.bus))
            {
                list.retain(|&d| d != dev);
            }
        }
        Ok(())
    }

    /// Give a device a fwspec, or add ids to the one it has (Linux `iommu_fwspec_init()` and
    /// `iommu_fwspec_add_ids()`), then probe it if it has no IOMMU yet (the "replay" after
    /// firmware parsing).
    ///
    /// # Errors
    /// `NotFound` for an unknown device; `Invalid` when the device already has a fwspec naming
    /// a different fwnode.
    pub fn set_fwspec(&self, dev: DeviceId, fwnode: FwNode, ids: &[u32]) -> Result<()> {
        let mut st = self.lock();
        let entry = st.device_mut(dev)?;
        match &mut entry.fwspec {
            Some(spec) if spec.fwnode != fwnode => {
                return Err(CoreError::Invalid(
                    "device already has a fwspec for another IOMMU",
                ))
            }
            Some(spec) => spec.ids.extend_from_slice(ids),
            None => {
                entry.fwspec = Some(Fwspec {
                    fwnode,
                    ids: ids.to_vec(),
                })
            }
        }
        if !matches!(st.device(dev)?.state, ProbeState::Bound { .. }) {
            st.probe_one(dev);
        }
        Ok(())
    }

    /// Where a device stands.
    ///
    /// # Errors
    /// `NotFound` for an unknown device.
    pub fn probe_state(&self, dev: DeviceId) -> Result<ProbeState> {
        Ok(self.lock().device(dev)?.state.clone())
    }

    /// The group of a device (Linux `iommu_group_get()`), `None` without an IOMMU.
    pub fn group_of(&self, dev: DeviceId) -> Option<GroupId> {
        self.lock().device(dev).ok().and_then(DeviceEntry::group)
    }

    /// The devices of a group, in the order they joined.
    pub fn group_devices(&self, group: GroupId) -> Vec<DeviceId> {
        self.lock()
            .groups
            .get(&group)
            .map(|g| g.devices.clone())
            .unwrap_or_default()
    }

    /// The domain a device's group is attached to now.
    pub fn device_domain(&self, dev: DeviceId) -> Option<Arc<Domain>> {
        let st = self.lock();
        let group = st.device(dev).ok()?.group()?;
        st.groups[&group].domain.clone()
    }

    /// The default domain of a device's group.
    pub fn default_domain(&self, dev: DeviceId) -> Option<Arc<Domain>> {
        let st = self.lock();
        let group = st.device(dev).ok()?.group()?;
        st.groups[&group].default_domain.clone()
    }

    /// Allocate a domain for `dev` from the driver serving it (Linux `iommu_paging_domain_alloc()`,
    /// `ops->domain_alloc_user()`).
    ///
    /// # Errors
    /// `NoDevice` when no IOMMU serves the device; the driver's error otherwise.
    pub fn domain_alloc(&self, dev: DeviceId, request: DomainRequest<'_>) -> Result<Arc<Domain>> {
        let st = self.lock();
        let (instance, _) = st.bound(dev)?;
        st.alloc_domain(instance, dev, request)
    }

    /// A kernel driver binds to `dev` and will use the default domain (Linux
    /// `iommu_device_use_default_domain()`). A device without an IOMMU needs nothing.
    ///
    /// # Errors
    /// `Busy` when a user owns the group or it is not on its default domain; `ProbeDeferred`
    /// when the group has no default domain yet.
    pub fn use_default_domain(&self, dev: DeviceId) -> Result<()> {
        let mut st = self.lock();
        let Some(group) = st.device(dev)?.group() else {
            return Ok(());
        };
        let g = st
            .groups
            .get_mut(&group)
            .expect("bound devices have groups");
        if g.default_domain.is_none() {
            return Err(CoreError::ProbeDeferred(String::from("default domain")));
        }
        if g.owner_count > 0 && (g.owner.is_some() || !same_domain(&g.domain, &g.default_domain)) {
            return Err(CoreError::Busy("group is owned by a user"));
        }
        g.owner_count += 1;
        Ok(())
    }

    /// The kernel driver of `dev` unbinds (Linux `iommu_device_unuse_default_domain()`).
    pub fn unuse_default_domain(&self, dev: DeviceId) {
        let mut st = self.lock();
        if let Some(group) = st.device(dev).ok().and_then(DeviceEntry::group) {
            let g = st
                .groups
                .get_mut(&group)
                .expect("bound devices have groups");
            if g.owner.is_none() && g.owner_count > 0 {
                g.owner_count -= 1;
            }
        }
    }

    /// Claim the DMA of `dev`'s group for `owner` (Linux `iommu_device_claim_dma_owner()`):
    /// the group moves to its blocking domain until the owner attaches a domain of its own.
    /// The same owner may claim again (for another device of the group); each claim is
    /// released separately.
    ///
    /// # Errors
    /// `NoDevice` without an IOMMU; `NotPermitted` when another owner or a kernel driver holds
    /// the group; `Busy` when the group is not on its default domain; the driver's error when
    /// no blocking domain can be allocated.
    pub fn claim_dma_owner(&self, dev: DeviceId, owner: DmaOwner) -> Result<()> {
        let mut st = self.lock();
        let (instance, group) = st.bound(dev)?;
        let g = &st.groups[&group];
        if g.owner_count > 0 {
            if g.owner != Some(owner) {
                return Err(CoreError::NotPermitted(
                    "group DMA is owned by someone else",
                ));
            }
            st.groups.get_mut(&group).expect("exists").owner_count += 1;
            return Ok(());
        }
        if g.domain.is_some() && !same_domain(&g.domain, &g.default_domain) {
            return Err(CoreError::Busy("group is not on its default domain"));
        }
        let blocking = match g.blocking_domain.clone() {
            Some(d) => d,
            None => {
                let d = st
                    .alloc_domain(instance, dev, DomainRequest::Blocked)
                    .or_else(|_| {
                        st.alloc_domain(
                            instance,
                            dev,
                            DomainRequest::Paging {
                                flags: PagingFlags::default(),
                                data: None,
                            },
                        )
                    })?;
                st.groups.get_mut(&group).expect("exists").blocking_domain = Some(d.clone());
                d
            }
        };
        st.set_group_domain(group, &blocking)?;
        let g = st.groups.get_mut(&group).expect("exists");
        g.owner = Some(owner);
        g.owner_count = 1;
        Ok(())
    }

    /// Release one claim of `dev`'s group (Linux `iommu_device_release_dma_owner()`); the last
    /// one returns the group to its default domain.
    pub fn release_dma_owner(&self, dev: DeviceId) {
        let mut st = self.lock();
        let Some(group) = st.device(dev).ok().and_then(DeviceEntry::group) else {
            return;
        };
        let g = st
            .groups
            .get_mut(&group)
            .expect("bound devices have groups");
        if g.owner.is_none() {
            return;
        }
        if g.owner_count > 1 {
            g.owner_count -= 1;
            return;
        }
        g.owner = None;
        g.owner_count = 0;
        if let Some(default) = g.default_domain.clone() {
            // Returning to the default domain the group already worked with; a failure here
            // leaves the group blocked, which is the safe state.
            if let Err(err) = st.set_group_domain(group, &default) {
                tracing::warn!(?err, "could not return group to its default domain");
            }
        }
    }

    /// Attach the group of `dev` to a user domain (Linux `iommu_attach_group()`).
    ///
    /// # Errors
    /// `NoDevice` without an IOMMU; `Busy` when the group is already attached to a user domain;
    /// `Invalid` when another driver allocated the domain; the driver's attach error, after
    /// which the group is back on its previous domain.
    pub fn attach_domain(&self, dev: DeviceId, domain: &Arc<Domain>) -> Result<()> {
        let mut st = self.lock();
        let (_, group) = st.bound(dev)?;
        let g = &st.groups[&group];
        if g.domain.is_some()
            && !same_domain(&g.domain, &g.default_domain)
            && !same_domain(&g.domain, &g.blocking_domain)
        {
            return Err(CoreError::Busy("group is attached to another user domain"));
        }
        st.check_domain_driver(group, domain)?;
        st.set_group_domain(group, domain)
    }

    /// Switch the group of `dev` from whatever it is attached to, to `domain`, with no blocked
    /// window in between (Linux `iommu_group_replace_domain()`). Only for owned groups.
    ///
    /// # Errors
    /// `NoDevice` without an IOMMU; `Invalid` when the group has no user owner or another
    /// driver allocated the domain; the driver's attach error (the old domain stays).
    pub fn replace_domain(&self, dev: DeviceId, domain: &Arc<Domain>) -> Result<()> {
        let mut st = self.lock();
        let (_, group) = st.bound(dev)?;
        if st.groups[&group].owner.is_none() {
            return Err(CoreError::Invalid("replace needs a DMA owner"));
        }
        st.check_domain_driver(group, domain)?;
        st.set_group_domain(group, domain)
    }

    /// Detach the group of `dev` from a user domain (Linux `iommu_detach_group()`): back to
    /// the blocking domain if owned, else the default domain. Does nothing if `domain` is not
    /// the one attached.
    pub fn detach_domain(&self, dev: DeviceId, domain: &Arc<Domain>) {
        let mut st = self.lock();
        let Ok((_, group)) = st.bound(dev) else {
            return;
        };
        let g = &st.groups[&group];
        if !g.domain.as_ref().is_some_and(|d| Arc::ptr_eq(d, domain)) {
            return;
        }
        let core_domain = if g.owner.is_some() {
            g.blocking_domain.clone()
        } else {
            g.default_domain.clone()
        };
        match core_domain {
            Some(d) => {
                if let Err(err) = st.set_group_domain(group, &d) {
                    tracing::warn!(?err, "could not return group to its core domain");
                }
            }
            None => st.groups.get_mut(&group).expect("exists").domain = None,
        }
    }

    /// Whether the IOMMU serving `dev` has a capability (Linux `device_iommu_capable()`).
    pub fn capable(&self, dev: DeviceId, cap: Capability) -> bool {
        let st = self.lock();
        st.with_driver(dev, |ops, info| ops.capable(info, cap))
            .unwrap_or(false)
    }

    /// The reserved regions of `dev` (Linux `iommu_get_resv_regions()`).
    pub fn reserved_regions(&self, dev: DeviceId) -> Vec<ReservedRegion> {
        let st = self.lock();
        st.with_driver(dev, |ops, info| ops.reserved_regions(info))
            .unwrap_or_default()
    }

    /// The hardware information of the IOMMU serving `dev` (Linux `ops->hw_info()`).
    ///
    /// # Errors
    /// `NoDevice` without an IOMMU; the driver's error otherwise.
    pub fn hw_info(&self, dev: DeviceId) -> Result<HwInfo> {
        let st = self.lock();
        st.with_driver(dev, |ops, info| ops.hw_info(info))?
    }

    /// How many PASIDs `dev` can use (0: none, or no IOMMU).
    pub fn max_pasids(&self, dev: DeviceId) -> u32 {
        let st = self.lock();
        st.with_driver(dev, |ops, info| ops.max_pasids(info))
            .unwrap_or(0)
    }

    /// Attach PASID `pasid` of `dev` to `domain`, or replace what it is attached to (Linux
    /// `iommu_attach_device_pasid()` / `iommu_replace_device_pasid()`). The core keeps no PASID
    /// table: its one user, iommufd, keeps the attachments and never attaches a PASID twice.
    ///
    /// # Errors
    /// `NoDevice` without an IOMMU; `NotSupported` when the driver has no PASID support;
    /// `Invalid` for PASID 0 (the RID), a PASID past the device's [`IommuOps::max_pasids`], or
    /// a domain of another driver instance; the driver's error.
    pub fn set_dev_pasid(&self, dev: DeviceId, pasid: u32, domain: &Arc<Domain>) -> Result<()> {
        let st = self.lock();
        let (instance, _) = st.bound(dev)?;
        st.with_driver(dev, |ops, info| {
            if pasid == 0 || pasid >= ops.max_pasids(info) || domain.instance() != instance {
                return Err(CoreError::Invalid(
                    "PASID or domain not usable for this device",
                ));
            }
            ops.set_dev_pasid(info, pasid, Some(domain))
        })?
    }

    /// Detach PASID `pasid` of `dev`: its DMA is blocked again (Linux
    /// `iommu_detach_device_pasid()`). Errors of the driver are not reported, as in Linux.
    pub fn clear_dev_pasid(&self, dev: DeviceId, pasid: u32) {
        let st = self.lock();
        let _ = st.with_driver(dev, |ops, info| ops.set_dev_pasid(info, pasid, None));
    }

    /// A nested domain for `dev` allocated by `viommu` (Linux
    /// `viommu->ops->alloc_domain_nested()`), owned by the instance serving `dev`.
    ///
    /// # Errors
    /// `dev` has no IOMMU; the driver's error.
    pub fn viommu_domain_alloc(
        &self,
        dev: DeviceId,
        viommu: &dyn crate::driver::ViommuOps,
        flags: u32,
        data: crate::driver::UserData<'_>,
    ) -> Result<Arc<Domain>> {
        let st = self.lock();
        let (instance, _) = st.bound(dev)?;
        let ops = st.instance(instance)?.ops.clone();
        let domain_ops = viommu.alloc_domain_nested(flags, data)?;
        Ok(Arc::new(Domain::new(
            DomainType::Nested,
            instance,
            ops,
            domain_ops,
        )))
    }

    /// Whether the IOMMU serving `dev` offers vIOMMUs of `viommu_type`.
    pub fn viommu_supported(&self, dev: DeviceId, viommu_type: u32) -> bool {
        let st = self.lock();
        st.with_driver(dev, |ops, info| ops.viommu_supported(info, viommu_type))
            .unwrap_or(false)
    }

    /// Create a vIOMMU for `dev` over `parent` (Linux `ops->viommu_init()`), see
    /// [`IommuOps::viommu_init`].
    ///
    /// # Errors
    /// `dev` has no IOMMU; the driver's error.
    pub fn viommu_init(
        &self,
        dev: DeviceId,
        viommu_type: u32,
        parent: &Arc<Domain>,
        data: Option<&mut [u8]>,
    ) -> Result<Box<dyn crate::driver::ViommuOps>> {
        let st = self.lock();
        st.with_driver(dev, |ops, info| {
            ops.viommu_init(info, viommu_type, parent, data)
        })?
    }

    /// Every present device, in the order they were added.
    pub fn devices(&self) -> Vec<DeviceReport> {
        let st = self.lock();
        (0..st.devices.len())
            .filter_map(|i| st.report(DeviceId(i as u32)))
            .collect()
    }

    /// Every registered instance, in registration order.
    pub fn instances(&self) -> Vec<InstanceReport> {
        let st = self.lock();
        st.instances
            .iter()
            .enumerate()
            .filter_map(|(i, inst)| {
                inst.as_ref().map(|inst| InstanceReport {
                    id: InstanceId(i as u32),
                    name: inst.name.clone(),
                    driver: inst.ops.name().to_string(),
                    fwnode: inst.fwnode.clone(),
                })
            })
            .collect()
    }
}

/// Whether two optional domains are the same domain.
fn same_domain(a: &Option<Arc<Domain>>, b: &Option<Arc<Domain>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl State {
    fn instance(&self, id: InstanceId) -> Result<&Instance> {
        self.instances
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(CoreError::NotFound)
    }

    pub(crate) fn device(&self, id: DeviceId) -> Result<&DeviceEntry> {
        self.devices
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(CoreError::NotFound)
    }

    fn device_mut(&mut self, id: DeviceId) -> Result<&mut DeviceEntry> {
        self.devices
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(CoreError::NotFound)
    }

    /// The instance and group of a device that has an IOMMU.
    fn bound(&self, dev: DeviceId) -> Result<(InstanceId, GroupId)> {
        match self.device(dev)?.state {
            ProbeState::Bound { instance, group } => Ok((instance, group)),
            _ => Err(CoreError::NoDevice),
        }
    }

    fn info(&self, dev: DeviceId, iommu: Option<InstanceId>) -> DeviceInfo<'_> {
        let entry = self.devices[dev.0 as usize].as_ref().expect("present");
        DeviceInfo {
            id: dev,
            desc: &entry.desc,
            fwspec: entry.fwspec.as_ref(),
            iommu,
        }
    }

    fn with_driver<T>(
        &self,
        dev: DeviceId,
        f: impl FnOnce(&dyn IommuOps, &DeviceInfo<'_>) -> T,
    ) -> Result<T> {
        let (instance, _) = self.bound(dev)?;
        let ops = &self.instance(instance)?.ops;
        Ok(f(ops.as_ref(), &self.info(dev, Some(instance))))
    }

    fn unbound_devices(&self) -> Vec<DeviceId> {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.as_ref().is_some_and(|d| d.group().is_none()))
            .map(|(i, _)| DeviceId(i as u32))
            .collect()
    }

    fn unbound_devices_without_fwspec(&self) -> Vec<DeviceId> {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.as_ref()
                    .is_some_and(|d| d.group().is_none() && d.fwspec.is_none())
            })
            .map(|(i, _)| DeviceId(i as u32))
            .collect()
    }

    fn insert_device(&mut self, desc: DeviceDesc, fwspec: Option<Fwspec>) -> Result<DeviceId> {
        let id = DeviceId(u32::try_from(self.devices.len()).map_err(|_| CoreError::NoMemory)?);
        if let BusInfo::Pci(pci) = &desc.bus {
            if self.pci_by_address.contains_key(&pci.address) {
                return Err(CoreError::Exists);
            }
            if let Some(up) = desc.upstream {
                let bridge = self
                    .device(up)
                    .map_err(|_| CoreError::Invalid("unknown upstream bridge"))?;
                let Some(bridge_fn) = bridge.desc.pci_function().filter(|f| f.kind.is_bridge())
                else {
                    return Err(CoreError::Invalid("upstream device is not a PCI bridge"));
                };
                if bridge_fn.address.segment != pci.address.segment
                    || bridge_fn.address.bus >= pci.address.bus
                {
                    return Err(CoreError::Invalid(
                        "a function below a bridge sits on a higher bus of the same segment",
                    ));
                }
            }
            self.pci_by_address.insert(pci.address, id);
            self.pci_by_bus
                .entry((pci.address.segment, pci.address.bus))
                .or_default()
                .push(id);
        }
        self.devices.push(Some(DeviceEntry {
            desc,
            fwspec,
            state: ProbeState::NoIommu,
        }));
        Ok(id)
    }

    /// Probe a batch of devices, deferring default domains until all have joined their groups
    /// (Linux `bus_iommu_probe()`).
    fn probe_many(&mut self, devices: &[DeviceId]) -> Result<()> {
        let mut new_groups = Vec::new();
        for &dev in devices {
            self.probe_device(dev, Some(&mut new_groups));
        }
        for group in new_groups {
            self.setup_default_domain(group)?;
        }
        Ok(())
    }

    /// Probe one hot-added device; its group gets a default domain at once if it has none.
    fn probe_one(&mut self, dev: DeviceId) {
        self.probe_device(dev, None);
    }

    /// Linux `__iommu_probe_device()`. The outcome is recorded in the device's state.
    fn probe_device(&mut self, dev: DeviceId, new_groups: Option<&mut Vec<GroupId>>) {
        let state = match self.route_and_probe(dev) {
            Ok(Some(instance)) => match self.join_group(dev, instance, new_groups) {
                Ok(group) => ProbeState::Bound { instance, group },
                Err(err) => ProbeState::Failed(err),
            },
            Ok(None) => ProbeState::Deferred,
            Err(CoreError::NoDevice) => ProbeState::NoIommu,
            Err(err) => ProbeState::Failed(err),
        };
        if let ProbeState::Failed(err) = &state {
            tracing::debug!(device = dev.0, %err, "IOMMU probe failed");
        }
        self.devices[dev.0 as usize]
            .as_mut()
            .expect("present")
            .state = state;
    }

    /// Find the instance for `dev` and let its driver probe it. `Ok(None)`: deferred.
    fn route_and_probe(&mut self, dev: DeviceId) -> Result<Option<InstanceId>> {
        let entry = self.device(dev)?;
        if entry.group().is_some() {
            return Err(CoreError::Invalid("device already probed"));
        }
        if self.config.policy == ProbePolicy::CallAll {
            return self.probe_call_all(dev).map(Some);
        }
        let instance = match &entry.fwspec {
            Some(spec) => match self.by_fwnode.get(&spec.fwnode) {
                Some(&id) => id,
                None => {
                    let node = spec.fwnode.clone();
                    self.waiting.entry(node).or_default().insert(dev);
                    return Ok(None);
                }
            },
            None if self.fwnodeless.len() == 1 => self.fwnodeless[0],
            None => return Err(CoreError::NoDevice),
        };
        let ops = self.instance(instance)?.ops.clone();
        let chosen = ops.probe_device(&self.info(dev, Some(instance)))?;
        if chosen != instance {
            ops.release_device(&self.info(dev, Some(instance)));
            return Err(CoreError::Invalid(
                "driver claimed the device for another instance",
            ));
        }
        Ok(Some(instance))
    }

    /// The rejected alternative: offer the device to every distinct driver, first taker wins.
    fn probe_call_all(&self, dev: DeviceId) -> Result<InstanceId> {
        let mut asked: Vec<*const ()> = Vec::new();
        for inst in self.instances.iter().flatten() {
            let key = Arc::as_ptr(&inst.ops) as *const ();
            if asked.contains(&key) {
                continue;
            }
            asked.push(key);
            match inst.ops.probe_device(&self.info(dev, None)) {
                Ok(chosen) => {
                    let valid = self
                        .instance(chosen)
                        .is_ok_and(|i| Arc::ptr_eq(&i.ops, &inst.ops));
                    if !valid {
                        inst.ops.release_device(&self.info(dev, None));
                        return Err(CoreError::Invalid(
                            "driver claimed the device for an instance it does not own",
                        ));
                    }
                    return Ok(chosen);
                }
                Err(CoreError::NoDevice) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(CoreError::NoDevice)
    }

    /// Put a probed device into its group (Linux `iommu_init_device()` + `iommu_group_add_device()`
    /// and the attach steps of `__iommu_probe_device()`).
    fn join_group(
        &mut self,
        dev: DeviceId,
        instance: InstanceId,
        new_groups: Option<&mut Vec<GroupId>>,
    ) -> Result<GroupId> {
        let ops = self.instance(instance)?.ops.clone();
        let info = self.info(dev, Some(instance));
        let choice = ops.device_group(&info);
        let existing = match choice {
            GroupChoice::PerDevice => None,
            GroupChoice::PerInstance => self
                .shared_groups
                .get(&SharedKey::Instance(instance))
                .copied(),
            GroupChoice::Shared(key) => self
                .shared_groups
                .get(&SharedKey::Driver(instance, key))
                .copied(),
            GroupChoice::Pci => pci_device_group(self, dev, instance),
        };
        let (group, created) = match existing {
            Some(group) => (group, false),
            None => {
                let shared_key = match choice {
                    GroupChoice::PerInstance => Some(SharedKey::Instance(instance)),
                    GroupChoice::Shared(key) => Some(SharedKey::Driver(instance, key)),
                    _ => None,
                };
                (self.alloc_group(instance, shared_key), true)
            }
        };
        let g = self.groups.get_mut(&group).expect("just found or made");
        g.devices.push(dev);
        // Mark the device bound now so grouping of later devices can find this group.
        self.devices[dev.0 as usize]
            .as_mut()
            .expect("present")
            .state = ProbeState::Bound { instance, group };
        if let Some(default) = self.groups[&group].default_domain.clone() {
            // A device joining a group that already has its default domain brings its own
            // direct-mapped regions; as in Linux a failure here does not fail the probe.
            if let Err(err) = self.create_direct_mappings(&default, dev, instance) {
                tracing::warn!(device = dev.0, %err, "could not map the device's direct regions");
            }
        }
        let attach = match &self.groups[&group].domain {
            Some(domain) => domain.ops().attach_dev(&self.info(dev, Some(instance))),
            None if created || self.groups[&group].default_domain.is_none() => match new_groups {
                Some(list) => {
                    if !list.contains(&group) {
                        list.push(group);
                    }
                    Ok(())
                }
                None => self.setup_default_domain(group),
            },
            None => Ok(()),
        };
        if let Err(err) = attach {
            self.leave_group(dev, instance, group);
            return Err(err);
        }
        Ok(group)
    }

    fn alloc_group(&mut self, instance: InstanceId, shared_key: Option<SharedKey>) -> GroupId {
        let id = match self.free_group_ids.pop_first() {
            Some(id) => id,
            None => {
                self.next_group_id += 1;
                self.next_group_id - 1
            }
        };
        let id = GroupId(id);
        self.groups.insert(
            id,
            Group {
                instance,
                devices: Vec::new(),
                shared_key,
                default_domain: None,
                blocking_domain: None,
                domain: None,
                owner: None,
                owner_count: 0,
            },
        );
        if let Some(key) = shared_key {
            self.shared_groups.insert(key, id);
        }
        id
    }

    /// Remove `dev` from `group`, freeing the group with its last device.
    fn leave_group(&mut self, dev: DeviceId, instance: InstanceId, group: GroupId) {
        if let Ok(inst) = self.instance(instance) {
            let ops = inst.ops.clone();
            ops.release_device(&self.info(dev, Some(instance)));
        }
        let g = self
            .groups
            .get_mut(&group)
            .expect("bound devices have groups");
        g.devices.retain(|&d| d != dev);
        if g.devices.is_empty() {
            let g = self.groups.remove(&group).expect("exists");
            if let Some(key) = g.shared_key {
                self.shared_groups.remove(&key);
            }
            self.free_group_ids.insert(group.0);
        }
        self.devices[dev.0 as usize]
            .as_mut()
            .expect("present")
            .state = ProbeState::NoIommu;
    }

    /// Linux `iommu_release_device()`, plus leaving the deferred list.
    fn release_device(&mut self, dev: DeviceId) {
        let entry = self.devices[dev.0 as usize].as_ref().expect("present");
        match entry.state {
            ProbeState::Bound { instance, group } => self.leave_group(dev, instance, group),
            ProbeState::Deferred => {
                if let Some(spec) = &entry.fwspec {
                    let node = spec.fwnode.clone();
                    if let Some(set) = self.waiting.get_mut(&node) {
                        set.remove(&dev);
                        if set.is_empty() {
                            self.waiting.remove(&node);
                        }
                    }
                }
            }
            ProbeState::NoIommu | ProbeState::Failed(_) => {}
        }
        self.devices[dev.0 as usize]
            .as_mut()
            .expect("present")
            .state = ProbeState::NoIommu;
    }

    fn unregister(&mut self, id: InstanceId) {
        let bound: Vec<DeviceId> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.as_ref().is_some_and(
                    |d| matches!(d.state, ProbeState::Bound { instance, .. } if instance == id),
                )
            })
            .map(|(i, _)| DeviceId(i as u32))
            .collect();
        for &dev in &bound {
            self.release_device(dev);
        }
        let inst = self.instances[id.0 as usize]
            .take()
            .expect("checked by callers");
        if let Some(node) = &inst.fwnode {
            self.by_fwnode.remove(node);
        }
        self.fwnodeless.retain(|&i| i != id);
        // Devices named by firmware wait for their IOMMU to come back.
        for dev in bound {
            let entry = self.devices[dev.0 as usize].as_mut().expect("present");
            if let Some(spec) = &entry.fwspec {
                if self.config.policy == ProbePolicy::ByFwnode {
                    entry.state = ProbeState::Deferred;
                    self.waiting
                        .entry(spec.fwnode.clone())
                        .or_default()
                        .insert(dev);
                }
            }
        }
    }

    fn alloc_domain(
        &self,
        instance: InstanceId,
        dev: DeviceId,
        request: DomainRequest<'_>,
    ) -> Result<Arc<Domain>> {
        let ty = match request {
            DomainRequest::Blocked => DomainType::Blocked,
            DomainRequest::Identity => DomainType::Identity,
            DomainRequest::Dma => DomainType::Dma,
            DomainRequest::Paging { .. } => DomainType::Unmanaged,
            DomainRequest::Nested { .. } => DomainType::Nested,
        };
        self.alloc_domain_of_type(instance, dev, request, ty)
    }

    fn alloc_domain_of_type(
        &self,
        instance: InstanceId,
        dev: DeviceId,
        request: DomainRequest<'_>,
        ty: DomainType,
    ) -> Result<Arc<Domain>> {
        let ops = &self.instance(instance)?.ops;
        let domain_ops = ops.domain_alloc(&self.info(dev, Some(instance)), request)?;
        Ok(Arc::new(Domain::new(ty, instance, ops.clone(), domain_ops)))
    }

    /// Linux `iommu_get_default_domain_type()` and `iommu_group_alloc_default_domain()`.
    fn setup_default_domain(&mut self, group: GroupId) -> Result<()> {
        let g = &self.groups[&group];
        let instance = g.instance;
        let ops = self.instance(instance)?.ops.clone();
        let first = *g.devices.first().ok_or(CoreError::Invalid("empty group"))?;
        let explicit = match ops.static_default_domain() {
            Some(ty) => Some(ty),
            None => {
                let mut wanted: Option<DomainType> = None;
                for &dev in &g.devices {
                    let Some(ty) = ops.def_domain_type(&self.info(dev, Some(instance))) else {
                        continue;
                    };
                    wanted = match wanted {
                        None => Some(ty),
                        Some(prev) if prev == ty => Some(prev),
                        Some(prev) => {
                            tracing::warn!(
                                group = group.0,
                                ?prev,
                                ?ty,
                                "devices of one group need different default domains; using identity"
                            );
                            Some(DomainType::Identity)
                        }
                    };
                }
                wanted
            }
        };
        let global = self.config.default_domain.domain_type();
        let domain = match explicit {
            Some(ty) => self.alloc_domain_of_type(instance, first, request_for(ty), ty)?,
            None => match self.alloc_domain_of_type(instance, first, request_for(global), global) {
                Ok(d) => d,
                Err(err) if global == DomainType::Dma => return Err(err),
                Err(_) => {
                    tracing::warn!(group = group.0, "falling back to a DMA default domain");
                    self.alloc_domain(instance, first, DomainRequest::Dma)?
                }
            },
        };
        // Direct regions are mapped before the first attach, so DMA that firmware set up keeps
        // working throughout; a driver that cannot map before attach gets a second try after.
        let devices = self.groups[&group].devices.clone();
        let mut direct_failed = false;
        for &dev in &devices {
            if let Err(err) = self.create_direct_mappings(&domain, dev, instance) {
                tracing::warn!(device = dev.0, %err, "could not map direct regions before attach");
                direct_failed = true;
            }
        }
        self.set_group_domain(group, &domain)?;
        self.groups.get_mut(&group).expect("exists").default_domain = Some(domain.clone());
        if direct_failed {
            for &dev in &devices {
                self.create_direct_mappings(&domain, dev, instance)?;
            }
        }
        Ok(())
    }

    /// Identity-map `dev`'s direct reserved regions ([`ReservedKind::Direct`] and
    /// [`ReservedKind::DirectRelaxable`]: RMRRs, IVMD unity ranges, IORT RMRs) into a DMA
    /// domain, skipping pages that already translate (Linux
    /// `iommu_create_device_direct_mappings()`). Other domain types are left alone: an identity
    /// domain maps everything already, and a user's domain is the user's business.
    ///
    /// Both ends of a region are rounded up to the smallest page size, as Linux does.
    fn create_direct_mappings(
        &self,
        domain: &Domain,
        dev: DeviceId,
        instance: InstanceId,
    ) -> Result<()> {
        if !matches!(domain.ty(), DomainType::Dma | DomainType::DmaFq) {
            return Ok(());
        }
        let page = domain
            .min_page_size()
            .ok_or(CoreError::Invalid("DMA domain without page sizes"))?;
        let ops = self.instance(instance)?.ops.clone();
        let regions = ops.reserved_regions(&self.info(dev, Some(instance)));
        let round_up = |addr: u64| addr.checked_add(page - 1).map(|a| a & !(page - 1));
        for region in regions {
            if !matches!(
                region.kind,
                ReservedKind::Direct | ReservedKind::DirectRelaxable
            ) {
                continue;
            }
            let (Some(start), Some(end)) = (
                round_up(region.start.0),
                region.last.0.checked_add(1).and_then(round_up),
            ) else {
                return Err(CoreError::Invalid(
                    "direct region reaches the end of the IOVA space",
                ));
            };
            let mut run_start = start;
            let mut addr = start;
            while addr < end {
                if domain.iova_to_phys(Iova(addr)).is_some() {
                    if run_start < addr {
                        domain.map(
                            Iova(run_start),
                            PhysAddr(run_start),
                            addr - run_start,
                            region.prot,
                        )?;
                    }
                    run_start = addr + page;
                }
                addr += page;
            }
            if run_start < end {
                domain.map(
                    Iova(run_start),
                    PhysAddr(run_start),
                    end - run_start,
                    region.prot,
                )?;
            }
        }
        Ok(())
    }

    fn check_domain_driver(&self, group: GroupId, domain: &Domain) -> Result<()> {
        let ops = &self.instance(self.groups[&group].instance)?.ops;
        if !Arc::ptr_eq(ops, domain.driver()) {
            return Err(CoreError::Invalid("domain belongs to another driver"));
        }
        Ok(())
    }

    /// Attach every device of `group` to `domain`; on failure put the attached ones back on
    /// the previous domain (Linux `__iommu_group_set_domain_internal()`).
    fn set_group_domain(&mut self, group: GroupId, domain: &Arc<Domain>) -> Result<()> {
        let g = &self.groups[&group];
        if g.domain.as_ref().is_some_and(|d| Arc::ptr_eq(d, domain)) {
            return Ok(());
        }
        let instance = g.instance;
        let devices = g.devices.clone();
        let previous = g.domain.clone();
        for (i, &dev) in devices.iter().enumerate() {
            if let Err(err) = domain.ops().attach_dev(&self.info(dev, Some(instance))) {
                if let Some(prev) = &previous {
                    for &done in &devices[..i] {
                        // Re-attaching to a domain these devices were just on.
                        let _ = prev.ops().attach_dev(&self.info(done, Some(instance)));
                    }
                }
                return Err(err);
            }
        }
        self.groups.get_mut(&group).expect("exists").domain = Some(domain.clone());
        Ok(())
    }

    fn report(&self, id: DeviceId) -> Option<DeviceReport> {
        let entry = self.device(id).ok()?;
        let (instance_name, driver, default_domain, domain) = match entry.state {
            ProbeState::Bound { instance, group } => {
                let inst = self.instance(instance).ok()?;
                let g = &self.groups[&group];
                (
                    Some(inst.name.clone()),
                    Some(inst.ops.name().to_string()),
                    g.default_domain.as_ref().map(|d| d.ty()),
                    g.domain.as_ref().map(|d| d.ty()),
                )
            }
            _ => (None, None, None, None),
        };
        Some(DeviceReport {
            id,
            name: entry.desc.name.clone(),
            bus: entry.desc.bus.kind(),
            fwspec: entry.fwspec.clone(),
            state: entry.state.clone(),
            instance_name,
            driver,
            default_domain,
            domain,
        })
    }
}

/// The allocation request for a default domain of type `ty` (a lazy DMA domain is a DMA
/// domain whose invalidations the core defers).
fn request_for(ty: DomainType) -> DomainRequest<'static> {
    match ty {
        DomainType::Blocked => DomainRequest::Blocked,
        DomainType::Identity => DomainRequest::Identity,
        _ => DomainRequest::Dma,
    }
}
