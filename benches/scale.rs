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
//! v2), read through `pg_read_file`.
//!
//! Uses only the API every version of the crate has, so the same file can
//! measure an older checkout side by side (see docs/benchmarks.md).
//!
//! `cargo bench --bench scale` (env: PGBF_SCALE_ROWS, rows per template,
//! default `1000,300000,1300000`; PGBF_SCALE_THREADS, default `2,4`;
//! PGBF_SCALE_N tests per row, default 40; PGBF_MEMORY_BUDGET as for any
//! run; PGBF_SCALE_LABEL, a word printed in each row).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Stack, StackSettings, Target, Template, TestDb};
use rand::Rng;
use sqlx::{Connection, Row};

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

/// The template's size, one clone's time per strategy (median of three)
/// and the container's peak memory, straight on PostgreSQL.
async fn measure_stack(direct: &str) -> (u64, f64, f64, u64) {
    let mut conn = sqlx::PgConnection::connect(direct)
        .await
        .expect("the stack");
    let row = sqlx::raw_sql(
        "select datname::text, pg_database_size(oid) from pg_database \
         where datistemplate and datname like 'pgbf\\_tpl\\_%' order by pg_database_size(oid) desc limit 1",
    )
    .fetch_one(&mut conn)
    .await
    .expect("the template");
    let (template, bytes): (String, i64) = (row.get(0), row.get(1));
    let mut strategy_ms = Vec::new();
    for strategy in ["FILE_COPY", "WAL_LOG"] {
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
        strategy_ms.push(percentile(&sorted(times), 0.5));
    }
    let peak = peak_memory(&mut conn).await;
    let _ = conn.close().await;
    (bytes as u64, strategy_ms[0], strategy_ms[1], peak)
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

/// One row (`rows`, `c` threads) in this process, on a stack of its own;
/// prints its table line and `RESULT-ROW`.
fn row(r: usize, c: usize, n: usize, label: &str) {
    let seeds = tempfile::tempdir().expect("a directory for the seed");
    let seed = write_seed(seeds.path(), r);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let run_id = format!("scale-{label}-{r}-{c}-{}", std::process::id());
    let settings = StackSettings::from_env(&pgbouncer_fixtures::Env::load().expect("env"))
        .expect("settings")
        .with_run_id(run_id);
    let target = Target::Containers(settings.clone());
    let template = Template::new().seed_file(&seed);
    // The template is built (and the stack started) before the clock.
    rt.block_on(one_test(&target, &template, "scale_warm".into()));
    let (samples, wall) = run(&target, &template, c, n);
    let direct = rt.block_on(async {
        let stack = Stack::shared(&settings).await.expect("the row's stack");
        stack
            .endpoints()
            .direct_url("postgres")
            .expose()
            .to_string()
    });
    let (bytes, file_copy, wal_log, peak) = rt.block_on(measure_stack(&direct));
    let claims = sorted(samples.iter().map(|s| ms(s.claim)).collect());
    let prepared = samples.iter().filter(|s| s.prepared).count();
    let (p50, p95) = (percentile(&claims, 0.5), percentile(&claims, 0.95));
    let clone = file_copy.min(wal_log);
    println!(
        "| {label} | {r} | {:.1} | {c} | {p50:.1} | {p95:.1} | {prepared}/{n} | {file_copy:.1} / {wal_log:.1} | {:.2} | {:.2} | {:.0} | {:.1} |",
        mb(bytes),
        p50 / clone,
        p95 / clone,
        mb(peak),
        wall.as_secs_f64()
    );
    println!(
        "RESULT-ROW {label}_r{r}_c{c}_p50_ms={p50:.1} {label}_r{r}_c{c}_p95_ms={p95:.1} {label}_r{r}_c{c}_clone_ms={clone:.1} {label}_r{r}_c{c}_file_copy_ms={file_copy:.1} {label}_r{r}_c{c}_wal_log_ms={wal_log:.1} {label}_r{r}_c{c}_peak_mb={:.0} {label}_r{r}_c{c}_wall_s={:.1}",
        mb(peak),
        wall.as_secs_f64()
    );
}

/// The harness, run as one row: `ROWS,THREADS`.
const ROW: &str = "PGBF_SCALE_ROW";

fn main() {
    let n = list("PGBF_SCALE_N", "40").first().copied().unwrap_or(40);
    let label = std::env::var("PGBF_SCALE_LABEL").unwrap_or_else(|_| "this".into());
    if let Ok(spec) = std::env::var(ROW) {
        let v: Vec<usize> = spec.split(',').filter_map(|x| x.parse().ok()).collect();
        row(v[0], v[1], n, &label);
        return;
    }
    let rows = list("PGBF_SCALE_ROWS", "1000,300000,1300000");
    let threads = list("PGBF_SCALE_THREADS", "2,4");
    let budget = std::env::var("PGBF_MEMORY_BUDGET").unwrap_or_else(|_| "default".into());
    let mut report = report::Report::default();
    report.line(format!(
        "scale: {n} tests per row (claim + connect + a query on the seed + 0-2 ms body + drop), each row a process and a stack of its own, memory budget {budget}"
    ));
    report.line("| code | rows | template MB | threads | claim p50 ms | claim p95 ms | prepared | one clone FILE_COPY / WAL_LOG ms | p50 / clone | p95 / clone | peak memory MB | wall s |");
    report.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut result = String::from("RESULT");
    for &r in &rows {
        for &c in &threads {
            let out = std::process::Command::new(std::env::current_exe().expect("the harness"))
                .env(ROW, format!("{r},{c}"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("the harness runs");
            assert!(out.status.success(), "the row {r} rows, {c} threads failed");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                match line.strip_prefix("RESULT-ROW") {
                    Some(r) => result.push_str(r),
                    None => report.line(line),
                }
            }
        }
    }
    report.line(result.clone());
    report.record("scale");
}
