//! What the fixture costs a test when tests run side by side, as under
//! `cargo test`: `C` test threads (2, 4, 8), each with its own runtime, each
//! running tests back to back. A test asks for a clone of the 20-migration
//! template, connects through PgBouncer, runs a first query, runs its body
//! (0-2 ms, random), closes its connection and drops its `TestDb`.
//!
//! The fixture's share of a test is everything but the body: the claim
//! (`build()`), `connect()`, the first query and the drop of the handle.
//!
//! Each row is a run of its own, a child process of the harness, as a
//! `cargo test` run is: it joins the checkout's stack, claims, and exits
//! (handing its drops to the stack's janitor). Before each row the harness
//! waits for the janitor to be done, so each row starts as a rerun does when
//! the janitor had time: the pool holds the previous run's demand (a
//! warm-up run of `n` tests sets it for the first row).
//!
//! `cargo bench --bench acquire_parallel` (env: PGBF_BENCH_N tests per
//! concurrency, default 100; PGBF_BENCH_CONCURRENCY, default `2,4,8`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
mod report;

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{StackSettings, Target, Template, TestDb};
use rand::Rng;
use sqlx::Executor;

#[derive(Clone, Copy, Default)]
struct Sample {
    timings: pgbouncer_fixtures::AcquireTimings,
    claim: Duration,
    connect: Duration,
    query: Duration,
    drop: Duration,
}

impl Sample {
    fn fixture(&self) -> Duration {
        self.claim + self.connect + self.query + self.drop
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

async fn one_test(target: &Target, template: &Template, name: String) -> Sample {
    let t0 = Instant::now();
    let db = TestDb::builder()
        .target(target.clone())
        .template(template.clone())
        .test_name(name)
        .build()
        .await
        .expect("database");
    let t1 = Instant::now();
    let db_timings = *db.acquire_timings();
    let mut conn = db.connect().await.expect("connect through PgBouncer");
    let t2 = Instant::now();
    conn.execute("select 1").await.expect("first query");
    let t3 = Instant::now();
    let body = Duration::from_micros(rand::thread_rng().gen_range(0..=2000));
    tokio::time::sleep(body).await;
    drop(conn);
    let t4 = Instant::now();
    drop(db);
    let t5 = Instant::now();
    Sample {
        timings: db_timings,
        claim: t1 - t0,
        connect: t2 - t1,
        query: t3 - t2,
        drop: t5 - t4,
    }
}

/// `threads` test threads share `n` tests; each thread has its own runtime.
fn run(target: &Target, template: &Template, threads: usize, n: usize) -> (Vec<Sample>, Duration) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (target, template, next) = (target.clone(), template.clone(), next.clone());
            std::thread::Builder::new()
                .name(format!("bench-thread-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    let mut samples = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= n {
                            break;
                        }
                        samples.push(rt.block_on(one_test(&target, &template, format!("par_{i}"))));
                    }
                    samples
                })
                .expect("thread")
        })
        .collect();
    let samples = handles
        .into_iter()
        .flat_map(|h| h.join().expect("bench thread"))
        .collect();
    (samples, started.elapsed())
}

/// Runs one row (`c` concurrent tests) in this process and prints it.
fn row(c: usize, n: usize) {
    let migrations = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/migrations");
    let target = Target::Containers(StackSettings::default());
    let template = Template::new().migrations_dir(&migrations);
    let (samples, wall) = run(&target, &template, c, n);
    let f = sorted(samples.iter().map(|s| ms(s.fixture())).collect());
    let claim = sorted(samples.iter().map(|s| ms(s.claim)).collect());
    let connect = sorted(samples.iter().map(|s| ms(s.connect)).collect());
    let query = sorted(samples.iter().map(|s| ms(s.query)).collect());
    let dropped = sorted(samples.iter().map(|s| ms(s.drop)).collect());
    let queued = sorted(samples.iter().map(|s| ms(s.timings.queued)).collect());
    let worker = sorted(samples.iter().map(|s| ms(s.timings.claim)).collect());
    let template = sorted(samples.iter().map(|s| ms(s.timings.template)).collect());
    let prepared = samples.iter().filter(|s| s.timings.prepared).count();
    println!(
        "| {c} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {}% | {:.1} | {:.1} | {:.1} / {:.1} | {:.0} |",
        percentile(&f, 0.5),
        percentile(&f, 0.95),
        percentile(&claim, 0.5),
        percentile(&claim, 0.95),
        percentile(&queued, 0.5),
        percentile(&worker, 0.5),
        percentile(&template, 0.5),
        prepared * 100 / samples.len(),
        percentile(&connect, 0.5),
        percentile(&query, 0.5),
        percentile(&dropped, 0.5),
        percentile(&dropped, 0.95),
        n as f64 / wall.as_secs_f64()
    );
    println!(
        "RESULT-ROW c{c}_p50_ms={:.1} c{c}_p95_ms={:.1}",
        percentile(&f, 0.5),
        percentile(&f, 0.95)
    );
}

/// The harness, run as one row.
const ROW: &str = "PGBF_BENCH_ROW";

/// Runs a row in a child process (a run of its own); its output.
fn child_row(c: usize, n: usize) -> String {
    let out = std::process::Command::new(std::env::current_exe().expect("the harness"))
        .env(ROW, c.to_string())
        .env("PGBF_BENCH_N", n.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the harness runs");
    assert!(out.status.success(), "the row with {c} tests failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`common::janitor_done`] from synchronous code.
fn janitor_done(url: &str) -> Duration {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(common::janitor_done(url))
}

fn main() {
    let n: usize = std::env::var("PGBF_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    if let Some(c) = std::env::var(ROW).ok().and_then(|c| c.parse().ok()) {
        row(c, n);
        if std::env::var_os(PRINT_URL).is_some() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let stack = rt
                .block_on(pgbouncer_fixtures::Stack::shared(&StackSettings::default()))
                .expect("stack");
            println!("URL {}", stack.endpoints().direct_url("postgres").expose());
        }
        return;
    }
    let levels: Vec<usize> = std::env::var("PGBF_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "2,4,8".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();

    // Warm-up: start (or join) the stack, build the template, and claim `n`
    // (the demand the janitor prepares for the first row).
    std::env::set_var(PRINT_URL, "1");
    let warm = child_row(2, n);
    std::env::remove_var(PRINT_URL);
    let url = warm
        .lines()
        .find_map(|l| l.strip_prefix("URL "))
        .expect("the stack's URL")
        .to_string();

    let mut report = report::Report::default();
    report.line(format!(
        "parallel acquisition: per-test fixture time (claim + connect + first query + drop), {n} tests per row, body 0-2 ms, each row a process of its own started once the stack's janitor was done"
    ));
    report.line("| concurrent tests | fixture p50 ms | fixture p95 ms | claim p50 / p95 | of which: worker queue p50 / clone p50 / template check p50 | prepared clones | connect p50 | first query p50 | drop p50 / p95 | tests/s |");
    report.line("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut result = String::from("RESULT");
    for &c in &levels {
        let waited = janitor_done(&url);
        eprintln!(
            "(waited {:.1} s for the stack's janitor)",
            waited.as_secs_f64()
        );
        let out = child_row(c, n);
        for line in out.lines() {
            match line.strip_prefix("RESULT-ROW") {
                Some(r) => result.push_str(r),
                None => report.line(line),
            }
        }
    }
    report.line(result.clone());
    report.record("acquire_parallel");
}

/// The row also prints the stack's direct URL (the warm-up).
const PRINT_URL: &str = "PGBF_BENCH_PRINT_URL";
