//! What `statement_cache_capacity(0)` (set by `TestDb::connect`) does and does
//! not protect against, behind PgBouncer in transaction mode without
//! prepared-statement tracking (Supabase's port 6543).

mod common;

use common::audited;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, TestDb};
use rstest::rstest;
use sqlx::error::DatabaseError;
use sqlx::{Connection, PgConnection};

const TASKS: usize = 16;
const ROUNDS: usize = 200;

/// 16 concurrent clients, 200 parameterised queries each over 7 SQL texts;
/// returns the SQLSTATE of each client's first error (None: no error).
async fn concurrent_workload(connections: Vec<PgConnection>) -> Vec<Option<String>> {
    let handles: Vec<_> = connections
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                for i in 0..ROUNDS {
                    let sql = format!("select $1::int8 + {}", i % 7);
                    if let Err(e) = sqlx::query_scalar::<_, i64>(audited(&sql))
                        .bind(i as i64)
                        .fetch_one(&mut conn)
                        .await
                    {
                        return Some(
                            e.as_database_error()
                                .and_then(|d| d.code().map(|c| c.to_string()))
                                .unwrap_or_else(|| format!("non-database error: {e}")),
                        );
                    }
                }
                None
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task ran"));
    }
    out
}

/// No concurrency needed: sqlx 0.8.6 names its statements even at capacity 0
/// and never closes them, so the *second* `connect()` of a test fails on its
/// first bound query: it lands on the server connection the first one used,
/// where `sqlx_s_1` still exists.
#[rstest]
#[tokio::test]
async fn capacity_zero_fails_on_the_second_connect_without_concurrency(
    #[future(awt)] test_db: TestDb,
) {
    let mut first = test_db.connect().await.unwrap();
    let one: i64 = sqlx::query_scalar("select $1::int8 + 1")
        .bind(1_i64)
        .fetch_one(&mut first)
        .await
        .unwrap();
    assert_eq!(one, 2);
    first.close().await.unwrap();

    let mut second = test_db.connect().await.unwrap();
    let err = sqlx::query_scalar::<_, i64>("select $1::int8 + 1")
        .bind(1_i64)
        .fetch_one(&mut second)
        .await
        .expect_err("the first client's sqlx_s_1 is still on that server connection");
    let db = err.as_database_error().expect("a server error");
    assert_eq!(db.code().as_deref(), Some("42P05"), "{err}");
    assert_eq!(
        db.message(),
        "prepared statement \"sqlx_s_1\" already exists"
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_zero_does_not_prevent_collisions_under_concurrency(
    #[future(awt)] test_db: TestDb,
) {
    let mut pooled = Vec::new();
    for _ in 0..TASKS {
        pooled.push(test_db.connect().await.unwrap());
    }
    let errors = concurrent_workload(pooled).await;
    let failed: Vec<&String> = errors.iter().flatten().collect();
    assert!(
        !failed.is_empty(),
        "with statement_cache_capacity(0), sqlx still names its statements sqlx_s_N: \
         through a transaction pooler they collide"
    );
    for code in &failed {
        assert!(
            code.as_str() == "42P05" || code.as_str() == "26000",
            "expected 42P05 (already exists) or 26000 (does not exist), got {code}"
        );
    }

    // Control: the same workload straight on Postgres never fails.
    let mut direct = Vec::new();
    for _ in 0..TASKS {
        direct.push(test_db.connect_direct().await.unwrap());
    }
    assert_eq!(concurrent_workload(direct).await, vec![None; TASKS]);
}

/// A cached statement used again after the client changed server connection:
/// fails with the default cache (26000), works with capacity 0.
async fn reuse_after_server_change(db: &TestDb, capacity: usize) -> Result<(), String> {
    let mut a =
        PgConnection::connect_with(&db.connect_options().statement_cache_capacity(capacity))
            .await
            .unwrap();
    let mut b = db.connect().await.unwrap();
    run(&mut a).await.map_err(|e| format!("first run: {e}"))?;
    // B holds the server connection A used, so A's next transaction gets another.
    common::hold_server_connection(&mut b).await;
    let second = run(&mut a).await;
    common::release_server_connection(&mut b).await;
    second.map_err(|e| {
        e.as_database_error()
            .and_then(|d: &dyn DatabaseError| d.code().map(|c| c.to_string()))
            .unwrap_or_else(|| e.to_string())
    })
}

async fn run(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query_scalar::<_, i32>("select $1::int4")
        .bind(1)
        .fetch_one(conn)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn capacity_zero_protects_against_stale_cached_statements() {
    // A fresh database per half: a fresh PgBouncer pool with no leftovers.
    let with_cache = TestDb::builder()
        .test_name("default_cache")
        .build()
        .await
        .unwrap();
    assert_eq!(
        reuse_after_server_change(&with_cache, 100).await,
        Err("26000".to_string()),
        "the default cache sends Bind for sqlx_s_1 to a server that never saw it"
    );
    let without_cache = TestDb::builder()
        .test_name("capacity_zero")
        .build()
        .await
        .unwrap();
    assert_eq!(reuse_after_server_change(&without_cache, 0).await, Ok(()));
}
