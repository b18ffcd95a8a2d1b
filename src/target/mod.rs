//! Where tests run: the configuration decides between containers started by
//! the crate and an external server (`TEST_DATABASE_URL`).
//!
//! Owns: the environment and `.env` (`env`: the one reader of variables,
//! and redaction), the URL type [`DbUrl`] and its parsing, [`Target`], the
//! profiles (`profile`) and their knobs (`profile_settings`), a stack's
//! settings and sharing key (`settings`), its memory budget (`memory`)
//! and its `pgbouncer.ini` (`pgbouncer_ini`). May use: the layers below it (`contract`, `support`,
//! `error`); `docker::images` only until the image settings move here.

mod deprecated;
pub(crate) mod env;
pub(crate) mod images;
pub(crate) mod memory;
pub(crate) mod pgbouncer_ini;
pub(crate) mod postgres_version;
pub(crate) mod profile;
pub(crate) mod profile_settings;
pub(crate) mod settings;

use std::fmt;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::{Error, Result};
use crate::target::env::{redact, redact_value, Env};
use crate::target::settings::StackSettings;

/// Variable naming the pooled (transaction-mode) URL of an external target.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";
/// Variable naming the direct or session-mode URL of an external target.
pub const TEST_DIRECT_URL: &str = "TEST_DIRECT_URL";
/// Opt-in: on an external target, create and drop one database per test.
pub const PGBF_EXTERNAL_CREATE_DATABASES: &str = "PGBF_EXTERNAL_CREATE_DATABASES";

/// URL parameters that other drivers' recipes use and that sqlx silently
/// ignores, with what to do instead.
const IGNORED_BY_SQLX: &[(&str, &str)] = &[
    (
        "pgbouncer",
        "it is a Prisma parameter; sqlx ignores it. The crate's connect() already disables the \
         statement cache; for your own connections use \
         PgConnectOptions::statement_cache_capacity(0) or the URL key statement-cache-capacity=0",
    ),
    (
        "statement_cache_size",
        "it is an asyncpg parameter; sqlx ignores it. sqlx's key is statement-cache-capacity \
         (and capacity 0 alone does not stop named prepared statements: see docs/profiles.md)",
    ),
    (
        "prepared_statement_cache_size",
        "it is an asyncpg/SQLAlchemy parameter; sqlx ignores it. sqlx's key is \
         statement-cache-capacity (and capacity 0 alone does not stop named prepared \
         statements: see docs/profiles.md)",
    ),
];

/// A PostgreSQL URL whose password never shows: `Display` and `Debug` redact
/// it; [`DbUrl::expose`] gives the real string to hand to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    url: url::Url,
    /// On the crate's own stacks: whether they require TLS. Connections the
    /// crate opens there use plain TCP (TLS when required) unless the URL
    /// names an `sslmode`; elsewhere sqlx's default (`prefer`) applies.
    stack_tls: Option<bool>,
}

