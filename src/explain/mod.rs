//! Failure explanations: when a test fails behind the pooler, what the
//! servers reported for that test, why it happens behind this profile, and
//! what to change, printed once at the failing test.
//!
//! Evidence comes from the crate's own stacks only: PostgreSQL writes
//! errors, warnings and lock waits to a JSON log (database, application name
//! and SQLSTATE per line: `contract::LOG_FILE`), read back
//! with `pg_read_file` over the direct endpoint; PgBouncer's refused logins
//! come from its container's log. On an external target (`TEST_DATABASE_URL`)
//! the crate cannot read server logs, and stays silent.
//!
//! Owns: [`Explanation`] and the gathering of a test's evidence (here), the
//! hazards in words that `doctor` shares (`hazard`), the explanations of
//! authorization failures (`42501`, row-level security) and the record of
//! the Data API roles a test acted as (`authorization`). May use the layers
//! below it: `docker` (PgBouncer's log), `connect`, `target`, `contract`,
//! `support`, `error`.

pub(crate) mod authorization;
pub mod hazard;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sqlx::{Connection, PgConnection, Row};

use crate::connect::quote::quote_literal;
use crate::connect::sqlx_compat::audited;
use crate::connect::Endpoint;
use crate::contract;
use crate::error::{sql_error, Error, Result};
use crate::explain::hazard::{Hazard, Pooler};
use crate::target::DbUrl;

/// Where a test's evidence lives: its database on a stack of the crate's.
#[derive(Clone, Debug)]
pub(crate) struct EvidenceSource {
    /// The test's database on the direct endpoint (superuser).
    pub direct: DbUrl,
    /// The test's database name: the key of its PostgreSQL log lines.
    pub database: String,
    /// The stack's id, for PgBouncer's log.
    pub stack_id: String,
    /// The pooler the test ran behind.
    pub pooler: Pooler,
    /// When the test's database was made: PgBouncer's log is read from then.
    pub since: SystemTime,
}

/// One hazard seen in a test's evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Which hazard.
    pub hazard: Hazard,
    /// How many times the servers reported it.
    pub count: usize,
    /// The first report, as the server worded it (e.g. `42P05 prepared
    /// statement "sqlx_s_1" already exists`).
    pub example: String,
}

/// What the servers reported for one test, explained.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The test.
    pub test: String,
    /// The pooler it ran behind.
    pub pooler: Pooler,
    /// Each hazard seen, most frequent first.
    pub seen: Vec<Seen>,
    /// Set when PgBouncer refusals are included: PgBouncer logs them before
    /// it knows the database, so they may come from a test running at the
    /// same time.
    pub shared_evidence: bool,
}

impl Explanation {
    /// Whether nothing pooler-related was reported.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `hazard` was seen.
    pub fn has(&self, hazard: Hazard) -> bool {
        self.seen.iter().any(|s| s.hazard == hazard)
    }
}

impl fmt::Display for Explanation {
    /// The block printed at a failing test: what, why, what to change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pgbouncer-fixtures: what the servers reported for `{}` ({}):",
            self.test, self.pooler
        )?;
        for s in &self.seen {
            let times = if s.count == 1 {
                "once".to_string()
            } else {
                format!("{} times", s.count)
            };
            writeln!(f, "  - {}: {} ({times})", s.hazard.title(), s.example)?;
            writeln!(f, "    why: {}", s.hazard.why(&self.pooler))?;
            writeln!(f, "    what to change:")?;
            for remedy in s.hazard.remedies() {
                writeln!(f, "      * {remedy}")?;
            }
        }
        if self.shared_evidence {
            writeln!(
                f,
                "  (PgBouncer logs refused logins before it knows their database: a refusal may \
                 come from a test that ran at the same time)"
            )?;
        }
        self.write_not_reproduced(f)
    }
}

