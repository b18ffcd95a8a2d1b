//! The Docker engine as the crate uses it, and what the crate runs on it.
//!
//! Owns: which engine (`engine.rs`, walking the places of `places.rs` in
//! testcontainers' order), the bollard client and the one time limit every
//! Docker call goes through (`client.rs`), the labels on what the crate
//! creates (`labels.rs`), whether the engine's host network is this
//! machine's (`network.rs`), the images (`images.rs`), and the pair of
//! containers a stack runs: where it listens (`ports.rs`), its containers
//! (`containers.rs`, their environment `pair_env.rs`), what a joiner reads back
//! from them (`pair.rs`), and reaping leftovers (`reap.rs`).
//!
//! May use: `target` (settings, the environment), `contract` (what the
//! images read and ship), `support`, `error`. It
//! knows nothing of stacks' leases, locks or keys: `stack` drives it.

pub(crate) mod client;
pub(crate) mod containers;
pub(crate) mod engine;
pub(crate) mod images;
pub(crate) mod labels;
pub(crate) mod network;
pub(crate) mod pair;
mod pair_env;
mod places;
pub(crate) mod ports;
pub(crate) mod reap;

pub(crate) use client::{call, CALL_TIMEOUT};
pub use engine::docker_engine;
pub(crate) use engine::{connect, engine, engine_checked};
