//! `pgbouncer-fixtures`: start a stack for other test runs to use, diagnose
//! an endpoint, print the matrix, clean up.
//!
//! The binary owns the command line and what it prints; it uses only the
//! library's public API and adds no logic the library lacks. `args`: the
//! command line (clap); `up`, `gc`, `doctor`, `matrix`: one command each.
//!
//! ```text
//! pgbouncer-fixtures up [--profile NAME] [--pool-mode transaction|session]
//!                       [--max-prepared-statements N] [--default-pool-size N] [--run-id ID] ...
//! pgbouncer-fixtures gc [--stack ID | --checkout PATH]
//! pgbouncer-fixtures doctor [URL] [--json]
//! pgbouncer-fixtures matrix [--clients N] [--rounds N]
//! ```

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

/// `eprintln!` that never panics: `up` must still clean up when whoever
/// started it closed our stderr (a closed pipe makes `eprintln!` panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod doctor;
mod gc;
mod matrix;
mod up;

use args::{Cli, Command};

/// The exit codes (docs/cli.md, "Exit codes"): 0 done (help, version, a
/// `doctor` with no hazard), and these.
///
/// `doctor` found a hazard, or one of its probes could not run.
const EXIT_HAZARD: u8 = 1;
/// Usage: an unknown command or flag, an invalid value (clap's errors, each
/// naming the flag), or a `doctor` URL that is invalid or, alone, unreachable.
const EXIT_USAGE: u8 = 2;
/// The command could not do its work: the Docker engine, the images, a
/// stack that failed to start or died under `up`, a setting in the
/// environment (`PGBF_*`) the crate cannot use.
const EXIT_FAILED: u8 = 3;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return invalid_arguments(&e),
    };
    match cli.command {
        Some(Command::Up(a)) => run(up::up(&a)),
        Some(Command::Gc(a)) => run(gc::gc(&a)),
        Some(Command::Doctor(a)) => doctor::doctor(a),
        Some(Command::Matrix(a)) => run(matrix::matrix(&a)),
        None => {
            let _ = Cli::command().print_help();
            ExitCode::SUCCESS
        }
    }
}

/// Prints clap's message (help and version on stdout, errors on stderr,
/// each naming the flag): exit 0 for help and version, [`EXIT_USAGE`] for
/// an error, whatever the command.
fn invalid_arguments(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    ExitCode::from(EXIT_USAGE)
}

/// A command's end: exit 0, or its error on stderr and [`EXIT_FAILED`].
fn run(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            say!("pgbouncer-fixtures: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The runtime of `up`, `doctor` and `matrix`.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))
}
