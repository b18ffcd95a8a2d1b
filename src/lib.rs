//! # pgbouncer-fixtures
//!
//! Integration tests that run behind the same topology as production on
//! Supabase: PostgreSQL behind PgBouncer in **transaction pooling** mode.
//! Prepared-statement collisions, lost session state and refused startup
//! parameters then fail your tests instead of your deployment.
//!
//! - [`test_db`]: an `rstest` fixture giving each test its own database on a
//!   Postgres + PgBouncer stack (containers, one per test run, shared by all
//!   its processes and removed by itself after the run; see the README);
//! - [`TestDb::connect`]: a fresh, unpooled sqlx `PgConnection` through the
//!   pooler; [`TestDb::connect_direct`]: the same database without it, for
//!   migrations;
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
//!     // Application code: through PgBouncer in transaction mode.
//!     let mut conn = test_db.connect().await?;
//!     let mut tx = sqlx::Connection::begin(&mut conn).await?;
//!     sqlx::query("insert into notes values ($1, $2)").bind(1).bind("hi").execute(&mut *tx).await?;
//!     tx.commit().await?;
//!     Ok(())
//! }
//! ```
//!
//! See the README for the `.env` / Supabase recipe and what
//! `statement_cache_capacity(0)` does and does not protect against.
#![warn(missing_docs)]

mod containers;
mod database;
mod docker;
pub mod doctor;
mod error;
mod explain;
mod factory;
mod fixtures;
pub mod hazard;
mod images;
mod lock;
mod matrix;
pub mod probes;
mod profile;
mod reaper;
mod runkey;
mod settings;
mod stack;
mod target;
mod template;
mod tls;
#[cfg(feature = "tokio-postgres")]
mod tokio_pg;
mod worker;

pub use database::Isolation;
pub use docker::{
    docker_engine, LABEL_CHECKOUT, LABEL_KIND, LABEL_MANAGED, LABEL_PID, LABEL_SHARED, LABEL_STACK,
};
pub use error::{Error, Result};
pub use explain::{Explanation, Seen};
pub use factory::{TestDb, TestDbBuilder};
pub use fixtures::{test_db, try_test_db};
pub use images::{
    ImageRef, ImageSettings, BASE_IMAGE_SCRIPT, DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE,
};
pub use matrix::{compatibility_matrix, compatibility_matrix_with, Behaviour, Matrix};
pub use profile::{supavisor_dropped_parameters, Profile};
pub use reaper::{gc, GcReport, GcScope};
pub use settings::{PoolMode, StackSettings};
pub use stack::{Endpoints, Stack, STACK_USER};
pub use target::{
    redact, DbUrl, Env, ExternalTarget, Target, PGBF_EXTERNAL_CREATE_DATABASES, TEST_DATABASE_URL,
    TEST_DIRECT_URL,
};
pub use template::Template;
/// The tokio-postgres the crate's `connect_tokio_postgres()` is built on
/// (feature `tokio-postgres`): use it to name its types at the same version.
#[cfg(feature = "tokio-postgres")]
pub use tokio_postgres;
