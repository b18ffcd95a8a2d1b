//! What the Supavisor-like stage of `Profile::SupabaseSharedPrepared` adds
//! to a round trip: `N` `SELECT 1` round trips on one connection through the
//! stage, and the same on the same stack's PgBouncer directly (a `TestDb`
//! of the profile's settings without the profile: no stage), alternating
//! rounds so that both meet the same machine. Prints the median per round
//! trip of each and their ratio.
//!
//! `cargo bench --bench stage_latency` (env: PGBF_BENCH_N round trips per
//! round, default 10000; 5 rounds each).

use std::time::{Duration, Instant};

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Profile, StackSettings, Target, TestDb};
use sqlx::{Connection, PgConnection};

const ROUNDS: usize = 5;

async fn round(db: &TestDb, n: usize) -> Duration {
    let mut conn = PgConnection::connect_with(&db.connect_options())
        .await
        .expect("connect");
    let started = Instant::now();
    for _ in 0..n {
        sqlx::raw_sql("select 1")
            .execute(&mut conn)
            .await
            .expect("select 1");
    }
    let elapsed = started.elapsed();
    conn.close().await.expect("close");
    elapsed / n as u32
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("PGBF_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let staged = TestDb::for_profile(Profile::SupabaseSharedPrepared)
        .await
        .expect("a TestDb behind the stage");
    let settings = Profile::SupabaseSharedPrepared.apply(StackSettings::default());
    let direct = TestDb::builder()
        .target(Target::Containers(settings))
        .build()
        .await
        .expect("a TestDb on the same stack's PgBouncer");
    // Warm both paths (connection set-up, server connections in the pool).
    round(&staged, n / 10).await;
    round(&direct, n / 10).await;
    let (mut through, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        through.push(round(&staged, n).await);
        plain.push(round(&direct, n).await);
    }
    let (through, plain) = (median(through), median(plain));
    println!(
        "{n} x `select 1`, median of {ROUNDS} rounds per round trip: through the stage {:.1} us, \
         PgBouncer directly {:.1} us, ratio {:.2}",
        through.as_secs_f64() * 1e6,
        plain.as_secs_f64() * 1e6,
        through.as_secs_f64() / plain.as_secs_f64()
    );
    staged.close().await.expect("drop");
    direct.close().await.expect("drop");
}
