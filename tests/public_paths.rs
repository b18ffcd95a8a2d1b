//! Every public path of the last release still resolves, to the item of
//! that name: users upgrade without editing their imports. A path that
//! moves inside the crate keeps working by re-export; one that goes away
//! needs a `#[deprecated]` alias and a CHANGELOG line, and is checked in
//! tests/public_deprecated_aliases.rs instead (here: the current names).

use std::any::type_name;

use pgbouncer_fixtures::doctor::{diagnose, Finding, PoolBehaviour, Report, Verdict};
use pgbouncer_fixtures::env_vars::{
    PGBF_EXTERNAL_CREATE_DATABASES, TEST_DATABASE_URL, TEST_DIRECT_URL,
};
use pgbouncer_fixtures::hazard::{Hazard, Pooler};
use pgbouncer_fixtures::images::{BASE_IMAGE_SCRIPT, DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE};
use pgbouncer_fixtures::labels::{CHECKOUT, KIND, MANAGED, PID, SHARED, STACK};
use pgbouncer_fixtures::probes::session::{run_session_probe, SessionProbe};
use pgbouncer_fixtures::probes::startup::{
    run_startup_probe, send_startup, StartupAnswer, StartupProbe,
};
use pgbouncer_fixtures::probes::statements;
#[cfg(feature = "tokio-postgres")]
use pgbouncer_fixtures::probes::tokio_postgres::{run_tokio_pg_pattern, TokioPgPattern};
use pgbouncer_fixtures::probes::{
    run_pattern, ClientEnd, ClientError, Outcome, SqlxPattern, Workload, WrongAnswer,
};
use pgbouncer_fixtures::{
    docker_engine, gc, matrix, matrix_with, redact, supavisor_dropped_parameters, test_db,
    try_test_db, AcquireTimings, Behaviour, DbUrl, Endpoints, Env, Error, Explanation,
    ExternalTarget, GcReport, GcScope, ImageSettings, Isolation, Matrix, Network, PoolMode,
    Profile, Result, Seen, Stack, StackSettings, Target, Template, TestDb, TestDbBuilder,
};

/// The last segment of a type's path, e.g. `TestDb` for the fixture.
fn short<T: ?Sized>() -> &'static str {
    let full = type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// The name of the function item `f` (a fn item's type is named after it).
fn fn_name<F>(_: F) -> &'static str {
    short::<F>()
}

#[test]
fn every_public_type_of_the_last_release_resolves_to_itself() {
    let names = [
        (short::<Finding>(), "Finding"),
        (short::<PoolBehaviour>(), "PoolBehaviour"),
        (short::<Report>(), "Report"),
        (short::<Verdict>(), "Verdict"),
        (short::<Hazard>(), "Hazard"),
        (short::<Pooler>(), "Pooler"),
        (short::<SessionProbe>(), "SessionProbe"),
        (short::<StartupAnswer>(), "StartupAnswer"),
        (short::<StartupProbe>(), "StartupProbe"),
        (short::<statements::SqlxPattern>(), "SqlxPattern"),
        (short::<SqlxPattern>(), "SqlxPattern"),
        (short::<ClientEnd>(), "ClientEnd"),
        (short::<ClientError>(), "ClientError"),
        (short::<Outcome>(), "Outcome"),
        (short::<Workload>(), "Workload"),
        (short::<WrongAnswer>(), "WrongAnswer"),
        (short::<AcquireTimings>(), "AcquireTimings"),
        (short::<Behaviour>(), "Behaviour"),
        (short::<DbUrl>(), "DbUrl"),
        (short::<Endpoints>(), "Endpoints"),
        (short::<Env>(), "Env"),
        (short::<Error>(), "Error"),
        (short::<Explanation>(), "Explanation"),
        (short::<ExternalTarget>(), "ExternalTarget"),
        (short::<GcReport>(), "GcReport"),
        (short::<GcScope>(), "GcScope"),
        (short::<ImageSettings>(), "ImageSettings"),
        (short::<Isolation>(), "Isolation"),
        (short::<Matrix>(), "Matrix"),
        (short::<Network>(), "Network"),
        (short::<PoolMode>(), "PoolMode"),
        (short::<Profile>(), "Profile"),
        (short::<Result<()>>(), "Result"),
        (short::<Seen>(), "Seen"),
        (short::<Stack>(), "Stack"),
        (short::<StackSettings>(), "StackSettings"),
        (short::<Target>(), "Target"),
        (short::<Template>(), "Template"),
        (short::<TestDb>(), "TestDb"),
        (short::<TestDbBuilder>(), "TestDbBuilder"),
    ];
    for (got, want) in names {
        assert_eq!(got, want);
    }
}

#[test]
fn every_public_function_of_the_last_release_resolves_to_itself() {
    let names = [
        (fn_name(diagnose), "diagnose"),
        (fn_name(run_session_probe), "run_session_probe"),
        (fn_name(run_startup_probe), "run_startup_probe"),
        (fn_name(send_startup), "send_startup"),
        (fn_name(run_pattern), "run_pattern"),
        (fn_name(statements::run_pattern), "run_pattern"),
        (fn_name(matrix), "matrix"),
        (fn_name(docker_engine), "docker_engine"),
        (fn_name(gc), "gc"),
        (fn_name(redact), "redact"),
        (
            fn_name(supavisor_dropped_parameters),
            "supavisor_dropped_parameters",
        ),
        (fn_name(test_db), "test_db"),
        (fn_name(try_test_db), "try_test_db"),
    ];
    for (got, want) in names {
        assert_eq!(got, want);
    }
    // Generic over its callback (`impl FnMut`): it has no fn item type to
    // name, so this only proves the path and its signature still compile.
    let _never_called =
        |workload: Workload| matrix_with(workload, |_: Behaviour, _: Profile, _: &Outcome| {});
}

#[cfg(feature = "tokio-postgres")]
#[test]
fn the_tokio_postgres_paths_of_the_last_release_resolve() {
    assert_eq!(short::<TokioPgPattern>(), "TokioPgPattern");
    assert_eq!(fn_name(run_tokio_pg_pattern), "run_tokio_pg_pattern");
    assert_eq!(
        short::<pgbouncer_fixtures::tokio_postgres::Client>(),
        "Client"
    );
}

#[test]
fn the_public_constants_of_the_last_release_keep_their_values() {
    // Values users put in .env files, scripts and docker filters.
    assert_eq!(TEST_DATABASE_URL, "TEST_DATABASE_URL");
    assert_eq!(TEST_DIRECT_URL, "TEST_DIRECT_URL");
    assert_eq!(
        PGBF_EXTERNAL_CREATE_DATABASES,
        "PGBF_EXTERNAL_CREATE_DATABASES"
    );
    for label in [CHECKOUT, KIND, MANAGED, PID, SHARED, STACK] {
        assert!(label.starts_with("pgbouncer-fixtures."), "{label}");
    }
    assert!(!Endpoints::USER.is_empty());
    assert!(!BASE_IMAGE_SCRIPT.is_empty());
    assert!(!DEFAULT_BASE_IMAGE.is_empty());
    assert!(!LOCAL_BASE_IMAGE.is_empty());
}
