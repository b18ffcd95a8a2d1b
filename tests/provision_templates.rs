//! Template databases: built once per content, cloned per test, shared by
//! processes, replaced when a migration changes, and cleaned up.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{audited, database_exists, int, text};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Env, Error, Stack, StackSettings, Target, Template, TestDb};
use sqlx::{Connection, PgConnection, Row};

fn write_migrations(dir: &Path, extra_column: bool) {
    std::fs::write(
        dir.join("0001_accounts.sql"),
        "create table accounts (id bigint primary key, email text not null);",
    )
    .unwrap();
    let orders = if extra_column {
        "create table orders (id bigint primary key, account_id bigint references accounts(id), note text);"
    } else {
        "create table orders (id bigint primary key, account_id bigint references accounts(id));"
    };
    std::fs::write(dir.join("0002_orders.sql"), orders).unwrap();
}

fn template_in(dir: &Path) -> Template {
    Template::new().migrations_dir(dir)
}

async fn templates_on(admin: &mut PgConnection) -> Vec<String> {
    sqlx::raw_sql(
        "select datname::text from pg_database where datname like 'pgbf\\_tpl\\_%' order by 1",
    )
    .fetch_all(admin)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect()
}

fn external_env(stack: &Stack) -> Vec<(&'static str, String)> {
    let e = stack.endpoints();
    vec![
        (
            "TEST_DATABASE_URL",
            e.pooled_url("postgres").expose().to_string(),
        ),
        (
            "TEST_DIRECT_URL",
            e.direct_url("postgres").expose().to_string(),
        ),
        ("PGBF_EXTERNAL_CREATE_DATABASES", "1".to_string()),
    ]
}

#[tokio::test]
async fn clones_carry_migrations_and_seeds_through_the_pooler() {
    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), false);
    let seed = dir.path().join("seed.sql");
    std::fs::write(
        &seed,
        "insert into accounts values (1, 'a@example.com'), (2, 'b@example.com');",
    )
    .unwrap();
    let template = template_in(dir.path()).seed_file(&seed);
    let db = TestDb::builder()
        .template(template.clone())
        .build()
        .await
        .unwrap();
    let mut conn = db.connect().await.unwrap();
    assert_eq!(int(&mut conn, "select count(*) from accounts").await, 2);
    assert_eq!(
        int(&mut conn, "select count(*) from _sqlx_migrations").await,
        2
    );
    // Each clone is private: writes do not reach the next test.
    sqlx::raw_sql("insert into accounts values (3, 'c@example.com')")
        .execute(&mut conn)
        .await
        .unwrap();
    let other = TestDb::builder().template(template).build().await.unwrap();
    let mut c2 = other.connect().await.unwrap();
    assert_eq!(int(&mut c2, "select count(*) from accounts").await, 2);
    assert_ne!(db.database_name(), other.database_name());
}

#[tokio::test]
async fn a_changed_migration_makes_a_new_template_and_removes_the_stale_one() {
    let stack = Stack::start(StackSettings::default()).await.unwrap();
    let env = Env::from_vars(external_env(&stack));
    let target = Target::resolve(&env).unwrap();
    let mut admin = PgConnection::connect(stack.endpoints().direct_url("postgres").expose())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), false);
    let first = TestDb::builder()
        .target(target.clone())
        .template(template_in(dir.path()))
        .build()
        .await
        .unwrap();
    let before = templates_on(&mut admin).await;
    assert_eq!(before.len(), 1, "{before:?}");
    // Unchanged content: the same template again.
    let again = TestDb::builder()
        .target(target.clone())
        .template(template_in(dir.path()))
        .build()
        .await
        .unwrap();
    assert_eq!(templates_on(&mut admin).await, before);

    write_migrations(dir.path(), true);
    let changed = TestDb::builder()
        .target(target.clone())
        .template(template_in(dir.path()))
        .build()
        .await
        .unwrap();
    let after = templates_on(&mut admin).await;
    assert_eq!(after.len(), 1, "the stale template was removed: {after:?}");
    assert_ne!(after, before, "a new template for the new content");
    let mut conn = changed.connect().await.unwrap();
    assert_eq!(
        text(&mut conn, "select column_name::text from information_schema.columns where table_name = 'orders' and column_name = 'note'").await.as_deref(),
        Some("note")
    );
    for db in [first, again, changed] {
        db.close().await.unwrap();
    }
    drop((conn, admin));
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_claims_get_distinct_databases() {
    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), false);
    let template = template_in(dir.path());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let template = template.clone();
            tokio::spawn(async move {
                let db = TestDb::builder()
                    .template(template)
                    .test_name(format!("claim_{i}"))
                    .build()
                    .await?;
                let mut conn = db.connect().await?;
                let n: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
                    .persistent(false)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| Error::Sql {
                        action: "count".into(),
                        source: e,
                    })?;
                Ok::<_, Error>((db, n))
            })
        })
        .collect();
    let mut names = std::collections::HashSet::new();
    let mut dbs = Vec::new();
    for task in tasks {
        let (db, n) = task.await.unwrap().unwrap();
        assert_eq!(n, 2);
        assert!(names.insert(db.database_name()), "distinct databases");
        dbs.push(db);
    }
    assert_eq!(names.len(), 50);
}

