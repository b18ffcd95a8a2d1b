//! Whether the endpoint ends a connection over a duplicate statement name
//! with Supavisor's `EPREPAREDDUP`: its `named_prepared_statements` flag is
//! on there, with the limits that come with it.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::items;
use super::report::{Finding, Verdict};
use crate::diagnose::probes::prepared::{run_prepared_probe, PreparedProbe};
use crate::target::DbUrl;

/// The flag's item: on (a hazard, with its limits), off, or not probed.
pub(super) async fn flag_finding(
    url: &DbUrl,
    base: &PgConnectOptions,
    connect_timeout: Duration,
) -> Finding {
    let item = items::NAMED_PREPARED_FLAG;
    let outcome =
        match run_prepared_probe(PreparedProbe::DuplicateName, url, base, connect_timeout).await {
            Ok(o) => o,
            Err(e) => return Finding::new(item, Verdict::Error, e.to_string()),
        };
    let Some(failure) = outcome.failures.first() else {
        return Finding::new(
            item,
            Verdict::Info,
            "not judged: a second Parse of the same statement name was accepted (no \
             PostgreSQL answers so)",
        );
    };
    if failure.code.is_none() {
        return Finding::new(
            item,
            Verdict::Info,
            format!("not probed: {}", failure.message),
        );
    }
    if failure.message.starts_with("(EPREPAREDDUP)") {
        return Finding::new(
            item,
            Verdict::Hazard,
            format!(
                "on: a duplicate statement name ended the connection ({} {}); sqlx's default \
                 cache works here, but SQL PREPARE/EXECUTE/DEALLOCATE (EPSSIMPLEQUERY), a 101st \
                 named statement on one connection (EMAXPREPARED) and an unknown name \
                 (EPREPAREDNOTFOUND) end the connection too",
                failure.code.as_deref().unwrap_or_default(),
                failure.message
            ),
        )
        .with_remedy(
            "keep sqlx's `statement_cache_capacity` between 1 and 99 (sqlx prepares its 101st \
             statement before it closes the one it evicts, and with the cache off it names \
             every statement and closes none: a connection's 101st query ends it), or use \
             `.persistent(false)`; no SQL PREPARE; test behind Profile::SupabaseSharedPrepared",
        );
    }
    Finding::new(
        item,
        Verdict::Ok,
        format!(
            "off (or not Supavisor): a duplicate statement name got no EPREPAREDDUP ({} {})",
            failure.code.as_deref().unwrap_or_default(),
            failure.message
        ),
    )
}
