//! Supabase-shaped databases (docs/supabase.md): every row of the docs'
//! table has its check here, against the real stack. A Supabase project's
//! folder (tests/fixtures/supabase-project) applied by `Template`, and
//! row-level security seen through the pooler as two users, as anon and
//! as service_role; the role and claims of one transaction reach neither
//! the next one nor another client.

mod common;

use common::{refused_as, supabase_project_builder};

use std::collections::BTreeSet;

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{ActAs, ApiRole, Error, Profile, Template, TestDb};
use rstest::rstest;
use serde_json::json;
use sqlx::{PgConnection, Row};

async fn project_db() -> TestDb {
    supabase_project_builder().build().await.unwrap()
}

/// One column of rows, as text.
async fn column(conn: &mut PgConnection, sql: &'static str) -> Vec<String> {
    sqlx::query_scalar::<_, Option<String>>(sql)
        .persistent(false)
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|v| v.unwrap_or_else(|| "<null>".into()))
        .collect()
}

/// What `who` sees of `sql` (one text column), in a transaction through
/// the pooler that is rolled back.
async fn seen_as(db: &TestDb, who: &ActAs, sql: &'static str) -> Vec<String> {
    let mut conn = db.connect().await.unwrap();
    let mut tx = who.begin(&mut conn).await.unwrap();
    let rows = column(&mut tx, sql).await;
    tx.rollback().await.unwrap();
    rows
}

/// Rows `who` changes with `sql` ($1 bound), committed.
async fn write_as(db: &TestDb, who: &ActAs, sql: &'static str, arg: &str) -> u64 {
    let mut conn = db.connect().await.unwrap();
    let mut tx = who.begin(&mut conn).await.unwrap();
    let done = sqlx::query(sql)
        .bind(arg)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected();
    tx.commit().await.unwrap();
    done
}

#[rstest]
#[tokio::test]
async fn the_roles_are_supabases_with_their_attributes_and_memberships(
    #[values(
        Profile::SupabaseShared,
        Profile::SupabaseDedicated,
        Profile::SupabaseSession,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = TestDb::for_profile(profile).await.unwrap();
    let mut conn = db.connect().await.unwrap();
    let roles = column(
        &mut conn,
        "select format('%s super=%s inherit=%s login=%s bypassrls=%s', rolname, rolsuper, \
         rolinherit, rolcanlogin, rolbypassrls) from pg_roles \
         where rolname in ('anon', 'authenticated', 'service_role', 'authenticator', \
         'supabase_admin', 'supabase_auth_admin', 'supabase_storage_admin', 'dashboard_user', 'postgres') \
         order by rolname",
    )
    .await;
    assert_eq!(
        roles,
        [
            "anon super=f inherit=t login=f bypassrls=f",
            "authenticated super=f inherit=t login=f bypassrls=f",
            "authenticator super=f inherit=f login=t bypassrls=f",
            "dashboard_user super=f inherit=t login=f bypassrls=f",
            // A stand-in: Supabase's `postgres` is not a superuser (docs/supabase.md).
            "postgres super=t inherit=t login=t bypassrls=t",
            "service_role super=f inherit=t login=f bypassrls=t",
            "supabase_admin super=t inherit=t login=t bypassrls=t",
            "supabase_auth_admin super=f inherit=f login=t bypassrls=f",
            "supabase_storage_admin super=f inherit=f login=t bypassrls=f",
        ]
    );
    let members = column(
        &mut conn,
        "select r.rolname::text from pg_auth_members m join pg_roles r on r.oid = m.roleid \
         join pg_roles u on u.oid = m.member where u.rolname = 'authenticator' order by 1",
    )
    .await;
    assert_eq!(members, ["anon", "authenticated", "service_role"]);
    assert_eq!(
        column(&mut conn, "select current_setting('search_path')").await,
        ["\"$user\", public, extensions"]
    );
}

