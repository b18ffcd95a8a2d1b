#!/bin/bash
# Start PgBouncer in the network namespace of the stack's PostgreSQL
# container (so it reaches it at 127.0.0.1:PGBF_PORT, default 5432), with
# the configuration the crate passes in the environment.
#
# Reaping: when PostgreSQL is gone (killed, or stopped by its lease watchdog)
# this container has no reason to live (see below).
set -euo pipefail
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
: "${PGBF_PGBOUNCER_INI:?PGBF_PGBOUNCER_INI must be set}"
port="${PGBF_PORT:-5432}"
pooler_port="${PGBF_POOLER_PORT:-6432}"
case "$port$pooler_port" in
  *[!0-9]*) echo "pgbf-pgbouncer: PGBF_PORT and PGBF_POOLER_PORT must be port numbers" >&2; exit 2 ;;
esac
# PgBouncer's port as /proc/net/tcp writes it (6432: 1920).
pooler_hex=$(printf '%04X' "$pooler_port")
conf=/tmp/pgbf
mkdir -p "$conf"
chmod 700 "$conf"
printf '%s\n' "$PGBF_PGBOUNCER_INI" >"$conf/pgbouncer.ini"
# The SCRAM verifier when given: PgBouncer then checks logins without
# deriving keys and logs in to PostgreSQL with the client's proof.
printf '"postgres" "%s"\n' "${POSTGRES_PASSWORD_SCRAM:-$POSTGRES_PASSWORD}" >"$conf/userlist.txt"
chmod 600 "$conf/userlist.txt"
# The stack's TLS certificate (pgbouncer.ini names these files).
(umask 077 && printf '%s\n' "${PGBF_TLS_CERT:-}" >"$conf/tls.crt" \
  && printf '%s\n' "${PGBF_TLS_KEY:-}" >"$conf/tls.key" && printf '%s\n' "${PGBF_TLS_CA:-}" >"$conf/ca.crt")

# Starts PgBouncer once nobody listens on its port (state 0A in
# /proc/net/tcp; up to 15 s): a PgBouncer of an earlier start can still be
# on its way out, and a new one would fail to bind and exit.
start_pgbouncer() {
  for ((i = 0; i < 150; i++)); do
    grep -q "^ *[0-9]*: [0-9A-F]*:$pooler_hex [0-9A-F]*:0000 0A" /proc/net/tcp || break
    sleep 0.1
  done
  pgbouncer "$conf/pgbouncer.ini" &
  pid=$!
}
# SIGHUP restarts PgBouncer in place, as a pooler restart in production
# does: a safe shutdown (SIGINT) for up to 1 s, then SIGKILL, then a new
# process; clients lose their connections and new ones work once it is
# back. (`docker restart` would do the same, but Docker may remove an
# AutoRemove container that it restarts: its exit handling races the new
# start.)
# shellcheck disable=SC2317 # run by the HUP trap below
restart_pgbouncer() {
  kill -INT "$pid" 2>/dev/null || true
  for ((i = 0; i < 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "pgbf-pgbouncer: restarting PgBouncer (SIGHUP)" >&2
  start_pgbouncer
}
start_pgbouncer
trap 'kill -INT "$pid" 2>/dev/null || true' INT TERM
trap restart_pgbouncer HUP

# The crate starts this container in PostgreSQL's PID namespace as well as
# its network: when PostgreSQL's container ends (its PID 1 exits), the kernel
# kills every process of that namespace, this one included, and AutoRemove
# removes the container. Nothing runs per second for it.
#
# Started in a PID namespace of its own (this script is PID 1), it watches
# PostgreSQL itself, still without a process of its own per second: the
# pause is a `read -t 1` on a pipe nobody writes, the probe a connection
# bash opens and closes at once (never held: a connection that has not
# logged in holds up PostgreSQL's fast shutdown until its 60 s
# authentication_timeout). Misses count once PostgreSQL was seen, or after
# a minute without ever seeing it.
if [ "$$" = 1 ]; then
  exec {tick}<> <(:)
  seen=0
  misses=0
  waited=0
  while kill -0 "$pid" 2>/dev/null; do
    read -r -t 1 -u "$tick" _ || true
    waited=$((waited + 1))
    if { exec {probe}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
      exec {probe}>&-
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
fi
status=0
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid" || status=$?
done
exit "$status"
