//! Every error a user can meet, triggered for real, with its message checked,
//! and passwords never shown.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::password_of;
use pgbouncer_fixtures::env_vars::TEST_DATABASE_URL;
use pgbouncer_fixtures::{redact, test_db, DbUrl, Env, Error, Target, TestDb};
use rstest::rstest;

const BIN: &str = env!("CARGO_BIN_EXE_pgbouncer-fixtures");

/// Runs `pgbouncer-fixtures up` with extra environment; returns (exit code, stderr).
fn up_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("up");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn docker_unreachable_says_what_was_tried() {
    let (code, stderr) = up_with(&[("DOCKER_HOST", "unix:///nonexistent/pgbf/docker.sock")]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(
            "Docker is unreachable at unix:///nonexistent/pgbf/docker.sock (DOCKER_HOST)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("Start the Docker daemon"), "{stderr}");

    let (code, stderr) = up_with(&[("DOCKER_HOST", "tcp://127.0.0.1:1")]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("Docker is unreachable at tcp://127.0.0.1:1 (DOCKER_HOST)"),
        "{stderr}"
    );
}

#[test]
fn an_unbuildable_image_names_the_base_image_script() {
    // A base image that exists nowhere and cannot be pulled (no registry here).
    let (code, stderr) = up_with(&[("PGBF_BASE_IMAGE", "pgbf-no-such-base:never")]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("is missing and could not be made"),
        "{stderr}"
    );
    assert!(
        stderr.contains("from base image pgbf-no-such-base:never"),
        "{stderr}"
    );
    assert!(stderr.contains("docker/make-base-image.sh"), "{stderr}");
}

#[test]
fn a_missing_override_image_names_its_variable() {
    let (code, stderr) = up_with(&[("PGBF_PGBOUNCER_IMAGE", "pgbf-no-such-pgbouncer:1")]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("image pgbf-no-such-pgbouncer:1 is missing"),
        "{stderr}"
    );
    assert!(stderr.contains("unset PGBF_PGBOUNCER_IMAGE"), "{stderr}");
}

#[test]
fn bad_cli_input_is_refused_with_usage() {
    let out = Command::new(BIN)
        .args(["up", "--max-prepared-statements", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'many' for '--max-prepared-statements <N>'")
            && stderr.contains("expected a whole number"),
        "{stderr}"
    );
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unrecognized subcommand 'frobnicate'") && stderr.contains("Usage:"),
        "{stderr}"
    );
}

fn resolve_url(url: &str) -> Result<Target, Error> {
    Target::resolve(&Env::from_vars([(TEST_DATABASE_URL, url)]))
}

#[rstest]
#[case::scheme("mysql://root:s3cretpw@localhost:3306/app", "scheme")]
#[case::no_scheme("localhost:6543/app", "scheme")]
#[case::port("postgres://app:s3cretpw@localhost:65999/app", "port")]
#[case::port_text("postgres://app:s3cretpw@localhost:sixty/app", "port")]
#[case::host("postgres://app:s3cretpw@/app", "host")]
#[case::user("postgres://localhost:6543/app", "user")]
#[case::database("postgres://app:s3cretpw@localhost:6543/app/extra", "database")]
#[case::parameter(
    "postgres://app:s3cretpw@localhost:6543/app?sslmode=sometimes",
    "parameter"
)]
fn a_malformed_test_database_url_names_the_part(#[case] url: &str, #[case] part: &str) {
    let err = resolve_url(url).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::InvalidUrl { part: p, .. } if *p == part),
        "{part}: {err:?}"
    );
    assert!(
        msg.starts_with("TEST_DATABASE_URL is not a usable PostgreSQL URL"),
        "{msg}"
    );
    assert!(msg.contains(&format!("the {part} ")), "{msg}");
    assert!(
        !msg.contains("s3cretpw") && !format!("{err:?}").contains("s3cretpw"),
        "{msg}"
    );
}

