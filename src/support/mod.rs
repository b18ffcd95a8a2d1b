//! Leaf helpers with no knowledge of PostgreSQL, Docker or tests: the
//! background runtime, once-per-key registries, digests, locks. May use
//! only `error`.

pub(crate) mod digest;
pub(crate) mod registry;
pub(crate) mod runtime;
pub(crate) mod sync;
