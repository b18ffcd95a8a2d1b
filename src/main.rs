//! `pgbouncer-fixtures`: start a stack for other test runs to use.
//!
//! ```text
//! pgbouncer-fixtures up [--pool-mode transaction|session] [--max-prepared-statements N]
//!                       [--default-pool-size N] [--run-id ID]
//! pgbouncer-fixtures gc [--stack ID | --checkout PATH]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use pgbouncer_fixtures::{Env, GcScope, PoolMode, Stack, StackSettings};

const USAGE: &str = "\
usage: pgbouncer-fixtures <command>

commands:
  up     start PostgreSQL + PgBouncer, print TEST_DATABASE_URL / TEST_DIRECT_URL
         (for .env), keep running until Ctrl-C or SIGTERM, then remove everything
         options: --pool-mode transaction|session   (default transaction)
                  --max-prepared-statements N        (default 0, as Supabase's port 6543)
                  --default-pool-size N              (default 20)
                  --run-id ID    join (or start) the shared stack of run ID, as test
                                 processes with PGBF_RUN_ID=ID do, instead of a private
                                 one; it stays for the other users when this exits
  gc     remove every container and network this crate created on this Docker
         host, running or not, and list them
         options: --stack ID         only those of stack ID (label pgbouncer-fixtures.stack)
                  --checkout PATH    only those made by runs in checkout PATH
                                     (label pgbouncer-fixtures.checkout)
  help   show this text

environment: PGBF_BASE_IMAGE, PGBF_POSTGRES_IMAGE, PGBF_PGBOUNCER_IMAGE, DOCKER_HOST,
             RUST_LOG-style tracing is not installed; errors go to stderr";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => run(up(&args[1..])),
        Some("gc") => run(gc(&args[1..])),
        None | Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("pgbouncer-fixtures: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pgbouncer-fixtures: {message}");
            ExitCode::FAILURE
        }
    }
}

fn gc(args: &[String]) -> Result<(), String> {
    let scope = match args {
        [] => GcScope::All,
        [flag, id] if flag == "--stack" && !id.trim().is_empty() => GcScope::Stack(id),
        [flag, path] if flag == "--checkout" && !path.trim().is_empty() => GcScope::Checkout(path),
        _ => {
            return Err(format!(
                "gc takes no option, or --stack ID, or --checkout PATH\n\n{USAGE}"
            ))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let report = runtime
        .block_on(pgbouncer_fixtures::gc(scope))
        .map_err(|e| e.to_string())?;
    for c in &report.containers {
        println!("removed container {c}");
    }
    for n in &report.networks {
        println!("removed network {n}");
    }
    println!(
        "gc: removed {} container(s), {} network(s)",
        report.containers.len(),
        report.networks.len()
    );
    Ok(())
}

fn parse_settings(args: &[String]) -> Result<StackSettings, String> {
    let env = Env::load().map_err(|e| e.to_string())?;
    let mut settings = StackSettings::from_env(&env).map_err(|e| e.to_string())?;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let number = |name: &str, v: String| {
            v.parse::<u32>()
                .map_err(|_| format!("{name} takes a whole number, not `{v}`"))
        };
        match flag.as_str() {
            "--pool-mode" => {
                let v = value("--pool-mode")?;
                settings.pool_mode = v
                    .parse::<PoolMode>()
                    .map_err(|_| format!("--pool-mode takes transaction or session, not `{v}`"))?;
            }
            "--max-prepared-statements" => {
                let v = value("--max-prepared-statements")?;
                settings.max_prepared_statements = number("--max-prepared-statements", v)?;
            }
            "--default-pool-size" => {
                let v = value("--default-pool-size")?;
                settings = settings.with_default_pool_size(number("--default-pool-size", v)?);
            }
            "--run-id" => {
                let v = value("--run-id")?;
                if v.trim().is_empty() {
                    return Err("--run-id takes a non-empty id".into());
                }
                settings = settings.with_run_id(v);
            }
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    Ok(settings)
}

fn up(args: &[String]) -> Result<(), String> {
    let settings = parse_settings(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    runtime.block_on(async {
        let started = Instant::now();
        eprintln!(
            "pgbouncer-fixtures: starting PostgreSQL + PgBouncer (pool_mode={}, max_prepared_statements={}) ...",
            settings.pool_mode, settings.max_prepared_statements
        );
        if settings.run_id.is_some() {
            let stack = Stack::shared(&settings).await.map_err(|e| e.to_string())?;
            print_urls(stack);
            eprintln!(
                "pgbouncer-fixtures: {} shared stack {} in {:.2} s; it stays while any process holds a lease, and is reaped {} s after the last one. Ctrl-C to leave it.",
                if stack.joined() { "joined" } else { "started" },
                stack.id(),
                started.elapsed().as_secs_f64(),
                stack.settings().reap_after.as_secs()
            );
            wait_for_signal().await?;
            // The lease closes at exit; the stack's watchdog does the rest.
            return Ok(());
        }
        let stack = Stack::start(settings).await.map_err(|e| e.to_string())?;
        print_urls(&stack);
        eprintln!(
            "pgbouncer-fixtures: stack {} ready in {:.2} s; add PGBF_EXTERNAL_CREATE_DATABASES=1 to give each test its own database. Ctrl-C to stop.",
            stack.id(),
            started.elapsed().as_secs_f64()
        );
        wait_for_signal().await?;
        eprintln!("pgbouncer-fixtures: stopping, removing containers and network ...");
        stack.stop().await.map_err(|e| e.to_string())?;
        eprintln!("pgbouncer-fixtures: stopped");
        Ok(())
    })
}

fn print_urls(stack: &Stack) {
    let e = stack.endpoints();
    // These lines are the command's product: a throw-away stack's URLs,
    // password included, for a .env file.
    println!("TEST_DATABASE_URL={}", e.pooled_url("postgres").expose());
    println!("TEST_DIRECT_URL={}", e.direct_url("postgres").expose());
}

async fn wait_for_signal() -> Result<(), String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())
    }
}
