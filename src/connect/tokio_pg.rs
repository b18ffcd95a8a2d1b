//! tokio-postgres glue (feature `tokio-postgres`): the test's database as a
//! `tokio_postgres::Config`, and connected `Client`s whose connection tasks
//! the [`TestDb`](crate::TestDb) owns.
//!
//! Why the crate drives the connection: tokio-postgres hands out a `Client`
//! and a `Connection` future that someone must poll. A test that forgets to
//! spawn it hangs on its first query, and a task that outlives the test keeps
//! a client connection on PgBouncer while the crate drops the database under
//! it. So the crate spawns each connection on the caller's runtime and ends
//! it (abort, then wait on `close()`) before the database is dropped.
//!
//! The settings are those of `connect_options()`: same host, port, user,
//! password, database and `application_name`, and no startup parameter a
//! pooler refuses (tokio-postgres sends `client_encoding`, which PgBouncer
//! accepts, and `options` only when the URL names some).
//!
//! TLS: connections are plain TCP (`NoTls`). The crate's stacks offer TLS and
//! require it only with `StackSettings::with_require_tls(true)`; there, and on
//! any URL whose `sslmode` requires TLS, connecting is
//! [`Error::TlsRequired`], which says how to bring a TLS connector.

use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use crate::connect::{login_timeout, refused, unreachable, Endpoint};
use crate::error::{Error, Result};
use crate::support::sync::lock;
use crate::target::env::redact;
use crate::target::DbUrl;

/// The tokio-postgres settings of `url`, as `options` (the sqlx options
/// `TestDb` would use for it) say them: host, port, user, database,
/// `application_name`, `options`, TLS mode; the password from the URL.
pub(crate) fn config(url: &DbUrl, options: &PgConnectOptions, timeout: Duration) -> Config {
    let mut config = Config::new();
    match options.get_socket() {
        Some(dir) => config.host_path(dir),
        None => config.host(options.get_host()),
    };
    config
        .port(options.get_port())
        .user(options.get_username())
        .dbname(options.get_database().unwrap_or(options.get_username()))
        .connect_timeout(timeout)
        .ssl_mode(match options.get_ssl_mode() {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Allow | PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => SslMode::Require,
        });
    if let Some(name) = options.get_application_name() {
        config.application_name(name);
    }
    if let Some(server_options) = options.get_options() {
        config.options(server_options);
    }
    // sqlx keeps the password to itself: read it from the URL.
    if let Some(password) = url::Url::parse(url.expose()).ok().and_then(|u| {
        u.password()
            .map(|p| percent_decode_str(p).collect::<Vec<u8>>())
    }) {
        config.password(password);
    }
    config
}

/// Why `options` require TLS, if they do (tokio-postgres then needs a TLS
/// connector the crate does not bring).
fn tls_required(options: &PgConnectOptions) -> Option<&'static str> {
    match options.get_ssl_mode() {
        PgSslMode::Require => Some("sslmode=require"),
        PgSslMode::VerifyCa => Some("sslmode=verify-ca"),
        PgSslMode::VerifyFull => Some("sslmode=verify-full"),
        PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer => None,
    }
}

/// `host:port/database` of a config, for messages (no user, no password).
pub(crate) fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or_default())
}

/// Connects with `NoTls` within `timeout`, with errors that say what to change.
/// `target` names the server in messages (never with a password).
pub(crate) async fn connect(
    kind: Endpoint,
    target: &str,
    config: &Config,
    timeout: Duration,
) -> Result<(Client, Connection<Socket, NoTlsStream>)> {
    if config.get_ssl_mode() == SslMode::Require {
        return Err(Error::TlsRequired {
            endpoint_kind: kind.as_str(),
            url: target.to_string(),
            why: "sslmode=require",
        });
    }
    tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| {
            login_timeout(
                format!("connecting with tokio-postgres to the {kind} at {target}"),
                timeout,
            )
        })?
        .map_err(|e| connect_error(kind, target, &e))
}

