//! What claims cost as the template's data grows, and what the stack holds
//! in memory meanwhile. Per template size (one table `items` of N ~100-byte
//! rows, a primary key and a second index, built by a seed file) and per
//! number of test threads: a stack of its own (a run id of its own), the
//! template built once before the clock starts, then N tests on that many
//! threads (each thread its own runtime, as `cargo test` runs them): claim
//! a clone, connect through PgBouncer, one query that reads the seed data,
//! a 0-2 ms body, drop. Then, on the same stack, one clone's time with each
//! `CREATE DATABASE` strategy (FILE_COPY, WAL_LOG; three of each, median),
//! and the stack's peak memory as its PostgreSQL container's cgroup
//! recorded it (`memory.max_usage_in_bytes`, cgroup v1; `memory.peak` on
//! v2), read through `pg_read_file`: the row's "first run", on a cold
//! pool.
//!
//! Then the row's rerun: once the first process has ended (its drops and
//! demand handed to the stack's janitor) and the janitor is done
//! (`common::janitor_done`), a second process joins the same stack (same
//! run id; the stack outlives its last lease long enough for its janitor to
//! prepare clones) and runs the same tests; its claim p50/p95, prepared
//! count and the peak so far are extra columns (`_rerun_*` in `RESULT`).
//! The row's stack is removed at its end (`gc` of that stack).
//!
//! Uses only the API every version of the crate has (the memory budget's
//! error only where the checkout has it), so the same file
//! measures another checkout side by side: with `PGBF_SCALE_BEFORE=<path>`
//! it builds a copy of itself against that checkout's crate (a crate of its
//! own under `target/scale-before/`, with that checkout's `Cargo.lock`) and
//! runs each row with both, one after the other.
//!
//! `cargo bench --bench scale` (env: PGBF_SCALE_ROWS, rows per template,
//! default `1000,300000,1300000,7000000` (~1 MB, ~50 MB, ~200 MB, ~1 GB);
//! PGBF_SCALE_THREADS, default `2,4`; PGBF_SCALE_N tests per row, default
//! 40; PGBF_SCALE_BUDGETS, memory budgets each row runs under, default
//! `default` (the stack's own), e.g. `default,1G`; PGBF_SCALE_BEFORE, a
//! checkout to measure side by side; PGBF_SCALE_LABEL, this code's word in
//! each row, default `this`).

// `no-memory-budget` is a feature of the harness `build_before` makes for
// an older checkout, not of this crate.
#![allow(unexpected_cfgs)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Stack, StackSettings, Target, Template, TestDb};
use rand::Rng;
use sqlx::{Connection, Row};

#[allow(dead_code)]
mod common;
mod report;

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

fn list(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

/// The seed of a template of `rows` rows: ~100 bytes each (a bigint, an
/// int, 64 characters of text and the tuple header), two indexes.
fn write_seed(dir: &Path, rows: usize) -> std::path::PathBuf {
    let path = dir.join(format!("seed_{rows}.sql"));
    let sql = format!(
        "create table items (id bigint primary key, account int not null, body text not null);\n\
         insert into items select g, g % 1000, md5(g::text) || md5((g * 7)::text) from generate_series(1, {rows}) g;\n\
         create index items_account on items (account);\n\
         analyze items;\n"
    );
    std::fs::write(&path, sql).expect("seed file");
    path
}

#[derive(Clone, Copy)]
struct Sample {
    claim: Duration,
    prepared: bool,
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
    let claim = t0.elapsed();
    let prepared = db.acquire_timings().prepared;
    let mut conn = db.connect().await.expect("connect through PgBouncer");
    let row = sqlx::query("select count(*) from items where account = 7")
        .persistent(false)
        .fetch_one(&mut conn)
        .await
        .expect("a query on the seed data");
    assert!(row.get::<i64, _>(0) >= 1, "the seed data is there");
    let body = Duration::from_micros(rand::thread_rng().gen_range(0..=2000));
    tokio::time::sleep(body).await;
    drop(conn);
    drop(db);
    Sample { claim, prepared }
}

fn run(target: &Target, template: &Template, threads: usize, n: usize) -> (Vec<Sample>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (target, template, next) = (target.clone(), template.clone(), next.clone());
            std::thread::Builder::new()
                .name(format!("scale-thread-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    let mut samples = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            break;
                        }
                        samples.push(rt.block_on(one_test(
                            &target,
                            &template,
                            format!("scale_{i}"),
                        )));
                    }
                    samples
                })
                .expect("thread")
        })
        .collect();
    let samples = handles
        .into_iter()
        .flat_map(|h| h.join().expect("scale thread"))
        .collect();
    (samples, started.elapsed())
}

