//! Which Docker engine the crate talks to: resolved once per process, as
//! testcontainers resolves it, so that image builds (testcontainers) and
//! containers, inspections, the sweep and `gc` (bollard) all go to one engine.
//!
//! # Where it looks: testcontainers' order
//!
//! The order mirrors testcontainers 0.28.0, `src/core/env/config.rs`
//! (`Config::load`: environment over `~/.testcontainers.properties`, read with
//! the `properties-config` feature this crate enables; `Config::docker_host`:
//! the order below). The first place that is set (or, for a socket, exists)
//! wins; `places.rs` lists them:
//!
//! 1. `tc.host` in `~/.testcontainers.properties`;
//! 2. `DOCKER_HOST` in the process environment;
//! 3. `DOCKER_HOST` in `.env` (the crate's addition: every other variable of
//!    the crate is read from `.env` too; testcontainers reads the process only);
//! 4. `docker.host` in `~/.testcontainers.properties`;
//! 5. `/var/run/docker.sock`;
//! 6. `$XDG_RUNTIME_DIR/.docker/run/docker.sock` (testcontainers' rootless
//!    path; `XDG_RUNTIME_DIR` must be absolute, as its `etcetera` requires);
//! 7. `~/.docker/run/docker.sock` (Docker Desktop);
//! 8. `~/.docker/desktop/docker.sock` (Docker Desktop);
//! 9. `$XDG_RUNTIME_DIR/docker.sock` (the crate's addition: rootless Docker's
//!    own socket, where `dockerd-rootless.sh` puts it and testcontainers-java
//!    looks; testcontainers-rs 0.28 does not. Last, so that the crate only
//!    goes there where testcontainers alone would have found nothing);
//! 10. else `unix:///var/run/docker.sock`, testcontainers' default.
//!
//! `~` is the home directory as `std::env::home_dir` gives it (testcontainers
//! uses the same function). TLS follows testcontainers too: `DOCKER_TLS_VERIFY=1`
//! (or `docker.tls.verify=1`) with the certificates in `DOCKER_CERT_PATH` (or
//! `docker.cert.path`), and any `https://` host.
//!
//! Like testcontainers, the crate does **not** fall through to the next place
//! when the chosen engine does not answer: falling through is how two halves
//! of one program end up on two engines. [`Error::DockerUnreachable`] lists
//! every place instead, with what was found there, and names the fix.
//!
//! # Why the crate computes the order itself
//!
//! testcontainers 0.28 keeps its `Config` and `docker_host()` crate-private;
//! its one public door is `core::client::docker_client_instance()`, a bollard
//! client that says neither which host it chose nor where it looked. The
//! crate must say both (`up` names the engine and why; an unreachable engine
//! lists every place), and look in two more places. So it walks the same
//! places itself, and uses testcontainers' client only to check agreement.
//!
//! # The host published ports are reached on
//!
//! `TESTCONTAINERS_HOST_OVERRIDE` (process, then `.env`; testcontainers-java
//! and -go read it, testcontainers-rs 0.28 does not, but the crate publishes
//! its containers' ports itself), else the host of a `tcp://` / `http(s)://`
//! engine, else `127.0.0.1`. testcontainers' `get_host` says `localhost` for a
//! socket engine; the crate uses `127.0.0.1` because `localhost` may resolve
//! to `::1` first, where an engine without IPv6 publishes nothing. Not
//! mirrored: testcontainers' guess of the bridge gateway when the tests run
//! inside a container; set `TESTCONTAINERS_HOST_OVERRIDE` there.
//!
//! # How testcontainers and the crate agree on the engine
//!
//! testcontainers 0.28 takes no host from its caller: it reads the process
//! environment and the properties file (`Client::lazy_client`). So:
//!
//! - **same inputs, same order**: with `properties-config` on, places 1, 2, 4
//!   to 8 and 10 above are exactly testcontainers' own;
//! - **exported where the crate looks further**: when the engine came from
//!   place 3 or 9 (or testcontainers would otherwise pick something else, e.g.
//!   an empty `DOCKER_HOST`), [`engine()`] sets `DOCKER_HOST` (and
//!   `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH` taken from `.env`) in the process
//!   environment, after the engine answered and before the crate's first
//!   testcontainers call. testcontainers then reads it: only `tc.host` beats
//!   `DOCKER_HOST`, and a `tc.host` would have won the crate's resolution too.
//!   This is the crate's only write to the process environment, at most once
//!   per process, and only in those cases; child processes inherit it.
//!   (`std::env::set_var` races with C code reading the environment on other
//!   threads; the alternative, a testcontainers client that takes a host, does
//!   not exist in 0.28. Setting `DOCKER_HOST` yourself, or `docker.host` in
//!   the properties file, means the crate never writes.)
//! - **checked**: before testcontainers is first used (an image build, and
//!   `up`/`gc`), [`engine_checked()`] asks testcontainers' own client for the
//!   engine's ID and compares it with the ID behind the crate's connection; a
//!   difference (e.g. the process made testcontainers' client earlier under
//!   other settings) is an error, not a silent split. A process that only
//!   joins a running stack never uses testcontainers and skips the check
//!   (two `docker info` calls: most of a join's time).

