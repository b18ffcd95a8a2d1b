-- The stack's bookkeeping tables in its `postgres` database, shared by the
-- crate's processes (src/provision/janitor.rs, src/provision/clones/on_stack.rs) and
-- the image's janitor. The one definition: the image runs this file at
-- start, the crate runs the same text (include_str!, src/contract/mod.rs)
-- when it finds the tables missing. One statement per line, each ending
-- with `;`: the crate runs them one at a time.
create table if not exists pgbf_prepared (name text primary key, template text not null, made_at timestamptz not null default now());
create table if not exists pgbf_garbage (name text primary key, queued_at timestamptz not null default now());
create table if not exists pgbf_claims (template text not null, at timestamptz not null default now());
create table if not exists pgbf_demand (template text primary key, claims integer not null, rolled_at timestamptz not null default now());
