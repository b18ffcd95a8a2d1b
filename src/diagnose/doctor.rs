//! `doctor`: probes any PostgreSQL URL for the behaviours that break sqlx
//! behind poolers and says, item by item, what to change. It knows nothing
//! about Docker; it is read-only apart from session settings of its own.

use std::fmt;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection, PgConnection, Row};

use crate::connect::{open, Endpoint};
use crate::diagnose::probes::{run_pattern, Outcome, SqlxPattern, Workload};
use crate::explain::hazard::Hazard;
use crate::target::DbUrl;

/// How an item came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change.
    Ok,
    /// Worth knowing; not a failure.
    Info,
    /// sqlx code will fail here unless it follows the remedy.
    Hazard,
    /// Queries returned wrong results with no error: the worst case.
    WrongResults,
    /// The probe could not run (e.g. no connection).
    Error,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Info => "info",
            Verdict::Hazard => "HAZARD",
            Verdict::WrongResults => "WRONG",
            Verdict::Error => "ERROR",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of the report.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What was probed.
    pub item: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// What was observed.
    pub detail: String,
    /// What to change, when something should change.
    pub remedy: Option<String>,
}

/// Pool behaviour inferred from a client's two transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolBehaviour {
    /// Session state and backend survive between transactions: PostgreSQL
    /// itself or a session pooler.
    Session,
    /// A transaction pooler: the client's next transaction may run on another
    /// backend, without its session state.
    Transaction,
}

/// Everything `doctor` found about one URL.
#[derive(Clone, Debug)]
pub struct Report {
    /// The URL probed, password redacted.
    pub target: String,
    /// The pool behaviour, when it could be inferred.
    pub pool_behaviour: Option<PoolBehaviour>,
    /// The items, in order.
    pub findings: Vec<Finding>,
    /// How long the probes took.
    pub elapsed: Duration,
}

impl Report {
    /// Whether any item is a hazard or could not run.
    pub fn has_hazard(&self) -> bool {
        self.findings.iter().any(|f| {
            matches!(
                f.verdict,
                Verdict::Hazard | Verdict::WrongResults | Verdict::Error
            )
        })
    }