#[tokio::test]
async fn auth_users_has_supabases_columns_and_types() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    let columns = column(
        &mut conn,
        "select column_name || ' ' || data_type from information_schema.columns \
         where table_schema = 'auth' and table_name = 'users' order by ordinal_position",
    )
    .await;
    let wanted = [
        "instance_id uuid",
        "id uuid",
        "aud character varying",
        "role character varying",
        "email character varying",
        "encrypted_password character varying",
        "email_confirmed_at timestamp with time zone",
        "invited_at timestamp with time zone",
        "confirmation_token character varying",
        "confirmation_sent_at timestamp with time zone",
        "recovery_token character varying",
        "recovery_sent_at timestamp with time zone",
        "email_change_token_new character varying",
        "email_change character varying",
        "email_change_sent_at timestamp with time zone",
        "last_sign_in_at timestamp with time zone",
        "raw_app_meta_data jsonb",
        "raw_user_meta_data jsonb",
        "is_super_admin boolean",
        "created_at timestamp with time zone",
        "updated_at timestamp with time zone",
        "phone text",
        "phone_confirmed_at timestamp with time zone",
        "phone_change text",
        "phone_change_token character varying",
        "phone_change_sent_at timestamp with time zone",
        "confirmed_at timestamp with time zone",
        "email_change_token_current character varying",
        "email_change_confirm_status smallint",
        "banned_until timestamp with time zone",
        "reauthentication_token character varying",
        "reauthentication_sent_at timestamp with time zone",
        "is_sso_user boolean",
        "deleted_at timestamp with time zone",
        "is_anonymous boolean",
    ];
    assert_eq!(columns, wanted);
    // confirmed_at is computed from the two confirmations, as on Supabase.
    let user = db.create_user("c@example.com", json!({})).await.unwrap();
    let confirmed = column(
        &mut conn,
        "select (confirmed_at = email_confirmed_at)::text from auth.users",
    )
    .await;
    assert_eq!(confirmed, ["true"], "{user:?}");
}

#[tokio::test]
async fn the_claims_functions_read_request_jwt_claims_and_the_older_settings() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    let sub = "8c1f5a0e-2b7d-4c7e-9c9e-1d2f3a4b5c6d";
    let who = ActAs::user(sub).claim("email", "u@example.com");
    let mut tx = who.begin(&mut conn).await.unwrap();
    let row = sqlx::query(
        "select auth.uid()::text, auth.role(), auth.email(), auth.jwt() ->> 'aal', \
         current_user::text, current_setting('request.jwt.claim.sub')",
    )
    .persistent(false)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let got: Vec<String> = (0..6).map(|i| row.get::<String, _>(i)).collect();
    assert_eq!(
        got,
        [
            sub,
            "authenticated",
            "u@example.com",
            "aal1",
            "authenticated",
            sub
        ]
    );
    // Only the JSON set (PostgREST 9+): the functions read it.
    sqlx::query(
        "select set_config('request.jwt.claim.sub', '', true), \
         set_config('request.jwt.claim.role', '', true), set_config('request.jwt.claim.email', '', true), \
         set_config('request.jwt.claims', '{\"sub\": \"11111111-1111-4111-8111-111111111111\", \
         \"role\": \"anon\", \"email\": \"j@example.com\"}', true)",
    )
    .persistent(false)
    .execute(&mut *tx)
    .await
    .unwrap();
    let json_only = column(
        &mut tx,
        "select concat_ws(' ', auth.uid(), auth.role(), auth.email(), auth.jwt() ->> 'email')",
    )
    .await;
    assert_eq!(
        json_only,
        ["11111111-1111-4111-8111-111111111111 anon j@example.com j@example.com"]
    );
    // The older per-claim setting wins where both are set, as Supabase's do.
    sqlx::query(
        "select set_config('request.jwt.claim.sub', '22222222-2222-4222-8222-222222222222', true)",
    )
    .persistent(false)
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        column(&mut tx, "select auth.uid()::text").await,
        ["22222222-2222-4222-8222-222222222222"]
    );
    tx.rollback().await.unwrap();
    // No claims at all: null, not an error.
    assert_eq!(
        column(
            &mut conn,
            "select concat_ws(',', auth.uid(), auth.role(), auth.email(), auth.jwt())"
        )
        .await,
        [""]
    );
}

