//! uiommu-virtio (placeholder until this crate lands).
