//! What the Supavisor-like stage adds, behind a profile served through it
//! (`PGBF_BENCH_PROFILE`, default `supabase-shared-prepared`), against the
//! same stack's PgBouncer directly (a `TestDb` of the profile's settings
//! without the profile: no stage), in alternating rounds so that both meet
//! the same machine:
//!
//! - a round trip: `N` `SELECT 1` on one connection, each one timed;
//! - a connect: `C` fresh connections as `TestDb::connect` opens them, each
//!   timed up to the answer of its first `SELECT 1`.
//!
//! Prints p50 and p95 of every sample of each side, and the ratios.
//!
//! `cargo bench --bench stage_latency` (env: `PGBF_BENCH_N` round trips per
//! round, default 2000; `PGBF_BENCH_CONNECTS` per round, default 50;
//! `PGBF_BENCH_ROUNDS`, default 5).

use std::time::{Duration, Instant};

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Profile, StackSettings, Target, TestDb};
use sqlx::{Connection, PgConnection};

/// `n` timed `select 1` round trips on one connection.
async fn round_trips(db: &TestDb, n: usize, into: &mut Vec<Duration>) {
    let mut conn = db.connect().await.expect("connect");
    for _ in 0..n {
        let started = Instant::now();
        sqlx::raw_sql("select 1")
            .execute(&mut conn)
            .await
            .expect("select 1");
        into.push(started.elapsed());
    }
    conn.close().await.expect("close");
}

/// `n` fresh connections, each timed from its connect to its first answer.
async fn connects(db: &TestDb, n: usize, into: &mut Vec<Duration>) {
    for _ in 0..n {
        let started = Instant::now();
        let mut conn: PgConnection = db.connect().await.expect("connect");
        sqlx::raw_sql("select 1")
            .execute(&mut conn)
            .await
            .expect("select 1");
        into.push(started.elapsed());
        conn.close().await.expect("close");
    }
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One line: p50 and p95 of both sides and their ratios.
fn line(what: &str, through: &mut [Duration], plain: &mut [Duration]) {
    let (t50, t95) = (quantile(through, 0.5), quantile(through, 0.95));
    let (p50, p95) = (quantile(plain, 0.5), quantile(plain, 0.95));
    println!(
        "{what} ({} samples each): through the stage p50 {:.1} us p95 {:.1} us, \
         PgBouncer directly p50 {:.1} us p95 {:.1} us, ratio p50 {:.2} p95 {:.2}",
        through.len(),
        us(t50),
        us(t95),
        us(p50),
        us(p95),
        t50.as_secs_f64() / p50.as_secs_f64(),
        t95.as_secs_f64() / p95.as_secs_f64()
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_usize("PGBF_BENCH_N", 2000);
    let c = env_usize("PGBF_BENCH_CONNECTS", 50);
    let rounds = env_usize("PGBF_BENCH_ROUNDS", 5);
    let profile: Profile = std::env::var("PGBF_BENCH_PROFILE")
        .unwrap_or_else(|_| "supabase-shared-prepared".into())
        .parse()
        .expect("PGBF_BENCH_PROFILE: a profile's name");
    assert!(
        profile.behind_stage(),
        "{profile} is not served through the stage: nothing to compare"
    );
    let staged = TestDb::for_profile(profile)
        .await
        .expect("a TestDb behind the stage");
    let settings = profile.apply(StackSettings::default());
    let direct = TestDb::builder()
        .target(Target::Containers(settings))
        .build()
        .await
        .expect("a TestDb on the same stack's PgBouncer");
    // Warm both paths (connection set-up, server connections in the pool).
    let mut warm = Vec::new();
    for db in [&staged, &direct] {
        round_trips(db, n / 10, &mut warm).await;
        connects(db, c / 5 + 1, &mut warm).await;
    }
    let (mut trips_through, mut trips_plain) = (Vec::new(), Vec::new());
    let (mut connects_through, mut connects_plain) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which side goes first.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for through in order {
            let (db, trips, opened) = if through {
                (&staged, &mut trips_through, &mut connects_through)
            } else {
                (&direct, &mut trips_plain, &mut connects_plain)
            };
            round_trips(db, n, trips).await;
            connects(db, c, opened).await;
        }
    }
    println!("{profile}, {rounds} alternating rounds:");
    line(
        &format!("round trip (`select 1`, {n} per round on one connection)"),
        &mut trips_through,
        &mut trips_plain,
    );
    line(
        &format!("connect + first `select 1` ({c} fresh connections per round)"),
        &mut connects_through,
        &mut connects_plain,
    );
    staged.close().await.expect("drop");
    direct.close().await.expect("drop");
}
