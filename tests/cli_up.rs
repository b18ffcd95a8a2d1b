//! `pgbouncer-fixtures up`: prints working URLs, takes the profile flags,
//! removes everything on Ctrl-C / SIGTERM, exits non-zero when its stack
//! dies, and listens on 127.0.0.1 only (host network or published ports)
//! unless asked otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_named_statement_collisions, docker, run_default_workload, stack_containers};
use pgbouncer_fixtures::probes::SqlxPattern;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{DbUrl, Env, Profile, Target, TestDb};
use rstest::rstest;
use sqlx::{Connection, Row};

const BIN: &str = env!("CARGO_BIN_EXE_pgbouncer-fixtures");

struct Up {
    child: std::process::Child,
    // Kept open: `up` reports on them while it stops.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    stderr: std::io::Lines<BufReader<std::process::ChildStderr>>,
    pooled: String,
    direct: String,
    stack_id: String,
    /// What `up` wrote on stderr up to its ready line.
    said: String,
}

impl Drop for Up {
    /// A test that failed before stopping `up` still ends it: on SIGTERM
    /// `up` removes its stack, so nothing outlives the test.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let _ = self.child.wait();
        }
    }
}

fn start_up(args: &[&str]) -> Up {
    start_up_with_env(args, &[])
}

fn start_up_with_env(args: &[&str], env: &[(&str, &str)]) -> Up {
    let mut child = Command::new(BIN)
        .arg("up")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pooled = lines.next().unwrap().unwrap();
    let direct = lines.next().unwrap().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let ready = loop {
        let line = stderr.next().expect("`up` says it is ready").unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains(" ready in ") {
            break line;
        }
    };
    let stack_id = ready
        .split("stack ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    Up {
        child,
        _stdout: lines,
        stderr,
        pooled: pooled
            .strip_prefix("TEST_DATABASE_URL=")
            .expect("first line")
            .to_string(),
        direct: direct
            .strip_prefix("TEST_DIRECT_URL=")
            .expect("second line")
            .to_string(),
        stack_id,
        said,
    }
}

fn stop(mut up: Up, signal: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(up.child.id() as i32, signal);
    }
    let status = up.child.wait().unwrap();
    assert!(status.success(), "up exits 0 after the signal: {status}");
    let left = stack_containers(&up.stack_id);
    assert!(
        left.is_empty(),
        "containers of stack {} remain: {left:?}",
        up.stack_id
    );
    let networks = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=pgbouncer-fixtures.stack={}", up.stack_id),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&networks.stdout).trim().is_empty(),
        "its network is gone too"
    );
}

/// The default workload (15 clients x 200 named statements) fails behind `--max-prepared-statements 0`
/// and passes behind `--max-prepared-statements 200`.
#[rstest]
#[case::no_tracking("0", libc::SIGINT)]
#[case::tracking("200", libc::SIGTERM)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_working_urls_and_cleans_up(#[case] mps: &str, #[case] signal: i32) {
    let up = tokio::task::spawn_blocking({
        let mps = mps.to_string();
        move || start_up(&["--max-prepared-statements", &mps])
    })
    .await
    .unwrap();
    assert!(DbUrl::parse("up", &up.direct).is_ok());

    // The printed lines work as an external target, as in a .env file.
    let env = Env::from_vars([
        ("TEST_DATABASE_URL", up.pooled.as_str()),
        ("TEST_DIRECT_URL", up.direct.as_str()),
        ("PGBF_EXTERNAL_CREATE_DATABASES", "1"),
    ]);
    let db = TestDb::builder()
        .target(Target::resolve(&env).unwrap())
        .test_name("cli_up")
        .build()
        .await
        .unwrap();
    let outcome = run_default_workload(SqlxPattern::PoolDefaultCache, &db).await;
    if mps == "0" {
        assert_named_statement_collisions(&outcome);
    } else {
        assert!(outcome.passed(), "tracking: {}", outcome.summary());
    }
    db.close().await.unwrap();
    tokio::task::spawn_blocking(move || stop(up, signal))
        .await
        .unwrap();
}

