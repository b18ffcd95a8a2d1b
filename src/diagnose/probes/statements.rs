//! sqlx's ways of running a parameterised query, as workloads whose every
//! answer is known: client `c` runs `select $1::int8 + K` with a constant
//! `K` of its own per SQL text, so another client's statement of the same
//! name cannot produce the expected value: a wrong answer is seen, not missed.

use std::fmt;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};

use super::{check, query, within, ClientEnd, Outcome, Workload, CLIENT_TIMEOUT, TEXTS};
use crate::connect::sqlx_compat::{audited, Executor};
use crate::error::{Error, Result};

/// One way applications run a parameterised query through sqlx.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlxPattern {
    /// A `PgPool` with sqlx's default statement cache (named, cached statements).
    PoolDefaultCache,
    /// One `PgConnection` per client with `statement_cache_capacity(0)`
    /// (named statements, not cached, never closed), clients at the same time.
    ConnectionCacheOff,
    /// `statement_cache_capacity(0)`, clients one after another (a test
    /// calling `connect()` twice): no concurrency at all.
    SequentialConnects,
    /// `.persistent(false)` (unnamed statements) outside an explicit transaction.
    UnnamedOutsideTransaction,
    /// `.persistent(false)` inside `begin()`..`commit()`.
    UnnamedInsideTransaction,
    /// The simple query protocol: no prepared statement at all.
    SimpleProtocol,
}

/// Clients of [`SqlxPattern::SequentialConnects`] (its description says 5).
const SEQUENTIAL_CLIENTS: usize = 5;

impl SqlxPattern {
    /// Every pattern, in the order of the matrix.
    pub const ALL: [SqlxPattern; 6] = [
        SqlxPattern::PoolDefaultCache,
        SqlxPattern::ConnectionCacheOff,
        SqlxPattern::SequentialConnects,
        SqlxPattern::UnnamedOutsideTransaction,
        SqlxPattern::UnnamedInsideTransaction,
        SqlxPattern::SimpleProtocol,
    ];

    /// How the pattern reads in code.
    pub fn description(self) -> &'static str {
        match self {
            SqlxPattern::PoolDefaultCache => "`PgPool`, default statement cache",
            SqlxPattern::ConnectionCacheOff => {
                "`statement_cache_capacity(0)`, concurrent `PgConnection`s"
            }
            SqlxPattern::SequentialConnects => {
                "`statement_cache_capacity(0)`, 5 `connect()`s one after another"
            }
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
    let cache_off = options.clone().statement_cache_capacity(0);
    let ends = match pattern {
        SqlxPattern::PoolDefaultCache => {
            let pool = PgPoolOptions::new()
                .max_connections(workload.clients as u32)
                .min_connections(workload.clients as u32)
                .connect_with(options.clone().statement_cache_capacity(100))
                .await
                .map_err(connect_error)?;
            let tasks = (0..workload.clients)
                .map(|c| {
                    let pool = pool.clone();
                    tokio::spawn(within(async move {
                        for i in 0..workload.rounds {
                            let (sql, k) = query(c, i);
                            let arg = i as i64;
                            let got = match sqlx::query_scalar::<_, i64>(audited(&sql))
                                .bind(arg)
                                .fetch_one(&pool)
                                .await
                            {
                                Ok(got) => got,
                                Err(e) => return ClientEnd::from(Err(e)),
                            };
                            if let Some(w) = check(&sql, arg, k, got) {
                                return ClientEnd::Wrong(w);
                            }
                        }
                        ClientEnd::Ok
                    }))
                })
                .collect();
            let ends = join(tasks).await;
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, pool.close()).await;
            ends
        }
        SqlxPattern::SequentialConnects => {
            let mut ends = Vec::new();
            for c in 0..SEQUENTIAL_CLIENTS {
                let conn = PgConnection::connect_with(&cache_off)
                    .await
                    .map_err(connect_error)?;
                ends.push(within(client(pattern, conn, c, TEXTS)).await);
            }
            ends
        }
        _ => {
            let mut conns = Vec::with_capacity(workload.clients);
            for _ in 0..workload.clients {
                conns.push(
                    PgConnection::connect_with(&cache_off)
                        .await
                        .map_err(connect_error)?,
                );
            }
            let tasks = conns
                .into_iter()
                .enumerate()
                .map(|(c, conn)| tokio::spawn(within(client(pattern, conn, c, workload.rounds))))
                .collect();
            join(tasks).await
        }
    };
    Ok(Outcome::from_clients(pattern.description(), ends))
}

// One client of a connection-per-client pattern; stops at its first problem.
async fn client(
    pattern: SqlxPattern,
    mut conn: PgConnection,
    c: usize,
    rounds: usize,
) -> ClientEnd {
    for i in 0..rounds {
        let (sql, k) = query(c, i);
        let arg = i as i64;
        let got = match pattern {
            SqlxPattern::ConnectionCacheOff | SqlxPattern::SequentialConnects => {
                sqlx::query_scalar::<_, i64>(audited(&sql))
                    .bind(arg)
                    .fetch_one(&mut conn)
                    .await
            }
            SqlxPattern::UnnamedOutsideTransaction => {
                sqlx::query_scalar::<_, i64>(audited(&sql))
                    .bind(arg)
                    .persistent(false)
                    .fetch_one(&mut conn)
                    .await
            }
            SqlxPattern::UnnamedInsideTransaction => {
                unnamed_in_transaction(&mut conn, &sql, arg).await
            }
            SqlxPattern::SimpleProtocol => {
                // A query without arguments goes out as a simple Query message
                // (`raw_sql` itself is not `Send` across spawn in sqlx 0.8).
                let literal = format!("select {arg}::int8 + {k}");
                conn.fetch_one(literal.as_str())
                    .await
                    .and_then(|row| row.try_get::<i64, _>(0))
            }
            SqlxPattern::PoolDefaultCache => unreachable!("runs on a pool"),
        };
        match got {
            Ok(got) => {
                if let Some(w) = check(&sql, arg, k, got) {
                    return ClientEnd::Wrong(w);
                }
            }
            Err(e) => return ClientEnd::from(Err(e)),
        }
    }
    let _ = conn.close().await;
    ClientEnd::Ok
}

async fn unnamed_in_transaction(
    conn: &mut PgConnection,
    sql: &str,
    arg: i64,
) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let inner: &mut PgConnection = &mut tx;
    let got = sqlx::query_scalar::<_, i64>(audited(sql))
        .bind(arg)
        .persistent(false)
        .fetch_one(inner)
        .await?;
    tx.commit().await?;
    Ok(got)
}

async fn join(tasks: Vec<tokio::task::JoinHandle<ClientEnd>>) -> Vec<ClientEnd> {
    let mut ends = Vec::with_capacity(tasks.len());
    for task in tasks {
        ends.push(task.await.unwrap_or_else(|e| {
            ClientEnd::Failed(super::ClientError {
                code: None,
                message: format!("client task failed: {e}"),
            })
        }));
    }
    ends
}
