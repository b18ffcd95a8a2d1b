//! Time from "a test asks for a database" to "its first query through
//! PgBouncer answered", three ways, side by side on one stack:
//!
//! 1. clones of a migration-keyed template, claimed from the prepared pool;
//! 2. clones of the same template made on demand;
//! 3. what `#[sqlx::test]` does: an empty database, then all 20 migrations.
//!
//! `cargo bench --bench acquire` (env: PGBF_BENCH_N acquisitions per way,
//! default 200; PGBF_BENCH_TEST_MS simulated test body, default 20).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{StackSettings, Target, Template, TestDb};
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor};

mod report;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Stats {
    p50: f64,
    p95: f64,
    p99: f64,
    mean: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |p: f64| ms(samples[((samples.len() - 1) as f64 * p).round() as usize]);
    Stats {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        mean: samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64,
    }
}

/// Asks for a database, connects through PgBouncer, runs the first query.
async fn acquire(
    builder: pgbouncer_fixtures::TestDbBuilder,
    migrator: Option<&Migrator>,
) -> (Duration, TestDb) {
    let started = Instant::now();
    let db = builder.build().await.expect("database");
    if let Some(m) = migrator {
        let mut direct = db.connect_direct().await.expect("direct connection");
        m.run(&mut direct).await.expect("migrations");
        direct.close().await.expect("close");
    }
    let mut conn = db.connect().await.expect("connect through PgBouncer");
    conn.execute("select 1").await.expect("first query");
    let elapsed = started.elapsed();
    conn.close().await.expect("close");
    (elapsed, db)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_number("PGBF_BENCH_N", 200) as usize;
    let test_body = Duration::from_millis(env_number("PGBF_BENCH_TEST_MS", 20));
    let migrations = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/migrations");
    let migrator = Migrator::new(migrations.as_path())
        .await
        .expect("migrations");
    let target = Target::Containers(StackSettings::default());
    let prepared = Template::new()
        .migrations_dir(&migrations)
        .prepared_clones(4);
    let on_demand = Template::new()
        .migrations_dir(&migrations)
        .prepared_clones(0);

    // Warm-up: start the stack, build the template once.
    for _ in 0..5 {
        let builder = TestDb::builder()
            .target(target.clone())
            .template(prepared.clone());
        acquire(builder, None).await.1.close().await.expect("drop");
    }

    let mut results = Vec::new();
    for (label, template, migrate) in [
        (
            "prepared clone (claimed from the pool)",
            Some(&prepared),
            false,
        ),
        ("clone on demand", Some(&on_demand), false),
        ("empty database + 20 migrations (sqlx::test)", None, true),
    ] {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let mut builder = TestDb::builder()
                .target(target.clone())
                .test_name(format!("bench_{i}"));
            if let Some(t) = template {
                builder = builder.template(t.clone());
            }
            let (elapsed, db) = acquire(builder, migrate.then_some(&migrator)).await;
            samples.push(elapsed);
            // The test's own work, during which the pool refills.
            tokio::time::sleep(test_body).await;
            db.close().await.expect("drop");
        }
        results.push((label, stats(samples)));
    }

    let mut report = report::Report::default();
    report.line(format!(
        "acquisition: test asks -> first query through PgBouncer answered ({n} each, test body {} ms)",
        test_body.as_millis()
    ));
    report.line("| way | p50 ms | p95 ms | p99 ms | mean ms |");
    report.line("|---|---:|---:|---:|---:|");
    for (label, s) in &results {
        report.line(format!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.p50, s.p95, s.p99, s.mean
        ));
    }
    let (prep, clone, migrate) = (&results[0].1, &results[1].1, &results[2].1);
    report.line(format!(
        "ratios (p50): migrate/prepared = {:.1}x, migrate/clone = {:.1}x",
        migrate.p50 / prep.p50,
        migrate.p50 / clone.p50
    ));
    report.line(format!(
        "RESULT prepared_p50_ms={:.2} prepared_p95_ms={:.2} clone_p50_ms={:.2} clone_p95_ms={:.2} migrate_p50_ms={:.2} speedup_prepared={:.1} speedup_clone={:.1}",
        prep.p50,
        prep.p95,
        clone.p50,
        clone.p95,
        migrate.p50,
        migrate.p50 / prep.p50,
        migrate.p50 / clone.p50
    ));
    report.record("acquire");
}
