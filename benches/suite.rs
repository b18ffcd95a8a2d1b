//! The whole-suite benchmark: the same 100 tests over the 20 migrations of
//! `benches/migrations/` (each inserts and reads back 3 rows), written three
//! ways in the test crate `benches/suite/`, timed as whole test binaries
//! (compile excluded: built first) under `cargo test` and `cargo nextest run`:
//!
//! - `sqlx::test`: the real `#[sqlx::test(migrations = ...)]`, with
//!   `DATABASE_URL` = the stack's direct port (the same PostgreSQL);
//! - `fixture`: this crate's `Template` fixture through PgBouncer, warm (the
//!   checkout's stack up, the template built, and its janitor done: a rerun
//!   that came after the janitor had time to prepare the clones), warm
//!   rerun at once (started the moment the previous warm run ended: the
//!   janitor had no time) and cold (a fresh stack: stack start and template
//!   build included);
//! - `replay`: this crate without a template (every migration replayed per
//!   test through `connect_direct()`).
//!
//! Rounds are interleaved (every way once per round), the table shows the
//! median of the rounds. Before each run but the "rerun at once" the harness
//! waits until the checkout stack's janitor is done (no database waiting to
//! be dropped, the pool at the last run's demand) and until the cold runs'
//! stacks are reaped, so that no run shares the machine with them; the
//! harness holds no lease on that stack (a lease would keep the janitor
//! from running), the stack's keep-warm time keeps it up.
//! `cargo bench --bench suite`; environment:
//! `PGBF_SUITE_TARGET_DIR` (default `target/suite`),
//! `PGBF_SUITE_ROUNDS` (default 3), `PGBF_SUITE_FILTER` (a test-name filter,
//! e.g. `t00` for 10 tests; default all 100), `PGBF_SUITE_RUNNERS`
//! (`test,nextest`), `PGBF_SUITE_PROFILE` (`release` or `debug`, the same
//! for every way; default `release`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
mod report;

use common::janitor_done;
use pgbouncer_fixtures::{Env, Stack, StackSettings};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    SqlxTest,
    FixtureWarm,
    FixtureRerun,
    FixtureCold,
    Replay,
}

impl Way {
    const ALL: [Way; 5] = [
        Way::SqlxTest,
        Way::FixtureWarm,
        Way::FixtureRerun,
        Way::FixtureCold,
        Way::Replay,
    ];

    fn label(self) -> &'static str {
        match self {
            Way::SqlxTest => "`#[sqlx::test]` (database + 20 migrations per test, direct port)",
            Way::FixtureWarm => "`Template` fixture through PgBouncer, warm stack (janitor done)",
            Way::FixtureRerun => {
                "`Template` fixture through PgBouncer, warm stack, rerun at once (janitor not done)"
            }
            Way::FixtureCold => {
                "`Template` fixture through PgBouncer, cold (stack start + template build)"
            }
            Way::Replay => "this crate without a template (20 migrations per test)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Way::SqlxTest => "sqlx",
            Way::FixtureWarm => "fixture_warm",
            Way::FixtureRerun => "fixture_rerun",
            Way::FixtureCold => "fixture_cold",
            Way::Replay => "replay",
        }
    }

    fn test_binary(self) -> &'static str {
        match self {
            Way::SqlxTest => "sqlx_test",
            Way::FixtureWarm | Way::FixtureRerun | Way::FixtureCold => "fixture",
            Way::Replay => "replay",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    CargoTest,
    Nextest,
}

impl Runner {
    fn label(self) -> &'static str {
        match self {
            Runner::CargoTest => "cargo test",
            Runner::Nextest => "cargo nextest run",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Runner::CargoTest => "test",
            Runner::Nextest => "nextest",
        }
    }
}

struct Bench {
    cargo: String,
    manifest: PathBuf,
    target_dir: PathBuf,
    release: bool,
    filter: Option<String>,
    database_url: String,
}

impl Bench {
    fn command(&self, runner: Runner, way: Way) -> Command {
        let mut c = Command::new(&self.cargo);
        match runner {
            Runner::CargoTest => c.arg("test"),
            Runner::Nextest => c.args(["nextest", "run", "--no-fail-fast"]),
        };
        c.arg("--manifest-path").arg(&self.manifest);
        if self.release {
            c.arg("--release");
        }
        c.args(["--test", way.test_binary()]);
        if let Some(f) = &self.filter {
            match runner {
                Runner::CargoTest => c.args(["--", f.as_str()]),
                Runner::Nextest => c.arg(f),
            };
        }
        c.env("CARGO_TARGET_DIR", &self.target_dir)
            .env("DATABASE_URL", &self.database_url)
            .env_remove("PGBF_RUN_ID")
            .env_remove("RUST_LOG");
        if way == Way::FixtureCold {
            // A run id of its own: a fresh stack, reaped 10 s after the run.
            let id = format!("suite-cold-{:016x}", rand::random::<u64>());
            c.env("PGBF_RUN_ID", id);
        }
        c
    }

