//! The contract between the crate and its images, in one place: every
//! name, table, path and environment variable both sides use, and the SQL
//! the PostgreSQL image runs (`docker/sql/*.sql`, embedded here with
//! `include_str!` so that a test can load it into any PostgreSQL, and part
//! of the image's build context and so of its tag).
//!
//! The image's side (`docker/*.sh`) cannot import these: a unit test below
//! checks that the scripts and SQL files spell each shared value as it is
//! written here. Values only the image itself reads (the crate never spells
//! them at run time) are `cfg(test)`: they exist for that check. May use:
//! nothing of the crate but `error` (it sits near the bottom of the layers).

// ---- Environment variables the containers get ----------------------------

/// The stack's plain password (both containers; joining processes read it back).
pub(crate) const ENV_PASSWORD: &str = "POSTGRES_PASSWORD";
/// Its SCRAM-SHA-256 verifier: what the role and PgBouncer's userlist hold.
pub(crate) const ENV_PASSWORD_SCRAM: &str = "POSTGRES_PASSWORD_SCRAM";
/// `max_connections` of the stack's PostgreSQL (default 300).
#[cfg(test)]
pub(crate) const ENV_MAX_CONNECTIONS: &str = "POSTGRES_MAX_CONNECTIONS";
/// No lease for this many seconds: the stack stops itself (0: never).
pub(crate) const ENV_REAP_AFTER_SECS: &str = "PGBF_REAP_AFTER_SECS";
/// The start-up grace before the first lease, in seconds (default 30).
pub(crate) const ENV_LEASE_GRACE_SECS: &str = "PGBF_LEASE_GRACE_SECS";
/// Prepared clones the janitor keeps at most, in all (0: none).
pub(crate) const ENV_MAX_WARM_CLONES: &str = "PGBF_MAX_WARM_CLONES";
/// No lease for this many seconds: the janitor may run (default 2).
#[cfg(test)]
pub(crate) const ENV_JANITOR_SETTLE_SECS: &str = "PGBF_JANITOR_SETTLE_SECS";
/// The stack's memory budget in bytes, as its creator decided it: joining
/// processes read it back (the image itself does not read it).
pub(crate) const ENV_MEMORY_BUDGET: &str = "PGBF_MEMORY_BUDGET_BYTES";
/// `1`: PostgreSQL and PgBouncer accept TLS logins only.
pub(crate) const ENV_REQUIRE_TLS: &str = "PGBF_REQUIRE_TLS";
/// The stack's CA certificate (PEM).
pub(crate) const ENV_TLS_CA: &str = "PGBF_TLS_CA";
/// The stack's server certificate (PEM).
pub(crate) const ENV_TLS_CERT: &str = "PGBF_TLS_CERT";
/// The stack's server key (PEM).
pub(crate) const ENV_TLS_KEY: &str = "PGBF_TLS_KEY";
/// `host` on Docker's host network (the crate then picks ports and address).
pub(crate) const ENV_NETWORK: &str = "PGBF_NETWORK";
/// PostgreSQL's port (default 5432).
pub(crate) const ENV_PORT: &str = "PGBF_PORT";
/// PgBouncer's port (default 6432).
pub(crate) const ENV_POOLER_PORT: &str = "PGBF_POOLER_PORT";
/// PostgreSQL's `listen_addresses` (default `*`).
pub(crate) const ENV_LISTEN_ADDR: &str = "PGBF_LISTEN_ADDR";
/// The whole `pgbouncer.ini` the PgBouncer container writes and runs.
pub(crate) const ENV_PGBOUNCER_INI: &str = "PGBF_PGBOUNCER_INI";
/// Inside the image only: the secret the entrypoint hands `password.sql`.
#[cfg(test)]
pub(crate) const ENV_ROLE_SECRET: &str = "PGBF_ROLE_SECRET";

// ---- Leases --------------------------------------------------------------

/// `application_name` prefix of a lease straight on PostgreSQL
/// (`<prefix> pid N`): the watchdog counts these (`leases.sql`).
pub(crate) const LEASE_APP: &str = "pgbf-lease";
/// `application_name` prefix of a lease through PgBouncer, counted from
/// PgBouncer's console (`leases.sql`).
pub(crate) const POOLED_LEASE_APP: &str = "pgbf-pooled-lease";
/// The file each lease holder writes (`COPY (select) TO`), which even a lease
/// too short for the watchdog's 1 s poll leaves behind.
pub(crate) const LEASE_MARK: &str = "/tmp/pgbf-leased";
/// The file the watchdog touches when its janitor has nothing left to do.
#[cfg(test)]
pub(crate) const JANITOR_MARK: &str = "/tmp/pgbf-janitor-done";
/// `application_name` of the janitor's own logins to PgBouncer.
#[cfg(test)]
pub(crate) const JANITOR_APP: &str = "pgbf-janitor";

