# shellcheck shell=bash
# shellcheck disable=SC2154 # bin, sql, pg, pause, ...: postgres-entrypoint.sh, which sources this
# The watchdog's process side, sourced by postgres-entrypoint.sh: one
# long-lived psql (the binary, not Debian's Perl wrapper) answers a tick a
# second through a coprocess's pipes and is restarted when it dies, so no
# process is spawned per second; the pause is a `read -t 1` on a pipe
# nobody writes; the clock is bash's EPOCHSECONDS. What a tick decides is
# pgbf_tick's (docker/sql/watchdog.sql): this file observes and acts.
trap '' PIPE
# The lease mark (each lease holder writes it), and the janitor's own.
lease_mark=/tmp/pgbf-leased
janitor_mark=/tmp/pgbf-janitor-done
psql_pid='' to_psql='' from_psql=''
stop_psql() {
  [ -z "$psql_pid" ] || kill "$psql_pid" 2>/dev/null || true
  [ -z "$to_psql" ] || exec {to_psql}>&-
  [ -z "$from_psql" ] || exec {from_psql}<&-
  psql_pid='' to_psql='' from_psql=''
}
# A new psql, which first loads (again) what the watchdog runs: setup.sql.
start_psql() {
  stop_psql
  # (Silenced: bash warns that the previous coprocess "still exists" until
  # it has disposed of it, which it does lazily.)
  { coproc PSQL { exec "$bin/psql" -h /tmp -U postgres -d postgres -XAtq 2>/dev/null; }; } 2>/dev/null
  # shellcheck disable=SC2153 # PSQL_PID: set by coproc
  psql_pid=$PSQL_PID
  # Our own copies: bash closes the coprocess's fds when it reaps it.
  if [ -n "${PSQL[1]:-}" ] && [ -n "${PSQL[0]:-}" ]; then
    exec {to_psql}>&"${PSQL[1]}" {from_psql}<&"${PSQL[0]}"
    printf '\\i %s\n' "$sql/setup.sql" 1>&"$to_psql" 2>/dev/null || stop_psql
  fi
}
# Sends psql the request $2 and sets `answer` to the rest of its answer,
# the line that starts with `$3|`. Fails, and stops psql, when psql is gone
# or gives no answer within $1 seconds: a late answer cannot be taken for
# the next one's, its psql is gone with it.
ask() {
  local limit=$1 request=$2 tag=$3 line
  answer=''
  [ -n "$to_psql" ] || return 1
  if ! printf '%s\n' "$request" 1>&"$to_psql" 2>/dev/null; then
    stop_psql
    return 1
  fi
  while IFS= read -r -t "$limit" -u "$from_psql" line; do
    if [[ $line == "$tag|"* ]]; then
      answer=${line#"$tag|"}
      return 0
    fi
  done
  stop_psql
  return 1
}

# The state as the last tick answered it (pgbf_tick's arguments and answer).
started=$EPOCHSECONDS
last_lease=$started seen=f dirty=f budget=0 batch=null action=wait mark=f
# Until a tick answers: the deadline pgbf_tick gives a stack with no lease
# seen. A tick that cannot be asked leaves the last deadline in force, as
# no lease counted.
reap_at=$((started + (grace > reap_after ? grace : reap_after)))

# One tick at $1: what the lease marks say, the lease count (in the
# request) and the last batch's answer in; the new state and action out.
tick_at() {
  local leased=f fresh=f new n
  # A lease too short for the 1 s poll still leaves its mark (a file the
  # lease holder writes with COPY); newer than the janitor's: work, maybe.
  if [ -e "$lease_mark" ]; then
    leased=t
    if [ ! -e "$janitor_mark" ] || [ "$lease_mark" -nt "$janitor_mark" ]; then
      fresh=t
    fi
  fi
  if [ -z "$psql_pid" ] || ! kill -0 "$psql_pid" 2>/dev/null; then
    start_psql
  fi
  ask 5 "select 'tick', * from pgbf_tick($1, $started, $last_lease, '$seen', '$dirty', $budget, pgbf_leases(), '$leased', '$fresh', $batch, extract(epoch from (pg_stat_file('$lease_mark', true)).modification)::bigint);" tick || return 1
  IFS='|' read -r -a new <<<"$answer"
  # An answer whose numbers are not numbers is none: the last deadline holds.
  for n in "${new[1]:-}" "${new[4]:-}" "${new[6]:-}"; do
    case "$n" in '' | *[!0-9-]*) return 1 ;; esac
  done
  action=${new[0]} last_lease=${new[1]} seen=${new[2]} dirty=${new[3]}
  budget=${new[4]} mark=${new[5]} reap_at=${new[6]} batch=null
  if [ "$mark" = t ]; then
    : >"$janitor_mark"
  fi
}

# Ticks until the server is gone or the tick says to stop it.
watch() {
  local now answered=$started unanswered=0
  while kill -0 "$pg" 2>/dev/null; do
    # After a janitor batch the next tick comes at once, with its answer.
    [ "$action" = janitor ] || read -r -t 1 -u "$pause" _ || true
    now=$EPOCHSECONDS
    if tick_at "$now"; then
      answered=$now
    else
      action='wait' unanswered=$((unanswered + 1))
    fi
    if [ "$action" = reap ] || [ "$now" -ge "$reap_at" ]; then
      # Why, in the container's log: a stack stopped early is then explained.
      echo "pgbf-postgres: no lease for ${reap_after} s: stopping (the stack is reaped;" \
        "last lease counted $((now - last_lease)) s ago, lease seen: $seen, last tick answered" \
        "$((now - answered)) s ago, $unanswered ticks unanswered, up $((now - started)) s)" >&2
      kill -INT "$pg" 2>/dev/null || true
      return 0
    fi
    if [ "$action" = janitor ]; then
      batch=-1
      if ask 30 "\\i $sql/janitor-batch.sql" batch; then
        batch=$answer
      fi
    fi
  done
}
