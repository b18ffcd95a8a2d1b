//! What the benchmarks share.

use std::time::{Duration, Instant};

use pgbouncer_fixtures::sqlx;

/// Waits (at most 120 s) until the stack's janitor is done, through a plain
/// connection (no lease): the databases handed over dropped, the pool at the
/// last run's demand (or at the cap). Returns how long that took.
pub async fn janitor_done(url: &str) -> Duration {
    use sqlx::{Connection, Row};
    let started = Instant::now();
    let mut conn = sqlx::PgConnection::connect(url).await.expect("the stack");
    // The janitor ends its pass with a file newer than the mark of the
    // last lease (docker/sql/watchdog.sql says when; docker/watchdog.sh
    // touches it). The paths are src/contract/'s, which benches cannot reach.
    let sql = "select coalesce((pg_stat_file('/tmp/pgbf-janitor-done', true)).modification \
               > (pg_stat_file('/tmp/pgbf-leased', true)).modification, false)";
    while started.elapsed() < Duration::from_secs(120) {
        let done: bool = sqlx::raw_sql(sql)
            .fetch_one(&mut conn)
            .await
            .expect("the janitor's tables")
            .get(0);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    started.elapsed()
}
