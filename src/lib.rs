//! # pgbouncer-fixtures
//!
//! Integration tests that run behind the pooler production runs behind:
//! PostgreSQL behind PgBouncer in **transaction pooling** mode, shaped like
//! the Supabase endpoint you deploy to ([`Profile`]). Prepared-statement
//! collisions, lost session state and refused startup parameters then fail
//! your tests instead of your deployment, and the failing test says why.
//!
//! - [`test_db`]: an `rstest` fixture giving each test its own database on a
//!   Postgres + PgBouncer stack (containers, one per test run, shared by all
//!   its processes and removed by itself after the run; see the README);
//! - [`TestDb::connect`]: a fresh, unpooled sqlx `PgConnection` through the
//!   pooler; [`TestDb::connect_direct`]: the same database without it, for
//!   migrations; [`TestDb::explain`]: what the servers reported for the test;
//! - `TEST_DATABASE_URL` (process environment or `.env`): run against an
//!   existing server, e.g. a Supabase project, and start no containers.
//!
//! ```no_run
//! use pgbouncer_fixtures::{test_db, TestDb};
//! use rstest::rstest;
//!
//! #[rstest]
//! #[tokio::test]
//! async fn insert_and_read(#[future(awt)] test_db: TestDb) -> Result<(), Box<dyn std::error::Error>> {
//!     // Migrations and DDL: straight to Postgres.
//!     let mut admin = test_db.connect_direct().await?;
//!     sqlx::raw_sql("create table notes (id int primary key, body text)").execute(&mut admin).await?;
//!
//!     // Application code: through the pooler in transaction mode.
//!     let mut conn = test_db.connect().await?;
//!     let mut tx = sqlx::Connection::begin(&mut conn).await?;
//!     sqlx::query("insert into notes values ($1, $2)").bind(1).bind("hi").persistent(false).execute(&mut *tx).await?;
//!     tx.commit().await?;
//!     Ok(())
//! }
//! ```
//!
//! # Module map (for the next engineer)
//!
//! Each concern lives in one module; arrows point down (a module uses only
//! those below it in this list, `error` and `target` being used by all).
//!
//! | module | concern |
//! |---|---|
//! | `main.rs` (binary) | the CLI: `up`, `doctor`, `matrix`, `gc`; no logic the library lacks |
//! | `fixtures` | the `rstest` fixtures; the only module that knows rstest |
//! | `testdb` | [`TestDb`] and its builder: the handle a test holds, connections to its database (no branching on the backend) |
//! | `backend` | containers or an external server -> one `Server` and its worker; per-test isolation |
//! | `connect` | the one place that builds connection options and opens connections, errors that name the fix |
//! | `matrix` | the compatibility/fidelity matrix: every probe behind every [`Profile`] |
//! | `doctor` | probes any URL and gives verdicts and remedies (knows nothing of Docker) |
//! | `explain` | a test's server-side evidence (PostgreSQL's JSON log, PgBouncer's log) -> [`Explanation`] |
//! | `hazard` | what goes wrong behind a pooler, why, and what to change: the words `doctor` and `explain` share |
//! | `probes` | workloads with known answers: `statements` (sqlx patterns), `session`, `startup` (parameters, TLS) |
//! | `template` | migration-keyed template databases |
//! | `database` | per-test databases and schemas, names, drop steps |
//! | `stack` | a Postgres + PgBouncer pair: create-or-join, lease, readiness, [`Endpoints`] |
//! | `worker` | the background thread and runtime that outlive each `#[tokio::test]`: lease, admin connections, clone pool |
//! | `registry` | process-wide once-per-key registries (stacks, templates, external workers) |
//! | `runkey`, `lock` | which processes share a stack; the file lock that serialises create-or-join |
//! | `containers`, `images`, `reaper` | the pair of containers, the images, the sweep and `gc` |
//! | `docker` | the one Docker engine (resolved as testcontainers resolves it), labels, time limits |
//! | `tls` | the per-stack CA and server certificate |
//! | `profile` | [`Profile`]: the production endpoints, in words (a leaf) |
//! | `settings` | [`StackSettings`]: PgBouncer's knobs, each profile's knobs, `pgbouncer.ini`, the sharing key |
//! | `target` | containers or an external server (`TEST_DATABASE_URL`), [`DbUrl`] |
//! | `config` | the one reader of the process environment and `.env` ([`Env`]), its parsers, [`redact`] |
//! | `digest` | short hex keys (image tags, template names, run keys) |
//! | `error` | the one [`Error`] enum; every message names the fix |
//!
//! `docker/` holds the Dockerfiles and the entrypoints (with the lease
//! watchdog that reaps a stack after any exit). See the README for the
//! `.env` / Supabase recipe, the fidelity table and the measurements.
#![warn(missing_docs)]

mod backend;
mod config;
mod connect;
mod containers;
mod database;
mod digest;
mod docker;
pub mod doctor;
mod error;
mod explain;
mod fixtures;
pub mod hazard;
mod images;
mod janitor;
mod lock;
mod matrix;
pub mod probes;
mod profile;
mod reaper;
mod registry;
mod runkey;
mod settings;
mod stack;
mod target;
mod template;
mod testdb;
mod tls;
#[cfg(feature = "tokio-postgres")]
mod tokio_pg;
mod worker;

pub use backend::AcquireTimings;
pub use config::{redact, Env};
pub use database::Isolation;
pub use docker::{
    docker_engine, LABEL_CHECKOUT, LABEL_KIND, LABEL_MANAGED, LABEL_PID, LABEL_SHARED, LABEL_STACK,
};
pub use error::{Error, Result};
pub use explain::{Explanation, Seen};
pub use fixtures::{test_db, try_test_db};
pub use images::{
    ImageRef, ImageSettings, BASE_IMAGE_SCRIPT, DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE,
};
pub use matrix::{compatibility_matrix, compatibility_matrix_with, Behaviour, Matrix};
pub use profile::Profile;
pub use reaper::{gc, GcReport, GcScope};
pub use settings::{supavisor_dropped_parameters, PoolMode, StackSettings};
pub use stack::{Endpoints, Stack, STACK_USER};
pub use target::{
    DbUrl, ExternalTarget, Target, PGBF_EXTERNAL_CREATE_DATABASES, TEST_DATABASE_URL,
    TEST_DIRECT_URL,
};
pub use template::Template;
pub use testdb::{TestDb, TestDbBuilder};
/// The tokio-postgres the crate's `connect_tokio_postgres()` is built on
/// (feature `tokio-postgres`): use it to name its types at the same version.
#[cfg(feature = "tokio-postgres")]
pub use tokio_postgres;

// Every Rust block of the README is compiled as a doctest (a README example
// that stops compiling fails CI): with the tokio-postgres feature, which its
// tokio-postgres example needs; `.ci/run` runs `cargo test --doc` with it.
#[cfg(all(doctest, feature = "tokio-postgres"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
