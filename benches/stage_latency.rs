//! What the Supavisor-like stage adds, behind a profile served through it
//! (`PGBF_BENCH_PROFILE`, default `supabase-shared-prepared`), against the
//! same stack's PgBouncer directly (a `TestDb` of the profile's settings
//! without the profile: no stage), each side's samples interleaved with the
//! other's so that both meet the same machine:
//!
//! - a round trip: `N` `SELECT 1` on one connection per side, each timed;
//! - a connect: `C` fresh connections per side as `TestDb::connect` opens
//!   them, each timed up to the answer of its first `SELECT 1`.
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

async fn select_one(conn: &mut PgConnection) {
    sqlx::raw_sql("select 1")
        .execute(conn)
        .await
        .expect("select 1");
}

/// One connection on each side, then `n` timed `select 1` round trips on
/// each, interleaved (the side that goes first alternates), so that every
/// pair of samples meets the same machine.
async fn round_trips(sides: [&TestDb; 2], n: usize, into: &mut [Vec<Duration>; 2]) {
    let mut conns = [
        sides[0].connect().await.expect("connect"),
        sides[1].connect().await.expect("connect"),
    ];
    for i in 0..n {
        for side in [i % 2, 1 - i % 2] {
            let started = Instant::now();
            select_one(&mut conns[side]).await;
            into[side].push(started.elapsed());
        }
    }
    for conn in conns {
        conn.close().await.expect("close");
    }
}

/// `n` fresh connections on each side, interleaved as [`round_trips`],
/// each timed from its connect to its first answer.
async fn connects(sides: [&TestDb; 2], n: usize, into: &mut [Vec<Duration>; 2]) {
    for i in 0..n {
        for side in [i % 2, 1 - i % 2] {
            let started = Instant::now();
            let mut conn = sides[side].connect().await.expect("connect");
            select_one(&mut conn).await;
            into[side].push(started.elapsed());
            conn.close().await.expect("close");
        }
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
    let sides = [&staged, &direct];
    // Warm both paths (connection set-up, server connections in the pool).
    let mut warm = [Vec::new(), Vec::new()];
    round_trips(sides, n / 10, &mut warm).await;
    connects(sides, c / 5 + 1, &mut warm).await;
    let (mut trips, mut opened) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut per_round = Vec::new();
    for _ in 0..rounds {
        let mut round = [Vec::new(), Vec::new()];
        round_trips(sides, n, &mut round).await;
        let [mut t, mut p] = round;
        let ratio = quantile(&mut t, 0.5).as_secs_f64() / quantile(&mut p, 0.5).as_secs_f64();
        per_round.push(format!("{ratio:.2}"));
        trips[0].extend(t);
        trips[1].extend(p);
        connects(sides, c, &mut opened).await;
    }
    println!(
        "{profile}, {rounds} rounds, each side's samples interleaved (round trip p50 ratio \
         per round: {}):",
        per_round.join(" ")
    );
    let [trips_through, trips_plain] = &mut trips;
    line(
        &format!("round trip (`select 1`, {n} per round on one connection)"),
        trips_through,
        trips_plain,
    );
    let [connects_through, connects_plain] = &mut opened;
    line(
        &format!("connect + first `select 1` ({c} fresh connections per round)"),
        connects_through,
        connects_plain,
    );
    staged.close().await.expect("drop");
    direct.close().await.expect("drop");
}
