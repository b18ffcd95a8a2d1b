//! The running pair: PostgreSQL and PgBouncer on a private network, their
//! endpoints, readiness, and the per-process shared stack.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;
use sqlx::{Connection, PgConnection};
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::CopyTargetOptions;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::docker;
use crate::error::{Error, Result};
use crate::images::{ensure_images, ImageRef};
use crate::settings::StackSettings;
use crate::target::DbUrl;
use crate::worker::{shutdown_at_exit, Worker, WorkerSetup};

/// The stack's superuser (as on Supabase).
pub const STACK_USER: &str = "postgres";

/// How to reach a stack: host, ports and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoints {
    host: String,
    pooled_port: u16,
    direct_port: u16,
    password: String,
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
        DbUrl::parse("the stack's endpoints", &raw).expect("stack URLs are well-formed")
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
/// removes its containers and network. Stacks from [`Stack::shared`] live
/// until the process exits.
pub struct Stack {
    id: String,
    endpoints: Endpoints,
    settings: StackSettings,
    worker: Worker,
    owned: bool,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("id", &self.id)
            .field("endpoints", &self.endpoints)
            .field("settings", &self.settings)
            .finish()
    }
}

type SharedCell = Arc<tokio::sync::OnceCell<&'static Stack>>;
static SHARED: Mutex<Option<HashMap<String, SharedCell>>> = Mutex::new(None);

impl Stack {
    /// Starts a new stack with these settings; it is removed when dropped.
    pub async fn start(settings: StackSettings) -> Result<Stack> {
        let started = Instant::now();
        let id: String = {
            let mut rng = rand::thread_rng();
            (0..10)
                .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
                .collect()
        };
        let thread_settings = settings.clone();
        let thread_id = id.clone();
        let span = tracing::info_span!("stack_start", stack = %id);
        let (worker, endpoints) = Worker::spawn(format!("pgbf-stack-{id}"), move || {
            start_containers(thread_id, thread_settings)
        })
        .await?;
        let _enter = span.enter();
        tracing::info!(
            stack = %id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            pooled_port = endpoints.pooled_port,
            direct_port = endpoints.direct_port,
            "stack ready"
        );
        Ok(Stack {
            id,
            endpoints,
            settings,
            worker,
            owned: true,
        })
    }

    /// The stack shared by every caller in this process asking for the same
    /// settings: started on first use, removed when the process exits.
    pub async fn shared(settings: &StackSettings) -> Result<&'static Stack> {
        let cell = {
            let mut guard = SHARED.lock().map_err(|_| Error::Stack {
                reason: "shared stack registry poisoned by an earlier panic".into(),
            })?;
            guard
                .get_or_insert_with(HashMap::new)
                .entry(settings.key())
                .or_default()
                .clone()
        };
        cell.get_or_try_init(|| async {
            let mut stack = Stack::start(settings.clone()).await?;
            stack.owned = false;
            shutdown_at_exit(&stack.worker);
            Ok::<_, Error>(&*Box::leak(Box::new(stack)))
        })
        .await
        .copied()
    }

    /// The stack's id (the value of its `pgbouncer-fixtures.stack` label).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How to reach it.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &StackSettings {
        &self.settings
    }

    pub(crate) fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Removes the containers and network now.
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

