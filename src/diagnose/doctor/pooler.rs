//! The items that tell which pooler answers: what a tracked `SET` outside
//! a transaction does, the `application_name` the server sees, whether
//! sqlx's startup `TimeZone` is applied, what happens to a custom setting
//! at startup, and whether client 16 is refused at once. Read-only: the
//! probes change session settings of their own and reset them.

use sqlx::postgres::PgConnectOptions;

use super::items;
use super::report::{Finding, PoolBehaviour, Verdict};
use crate::diagnose::probes::pooler::{
    run_pooler_probe, startup_zone, tracked_set, PoolerProbe, PoolerTarget, SESSION_LIMIT_CLIENTS,
    SET_ZONE,
};
use crate::diagnose::probes::Outcome;

/// The five items, in order (the session limit last: it holds 16 clients).
/// `pool`: the pool behaviour found before, if any.
pub(super) async fn pooler_findings(
    base: &PgConnectOptions,
    pool: Option<PoolBehaviour>,
) -> Vec<Finding> {
    let target = PoolerTarget {
        pooled: base,
        direct: None,
    };
    let probe = |p| async move { run_pooler_probe(p, target).await };
    vec![
        tracked_set_finding(base, pool).await,
        application_name_finding(probe(PoolerProbe::ApplicationName).await),
        startup_zone_finding(base).await,
        custom_setting_finding(probe(PoolerProbe::OptionsCustomSetting).await),
        session_limit_finding(probe(PoolerProbe::SessionLimit).await),
    ]
}

async fn tracked_set_finding(base: &PgConnectOptions, pool: Option<PoolBehaviour>) -> Finding {
    let item = items::TRACKED_SET;
    let answer = match tracked_set(base).await {
        Ok(a) => a,
        Err(e) => return Finding::new(item, Verdict::Error, e.to_string()),
    };
    let seen = format!(
        "client B saw {} (its own: {}), the setter {}",
        answer.other_after, answer.other_before, answer.setter_after
    );
    let remedy = format!(
        "set it inside each transaction (`SET LOCAL TIME ZONE '{SET_ZONE}'` after begin()), \
         never with a SET outside one (sqlx's after_connect included): this pooler leaves it \
         on the server connection"
    );
    match (answer.leaked(), answer.lost()) {
        (false, false) if answer.other_on_setters_backend => Finding::new(
            item,
            Verdict::Ok,
            format!(
                "keeps per client: B's transaction ran on the setter's server connection; {seen} \
                 (PgBouncer re-applies tracked parameters)"
            ),
        ),
        // Behind a transaction pooler B never met the setter's backend:
        // whether the value would have leaked is not known.
        (false, false) if pool != Some(PoolBehaviour::Session) => Finding::new(
            item,
            Verdict::Info,
            format!("not told: client B never ran on the setter's server connection; {seen}"),
        ),
        (false, false) => Finding::new(
            item,
            Verdict::Ok,
            format!("keeps per client: separate server connections (session semantics); {seen}"),
        ),
        (true, _) => Finding::new(
            item,
            Verdict::WrongResults,
            format!("leaks: Supavisor-like (the value stayed on the server connection): {seen}"),
        )
        .with_remedy(remedy),
        (false, true) => Finding::new(
            item,
            Verdict::WrongResults,
            format!(
                "loses it: Supavisor-like (the setter moved to another server connection): {seen}"
            ),
        )
        .with_remedy(remedy),
    }
}

fn application_name_finding(outcome: crate::Result<Outcome>) -> Finding {
    let item = items::APPLICATION_NAME;
    match outcome {
        Ok(o) if o.passed() => Finding::new(item, Verdict::Ok, "the client's (as sent)"),
        Ok(o) => match (o.wrong.first(), o.failures.first()) {
            (Some(w), _) if w.got.starts_with("Supavisor") => Finding::new(
                item,
                Verdict::Info,
                format!(
                    "Supavisor-like: the server sees `{}`, not the client's",
                    w.got
                ),
            )
            .with_remedy(
                "pg_stat_activity and logs do not name your application here: tell sessions apart \
                 by something else (a comment in the SQL, the user)",
            ),
            (Some(w), _) => Finding::new(
                item,
                Verdict::Info,
                format!("not the client's: the server sees `{}`", w.got),
            ),
            (None, Some(f)) => Finding::new(item, Verdict::Error, f.to_string()),
            (None, None) => Finding::new(item, Verdict::Error, o.summary()),
        },
        Err(e) => Finding::new(item, Verdict::Error, e.to_string()),
    }
}

