#!/bin/bash
# Start PgBouncer in the network namespace of the stack's PostgreSQL
# container (so it reaches it at 127.0.0.1:5432), with the configuration the
# crate passes in the environment.
#
# Reaping: when PostgreSQL is gone (killed, or stopped by its lease watchdog)
# this container has no reason to live: stop PgBouncer, and AutoRemove
# removes the container.
set -euo pipefail
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
: "${PGBF_PGBOUNCER_INI:?PGBF_PGBOUNCER_INI must be set}"
conf=/tmp/pgbf
mkdir -p "$conf"
chmod 700 "$conf"
printf '%s\n' "$PGBF_PGBOUNCER_INI" >"$conf/pgbouncer.ini"
# The SCRAM verifier when given: PgBouncer then checks logins without
# deriving keys and logs in to PostgreSQL with the client's proof.
printf '"postgres" "%s"\n' "${POSTGRES_PASSWORD_SCRAM:-$POSTGRES_PASSWORD}" >"$conf/userlist.txt"
chmod 600 "$conf/userlist.txt"

pgbouncer "$conf/pgbouncer.ini" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' INT TERM

# Both containers start together: misses count once PostgreSQL was seen,
# or after a minute without ever seeing it.
#
# No process per second: the watchdog keeps one TCP connection open to
# PostgreSQL and waits on it with bash's `read -t 1`, which returns at once
# when PostgreSQL goes (its end of the socket closes). PostgreSQL drops a
# connection that never logs in after 60 s (authentication_timeout): then
# it reconnects, a backend start a minute instead of one a second. Without
# a connection the pause is a `read -t 1` on a pipe nobody writes.
exec {tick}<> <(:)
conn=
# True while PostgreSQL accepts connections; takes about a second either way.
pg_alive() {
  local rc=0
  if [ -n "$conn" ]; then
    read -r -t 1 -u "$conn" _ || rc=$?
    # 0: it said something; > 128: timed out with the connection open.
    [ "$rc" -eq 1 ] || return 0
    exec {conn}<&-
    conn=
  fi
  if { exec {conn}<>/dev/tcp/127.0.0.1/5432; } 2>/dev/null; then
    return 0
  fi
  conn=
  read -r -t 1 -u "$tick" _ || true
  return 1
}
seen=0
misses=0
waited=0
while kill -0 "$pid" 2>/dev/null; do
  waited=$((waited + 1))
  if pg_alive; then
    seen=1
    misses=0
  elif [ "$seen" = 1 ] || [ "$waited" -ge 60 ]; then
    misses=$((misses + 1))
  fi
  if [ "$misses" -ge 2 ]; then
    echo "pgbf-pgbouncer: PostgreSQL is gone: stopping" >&2
    kill -INT "$pid" 2>/dev/null || true
    break
  fi
done
status=0
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid" || status=$?
done
exit "$status"
