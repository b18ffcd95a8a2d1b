//! Named prepared statements as Supavisor's `named_prepared_statements`
//! flag judges them: SQL `PREPARE` in a simple query, a 101st named
//! statement on one connection, a duplicate name, an unknown name. Each
//! probe has a known answer and reports how the connection ended: with the
//! flag on, Supavisor ends it with a FATAL error (`EPSSIMPLEQUERY`,
//! `EMAXPREPARED`, `EPREPAREDDUP`, `EPREPAREDNOTFOUND`); PostgreSQL and
//! PgBouncer answer an ordinary error and keep it. So `doctor` against a
//! real endpoint tells whether the flag is on there.

use std::fmt;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use super::wire_client::{bind, parse, query, sync, ServerError, WireClient};
use super::{ClientEnd, ClientError, Outcome, WrongAnswer};
use crate::connect::sqlx_compat::audited;
use crate::error::Result;
use crate::target::DbUrl;

/// Supavisor's limit of named statements per client connection.
pub const SUPAVISOR_STATEMENT_LIMIT: usize = 100;

/// A use of named prepared statements the flag judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PreparedProbe {
    /// SQL `PREPARE`, `EXECUTE` and `DEALLOCATE` in one transaction.
    SqlPrepareInTransaction,
    /// 101 distinct named statements on one connection (sqlx with a
    /// statement cache of 200), in one transaction.
    ManyNamedStatements,
    /// A Parse of a name the connection already prepared.
    DuplicateName,
    /// A Bind of a name the connection never prepared.
    UnknownName,
}

impl PreparedProbe {
    /// Every probe, in the order of the matrix.
    pub const ALL: [PreparedProbe; 4] = [
        PreparedProbe::SqlPrepareInTransaction,
        PreparedProbe::ManyNamedStatements,
        PreparedProbe::DuplicateName,
        PreparedProbe::UnknownName,
    ];

    /// How it reads in code.
    pub fn description(self) -> &'static str {
        match self {
            PreparedProbe::SqlPrepareInTransaction => {
                "SQL `PREPARE`/`EXECUTE`/`DEALLOCATE` in one transaction"
            }
            PreparedProbe::ManyNamedStatements => "101 named statements on one connection",
            PreparedProbe::DuplicateName => "Parse of a statement name already prepared",
            PreparedProbe::UnknownName => "Bind of a statement name never prepared",
        }
    }
}

impl fmt::Display for PreparedProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Runs `probe` against `url` (`options`: the same endpoint as sqlx
/// options). The failure's message ends with how the connection ended:
/// `[connection closed]` (sqlx's probes), `[FATAL, connection closed]` or
/// `[ERROR, connection kept]` (the probes of the crate's own client, which
/// read the severity as sent).
pub async fn run_prepared_probe(
    probe: PreparedProbe,
    url: &DbUrl,
    options: &PgConnectOptions,
    connect_timeout: Duration,
) -> Result<Outcome> {
    let name = probe.description();
    let end = match probe {
        PreparedProbe::SqlPrepareInTransaction => sql_prepare(options).await,
        PreparedProbe::ManyNamedStatements => many_statements(options).await,
        PreparedProbe::DuplicateName | PreparedProbe::UnknownName => {
            match WireClient::connect(url, connect_timeout).await {
                Ok(client) => names(probe, client).await,
                Err(e) => ClientEnd::Failed(ClientError {
                    code: None,
                    message: format!("the probe's client could not log in: {e}"),
                }),
            }
        }
    };
    Ok(Outcome::single(name, end))
}

/// A sqlx error, with how the connection ended (asked with a ping). No
/// severity: sqlx stops reading an ErrorResponse at its code and message,
/// and Supavisor sends the severity after them, so sqlx reads it as `LOG`.
async fn failed(conn: PgConnection, e: sqlx::Error) -> ClientEnd {
    let mut error = ClientError::of(&e);
    let mut conn = conn;
    let open = conn.ping().await.is_ok();
    error.message = format!("{} [connection {}]", error.message, kept(open));
    if open {
        let _ = conn.close().await;
    }
    ClientEnd::Failed(error)
}

fn kept(open: bool) -> &'static str {
    if open {
        "kept"
    } else {
        "closed"
    }
}

