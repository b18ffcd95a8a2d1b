//! A running (or dead) pair as Docker reports it: its containers' names,
//! where a joiner reaches it, what is wrong with it, its removal and
//! PgBouncer's log.

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{LogsOptionsBuilder, RemoveContainerOptions};
use bollard::Docker;

use crate::docker::client::{call_unless, within, BollardError};
use crate::docker::pair_env::{JoinEnv, ServerTls};
use crate::error::Result;

/// How long reading PgBouncer's log for an explanation may take.
const LOG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a running pair answers, as Docker reports it.
#[derive(Clone, Debug)]
pub(crate) struct PairInfo {
    pub direct_port: u16,
    pub pooled_port: u16,
    pub password: String,
    /// The stack's CA, for joiners (absent on images without TLS).
    pub ca_pem: Option<String>,
    /// The server certificate and key (absent on images without TLS).
    pub server_tls: Option<ServerTls>,
    /// The stack's memory budget in bytes, as its creator set it (absent on
    /// stacks made before budgets).
    pub memory_budget: Option<u64>,
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

/// Container `name`, `None` when there is none.
async fn inspect(docker: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>> {
    call_unless(
        &[404],
        &format!("inspect container {name}"),
        docker.inspect_container(name, None),
    )
    .await
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
    let state = |c: &Option<ContainerInspectResponse>| match c {
        None => "absent",
        Some(c) if running(c) => "running",
        Some(_) => "stopped",
    };
    match (pg?, pgb?) {
        (None, None) => Ok(PairState::Absent),
        (Some(pg), Some(pgb)) if running(&pg) && running(&pgb) => match info(&pg) {
            Some(info) => Ok(PairState::Running(info)),
            None => Ok(PairState::Broken(
                "its PostgreSQL container has no published ports or password".into(),
            )),
        },
        (pg, pgb) => Ok(PairState::Broken(format!(
            "PostgreSQL {}, PgBouncer {}",
            state(&pg),
            state(&pgb)
        ))),
    }
}

/// Where a joiner reaches the pair whose PostgreSQL container is `pg`.
fn info(pg: &ContainerInspectResponse) -> Option<PairInfo> {
    let env = JoinEnv::read(pg.config.as_ref()?.env.as_ref()?)?;
    let (direct_port, pooled_port) = match env.host_ports {
        // On this machine's network: the ports it was given.
        Some(ports) => ports,
        None => (
            published_port(pg, "5432/tcp")?,
            published_port(pg, "6432/tcp")?,
        ),
    };
    Some(PairInfo {
        direct_port,
        pooled_port,
        password: env.password,
        ca_pem: env.ca_pem,
        server_tls: env.server_tls,
        memory_budget: env.memory_budget,
    })
}

/// The host port Docker published container port `key` (`5432/tcp`) on.
fn published_port(pg: &ContainerInspectResponse, key: &str) -> Option<u16> {
    pg.network_settings
        .as_ref()?
        .ports
        .as_ref()?
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
}

/// Removes one container now (force), logging rather than failing: clean-up.
pub(crate) async fn remove(docker: &Docker, name: &str) {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    // 404 and 409: gone already, or AutoRemove is removing it.
    let removed = call_unless(
        &[404, 409],
        &format!("remove container {name}"),
        docker.remove_container(name, Some(options)),
    )
    .await;
    if let Err(e) = removed {
        tracing::warn!(container = name, error = %e, "could not remove container");
    }
}

/// Removes both containers of stack `id`, PgBouncer first.
pub(crate) async fn remove_pair(docker: &Docker, id: &str) {
    remove(docker, &pgbouncer_name(id)).await;
    remove(docker, &postgres_name(id)).await;
}

/// PgBouncer's log lines of stack `id` since `since` (Unix seconds); what
/// came within 5 s, empty when the container or its log cannot be read
/// (explanations are best effort).
pub(crate) async fn pgbouncer_log_since(docker: &Docker, id: &str, since: i64) -> Vec<String> {
    use futures_util::StreamExt as _;
    let options = LogsOptionsBuilder::new()
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
        Ok::<(), BollardError>(())
    };
    let _ = within(LOG_TIMEOUT, "read PgBouncer's log", collect).await;
    lines
}