/// The template's size, one clone's time per strategy (median of three;
/// 0 unless `clones`: a template the budget refused may not fit once more)
/// and the container's peak memory, straight on PostgreSQL.
async fn measure_stack(direct: &str, clones: bool) -> (u64, f64, f64, u64) {
    let mut conn = sqlx::PgConnection::connect(direct)
        .await
        .expect("the stack");
    let row = sqlx::raw_sql(
        "select datname::text, pg_database_size(oid) from pg_database \
         where datistemplate and datname like 'pgbf\\_tpl\\_%' order by pg_database_size(oid) desc limit 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("the stack's databases")
    .into_iter()
    .next();
    // None: its build was refused (and the failed template dropped).
    let Some(row) = row else {
        let peak = peak_memory(&mut conn).await;
        let _ = conn.close().await;
        return (0, 0.0, 0.0, peak);
    };
    let (template, bytes): (String, i64) = (row.get(0), row.get(1));
    let mut strategy_ms = [0.0, 0.0];
    for strategy in ["FILE_COPY", "WAL_LOG"].into_iter().filter(|_| clones) {
        let mut times = Vec::new();
        for i in 0..3 {
            let name = format!("pgbf_scale_clone_{i}");
            let started = Instant::now();
            let create =
                format!("CREATE DATABASE {name} TEMPLATE \"{template}\" STRATEGY {strategy}");
            sqlx::raw_sql(audited(&create))
                .execute(&mut conn)
                .await
                .expect("a clone");
            times.push(ms(started.elapsed()));
            let drop = format!("DROP DATABASE {name}");
            sqlx::raw_sql(audited(&drop))
                .execute(&mut conn)
                .await
                .expect("its drop");
        }
        let at = usize::from(strategy == "WAL_LOG");
        strategy_ms[at] = percentile(&sorted(times), 0.5);
    }
    let peak = peak_memory(&mut conn).await;
    let _ = conn.close().await;
    (bytes as u64, strategy_ms[0], strategy_ms[1], peak)
}

/// When the server (postmaster) started, and whether its log has a PANIC:
/// a server that crash-restarted keeps its start time, so both are asked.
async fn server_state(direct: &str) -> (String, bool) {
    let mut conn = sqlx::PgConnection::connect(direct)
        .await
        .expect("the stack");
    let row = sqlx::raw_sql(
        "select pg_postmaster_start_time()::text, \
         coalesce(pg_read_file('/pgdata/log/postgresql.json', true), '') like '%\"PANIC\"%'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("the server's state");
    let _ = conn.close().await;
    (row.get(0), row.get(1))
}

/// The PostgreSQL container's peak memory, as its cgroup recorded it.
async fn peak_memory(conn: &mut sqlx::PgConnection) -> u64 {
    for file in [
        "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
        "/sys/fs/cgroup/memory.peak",
    ] {
        let sql = format!("select pg_read_file('{file}', true)");
        if let Ok(row) = sqlx::raw_sql(audited(&sql)).fetch_one(&mut *conn).await {
            if let Some(Ok(n)) = row
                .get::<Option<String>, _>(0)
                .map(|t| t.trim().parse::<u64>())
            {
                return n;
            }
        }
    }
    0
}

/// SQL built at run time, as either sqlx major takes it.
#[cfg(feature = "sqlx-0-8")]
fn audited(sql: &str) -> &str {
    sql
}

/// [`audited`] under sqlx 0.9.
#[cfg(not(feature = "sqlx-0-8"))]
fn audited(sql: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(sql)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// The budget a row runs under: its name (`default`, `1G`) and bytes.
struct RowBudget {
    name: String,
    bytes: u64,
}

impl RowBudget {
    /// From the harness's environment (set by [`main`] for each row).
    fn from_env() -> RowBudget {
        RowBudget {
            name: std::env::var(BUDGET_NAME).unwrap_or_else(|_| "default".into()),
            bytes: std::env::var(BUDGET_BYTES)
                .ok()
                .and_then(|b| b.parse().ok())
                .unwrap_or(0),
        }
    }

    /// The part of a `RESULT` key that names it (none for the default).
    fn key(&self) -> String {
        match self.name.as_str() {
            "default" => String::new(),
            name => format!("_b{name}"),
        }
    }
}

/// One row's first run (`rows`, `c` threads) in this process, on a stack of
/// its own; prints its table line, `RESULT-ROW` and `STACK <id> <direct
/// URL>` (for [`main`]: the janitor's wait, the rerun, the removal).
fn row(r: usize, c: usize, n: usize, label: &str) {
    let budget = RowBudget::from_env();
    let (_seeds, seed) = row_seed(r);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let settings = row_settings(r, c, label, &budget);
    let target = Target::Containers(settings.clone());
    let template = Template::new().seed_file(&seed);
    let before = rt.block_on(async {
        let stack = Stack::shared(&settings).await.expect("the row's stack");
        server_state(stack.endpoints().direct_url("postgres").expose()).await
    });
    // The template is built (and the stack started) before the clock. A
    // budget too small for the template refuses it here with the typed
    // error (before its build, or when the build fills the databases'
    // tmpfs): a row that says so. Any other error fails the row.
    let warm = rt.block_on(async {
        TestDb::builder()
            .target(target.clone())
            .template(template.clone())
            .test_name("scale_warm")
            .build()
            .await
    });
    let mut refused_bytes = 0;
    let (samples, wall) = match warm {
        Ok(db) => {
            drop(db);
            run(&target, &template, c, n)
        }
        // (A checkout before the memory budget has no such error:
        // `build_before` turns the arm off for it.)
        #[cfg(not(feature = "no-memory-budget"))]
        Err(e @ pgbouncer_fixtures::Error::MemoryBudget { .. }) => {
            if let pgbouncer_fixtures::Error::MemoryBudget { template_bytes, .. } = &e {
                refused_bytes = *template_bytes;
            }
            eprintln!("scale: the row's template was refused: {e}");
            (Vec::new(), Duration::ZERO)
        }
        Err(e) => panic!("the row's template failed: {e}"),
    };
    let (stack_id, direct) = rt.block_on(async {
        let stack = Stack::shared(&settings).await.expect("the row's stack");
        let url = stack.endpoints().direct_url("postgres");
        (stack.id().to_string(), url.expose().to_string())
    });
    println!("STACK {stack_id} {direct}");
    let after = rt.block_on(server_state(&direct));
    // Nothing killed: the same server, no PANIC (a crash restart).
    let kept = if after == (before.0.clone(), false) {
        "yes"
    } else {
        "NO"
    };
    let (bytes, file_copy, wal_log, peak) =
        rt.block_on(measure_stack(&direct, !samples.is_empty()));
    let within = match budget.bytes {
        0 => "?",
        b if peak <= b => "yes",
        _ => "NO",
    };
    let b = budget.key();
    if samples.is_empty() {
        println!(
            "| {label} | {r} | >= {:.1} | {c} | refused: template too big for the budget (typed error); server kept running: {kept} | | | | | | {} ({:.0}) | {:.0} | {within} | |",
            mb(bytes.max(refused_bytes)),
            budget.name,
            mb(budget.bytes),
            mb(peak),
        );
        let _ = (file_copy, wal_log);
        println!(
            "RESULT-ROW {label}_r{r}_c{c}{b}_refused=1 {label}_r{r}_c{c}{b}_server_kept={} {label}_r{r}_c{c}{b}_peak_mb={:.0}",
            u8::from(kept == "yes"),
            mb(peak)
        );
        return;
    }
    let claims = sorted(samples.iter().map(|s| ms(s.claim)).collect());
    let prepared = samples.iter().filter(|s| s.prepared).count();
    let (p50, p95) = (percentile(&claims, 0.5), percentile(&claims, 0.95));
    let clone = file_copy.min(wal_log);
    println!(
        "| {label} | {r} | {:.1} | {c} | {p50:.1} | {p95:.1} | {prepared}/{n} | {file_copy:.1} / {wal_log:.1} | {:.2} | {:.2} | {} ({:.0}) | {:.0} | {within} | {:.1} |",
        mb(bytes),
        p50 / clone,
        p95 / clone,
        budget.name,
        mb(budget.bytes),
        mb(peak),
        wall.as_secs_f64()
    );
    println!(
        "RESULT-ROW {label}_r{r}_c{c}{b}_p50_ms={p50:.1} {label}_r{r}_c{c}{b}_p95_ms={p95:.1} {label}_r{r}_c{c}{b}_clone_ms={clone:.1} {label}_r{r}_c{c}{b}_file_copy_ms={file_copy:.1} {label}_r{r}_c{c}{b}_wal_log_ms={wal_log:.1} {label}_r{r}_c{c}{b}_peak_mb={:.0} {label}_r{r}_c{c}{b}_wall_s={:.1}",
        mb(peak),
        wall.as_secs_f64()
    );
}

/// The seed file of a row: in `PGBF_SCALE_SEED_DIR` (one directory for both
/// runs of a row, set by [`main`]) or else a directory of its own (returned
/// with it, removed when dropped).
fn row_seed(r: usize) -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    match std::env::var_os(SEED_DIR) {
        Some(dir) => (None, write_seed(Path::new(&dir), r)),
        None => {
            let dir = tempfile::tempdir().expect("a directory for the seed");
            let seed = write_seed(dir.path(), r);
            (Some(dir), seed)
        }
    }
}

/// The row's stack settings, the same in both its runs (so the rerun joins
/// the first run's stack): the run id [`main`] gives the row, and a stack
/// that outlives its last lease long enough for its janitor to prepare
/// clones (a pinned run id takes no keep-warm; [`main`] removes the stack
/// at the row's end).
fn row_settings(r: usize, c: usize, label: &str, budget: &RowBudget) -> StackSettings {
    let run_id = std::env::var(RUN_ID).unwrap_or_else(|_| {
        format!(
            "scale-{label}-{r}-{c}-{}-{}",
            budget.name,
            std::process::id()
        )
    });
    StackSettings::from_env(&pgbouncer_fixtures::Env::load().expect("env"))
        .expect("settings")
        .with_run_id(run_id)
        .with_reap_after(ROW_REAP_AFTER)
}

/// How long a row's stack outlives its last lease: the janitor's work
/// between the two runs and the rerun's start fit well within it.
const ROW_REAP_AFTER: Duration = Duration::from_secs(300);

/// The row's rerun in this process: joins the first run's stack (its
/// janitor done, [`main`] waited for it), the same `n` tests; prints
/// `RERUN-CELLS` (its table cells) and `RESULT-ROW`.
fn rerun(r: usize, c: usize, n: usize, label: &str) {
    let budget = RowBudget::from_env();
    let (_seeds, seed) = row_seed(r);
    let settings = row_settings(r, c, label, &budget);
    let target = Target::Containers(settings.clone());
    let template = Template::new().seed_file(&seed);
    let (samples, _) = run(&target, &template, c, n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let peak = rt.block_on(async {
        let stack = Stack::shared(&settings).await.expect("the row's stack");
        let url = stack.endpoints().direct_url("postgres");
        let mut conn = sqlx::PgConnection::connect(url.expose())
            .await
            .expect("the stack");
        let peak = peak_memory(&mut conn).await;
        let _ = conn.close().await;
        peak
    });
    let claims = sorted(samples.iter().map(|s| ms(s.claim)).collect());
    let prepared = samples.iter().filter(|s| s.prepared).count();
    let (p50, p95) = (percentile(&claims, 0.5), percentile(&claims, 0.95));
    let b = budget.key();
    println!(
        "RERUN-CELLS {p50:.1} | {p95:.1} | {prepared}/{n} | {:.0} |",
        mb(peak)
    );
    println!(
        "RESULT-ROW {label}_r{r}_c{c}{b}_rerun_p50_ms={p50:.1} {label}_r{r}_c{c}{b}_rerun_p95_ms={p95:.1} {label}_r{r}_c{c}{b}_rerun_prepared={prepared} {label}_r{r}_c{c}{b}_rerun_peak_mb={:.0}",
        mb(peak)
    );
}

/// The harness, run as one row: `ROWS,THREADS`.
const ROW: &str = "PGBF_SCALE_ROW";
/// Set: the harness runs the row's rerun, not its first run.
const RERUN: &str = "PGBF_SCALE_RERUN";
/// The row's run id and seed directory, the same for both its runs.
const RUN_ID: &str = "PGBF_SCALE_RUN_ID";
const SEED_DIR: &str = "PGBF_SCALE_SEED_DIR";
/// The row's budget, by name and in bytes (the harness's environment).
const BUDGET_NAME: &str = "PGBF_SCALE_BUDGET_NAME";
const BUDGET_BYTES: &str = "PGBF_SCALE_BUDGET_BYTES";

/// A size as `PGBF_MEMORY_BUDGET` writes it (`1G`, `512M`, bytes).
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The stack's default budget, as the crate sets it: a quarter of the
/// Docker engine's memory, between 1 and 8 GiB.
fn default_budget() -> u64 {
    let engine = std::process::Command::new("docker")
        .args(["info", "--format", "{{.MemTotal}}"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .filter(|&m| m > 0);
    engine.map_or(1 << 30, |m| m / 4).clamp(1 << 30, 8 << 30)
}

/// The harness of another checkout's crate (`PGBF_SCALE_BEFORE`): this
/// file, built against that crate in a crate of its own.
fn build_before(checkout: &Path) -> std::path::PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = here.join("target/scale-before");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("report")).expect("target/scale-before");
    std::fs::create_dir_all(src.join("common")).expect("target/scale-before");
    std::fs::copy(
        here.join("benches/common/mod.rs"),
        src.join("common/mod.rs"),
    )
    .expect("common/mod.rs");
    std::fs::copy(here.join("benches/scale.rs"), src.join("scale.rs")).expect("scale.rs");
    std::fs::copy(
        here.join("benches/report/mod.rs"),
        src.join("report/mod.rs"),
    )
    .expect("report/mod.rs");
    let checkout = checkout
        .canonicalize()
        .expect("PGBF_SCALE_BEFORE: a checkout");
    let sqlx_major = if cfg!(feature = "sqlx-0-8") {
        "sqlx-0-8"
    } else {
        "sqlx-0-9"
    };
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"scale-before\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [[bin]]\nname = \"scale\"\npath = \"src/scale.rs\"\n\n\
             [dependencies]\npgbouncer-fixtures = {{ path = {:?}, default-features = false, features = [{sqlx_major:?}] }}\n\
             rand = \"0.8\"\ntempfile = \"3\"\ntokio = {{ version = \"1\", features = [\"rt\", \"rt-multi-thread\", \"macros\", \"time\"] }}\n\n\
             [features]\nsqlx-0-8 = []\nno-memory-budget = []\n\n[workspace]\n",
            checkout.display().to_string()
        ),
    )
    .expect("Cargo.toml");
    // That checkout's versions of every dependency (and its build reused).
    let _ = std::fs::copy(checkout.join("Cargo.lock"), dir.join("Cargo.lock"));
    let mut cargo =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--release", "--bin", "scale", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"));
    if sqlx_major == "sqlx-0-8" {
        cargo.args(["--features", "sqlx-0-8"]);
    }
    let errors = std::fs::read_to_string(checkout.join("src/error.rs")).unwrap_or_default();
    if !errors.contains("MemoryBudget {") {
        cargo.args(["--features", "no-memory-budget"]);
    }
    let built = cargo
        .status()
        .expect("cargo builds the other checkout's harness");
    assert!(
        built.success(),
        "the harness against {} did not build",
        checkout.display()
    );
    dir.join("target/release/scale")
}

