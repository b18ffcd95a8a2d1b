-- Gives the stack's role its password (the SCRAM verifier, or the plain
-- password), from the environment variable PGBF_ROLE_SECRET: never in
-- psql's arguments, where `ps` would show it.
\getenv secret PGBF_ROLE_SECRET
alter role postgres password :'secret';