// ---- The janitor's tables and the clone naming -----------------------------

/// Prepared clones ready to be claimed: `name`, `template`, `made_at`.
pub(crate) const PREPARED_TABLE: &str = "pgbf_prepared";
/// Databases handed over for the janitor to drop: `name`, `queued_at`.
pub(crate) const GARBAGE_TABLE: &str = "pgbf_garbage";
/// One row per claim of the current run: `template`, `at`.
pub(crate) const CLAIMS_TABLE: &str = "pgbf_claims";
/// The last run's claims per template: `template`, `claims`, `rolled_at`.
pub(crate) const DEMAND_TABLE: &str = "pgbf_demand";
/// A template database's name: this prefix and the digest of its migrations.
pub(crate) const TEMPLATE_PREFIX: &str = "pgbf_tpl_";

/// The stem of a clone's name for `template` (`pgbf_tpl_<hash>` ->
/// `c<hash>`): the clone is `pgbf_<stem>_<10 random hex>`, made so by the
/// crate (`database::unique_name`) and by the janitor (`pgbf_clone_name`).
pub(crate) fn clone_stem(template: &str) -> String {
    format!("c{}", template.trim_start_matches(TEMPLATE_PREFIX))
}

// ---- Paths inside the containers ----------------------------------------

/// PostgreSQL's JSON log, read with `pg_read_file` to explain a failed test.
pub(crate) const LOG_FILE: &str = "/pgdata/log/postgresql.json";
/// The PostgreSQL container's tmpfs mounts: the data directory, its
/// databases and /tmp.
pub(crate) const POSTGRES_TMPFS: [&str; 3] =
    [POSTGRES_DATA_TMPFS, POSTGRES_DATABASES_TMPFS, "/tmp"];
/// The PostgreSQL container's data directory mount: the server's own files
/// (WAL, commit status, logs), a fixed size within the budget.
pub(crate) const POSTGRES_DATA_TMPFS: &str = "/pgdata";
/// The mount of the data directory's `base/` (every database), sized from
/// the budget, on a stack whose budget the user set: the entrypoint links
/// `base` there when it is mounted. When
/// it is full, the statement that filled it fails (53100, `disk_full`) and
/// the server's own files still have room: no PANIC.
pub(crate) const POSTGRES_DATABASES_TMPFS: &str = "/pgdatabases";
/// The PgBouncer container's tmpfs mount.
pub(crate) const PGBOUNCER_TMPFS: [&str; 1] = ["/tmp"];
/// Where the PgBouncer container writes `pgbouncer.ini` and the files it names.
#[cfg(test)]
pub(crate) const PGBOUNCER_DIR: &str = "/tmp/pgbf";
/// PgBouncer's `auth_file`.
pub(crate) const PGBOUNCER_USERLIST: &str = "/tmp/pgbf/userlist.txt";
/// PgBouncer's TLS certificate.
pub(crate) const PGBOUNCER_TLS_CERT: &str = "/tmp/pgbf/tls.crt";
/// PgBouncer's TLS key.
pub(crate) const PGBOUNCER_TLS_KEY: &str = "/tmp/pgbf/tls.key";
/// The CA PgBouncer checks with, both ways.
pub(crate) const PGBOUNCER_TLS_CA: &str = "/tmp/pgbf/ca.crt";
/// Where the PostgreSQL image keeps the SQL files below.
#[cfg(test)]
pub(crate) const IMAGE_SQL_DIR: &str = "/usr/share/pgbf/sql";

// ---- The SQL the image runs (docker/sql/) ---------------------------------

