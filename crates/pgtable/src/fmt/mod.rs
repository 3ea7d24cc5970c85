//! The hardware formats, one module each.

pub mod amdv1;
pub mod arm_lpae;
pub mod vtdss;
pub mod x86_64;