#[tokio::test]
async fn extensions_live_in_their_schema_and_resolve_without_it() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    assert_eq!(
        column(
            &mut conn,
            "select extname || ' ' || extnamespace::regnamespace::text from pg_extension \
             where extname <> 'plpgsql' order by 1",
        )
        .await,
        ["pgcrypto extensions", "uuid-ossp extensions"]
    );
    assert_eq!(
        column(
            &mut conn,
            "select concat_ws(' ', uuid_generate_v4() is not null, gen_random_uuid() is not null, \
             crypt('pw', gen_salt('bf')) is not null, \
             (select pronamespace::regnamespace::text from pg_proc where proname = 'uuid_generate_v4'))",
        )
        .await,
        ["t t t extensions"]
    );
    // The other contrib extensions projects enable are there to create.
    for extension in [
        "citext",
        "pg_trgm",
        "hstore",
        "ltree",
        "btree_gin",
        "btree_gist",
        "cube",
        "fuzzystrmatch",
        "intarray",
        "unaccent",
        "tablefunc",
        "moddatetime",
        "pg_stat_statements",
        "pgrowlocks",
    ] {
        let sql = format!("create extension \"{extension}\" with schema extensions");
        sqlx::raw_sql(common::audited(&sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(
        column(
            &mut conn,
            "select ('Abc'::citext = 'aBC'::citext and similarity('abc', 'abd') > 0 \
         and ('a=>1'::hstore -> 'a') = '1' and 'a.b'::ltree @> 'a.b.c'::ltree)::text"
        )
        .await
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        ["true"]
    );
}

#[tokio::test]
async fn public_grants_by_default_to_the_three_roles_and_storage_helpers_answer() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    sqlx::raw_sql(
        "create table public.t (id serial primary key); create function public.f() returns int \
         language sql as 'select 1'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let grants = column(
        &mut conn,
        "select r || ' ' || has_table_privilege(r, 'public.t', 'select,insert,update,delete')::text \
         || ' ' || has_sequence_privilege(r, 'public.t_id_seq', 'usage')::text \
         || ' ' || has_function_privilege(r, 'public.f()', 'execute')::text \
         from unnest(array['anon', 'authenticated', 'service_role', 'authenticator']) r",
    )
    .await;
    assert_eq!(
        grants,
        [
            "anon true true true",
            "authenticated true true true",
            "service_role true true true",
            // authenticator gets them only by switching role (NOINHERIT);
            // functions are executable by PUBLIC, as on PostgreSQL.
            "authenticator false false true",
        ]
    );
    assert_eq!(
        column(
            &mut conn,
            "select concat_ws(' | ', storage.foldername('u1/photos/cat.png')::text, \
             storage.filename('u1/photos/cat.png'), storage.extension('u1/photos/cat.png'), \
             storage.extension('u1/README'), storage.foldername('top.txt')::text)",
        )
        .await,
        ["{u1,photos} | cat.png | png | README | {}"]
    );
    assert_eq!(
        column(&mut conn, "select pubname::text from pg_publication").await,
        ["supabase_realtime"]
    );
    assert_eq!(
        column(
            &mut conn,
            "select nspname::text || ' ' || nspowner::regrole::text from pg_namespace \
             where nspname in ('auth', 'extensions', 'storage') order by 1",
        )
        .await,
        [
            "auth supabase_auth_admin",
            "extensions postgres",
            "storage supabase_storage_admin"
        ]
    );
}

#[tokio::test]
async fn bare_postgres_is_template1_with_only_the_cluster_wide_roles() {
    let db = TestDb::builder().bare_postgres().build().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    assert_eq!(
        column(
            &mut conn,
            "select nspname::text from pg_namespace where nspname not like 'pg\\_%' \
             and nspname <> 'information_schema' order by 1",
        )
        .await,
        ["public"]
    );
    assert_eq!(
        column(&mut conn, "select extname::text from pg_extension").await,
        ["plpgsql"]
    );
    let err = db
        .create_user("x@example.com", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotSupabaseShaped { reason } if reason.contains("no auth.users")),
        "{err}"
    );
    // A template on template1 is not the one on the Supabase base.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0001_t.sql"), "create table t (id int);").unwrap();
    let template = Template::new().migrations_dir(dir.path());
    let bare = TestDb::builder()
        .bare_postgres()
        .template(template.clone())
        .build()
        .await
        .unwrap();
    let shaped = TestDb::builder().template(template).build().await.unwrap();
    let mut bare_conn = bare.connect().await.unwrap();
    let mut shaped_conn = shaped.connect().await.unwrap();
    let auth = "select count(*)::text from pg_namespace where nspname = 'auth'";
    assert_eq!(column(&mut bare_conn, auth).await, ["0"]);
    assert_eq!(column(&mut shaped_conn, auth).await, ["1"]);
}

