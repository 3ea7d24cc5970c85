//! uiommu-mock (placeholder until this crate lands).
