//! The pair of containers a stack runs, created straight through the Docker
//! API: PgBouncer joins PostgreSQL's network namespace (it reaches
//! PostgreSQL at 127.0.0.1, and no Docker network exists to leak) and its
//! PID namespace (it ends when PostgreSQL's container ends). Both are
//! created with AutoRemove: when PostgreSQL's watchdog stops it, both vanish.
//!
//! That namespace is this machine's own when the engine shares it
//! ([`Listen::Host`]: both servers listen on 127.0.0.1, on ports picked
//! here; no `docker-proxy` in the way of every connection), else Docker's
//! bridge, where PostgreSQL's container publishes both ports
//! ([`Listen::Bridge`]).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;

use crate::docker::images::ResolvedImages;
use crate::docker::{self, Kind};
use crate::error::{Error, Result};
use crate::target::settings::{Network, Ports, StackSettings};

/// Seconds a fresh PostgreSQL container waits for its first lease.
pub(crate) const LEASE_GRACE_SECS: u64 = 30;

/// Where a running pair answers, as Docker reports it.
#[derive(Clone, Debug)]
pub(crate) struct PairInfo {
    pub direct_port: u16,
    pub pooled_port: u16,
    pub password: String,
    /// The stack's CA, for joiners (absent on images without TLS).
    pub ca_pem: Option<String>,
}

/// What a new pair is given: its password, the password's SCRAM verifier,
/// and its TLS certificate.
pub(crate) struct Secrets<'a> {
    pub password: &'a str,
    pub scram_verifier: &'a str,
    pub tls: &'a crate::stack::tls::TlsMaterial,
}

/// What Docker knows about a stack's pair.
#[derive(Debug)]
pub(crate) enum PairState {
    /// Neither container exists.
    Absent,
    /// Both run.
    Running(PairInfo),
    /// Something exists but not both running: a dead or half-made stack.
    Broken(String),
}

pub(crate) fn postgres_name(id: &str) -> String {
    format!("pgbf-{id}-postgres")
}

pub(crate) fn pgbouncer_name(id: &str) -> String {
    format!("pgbf-{id}-pgbouncer")
}

/// The host address the ports are published on: 127.0.0.1 when the engine
/// is local (`docker::engine_is_local`), unless the settings ask for every
/// interface; every interface (`""`: 0.0.0.0 and `::`) for a remote engine,
/// whose published ports this machine reaches through the engine's address.
pub(crate) fn publish_ip(settings: &StackSettings, engine_is_local: bool) -> &'static str {
    if settings.publish_all_interfaces || !engine_is_local {
        ""
    } else {
        "127.0.0.1"
    }
}

/// Where a new pair listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    /// On this machine's network, 127.0.0.1 only.
    Host(Ports),
    /// On Docker's bridge, ports published on this host address (`""`:
    /// every interface).
    Bridge(&'static str),
}

/// How a new pair of `settings` listens: on the host network when asked,
/// or by default when the engine shares this machine's network and its
/// published ports answer on 127.0.0.1; else on the bridge.
pub(crate) async fn plan_listen(docker: &Docker, settings: &StackSettings) -> Result<Listen> {
    // The engine the crate resolved (as testcontainers does), not only DOCKER_HOST.
    let engine = docker::engine().await?;
    let host = match settings.network {
        _ if settings.publish_all_interfaces => false,
        Network::Host => true,
        Network::Bridge => false,
        Network::Auto => {
            engine.published_host() == "127.0.0.1"
                && docker::shares_host_network(engine, docker).await
        }
    };
    Ok(if host {
        Listen::Host(free_ports()?)
    } else {
        Listen::Bridge(publish_ip(settings, engine.is_local()))
    })
}

