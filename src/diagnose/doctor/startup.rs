//! The startup items: what the server does with sqlx's default startup
//! parameters, with server settings in `options`, and with TLS required.

use std::future::Future;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection, PgConnection};

use super::items;
use super::report::{Finding, Verdict};
use crate::explain::hazard::Hazard;
use crate::target::DbUrl;

/// The three startup items, each from a connection of its own made by
/// `connect`; `base` as for the other items.
pub(super) async fn startup_findings<F, Fut>(
    url: &DbUrl,
    base: &PgConnectOptions,
    connect: F,
) -> Vec<Finding>
where
    F: Fn(PgConnectOptions) -> Fut,
    Fut: Future<Output = crate::Result<PgConnection>>,
{
    // sqlx's defaults send extra_float_digits=2 at startup.
    let defaults = url
        .connect_options()
        .application_name("pgbouncer-fixtures doctor");
    let defaults = match accepted(connect(defaults).await).await {
        Ok(()) => Finding::new(
            items::STARTUP_DEFAULTS,
            Verdict::Ok,
            "accepted (extra_float_digits)",
        ),
        Err(e) => Finding::new(
            items::STARTUP_DEFAULTS,
            Verdict::Hazard,
            format!("refused: {}", server_message(&e)),
        )
        .with_remedy(
            "PgConnectOptions::extra_float_digits(None) on your options, or ignore_startup_parameters = \
             extra_float_digits in PgBouncer",
        ),
    };
    let options = match accepted(connect(base.clone().options([("jit", "off")])).await).await {
        Ok(()) => Finding::new(items::STARTUP_OPTIONS, Verdict::Ok, "accepted"),
        Err(e) => Finding::new(
            items::STARTUP_OPTIONS,
            Verdict::Info,
            format!("refused: {}", server_message(&e)),
        )
        .with_remedy(Hazard::StartupParameterRefused.remedy_line()),
    };
    let tls = match accepted(connect(base.clone().ssl_mode(PgSslMode::Require)).await).await {
        Ok(()) => Finding::new(
            items::TLS,
            Verdict::Ok,
            "TLS offered: sslmode=require connects",
        ),
        Err(e) => Finding::new(
            items::TLS,
            Verdict::Hazard,
            format!("sslmode=require fails: {}", server_message(&e)),
        )
        .with_remedy(
            "an application whose URL says sslmode=require (as Supabase's docs tell it to) cannot connect \
             here: serve TLS on this endpoint (the crate's stacks do), or test with the URL production uses",
        ),
    };
    vec![defaults, options, tls]
}

/// Whether the connection came up; closes it.
async fn accepted(connection: crate::Result<PgConnection>) -> crate::Result<()> {
    let _ = connection?.close().await;
    Ok(())
}

/// The server's own words, without the crate's advice (the remedy says it).
fn server_message(e: &crate::Error) -> String {
    match e {
        crate::Error::ConnectRefused { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
