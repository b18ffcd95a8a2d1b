-- The janitor: between runs it drops the databases processes handed over
-- at exit (`pgbf_garbage`), rolls the claims of the run that ended
-- (`pgbf_claims`) into the demand per template (`pgbf_demand`), and makes
-- prepared clones (`pgbf_prepared`) up to that demand, at most
-- pgbf.max_warm_clones in all, in small batches (four drops, two clones):
-- janitor-batch.sql runs one batch with these functions. Every step goes
-- ahead only while the stack is idle (pgbf_idle), re-checked per step.
-- Needs tables.sql, settings.sql and leases.sql.

-- What the janitor runs on a clone's server connection before offering
-- it, so that the test which claims it finds that backend's caches warm:
-- the first statements on a table in a backend load its catalog entries
-- (relation, indexes, defaults, types, operators, statistics), ~2.9 ms of
-- a test's 5.6 ms body in the suite benchmark. For each of the template's
-- first 64 tables: a scan of no rows, the plan of an insert of its
-- defaults, and for each of its first 16 columns the plan of an equality
-- filter and a sort on it, and for a column with a collation the plan of a
-- prefix LIKE with that sort (planning the pattern compares strings under
-- the column's collation, which the test's first statement to compare text
-- would otherwise pay). Plans only (EXPLAIN): nothing is written, no
-- statistic moves; a statement a table cannot take is skipped. ~15 ms per
-- clone (20 tables), between runs. One line, under 1 kB with the `select 1`
-- after it: pg_stat_activity shows a query's first 1024 bytes, where
-- tests/provision_janitor.rs reads it.
create or replace function pgbf_warm_sql() returns text
language sql immutable as $sql$
  select $q$do $d$ declare r record; c record; begin for r in select k.oid, k.oid::regclass as t from pg_class k join pg_namespace n on n.oid = k.relnamespace where k.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\_toast%' order by k.oid limit 64 loop execute format('select * from %s limit 0', r.t); begin execute format('explain insert into %s default values', r.t); exception when others then null; end; for c in select attname, attcollation from pg_attribute where attrelid = r.oid and attnum > 0 and not attisdropped order by attnum limit 16 loop begin execute format('explain select * from %1$s where %2$I = %2$I order by %2$I', r.t, c.attname); exception when others then null; end; if c.attcollation > 0 then begin execute format('explain select * from %1$s where %2$I like %3$L order by %2$I', r.t, c.attname, 'x%'); exception when others then null; end; end if; end loop; end loop; end $d$; select 1$q$
$sql$;

-- Warms clone `clone` (pgbf_ and [a-z0-9_]) through this stack's PgBouncer
-- (dblink, from inside the server): PgBouncer then holds an idle server
-- connection to it, its caches warm, and the test that claims it pays no
-- backend start. False, and no error, when PgBouncer cannot be reached:
-- the clone stays cold.
create or replace function pgbf_warm(clone text) returns boolean
language plpgsql as $$
begin
  if clone !~ '^pgbf_[a-z0-9_]+$' then
    return false;
  end if;
  perform from dblink(pgbf_pooler_conninfo(clone, 5), pgbf_warm_sql()) as t(x int);
  return true;
exception when others then
  return false;
end $$;

-- A new clone's name for template `pgbf_tpl_<hash>`: `pgbf_c<hash>_<10 hex>`,
-- as the crate's own clones are named (src/contract/mod.rs, clone_stem).
create or replace function pgbf_clone_name(tpl text) returns text
language sql volatile as $$
  select 'pgbf_' || left('c' || substr(tpl, 10), 40) || '_'
    || left(md5(random()::text || clock_timestamp()::text), 10)
$$;

-- Clones to make per template: the last run's claims less those ready,
-- for templates that still exist.
create or replace view pgbf_refill_todo as
  select d.template,
    greatest(0, d.claims - (select count(*) from pgbf_prepared p where p.template = d.template))::int as short
  from pgbf_demand d
  where exists (select from pg_database where datname = d.template and datistemplate);

-- No process uses the stack, nor has claimed in the last 2 s.
create or replace function pgbf_idle() returns boolean
language sql volatile as $$
  select pgbf_leases() = 0 and not exists (select from pgbf_claims where at > now() - interval '2 seconds')
$$;

-- Clones one batch may still make: two, within pgbf.max_warm_clones.
create or replace function pgbf_janitor_room() returns int
language sql stable as $$
  select greatest(0, least(2, pgbf_setting('max_warm_clones', 0) - (select count(*) from pgbf_prepared)))::int
$$;

-- A batch's drops, if the stack is idle: the first four handed-over
-- databases lose their connections (PgBouncer's idle server connections:
-- DROP .. WITH (FORCE) would wait 100 ms for each), then come the
-- statements that drop them and strike them off, for psql's \gexec (DROP
-- DATABASE cannot run inside a function).
create or replace function pgbf_janitor_drops() returns setof text
language plpgsql as $$
declare
  g record;
begin
  if not pgbf_idle() then
    return;
  end if;
  perform pg_terminate_backend(pid) from pg_stat_activity
    where datname in (select name from pgbf_garbage order by queued_at, name limit 4);
  for g in select name from pgbf_garbage order by queued_at, name limit 4 loop
    return next format('DROP DATABASE IF EXISTS %I WITH (FORCE)', g.name);
    return next format('delete from pgbf_garbage where name = %L', g.name);
  end loop;
end $$;

-- If the stack is idle: the claims of the run that ended become the
-- demand per template.
create or replace function pgbf_janitor_roll() returns void
language plpgsql as $$
begin
  if not pgbf_idle() then
    return;
  end if;
  with c as (delete from pgbf_claims returning template),
    n as (select template, count(*)::int k from c group by template)
  insert into pgbf_demand as d (template, claims) select template, k from n
    on conflict (template) do update set claims = excluded.claims, rolled_at = now();
end $$;

-- A batch's clones, if the stack is idle: per clone (templates in turn,
-- at most pgbf_janitor_room()), the statements that make it, warm it and
-- offer it, for psql's \gexec (CREATE DATABASE cannot run inside a
-- function).
create or replace function pgbf_janitor_clones() returns setof text
language plpgsql as $$
declare
  p record;
  n text;
begin
  if not pgbf_idle() then
    return;
  end if;
  for p in select template t from pgbf_refill_todo, generate_series(1, short) i
      order by i, template limit pgbf_janitor_room() loop
    n := pgbf_clone_name(p.t);
    return next format('CREATE DATABASE %I TEMPLATE %I STRATEGY FILE_COPY', n, p.t);
    return next format('select pgbf_warm(%L)', n);
    return next format('insert into pgbf_prepared (name, template) select %L, %L where exists (select from pg_database where datname = %L)', n, p.t, n);
  end loop;
end $$;

-- What is left after a batch: 0 nothing, 1 more to do now, 2 more, once
-- the stack is idle.
create or replace function pgbf_janitor_left() returns int
language sql volatile as $$
  select case
    when not (exists (select from pgbf_garbage) or exists (select from pgbf_claims)
      or (pgbf_janitor_room() > 0 and exists (select from pgbf_refill_todo where short > 0))) then 0
    when pgbf_idle() then 1
    else 2
  end
$$;
