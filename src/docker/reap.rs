//! Reaping on the engine: the sweep a creator runs before starting a stack
//! (leftovers of crashed runs), and the Docker half of `gc` (everything the
//! crate made within a scope, found by its labels).
//!
//! The crate's own stacks remove themselves (lease watchdog + AutoRemove);
//! what remains for these two is what that cannot cover: containers of images
//! that ignore the watchdog contract, and containers a dying daemon failed
//! to remove.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions, RemoveVolumeOptions};
use bollard::Docker;

use crate::docker::call;
use crate::docker::labels::{LABEL_CHECKOUT, LABEL_MANAGED, LABEL_STACK};
use crate::docker::pair::remove;
use crate::error::Result;

/// Leftovers younger than this are left alone by the sweep: they may belong
/// to a run that is starting (or restarting a container) right now.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(120);

/// Which of the crate's resources `gc` removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcScope<'a> {
    /// Everything the crate created on this Docker host, whoever's.
    All,
    /// The containers of one stack (label `pgbouncer-fixtures.stack`).
    Stack(&'a str),
    /// What runs in one checkout created (label `pgbouncer-fixtures.checkout`).
    Checkout(&'a str),
}

fn label_filter(scope: GcScope<'_>) -> HashMap<String, Vec<String>> {
    let label = match scope {
        GcScope::All => LABEL_MANAGED.to_string(),
        GcScope::Stack(id) => format!("{LABEL_STACK}={id}"),
        GcScope::Checkout(path) => format!("{LABEL_CHECKOUT}={path}"),
    };
    HashMap::from([("label".to_string(), vec![label])])
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Removes the containers the crate created on this engine within `scope`,
/// running or not; returns their names.
pub(crate) async fn remove_in_scope(docker: &Docker, scope: GcScope<'_>) -> Result<Vec<String>> {
    let list = call(
        "list the crate's containers",
        docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(scope)),
            ..Default::default()
        })),
    )
    .await?;
    let mut containers = Vec::new();
    for c in list {
        let name = container_name(&c.names, c.id.as_deref());
        remove(docker, &name).await;
        containers.push(name);
    }
    Ok(containers)
}

/// Removes the data volumes within `scope` no container uses any more
/// (their container went without `-v`, e.g. a `docker rm` by hand; a
/// volume in use is never listed as dangling); returns their names.
pub(crate) async fn remove_dangling_volumes(docker: &Docker, scope: GcScope<'_>) -> Vec<String> {
    let mut filters = label_filter(scope);
    filters.insert("dangling".to_string(), vec!["true".to_string()]);
    let listed = call(
        "list the crate's volumes",
        docker.list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        })),
    )
    .await;
    let volumes = match listed {
        Ok(list) => list.volumes.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the crate's volumes");
            return Vec::new();
        }
    };
    let mut removed_names = Vec::new();
    for volume in volumes {
        let removed = call(
            &format!("remove volume {}", volume.name),
            docker.remove_volume(&volume.name, Some(RemoveVolumeOptions { force: false })),
        )
        .await;
        match removed {
            Ok(()) => removed_names.push(volume.name),
            Err(e) => {
                tracing::warn!(volume = %volume.name, error = %e, "could not remove a volume")
            }
        }
    }
    removed_names
}

/// Best-effort removal of leftovers older than [`SWEEP_MIN_AGE`]: stopped
/// containers. Running containers are never
/// touched: a live one has a lease holder, or its watchdog will stop it.
pub(crate) async fn sweep(docker: &Docker) {
    let cutoff = now_secs() - SWEEP_MIN_AGE.as_secs() as i64;
    let stopped = call(
        "list stopped containers",
        docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([
                ("label".to_string(), vec![LABEL_MANAGED.to_string()]),
                (
                    "status".to_string(),
                    vec!["exited".into(), "dead".into(), "created".into()],
                ),
            ])),
            ..Default::default()
        })),
    )
    .await;
    match stopped {
        Ok(list) => {
            for c in list.into_iter().filter(|c| c.created.unwrap_or(0) < cutoff) {
                let name = container_name(&c.names, c.id.as_deref());
                tracing::info!(container = %name, "sweeping a stopped container left by an earlier run");
                remove(docker, &name).await;
            }
        }
        Err(e) => tracing::debug!(error = %e, "sweep: cannot list containers"),
    }
}

fn container_name(names: &Option<Vec<String>>, id: Option<&str>) -> String {
    names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| id.map(str::to_string))
        .unwrap_or_default()
}
