-- The watchdog's decisions, one tick at a time: the entrypoint observes
-- (the clock, the lease count, the lease mark file), keeps the state
-- between ticks and acts on the answer; every decision is here, a pure
-- function of its arguments and the settings (settings.sql), so a test
-- drives it with a clock of its own (tests/contract_watchdog.rs).
--
-- Reaping: nothing inside a test process runs after SIGKILL, so the
-- stack watches its leases (leases.sql). When none has existed for
-- pgbf.reap_after_secs (after a start-up grace of pgbf.lease_grace_secs,
-- which applies only until the first lease is seen) the entrypoint stops
-- the server; the container was created with AutoRemove, so it vanishes,
-- and the PgBouncer container sharing its network follows.
--
-- Janitor: a lease makes the stack dirty; once no lease has existed for
-- pgbf.janitor_settle_secs the janitor runs batches (janitor-batch.sql)
-- until it has nothing left to do or has run its budget (batches per idle
-- period: a statement failing for ever, a template in use, cannot keep it
-- busy). Then it runs nothing more until a lease has come and gone: a
-- lease counted, or the lease mark (a file each lease holder writes, which
-- a lease too short for the 1 s poll leaves too) newer than the janitor's
-- own mark, which the entrypoint touches when told.

-- One tick at `at_secs` (seconds). State, as the last tick answered it
-- (`prev_`; at the start: `started`, false, false, 0): `started` (the
-- watchdog's start), `last_lease` (when a lease was last counted,
-- `started` at first), `seen` (a lease was seen: the grace is over),
-- `dirty` (the janitor may have work), `budget` (batches left in this
-- idle period). Observed:
-- `leases` (pgbf_leases()), `leased` (the lease mark exists), `fresh` (it
-- is newer than the janitor's mark, or that one does not exist yet),
-- `batch` (null: no batch ran since the last tick; else its answer, -1 for
-- none), `lease_mark_at` (when the lease mark was last written, seconds;
-- null: no mark). Answers the new state, `mark` (touch the janitor's mark now),
-- `reap_at` (the time from which, with no lease counted meanwhile, the
-- stack is reaped: the entrypoint holds to it when no tick answers) and
-- the action: `reap` (stop the server), `janitor` (run one batch, then
-- tick at once with its answer), or `wait` (tick again in a second).
create or replace function pgbf_tick(
  at_secs bigint, started bigint, prev_lease bigint, prev_seen boolean, prev_dirty boolean,
  prev_budget int, leases int, leased boolean, fresh boolean, batch int,
  lease_mark_at bigint,
  out action text, out last_lease bigint, out seen boolean, out dirty boolean,
  out budget int, out mark boolean, out reap_at bigint)
language plpgsql stable as $$
declare
  full_budget int := pgbf_setting('max_warm_clones', 0) + 256;
  reap_after int := pgbf_setting('reap_after_secs', 0);
begin
  last_lease := prev_lease;
  seen := prev_seen;
  dirty := prev_dirty;
  budget := prev_budget;
  mark := false;
  if leased then
    seen := true;
    -- A lease that began and ended between two ticks (a test process of
    -- a warm pool lives a fraction of a second) counts from its mark:
    -- else a stack used only by such processes is reaped mid-run, the
    -- bound counted from the last lease a tick happened to see.
    if lease_mark_at > last_lease then
      last_lease := least(lease_mark_at, at_secs);
    end if;
    if not dirty and fresh then
      dirty := true;
      budget := full_budget;
    end if;
  end if;
  if batch is not null then
    budget := budget - 1;
    if batch = 0 or budget <= 0 then
      mark := true;
      dirty := false;
    end if;
  end if;
  if leases > 0 then
    last_lease := at_secs;
    seen := true;
    dirty := true;
    budget := full_budget;
  end if;
  reap_at := case when seen then last_lease + reap_after
    else greatest(started + pgbf_setting('lease_grace_secs', 30), last_lease + reap_after) end;
  action := case
    when leases > 0 then 'wait'
    when at_secs >= reap_at then 'reap'
    when dirty and at_secs - last_lease >= pgbf_setting('janitor_settle_secs', 2)
      and (batch is null or batch = 1) then 'janitor'
    else 'wait'
  end;
end $$;