impl DbUrl {
    /// Parses and checks a URL; `source_name` (e.g. `TEST_DATABASE_URL`) is
    /// named in the error.
    pub fn parse(source_name: &str, raw: &str) -> Result<DbUrl> {
        let invalid = |part: &'static str, problem: String| Error::InvalidUrl {
            source_name: source_name.to_string(),
            url: redact_value(raw),
            part,
            problem,
        };
        let url = url::Url::parse(raw.trim()).map_err(|e| {
            let part = match e {
                url::ParseError::InvalidPort => "port",
                url::ParseError::EmptyHost
                | url::ParseError::InvalidIpv4Address
                | url::ParseError::InvalidIpv6Address
                | url::ParseError::InvalidDomainCharacter => "host",
                url::ParseError::RelativeUrlWithoutBase => "scheme",
                _ => "syntax",
            };
            invalid(
                part,
                format!(
                    "cannot be parsed ({e}); expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
                ),
            )
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(
                "scheme",
                format!("is `{}`; use postgres:// or postgresql://", url.scheme()),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                "host",
                "is missing; e.g. postgres://user:pass@localhost:6432/db".into(),
            ));
        }
        if url.username().is_empty() {
            return Err(invalid(
                "user",
                "is missing; e.g. postgres://postgres:pass@host:6543/postgres".into(),
            ));
        }
        let db = url.path().trim_start_matches('/');
        if db.contains('/') {
            return Err(invalid(
                "database",
                // Not echoed: in a mangled URL the path may hold the password.
                "contains a `/`; the path must be one database name".to_string(),
            ));
        }
        // Let sqlx judge the parameters it knows (sslmode values and so on).
        PgConnectOptions::from_str(url.as_str()).map_err(|e| {
            invalid(
                "parameter",
                format!("is rejected by sqlx: {}", redact(&e.to_string())),
            )
        })?;
        Ok(DbUrl {
            url,
            stack_tls: None,
        })
    }

    /// Marks a URL of the crate's own stack (see `connect_options`).
    pub(crate) fn on_stack(mut self, require_tls: bool) -> DbUrl {
        self.stack_tls = Some(require_tls);
        self
    }

    /// The full URL, password included: for drivers, never for logs.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(self.url.as_str())
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> DbUrl {
        let mut url = self.url.clone();
        url.set_path(&format!("/{database}"));
        DbUrl {
            url,
            stack_tls: self.stack_tls,
        }
    }

    /// The same URL, another host and port (the crate's Supavisor-like stage).
    pub(crate) fn with_host_port(&self, host: &str, port: u16) -> DbUrl {
        let mut url = self.url.clone();
        // A host and port that parsed once parse again.
        let _ = url.set_host(Some(host));
        let _ = url.set_port(Some(port));
        DbUrl {
            url,
            stack_tls: self.stack_tls,
        }
    }

    /// The host (empty for none, which `parse` refuses), without the
    /// brackets of an IPv6 address.
    pub(crate) fn host(&self) -> &str {
        self.url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// User and password, `%XX` decoded (for the probes' own client).
    pub(crate) fn credentials(&self) -> (String, String) {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        (
            decode(self.url.username()),
            decode(self.url.password().unwrap_or_default()),
        )
    }

    /// The database named in the path (`postgres` when empty, as libpq does with user `postgres`).
    pub fn database(&self) -> String {
        let db = self.url.path().trim_start_matches('/');
        if db.is_empty() {
            self.url.username().to_string()
        } else {
            // As sqlx reads it: `%XX` decoded, `+` kept (a path, not a form).
            percent_encoding::percent_decode_str(db)
                .decode_utf8_lossy()
                .into_owned()
        }
    }

    /// Host and port, for messages.
    pub fn host_port(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or_default(),
            self.url.port().unwrap_or(5432)
        )
    }

    /// The port (5432 when the URL has none).
    pub fn port(&self) -> u16 {
        self.url.port().unwrap_or(5432)
    }

    /// sqlx options for this URL.
    ///
    /// On the crate's own stacks, without an `sslmode` in the URL, TLS is
    /// used only when the stack requires it: every stack offers TLS, and a
    /// handshake per test connection would cost time for nothing. Ask for it
    /// with `.ssl_mode(PgSslMode::Require)` (or `sslmode=require` in the URL).
    pub fn connect_options(&self) -> PgConnectOptions {
        // Checked in `parse`; every constructor goes through it.
        let options = PgConnectOptions::from_str(self.url.as_str())
            .unwrap_or_else(|_| PgConnectOptions::new());
        let names_sslmode = self
            .url
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("sslmode") || k.eq_ignore_ascii_case("ssl-mode"));
        match self.stack_tls {
            Some(required) if !names_sslmode => options.ssl_mode(if required {
                PgSslMode::Require
            } else {
                PgSslMode::Disable
            }),
            _ => options,
        }
    }

    /// Warnings about URL parameters that sqlx ignores although other
    /// drivers' recipes rely on them.
    pub fn ignored_parameter_warnings(&self) -> Vec<String> {
        self.url
            .query_pairs()
            .filter_map(|(k, v)| {
                IGNORED_BY_SQLX
                    .iter()
                    .find(|(name, _)| k.eq_ignore_ascii_case(name))
                    .map(|(name, advice)| {
                        format!("URL parameter `{name}={v}` has no effect: {advice}")
                    })
            })
            .collect()
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

/// An existing server to run tests against instead of containers.
#[derive(Clone, Debug)]
pub struct ExternalTarget {
    /// Where `connect()` goes: typically a transaction pooler (Supabase: port 6543).
    pub pooled: DbUrl,
    /// Direct or session-mode URL for migrations and admin work, if known.
    pub direct: Option<DbUrl>,
    /// Whether the user opted in to one database per test (created and dropped by the crate).
    pub create_databases: bool,
}

/// Where the fixtures run their tests.
#[derive(Clone, Debug)]
pub enum Target {
    /// Containers started (or joined) by the crate with these settings.
    Containers(StackSettings),
    /// A server that already exists; the crate starts nothing.
    External(ExternalTarget),
}

impl Target {
    /// Resolves the target from the process environment and `.env`.
    pub fn from_env() -> Result<Target> {
        Target::resolve(&Env::load()?)
    }

    /// Resolves the target from `env`: `TEST_DATABASE_URL` set means an
    /// external target; otherwise containers with settings from `PGBF_*`.
    pub fn resolve(env: &Env) -> Result<Target> {
        let Some(pooled) = env.get(TEST_DATABASE_URL) else {
            if env.get(TEST_DIRECT_URL).is_some() {
                tracing::warn!("TEST_DIRECT_URL is set without TEST_DATABASE_URL: it is ignored and containers are used");
            }
            return Ok(Target::Containers(StackSettings::from_env(env)?));
        };
        let pooled = DbUrl::parse(TEST_DATABASE_URL, pooled)?;
        let direct = env
            .get(TEST_DIRECT_URL)
            .map(|raw| DbUrl::parse(TEST_DIRECT_URL, raw))
            .transpose()?;
        let create_databases = env.flag(PGBF_EXTERNAL_CREATE_DATABASES)?;
        if create_databases && direct.is_none() {
            return Err(Error::DirectUrlRequired {
                feature:
                    "PGBF_EXTERNAL_CREATE_DATABASES (one database per test on an external server)",
            });
        }
        Ok(Target::External(ExternalTarget {
            pooled,
            direct,
            create_databases,
        }))
    }

    /// Warnings worth showing the user about this target (see [`DbUrl::ignored_parameter_warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        match self {
            Target::Containers(_) => Vec::new(),
            Target::External(ext) => {
                let mut w: Vec<String> = ext
                    .pooled
                    .ignored_parameter_warnings()
                    .into_iter()
                    .map(|m| format!("{TEST_DATABASE_URL}: {m}"))
                    .collect();
                if let Some(direct) = &ext.direct {
                    w.extend(
                        direct
                            .ignored_parameter_warnings()
                            .into_iter()
                            .map(|m| format!("{TEST_DIRECT_URL}: {m}")),
                    );
                }
                w
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_decoded_as_sqlx_decodes_it() {
        let url = DbUrl::parse("test", "postgres://app:pw@localhost/a%20b+c%zz").unwrap();
        assert_eq!(url.database(), "a b+c%zz");
        let options = url.connect_options();
        assert_eq!(options.get_database(), Some("a b+c%zz"));
    }
}
