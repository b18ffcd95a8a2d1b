//! `pgbouncer-fixtures up`: prints working URLs, takes the profile flags, and
//! removes everything on Ctrl-C / SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{assert_named_statement_collisions, run_default_workload, stack_containers};
use pgbouncer_fixtures::probes::SqlxPattern;
use pgbouncer_fixtures::{DbUrl, Env, Profile, Target, TestDb};
use rstest::rstest;

const BIN: &str = env!("CARGO_BIN_EXE_pgbouncer-fixtures");

struct Up {
    child: std::process::Child,
    // Kept open: `up` reports on them while it stops.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    _stderr: std::io::Lines<BufReader<std::process::ChildStderr>>,
    pooled: String,
    direct: String,
    stack_id: String,
}

fn start_up(args: &[&str]) -> Up {
    let mut child = Command::new(BIN)
        .arg("up")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pooled = lines.next().unwrap().unwrap();
    let direct = lines.next().unwrap().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = stderr
        .find(|l| l.as_ref().is_ok_and(|l| l.contains(" ready in ")))
        .unwrap()
        .unwrap();
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
        _stderr: stderr,
        pooled: pooled
            .strip_prefix("TEST_DATABASE_URL=")
            .expect("first line")
            .to_string(),
        direct: direct
            .strip_prefix("TEST_DIRECT_URL=")
            .expect("second line")
            .to_string(),
        stack_id,
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

/// FACTS.md section 2's workload fails behind `--max-prepared-statements 0`
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
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--profile: PGBF_PROFILE")
            && stderr.contains("supabase-shared, supabase-dedicated, supabase-session or direct"),
        "{stderr}"
    );
}

/// Stacks of different settings run side by side; identical settings share one.
#[tokio::test]
async fn stacks_are_shared_only_between_identical_settings() {
    let a = TestDb::for_profile(Profile::SupabaseShared).await.unwrap();
    let b = TestDb::for_profile(Profile::SupabaseShared).await.unwrap();
    let c = TestDb::for_profile(Profile::SupabaseSession).await.unwrap();
    let d = TestDb::for_profile(Profile::Direct).await.unwrap();
    assert_eq!(
        a.pooled().port(),
        b.pooled().port(),
        "same settings, same stack"
    );
    assert_ne!(
        a.pooled().port(),
        c.pooled().port(),
        "session mode runs its own PgBouncer"
    );
    assert_eq!(
        d.pooled().port(),
        a.direct().unwrap().port(),
        "direct bypasses the transaction stack's pooler"
    );
}
