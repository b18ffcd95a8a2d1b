-- The Supabase-shaped base database, `pgbf_supabase`: made once, when the
-- image is built (postgres.Dockerfile), with psql in the `postgres`
-- database. Every test database and template of the Supabase profiles is
-- a copy of it (`CREATE DATABASE .. TEMPLATE pgbf_supabase`), so a test
-- pays nothing for the shape; the bare template1 stays as initdb made it.
\set ON_ERROR_STOP 1
\ir supabase-roles.sql
create database pgbf_supabase;
\connect pgbf_supabase
\ir supabase-schema.sql
\connect postgres
-- Copied, never used: no session may hold it open (cloning would wait).
alter database pgbf_supabase with is_template true allow_connections false;
comment on database pgbf_supabase is 'pgbouncer-fixtures: the Supabase-shaped base of test databases';
