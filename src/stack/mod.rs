//! The running pair: PostgreSQL and PgBouncer, their endpoints, readiness,
//! private stacks (`Stack::start`) and the run's shared stack
//! (`Stack::shared`: joined when it answers, else created under a file
//! lock; see `runkey`).

pub(crate) mod lease;
pub(crate) mod lock;
pub(crate) mod reaper;
pub(crate) mod run_key;
pub(crate) mod tls;

use std::fmt;
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;
use sqlx::{Connection, PgConnection};

use crate::docker;
use crate::docker::containers::{self, Listen, PairInfo, PairState};
use crate::docker::images::ensure_images;
use crate::error::{Error, Result};
use crate::provision::admin::AdminUrls;
use crate::provision::worker::{Worker, WorkerSetup};
use crate::stack::lease::ProbeTarget;
use crate::stack::run_key::RunKey;
use crate::support::registry::OnceMap;
use crate::target::settings::{PoolMode, StackSettings};
use crate::target::DbUrl;

/// The stack's superuser (as on Supabase).
pub const STACK_USER: &str = "postgres";

/// `application_name` prefix of a lease straight on PostgreSQL, and of one
/// through PgBouncer: the stack's watchdog counts both
/// (`docker/postgres-entrypoint.sh`, `pgbf_leases`).
const LEASE_APP: &str = "pgbf-lease";
const POOLED_LEASE_APP: &str = "pgbf-pooled-lease";
/// How long building the images may take (a stock base image installs
/// PostgreSQL from Debian's mirror: minutes on a slow network).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a joiner waits for an existing stack to answer before replacing it.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Between two attempts to reach a stack that is starting: an attempt costs
/// a refused connection; a stack start waits on two of these in a row.
const RETRY_PAUSE: Duration = Duration::from_millis(15);

/// How to reach a stack: host, ports and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoints {
    host: String,
    pooled_port: u16,
    direct_port: u16,
    password: String,
    ca_pem: Option<String>,
    require_tls: bool,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints")
            .field("host", &self.host)
            .field("pooled_port", &self.pooled_port)
            .field("direct_port", &self.direct_port)
            .field("user", &STACK_USER)
            .field("password", &"***")
            .finish()
    }
}

impl Endpoints {
    fn url(&self, port: u16, database: &str) -> DbUrl {
        let raw = format!(
            "postgres://{STACK_USER}:{}@{}:{port}/{database}",
            self.password, self.host
        );
        // Built from parts we control: host, port, alphanumeric password.
        DbUrl::parse("the stack's endpoints", &raw)
            .expect("stack URLs are well-formed")
            .on_stack(self.require_tls)
    }

    /// The stack's own certificate authority (PEM), which signed the
    /// certificate both ports serve: for `sslmode=verify-full` /
    /// `verify-ca` (sqlx: `PgConnectOptions::ssl_root_cert_from_pem`).
    /// `None` on images that do not serve TLS.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Whether both ports refuse clients without TLS.
    pub fn requires_tls(&self) -> bool {
        self.require_tls
    }

    /// URL of `database` through PgBouncer.
    pub fn pooled_url(&self, database: &str) -> DbUrl {
        self.url(self.pooled_port, database)
    }

    /// URL of `database` straight on PostgreSQL.
    pub fn direct_url(&self, database: &str) -> DbUrl {
        self.url(self.direct_port, database)
    }

    /// URL of PgBouncer's admin console (`SHOW POOLS`, `SHOW DATABASES` ...).
    /// It speaks only the simple query protocol: use `sqlx::raw_sql`.
    pub fn admin_url(&self) -> DbUrl {
        self.url(self.pooled_port, "pgbouncer")
    }

    /// The host the ports are published on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// PgBouncer's host port.
    pub fn pooled_port(&self) -> u16 {
        self.pooled_port
    }

    /// PostgreSQL's host port.
    pub fn direct_port(&self) -> u16 {
        self.direct_port
    }
}

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
    owned: bool,
    joined: bool,
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

/// What the stack's background runtime hands back once a stack is up.
struct Started {
    id: String,
    endpoints: Endpoints,
    joined: bool,
}

