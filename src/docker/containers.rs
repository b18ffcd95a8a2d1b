//! The pair of containers a stack runs, created straight through the Docker
//! API: PgBouncer joins PostgreSQL's network namespace (it reaches
//! PostgreSQL at 127.0.0.1, and no Docker network exists to leak) and its
//! PID namespace (it ends when PostgreSQL's container ends). Both are
//! created with AutoRemove: when PostgreSQL's watchdog stops it, both vanish.
//! Where they listen is `ports.rs`'s; what a joiner reads back, `pair.rs`'s.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, PortMap};
use bollard::query_parameters::CreateContainerOptions;
use bollard::Docker;

use crate::contract::{
    ENV_LEASE_GRACE_SECS, ENV_MAX_WARM_CLONES, ENV_PGBOUNCER_INI, ENV_REAP_AFTER_SECS,
    ENV_REQUIRE_TLS, PGBOUNCER_TMPFS, POSTGRES_DATABASES_TMPFS, POSTGRES_DATA_TMPFS,
    POSTGRES_TMPFS,
};
use crate::docker::client::{call, failed, status, within, CALL_TIMEOUT};
use crate::docker::images::ResolvedImages;
use crate::docker::labels::{labels_for, Kind};
use crate::docker::pair::pgbouncer_name;
use crate::docker::pair_env::SharedEnv;
use crate::error::Result;
use crate::target::settings::{Ports, StackSettings};

// What `stack` uses of the pair, by the paths it has always used.
pub(crate) use crate::docker::pair::{
    describe, pair_problem, pair_state, pgbouncer_log_since, postgres_name, remove_pair, PairInfo,
    PairState,
};
pub(crate) use crate::docker::pair_env::{Secrets, ServerTls, TlsPems};
pub(crate) use crate::docker::ports::{plan_listen, Listen};

/// Seconds a fresh PostgreSQL container waits for its first lease.
pub(crate) const LEASE_GRACE_SECS: u64 = 30;
/// How often, at most, a name still held by a container on its way out is
/// tried again (every 250 ms: 10 s in all).
const NAME_CONFLICT_RETRIES: u32 = 40;

/// How a container of the pair joins its network: Docker's network mode,
/// the ports it exposes and publishes.
struct Networking {
    mode: Option<String>,
    exposed_ports: Option<Vec<String>>,
    port_bindings: Option<PortMap>,
}

/// PostgreSQL's networking for `listen`: the host network, or the bridge
/// with both ports published on the host address `listen` names.
fn postgres_networking(listen: Listen) -> Networking {
    match listen {
        Listen::Host(_) => Networking {
            mode: Some("host".to_string()),
            exposed_ports: None,
            port_bindings: None,
        },
        Listen::Bridge(host_ip) => {
            let binding = || {
                Some(vec![PortBinding {
                    host_ip: Some(host_ip.to_string()),
                    host_port: Some(String::new()),
                }])
            };
            Networking {
                mode: None,
                exposed_ports: Some(vec!["5432/tcp".into(), "6432/tcp".into()]),
                port_bindings: Some(HashMap::from([
                    ("5432/tcp".to_string(), binding()),
                    ("6432/tcp".to_string(), binding()),
                ])),
            }
        }
    }
}

/// PostgreSQL's container: the shared environment, the watchdog's and
/// janitor's settings, and the network `listen` says.
fn postgres_body(
    id: &str,
    shared: bool,
    settings: &StackSettings,
    listen: Listen,
    image: String,
    env: &SharedEnv<'_>,
) -> ContainerCreateBody {
    let mut vars = env.vars();
    vars.extend([
        format!(
            "{ENV_REAP_AFTER_SECS}={}",
            settings.reap_after.as_secs().max(1)
        ),
        format!("{ENV_LEASE_GRACE_SECS}={LEASE_GRACE_SECS}"),
        format!("{ENV_MAX_WARM_CLONES}={}", settings.janitor_clones()),
        format!("{ENV_REQUIRE_TLS}={}", u8::from(settings.require_tls)),
    ]);
    let network = postgres_networking(listen);
    ContainerCreateBody {
        image: Some(image),
        env: Some(vars),
        labels: Some(labels_for(id, Kind::Postgres, shared)),
        exposed_ports: network.exposed_ports,
        host_config: Some(HostConfig {
            auto_remove: Some(true),
            network_mode: network.mode,
            port_bindings: network.port_bindings,
            tmpfs: Some(postgres_tmpfs(
                env.memory_budget,
                settings.memory_budget.is_some(),
            )),
            ..Default::default()
        }),
        // Passed on to `postgres` by the entrypoint: WAL stays a small,
        // bounded share of the budget (it lives on the tmpfs too).
        cmd: Some(
            ["-c", "max_wal_size=64MB", "-c", "min_wal_size=32MB"]
                .map(String::from)
                .to_vec(),
        ),
        ..Default::default()
    }
}

