//! Explanations for authorization failures (docs/explanations.md): a
//! statement refused with 42501 is explained with the role and claims of
//! the ActAs that began its transaction, the table's row-level security,
//! privileges and policies, and what to check; a test that acted as a Data
//! API role and panics prints the roles, claims and policies in effect.
//! Against the real stack, with the Supabase project of
//! tests/fixtures/supabase-project.
//!
//! The panic scenario is an `#[ignore]`d test of this binary that fails on
//! purpose; the real test runs it in a child process and reads its stderr.

mod common;

use std::process::Command;

use common::{password_of, supabase_project_builder, supabase_project_template};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{ActAs, Profile, StackSettings, Target, TestDb};
use rstest::rstest;
use serde_json::json;

const CHILD: &str = "PGBF_EXPLAIN_AUTHORIZATION_CHILD";
const REFUSED: &str = "pgbouncer-fixtures: refused for lack of authorization in";
const CONTEXT: &str = "pgbouncer-fixtures: roles and policies in effect in";

async fn project_db(profile: Profile) -> TestDb {
    supabase_project_builder()
        .profile(profile)
        .build()
        .await
        .unwrap()
}

/// Runs `sql` ($1 bound) as `who` and returns the SQLSTATE it was refused with.
async fn refused_code(db: &TestDb, who: &ActAs, sql: &'static str, arg: &str) -> String {
    common::refused_as(db, who, sql, arg).await.0
}

