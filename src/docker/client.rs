//! The bollard client of the crate, made as testcontainers makes its own, and
//! the one time limit every bollard call of the crate goes through
//! ([`within`], and [`call`] / [`call_unless`] on top of it).
//!
//! # Where the crate goes to the Docker API directly (bollard), and why
//!
//! testcontainers is used where it gives what the crate needs: building the
//! images (`GenericBuildableImage`, `images.rs`), and its client for the
//! agreement check (`engine.rs`). Everything else goes through bollard, on
//! the same engine, for these reasons (read in testcontainers 0.28.0's source):
//!
//! - **creating the stack's containers** (`containers.rs`): the run's stack
//!   must outlive the process that made it: other test processes join it,
//!   and its in-container watchdog reaps it after the last lease (docs/templates-and-stack.md,
//!   "Reaping"). testcontainers hands back a `ContainerAsync` whose `Drop`
//!   removes the container (`TESTCONTAINERS_COMMAND=keep` turns that off for
//!   every container of the process, and `with_reuse` is per process); it has
//!   no reaper that would cover SIGKILL. Docker's `AutoRemove` lets a stopped
//!   stack vanish by itself. PgBouncer runs in PostgreSQL's network namespace
//!   (`network_mode: container:<postgres>`): testcontainers' `with_network`
//!   would try to create a network of that name (`core/network.rs`). Its
//!   `with_host_config_modifier` could set both, but then nothing of
//!   testcontainers would remain but the create call, with its
//!   removal-on-drop to defeat. Readiness is a real query, not a log line;
//! - **finding and inspecting a stack made by another process** (`pair.rs`):
//!   testcontainers only knows containers it started in this process; a
//!   joiner reads ports and password from Docker, and a dead stack's state is
//!   read for `StackDied`;
//! - **removing containers by name** (`pair.rs`): stacks this process did
//!   not start, private stacks on `stop()`, half-made stacks;
//! - **`gc` and the sweep** (`reap.rs`): listing containers and
//!   networks by the crate's labels, across runs and processes;
//!   testcontainers has no listing API;
//! - **looking images up** (`images.rs`): which base image is present, and
//!   its ID for the image tag; testcontainers has no image inspection;
//! - **the engine's ID** (here): for the agreement check.
//!
//! The crate keeps a client of its own rather than borrowing
//! testcontainers' because it must reach the engine before it may export
//! `DOCKER_HOST` for testcontainers (`engine.rs`), and a joining process
//! never needs testcontainers at all.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};

use crate::docker::places::PROPERTIES_FILE;
use crate::error::{Error, Result};

/// How long one Docker API call may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first answer of the engine may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The request timeout testcontainers gives bollard (`bollard_client.rs`).
const CLIENT_TIMEOUT_SECS: u64 = 120;

/// bollard's own error, for callers that tell answers apart by status.
pub(crate) type BollardError = bollard::errors::Error;

/// The one time limit of the crate's Docker calls: bollard's answer to
/// `fut`, or `Err(Error::Timeout)` naming `action` when none came within `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    action: &str,
    fut: impl Future<Output = std::result::Result<T, BollardError>>,
) -> Result<std::result::Result<T, BollardError>> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("Docker to {action}"),
            after: limit,
            hint: "the Docker daemon is overloaded or stuck; check `docker info`".into(),
        })
}

/// Runs one Docker call within [`CALL_TIMEOUT`], with an error naming the action.
pub(crate) async fn call<T>(
    action: &str,
    fut: impl Future<Output = std::result::Result<T, BollardError>>,
) -> Result<T> {
    within(CALL_TIMEOUT, action, fut)
        .await?
        .map_err(|e| failed(action, e))
}

/// [`call`], where an answer with one of `statuses` (e.g. 404: no such
/// container) is `Ok(None)` rather than an error.
pub(crate) async fn call_unless<T>(
    statuses: &[u16],
    action: &str,
    fut: impl Future<Output = std::result::Result<T, BollardError>>,
) -> Result<Option<T>> {
    match within(CALL_TIMEOUT, action, fut).await? {
        Ok(v) => Ok(Some(v)),
        Err(e) if status(&e).is_some_and(|s| statuses.contains(&s)) => Ok(None),
        Err(e) => Err(failed(action, e)),
    }
}

/// The HTTP status of an answer the engine gave as an error.
pub(crate) fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The crate's error for a Docker call that failed.
pub(crate) fn failed(action: &str, e: BollardError) -> Error {
    Error::Docker {
        action: action.to_string(),
        reason: e.to_string(),
    }
}