/// Two ports free on 127.0.0.1 now, picked at random below the kernel's
/// ephemeral range (where no connection's local port, nor Docker's
/// published ports, come from), so that they are still free when the
/// servers bind them a moment later.
fn free_ports() -> Result<Ports> {
    use rand::Rng;
    let (low, high) = ephemeral_range();
    // 10,000 ports below the range, else above it; with no room on either
    // side (a range of nearly every port), the kernel's own pick.
    let range = if low >= 12_000 {
        Some(low - 10_000..low)
    } else if high <= 63_000 {
        Some(high + 1..65_535)
    } else {
        None
    };
    let mut rng = rand::thread_rng();
    // Both held at once, so that they differ; released on return.
    let mut held: Vec<(u16, std::net::TcpListener)> = Vec::new();
    for _ in 0..200 {
        let port = range.clone().map_or(0, |r| rng.gen_range(r));
        let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let Ok(bound) = listener.local_addr() else {
            continue;
        };
        held.push((bound.port(), listener));
        if let [(postgres, _), (pgbouncer, _)] = held[..] {
            return Ok(Ports {
                postgres,
                pgbouncer,
                listen_addr: "127.0.0.1",
            });
        }
    }
    Err(Error::Stack {
        reason: format!(
            "no two free ports found on 127.0.0.1 ({}) for the stack on the host \
             network; free some, or set PGBF_NETWORK=bridge",
            range.map_or("the kernel's pick".to_string(), |r| format!(
                "{}..{}",
                r.start, r.end
            ))
        ),
    })
}

