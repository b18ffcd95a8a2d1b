//! `doctor` gives the right verdicts behind every profile of a local stack,
//! and its command-line form exits as CI needs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::password_of;
use pgbouncer_fixtures::doctor::{diagnose, items, PoolBehaviour, Report, Verdict};
use pgbouncer_fixtures::probes::Workload;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Env, Profile, StackSettings, TestDb};
use rstest::rstest;

const BIN: &str = env!("CARGO_BIN_EXE_pgbouncer-fixtures");

async fn report(db: &TestDb) -> Report {
    diagnose(
        db.db_url(),
        Workload {
            clients: 15,
            rounds: 100,
        },
        Duration::from_secs(10),
    )
    .await
}

fn verdict(r: &Report, item: &str) -> Verdict {
    r.finding(item)
        .unwrap_or_else(|| panic!("no finding {item}: {r:#?}"))
        .verdict
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_match_each_profile(
    #[values(
        Profile::SupabaseShared,
        Profile::SupabaseDedicated,
        Profile::SupabaseSession,
        Profile::SupabaseDedicatedLegacy,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = TestDb::for_profile(profile).await.unwrap();
    let r = report(&db).await;
    let text = r.to_text();
    // The report as run, for docs/explanations.md (`--nocapture`).
    println!("== {profile}\n{text}");
    assert_pooler_items(profile, &r);
    assert_connected_to_the_stacks_major(&r);
    assert!(
        !text.contains(&password_of(db.url())),
        "the report never shows the password"
    );
    match profile {
        Profile::SupabaseShared | Profile::SupabaseDedicatedLegacy => {
            assert_eq!(r.pool_behaviour, Some(PoolBehaviour::Transaction), "{text}");
            // Named statements: errors, or wrong answers (the worse verdict).
            for item in [items::DEFAULT_CACHE, items::CACHE_OFF, items::UNNAMED] {
                assert!(
                    matches!(verdict(&r, item), Verdict::Hazard | Verdict::WrongResults),
                    "{item} is never fine behind a transaction pooler without tracking: {text}"
                );
            }
            let remedy = r.finding(items::CACHE_OFF).unwrap().remedy.clone().unwrap();
            assert!(
                remedy.contains("`statement_cache_capacity(0)` does not help"),
                "{remedy}"
            );
            // Supavisor drops server settings at startup instead of refusing
            // them; the dedicated pooler's PgBouncer refuses them.
            let options = match profile {
                Profile::SupabaseShared => Verdict::Ok,
                _ => Verdict::Info,
            };
            assert_eq!(verdict(&r, items::STARTUP_OPTIONS), options, "{text}");
            assert_eq!(verdict(&r, items::TLS), Verdict::Ok, "{text}");
            assert!(r.has_hazard());
        }
        Profile::SupabaseDedicated => {
            assert_eq!(r.pool_behaviour, Some(PoolBehaviour::Transaction), "{text}");
            assert_eq!(verdict(&r, items::DEFAULT_CACHE), Verdict::Ok, "{text}");
            assert_eq!(verdict(&r, items::CACHE_OFF), Verdict::Ok, "{text}");
            let remedy = r
                .finding(items::DEFAULT_CACHE)
                .unwrap()
                .remedy
                .clone()
                .unwrap();
            assert!(
                remedy.contains("the default sqlx cache is fine"),
                "{remedy}"
            );
            // Supabase's PgBouncer refuses what it does not know.
            assert_eq!(verdict(&r, items::STARTUP_OPTIONS), Verdict::Info, "{text}");
            assert_eq!(verdict(&r, items::TLS), Verdict::Ok, "{text}");
        }
        Profile::SupabaseSession | Profile::NoPooler => {
            assert_eq!(r.pool_behaviour, Some(PoolBehaviour::Session), "{text}");
            for item in [
                items::DEFAULT_CACHE,
                items::CACHE_OFF,
                items::UNNAMED,
                items::STARTUP_DEFAULTS,
                items::STARTUP_OPTIONS,
                items::TLS,
            ] {
                assert_eq!(verdict(&r, item), Verdict::Ok, "{item}: {text}");
            }
            // Supavisor drops `app.tenant` at startup (the stage does so
            // behind the session profile): the one hazard there.
            assert_eq!(
                r.has_hazard(),
                profile == Profile::SupabaseSession,
                "{text}"
            );
        }
        // Its doctor item: tests/target_supavisor_stage.rs.
        Profile::SupabaseSharedPrepared => unreachable!("not among this test's values"),
    }
}

#[rstest]
#[tokio::test]
async fn the_command_exits_non_zero_on_a_hazard_and_speaks_json(
    #[values(Profile::SupabaseShared, Profile::NoPooler)] profile: Profile,
) {
    let db = TestDb::for_profile(profile).await.unwrap();
    let url = db.url().to_string();
    let out = doctor_json(url).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert!(!stdout.contains(&password_of(db.url())));
    let hazard = profile == Profile::SupabaseShared;
    assert_eq!(json["hazard"], serde_json::Value::Bool(hazard), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(if hazard { 1 } else { 0 }),
        "{stdout}"
    );
    assert!(json["findings"].as_array().unwrap().len() >= 8);
}

#[test]
fn bad_input_exits_2() {
    let out = Command::new(BIN)
        .args(["doctor", "mysql://root:pw@localhost/db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the scheme is `mysql`"), "{stderr}");
    assert!(!stderr.contains(":pw@"), "{stderr}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args(["doctor", &format!("postgres://app:pw@127.0.0.1:{port}/app")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "nothing listens there");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[ERROR ] connection: cannot reach the server"),
        "{stdout}"
    );
}

/// PostgreSQL's own functions, shadowed in the test's database: a schema
/// `shadow` with a function of the same name returning another type, put
/// before pg_catalog by the database's `search_path`, so every new session
/// of doctor's calls it.
const SHADOWS: [(&str, &str); 2] = [
    (
        "pg_backend_pid",
        "create function shadow.pg_backend_pid() returns text \
         language sql as $$ select 'not a pid' $$",
    ),
    (
        "current_setting",
        "create function shadow.current_setting(text, boolean) returns int \
         language sql as $$ select 42 $$",
    ),
];

/// A server that answers doctor's queries with unexpected types (its
/// functions shadowed by a user's schema and search_path) gets a verdict
/// that says so, and the command exits 2 (the URL does not point at a
/// PostgreSQL that answers as PostgreSQL does), never a panic.
#[rstest]
#[case::backend_pid("pg_backend_pid")]
#[case::setting("current_setting")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_types_give_a_verdict_not_a_panic(#[case] shadowed: &str) {
    let db = TestDb::for_profile(Profile::NoPooler).await.unwrap();
    let mut conn = db.connect().await.unwrap();
    let (_, create) = SHADOWS.iter().find(|(name, _)| *name == shadowed).unwrap();
    let database = db.database_name().replace('"', "\"\"");
    for sql in [
        "create schema shadow".to_string(),
        create.to_string(),
        // Per role in this database: the Supabase shape sets `postgres`'s search_path
        // on the role, which wins over a database's own setting.
        format!("alter role postgres in database \"{database}\" set search_path = shadow, pg_catalog, public"),
    ] {
        sqlx::raw_sql(common::audited(&sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(conn);

    let r = diagnose(
        db.db_url(),
        Workload {
            clients: 2,
            rounds: 5,
        },
        Duration::from_secs(10),
    )
    .await;
    let text = r.to_text();
    assert_connected_to_the_stacks_major(&r);
    let pool = r.finding(items::POOL_MODE).unwrap();
    assert_eq!(pool.verdict, Verdict::Error, "{text}");
    assert!(
        pool.detail
            .contains("the server answered `select pg_backend_pid()")
            && pool.detail.contains(shadowed)
            && pool.detail.contains("with an unexpected type"),
        "{text}"
    );
    let remedy = pool.remedy.as_deref().unwrap_or_default();
    assert!(
        remedy.contains("search_path") && remedy.contains("shadows"),
        "{text}"
    );
    assert_eq!(r.pool_behaviour, None, "{text}");
    assert!(r.has_hazard(), "{text}");

    let url = db.url().to_string();
    let out = doctor_json(url).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    let pool = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["item"] == items::POOL_MODE)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(pool["verdict"], "error", "{stdout}");
    db.close().await.unwrap();
}

/// The items that tell poolers apart, as PgBouncer (or PostgreSQL) answers
/// them behind `profile`.
fn assert_pooler_items(profile: Profile, r: &Report) {
    let text = r.to_text();
    let detail = |item: &str| r.finding(item).unwrap().detail.clone();
    if profile == Profile::SupabaseShared {
        // The stage's transaction pooling leaves the zone where it ran.
        assert_eq!(
            verdict(r, items::TRACKED_SET),
            Verdict::WrongResults,
            "{text}"
        );
        assert!(
            detail(items::TRACKED_SET).starts_with("leaks: Supavisor-like"),
            "{text}"
        );
    } else {
        // PgBouncer re-applies the client's TimeZone on the server connection B took.
        assert_eq!(verdict(r, items::TRACKED_SET), Verdict::Ok, "{text}");
        let kept = if profile.pools_transactions() {
            "keeps per client: B's transaction ran on the setter's server connection"
        } else {
            "keeps per client: separate server connections"
        };
        assert!(detail(items::TRACKED_SET).starts_with(kept), "{text}");
    }
    // Behind the stage the startup is answered as Supavisor does.
    let supavisor = profile.behind_stage();
    if supavisor {
        let named = if profile == Profile::SupabaseSession {
            "Supavisor-like: the server sees `Supavisor - <the client's>"
        } else {
            "Supavisor-like: the server sees `Supavisor / Supavisor`"
        };
        assert_eq!(verdict(r, items::APPLICATION_NAME), Verdict::Info, "{text}");
        assert!(detail(items::APPLICATION_NAME).starts_with(named), "{text}");
    } else {
        assert_eq!(verdict(r, items::APPLICATION_NAME), Verdict::Ok, "{text}");
    }
    // The stack's server default is UTC, as sqlx's: applied when the server
    // says the client set it; else not told apart (never called dropped).
    let zone = detail(items::STARTUP_TIMEZONE);
    assert!(
        zone.starts_with("applied") || zone.starts_with("UTC as sent"),
        "{text}"
    );
    if profile == Profile::NoPooler {
        assert!(zone.starts_with("applied: TimeZone UTC, set from the client (client)"));
        assert_eq!(verdict(r, items::CUSTOM_SETTING), Verdict::Ok, "{text}");
    } else if supavisor {
        assert_eq!(verdict(r, items::CUSTOM_SETTING), Verdict::Hazard, "{text}");
        assert!(
            detail(items::CUSTOM_SETTING).starts_with("accepted and dropped: Supavisor-like"),
            "{text}"
        );
    } else {
        assert_eq!(verdict(r, items::CUSTOM_SETTING), Verdict::Info, "{text}");
        assert!(
            detail(items::CUSTOM_SETTING).starts_with(
                "refused: PgBouncer-like: 08P01 unsupported startup parameter in options: app.tenant"
            ),
            "{text}"
        );
    }
    let limit = detail(items::SESSION_LIMIT);
    if profile == Profile::SupabaseSession {
        assert_eq!(verdict(r, items::SESSION_LIMIT), Verdict::Info, "{text}");
        assert!(
            limit.starts_with(
                "15 of 16 connected; 1 refused: Supavisor's session-mode limit: XX000 \
                 (EMAXCONNSESSION) max clients reached in session mode - max clients are \
                 limited to pool_size: 15"
            ),
            "{text}"
        );
    } else {
        assert_eq!(verdict(r, items::SESSION_LIMIT), Verdict::Ok, "{text}");
    }
}

/// The not-reproduced verdicts doctor names under each profile's local
/// stack (no URL) are the matrix's.
#[test]
fn each_profiles_not_reproduced_verdicts_are_the_matrixs() {
    use pgbouncer_fixtures::not_reproduced_under;
    // The verdicts it prints are the matrix's.
    // Behind the stage the shared profile's tracked SET and startup are
    // Supavisor's; the flag-on profile keeps a client on one link.
    // A startup search_path is applied behind both (a link straight to
    // PostgreSQL); the flag-on profile keeps a client on one PgBouncer link.
    // Behind all three: only Supavisor's limits on logins.
    let login_limits_only = |verdicts: &[(pgbouncer_fixtures::Behaviour, &str)]| {
        verdicts.len() == 1 && verdicts[0].1.contains("ECIRCUITBREAKER")
    };
    let shared = not_reproduced_under(Profile::SupabaseShared);
    assert!(login_limits_only(&shared), "{shared:?}");
    let prepared = not_reproduced_under(Profile::SupabaseSharedPrepared);
    assert!(prepared
        .iter()
        .any(|(_, why)| why.contains("Supavisor passes SET through raw")));
    assert!(prepared.iter().any(|(_, why)| why.contains("search_path")));
    // Behind the stage, the session profile's startup and limit are Supavisor's.
    let session = not_reproduced_under(Profile::SupabaseSession);
    assert!(login_limits_only(&session), "{session:?}");
    assert!(not_reproduced_under(Profile::SupabaseDedicated).is_empty());
    assert!(not_reproduced_under(Profile::NoPooler).is_empty());
    // What the CLI prints of them: src/cli/doctor.rs's unit test.
}

/// `pgbouncer-fixtures doctor URL --json`, run off the test's runtime.
async fn doctor_json(url: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["doctor", &url, "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The report's connection item passed, and its server item names the
/// major the stack was asked for (`PGBF_POSTGRES_VERSION`, 17 by default).
fn assert_connected_to_the_stacks_major(r: &Report) {
    let text = r.to_text();
    assert_eq!(verdict(r, items::CONNECTION), Verdict::Ok, "{text}");
    let major = StackSettings::from_env(&Env::load().unwrap())
        .unwrap()
        .postgres_version
        .major();
    assert!(
        r.finding(items::SERVER)
            .unwrap()
            .detail
            .starts_with(&format!("PostgreSQL {major}.")),
        "{text}"
    );
}