async fn startup_zone_finding(base: &PgConnectOptions) -> Finding {
    let item = items::STARTUP_TIMEZONE;
    let answer = startup_zone(base).await;
    let source = answer.source.clone().unwrap_or_else(|| "unknown".into());
    match &answer.zone {
        Err(e) => Finding::new(item, Verdict::Error, e.to_string()),
        Ok(_) if answer.applied() => Finding::new(
            item,
            Verdict::Ok,
            format!("applied: TimeZone UTC, set from the client ({source})"),
        ),
        Ok(zone) if zone == "UTC" => Finding::new(
            item,
            Verdict::Info,
            format!(
                "UTC as sent, and the server's own default ({source}): applied or dropped, the \
                 same answer here"
            ),
        ),
        Ok(zone) => Finding::new(
            item,
            Verdict::Info,
            format!("dropped: Supavisor-like: the session runs in {zone} ({source}), not UTC"),
        )
        .with_remedy(
            "startup parameters do not reach the server here: set TimeZone on the role or the \
             database (ALTER ROLE ... SET timezone), or per transaction (SET LOCAL)",
        ),
    }
}

fn custom_setting_finding(outcome: crate::Result<Outcome>) -> Finding {
    let item = items::CUSTOM_SETTING;
    match outcome {
        Ok(o) if o.passed() => Finding::new(item, Verdict::Ok, "applied (read back)"),
        Ok(o) => match (o.wrong.first(), o.failures.first()) {
            (Some(w), _) => Finding::new(
                item,
                Verdict::Hazard,
                format!("accepted and dropped: Supavisor-like: read back {}", w.got),
            )
            .with_remedy(
                "a tenant or request setting sent at startup never reaches the server here: \
                 set it per transaction (`SET LOCAL app.tenant = ...` or set_config(..., true))",
            ),
            // Refused at login, loudly, as the jit item's refusal.
            (None, Some(f)) => {
                Finding::new(item, Verdict::Info, format!("refused: PgBouncer-like: {f}"))
                    .with_remedy(
                        "this pooler refuses settings it does not know at startup: set it per \
                 transaction (`SET LOCAL app.tenant = ...` or set_config(..., true))",
                    )
            }
            (None, None) => Finding::new(item, Verdict::Error, o.summary()),
        },
        Err(e) => Finding::new(item, Verdict::Error, e.to_string()),
    }
}

fn session_limit_finding(outcome: crate::Result<Outcome>) -> Finding {
    let item = items::SESSION_LIMIT;
    let o = match outcome {
        Ok(o) => o,
        Err(e) => return Finding::new(item, Verdict::Error, e.to_string()),
    };
    let connected = o.clients - o.failures.len();
    let Some(refusal) = o.failures.first() else {
        return Finding::new(
            item,
            Verdict::Ok,
            format!("all {SESSION_LIMIT_CLIENTS} connected and ran a query"),
        );
    };
    let whose = if refusal.message.contains("EMAXCONNSESSION") {
        "Supavisor's session-mode limit"
    } else if refusal.message.contains("max_db_client_connections")
        || refusal.message.contains("max_client_conn")
    {
        "PgBouncer's client cap"
    } else if refusal.code.is_none() {
        "no refusal, a client that waited in vain"
    } else {
        "a limit"
    };
    Finding::new(
        item,
        Verdict::Info,
        format!(
            "{connected} of {SESSION_LIMIT_CLIENTS} connected; {} refused: {whose}: {refusal}",
            o.failures.len()
        ),
    )
    .with_remedy(format!(
        "keep PgPoolOptions::max_connections, summed over every process, at or below {connected} \
         here, or use the transaction-mode port"
    ))
}
