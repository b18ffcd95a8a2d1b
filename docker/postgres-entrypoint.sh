#!/bin/bash
# Start a throw-away PostgreSQL: unpack the build-time cluster onto /pgdata
# (tmpfs), set the stack's password, run with durability off.
# POSTGRES_PASSWORD is the plain password (joining processes read it back);
# POSTGRES_PASSWORD_SCRAM, when set, is its SCRAM-SHA-256 verifier, which is
# what the role gets (PgBouncer holds the same one).
#
# Reaping: nothing inside a test process runs after SIGKILL, so this script
# (PID 1) watches for "leases", one connection per process using the stack:
# a direct one named `pgbf-lease pid N`, or a PgBouncer client named
# `pgbf-pooled-lease pid N` (see pgbf_leases below). When none has existed
# for PGBF_REAP_AFTER_SECS (after a start-up grace of PGBF_LEASE_GRACE_SECS),
# it stops the server (the grace applies only until the first lease is seen);
# the container was created with AutoRemove, so it
# vanishes, and the PgBouncer container sharing its network follows.
#
# Janitor: between runs (no lease for PGBF_JANITOR_SETTLE_SECS, no claim in
# the last 2 s), the same psql drops the databases processes handed over at
# exit (`pgbf_garbage`), rolls the claims of the run that ended
# (`pgbf_claims`) into the demand per template (`pgbf_demand`), and makes
# prepared clones (`pgbf_prepared`) up to that demand, at most
# PGBF_MAX_WARM_CLONES in all (0: none), in small batches (four drops, two
# clones), re-checking leases between batches. It stops as soon as a lease
# appears, and once it has nothing left to do it runs nothing more until a
# lease has come and gone (`/tmp/pgbf-leased` is newer than its mark).
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
secret="${POSTGRES_PASSWORD_SCRAM:-$POSTGRES_PASSWORD}"
case "$secret" in
  *[!A-Za-z0-9+/=:\$-]*) echo "pgbf-postgres: the password has characters outside [A-Za-z0-9+/=:\$-]" >&2; exit 2 ;;
esac
reap_after="${PGBF_REAP_AFTER_SECS:-0}"
grace="${PGBF_LEASE_GRACE_SECS:-30}"
warm_max="${PGBF_MAX_WARM_CLONES:-0}"
settle="${PGBF_JANITOR_SETTLE_SECS:-2}"
case "$reap_after$grace$warm_max$settle" in
  *[!0-9]*) echo "pgbf-postgres: PGBF_REAP_AFTER_SECS, PGBF_LEASE_GRACE_SECS, PGBF_MAX_WARM_CLONES and PGBF_JANITOR_SETTLE_SECS must be whole numbers" >&2; exit 2 ;;
esac
# On Docker's host network the crate picks the ports and the loopback
# address (PGBF_NETWORK=host); on the bridge the usual ports, every address
# of the container's own network.
port="${PGBF_PORT:-5432}"
pooler_port="${PGBF_POOLER_PORT:-6432}"
listen="${PGBF_LISTEN_ADDR:-*}"
case "$port$pooler_port" in
  *[!0-9]*) echo "pgbf-postgres: PGBF_PORT and PGBF_POOLER_PORT must be port numbers" >&2; exit 2 ;;
esac
# psql below finds the server's socket (/tmp/.s.PGSQL.<port>) by this.
export PGPORT="$port"
bin=/usr/lib/postgresql/17/bin
data=/pgdata/data
mkdir -m 700 "$data"
tar -C "$data" -xpf /var/lib/pgbf/cluster.tar
# TLS with the stack's own certificate (made by the crate per stack), as
# Supabase serves it: offered to all, required only with PGBF_REQUIRE_TLS=1
# (then PgBouncer reaches this server over TLS too; the socket stays open).
tls_flags=""
if [ -n "${PGBF_TLS_CERT:-}" ] && [ -n "${PGBF_TLS_KEY:-}" ]; then
  (umask 077 && printf '%s\n' "$PGBF_TLS_CERT" >/pgdata/tls.crt && printf '%s\n' "$PGBF_TLS_KEY" >/pgdata/tls.key)
  tls_flags="-c ssl=on -c ssl_cert_file=/pgdata/tls.crt -c ssl_key_file=/pgdata/tls.key"
  if [ "${PGBF_REQUIRE_TLS:-0}" = 1 ]; then
    printf '%s\n' 'local all all trust' 'hostssl all all all scram-sha-256' >"$data/pg_hba.conf"
  fi
