//! Probes: the client behaviours that differ between poolers, each run for
//! real with **known answers that are checked**. A probe's [`Outcome`]
//! counts errors and, separately, wrong answers that came with no error
//! (another client's prepared statement, session state silently gone): the
//! worst verdict there is. The matrix, `doctor` and the
//! fidelity tests all run these.
//!
//! - [`statements`]: sqlx's ways of running a parameterised query, as a
//!   concurrent workload ([`SqlxPattern`], [`run_pattern`]);
//! - [`session`]: session state across transactions, and sqlx's migrator lock;
//! - [`prepared`]: named prepared statements as Supavisor's
//!   `named_prepared_statements` flag judges them (a client of the crate's own);
//! - [`startup`]: startup parameters (top-level and in `options`) and TLS;
//! - [`pooler`]: where Supavisor, PgBouncer and PostgreSQL differ in what a
//!   client sees (a tracked `SET`, `application_name`, startup `TimeZone`
//!   and custom settings, the session-mode limit);
//! - `tokio_postgres` (feature `tokio-postgres`): tokio-postgres's ways of
//!   running a parameterised query, as the same concurrent workload.

use std::fmt;

pub mod pooler;
pub mod prepared;
pub mod session;
pub mod startup;
pub mod statements;
#[cfg(feature = "tokio-postgres")]
pub mod tokio_postgres;
mod wire_client;

pub use statements::{run_pattern, SqlxPattern};

/// How hard to push: concurrent clients and queries per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Concurrent clients (connections).
    pub clients: usize,
    /// Parameterised queries per client, over 7 distinct SQL texts.
    pub rounds: usize,
}

