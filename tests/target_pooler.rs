//! Where Supavisor and Supabase's PgBouncer differ in what a client sees
//! (issue 25's "Why", items 1, 3, 4 and 6), through the crate's public API
//! as a user would: each profile behaves as its endpoint, or the
//! documented "not reproduced" verdict names the difference.

mod common;

use common::{assert_named_statement_collisions, db_behind, run_default_workload};

use pgbouncer_fixtures::probes::pooler::{
    run_pooler_probe, tracked_set, PoolerProbe, PoolerTarget, SET_ZONE,
};
use pgbouncer_fixtures::probes::SqlxPattern;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{not_reproduced, Behaviour, Profile};
use rstest::rstest;

/// Item 6: a dedicated pooler on an older image (PgBouncer before 1.21)
/// tracks no prepared statement: sqlx's default cache collides there, as
/// behind the shared pooler, and the dedicated profile of today passes.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_cache_collides_behind_the_dedicated_pooler_before_1_21(
    #[values(Profile::SupabaseDedicatedLegacy, Profile::SupabaseDedicated)] profile: Profile,
) {
    let db = db_behind(profile).await;
    let outcome = run_default_workload(SqlxPattern::PoolDefaultCache, &db).await;
    if profile == Profile::SupabaseDedicatedLegacy {
        assert_named_statement_collisions(&outcome);
        assert!(!profile.tracks_prepared_statements());
        assert!(profile.pools_transactions());
    } else {
        assert!(outcome.passed(), "{profile}: {}", outcome.summary());
    }
    // Supabase's template: default_pool_size = 15, and PgBouncer's refusal
    // of a startup parameter it does not know.
    let settings = profile.apply(Default::default());
    assert_eq!(settings.default_pool_size, 15);
    assert_eq!(settings.ignore_startup_parameters, ["extra_float_digits"]);
    db.close().await.unwrap();
}

/// Item 1: `SET TIME ZONE` outside a transaction. PgBouncer keeps it per
/// client: client B, on the server connection the setter used, sees its
/// own zone; the setter keeps New York.
#[rstest]
#[tokio::test]
async fn a_tracked_set_outside_a_transaction_is_kept_per_client(
    #[values(
        Profile::SupabaseDedicated,
        Profile::SupabaseSession,
        Profile::SupabaseDedicatedLegacy,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = db_behind(profile).await;
    let answer = tracked_set(&db.connect_options()).await.unwrap();
    assert_eq!(answer.other_before, "UTC", "{profile}: {answer:?}");
    assert_eq!(
        answer.other_after, "UTC",
        "{profile}: not leaked: {answer:?}"
    );
    assert_eq!(
        answer.setter_after, SET_ZONE,
        "{profile}: not lost: {answer:?}"
    );
    // Behind a transaction pooler B did run where A's SET ran: a leak
    // could have shown.
    assert_eq!(
        answer.other_on_setters_backend,
        profile.pools_transactions(),
        "{profile}: {answer:?}"
    );
    let verdict = not_reproduced(Behaviour::Pooler(PoolerProbe::TrackedSet), profile);
    assert_eq!(verdict, None, "{profile}");
    db.close().await.unwrap();
}

/// Item 1 behind the shared pooler: Supavisor passes the `SET` through and
/// resets nothing, so the zone stays where it ran. Client B's next
/// transaction, run there (Supavisor's pools hand out the link released
/// last), gets New York; while B holds it in a transaction, the setter's
/// own next transaction runs elsewhere and has lost it.
#[tokio::test]
async fn a_tracked_set_outside_a_transaction_stays_where_it_ran_behind_the_shared_pooler() {
    let profile = Profile::SupabaseShared;
    let db = db_behind(profile).await;
    let answer = tracked_set(&db.connect_options()).await.unwrap();
    assert_eq!(answer.other_before, "UTC", "{answer:?}");
    assert_eq!(answer.other_after, SET_ZONE, "leaked to B: {answer:?}");
    assert!(answer.leaked(), "{answer:?}");
    assert_eq!(
        not_reproduced(Behaviour::Pooler(PoolerProbe::TrackedSet), profile),
        None
    );

    let zone = "select current_setting('TimeZone')";
    let mut a = db.connect().await.unwrap();
    let mut b = db.connect().await.unwrap();
    sqlx::raw_sql("set time zone 'Asia/Tokyo'")
        .execute(&mut a)
        .await
        .unwrap();
    sqlx::raw_sql("begin").execute(&mut b).await.unwrap();
    let b_sees: String = sqlx::query_scalar(zone).fetch_one(&mut b).await.unwrap();
    assert_eq!(b_sees, "Asia/Tokyo", "B got the link the SET ran on");
    let a_sees: String = sqlx::query_scalar(zone).fetch_one(&mut a).await.unwrap();
    assert_eq!(
        a_sees, "UTC",
        "the setter lost its zone while B holds that link"
    );
    sqlx::raw_sql("set time zone 'UTC'; commit")
        .execute(&mut b)
        .await
        .unwrap();
    db.close().await.unwrap();
}

