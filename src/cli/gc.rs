//! `gc`: removes what the crate created on this Docker host (all of it, one
//! stack's or one checkout's) and lists it.

use pgbouncer_fixtures::GcScope;

use crate::args::GcArgs;

/// Runs `gc` in the scope `args` ask for.
pub fn gc(args: &GcArgs) -> Result<(), String> {
    let scope = match (&args.stack, &args.checkout) {
        (Some(id), _) => GcScope::Stack(id),
        (None, Some(path)) => GcScope::Checkout(path),
        (None, None) => GcScope::All,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let report = runtime
        .block_on(async {
            let engine = pgbouncer_fixtures::docker_engine().await?;
            say!("pgbouncer-fixtures: Docker engine {engine}");
            pgbouncer_fixtures::gc(scope).await
        })
        .map_err(|e| e.to_string())?;
    for c in &report.containers {
        println!("removed container {c}");
    }
    for v in &report.volumes {
        println!("removed volume {v}");
    }
    for f in &report.lock_files {
        println!("removed lock file {}", f.display());
    }
    println!(
        "gc: removed {} container(s), {} volume(s), {} stale lock file(s)",
        report.containers.len(),
        report.volumes.len(),
        report.lock_files.len()
    );
    Ok(())
}