/// The texts PostgreSQL gives a policy's expressions (USING, WITH CHECK).
async fn policy_text(db: &TestDb, name: &str) -> (Option<String>, Option<String>) {
    let mut conn = db.connect_direct().await.unwrap();
    sqlx::query_as("select qual, with_check from pg_policies where policyname = $1")
        .bind(name)
        .persistent(false)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The explanation of `db`'s authorization failures, as printed.
async fn explained(db: &TestDb) -> String {
    let explanation = db
        .explain_authorization()
        .await
        .unwrap()
        .expect("a stack of the crate's");
    assert!(!explanation.is_empty(), "something to explain");
    explanation.to_string()
}

#[rstest]
#[tokio::test]
async fn a_forged_insert_is_explained_with_the_role_the_sub_the_policy_and_its_check(
    #[values(Profile::SupabaseShared, Profile::NoPooler)] profile: Profile,
) {
    let db = project_db(profile).await;
    let alice = db
        .create_user("alice@example.com", json!({}))
        .await
        .unwrap();
    let bob = db.create_user("bob@example.com", json!({})).await.unwrap();
    // Bob writes a note owned by Alice.
    let forged = "insert into public.notes (owner_id, body) values ($1::uuid, 'forged')";
    assert_eq!(
        refused_code(&db, &bob.act_as(), forged, &alice.id).await,
        "42501"
    );
    // Alice acts after him: the refusal is still Bob's transaction's.
    let mut conn = db.connect().await.unwrap();
    let tx = alice.act_as().begin(&mut conn).await.unwrap();
    tx.rollback().await.unwrap();

    let text = explained(&db).await;
    let block = &text[text.find(REFUSED).expect("the refusal block")..];
    let refusal = &block[..block.find(CONTEXT).unwrap_or(block.len())];
    let (_, check) = policy_text(&db, "insert your own notes").await;
    for words in [
        "42501 new row violates row-level security policy for table \"notes\" (once)",
        "statement: insert into public.notes (owner_id, body) values ($1::uuid, 'forged')",
        &format!(
            "acting as: role `authenticated`, claims {}",
            bob.act_as().claims()
        ),
        &format!(
            "auth.uid() = {} (the ActAs that began this transaction)",
            bob.id
        ),
        "table public.notes: owner postgres; row-level security on (not forced); \
         `authenticated` has SELECT yes, INSERT yes, UPDATE yes, DELETE yes",
        &format!(
            "policy \"insert your own notes\" (permissive, for INSERT, to authenticated; \
             applies to the role) WITH CHECK ({})",
            check.expect("the policy has a WITH CHECK")
        ),
        &format!("auth.uid() is {}, the `sub` claim", bob.id),
        "service_role bypasses row-level security",
    ] {
        assert!(refusal.contains(words), "names {words:?}:\n{refusal}");
    }
    assert!(
        !refusal.contains(&alice.act_as().claims().to_string()),
        "Alice's later ActAs is not the refused one:\n{refusal}"
    );
    // The roles in effect: the last ActAs is Alice's, Bob's came before.
    let context = &text[text.find(CONTEXT).expect("the context block")..];
    assert!(
        context.contains(&format!(
            "acting as: role `authenticated`, claims {}; auth.uid() = {} (the last ActAs",
            alice.act_as().claims(),
            alice.id
        )),
        "{context}"
    );
    assert!(
        context.contains(&bob.id),
        "names Bob's earlier ActAs: {context}"
    );
}

#[tokio::test]
async fn a_missing_grant_is_explained_with_the_grant_to_add() {
    let db = project_db(Profile::SupabaseShared).await;
    let alice = db
        .create_user("alice@example.com", json!({}))
        .await
        .unwrap();
    let mut direct = db.connect_direct().await.unwrap();
    sqlx::raw_sql(
        "create table public.secrets (id int primary key); \
         revoke all on public.secrets from authenticated",
    )
    .execute(&mut direct)
    .await
    .unwrap();
    let read = "select * from public.secrets where $1::text is not null";
    assert_eq!(refused_code(&db, &alice.act_as(), read, "x").await, "42501");
    // anon may read notes only (the project's migration revokes the rest).
    let write = "insert into public.notes (owner_id, body) values ($1::uuid, 'anon')";
    assert_eq!(
        refused_code(&db, &ActAs::anon(), write, &alice.id).await,
        "42501"
    );
    // A role set by hand, not by ActAs: the explanation says it cannot see it.
    let mut conn = db.connect().await.unwrap();
    let by_hand = sqlx::raw_sql("begin; set local role authenticated; delete from public.secrets")
        .execute(&mut conn)
        .await
        .expect_err("authenticated may not delete");
    assert_eq!(
        by_hand
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("42501")
    );
    drop(conn);

    let text = explained(&db).await;
    let block = &text[text.find(REFUSED).expect("the refusal block")..];
    for words in [
        "statement: begin; set local role authenticated; delete from public.secrets",
        "acting as: no ActAs began this transaction; its session logged in as `postgres` (a \
         `SET ROLE` of its own is not seen here: the facts below are that role's)",
        "the role in effect is not known here: if the transaction set one (`SET ROLE`), grant it \
         the privilege: `grant delete on secrets to <that role>;`",
        "42501 permission denied for table secrets (once)",
        "table public.secrets: owner postgres; row-level security off; `authenticated` has \
         SELECT no, INSERT no, UPDATE no, DELETE no",
        "grant the privilege: `grant select on public.secrets to authenticated;`",
        "42501 permission denied for table notes (once)",
        "acting as: role `anon`, claims {\"role\":\"anon\"}; auth.uid() = null (no sub claim)",
        "`anon` has SELECT yes, INSERT no, UPDATE no, DELETE no",
        "grant the privilege: `grant insert on public.notes to anon;`",
    ] {
        assert!(block.contains(words), "names {words:?}:\n{block}");
    }
    assert_eq!(
        db.explain_authorization()
            .await
            .unwrap()
            .unwrap()
            .refusal_count(),
        3
    );
}

#[tokio::test]
async fn a_test_that_never_acted_or_was_refused_has_nothing_to_explain() {
    let db = project_db(Profile::SupabaseShared).await;
    let mut conn = db.connect().await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from public.notes")
        .persistent(false)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2, "the seed's notes, read as postgres (the owner)");
    let explanation = db.explain_authorization().await.unwrap().unwrap();
    assert!(explanation.is_empty(), "{explanation}");
    assert_eq!(explanation.to_string(), "");
}

