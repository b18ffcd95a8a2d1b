//! What the contract tests share: the SQL files the image loads, loaded
//! into the test's own database on the stack.
#![allow(dead_code)]

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::TestDb;
use sqlx::PgConnection;

/// The files `docker/sql/setup.sql` loads, in its order (the crate embeds
/// the same files: src/contract/mod.rs, `SETUP_FILES`).
pub const SETUP: [&str; 5] = [
    include_str!("../../docker/sql/settings.sql"),
    include_str!("../../docker/sql/tables.sql"),
    include_str!("../../docker/sql/leases.sql"),
    include_str!("../../docker/sql/janitor.sql"),
    include_str!("../../docker/sql/watchdog.sql"),
];

/// A direct connection to the test's database with the first `files` of
/// [`SETUP`] loaded (the whole of it: 5).
pub async fn loaded(test_db: &TestDb, files: usize) -> PgConnection {
    let mut conn = test_db.connect_direct().await.unwrap();
    for &file in &SETUP[..files] {
        sqlx::raw_sql(file).execute(&mut conn).await.unwrap();
    }
    conn
}
