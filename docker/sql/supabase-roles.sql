-- Supabase's cluster-wide roles, as a Supabase project's migrations and
-- policies name them (docs/supabase.md lists what is real and what is a
-- stand-in). Run once, when the image is built, in the `postgres`
-- database (supabase-base.sql). Roles belong to the cluster: every
-- database of the stack sees them, the bare ones too.
--
-- The Data API's roles: `anon` (no JWT), `authenticated` (a signed-in
-- user), `service_role` (the service key: row-level security bypassed).
-- Supabase made them INHERIT in 2023; they cannot log in.
create role anon nologin inherit;
create role authenticated nologin inherit;
create role service_role nologin inherit bypassrls;
-- PostgREST logs in as `authenticator` and switches to one of the three
-- per request (`SET LOCAL ROLE`): NOINHERIT, a member of each.
create role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;
-- Supabase's own superuser and the services' owners. No password: they
-- cannot log in over TCP here (pg_hba asks every TCP login for one).
create role supabase_admin login superuser createdb createrole replication bypassrls;
create role supabase_auth_admin login noinherit createrole;
create role supabase_storage_admin login noinherit createrole;
create role dashboard_user nosuperuser createdb createrole replication;
-- `postgres` stays a superuser here (a stand-in: on Supabase it is
-- NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS): the stack's
-- watchdog, janitor and log reading need what only a superuser has.
-- Search paths as on Supabase: extensions resolve without a schema name.
alter role postgres set search_path = "$user", public, extensions;
alter role supabase_admin set search_path = "$user", public, auth, extensions;
alter role supabase_auth_admin set search_path = auth;
alter role supabase_storage_admin set search_path = storage;
-- Applied at login as these roles (not after SET ROLE), as on Supabase.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
