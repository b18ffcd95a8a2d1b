//! Real faults, injected with the docker CLI and signals, each with its
//! outcome asserted. Every test works on a stack of its own (a unique run
//! id), never on the stack other tests of the run share.

mod common;

use std::fs;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{container_id, docker, lock_dir, stack_containers, unique_run_id};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Error, Stack, StackSettings, Target, TestDb};
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_pgbouncer-fixtures");

/// Longer than any documented bound: a stack still here after this leaked.
const LEAK_LIMIT: Duration = Duration::from_secs(90);
/// The reaping contract (gone <= 15 s after the last lease closes) with a
/// margin for a loaded machine: slower is a regression, not a leak.
const REAP_CONTRACT: Duration = Duration::from_secs(30);

fn settings(what: &str) -> StackSettings {
    StackSettings::default().with_run_id(unique_run_id(what))
}

async fn db_on(settings: &StackSettings, name: &str) -> TestDb {
    TestDb::builder()
        .target(Target::Containers(settings.clone()))
        .test_name(name)
        .build()
        .await
        .unwrap()
}

/// Waits until stack `id` has no container left; returns how long it took.
fn wait_until_reaped(id: &str) -> Duration {
    let started = Instant::now();
    while !stack_containers(id).is_empty() {
        assert!(
            started.elapsed() < LEAK_LIMIT,
            "stack {id} still has containers {:?} after {LEAK_LIMIT:?}",
            stack_containers(id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

#[tokio::test]
async fn a_killed_postgres_fails_the_next_connect_and_the_next_testdb_gets_a_fresh_stack() {
    let settings = settings("kill-postgres");
    let db = db_on(&settings, "before_the_kill").await;
    let stack = Stack::shared(&settings).await.unwrap();
    let pg = format!("pgbf-{}-postgres", stack.id());
    let old_container = container_id(&pg).expect("the stack's PostgreSQL container");
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();

    docker(&["kill", &pg]);
    let started = Instant::now();
    let err = db.connect().await.unwrap_err();
    println!(
        "connect() after `docker kill` of PostgreSQL failed in {:.2} s: {err}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        matches!(&err, Error::StackDied { stack: s, .. } if s == stack.id()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("the test stack {} died", stack.id())),
        "{msg}"
    );
    assert!(msg.contains("starts a fresh stack"), "{msg}");
    assert!(matches!(stack.check().await, Err(Error::StackDied { .. })));
    drop(conn);
    drop(db); // its database died with the stack: dropping must not hang

    // The next TestDb replaces the dead stack and works.
    let db = db_on(&settings, "after_the_kill").await;
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    let new_container = container_id(&pg).expect("a new PostgreSQL container");
    assert_ne!(new_container, old_container);
    drop(conn);
    db.close().await.unwrap();
}

/// A process whose shared stack died gets a replacement stack under the same
/// id: its template must be built there again, not taken as done.
#[tokio::test]
async fn a_replacement_stack_gets_its_template_built_again() {
    let settings = settings("template-after-kill");
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("0001_items.sql"),
        "create table items (id int primary key);",
    )
    .unwrap();
    let with_template = || async {
        TestDb::builder()
            .target(Target::Containers(settings.clone()))
            .template(pgbouncer_fixtures::Template::new().migrations_dir(dir.path()))
            .build()
            .await
    };
    let db = with_template().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    sqlx::raw_sql("select count(*) from items")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let stack = Stack::shared(&settings).await.unwrap();
    docker(&["kill", &format!("pgbf-{}-postgres", stack.id())]);
    assert!(matches!(stack.check().await, Err(Error::StackDied { .. })));
    drop(db);

    let db = with_template()
        .await
        .expect("the template is built on the new stack");
    let mut conn = db.connect_direct().await.unwrap();
    sqlx::raw_sql("select count(*) from items")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_restarted_pgbouncer_serves_new_connections_once_it_is_back() {
    restart_pgbouncer("restart", false).await;
}

/// A transaction open through PgBouncer holds up its safe shutdown: after
/// 1 s the old PgBouncer is killed, and the new one must not start while
/// the old one still holds port 6432 (it would fail to bind and the stack
/// would have no pooler).
#[tokio::test]
async fn a_pgbouncer_restarted_during_a_transaction_serves_new_connections_once_it_is_back() {
    restart_pgbouncer("restart_mid_tx", true).await;
}

async fn restart_pgbouncer(name: &str, in_transaction: bool) {
    let settings = settings(name);
    let db = db_on(&settings, name).await;
    let stack = Stack::shared(&settings).await.unwrap();
    let pgbouncer = format!("pgbf-{}-pgbouncer", stack.id());
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    if in_transaction {
        sqlx::raw_sql("begin; select 1")
            .execute(&mut conn)
            .await
            .unwrap();
    }

    // SIGHUP to the container's entrypoint restarts PgBouncer in place
    // (`docker restart` of an AutoRemove container can end with Docker
    // removing it: its exit handling races the new start).
    docker(&["kill", "-s", "HUP", &pgbouncer]);
    let started = Instant::now();
    // The old PgBouncer is gone once the entrypoint says it starts the new one.
    let logs = || {
        let out = Command::new("docker")
            .args(["logs", &pgbouncer])
            .output()
            .expect("docker CLI runs");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    while !logs().contains("restarting PgBouncer (SIGHUP)") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "PgBouncer was not restarted: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last = None;
    let answered = loop {
        match db.connect().await {
            Ok(mut c) => match sqlx::raw_sql("select 1").execute(&mut c).await {
                Ok(_) => break true,
                Err(e) => last = Some(e.to_string()),
            },
            Err(e) => {
                assert!(
                    !matches!(e, Error::StackDied { .. }),
                    "a PgBouncer restart is not a dead stack: {e}"
                );
                last = Some(e.to_string());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        answered,
        "PgBouncer never came back: {last:?}\ncontainers: {:?}\nPgBouncer's log:\n{}",
        stack_containers(stack.id()),
        Command::new("docker")
            .args(["logs", "--tail", "30", &pgbouncer])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    );
    println!(
        "{name}: new connections work again {:.2} s after the restart was asked",
        started.elapsed().as_secs_f64()
    );
    stack.check().await.unwrap();
    // The old client connection went down with the old PgBouncer.
    assert!(sqlx::raw_sql("select 1").execute(&mut conn).await.is_err());
    db.close().await.unwrap();
}

/// `pgbouncer-fixtures up`, its output in files (a pipe nobody reads could block it).
struct Up {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Up {
    fn spawn(args: &[&str]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let child = Command::new(BIN)
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Up {
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// Waits for the line announcing the stack; returns (stack id, pooled URL).
    fn ready(&mut self) -> (String, String) {
        let started = Instant::now();
        loop {
            let err = fs::read_to_string(&self.stderr).unwrap_or_default();
            if let Some(id) = stack_id_in(&err) {
                let out = fs::read_to_string(&self.stdout).unwrap();
                let url = out
                    .lines()
                    .find_map(|l| l.strip_prefix("TEST_DATABASE_URL="))
                    .expect("the URL is printed before the ready line")
                    .to_string();
                return (id, url);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("`up` exited with {status}: {err}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "`up` never got ready: {err}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stack_id_in(stderr: &str) -> Option<String> {
    let rest = stderr.split(" stack ").nth(1)?;
    let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    (!id.is_empty() && rest[id.len()..].starts_with(' ')).then_some(id)
}

async fn answers(url: &str) -> bool {
    match PgConnection::connect(url).await {
        Ok(mut c) => sqlx::raw_sql("select 1").execute(&mut c).await.is_ok(),
        Err(_) => false,
    }
}

/// Two processes asking for the same run's stack at the same instant end
/// with one stack; both use it; SIGKILL of both leaves nothing behind.
#[tokio::test]
async fn racing_processes_share_one_stack_and_sigkill_of_all_of_them_reaps_it() {
    let run = unique_run_id("race");
    // PgBouncer's own URL (each `up` serves a stage of its own for a
    // profile behind one).
    let args = ["--run-id", &run, "--profile", "supabase-dedicated"];
    let mut a = Up::spawn(&args);
    let mut b = Up::spawn(&args);
    let (id_a, url_a) = a.ready();
    let (id_b, url_b) = b.ready();
    assert_eq!(id_a, id_b, "one stack for the run");
    assert_eq!(url_a, url_b);
    let verbs = [a.stderr(), b.stderr()].map(|e| {
        if e.contains("joined shared stack") {
            "joined"
        } else {
            "started"
        }
    });
    assert!(
        verbs.contains(&"joined") && verbs.contains(&"started"),
        "{verbs:?}"
    );
    assert_eq!(
        stack_containers(&id_a).len(),
        2,
        "one PostgreSQL, one PgBouncer"
    );
    assert!(answers(&url_a).await);

    // The lock that serialised them is gone with its last holder.
    let lock = lock_dir().join(format!("{id_a}.lock"));
    assert!(!lock.exists(), "{} left behind", lock.display());

    a.sigkill();
    b.sigkill();
    let took = wait_until_reaped(&id_a);
    println!("REAP_AFTER_SIGKILL_SECS={:.1}", took.as_secs_f64());
    assert!(took < REAP_CONTRACT, "reaped after {took:?}");
}

/// `up` without a run id owns a private stack; SIGKILL cannot run its
/// clean-up, and the stack goes anyway.
#[tokio::test]
async fn sigkill_of_the_owner_of_a_private_stack_reaps_it() {
    let mut up = Up::spawn(&[]);
    let (id, url) = up.ready();
    assert_eq!(stack_containers(&id).len(), 2);
    assert!(answers(&url).await);
    up.sigkill();
    let took = wait_until_reaped(&id);
    println!(
        "private stack reaped {:.1} s after SIGKILL",
        took.as_secs_f64()
    );
    assert!(took < REAP_CONTRACT, "reaped after {took:?}");
}

/// Joining a live stack takes no lock (the lock only serialises creating
/// or replacing one): a process joins while another holds the run's lock,
/// as a creator holds it while the stack starts. Under nextest, processes
/// start two at a time: a joiner used to wait ~20 ms for the other's checks.
#[tokio::test]
async fn a_live_stack_is_joined_while_another_process_holds_the_runs_lock() {
    use std::os::unix::io::AsRawFd;
    let run = unique_run_id("lockfree");
    let mut holder = Up::spawn(&["--run-id", &run]);
    let (id, _) = holder.ready();
    let path = lock_dir().join(format!("{id}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a valid open descriptor; LOCK_NB never blocks.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "nobody else holds the run's lock");

    let mut settings = StackSettings::default().with_run_id(run);
    // A joiner that waited for the lock would fail after this.
    settings.startup_timeout = Duration::from_secs(3);
    let started = Instant::now();
    let joined = Stack::shared(&settings).await;
    let took = started.elapsed();
    fs::remove_file(&path).unwrap();
    drop(lock);
    let stack = joined.unwrap_or_else(|e| panic!("no join while the lock was held: {e}"));
    assert_eq!(stack.id(), id);
    assert!(stack.joined(), "the live stack was joined, not replaced");
    println!(
        "joined in {:.1} ms with the lock held elsewhere",
        took.as_secs_f64() * 1e3
    );
    let db = db_on(&settings, "lock-free joiner").await;
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    drop(conn);
    db.close().await.unwrap();
    holder.sigkill();
}

/// A joiner re-checks the stack it finds: a run's stack that lost its
/// PgBouncer is replaced, not joined.
#[tokio::test]
async fn a_joiner_replaces_a_broken_stack() {
    let run = unique_run_id("broken");
    let mut holder = Up::spawn(&["--run-id", &run]);
    let (id, _) = holder.ready();
    let pg = format!("pgbf-{id}-postgres");
    let old_container = container_id(&pg).unwrap();
    docker(&["kill", &format!("pgbf-{id}-pgbouncer")]);

    let settings = StackSettings::default().with_run_id(run);
    let db = db_on(&settings, "joiner").await;
    let stack = Stack::shared(&settings).await.unwrap();
    assert_eq!(stack.id(), id, "same run, same stack id");
    assert!(!stack.joined(), "the broken stack was not joined");
    assert_ne!(container_id(&pg).unwrap(), old_container);
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    drop(conn);
    db.close().await.unwrap();
    holder.sigkill();
}

#[tokio::test]
async fn gc_removes_a_stack_and_says_what_it_removed() {
    let stack = Stack::start(StackSettings::default()).await.unwrap();
    let id = stack.id().to_string();
    assert_eq!(stack_containers(&id).len(), 2);
    let stdout = common::gc_stack(&id);
    assert!(
        stdout.contains(&format!("removed container pgbf-{id}-postgres")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("removed container pgbf-{id}-pgbouncer")),
        "{stdout}"
    );
    assert!(stdout.contains("gc: removed 2 container(s)"), "{stdout}");
    assert!(stack_containers(&id).is_empty());
    assert!(matches!(stack.check().await, Err(Error::StackDied { .. })));
    // Stopping a stack that gc already removed is not an error.
    stack.stop().await.unwrap();
}

/// A Docker endpoint that accepts connections and never answers: a clear
/// error, not a hang.
#[test]
fn a_silent_docker_daemon_is_an_error_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .arg("up")
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Docker is unreachable at tcp://127.0.0.1:{port} (DOCKER_HOST)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("no answer within"), "{stderr}");
    drop(listener);
}

#[test]
fn gc_refuses_unknown_options() {
    let out = Command::new(BIN)
        .args(["gc", "--everything"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unexpected argument '--everything'")
            && stderr.contains("Usage: pgbouncer-fixtures gc"),
        "{stderr}"
    );
}

/// Warnings logged by the crate in this test process, captured as text.
fn captured_warnings() -> &'static std::sync::Mutex<Vec<u8>> {
    use std::sync::{Mutex, OnceLock};
    static BUF: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Sink(&'static Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(buf))
            .try_init()
            .expect("no other subscriber in this test binary");
        buf
    })
}

/// A process whose stack dies hears about it at once, from its worker, not
/// at its next call; the next call then fails with `StackDied`.
#[tokio::test]
async fn a_dying_stack_is_warned_about_at_once() {
    let warnings = captured_warnings();
    let settings = settings("warn-at-once");
    let stack = Stack::shared(&settings).await.unwrap();
    let needle = format!("the test stack {} died", stack.id());
    docker(&["kill", &format!("pgbf-{}-postgres", stack.id())]);
    let killed = Instant::now();
    let line = loop {
        let text = String::from_utf8_lossy(&warnings.lock().unwrap()).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains(&needle)) {
            break line.to_string();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no warning about stack {} within 15 s of its death; captured: {text}",
            stack.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "warned {:.2} s after `docker kill`: {line}",
        killed.elapsed().as_secs_f64()
    );
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("fails with StackDied"), "{line}");
    assert!(
        matches!(stack.check().await, Err(Error::StackDied { .. })),
        "the next call says StackDied"
    );
}

/// Create-or-join leaves no lock file: it is unlinked by its last holder.
#[tokio::test]
async fn a_run_leaves_no_lock_file() {
    let settings = settings("no-lock-file");
    let stack = Stack::shared(&settings).await.unwrap();
    let lock = lock_dir().join(format!("{}.lock", stack.id()));
    assert!(lock_dir().is_dir(), "the lock directory was used");
    assert!(!lock.exists(), "{} left behind", lock.display());
    stack.check().await.unwrap();
}

/// `gc` removes lock files nobody holds (left by a process killed while it
/// started a stack, or by older versions) and keeps a held one.
#[test]
fn gc_removes_stale_lock_files_and_keeps_held_ones() {
    use std::os::unix::io::AsRawFd;
    let dir = lock_dir();
    fs::create_dir_all(&dir).unwrap();
    let tag = unique_run_id("gc-locks");
    let stale = dir.join(format!("{tag}-stale.lock"));
    let held = dir.join(format!("{tag}-held.lock"));
    let other = dir.join(format!("{tag}-not-a-lock.txt"));
    fs::write(&stale, "pid=1\n").unwrap();
    fs::write(&other, "").unwrap();
    let holder = fs::File::create(&held).unwrap();
    // SAFETY: a valid open descriptor; LOCK_NB never blocks.
    assert_eq!(
        unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );

    let stdout = common::gc_stack(&tag);
    assert!(!stale.exists(), "the stale lock file is removed");
    assert!(
        stdout.contains(&format!("removed lock file {}", stale.display())),
        "{stdout}"
    );
    assert!(held.exists(), "a held lock file is kept");
    assert!(!stdout.contains(&held.display().to_string()), "{stdout}");
    assert!(other.exists(), "only *.lock files are touched");
    drop(holder);
    fs::remove_file(&held).unwrap();
    fs::remove_file(&other).unwrap();
}

/// The pids of the watchdog's psql in a stack's PostgreSQL container.
fn watchdog_psql(stack_id: &str) -> Vec<String> {
    docker(&[
        "exec",
        &format!("pgbf-{stack_id}-postgres"),
        "bash",
        "-c",
        r#"for p in /proc/[0-9]*; do
             case "$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" in
               */bin/psql\ *) echo "${p#/proc/}" ;;
             esac
           done"#,
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// The last pid handed out in the stack's PID namespace (PostgreSQL's and
/// PgBouncer's processes share it).
fn last_pid(stack_id: &str) -> u64 {
    docker(&[
        "exec",
        &format!("pgbf-{stack_id}-postgres"),
        "cat",
        "/proc/sys/kernel/ns_last_pid",
    ])
    .trim()
    .parse()
    .unwrap()
}

/// The watchdogs start no process per second (the earlier ones started a
/// `psql` a second, and PgBouncer's a `sleep` and a subshell), and the lease
/// counting survives its psql dying: the stack stays while a lease is held.
#[tokio::test]
async fn the_watchdog_spawns_no_process_per_second_and_survives_its_psql_dying() {
    let settings = settings("watchdog").with_reap_after(Duration::from_secs(3));
    let stack = Stack::shared(&settings).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A `docker exec` takes pids itself (runc's threads, then the command):
    // two readings in a row say how many.
    let first = last_pid(stack.id());
    let before = last_pid(stack.id());
    let per_exec = before - first;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let spawned = (last_pid(stack.id()) - before).saturating_sub(per_exec);
    println!(
        "processes started in the stack's PID namespace in 10 s: {spawned} \
         (a docker exec takes {per_exec} pids, not counted)"
    );
    // Autovacuum may start a worker; a process a second would make >= 10.
    assert!(spawned <= 3, "{spawned} processes in 10 s");

    let old = watchdog_psql(stack.id());
    assert_eq!(old.len(), 1, "one long-lived psql: {old:?}");
    docker(&[
        "exec",
        &format!("pgbf-{}-postgres", stack.id()),
        "kill",
        &old[0],
    ]);
    // Longer than the reap delay: a watchdog that lost count would stop it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stack.check().await.unwrap();
    assert_eq!(stack_containers(stack.id()).len(), 2);
    let new = watchdog_psql(stack.id());
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old, "a new psql answers");
}
