//! The Docker engine as the crate uses it: one connection helper with an
//! error that says what was tried, the labels that mark what the crate
//! creates, and the stack's private network.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::NetworkCreateRequest;
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

/// The labels of a resource belonging to stack `stack_id`.
pub fn labels(stack_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_STACK.to_string(), stack_id.to_string()),
    ])
}

/// Creates the stack's private bridge network.
pub async fn create_network(docker: &Docker, name: &str, stack_id: &str) -> Result<()> {
    docker
        .create_network(NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(labels(stack_id)),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Docker {
            action: format!("create network {name}"),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Removes a network, logging rather than failing: it is clean-up.
pub async fn remove_network(docker: &Docker, name: &str) {
    if let Err(e) = docker.remove_network(name).await {
        tracing::warn!(network = name, error = %e, "could not remove network");
    }
}