struct Containers {
    postgres: ContainerAsync<GenericImage>,
    pgbouncer: Option<ContainerAsync<GenericImage>>,
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

fn image(r: &ImageRef) -> GenericImage {
    GenericImage::new(r.name.clone(), r.tag.clone())
}

// Runs on the worker thread: everything Docker-bound lives on its runtime.
async fn start_containers(id: String, settings: StackSettings) -> Result<(Endpoints, WorkerSetup)> {
    let docker = docker::connect().await?;
    let build_started = Instant::now();
    let images = ensure_images(&docker, &settings.images).await?;
    tracing::debug!(
        elapsed_ms = build_started.elapsed().as_millis() as u64,
        "images ready"
    );

    let network = format!("pgbf-{id}");
    docker::create_network(&docker, &network, &id).await?;
    let password = random_password();
    let verifier = scram_verifier(&password, settings.scram_iterations);
    let pg_name = format!("pgbf-{id}-postgres");

    let result = tokio::time::timeout(settings.startup_timeout, async {
        let postgres = image(&images.postgres)
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_network(&network)
            .with_container_name(&pg_name)
            .with_labels(docker::labels(&id))
            .with_env_var("POSTGRES_PASSWORD", &verifier)
            .with_mount(Mount::tmpfs_mount("/pgdata").with_mode(0o1777))
            .with_startup_timeout(settings.startup_timeout)
            .start()
            .await
            .map_err(|e| Error::Stack {
                reason: format!("PostgreSQL container did not start: {e}"),
            })?;
        let mut containers = Containers {
            postgres,
            pgbouncer: None,
        };
        let pgbouncer = image(&images.pgbouncer)
            .with_exposed_port(6432.tcp())
            .with_wait_for(WaitFor::message_on_either_std("process up: PgBouncer"))
            .with_network(&network)
            .with_container_name(format!("pgbf-{id}-pgbouncer"))
            .with_labels(docker::labels(&id))
            .with_copy_to(
                CopyTargetOptions::new("/etc/pgbf/pgbouncer.ini").with_mode(0o644),
                settings.pgbouncer_ini(&pg_name).into_bytes(),
            )
            .with_copy_to(
                CopyTargetOptions::new("/etc/pgbf/userlist.txt").with_mode(0o644),
                format!("\"{STACK_USER}\" \"{verifier}\"\n").into_bytes(),
            )
            .with_startup_timeout(settings.startup_timeout)
            .start()
            .await;
        containers.pgbouncer = Some(match pgbouncer {
            Ok(c) => c,
            Err(e) => {
                remove(containers).await;
                return Err(Error::Stack {
                    reason: format!("PgBouncer container did not start: {e}"),
                });
            }
        });
        let ports = async {
            let direct_port = containers.postgres.get_host_port_ipv4(5432).await?;
            let pooled_port = match &containers.pgbouncer {
                Some(c) => c.get_host_port_ipv4(6432).await?,
                None => unreachable!("set above"),
            };
            let host = match containers.postgres.get_host().await?.to_string().as_str() {
                "localhost" => "127.0.0.1".to_string(),
                other => other.to_string(),
            };
            Ok::<_, testcontainers::TestcontainersError>(Endpoints {
                host,
                pooled_port,
                direct_port,
                password: password.clone(),
            })
        }
        .await;
        match ports {
            Ok(endpoints) => Ok((endpoints, containers)),
            Err(e) => {
                remove(containers).await;
                Err(Error::Stack {
                    reason: format!("cannot read the containers' ports: {e}"),
                })
            }
        }
    })
    .await;

    let (endpoints, containers) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            docker::remove_network(&docker, &network).await;
            return Err(e);
        }
        Err(_) => {
            // The containers (if any) were dropped with the future; testcontainers removes them.
            docker::remove_network(&docker, &network).await;
            return Err(Error::Timeout {
                what: "starting PostgreSQL and PgBouncer".into(),
                after: settings.startup_timeout,
                hint: "raise PGBF_STARTUP_TIMEOUT_SECS on a slow machine, or check `docker logs` of the pgbf-* containers".into(),
            });
        }
    };

    if let Err(e) = wait_until_ready(&endpoints, settings.startup_timeout).await {
        remove(containers).await;
        docker::remove_network(&docker, &network).await;
        return Err(e);
    }

    let cleanup_docker = docker.clone();
    let cleanup = Box::pin(async move {
        remove(containers).await;
        docker::remove_network(&cleanup_docker, &network).await;
        tracing::info!(network, "stack removed");
    });
    let admin_url = endpoints.direct_url("postgres");
    let console_url = Some(endpoints.admin_url());
    let pooled_url = endpoints.pooled_url("postgres");
    Ok((
        endpoints,
        WorkerSetup {
            admin_url,
            admin_kind: "direct endpoint",
            connect_timeout: Duration::from_secs(10),
            console_url,
            pooled_url,
            cleanup: Some(cleanup),
        },
    ))
}

async fn remove(containers: Containers) {
    if let Some(pgbouncer) = containers.pgbouncer {
        if let Err(e) = pgbouncer.rm().await {
            tracing::warn!(error = %e, "could not remove the PgBouncer container");
        }
    }
    if let Err(e) = containers.postgres.rm().await {
        tracing::warn!(error = %e, "could not remove the PostgreSQL container");
    }
}

/// Ready means: a real query answers through PgBouncer (which implies Postgres
/// accepts logins too), not merely a log line.
async fn wait_until_ready(endpoints: &Endpoints, timeout: Duration) -> Result<()> {
    let url = endpoints.pooled_url("postgres");
    let options = url
        .connect_options()
        .application_name("pgbouncer-fixtures readiness")
        .extra_float_digits(None);
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = PgConnection::connect_with(&options).await?;
            // Simple protocol: no prepared statement involved.
            sqlx::raw_sql("select 1").execute(&mut conn).await?;
            conn.close().await
        })
        .await;
        match attempt {
            Ok(Ok(())) => return Ok(()),
            // The server answered with a refusal that waiting will not change.
            Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() != Some("57P03") => {
                return Err(Error::Stack {
                    reason: format!(
                        "PgBouncer at {url} refused the readiness query: {}",
                        e.message()
                    ),
                });
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "no answer within 5 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Timeout {
        what: format!("the first query through PgBouncer at {url}"),
        after: timeout,
        hint: format!("last error: {last_error}"),
    })
}
