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
//! other, then N times two at once (as nextest runs them on 2 cores); each
//! child joins, claims a clone and exits. Printed: p50 / p95 of the join
//! (`Stack::shared`), the first `TestDb` (template clone) and the whole
//! child process (spawn to exit, as nextest sees it).

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
    println!("joining stack {} from a new process, {n} times one at a time, then {n} times two at once (as nextest runs them on 2 cores)", stack.id());
    println!("| step | one at a time p50 / p95 ms | two at once p50 / p95 ms |");
    println!("|---|---:|---:|");
    let mut alone = Samples::default();
    for _ in 0..n {
        alone.push(child()?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut paired = Samples::default();
    for _ in 0..n.div_ceil(2) {
        let other = std::thread::spawn(child);
        let mine = child()?;
        paired.push(other.join().map_err(|_| "a child thread panicked")??);
        paired.push(mine);
        std::thread::sleep(Duration::from_millis(50));
    }
    let rows: [(&str, Field); 3] = [
        (
            "join (`Stack::shared`: engine, inspect, lease + query through PgBouncer)",
            |s| &mut s.joins,
        ),
        ("first `TestDb` (template clone claimed)", |s| &mut s.claims),
        ("whole process, spawn to exit", |s| &mut s.procs),
    ];
    for (name, field) in rows {
        let (a, p) = (field(&mut alone), field(&mut paired));
        println!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} |",
            percentile(a, 0.5),
            percentile(a, 0.95),
            percentile(p, 0.5),
            percentile(p, 0.95)
        );
    }
    println!(
        "RESULT join_p50_ms={:.1} join_p95_ms={:.1} process_p50_ms={:.1} paired_join_p50_ms={:.1} paired_process_p50_ms={:.1}",
        percentile(&mut alone.joins, 0.5),
        percentile(&mut alone.joins, 0.95),
        percentile(&mut alone.procs, 0.5),
        percentile(&mut paired.joins, 0.5),
        percentile(&mut paired.procs, 0.5)
    );
    Ok(())
}

/// One column of [`Samples`].
type Field = fn(&mut Samples) -> &mut Vec<f64>;

#[derive(Default)]
struct Samples {
    joins: Vec<f64>,
    claims: Vec<f64>,
    procs: Vec<f64>,
}

impl Samples {
    fn push(&mut self, (join, claim, process): (f64, f64, f64)) {
        self.joins.push(join);
        self.claims.push(claim);
        self.procs.push(process);
    }
}

/// Runs one child: its join and first-claim times, and the whole process's.
fn child() -> Result<(f64, f64, f64), String> {
    let t = Instant::now();
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env("PGBF_JOIN_CHILD", "1")
        .output()
        .map_err(|e| e.to_string())?;
    let process = t.elapsed().as_secs_f64() * 1e3;
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
    let join = fields.next().unwrap_or(0.0);
    let claim = fields.next().unwrap_or(0.0);
    Ok((join, claim, process))
}
