//! Prints how long the fixture's steps take on this machine, side by side in
//! one run: stack start, per-test database create + drop, and connect().
//!
//! ```text
//! cargo run --release --example timings [-- N]
//! ```

use std::time::{Duration, Instant};

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Stack, StackSettings, Target, TestDb};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "| {name:<34} | {:>4} | {:>8.1} | {:>8.1} | {:>8.1} |",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        percentile(&samples, 1.0)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50);

    let mut starts = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let stack = Stack::start(StackSettings::default()).await?;
        starts.push(t.elapsed());
        stack.stop().await?;
    }

    let target = Target::Containers(StackSettings::default());
    // Warm the shared stack so it is not counted below.
    TestDb::builder()
        .target(target.clone())
        .build()
        .await?
        .close()
        .await?;

    let (mut create, mut drop, mut connect, mut first_query) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut reconnect, mut direct) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let db = TestDb::builder()
            .target(target.clone())
            .test_name(format!("timing_{i}"))
            .build()
            .await?;
        create.push(t.elapsed());
        let t = Instant::now();
        let mut conn = db.connect().await?;
        connect.push(t.elapsed());
        let t = Instant::now();
        sqlx::raw_sql("select 1").execute(&mut conn).await?;
        first_query.push(t.elapsed());
        drop_conn(conn);
        let t = Instant::now();
        let mut again = db.connect().await?;
        sqlx::raw_sql("select 1").execute(&mut again).await?;
        reconnect.push(t.elapsed());
        drop_conn(again);
        let t = Instant::now();
        let mut d = db.connect_direct().await?;
        sqlx::raw_sql("select 1").execute(&mut d).await?;
        direct.push(t.elapsed());
        drop_conn(d);
        let t = Instant::now();
        db.close().await?;
        drop.push(t.elapsed());
    }

    println!("| step                               |    n |  p50 ms |  p95 ms |  max ms |");
    println!("|------------------------------------|-----:|--------:|--------:|--------:|");
    row("stack start (images present)", starts);
    row("test database: CREATE DATABASE", create);
    row("test database: DROP .. WITH (FORCE)", drop);
    row("connect() through PgBouncer", connect);
    row("first query through PgBouncer", first_query);
    row("connect()+query, server conn pooled", reconnect);
    row("connect_direct()+query", direct);
    Ok(())
}

fn drop_conn(conn: sqlx::PgConnection) {
    std::mem::drop(conn);
}
