//! Session state across transactions: client A sets something up, client B
//! then takes the server connection A used (an open transaction), and A
//! checks its state with a known answer. Behind a transaction pooler A's
//! state stays on the server connection B now holds: errors, or worse,
//! answers that are silently wrong. Also sqlx's migrator lock, which is
//! session state too. These probes create objects: the crate's stacks only.

use std::fmt;
use std::time::Duration;

use sqlx::migrate::Migrate;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};

use super::{clients_a_and_b, ClientEnd, ClientError, Outcome, WrongAnswer};
use crate::connect::sqlx_compat::audited;
use crate::error::{sql_error, Result};

/// A piece of session state an application may rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionProbe {
    /// SQL-level `PREPARE`, then `EXECUTE` in a later transaction.
    SqlPrepare,
    /// `SET` (not `SET LOCAL`), then read in a later transaction.
    Set,
    /// `pg_advisory_lock`, then `pg_advisory_unlock` in a later transaction.
    AdvisoryLock,
    /// `LISTEN`, then a `NOTIFY` from another session.
    Listen,
    /// A temporary table used in a later transaction.
    TempTable,
    /// sqlx's `Migrator` lock and unlock through the pooler, with another
    /// client busy in between: the lock must not outlive the unlock.
    MigratorLock,
}

impl SessionProbe {
    /// Every probe, in the order of the matrix.
    pub const ALL: [SessionProbe; 6] = [
        SessionProbe::SqlPrepare,
        SessionProbe::Set,
        SessionProbe::AdvisoryLock,
        SessionProbe::Listen,
        SessionProbe::TempTable,
        SessionProbe::MigratorLock,
    ];

    /// How it reads in code.
    pub fn description(self) -> &'static str {
        match self {
            SessionProbe::SqlPrepare => "SQL `PREPARE`, `EXECUTE` in a later transaction",
            SessionProbe::Set => "`SET`, read in a later transaction",
            SessionProbe::AdvisoryLock => "`pg_advisory_lock`, unlock in a later transaction",
            SessionProbe::Listen => "`LISTEN` (`PgListener`), then a `NOTIFY`",
            SessionProbe::TempTable => "temporary table, used in a later transaction",
            SessionProbe::MigratorLock => "sqlx `Migrator` lock/unlock through the pooler",
        }
    }
}

impl fmt::Display for SessionProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Runs `probe` through `pooled`; `direct` reaches the same database without
/// the pooler (to notify, and to release what the probe left behind).
pub async fn run_session_probe(
    probe: SessionProbe,
    pooled: &PgConnectOptions,
    direct: &PgConnectOptions,
) -> Result<Outcome> {
    let pooled = pooled.clone().statement_cache_capacity(0);
    let tag = rand::random::<u32>() % 1_000_000;
    let end = match probe {
        SessionProbe::SqlPrepare => {
            let name = format!("pgbf_q_{tag}");
            let setup = format!("prepare {name} as select {tag}::int8");
            across(&pooled, &setup, &format!("execute {name}"), tag.to_string()).await?
        }
        SessionProbe::Set => {
            let setup = format!("set pgbf.marker = '{tag}'");
            let check = "select current_setting('pgbf.marker', true)";
            across(&pooled, &setup, check, tag.to_string()).await?
        }
        SessionProbe::AdvisoryLock => {
            let setup = format!("select pg_advisory_lock({tag})");
            let check = format!("select pg_advisory_unlock({tag})::text");
            across(&pooled, &setup, &check, "true".into()).await?
        }
        SessionProbe::TempTable => {
            let table = format!("pgbf_tmp_{tag}");
            let setup = format!("create temp table {table} as select {tag}::int8 as x");
            across(
                &pooled,
                &setup,
                &format!("select x from {table}"),
                tag.to_string(),
            )
            .await?
        }
        SessionProbe::Listen => listen(&pooled, direct, tag).await?,
        SessionProbe::MigratorLock => migrator_lock(&pooled, direct).await?,
    };
    // Whatever a lost session left on pooled server connections (locks,
    // prepared statements) goes with them: end those server sessions.
    release_pooled_sessions(direct).await?;
    Ok(Outcome::single(probe.description(), end))
}

/// A sets up, B takes A's server connection, A checks for `expected`.
async fn across(
    pooled: &PgConnectOptions,
    setup: &str,
    check: &str,
    expected: String,
) -> Result<ClientEnd> {
    let (mut a, mut b) = clients_a_and_b(pooled).await?;
    match sqlx::raw_sql(audited(setup)).execute(&mut a).await {
        Ok(_) => {}
        // The pooler refusing the setup is the outcome (e.g. Supavisor's
        // EPSSIMPLEQUERY for SQL PREPARE with its prepared-statement flag on).
        Err(e) if e.as_database_error().is_some() => {
            let _ = b.close().await;
            return Ok(ClientEnd::Failed(ClientError::of(&e)));
        }
        Err(e) => return Err(sql_error(setup)(e)),
    }
    sqlx::raw_sql("begin; select 1")
        .execute(&mut b)
        .await
        .map_err(sql_error("client B's transaction"))?;
    let answer = sqlx::raw_sql(audited(check)).fetch_one(&mut a).await;
    let _ = sqlx::raw_sql("commit").execute(&mut b).await;
    let _ = b.close().await;
    let _ = a.close().await;
    Ok(match answer {
        Err(e) => ClientEnd::Failed(ClientError::of(&e)),
        Ok(row) => {
            let got = row
                .try_get::<Option<String>, _>(0)
                .or_else(|_| row.try_get::<i64, _>(0).map(|n| Some(n.to_string())))
                .unwrap_or(None);
            if got.as_deref() == Some(expected.as_str()) {
                ClientEnd::Ok
            } else {
                ClientEnd::Wrong(WrongAnswer {
                    asked: format!("`{setup}`, then `{check}` in a later transaction"),
                    expected,
                    got: got.unwrap_or_else(|| "NULL".into()),
                })
            }
        }
    })
}

