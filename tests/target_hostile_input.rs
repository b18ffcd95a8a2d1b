//! Property tests: hostile or malformed values of every variable and URL the
//! crate reads give typed errors (or a target), never a panic, and a
//! password never shows in an error.

use std::collections::HashMap;

use pgbouncer_fixtures::{redact, DbUrl, Env, Error, Target, TestDb};
use proptest::prelude::*;

/// Every variable the crate reads from the environment or `.env`.
const VARS: &[&str] = &[
    "TEST_DATABASE_URL",
    "TEST_DIRECT_URL",
    "PGBF_EXTERNAL_CREATE_DATABASES",
    "PGBF_POOL_MODE",
    "PGBF_MAX_PREPARED_STATEMENTS",
    "PGBF_DEFAULT_POOL_SIZE",
    "PGBF_BASE_IMAGE",
    "PGBF_POSTGRES_IMAGE",
    "PGBF_PGBOUNCER_IMAGE",
    "PGBF_STARTUP_TIMEOUT_SECS",
    "PGBF_REAP_AFTER_SECS",
    "PGBF_RUN_ID",
    "PGBF_PROFILE",
    "PGBF_REQUIRE_TLS",
    "PGBF_PUBLISH_ALL_INTERFACES",
    "PGBF_KEEP_WARM_SECS",
    "PGBF_MAX_WARM_CLONES",
];

/// Variables `TestDb::builder().build()` reads beyond the target's.
const BUILD_VARS: &[&str] = &[
    "PGBF_CONNECT_TIMEOUT_SECS",
    "PGBF_PREPARED_CLONES",
    "PGBF_KEEP_FAILED",
];

const SECRET: &str = "Zq8secretPw";

/// A URL whose path swallowed the password once showed it in the error.
#[test]
fn a_mangled_url_never_shows_its_password() {
    let raw = format!("postgres://$@!/:{SECRET}@localhost/db");
    if let Err(e) = DbUrl::parse("TEST_DATABASE_URL", &raw) {
        assert!(!e.to_string().contains(SECRET), "{e}");
    }
}

/// Strings that look like URLs, with the parts attackers and typos vary.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just("postgres".to_string()),
        Just("postgresql".to_string()),
        Just("mysql".to_string()),
        Just("".to_string()),
        "[a-z+.-]{0,8}",
    ];
    let user = prop_oneof![Just("app".to_string()), Just("".to_string()), "\\PC{0,8}"];
    let host = prop_oneof![
        Just("localhost".to_string()),
        Just("[::1]".to_string()),
        Just("".to_string()),
        Just("300.1.1.1".to_string()),
        "\\PC{0,12}",
    ];
    let port = prop_oneof![
        Just("".to_string()),
        Just(":6543".to_string()),
        Just(":99999".to_string()),
        Just(":-1".to_string()),
        ":[0-9a-z]{0,6}",
    ];
    let path = prop_oneof![
        Just("/db".to_string()),
        Just("".to_string()),
        Just("/a/b".to_string()),
        "/\\PC{0,10}",
    ];
    let query = prop_oneof![
        Just("".to_string()),
        Just("?sslmode=sometimes".to_string()),
        Just("?statement-cache-capacity=-5".to_string()),
        Just("?pgbouncer=true&statement_cache_size=0".to_string()),
        Just("?port=abc".to_string()),
        "\\?\\PC{0,16}",
    ];
    (scheme, user, host, port, path, query)
        .prop_map(|(s, u, h, p, d, q)| format!("{s}://{u}:{SECRET}@{h}{p}{d}{q}"))
}

fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        url_like(),
        "\\PC{0,40}",
        any::<String>(),
        "[0-9-]{0,25}",
        Just("".to_string()),
        Just(" ".to_string()),
        Just("4294967296".to_string()),
        Just("1\n2".to_string()),
    ]
}

fn typed(err: &Error) -> bool {
    matches!(
        err,
        Error::InvalidUrl { .. } | Error::InvalidEnv { .. } | Error::DirectUrlRequired { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn urls_parse_or_fail_typed_without_showing_the_password(raw in url_like()) {
        match DbUrl::parse("TEST_DATABASE_URL", &raw) {
            Ok(url) => {
                prop_assert!(!url.to_string().contains(SECRET), "{}", url);
                let debug = format!("{:?}", url);
                prop_assert!(!debug.contains(SECRET), "{}", debug);
                let _ = (url.database(), url.host_port(), url.port(), url.connect_options());
                let _ = url.ignored_parameter_warnings();
            }
            Err(e) => {
                prop_assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
                prop_assert!(!e.to_string().contains(SECRET), "{e}");
                let debug = format!("{:?}", e);
                prop_assert!(!debug.contains(SECRET), "{}", debug);
            }
        }
    }

    #[test]
    fn any_text_parses_or_fails_typed(raw in any::<String>()) {
        if let Err(e) = DbUrl::parse("TEST_DIRECT_URL", &raw) {
            prop_assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
        }
        let _ = redact(&raw);
    }

    #[test]
    fn every_variable_with_any_value_resolves_or_fails_typed(
        values in proptest::collection::vec((0..VARS.len(), any_value()), 0..6)
    ) {
        let vars: HashMap<&str, String> =
            values.into_iter().map(|(i, v)| (VARS[i], v)).collect();
        match Target::resolve(&Env::from_vars(vars.clone())) {
            Ok(target) => {
                let _ = target.warnings();
                if let Target::Containers(settings) = target {
                    let _ = (settings.key(), settings.pgbouncer_ini("127.0.0.1"));
                }
            }
            Err(e) => {
                prop_assert!(typed(&e), "{e:?}");
                prop_assert!(!e.to_string().contains(SECRET), "{e}");
            }
        }
    }

    #[test]
    fn every_build_variable_with_any_value_fails_typed_before_any_work(
        values in proptest::collection::vec((0..BUILD_VARS.len(), any_value()), 1..4)
    ) {
        // A server that refuses at once: a build either refuses a variable
        // or gets as far as connecting, and fails typed either way.
        let target = Target::resolve(&Env::from_vars([(
            "TEST_DATABASE_URL",
            format!("postgres://u:{SECRET}@127.0.0.1:1/db"),
        )]))
        .unwrap();
        let env = Env::from_vars(values.into_iter().map(|(i, v)| (BUILD_VARS[i], v)));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let built = runtime.block_on(TestDb::builder().env(env).target(target).build());
        let e = built.expect_err("nothing listens on port 1");
        prop_assert!(typed(&e) || matches!(e, Error::Unreachable { .. }), "{e:?}");
        prop_assert!(!e.to_string().contains(SECRET), "{e}");
    }

    #[test]
    fn any_dotenv_file_loads_or_fails_typed(content in any::<String>()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), &content).unwrap();
        match Env::load_from(dir.path(), Vec::<(String, String)>::new()) {
            Ok(env) => {
                if let Err(e) = Target::resolve(&env) {
                    prop_assert!(typed(&e), "{e:?}");
                }
            }
            Err(e) => prop_assert!(matches!(e, Error::InvalidEnv { var: ".env", .. }), "{e:?}"),
        }
    }

    #[test]
    fn redaction_hides_every_password_in_any_text(
        prefix in "\\PC{0,20}", user in "[a-z]{1,8}", suffix in "\\PC{0,20}"
    ) {
        let text = format!("{prefix} postgres://{user}:{SECRET}@db.example:5432/x {suffix}");
        prop_assume!(!prefix.contains("://") && !suffix.contains(SECRET));
        prop_assert!(!redact(&text).contains(SECRET), "{}", redact(&text));
    }
}