#[test]
fn up_refuses_unknown_profiles() {
    let out = Command::new(BIN)
        .args(["up", "--profile", "statement"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The flag is named, not the environment variable of the same setting.
    assert!(
        stderr.contains("invalid value 'statement' for '--profile <NAME>'")
            && stderr
                .contains("supabase-shared, supabase-dedicated, supabase-session, supabase-dedicated-legacy, supabase-shared-prepared or no-pooler")
            && !stderr.contains("PGBF_PROFILE"),
        "{stderr}"
    );
}

/// `up` with `args` for a profile behind the stage, and the options of its
/// printed URL, checked to be the stage's (on 127.0.0.1, not PostgreSQL's
/// port, and `up` says it serves it).
async fn up_behind_stage(args: &'static [&'static str]) -> (Up, sqlx::postgres::PgConnectOptions) {
    let up = tokio::task::spawn_blocking(move || start_up(args))
        .await
        .unwrap();
    let said = &up.said;
    assert!(
        said.contains("Supavisor-like stage listens on 127.0.0.1:"),
        "{said}"
    );
    let pooled = DbUrl::parse("up", &up.pooled).unwrap();
    let direct = DbUrl::parse("up", &up.direct).unwrap();
    assert!(
        pooled.host_port().starts_with("127.0.0.1:"),
        "{}",
        pooled.host_port()
    );
    assert_ne!(pooled.port(), direct.port(), "the stage, not PostgreSQL");
    let options = up.pooled.parse().unwrap();
    (up, options)
}

/// `up --profile supabase-shared-prepared` serves the profile's
/// Supavisor-like stage from its own process: another process connects
/// through the printed URL (with TLS required) and meets the flag on (SQL
/// `PREPARE` refused with Supavisor's `EPSSIMPLEQUERY`), while a plain
/// query works.
#[tokio::test]
async fn up_serves_the_stage_of_supabase_shared_prepared() {
    let (up, options) = up_behind_stage(&["--profile", "supabase-shared-prepared"]).await;
    let options = options.ssl_mode(sqlx::postgres::PgSslMode::Require);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let refused = sqlx::raw_sql("PREPARE pgbf_up_stmt AS SELECT 1")
        .execute(&mut conn)
        .await
        .expect_err("SQL PREPARE is refused with the flag on");
    let db_error = refused.as_database_error().expect("a server error");
    assert_eq!(db_error.code().as_deref(), Some("XX000"), "{refused}");
    assert!(
        db_error.message().starts_with("(EPSSIMPLEQUERY) "),
        "{refused}"
    );
    drop(conn);
    tokio::task::spawn_blocking(move || stop(up, libc::SIGTERM))
        .await
        .unwrap();
}

/// `up` serves the profile's Supavisor-like stage from its own process,
/// without a profile the default one's (`supabase-shared`, stage included,
/// as `TestDb::new()`): through the printed URL the server sees
/// `application_name` as Supavisor sets it (`Supavisor - <the client's>` in
/// session mode), and a dotted custom setting at startup is dropped
/// (PgBouncer alone refuses it with 08P01).
#[rstest]
#[case::no_profile_is_the_default(&[], "supabase-shared", "Supavisor")]
#[case::session(
    &["--profile", "supabase-session"],
    "supabase-session",
    "Supavisor - pgbf-up"
)]
#[tokio::test]
async fn up_serves_the_stage_of_its_profile(
    #[case] args: &'static [&'static str],
    #[case] profile: &str,
    #[case] server_sees: &str,
) {
    let (up, options) = up_behind_stage(args).await;
    let serves = format!("{profile}'s Supavisor-like stage");
    assert!(up.said.contains(&serves), "{}", up.said);
    let options = options
        .application_name("pgbf-up")
        .options([("app.tenant", "acme")]);
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .expect("a dotted startup setting is dropped, not refused");
    // The simple protocol: behind the shared pooler a statement prepared
    // outside a transaction may be gone at its Bind (26000).
    let row = sqlx::raw_sql(
        "SELECT current_setting('application_name'), current_setting('app.tenant', true)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let (name, tenant): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(name, server_sees, "as the server sees it");
    assert_eq!(tenant.filter(|t| !t.is_empty()), None, "app.tenant dropped");
    drop(conn);
    tokio::task::spawn_blocking(move || stop(up, libc::SIGTERM))
        .await
        .unwrap();
}

/// `--help`, `--version` and each command's `--help` print on stdout and
/// exit 0; an invalid value names its flag and exits 2 (usage) whatever the
/// command (docs/cli.md, "Exit codes"); no command prints the help.
#[test]
fn help_version_and_invalid_flags() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    for (args, expected) in [
        (&["--help"][..], "Usage: pgbouncer-fixtures [COMMAND]"),
        (&[], "Usage: pgbouncer-fixtures [COMMAND]"),
        (&["help"], "Usage: pgbouncer-fixtures [COMMAND]"),
        (
            &["--version"],
            concat!("pgbouncer-fixtures ", env!("CARGO_PKG_VERSION")),
        ),
        (&["up", "--help"], "--max-prepared-statements <N>"),
        (&["gc", "--help"], "--checkout <PATH>"),
        (&["doctor", "--help"], "--json"),
        (&["matrix", "--help"], "--rounds <N>"),
    ] {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}");
        assert!(stdout.contains(expected), "{args:?}: {stdout}");
    }
    // The tool's help lists the exit codes and points at the CLI's page.
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("exit codes:  0 done; 1 doctor found a hazard; 2 usage")
            && help.contains("3 the command failed")
            && help.contains("docs/cli.md")
            && !help.contains("README"),
        "{help}"
    );
    for (args, code, flag) in [
        (
            &["up", "--max-prepared-statements", "x"][..],
            2,
            "'--max-prepared-statements <N>'",
        ),
        (
            &["up", "--pool-mode", "statement"],
            2,
            "'--pool-mode <MODE>'",
        ),
        (&["up", "--run-id", " "], 2, "'--run-id <ID>'"),
        (&["matrix", "--clients", "0"], 2, "'--clients <N>'"),
        (
            &["gc", "--stack", "a", "--checkout", "b"],
            2,
            "'--checkout <PATH>'",
        ),
        (&["doctor", "--jsn"], 2, "'--jsn'"),
        (&["frobnicate"], 2, "'frobnicate'"),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?} names {flag}: {stderr}");
        assert!(!stderr.contains("PGBF_"), "{args:?}: {stderr}");
    }
}