impl Stack {
    /// Starts a new private stack with these settings; it is removed when
    /// dropped (and reaped like any stack if this process is killed).
    pub async fn start(settings: StackSettings) -> Result<Stack> {
        let id = crate::support::digest::random_hex(10);
        Stack::launch(settings, Mode::Private(id)).await
    }

    async fn launch(settings: StackSettings, mode: Mode) -> Result<Stack> {
        let started = Instant::now();
        let thread_settings = settings.clone();
        let thread_name = format!("pgbf-stack-{}", mode.id());
        let owned = matches!(mode, Mode::Private(_));
        let (worker, up) =
            Worker::start(thread_name, move || bring_up(mode, thread_settings)).await?;
        tracing::info!(
            stack = %up.id,
            joined = up.joined,
            elapsed_ms = started.elapsed().as_millis() as u64,
            pooled_port = up.endpoints.pooled_port,
            direct_port = up.endpoints.direct_port,
            "stack ready"
        );
        Ok(Stack {
            id: up.id,
            endpoints: up.endpoints,
            settings,
            worker,
            owned,
            joined: up.joined,
        })
    }

    /// The run's stack for these settings: joined if a process of the same
    /// run (same settings, run id and checkout; see the README's sharing
    /// rule) already started it, else started here. This process holds a
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