/// Run only as a child process by `one_template_across_processes` and
/// `keep_failed_keeps_the_database_and_prints_its_url`.
#[tokio::test]
#[ignore = "child process of other tests"]
async fn child_process() {
    let dir = std::env::var("PGBF_CHILD_MIGRATIONS").unwrap();
    let db = TestDb::builder()
        .template(template_in(Path::new(&dir)))
        .test_name("child")
        .build()
        .await
        .unwrap();
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select count(*) from accounts")
        .execute(&mut conn)
        .await
        .unwrap();
    println!("CHILD_DATABASE={}", db.database_name());
    if std::env::var("PGBF_CHILD_PANIC").is_ok() {
        panic!("the child test fails on purpose");
    }
}

fn spawn_child(stack: &Stack, dir: &Path, extra: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "child_process", "--nocapture"])
        .env("PGBF_CHILD_MIGRATIONS", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in external_env(stack) {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

#[tokio::test]
async fn one_template_across_processes() {
    let stack = Stack::start(StackSettings::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), false);
    // Two processes ask for the same new template at the same instant.
    let children = [
        spawn_child(&stack, dir.path(), &[]),
        spawn_child(&stack, dir.path(), &[]),
    ];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("CHILD_DATABASE=pgbf_"));
    }
    let mut admin = PgConnection::connect(stack.endpoints().direct_url("postgres").expose())
        .await
        .unwrap();
    assert_eq!(
        templates_on(&mut admin).await.len(),
        1,
        "exactly one template was built"
    );
    drop(admin);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn keep_failed_keeps_the_database_and_prints_its_url() {
    let stack = Stack::start(StackSettings::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), false);
    let out = spawn_child(
        &stack,
        dir.path(),
        &[("PGBF_CHILD_PANIC", "1"), ("PGBF_KEEP_FAILED", "1")],
    )
    .wait_with_output()
    .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD_DATABASE="))
        .expect("child reported its database");
    assert!(
        stderr.contains("PGBF_KEEP_FAILED: kept") && stderr.contains(name),
        "{stderr}"
    );
    assert!(
        stderr.contains("postgres://postgres:***@"),
        "the URL is printed redacted: {stderr}"
    );
    let password = stack
        .endpoints()
        .pooled_url("x")
        .expose()
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    assert!(!stderr.contains(&password));
    let mut admin = PgConnection::connect(stack.endpoints().direct_url("postgres").expose())
        .await
        .unwrap();
    assert!(
        database_exists(&mut admin, name).await,
        "the failed test's database is kept"
    );

    // Without the variable, a failed test's database is dropped.
    let out = spawn_child(&stack, dir.path(), &[("PGBF_CHILD_PANIC", "1")])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD_DATABASE="))
        .unwrap();
    assert!(!database_exists(&mut admin, name).await);
    drop(admin);
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn templates_on_an_external_server_need_the_database_opt_in() {
    let env = Env::from_vars([("TEST_DATABASE_URL", "postgres://app:pw@127.0.0.1:1/app")]);
    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), false);
    let err = TestDb::builder()
        .target(Target::resolve(&env).unwrap())
        .template(template_in(dir.path()))
        .build()
        .await;
    // The schema path is tried first only if it can connect; either way no database is made.
    match err {
        Err(Error::Template { reason }) => assert!(
            reason.contains("PGBF_EXTERNAL_CREATE_DATABASES=1"),
            "{reason}"
        ),
        Err(Error::Unreachable { .. }) => {}
        other => panic!("expected a template or unreachable error, got {other:?}"),
    }
}

/// 500 tests later, PgBouncer holds no pools for their dropped databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooler_pools_return_to_baseline_after_500_tests() {
    // Settings of its own: a stack no other test of this binary uses.
    let settings = StackSettings::default().with_default_pool_size(19);
    let stack = Stack::shared(&settings).await.unwrap();
    let target = Target::Containers(settings);
    let dir = tempfile::tempdir().unwrap();
    write_migrations(dir.path(), false);
    let template = template_in(dir.path());
    let mut console = PgConnection::connect(stack.endpoints().console_url().expose())
        .await
        .unwrap();
    // Database names PgBouncer knows (SHOW DATABASES) or pools (SHOW POOLS).
    let names = async |console: &mut PgConnection, what: &str, column: &str| -> Vec<String> {
        sqlx::raw_sql(audited(what))
            .fetch_all(console)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(column))
            .collect()
    };
    let mut admin = PgConnection::connect(stack.endpoints().direct_url("postgres").expose())
        .await
        .unwrap();
    for i in 0..500 {
        let db = TestDb::builder()
            .target(target.clone())
            .template(template.clone())
            .test_name(format!("many_{i}"))
            .build()
            .await
            .unwrap();
        let mut conn = db.connect().await.unwrap();
        sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
        drop(conn);
        db.close().await.unwrap();
    }
    // Prepared clones (their number follows demand) are live databases with
    // pools of their own; a dropped database must have neither entry nor pool.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stale: Vec<String>;
    loop {
        let existing: Vec<String> = names(
            &mut admin,
            "select datname::text as datname from pg_database",
            "datname",
        )
        .await;
        let known = names(&mut console, "SHOW DATABASES", "name").await;
        let pooled = names(&mut console, "SHOW POOLS", "database").await;
        stale = known
            .into_iter()
            .chain(pooled)
            .filter(|n| n != "pgbouncer" && !existing.contains(n))
            .collect();
        if stale.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        stale.is_empty(),
        "PgBouncer still knows or pools dropped databases: {stale:?}"
    );
}