/// [`janitor_done`](common::janitor_done) from synchronous code, through
/// a plain connection (no lease, so the janitor works meanwhile).
fn janitor_done(url: &str) -> Duration {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(common::janitor_done(url))
}

/// Removes the row's stack (its last lease is gone): nothing lingers into
/// the next row.
fn remove_stack(id: &str) {
    let removed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(pgbouncer_fixtures::gc(pgbouncer_fixtures::GcScope::Stack(
            id,
        )));
    if let Err(e) = removed {
        eprintln!("scale: removing the row's stack {id}: {e}");
    }
}

fn main() {
    let n = list("PGBF_SCALE_N", "40").first().copied().unwrap_or(40);
    let label = std::env::var("PGBF_SCALE_LABEL").unwrap_or_else(|_| "this".into());
    if let Ok(spec) = std::env::var(ROW) {
        let v: Vec<usize> = spec.split(',').filter_map(|x| x.parse().ok()).collect();
        if std::env::var_os(RERUN).is_some() {
            rerun(v[0], v[1], n, &label);
        } else {
            row(v[0], v[1], n, &label);
        }
        return;
    }
    let rows = list("PGBF_SCALE_ROWS", "1000,300000,1300000,7000000");
    let threads = list("PGBF_SCALE_THREADS", "2,4");
    // Without PGBF_SCALE_BUDGETS, the budget of any run: PGBF_MEMORY_BUDGET
    // if set, else the stack's default.
    let budgets: Vec<String> = std::env::var("PGBF_SCALE_BUDGETS")
        .or_else(|_| std::env::var("PGBF_MEMORY_BUDGET"))
        .unwrap_or_else(|_| "default".into())
        .split(',')
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    for b in &budgets {
        assert!(
            b == "default" || parse_size(b).is_some(),
            "PGBF_SCALE_BUDGETS: {b:?} is neither `default` nor a size (1G, 512M, bytes)"
        );
    }
    // The code measured: this checkout, after the other one if asked.
    let mut codes = Vec::new();
    if let Some(before) = std::env::var_os("PGBF_SCALE_BEFORE") {
        codes.push(("before".to_string(), build_before(Path::new(&before))));
    }
    codes.push((label, std::env::current_exe().expect("the harness")));
    let mut report = report::Report::default();
    report.line(format!(
        "scale: {n} tests per row (claim + connect + a query on the seed + 0-2 ms body + drop), each row a process and a stack of its own, memory budgets {}",
        budgets.join(", ")
    ));
    report.line("| code | rows | template MB | threads | first run: claim p50 ms | first run: claim p95 ms | first run: prepared | one clone FILE_COPY / WAL_LOG ms | p50 / clone | p95 / clone | budget (MB) | peak memory MB | peak <= budget | wall s | janitor wait s | rerun claim p50 ms | rerun claim p95 ms | rerun prepared | rerun peak memory MB |");
    report.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut result = String::from("RESULT");
    for &r in &rows {
        for &c in &threads {
            for budget in &budgets {
                let bytes = match budget.as_str() {
                    "default" => default_budget(),
                    size => parse_size(size).expect("checked above"),
                };
                for (code, exe) in &codes {
                    let seeds = tempfile::tempdir().expect("a directory for the row's seed");
                    let run_id = format!("scale-{code}-{r}-{c}-{budget}-{}", std::process::id());
                    let child = |rerun: bool| {
                        let mut child = std::process::Command::new(exe);
                        child
                            .env(ROW, format!("{r},{c}"))
                            .env("PGBF_SCALE_LABEL", code)
                            .env(BUDGET_NAME, budget)
                            .env(BUDGET_BYTES, bytes.to_string())
                            .env(RUN_ID, &run_id)
                            .env(SEED_DIR, seeds.path())
                            .stderr(std::process::Stdio::inherit());
                        match budget.as_str() {
                            "default" => child.env_remove("PGBF_MEMORY_BUDGET"),
                            size => child.env("PGBF_MEMORY_BUDGET", size),
                        };
                        if rerun {
                            child.env(RERUN, "1");
                        } else {
                            child.env_remove(RERUN);
                        }
                        let out = child.output().expect("the harness runs");
                        assert!(
                            out.status.success(),
                            "the row {r} rows, {c} threads, budget {budget} ({code}, rerun: {rerun}) failed"
                        );
                        String::from_utf8_lossy(&out.stdout).into_owned()
                    };
                    let first = child(false);
                    let mut line = String::new();
                    let mut stack = None;
                    for l in first.lines() {
                        if let Some(r) = l.strip_prefix("RESULT-ROW") {
                            result.push_str(r);
                        } else if let Some(s) = l.strip_prefix("STACK ") {
                            stack = s
                                .split_once(' ')
                                .map(|(id, url)| (id.to_string(), url.to_string()));
                        } else if l.starts_with('|') {
                            line = l.to_string();
                        } else {
                            report.line(l);
                        }
                    }
                    let (stack_id, url) = stack.expect("the row's stack id and URL");
                    // A refused template: no rerun (nothing to claim).
                    if !line.contains("refused") {
                        let waited = janitor_done(&url);
                        for l in child(true).lines() {
                            if let Some(r) = l.strip_prefix("RESULT-ROW") {
                                result.push_str(r);
                            } else if let Some(cells) = l.strip_prefix("RERUN-CELLS") {
                                line.push_str(&format!(" {:.1} |{cells}", waited.as_secs_f64()));
                            } else {
                                report.line(l);
                            }
                        }
                    } else {
                        line.push_str(" | | | | |");
                    }
                    report.line(line);
                    remove_stack(&stack_id);
                }
            }
        }
    }
    report.line(result.clone());
    report.record("scale");
}
