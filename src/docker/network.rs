//! Where the engine runs, as far as its containers' network is concerned:
//! on this machine or not, and whether its host network is this process's.

use bollard::Docker;

use crate::docker::client::call;
use crate::docker::engine::Engine;

/// Whether containers on Docker's host network listen on this process's
/// own network: the engine is local and runs this machine's kernel under
/// this machine's host name, is not rootless (whose host network is
/// RootlessKit's namespace) and not Docker Desktop (a VM). Asked once per
/// process (one `docker info`); `false` when anything is unknown.
pub(crate) async fn shares_host_network(engine: &Engine, docker: &Docker) -> bool {
    static SHARES: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *SHARES
        .get_or_init(|| async {
            if !cfg!(target_os = "linux") || !engine.is_local() {
                return false;
            }
            let Ok(info) = call("describe itself", docker.info()).await else {
                return false;
            };
            let local = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
            let (Ok(kernel), Ok(hostname)) = (
                local("/proc/sys/kernel/osrelease"),
                local("/proc/sys/kernel/hostname"),
            ) else {
                return false;
            };
            let same_kernel = info.kernel_version.as_deref() == Some(kernel.as_str());
            let same_host = info.name.as_deref() == Some(hostname.as_str());
            let rootless = info
                .security_options
                .iter()
                .flatten()
                .any(|o| o.contains("rootless"));
            let desktop = info
                .operating_system
                .as_deref()
                .is_some_and(|os| os.contains("Docker Desktop"));
            let shares = same_kernel && same_host && !rootless && !desktop;
            tracing::debug!(
                shares,
                same_kernel,
                same_host,
                rootless,
                desktop,
                "does the engine's host network answer here"
            );
            shares
        })
        .await
}

/// Whether the engine at `host` (a `DOCKER_HOST` value; empty: the default
/// socket) runs on this machine: a Unix socket or named pipe, or TCP to
/// `localhost` / `127.0.0.1` (where `Engine::published_host` connects). Stacks of
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
