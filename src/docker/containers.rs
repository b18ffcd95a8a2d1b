//! The pair of containers a stack runs, created straight through the Docker
//! API: PgBouncer joins PostgreSQL's network namespace (it reaches
//! PostgreSQL at 127.0.0.1, and no Docker network exists to leak) and its
//! PID namespace (it ends when PostgreSQL's container ends). Both are
//! created with AutoRemove: when PostgreSQL's watchdog stops it, both vanish.
//! Where they listen is `ports.rs`'s; what a joiner reads back, `pair.rs`'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, PortBinding, PortMap,
};
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
use crate::error::{Error, Result};
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
/// The option that lets the kernel back the data directory's files with
/// large folios: on Linux 6.18, 64 KB for the 64 KB writes of PostgreSQL's
/// file copy, which made a 180 MB `CREATE DATABASE` ~110 -> ~65 ms (one
/// 4 KB page allocated per 4 KB was most of it). `within_size`, not
/// `always`: no huge page past a file's end, so the ~300 small files of a
/// database take no more room than before. A kernel whose tmpfs backs
/// appending writes with 4 KB pages only copies as before.
const LARGE_FOLIOS: &str = "huge=within_size";
/// Whether PostgreSQL's data mounts ask for [`LARGE_FOLIOS`]: cleared for
/// the process once an engine refused such a mount.
static ASK_LARGE_FOLIOS: AtomicBool = AtomicBool::new(true);

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
    large_folios: bool,
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
    let tmpfs = postgres_tmpfs(env.memory_budget, settings.memory_budget.is_some());
    let labels = labels_for(id, Kind::Postgres, shared);
    let (tmpfs, mounts) = match large_folios {
        true => data_volumes(tmpfs, &labels),
        false => (tmpfs, Vec::new()),
    };
    ContainerCreateBody {
        image: Some(image),
        env: Some(vars),
        labels: Some(labels),
        exposed_ports: network.exposed_ports,
        host_config: Some(HostConfig {
            auto_remove: Some(true),
            network_mode: network.mode,
            port_bindings: network.port_bindings,
            tmpfs: Some(tmpfs),
            mounts: (!mounts.is_empty()).then_some(mounts),
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

/// The data directory's tmpfs mounts of `tmpfs` turned into tmpfs volumes
/// of the engine's `local` driver with [`LARGE_FOLIOS`] (same size and
/// mode, labelled as the container: `gc` finds one left behind). Why
/// volumes: Docker refuses `huge=` among a container's tmpfs options, and
/// a mount's own tmpfs options need API 1.46; the local driver hands its
/// options to mount(2) as they are. Anonymous: AutoRemove and `docker rm
/// -v` remove them with the container.
fn data_volumes(
    mut tmpfs: HashMap<String, String>,
    labels: &HashMap<String, String>,
) -> (HashMap<String, String>, Vec<Mount>) {
    let mut mounts = Vec::new();
    for path in [POSTGRES_DATA_TMPFS, POSTGRES_DATABASES_TMPFS] {
        let Some(options) = tmpfs.remove(path) else {
            continue;
        };
        let driver_options = HashMap::from([
            ("type".to_string(), "tmpfs".to_string()),
            ("device".to_string(), "tmpfs".to_string()),
            (
                "o".to_string(),
                format!("{options},{LARGE_FOLIOS},nosuid,nodev,noexec"),
            ),
        ]);
        mounts.push(Mount {
            target: Some(path.to_string()),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(labels.clone()),
                driver_config: Some(MountVolumeOptionsDriverConfig {
                    name: Some("local".to_string()),
                    options: Some(driver_options),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    (tmpfs, mounts)
}

/// Whether `error` is an engine refusing the data volumes' mount (a kernel
/// without `huge=`, an engine whose local driver takes no tmpfs): the pair
/// is then made with plain tmpfs mounts.
fn refused_data_volumes(error: &Error) -> bool {
    let Error::Docker { reason, .. } = error else {
        return false;
    };
    ["mounting volume", "mount local volume", "huge="]
        .iter()
        .any(|needle| reason.contains(needle))
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

/// Creates and starts both containers (not waiting for readiness): with
/// the data directory on volumes with large folios, or, where the engine
/// refuses those, on plain tmpfs mounts (from then on for the process).
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
    // Both attempts build the pair from the same arguments.
    let make = async |large_folios: bool| -> Result<()> {
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
            large_folios,
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
    };
    let large_folios = ASK_LARGE_FOLIOS.load(Ordering::Relaxed);
    match make(large_folios).await {
        Err(e) if large_folios && refused_data_volumes(&e) => {
            ASK_LARGE_FOLIOS.store(false, Ordering::Relaxed);
            tracing::info!(
                error = %e,
                "the engine refused tmpfs volumes with large folios; the data directory is on plain tmpfs"
            );
            make(false).await
        }
        made => made,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_mounts_become_labelled_volumes_with_large_folios_and_the_rest_stays_tmpfs() {
        let labels = labels_for("s1", Kind::Postgres, true);
        let (tmpfs, mounts) = data_volumes(postgres_tmpfs(1 << 30, true), &labels);
        assert_eq!(tmpfs.keys().collect::<Vec<_>>(), ["/tmp"]);
        let targets: Vec<_> = mounts.iter().filter_map(|m| m.target.as_deref()).collect();
        assert_eq!(targets, [POSTGRES_DATA_TMPFS, POSTGRES_DATABASES_TMPFS]);
        for mount in &mounts {
            let volume = mount.volume_options.as_ref().unwrap();
            assert_eq!(volume.labels.as_ref(), Some(&labels));
            let options = volume
                .driver_config
                .as_ref()
                .unwrap()
                .options
                .as_ref()
                .unwrap();
            let o = &options["o"];
            assert!(o.starts_with("mode=1777,size="), "{o}");
            assert!(
                o.contains(LARGE_FOLIOS) && o.contains("nosuid,nodev,noexec"),
                "{o}"
            );
            assert_eq!(options["type"], "tmpfs");
        }
        // Without a budget of the user's, one data mount holds both.
        let (_, mounts) = data_volumes(postgres_tmpfs(1 << 30, false), &labels);
        assert_eq!(mounts.len(), 1);
    }

    #[test]
    fn an_engine_refusing_the_volumes_mount_is_told_from_other_failures() {
        // Docker 20.10's answer to a tmpfs option its kernel lacks.
        let refused = Error::Docker {
            action: "start container pgbf-x-postgres".into(),
            reason: "Docker responded with status code 500: error while mounting volume \
                     '/var/lib/docker/volumes/8e32/_data': failed to mount local volume: mount \
                     tmpfs:/var/lib/docker/volumes/8e32/_data, data: size=1g,mode=1777,huge=bogus: \
                     invalid argument"
                .into(),
        };
        assert!(refused_data_volumes(&refused));
        let other = Error::Docker {
            action: "start container pgbf-x-postgres".into(),
            reason: "Docker responded with status code 500: port is already allocated".into(),
        };
        assert!(!refused_data_volumes(&other));
    }
}
