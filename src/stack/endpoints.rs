//! How to reach a stack: the host its ports are published on, the ports,
//! the credentials and its certificate authority.

use std::fmt;

use crate::docker::containers::{PairInfo, ServerTls};
use crate::error::{Error, Result};
use crate::target::DbUrl;

/// The stack's superuser (as on Supabase).
pub const STACK_USER: &str = "postgres";

/// How to reach a stack: host, ports and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoints {
    host: String,
    pooled_port: u16,
    direct_port: u16,
    /// `postgres` through PgBouncer and straight on PostgreSQL: checked
    /// once, when the endpoints are made, so that the URL getters cannot fail.
    pooled: DbUrl,
    direct: DbUrl,
    ca_pem: Option<String>,
    server_tls: Option<ServerTls>,
    require_tls: bool,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints")
            .field("host", &self.host)
            .field("pooled_port", &self.pooled_port)
            .field("direct_port", &self.direct_port)
            .field("user", &STACK_USER)
            .field("password", &"***")
            .finish()
    }
}

impl Endpoints {
    /// The stack's superuser (as on Supabase): the user of every URL here.
    pub const USER: &'static str = STACK_USER;

    /// The endpoints of a running pair whose ports are published on `host`.
    /// The password is read back out of the container: one that makes no
    /// valid URL is a broken stack (an error, not a panic).
    pub(crate) fn of(info: &PairInfo, host: &str, require_tls: bool) -> Result<Endpoints> {
        if info.password.is_empty() || !info.password.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Stack {
                reason: "the stack's containers carry a password this crate did not make \
                         (not alphanumeric); remove them with `pgbouncer-fixtures gc`"
                    .into(),
            });
        }
        let url = |port: u16| {
            let raw = format!(
                "postgres://{STACK_USER}:{}@{host}:{port}/postgres",
                info.password
            );
            DbUrl::parse("the stack's endpoints", &raw).map(|url| url.on_stack(require_tls))
        };
        Ok(Endpoints {
            host: host.to_string(),
            pooled_port: info.pooled_port,
            direct_port: info.direct_port,
            pooled: url(info.pooled_port)?,
            direct: url(info.direct_port)?,
            ca_pem: info.ca_pem.clone(),
            server_tls: info.server_tls.clone(),
            require_tls,
        })
    }

    /// The stack's own certificate authority (PEM), which signed the
    /// certificate both ports serve: for `sslmode=verify-full` /
    /// `verify-ca` (sqlx: `PgConnectOptions::ssl_root_cert_from_pem`).
    /// `None` on images that do not serve TLS.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The certificate (and key) both ports serve: what the crate's
    /// Supavisor-like stage serves TLS with.
    pub(crate) fn server_tls(&self) -> Option<&ServerTls> {
        self.server_tls.as_ref()
    }

    /// Whether both ports refuse clients without TLS.
    pub fn requires_tls(&self) -> bool {
        self.require_tls
    }

    /// URL of `database` through PgBouncer.
    pub fn pooled_url(&self, database: &str) -> DbUrl {
        self.pooled.with_database(database)
    }

    /// URL of `database` straight on PostgreSQL.
    pub fn direct_url(&self, database: &str) -> DbUrl {
        self.direct.with_database(database)
    }

    /// URL of PgBouncer's admin console (`SHOW POOLS`, `SHOW DATABASES` ...).
    /// It speaks only the simple query protocol: use `sqlx::raw_sql`.
    pub fn console_url(&self) -> DbUrl {
        self.pooled.with_database("pgbouncer")
    }

    /// URL of PgBouncer's admin console.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `console_url()` (PgBouncer's console; the crate's admin connections go to PostgreSQL)"
    )]
    pub fn admin_url(&self) -> DbUrl {
        self.console_url()
    }

    /// The host the ports are published on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// PgBouncer's host port.
    pub fn pooled_port(&self) -> u16 {
        self.pooled_port
    }

    /// PostgreSQL's host port.
    pub fn direct_port(&self) -> u16 {
        self.direct_port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(password: &str) -> PairInfo {
        PairInfo {
            direct_port: 5432,
            pooled_port: 6432,
            password: password.into(),
            ca_pem: None,
            server_tls: None,
            memory_budget: None,
        }
    }

    #[test]
    fn urls_are_built_once_and_a_foreign_password_is_an_error() {
        let e = Endpoints::of(&info("abc123"), "127.0.0.1", false).unwrap();
        assert_eq!(
            e.pooled_url("db").expose(),
            "postgres://postgres:abc123@127.0.0.1:6432/db"
        );
        assert_eq!(e.direct_url("x").port(), 5432);
        assert_eq!(e.console_url().database(), "pgbouncer");
        for bad in ["", "a b", "p@ss/word"] {
            assert!(
                Endpoints::of(&info(bad), "127.0.0.1", false).is_err(),
                "{bad:?}"
            );
        }
    }
}
