//! The stack's memory budget, on real stacks with a small explicit budget
//! (640 MiB: 192 MiB for databases): a template the budget cannot hold
//! fails at once with the typed error, and tests that need more room than
//! is free wait for a drop instead of the server running out, with nothing
//! killed. And the clone pool within it: tests that find no prepared clone
//! wait in line, one clone made for each test no clone on its way covers;
//! a full pool serves claims with no clone made for them.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Env, Error, Stack, StackSettings, Target, Template, TestDb};
use sqlx::{Connection, Row};

const BUDGET: u64 = 640 << 20;

/// A stack of its own with the small budget.
fn settings(what: &str) -> StackSettings {
    StackSettings::from_env(&Env::load().unwrap())
        .unwrap()
        .with_run_id(common::unique_run_id(what))
        .with_memory_budget(BUDGET)
}

/// A seed of about `mb` MB that is quick to build: rows of 200 bytes on
/// pages filled to 10% (four rows a page).
fn seed(dir: &Path, mb: u64) -> PathBuf {
    let rows = mb * 1024 * 1024 / 8192 * 4;
    let path = dir.join(format!("pad_{mb}mb.sql"));
    std::fs::write(
        &path,
        format!(
            "create table pad (id int primary key, filler char(200) not null) with (fillfactor = 10);\n\
             insert into pad select g, 'x' from generate_series(1, {rows}) g;\n"
        ),
    )
    .unwrap();
    path
}

