//! `pgbouncer-fixtures`: start a stack for other test runs to use.
//!
//! ```text
//! pgbouncer-fixtures up [--pool-mode transaction|session] [--max-prepared-statements N]
//!                       [--default-pool-size N] [--run-id ID]
//! pgbouncer-fixtures gc [--stack ID | --checkout PATH]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use std::time::Duration;

use pgbouncer_fixtures::doctor::diagnose;
use pgbouncer_fixtures::probes::Workload;
use pgbouncer_fixtures::{
    compatibility_matrix_with, DbUrl, Env, Error, GcScope, PoolMode, Profile, Stack, StackSettings,
    TestDb, TEST_DATABASE_URL,
};

/// `eprintln!` that never panics: `up` must still clean up when whoever
/// started it closed our stderr (a closed pipe makes `eprintln!` panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: pgbouncer-fixtures <command>

commands:
  up     start PostgreSQL + PgBouncer, print TEST_DATABASE_URL / TEST_DIRECT_URL
         (for .env), keep running until Ctrl-C or SIGTERM, then remove everything;
         exit 1 within seconds if the stack dies (its URLs are then void)
         options: --profile supabase-shared|supabase-dedicated|supabase-session|direct
                                  (default supabase-shared: Supavisor, port 6543)
                  a plain PgBouncer, after or instead of a profile:
                  --pool-mode transaction|session
                  --max-prepared-statements N
                  --default-pool-size N              (default 20)
                  --ignore-startup-parameters a,b    (replaces the profile's list)
                  --track-extra-parameters a,b
                  --server-round-robin
                  --require-tls    refuse clients without TLS (Supabase's Enforce SSL)
                  --run-id ID    join (or start) the shared stack of run ID, as test
                                 processes with PGBF_RUN_ID=ID do, instead of a private
                                 one; it stays for the other users when this exits
  gc     remove every container and network this crate created on this Docker
         host, running or not, and the lock files no process holds, and list them
         options: --stack ID         only those of stack ID (label pgbouncer-fixtures.stack)
                  --checkout PATH    only those made by runs in checkout PATH
                                     (label pgbouncer-fixtures.checkout)
  doctor [URL] [--json]
         probe URL (default TEST_DATABASE_URL from env/.env; with none, a local stack
         of each profile) for pooler hazards; exit 0 none, 1 hazard, 2 bad input
  matrix run every sqlx usage pattern under every pooler profile and print the
         compatibility matrix as Markdown (options: --clients N, --rounds N)
  help   show this text

environment: PGBF_BASE_IMAGE, PGBF_POSTGRES_IMAGE, PGBF_PGBOUNCER_IMAGE;
             the Docker engine is found as testcontainers finds it: tc.host in
             ~/.testcontainers.properties, DOCKER_HOST (environment, then .env),
             docker.host in that file, then the usual sockets (see the README);
             TESTCONTAINERS_HOST_OVERRIDE: the host published ports answer on.
             PGBF_PUBLISH_ALL_INTERFACES=1 (publish on every interface, not only
             127.0.0.1, with a local engine; see the README's environment table),
             RUST_LOG-style tracing is not installed; errors go to stderr";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => run(up(&args[1..])),
        Some("matrix") => run(matrix(&args[1..])),
        Some("doctor") => doctor(&args[1..]),
        Some("gc") => run(gc(&args[1..])),
        None | Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            say!("pgbouncer-fixtures: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            say!("pgbouncer-fixtures: {message}");
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
        .block_on(async {
            let engine = pgbouncer_fixtures::docker_engine().await?;
            say!("pgbouncer-fixtures: Docker engine {engine}");
            pgbouncer_fixtures::gc(scope).await
        })
        .map_err(|e| e.to_string())?;
    for c in &report.containers {
        println!("removed container {c}");
    }
    for n in &report.networks {
        println!("removed network {n}");
    }
    for f in &report.lock_files {
        println!("removed lock file {}", f.display());
    }
    println!(
        "gc: removed {} container(s), {} network(s), {} stale lock file(s)",
        report.containers.len(),
        report.networks.len(),
        report.lock_files.len()
    );
    Ok(())
}

/// A comma-separated list of parameter names (empty: none).
fn list(v: String) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The stack settings `up` asks for, and whether its `TEST_DATABASE_URL`
/// bypasses the pooler (`--profile direct`).
fn parse_settings(args: &[String]) -> Result<(StackSettings, bool), String> {
    let env = Env::load().map_err(|e| e.to_string())?;
    let mut settings = StackSettings::from_env(&env).map_err(|e| e.to_string())?;
    let mut direct = env
        .get("PGBF_PROFILE")
        .and_then(|p| p.parse::<Profile>().ok())
        .is_some_and(Profile::is_direct);
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
            "--profile" => {
                let v = value("--profile")?;
                let profile = v
                    .parse::<Profile>()
                    .map_err(|e| format!("--profile: {e}"))?;
                settings = profile.apply(settings);
                direct = profile.is_direct();
            }
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
            "--ignore-startup-parameters" => {
                settings = settings
                    .with_ignore_startup_parameters(list(value("--ignore-startup-parameters")?));
            }
            "--track-extra-parameters" => {
                settings =
                    settings.with_track_extra_parameters(list(value("--track-extra-parameters")?));
            }
            "--server-round-robin" => settings = settings.with_server_round_robin(true),
            "--require-tls" => settings = settings.with_require_tls(true),
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
    Ok((settings, direct))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))
}

/// Exit codes: 0 no hazard, 1 a hazard (or a probe that could not run), 2 bad input.
fn doctor(args: &[String]) -> ExitCode {
    let mut json = false;
    let mut url_arg = None;
    for arg in args {
        match arg.as_str() {
            "--json" => json = true,
            flag if flag.starts_with("--") => {
                say!("pgbouncer-fixtures: unknown option `{flag}`\n\n{USAGE}");
                return ExitCode::from(2);
            }
            url => url_arg = Some(url.to_string()),
        }
    }
    let targets = match doctor_targets(url_arg) {
        Ok(t) => t,
        Err(message) => {
            say!("pgbouncer-fixtures: {message}");
            return ExitCode::from(2);
        }
    };
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let workload = Workload { clients: 16, rounds: 100 };
            let timeout = Duration::from_secs(10);
            let mut reports = Vec::new();
            match targets {
                DoctorTargets::Url(url) => reports.push((None, diagnose(&url, workload, timeout).await)),
                DoctorTargets::EveryProfile => {
                    say!("pgbouncer-fixtures: no URL and no TEST_DATABASE_URL: probing a local stack of each profile");
                    for profile in Profile::ALL {
                        let db = TestDb::builder()
                            .profile(profile)
                            .test_name(format!("doctor_{profile}"))
                            .build()
                            .await
                            .map_err(|e| e.to_string())?;
                        reports.push((Some(profile), diagnose(db.pooled(), workload, timeout).await));
                        db.close().await.map_err(|e| e.to_string())?;
                    }
                }
            }
            Ok::<_, String>(reports)
        })
    });
    let reports = match result {
        Ok(r) => r,
        Err(message) => {
            say!("pgbouncer-fixtures: {message}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let values: Vec<serde_json::Value> = reports
            .iter()
            .map(|(profile, r)| {
                let mut v = r.to_json();
                if let Some(p) = profile {
                    v["profile"] = serde_json::Value::from(p.name());
                }
                v
            })
            .collect();
        let out = if values.len() == 1 {
            values[0].clone()
        } else {
            serde_json::Value::from(values)
        };
        println!("{out:#}");
    } else {
        for (profile, r) in &reports {
            if let Some(p) = profile {
                println!("== profile {p}: {}", p.description());
            }
            print!("{}", r.to_text());
        }
    }
    let unreachable = reports.iter().any(|(_, r)| r.pool_behaviour.is_none());
    let hazard = reports.iter().any(|(_, r)| r.has_hazard());
    match (unreachable, hazard) {
        (true, _) if reports.len() == 1 => ExitCode::from(2),
        (_, true) | (true, false) => ExitCode::FAILURE,
        (false, false) => ExitCode::SUCCESS,
    }
}

enum DoctorTargets {
    Url(DbUrl),
    EveryProfile,
}

fn doctor_targets(url_arg: Option<String>) -> Result<DoctorTargets, String> {
    if let Some(raw) = url_arg {
        return DbUrl::parse("the doctor's URL argument", &raw)
            .map(DoctorTargets::Url)
            .map_err(|e| e.to_string());
    }
    let env = Env::load().map_err(|e| e.to_string())?;
    match env.get(TEST_DATABASE_URL) {
        Some(raw) => DbUrl::parse(TEST_DATABASE_URL, raw)
            .map(DoctorTargets::Url)
            .map_err(|e| e.to_string()),
        None => Ok(DoctorTargets::EveryProfile),
    }
}

fn matrix(args: &[String]) -> Result<(), String> {
    let mut workload = Workload::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n = value
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} takes a whole number > 0, not `{value}`"))?;
        match flag.as_str() {
            "--clients" => workload.clients = n,
            "--rounds" => workload.rounds = n,
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    runtime()?.block_on(async {
        let m = compatibility_matrix_with(workload, |behaviour, profile, outcome| {
            say!("{profile:>18} | {behaviour}: {}", outcome.summary());
        })
        .await
        .map_err(|e| e.to_string())?;
        println!("{}", m.to_markdown());
        Ok(())
    })
}

fn up(args: &[String]) -> Result<(), String> {
    let (settings, direct) = parse_settings(args)?;
    runtime()?.block_on(async {
        let started = Instant::now();
        let engine = pgbouncer_fixtures::docker_engine()
            .await
            .map_err(|e| e.to_string())?;
        say!("pgbouncer-fixtures: Docker engine {engine}");
        say!(
            "pgbouncer-fixtures: starting PostgreSQL + PgBouncer (pool_mode={}, max_prepared_statements={}, TLS {}) ...",
            settings.pool_mode, settings.max_prepared_statements,
            if settings.require_tls { "required" } else { "offered" }
        );
        if settings.run_id.is_some() {
            let stack = Stack::shared(&settings).await.map_err(|e| e.to_string())?;
            print_urls(stack, direct);
            say!(
                "pgbouncer-fixtures: {} shared stack {} in {:.2} s; it stays while any process holds a lease, and is reaped {} s after the last one. Ctrl-C to leave it.",
                if stack.joined() { "joined" } else { "started" },
                stack.id(),
                started.elapsed().as_secs_f64(),
                stack.settings().reap_after.as_secs()
            );
            if let Ended::Died(why) = wait_for_signal_or_death(stack).await? {
                return Err(died_message(stack, &why));
            }
            // The lease closes at exit; the stack's watchdog does the rest.
            return Ok(());
        }
        let stack = Stack::start(settings).await.map_err(|e| e.to_string())?;
        print_urls(&stack, direct);
        say!(
            "pgbouncer-fixtures: stack {} ready in {:.2} s; add PGBF_EXTERNAL_CREATE_DATABASES=1 to give each test its own database. Ctrl-C to stop.",
            stack.id(),
            started.elapsed().as_secs_f64()
        );
        if let Ended::Died(why) = wait_for_signal_or_death(&stack).await? {
            let message = died_message(&stack, &why);
            // Remove what is left (PgBouncer's own watchdog would stop it
            // within seconds anyway): bounded, so `up` exits promptly.
            let _ = tokio::time::timeout(Duration::from_secs(2), stack.stop()).await;
            return Err(message);
        }
        say!("pgbouncer-fixtures: stopping, removing its containers ...");
        stack.stop().await.map_err(|e| e.to_string())?;
        say!("pgbouncer-fixtures: stopped");
        Ok(())
    })
}

/// Why `up` stops waiting.
enum Ended {
    /// Ctrl-C or SIGTERM.
    Signal,
    /// The stack died: what is known about it.
    Died(String),
}

/// How often `up` checks its stack.
const WATCH_EVERY: Duration = Duration::from_secs(1);

async fn wait_for_signal_or_death(stack: &Stack) -> Result<Ended, String> {
    tokio::select! {
        signal = wait_for_signal() => signal.map(|()| Ended::Signal),
        why = watch(stack) => Ok(Ended::Died(why)),
    }
}

/// Resolves once the stack is dead, with what died. Every second it checks
/// the lease (PostgreSQL gone: dead at once, no Docker call); every other
/// second Docker's view of both containers (two inspections, ~1.5 ms of the
/// Docker daemon's time), and when one is gone or stopped, again a second
/// later: still so, the stack is dead (a restarting PgBouncer comes back).
async fn watch(stack: &Stack) -> String {
    let mut docker_turn = false;
    let mut suspect = false;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        docker_turn = !docker_turn;
        if let Err(Error::StackDied { reason, .. }) = stack.check().await {
            return reason;
        }
        if !suspect && !docker_turn {
            continue;
        }
        match stack.check_containers().await {
            Err(Error::StackDied { reason, .. }) if suspect => return reason,
            Err(Error::StackDied { .. }) => suspect = true,
            // Docker slow or unreachable says nothing about the stack.
            _ => suspect = false,
        }
    }
}

fn died_message(stack: &Stack, why: &str) -> String {
    format!(
        "stack {} died: {why}. The URLs printed above (TEST_DATABASE_URL, TEST_DIRECT_URL) \
         are void; run `pgbouncer-fixtures up` again for a new stack",
        stack.id()
    )
}

fn print_urls(stack: &Stack, direct: bool) {
    let e = stack.endpoints();
    // These lines are the command's product: a throw-away stack's URLs,
    // password included, for a .env file.
    let app = if direct {
        e.direct_url("postgres")
    } else {
        e.pooled_url("postgres")
    };
    println!("TEST_DATABASE_URL={}", app.expose());
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
