-- Leases: one connection per process using the stack, named
-- `pgbf-lease pid N` straight to this server (behind a session-mode
-- PgBouncer), or `pgbf-pooled-lease pid N` through PgBouncer (a login
-- there starts no backend here; a direct one costs ~4.5 ms of this
-- server's CPU). The names are src/contract/mod.rs's LEASE_APP and
-- POOLED_LEASE_APP.
create extension if not exists dblink;

-- The layout of PgBouncer's `SHOW CLIENTS` per PgBouncer version (major.
-- minor, as `SHOW VERSION` names it): its column count and the position
-- of `application_name`. dblink needs the result's column list; it is
-- written down here, per version, instead of being guessed. The image
-- installs Debian trixie's PgBouncer 1.24 (tests/contract_console.rs
-- checks this row against the stack's own PgBouncer, by column name).
-- A PgBouncer of another version (PGBF_PGBOUNCER_IMAGE) needs its row.
create or replace function pgbf_console_layout(version text, out columns int, out application_name int)
language sql immutable as $$
  select l.columns, l.application_name
  from (values ('1.24', 21, 19)) as l(version, columns, application_name)
  where l.version = substring(pgbf_console_layout.version from '(\d+\.\d+)')
$$;

-- The statement that counts the pooled leases on the console connection
-- `pgbf_console`, for the PgBouncer it answers for; an error names a
-- version without a layout.
create or replace function pgbf_console_count_sql() returns text
language plpgsql as $$
declare
  version text;
  layout record;
begin
  select v into version from dblink('pgbf_console', 'show version') as t(v text);
  select * into layout from pgbf_console_layout(version);
  if layout.columns is null then
    raise exception 'pgbf: no SHOW CLIENTS layout for %: pooled leases are not counted (docker/sql/leases.sql, pgbf_console_layout)', version;
  end if;
  return format('select count(*)::int from dblink(%L, %L) as t(%s) where c%s like %L',
    'pgbf_console', 'show clients',
    (select string_agg('c' || i || ' text', ', ') from generate_series(1, layout.columns) i),
    layout.application_name, 'pgbf-pooled-lease pid %');
end $$;

-- The leases now: the direct ones from pg_stat_activity, the pooled ones
-- from PgBouncer's console (one dblink connection, kept open with its
-- counting statement in the session setting `pgbf.console_count`). When
-- PgBouncer cannot be read only the direct ones count: a stack without
-- its PgBouncer is of no use to anybody.
create or replace function pgbf_leases() returns int
language plpgsql as $$
declare
  direct int;
  pooled int;
begin
  select count(*) into direct from pg_stat_activity where application_name like 'pgbf-lease%';
  begin
    if not coalesce('pgbf_console' = any(dblink_get_connections()), false) then
      perform set_config('pgbf.console_count', '', false);
      perform dblink_connect('pgbf_console', pgbf_pooler_conninfo('pgbouncer', 2));
      perform set_config('pgbf.console_count', pgbf_console_count_sql(), false);
    end if;
    execute current_setting('pgbf.console_count') into pooled;
    return direct + pooled;
  exception when others then
    begin
      perform dblink_disconnect('pgbf_console');
    exception when others then
      null;
    end;
  end;
  return direct;
end $$;
