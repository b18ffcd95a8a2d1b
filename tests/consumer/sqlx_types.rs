//! A consumer's test, not one of this repository's: `.ci/readme-crate 0.8`
//! and `.ci/readme-crate 0.9` copy it into a crate outside the repository
//! that depends on pgbouncer-fixtures with that major's feature (the README's
//! dependency block) and on that sqlx itself, and run it there. Every `sqlx`
//! below is the consumer's own dependency, so this compiles only if the
//! types the fixtures hand out and take (`PgConnection`, `PgConnectOptions`,
//! `Migrator`, `sqlx::Error`) are that sqlx's, not look-alikes of another
//! major; the run proves they work with it. (Cargo builds no target from a
//! file under `tests/consumer/`: it is not one of this crate's tests.)

use std::error::Error as _;

use pgbouncer_fixtures::{test_db, Error, Template, TestDb};
use rstest::rstest;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};

/// The consumer's own compile-time migrator (`migrations/` of the crate).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[rstest]
#[tokio::test]
async fn connections_are_the_consumers_sqlx(#[future(awt)] test_db: TestDb) {
    // The consumer's `Migrator`, run on the fixture's direct connection.
    let mut admin: PgConnection = test_db.connect_direct().await.unwrap();
    MIGRATOR.run(&mut admin).await.unwrap();
    admin.close().await.unwrap();

    // The consumer's `query`, on the fixture's pooled connection.
    let mut conn: PgConnection = test_db.connect().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("insert into orders (id, total) values ($1, $2)")
        .bind(7_i64)
        .bind(70_i64)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .unwrap();
    let row = sqlx::query("select total from orders where id = $1")
        .bind(7_i64)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(row.get::<i64, _>("total"), 70);
    conn.close().await.unwrap();

    // The consumer's `PgConnectOptions`, for a pool of the consumer's sqlx.
    let options: PgConnectOptions = test_db.connect_options();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let total: i64 = sqlx::raw_sql("select total from orders where id = 7")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 70);
    pool.close().await;
}

#[tokio::test]
async fn templates_take_the_consumers_migrator() {
    // `Template::migrator` takes the consumer's `sqlx::migrate!()`.
    let template = Template::new().migrator(sqlx::migrate!("./migrations"));
    let db = TestDb::builder().template(template).build().await.unwrap();
    let mut conn: PgConnection = db.connect().await.unwrap();
    let orders: i64 = sqlx::raw_sql("select count(*) from orders")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 0, "the template's migration made `orders`");
    conn.close().await.unwrap();
    db.close().await.unwrap();
}

#[test]
fn errors_carry_the_consumers_sqlx_error() {
    // `Error::Sql` holds the consumer's `sqlx::Error`: built from one, and
    // found again as one behind `source()` (a type check at run time too).
    let err = Error::Sql {
        action: "a consumer's check".into(),
        source: sqlx::Error::RowNotFound,
    };
    let source = err.source().expect("Error::Sql has a source");
    assert!(matches!(
        source.downcast_ref::<sqlx::Error>(),
        Some(sqlx::Error::RowNotFound)
    ));
}
