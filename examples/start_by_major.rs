//! Stack start with PostgreSQL 15 and with 17, side by side in one run:
//! starts alternate between the majors (images built first, not counted).
//!
//! ```text
//! cargo run --release --example start_by_major [-- N]
//! ```

use std::time::{Duration, Instant};

use pgbouncer_fixtures::{PostgresVersion, Stack, StackSettings};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10);
    let settings = |v| StackSettings::default().with_postgres_version(v);
    // Builds the images when missing; not counted.
    for v in PostgresVersion::ALL {
        Stack::start(settings(v)).await?.stop().await?;
    }
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..n {
        for (i, v) in PostgresVersion::ALL.into_iter().enumerate() {
            let t = Instant::now();
            let stack = Stack::start(settings(v)).await?;
            samples[i].push(t.elapsed());
            stack.stop().await?;
        }
    }
    let mut p50 = Vec::new();
    println!("| PostgreSQL | starts | p50 ms | p95 ms |");
    println!("|---|---|---|---|");
    for (i, v) in PostgresVersion::ALL.into_iter().enumerate() {
        samples[i].sort();
        p50.push(percentile(&samples[i], 0.5));
        println!(
            "| {v} | {} | {:.0} | {:.0} |",
            samples[i].len(),
            percentile(&samples[i], 0.5),
            percentile(&samples[i], 0.95)
        );
    }
    println!(
        "RESULT start15_p50_ms={:.0} start17_p50_ms={:.0} ratio_15_over_17={:.2}",
        p50[0],
        p50[1],
        p50[0] / p50[1]
    );
    Ok(())
}