fi
# The janitor warms each clone it prepares: one connection through this
# stack's PgBouncer (dblink, from inside the server), so PgBouncer holds an
# idle server connection to it and the test that claims it pays no backend
# start. libpq in the server finds the password here, never in SQL text
# (which the JSON log below could record).
pw=${POSTGRES_PASSWORD//\\/\\\\}
(umask 077 && printf '127.0.0.1:%s:*:postgres:%s\n' "$pooler_port" "${pw//:/\\:}" >/pgdata/pgpass)
export PGPASSFILE=/pgdata/pgpass
# Errors, warnings and lock waits go to a JSON log the crate reads (with
# pg_read_file) to explain a failed test: each line names the session's
# database, application_name and SQLSTATE.
# The server's own locale is the databases' (initdb --locale=C.UTF-8): each
# backend's setlocale() for its database then finds it already loaded
# (inherited through fork) instead of reading the locale's files again.
# TimeZone is `UTC`, as on Supabase and as sqlx asks at every login: the
# name initdb found (`Etc/UTC`) made PgBouncer send `SET TimeZone='UTC'`
# before a test's first statement on every warmed server connection, which
# read the zone's file again (~0.85 ms of the server's time per test).
# Autovacuum's launcher starts a worker in each database that has seen a
# connection once per autovacuum_naptime, spread over the databases: with
# the janitor's ~100 warmed clones at the default 60 s that is a fork every
# ~0.6 s, most of an idle stack's CPU (0.72% of a core for both containers,
# 0.40% at 300 s, measured on one stack). A test's database lives seconds,
# far less than either interval, so tests see no difference.
# shellcheck disable=SC2086 # tls_flags is a list of words
LC_COLLATE=C.UTF-8 LC_CTYPE=C.UTF-8 "$bin/postgres" -D "$data" \
  -c listen_addresses="$listen" -c port="$port" \
  -c unix_socket_directories=/tmp \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c timezone=UTC -c log_timezone=UTC -c autovacuum_naptime=300s \
  -c max_connections="${POSTGRES_MAX_CONNECTIONS:-300}" \
  -c shared_buffers=128MB \
  -c log_min_messages=warning \
  -c logging_collector=on -c log_destination=jsonlog -c log_directory=/pgdata/log \
  -c log_filename=postgresql -c log_rotation_age=0 -c log_rotation_size=0 \
  -c log_min_error_statement=warning -c log_lock_waits=on -c deadlock_timeout=500ms \
  $tls_flags \
  "$@" &
pg=$!
# docker stop / Ctrl-C: fast shutdown of the server, then this script ends.
trap 'kill -INT "$pg" 2>/dev/null || true' INT TERM

# The role gets the stack's password once the server runs, through the
# socket (trust): the build-time cluster's role has none, so no TCP login
# can succeed before this. (Setting it first in single-user mode cost a
# whole extra server start.) On stdin, not in psql's arguments, where `ps`
# would show it.
# psql runs once the server accepts connections, which it says on the 8th
# line of postmaster.pid ("ready", what `pg_ctl -w` waits for): a psql
# tried earlier fails after its own start (~20 ms here, its binary and
# libraries read through the image's file system) and the pause after it.
# This wait forks nothing: the pause is a `read -t` on a pipe nobody
# writes (the watchdog's, below).
exec {tick}<> <(:)
pm_line=()
for ((waits = 0; waits < 4000; waits++)); do
  { mapfile -t -s 7 -n 1 pm_line <"$data/postmaster.pid"; } 2>/dev/null || true
  [[ ${pm_line[0]:-} == ready* ]] && break
  kill -0 "$pg" 2>/dev/null || break
  read -r -t 0.005 -u "$tick" _ || true
done
tries=0
until echo "ALTER ROLE postgres PASSWORD '$secret'" \
  | "$bin/psql" -h /tmp -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 >/dev/null 2>&1; do
  if ! kill -0 "$pg" 2>/dev/null || [ "$tries" -ge 1000 ]; then
    echo "pgbf-postgres: the server did not start (or the password could not be set)" >&2
    exit 1
  fi
  tries=$((tries + 1))
  sleep 0.02
done

# The watchdog spawns no process per second: one long-lived psql (the binary,
# not Debian's Perl wrapper) answers one query a second through a coprocess's
# pipes and is restarted when it dies; the pause is a `read -t 1` on a pipe
# nobody writes; the clock is bash's EPOCHSECONDS.
trap '' PIPE
psql_pid=
to_psql=
from_psql=
stop_psql() {
  [ -z "$psql_pid" ] || kill "$psql_pid" 2>/dev/null || true
  [ -z "$to_psql" ] || exec {to_psql}>&-
  [ -z "$from_psql" ] || exec {from_psql}<&-
  psql_pid= to_psql= from_psql=
}
start_psql() {
  stop_psql
  # (Silenced: bash warns that the previous coprocess "still exists" until
  # it has disposed of it, which it does lazily.)
  { coproc PSQL { exec "$bin/psql" -h /tmp -U postgres -d postgres -XAtq 2>/dev/null; }; } 2>/dev/null
  psql_pid=$PSQL_PID
  # Our own copies: bash closes the coprocess's fds when it reaps it.
  if [ -n "${PSQL[1]:-}" ] && [ -n "${PSQL[0]:-}" ]; then
    exec {to_psql}>&"${PSQL[1]}" {from_psql}<&"${PSQL[0]}"
    # The janitor's tables (the crate makes the same ones, if not there:
    # src/janitor.rs) and its plan; an error (a race with the crate, or a
    # server not yet up) ends in a missed answer and a new psql.
    printf '%s;\n' "${ddl[@]}" >&"$to_psql" 2>/dev/null || stop_psql
  fi
}
# The janitor's own logins to PgBouncer (on this machine) skip TLS, unless
# PgBouncer requires it: a handshake per warmed clone costs both sides.
janitor_tls=disable
[ "${PGBF_REQUIRE_TLS:-0}" = 1 ] && janitor_tls=require
# What the janitor runs on a clone's server connection before offering
# it, so that the test which claims it finds that backend's caches warm:
# the first statements on a table in a backend load its catalog entries
# (relation, indexes, defaults, types, operators, statistics), ~2.9 ms of a
# test's 5.6 ms body in the suite benchmark (the same body again on that
# connection: 2.8 ms). For each of the template's first 64 tables: a scan
# of no rows, the plan of an insert of its defaults, and for each of its
# first 16 columns the plan of an equality filter and a sort on it, and
# for a column of a string type (one with a collation) the plan of a
# prefix LIKE with that sort (planning the pattern compares strings under
# the column's collation, which the first statement to compare text would
# otherwise pay: in the suite benchmark's body, interleaved runs, the first
# run's excess over a second run 0.58-0.80 -> 0.42-0.61 ms). Plans only
# (EXPLAIN): nothing is written, no statistic moves; a statement a table
# cannot take (a column type without equality) is skipped. ~15 ms per
# clone (20 tables), between runs, where nobody waits for it. Kept under 1 kB with the `select 1` after it: pg_stat_activity
# shows a query's first 1024 bytes, where tests/provision_janitor.rs reads it.
warm_caches="do \$d\$ declare r record; c record; begin for r in select k.oid, k.oid::regclass as t from pg_class k join pg_namespace n on n.oid = k.relnamespace where k.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%' order by k.oid limit 64 loop execute format('select * from %s limit 0', r.t); begin execute format('explain insert into %s default values', r.t); exception when others then null; end; for c in select attname, attcollation from pg_attribute where attrelid = r.oid and attnum > 0 and not attisdropped order by attnum limit 16 loop begin execute format('explain select * from %1\$s where %2\$I = %2\$I order by %2\$I', r.t, c.attname); exception when others then null; end; if c.attcollation > 0 then begin execute format('explain select * from %1\$s where %2\$I like %3\$L order by %2\$I', r.t, c.attname, 'x%'); exception when others then null; end; end if; end loop; end loop; end \$d\$"
# Keep in step with TABLES in src/janitor.rs (a unit test checks).
ddl=(
  "create table if not exists pgbf_prepared (name text primary key, template text not null, made_at timestamptz not null default now())"
  "create table if not exists pgbf_garbage (name text primary key, queued_at timestamptz not null default now())"
  "create table if not exists pgbf_claims (template text not null, at timestamptz not null default now())"
  "create table if not exists pgbf_demand (template text primary key, claims integer not null, rolled_at timestamptz not null default now())"
  "create extension if not exists dblink"
  # True once PgBouncer holds an idle server connection to database \$1 (a
  # clone's name: pgbf_ and [a-z0-9_]), its caches warm; false, and no
  # error, when PgBouncer cannot be reached: the clone stays cold.
  "create or replace function pgbf_warm(text) returns boolean language plpgsql as \$w\$ begin if \$1 !~ '^pgbf_[a-z0-9_]+\$' then return false; end if; perform from dblink('host=127.0.0.1 port=$pooler_port user=postgres sslmode=$janitor_tls connect_timeout=5 application_name=pgbf-janitor dbname=' || \$1, \$q\$$warm_caches; select 1\$q\$) as t(x int); return true; exception when others then return false; end \$w\$"
  # Leases: each process's connection named `pgbf-lease pid N` straight to
  # this server (behind a session-mode PgBouncer), or named
  # `pgbf-pooled-lease pid N` through PgBouncer (otherwise: a login there
  # starts no backend here, a direct one costs ~4.5 ms of this server's
  # CPU). The pooled ones are PgBouncer's clients, read from its console
  # (`SHOW CLIENTS`, on one dblink connection kept open; its column count,
  # which differs between PgBouncer versions, is tried first as PgBouncer
  # 1.24's 21 or as found before, then found by trying each, and
  # each row matched whole, so no column is named); when PgBouncer cannot
  # be reached only the direct ones count: a stack without its PgBouncer is
  # of no use to anybody.
  "create or replace function pgbf_leases() returns int language plpgsql as \$l\$ declare direct int; pooled int; k int; cols text; begin select count(*) into direct from pg_stat_activity where application_name like 'pgbf-lease%'; begin if not coalesce('pgbf_console' = any(dblink_get_connections()), false) then perform dblink_connect('pgbf_console', 'host=127.0.0.1 port=$pooler_port user=postgres sslmode=$janitor_tls dbname=pgbouncer connect_timeout=2 application_name=pgbf-janitor'); end if; foreach k in array array_prepend(coalesce(nullif(current_setting('pgbf.console_columns', true), '')::int, 21), array(select generate_series(1, 64))) loop select string_agg('c' || i || ' text', ', ') into cols from generate_series(1, k) i; begin execute format('select count(*) from dblink(%L, %L) as t(%s) where t::text like %L', 'pgbf_console', 'show clients', cols, '%pgbf-pooled-lease pid %') into pooled; perform set_config('pgbf.console_columns', k::text, false); return direct + pooled; exception when datatype_mismatch then null; end; end loop; exception when others then begin perform dblink_disconnect('pgbf_console'); exception when others then null; end; end; return direct; end \$l\$"
  # Clones to make per template: the last run's claims less those ready,
  # for templates that still exist.
  "create or replace view pgbf_refill_todo as select d.template, greatest(0, d.claims - (select count(*) from pgbf_prepared p where p.template = d.template))::int as short from pgbf_demand d where exists (select from pg_database where datname = d.template and datistemplate)"
)
# No process uses the stack, nor has claimed in the last 2 s.
idle_sql="(select pgbf_leases()) = 0 and not exists (select from pgbf_claims where at > now() - interval '2 seconds')"
room_sql="greatest(0, least(2, $warm_max - (select count(*) from pgbf_prepared)))"
# One batch: four drops (their databases' connections, PgBouncer's idle
# server connections, are ended first: DROP .. WITH (FORCE) would wait
# 100 ms for each), the roll of finished runs' claims into the demand, two
# clones; then one line: the sequence number and what is left (0:
# nothing, 1: more to do now, 2: more, once the stack is idle).
janitor_batch() {
  cat <<SQL
select count(pg_terminate_backend(pid)) from pg_stat_activity where datname in (select name from pgbf_garbage order by queued_at limit 4) and $idle_sql
\g /dev/null
select format('DROP DATABASE IF EXISTS %I WITH (FORCE)', name), format('delete from pgbf_garbage where name = %L', name) from (select name from pgbf_garbage order by queued_at limit 4) g where $idle_sql
\gexec
with c as (delete from pgbf_claims where $idle_sql returning template), n as (select template, count(*)::int k from c group by template) insert into pgbf_demand as d (template, claims) select template, k from n on conflict (template) do update set claims = excluded.claims, rolled_at = now();
select format('CREATE DATABASE %I TEMPLATE %I STRATEGY FILE_COPY', n, t), format('select pgbf_warm(%L)', n), format('insert into pgbf_prepared (name, template) select %L, %L where exists (select from pg_database where datname = %L)', n, t, n) from (select t, 'pgbf_' || left('c' || substr(t, 10), 40) || '_' || left(md5(random()::text || clock_timestamp()::text), 10) as n from (select template t from pgbf_refill_todo, generate_series(1, short) i order by i, template) s limit $room_sql) p where $idle_sql
\gexec
select $1, case when not (exists (select from pgbf_garbage) or exists (select from pgbf_claims) or ($room_sql > 0 and exists (select from pgbf_refill_todo where short > 0))) then 0 when $idle_sql then 1 else 2 end;
SQL
}
seq=0
# Asks psql the question `$2 SEQ` writes (its answer's first column is SEQ,
# the next one the answer); sets `answer`. Answers of earlier, timed-out
# questions are skipped by their number. Fails, and stops psql, when psql
# is gone or gives no answer within $1 seconds.
ask() {
  local limit=$1 question=$2 got n
  seq=$((seq + 1))
  answer=
  [ -n "$to_psql" ] || return 1
  if ! "$question" "$seq" >&"$to_psql" 2>/dev/null; then
    stop_psql
    return 1
  fi
  while IFS='|' read -r -t "$limit" -u "$from_psql" got n; do
    if [ "$got" = "$seq" ]; then
      answer=$n
      return 0
    fi
  done
  stop_psql
  return 1
}
lease_question() {
  printf "select %d, pgbf_leases();\n" "$1"
}
# Sets `leases` (no subshell: `$(...)` would fork); 0 when psql cannot say,
# as when the per-second psql of earlier versions failed.
count_leases() {
  leases=0
  if [ -z "$psql_pid" ] || [ -z "$to_psql" ] || ! kill -0 "$psql_pid" 2>/dev/null; then
    start_psql
  fi
  if ask 5 lease_question; then
    leases=$answer
  fi
}
# One janitor batch; sets `janitor_left` (see janitor_batch; empty when psql
# could not say).
janitor_step() {
  janitor_left=
  if ask 30 janitor_batch; then
    janitor_left=$answer
  fi
}
janitor_mark=/tmp/pgbf-janitor-done

started=$EPOCHSECONDS
last_lease=$started
seen=0
dirty=0
budget=0
janitor_left=0
while kill -0 "$pg" 2>/dev/null; do
  # The janitor with work left goes on at once; otherwise one tick a second.
  [ "$janitor_left" = 1 ] || read -r -t 1 -u "$tick" _ || true
  janitor_left=0
  [ "$reap_after" -gt 0 ] || continue
  now=$EPOCHSECONDS
  count_leases
  # A lease too short for this 1 s poll still leaves its mark (a file the
  # lease holder writes with COPY): the start-up grace is over either way.
  if [ -e /tmp/pgbf-leased ]; then
    seen=1
    # A lease came since the janitor last finished: there may be work.
    if [ "$dirty" = 0 ] && { [ ! -e "$janitor_mark" ] || [ /tmp/pgbf-leased -nt "$janitor_mark" ]; }; then
      dirty=1
      budget=$((warm_max + 256))
    fi
  fi
  if [ "${leases:-0}" -gt 0 ] 2>/dev/null; then
    last_lease=$now
    seen=1
    dirty=1
    # Batches per idle period at most, so that a statement failing for
    # ever (a template in use) cannot keep the janitor busy.
    budget=$((warm_max + 256))
    continue
  fi
  if [ "$dirty" = 1 ] && [ $((now - last_lease)) -ge "$settle" ]; then
    janitor_step
    budget=$((budget - 1))
    if [ "$janitor_left" = 0 ] || [ "$budget" -le 0 ]; then
      : >"$janitor_mark"
      dirty=0
      janitor_left=0
    fi
  fi
  if { [ "$seen" = 1 ] || [ $((now - started)) -ge "$grace" ]; } \
    && [ $((now - last_lease)) -ge "$reap_after" ]; then
    echo "pgbf-postgres: no lease for ${reap_after} s: stopping (the stack is reaped)" >&2
    kill -INT "$pg" 2>/dev/null || true
    break
  fi
done
stop_psql
# `wait` returns early when a trapped signal arrives: wait until the server is gone.
status=0
while kill -0 "$pg" 2>/dev/null; do
  wait "$pg" || status=$?
done
exit "$status"
