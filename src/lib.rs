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
//!   its processes and removed by itself after the run; see docs/templates-and-stack.md);
//! - [`TestDb::connect`]: a fresh, unpooled sqlx `PgConnection` through the
//!   pooler; [`TestDb::connect_direct`]: the same database without it, for
//!   migrations; [`TestDb::explain`]: what the servers reported for the test;
//! - `TEST_DATABASE_URL` (process environment or `.env`): run against an
//!   existing server, e.g. a Supabase project, and start no containers.
//!
//! ```no_run
//! # use pgbouncer_fixtures::sqlx; // in your crate: your own sqlx dependency
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
//! One folder per concern; arrows point down: a folder uses only folders
//! listed below it (`python3 .ci/module-cycles` checks this table against
//! the code, and finds no import cycle). A test's path enters each folder
//! once, in this order: `fixture` (the test's handle) -> `target` (where it
//! runs) -> `stack` (the run's containers, when it runs on them) ->
//! `provision` (its own database) -> `connect` (its connections) -> and
//! back to `provision` to drop the database when the handle is dropped.
//!
//! | folder | concern |
//! |---|---|
//! | `cli/` (binary) | the CLI: `up`, `doctor`, `matrix`, `gc`; no logic the library lacks |
//! | `diagnose/` | `doctor`, the matrix, probes with known answers; knows nothing of Docker |
//! | `fixture/` | the `rstest` fixtures, [`TestDb`] and its builder: the policy of one test's database, in one place |
//! | `explain/` | a test's server-side evidence -> [`Explanation`]; the hazards `doctor` and `explain` share |
//! | `stack/` | the run's PostgreSQL + PgBouncer pair: joined or created, leased, ready, its [`Endpoints`] and secrets, reaped |
//! | `docker/` | the Docker engine, every engine call behind one time limit, the pair's containers, the images |
//! | `provision/` | a test's database: acquired (prepared clone, clone, empty), the worker, clone pool, templates, drops |
//! | `stage/` | the crate's own Supavisor-like front stage: a protocol proxy in the test's (or `up`'s) process for what PgBouncer cannot mimic; knows nothing of stacks |
//! | `connect/` | connection options and opening connections (sqlx, tokio-postgres), errors that name the fix |
//! | `target/` | the environment and `.env`, [`DbUrl`], [`Target`], [`Profile`]s and their [`StackSettings`] |
//! | `contract/` | every name, table, path and variable the crate shares with its images; their SQL |
//! | `support/` | leaf helpers: the background runtime, once-per-key registries, digests |
//! | `error` | the one [`Error`] enum; every message names the fix |
//!
//! `docker/` at the repository's root holds the Dockerfiles, the
//! entrypoints (process supervision only) and the SQL the images run.
#![warn(missing_docs)]

// Exactly one sqlx major (features `sqlx-0-8`, `sqlx-0-9`), named `sqlx`
// here: an `extern crate` alias at the root is in every module's extern
// prelude, so `use sqlx::...` means the chosen major everywhere in src/, and
// `sqlx_compat` absorbs what differs between the two.
#[cfg(all(feature = "sqlx-0-8", feature = "sqlx-0-9"))]
compile_error!(
    "pgbouncer-fixtures: features `sqlx-0-8` and `sqlx-0-9` are both enabled; enable exactly \
     one, the sqlx major your crate uses. For sqlx 0.9 depend on it with \
     `default-features = false, features = [\"sqlx-0-9\"]`, in every crate of the build \
     that depends on pgbouncer-fixtures (Cargo unites their features: one crate left on the \
     default `sqlx-0-8` enables it for all)"
);
#[cfg(not(any(feature = "sqlx-0-8", feature = "sqlx-0-9")))]
compile_error!(
    "pgbouncer-fixtures: no sqlx major is enabled; enable exactly one of the features \
     `sqlx-0-8` (the default) or `sqlx-0-9`, the sqlx major your crate uses: \
     `features = [\"sqlx-0-8\"]`, or `features = [\"sqlx-0-9\"]` for sqlx 0.9"
);
/// The sqlx the crate's API is built on, the major chosen by the crate's
/// feature (`sqlx-0-8` or `sqlx-0-9`): its `PgConnection`, `PgConnectOptions`,
/// `Migrator` and errors are the ones [`TestDb`] hands out and takes. Name
/// them through your own `sqlx` dependency of the same major (the same
/// types), or through this re-export.
#[cfg(feature = "sqlx-0-8")]
pub extern crate sqlx08 as sqlx;
/// The sqlx the crate's API is built on, the major chosen by the crate's
/// feature (`sqlx-0-8` or `sqlx-0-9`): its `PgConnection`, `PgConnectOptions`,
/// `Migrator` and errors are the ones [`TestDb`] hands out and takes. Name
/// them through your own `sqlx` dependency of the same major (the same
/// types), or through this re-export.
// (Both features on: 0.8 stands in, so that the `compile_error!` above is
// the one error reported.)
#[cfg(all(feature = "sqlx-0-9", not(feature = "sqlx-0-8")))]
pub extern crate sqlx09 as sqlx;

