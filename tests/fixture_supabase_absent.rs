//! The rows of docs/supabase.md's table that tests/fixture_supabase.rs does
//! not check: what is absent is absent (no GoTrue tables but `auth.users`,
//! none of Supabase's services' extensions or schemas), the services'
//! login roles have no password and cannot log in, and the tables the
//! shape makes are owned and secured as the table says, and Realtime's
//! publication starts empty.

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::TestDb;
use sqlx::{Connection, PgConnection};

/// One column of rows, as text.
async fn column(conn: &mut PgConnection, sql: &'static str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(sql)
        .persistent(false)
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn supabases_services_and_gotrues_other_tables_are_absent() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    // What is there, so that an empty answer below is not a query gone wrong.
    assert_eq!(
        column(
            &mut conn,
            "select name::text from pg_available_extensions \
             where name in ('pgcrypto', 'pg_net', 'pg_cron', 'pg_graphql', 'supabase_vault', \
             'pgsodium') order by 1",
        )
        .await,
        ["pgcrypto"]
    );
    assert_eq!(
        column(
            &mut conn,
            "select nspname::text from pg_namespace where nspname in ('auth', 'net', 'cron', \
             'graphql', 'graphql_public', 'vault', 'realtime', 'supabase_functions') order by 1",
        )
        .await,
        ["auth"]
    );
    // GoTrue's tables: auth.users only (no identities, sessions, refresh tokens, ...).
    assert_eq!(
        column(
            &mut conn,
            "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = 'auth' and c.relkind in ('r', 'p', 'v') order by 1",
        )
        .await,
        ["users"]
    );
}

#[tokio::test]
async fn the_shapes_tables_are_owned_and_secured_as_on_supabase() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    assert_eq!(
        column(
            &mut conn,
            "select format('%s.%s owner=%s rls=%s', n.nspname, c.relname, \
             pg_get_userbyid(c.relowner), c.relrowsecurity) from pg_class c \
             join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname in ('auth', 'storage') and c.relkind = 'r' order by 1",
        )
        .await,
        [
            "auth.users owner=supabase_auth_admin rls=f",
            "storage.buckets owner=supabase_storage_admin rls=t",
            "storage.objects owner=supabase_storage_admin rls=t",
        ]
    );
    // Realtime's publication is there, with no table in it until a migration adds one.
    assert_eq!(
        column(
            &mut conn,
            "select p.pubname || ' ' || count(t.tablename)::text from pg_publication p \
             left join pg_publication_tables t on t.pubname = p.pubname group by p.pubname",
        )
        .await,
        ["supabase_realtime 0"]
    );
}

#[tokio::test]
async fn the_services_login_roles_have_no_password_and_cannot_log_in() {
    let db = TestDb::new().await.unwrap();
    let mut conn = db.connect_direct().await.unwrap();
    assert_eq!(
        column(
            &mut conn,
            "select rolname::text || ' ' || (rolpassword is null)::text from pg_authid \
             where rolcanlogin and rolname in ('authenticator', 'supabase_admin', \
             'supabase_auth_admin', 'supabase_storage_admin', 'postgres') order by 1",
        )
        .await,
        [
            "authenticator true",
            "postgres false",
            "supabase_admin true",
            "supabase_auth_admin true",
            "supabase_storage_admin true",
        ]
    );
    // Over TCP, with the password that lets postgres in: refused.
    let options = db.direct_connect_options().expect("a stack of the crate's");
    PgConnection::connect_with(&options)
        .await
        .expect("postgres logs in with these options")
        .close()
        .await
        .unwrap();
    for role in ["authenticator", "supabase_admin"] {
        let err = PgConnection::connect_with(&options.clone().username(role))
            .await
            .expect_err(role);
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("28P01"), "{role}: {err}");
    }
}
