//! The Docker engine is found where testcontainers finds it: its properties
//! file, `DOCKER_HOST` (process, then `.env`), the rootless and per-user
//! sockets; image builds (testcontainers) and containers (bollard) go to
//! that one engine; and when it does not answer, the error lists every
//! place looked at.
//!
//! Resolution is per process, so each case runs the crate's binary under a
//! controlled environment (`env_clear()`, its own `HOME`, working directory
//! and `.env`). The engine is reached through a Unix socket this test
//! forwards to the real `/var/run/docker.sock`, counting connections, and
//! telling testcontainers' (User-Agent `tc-rust/...`) from the crate's own.
//! Where a case must leave no other way to Docker, the binary runs in a
//! mount namespace with an empty `/run` (so `/var/run/docker.sock` is
//! absent): `unshare` (util-linux), as root or in a user namespace. Where
//! neither is allowed those cases fail, saying so, rather than pass unchecked.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::containers_with;
use pgbouncer_fixtures::sqlx;
use rstest::rstest;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const BIN: &str = env!("CARGO_BIN_EXE_pgbouncer-fixtures");
const REAL_ENGINE: &str = "/var/run/docker.sock";

/// A Unix socket forwarding every connection to the real engine.
struct Proxy {
    path: PathBuf,
    connections: Arc<AtomicUsize>,
    testcontainers: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    fn start(path: &Path) -> Proxy {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(path).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let testcontainers = Arc::new(AtomicUsize::new(0));
        let (all, tc) = (connections.clone(), testcontainers.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                all.fetch_add(1, Ordering::SeqCst);
                let tc = tc.clone();
                tokio::spawn(async move {
                    // The first request's headers say who is calling.
                    let mut first = vec![0u8; 64 * 1024];
                    let Ok(n) = client.read(&mut first).await else {
                        return;
                    };
                    if first[..n].windows(8).any(|w| w == b"tc-rust/") {
                        tc.fetch_add(1, Ordering::SeqCst);
                    }
                    let Ok(mut engine) = UnixStream::connect(REAL_ENGINE).await else {
                        return;
                    };
                    if engine.write_all(&first[..n]).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        Proxy {
            path: path.to_path_buf(),
            connections,
            testcontainers,
            task,
        }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Asserts that both halves of the crate came through this socket: its
    /// own bollard connections and testcontainers' client.
    fn assert_both_halves_used_it(&self, what: &str) {
        let all = self.connections.load(Ordering::SeqCst);
        let tc = self.testcontainers.load(Ordering::SeqCst);
        assert!(
            tc >= 1,
            "{what}: testcontainers never came through {}",
            self.path.display()
        );
        assert!(
            all > tc,
            "{what}: the crate's own Docker connections never came through {} ({all} connections, all testcontainers')",
            self.path.display()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A home directory, a working directory (the checkout label of whatever
/// the binary creates) and a run directory, all fresh.
struct Scene {
    _dir: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
    xdg: PathBuf,
    /// Hide `/var/run/docker.sock` from the binary.
    hide_default_socket: bool,
    env: Vec<(String, String)>,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (home, work, xdg) = (root.join("home"), root.join("work"), root.join("xdg"));
        for d in [&home, &work, &xdg] {
            std::fs::create_dir_all(d).unwrap();
        }
        Scene {
            _dir: dir,
            home,
            work,
            xdg,
            hide_default_socket: false,
            env: Vec::new(),
        }
    }

    fn hide_default_socket(mut self) -> Scene {
        self.hide_default_socket = true;
        self
    }

    fn env(mut self, name: &str, value: &str) -> Scene {
        self.env.push((name.into(), value.into()));
        self
    }

    fn properties(self, content: &str) -> Scene {
        std::fs::write(self.home.join(".testcontainers.properties"), content).unwrap();
        self
    }

    fn dotenv(self, content: &str) -> Scene {
        std::fs::write(self.work.join(".env"), content).unwrap();
        self
    }

    fn properties_path(&self) -> String {
        self.home
            .join(".testcontainers.properties")
            .display()
            .to_string()
    }

    fn dotenv_path(&self) -> String {
        self.work.join(".env").display().to_string()
    }

    /// The binary with `args`, under this scene's environment only.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.hide_default_socket {
            // An empty /run in a mount namespace of its own: no
            // /var/run/docker.sock (a symlink into /run) for the binary.
            // Without root, a user namespace grants the mount.
            let mut c = Command::new("unshare");
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                c.args(["--user", "--map-root-user"]);
            }
            c.args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                "mount -t tmpfs pgbf-empty-run /run && test ! -e /var/run/docker.sock && exec \"$@\"",
                "sh",
                BIN,
            ]);
            c
        } else {
            Command::new(BIN)
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.work);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the binary runs")
    }

    /// `gc --checkout WORK`: resolves the engine (checking testcontainers'
    /// client against it) and lists this scene's containers.
    fn gc(&self) -> (String, String) {
        let out = self.run(&["gc", "--checkout", &self.work.display().to_string()]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "gc failed (an `unshare`/`mount` error means this machine cannot hide /run: \
             run as root or allow user namespaces):\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("gc: removed 0 container(s),"), "{stdout}");
        (stdout, stderr)
    }

    fn containers(&self) -> Vec<String> {
        containers_with(&format!(
            "pgbouncer-fixtures.checkout={}",
            self.work.display()
        ))
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `up`, with its pipes kept open (it reports on them while it stops).
struct Up {
    child: std::process::Child,
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    _stderr: std::io::Lines<BufReader<std::process::ChildStderr>>,
}

/// Runs `up` in `scene`: the stack starts, its printed URL answers a query
/// through PgBouncer, SIGINT removes it. Returns the scene, up's stderr up to
/// "ready", and the pooled URL.
async fn up_works(scene: Scene) -> (Scene, String, String) {
    let (scene, up, stderr, pooled) = tokio::task::spawn_blocking(move || {
        let mut child = scene
            // PgBouncer's own URL, not the default profile's stage (which
            // `up` serves on 127.0.0.1): it names the engine's host.
            .command(&["up", "--profile", "supabase-dedicated"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let Some(Ok(pooled)) = stdout.next() else {
            let _ = child.kill();
            let rest: Vec<String> = stderr.map_while(Result::ok).collect();
            panic!(
                "up printed no URL (an `unshare`/`mount` error means this machine cannot \
                 hide /run: run as root or allow user namespaces):\n{}",
                rest.join("\n")
            );
        };
        let mut seen = Vec::new();
        for line in stderr.by_ref().map_while(Result::ok) {
            let ready = line.contains(" ready in ");
            seen.push(line);
            if ready {
                break;
            }
        }
        let pooled = pooled
            .strip_prefix("TEST_DATABASE_URL=")
            .expect("up's first line")
            .to_string();
        let up = Up {
            child,
            _stdout: stdout,
            _stderr: stderr,
        };
        (scene, up, seen.join("\n"), pooled)
    })
    .await
    .unwrap();
    assert!(
        stderr.contains(" ready in "),
        "up never got ready:\n{stderr}"
    );

    let mut conn = PgConnection::connect(&pooled)
        .await
        .expect("the URL up printed reaches PgBouncer");
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(scene.containers().len(), 2, "PostgreSQL and PgBouncer run");

    let mut up = up;
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(up.child.id() as i32, libc::SIGINT);
    }
    let status = tokio::task::spawn_blocking(move || up.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "up exits 0 after SIGINT: {status}");
    assert!(
        scene.containers().is_empty(),
        "up removed its containers through the same engine"
    );
    (scene, stderr, pooled)
}

/// The "done when": `DOCKER_HOST` unset, `/var/run/docker.sock`
/// absent, the engine reachable only through a socket named by `docker.host`
/// in `~/.testcontainers.properties`: `up` builds/finds the images
/// (testcontainers), starts the stack (bollard), and it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_named_in_the_testcontainers_properties_file_runs_a_stack() {
    let scene = Scene::new().hide_default_socket();
    let proxy = Proxy::start(&scene.work.join("../engine/docker.sock"));
    let scene = scene.properties(&format!("docker.host={}\n", proxy.url()));
    let properties = scene.properties_path();
    let (scene, stderr, _) = up_works(scene).await;
    assert!(
        stderr.contains(&format!(
            "Docker engine {} (docker.host in {properties})",
            proxy.url()
        )),
        "{stderr}"
    );
    proxy.assert_both_halves_used_it("up");
    let (_, stderr) = scene.gc();
    assert!(stderr.contains("docker.host in"), "{stderr}");
}

/// `DOCKER_HOST` in the `.env` of the directory the tests run in, with no
/// other way to the engine: testcontainers alone would not see it, so the
/// crate hands it over (and `TESTCONTAINERS_HOST_OVERRIDE` from the same
/// file names the host of the printed URLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_host_in_dotenv_runs_a_stack() {
    let scene = Scene::new().hide_default_socket();
    let proxy = Proxy::start(&scene.work.join("../engine/docker.sock"));
    let scene = scene.dotenv(&format!(
        "DOCKER_HOST={}\nTESTCONTAINERS_HOST_OVERRIDE=localhost\n",
        proxy.url()
    ));
    let dotenv = scene.dotenv_path();
    let (_scene, stderr, pooled) = up_works(scene).await;
    assert!(
        stderr.contains(&format!(
            "Docker engine {} (DOCKER_HOST from .env at {dotenv}); published ports answer on localhost",
            proxy.url()
        )),
        "{stderr}"
    );
    assert!(
        pooled.contains("@localhost:"),
        "the override names the URLs' host"
    );
    proxy.assert_both_halves_used_it("up");
}

/// Rootless Docker's own socket, `$XDG_RUNTIME_DIR/docker.sock`, with no
/// other way to the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rootless_socket_under_xdg_runtime_dir_runs_a_stack() {
    let scene = Scene::new().hide_default_socket();
    let proxy = Proxy::start(&scene.xdg.join("docker.sock"));
    let xdg = scene.xdg.display().to_string();
    let scene = scene.env("XDG_RUNTIME_DIR", &xdg);
    let (_scene, stderr, _) = up_works(scene).await;
    assert!(
        stderr.contains(&format!(
            "Docker engine {} ($XDG_RUNTIME_DIR/docker.sock (rootless Docker))",
            proxy.url()
        )),
        "{stderr}"
    );
    proxy.assert_both_halves_used_it("up");
}

/// Where each place comes in testcontainers' order: the engine at the
/// proxy wins over a dead one named further down (or over the real socket),
/// and testcontainers' own client reaches the same proxy (the crate checks
/// that in every process; `gc` resolves and checks, then lists).
#[rstest]
#[case::tc_host_beats_docker_host("tc.host")]
#[case::process_docker_host_beats_dotenv("process")]
#[case::dotenv_beats_docker_host_property("dotenv")]
#[case::docker_host_property_beats_the_default_socket("docker.host")]
#[case::testcontainers_rootless_path("xdg-testcontainers")]
#[case::docker_desktop_run_socket("desktop-run")]
#[case::docker_desktop_socket("desktop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_come_in_testcontainers_order(#[case] place: &str) {
    let dead = "unix:///nonexistent/pgbf/docker.sock";
    let scene = Scene::new();
    let (proxy, scene, origin) = match place {
        "tc.host" => {
            let proxy = Proxy::start(&scene.work.join("../engine/docker.sock"));
            let scene = scene
                .properties(&format!("tc.host={}\n", proxy.url()))
                .env("DOCKER_HOST", dead);
            let origin = format!("tc.host in {}", scene.properties_path());
            (proxy, scene, origin)
        }
        "process" => {
            let proxy = Proxy::start(&scene.work.join("../engine/docker.sock"));
            let url = proxy.url();
            let scene = scene
                .dotenv(&format!("DOCKER_HOST={dead}\n"))
                .env("DOCKER_HOST", &url);
            (proxy, scene, "DOCKER_HOST".to_string())
        }
        "dotenv" => {
            // testcontainers alone would take /var/run/docker.sock here: the
            // proxy seeing its client shows the crate handed DOCKER_HOST over.
            let proxy = Proxy::start(&scene.work.join("../engine/docker.sock"));
            let scene = scene
                .dotenv(&format!("DOCKER_HOST={}\n", proxy.url()))
                .properties(&format!("docker.host={dead}\n"));
            let origin = format!("DOCKER_HOST from .env at {}", scene.dotenv_path());
            (proxy, scene, origin)
        }
        "docker.host" => {
            let proxy = Proxy::start(&scene.work.join("../engine/docker.sock"));
            let scene = scene.properties(&format!("docker.host={}\n", proxy.url()));
            let origin = format!("docker.host in {}", scene.properties_path());
            (proxy, scene, origin)
        }
        "xdg-testcontainers" => {
            let proxy = Proxy::start(&scene.xdg.join(".docker/run/docker.sock"));
            let xdg = scene.xdg.display().to_string();
            let scene = scene.hide_default_socket().env("XDG_RUNTIME_DIR", &xdg);
            (
                proxy,
                scene,
                "$XDG_RUNTIME_DIR/.docker/run/docker.sock".to_string(),
            )
        }
        "desktop-run" => {
            let proxy = Proxy::start(&scene.home.join(".docker/run/docker.sock"));
            let scene = scene.hide_default_socket();
            (proxy, scene, "~/.docker/run/docker.sock".to_string())
        }
        "desktop" => {
            let proxy = Proxy::start(&scene.home.join(".docker/desktop/docker.sock"));
            let scene = scene.hide_default_socket();
            (proxy, scene, "~/.docker/desktop/docker.sock".to_string())
        }
        other => unreachable!("{other}"),
    };
    let (_, stderr) = tokio::task::spawn_blocking(move || scene.gc())
        .await
        .unwrap();
    assert!(
        stderr.contains(&format!("Docker engine {} ({origin})", proxy.url())),
        "{stderr}"
    );
    proxy.assert_both_halves_used_it(place);
}

/// Nothing answers anywhere: the error lists all ten places, with what was
/// found at each, and names the fix.
#[test]
fn when_no_engine_is_found_the_error_lists_every_place() {
    let scene = Scene::new().hide_default_socket().dotenv("UNRELATED=1\n");
    let xdg = scene.xdg.display().to_string();
    let home = scene.home.display().to_string();
    let scene = scene.env("XDG_RUNTIME_DIR", &xdg);
    let out = scene.run(&["up"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let properties = scene.properties_path();
    for expected in [
        "Docker is unreachable at unix:///var/run/docker.sock (the default)".to_string(),
        format!(" 1. tc.host in {properties}: no such file"),
        " 2. DOCKER_HOST: not set".to_string(),
        format!(" 3. DOCKER_HOST from .env at {}: not set", scene.dotenv_path()),
        format!(" 4. docker.host in {properties}: no such file"),
        " 5. /var/run/docker.sock: absent".to_string(),
        format!(" 6. $XDG_RUNTIME_DIR/.docker/run/docker.sock: {xdg}/.docker/run/docker.sock (absent)"),
        format!(" 7. ~/.docker/run/docker.sock: {home}/.docker/run/docker.sock (absent)"),
        format!(" 8. ~/.docker/desktop/docker.sock: {home}/.docker/desktop/docker.sock (absent)"),
        format!(" 9. $XDG_RUNTIME_DIR/docker.sock (rootless Docker): {xdg}/docker.sock (absent)"),
        "10. the default: unix:///var/run/docker.sock  <- used".to_string(),
        "Start the Docker daemon, or point DOCKER_HOST (environment or .env) or docker.host in ~/.testcontainers.properties at a running engine".to_string(),
        "or set TEST_DATABASE_URL".to_string(),
    ] {
        assert!(stderr.contains(&expected), "missing `{expected}` in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A rootless engine that stopped leaves its socket behind: that socket is
/// chosen (as testcontainers would), refuses, and the error says so.
#[test]
fn a_stale_rootless_socket_is_named_with_the_fix() {
    let scene = Scene::new().hide_default_socket();
    let socket = scene.xdg.join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let xdg = scene.xdg.display().to_string();
    let scene = scene.env("XDG_RUNTIME_DIR", &xdg);
    let out = scene.run(&["gc", "--checkout", &scene.work.display().to_string()]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Docker is unreachable at unix://{} ($XDG_RUNTIME_DIR/docker.sock (rootless Docker))",
            socket.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("a socket left by a stopped engine answers nothing; remove it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Connection refused"),
        "the cause is named: {stderr}"
    );
    assert!(stderr.contains("<- used"), "{stderr}");
}

/// The crate never falls through to another engine: a dead `docker.host`
/// is an error even though `/var/run/docker.sock` answers, and the error
/// says that socket was there but not used.
#[test]
fn a_dead_engine_is_an_error_not_a_fall_through() {
    let scene = Scene::new().properties("docker.host=unix:///nonexistent/pgbf/docker.sock\n");
    let out = scene.run(&["gc", "--checkout", &scene.work.display().to_string()]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let properties = scene.properties_path();
    assert!(
        stderr.contains(&format!(
            "Docker is unreachable at unix:///nonexistent/pgbf/docker.sock (docker.host in {properties})"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("fix or remove docker.host in {properties}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(" 5. /var/run/docker.sock: present  (not used: an earlier place wins)"),
        "{stderr}"
    );
}

/// `TESTCONTAINERS_HOST_OVERRIDE` that cannot be a host is a typed error
/// naming the variable, before anything is started; never a panic.
#[rstest]
#[case("tcp://docker.internal:2375")]
#[case("a host")]
#[case("[::1")]
fn a_bad_host_override_names_the_variable(#[case] value: &str) {
    let scene = Scene::new().env("TESTCONTAINERS_HOST_OVERRIDE", value);
    let out = scene.run(&["up"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("TESTCONTAINERS_HOST_OVERRIDE=") && stderr.contains("is invalid"),
        "{stderr}"
    );
    assert!(stderr.contains("a host name or IP address"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(scene.containers().is_empty());
}

/// A properties file testcontainers would refuse is refused too, as a typed
/// error naming the file and the expected syntax; never a panic.
#[rstest]
#[case::bad_escape("docker.host=\\u12zz\n", "encoding: not hex")]
#[case::tls_verify_not_a_number("docker.tls.verify=true\n", "expected 1 or 0")]
fn a_malformed_properties_file_is_a_typed_error(#[case] content: &str, #[case] expected: &str) {
    let scene = Scene::new().properties(content);
    let out = scene.run(&["gc", "--checkout", &scene.work.display().to_string()]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("~/.testcontainers.properties"), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
