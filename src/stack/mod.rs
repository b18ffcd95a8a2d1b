//! The run's PostgreSQL + PgBouncer pair: the [`Stack`] handle (private
//! stacks: `Stack::start`; the run's shared stack: `Stack::shared`, joined
//! when it answers, else created under a file lock, see `run_key`), its
//! [`Endpoints`] (`endpoints.rs`), bring-up (`bring_up.rs`), readiness
//! (`ready.rs`), the lease (`lease.rs`), secrets (`secrets.rs`), the run's
//! lock and key, TLS and reaping. May use the folders below it: `docker`
//! (the containers), `provision` (the worker it hands the running pair to),
//! connect, target, contract (the lease's names), support, error.

mod bring_up;
mod endpoints;
pub(crate) mod gc;
pub(crate) mod lease;
pub(crate) mod lock;
mod ready;
pub(crate) mod run_key;
mod secrets;
pub(crate) mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::provision::worker::Worker;
use crate::stack::lease::Lease;
use crate::stack::run_key::RunKey;
use crate::stage::{Certificates, Rules};
use crate::support::registry::OnceMap;
use crate::support::runtime::Background;
use crate::target::profile::Profile;
use crate::target::settings::StackSettings;
use crate::target::DbUrl;

pub use crate::stack::endpoints::Endpoints;

/// A running Postgres + PgBouncer pair.
///
/// Dropping (or [`Stack::stop`]ping) a stack started with [`Stack::start`]
/// removes its containers. A stack from [`Stack::shared`] belongs to the
/// whole run: every process using it holds a lease, and it removes itself
/// once no process has held one for [`StackSettings::reap_after`].
pub struct Stack {
    id: String,
    endpoints: Endpoints,
    settings: StackSettings,
    worker: Worker,
    /// The stack's background runtime (the worker's too), where its Docker
    /// calls run.
    background: Background,
    lease: Arc<Lease>,
    owned: bool,
    joined: bool,
    memory_budget: u64,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("id", &self.id)
            .field("endpoints", &self.endpoints)
            .field("settings", &self.settings)
            .field("joined", &self.joined)
            .finish()
    }
}

/// The run's shared stacks of this process, by run key.
static SHARED: OnceMap<&'static Stack> = OnceMap::new();

impl Stack {
    /// Starts a new private stack with these settings; it is removed when
    /// dropped (and reaped like any stack if this process is killed).
    pub async fn start(settings: StackSettings) -> Result<Stack> {
        let id = crate::support::digest::random_hex(10);
        Stack::launch(settings, Mode::Private(id)).await
    }

    /// Starts the stack's background runtime, brings the pair up there and
    /// hands it to a worker on the same runtime.
    async fn launch(settings: StackSettings, mode: Mode) -> Result<Stack> {
        let started = Instant::now();
        let background = Background::start(format!("pgbf-stack-{}", mode.id()))?;
        let owned = matches!(mode, Mode::Private(_));
        let up = match bring_up::on_background(&background, mode, settings.clone()).await {
            Ok(up) => up,
            Err(e) => {
                background.stop();
                return Err(e);
            }
        };
        let lease = up.lease.clone();
        background.spawn(move || async move { lease.watch().await });
        let worker = Worker::new(background.clone(), up.setup);
        tracing::info!(
            stack = %up.id,
            joined = up.joined,
            elapsed_ms = started.elapsed().as_millis() as u64,
            pooled_port = up.endpoints.pooled_port(),
            direct_port = up.endpoints.direct_port(),
            memory_budget_mb = up.memory_budget >> 20,
            "stack ready"
        );
        Ok(Stack {
            id: up.id,
            endpoints: up.endpoints,
            settings,
            worker,
            background,
            lease: up.lease,
            owned,
            joined: up.joined,
            memory_budget: up.memory_budget,
        })
    }