mod connect;
mod contract;
mod diagnose;
mod docker;
mod error;
mod explain;
mod fixture;
mod provision;
mod stack;
mod stage;
mod support;
mod target;

pub use diagnose::{doctor, probes};
pub use explain::hazard;

pub use diagnose::matrix::{
    matrix, matrix_with, not_reproduced, not_reproduced_under, Behaviour, Matrix,
};
pub use docker::docker_engine;
pub use error::{Error, Result};
pub use explain::authorization::AuthorizationExplanation;
pub use explain::{Explanation, Seen};
pub use fixture::fixtures::{test_db, try_test_db};
pub use fixture::supabase::{ActAs, ApiRole, SupabaseUser};
pub use fixture::test_db::{TestDb, TestDbBuilder};
pub use provision::acquire::AcquireTimings;
pub use provision::database::Isolation;
pub use provision::template::Template;
pub use stack::gc::{gc, GcReport, GcScope};
pub use stack::{Endpoints, Stack};
pub use target::env::{redact, Env};
pub use target::images::ImageSettings;
pub use target::postgres_version::PostgresVersion;
pub use target::profile::Profile;
pub use target::settings::{supavisor_dropped_parameters, Network, PoolMode, StackSettings};
pub use target::{DbUrl, ExternalTarget, Target};

/// The environment variables that choose an external server, by name (for
/// `Env::get` and scripts); every variable is in docs/configuration.md.
pub mod env_vars {
    pub use crate::target::{PGBF_EXTERNAL_CREATE_DATABASES, TEST_DATABASE_URL, TEST_DIRECT_URL};
}

/// The labels on every container the crate creates, for `docker ps --filter
/// label=...` and scripts of your own (`gc` finds the containers by them).
pub mod labels {
    pub use crate::docker::labels::{
        LABEL_CHECKOUT as CHECKOUT, LABEL_KIND as KIND, LABEL_MANAGED as MANAGED, LABEL_PID as PID,
        LABEL_SHARED as SHARED, LABEL_STACK as STACK,
    };
}

/// The base image the crate's Dockerfiles build from, and the script that
/// makes one from Debian's packages on a machine without a registry.
pub mod images {
    pub use crate::docker::images::BASE_IMAGE_SCRIPT;
    pub use crate::target::images::{DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE};
}

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

// The same for the docs/ pages that hold Rust blocks.
#[cfg(all(doctest, feature = "tokio-postgres"))]
#[doc = include_str!("../docs/configuration.md")]
struct ConfigurationDoctests;

#[cfg(all(doctest, feature = "tokio-postgres"))]
#[doc = include_str!("../docs/tokio-postgres.md")]
struct TokioPostgresDoctests;

#[cfg(all(doctest, feature = "tokio-postgres"))]
#[doc = include_str!("../docs/supabase.md")]
struct SupabaseDoctests;

// The 0.1 names of what moved or was renamed, kept for at least one minor
// version (CHANGELOG.md has each one's migration note); the methods' old
// names are in `fixture/deprecated.rs` and `target/deprecated.rs`.

