//! What differs between the sqlx majors the crate builds against (feature
//! `sqlx-0-8` or `sqlx-0-9`; `lib.rs` names the chosen one `sqlx`), so that
//! every other module is written once. Most of the API the crate uses is the
//! same in both; this module holds only what is not: sqlx 0.9 accepts SQL
//! held in anything but a `&'static str` only behind `AssertSqlSafe` (its
//! `SqlSafeStr` speed bump against `format!`-built queries), and its
//! `Migrator::run_direct` takes a target version and a skip flag. The crate's
//! run-time SQL names only what the crate made and quoted itself (database,
//! schema and template names, settings from its own lists) and is asserted
//! safe here, in one place: [`audited`] for sqlx's free functions
//! (`query*`, `raw_sql`), [`Executor`] for a connection's own methods.
//! Items for 0.8 are `cfg(feature = "sqlx-0-8")`, those for 0.9 its `not`,
//! as `lib.rs` picks the major (0.8 when both are on, beside a
//! `compile_error!`).

/// A connection's `execute`/`fetch_one`/`fetch_all` with SQL built at run
/// time: sqlx's `Executor` itself under sqlx 0.8 (import this one instead of
/// sqlx's so that a `&str` of any lifetime works under both majors).
#[cfg(feature = "sqlx-0-8")]
pub(crate) use sqlx::Executor;

/// SQL the crate built at run time, as sqlx's free functions (`query`,
/// `query_scalar`, `raw_sql`) take it: the `&str` itself under sqlx 0.8,
/// wrapped in `AssertSqlSafe` under 0.9.
#[cfg(feature = "sqlx-0-8")]
pub(crate) fn audited(sql: &str) -> &str {
    sql
}

/// [`audited`] under sqlx 0.9: the `&str` wrapped in `AssertSqlSafe`.
#[cfg(not(feature = "sqlx-0-8"))]
pub(crate) fn audited(sql: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(sql)
}

/// Applies `migrator`'s pending migrations on `conn`: sqlx's `run_direct`,
/// the entry point that takes a bare connection (sqlx's own comment: it gets
/// around "implementation of `Acquire` is not general enough"); doc-hidden
/// in both majors, so a later sqlx may change it again: here.
pub(crate) async fn run_migrations(
    migrator: &sqlx::migrate::Migrator,
    conn: &mut sqlx::PgConnection,
) -> Result<(), sqlx::migrate::MigrateError> {
    #[cfg(feature = "sqlx-0-8")]
    return migrator.run_direct(conn).await;
    #[cfg(not(feature = "sqlx-0-8"))]
    return migrator.run_direct(None, conn, false).await;
}

#[cfg(not(feature = "sqlx-0-8"))]
pub(crate) use v09::Executor;

#[cfg(not(feature = "sqlx-0-8"))]
mod v09 {
    use futures_util::future::BoxFuture;
    use sqlx::postgres::{PgQueryResult, PgRow};
    use sqlx::{AssertSqlSafe, PgConnection};

    /// A connection's `execute`/`fetch_one`/`fetch_all` with SQL built at
    /// run time (sqlx 0.9's own `Executor` takes only `&'static str` or
    /// `AssertSqlSafe`): the subset of sqlx's `Executor` the crate calls on a
    /// `&mut PgConnection`, with the same names, each going out as sqlx's
    /// (a `&str` without arguments: one simple-protocol query).
    pub(crate) trait Executor<'c> {
        fn execute(self, sql: &str) -> BoxFuture<'c, Result<PgQueryResult, sqlx::Error>>;
        fn fetch_one(self, sql: &str) -> BoxFuture<'c, Result<PgRow, sqlx::Error>>;
        fn fetch_all(self, sql: &str) -> BoxFuture<'c, Result<Vec<PgRow>, sqlx::Error>>;
    }

    impl<'c> Executor<'c> for &'c mut PgConnection {
        fn execute(self, sql: &str) -> BoxFuture<'c, Result<PgQueryResult, sqlx::Error>> {
            sqlx::Executor::execute(self, AssertSqlSafe(sql.to_owned()))
        }

        fn fetch_one(self, sql: &str) -> BoxFuture<'c, Result<PgRow, sqlx::Error>> {
            sqlx::Executor::fetch_one(self, AssertSqlSafe(sql.to_owned()))
        }

        fn fetch_all(self, sql: &str) -> BoxFuture<'c, Result<Vec<PgRow>, sqlx::Error>> {
            sqlx::Executor::fetch_all(self, AssertSqlSafe(sql.to_owned()))
        }
    }
}