impl Explanation {
    /// What the profile does not reproduce of its endpoint: a test that
    /// relies on one of these (a `SET TIME ZONE` that persists, a startup
    /// `search_path`) can fail here and pass there, or the reverse.
    pub fn not_reproduced(&self) -> Vec<&'static str> {
        match &self.pooler {
            Pooler::Profile(p) => p
                .residue()
                .iter()
                .copied()
                .filter(|r| r.starts_with("not reproduced:"))
                .collect(),
            Pooler::Other(_) => Vec::new(),
        }
    }

    fn write_not_reproduced(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.not_reproduced();
        if lines.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "  behind {}, a test that relies on one of these behaves otherwise than there:",
            self.pooler
        )?;
        for line in lines {
            writeln!(f, "      * {line}")?;
        }
        Ok(())
    }
}

/// A line of PostgreSQL's JSON log that concerns the test.
struct LogEvent {
    severity: String,
    code: String,
    message: String,
    statement: Option<String>,
}

/// Gathers and explains the evidence of `test`.
pub(crate) async fn explain(test: &str, source: &EvidenceSource) -> Result<Explanation> {
    let mut conn = connect_for_evidence(source).await?;
    let events = postgres_events(&mut conn, &source.database).await?;
    let mut seen: BTreeMap<Hazard, Seen> = BTreeMap::new();
    let mut note = |hazard: Hazard, example: String| {
        seen.entry(hazard)
            .and_modify(|s| s.count += 1)
            .or_insert(Seen {
                hazard,
                count: 1,
                example,
            });
    };
    for e in &events {
        let words = format!("{} {}", e.code, e.message);
        if let Some(h) = Hazard::of_error(&e.code, &e.message, e.statement.as_deref()) {
            note(h, words);
        } else if e.severity == "WARNING" && e.message.starts_with("you don't own a lock") {
            let what = e.statement.as_deref().unwrap_or("pg_advisory_unlock");
            note(
                Hazard::AdvisoryUnlockMissed,
                format!("WARNING {} (`{}`)", e.message, what.trim()),
            );
        } else if e
            .message
            .contains("still waiting for ExclusiveLock on advisory lock")
        {
            note(Hazard::AdvisoryLockHeld, format!("LOG {}", e.message));
        } else if e.code == "42P01" {
            if let Some(table) = relation_name(&e.message) {
                if temp_table_elsewhere(&mut conn, &table).await {
                    note(Hazard::TempTableLost, words);
                }
            }
        }
    }
    let _ = conn.close().await;
    let refusals = pgbouncer_refusals(source).await;
    let shared_evidence = !refusals.is_empty();
    for r in refusals {
        note(Hazard::StartupParameterRefused, format!("08P01 {r}"));
    }
    let mut seen: Vec<Seen> = seen.into_values().collect();
    seen.sort_by(|a, b| b.count.cmp(&a.count).then(a.hazard.cmp(&b.hazard)));
    Ok(Explanation {
        test: test.to_string(),
        pooler: source.pooler.clone(),
        seen,
        shared_evidence,
    })
}

/// At most this much of the log's end is read (a long run's log grows).
const LOG_TAIL: i64 = 8 * 1024 * 1024;

/// A direct connection to the test's server, to read its log and catalogs.
pub(crate) async fn connect_for_evidence(source: &EvidenceSource) -> Result<PgConnection> {
    let options = crate::connect::options(&source.direct, "pgbouncer-fixtures explain");
    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&options))
        .await
        .map_err(|_| Error::Timeout {
            what: "connecting to read the server log".into(),
            after: Duration::from_secs(5),
            hint: "the stack is overloaded or gone".into(),
        })?
        .map_err(|e| crate::connect::connect_error(Endpoint::Direct, &source.direct, e))
}

