//! What joining the checkout's live stack costs a new process: what every
//! process of a `cargo nextest run` pays (and a rerun of `cargo test`
//! within `PGBF_KEEP_WARM_SECS`), side by side with the first clone claim.
//!
//! ```text
//! cargo run --release --example join [-- N]
//! ```
//!
//! The parent holds the stack (starting it if needed) and builds the
//! template once; then runs itself N times (default 20), one after the
//! other; each child joins, claims a clone and exits. Printed: p50 / p95 of
//! the join (`Stack::shared`), the first `TestDb` (template clone) and the
//! whole child process (spawn to exit, as nextest sees it).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pgbouncer_fixtures::{Env, Stack, StackSettings, Target, Template, TestDb};

fn template() -> Template {
    Template::new()
        .migrations_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/migrations"))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = StackSettings::from_env(&Env::load()?)?;
    if std::env::var_os("PGBF_JOIN_CHILD").is_some() {
        let t = Instant::now();
        let stack = Stack::shared(&settings).await?;
        let join = t.elapsed();
        assert!(
            stack.joined(),
            "the parent holds the stack: a child joins it"
        );
        let t = Instant::now();
        let db = TestDb::builder()
            .target(Target::Containers(settings))
            .template(template())
            .build()
            .await?;
        let claim = t.elapsed();
        drop(db);
        println!(
            "JOIN_MS={:.2} CLAIM_MS={:.2}",
            join.as_secs_f64() * 1e3,
            claim.as_secs_f64() * 1e3
        );
        return Ok(());
    }
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let stack = Stack::shared(&settings).await?;
    // The template, built once (as a previous run would have).
    TestDb::builder()
        .target(Target::Containers(settings.clone()))
        .template(template())
        .build()
        .await?
        .close()
        .await?;
    let (mut joins, mut claims, mut procs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let out = Command::new(std::env::current_exe()?)
            .env("PGBF_JOIN_CHILD", "1")
            .output()?;
        procs.push(t.elapsed().as_secs_f64() * 1e3);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("JOIN_MS="))
            .ok_or_else(|| format!("child failed: {}", String::from_utf8_lossy(&out.stderr)))?;
        let mut fields = line.split_whitespace().map(|f| {
            f.split('=')
                .nth(1)
                .unwrap_or("0")
                .parse::<f64>()
                .unwrap_or(0.0)
        });
        joins.push(fields.next().unwrap_or(0.0));
        claims.push(fields.next().unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("joining stack {} from a new process, {n} times", stack.id());
    println!("| step | p50 ms | p95 ms |");
    println!("|---|---:|---:|");
    for (name, v) in [
        (
            "join (`Stack::shared`: engine, lock, inspect, lease + query through PgBouncer)",
            &mut joins,
        ),
        ("first `TestDb` (template clone claimed)", &mut claims),
        ("whole process, spawn to exit", &mut procs),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.95)
        );
    }
    println!(
        "RESULT join_p50_ms={:.1} join_p95_ms={:.1} process_p50_ms={:.1}",
        percentile(&mut joins, 0.5),
        percentile(&mut joins, 0.95),
        percentile(&mut procs, 0.5)
    );
    Ok(())
}