async fn sql_prepare(options: &PgConnectOptions) -> ClientEnd {
    let mut conn = match PgConnection::connect_with(options).await {
        Ok(c) => c,
        Err(e) => return ClientEnd::Failed(ClientError::of(&e)),
    };
    let steps = "begin; prepare pgbf_probe_prepare as select 41 + 1; \
                 execute pgbf_probe_prepare; deallocate pgbf_probe_prepare; commit";
    let got = match sqlx::raw_sql(audited(steps)).fetch_all(&mut conn).await {
        Ok(rows) => rows.first().and_then(|r| r.try_get::<i32, _>(0).ok()),
        Err(e) => return failed(conn, e).await,
    };
    let _ = conn.close().await;
    match got {
        Some(42) => ClientEnd::Ok,
        other => ClientEnd::Wrong(WrongAnswer {
            asked: "execute pgbf_probe_prepare (select 41 + 1)".into(),
            expected: "42".into(),
            got: format!("{other:?}"),
        }),
    }
}

async fn many_statements(options: &PgConnectOptions) -> ClientEnd {
    let options = options
        .clone()
        .statement_cache_capacity(2 * SUPAVISOR_STATEMENT_LIMIT);
    let mut conn = match PgConnection::connect_with(&options).await {
        Ok(c) => c,
        Err(e) => return ClientEnd::Failed(ClientError::of(&e)),
    };
    // One transaction: a pooler without tracking keeps one server
    // connection for it, so only the flag's limit can fail it.
    if let Err(e) = sqlx::raw_sql("begin").execute(&mut conn).await {
        return failed(conn, e).await;
    }
    for k in 0..=SUPAVISOR_STATEMENT_LIMIT as i64 {
        let sql = format!("select $1::int8 + {k}");
        let got = sqlx::query(audited(&sql))
            .bind(1_i64)
            .fetch_one(&mut conn)
            .await
            .and_then(|r| r.try_get::<i64, _>(0));
        match got {
            Ok(v) if v == k + 1 => {}
            Ok(v) => {
                let _ = conn.close().await;
                return ClientEnd::Wrong(super::check(&sql, 1, k, v).unwrap_or(WrongAnswer {
                    asked: sql,
                    expected: (k + 1).to_string(),
                    got: v.to_string(),
                }));
            }
            Err(e) => return failed(conn, e).await,
        }
    }
    let _ = sqlx::raw_sql("rollback").execute(&mut conn).await;
    let _ = conn.close().await;
    ClientEnd::Ok
}

/// A duplicate or unknown name, each in a round trip of its own.
async fn names(probe: PreparedProbe, mut client: WireClient) -> ClientEnd {
    let name = "pgbf_probe_stmt";
    // In a transaction: a pooler without tracking keeps one server
    // connection for it, so both Parses meet the same server; the rollback
    // at the end takes the statement away with it where it was prepared.
    let mut steps = vec![query("begin")];
    if probe == PreparedProbe::DuplicateName {
        steps.push([parse(name, "select 1"), sync()].concat());
        steps.push([parse(name, "select 1"), sync()].concat());
    } else {
        steps.push([bind("pgbf_probe_never_prepared"), sync()].concat());
    }
    for step in steps {
        let answer = match client.send(&step).await {
            Ok(()) => client.until_ready().await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(None) => {}
            Ok(Some(e)) => {
                let open = client.still_open().await;
                if open {
                    let _ = client.send(&query("rollback")).await;
                    let _ = client.until_ready().await;
                }
                client.terminate().await;
                return server_failed(e, open);
            }
            Err(e) => {
                return ClientEnd::Failed(ClientError {
                    code: None,
                    message: format!("the connection ended without an error: {e}"),
                })
            }
        }
    }
    let _ = client.send(&query("rollback")).await;
    let _ = client.until_ready().await;
    client.terminate().await;
    ClientEnd::Ok
}

/// An error the server (or the pooler) sent, and whether the connection
/// was still open after it. A FATAL error ends a connection at once: the
/// close that follows it is read, not waited for.
fn server_failed(e: ServerError, open: bool) -> ClientEnd {
    ClientEnd::Failed(ClientError {
        code: Some(e.code),
        message: format!("{} [{}, connection {}]", e.message, e.severity, kept(open)),
    })
}
