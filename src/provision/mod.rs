//! The test's own database: made in one pass (`acquire.rs`: a prepared
//! clone, a clone, or an empty database or schema), handed out and dropped;
//! the server's worker (`worker.rs`) with its admin connections
//! (`admin.rs`), heavy-statement budget (`budget.rs`), memory budget
//! (`memory.rs`), clone pool
//! (`clones/`), templates and database steps (`database.rs`), and the
//! stack's janitor's share (`janitor.rs`). It knows servers only as URLs
//! and plain data (no stack, no Docker): it may use connect, target,
//! contract, support and error.

pub(crate) mod acquire;
pub(crate) mod admin;
pub(crate) mod budget;
pub(crate) mod clones;
pub(crate) mod database;
pub(crate) mod janitor;
pub(crate) mod memory;
pub(crate) mod supabase;
pub(crate) mod template;
pub(crate) mod worker;