    /// The finding for `item`, if probed.
    pub fn finding(&self, item: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.item == item)
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = format!("doctor: {}\n", self.target);
        for f in &self.findings {
            out.push_str(&format!(
                "  [{:^6}] {}: {}\n",
                f.verdict.as_str(),
                f.item,
                f.detail
            ));
            if let Some(remedy) = &f.remedy {
                out.push_str(&format!("           -> {remedy}\n"));
            }
        }
        let hazards = self
            .findings
            .iter()
            .filter(|f| matches!(f.verdict, Verdict::Hazard | Verdict::WrongResults))
            .count();
        out.push_str(&format!(
            "  {} in {:.1} s\n",
            match hazards {
                0 if !self.has_hazard() => "no hazard".to_string(),
                0 => "probes failed".to_string(),
                1 => "1 hazard".to_string(),
                n => format!("{n} hazards"),
            },
            self.elapsed.as_secs_f64()
        ));
        out
    }

    /// The report for machines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "pool_behaviour": self.pool_behaviour.map(|b| match b {
                PoolBehaviour::Session => "session",
                PoolBehaviour::Transaction => "transaction",
            }),
            "hazard": self.has_hazard(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "item": f.item,
                "verdict": f.verdict.as_str().to_ascii_lowercase(),
                "detail": f.detail,
                "remedy": f.remedy,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Item names, stable for scripts and tests.
pub mod items {
    /// Reachable and authenticated.
    pub const CONNECTION: &str = "connection";
    /// Server version.
    pub const SERVER: &str = "server version";
    /// Pooler in front and its mode.
    pub const POOL_MODE: &str = "pool mode";
    /// sqlx's default statement cache under concurrency.
    pub const DEFAULT_CACHE: &str = "named statements, default cache";
    /// `statement_cache_capacity(0)` under concurrency.
    pub const CACHE_OFF: &str = "named statements, statement_cache_capacity(0)";
    /// `.persistent(false)` outside a transaction.
    pub const UNNAMED: &str = "unnamed statements outside a transaction";
    /// sqlx's default startup parameters.
    pub const STARTUP_DEFAULTS: &str = "startup parameters, sqlx defaults";
    /// Server settings in the startup `options`.
    pub const STARTUP_OPTIONS: &str = "startup parameters, options=-c jit=off";
    /// TLS.
    pub const TLS: &str = "TLS";
    /// tokio-postgres `query` with parameters (feature `tokio-postgres`).
    #[cfg(feature = "tokio-postgres")]
    pub const TOKIO_PG_QUERY: &str = "tokio-postgres query with parameters";
    /// tokio-postgres `query_typed` (feature `tokio-postgres`).
    #[cfg(feature = "tokio-postgres")]
    pub const TOKIO_PG_QUERY_TYPED: &str = "tokio-postgres query_typed";
    /// tokio-postgres `prepare`d `Statement` reused across transactions
    /// (feature `tokio-postgres`).
    #[cfg(feature = "tokio-postgres")]
    pub const TOKIO_PG_PREPARED: &str = "tokio-postgres prepared Statement across transactions";
    /// tokio-postgres `simple_query` (feature `tokio-postgres`).
    #[cfg(feature = "tokio-postgres")]
    pub const TOKIO_PG_SIMPLE_QUERY: &str = "tokio-postgres simple_query";
}

/// Probes `url` and reports. Never fails: what cannot be probed is a finding.
pub async fn diagnose(url: &DbUrl, workload: Workload, connect_timeout: Duration) -> Report {
    let started = Instant::now();
    let mut findings = Vec::new();
    // The factory's options: no extra_float_digits, statement cache off.
    let base =
        crate::connect::options(url, "pgbouncer-fixtures doctor").statement_cache_capacity(0);
    let connect = |options: PgConnectOptions| async move {
        open(Endpoint::Server, url, &options, connect_timeout).await
    };

    let mut first = match connect(base.clone()).await {
        Ok(c) => {
            findings.push(Finding {
                item: items::CONNECTION,
                verdict: Verdict::Ok,
                detail: format!("reached {} and authenticated", url.host_port()),
                remedy: None,
            });
            c
        }
        Err(e) => {
            findings.push(Finding {
                item: items::CONNECTION,
                verdict: Verdict::Error,
                detail: e.to_string(),
                remedy: None,
            });
            return Report {
                target: url.redacted(),
                pool_behaviour: None,
                findings,
                elapsed: started.elapsed(),
            };
        }
    };

    match sqlx::raw_sql("show server_version")
        .fetch_one(&mut first)
        .await
    {
        Ok(row) => findings.push(Finding {
            item: items::SERVER,
            verdict: Verdict::Info,
            detail: format!("PostgreSQL {}", row.get::<String, _>(0)),
            remedy: None,
        }),
        Err(e) => findings.push(Finding {
            item: items::SERVER,
            verdict: Verdict::Error,
            detail: e.to_string(),
            remedy: None,
        }),
    }

    let pool_behaviour = match pool_behaviour(&mut first, &base, url, connect_timeout).await {
        Ok(b) => {
            findings.push(match b {
                PoolBehaviour::Transaction => Finding {
                    item: items::POOL_MODE,
                    verdict: Verdict::Info,
                    detail: "transaction pooling: the next transaction ran on another backend, without the session's SET".into(),
                    remedy: Some(Hazard::SessionStateLost.remedy_line()),
                },
                PoolBehaviour::Session => Finding {
                    item: items::POOL_MODE,
                    verdict: Verdict::Ok,
                    detail: "session semantics: PostgreSQL itself or a session pooler (backend and SET kept across transactions)".into(),
                    remedy: None,
                },
            });
            Some(b)
        }
        Err(e) => {
            findings.push(Finding {
                item: items::POOL_MODE,
                verdict: Verdict::Error,
                detail: e,
                remedy: None,
            });
            None
        }
    };
    let _ = first.close().await;

    let cache_off = run_pattern(SqlxPattern::ConnectionCacheOff, &base, workload).await;
    let default_cache = run_pattern(SqlxPattern::PoolDefaultCache, &base, workload).await;
    findings.push(statement_finding(items::DEFAULT_CACHE, default_cache, true));
    findings.push(statement_finding(items::CACHE_OFF, cache_off, false));
    // The unnamed race is rarer than the named one: give it three times the rounds.
    let longer = Workload {
        rounds: workload.rounds * 3,
        ..workload
    };
    let unnamed = run_pattern(SqlxPattern::UnnamedOutsideTransaction, &base, longer).await;
    findings.push(unnamed_finding(unnamed, pool_behaviour));
    #[cfg(feature = "tokio-postgres")]
    {
        // Named statements are unsafe here when the pooler moves clients
        // between server connections and the default-cache probe broke.
        let named_unsafe = pool_behaviour == Some(PoolBehaviour::Transaction)
            && findings
                .iter()
                .any(|f| f.item == items::DEFAULT_CACHE && f.verdict != Verdict::Ok);
        findings.extend(
            tokio_postgres_findings(url, &base, workload, connect_timeout, named_unsafe).await,
        );
    }

    // sqlx's defaults send extra_float_digits=2 at startup.
    let defaults = url
        .connect_options()
        .application_name("pgbouncer-fixtures doctor");
    findings.push(match connect(defaults).await {
        Ok(c) => {
            let _ = c.close().await;
            Finding { item: items::STARTUP_DEFAULTS, verdict: Verdict::Ok, detail: "accepted (extra_float_digits)".into(), remedy: None }
        }
        Err(e) => Finding {
            item: items::STARTUP_DEFAULTS,
            verdict: Verdict::Hazard,
            detail: format!("refused: {}", server_message(&e)),
            remedy: Some(
                "PgConnectOptions::extra_float_digits(None) on your options, or ignore_startup_parameters = \
                 extra_float_digits in PgBouncer"
                    .into(),
            ),
        },
    });
    findings.push(
        match connect(base.clone().options([("jit", "off")])).await {
            Ok(c) => {
                let _ = c.close().await;
                Finding {
                    item: items::STARTUP_OPTIONS,
                    verdict: Verdict::Ok,
                    detail: "accepted".into(),
                    remedy: None,
                }
            }
            Err(e) => Finding {
                item: items::STARTUP_OPTIONS,
                verdict: Verdict::Info,
                detail: format!("refused: {}", server_message(&e)),
                remedy: Some(Hazard::StartupParameterRefused.remedy_line()),
            },
        },
    );
    findings.push(match connect(base.clone().ssl_mode(PgSslMode::Require)).await {
        Ok(c) => {
            let _ = c.close().await;
            Finding {
                item: items::TLS,
                verdict: Verdict::Ok,
                detail: "TLS offered: sslmode=require connects".into(),
                remedy: None,
            }
        }
        Err(e) => Finding {
            item: items::TLS,
            verdict: Verdict::Hazard,
            detail: format!("sslmode=require fails: {}", server_message(&e)),
            remedy: Some(
                "an application whose URL says sslmode=require (as Supabase's docs tell it to) cannot connect \
                 here: serve TLS on this endpoint (the crate's stacks do), or test with the URL production uses"
                    .into(),
            ),
        },
    });
    Report {
        target: url.redacted(),
        pool_behaviour,
        findings,
        elapsed: started.elapsed(),
    }
}

// The server's own words, without the crate's advice (the remedy says it).
fn server_message(e: &crate::Error) -> String {
    match e {
        crate::Error::ConnectRefused { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn first_message(o: &Outcome) -> String {
    o.first_problem()
}

fn statement_finding(
    item: &'static str,
    outcome: crate::Result<Outcome>,
    default_cache: bool,
) -> Finding {
    match outcome {
        Ok(o) if o.passed() => Finding {
            item,
            verdict: Verdict::Ok,
            detail: format!("{} under concurrency, answers checked", o.summary()),
            remedy: default_cache.then(|| {
                "named prepared statements are safe here (a tracking pooler, a session pooler or PostgreSQL): \
                 the default sqlx cache is fine"
                    .to_string()
            }),
        },
        Ok(o) => problem_finding(item, &o, statement_hazard(&o)),
        Err(e) => Finding { item, verdict: Verdict::Error, detail: e.to_string(), remedy: None },
    }
}

/// The hazard behind a failed statement workload: the SQLSTATE most met.
fn statement_hazard(o: &Outcome) -> Hazard {
    if o.has_wrong_answers() && o.failures.is_empty() {
        return Hazard::WrongAnswer;
    }
    o.failures
        .iter()
        .find_map(|f| Hazard::of_error(f.code.as_deref()?, &f.message, None))
        .unwrap_or(Hazard::WrongAnswer)
}

/// A finding for a workload that went wrong: wrong answers outrank errors.
fn problem_finding(item: &'static str, o: &Outcome, hazard: Hazard) -> Finding {
    Finding {
        item,
        verdict: if o.has_wrong_answers() {
            Verdict::WrongResults
        } else {
            Verdict::Hazard
        },
        detail: format!("{}: {}", o.summary(), first_message(o)),
        remedy: Some(hazard.remedy_line()),
    }
}

/// Unnamed statements outside a transaction: behind a transaction pooler
/// never "fine", even in a run where the race did not strike.
fn unnamed_finding(outcome: crate::Result<Outcome>, pool: Option<PoolBehaviour>) -> Finding {
    let item = items::UNNAMED;
    match outcome {
        Ok(o) if o.passed() && pool == Some(PoolBehaviour::Transaction) => Finding {
            item,
            verdict: Verdict::Hazard,
            detail: format!(
                "{} this time, but behind a transaction pooler Parse and Bind can land on different \
                 server connections",
                o.summary()
            ),
            remedy: Some(Hazard::MissingUnnamedStatement.remedy_line()),
        },
        Ok(o) if o.passed() => Finding { item, verdict: Verdict::Ok, detail: o.summary(), remedy: None },
        Ok(o) => problem_finding(item, &o, Hazard::MissingUnnamedStatement),
        Err(e) => Finding { item, verdict: Verdict::Error, detail: e.to_string(), remedy: None },
    }
}

/// Sets session state on `a`, makes a second client take the server
/// connection `a` used, and looks whether `a` kept backend and state.
async fn pool_behaviour(
    a: &mut PgConnection,
    base: &PgConnectOptions,
    url: &DbUrl,
    timeout: Duration,
) -> Result<PoolBehaviour, String> {
    let pid = |row: sqlx::postgres::PgRow| row.get::<i32, _>(0);
    sqlx::raw_sql("set pgbf.doctor = 'probe'")
        .execute(&mut *a)
        .await
        .map_err(|e| e.to_string())?;
    let before = pid(sqlx::raw_sql("select pg_backend_pid()")
        .fetch_one(&mut *a)
        .await
        .map_err(|e| e.to_string())?);
    let mut b = open(Endpoint::Server, url, base, timeout)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql("begin; select 1")
        .execute(&mut b)
        .await
        .map_err(|e| e.to_string())?;
    let after = sqlx::raw_sql("select pg_backend_pid(), current_setting('pgbf.doctor', true)")
        .fetch_one(&mut *a)
        .await
        .map_err(|e| e.to_string())?;
    let _ = sqlx::raw_sql("commit").execute(&mut b).await;
    let _ = b.close().await;
    let kept = after.get::<i32, _>(0) == before
        && after.get::<Option<String>, _>(1).as_deref() == Some("probe");
    Ok(if kept {
        PoolBehaviour::Session
    } else {
        PoolBehaviour::Transaction
    })
}

/// tokio-postgres's query styles under concurrency, answers checked
/// (feature `tokio-postgres`), with remedies in tokio-postgres's terms.
#[cfg(feature = "tokio-postgres")]
async fn tokio_postgres_findings(
    url: &DbUrl,
    base: &PgConnectOptions,
    workload: Workload,
    timeout: Duration,
    named_unsafe: bool,
) -> Vec<Finding> {
    use crate::diagnose::probes::tokio_postgres::{run_tokio_pg_pattern, TokioPgPattern};
    let config = crate::connect::tokio_pg::config(url, base, timeout);
    let mut findings = Vec::new();
    for pattern in TokioPgPattern::ALL {
        let item = match pattern {
            TokioPgPattern::Query => items::TOKIO_PG_QUERY,
            TokioPgPattern::QueryTyped => items::TOKIO_PG_QUERY_TYPED,
            TokioPgPattern::PreparedAcrossTransactions => items::TOKIO_PG_PREPARED,
            TokioPgPattern::SimpleQuery => items::TOKIO_PG_SIMPLE_QUERY,
        };
        findings.push(
            match run_tokio_pg_pattern(pattern, &config, workload).await {
                // Plain `query` splits Parse and Bind by chance: behind a
                // pooler without tracking it is never fine, even when the
                // race did not strike in this run.
                Ok(o) if o.passed() && named_unsafe && pattern == TokioPgPattern::Query => {
                    Finding {
                        item,
                        verdict: Verdict::Hazard,
                        detail: format!(
                            "{} this time, but behind a transaction pooler without \
                             prepared-statement tracking its named statement can be bound \
                             on a server connection that never prepared it (26000)",
                            o.summary()
                        ),
                        remedy: Some(Hazard::MissingStatement.tokio_postgres_remedy_line()),
                    }
                }
                Ok(o) if o.passed() => Finding {
                    item,
                    verdict: Verdict::Ok,
                    detail: format!("{} under concurrency, answers checked", o.summary()),
                    remedy: None,
                },
                Ok(o) => {
                    let hazard = statement_hazard(&o);
                    Finding {
                        remedy: Some(hazard.tokio_postgres_remedy_line()),
                        ..problem_finding(item, &o, hazard)
                    }
                }
                Err(e) => Finding {
                    item,
                    verdict: Verdict::Error,
                    detail: e.to_string(),
                    remedy: None,
                },
            },
        );
    }
    findings
}
