//! The Docker engine as the crate uses it: where it is (resolved once per
//! process, as testcontainers resolves it), the connection to it, the labels
//! that mark what the crate creates, and time limits on every call.
//!
//! # One engine for everything
//!
//! [`engine()`] decides, once per process, which engine the crate talks to.
//! Everything the crate does with Docker goes there: image builds (through
//! testcontainers, `images.rs`), containers and their inspection (through
//! bollard, `containers.rs`, `stack.rs`, `lease.rs`), the sweep and `gc`
//! (`reaper.rs`).
//!
//! ## Where it looks: testcontainers' order
//!
//! The order mirrors testcontainers 0.28.0, `src/core/env/config.rs`
//! (`Config::load`: environment over `~/.testcontainers.properties`, read with
//! the `properties-config` feature this crate enables; `Config::docker_host`:
//! the order below), and its connection mirrors `src/core/client/bollard_client.rs`
//! (`init`). The first place that is set (or, for a socket, exists) wins:
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
//! ## The host published ports are reached on
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
//! ## How testcontainers and the crate agree on the engine
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
//!   `up`/`gc`), [`engine_checked()`] asks testcontainers' own client
//!   (`testcontainers::core::client::docker_client_instance`) for the engine's
//!   ID and compares it with the ID behind the crate's connection; a
//!   difference (e.g. the process made testcontainers' client earlier under
//!   other settings) is an error, not a silent split. A process that only
//!   joins a running stack never uses testcontainers and skips the check
//!   (two `docker info` calls: most of a join's time).
//!
//! ## Where the crate goes to the Docker API directly (bollard), and why
//!
//! testcontainers is used where it gives what the crate needs: building the
//! images (`GenericBuildableImage`, `images.rs`), and its client for the
//! agreement check above. Everything else goes through bollard, on the same
//! engine, for these reasons (read in testcontainers 0.28.0's source):
//!
//! - **creating the stack's containers** (`containers::create_pair`): the
//!   run's stack must outlive the process that made it: other test processes
//!   join it, and its in-container watchdog reaps it after the last lease
//!   (README, "Reaping"). testcontainers hands back a `ContainerAsync` whose
//!   `Drop` removes the container (`TESTCONTAINERS_COMMAND=keep` turns that
//!   off for every container of the process, and `with_reuse` is per process);
//!   it has no reaper that would cover SIGKILL. Docker's `AutoRemove` lets a
//!   stopped stack vanish by itself. PgBouncer runs in PostgreSQL's network
//!   namespace (`network_mode: container:<postgres>`): testcontainers'
//!   `with_network` would try to create a network of that name
//!   (`core/network.rs`). Its `with_host_config_modifier` could set both, but
//!   then nothing of testcontainers would remain but the create call, with
//!   its removal-on-drop to defeat. Readiness is a real query, not a log line
//!   (`stack.rs`);
//! - **finding and inspecting a stack made by another process**
//!   (`containers::pair_state`, `describe`): testcontainers only knows
//!   containers it started in this process; a joiner reads ports and password
//!   from Docker, and a dead stack's state is read for `StackDied` (`lease.rs`);
//! - **removing containers by name** (`containers::remove`): stacks this
//!   process did not start, private stacks on `stop()`, half-made stacks;
//! - **`gc` and the sweep** (`reaper.rs`): listing containers and networks
//!   by the crate's labels, across runs and processes; testcontainers has no
//!   listing API;
//! - **looking images up** (`images::choose_base`, `existing`): which base
//!   image is present, and its ID for the image tag; testcontainers has no
//!   image inspection;
//! - **the engine's ID** (here): for the agreement check.

pub(crate) mod containers;
pub(crate) mod images;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};

use crate::error::{Error, Result};
use crate::target::env::{redact, redact_value, Env};

/// Label put on every container and network the crate creates.
pub const LABEL_MANAGED: &str = "pgbouncer-fixtures.managed";
/// Label holding the id of the stack a resource belongs to.
pub const LABEL_STACK: &str = "pgbouncer-fixtures.stack";