/// Stacks of different settings run side by side; identical settings share one.
#[tokio::test]
async fn stacks_are_shared_only_between_identical_settings() {
    let a = TestDb::for_profile(Profile::SupabaseShared).await.unwrap();
    let b = TestDb::for_profile(Profile::SupabaseShared).await.unwrap();
    let c = TestDb::for_profile(Profile::SupabaseSession).await.unwrap();
    let d = TestDb::for_profile(Profile::NoPooler).await.unwrap();
    assert_eq!(
        a.db_url().port(),
        b.db_url().port(),
        "same settings, same stack"
    );
    assert_ne!(
        a.db_url().port(),
        c.db_url().port(),
        "session mode runs its own PgBouncer"
    );
    assert_eq!(
        d.db_url().port(),
        a.direct_db_url().unwrap().port(),
        "no-pooler bypasses the transaction stack's pooler"
    );
}

/// `up` watches its stack: when PostgreSQL or PgBouncer dies under it, it
/// exits 3 within 5 s, saying what died and that its URLs are void, and
/// leaves nothing behind.
#[rstest]
#[case::postgres("postgres")]
#[case::pgbouncer("pgbouncer")]
fn up_exits_non_zero_when_its_stack_dies(#[case] kind: &str) {
    let mut up = start_up(&[]);
    let container = format!("pgbf-{}-{kind}", up.stack_id);
    docker(&["kill", &container]);
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        // The contract is 5 s; a loaded machine gets a generous margin.
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "`up` still running 15 s after `docker kill {container}`"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed.elapsed();
    println!(
        "`up` exited {:.2} s after `docker kill` of its {kind} container ({status})",
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(3), "a failed command: {status}");
    let stderr: Vec<String> = up.stderr.by_ref().map_while(Result::ok).collect();
    let message = stderr.join("\n");
    assert!(
        message.contains(&format!("stack {} died", up.stack_id)),
        "{message}"
    );
    assert!(message.contains(&container), "names what died: {message}");
    assert!(
        message.contains("The URLs printed above (TEST_DATABASE_URL, TEST_DIRECT_URL) are void"),
        "{message}"
    );
    assert!(
        !message.contains(&common::password_of(&up.pooled)),
        "no password"
    );
    // Nothing of the stack stays.
    let started = Instant::now();
    while !stack_containers(&up.stack_id).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "containers of stack {} remain: {:?}",
            up.stack_id,
            stack_containers(&up.stack_id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The addresses this machine listens on for TCP `port` (what `ss -ltn`
/// shows): from /proc/net/tcp and tcp6, e.g. `127.0.0.1`, `0.0.0.0`, `[::]`.
fn listening_addresses(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, hex_port) = f[1].split_once(':').unwrap();
            if f[3] != "0A" || u16::from_str_radix(hex_port, 16).unwrap() != port {
                continue;
            }
            found.push(match (v6, addr) {
                (false, a) => {
                    let n = u32::from_str_radix(a, 16).unwrap();
                    std::net::Ipv4Addr::from(n.swap_bytes()).to_string()
                }
                (true, a) if a.chars().all(|c| c == '0') => "[::]".to_string(),
                (true, a) => format!("[{a}]"),
            });
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The Docker network mode of the stack's PostgreSQL container.
fn network_mode(stack_id: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.NetworkMode}}",
        &format!("pgbf-{stack_id}-postgres"),
    ])
    .trim()
    .to_string()
}

