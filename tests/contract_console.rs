//! The pooled leases are counted from PgBouncer's `SHOW CLIENTS`, whose
//! layout `docker/sql/leases.sql` writes down per PgBouncer version: the
//! row for the stack's own PgBouncer matches what its console answers, by
//! column name, and `pgbf_leases()` counts a pooled lease.

mod common;
use common::contract_sql;

use common::audited;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, Env, Stack, StackSettings, TestDb};
use rstest::rstest;
use sqlx::{Column, Connection, PgConnection, Row};

async fn leases(conn: &mut PgConnection) -> i32 {
    sqlx::raw_sql("select pgbf_leases()")
        .fetch_one(conn)
        .await
        .unwrap()
        .get(0)
}

#[rstest]
#[tokio::test]
async fn the_written_down_layout_is_the_consoles_and_pooled_leases_count(
    #[future(awt)] test_db: TestDb,
) {
    let console_options = test_db.connect_options().database("pgbouncer");
    let mut console = PgConnection::connect_with(&console_options).await.unwrap();
    let version: String = sqlx::raw_sql("SHOW VERSION")
        .fetch_one(&mut console)
        .await
        .unwrap()
        .get(0);
    let clients = sqlx::raw_sql("SHOW CLIENTS")
        .fetch_all(&mut console)
        .await
        .unwrap();
    let columns: Vec<String> = clients[0]
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let application_name = columns
        .iter()
        .position(|c| c == "application_name")
        .expect("SHOW CLIENTS has application_name")
        + 1;

    let mut direct = contract_sql::loaded(&test_db, 3).await;
    let sql = format!(
        "select columns, application_name from pgbf_console_layout('{}')",
        version.replace('\'', "''")
    );
    let rows = sqlx::raw_sql(audited(&sql))
        .fetch_all(&mut direct)
        .await
        .unwrap();
    let row = rows
        .first()
        .unwrap_or_else(|| panic!("no layout for {version}"));
    let layout: (i32, i32) = (row.get(0), row.get(1));
    assert_eq!(
        layout,
        (columns.len() as i32, application_name as i32),
        "{version}: {columns:?}"
    );

    // The server's own settings name its PgBouncer: this process's lease
    // is counted, and one more pooled lease adds one.
    let before = leases(&mut direct).await;
    assert!(before >= 1, "this process holds a pooled lease");
    // Straight to the stack's PgBouncer: the Supavisor-like stage in front
    // of it names every client `Supavisor`, as Supavisor does.
    let settings = StackSettings::from_env(&Env::load().unwrap()).unwrap();
    let stack = Stack::shared(&settings).await.unwrap();
    let lease_options = stack
        .endpoints()
        .pooled_url("postgres")
        .connect_options()
        .application_name("pgbf-pooled-lease pid 4000000");
    let lease = PgConnection::connect_with(&lease_options).await.unwrap();
    let mut counted = leases(&mut direct).await;
    for _ in 0..20 {
        if counted > before {
            break;
        }
        // Other processes' leases come and go; ours stays.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        counted = leases(&mut direct).await;
    }
    assert!(counted > before, "{counted} leases, {before} before");
    lease.close().await.unwrap();
}
