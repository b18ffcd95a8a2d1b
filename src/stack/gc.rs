//! `gc`: everything the crate made on the engine within a scope (the Docker
//! half is `docker::reap`, as is the sweep a creator runs), and the lock
//! files nobody holds (`stack::lock`).

use std::path::PathBuf;

pub(crate) use crate::docker::reap::sweep;
pub use crate::docker::reap::GcScope;
use crate::error::Result;

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Names of the removed containers.
    pub containers: Vec<String>,
    /// Names of the removed data volumes no container used any more (a
    /// stack's container removed without its volumes, e.g. `docker rm`
    /// without `-v`).
    pub volumes: Vec<String>,
    /// Always empty: the crate makes no Docker networks (its stacks run on
    /// the host network or Docker's default bridge).
    #[deprecated(
        since = "0.1.0",
        note = "always empty: the crate makes no Docker networks; read `containers`"
    )]
    pub networks: Vec<String>,
    /// Lock files nobody held (`$TMPDIR/pgbouncer-fixtures-<uid>/*.lock`),
    /// removed whatever the scope: a lock file means something only while a
    /// process holds it.
    pub lock_files: Vec<PathBuf>,
}

/// Removes the containers the crate created on this Docker host within
/// `scope`, running or not, the data volumes in `scope` no container uses,
/// and this user's lock files that no process holds, and says which.
pub async fn gc(scope: GcScope<'_>) -> Result<GcReport> {
    let docker = crate::docker::connect().await?;
    let lock_files = crate::stack::lock::remove_stale_locks();
    let containers = crate::docker::reap::remove_in_scope(&docker, scope).await?;
    let volumes = crate::docker::reap::remove_dangling_volumes(&docker, scope).await;
    Ok(GcReport {
        containers,
        volumes,
        lock_files,
        ..GcReport::default()
    })
}