/// Orders the listening cases within one process (`cargo test`); under
/// nextest, a process per test, `.config/nextest.toml`'s group does.
static LISTEN_CASES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A local engine's stack is reachable from this machine only, on the host
/// network (where the engine shares it) or on the bridge, unless
/// `PGBF_PUBLISH_ALL_INTERFACES=1` asks for every interface (then on the
/// bridge): what `ss -ltn` shows for both printed ports. (PgBouncer's own
/// port is printed behind a profile without the stage: the stage, in
/// `up`'s process, serves 127.0.0.1 only.)
#[rstest]
#[case::private_by_default(&[], &["127.0.0.1"], None)]
#[case::host_network(&[("PGBF_NETWORK", "host")], &["127.0.0.1"], Some("host"))]
#[case::bridge_network(&[("PGBF_NETWORK", "bridge")], &["127.0.0.1"], Some("bridge"))]
#[case::all_interfaces_on_request(&[("PGBF_PUBLISH_ALL_INTERFACES", "1")], &["0.0.0.0", "[::]"], Some("bridge"))]
#[tokio::test]
async fn up_listens_on_loopback_unless_asked(
    #[case] env: &'static [(&'static str, &'static str)],
    #[case] expected: &'static [&'static str],
    #[case] mode: Option<&'static str>,
) {
    // One case at a time: Docker publishes the bridge case's port on
    // 127.0.0.1 and the all-interfaces case's on [::] too, and the two may
    // get the same port number at once, which the check would mistake.
    let _one_at_a_time = LISTEN_CASES.lock().await;
    // The decision depends on where the engine is: these tests run against a
    // local one (the default socket, or DOCKER_HOST=unix://...).
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    assert!(
        host.is_empty() || host.starts_with("unix://"),
        "a local engine is needed, DOCKER_HOST={host}"
    );
    let without_stage = ["--profile", "supabase-dedicated"];
    let up = tokio::task::spawn_blocking(move || start_up_with_env(&without_stage, env))
        .await
        .unwrap();
    let found = network_mode(&up.stack_id);
    match mode {
        // Docker names its bridge "default" or "bridge".
        Some("bridge") => assert!(found == "bridge" || found == "default", "{found}"),
        Some(m) => assert_eq!(found, m),
        None => assert!(
            ["host", "bridge", "default"].contains(&found.as_str()),
            "{found}"
        ),
    }
    for url in [&up.pooled, &up.direct] {
        let url = DbUrl::parse("up", url).unwrap();
        let port: u16 = url.host_port().rsplit_once(':').unwrap().1.parse().unwrap();
        let addresses = listening_addresses(port);
        assert!(!addresses.is_empty(), "nothing listens on {port}");
        // Docker 20.10 publishes "" on 0.0.0.0 and [::]; newer engines
        // without IPv6 only on 0.0.0.0: every address found must be an
        // expected one.
        for a in &addresses {
            assert!(
                expected.contains(&a.as_str()),
                "port {port}: {a} in {addresses:?}, expected {expected:?}"
            );
        }
    }
    // The printed URL works (it names 127.0.0.1 and the published port).
    let url = DbUrl::parse("up", &up.pooled).unwrap();
    assert!(
        url.host_port().starts_with("127.0.0.1:"),
        "{}",
        url.host_port()
    );
    let mut conn = sqlx::PgConnection::connect(&up.pooled).await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    drop(conn);
    tokio::task::spawn_blocking(move || stop(up, libc::SIGTERM))
        .await
        .unwrap();
}
