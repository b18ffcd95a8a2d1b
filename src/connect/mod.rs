//! The one place that builds connection options and opens connections:
//! the crate's own (lease, admin, readiness, template, warm-up, explain,
//! doctor) and `TestDb`'s, with their time limits and the error mapping that
//! says what to change. Every connection the crate opens sends only startup
//! parameters a strict PgBouncer accepts.
//!
//! Owns: [`Endpoint`], connection options, opening connections (sqlx here,
//! tokio-postgres in `tokio_pg`), the connect errors' hints, SQL quoting
//! (`quote`) and what differs between sqlx majors (`sqlx_compat`). May use:
//! `target` (URLs, redaction), `support`, `error`.

pub(crate) mod quote;
pub(crate) mod sqlx_compat;
#[cfg(feature = "tokio-postgres")]
pub(crate) mod tokio_pg;

use std::fmt;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::error::{Error, Result};
use crate::target::DbUrl;

/// What a connection goes to, as messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The pooler (PgBouncer on the crate's stacks, `TEST_DATABASE_URL` elsewhere).
    Pooler,
    /// PostgreSQL itself (the stack's direct port, or `TEST_DIRECT_URL`).
    Direct,
    /// PgBouncer's admin console (database `pgbouncer`).
    Console,
    /// A server that may be either (the URL `doctor` was given).
    Server,
}

impl Endpoint {
    /// The words messages use: `pooler`, `direct endpoint`,
    /// `PgBouncer admin console`, `server`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Endpoint::Pooler => "pooler",
            Endpoint::Direct => "direct endpoint",
            Endpoint::Console => "PgBouncer admin console",
            Endpoint::Server => "server",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    kind: Endpoint,
    url: &DbUrl,
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection> {
    tokio::time::timeout(timeout, PgConnection::connect_with(options))
        .await
        .map_err(|_| login_timeout(format!("connecting to the {kind} at {url}"), timeout))?
        .map_err(|e| connect_error(kind, url, e))
}

/// The error of a server that accepted TCP but did not finish the login
/// within `timeout`; `what` says which connection it was.
pub(crate) fn login_timeout(what: String, timeout: Duration) -> Error {
    Error::Timeout {
        what,
        after: timeout,
        hint: "the server accepted TCP but did not answer the login; check that the port is a \
               PostgreSQL or PgBouncer port, or raise PGBF_CONNECT_TIMEOUT_SECS"
            .into(),
    }
}

/// Turns a driver's connect error into one that says what to change.
pub(crate) fn connect_error(kind: Endpoint, url: &DbUrl, error: sqlx::Error) -> Error {
    match error {
        sqlx::Error::Io(io) => unreachable(kind, url.redacted(), &io),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string());
            refused(
                kind,
                url.redacted(),
                db.message().to_string(),
                code,
                "sqlx: PgConnectOptions::options",
            )
        }
        other => Error::ConnectRefused {
            endpoint_kind: kind.as_str(),
            url: url.redacted(),
            reason: crate::target::env::redact(&other.to_string()),
            hint: String::new(),
            code: None,
        },
    }
}

/// The server at `url` (redacted) could not be reached: with the hint of
/// Supabase's pooler ports when a pooler refused the TCP connection.
pub(crate) fn unreachable(kind: Endpoint, url: String, io: &std::io::Error) -> Error {
    let hint = if io.kind() == std::io::ErrorKind::ConnectionRefused && kind == Endpoint::Pooler {
        ". On Supabase the transaction pooler listens on port 6543, the session pooler on 5432"
    } else {
        ""
    };
    Error::Unreachable {
        endpoint_kind: kind.as_str(),
        url,
        reason: io.to_string(),
        hint: hint.to_string(),
    }
}

/// The server at `url` (redacted) refused the login with `message` (and
/// SQLSTATE `code`), with what to change; `set_options` names the driver's
/// setter of startup options (e.g. `sqlx: PgConnectOptions::options`).
pub(crate) fn refused(
    kind: Endpoint,
    url: String,
    message: String,
    code: Option<String>,
    set_options: &str,
) -> Error {
    let hint = if message.contains("unsupported startup parameter") {
        format!(
            ". PgBouncer accepts only client_encoding, DateStyle, TimeZone, \
             standard_conforming_strings and application_name at startup: remove the \
             parameter ({set_options}), set it per transaction with SET LOCAL, or add it to \
             PgBouncer's ignore_startup_parameters"
        )
    } else if code.as_deref() == Some("28P01") || message.contains("authentication failed") {
        ". Check the user and password in the URL (on Supabase the pooler's user is \
         postgres.<project-ref>)"
            .to_string()
    } else if code.as_deref() == Some("3D000") || message.contains("does not exist") {
        ". The database does not exist (a dropped test database stays refused by PgBouncer \
         for a while)"
            .to_string()
    } else {
        String::new()
    };
    Error::ConnectRefused {
        endpoint_kind: kind.as_str(),
        url,
        reason: message,
        hint,
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_named_as_messages_always_named_them() {
        let words = [
            Endpoint::Pooler,
            Endpoint::Direct,
            Endpoint::Console,
            Endpoint::Server,
        ]
        .map(|e| e.to_string());
        assert_eq!(
            words,
            [
                "pooler",
                "direct endpoint",
                "PgBouncer admin console",
                "server"
            ]
        );
    }

    #[test]
    fn only_a_pooler_refusing_tcp_gets_supabase_ports_hint() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let pooler = unreachable(Endpoint::Pooler, "u".into(), &refused).to_string();
        assert!(pooler.contains("port 6543"), "{pooler}");
        let direct = unreachable(Endpoint::Direct, "u".into(), &refused).to_string();
        assert!(!direct.contains("port 6543"), "{direct}");
    }
}
