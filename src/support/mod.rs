//! Leaf helpers with no knowledge of PostgreSQL, Docker or tests.

pub(crate) mod digest;
pub(crate) mod registry;
pub(crate) mod runtime;
pub(crate) mod sync;
