#!/bin/sh
# Start a throw-away PostgreSQL: copy the build-time cluster onto /pgdata
# (tmpfs), set the stack's password, run with durability off.
# POSTGRES_PASSWORD is a plain alphanumeric password or a SCRAM-SHA-256
# verifier (what the crate passes, so that PgBouncer can hold the same one).
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
case "$POSTGRES_PASSWORD" in
  *[!A-Za-z0-9+/=:\$-]*) echo "pgbf-postgres: POSTGRES_PASSWORD has characters outside [A-Za-z0-9+/=:\$-]" >&2; exit 2 ;;
esac
bin=/usr/lib/postgresql/17/bin
data=/pgdata/data
cp -a /var/lib/pgbf/cluster "$data"
chmod 700 "$data"
echo "ALTER ROLE postgres PASSWORD '$POSTGRES_PASSWORD'" \
  | "$bin/postgres" --single -D "$data" -c fsync=off postgres >/dev/null
exec "$bin/postgres" -D "$data" \
  -c listen_addresses='*' \
  -c unix_socket_directories=/tmp \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections="${POSTGRES_MAX_CONNECTIONS:-300}" \
  -c shared_buffers=128MB \
  -c log_min_messages=warning \
  "$@"
