//! The `rstest` fixtures: the only module that knows rstest.

use rstest::fixture;

use crate::error::Result;
use crate::testdb::TestDb;

/// A [`TestDb`] for the current test on the target the environment names.
///
/// Panics (failing the test) with the crate's error message when the stack
/// or the database cannot be had; use [`try_test_db`] to handle that yourself.
///
/// ```no_run
/// # use pgbouncer_fixtures::sqlx; // in your crate: your own sqlx dependency
/// use pgbouncer_fixtures::{test_db, TestDb};
/// use rstest::rstest;
///
/// #[rstest]
/// #[tokio::test]
/// async fn counts_rows(#[future(awt)] test_db: TestDb) {
///     let mut conn = test_db.connect().await.unwrap();
///     let n: i64 = sqlx::query_scalar("select count(*) from pg_class")
///         .fetch_one(&mut conn)
///         .await
///         .unwrap();
///     assert!(n > 0);
/// }
/// ```
#[fixture]
pub async fn test_db() -> TestDb {
    match TestDb::new().await {
        Ok(db) => db,
        Err(e) => panic!("pgbouncer-fixtures: {e}"),
    }
}

/// Like [`test_db`], but hands the error to the test instead of panicking.
#[fixture]
pub async fn try_test_db() -> Result<TestDb> {
    TestDb::new().await
}