use bollard::Docker;

use crate::docker::client::{self, Tls};
use crate::docker::network::engine_is_local;
use crate::docker::places::{self, Inputs, Properties, Var, DEFAULT_DOCKER_HOST};
use crate::error::{Error, Result};
use crate::target::env::redact_value;

/// The variable naming the host published ports are reached on.
pub(crate) const HOST_OVERRIDE: &str = "TESTCONTAINERS_HOST_OVERRIDE";

/// The Docker engine the crate uses, resolved once per process by [`engine()`].
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    host: String,
    origin: String,
    published_host: String,
    tls: Tls,
    /// Every place looked at, one line each, for error messages.
    looked: String,
    /// What to do when the engine does not answer.
    fix: String,
    /// `(variable, value)` to set so that testcontainers reads the same engine.
    exports: Vec<(&'static str, String)>,
}

static ENGINE: tokio::sync::OnceCell<Engine> = tokio::sync::OnceCell::const_new();

/// The engine of this process: resolved (see the module doc) and checked
/// once; later calls return the same. A failure is not kept: the next call
/// resolves again.
pub(crate) async fn engine() -> Result<&'static Engine> {
    ENGINE
        .get_or_try_init(|| async {
            let engine = Engine::resolve(&Inputs::from_process()?)?;
            engine.connect().await?;
            engine.export_for_testcontainers();
            tracing::debug!(host = %engine.host, origin = %engine.origin, "Docker engine resolved");
            Ok(engine)
        })
        .await
}

/// [`engine()`], checked once to be the engine testcontainers reaches too:
/// what must precede any use of testcontainers (image builds).
pub(crate) async fn engine_checked() -> Result<&'static Engine> {
    static CHECKED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let engine = engine().await?;
    CHECKED
        .get_or_try_init(|| async {
            let docker = engine.connect().await?;
            client::testcontainers_agrees(&docker, &engine.describe()).await
        })
        .await?;
    Ok(engine)
}

/// Connects to the process's engine (see [`engine()`]) and checks that it answers.
pub(crate) async fn connect() -> Result<Docker> {
    engine().await?.connect().await
}

/// Where the crate reaches Docker, why there, and where published ports
/// answer, e.g. `unix:///home/me/.docker/run/docker.sock (~/.docker/run/docker.sock);
/// published ports answer on 127.0.0.1`.
///
/// Resolves the engine as testcontainers does (its properties file, the
/// environment and `.env`, the usual sockets) and checks that it answers;
/// `Err(Error::DockerUnreachable)` lists every place looked at.
pub async fn docker_engine() -> Result<String> {
    Ok(engine_checked().await?.summary())
}

impl Engine {
    /// The host the engine's published ports answer on.
    pub(crate) fn published_host(&self) -> &str {
        &self.published_host
    }

    /// Whether the engine runs on this machine (a socket, or a loopback
    /// `tcp://` address): then published ports answer on this machine.
    pub(crate) fn is_local(&self) -> bool {
        engine_is_local(&self.host)
    }

    /// `HOST (ORIGIN)`.
    pub(crate) fn describe(&self) -> String {
        format!("{} ({})", self.host, self.origin)
    }