/// Runs the whole matrix.
#[deprecated(since = "0.2.0", note = "renamed to `matrix()`")]
pub async fn compatibility_matrix(workload: probes::Workload) -> Result<Matrix> {
    matrix(workload).await
}

/// [`matrix`], calling `on_cell` as each cell is done.
#[deprecated(since = "0.2.0", note = "renamed to `matrix_with()`")]
pub async fn compatibility_matrix_with(
    workload: probes::Workload,
    on_cell: impl FnMut(Behaviour, Profile, &probes::Outcome),
) -> Result<Matrix> {
    matrix_with(workload, on_cell).await
}

/// An image reference split as testcontainers wants it.
#[deprecated(
    since = "0.2.0",
    note = "no public function takes or returns it; name images as strings (`ImageSettings`)"
)]
pub type ImageRef = docker::images::ImageRef;

/// Moved to [`env_vars::TEST_DATABASE_URL`].
#[deprecated(since = "0.2.0", note = "moved to `env_vars::TEST_DATABASE_URL`")]
pub const TEST_DATABASE_URL: &str = env_vars::TEST_DATABASE_URL;

/// Moved to [`env_vars::TEST_DIRECT_URL`].
#[deprecated(since = "0.2.0", note = "moved to `env_vars::TEST_DIRECT_URL`")]
pub const TEST_DIRECT_URL: &str = env_vars::TEST_DIRECT_URL;

/// Moved to [`env_vars::PGBF_EXTERNAL_CREATE_DATABASES`].
#[deprecated(
    since = "0.2.0",
    note = "moved to `env_vars::PGBF_EXTERNAL_CREATE_DATABASES`"
)]
pub const PGBF_EXTERNAL_CREATE_DATABASES: &str = env_vars::PGBF_EXTERNAL_CREATE_DATABASES;

/// Moved to [`labels::CHECKOUT`].
#[deprecated(since = "0.2.0", note = "moved to `labels::CHECKOUT`")]
pub const LABEL_CHECKOUT: &str = labels::CHECKOUT;

/// Moved to [`labels::KIND`].
#[deprecated(since = "0.2.0", note = "moved to `labels::KIND`")]
pub const LABEL_KIND: &str = labels::KIND;

/// Moved to [`labels::MANAGED`].
#[deprecated(since = "0.2.0", note = "moved to `labels::MANAGED`")]
pub const LABEL_MANAGED: &str = labels::MANAGED;

/// Moved to [`labels::PID`].
#[deprecated(since = "0.2.0", note = "moved to `labels::PID`")]
pub const LABEL_PID: &str = labels::PID;

/// Moved to [`labels::SHARED`].
#[deprecated(since = "0.2.0", note = "moved to `labels::SHARED`")]
pub const LABEL_SHARED: &str = labels::SHARED;

/// Moved to [`labels::STACK`].
#[deprecated(since = "0.2.0", note = "moved to `labels::STACK`")]
pub const LABEL_STACK: &str = labels::STACK;

/// Moved to [`images::BASE_IMAGE_SCRIPT`].
#[deprecated(since = "0.2.0", note = "moved to `images::BASE_IMAGE_SCRIPT`")]
pub const BASE_IMAGE_SCRIPT: &str = images::BASE_IMAGE_SCRIPT;

/// Moved to [`images::DEFAULT_BASE_IMAGE`].
#[deprecated(since = "0.2.0", note = "moved to `images::DEFAULT_BASE_IMAGE`")]
pub const DEFAULT_BASE_IMAGE: &str = images::DEFAULT_BASE_IMAGE;

/// Moved to [`images::LOCAL_BASE_IMAGE`].
#[deprecated(since = "0.2.0", note = "moved to `images::LOCAL_BASE_IMAGE`")]
pub const LOCAL_BASE_IMAGE: &str = images::LOCAL_BASE_IMAGE;

/// Moved to [`Endpoints::USER`].
#[deprecated(since = "0.2.0", note = "moved to `Endpoints::USER`")]
pub const STACK_USER: &str = Endpoints::USER;