/// The kernel's ephemeral port range (`ip_local_port_range`), Linux's
/// default when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Creates and starts both containers (not waiting for readiness).
pub(crate) async fn create_pair(
    docker: &Docker,
    id: &str,
    shared: bool,
    settings: &StackSettings,
    listen: Listen,
    images: &ResolvedImages,
    secrets: &Secrets<'_>,
) -> Result<()> {
    let Secrets {
        password,
        scram_verifier,
        tls,
    } = secrets;
    let pg = postgres_name(id);
    let binding = |host_ip: &str| {
        Some(vec![PortBinding {
            host_ip: Some(host_ip.to_string()),
            host_port: Some(String::new()),
        }])
    };
    let (ports, network_env, network_mode, exposed_ports, port_bindings) = match listen {
        Listen::Host(ports) => (
            ports,
            vec![
                "PGBF_NETWORK=host".to_string(),
                format!("PGBF_PORT={}", ports.postgres),
                format!("PGBF_POOLER_PORT={}", ports.pgbouncer),
                format!("PGBF_LISTEN_ADDR={}", ports.listen_addr),
            ],
            Some("host".to_string()),
            None,
            None,
        ),
        Listen::Bridge(host_ip) => (
            Ports::BRIDGE,
            Vec::new(),
            None,
            Some(vec!["5432/tcp".into(), "6432/tcp".into()]),
            Some(HashMap::from([
                ("5432/tcp".to_string(), binding(host_ip)),
                ("6432/tcp".to_string(), binding(host_ip)),
            ])),
        ),
    };
    let postgres = ContainerCreateBody {
        image: Some(images.postgres.to_string()),
        env: Some(
            [
                format!("POSTGRES_PASSWORD={password}"),
                format!("POSTGRES_PASSWORD_SCRAM={scram_verifier}"),
                format!(
                    "PGBF_REAP_AFTER_SECS={}",
                    settings.reap_after.as_secs().max(1)
                ),
                format!("PGBF_LEASE_GRACE_SECS={LEASE_GRACE_SECS}"),
                format!("PGBF_MAX_WARM_CLONES={}", settings.janitor_clones()),
                format!("PGBF_REQUIRE_TLS={}", u8::from(settings.require_tls)),
                format!("PGBF_TLS_CA={}", tls.ca_pem),
                format!("PGBF_TLS_CERT={}", tls.cert_pem),
                format!("PGBF_TLS_KEY={}", tls.key_pem),
            ]
            .into_iter()
            .chain(network_env.iter().cloned())
            .collect(),
        ),
        labels: Some(docker::labels_for(id, Kind::Postgres, shared)),
        exposed_ports,
        host_config: Some(HostConfig {
            auto_remove: Some(true),
            network_mode,
            port_bindings,
            tmpfs: Some(private_tmpfs(&["/pgdata", "/tmp"])),
            ..Default::default()
        }),
        ..Default::default()
    };
    create(docker, &pg, postgres).await?;
    let pgbouncer = ContainerCreateBody {
        image: Some(images.pgbouncer.to_string()),
        env: Some(
            [
                format!("POSTGRES_PASSWORD={password}"),
                format!("POSTGRES_PASSWORD_SCRAM={scram_verifier}"),
                format!(
                    "PGBF_PGBOUNCER_INI={}",
                    settings.pgbouncer_ini_at("127.0.0.1", &ports)
                ),
                format!("PGBF_TLS_CA={}", tls.ca_pem),
                format!("PGBF_TLS_CERT={}", tls.cert_pem),
                format!("PGBF_TLS_KEY={}", tls.key_pem),
            ]
            .into_iter()
            .chain(network_env)
            .collect(),
        ),
        labels: Some(docker::labels_for(id, Kind::Pgbouncer, shared)),
        host_config: Some(HostConfig {
            auto_remove: Some(true),
            network_mode: Some(format!("container:{pg}")),
            // Its PID namespace too: when PostgreSQL's container ends, the
            // kernel ends PgBouncer's at once (no watchdog polling needed).
            pid_mode: Some(format!("container:{pg}")),
            tmpfs: Some(private_tmpfs(&["/tmp"])),
            ..Default::default()
        }),
        ..Default::default()
    };
    // PgBouncer's container is made while PostgreSQL's starts: it needs
    // PostgreSQL's to exist, not to run (~25 ms sooner).
    let pgb = pgbouncer_name(id);
    let started = match tokio::join!(start(docker, &pg), create(docker, &pgb, pgbouncer)) {
        (Ok(()), Ok(())) => start(docker, &pgb).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if let Err(e) = started {
        remove_pair(docker, id).await;
        return Err(e);
    }
    Ok(())
}

/// Memory file systems at `paths`. Docker's storage driver may be a FUSE
/// file system (fuse-overlayfs, as on this project's CI machines), where
/// every file made, opened or checked costs a round trip to a userspace
/// daemon: the data directory, the server's socket, the lease mark (written
/// by every process that joins) and PgBouncer's files stay off it.
fn private_tmpfs(paths: &[&str]) -> HashMap<String, String> {
    paths
        .iter()
        .map(|p| (p.to_string(), "mode=1777".to_string()))
        .collect()
}

async fn create(docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<()> {
    let options = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    // A container of that name may still be on its way out (AutoRemove of a
    // dead stack runs concurrently): a name conflict is retried for a while,
    // never resolved by removing it (it could be a live stack made by another
    // user or machine sharing this Docker engine).
    let mut attempts = 0;
    loop {
        match tokio::time::timeout(
            docker::CALL_TIMEOUT,
            docker.create_container(Some(options.clone()), body.clone()),
        )
        .await
        {
            Ok(Ok(_)) => break,
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            })) if attempts < 40 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Err(e)) => {
                return Err(Error::Docker {
                    action: format!("create container {name}"),
                    reason: e.to_string(),
                })
            }
            Err(_) => return Err(docker::timeout(&format!("create container {name}"))),
        }
    }
    Ok(())
}

/// Starts container `name`; the caller removes what it made if this fails.
async fn start(docker: &Docker, name: &str) -> Result<()> {
    docker::call(
        &format!("start container {name}"),
        docker.start_container(name, None),
    )
    .await
}

