//! Profiles as the endpoints they mirror: TLS on both ports (as Supabase
//! serves it), "Enforce SSL", the Supavisor-like parameter list, and the
//! URLs `up --profile` prints behaving like that endpoint.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{answers, assert_named_statement_collisions, run_default_workload};
use pgbouncer_fixtures::probes::SqlxPattern;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{
    supavisor_dropped_parameters, DbUrl, Env, Profile, StackSettings, Target, TestDb,
};
use rstest::rstest;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection, PgConnection, Row};

const BIN: &str = env!("CARGO_BIN_EXE_pgbouncer-fixtures");

/// An application whose URL says `sslmode=require` (as Supabase's docs say)
/// works on both ports of every profile (through the Supavisor-like stage
/// too, which serves the stack's certificate); `verify-full` against the
/// stack's CA too; clients without TLS keep working.
#[rstest]
#[tokio::test]
async fn tls_is_offered_on_both_ports_of_every_profile(
    #[values(
        Profile::SupabaseShared,
        Profile::SupabaseDedicated,
        Profile::SupabaseSession,
        Profile::SupabaseSharedPrepared,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = TestDb::for_profile(profile).await.unwrap();
    let ca = db
        .ca_cert_pem()
        .expect("the stack's CA")
        .as_bytes()
        .to_vec();
    assert!(String::from_utf8_lossy(&ca).starts_with("-----BEGIN CERTIFICATE-----"));
    for (port, url) in [("pooled", db.url()), ("direct", db.direct_url().unwrap())] {
        let required: PgConnectOptions = format!("{url}?sslmode=require").parse().unwrap();
        assert_eq!(answers(&required).await.unwrap(), 42, "{profile} {port}");
        let verified = required
            .clone()
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert_from_pem(ca.clone());
        assert_eq!(answers(&verified).await.unwrap(), 42, "{profile} {port}");
        let plain = required.ssl_mode(PgSslMode::Disable);
        assert_eq!(answers(&plain).await.unwrap(), 42, "{profile} {port}");
    }
    // Another stack's CA does not verify this one: the certificate is the stack's own.
    let other = TestDb::builder()
        .target(Target::Containers(
            StackSettings::default().with_run_id(common::unique_run_id("other-ca")),
        ))
        .build()
        .await
        .unwrap();
    assert_ne!(other.ca_cert_pem(), db.ca_cert_pem());
    let wrong_ca = db
        .connect_options()
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert_from_pem(other.ca_cert_pem().unwrap().as_bytes().to_vec());
    assert!(
        answers(&wrong_ca).await.is_err(),
        "verify-full checks the CA"
    );
    other.close().await.unwrap();
    db.close().await.unwrap();
}

/// Supabase's "Enforce SSL": with `require_tls`, both ports refuse clients
/// without TLS, and the crate's own connections (and `connect()`) use TLS.
#[tokio::test]
async fn require_tls_refuses_plain_clients_on_both_ports() {
    let settings = StackSettings::default().with_require_tls(true);
    let db = TestDb::builder()
        .target(Target::Containers(settings))
        .build()
        .await
        .unwrap();
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    let mut direct = db.connect_direct().await.unwrap();
    sqlx::raw_sql("select 1")
        .execute(&mut direct)
        .await
        .unwrap();
    for options in [db.connect_options(), db.direct_connect_options().unwrap()] {
        let err = answers(&options.ssl_mode(PgSslMode::Disable))
            .await
            .expect_err("a client without TLS is refused");
        let text = err.to_string();
        assert!(
            text.contains("SSL required") || text.contains("no encryption"),
            "{text}"
        );
    }
    db.close().await.unwrap();
}

/// Each major's run-time settings (`pg_settings`), as the crate lists them.
const PG_SETTINGS: [(u32, &str); 2] = [
    (15, include_str!("../src/target/pg_settings_15.txt")),
    (17, include_str!("../src/target/pg_settings_17.txt")),
];