/// PostgreSQL's tmpfs mounts, sized from the stack's memory budget (a copy
/// or seed that would not fit fails with "no space left on device", the
/// host keeps its memory), the rest as [`private_tmpfs`]. With a budget
/// the user set (`own_databases`), the databases get a tmpfs of their own
/// beside the server's files (fixed size): a full one fails only its
/// statement, WAL keeps its room. Without, one tmpfs holds both: a clone
/// there costs ~40 % less (two tmpfs made each `CREATE DATABASE` ~8 -> ~13
/// ms, and ~4x under concurrent clones), and a seed larger than the
/// default budget, a quarter of the engine's memory, is rare.
fn postgres_tmpfs(memory_budget: u64, own_databases: bool) -> HashMap<String, String> {
    use crate::target::memory::{databases_tmpfs_bytes, SERVER_FILES};
    let mut mounts = private_tmpfs(&POSTGRES_TMPFS);
    let databases = databases_tmpfs_bytes(memory_budget);
    let sizes: &[(&str, u64)] = if own_databases {
        &[
            (POSTGRES_DATA_TMPFS, SERVER_FILES),
            (POSTGRES_DATABASES_TMPFS, databases),
        ]
    } else {
        // No databases' mount: the entrypoint keeps `base/` in the data directory.
        mounts.remove(POSTGRES_DATABASES_TMPFS);
        &[(POSTGRES_DATA_TMPFS, SERVER_FILES + databases)]
    };
    for (path, bytes) in sizes {
        mounts.insert(path.to_string(), format!("mode=1777,size={bytes}"));
    }
    mounts
}

/// PgBouncer's container, in the namespaces of PostgreSQL's (`pg`).
fn pgbouncer_body(
    id: &str,
    shared: bool,
    settings: &StackSettings,
    ports: &Ports,
    image: String,
    env: &SharedEnv<'_>,
) -> ContainerCreateBody {
    let pg = postgres_name(id);
    let mut vars = env.vars();
    vars.push(format!(
        "{ENV_PGBOUNCER_INI}={}",
        settings.pgbouncer_ini_at("127.0.0.1", ports)
    ));
    ContainerCreateBody {
        image: Some(image),
        env: Some(vars),
        labels: Some(labels_for(id, Kind::Pgbouncer, shared)),
        host_config: Some(HostConfig {
            auto_remove: Some(true),
            network_mode: Some(format!("container:{pg}")),
            // Its PID namespace too: when PostgreSQL's container ends, the
            // kernel ends PgBouncer's at once (no watchdog polling needed).
            pid_mode: Some(format!("container:{pg}")),
            tmpfs: Some(private_tmpfs(&PGBOUNCER_TMPFS)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts both containers (not waiting for readiness).
// What a pair is made of, each its own kind of value: bundling them would
// only rename the list.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_pair(
    docker: &Docker,
    id: &str,
    shared: bool,
    settings: &StackSettings,
    listen: Listen,
    images: &ResolvedImages,
    secrets: &Secrets<'_>,
    memory_budget: u64,
) -> Result<()> {
    let ports = match listen {
        Listen::Host(ports) => ports,
        Listen::Bridge(_) => Ports::BRIDGE,
    };
    let env = SharedEnv {
        secrets,
        host_ports: matches!(listen, Listen::Host(_)).then_some(ports),
        memory_budget,
    };
    let postgres = postgres_body(
        id,
        shared,
        settings,
        listen,
        images.postgres.to_string(),
        &env,
    );
    let pgbouncer = pgbouncer_body(
        id,
        shared,
        settings,
        &ports,
        images.pgbouncer.to_string(),
        &env,
    );
    let (pg, pgb) = (postgres_name(id), pgbouncer_name(id));
    create(docker, &pg, postgres).await?;
    // PgBouncer's container is made while PostgreSQL's starts: it needs
    // PostgreSQL's to exist, not to run (~25 ms sooner).
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

/// Creates container `name`. A container of that name may still be on its
/// way out (AutoRemove of a dead stack runs concurrently): a name conflict
/// is retried for a while, never resolved by removing it (it could be a
/// live stack made by another user or machine sharing this Docker engine).
async fn create(docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<()> {
    let options = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let action = format!("create container {name}");
    let mut attempts = 0;
    loop {
        let made = docker.create_container(Some(options.clone()), body.clone());
        match within(CALL_TIMEOUT, &action, made).await? {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(409) && attempts < NAME_CONFLICT_RETRIES => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(failed(&action, e)),
        }
    }
}

/// Starts container `name`; the caller removes what it made if this fails.
async fn start(docker: &Docker, name: &str) -> Result<()> {
    call(
        &format!("start container {name}"),
        docker.start_container(name, None),
    )
    .await
}