    /// The run's stack for these settings: joined if a process of the same
    /// run (same settings, run id and checkout; see docs/templates-and-stack.md's
    /// sharing rule) already started it, else started here. This process holds a
    /// lease on it until it exits. A stack found dead is replaced. Without a
    /// pinned run id the stack is the checkout's, and stays up
    /// [`StackSettings::keep_warm`] after its last lease for the next run.
    pub async fn shared(settings: &StackSettings) -> Result<&'static Stack> {
        let settings = &settings.for_shared_stack();
        let run = RunKey::current(settings);
        // A stack that died is replaced for later callers.
        let cell = SHARED.cell(&run.key, |s| s.worker.dead().is_some());
        cell.get_or_try_init(|| async {
            tracing::debug!(run_key = %run.key, origin = %run.origin, "joining or starting the run's stack");
            let stack = Stack::launch(settings.clone(), Mode::Shared(run)).await?;
            stack.worker.shutdown_at_exit();
            Ok::<_, Error>(&*Box::leak(Box::new(stack)))
        })
        .await
        .copied()
    }

    /// The stack's id (the value of its `pgbouncer-fixtures.stack` label).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this process joined a stack another process had started.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Its memory budget in bytes ([`StackSettings::memory_budget`], or the
    /// default its creator computed from the Docker engine's memory).
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
    }

    /// The bytes its test databases take now: templates, prepared clones,
    /// databases in use and databases waiting to be dropped, counted as the
    /// budget counts them (one query).
    pub async fn memory_used(&self) -> Result<u64> {
        self.worker.memory_used().await
    }

    /// How to reach it.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The URL of `database` a client of `profile` connects to on this
    /// stack: PgBouncer's ([`Endpoints::pooled_url`]), PostgreSQL's for
    /// [`Profile::NoPooler`], or for a profile
    /// [behind the stage](Profile::behind_stage) the crate's Supavisor-like
    /// stage in front of PgBouncer, with the profile's rules. The stage is
    /// started in this process on the first call (on `127.0.0.1`, serving
    /// TLS with the stack's certificate) and serves until the process
    /// exits. `Err(Error::Stage)` when it cannot bind its port.
    pub async fn url_for_profile(&self, profile: Profile, database: &str) -> Result<DbUrl> {
        let e = &self.endpoints;
        if profile.bypasses_pooler() {
            return Ok(e.direct_url(database));
        }
        let pooled = e.pooled_url(database);
        let Some(rules) = Rules::of(profile, self.settings.default_pool_size) else {
            return Ok(pooled);
        };
        let certs = Certificates::of(
            e.server_tls()
                .map(|t| (t.cert_pem.as_str(), t.key_pem.as_str())),
            e.ca_cert_pem(),
        );
        let direct = e.direct_url(database);
        crate::stage::in_front_of(pooled, Some(&direct), rules, certs).await
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &StackSettings {
        &self.settings
    }

    /// Checks that the stack is alive: `Err(Error::StackDied)` once its
    /// PostgreSQL is gone. One round trip on this process's lease (the
    /// process's worker also does this every second while idle, and logs a
    /// `tracing` warning as soon as the stack dies).
    pub async fn check(&self) -> Result<()> {
        self.worker.probe().await
    }

    /// Asks Docker whether both containers of the stack still run:
    /// `Err(Error::StackDied)` naming each one that does not (gone, or
    /// exited with its code). Unlike [`Stack::check`], a failure does not
    /// mark the stack dead for this process: a PgBouncer being restarted
    /// comes back, so call it twice before concluding (as `up` does).
    pub async fn check_containers(&self) -> Result<()> {
        if let Some(e) = self.lease.dead() {
            return Err(e);
        }
        let lease = self.lease.clone();
        self.background
            .run_within(
                // Two inspections, each bounded by the Docker call limit.
                crate::docker::CALL_TIMEOUT * 2 + Duration::from_secs(5),
                "asking Docker about the stack's containers",
                "the background thread is busy or Docker is stuck; check `docker ps`",
                move || async move { lease.containers().await },
            )
            .await
    }

    pub(crate) fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Removes the containers now.
    pub async fn stop(mut self) -> Result<()> {
        self.owned = false;
        let worker = self.worker.clone();
        tokio::task::spawn_blocking(move || worker.shutdown_blocking(Duration::from_secs(60)))
            .await
            .map_err(|e| Error::Stack { reason: format!("stopping the stack: {e}") })?
            .then_some(())
            .ok_or_else(|| Error::Timeout {
                what: "removing the stack's containers".into(),
                after: Duration::from_secs(60),
                hint: "Docker is slow or stuck; check `docker ps -a --filter label=pgbouncer-fixtures.managed`".into(),
            })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.owned {
            self.worker.shutdown_blocking(Duration::from_secs(60));
        }
    }
}

enum Mode {
    /// A stack of this process, removed when it stops.
    Private(String),
    /// The run's stack, created or joined.
    Shared(RunKey),
}

impl Mode {
    fn id(&self) -> &str {
        match self {
            Mode::Private(id) => id,
            Mode::Shared(run) => &run.key,
        }
    }
}
