//! The janitor's SQL (`docker/sql/janitor.sql`), loaded into the test's
//! own database on the stack, with the lease count in the test's hands:
//! each step goes ahead only while the stack is idle, drops go four at a
//! time in queue order, claims become demand, clones are made two at a
//! time up to the demand and the cap, named as the crate names its own.

mod common;
use common::contract_sql;

use common::audited;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, TestDb};
use rstest::rstest;
use sqlx::{PgConnection, Row};

/// The SQL loaded, with `pgbf_leases()` answering what the session setting
/// `pgbf_test.leases` says, at most 4 clones, and a PgBouncer port nobody
/// listens on (warming a clone fails quietly).
async fn janitor(test_db: &TestDb) -> PgConnection {
    let mut conn = contract_sql::loaded(test_db, 5).await;
    sqlx::raw_sql(
        "create or replace function pgbf_leases() returns int language sql \
         as $$ select current_setting('pgbf_test.leases')::int $$; \
         set pgbf.max_warm_clones = 4; set pgbf.pooler_port = 1",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    leases(&mut conn, 0).await;
    conn
}

async fn leases(conn: &mut PgConnection, n: i32) {
    let sql = format!("set pgbf_test.leases = {n}");
    sqlx::raw_sql(audited(&sql)).execute(conn).await.unwrap();
}

async fn texts(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    sqlx::raw_sql(audited(sql))
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<Option<String>, _>(0).unwrap_or_default())
        .collect()
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::raw_sql(audited(sql))
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<i64, _>(0)
}

async fn left(conn: &mut PgConnection) -> i32 {
    sqlx::raw_sql("select pgbf_janitor_left()")
        .fetch_one(conn)
        .await
        .unwrap()
        .get(0)
}