    /// How to reach it.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
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
        self.worker.containers().await
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

fn random_password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The SCRAM-SHA-256 verifier of `password` (RFC 5802/7677, PostgreSQL's
/// format). Postgres and PgBouncer both get this verifier instead of the
/// password: PgBouncer then checks clients with the stored keys (no key
/// derivation of its own per login) and reuses the client's proof to log in
/// to Postgres.
fn scram_verifier(password: &str, iterations: u32) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    type HmacSha256 = Hmac<sha2::Sha256>;
    let mac = |key: &[u8], data: &[u8]| {
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        m.update(data);
        m.finalize().into_bytes()
    };
    let salt: [u8; 16] = rand::random();
    // Hi(password, salt, i): PBKDF2 with HMAC-SHA-256, one block.
    let mut u = mac(
        password.as_bytes(),
        &[&salt[..], &1u32.to_be_bytes()].concat(),
    );
    let mut salted = u;
    for _ in 1..iterations {
        u = mac(password.as_bytes(), &u);
        salted.iter_mut().zip(u.iter()).for_each(|(s, x)| *s ^= x);
    }
    let client_key = mac(&salted, b"Client Key");
    let stored_key = <sha2::Sha256 as sha2::Digest>::digest(client_key);
    let server_key = mac(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

fn endpoints_of(info: &PairInfo, host: &str, settings: &StackSettings) -> Endpoints {
    Endpoints {
        host: host.to_string(),
        pooled_port: info.pooled_port,
        direct_port: info.direct_port,
        password: info.password.clone(),
        ca_pem: info.ca_pem.clone(),
        require_tls: settings.require_tls,
    }
}

// Runs on the stack's background runtime: everything Docker-bound lives on its runtime.
async fn bring_up(mode: Mode, settings: StackSettings) -> Result<(Started, WorkerSetup)> {
    let started = Instant::now();
    // The process's engine: the one testcontainers builds the images on too.
    let engine = docker::engine().await?;
    let docker = engine.connect().await?;
    let engine_at = started.elapsed();
    let host = engine.published_host();
    let id = mode.id().to_string();
    let (endpoints, lease, ready, joined) = match &mode {
        Mode::Private(_) => {
            let (endpoints, lease, ready) = create(&docker, host, &id, false, &settings).await?;
            (endpoints, lease, ready, false)
        }
        Mode::Shared(run) => {
            // A stack that answers is joined without the lock, which only
            // serialises creating one: nextest starts processes two at a
            // time, and a joiner used to wait ~20 ms for the other's checks.
            let mut found = join(&docker, host, &id, &settings, Patience::Once).await?;
            let checked_at = started.elapsed();
            // Serialises create-or-repair between the run's processes; the
            // kernel releases it if this process dies. Dropped at the end of
            // this arm: the lock file is unlinked, then unlocked.
            let mut held = None;
            if found.is_none() {
                held = Some(lock::lock(&run.key, settings.startup_timeout).await?);
                found = join(&docker, host, &id, &settings, Patience::Repair).await?;
            }
            match found {
                Some((endpoints, lease, ready)) => {
                    // A join is on every nextest process's path: where it goes.
                    tracing::debug!(
                        stack = %id,
                        engine_ms = engine_at.as_secs_f64() * 1e3,
                        check_ms = (checked_at - engine_at).as_secs_f64() * 1e3,
                        locked = held.is_some(),
                        all_ms = started.elapsed().as_secs_f64() * 1e3,
                        "joined the run's stack"
                    );
                    (endpoints, lease, ready, true)
                }
                None => {
                    lock::remove_stale_locks();
                    crate::stack::reaper::sweep(&docker).await;
                    let (endpoints, lease, ready) =
                        create(&docker, host, &id, true, &settings).await?;
                    (endpoints, lease, ready, false)
                }
            }
        }
    };
    // Claims and hand-overs are one statement each: through PgBouncer a
    // login costs no server backend, unless it pins one for the session.
    let books_via_pooler = settings.pool_mode != PoolMode::Session;
    let books_conn = if books_via_pooler {
        Some(ready)
    } else {
        let _ = ready.close().await;
        None
    };
    let cleanup = match mode {
        Mode::Private(_) => {
            let docker = docker.clone();
            let id = id.clone();
            Some(Box::pin(async move {
                containers::remove_pair(&docker, &id).await;
                tracing::info!(stack = %id, "stack removed");
            }) as crate::provision::worker::Cleanup)
        }
        // The run's stack outlives this process; the lease's end lets it go.
        Mode::Shared(_) => None,
    };
    let setup = WorkerSetup {
        urls: AdminUrls {
            admin_url: endpoints.direct_url("postgres"),
            admin_kind: crate::connect::Endpoint::Direct,
            connect_timeout: Duration::from_secs(10),
            console_url: Some(endpoints.admin_url()),
            pooled_url: endpoints.pooled_url("postgres"),
            books_url: books_via_pooler.then(|| endpoints.pooled_url("postgres")),
        },
        cleanup,
        lease: Some((
            lease,
            ProbeTarget {
                docker,
                stack_id: id.clone(),
                postgres_container: containers::postgres_name(&id),
                // Through PgBouncer exactly when the bookkeeping is (see take_lease).
                renew: books_via_pooler.then(|| {
                    let (endpoints, settings) = (endpoints.clone(), settings.clone());
                    let renew: crate::stack::lease::Renew = Box::new(move || {
                        let (endpoints, settings) = (endpoints.clone(), settings.clone());
                        Box::pin(async move {
                            take_lease(&endpoints, &settings, crate::stack::lease::RENEW_TIMEOUT)
                                .await
                        })
                    });
                    renew
                }),
            },
        )),
        books_conn,
    };
    Ok((
        Started {
            id,
            endpoints,
            joined,
        },
        setup,
    ))
}

/// How hard a join tries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// One attempt per check, nothing removed: the first look, without the
    /// lock (a stack being created does not answer yet: its creator holds
    /// the lock, and the caller waits for it there).
    Once,
    /// Under the lock: waits up to [`JOIN_TIMEOUT`] for the stack to answer,
    /// and removes a broken or unanswering one (`None`: create a new one).
    Repair,
}

/// Joins the running stack `id`, re-checking it: a lease, and a query
/// through PgBouncer, whose connection it returns too (the process's first
/// bookkeeping connection).
async fn join(
    docker: &bollard::Docker,
    host: &str,
    id: &str,
    settings: &StackSettings,
    patience: Patience,
) -> Result<Option<(Endpoints, PgConnection, PgConnection)>> {
    let info = match containers::pair_state(docker, id).await? {
        PairState::Absent => return Ok(None),
        PairState::Running(info) => info,
        PairState::Broken(_) if patience == Patience::Once => return Ok(None),
        PairState::Broken(why) => {
            tracing::info!(stack = id, why, "replacing a broken stack of this run");
            containers::remove_pair(docker, id).await;
            return Ok(None);
        }
    };
    let endpoints = endpoints_of(&info, host, settings);
    let wait = match patience {
        Patience::Once => Duration::ZERO,
        Patience::Repair => JOIN_TIMEOUT,
    };
    // Both at once: a join is on every nextest process's path.
    let checked = tokio::try_join!(
        take_lease(&endpoints, settings, wait),
        wait_until_ready(&endpoints, wait)
    );
    match checked {
        Ok((lease, ready)) => Ok(Some((endpoints, lease, ready))),
        Err(e) if patience == Patience::Once => {
            tracing::debug!(stack = id, error = %e, "the run's stack did not answer at once; checking again under the lock");
            Ok(None)
        }
        Err(e) => {
            tracing::info!(stack = id, error = %e, "replacing a stack of this run that does not answer");
            containers::remove_pair(docker, id).await;
            Ok(None)
        }
    }
}

/// Creates stack `id`, waits until it answers (its ports published on
/// `host`), and takes this process's lease; also returns the connection
/// through PgBouncer that proved it ready.
async fn create(
    docker: &bollard::Docker,
    host: &str,
    id: &str,
    shared: bool,
    settings: &StackSettings,
) -> Result<(Endpoints, PgConnection, PgConnection)> {
    let build_started = Instant::now();
    // testcontainers builds missing images: it must reach the same engine
    // (two `docker info` calls, only when an image is missing).
    let engine_agrees = || async { docker::engine_checked().await.map(|_| ()) };
    // Where the pair will listen (one `docker info`) while the images are checked.
    let (images, listen) = tokio::join!(
        tokio::time::timeout(
            IMAGE_TIMEOUT,
            ensure_images(docker, &settings.images, engine_agrees),
        ),
        containers::plan_listen(docker, settings)
    );
    let listen = listen?;
    let images = images.map_err(|_| Error::Timeout {
        what: "building the stack's images".into(),
        after: IMAGE_TIMEOUT,
        hint: "the Debian mirror or the Docker build is stuck; run `docker build` of \
                   docker/*.Dockerfile by hand to see where, or set PGBF_POSTGRES_IMAGE / \
                   PGBF_PGBOUNCER_IMAGE to images you have"
            .into(),
    })??;
    tracing::debug!(
        elapsed_ms = build_started.elapsed().as_millis() as u64,
        "images ready"
    );
    let password = random_password();
    let verifier = scram_verifier(&password, settings.scram_iterations);
    let tls = crate::stack::tls::generate(host)?;
    let secrets = containers::Secrets {
        password: &password,
        scram_verifier: &verifier,
        tls: &tls,
    };
    let mut listen = listen;
    let mut attempt = 1;
    loop {
        tracing::debug!(?listen, attempt, "the pair's network");
        // (create_pair removes what it made when it fails.)
        let made =
            containers::create_pair(docker, id, shared, settings, listen, &images, &secrets).await;
        let up = match made {
            Ok(()) => {
                let up = until_pair_stops(docker, id, pair_up(docker, host, id, settings)).await;
                if up.is_err() {
                    containers::remove_pair(docker, id).await;
                }
                up
            }
            Err(e) => Err(e),
        };
        match up {
            // On the host network a server that stopped while starting
            // (`Stack`), or before PgBouncer's container could join it
            // (`Docker`), most likely lost its port to another process in
            // between: once more on other ports. A timeout is not retried: it
            // would double the wait.
            Err(e @ (Error::Stack { .. } | Error::Docker { .. }))
                if matches!(listen, Listen::Host(_)) && attempt < 2 =>
            {
                tracing::debug!(error = %e, "the pair stopped while starting; new ports");
                listen = containers::plan_listen(docker, settings).await?;
                attempt += 1;
            }
            up => return up,
        }
    }
}

/// The running pair's endpoints, this process's lease and the readiness
/// connection, once both answer.
async fn pair_up(
    docker: &bollard::Docker,
    host: &str,
    id: &str,
    settings: &StackSettings,
) -> Result<(Endpoints, PgConnection, PgConnection)> {
    let info = match containers::pair_state(docker, id).await? {
        PairState::Running(info) => info,
        PairState::Absent => {
            return Err(Error::Stack {
                reason: "the containers vanished right after starting; see `docker events`".into(),
            })
        }
        PairState::Broken(why) => {
            return Err(Error::Stack {
                reason: format!("the containers stopped right after starting ({why}); run the stack's image by hand to see its log"),
            })
        }
    };
    let endpoints = endpoints_of(&info, host, settings);
    // PostgreSQL accepts logins first (it listens a few ms before its role
    // has the stack's password): a server login PgBouncer tried in between
    // would fail, and PgBouncer waits `server_login_retry` (1 s) before the
    // next one, with the lease (through PgBouncer) waiting on it.
    let direct = connect_until(
        &endpoints.direct_url("postgres"),
        "pgbouncer-fixtures admin",
        "select 1",
        settings.startup_timeout,
        format!(
            "the first login to PostgreSQL at {}",
            endpoints.direct_url("postgres")
        ),
        |_| None,
    )
    .await?;
    let _ = direct.close().await;
    // Then the lease: the watchdog's start-up grace is counting.
    let lease = take_lease(&endpoints, settings, settings.startup_timeout).await?;
    let ready = wait_until_ready(&endpoints, settings.startup_timeout).await?;
    Ok((endpoints, lease, ready))
}

/// `work` on a new pair, unless the pair stops first (a server that could
/// not start): then an error within a second, not at the start-up timeout.
async fn until_pair_stops<T>(
    docker: &bollard::Docker,
    id: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(problem) = containers::pair_problem(docker, id).await? {
                    return Err(Error::Stack {
                        reason: format!(
                            "the stack stopped while starting ({problem}); run the stack's image by hand to see its log"
                        ),
                    });
                }
            }
        }
    }
}

