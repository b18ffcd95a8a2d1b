//! `doctor`: probes any PostgreSQL URL for the behaviours that break sqlx
//! behind poolers and says, item by item, what to change. It knows nothing
//! about Docker; it is read-only apart from session settings of its own.
//!
//! - `report`: the verdicts, findings and the report (text and JSON);
//! - [`items`]: the items' names;
//! - `server`: the server's version and the pool behaviour (answers of an
//!   unexpected type are findings, never panics);
//! - `statements`: the statement workloads' items;
//! - `startup`: startup parameters and TLS;
//! - `pooler`: what tells Supavisor from PgBouncer (a tracked `SET`,
//!   `application_name`, startup `TimeZone` and custom settings, the
//!   session-mode limit).
//! - `prepared`: whether Supavisor's `named_prepared_statements` flag is on.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;

use crate::connect::{open, Endpoint};
use crate::diagnose::probes::{run_pattern, SqlxPattern, Workload};
use crate::target::DbUrl;

pub mod items;
mod pooler;
mod prepared;
mod report;
mod server;
mod startup;
mod statements;

pub use report::{Finding, PoolBehaviour, Report, Verdict};

/// Probes `url` and reports. Never fails: what cannot be probed is a finding.
pub async fn diagnose(url: &DbUrl, workload: Workload, connect_timeout: Duration) -> Report {
    let started = Instant::now();
    // The factory's options: no extra_float_digits, statement cache off.
    let base =
        crate::connect::options(url, "pgbouncer-fixtures doctor").statement_cache_capacity(0);
    let connect = |options: PgConnectOptions| async move {
        open(Endpoint::Server, url, &options, connect_timeout).await
    };
    let report = |pool_behaviour, findings| Report {
        target: url.redacted(),
        pool_behaviour,
        findings,
        elapsed: started.elapsed(),
    };

    let mut first = match connect(base.clone()).await {
        Ok(c) => c,
        Err(e) => {
            let failed = Finding::new(items::CONNECTION, Verdict::Error, e.to_string());
            return report(None, vec![failed]);
        }
    };
    let mut findings = vec![Finding::new(
        items::CONNECTION,
        Verdict::Ok,
        format!("reached {} and authenticated", url.host_port()),
    )];
    findings.push(server::server_finding(&mut first).await);
    let behaviour = server::pool_behaviour(&mut first, &base, url, connect_timeout).await;
    let (pool_finding, pool_behaviour) = server::pool_finding(behaviour);
    findings.push(pool_finding);
    let _ = first.close().await;

    findings
        .extend(statement_findings(url, &base, workload, connect_timeout, pool_behaviour).await);
    findings.extend(startup::startup_findings(url, &base, connect).await);
    findings.extend(pooler::pooler_findings(&base, pool_behaviour).await);
    findings.push(prepared::flag_finding(url, &base, connect_timeout).await);
    report(pool_behaviour, findings)
}

/// The statement items: sqlx's, then (feature `tokio-postgres`)
/// tokio-postgres's.
async fn statement_findings(
    url: &DbUrl,
    base: &PgConnectOptions,
    workload: Workload,
    connect_timeout: Duration,
    pool_behaviour: Option<PoolBehaviour>,
) -> Vec<Finding> {
    let cache_off = run_pattern(SqlxPattern::ConnectionCacheOff, base, workload).await;
    let default_cache = run_pattern(SqlxPattern::PoolDefaultCache, base, workload).await;
    let mut findings = vec![
        statements::statement_finding(items::DEFAULT_CACHE, default_cache, true),
        statements::statement_finding(items::CACHE_OFF, cache_off, false),
    ];
    // The unnamed race is rarer than the named one: give it three times the rounds.
    let longer = Workload {
        rounds: workload.rounds.saturating_mul(3),
        ..workload
    };
    let unnamed = run_pattern(SqlxPattern::UnnamedOutsideTransaction, base, longer).await;
    findings.push(statements::unnamed_finding(unnamed, pool_behaviour));
    #[cfg(feature = "tokio-postgres")]
    {
        // Named statements are unsafe here when the pooler moves clients
        // between server connections and the default-cache probe broke.
        let named_unsafe = pool_behaviour == Some(PoolBehaviour::Transaction)
            && findings
                .iter()
                .any(|f| f.item == items::DEFAULT_CACHE && f.verdict != Verdict::Ok);
        findings.extend(
            statements::tokio_postgres_findings(url, base, workload, connect_timeout, named_unsafe)
                .await,
        );
    }
    #[cfg(not(feature = "tokio-postgres"))]
    let _ = (url, connect_timeout);
    findings
}