/// The Supavisor-like profiles ignore PostgreSQL's own settings minus those
/// PgBouncer tracks, of both majors a stack runs: the list for the stack's
/// major (`PGBF_POSTGRES_VERSION`) is exactly its `pg_settings`, and the
/// dropped parameters are the union of both lists.
#[tokio::test]
async fn the_dropped_parameters_are_postgres_own_settings() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    let major: u32 = sqlx::raw_sql("select current_setting('server_version_num')::int / 10000")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get::<i32, _>(0) as u32;
    let rows = sqlx::raw_sql("select name from pg_settings order by name")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let tracked = [
        "application_name",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "standard_conforming_strings",
        "IntervalStyle",
        "search_path",
    ];
    let server: std::collections::BTreeSet<String> = rows
        .iter()
        .map(|r| r.get::<String, _>(0))
        .filter(|n| !tracked.contains(&n.as_str()))
        .collect();
    let listed = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (_, text) = PG_SETTINGS
        .iter()
        .find(|(m, _)| *m == major)
        .unwrap_or_else(|| panic!("no settings list for PostgreSQL {major}"));
    let ours = listed(text);
    let missing: Vec<_> = server.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&server).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "PostgreSQL {major}: not listed {missing:?}; listed but not a setting {extra:?}"
    );
    let union: std::collections::BTreeSet<String> =
        PG_SETTINGS.iter().flat_map(|(_, t)| listed(t)).collect();
    let dropped: std::collections::BTreeSet<String> =
        supavisor_dropped_parameters().into_iter().collect();
    assert_eq!(dropped, union);
    db.close().await.unwrap();
}

/// `up --profile P`: the printed URLs behave like P's endpoint.
#[rstest]
#[case::shared(Profile::SupabaseShared)]
#[case::dedicated(Profile::SupabaseDedicated)]
#[case::session(Profile::SupabaseSession)]
#[case::dedicated_legacy(Profile::SupabaseDedicatedLegacy)]
#[case::direct(Profile::NoPooler)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_urls_that_behave_like_the_profile(#[case] profile: Profile) {
    let mut child = Command::new(BIN)
        .args(["up", "--profile", profile.name()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = |prefix: &str| {
        let line = lines.next().unwrap().unwrap();
        DbUrl::parse("up", line.strip_prefix(prefix).expect(prefix)).unwrap()
    };
    let pooled = url("TEST_DATABASE_URL=");
    let direct = url("TEST_DIRECT_URL=");
    if profile == Profile::NoPooler {
        assert_eq!(
            pooled, direct,
            "no-pooler: the application URL is PostgreSQL's"
        );
    }

    // options=-c jit=off: dropped by the shared pooler, refused by the dedicated one.
    let jit = pooled.connect_options().options([("jit", "off")]);
    let refused = PgConnection::connect_with(&jit).await.err();
    assert_eq!(
        refused.is_some(),
        matches!(
            profile,
            Profile::SupabaseDedicated | Profile::SupabaseDedicatedLegacy
        ),
        "{profile}: {refused:?}"
    );
    // sslmode=require on both ports.
    for url in [&pooled, &direct] {
        let tls: PgConnectOptions = format!("{}?sslmode=require", url.expose()).parse().unwrap();
        assert_eq!(answers(&tls).await.unwrap(), 42, "{profile}: {url}");
    }
    // The default sqlx cache: fails behind the poolers without tracking only.
    let env = Env::from_vars([
        ("TEST_DATABASE_URL", pooled.expose()),
        ("TEST_DIRECT_URL", direct.expose()),
        ("PGBF_EXTERNAL_CREATE_DATABASES", "1"),
    ]);
    let db = TestDb::builder()
        .target(Target::resolve(&env).unwrap())
        .build()
        .await
        .unwrap();
    let outcome = run_default_workload(SqlxPattern::PoolDefaultCache, &db).await;
    if profile.pools_transactions() && !profile.tracks_prepared_statements() {
        assert_named_statement_collisions(&outcome);
    } else {
        assert!(outcome.passed(), "{profile}: {}", outcome.summary());
    }
    db.close().await.unwrap();

    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert!(child.wait().unwrap().success());
}
