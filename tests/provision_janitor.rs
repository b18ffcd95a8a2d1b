//! The stack's janitor, on a real stack: after a run (a process) that
//! claimed N clones and exited, the janitor drops the databases the process
//! handed over, and prepares N clones for the next run (at most
//! `PGBF_MAX_WARM_CLONES`); once settled, an idle stack runs nothing but its
//! once-a-second lease count. With a memory budget, what it prepares of a
//! large template is capped to what the budget holds.

mod common;

use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{audited, docker, stack_containers, unique_run_id, FollowedLog};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Stack, StackSettings, Template, TestDb};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection, Row};

const CHILD: &str = "PGBF_JANITOR_TEST_CHILD";
const CAP: i64 = 4;

/// The run under test (a process of its own, so that it exits): claims
/// `PGBF_JANITOR_TEST_N` clones, holds them all, drops them, and writes
/// the stack's id, a direct URL and the clones' names to the file
/// `PGBF_JANITOR_TEST_CHILD` names. A no-op in an ordinary run.
#[tokio::test]
async fn janitor_child_run() {
    let Ok(out) = std::env::var(CHILD) else {
        return;
    };
    let n: usize = std::env::var("PGBF_JANITOR_TEST_N")
        .unwrap()
        .parse()
        .unwrap();
    let dir = std::env::var("PGBF_JANITOR_TEST_MIGRATIONS").unwrap();
    let mut dbs = Vec::new();
    for i in 0..n {
        let db = TestDb::builder()
            .template(Template::new().migrations_dir(&dir))
            .test_name(format!("janitor_{i}"))
            .build()
            .await
            .unwrap();
        dbs.push(db);
    }
    let settings = StackSettings::from_env(&pgbouncer_fixtures::Env::load().unwrap()).unwrap();
    let stack = Stack::shared(&settings).await.unwrap();
    let mut lines = vec![
        stack.id().to_string(),
        dbs[0].direct_url().unwrap().to_string(),
    ];
    lines.extend(dbs.iter().map(|d| d.database_name()));
    drop(dbs);
    std::fs::write(out, lines.join("\n")).unwrap();
}

struct Run {
    stack: String,
    admin: PgConnectOptions,
    databases: Vec<String>,
}

/// A direct connection to a stack's `postgres` database, and the stack's
/// PostgreSQL log: a query that fails shows why the server went away (the
/// watchdog says why it stopped it).
struct Admin {
    conn: PgConnection,
    log: FollowedLog,
}

impl Admin {
    async fn of(run: &Run) -> Admin {
        let log = FollowedLog::of(&format!("pgbf-{}-postgres", run.stack));
        let conn = run.admin.connect().await.unwrap();
        Admin { conn, log }
    }

    fn failed(&self, sql: &str, e: sqlx::Error) -> ! {
        panic!(
            "{sql}: {e}\nthe stack's PostgreSQL container said, last:\n{}",
            self.log.tail(20)
        )
    }

    async fn scalar(&mut self, sql: &str) -> i64 {
        match sqlx::raw_sql(audited(sql)).fetch_one(&mut self.conn).await {
            Ok(row) => row.get::<i64, _>(0),
            Err(e) => self.failed(sql, e),
        }
    }

    async fn texts(&mut self, sql: &str) -> Vec<String> {
        match sqlx::raw_sql(audited(sql)).fetch_all(&mut self.conn).await {
            Ok(rows) => rows.iter().map(|r| r.get::<String, _>(0)).collect(),
            Err(e) => self.failed(sql, e),
        }
    }
}

fn child_run(run_id: &str, migrations: &std::path::Path, n: usize) -> Run {
    child_run_with(run_id, migrations, n, &[])
}

/// [`child_run`] with more of the child's environment.
fn child_run_with(
    run_id: &str,
    migrations: &std::path::Path,
    n: usize,
    env: &[(&str, &str)],
) -> Run {
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "janitor_child_run", "--test-threads=1"])
        .envs(env.iter().copied())
        .env(CHILD, out.path())
        .env("PGBF_JANITOR_TEST_N", n.to_string())
        .env("PGBF_JANITOR_TEST_MIGRATIONS", migrations)
        .env("PGBF_RUN_ID", run_id)
        // Long enough for the janitor to prepare clones (>= 30 s).
        .env("PGBF_REAP_AFTER_SECS", "40")
        .env("PGBF_MAX_WARM_CLONES", CAP.to_string())
        .env_remove("TEST_DATABASE_URL")
        .status()
        .unwrap();
    assert!(status.success(), "the child run failed");
    eprintln!(
        "child run of {n} claims took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let text = std::fs::read_to_string(out.path()).unwrap();
    let mut lines = text.lines().map(str::to_string);
    let stack = lines.next().unwrap();
    let admin = PgConnectOptions::from_str(&lines.next().unwrap())
        .unwrap()
        .database("postgres")
        .application_name("janitor test");
    Run {
        stack,
        admin,
        databases: lines.collect(),
    }
}

