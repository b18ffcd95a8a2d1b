//! The first connection's items: the server's version and the pool
//! behaviour, read from the server's own answers. An answer of a type
//! PostgreSQL's own functions do not return is a finding, never a panic.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};

use super::items;
use super::report::{Finding, PoolBehaviour, Verdict};
use crate::connect::{open, Endpoint};
use crate::explain::hazard::Hazard;
use crate::target::DbUrl;

/// Why one of doctor's own queries did not give an answer to conclude from.
#[derive(Debug)]
pub(super) enum Unanswered {
    /// The query failed (the server's or the driver's words).
    Failed(String),
    /// The server answered `asked` with a value (or a row shape) that
    /// PostgreSQL's own function does not return.
    UnexpectedAnswer {
        /// The query.
        asked: &'static str,
        /// sqlx's words about the value.
        detail: String,
    },
}

impl Unanswered {
    /// What the failure of `asked` says: an unexpected answer when the server
    /// answered but not as PostgreSQL does, else a failure.
    fn of(asked: &'static str, e: sqlx::Error) -> Unanswered {
        match e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::Decode(_)
            | sqlx::Error::RowNotFound => Unanswered::UnexpectedAnswer {
                asked,
                detail: e.to_string(),
            },
            other => Unanswered::Failed(other.to_string()),
        }
    }

    /// The finding for `item`.
    pub(super) fn finding(self, item: &'static str) -> Finding {
        match self {
            Unanswered::Failed(detail) => Finding::new(item, Verdict::Error, detail),
            Unanswered::UnexpectedAnswer { asked, detail } => Finding::new(
                item,
                Verdict::Error,
                format!("the server answered `{asked}` with an unexpected type: {detail}"),
            )
            .with_remedy(
                "PostgreSQL's own function answers otherwise: a function of that name in a schema \
                 the search_path puts before pg_catalog shadows it (see `show search_path` and the \
                 role's and database's settings, ALTER ROLE / ALTER DATABASE ... SET search_path), or \
                 this endpoint is not PostgreSQL; the items below that rely on it are not conclusive",
            ),
        }
    }
}

/// The first value of `sql`'s one row, as `T`.
async fn one<T>(conn: &mut PgConnection, sql: &'static str) -> Result<T, Unanswered>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let row: PgRow = sqlx::raw_sql(sql)
        .fetch_one(conn)
        .await
        .map_err(|e| Unanswered::of(sql, e))?;
    row.try_get::<T, _>(0).map_err(|e| Unanswered::of(sql, e))
}

/// The server's version, as `show server_version` says it.
pub(super) async fn server_finding(conn: &mut PgConnection) -> Finding {
    match one::<String>(conn, "show server_version").await {
        Ok(version) => Finding::new(
            items::SERVER,
            Verdict::Info,
            format!("PostgreSQL {version}"),
        ),
        Err(e) => e.finding(items::SERVER),
    }
}

/// The pool behaviour's finding; `None` beside it when it could not be told.
pub(super) fn pool_finding(
    behaviour: Result<PoolBehaviour, Unanswered>,
) -> (Finding, Option<PoolBehaviour>) {
    match behaviour {
        Ok(PoolBehaviour::Transaction) => (
            Finding::new(
                items::POOL_MODE,
                Verdict::Info,
                "transaction pooling: the next transaction ran on another backend, without the \
                 session's SET",
            )
            .with_remedy(Hazard::SessionStateLost.remedy_line()),
            Some(PoolBehaviour::Transaction),
        ),
        Ok(PoolBehaviour::Session) => (
            Finding::new(
                items::POOL_MODE,
                Verdict::Ok,
                "session semantics: PostgreSQL itself or a session pooler (backend and SET kept \
                 across transactions)",
            ),
            Some(PoolBehaviour::Session),
        ),
        Err(e) => (e.finding(items::POOL_MODE), None),
    }
}

/// The SQL of [`pool_behaviour`]'s last look, run on the first client.
const BACKEND_AND_SETTING: &str = "select pg_backend_pid(), current_setting('pgbf.doctor', true)";

/// Sets session state on `a`, makes a second client take the server
/// connection `a` used, and looks whether `a` kept backend and state.
pub(super) async fn pool_behaviour(
    a: &mut PgConnection,
    base: &PgConnectOptions,
    url: &DbUrl,
    timeout: Duration,
) -> Result<PoolBehaviour, Unanswered> {
    let failed = |e: &dyn std::fmt::Display| Unanswered::Failed(e.to_string());
    sqlx::raw_sql("set pgbf.doctor = 'probe'")
        .execute(&mut *a)
        .await
        .map_err(|e| failed(&e))?;
    let before = one::<i32>(a, "select pg_backend_pid()").await?;
    let mut b = open(Endpoint::Server, url, base, timeout)
        .await
        .map_err(|e| failed(&e))?;
    sqlx::raw_sql("begin; select 1")
        .execute(&mut b)
        .await
        .map_err(|e| failed(&e))?;
    let after = sqlx::raw_sql(BACKEND_AND_SETTING).fetch_one(&mut *a).await;
    let _ = sqlx::raw_sql("commit").execute(&mut b).await;
    let _ = b.close().await;
    let after = after.map_err(|e| Unanswered::of(BACKEND_AND_SETTING, e))?;
    let decode = |e| Unanswered::of(BACKEND_AND_SETTING, e);
    let pid = after.try_get::<i32, _>(0).map_err(decode)?;
    let setting = after.try_get::<Option<String>, _>(1).map_err(decode)?;
    Ok(if pid == before && setting.as_deref() == Some("probe") {
        PoolBehaviour::Session
    } else {
        PoolBehaviour::Transaction
    })
}