#[tokio::test]
async fn a_supabase_project_applies_and_its_signup_trigger_makes_profiles() {
    let db = project_db().await;
    let mut conn = db.connect_direct().await.unwrap();
    // The seed ran after the migrations: its user got a profile.
    assert_eq!(
        column(&mut conn, "select display_name from public.profiles").await,
        ["Seeded"]
    );
    assert_eq!(
        column(
            &mut conn,
            "select id || ' ' || public::text from storage.buckets"
        )
        .await,
        ["avatars false"]
    );
    assert_eq!(
        column(
            &mut conn,
            "select schemaname || '.' || tablename from pg_publication_tables \
             where pubname = 'supabase_realtime'",
        )
        .await,
        ["public.notes"]
    );
    let alice = db
        .create_user("alice@example.com", json!({"display_name": "Alice"}))
        .await
        .unwrap();
    assert_eq!(
        column(
            &mut conn,
            "select display_name || ' ' || email::text from public.profiles order by 1"
        )
        .await,
        ["Alice alice@example.com", "Seeded seeded@example.com"]
    );
    assert_eq!(alice.user_metadata, json!({"display_name": "Alice"}));
    assert_eq!(alice.act_as().role(), ApiRole::Authenticated);
    assert_eq!(alice.act_as().claims()["email"], json!("alice@example.com"));
}

#[rstest]
#[tokio::test]
async fn each_user_sees_their_own_notes_anon_the_public_ones_service_role_all(
    #[values(Profile::SupabaseShared, Profile::SupabaseDedicated)] profile: Profile,
) {
    let db = supabase_project_builder()
        .profile(profile)
        .build()
        .await
        .unwrap();
    let alice = db
        .create_user("alice@example.com", json!({}))
        .await
        .unwrap();
    let bob = db.create_user("bob@example.com", json!({})).await.unwrap();
    let insert = "insert into public.notes (body) values ($1)";
    assert_eq!(
        write_as(&db, &alice.act_as(), insert, "alice's note").await,
        1
    );
    assert_eq!(write_as(&db, &bob.act_as(), insert, "bob's note").await, 1);
    let notes = "select body from public.notes order by body";
    let public = "a public note of the seeded user";
    assert_eq!(
        seen_as(&db, &alice.act_as(), notes).await,
        [public, "alice's note"]
    );
    assert_eq!(
        seen_as(&db, &bob.act_as(), notes).await,
        [public, "bob's note"]
    );
    assert_eq!(seen_as(&db, &ActAs::anon(), notes).await, [public]);
    assert_eq!(
        seen_as(&db, &ActAs::service_role(), notes).await,
        [
            "a private note of the seeded user",
            public,
            "alice's note",
            "bob's note"
        ]
    );
    // A note forged as Bob's: refused by the policy's check.
    let forged = "insert into public.notes (owner_id, body) values ($1::uuid, 'forged')";
    let (code, message) = refused_as(&db, &alice.act_as(), forged, &bob.id).await;
    assert_eq!(code, "42501");
    assert!(
        message.contains("new row violates row-level security policy"),
        "{message}"
    );
    // Anon has no insert grant at all.
    let (code, message) = refused_as(&db, &ActAs::anon(), insert, "anon's").await;
    assert_eq!(code, "42501");
    assert!(
        message.contains("permission denied for table notes"),
        "{message}"
    );
    // Bob's update of Alice's note changes nothing (the policy hides it).
    let update = "update public.notes set body = $1 where body = 'alice''s note'";
    assert_eq!(write_as(&db, &bob.act_as(), update, "taken").await, 0);
    assert_eq!(
        write_as(&db, &alice.act_as(), update, "alice's note, edited").await,
        1
    );
    // Storage: a user writes into their own folder only.
    let upload = "insert into storage.objects (bucket_id, name) values ('avatars', $1)";
    assert_eq!(
        write_as(
            &db,
            &alice.act_as(),
            upload,
            &format!("{}/me.png", alice.id)
        )
        .await,
        1
    );
    let (code, _) = refused_as(&db, &alice.act_as(), upload, &format!("{}/x.png", bob.id)).await;
    assert_eq!(code, "42501");
    let objects = "select name from storage.objects";
    assert_eq!(
        seen_as(&db, &alice.act_as(), objects).await,
        [format!("{}/me.png", alice.id)]
    );
    assert!(seen_as(&db, &bob.act_as(), objects).await.is_empty());
}

