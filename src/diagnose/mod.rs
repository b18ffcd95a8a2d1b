//! Diagnosis of an endpoint: [`doctor`] (any PostgreSQL URL, item by item,
//! with remedies), the matrix (every probe under every profile on
//! the crate's own stacks) and the [`probes`] with known answers that both
//! run. Every answer a server sends is checked, never trusted: an answer of
//! an unexpected type is a finding, not a panic.
//!
//! May use (the layers below it): `fixture` (the matrix's `TestDb`s),
//! `explain` (the hazards and their remedies), `connect` (connections and
//! their errors), `target` (URLs, profiles), `error`. Never `docker` or
//! `stack`: what needs Docker goes through `fixture`.

pub mod doctor;
pub(crate) mod matrix;
pub mod probes;