    /// Runs one way under one runner; its wall time.
    fn time(&self, runner: Runner, way: Way) -> Duration {
        let mut c = self.command(runner, way);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let out = c.output().expect("cargo runs");
        let took = started.elapsed();
        if !out.status.success() {
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b).to_string();
                s.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "{} of {} failed:\n{}\n{}",
                runner.label(),
                way.key(),
                tail(&out.stdout),
                tail(&out.stderr)
            );
        }
        took
    }

    fn build(&self) {
        for args in [
            vec!["test", "--no-run"],
            // nextest builds through cargo too: the same binaries.
            vec!["nextest", "list"],
        ] {
            let mut c = Command::new(&self.cargo);
            c.args(&args).arg("--manifest-path").arg(&self.manifest);
            if self.release {
                c.arg("--release");
            }
            let status = c
                .env("CARGO_TARGET_DIR", &self.target_dir)
                .stdout(Stdio::null())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the suite crate failed");
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let suite: PathBuf = std::fs::canonicalize(root.join("benches/suite")).expect("benches/suite");
    // A target directory of its own: the test crate's feature set (sqlx
    // macros) differs from the crate's, and sharing one would rebuild both
    // in turn.
    let target_dir = std::env::var_os("PGBF_SUITE_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/suite"));
    let rounds: usize = env_or("PGBF_SUITE_ROUNDS", "3")
        .parse()
        .expect("PGBF_SUITE_ROUNDS");
    let filter = std::env::var("PGBF_SUITE_FILTER")
        .ok()
        .filter(|f| !f.is_empty());
    let runners: Vec<Runner> = env_or("PGBF_SUITE_RUNNERS", "test,nextest")
        .split(',')
        .filter_map(|r| match r.trim() {
            "test" => Some(Runner::CargoTest),
            "nextest" => Some(Runner::Nextest),
            _ => None,
        })
        .collect();
    let release = env_or("PGBF_SUITE_PROFILE", "release") != "debug";

    // The checkout's stack of the test crate, as a previous run would have
    // left it: same checkout (the test crate's directory, as cargo sets it
    // for its tests), same settings. Started (or joined) by a child process
    // of this harness that prints its URL and exits: the harness holds no
    // lease, which would keep the stack's janitor from running.
    std::env::set_var("CARGO_MANIFEST_DIR", &suite);
    std::env::remove_var("PGBF_RUN_ID");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os(PRINT_URL).is_some() {
        let settings =
            StackSettings::from_env(&Env::load().expect("environment")).expect("settings");
        let stack: &Stack = rt.block_on(Stack::shared(&settings)).expect("stack");
        println!("{}", stack.endpoints().direct_url("postgres").expose());
        println!("{}", stack.id());
        return;
    }
    let mut bench = Bench {
        cargo: std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        manifest: suite.join("Cargo.toml"),
        target_dir,
        release,
        filter,
        database_url: String::new(),
    };

    eprintln!(
        "building the suite crate ({}) ...",
        if release { "release" } else { "debug" }
    );
    bench.build();
    let n = count_tests(&bench);
    eprintln!("{n} tests per way; warming up (template, prepared clones) ...");
    for runner in &runners {
        bench.time(*runner, Way::FixtureWarm);
    }
    // The stack is up now (the warm-up ran on it) and stays up its
    // keep-warm time after each run.
    let out = Command::new(std::env::current_exe().expect("the harness"))
        .env(PRINT_URL, "1")
        .stderr(Stdio::inherit())
        .output()
        .expect("the harness runs");
    assert!(out.status.success(), "joining the stack failed");
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let mut printed = printed.lines();
    bench.database_url = printed.next().unwrap_or_default().trim().to_string();
    let warm_stack = printed.next().unwrap_or_default().trim().to_string();

    let mut times: Vec<((Runner, Way), Vec<Duration>)> = Vec::new();
    for round in 1..=rounds {
        for runner in &runners {
            for way in Way::ALL {
                if way != Way::FixtureRerun {
                    let waited = rt.block_on(janitor_done(&bench.database_url));
                    let reaped = others_reaped(&suite, &warm_stack);
                    eprintln!(
                        "(waited {:.1} s for the stack's janitor, {:.1} s for other stacks to be reaped)",
                        waited.as_secs_f64(),
                        reaped.as_secs_f64()
                    );
                }
                let took = bench.time(*runner, way);
                eprintln!(
                    "round {round}: {:<17} {:<13} {:>6.2} s",
                    runner.label(),
                    way.key(),
                    took.as_secs_f64()
                );
                match times.iter_mut().find(|(k, _)| *k == (*runner, way)) {
                    Some((_, v)) => v.push(took),
                    None => times.push(((*runner, way), vec![took])),
                }
            }
        }
    }
    let of = |runner: Runner, way: Way| -> Vec<Duration> {
        times
            .iter()
            .find(|(k, _)| *k == (runner, way))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let med = |runner: Runner, way: Way| -> f64 { median(of(runner, way)).as_secs_f64() };

    let mut report = report::Report::default();
    report.line(format!(
        "whole suite: {n} tests over 20 migrations, wall time of the test binary's run (built first, {} build), median of {rounds} interleaved rounds",
        if release { "release" } else { "debug" }
    ));
    let mut header = String::from("| way |");
    let mut rule = String::from("|---|");
    for r in &runners {
        header.push_str(&format!(" {} s | vs sqlx::test |", r.label()));
        rule.push_str("---:|---:|");
    }
    report.line(format!("{header}\n{rule}"));
    let mut result = format!("RESULT n={n} rounds={rounds}");
    for way in Way::ALL {
        let mut row = format!("| {} |", way.label());
        for r in &runners {
            let t = med(*r, way);
            let ratio = med(*r, Way::SqlxTest) / t;
            row.push_str(&format!(" {t:.2} | {ratio:.2}x |"));
            result.push_str(&format!(" {}_{}_s={t:.2}", r.key(), way.key()));
        }
        report.line(row.clone());
    }
    for r in &runners {
        for way in [
            Way::FixtureWarm,
            Way::FixtureRerun,
            Way::FixtureCold,
            Way::Replay,
        ] {
            // Two decimals: a 3.99 must not read as the 4.0 of a floor.
            result.push_str(&format!(
                " speedup_{}_{}={:.2}",
                r.key(),
                way.key(),
                med(*r, Way::SqlxTest) / med(*r, way)
            ));
        }
    }
    // Each round's ratio (the way against `#[sqlx::test]` of the same
    // round): how far the medians above are from a round's own verdict.
    for r in &runners {
        let sqlx = of(*r, Way::SqlxTest);
        for way in [Way::FixtureWarm, Way::FixtureCold] {
            let ratios: Vec<String> = sqlx
                .iter()
                .zip(of(*r, way))
                .map(|(s, t)| format!("{:.2}x", s.as_secs_f64() / t.as_secs_f64()))
                .collect();
            report.line(format!(
                "per round, {} {}: {}",
                r.label(),
                way.key(),
                ratios.join(", ")
            ));
        }
    }
    report.line(result.clone());
    report.record("suite");
}

/// Waits until no stack of the suite's checkout but `warm` is left (the
/// cold runs' stacks are reaped ~10 s after them), so that no timed run
/// shares the machine with another stack's janitor or removal; 120 s at
/// most. Returns how long it waited.
fn others_reaped(checkout: &std::path::Path, warm: &str) -> Duration {
    let started = Instant::now();
    let label = format!("label=pgbouncer-fixtures.checkout={}", checkout.display());
    while started.elapsed() < Duration::from_secs(120) {
        let out = Command::new("docker")
            .args(["ps", "-a", "--filter", &label])
            .args(["--format", "{{.Label \"pgbouncer-fixtures.stack\"}}"])
            .output()
            .expect("the docker CLI runs");
        let listed = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && listed.lines().all(|s| s.trim() == warm) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    started.elapsed()
}

/// The harness, run to print the stack's direct URL and id.
const PRINT_URL: &str = "PGBF_SUITE_PRINT_URL";

/// How many tests one way runs (with the filter).
fn count_tests(bench: &Bench) -> usize {
    let mut c = Command::new(&bench.cargo);
    c.arg("test")
        .arg("--manifest-path")
        .arg(&bench.manifest)
        .args(["--test", "fixture"]);
    if bench.release {
        c.arg("--release");
    }
    c.args(["--", "--list"]);
    if let Some(f) = &bench.filter {
        c.arg(f);
    }
    let out = c
        .env("CARGO_TARGET_DIR", &bench.target_dir)
        .stderr(Stdio::null())
        .output()
        .expect("cargo runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count()
}
