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

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return invalid_arguments(&e, argv.get(1)),
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
/// each naming the flag) and exits as before clap: 0 for help and
/// version; 1 for a bad flag of `up`, `gc` or `matrix` (their errors exit
/// as their failures do); 2 for `doctor`'s bad input and an unknown command.
fn invalid_arguments(e: &clap::Error, command: Option<&OsString>) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    match command.and_then(|c| c.to_str()) {
        Some("up" | "gc" | "matrix") => ExitCode::FAILURE,
        _ => ExitCode::from(2),
    }
}

/// A command's end: its error on stderr and exit 1, or exit 0.
fn run(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            say!("pgbouncer-fixtures: {message}");
            ExitCode::FAILURE
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