async fn listen(
    pooled: &PgConnectOptions,
    direct: &PgConnectOptions,
    tag: u32,
) -> Result<ClientEnd> {
    let channel = format!("pgbf_channel_{tag}");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pooled.clone())
        .await
        .map_err(sql_error("connecting the listener"))?;
    let mut listener = PgListener::connect_with(&pool)
        .await
        .map_err(sql_error("starting the listener"))?;
    listener
        .listen(&channel)
        .await
        .map_err(sql_error("LISTEN"))?;
    let mut b = PgConnection::connect_with(pooled)
        .await
        .map_err(sql_error("connecting client B"))?;
    sqlx::raw_sql("begin; select 1")
        .execute(&mut b)
        .await
        .map_err(sql_error("client B's transaction"))?;
    let mut notifier = PgConnection::connect_with(direct)
        .await
        .map_err(sql_error("connecting the notifier"))?;
    sqlx::raw_sql(audited(&format!("notify {channel}, '{tag}'")))
        .execute(&mut notifier)
        .await
        .map_err(sql_error("NOTIFY"))?;
    let received = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await;
    // Behind a transaction pooler B holds the listening server connection and
    // receives A's notification, which sqlx refuses mid-transaction.
    let stray = sqlx::raw_sql("commit").execute(&mut b).await.err();
    let _ = notifier.close().await;
    let _ = b.close().await;
    // The listener holds the pool's one connection: drop it before closing.
    drop(listener);
    pool.close().await;
    Ok(match received {
        Ok(Ok(n)) if n.payload() == tag.to_string() => ClientEnd::Ok,
        Ok(Ok(n)) => ClientEnd::Wrong(WrongAnswer {
            asked: format!("LISTEN {channel}"),
            expected: format!("payload {tag}"),
            got: format!("payload {}", n.payload()),
        }),
        Ok(Err(e)) => ClientEnd::Failed(ClientError::of(&e)),
        Err(_) => ClientEnd::Wrong(WrongAnswer {
            asked: format!("LISTEN {channel}, then NOTIFY from another session"),
            expected: "the notification".into(),
            got: match stray {
                Some(_) => "nothing (another client's connection received it)".into(),
                None => "nothing within 2 s".into(),
            },
        }),
    })
}

async fn migrator_lock(pooled: &PgConnectOptions, direct: &PgConnectOptions) -> Result<ClientEnd> {
    let mut m = PgConnection::connect_with(pooled)
        .await
        .map_err(sql_error("connecting the migrator"))?;
    let mut busy = PgConnection::connect_with(pooled)
        .await
        .map_err(sql_error("connecting client B"))?;
    if let Err(e) = m.lock().await {
        return Ok(ClientEnd::Failed(migrate_error(e)));
    }
    sqlx::raw_sql("begin; select 1")
        .execute(&mut busy)
        .await
        .map_err(sql_error("client B's transaction"))?;
    let unlocked = m.unlock().await;
    let _ = sqlx::raw_sql("commit").execute(&mut busy).await;
    let _ = busy.close().await;
    let _ = m.close().await;
    if let Err(e) = unlocked {
        return Ok(ClientEnd::Failed(migrate_error(e)));
    }
    let held = advisory_locks_of_others(direct).await?;
    Ok(if held == 0 {
        ClientEnd::Ok
    } else {
        ClientEnd::Wrong(WrongAnswer {
            asked: "Migrator lock(), unlock(), then pg_locks".into(),
            expected: "no advisory lock left".into(),
            got: format!(
                "{held} advisory lock(s) still held by a pooled server connection: the next migration run hangs"
            ),
        })
    })
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> ClientError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => ClientError::of(&e),
        other => ClientError {
            code: None,
            message: other.to_string(),
        },
    }
}

const OTHER_SESSIONS_OF_THIS_DATABASE: &str =
    "from pg_stat_activity where datname = current_database() \
     and pid <> pg_backend_pid() and backend_type = 'client backend'";

async fn advisory_locks_of_others(direct: &PgConnectOptions) -> Result<i64> {
    let mut conn = PgConnection::connect_with(direct)
        .await
        .map_err(sql_error("connecting to look at pg_locks"))?;
    let held = sqlx::raw_sql(
        "select count(*) from pg_locks where locktype = 'advisory' and granted \
         and database = (select oid from pg_database where datname = current_database()) \
         and pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .and_then(|row| row.try_get::<i64, _>(0))
    .map_err(sql_error("reading pg_locks"))?;
    let _ = conn.close().await;
    Ok(held)
}

/// Ends every other server session on the probe's database (the pooler
/// opens new ones as needed): nothing a probe left there leaks into the next.
async fn release_pooled_sessions(direct: &PgConnectOptions) -> Result<()> {
    let mut conn = PgConnection::connect_with(direct)
        .await
        .map_err(sql_error("connecting to clean up"))?;
    sqlx::raw_sql(audited(&format!(
        "select count(pg_terminate_backend(pid)) {OTHER_SESSIONS_OF_THIS_DATABASE}"
    )))
    .execute(&mut conn)
    .await
    .map_err(sql_error("ending the probe's server sessions"))?;
    let _ = conn.close().await;
    Ok(())
}