/// How the engine wants TLS, as testcontainers reads it (`places.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tls {
    pub verify: bool,
    pub cert_path: Option<PathBuf>,
}

/// The bollard client for `host`, made as testcontainers' `bollard_client::init`
/// makes it; `Err` says why it cannot be made.
pub(crate) fn bollard_client(host: &str, tls: &Tls) -> std::result::Result<Docker, String> {
    let url = url::Url::parse(host).map_err(|e| {
        format!("it is not an address ({e}); use unix:///path/to/docker.sock or tcp://host:port")
    })?;
    let made = match url.scheme() {
        "https" => ssl(host, tls)?,
        "http" | "tcp" if tls.verify => ssl(host, tls)?,
        "http" | "tcp" => Docker::connect_with_http(host, CLIENT_TIMEOUT_SECS, API_DEFAULT_VERSION),
        "unix" => Docker::connect_with_unix(host, CLIENT_TIMEOUT_SECS, API_DEFAULT_VERSION),
        other => {
            return Err(format!(
                "{other}:// is not an engine address the crate or testcontainers can use; use \
                 unix://, tcp://, http:// or https://"
            ))
        }
    };
    made.map_err(|e| e.to_string())
}

fn ssl(
    host: &str,
    tls: &Tls,
) -> std::result::Result<std::result::Result<Docker, BollardError>, String> {
    let dir = tls.cert_path.as_deref().ok_or_else(|| {
        "TLS is on (DOCKER_TLS_VERIFY=1, docker.tls.verify=1 or https://) but no certificate \
         directory is named: set DOCKER_CERT_PATH or docker.cert.path"
            .to_string()
    })?;
    Ok(Docker::connect_with_ssl(
        host,
        &dir.join("key.pem"),
        &dir.join("cert.pem"),
        &dir.join("ca.pem"),
        CLIENT_TIMEOUT_SECS,
        API_DEFAULT_VERSION,
    ))
}

/// Whether the engine answers a ping within [`PING_TIMEOUT`]; `Err` says why not.
pub(crate) async fn ping(docker: &Docker) -> std::result::Result<(), String> {
    match within(PING_TIMEOUT, "answer a ping", docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(with_causes(&e)),
        Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
    }
}

/// Fails unless testcontainers' own client reaches the engine `ours`
/// reaches; `resolved` describes ours, for messages.
pub(crate) async fn testcontainers_agrees(ours: &Docker, resolved: &str) -> Result<()> {
    let action = "check that testcontainers uses the crate's Docker engine";
    let theirs = testcontainers::core::client::docker_client_instance()
        .await
        .map_err(|e| Error::Docker {
            action: action.into(),
            reason: format!(
                "testcontainers cannot make its Docker client: {e}. The crate resolved {resolved}"
            ),
        })?;
    let ours_id = engine_id(ours, action).await?;
    let theirs_id = engine_id(&theirs, action)
        .await
        .map_err(|e| Error::Docker {
            action: action.into(),
            reason: format!(
                "testcontainers' client (it reads DOCKER_HOST and ~/{PROPERTIES_FILE}) does not \
                 reach the engine the crate resolved, {resolved}: {e}"
            ),
        })?;
    match (ours_id, theirs_id) {
        (Some(a), Some(b)) if a != b => Err(Error::Docker {
            action: action.into(),
            reason: format!(
                "testcontainers reaches the engine with ID {b}, while the crate resolved \
                 {resolved} (engine ID {a}). Either something in this process made \
                 testcontainers' client before the crate ran, under other settings, or this \
                 testcontainers version looks elsewhere than the crate (see \
                 src/docker/engine.rs): set DOCKER_HOST (or docker.host in ~/{PROPERTIES_FILE}) \
                 to the engine you want"
            ),
        }),
        _ => Ok(()),
    }
}

/// An error with its causes: bollard's own message alone can be as vague as
/// "client error (Connect)" where the cause says "Connection refused".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

async fn engine_id(docker: &Docker, action: &str) -> Result<Option<String>> {
    let info = call(action, docker.info()).await?;
    Ok(info.id.filter(|id| !id.is_empty()))
}

/// The memory the engine reports (`docker info`'s `MemTotal`), in bytes;
/// `None` when it does not say.
pub(crate) async fn engine_memory(docker: &Docker) -> Option<u64> {
    let info = call("describe itself", docker.info()).await.ok()?;
    info.mem_total.and_then(|m| u64::try_from(m).ok())
}
