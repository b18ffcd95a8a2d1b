-- The image's settings, as the entrypoint passes them to the server
-- (`-c pgbf.<name>=<value>` on postgres' command line: every session sees
-- them; a test sets them per session with `set pgbf.<name> = ...`).
--   pgbf.reap_after_secs     no lease for this long: the stack is reaped (0: never)
--   pgbf.lease_grace_secs    start-up grace, until the first lease is seen
--   pgbf.janitor_settle_secs no lease for this long: the janitor may run
--   pgbf.max_warm_clones     prepared clones at most, in all (0: none)
--   pgbf.pooler_port         this stack's PgBouncer, on 127.0.0.1
--   pgbf.janitor_sslmode     how the janitor's own logins to PgBouncer use TLS

-- A whole-number setting, `fallback` when unset or empty.
create or replace function pgbf_setting(name text, fallback int) returns int
language sql stable as $$
  select coalesce(nullif(current_setting('pgbf.' || name, true), '')::int, fallback)
$$;

-- The janitor's libpq connection string to this stack's PgBouncer, for
-- database `dbname`. The password comes from the server's PGPASSFILE,
-- never from SQL text (which the JSON log could record).
create or replace function pgbf_pooler_conninfo(dbname text, connect_timeout int) returns text
language sql stable as $$
  select format('host=127.0.0.1 port=%s user=postgres sslmode=%s connect_timeout=%s application_name=pgbf-janitor dbname=%s',
    pgbf_setting('pooler_port', 6432),
    coalesce(nullif(current_setting('pgbf.janitor_sslmode', true), ''), 'disable'),
    connect_timeout, dbname)
$$;