#[cfg(feature = "tokio-postgres")]
#[tokio::test]
async fn a_forged_tokio_postgres_insert_is_explained_with_the_role_and_the_sub() {
    let db = project_db(Profile::SupabaseShared).await;
    let alice = db
        .create_user("alice@example.com", json!({}))
        .await
        .unwrap();
    let bob = db.create_user("bob@example.com", json!({})).await.unwrap();
    let mut client = db.connect_tokio_postgres().await.unwrap();
    let tx = bob
        .act_as()
        .begin_tokio_postgres(&mut client)
        .await
        .unwrap();
    let err = tx
        .batch_execute(&format!(
            "insert into public.notes (owner_id, body) values ('{}', 'forged')",
            alice.id
        ))
        .await
        .expect_err("a forged insert");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    drop(tx);

    let text = explained(&db).await;
    for words in [
        "42501 new row violates row-level security policy for table \"notes\"",
        &format!(
            "acting as: role `authenticated`, claims {}",
            bob.act_as().claims()
        ),
        &format!(
            "auth.uid() = {} (the ActAs that began this transaction)",
            bob.id
        ),
        "policy \"insert your own notes\"",
    ] {
        assert!(text.contains(words), "names {words:?}:\n{text}");
    }
}

// ---- the scenario: fails on purpose (when run as a child) ----

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test]
async fn scenario_anon_sees_no_private_note() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let db = supabase_project_builder().build().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    let mut tx = ActAs::anon().begin(&mut conn).await.unwrap();
    let bodies: Vec<String> =
        sqlx::query_scalar("select body from public.notes where not is_public")
            .persistent(false)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    // Fails: the policy shows anon the public notes only.
    assert_eq!(bodies, ["a private note of the seeded user"]);
}

#[tokio::test]
async fn a_failed_assertion_after_acting_prints_the_roles_claims_and_policies() {
    let run_id = common::unique_run_id("explain-authz");
    let settings = Profile::SupabaseShared.apply(StackSettings::default().with_run_id(&run_id));
    let parent = TestDb::builder()
        .target(Target::Containers(settings))
        .template(supabase_project_template())
        .test_name("explain_authorization_parent")
        .build()
        .await
        .unwrap();
    let r = run_id.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "scenario_anon_sees_no_private_note",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("PGBF_PROFILE", Profile::SupabaseShared.name())
            .env("PGBF_RUN_ID", r)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the scenario fails: {stderr}");
    assert_eq!(stderr.matches(CONTEXT).count(), 1, "printed once: {stderr}");
    assert!(!stderr.contains(REFUSED), "nothing was refused: {stderr}");
    let block = &stderr[stderr.find(CONTEXT).unwrap()..];
    let (using, _) = policy_text(&parent, "public notes and your own").await;
    for words in [
        "`scenario_anon_sees_no_private_note` (may explain rows a query did not see; which \
         tables the failing assertion's query read is not checked)",
        "acting as: role `anon`, claims {\"role\":\"anon\"}; auth.uid() = null (no sub claim) \
         (the last ActAs of this test)",
        "table public.notes: owner postgres; row-level security on (not forced); `anon` has \
         SELECT yes, INSERT no",
        &format!(
            "policy \"public notes and your own\" (permissive, for SELECT, to anon, \
             authenticated; applies to the role) USING ({})",
            using.expect("the policy has a USING")
        ),
        "policy \"insert your own notes\" (permissive, for INSERT, to authenticated; not for \
         the role)",
        "auth.uid() is null here: the claims carry no `sub` (role `anon`)",
        "table public.profiles:",
        "public.profiles: no SELECT policy applies to `anon`: it sees none of its rows",
    ] {
        assert!(block.contains(words), "names {words:?}:\n{block}");
    }
    assert!(!stderr.contains(&password_of(parent.url())), "no password");
    parent.close().await.unwrap();
}
