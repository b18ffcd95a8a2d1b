//! The crate's one error type. Every message says what went wrong and what to
//! change; none of them ever carries a password (URLs are redacted first).

use std::time::Duration;

/// Everything that can go wrong while resolving a target, starting a stack,
/// creating a test database or connecting to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Docker engine could not be reached. The engine is found as
    /// testcontainers finds it (docs/troubleshooting.md, "Which Docker engine"); the
    /// message lists every place looked at and what was found there.
    #[error(
        "Docker is unreachable at {tried}: {reason}. {fix}.\nWhere the crate looked for Docker, \
         in testcontainers' order (the first place set or present is used; it does not fall \
         through to the next):\n{looked}"
    )]
    DockerUnreachable {
        /// The address that was tried, and where it came from.
        tried: String,
        /// What the Docker client reported.
        reason: String,
        /// Every place looked at, one per line, with what was found there.
        looked: String,
        /// What to change.
        fix: String,
    },

    /// A Docker operation other than connecting failed.
    #[error("Docker failed to {action}: {reason}")]
    Docker {
        /// What the crate was doing.
        action: String,
        /// What Docker reported.
        reason: String,
    },

    /// An image the stack needs is missing and could not be built.
    #[error("image {image} is missing and could not be made: {reason}. {fix}")]
    ImageUnavailable {
        /// The image that was wanted.
        image: String,
        /// Why it could not be built or found.
        reason: String,
        /// What to do about it.
        fix: String,
    },

    /// A database URL (from the environment or given by the caller) is malformed.
    #[error("{source_name} is not a usable PostgreSQL URL ({url}): the {part} {problem}")]
    InvalidUrl {
        /// Where the URL came from, e.g. `TEST_DATABASE_URL`.
        source_name: String,
        /// The URL with its password redacted.
        url: String,
        /// Which part is wrong (scheme, host, port, user, database, parameter ...).
        part: &'static str,
        /// What is wrong with it and how to fix it.
        problem: String,
    },

    /// An environment variable of the crate has a value it cannot use.
    #[error("{var}={value:?} is invalid: expected {expected}")]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// The value found.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },

    /// The pooler (or the direct endpoint) refused or dropped the TCP connection.
    #[error(
        "cannot reach the {endpoint_kind} at {url}: {reason}. Check that the server is running and \
         that host and port are right{hint}"
    )]
    Unreachable {
        /// `pooler` or `direct endpoint`.
        endpoint_kind: &'static str,
        /// The URL with its password redacted.
        url: String,
        /// What the driver reported.
        reason: String,
        /// Extra advice, possibly empty.
        hint: String,
    },

    /// An operation did not finish in time.
    #[error("timed out after {after:?} while {what}: {hint}")]
    Timeout {
        /// What the crate was waiting for.
        what: String,
        /// How long it waited.
        after: Duration,
        /// What to check or which variable raises the limit.
        hint: String,
    },

    /// The server answered the login with an error (authentication, startup parameters ...).
    #[error("the {endpoint_kind} at {url} refused the connection: {reason}{hint}")]
    ConnectRefused {
        /// `pooler` or `direct endpoint`.
        endpoint_kind: &'static str,
        /// The URL with its password redacted.
        url: String,
        /// The server's message.
        reason: String,
        /// What to change, possibly empty.
        hint: String,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
    },

    /// A feature needs the direct (unpooled) endpoint, which the external target lacks.
    #[error(
        "{feature} needs a direct connection to PostgreSQL, but only TEST_DATABASE_URL is set. \
         Set TEST_DIRECT_URL to the direct or session-mode URL (on Supabase: the direct \
         connection or the session pooler on port 5432)"
    )]
    DirectUrlRequired {
        /// The feature that was asked for.
        feature: &'static str,
    },

    /// A template database could not be built.
    #[error("the template database could not be built: {reason}")]
    Template {
        /// What failed, naming the migration or seed file.
        reason: String,
    },

    /// The database lacks a piece of Supabase's shape a call needs (the
    /// Data API's roles, `auth.users`, or the image's Supabase-shaped base).
    #[error("not a Supabase-shaped database: {reason} (see docs/supabase.md)")]
    NotSupabaseShaped {
        /// What is missing, and the way to get it.
        reason: String,
    },

    /// The stack's memory budget cannot hold what the tests need: a template
    /// too large for it (itself and one clone per test running at once), a
    /// template build or clone that filled the stack's databases' tmpfs
    /// (sized from the budget), or a test that found no room for its clone
    /// within 30 s.
    #[error(
        "the stack's memory budget is too small: {reason}. Raise PGBF_MEMORY_BUDGET (or \
         StackSettings::with_memory_budget) to at least {needed_mb} MB plus ~448 MB for the \
         server, or shrink the template's seed data",
        needed_mb = *needed_bytes >> 20
    )]
    MemoryBudget {
        /// The template being cloned.
        template: String,
        /// Its size (`pg_database_size`), in bytes.
        template_bytes: u64,
        /// The bytes of databases the tests needed.
        needed_bytes: u64,
        /// The stack's budget, in bytes.
        budget_bytes: u64,
        /// What did not fit, with the sizes.
        reason: String,
    },

    /// The stack's containers stopped or could not be started.
    #[error("the test stack failed: {reason}")]
    Stack {
        /// What happened.
        reason: String,
    },

    /// The crate's Supavisor-like front stage (profiles
    /// `supabase-shared-prepared`, `supabase-session`) could not start or
    /// cannot serve.
    #[error(
        "the Supavisor-like stage (profiles supabase-shared-prepared, supabase-session) failed: \
         {reason}. The \
         stage is a proxy in this process on 127.0.0.1 in front of the stack's PgBouncer \
         (docs/profiles.md); let the process listen on 127.0.0.1, or run behind another profile \
         (supabase-shared, supabase-dedicated)"
    )]
    Stage {
        /// What happened.
        reason: String,
    },

    /// The stack's PostgreSQL went away under the run (killed, removed, crashed).
    #[error(
        "the test stack {stack} died: {reason}. Tests of this process cannot use it any more; \
         the next TestDb (or the next run) starts a fresh stack. If you did not stop it, see \
         `docker events --filter label=pgbouncer-fixtures.stack={stack}`"
    )]
    StackDied {
        /// The stack's id (its `pgbouncer-fixtures.stack` label).
        stack: String,
        /// What is known about its end.
        reason: String,
    },

    /// A tokio-postgres connection was asked for where TLS is required; the
    /// crate's tokio-postgres connections are plain TCP (`NoTls`).
    #[cfg(feature = "tokio-postgres")]
    #[error(
        "the {endpoint_kind} at {url} requires TLS ({why}), and the crate's tokio-postgres \
         connections are plain TCP (tokio_postgres::NoTls). Build the client yourself from \
         TestDb::tokio_postgres_config() with a TLS connector (tokio-postgres-rustls or \
         postgres-native-tls; on the crate's stacks trust TestDb::ca_cert_pem()), or run these \
         tests on a stack that offers TLS without requiring it (the default: no \
         StackSettings::with_require_tls(true), no PGBF_REQUIRE_TLS=1)"
    )]
    TlsRequired {
        /// `pooler` or `direct endpoint`.
        endpoint_kind: &'static str,
        /// The URL with its password redacted.
        url: String,
        /// Why TLS is required (the stack's setting or the URL's `sslmode`).
        why: &'static str,
    },

    /// A SQL statement the crate runs for itself (create/drop database ...) failed.
    #[error("{action} failed: {source}")]
    Sql {
        /// What the crate was doing.
        action: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    /// The same error again, for the places that must report one error
    /// twice (sqlx errors cannot be cloned: they are kept as text).
    pub(crate) fn again(&self) -> Error {
        match self {
            Error::StackDied { stack, reason } => Error::StackDied {
                stack: stack.clone(),
                reason: reason.clone(),
            },
            other => Error::Stack {
                reason: other.to_string(),
            },
        }
    }
}

/// A `map_err` that turns an sqlx error into [`Error::Sql`], saying what
/// was being done (the text is made only on failure).
pub(crate) fn sql_error<A: Into<String>>(action: A) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Sql {
        action: action.into(),
        source,
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
