//! The places the engine resolution looks at (`engine.rs` gives the order
//! and why), what it reads there, and how it reports them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::docker::client::Tls;
use crate::docker::engine::HOST_OVERRIDE;
use crate::error::{Error, Result};
use crate::target::env::{redact, redact_value, Env};

/// testcontainers' default engine, when nothing else is found.
pub(crate) const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// testcontainers' properties file, in the home directory.
pub(crate) const PROPERTIES_FILE: &str = ".testcontainers.properties";
/// The first words of a fix for an engine that does not answer.
const RESTART_OR: &str = "Start the Docker daemon at that address, or";
const NO_XDG: &str = "XDG_RUNTIME_DIR not set (or not an absolute path)";
const NO_HOME: &str = "no home directory";

/// A variable of the environment: from the process, or from `.env`.
#[derive(Clone, Debug)]
pub(crate) struct Var {
    pub value: String,
    pub from_dotenv: bool,
}

/// What the resolution reads, gathered in one place.
#[derive(Debug)]
pub(crate) struct Inputs {
    /// `DOCKER_HOST` of the process, exactly as testcontainers reads it (even empty).
    pub process_docker_host: Option<String>,
    /// `DOCKER_HOST` of `.env` (used only when the process has none).
    pub dotenv_docker_host: Option<String>,
    pub dotenv_path: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub tls_verify: Option<Var>,
    pub cert_path: Option<Var>,
    pub host_override: Option<Var>,
}

impl Inputs {
    pub(crate) fn from_process() -> Result<Inputs> {
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
pub(crate) struct Properties {
    path: Option<PathBuf>,
    found: bool,
    values: HashMap<String, String>,
}

impl Properties {
    pub(crate) fn read(home: Option<&Path>) -> Result<Properties> {
        let path = home.map(|h| h.join(PROPERTIES_FILE));
        // As testcontainers: an unreadable file is an absent one, a malformed one an error.
        let bytes = path.as_ref().and_then(|p| std::fs::read(p).ok());
        let Some(bytes) = bytes else {
            return Ok(Properties {
                path,
                found: false,
                values: HashMap::new(),
            });
        };
        let shown = path.as_deref().map(Path::display);
        let values = serde_java_properties::from_slice(&bytes).map_err(|e| Error::InvalidEnv {
            var: "~/.testcontainers.properties",
            value: redact(&format!(
                "{} ({e})",
                shown.map(|p| p.to_string()).unwrap_or_default()
            )),
            expected: "key=value lines in Java properties syntax, as testcontainers reads \
                       them (docker.host, tc.host, docker.tls.verify, docker.cert.path)",
        })?;
        Ok(Properties {
            path,
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
pub(crate) struct Place {
    pub label: String,
    /// What was found there, for the error message.
    pub found: String,
    /// The engine address it names, if it names one.
    pub host: Option<String>,
    /// What testcontainers 0.28 takes from here on its own (`None`: it does
    /// not look here, or finds nothing).
    testcontainers_host: Option<String>,
    /// What to change there when its engine does not answer.
    pub fix: String,
}

/// Every place, in order (see `engine.rs`); the last, the default, names a host.
pub(crate) fn places(inputs: &Inputs, props: &Properties) -> Vec<Place> {
    let xdg = inputs.xdg_runtime_dir.as_deref();
    let home = inputs.home.as_deref();
    let under = |dir: Option<&Path>, rel: &str| dir.map(|d| d.join(rel));
    let default_socket = Some(PathBuf::from("/var/run/docker.sock"));
    let rootless = "$XDG_RUNTIME_DIR/docker.sock (rootless Docker)";
    vec![
        property(props, "tc.host"),
        process_docker_host(inputs.process_docker_host.as_deref()),
        dotenv_docker_host(inputs),
        property(props, "docker.host"),
        socket("/var/run/docker.sock", default_socket, "", true),
        socket(
            "$XDG_RUNTIME_DIR/.docker/run/docker.sock",
            under(xdg, ".docker/run/docker.sock"),
            NO_XDG,
            true,
        ),
        socket(
            "~/.docker/run/docker.sock",
            under(home, ".docker/run/docker.sock"),
            NO_HOME,
            true,
        ),
        socket(
            "~/.docker/desktop/docker.sock",
            under(home, ".docker/desktop/docker.sock"),
            NO_HOME,
            true,
        ),
        socket(rootless, under(xdg, "docker.sock"), NO_XDG, false),
        Place {
            label: "the default".into(),
            found: DEFAULT_DOCKER_HOST.into(),
            host: Some(DEFAULT_DOCKER_HOST.into()),
            testcontainers_host: Some(DEFAULT_DOCKER_HOST.into()),
            fix: format!(
                "Start the Docker daemon, or point DOCKER_HOST (environment or .env) or \
                 docker.host in ~/{PROPERTIES_FILE} at a running engine"
            ),
        },
    ]
}

/// What testcontainers would take with its own inputs: the process's
/// `DOCKER_HOST` as it is (even empty), no `.env`, no rootless socket.
pub(crate) fn testcontainers_choice(places: &[Place]) -> String {
    places
        .iter()
        .find_map(|p| p.testcontainers_host.clone())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.into())
}

/// Every place, one numbered line each, marking the one used.
pub(crate) fn looked(places: &[Place], chosen: usize) -> String {
    places
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
        .join("\n")
}

/// TLS as testcontainers reads it: the environment (or `.env`) over the
/// properties file.
pub(crate) fn tls(inputs: &Inputs, props: &Properties) -> Result<Tls> {
    let verify = match (&inputs.tls_verify, props.get("docker.tls.verify").1) {
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
    Ok(Tls { verify, cert_path })
}

fn property(props: &Properties, key: &str) -> Place {
    let (found, host) = props.get(key);
    Place {
        label: props.label(key),
        found,
        testcontainers_host: host.clone(),
        host,
        fix: format!(
            "{RESTART_OR} fix or remove {} (it comes before the sockets)",
            props.label(key)
        ),
    }
}

fn process_docker_host(value: Option<&str>) -> Place {
    Place {
        label: "DOCKER_HOST".into(),
        found: match value {
            None => "not set".into(),
            Some(v) if v.trim().is_empty() => "empty (ignored)".into(),
            Some(v) => v.to_string(),
        },
        host: value.filter(|v| !v.trim().is_empty()).map(str::to_string),
        testcontainers_host: value.map(str::to_string),
        fix: format!(
            "{RESTART_OR} point DOCKER_HOST at a running engine (e.g. {DEFAULT_DOCKER_HOST}), \
             or unset it to let the crate look further"
        ),
    }
}

fn dotenv_docker_host(inputs: &Inputs) -> Place {
    let path = inputs.dotenv_path.as_deref().map(Path::display);
    Place {
        label: match &path {
            Some(p) => format!("DOCKER_HOST from .env at {p}"),
            None => "DOCKER_HOST from .env".into(),
        },
        found: match (&path, &inputs.dotenv_docker_host) {
            (None, _) => "no .env file in this directory or its parents".into(),
            (Some(_), None) => "not set".into(),
            (Some(_), Some(v)) => v.clone(),
        },
        host: inputs.dotenv_docker_host.clone(),
        testcontainers_host: None,
        fix: format!(
            "{RESTART_OR} fix or remove DOCKER_HOST in {}",
            path.map_or_else(|| ".env".into(), |p| p.to_string())
        ),
    }
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
        testcontainers_host: host.clone().filter(|_| testcontainers_looks),
        host,
        fix,
    }
}
