//! The one place that builds connection options and opens connections:
//! the crate's own (lease, admin, readiness, template, warm-up, explain,
//! doctor) and `TestDb`'s, with their time limits and the error mapping that
//! says what to change. Every connection the crate opens sends only startup
//! parameters a strict PgBouncer accepts.

pub(crate) mod quote;
pub(crate) mod sqlx_compat;
#[cfg(feature = "tokio-postgres")]
pub(crate) mod tokio_pg;

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::error::{Error, Result};
use crate::target::DbUrl;

/// Options for a connection of the crate's own to `url`, named `app` in
/// `pg_stat_activity`: no `extra_float_digits` (PgBouncer refuses it unless
/// told to ignore it), TLS as the URL and stack ask (see
/// [`DbUrl::connect_options`]).
pub(crate) fn options(url: &DbUrl, app: &str) -> PgConnectOptions {
    url.connect_options()
        .application_name(app)
        .extra_float_digits(None)
}

/// Opens one connection with a time limit, with errors that say what to change.
pub(crate) async fn open(
    kind: &'static str,
    url: &DbUrl,
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection> {
    tokio::time::timeout(timeout, PgConnection::connect_with(options))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("connecting to the {kind} at {url}"),
            after: timeout,
            hint: "the server accepted TCP but did not answer the login; check that the port is a \
                   PostgreSQL or PgBouncer port, or raise PGBF_CONNECT_TIMEOUT_SECS"
                .into(),
        })?
        .map_err(|e| connect_error(kind, url, e))
}

/// Turns a driver's connect error into one that says what to change.
pub(crate) fn connect_error(kind: &'static str, url: &DbUrl, error: sqlx::Error) -> Error {
    match error {
        sqlx::Error::Io(io) => {
            let hint = if io.kind() == std::io::ErrorKind::ConnectionRefused && kind == "pooler" {
                ". On Supabase the transaction pooler listens on port 6543, the session pooler on 5432".to_string()
            } else {
                String::new()
            };
            Error::Unreachable {
                endpoint_kind: kind,
                url: url.redacted(),
                reason: io.to_string(),
                hint,
            }
        }
        sqlx::Error::Database(db) => {
            let message = db.message().to_string();
            let code = db.code().map(|c| c.to_string());
            let hint = if message.contains("unsupported startup parameter") {
                ". PgBouncer accepts only client_encoding, DateStyle, TimeZone, \
                 standard_conforming_strings and application_name at startup: remove the \
                 parameter (sqlx: PgConnectOptions::options), set it per transaction with \
                 SET LOCAL, or add it to PgBouncer's ignore_startup_parameters"
                    .to_string()
            } else if code.as_deref() == Some("28P01") || message.contains("authentication failed")
            {
                ". Check the user and password in the URL (on Supabase the pooler's user is postgres.<project-ref>)".to_string()
            } else if code.as_deref() == Some("3D000") || message.contains("does not exist") {
                ". The database does not exist (a dropped test database stays refused by PgBouncer for a while)".to_string()
            } else {
                String::new()
            };
            Error::ConnectRefused {
                endpoint_kind: kind,
                url: url.redacted(),
                reason: message,
                hint,
                code,
            }
        }
        other => Error::ConnectRefused {
            endpoint_kind: kind,
            url: url.redacted(),
            reason: crate::target::env::redact(&other.to_string()),
            hint: String::new(),
            code: None,
        },
    }
}
