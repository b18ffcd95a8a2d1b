-- One janitor batch (janitor.sql), run by the watchdog's psql with `\i`:
-- only its last line is printed, `batch|<left>` (see pgbf_janitor_left).
\o /dev/null
select pgbf_janitor_drops() \gexec
select pgbf_janitor_roll();
select pgbf_janitor_clones() \gexec
\o
select 'batch', pgbf_janitor_left();