    /// [`Engine::describe`], with where published ports answer.
    fn summary(&self) -> String {
        let remote = if self.is_local() {
            ""
        } else {
            " (a remote engine)"
        };
        format!(
            "{}; published ports answer on {}{remote}",
            self.describe(),
            self.published_host
        )
    }

    /// A new connection to this engine, checked with a ping.
    pub(crate) async fn connect(&self) -> Result<Docker> {
        let docker =
            client::bollard_client(&self.host, &self.tls).map_err(|r| self.unreachable(r))?;
        client::ping(&docker)
            .await
            .map_err(|r| self.unreachable(r))?;
        Ok(docker)
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::DockerUnreachable {
            tried: self.describe(),
            reason,
            looked: self.looked.clone(),
            fix: self.fix.clone(),
        }
    }

    /// Makes testcontainers (which reads only the process environment and
    /// its properties file) find this engine too. See the module doc.
    fn export_for_testcontainers(&self) {
        for (name, value) in &self.exports {
            if std::env::var(name).ok().as_deref() != Some(value.as_str()) {
                tracing::debug!(var = name, "exporting for testcontainers");
                std::env::set_var(name, value);
            }
        }
    }

    /// The engine the first place that names one gives (see the module doc).
    fn resolve(inputs: &Inputs) -> Result<Engine> {
        let props = Properties::read(inputs.home.as_deref())?;
        let places = places::places(inputs, &props);
        // The last place, the default, always names a host.
        let chosen = places
            .iter()
            .position(|p| p.host.is_some())
            .unwrap_or(places.len() - 1);
        let place = &places[chosen];
        let host = place
            .host
            .clone()
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.into());
        Ok(Engine {
            origin: place.label.clone(),
            published_host: published_host(inputs.host_override.as_ref(), &host)?,
            tls: places::tls(inputs, &props)?,
            looked: places::looked(&places, chosen),
            fix: format!(
                "{}, or set TEST_DATABASE_URL to use an existing server instead of containers",
                place.fix
            ),
            exports: exports(inputs, &places::testcontainers_choice(&places), &host),
            host,
        })
    }
}

/// What to set so that testcontainers, choosing `testcontainers_choice` on
/// its own, reaches `host` instead, with the TLS settings `.env` gave.
fn exports(
    inputs: &Inputs,
    testcontainers_choice: &str,
    host: &str,
) -> Vec<(&'static str, String)> {
    let mut exports = Vec::new();
    if testcontainers_choice != host {
        exports.push(("DOCKER_HOST", host.to_string()));
    }
    for (name, var) in [
        ("DOCKER_TLS_VERIFY", &inputs.tls_verify),
        ("DOCKER_CERT_PATH", &inputs.cert_path),
    ] {
        if let Some(v) = var.as_ref().filter(|v| v.from_dotenv) {
            exports.push((name, v.value.clone()));
        }
    }
    exports
}

/// `TESTCONTAINERS_HOST_OVERRIDE`, else the host of a `tcp://` engine, else
/// `127.0.0.1` (see the module doc).
fn published_host(host_override: Option<&Var>, engine_host: &str) -> Result<String> {
    if let Some(v) = host_override {
        let raw = v.value.trim();
        let host = match raw.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => Some(format!("[{ip}]")),
            Ok(std::net::IpAddr::V4(ip)) => Some(ip.to_string()),
            Err(_) => url::Host::parse(raw).ok().map(|h| h.to_string()),
        };
        // The stack's URLs are built from it: it must make a valid one.
        return host
            .filter(|h| {
                crate::target::DbUrl::parse(HOST_OVERRIDE, &format!("postgres://u@{h}:1/d")).is_ok()
            })
            .ok_or_else(|| Error::InvalidEnv {
                var: HOST_OVERRIDE,
                value: redact_value(raw),
                expected: "a host name or IP address where the Docker engine publishes ports \
                           (e.g. 192.168.1.20 or docker.internal), without scheme or port",
            });
    }
    if engine_is_local(engine_host) {
        return Ok("127.0.0.1".to_string());
    }
    Ok(url::Url::parse(engine_host)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_string()))
        .unwrap_or_else(|| "127.0.0.1".to_string()))
}
