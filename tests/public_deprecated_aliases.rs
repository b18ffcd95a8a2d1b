//! Every deprecated alias (CHANGELOG.md, "Deprecated") used once, against a
//! real stack, and shown to give what its replacement gives: a crate written
//! against the old names still compiles and still behaves the same.
#![allow(deprecated)]

mod common;

use pgbouncer_fixtures::probes::Workload;
use pgbouncer_fixtures::sqlx::{self, Connection, PgConnection, Row};
use pgbouncer_fixtures::{
    compatibility_matrix, compatibility_matrix_with, env_vars, images, labels, matrix, Behaviour,
    Endpoints, ImageRef, Profile, Stack, StackSettings, TestDb,
};

use common::containers_with;

/// The host port `options` name, and the database a connection made from
/// them reaches.
async fn reached(options: &sqlx::postgres::PgConnectOptions) -> (u16, String) {
    let mut conn = PgConnection::connect_with(options).await.unwrap();
    let row = sqlx::raw_sql("select current_database()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let database = row.get::<String, _>(0);
    conn.close().await.unwrap();
    (options.get_port(), database)
}

#[tokio::test]
async fn the_test_db_methods_old_names_give_what_the_new_ones_give() {
    let db = TestDb::new().await.unwrap();

    let old = db.connect_options_direct().unwrap();
    let new = db.direct_connect_options().unwrap();
    let (port, database) = reached(&new).await;
    assert_eq!(reached(&old).await, (port, database.clone()));
    assert_eq!(database, db.database_name());

    assert_eq!(db.pooled().expose(), db.db_url().expose());
    assert_eq!(db.pooled().expose(), db.url());
    assert_eq!(
        db.direct().map(|u| u.expose()),
        db.direct_db_url().map(|u| u.expose())
    );
    assert_eq!(db.direct().map(|u| u.expose()), db.direct_url());
    assert_eq!(db.direct().unwrap().port(), port);

    #[cfg(feature = "tokio-postgres")]
    {
        let old = db.tokio_postgres_config_direct().unwrap();
        let new = db.direct_tokio_postgres_config().unwrap();
        assert_eq!(old.get_ports(), new.get_ports());
        assert_eq!(old.get_ports(), [port]);
        assert_eq!(old.get_dbname(), new.get_dbname());
        assert_eq!(old.get_user(), new.get_user());
        assert_eq!(old.get_application_name(), new.get_application_name());
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn the_profiles_old_names_are_the_new_profiles() {
    assert_eq!(Profile::Transaction, Profile::SupabaseShared);
    assert_eq!(Profile::TransactionTracking, Profile::SupabaseDedicated);
    assert_eq!(Profile::Session, Profile::SupabaseSession);
    assert_eq!(Profile::Direct, Profile::NoPooler);
    for p in Profile::ALL {
        assert_eq!(p.is_direct(), p.bypasses_pooler(), "{p}");
    }
    // An old name in a pattern still matches its profile.
    let name = |p: Profile| match p {
        Profile::Transaction => "shared",
        Profile::Direct => "no pooler",
        _ => "other",
    };
    assert_eq!(name(Profile::SupabaseShared), "shared");
    assert_eq!(name(Profile::NoPooler), "no pooler");
    assert_eq!("direct".parse::<Profile>().unwrap(), Profile::NoPooler);

    // `Profile::Direct` on a real stack: `connect()` goes to PostgreSQL's
    // port, as behind `Profile::NoPooler`, and the pooler's is another.
    let old = TestDb::for_profile(Profile::Direct).await.unwrap();
    let new = TestDb::for_profile(Profile::NoPooler).await.unwrap();
    let shared = TestDb::for_profile(Profile::SupabaseShared).await.unwrap();
    assert_eq!(old.db_url().port(), old.direct_db_url().unwrap().port());
    assert_eq!(old.db_url().port(), new.db_url().port());
    assert_ne!(old.db_url().port(), shared.db_url().port());
    let mut conn = old.connect().await.unwrap();
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    for db in [old, new, shared] {
        db.close().await.unwrap();
    }
}

#[tokio::test]
async fn the_stacks_old_names_give_what_the_new_ones_give() {
    let stack = Stack::shared(&StackSettings::default()).await.unwrap();
    let e = stack.endpoints();
    assert_eq!(e.admin_url().expose(), e.console_url().expose());
    // Both reach PgBouncer's console, which answers SHOW commands.
    let mut console = PgConnection::connect(e.admin_url().expose()).await.unwrap();
    let pools = sqlx::raw_sql("show pools")
        .fetch_all(&mut console)
        .await
        .unwrap();
    assert!(!pools.is_empty(), "the console lists at least its own pool");
    console.close().await.unwrap();

    assert_eq!(pgbouncer_fixtures::STACK_USER, Endpoints::USER);
    assert!(e
        .pooled_url("postgres")
        .expose()
        .contains(&format!("//{}:", Endpoints::USER)));

    // The old label names find this stack's two containers, as the new ones do.
    let old = containers_with(&format!(
        "{}={}",
        pgbouncer_fixtures::LABEL_STACK,
        stack.id()
    ));
    let new = containers_with(&format!("{}={}", labels::STACK, stack.id()));
    assert_eq!(old.len(), 2, "{old:?}");
    assert_eq!(old, new);
    for (old, new) in [
        (pgbouncer_fixtures::LABEL_MANAGED, labels::MANAGED),
        (pgbouncer_fixtures::LABEL_STACK, labels::STACK),
        (pgbouncer_fixtures::LABEL_KIND, labels::KIND),
        (pgbouncer_fixtures::LABEL_CHECKOUT, labels::CHECKOUT),
        (pgbouncer_fixtures::LABEL_PID, labels::PID),
        (pgbouncer_fixtures::LABEL_SHARED, labels::SHARED),
    ] {
        assert_eq!(old, new);
    }
}

#[test]
fn the_constants_old_paths_hold_the_new_paths_values() {
    for (old, new) in [
        (
            pgbouncer_fixtures::TEST_DATABASE_URL,
            env_vars::TEST_DATABASE_URL,
        ),
        (
            pgbouncer_fixtures::TEST_DIRECT_URL,
            env_vars::TEST_DIRECT_URL,
        ),
        (
            pgbouncer_fixtures::PGBF_EXTERNAL_CREATE_DATABASES,
            env_vars::PGBF_EXTERNAL_CREATE_DATABASES,
        ),
        (
            pgbouncer_fixtures::BASE_IMAGE_SCRIPT,
            images::BASE_IMAGE_SCRIPT,
        ),
        (
            pgbouncer_fixtures::DEFAULT_BASE_IMAGE,
            images::DEFAULT_BASE_IMAGE,
        ),
        (
            pgbouncer_fixtures::LOCAL_BASE_IMAGE,
            images::LOCAL_BASE_IMAGE,
        ),
    ] {
        assert_eq!(old, new);
    }
    assert!(std::path::Path::new(images::BASE_IMAGE_SCRIPT).is_file());
    let image = ImageRef {
        name: "pgbouncer-fixtures/postgres".into(),
        tag: "17".into(),
    };
    assert_eq!(image.to_string(), "pgbouncer-fixtures/postgres:17");
}

/// The matrix under its old name, with the smallest workload: a row per
/// behaviour, a column per profile, each cell the one reported as it was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_under_its_old_name_is_the_matrix() {
    let workload = Workload {
        clients: 1,
        rounds: 1,
    };
    let mut seen = Vec::new();
    let m = compatibility_matrix_with(workload, |b, p, o| seen.push((b, p, o.summary())))
        .await
        .unwrap();
    assert_eq!(seen.len(), Behaviour::all().len() * Profile::ALL.len());
    for (b, p, summary) in &seen {
        assert_eq!(&m.cell(*b, *p).unwrap().summary(), summary);
    }
    // The other old name is the same function as the new one (not run again:
    // a whole matrix takes its time).
    let _old = compatibility_matrix;
    let _new = matrix;
}