impl Default for Workload {
    /// 15 clients x 200 queries: as many clients as Supabase's default pool
    /// (15) has server connections, so that the session pooler, which
    /// refuses client 16, runs every client.
    fn default() -> Self {
        Workload {
            clients: 15,
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

impl ClientError {
    pub(crate) fn of(e: &sqlx::Error) -> ClientError {
        match e.as_database_error() {
            Some(db) => ClientError {
                code: db.code().map(|c| c.to_string()),
                message: db.message().to_string(),
            },
            None => ClientError {
                code: None,
                message: crate::target::env::redact(&e.to_string()),
            },
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code} {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A result that differed from the known answer, with no error raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongAnswer {
    /// What was asked.
    pub asked: String,
    /// The known answer.
    pub expected: String,
    /// What came back.
    pub got: String,
}

impl fmt::Display for WrongAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` answered {} instead of {}",
            self.asked, self.got, self.expected
        )
    }
}

/// How one client's run ended: the first thing that went wrong, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// Every answer was right.
    Ok,
    /// An error was raised.
    Failed(ClientError),
    /// A wrong answer came back without an error.
    Wrong(WrongAnswer),
}

impl From<Result<(), sqlx::Error>> for ClientEnd {
    fn from(r: Result<(), sqlx::Error>) -> ClientEnd {
        match r {
            Ok(()) => ClientEnd::Ok,
            Err(e) => ClientEnd::Failed(ClientError::of(&e)),
        }
    }
}

/// Clients A and B through `pooled`: the probes where B takes the server
/// connection A just released.
pub(crate) async fn clients_a_and_b(
    pooled: &sqlx::postgres::PgConnectOptions,
) -> crate::error::Result<(sqlx::PgConnection, sqlx::PgConnection)> {
    use sqlx::Connection;
    let a = sqlx::PgConnection::connect_with(pooled)
        .await
        .map_err(crate::error::sql_error("connecting client A"))?;
    let b = sqlx::PgConnection::connect_with(pooled)
        .await
        .map_err(crate::error::sql_error("connecting client B"))?;
    Ok((a, b))
}

/// Distinct SQL texts per client in the statement workloads.
pub(crate) const TEXTS: usize = 7;

/// Query `i` of client `c` in the statement workloads: its SQL text and the
/// constant it adds. Each client has constants of its own per text, so
/// another client's statement of the same name cannot give the right answer.
pub(crate) fn query(client: usize, i: usize) -> (String, i64) {
    let k = (client * 100 + i % TEXTS) as i64;
    (format!("select $1::int8 + {k}"), k)
}

/// `None` when `got` is the known answer of `sql` with `$1 = arg`.
pub(crate) fn check(sql: &str, arg: i64, k: i64, got: i64) -> Option<WrongAnswer> {
    (got != arg + k).then(|| WrongAnswer {
        asked: format!("{sql} with $1 = {arg}"),
        expected: (arg + k).to_string(),
        got: got.to_string(),
    })
}

/// How long one probe client may wait for its answers: a pooler that loses
/// a reply (it happens when a client's messages are split across server
/// connections) would otherwise hang the probe forever.
pub(crate) const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs one client with [`CLIENT_TIMEOUT`]; a hang is a failure in itself.
pub(crate) async fn within(client: impl std::future::Future<Output = ClientEnd>) -> ClientEnd {
    tokio::time::timeout(CLIENT_TIMEOUT, client)
        .await
        .unwrap_or_else(|_| hung())
}

/// The end of a client that waited [`CLIENT_TIMEOUT`] in vain.
pub(crate) fn hung() -> ClientEnd {
    ClientEnd::Failed(ClientError {
        code: None,
        message: format!(
            "no answer within {} s: the pooler lost a reply",
            CLIENT_TIMEOUT.as_secs()
        ),
    })
}

/// What a probe did: per client, the first error or wrong answer.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What ran, as it reads in code.
    pub probe: String,
    /// How many clients ran.
    pub clients: usize,
    /// The first error of each client that failed.
    pub failures: Vec<ClientError>,
    /// The first wrong answer of each client that got one with no error.
    pub wrong: Vec<WrongAnswer>,
    /// What else is worth saying about a passing run (e.g. "accepted, dropped").
    pub note: Option<String>,
}

impl Outcome {
    /// An outcome from each client's end.
    pub fn from_clients(probe: impl Into<String>, ends: Vec<ClientEnd>) -> Outcome {
        let mut outcome = Outcome {
            probe: probe.into(),
            clients: ends.len(),
            failures: Vec::new(),
            wrong: Vec::new(),
            note: None,
        };
        for end in ends {
            match end {
                ClientEnd::Ok => {}
                ClientEnd::Failed(e) => outcome.failures.push(e),
                ClientEnd::Wrong(w) => outcome.wrong.push(w),
            }
        }
        outcome
    }

    /// One client's outcome.
    pub fn single(probe: impl Into<String>, end: ClientEnd) -> Outcome {
        Outcome::from_clients(probe, vec![end])
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Outcome {
        self.note = Some(note.into());
        self
    }

    /// Whether every client got every answer right without an error.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.wrong.is_empty()
    }

    /// Whether some client got a wrong answer with no error.
    pub fn has_wrong_answers(&self) -> bool {
        !self.wrong.is_empty()
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

    /// `16/16 ok`, `15/16 failed (42P05)`, or, worst,
    /// `wrong results: 7/16 clients, no error raised; 9/16 failed (42P05)`.
    pub fn summary(&self) -> String {
        if self.passed() {
            return match &self.note {
                Some(note) => format!("{n}/{n} ok, {note}", n = self.clients),
                None => format!("{n}/{n} ok", n = self.clients),
            };
        }
        let mut parts = Vec::new();
        if !self.wrong.is_empty() {
            parts.push(format!(
                "wrong results: {}/{} clients, no error raised",
                self.wrong.len(),
                self.clients
            ));
        }
        if !self.failures.is_empty() {
            let codes = self.codes();
            let codes = if codes.is_empty() {
                "no SQLSTATE".to_string()
            } else {
                codes.join(", ")
            };
            parts.push(format!(
                "{}/{} failed ({codes})",
                self.failures.len(),
                self.clients
            ));
        }
        parts.join("; ")
    }

    /// The first error or wrong answer, in words (empty when passed).
    pub fn first_problem(&self) -> String {
        match (self.wrong.first(), self.failures.first()) {
            (Some(w), _) => w.to_string(),
            (None, Some(f)) => f.to_string(),
            (None, None) => String::new(),
        }
    }
}
