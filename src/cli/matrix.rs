//! `matrix`: every sqlx usage pattern under every profile, as Markdown on
//! stdout, each cell on stderr as it is done.

use pgbouncer_fixtures::matrix_with;
use pgbouncer_fixtures::probes::Workload;

use crate::args::MatrixArgs;

/// Runs the matrix with the workload `args` ask for.
pub fn matrix(args: &MatrixArgs) -> Result<(), String> {
    let default = Workload::default();
    let workload = Workload {
        clients: args.clients.unwrap_or(default.clients),
        rounds: args.rounds.unwrap_or(default.rounds),
    };
    crate::runtime()?.block_on(async {
        let m = matrix_with(workload, |behaviour, profile, outcome| {
            say!("{profile:>18} | {behaviour}: {}", outcome.summary());
        })
        .await
        .map_err(|e| e.to_string())?;
        println!("{}", m.to_markdown());
        Ok(())
    })
}
