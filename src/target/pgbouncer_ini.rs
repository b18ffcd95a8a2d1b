//! PgBouncer's side of a stack's settings: its `pool_mode` and the
//! `pgbouncer.ini` the crate writes for a stack (which the sharing key
//! hashes, so any knob that changes the file changes the key).

use std::fmt;

use crate::contract;
use crate::error::{Error, Result};
use crate::target::settings::StackSettings;

/// How PgBouncer hands server connections to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PoolMode {
    /// A server connection per transaction: Supabase's pooled port 6543.
    #[default]
    Transaction,
    /// A server connection per client session: Supabase's session pooler, port 5432.
    Session,
}

impl PoolMode {
    /// The value PgBouncer's `pool_mode` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PoolMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<PoolMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "transaction" => Ok(PoolMode::Transaction),
            "session" => Ok(PoolMode::Session),
            _ => Err(Error::InvalidEnv {
                var: "PGBF_POOL_MODE",
                value: crate::target::env::redact_value(s),
                expected: "transaction or session",
            }),
        }
    }
}

/// Where a stack's servers listen, inside their network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ports {
    /// PostgreSQL's port.
    pub postgres: u16,
    /// PgBouncer's port.
    pub pgbouncer: u16,
    /// The address both listen on: every interface of the container's own
    /// network (bridge), or this machine's loopback only (host network).
    pub listen_addr: &'static str,
}

impl Ports {
    /// The containers' own network namespace: the usual ports, published
    /// through Docker.
    pub(crate) const BRIDGE: Ports = Ports {
        postgres: 5432,
        pgbouncer: 6432,
        listen_addr: "0.0.0.0",
    };
}

impl StackSettings {
    /// The `pgbouncer.ini` for a stack whose Postgres answers at `pg_host:5432`
    /// (the crate's stacks: `127.0.0.1`, PgBouncer shares PostgreSQL's network).
    pub fn pgbouncer_ini(&self, pg_host: &str) -> String {
        self.pgbouncer_ini_at(pg_host, &Ports::BRIDGE)
    }

    /// [`pgbouncer_ini`](Self::pgbouncer_ini) for PostgreSQL at
    /// `pg_host:ports.postgres`, PgBouncer on `ports.listen_addr:ports.pgbouncer`.
    pub(crate) fn pgbouncer_ini_at(&self, pg_host: &str, ports: &Ports) -> String {
        format!(
            "\
;; Written by pgbouncer-fixtures.
[databases]
;; Every database name reaches the Postgres of this stack.
* = host={pg_host} port={pg_port}

[pgbouncer]
listen_addr = {listen_addr}
listen_port = {listen_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
admin_users = postgres
stats_users = postgres
pool_mode = {pool_mode}
max_prepared_statements = {mps}
default_pool_size = {pool_size}
max_client_conn = 2000
max_db_connections = 0
max_db_client_connections = {client_cap}
ignore_startup_parameters = {ignore}
track_extra_parameters = {track}
server_reset_query = DISCARD ALL
server_round_robin = {rr}
server_login_retry = 1
server_lifetime = 3600
;; PgBouncer's default: the janitor's warmed clones keep their idle server
;; connection until the next run claims them (one backend each, <= 128).
server_idle_timeout = 600
log_connections = 0
log_disconnections = 0
;; Forget pools of databases nobody uses (dropped test databases) soon.
autodb_idle_timeout = 10
;; TLS as Supabase serves it: offered to every client, required only when
;; asked; the entrypoint writes the stack's own certificate there.
client_tls_sslmode = {client_tls}
client_tls_cert_file = {tls_cert}
client_tls_key_file = {tls_key}
client_tls_ca_file = {tls_ca}
server_tls_sslmode = {server_tls}
server_tls_ca_file = {tls_ca}
",
            pg_port = ports.postgres,
            listen_addr = ports.listen_addr,
            listen_port = ports.pgbouncer,
            pool_mode = self.pool_mode,
            mps = self.max_prepared_statements,
            pool_size = self.default_pool_size,
            client_cap = self.max_db_client_connections,
            ignore = self.ignore_startup_parameters.join(","),
            track = self.track_extra_parameters.join(","),
            client_tls = if self.require_tls { "require" } else { "allow" },
            // PostgreSQL then accepts only TLS from outside its own socket.
            server_tls = if self.require_tls {
                "require"
            } else {
                "disable"
            },
            rr = u8::from(self.server_round_robin),
            // Where the PgBouncer container writes these files.
            userlist = contract::PGBOUNCER_USERLIST,
            tls_cert = contract::PGBOUNCER_TLS_CERT,
            tls_key = contract::PGBOUNCER_TLS_KEY,
            tls_ca = contract::PGBOUNCER_TLS_CA,
        )
    }
}