/// Runs what a step planned, as psql's `\gexec` does.
async fn run_all(conn: &mut PgConnection, statements: &[String]) {
    for sql in statements {
        sqlx::raw_sql(audited(sql))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[rstest]
#[tokio::test]
async fn drops_go_four_at_a_time_in_queue_order_while_idle(#[future(awt)] test_db: TestDb) {
    let mut conn = janitor(&test_db).await;
    assert_eq!(left(&mut conn).await, 0, "nothing to do");
    sqlx::raw_sql(
        "insert into pgbf_garbage (name, queued_at) select 'pgbf_gone_' || i, now() - (10 - i) * interval '1 s' \
         from generate_series(1, 5) i",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    leases(&mut conn, 1).await;
    assert!(texts(&mut conn, "select pgbf_janitor_drops()")
        .await
        .is_empty());
    assert_eq!(left(&mut conn).await, 2, "work once idle");
    leases(&mut conn, 0).await;
    assert_eq!(left(&mut conn).await, 1, "work now");
    let planned = texts(&mut conn, "select pgbf_janitor_drops()").await;
    let expected: Vec<String> = (1..=4)
        .flat_map(|i| {
            [
                format!("DROP DATABASE IF EXISTS pgbf_gone_{i} WITH (FORCE)"),
                format!("delete from pgbf_garbage where name = 'pgbf_gone_{i}'"),
            ]
        })
        .collect();
    assert_eq!(planned, expected);
    run_all(&mut conn, &planned).await;
    let rest = texts(&mut conn, "select name from pgbf_garbage").await;
    assert_eq!(rest, ["pgbf_gone_5"]);
    // A claim in the last 2 s: not idle either.
    sqlx::raw_sql("insert into pgbf_claims (template) values ('t')")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(texts(&mut conn, "select pgbf_janitor_drops()")
        .await
        .is_empty());
    assert_eq!(left(&mut conn).await, 2);
}

#[rstest]
#[tokio::test]
async fn the_claims_of_a_finished_run_become_the_demand(#[future(awt)] test_db: TestDb) {
    let mut conn = janitor(&test_db).await;
    sqlx::raw_sql(
        "insert into pgbf_demand (template, claims) values ('a', 9), ('old', 5); \
         insert into pgbf_claims (template, at) select t, now() - interval '3 s' \
         from unnest(array['a', 'a', 'a', 'b']) t",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (lease_count, claims_left) in [(1, 4), (0, 0)] {
        leases(&mut conn, lease_count).await;
        run_all(&mut conn, &["select pgbf_janitor_roll()".to_string()]).await;
        let claims = count(&mut conn, "select count(*) from pgbf_claims").await;
        assert_eq!(claims, claims_left, "with {lease_count} leases");
    }
    let demand = texts(
        &mut conn,
        "select template || '=' || claims from pgbf_demand order by template",
    )
    .await;
    assert_eq!(demand, ["a=3", "b=1", "old=5"]);
}

#[rstest]
#[tokio::test]
async fn clones_are_made_two_at_a_time_up_to_the_demand_and_the_cap(
    #[future(awt)] test_db: TestDb,
) {
    let mut conn = janitor(&test_db).await;
    let hash = format!("{:016x}", std::process::id() as u64 * 7919 + 17);
    let template = format!("pgbf_tpl_{hash}");
    run_all(
        &mut conn,
        &[
            format!("create database {template}"),
            format!("alter database {template} is_template true"),
            format!("insert into pgbf_demand (template, claims) values ('{template}', 3), ('pgbf_tpl_gone', 4)"),
        ],
    )
    .await;
    let mut made = Vec::new();
    for (batch, clones) in [(1, 2), (2, 1), (3, 0)] {
        let planned = texts(&mut conn, "select pgbf_janitor_clones()").await;
        assert_eq!(planned.len(), 3 * clones, "batch {batch}: {planned:?}");
        for step in planned.chunks(3) {
            let name = step[0]
                .strip_prefix("CREATE DATABASE ")
                .and_then(|s| s.strip_suffix(&format!(" TEMPLATE {template} STRATEGY FILE_COPY")))
                .unwrap_or_else(|| panic!("{}", step[0]));
            // pgbf_<clone stem>_<10 hex>, as the crate names its clones.
            let suffix = name.strip_prefix(&format!("pgbf_c{hash}_")).unwrap();
            assert!(suffix.len() == 10 && suffix.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(step[1], format!("select pgbf_warm('{name}')"));
            assert!(step[2].starts_with(&format!(
                "insert into pgbf_prepared (name, template) select '{name}', '{template}' where exists"
            )));
            made.push(name.to_string());
        }
        run_all(&mut conn, &planned).await;
    }
    assert_eq!(made.len(), 3, "the demand, the missing template's none");
    assert_eq!(left(&mut conn).await, 0);
    // The cap: 4 in all, whatever the demand.
    run_all(
        &mut conn,
        &[format!(
            "update pgbf_demand set claims = 10 where template = '{template}'"
        )],
    )
    .await;
    assert_eq!(
        count(&mut conn, "select pgbf_janitor_room()::int8").await,
        1
    );
    let planned = texts(&mut conn, "select pgbf_janitor_clones()").await;
    assert_eq!(planned.len(), 3);
    made.push(planned[0].split(' ').nth(2).unwrap().to_string());
    run_all(&mut conn, &planned).await;
    assert_eq!(
        count(&mut conn, "select pgbf_janitor_room()::int8").await,
        0
    );
    assert_eq!(left(&mut conn).await, 0, "the cap leaves nothing to do");
    assert!(texts(&mut conn, "select pgbf_janitor_clones()")
        .await
        .is_empty());

    let mut cleanup: Vec<String> = made
        .iter()
        .map(|n| format!("drop database {n} with (force)"))
        .collect();
    cleanup.push(format!("alter database {template} is_template false"));
    cleanup.push(format!("drop database {template}"));
    run_all(&mut conn, &cleanup).await;
}

#[rstest]
#[tokio::test]
async fn the_warm_up_fits_what_pg_stat_activity_shows(#[future(awt)] test_db: TestDb) {
    let mut conn = janitor(&test_db).await;
    let sql = texts(&mut conn, "select pgbf_warm_sql()").await.remove(0);
    assert!(sql.len() < 1024, "{} bytes", sql.len());
    assert!(sql.starts_with("do $d$") && sql.ends_with("end $d$; select 1"));
    // A name that is not a clone's, or a PgBouncer that does not answer:
    // false, no error.
    for name in ["x; drop", "pgbf_c0_0123456789"] {
        let sql = format!("select pgbf_warm('{name}')::text");
        assert_eq!(texts(&mut conn, &sql).await, ["false"]);
    }
}
