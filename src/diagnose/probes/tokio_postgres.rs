//! tokio-postgres's ways of running a parameterised query (feature
//! `tokio-postgres`), as workloads whose every answer is known, in the shape
//! of [`super::statements`]: client `c` runs `select $1::int8 + K` with a
//! constant `K` of its own per SQL text (7 texts), so a statement of another
//! client cannot produce the expected value: a wrong answer is seen, not missed.
//!
//! What tokio-postgres 0.7 sends, per style (its `prepare.rs`, `query.rs`):
//!
//! - `Client::query` / `execute` with a `&str`: Parse + Describe + Sync of a
//!   **named** statement (`s0`, `s1`, ... from one counter per *process*),
//!   then Bind + Execute + Sync in a second round trip, then Close + Sync.
//!   Behind a transaction pooler the round trips can reach different server
//!   connections (`26000 prepared statement "sN" does not exist`). Clients of
//!   one process never share a name; two processes (app replicas) both count
//!   from `s0`, which can add `42P05` and answers from the other process's
//!   statement: one process, as this probe, shows the first failure only.
//! - `query_typed` / `execute_typed`: the **unnamed** statement, Parse + Bind
//!   + Execute + Sync in one round trip: nothing survives the transaction.
//! - `Client::prepare` once, the `Statement` reused in later transactions: it
//!   exists on the server connection that prepared it only.
//! - `simple_query`: the simple protocol, no prepared statement at all.

use std::fmt;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, SimpleQueryMessage, Statement};

use super::{
    check, query, within, ClientEnd, ClientError, Outcome, Workload, WrongAnswer, CLIENT_TIMEOUT,
    TEXTS,
};
use crate::connect::tokio_pg::{connect, describe, ConnectionTasks};
use crate::connect::Endpoint;
use crate::error::Result;

/// One way applications run a parameterised query through tokio-postgres.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokioPgPattern {
    /// `client.query(sql, &[&x])` with a SQL string: a named statement
    /// (`s0`, `s1`, ...) prepared, executed and closed per query.
    Query,
    /// `client.query_typed(sql, &[(&x, Type::INT8)])`: the unnamed
    /// statement, in one round trip.
    QueryTyped,
    /// `let st = client.prepare(sql)` once per SQL text, then
    /// `tx.query(&st, ..)` inside a new `transaction()` each time.
    PreparedAcrossTransactions,
    /// `client.simple_query(sql)` with the values in the SQL text.
    SimpleQuery,
}

impl TokioPgPattern {
    /// Every pattern, in the order of the matrix.
    pub const ALL: [TokioPgPattern; 4] = [
        TokioPgPattern::Query,
        TokioPgPattern::QueryTyped,
        TokioPgPattern::PreparedAcrossTransactions,
        TokioPgPattern::SimpleQuery,
    ];

    /// How the pattern reads in code.
    pub fn description(self) -> &'static str {
        match self {
            TokioPgPattern::Query => "tokio-postgres `query` with parameters",
            TokioPgPattern::QueryTyped => "tokio-postgres `query_typed`",
            TokioPgPattern::PreparedAcrossTransactions => {
                "tokio-postgres `prepare`d `Statement` reused across transactions"
            }
            TokioPgPattern::SimpleQuery => "tokio-postgres `simple_query`",
        }
    }
}

impl fmt::Display for TokioPgPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl ClientError {
    /// A tokio-postgres error: the server's SQLSTATE and message when it
    /// sent one, else the driver's words.
    pub(crate) fn of_tokio_postgres(e: &tokio_postgres::Error) -> ClientError {
        match e.as_db_error() {
            Some(db) => ClientError {
                code: Some(db.code().code().to_string()),
                message: db.message().to_string(),
            },
            None => ClientError {
                code: e.code().map(|c| c.code().to_string()),
                message: crate::target::env::redact(&e.to_string()),
            },
        }
    }
}

