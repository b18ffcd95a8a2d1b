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
//! Each concern lives in one module; arrows point down: a module uses only
//! modules listed below it (`python3 .ci/module-cycles` checks this table
//! against the code, and finds no import cycle).
//!
//! | module | concern |
//! |---|---|
//! | `main.rs` (binary) | the CLI: `up`, `doctor`, `matrix`, `gc`; no logic the library lacks |
//! | `matrix` | the compatibility/fidelity matrix: every probe behind every [`Profile`] |
//! | `fixtures` | the `rstest` fixtures; the only module that knows rstest |
//! | `testdb` | [`TestDb`] and its builder: the handle a test holds, connections to its database (no branching on the backend) |
//! | `backend` | containers or an external server -> one `Server` and its worker; per-test isolation |
//! | `stack` | a Postgres + PgBouncer pair: join (lock-free) or create (locked), lease, readiness, [`Endpoints`] |
//! | `worker` | what the process keeps per server (stack or external), on a background runtime: ties lease, admin, clones, templates built |
//! | `clones` | prepared template clones: the pool (on the stack, or in-process for external servers), sized to demand |
//! | `admin` | admin connections, the clone/drop budget and its precedence, the background drop queue |
//! | `lease` | this process's lease on a stack: keeps it alive, watched every second, `StackDied` with Docker's account |
//! | `runtime` | a background thread with its own tokio runtime (`run`, `run_blocking`, `spawn`) and exit hooks; knows no SQL |
//! | `registry` | process-wide once-per-key registries (the run's stacks, external workers, templates per worker) |
//! | `janitor` | the SQL a crate stack's processes share with its janitor (in the container): claims, demand, drops handed over |
//! | `template` | migration-keyed template databases |
//! | `database` | per-test databases and schemas, names, drop steps |
//! | `doctor` | probes any URL and gives verdicts and remedies (knows nothing of Docker) |
//! | `explain` | a test's server-side evidence (PostgreSQL's JSON log, PgBouncer's log) -> [`Explanation`] |
//! | `hazard` | what goes wrong behind a pooler, why, and what to change: the words `doctor` and `explain` share |
//! | `probes` | workloads with known answers: `statements` (sqlx patterns), `session`, `startup` (parameters, TLS) |
//! | `tokio_pg` | the tokio-postgres glue (feature `tokio-postgres`): its `Config` from the crate's options, connecting |
//! | `connect` | the one place that builds connection options and opens connections, errors that name the fix |
//! | `reaper` | the sweep at stack creation, and `gc` |
//! | `containers` | the pair of containers: where it listens (host network or published ports), create, inspect, remove |
//! | `lock` | the file lock that serialises creating (or replacing) a run's stack; stale lock files removed |
//! | `docker` | the one Docker engine (resolved as testcontainers resolves it), labels, time limits |
//! | `runkey` | which processes share a stack (the sharing rule) |
//! | `tls` | the per-stack CA and server certificate |
//! | `target` | containers or an external server (`TEST_DATABASE_URL`), [`DbUrl`] |
//! | `settings` | [`StackSettings`]: PgBouncer's knobs, each profile's knobs, `pgbouncer.ini`, the sharing key |
//! | `images` | the embedded Dockerfiles, the base image choice, building when missing |
//! | `profile` | [`Profile`]: the production endpoints, in words (their PgBouncer knobs are in `settings`) |
//! | `config` | the one reader of the process environment and `.env` ([`Env`]), its parsers, [`redact`] |
//! | `digest` | short hex keys (image tags, template names, run keys) |
//! | `sqlx_compat` | what differs between sqlx 0.8 and 0.9 (features `sqlx-0-8`, `sqlx-0-9`): run-time SQL, running a `Migrator` (a leaf) |
//! | `error` | the one [`Error`] enum; every message names the fix |
//!
//! `docker/` holds the Dockerfiles and the entrypoints (with the lease
//! watchdog that reaps a stack after any exit). See the README for the
//! `.env` / Supabase recipe, the fidelity table and the measurements.
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

mod admin;
mod backend;
mod clones;
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
mod lease;
mod lock;
mod matrix;
pub mod probes;
mod profile;
mod reaper;
mod registry;
mod runkey;
mod runtime;
mod settings;
mod sqlx_compat;
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
pub use settings::{supavisor_dropped_parameters, Network, PoolMode, StackSettings};
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
