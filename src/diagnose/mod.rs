//! Diagnosis of any endpoint: `doctor`, the fidelity matrix and the probes
//! with known answers. Knows nothing of Docker.

pub mod doctor;
pub(crate) mod matrix;
pub mod probes;