/// Waits until none of `run`'s databases exists, no garbage is queued and
/// `prepared` clones are ready; returns how long that took.
async fn settled(admin: &mut Admin, run: &Run, prepared: i64) -> Duration {
    let started = Instant::now();
    let names = run
        .databases
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    loop {
        let left = admin
            .scalar(&format!(
                "select count(*) from pg_database where datname in ({names})"
            ))
            .await;
        let garbage = admin.scalar("select count(*) from pgbf_garbage").await;
        let ready = admin.scalar("select count(*) from pgbf_prepared").await;
        if left == 0 && garbage == 0 && ready == prepared {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after 60 s: {left} of the run's databases left, {garbage} queued, {ready} prepared (want {prepared})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_janitor_drops_what_a_run_handed_over_and_prepares_the_next_runs_clones() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_items.sql"),
        "create table items (id int primary key);",
    )
    .unwrap();
    let run_id = unique_run_id("janitor");

    // A run of 3 claims: the janitor makes the pool 3.
    let first = child_run(&run_id, dir.path(), 3);
    let mut admin = Admin::of(&first).await;
    let took = settled(&mut admin, &first, 3).await;
    eprintln!("settled {:.2} s after the first run", took.as_secs_f64());

    // A run of 6 claims: the pool stops at the cap (4).
    let second = child_run(&run_id, dir.path(), 6);
    assert_eq!(second.stack, first.stack, "the run id shares the stack");
    let took = settled(&mut admin, &second, CAP).await;
    eprintln!("settled {:.2} s after the second run", took.as_secs_f64());
    // Warm: PgBouncer holds an idle server connection to each prepared
    // clone (the test claiming it pays no backend start).
    let warm = admin
        .scalar(
            "select count(*) from pgbf_prepared p where exists \
         (select from pg_stat_activity a where a.datname = p.name and a.state = 'idle')",
        )
        .await;
    assert_eq!(warm, CAP, "prepared clones with a server connection");
    // The janitor's clones (the others were made by the run's processes,
    // which warm them with `select 1` only) had their caches warmed on that
    // connection: its last statement was the warm-up (inserts, equality,
    // sorts and prefix LIKE planned).
    let by_janitor = "select count(*) from pgbf_prepared p join pg_stat_activity a \
         on a.datname = p.name where a.application_name = 'pgbf-janitor'";
    let janitors = admin.scalar(by_janitor).await;
    let warmed = admin.scalar(
        &format!(
            "{by_janitor} and a.query like 'do $d$%explain insert into %where %2$I like %3$L order by %; select 1'"
        ),
    )
    .await;
    assert!(janitors > 0, "the janitor made none of the prepared clones");
    assert_eq!(warmed, janitors, "the janitor's clones have warm caches");

    // Settled and idle: the janitor's psql runs nothing but the lease
    // count, and no database comes or goes.
    let databases = "select count(*) from pg_database";
    let before = admin.scalar(databases).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let last = admin
            .texts(
                "select query from pg_stat_activity where application_name = 'psql' and backend_type = 'client backend'",
            )
            .await;
        assert_eq!(last.len(), 1, "one janitor psql: {last:?}");
        assert!(
            last[0].contains("pgbf_leases()") && last[0].starts_with("select"),
            "an idle, settled janitor ran {:?}",
            last[0]
        );
        assert_eq!(admin.scalar(databases).await, before);
    }
    drop(admin);
    for id in stack_containers(&first.stack) {
        docker(&["rm", "-f", "-v", &id]);
    }
}

#[tokio::test]
async fn the_janitor_prepares_no_more_clones_of_a_large_template_than_the_budget_holds() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // ~37 MB on disk (20 MB of rows on pages filled to 10%, the key, the
    // base): a 640 MiB budget leaves the databases 192 MiB, of which the
    // pool may take half: 2 clones of it.
    std::fs::write(
        dir.path().join("0001_pad.sql"),
        "create table pad (id int primary key, filler char(200) not null) with (fillfactor = 10);\n\
         insert into pad select g, 'x' from generate_series(1, 10240) g;",
    )
    .unwrap();
    let run_id = unique_run_id("janitor-budget");
    // 3 claims (the run's own pool off: no clone of the process is left
    // in the pool): the demand is 3, the budget's cap 2.
    let env = [
        ("PGBF_MEMORY_BUDGET", "640M"),
        ("PGBF_PREPARED_CLONES", "0"),
    ];
    let run = child_run_with(&run_id, dir.path(), 3, &env);
    let mut admin = Admin::of(&run).await;
    let took = settled(&mut admin, &run, 2).await;
    eprintln!("settled {:.2} s after the run", took.as_secs_f64());
    let demand = admin
        .scalar("select coalesce(max(claims), 0)::bigint from pgbf_demand")
        .await;
    assert_eq!(demand, 2, "the run's demand, capped by the budget");
    // Stays at 2: nothing more is made once settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(admin.scalar("select count(*) from pgbf_prepared").await, 2);
    drop(admin);
    for id in stack_containers(&run.stack) {
        docker(&["rm", "-f", "-v", &id]);
    }
}