/// Opens this process's lease: a connection the watchdog counts, through
/// PgBouncer (a login there starts no PostgreSQL backend: ~4.5 ms of the
/// server's CPU less per process) unless PgBouncer pools sessions, where it
/// would pin a server connection for the process's whole life: there it is
/// a direct one. Tries at least once, then until `timeout`.
async fn take_lease(
    endpoints: &Endpoints,
    settings: &StackSettings,
    timeout: Duration,
) -> Result<PgConnection> {
    let (url, prefix) = if settings.pool_mode == PoolMode::Session {
        (endpoints.direct_url("postgres"), LEASE_APP)
    } else {
        (endpoints.pooled_url("postgres"), POOLED_LEASE_APP)
    };
    let app = format!("{prefix} pid {}", std::process::id());
    // Tells the watchdog a lease existed, however short it lives, which
    // ends its start-up grace (see postgres-entrypoint.sh).
    let first = "copy (select) to '/tmp/pgbf-leased'";
    let what = format!("a lease connection to PostgreSQL at {url}");
    connect_until(&url, &app, first, timeout, what, |_| None).await
}

/// Ready means: a real query answers through PgBouncer (which implies Postgres
/// accepts logins too), not merely a log line. Returns that connection.
/// Tries at least once, then until `timeout`.
async fn wait_until_ready(endpoints: &Endpoints, timeout: Duration) -> Result<PgConnection> {
    let url = endpoints.pooled_url("postgres");
    let what = format!("the first query through PgBouncer at {url}");
    // Simple protocol: no prepared statement involved.
    connect_until(
        &url,
        "pgbouncer-fixtures admin",
        "select 1",
        timeout,
        what,
        |e| {
            // The server answered with a refusal that waiting will not change.
            match e {
                sqlx::Error::Database(e) if e.code().as_deref() != Some("57P03") => {
                    Some(Error::Stack {
                        reason: format!(
                            "PgBouncer at {url} refused the readiness query: {}",
                            e.message()
                        ),
                    })
                }
                _ => None,
            }
        },
    )
    .await
}

/// Connects to `url` and runs `first` (simple protocol), 5 s at most per
/// attempt, at least once and then until `timeout`, [`RETRY_PAUSE`] apart;
/// returns the connection. An error `fatal` turns into one ends it at once.
async fn connect_until(
    url: &DbUrl,
    app: &str,
    first: &'static str,
    timeout: Duration,
    what: String,
    fatal: impl Fn(&sqlx::Error) -> Option<Error>,
) -> Result<PgConnection> {
    let options = crate::connect::options(url, app);
    let deadline = Instant::now() + timeout;
    let mut last_error: String;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = PgConnection::connect_with(&options).await?;
            sqlx::raw_sql(first).execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(conn)
        })
        .await;
        match attempt {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => match fatal(&e) {
                Some(error) => return Err(error),
                None => last_error = e.to_string(),
            },
            Err(_) => last_error = "no answer within 5 s".into(),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(Error::Timeout {
        what,
        after: timeout,
        hint: format!("last error: {}", crate::target::env::redact(&last_error)),
    })
}
