-- Everything the watchdog and the janitor need, in the stack's `postgres`
-- database: run by the watchdog's psql each time it starts (`\i`). Each
-- statement makes or replaces its object, so running it again is harmless;
-- an error (a race with a process making the same tables) leaves the rest
-- to run.
\ir settings.sql
\ir tables.sql
\ir leases.sql
\ir janitor.sql
\ir watchdog.sql