/// Item 4: what reaches the server at startup. PgBouncer passes the
/// client's `application_name`, applies sqlx's `TimeZone=UTC` (the
/// database's default being another) and refuses `app.tenant` (08P01);
/// PostgreSQL applies all three. Supavisor sends `Supavisor` (`Supavisor -
/// <the client's>` in session mode), drops the zone and the custom
/// setting: behind the stage, so do the shared and session profiles.
#[rstest]
#[tokio::test]
async fn startup_parameters_reach_the_server_as_on_each_endpoint(
    #[values(
        Profile::SupabaseShared,
        Profile::SupabaseDedicated,
        Profile::SupabaseSession,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = db_behind(profile).await;
    let pooled = db.connect_options();
    let direct = db.direct_connect_options().unwrap();
    let target = PoolerTarget {
        pooled: &pooled,
        direct: Some(&direct),
    };
    // The stage answers as Supavisor does.
    let staged = profile.behind_stage();
    let name = run_pooler_probe(PoolerProbe::ApplicationName, target)
        .await
        .unwrap();
    let zone = run_pooler_probe(PoolerProbe::StartupTimeZone, target)
        .await
        .unwrap();
    let tenant = run_pooler_probe(PoolerProbe::OptionsCustomSetting, target)
        .await
        .unwrap();
    if staged {
        let got = |o: &pgbouncer_fixtures::probes::Outcome| {
            assert!(o.failures.is_empty(), "{profile}: {}", o.summary());
            o.wrong.iter().map(|w| w.got.clone()).collect::<Vec<_>>()
        };
        let named = if profile.pools_transactions() {
            "Supavisor / Supavisor"
        } else {
            "Supavisor - <the client's> / Supavisor - <the client's>"
        };
        assert_eq!(got(&name), [named], "{profile}");
        assert_eq!(got(&zone), ["Asia/Tokyo (dropped)"]);
        assert_eq!(got(&tenant), ["NULL (dropped)"]);
    } else {
        assert!(name.passed(), "{profile}: {}", name.first_problem());
        assert_eq!(name.note.as_deref(), Some("the client's"));
        assert!(zone.passed(), "{profile}: {}", zone.first_problem());
        assert_eq!(zone.note.as_deref(), Some("applied"));
    }
    if profile == Profile::NoPooler {
        assert!(tenant.passed(), "{}", tenant.first_problem());
        assert_eq!(tenant.note.as_deref(), Some("applied"));
    } else if !staged {
        assert!(tenant.wrong.is_empty(), "{profile}: refused, not dropped");
        let refusal = &tenant.failures[0];
        assert_eq!(refusal.code.as_deref(), Some("08P01"), "{refusal}");
        assert_eq!(
            refusal.message, "unsupported startup parameter in options: app.tenant",
            "{profile}"
        );
    }
    for probe in [
        PoolerProbe::ApplicationName,
        PoolerProbe::StartupTimeZone,
        PoolerProbe::OptionsCustomSetting,
        PoolerProbe::TopLevelCustomSetting,
    ] {
        let verdict = not_reproduced(Behaviour::Pooler(probe), profile);
        assert_eq!(verdict, None, "{profile}: {probe}");
    }
    db.close().await.unwrap();
}

/// Item 3: the session-mode limit as a probe: 16 clients at once, 15
/// connect and client 16 is refused at once, with Supavisor's words (the
/// stage translates PgBouncer's client cap: FATAL `XX000 (EMAXCONNSESSION)
/// max clients reached in session mode`); behind the
/// transaction profiles all 16 connect, as behind Supavisor's transaction mode.
#[rstest]
#[tokio::test]
async fn client_16_is_refused_at_once_only_in_session_mode(
    #[values(Profile::SupabaseSession, Profile::SupabaseShared)] profile: Profile,
) {
    let db = db_behind(profile).await;
    let pooled = db.connect_options();
    let target = PoolerTarget {
        pooled: &pooled,
        direct: None,
    };
    let o = run_pooler_probe(PoolerProbe::SessionLimit, target)
        .await
        .unwrap();
    assert_eq!(o.clients, 16);
    let verdict = not_reproduced(Behaviour::Pooler(PoolerProbe::SessionLimit), profile);
    if profile == Profile::SupabaseSession {
        assert_eq!(o.failures.len(), 1, "15 connected: {}", o.summary());
        let refusal = &o.failures[0];
        assert_eq!(refusal.code.as_deref(), Some("XX000"), "{refusal}");
        assert_eq!(
            refusal.message,
            "(EMAXCONNSESSION) max clients reached in session mode - max clients are limited \
             to pool_size: 15"
        );
        assert_eq!(verdict, None, "the stage says it in Supavisor's words");
    } else {
        assert!(o.passed(), "{}", o.summary());
        assert_eq!(verdict, None);
    }
    db.close().await.unwrap();
}