/// The janitor's four tables, one `create table if not exists` per line:
/// the one definition, run by the image at start and by the crate when it
/// finds them missing ([`table_statements`]).
pub(crate) const TABLES_SQL: &str = include_str!("../../docker/sql/tables.sql");
/// `pgbf_setting` and `pgbf_pooler_conninfo`: the image's settings.
pub(crate) const SETTINGS_SQL: &str = include_str!("../../docker/sql/settings.sql");
/// `pgbf_leases()`: the lease count, direct and through PgBouncer.
pub(crate) const LEASES_SQL: &str = include_str!("../../docker/sql/leases.sql");
/// The janitor's functions (drops, demand, prepared clones, warm-up).
pub(crate) const JANITOR_SQL: &str = include_str!("../../docker/sql/janitor.sql");
/// `pgbf_tick`: the watchdog's decisions, one tick at a time.
pub(crate) const WATCHDOG_SQL: &str = include_str!("../../docker/sql/watchdog.sql");
/// One janitor batch, a psql script (`\gexec`).
pub(crate) const JANITOR_BATCH_SQL: &str = include_str!("../../docker/sql/janitor-batch.sql");
/// What the watchdog's psql loads when it starts (`\ir` of the files above).
pub(crate) const SETUP_SQL: &str = include_str!("../../docker/sql/setup.sql");
/// Sets the role's password from `PGBF_ROLE_SECRET` (psql's `\getenv`).
pub(crate) const PASSWORD_SQL: &str = include_str!("../../docker/sql/password.sql");

/// Supabase's cluster-wide roles and their settings (run once, at image build).
pub(crate) const SUPABASE_ROLES_SQL: &str = include_str!("../../docker/sql/supabase-roles.sql");
/// The per-database objects of a Supabase project's database (schemas
/// `auth`, `extensions`, `storage`, default privileges): the base
/// database's content, and what a test loads into a PostgreSQL of its own.
pub(crate) const SUPABASE_SCHEMA_SQL: &str = include_str!("../../docker/sql/supabase-schema.sql");
/// The psql script the image build runs: the roles, then [`SUPABASE_BASE`].
pub(crate) const SUPABASE_BASE_SQL: &str = include_str!("../../docker/sql/supabase-base.sql");

/// The Supabase-shaped base database the image carries (made by
/// `supabase-base.sql` at build time): test databases and templates of the
/// Supabase shape are copies of it; the bare ones copy `template1`.
pub(crate) const SUPABASE_BASE: &str = "pgbf_supabase";

/// The files `setup.sql` loads, in its order: what a test loads into a
/// PostgreSQL of its own to drive the watchdog and the janitor.
#[cfg(test)]
pub(crate) const SETUP_FILES: [&str; 5] = [
    SETTINGS_SQL,
    TABLES_SQL,
    LEASES_SQL,
    JANITOR_SQL,
    WATCHDOG_SQL,
];

/// The statements of [`TABLES_SQL`], one at a time (comments left out):
/// a process racing another to make them tells each one's error apart.
pub(crate) fn table_statements() -> impl Iterator<Item = &'static str> {
    TABLES_SQL
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .map(|line| line.trim_end_matches(';'))
}

// ---- The images' build contexts -------------------------------------------

/// The PostgreSQL image's Dockerfile.
pub(crate) const POSTGRES_DOCKERFILE: &str = include_str!("../../docker/postgres.Dockerfile");
/// The PgBouncer image's Dockerfile.
pub(crate) const PGBOUNCER_DOCKERFILE: &str = include_str!("../../docker/pgbouncer.Dockerfile");

/// Every file of the PostgreSQL image's build context besides its
/// Dockerfile: (text, path in the context). The image's tag is a digest of
/// these, so an edited SQL file builds a new image.
pub(crate) const POSTGRES_CONTEXT: [(&str, &str); 13] = [
    (
        include_str!("../../docker/postgres-entrypoint.sh"),
        "./postgres-entrypoint.sh",
    ),
    (include_str!("../../docker/watchdog.sh"), "./watchdog.sh"),
    (TABLES_SQL, "./sql/tables.sql"),
    (SETTINGS_SQL, "./sql/settings.sql"),
    (LEASES_SQL, "./sql/leases.sql"),
    (JANITOR_SQL, "./sql/janitor.sql"),
    (WATCHDOG_SQL, "./sql/watchdog.sql"),
    (JANITOR_BATCH_SQL, "./sql/janitor-batch.sql"),
    (SETUP_SQL, "./sql/setup.sql"),
    (PASSWORD_SQL, "./sql/password.sql"),
    (SUPABASE_BASE_SQL, "./sql/supabase-base.sql"),
    (SUPABASE_ROLES_SQL, "./sql/supabase-roles.sql"),
    (SUPABASE_SCHEMA_SQL, "./sql/supabase-schema.sql"),
];

/// The PgBouncer image's build context besides its Dockerfile.
pub(crate) const PGBOUNCER_CONTEXT: [(&str, &str); 1] = [(
    include_str!("../../docker/pgbouncer-entrypoint.sh"),
    "./pgbouncer-entrypoint.sh",
)];

#[cfg(test)]
mod tests;
