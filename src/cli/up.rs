//! `up`: a stack of the settings asked for (environment, then flags), its
//! URLs on stdout, until Ctrl-C, SIGTERM or the stack's death.

use std::time::{Duration, Instant};

use pgbouncer_fixtures::{Env, Error, Profile, Stack, StackSettings};

use crate::args::UpArgs;

/// A comma-separated list of parameter names (empty: none).
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The stack settings `up` asks for, and the profile its
/// `TEST_DATABASE_URL` serves (the default profile's when the settings are
/// its; `None`: PgBouncer's pooled endpoint): the environment's settings,
/// then the profile's, then the PgBouncer flags on top.
fn settings(args: &UpArgs) -> Result<(StackSettings, Option<Profile>), String> {
    let env = Env::load().map_err(|e| e.to_string())?;
    let mut settings = StackSettings::from_env(&env).map_err(|e| e.to_string())?;
    let env_profile = env
        .get("PGBF_PROFILE")
        .and_then(|p| p.parse::<Profile>().ok());
    if let Some(profile) = args.profile {
        settings = profile.apply(settings);
    }
    let profile = args.profile.or(env_profile);
    if let Some(mode) = args.pool_mode {
        settings = settings.with_pool_mode(mode);
    }
    if let Some(n) = args.max_prepared_statements {
        settings = settings.with_max_prepared_statements(n);
    }
    if let Some(n) = args.default_pool_size {
        settings = settings.with_default_pool_size(n);
    }
    if let Some(names) = &args.ignore_startup_parameters {
        settings = settings.with_ignore_startup_parameters(list(names));
    }
    if let Some(names) = &args.track_extra_parameters {
        settings = settings.with_track_extra_parameters(list(names));
    }
    if args.server_round_robin {
        settings = settings.with_server_round_robin(true);
    }
    if args.require_tls {
        settings = settings.with_require_tls(true);
    }
    if let Some(id) = &args.run_id {
        settings = settings.with_run_id(id.clone());
    }
    // A stack of the default profile's settings is that profile, stage
    // included, as for `TestDb::new()`.
    let profile = profile.or_else(|| {
        let default = Profile::default();
        settings.is_profile(default).then_some(default)
    });
    Ok((settings, profile))
}

/// Runs `up` until a signal (`Ok`) or the stack's death (`Err`, its message).
pub fn up(args: &UpArgs) -> Result<(), String> {
    let (settings, profile) = settings(args)?;
    crate::runtime()?.block_on(async {
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
            print_urls(stack, profile).await?;
            say_memory(stack).await;
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
        print_urls(&stack, profile).await?;
        say_memory(&stack).await;
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

/// The stack's memory budget and what its databases take of it now.
async fn say_memory(stack: &Stack) {
    let mb = |b: u64| b >> 20;
    let used = match stack.memory_used().await {
        Ok(used) => format!("{} MB", mb(used)),
        Err(e) => format!("unknown ({e})"),
    };
    say!(
        "pgbouncer-fixtures: memory budget {} MB (its databases' tmpfs is sized from it; PGBF_MEMORY_BUDGET sets it), test databases take {used} of it",
        mb(stack.memory_budget())
    );
}

/// Prints the stack's URLs; behind a profile with a Supavisor-like stage
/// (`Profile::behind_stage`), `TEST_DATABASE_URL` is the stage's, which this
/// process serves until it exits.
async fn print_urls(stack: &Stack, profile: Option<Profile>) -> Result<(), String> {
    let e = stack.endpoints();
    let app = match profile {
        Some(profile) => stack
            .url_for_profile(profile, "postgres")
            .await
            .map_err(|e| e.to_string())?,
        None => e.pooled_url("postgres"),
    };
    if let Some(profile) = profile.filter(|p| p.behind_stage()) {
        say!(
            "pgbouncer-fixtures: {profile}'s Supavisor-like stage listens on 127.0.0.1:{} (in this process, in front of PgBouncer)",
            app.port()
        );
    }
    // These lines are the command's product: a throw-away stack's URLs,
    // password included, for a .env file.
    println!("TEST_DATABASE_URL={}", app.expose());
    println!("TEST_DIRECT_URL={}", e.direct_url("postgres").expose());
    Ok(())
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
