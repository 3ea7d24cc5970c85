//! Probe throughput: 100k devices spread over 1k IOMMU instances, routed by fwnode (the
//! default) or by asking every driver in turn (the rejected alternative), with the instances
//! shared among 1, 10 or 100 drivers.
//!
//! Each iteration adds all devices to a core whose instances are already registered, so every
//! device goes through routing, the driver's probe, grouping and default-domain setup.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use uiommu_core::*;

const DEVICES: usize = 100_000;
const INSTANCES: usize = 1_000;

/// A driver that, asked about a device, decides by its fwspec (as a careful driver must under
/// call-all) and otherwise takes what the core routed to it.
#[derive(Debug, Default)]
struct BenchDriver {
    instances: std::sync::Mutex<HashMap<FwNode, InstanceId>>,
}

#[derive(Debug)]
struct Nothing;

impl DomainOps for Nothing {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl IommuOps for BenchDriver {
    fn name(&self) -> &str {
        "bench"
    }

    fn probe_device(&self, dev: &DeviceInfo<'_>) -> Result<InstanceId> {
        if let Some(routed) = dev.iommu {
            return Ok(routed);
        }
        let spec = dev.fwspec.ok_or(CoreError::NoDevice)?;
        self.instances
            .lock()
            .unwrap()
            .get(&spec.fwnode)
            .copied()
            .ok_or(CoreError::NoDevice)
    }

    fn domain_alloc(&self, _: &DeviceInfo<'_>, _: DomainRequest<'_>) -> Result<Box<dyn DomainOps>> {
        Ok(Box::new(Nothing))
    }
}

/// A core with `INSTANCES` instances over `drivers` drivers, and the fwnodes devices will name.
fn platform(policy: ProbePolicy, drivers: usize) -> (IommuCore, Vec<FwNode>) {
    let core = IommuCore::new(CoreConfig {
        policy,
        default_domain: DefaultDomainPolicy::Passthrough,
    });
    let drivers: Vec<Arc<BenchDriver>> = (0..drivers)
        .map(|_| Arc::new(BenchDriver::default()))
        .collect();
    let nodes: Vec<FwNode> = (0..INSTANCES)
        .map(|i| FwNode::new(format!("iommu{i}")))
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        let drv = &drivers[i % drivers.len()];
        let id = core
            .register(format!("iommu{i}"), Some(node.clone()), drv.clone())
            .unwrap();
        drv.instances.lock().unwrap().insert(node.clone(), id);
    }
    (core, nodes)
}

fn add_devices(core: &IommuCore, nodes: &[FwNode]) {
    for i in 0..DEVICES {
        let fwspec = Fwspec {
            fwnode: nodes[i % nodes.len()].clone(),
            ids: vec![i as u32],
        };
        core.add_device(DeviceDesc::platform(format!("d{i}")), Some(fwspec))
            .unwrap();
    }
}

fn probe(c: &mut Criterion) {
    let mut group = c.benchmark_group("probe_100k_devices_1k_instances");
    group.sample_size(10);
    group.throughput(Throughput::Elements(DEVICES as u64));
    for drivers in [1, 10, 100] {
        for (name, policy) in [
            ("by-fwnode", ProbePolicy::ByFwnode),
            ("call-all", ProbePolicy::CallAll),
        ] {
            group.bench_with_input(
                BenchmarkId::new(name, format!("{drivers}-drivers")),
                &drivers,
                |b, &drivers| {
                    b.iter_batched(
                        || platform(policy, drivers),
                        |(core, nodes)| {
                            add_devices(&core, &nodes);
                            core
                        },
                        BatchSize::PerIteration,
                    )
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, probe);
criterion_main!(benches);