/// How long the log collector may take to write what the servers reported
/// before the gathering began.
const LOG_SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// The end of PostgreSQL's JSON log (at most [`LOG_TAIL`] bytes), holding
/// every line the servers wrote before this call.
///
/// Why a barrier: backends hand their lines to the log collector, which
/// writes them asynchronously; a refusal the test has already seen may not
/// be in the file yet. A backend writes its log line before it answers the
/// client, and the collector writes its pipe in order, so once a marker
/// raised here is in the file, so is everything reported before it. The
/// marker's own lines are left out.
pub(crate) async fn log_settled(conn: &mut PgConnection) -> Result<String> {
    static MARKERS: AtomicU64 = AtomicU64::new(0);
    let marker = format!(
        "pgbouncer-fixtures log barrier {}-{}",
        std::process::id(),
        MARKERS.fetch_add(1, Ordering::Relaxed)
    );
    // Logged (log_min_messages = warning), not sent to this client.
    let raise = format!(
        "do $$ begin perform set_config('client_min_messages', 'error', true); \
         raise warning {}; end $$",
        quote_literal(&marker)
    );
    sqlx::raw_sql(audited(&raise))
        .execute(&mut *conn)
        .await
        .map_err(sql_error("marking PostgreSQL's log"))?;
    let started = Instant::now();
    loop {
        let text = log_tail(conn).await?;
        if text.contains(&marker) || started.elapsed() > LOG_SETTLE_LIMIT {
            return Ok(text
                .lines()
                .filter(|line| !line.contains(&marker))
                .map(|line| format!("{line}\n"))
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The end of PostgreSQL's JSON log (at most [`LOG_TAIL`] bytes), empty if
/// there is none yet.
async fn log_tail(conn: &mut PgConnection) -> Result<String> {
    let file = quote_literal(contract::LOG_FILE);
    let sql = format!(
        "select pg_read_file({file}, greatest(0, size - {LOG_TAIL}), {LOG_TAIL}, true) \
         from pg_stat_file({file}, true)"
    );
    let rows = sqlx::raw_sql(audited(&sql))
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_error("reading PostgreSQL's log"))?;
    Ok(rows
        .first()
        .and_then(|row| row.try_get::<Option<String>, _>(0).ok().flatten())
        .unwrap_or_default())
}

/// A text field of one JSON log line.
pub(crate) fn log_field(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(str::to_string)
}

async fn postgres_events(conn: &mut PgConnection, database: &str) -> Result<Vec<LogEvent>> {
    let text = log_settled(conn).await?;
    let field = log_field;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| field(v, "dbname").as_deref() == Some(database))
        .filter(|v| field(v, "backend_type").as_deref() == Some("client backend"))
        .map(|v| LogEvent {
            severity: field(&v, "error_severity").unwrap_or_default(),
            code: field(&v, "state_code").unwrap_or_default(),
            message: field(&v, "message").unwrap_or_default(),
            statement: field(&v, "statement"),
        })
        .collect())
}

/// `relation "x" does not exist` -> `x`.
fn relation_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("relation \"")?;
    Some(rest[..rest.find('"')?].to_string())
}

/// Whether a temporary table of that name exists in another server session
/// of the test's database: the table was made, in a session the pooler
/// gave to someone else.
async fn temp_table_elsewhere(conn: &mut PgConnection, table: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where n.nspname like 'pg_temp_%' and c.relname = $1",
    )
    .bind(table)
    .persistent(false)
    .fetch_one(conn)
    .await
    .is_ok_and(|n| n > 0)
}

/// PgBouncer's refused logins since the test's database was made.
async fn pgbouncer_refusals(source: &EvidenceSource) -> Vec<String> {
    if matches!(source.pooler, Pooler::Profile(p) if p.bypasses_pooler()) {
        return Vec::new();
    }
    let since = source
        .since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let lines = match crate::docker::connect().await {
        Ok(docker) => {
            crate::docker::containers::pgbouncer_log_since(&docker, &source.stack_id, since).await
        }
        Err(_) => Vec::new(),
    };
    lines
        .iter()
        .filter_map(|l| {
            l.split_once("pooler error: ")
                .map(|(_, m)| m.trim().to_string())
        })
        .filter(|m| m.starts_with("unsupported startup parameter"))
        .collect()
}