/// testcontainers' default engine, when nothing else is found.
const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// testcontainers' properties file, in the home directory.
const PROPERTIES_FILE: &str = ".testcontainers.properties";
/// The variable naming the host published ports are reached on.
pub(crate) const HOST_OVERRIDE: &str = "TESTCONTAINERS_HOST_OVERRIDE";
/// How long the first answer of the engine may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The request timeout testcontainers gives bollard (`bollard_client.rs`).
const CLIENT_TIMEOUT_SECS: u64 = 120;

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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tls {
    verify: bool,
    cert_path: Option<PathBuf>,
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
            engine.check_testcontainers_agrees(&docker).await
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
        format!(
            "{}; published ports answer on {}{}",
            self.describe(),
            self.published_host,
            if self.is_local() {
                ""
            } else {
                " (a remote engine)"
            }
        )
    }

    /// A new connection to this engine, checked with a ping (10 s limit).
    pub(crate) async fn connect(&self) -> Result<Docker> {
        let docker = self.client().map_err(|reason| self.unreachable(reason))?;
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => Ok(docker),
            Ok(Err(e)) => Err(self.unreachable(with_causes(&e))),
            Err(_) => {
                Err(self.unreachable(format!("no answer within {} s", PING_TIMEOUT.as_secs())))
            }
        }
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::DockerUnreachable {
            tried: self.describe(),
            reason,
            looked: self.looked.clone(),
            fix: self.fix.clone(),
        }
    }

    /// The bollard client, made as testcontainers' `bollard_client::init` makes it.
    fn client(&self) -> std::result::Result<Docker, String> {
        let url = url::Url::parse(&self.host).map_err(|e| {
            format!(
                "it is not an address ({e}); use unix:///path/to/docker.sock or tcp://host:port"
            )
        })?;
        let ssl = || -> std::result::Result<Docker, String> {
            let dir = self.tls.cert_path.as_deref().ok_or_else(|| {
                "TLS is on (DOCKER_TLS_VERIFY=1, docker.tls.verify=1 or https://) but no \
                 certificate directory is named: set DOCKER_CERT_PATH or docker.cert.path"
                    .to_string()
            })?;
            Docker::connect_with_ssl(
                &self.host,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                CLIENT_TIMEOUT_SECS,
                API_DEFAULT_VERSION,
            )
            .map_err(|e| e.to_string())
        };
        match url.scheme() {
            "https" => ssl(),
            "http" | "tcp" if self.tls.verify => ssl(),
            "http" | "tcp" => {
                Docker::connect_with_http(&self.host, CLIENT_TIMEOUT_SECS, API_DEFAULT_VERSION)
                    .map_err(|e| e.to_string())
            }
            "unix" => {
                Docker::connect_with_unix(&self.host, CLIENT_TIMEOUT_SECS, API_DEFAULT_VERSION)
                    .map_err(|e| e.to_string())
            }
            other => Err(format!(
                "{other}:// is not an engine address the crate or testcontainers can use; use \
                 unix://, tcp://, http:// or https://"
            )),
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

    /// Fails unless testcontainers' own client reaches the engine `ours` reaches.
    async fn check_testcontainers_agrees(&self, ours: &Docker) -> Result<()> {
        let action = "check that testcontainers uses the crate's Docker engine";
        let theirs = testcontainers::core::client::docker_client_instance()
            .await
            .map_err(|e| Error::Docker {
                action: action.into(),
                reason: format!(
                    "testcontainers cannot make its Docker client: {e}. The crate resolved {}",
                    self.describe()
                ),
            })?;
        let ours_id = engine_id(ours, action).await?;
        let theirs_id = engine_id(&theirs, action)
            .await
            .map_err(|e| Error::Docker {
                action: action.into(),
                reason: format!(
                "testcontainers' client (it reads DOCKER_HOST and ~/{PROPERTIES_FILE}) does not \
                 reach the engine the crate resolved, {}: {e}",
                self.describe()
            ),
            })?;
        match (ours_id, theirs_id) {
            (Some(a), Some(b)) if a != b => Err(Error::Docker {
                action: action.into(),
                reason: format!(
                    "testcontainers reaches the engine with ID {b}, while the crate resolved {} \
                     (engine ID {a}). Either something in this process made testcontainers' \
                     client before the crate ran, under other settings, or this testcontainers \
                     version looks elsewhere than the crate (see src/docker.rs): set DOCKER_HOST \
                     (or docker.host in ~/{PROPERTIES_FILE}) to the engine you want",
                    self.describe()
                ),
            }),
            _ => Ok(()),
        }
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

/// A variable of the environment: from the process, or from `.env`.
#[derive(Clone, Debug)]
struct Var {
    value: String,
    from_dotenv: bool,
}

/// What the resolution reads, gathered in one place.
#[derive(Debug)]
struct Inputs {
    /// `DOCKER_HOST` of the process, exactly as testcontainers reads it (even empty).
    process_docker_host: Option<String>,
    /// `DOCKER_HOST` of `.env` (used only when the process has none).
    dotenv_docker_host: Option<String>,
    dotenv_path: Option<PathBuf>,
    home: Option<PathBuf>,
    xdg_runtime_dir: Option<PathBuf>,
    tls_verify: Option<Var>,
    cert_path: Option<Var>,
    host_override: Option<Var>,
}

impl Inputs {
    fn from_process() -> Result<Inputs> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        // `.env` alone (no process variables), to tell where a value came from.
        let dotenv = Env::load_from(&cwd, std::iter::empty::<(String, String)>())?;
        let process = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let var = |name: &str| match process(name) {
            Some(value) => Some(Var {
                value,
                from_dotenv: false,
            }),
            None => dotenv.get(name).map(|v| Var {
                value: v.to_string(),
                from_dotenv: true,
            }),
        };
        Ok(Inputs {
            process_docker_host: std::env::var("DOCKER_HOST").ok(),
            dotenv_docker_host: dotenv.get("DOCKER_HOST").map(str::to_string),
            dotenv_path: dotenv.dotenv_path().map(Path::to_path_buf),
            // testcontainers: etcetera::home_dir() = std::env::home_dir().
            home: std::env::home_dir(),
            // testcontainers: etcetera's Xdg::runtime_dir(), absolute paths only.
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            tls_verify: var("DOCKER_TLS_VERIFY"),
            cert_path: var("DOCKER_CERT_PATH"),
            host_override: var(HOST_OVERRIDE),
        })
    }
}

/// `~/.testcontainers.properties`, as far as it was found.
struct Properties {
    path: Option<PathBuf>,
    found: bool,
    values: HashMap<String, String>,
}

impl Properties {
    fn read(home: Option<&Path>) -> Result<Properties> {
        let Some(path) = home.map(|h| h.join(PROPERTIES_FILE)) else {
            return Ok(Properties {
                path: None,
                found: false,
                values: HashMap::new(),
            });
        };
        // As testcontainers: an unreadable file is an absent one, a malformed one an error.
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(Properties {
                path: Some(path),
                found: false,
                values: HashMap::new(),
            });
        };
        let values: HashMap<String, String> =
            serde_java_properties::from_slice(&bytes).map_err(|e| Error::InvalidEnv {
                var: "~/.testcontainers.properties",
                value: redact(&format!("{} ({e})", path.display())),
                expected: "key=value lines in Java properties syntax, as testcontainers reads \
                           them (docker.host, tc.host, docker.tls.verify, docker.cert.path)",
            })?;
        Ok(Properties {
            path: Some(path),
            found: true,
            values,
        })
    }

    fn label(&self, key: &str) -> String {
        match &self.path {
            Some(p) => format!("{key} in {}", p.display()),
            None => format!("{key} in ~/{PROPERTIES_FILE}"),
        }
    }

    /// `(what was found, the value if set)`.
    fn get(&self, key: &str) -> (String, Option<String>) {
        if self.path.is_none() {
            return ("no home directory".into(), None);
        }
        if !self.found {
            return ("no such file".into(), None);
        }
        match self
            .values
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        {
            Some(v) => (v.to_string(), Some(v.to_string())),
            None => ("not set".into(), None),
        }
    }
}

/// One place the resolution looked at.
struct Place {
    label: String,
    /// What was found there, for the error message.
    found: String,
    /// The engine address it names, if it names one.
    host: Option<String>,
    /// Whether testcontainers 0.28 looks here too.
    testcontainers_looks: bool,
    /// What to change there when its engine does not answer.
    fix: String,
}

fn socket(label: &str, path: Option<PathBuf>, missing: &str, testcontainers_looks: bool) -> Place {
    // The path, unless the label says it already.
    let shown = |p: &Path, state: &str| match p.display().to_string() {
        s if s == label => state.to_string(),
        s => format!("{s} ({state})"),
    };
    let (found, host) = match path {
        None => (missing.to_string(), None),
        Some(p) if p.exists() => (
            shown(&p, "present"),
            Some(format!("unix://{}", p.display())),
        ),
        Some(p) => (shown(&p, "absent"), None),
    };
    let fix = match &host {
        Some(h) => format!(
            "Start the Docker daemon whose socket is {} (a socket left by a stopped engine \
             answers nothing; remove it), or point DOCKER_HOST at a running engine",
            h.trim_start_matches("unix://")
        ),
        None => String::new(),
    };
    Place {
        label: label.to_string(),
        found,
        host,
        testcontainers_looks,
        fix,
    }
}

impl Engine {
    fn resolve(inputs: &Inputs) -> Result<Engine> {
        let props = Properties::read(inputs.home.as_deref())?;
        let home = inputs.home.as_deref();
        let xdg = inputs.xdg_runtime_dir.as_deref();
        let no_xdg = "XDG_RUNTIME_DIR not set (or not an absolute path)";
        let no_home = "no home directory";
        let restart_or = "Start the Docker daemon at that address, or";
        let (tc_found, tc_host) = props.get("tc.host");
        let (dh_found, dh_host) = props.get("docker.host");
        let props_fix = |key: &str| {
            format!(
                "{restart_or} fix or remove {} (it comes before the sockets)",
                props.label(key)
            )
        };

        let mut places = vec![
            Place {
                label: props.label("tc.host"),
                found: tc_found,
                host: tc_host,
                testcontainers_looks: true,
                fix: props_fix("tc.host"),
            },
            Place {
                label: "DOCKER_HOST".into(),
                found: match inputs.process_docker_host.as_deref() {
                    None => "not set".into(),
                    Some(v) if v.trim().is_empty() => "empty (ignored)".into(),
                    Some(v) => v.to_string(),
                },
                host: inputs
                    .process_docker_host
                    .clone()
                    .filter(|v| !v.trim().is_empty()),
                testcontainers_looks: true,
                fix: format!(
                    "{restart_or} point DOCKER_HOST at a running engine (e.g. {DEFAULT_DOCKER_HOST}), \
                     or unset it to let the crate look further"
                ),
            },
            Place {
                label: match &inputs.dotenv_path {
                    Some(p) => format!("DOCKER_HOST from .env at {}", p.display()),
                    None => "DOCKER_HOST from .env".into(),
                },
                found: match (&inputs.dotenv_path, &inputs.dotenv_docker_host) {
                    (None, _) => "no .env file in this directory or its parents".into(),
                    (Some(_), None) => "not set".into(),
                    (Some(_), Some(v)) => v.clone(),
                },
                host: inputs.dotenv_docker_host.clone(),
                testcontainers_looks: false,
                fix: format!(
                    "{restart_or} fix or remove DOCKER_HOST in {}",
                    inputs
                        .dotenv_path
                        .as_deref()
                        .map_or_else(|| ".env".into(), |p| p.display().to_string())
                ),
            },
            Place {
                label: props.label("docker.host"),
                found: dh_found,
                host: dh_host,
                testcontainers_looks: true,
                fix: props_fix("docker.host"),
            },
            socket(
                "/var/run/docker.sock",
                Some(PathBuf::from("/var/run/docker.sock")),
                "",
                true,
            ),
            socket(
                "$XDG_RUNTIME_DIR/.docker/run/docker.sock",
                xdg.map(|d| d.join(".docker/run/docker.sock")),
                no_xdg,
                true,
            ),
            socket(
                "~/.docker/run/docker.sock",
                home.map(|h| h.join(".docker/run/docker.sock")),
                no_home,
                true,
            ),
            socket(
                "~/.docker/desktop/docker.sock",
                home.map(|h| h.join(".docker/desktop/docker.sock")),
                no_home,
                true,
            ),
            socket(
                "$XDG_RUNTIME_DIR/docker.sock (rootless Docker)",
                xdg.map(|d| d.join("docker.sock")),
                no_xdg,
                false,
            ),
        ];
        places.push(Place {
            label: "the default".into(),
            found: DEFAULT_DOCKER_HOST.into(),
            host: Some(DEFAULT_DOCKER_HOST.into()),
            testcontainers_looks: true,
            fix: format!(
                "Start the Docker daemon, or point DOCKER_HOST (environment or .env) or \
                 docker.host in ~/{PROPERTIES_FILE} at a running engine"
            ),
        });

        let chosen = places
            .iter()
            .position(|p| p.host.is_some())
            .expect("the default always names a host");
        // What testcontainers would take with its own inputs: process
        // DOCKER_HOST as it is (even empty), no .env, no rootless socket.
        let testcontainers_choice = places
            .iter()
            .enumerate()
            .filter(|(_, p)| p.testcontainers_looks)
            .find_map(|(i, p)| match i {
                1 => inputs.process_docker_host.clone(),
                _ => p.host.clone(),
            })
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.into());

        let host = places[chosen].host.clone().unwrap_or_default();
        let origin = places[chosen].label.clone();
        let looked = places
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mark = match (i.cmp(&chosen), &p.host) {
                    (std::cmp::Ordering::Equal, _) => "  <- used",
                    (std::cmp::Ordering::Greater, Some(_)) => "  (not used: an earlier place wins)",
                    _ => "",
                };
                format!("  {:>2}. {}: {}{mark}", i + 1, p.label, p.found)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let fix = format!(
            "{}, or set TEST_DATABASE_URL to use an existing server instead of containers",
            places[chosen].fix
        );

        let tls_verify = match (&inputs.tls_verify, props.get("docker.tls.verify").1) {
            (Some(v), _) => v.value.trim() == "1",
            (None, Some(v)) if v == "1" => true,
            (None, Some(v)) if v == "0" => false,
            (None, Some(v)) => {
                return Err(Error::InvalidEnv {
                    var: "docker.tls.verify in ~/.testcontainers.properties",
                    value: redact_value(&v),
                    expected: "1 or 0, as testcontainers reads it",
                })
            }
            (None, None) => false,
        };
        let cert_path = inputs
            .cert_path
            .as_ref()
            .map(|v| PathBuf::from(&v.value))
            .or_else(|| props.get("docker.cert.path").1.map(PathBuf::from));

        let mut exports = Vec::new();
        if testcontainers_choice != host {
            exports.push(("DOCKER_HOST", host.clone()));
        }
        for (name, var) in [
            ("DOCKER_TLS_VERIFY", &inputs.tls_verify),
            ("DOCKER_CERT_PATH", &inputs.cert_path),
        ] {
            if let Some(v) = var.as_ref().filter(|v| v.from_dotenv) {
                exports.push((name, v.value.clone()));
            }
        }

        let published_host = published_host(inputs.host_override.as_ref(), &host)?;
        Ok(Engine {
            host,
            origin,
            published_host,
            tls: Tls {
                verify: tls_verify,
                cert_path,
            },
            looked,
            fix,
            exports,
        })
    }
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
        (
            LABEL_CHECKOUT.to_string(),
            crate::stack::run_key::checkout(),
        ),
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
            let Ok(Ok(info)) = tokio::time::timeout(CALL_TIMEOUT, docker.info()).await else {
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