#[test]
fn invalid_settings_are_typed_errors() {
    for (var, value) in [
        ("PGBF_POOL_MODE", "statement-ish"),
        ("PGBF_MAX_PREPARED_STATEMENTS", "-1"),
        ("PGBF_DEFAULT_POOL_SIZE", "0"),
        ("PGBF_EXTERNAL_CREATE_DATABASES", "perhaps"),
        ("PGBF_REAP_AFTER_SECS", "0"),
        ("PGBF_REAP_AFTER_SECS", "forever"),
        ("PGBF_RUN_ID", "run\u{7}id"),
        ("PGBF_PUBLISH_ALL_INTERFACES", "everywhere"),
    ] {
        let mut vars = vec![(var, value)];
        if var == "PGBF_EXTERNAL_CREATE_DATABASES" {
            vars.push((TEST_DATABASE_URL, "postgres://a:b@localhost/db"));
        }
        let err = Target::resolve(&Env::from_vars(vars)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidEnv { var: v, .. } if v == var),
            "{var}: {err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("{var}={value:?} is invalid")),
            "{err}"
        );
    }
    let on = Target::resolve(&Env::from_vars([("PGBF_PUBLISH_ALL_INTERFACES", "1")])).unwrap();
    assert!(
        matches!(on, Target::Containers(s) if s.publish_all_interfaces),
        "PGBF_PUBLISH_ALL_INTERFACES=1 asks for every interface"
    );
}

#[test]
fn parameters_sqlx_ignores_get_a_warning_naming_its_own_key() {
    let target = resolve_url(
        "postgres://app:s3cretpw@localhost:6543/app?pgbouncer=true&statement_cache_size=0&prepared_statement_cache_size=0",
    )
    .unwrap();
    let warnings = target.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for (w, name) in warnings.iter().zip([
        "pgbouncer",
        "statement_cache_size",
        "prepared_statement_cache_size",
    ]) {
        assert!(w.contains(&format!("`{name}=")), "{w}");
        assert!(w.contains("has no effect"), "{w}");
        assert!(
            w.contains("statement-cache-capacity") || w.contains("statement_cache_capacity(0)"),
            "{w}"
        );
    }
    assert!(
        resolve_url("postgres://app:pw@localhost:6543/app?sslmode=disable")
            .unwrap()
            .warnings()
            .is_empty()
    );
}

#[tokio::test]
async fn an_unreachable_pooler_is_named_with_the_password_hidden() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let url = format!("postgres://app:hunter2secret@127.0.0.1:{port}/app");
    let err = TestDb::builder()
        .target(resolve_url(&url).unwrap())
        .build()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::Unreachable {
                endpoint_kind: "pooler",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains(&format!(
            "cannot reach the pooler at postgres://app:***@127.0.0.1:{port}/app"
        )),
        "{msg}"
    );
    assert!(!msg.contains("hunter2secret") && !format!("{err:?}").contains("hunter2secret"));
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    // Accepts TCP connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let url = format!("postgres://app:hunter2secret@127.0.0.1:{port}/app");
    let err = TestDb::builder()
        .target(resolve_url(&url).unwrap())
        .connect_timeout(Duration::from_millis(800))
        .build()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        msg.starts_with(
            "timed out after 800ms while connecting to the pooler at postgres://app:***@"
        ),
        "{msg}"
    );
    assert!(msg.contains("PGBF_CONNECT_TIMEOUT_SECS"), "{msg}");
}

#[rstest]
#[tokio::test]
async fn a_wrong_password_says_what_to_change(#[future(awt)] test_db: TestDb) {
    let url = DbUrl::parse("test", test_db.url()).unwrap();
    let bad = url.expose().replacen(
        &format!(":{}@", password_of(test_db.url())),
        ":wrongpassword@",
        1,
    );
    let target = resolve_url(&bad).unwrap();
    let err = TestDb::builder().target(target).build().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::ConnectRefused { code: Some(c), .. } if c == "08P01" || c == "28P01"),
        "{err:?}"
    );
    assert!(msg.contains("Check the user and password"), "{msg}");
    assert!(!msg.contains("wrongpassword"), "{msg}");
}

#[rstest]
#[tokio::test]
async fn debug_output_and_errors_never_show_the_password(#[future(awt)] test_db: TestDb) {
    let password = password_of(test_db.url());
    assert!(password.len() >= 20);
    let shown = [
        format!("{test_db:?}"),
        format!("{:?}", test_db.db_url()),
        format!("{}", test_db.db_url()),
        format!("{:?}", test_db.direct_db_url()),
        redact(test_db.url()),
        redact(&format!(
            "failed: {} and {}",
            test_db.url(),
            test_db.direct_url().unwrap()
        )),
    ];
    for text in &shown {
        assert!(!text.contains(&password), "password leaked in {text}");
        assert!(text.contains("***"), "redaction marker missing in {text}");
    }
    assert_eq!(redact("no url here"), "no url here");
    assert_eq!(redact("postgres://user@host/db"), "postgres://user@host/db");
}
