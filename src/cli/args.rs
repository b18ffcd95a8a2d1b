//! The command line, declared with clap's derive: every command, flag and
//! default, and the help texts `--help` prints. Values are parsed here with
//! the library's own parsers, so an invalid one is reported with its flag.

use clap::{Args, Parser, Subcommand};
use pgbouncer_fixtures::{Error, PoolMode, Profile};

/// What `--help` prints after the commands.
const ENVIRONMENT: &str = "\
environment: PGBF_BASE_IMAGE, PGBF_POSTGRES_IMAGE, PGBF_PGBOUNCER_IMAGE;
             the Docker engine is found as testcontainers finds it: tc.host in
             ~/.testcontainers.properties, DOCKER_HOST (environment, then .env),
             docker.host in that file, then the usual sockets;
             TESTCONTAINERS_HOST_OVERRIDE: the host published ports answer on.
             PGBF_PUBLISH_ALL_INTERFACES=1 (publish on every interface, not only
             127.0.0.1, with a local engine). Every variable: docs/configuration.md.
             RUST_LOG-style tracing is not installed; errors go to stderr.
exit codes:  0 done; 1 doctor found a hazard; 2 usage (a bad command, flag, value
             or doctor URL); 3 the command failed (Docker, images, a stack, PGBF_*).
docs:        docs/cli.md";

/// Start PostgreSQL + PgBouncer stacks for test runs, diagnose endpoints,
/// clean up.
#[derive(Debug, Parser)]
#[command(name = "pgbouncer-fixtures", version, after_help = ENVIRONMENT)]
#[command(args_override_self = true)]
pub struct Cli {
    /// The command; none prints this help.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start PostgreSQL + PgBouncer, print TEST_DATABASE_URL / TEST_DIRECT_URL
    /// (for .env), keep running until Ctrl-C or SIGTERM, then remove everything;
    /// exit 3 within seconds if the stack dies (its URLs are then void).
    #[command(
        after_help = "A plain PgBouncer: the PgBouncer flags, after or instead of a profile \
                            (they apply on top of it)."
    )]
    Up(UpArgs),
    /// Remove every container this crate created on this Docker
    /// host, running or not, and the lock files no process holds, and list them.
    Gc(GcArgs),
    /// Probe URL (default TEST_DATABASE_URL from env/.env; with none, a local
    /// stack of each profile) for pooler hazards; exit 0 none, 1 hazard, 2 bad input,
    /// 3 no local stack.
    Doctor(DoctorArgs),
    /// Run every sqlx usage pattern under every pooler profile and print the
    /// matrix as Markdown.
    Matrix(MatrixArgs),
}

/// `up`'s flags, on top of the settings of the environment (PGBF_*).
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The production endpoint to mirror [default: supabase-shared, Supavisor, port 6543]:
    /// supabase-shared, supabase-dedicated, supabase-session, supabase-dedicated-legacy, supabase-shared-prepared or no-pooler.
    #[arg(long, value_name = "NAME", value_parser = profile)]
    pub profile: Option<Profile>,
    /// PgBouncer's pool_mode: transaction or session.
    #[arg(long, value_name = "MODE", value_parser = pool_mode)]
    pub pool_mode: Option<PoolMode>,
    /// PgBouncer's max_prepared_statements (0: no tracking).
    #[arg(long, value_name = "N", value_parser = whole)]
    pub max_prepared_statements: Option<u32>,
    /// PgBouncer's default_pool_size [default: 20].
    #[arg(long, value_name = "N", value_parser = whole)]
    pub default_pool_size: Option<u32>,
    /// Startup parameters PgBouncer ignores, comma-separated (replaces the profile's list).
    #[arg(long, value_name = "A,B")]
    pub ignore_startup_parameters: Option<String>,
    /// Startup parameters PgBouncer tracks beyond its own, comma-separated.
    #[arg(long, value_name = "A,B")]
    pub track_extra_parameters: Option<String>,
    /// PgBouncer's server_round_robin.
    #[arg(long)]
    pub server_round_robin: bool,
    /// Refuse clients without TLS (Supabase's Enforce SSL).
    #[arg(long)]
    pub require_tls: bool,
    /// Join (or start) the shared stack of run ID, as test processes with
    /// PGBF_RUN_ID=ID do, instead of a private one; it stays for the other
    /// users when this exits.
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub run_id: Option<String>,
}

/// `gc`'s scope: everything, or one stack's, or one checkout's.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only those of stack ID (label pgbouncer-fixtures.stack).
    #[arg(long, value_name = "ID", value_parser = non_empty, conflicts_with = "checkout")]
    pub stack: Option<String>,
    /// Only those made by runs in checkout PATH (label pgbouncer-fixtures.checkout).
    #[arg(long, value_name = "PATH", value_parser = non_empty)]
    pub checkout: Option<String>,
}

/// `doctor`'s target and output.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The PostgreSQL URL to probe (default TEST_DATABASE_URL from env/.env).
    pub url: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `matrix`'s workload.
#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Concurrent clients per statement row [default: 16].
    #[arg(long, value_name = "N", value_parser = positive)]
    pub clients: Option<usize>,
    /// Queries per client per statement row [default: 200].
    #[arg(long, value_name = "N", value_parser = positive)]
    pub rounds: Option<usize>,
}

/// What the library's parser expects, without the environment variable its
/// error names (here the value came from a flag, and clap names the flag).
fn expected(e: Error) -> String {
    match e {
        Error::InvalidEnv { expected, .. } => format!("expected {expected}"),
        other => other.to_string(),
    }
}

fn profile(s: &str) -> Result<Profile, String> {
    s.parse().map_err(expected)
}

fn pool_mode(s: &str) -> Result<PoolMode, String> {
    s.parse().map_err(expected)
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("expected a non-empty value".into());
    }
    Ok(s.to_string())
}

fn whole(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| "expected a whole number (0 or more)".into())
}

fn positive(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "expected a whole number > 0".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_invalid_profile_names_the_flag_not_the_variable() {
        let e = Cli::try_parse_from(["pgbouncer-fixtures", "up", "--profile", "x"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("--profile"), "{text}");
        assert!(!text.contains("PGBF_PROFILE"), "{text}");
        assert!(
            text.contains("supabase-shared, supabase-dedicated, supabase-session, supabase-dedicated-legacy, supabase-shared-prepared or no-pooler"),
            "{text}"
        );
    }

    #[test]
    fn gc_takes_one_scope_at_most() {
        for args in [
            &["gc", "--stack", "a", "--checkout", "b"][..],
            &["gc", "--stack", " "],
            &["gc", "--checkout"],
            &["gc", "extra"],
        ] {
            let argv = std::iter::once("pgbouncer-fixtures").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn a_repeated_flag_keeps_its_last_value() {
        let cli = Cli::try_parse_from([
            "pgbouncer-fixtures",
            "up",
            "--max-prepared-statements",
            "0",
            "--max-prepared-statements",
            "5",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Up(up)) => assert_eq!(up.max_prepared_statements, Some(5)),
            other => panic!("{other:?}"),
        }
    }
}