async fn inspect(docker: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>> {
    match tokio::time::timeout(docker::CALL_TIMEOUT, docker.inspect_container(name, None)).await {
        Ok(Ok(c)) => Ok(Some(c)),
        Ok(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => Ok(None),
        Ok(Err(e)) => Err(Error::Docker {
            action: format!("inspect container {name}"),
            reason: e.to_string(),
        }),
        Err(_) => Err(docker::timeout(&format!("inspect container {name}"))),
    }
}

fn running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
        && !c.state.as_ref().and_then(|s| s.restarting).unwrap_or(false)
}

/// A short description of a container's state, for messages.
pub(crate) async fn describe(docker: &Docker, name: &str) -> String {
    match inspect(docker, name).await {
        Ok(None) => format!("container {name} is gone (killed, removed or reaped)"),
        Ok(Some(c)) => {
            let state = c.state.unwrap_or_default();
            format!(
                "container {name} is {} (exit code {})",
                state.status.map(|s| s.to_string()).unwrap_or_default(),
                state.exit_code.unwrap_or_default()
            )
        }
        Err(e) => format!("container {name}: {e}"),
    }
}

/// `None` when both containers of stack `id` run, else what is wrong with
/// each one that does not (gone, exited with a code ...).
pub(crate) async fn pair_problem(docker: &Docker, id: &str) -> Result<Option<String>> {
    let mut problems = Vec::new();
    for name in [postgres_name(id), pgbouncer_name(id)] {
        match inspect(docker, &name).await? {
            Some(c) if running(&c) => {}
            _ => problems.push(describe(docker, &name).await),
        }
    }
    Ok((!problems.is_empty()).then(|| problems.join("; ")))
}

/// Looks the pair of stack `id` up.
pub(crate) async fn pair_state(docker: &Docker, id: &str) -> Result<PairState> {
    let (pg_name, pgb_name) = (postgres_name(id), pgbouncer_name(id));
    let (pg, pgb) = tokio::join!(inspect(docker, &pg_name), inspect(docker, &pgb_name));
    let (pg, pgb) = (pg?, pgb?);
    match (pg, pgb) {
        (None, None) => Ok(PairState::Absent),
        (Some(pg), Some(pgb)) if running(&pg) && running(&pgb) => match info(&pg) {
            Some(info) => Ok(PairState::Running(info)),
            None => Ok(PairState::Broken(
                "its PostgreSQL container has no published ports or password".into(),
            )),
        },
        (pg, pgb) => Ok(PairState::Broken(format!(
            "PostgreSQL {}, PgBouncer {}",
            pg.as_ref()
                .map_or("absent", |c| if running(c) { "running" } else { "stopped" }),
            pgb.as_ref()
                .map_or("absent", |c| if running(c) { "running" } else { "stopped" }),
        ))),
    }
}

fn info(pg: &ContainerInspectResponse) -> Option<PairInfo> {
    let env = pg.config.as_ref()?.env.as_ref()?;
    let var = |name: &str| {
        env.iter()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let password = var("POSTGRES_PASSWORD")?;
    let ca_pem = var("PGBF_TLS_CA");
    if var("PGBF_NETWORK").as_deref() == Some("host") {
        // On this machine's network: the ports it was given.
        return Some(PairInfo {
            direct_port: var("PGBF_PORT")?.parse().ok()?,
            pooled_port: var("PGBF_POOLER_PORT")?.parse().ok()?,
            password,
            ca_pem,
        });
    }
    let ports = pg.network_settings.as_ref()?.ports.as_ref()?;
    let port = |key: &str| -> Option<u16> {
        ports
            .get(key)?
            .as_ref()?
            .iter()
            // Where this machine connects (`Engine::published_host`, an IPv4
            // address): the loopback binding of a local engine, else the
            // IPv4 wildcard; an IPv6 binding may carry another port.
            .max_by_key(|b| match b.host_ip.as_deref() {
                Some("127.0.0.1") => 3,
                Some("0.0.0.0") => 2,
                Some(ip) if ip.contains(':') => 0,
                _ => 1,
            })?
            .host_port
            .as_deref()?
            .parse()
            .ok()
    };
    Some(PairInfo {
        direct_port: port("5432/tcp")?,
        pooled_port: port("6432/tcp")?,
        password,
        ca_pem,
    })
}

/// Removes one container now (force), logging rather than failing: clean-up.
pub(crate) async fn remove(docker: &Docker, name: &str) {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match tokio::time::timeout(
        Duration::from_secs(30),
        docker.remove_container(name, Some(options)),
    )
    .await
    {
        Ok(Ok(())) => {}
        // Gone already, or AutoRemove is removing it.
        Ok(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        })) => {}
        Ok(Err(e)) => tracing::warn!(container = name, error = %e, "could not remove container"),
        Err(_) => tracing::warn!(container = name, "removing the container timed out"),
    }
}

