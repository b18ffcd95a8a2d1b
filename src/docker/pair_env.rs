//! The environment both containers of a pair are given (the images'
//! contract: `docker/*-entrypoint.sh` read it; the names are `contract`'s),
//! and the part of it a joining process reads back from a running
//! PostgreSQL container: both ways in typed structs.

use crate::contract::{
    ENV_LISTEN_ADDR, ENV_MEMORY_BUDGET, ENV_NETWORK, ENV_PASSWORD, ENV_PASSWORD_SCRAM,
    ENV_POOLER_PORT, ENV_PORT, ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY,
};
use crate::target::settings::Ports;

/// A stack's certificate material, PEM-encoded: what its containers write
/// to their TLS files (made by `stack::tls`).
#[derive(Clone)]
pub(crate) struct TlsPems {
    /// The stack's own CA: what `sslmode=verify-full` checks against.
    pub ca_pem: String,
    /// The server certificate (PostgreSQL and PgBouncer share it).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// What a new pair is given: its password, the password's SCRAM verifier,
/// and its TLS certificate.
pub(crate) struct Secrets<'a> {
    pub password: &'a str,
    pub scram_verifier: &'a str,
    pub tls: &'a TlsPems,
}

/// What both containers of a new pair find in their environment.
pub(crate) struct SharedEnv<'a> {
    pub secrets: &'a Secrets<'a>,
    /// On this machine's network: the ports both listen on; `None` on the bridge.
    pub host_ports: Option<Ports>,
    /// The stack's memory budget in bytes.
    pub memory_budget: u64,
}

impl SharedEnv<'_> {
    /// `NAME=value` entries, as Docker takes them.
    pub(crate) fn vars(&self) -> Vec<String> {
        let Secrets {
            password,
            scram_verifier,
            tls,
        } = self.secrets;
        let mut vars = vec![
            format!("{ENV_PASSWORD}={password}"),
            format!("{ENV_PASSWORD_SCRAM}={scram_verifier}"),
            format!("{ENV_TLS_CA}={}", tls.ca_pem),
            format!("{ENV_TLS_CERT}={}", tls.cert_pem),
            format!("{ENV_TLS_KEY}={}", tls.key_pem),
            format!("{ENV_MEMORY_BUDGET}={}", self.memory_budget),
        ];
        if let Some(ports) = self.host_ports {
            vars.extend([
                format!("{ENV_NETWORK}=host"),
                format!("{ENV_PORT}={}", ports.postgres),
                format!("{ENV_POOLER_PORT}={}", ports.pgbouncer),
                format!("{ENV_LISTEN_ADDR}={}", ports.listen_addr),
            ]);
        }
        vars
    }
}

/// The server certificate and its key, PEM-encoded, as a joiner reads them
/// back: what the crate's Supavisor-like stage serves TLS with (the
/// certificate the stack's ports serve, signed by the stack's CA).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// What a joining process reads back from a running PostgreSQL container's
/// environment ([`SharedEnv`] wrote it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JoinEnv {
    pub password: String,
    /// The stack's CA (absent on images without TLS).
    pub ca_pem: Option<String>,
    /// The server certificate and key (absent on images without TLS).
    pub server_tls: Option<ServerTls>,
    /// `(direct, pooled)` on this machine's network; `None` on the bridge,
    /// where Docker says which ports it published.
    pub host_ports: Option<(u16, u16)>,
    /// The stack's memory budget in bytes (absent on stacks made before
    /// budgets, or on images started by hand).
    pub memory_budget: Option<u64>,
}

impl JoinEnv {
    /// `None` when the password, or on the host network a port, is missing
    /// or not a port.
    pub(crate) fn read(env: &[String]) -> Option<JoinEnv> {
        let var = |name: &str| {
            env.iter()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let host_ports = match var(ENV_NETWORK).as_deref() {
            Some("host") => Some((
                var(ENV_PORT)?.parse().ok()?,
                var(ENV_POOLER_PORT)?.parse().ok()?,
            )),
            _ => None,
        };
        Some(JoinEnv {
            password: var(ENV_PASSWORD)?,
            ca_pem: var(ENV_TLS_CA),
            server_tls: var(ENV_TLS_CERT)
                .zip(var(ENV_TLS_KEY))
                .map(|(cert_pem, key_pem)| ServerTls { cert_pem, key_pem }),
            host_ports,
            memory_budget: var(ENV_MEMORY_BUDGET).and_then(|b| b.parse().ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joiner_reads_back_what_a_new_pair_was_given() {
        let tls = TlsPems {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let ports = Ports {
            postgres: 20001,
            pgbouncer: 20002,
            listen_addr: "127.0.0.1",
        };
        for host_ports in [Some(ports), None] {
            let secrets = Secrets {
                password: "pw=with=equals",
                scram_verifier: "SCRAM-SHA-256$4096:x",
                tls: &tls,
            };
            let shared = SharedEnv {
                secrets: &secrets,
                host_ports,
                memory_budget: 1 << 30,
            };
            // A variable whose name starts like another's is not taken for it.
            let mut vars = vec![format!("{ENV_PASSWORD_SCRAM}_X=no")];
            vars.extend(shared.vars());
            assert_eq!(
                JoinEnv::read(&vars),
                Some(JoinEnv {
                    password: "pw=with=equals".into(),
                    ca_pem: Some("CA".into()),
                    server_tls: Some(ServerTls {
                        cert_pem: "CERT".into(),
                        key_pem: "KEY".into(),
                    }),
                    host_ports: host_ports.map(|p| (p.postgres, p.pgbouncer)),
                    memory_budget: Some(1 << 30),
                })
            );
        }
        let host = format!("{ENV_NETWORK}=host");
        assert_eq!(JoinEnv::read(std::slice::from_ref(&host)), None);
        let bad_port = [format!("{ENV_PASSWORD}=p"), host, format!("{ENV_PORT}=x")];
        assert_eq!(JoinEnv::read(&bad_port), None);
    }
}
