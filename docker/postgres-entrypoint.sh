#!/bin/bash
# Start a throw-away PostgreSQL: unpack the build-time cluster onto /pgdata
# (tmpfs; its databases onto /pgdatabases when mounted), set the stack's
# password, run with durability off, and watch it.
# POSTGRES_PASSWORD is the plain password (joining processes read it back);
# POSTGRES_PASSWORD_SCRAM, when set, is its SCRAM-SHA-256 verifier, which is
# what the role gets (PgBouncer holds the same one).
#
# Process supervision only: the watchdog's and the janitor's SQL and every
# decision of theirs live in /usr/share/pgbf/sql (docker/sql/ in the crate;
# watchdog.sql says what reaping and the janitor do). This script starts
# the server, keeps one psql running, ticks once a second with what it
# observes, and acts on the answer: a janitor batch, or stopping the server.
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
bin="/usr/lib/postgresql/${PGBF_PG_MAJOR:-17}/bin"
sql=/usr/share/pgbf/sql
data=/pgdata/data
# The databases (base/) on a tmpfs of their own when the crate mounts one:
# a copy or a seed that fills it fails only its statement ("could not
# extend file", 53100). Everything else the server writes (WAL, commit
# status, the checkpoint's files) has /pgdata's room, so a full
# databases' tmpfs never PANICs the server. tar keeps the symlink.
databases=/pgdatabases
if [ -d "$databases" ] && [ -w "$databases" ]; then
  mkdir -m 700 "$data" "$databases/base"
  ln -s "$databases/base" "$data/base"
else
  mkdir -m 700 "$data"
fi
tar -C "$data" --keep-directory-symlink -xpf /var/lib/pgbf/cluster.tar
# TLS with the stack's own certificate (made by the crate per stack), as
# Supabase serves it: offered to all, required only with PGBF_REQUIRE_TLS=1
# (then PgBouncer reaches this server over TLS too; the socket stays open).
tls_flags=()
if [ -n "${PGBF_TLS_CERT:-}" ] && [ -n "${PGBF_TLS_KEY:-}" ]; then
  (umask 077 && printf '%s\n' "$PGBF_TLS_CERT" >/pgdata/tls.crt && printf '%s\n' "$PGBF_TLS_KEY" >/pgdata/tls.key)
  tls_flags=(-c ssl=on -c ssl_cert_file=/pgdata/tls.crt -c ssl_key_file=/pgdata/tls.key)
  if [ "${PGBF_REQUIRE_TLS:-0}" = 1 ]; then
    printf '%s\n' 'local all all trust' 'hostssl all all all scram-sha-256' >"$data/pg_hba.conf"
  fi
fi
# The janitor's own logins to PgBouncer (dblink, from inside the server)
# skip TLS unless PgBouncer requires it: a handshake per warmed clone costs
# both sides. libpq in the server finds the password here, never in SQL.
janitor_tls=disable
[ "${PGBF_REQUIRE_TLS:-0}" != 1 ] || janitor_tls=require
pw=${POSTGRES_PASSWORD//\\/\\\\}
(umask 077 && printf '127.0.0.1:%s:*:postgres:%s\n' "$pooler_port" "${pw//:/\\:}" >/pgdata/pgpass)
export PGPASSFILE=/pgdata/pgpass
# Errors, warnings and lock waits go to a JSON log the crate reads to
# explain a failed test. The server's own locale is the databases'
# (inherited through fork: no backend reads the locale's files again).
# TimeZone `UTC`, as on Supabase and as sqlx asks at every login: any other
# name made PgBouncer set it before a test's first statement. Autovacuum's
# launcher at 300 s: at 60 s it forked a worker every ~0.6 s across the
# janitor's warmed clones, most of an idle stack's CPU; a test's database
# lives seconds. The pgbf.* settings are the watchdog's (settings.sql).
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
  -c pgbf.reap_after_secs="$reap_after" -c pgbf.lease_grace_secs="$grace" \
  -c pgbf.max_warm_clones="$warm_max" -c pgbf.janitor_settle_secs="$settle" \
  -c pgbf.pooler_port="$pooler_port" -c pgbf.janitor_sslmode="$janitor_tls" \
  "${tls_flags[@]}" "$@" &
pg=$!
# docker stop / Ctrl-C: fast shutdown of the server, then this script ends.
trap 'kill -INT "$pg" 2>/dev/null || true' INT TERM

# The server accepts connections once postmaster.pid's 8th line says
# "ready" (what `pg_ctl -w` waits for); the pause forks nothing: a `read
# -t` on a pipe nobody writes. Then the role gets its password, through the
# socket (trust): no TCP login can succeed before this.
exec {pause}<> <(:)
pm_line=()
for ((waits = 0; waits < 4000; waits++)); do
  { mapfile -t -s 7 -n 1 pm_line <"$data/postmaster.pid"; } 2>/dev/null || true
  [[ ${pm_line[0]:-} == ready* ]] && break
  kill -0 "$pg" 2>/dev/null || break
  read -r -t 0.005 -u "$pause" _ || true
done
tries=0
until PGBF_ROLE_SECRET="$secret" "$bin/psql" -h /tmp -U postgres -d postgres -XAtq \
  -v ON_ERROR_STOP=1 -f "$sql/password.sql" >/dev/null 2>&1; do
  if ! kill -0 "$pg" 2>/dev/null || [ "$tries" -ge 1000 ]; then
    echo "pgbf-postgres: the server did not start (or the password could not be set)" >&2
    exit 1
  fi
  tries=$((tries + 1))
  sleep 0.02
done

# The watchdog (watchdog.sh), unless reaping is off.
# shellcheck source-path=SCRIPTDIR source=watchdog.sh
. /usr/local/lib/pgbf/watchdog.sh
if [ "$reap_after" -gt 0 ]; then
  watch || true
fi
stop_psql
# `wait` returns early when a trapped signal arrives: wait until the server is gone.
status=0
while kill -0 "$pg" 2>/dev/null; do
  wait "$pg" || status=$?
done
exit "$status"