#[tokio::test]
async fn role_and_claims_reach_neither_the_next_transaction_nor_another_client() {
    let db = project_db().await;
    let alice = db
        .create_user("alice@example.com", json!({}))
        .await
        .unwrap();
    let state = "select concat_ws(' ', pg_backend_pid(), current_user, \
                 coalesce(nullif(current_setting('request.jwt.claims', true), ''), '-'), \
                 coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), '-'), \
                 coalesce(auth.uid()::text, '-'))";
    let mut conn = db.connect().await.unwrap();
    let mut tx = alice.act_as().begin(&mut conn).await.unwrap();
    let inside = column(&mut tx, state).await.remove(0);
    tx.commit().await.unwrap();
    let backend = inside.split(' ').next().unwrap().to_string();
    assert!(inside.contains(" authenticated {"), "{inside}");
    assert!(
        inside.ends_with(&format!("{} {}", alice.id, alice.id)),
        "{inside}"
    );
    // The same client's next transaction.
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    let next = column(&mut tx, state).await.remove(0);
    tx.commit().await.unwrap();
    assert!(next.ends_with(" postgres - - -"), "{next}");
    // Other clients of the pooler: they get the server connection Alice's
    // transaction ran on (PgBouncer hands out the last one used), clean.
    drop(conn);
    let mut backends = BTreeSet::new();
    for _ in 0..4 {
        let mut other = db.connect().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut other).await.unwrap();
        let seen = column(&mut tx, state).await.remove(0);
        tx.commit().await.unwrap();
        assert!(seen.ends_with(" postgres - - -"), "{seen}");
        backends.insert(seen.split(' ').next().unwrap().to_string());
    }
    assert!(
        backends.contains(&backend),
        "no other client reached backend {backend} (saw {backends:?}): the check proved nothing"
    );
}

#[tokio::test]
async fn a_migration_needing_a_missing_supabase_piece_names_it() {
    for (sql, named) in [
        (
            "create extension if not exists pg_net;",
            "pg_net (Database Webhooks' HTTP client)",
        ),
        ("select vault.create_secret('s');", "Vault's schema `vault`"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let migrations = dir.path().join("supabase/migrations");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(migrations.join("20240101000000_needs.sql"), sql).unwrap();
        let err = TestDb::builder()
            .template(Template::new().supabase_project(dir.path()))
            .build()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Template { .. }), "{text}");
        assert!(text.contains("20240101000000_needs.sql failed"), "{text}");
        assert!(text.contains(named), "{text}");
        assert!(text.contains("docs/supabase.md"), "{text}");
    }
}

#[tokio::test]
async fn on_a_shared_auth_users_the_users_a_test_made_go_with_it_and_nothing_else() {
    // A Supabase-shaped database standing in for a project reached through
    // TEST_DATABASE_URL: tests there get a schema each and share auth.users.
    let project = project_db().await;
    let env = pgbouncer_fixtures::Env::from_vars([
        ("TEST_DATABASE_URL", project.url().to_string()),
        ("TEST_DIRECT_URL", project.direct_url().unwrap().to_string()),
    ]);
    let mut admin = project.connect_direct().await.unwrap();
    let users = "select email::text from auth.users order by 1";
    for close in [true, false] {
        let test = TestDb::builder().env(env.clone()).build().await.unwrap();
        assert!(
            test.schema().is_some(),
            "a schema per test on an external target"
        );
        let made = test
            .create_user("external@example.com", json!({}))
            .await
            .unwrap();
        assert_eq!(
            column(&mut admin, users).await,
            ["external@example.com", "seeded@example.com"]
        );
        assert_eq!(
            made.app_metadata["pgbouncer_fixtures_test"],
            json!(test.test_name())
        );
        if close {
            test.close().await.unwrap();
        } else {
            drop(test);
        }
        // Dropped in the background: wait for it (the seeded user stays).
        let started = std::time::Instant::now();
        while column(&mut admin, users).await.len() != 1 {
            assert!(started.elapsed().as_secs() < 30, "the user was not deleted");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(column(&mut admin, users).await, ["seeded@example.com"]);
    }
}