/// Runs `pattern` with `workload` against the server `config` points at
/// (as `TestDb::tokio_postgres_config()` gives it): `workload.clients`
/// connections, each running `workload.rounds` queries at the same time as
/// the others, each within the probes' per-client time limit.
pub async fn run_tokio_pg_pattern(
    pattern: TokioPgPattern,
    config: &Config,
    workload: Workload,
) -> Result<Outcome> {
    let target = describe(config);
    let tasks = ConnectionTasks::default();
    let mut clients = Vec::with_capacity(workload.clients);
    for _ in 0..workload.clients {
        let (client, connection) =
            connect(Endpoint::Server, &target, config, CLIENT_TIMEOUT).await?;
        tasks.spawn(connection);
        clients.push(client);
    }
    let runs: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| tokio::spawn(within(run_client(pattern, client, c, workload.rounds))))
        .collect();
    let mut ends = Vec::with_capacity(runs.len());
    for run in runs {
        ends.push(run.await.unwrap_or_else(|e| {
            ClientEnd::Failed(ClientError {
                code: None,
                message: format!("client task failed: {e}"),
            })
        }));
    }
    // The clients are dropped: each connection says Terminate and ends.
    tasks.end().await;
    Ok(Outcome::from_clients(pattern.description(), ends))
}

// One client; stops at its first problem.
async fn run_client(
    pattern: TokioPgPattern,
    mut client: Client,
    c: usize,
    rounds: usize,
) -> ClientEnd {
    let mut prepared: Vec<Statement> = Vec::new();
    if pattern == TokioPgPattern::PreparedAcrossTransactions {
        for i in 0..TEXTS {
            match client.prepare(&query(c, i).0).await {
                Ok(statement) => prepared.push(statement),
                Err(e) => return ClientEnd::Failed(ClientError::of_tokio_postgres(&e)),
            }
        }
    }
    for i in 0..rounds {
        let (sql, k) = query(c, i);
        let arg = i as i64;
        let got: Result<Result<i64, String>, tokio_postgres::Error> = match pattern {
            TokioPgPattern::Query => client
                .query_one(sql.as_str(), &[&arg])
                .await
                .and_then(|row| row.try_get::<_, i64>(0))
                .map(Ok),
            TokioPgPattern::QueryTyped => client
                .query_typed_one(&sql, &[(&arg, Type::INT8)])
                .await
                .and_then(|row| row.try_get::<_, i64>(0))
                .map(Ok),
            TokioPgPattern::PreparedAcrossTransactions => {
                in_transaction(&mut client, &prepared[i % TEXTS], arg)
                    .await
                    .map(Ok)
            }
            TokioPgPattern::SimpleQuery => {
                simple(&client, &format!("select {arg}::int8 + {k}")).await
            }
        };
        match got {
            Ok(Ok(got)) => {
                if let Some(w) = check(&sql, arg, k, got) {
                    return ClientEnd::Wrong(w);
                }
            }
            Ok(Err(got)) => {
                return ClientEnd::Wrong(WrongAnswer {
                    asked: format!("{sql} with $1 = {arg}"),
                    expected: (arg + k).to_string(),
                    got,
                })
            }
            Err(e) => return ClientEnd::Failed(ClientError::of_tokio_postgres(&e)),
        }
    }
    ClientEnd::Ok
}

async fn in_transaction(
    client: &mut Client,
    statement: &Statement,
    arg: i64,
) -> Result<i64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let got = tx.query_one(statement, &[&arg]).await?.try_get(0)?;
    tx.commit().await?;
    Ok(got)
}

/// The one value a simple query returned; `Err` holds what came back
/// instead of a single int8 (a wrong answer, not an error).
async fn simple(client: &Client, sql: &str) -> Result<Result<i64, String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let values: Vec<Option<String>> = messages
        .iter()
        .filter_map(|m| match m {
            // A row without a first column is a wrong answer too, not a panic.
            SimpleQueryMessage::Row(row) => Some(row.try_get(0).ok().flatten().map(str::to_string)),
            _ => None,
        })
        .collect();
    Ok(match values.as_slice() {
        [Some(v)] => v.parse::<i64>().map_err(|_| v.clone()),
        other => Err(format!("{other:?}")),
    })
}