/// The rows of the seed's table in a test's database.
async fn pad_rows(db: &TestDb) -> i64 {
    let mut conn = db.connect().await.unwrap();
    sqlx::query_scalar("select count(*) from pad")
        .persistent(false)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// A direct connection to the `postgres` database of the stack.
async fn direct_to(settings: &StackSettings) -> sqlx::PgConnection {
    let stack = Stack::shared(settings).await.unwrap();
    sqlx::PgConnection::connect(stack.endpoints().direct_url("postgres").expose())
        .await
        .unwrap()
}

/// The stack's test databases (not templates) and its prepared clones.
async fn clones_on(settings: &StackSettings) -> (i64, i64) {
    let mut direct = direct_to(settings).await;
    let clones = common::int(
        &mut direct,
        "select count(*) from pg_database where datname like 'pgbf\\_c%' and not datistemplate",
    )
    .await;
    let prepared = common::int(&mut direct, "select count(*) from pgbf_prepared").await;
    (clones, prepared)
}

/// `n` tests claiming a clone of `template` at once.
async fn claim_at_once(settings: &StackSettings, template: &Template, n: usize) -> Vec<TestDb> {
    let claims: Vec<_> = (0..n)
        .map(|i| {
            let (settings, template) = (settings.clone(), template.clone());
            tokio::spawn(async move { build(&settings, &template, &format!("line_{i}")).await })
        })
        .collect();
    let mut dbs = Vec::new();
    for claim in claims {
        dbs.push(claim.await.unwrap().expect("a clone for each test"));
    }
    dbs
}

async fn build(
    settings: &StackSettings,
    template: &Template,
    name: &str,
) -> pgbouncer_fixtures::Result<TestDb> {
    TestDb::builder()
        .target(Target::Containers(settings.clone()))
        .template(template.clone())
        .test_name(name)
        .build()
        .await
}

/// `err` is the budget's typed error for a template of at least
/// `template_bytes`, with the sizes, the ways out and `words`.
fn assert_refused(err: &Error, template_bytes: u64, words: &[&str]) {
    match err {
        Error::MemoryBudget {
            template_bytes: bytes,
            needed_bytes,
            budget_bytes,
            ..
        } => {
            assert!(*bytes >= template_bytes, "{err}");
            assert!(*needed_bytes >= 2 * *bytes, "{err}");
            assert_eq!(*budget_bytes, BUDGET);
        }
        other => panic!("expected Error::MemoryBudget, got {other:?}"),
    }
    let text = err.to_string();
    let budget_mb = format!("{} MB", BUDGET >> 20);
    let ways = [
        "PGBF_MEMORY_BUDGET",
        "with_memory_budget",
        "seed",
        budget_mb.as_str(),
    ];
    for part in ways.iter().chain(words) {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_the_budget_cannot_hold_fails_with_the_sizes_and_the_ways_out() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings("budget-too-big");
    // 100 MB and one clone: more than the 192 MiB the budget leaves the
    // databases, however many test threads run.
    let template = Template::new().seed_file(seed(dir.path(), 100));
    let err = build(&settings, &template, "too_big").await.unwrap_err();
    assert_refused(&err, 100 << 20, &[]);
    // No clone was made: only the template is on the stack.
    let mut direct = direct_to(&settings).await;
    let clones = common::int(
        &mut direct,
        "select count(*) from pg_database where datname like 'pgbf\\_%' and not datistemplate",
    )
    .await;
    assert_eq!(
        clones, 0,
        "a template too big for the budget is never cloned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_fills_the_databases_tmpfs_fails_typed_and_the_server_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings("budget-full");
    let mut direct = direct_to(&settings).await;
    let started = common::text(&mut direct, "select pg_postmaster_start_time()::text").await;
    // ~600 MB of seed: the databases' tmpfs (224 MiB at this budget) is
    // full long before the template exists to be measured.
    let template = Template::new().seed_file(seed(dir.path(), 600));
    let err = build(&settings, &template, "fills").await.unwrap_err();
    // What it reached before the tmpfs was full: at least most of the
    // databases' share the budget leaves.
    assert_refused(&err, 150 << 20, &["tmpfs"]);
    // The server never restarted (no PANIC, no crash restart of its
    // processes), and the failed template left no database behind.
    let mut direct = direct_to(&settings).await;
    let now = common::text(&mut direct, "select pg_postmaster_start_time()::text").await;
    assert_eq!(now, started, "the server was not restarted");
    let log = common::text(
        &mut direct,
        "select pg_read_file('/pgdata/log/postgresql.json')",
    )
    .await
    .unwrap();
    assert!(log.contains("could not extend file"), "the seed filled it");
    assert!(!log.contains("\"PANIC\""), "no PANIC in the server's log");
    let left = common::int(
        &mut direct,
        "select count(*) from pg_database where datname like 'pgbf\\_tpl\\_%'",
    )
    .await;
    assert_eq!(left, 0, "the failed template's database is gone");
    // The same stack still serves a small template.
    let small = Template::new().seed_file(seed(dir.path(), 1));
    let db = build(&settings, &small, "after").await.unwrap();
    assert_eq!(pad_rows(&db).await, 1024 * 1024 / 8192 * 4);
    let stack = Stack::shared(&settings).await.unwrap();
    stack.check().await.expect("no StackDied");
    let name = format!("pgbf-{}-postgres", stack.id());
    let restarts = common::docker(&["inspect", "-f", "{{.RestartCount}}", &name]);
    assert_eq!(restarts.trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_at_the_budgets_edge_wait_for_a_drop_and_nothing_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings("budget-edge");
    // ~40 MB on disk (27 MB of rows, and the primary key): the template
    // and three clones fit in 192 MiB, a fourth clone does not. No
    // prepared pool: every clone is a test's.
    let template = Template::new()
        .seed_file(seed(dir.path(), 27))
        .prepared_clones(0);
    let mut held = Vec::new();
    for i in 0..3 {
        let db = build(&settings, &template, &format!("edge_{i}"))
            .await
            .unwrap();
        assert_eq!(db.acquire_timings().memory_wait, Duration::ZERO);
        let bytes = db.acquire_timings().template_bytes;
        assert!((36 << 20..48 << 20).contains(&bytes), "{bytes}");
        held.push(db);
    }
    // The fourth waits for room: released a second later, one of the
    // three is dropped first, and then it is cloned.
    let fourth = {
        let (settings, template) = (settings.clone(), template.clone());
        tokio::spawn(async move { build(&settings, &template, "edge_3").await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!fourth.is_finished(), "the fourth clone waits for room");
    held.remove(0);
    let fourth = fourth
        .await
        .unwrap()
        .expect("the fourth test gets its clone");
    assert!(
        fourth.acquire_timings().memory_wait >= Duration::from_millis(500),
        "it waited for memory: {:?}",
        fourth.acquire_timings()
    );
    held.push(fourth);
    // Every test has its data; the stack is the one it was, alive.
    for db in &held {
        assert_eq!(pad_rows(db).await, 27 * 1024 * 1024 / 8192 * 4);
    }
    let stack = Stack::shared(&settings).await.unwrap();
    stack.check().await.expect("no StackDied");
    stack.check_containers().await.expect("both containers run");
    assert_eq!(stack.memory_budget(), BUDGET);
    let used = stack.memory_used().await.unwrap();
    assert!(
        used <= BUDGET - (448 << 20),
        "databases within the budget: {used}"
    );
    // The container was never restarted, and its peak memory stayed within
    // the budget (its cgroup's record, cgroup v1 or v2).
    let name = format!("pgbf-{}-postgres", stack.id());
    let restarts = common::docker(&["inspect", "-f", "{{.RestartCount}}", &name]);
    assert_eq!(restarts.trim(), "0");
    let mut direct = sqlx::PgConnection::connect(stack.endpoints().direct_url("postgres").expose())
        .await
        .unwrap();
    let mut peak = None;
    for file in [
        "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
        "/sys/fs/cgroup/memory.peak",
    ] {
        let sql = format!("select pg_read_file('{file}', true)");
        let row = sqlx::query(common::audited(&sql))
            .fetch_one(&mut direct)
            .await
            .unwrap();
        if let Some(text) = row.get::<Option<String>, _>(0) {
            peak = text.trim().parse::<u64>().ok();
            break;
        }
    }
    let peak = peak.expect("the container's cgroup records its peak memory");
    assert!(
        peak <= BUDGET,
        "peak memory {peak} within the budget {BUDGET}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_without_a_prepared_clone_wait_in_line_and_get_one_clone_each() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings("clone-line");
    // No pool: every test waits in line for a clone made for it.
    let template = Template::new()
        .seed_file(seed(dir.path(), 1))
        .prepared_clones(0);
    let dbs = claim_at_once(&settings, &template, 4).await;
    for db in &dbs {
        let t = db.acquire_timings();
        assert!(!t.prepared && t.on_demand, "{t:?}");
    }
    let names: std::collections::HashSet<String> = dbs.iter().map(|d| d.database_name()).collect();
    assert_eq!(names.len(), 4, "one clone per test: {names:?}");
    // One clone made per test in line: none to spare in the pool.
    assert_eq!(clones_on(&settings).await, (4, 0));
    for db in &dbs {
        assert_eq!(pad_rows(db).await, 1024 * 1024 / 8192 * 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_serves_as_many_tests_at_once_with_no_clone_made_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings("clone-pool");
    let template = Template::new()
        .seed_file(seed(dir.path(), 1))
        .prepared_clones(3);
    // The first claim builds the template and starts the pool.
    drop(build(&settings, &template, "first").await.unwrap());
    let mut ready = 0;
    for _ in 0..600 {
        ready = clones_on(&settings).await.1;
        if ready >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready >= 3, "the pool holds the 3 asked for: {ready}");
    let dbs = claim_at_once(&settings, &template, 3).await;
    for db in &dbs {
        let t = db.acquire_timings();
        assert!(t.prepared && !t.on_demand, "{t:?}");
    }
}

/// The databases live on tmpfs volumes that ask for large folios
/// (`huge=within_size`, sized by the budget); a labelled volume no container
/// uses any more goes with `gc` of its stack, and one of another stack stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_databases_tmpfs_asks_for_large_folios_and_gc_removes_a_volume_left_behind() {
    let settings = settings("large-folios");
    let mut direct = direct_to(&settings).await;
    let mounts = common::text(&mut direct, "select pg_read_file('/proc/self/mounts')")
        .await
        .expect("the server's mounts");
    for path in ["/pgdata", "/pgdatabases"] {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(path))
            .unwrap_or_else(|| panic!("{path} is not a mount of its own:\n{mounts}"));
        let fields: Vec<&str> = line.split(' ').collect();
        let options: Vec<&str> = fields[3].split(',').collect();
        assert_eq!(fields[2], "tmpfs", "{line}");
        for wanted in ["huge=within_size", "nosuid", "nodev", "noexec"] {
            assert!(options.contains(&wanted), "{wanted} missing: {line}");
        }
        assert!(options.iter().any(|o| o.starts_with("size=")), "{line}");
    }
    let _ = direct.close().await;
    let id = Stack::shared(&settings).await.unwrap().id().to_string();
    let of_stack = |id: &str| {
        common::docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=pgbouncer-fixtures.stack={id}"),
        ])
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    assert_eq!(
        of_stack(&id).len(),
        2,
        "the data directory and the databases' mount"
    );
    // Leftovers as a container removed without `-v` leaves them.
    let other = format!("{id}-other");
    let left: Vec<String> = [&id, &other]
        .map(|stack| {
            common::docker(&[
                "volume",
                "create",
                "--label",
                "pgbouncer-fixtures.managed=true",
                "--label",
                &format!("pgbouncer-fixtures.stack={stack}"),
            ])
            .trim()
            .to_string()
        })
        .into();
    let stdout = common::gc_stack(&id);
    assert_eq!(
        of_stack(&id),
        Vec::<String>::new(),
        "gc left the stack's volumes"
    );
    assert!(
        stdout.contains(&format!("removed volume {}", left[0])),
        "{stdout}"
    );
    assert!(stdout.contains("1 volume(s)"), "{stdout}");
    let kept = of_stack(&other);
    assert_eq!(kept.len(), 1, "gc of one stack removed another's volume");
    common::docker(&["volume", "rm", &kept[0]]);
}
