//! The sqlx usage patterns whose behaviour differs between poolers, as a
//! concurrent workload: the compatibility matrix, `doctor` and the fidelity
//! tests all run these.

use std::fmt;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};

use crate::error::{Error, Result};

/// One way applications talk to Postgres through sqlx.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlxPattern {
    /// A `PgPool` with sqlx's default statement cache (named, cached statements).
    PoolDefaultCache,
    /// One `PgConnection` per client with `statement_cache_capacity(0)`
    /// (named statements, not cached): what `TestDb::connect()` gives.
    ConnectionCacheOff,
    /// `.persistent(false)` (unnamed statements) outside an explicit transaction.
    UnnamedOutsideTransaction,
    /// `.persistent(false)` inside `begin()`..`commit()`.
    UnnamedInsideTransaction,
    /// The simple query protocol (`sqlx::raw_sql`): no prepared statement at all.
    SimpleProtocol,
}

impl SqlxPattern {
    /// Every pattern, in the order of the compatibility matrix.
    pub const ALL: [SqlxPattern; 5] = [
        SqlxPattern::PoolDefaultCache,
        SqlxPattern::ConnectionCacheOff,
        SqlxPattern::UnnamedOutsideTransaction,
        SqlxPattern::UnnamedInsideTransaction,
        SqlxPattern::SimpleProtocol,
    ];

    /// How the pattern reads in code.
    pub fn description(self) -> &'static str {
        match self {
            SqlxPattern::PoolDefaultCache => "`PgPool`, default statement cache",
            SqlxPattern::ConnectionCacheOff => "`PgConnection`, `statement_cache_capacity(0)`",
            SqlxPattern::UnnamedOutsideTransaction => "`.persistent(false)` outside a transaction",
            SqlxPattern::UnnamedInsideTransaction => {
                "`.persistent(false)` inside `begin()`..`commit()`"
            }
            SqlxPattern::SimpleProtocol => "`sqlx::raw_sql` (simple protocol)",
        }
    }
}

impl fmt::Display for SqlxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// How hard to push: concurrent clients and queries per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Concurrent clients (connections).
    pub clients: usize,
    /// Parameterised queries per client, over 7 distinct SQL texts.
    pub rounds: usize,
}

impl Default for Workload {
    /// 16 clients x 200 queries: the workload of the crate's measurements.
    fn default() -> Self {
        Workload {
            clients: 16,
            rounds: 200,
        }
    }
}

/// The first error one client met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    /// SQLSTATE, when the server sent one.
    pub code: Option<String>,
    /// The message.
    pub message: String,
}

/// What a workload did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The pattern that ran.
    pub pattern: SqlxPattern,
    /// How many clients ran.
    pub clients: usize,
    /// The first error of each client that failed.
    pub failures: Vec<ClientError>,
}

impl Outcome {
    /// Whether every client ran every query.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The SQLSTATEs met, sorted and without repeats.
    pub fn codes(&self) -> Vec<String> {
        let mut codes: Vec<String> = self
            .failures
            .iter()
            .filter_map(|f| f.code.clone())
            .collect();
        codes.sort();
        codes.dedup();
        codes
    }

    /// `16/16 ok` or `15/16 failed (42P05)`.
    pub fn summary(&self) -> String {
        if self.passed() {
            format!("{n}/{n} ok", n = self.clients)
        } else {
            let codes = self.codes();
            let codes = if codes.is_empty() {
                "no SQLSTATE".to_string()
            } else {
                codes.join(", ")
            };
            format!("{}/{} failed ({codes})", self.failures.len(), self.clients)
        }
    }
}

fn client_error(e: &sqlx::Error) -> ClientError {
    match e.as_database_error() {
        Some(db) => ClientError {
            code: db.code().map(|c| c.to_string()),
            message: db.message().to_string(),
        },
        None => ClientError {
            code: None,
            message: crate::target::redact(&e.to_string()),
        },
    }
}

/// Runs `pattern` with `workload` against the server `options` point at
/// (connection options as `TestDb::connect_options()` gives them).
pub async fn run_pattern(
    pattern: SqlxPattern,
    options: &PgConnectOptions,
    workload: Workload,
) -> Result<Outcome> {
    let connect_error = |e: sqlx::Error| Error::Sql {
        action: "connecting for a probe".into(),
        source: e,
    };
    let mut tasks = Vec::with_capacity(workload.clients);
    if pattern == SqlxPattern::PoolDefaultCache {
        let pool = PgPoolOptions::new()
            .max_connections(workload.clients as u32)
            .min_connections(workload.clients as u32)
            .connect_with(options.clone().statement_cache_capacity(100))
            .await
            .map_err(connect_error)?;
        for _ in 0..workload.clients {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..workload.rounds {
                    let sql = format!("select $1::int8 + {}", i % 7);
                    sqlx::query_scalar::<_, i64>(&sql)
                        .bind(i as i64)
                        .fetch_one(&pool)
                        .await?;
                }
                Ok::<(), sqlx::Error>(())
            }));
        }
        let failures = collect(tasks).await;
        pool.close().await;
        return Ok(Outcome {
            pattern,
            clients: workload.clients,
            failures,
        });
    }
    let mut conns = Vec::with_capacity(workload.clients);
    for _ in 0..workload.clients {
        conns.push(
            PgConnection::connect_with(&options.clone().statement_cache_capacity(0))
                .await
                .map_err(connect_error)?,
        );
    }
    for conn in conns {
        tasks.push(tokio::spawn(client(pattern, conn, workload.rounds)));
    }
    let failures = collect(tasks).await;
    Ok(Outcome {
        pattern,
        clients: workload.clients,
        failures,
    })
}

// One client of a connection-per-client pattern.
async fn client(
    pattern: SqlxPattern,
    mut conn: PgConnection,
    rounds: usize,
) -> Result<(), sqlx::Error> {
    for i in 0..rounds {
        let sql = format!("select $1::int8 + {}", i % 7);
        let arg = i as i64;
        match pattern {
            SqlxPattern::ConnectionCacheOff => {
                sqlx::query_scalar::<_, i64>(&sql)
                    .bind(arg)
                    .fetch_one(&mut conn)
                    .await?;
            }
            SqlxPattern::UnnamedOutsideTransaction => {
                sqlx::query_scalar::<_, i64>(&sql)
                    .bind(arg)
                    .persistent(false)
                    .fetch_one(&mut conn)
                    .await?;
            }
            SqlxPattern::UnnamedInsideTransaction => {
                unnamed_in_transaction(&mut conn, &sql, arg).await?;
            }
            SqlxPattern::SimpleProtocol => {
                // A query without arguments goes out as a simple Query message
                // (`raw_sql` itself is not `Send` across spawn in sqlx 0.8).
                let literal = format!("select {arg}::int8 + {}", i % 7);
                conn.execute(literal.as_str()).await?;
            }
            SqlxPattern::PoolDefaultCache => unreachable!("runs on a pool"),
        }
    }
    let _ = conn.close().await;
    Ok(())
}

async fn unnamed_in_transaction(
    conn: &mut PgConnection,
    sql: &str,
    arg: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let inner: &mut PgConnection = &mut tx;
    sqlx::query_scalar::<_, i64>(sql)
        .bind(arg)
        .persistent(false)
        .fetch_one(inner)
        .await?;
    tx.commit().await
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Result<(), sqlx::Error>>>) -> Vec<ClientError> {
    let mut failures = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(client_error(&e)),
            Err(e) => failures.push(ClientError {
                code: None,
                message: format!("client task failed: {e}"),
            }),
        }
    }
    failures
}