/// [`connect`] for `TestDb`: refuses TLS-only endpoints with the reason
/// sqlx's options give (the URL's `sslmode`, or the stack's setting).
pub(crate) async fn connect_url(
    kind: Endpoint,
    url: &DbUrl,
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<(Client, Connection<Socket, NoTlsStream>)> {
    if let Some(why) = tls_required(options) {
        return Err(Error::TlsRequired {
            endpoint_kind: kind.as_str(),
            url: url.redacted(),
            why,
        });
    }
    connect(
        kind,
        &url.redacted(),
        &config(url, options, timeout),
        timeout,
    )
    .await
}

/// A tokio-postgres connect error as the crate's, with the same advice as
/// the sqlx path ([`crate::connect::connect_error`]).
fn connect_error(kind: Endpoint, target: &str, e: &tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return refused(
            kind,
            target.to_string(),
            db.message().to_string(),
            Some(db.code().code().to_string()),
            "tokio-postgres: Config::options",
        );
    }
    match std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
        Some(io) => unreachable(kind, target.to_string(), io),
        None => Error::ConnectRefused {
            endpoint_kind: kind.as_str(),
            url: target.to_string(),
            reason: redact(&e.to_string()),
            hint: String::new(),
            code: None,
        },
    }
}

/// The connection tasks of the clients handed out: spawned on the caller's
/// runtime, ended before the database they talk to is dropped.
#[derive(Default)]
pub(crate) struct ConnectionTasks(Mutex<Vec<JoinHandle<()>>>);

impl ConnectionTasks {
    /// Drives `connection` on the current runtime until it ends or is aborted.
    pub(crate) fn spawn(&self, connection: Connection<Socket, NoTlsStream>) {
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "tokio-postgres connection ended with an error");
            }
        });
        let mut tasks = lock(&self.0);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    fn take(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *lock(&self.0))
    }

    /// Aborts every task and waits until each has ended: their clients
    /// report `is_closed()` afterwards.
    pub(crate) async fn end(&self) {
        for task in self.take() {
            task.abort();
            // A cancelled task's error is the expected outcome.
            let _ = task.await;
        }
    }

    /// Aborts every task without waiting (from `Drop`): each ends at its
    /// runtime's next turn, or when that runtime shuts down.
    pub(crate) fn abort(&self) {
        for task in self.take() {
            task.abort();
        }
    }
}

impl Drop for ConnectionTasks {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack_url(require_tls: bool) -> DbUrl {
        DbUrl::parse("test", "postgres://app:p%40ss+w0rd@127.0.0.1:6432/orders")
            .unwrap()
            .on_stack(require_tls)
    }

    #[test]
    fn the_config_carries_what_sqlx_options_say_and_the_decoded_password() {
        let url = stack_url(false);
        let options = url.connect_options().application_name("my_test");
        let config = config(&url, &options, Duration::from_secs(3));
        assert_eq!(
            config.get_hosts(),
            [tokio_postgres::config::Host::Tcp("127.0.0.1".into())]
        );
        assert_eq!(config.get_ports(), [6432]);
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(config.get_password(), Some(&b"p@ss+w0rd"[..]));
        assert_eq!(config.get_dbname(), Some("orders"));
        assert_eq!(config.get_application_name(), Some("my_test"));
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(describe(&config), "127.0.0.1:6432/orders");
    }

    #[tokio::test]
    async fn a_stack_that_requires_tls_is_a_typed_error_naming_the_fix() {
        let url = stack_url(true);
        let options = url.connect_options();
        assert_eq!(
            config(&url, &options, Duration::from_secs(1)).get_ssl_mode(),
            SslMode::Require
        );
        let err = connect_url(Endpoint::Pooler, &url, &options, Duration::from_secs(1))
            .await
            .err()
            .expect("no TLS connector: refused before any I/O");
        assert!(matches!(err, Error::TlsRequired { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("tokio_postgres_config()"), "{message}");
        assert!(message.contains("sslmode=require"), "{message}");
        assert!(!message.contains("p%40ss"), "{message}");
    }

    #[test]
    fn malformed_escapes_in_the_password_are_kept() {
        let url = DbUrl::parse("test", "postgres://app:a%zz%4+%41%62@127.0.0.1:6432/orders")
            .unwrap()
            .on_stack(false);
        let config = config(&url, &url.connect_options(), Duration::from_secs(3));
        assert_eq!(config.get_password(), Some(&b"a%zz%4+Ab"[..]));
    }
}
