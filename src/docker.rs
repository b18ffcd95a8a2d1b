//! The Docker engine as the crate uses it: one connection helper with an
//! error that says what was tried, the labels that mark what the crate
//! creates, and time limits on every call.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;

use crate::error::{Error, Result};

/// Label put on every container and network the crate creates.
pub const LABEL_MANAGED: &str = "pgbouncer-fixtures.managed";
/// Label holding the id of the stack a resource belongs to.
pub const LABEL_STACK: &str = "pgbouncer-fixtures.stack";

const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Connects to the engine named by `DOCKER_HOST` (or the default socket) and
/// checks that it answers.
pub async fn connect() -> Result<Docker> {
    let (host, origin) = match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.trim().is_empty() => (h, "DOCKER_HOST"),
        _ => (
            DEFAULT_DOCKER_HOST.to_string(),
            "the default socket; DOCKER_HOST is not set",
        ),
    };
    let tried = format!("{host} ({origin})");
    let unreachable = |reason: String| Error::DockerUnreachable {
        tried: tried.clone(),
        reason,
    };
    let docker = Docker::connect_with_host(&host).map_err(|e| unreachable(e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(10), docker.ping()).await {
        Ok(Ok(_)) => Ok(docker),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("no answer within 10 s".to_string())),
    }
}

/// Label naming what a container is: `postgres` or `pgbouncer`.
pub const LABEL_KIND: &str = "pgbouncer-fixtures.kind";
/// Label holding the checkout (`CARGO_MANIFEST_DIR`) whose run made the container.
pub const LABEL_CHECKOUT: &str = "pgbouncer-fixtures.checkout";
/// Label holding the pid of the process that created the container.
pub const LABEL_PID: &str = "pgbouncer-fixtures.pid";
/// Label: `true` for a run's shared stack, `false` for a private `Stack::start`.
pub const LABEL_SHARED: &str = "pgbouncer-fixtures.shared";

/// How long one Docker API call may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a container of a stack runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Postgres,
    Pgbouncer,
}

/// The labels of a container of stack `stack_id`.
pub(crate) fn labels_for(stack_id: &str, kind: Kind, shared: bool) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_STACK.to_string(), stack_id.to_string()),
        (
            LABEL_KIND.to_string(),
            match kind {
                Kind::Postgres => "postgres",
                Kind::Pgbouncer => "pgbouncer",
            }
            .to_string(),
        ),
        (LABEL_CHECKOUT.to_string(), crate::runkey::checkout()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
        (LABEL_SHARED.to_string(), shared.to_string()),
    ])
}

/// The error of a Docker call that did not answer in time.
pub(crate) fn timeout(action: &str) -> Error {
    Error::Timeout {
        what: format!("Docker to {action}"),
        after: CALL_TIMEOUT,
        hint: "the Docker daemon is overloaded or stuck; check `docker info`".into(),
    }
}

/// Runs one Docker call with a time limit and an error naming the action.
pub(crate) async fn call<T>(
    action: &str,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Docker {
            action: action.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(timeout(action)),
    }
}

/// The host where published ports answer: the host of a `tcp://` DOCKER_HOST,
/// else this machine.
pub(crate) fn published_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| url::Url::parse(h.trim()).ok())
        .filter(|u| matches!(u.scheme(), "tcp" | "http" | "https"))
        .and_then(|u| u.host_str().map(str::to_string))
        .filter(|h| h != "localhost")
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// Whether the engine at `host` (a `DOCKER_HOST` value; empty: the default
/// socket) runs on this machine: a Unix socket or named pipe, or TCP to
/// `localhost` / `127.0.0.1` (where [`published_host`] connects). Stacks of
/// a local engine publish their ports on 127.0.0.1 only; a remote engine's
/// must answer on its own address.
pub(crate) fn engine_is_local(host: &str) -> bool {
    let host = host.trim();
    if host.is_empty() || host.starts_with('/') {
        return true;
    }
    match url::Url::parse(host) {
        Ok(u) => match u.scheme() {
            "unix" | "npipe" => true,
            // (`tcp` is not a special scheme: its host is opaque text.)
            "tcp" | "http" | "https" => u
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case("localhost") || h == "127.0.0.1"),
            // ssh:// and anything else: another machine.
            _ => false,
        },
        Err(_) => false,
    }
}
