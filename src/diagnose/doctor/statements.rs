//! The statement items: sqlx's (and, with the feature, tokio-postgres's)
//! ways of running a parameterised query, under concurrency, answers
//! checked, each with its remedy.

use super::items;
use super::report::{Finding, PoolBehaviour, Verdict};
use crate::diagnose::probes::Outcome;
use crate::explain::hazard::Hazard;

/// A named-statement item (`default_cache`: sqlx's default cache, whose
/// pass says that cache is fine).
pub(super) fn statement_finding(
    item: &'static str,
    outcome: crate::Result<Outcome>,
    default_cache: bool,
) -> Finding {
    match outcome {
        Ok(o) if o.passed() => Finding {
            remedy: default_cache.then(|| {
                "named prepared statements are safe here (a tracking pooler, a session pooler or PostgreSQL): \
                 the default sqlx cache is fine"
                    .to_string()
            }),
            ..passed(item, &o)
        },
        Ok(o) if supavisor_flag_error(&o) => {
            let f = problem_finding(item, &o, Hazard::WrongAnswer);
            Finding {
                remedy: Some(SUPAVISOR_FLAG_REMEDY.to_string()),
                ..f
            }
        }
        Ok(o) => problem_finding(item, &o, statement_hazard(&o)),
        Err(e) => Finding::new(item, Verdict::Error, e.to_string()),
    }
}

/// Whether a workload met one of the errors of Supavisor's
/// `named_prepared_statements` flag (its messages start with the code).
fn supavisor_flag_error(o: &Outcome) -> bool {
    o.wrong.is_empty()
        && !o.failures.is_empty()
        && o.failures.iter().all(|f| {
            [
                "(EMAXPREPARED)",
                "(EPSSIMPLEQUERY)",
                "(EPREPAREDDUP)",
                "(EPREPAREDNOTFOUND)",
            ]
            .iter()
            .any(|code| f.message.starts_with(code))
        })
}

/// What to change when Supavisor's flag ended the workload's connections.
const SUPAVISOR_FLAG_REMEDY: &str =
    "Supavisor's named_prepared_statements flag is on here (see its item): with the sqlx cache \
     off, sqlx names every statement and closes none, so a connection's 101st query ends it \
     (EMAXPREPARED); keep the default cache at 99 or below (`statement_cache_capacity(99)`), \
     or use `.persistent(false)`";

/// A workload that passed.
fn passed(item: &'static str, o: &Outcome) -> Finding {
    Finding::new(
        item,
        Verdict::Ok,
        format!("{} under concurrency, answers checked", o.summary()),
    )
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
    let verdict = if o.has_wrong_answers() {
        Verdict::WrongResults
    } else {
        Verdict::Hazard
    };
    Finding::new(
        item,
        verdict,
        format!("{}: {}", o.summary(), o.first_problem()),
    )
    .with_remedy(hazard.remedy_line())
}

/// Unnamed statements outside a transaction: behind a transaction pooler
/// never "fine", even in a run where the race did not strike.
pub(super) fn unnamed_finding(
    outcome: crate::Result<Outcome>,
    pool: Option<PoolBehaviour>,
) -> Finding {
    let item = items::UNNAMED;
    match outcome {
        Ok(o) if o.passed() && pool == Some(PoolBehaviour::Transaction) => Finding::new(
            item,
            Verdict::Hazard,
            format!(
                "{} this time, but behind a transaction pooler Parse and Bind can land on different \
                 server connections",
                o.summary()
            ),
        )
        .with_remedy(Hazard::MissingUnnamedStatement.remedy_line()),
        Ok(o) if o.passed() => Finding::new(item, Verdict::Ok, o.summary()),
        Ok(o) => problem_finding(item, &o, Hazard::MissingUnnamedStatement),
        Err(e) => Finding::new(item, Verdict::Error, e.to_string()),
    }
}

/// tokio-postgres's query styles under concurrency, answers checked
/// (feature `tokio-postgres`), with remedies in tokio-postgres's terms.
/// `named_unsafe`: the pooler moves clients between server connections and
/// sqlx's named statements broke.
#[cfg(feature = "tokio-postgres")]
pub(super) async fn tokio_postgres_findings(
    url: &crate::target::DbUrl,
    base: &sqlx::postgres::PgConnectOptions,
    workload: crate::diagnose::probes::Workload,
    timeout: std::time::Duration,
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
                    Finding::new(
                        item,
                        Verdict::Hazard,
                        format!(
                            "{} this time, but behind a transaction pooler without \
                         prepared-statement tracking its named statement can be bound \
                         on a server connection that never prepared it (26000)",
                            o.summary()
                        ),
                    )
                    .with_remedy(Hazard::MissingStatement.tokio_postgres_remedy_line())
                }
                Ok(o) if o.passed() => passed(item, &o),
                Ok(o) => {
                    let hazard = statement_hazard(&o);
                    problem_finding(item, &o, hazard)
                        .with_remedy(hazard.tokio_postgres_remedy_line())
                }
                Err(e) => Finding::new(item, Verdict::Error, e.to_string()),
            },
        );
    }
    findings
}