/// Removes both containers of stack `id`, PgBouncer first.
pub(crate) async fn remove_pair(docker: &Docker, id: &str) {
    remove(docker, &pgbouncer_name(id)).await;
    remove(docker, &postgres_name(id)).await;
}

/// PgBouncer's log lines of stack `id` since `since` (Unix seconds); empty
/// when the container or its log cannot be read (explanations are best effort).
pub(crate) async fn pgbouncer_log_since(docker: &Docker, id: &str, since: i64) -> Vec<String> {
    use futures_util::StreamExt as _;
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .since(i32::try_from(since).unwrap_or(0))
        .build();
    let mut stream = docker.logs(&pgbouncer_name(id), Some(options));
    let mut lines = Vec::new();
    let collect = async {
        while let Some(Ok(chunk)) = stream.next().await {
            lines.extend(
                String::from_utf8_lossy(&chunk.into_bytes())
                    .lines()
                    .map(str::to_string),
            );
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), collect).await;
    lines
}

#[cfg(test)]
mod tests {
    use super::{ephemeral_range, free_ports, publish_ip};
    use crate::docker::engine_is_local;
    use crate::target::settings::{Network, StackSettings};

    #[test]
    fn host_network_ports_are_two_free_loopback_ports_below_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        for _ in 0..20 {
            let ports = free_ports().unwrap();
            assert_ne!(ports.postgres, ports.pgbouncer);
            assert_eq!(ports.listen_addr, "127.0.0.1");
            for port in [ports.postgres, ports.pgbouncer] {
                // Outside the ephemeral range, where it has room.
                if low >= 12_000 || high <= 63_000 {
                    assert!(!(low..=high).contains(&port), "{port} in {low}..={high}");
                }
                // Free: released again, a server can bind it.
                std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            }
        }
    }

    #[test]
    fn the_network_setting_parses_and_names_the_variable_when_wrong() {
        assert_eq!("host".parse::<Network>().unwrap(), Network::Host);
        assert_eq!(" Bridge ".parse::<Network>().unwrap(), Network::Bridge);
        assert_eq!("auto".parse::<Network>().unwrap(), Network::Auto);
        let e = "hostt".parse::<Network>().unwrap_err().to_string();
        assert!(
            e.contains("PGBF_NETWORK") && e.contains("host or bridge"),
            "{e}"
        );
        // The default keeps the stack's key; a forced network changes it.
        let default = StackSettings::default();
        assert_eq!(
            default.clone().with_network(Network::Auto).key(),
            default.key()
        );
        assert_ne!(
            default.clone().with_network(Network::Bridge).key(),
            default.key()
        );
    }

    #[test]
    fn ports_are_private_unless_the_engine_is_remote_or_the_settings_ask() {
        let default = StackSettings::default();
        let all = StackSettings::default().with_publish_all_interfaces(true);
        for local in [
            "",
            "unix:///var/run/docker.sock",
            "unix:///home/me/.docker/run/docker.sock",
            "/var/run/docker.sock",
            "npipe:////./pipe/docker_engine",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2375",
        ] {
            assert_eq!(
                publish_ip(&default, engine_is_local(local)),
                "127.0.0.1",
                "{local}"
            );
            assert_eq!(publish_ip(&all, engine_is_local(local)), "", "{local}");
        }
        for remote in [
            "tcp://10.0.0.5:2376",
            "tcp://[::1]:2375",
            "tcp://127.0.0.2:2375",
            "tcp://docker.example:2375",
            "https://docker.example:2376",
            "ssh://me@docker.example",
            "not a url",
        ] {
            assert_eq!(
                publish_ip(&default, engine_is_local(remote)),
                "",
                "{remote}"
            );
            assert_eq!(publish_ip(&all, engine_is_local(remote)), "", "{remote}");
        }
    }
}
