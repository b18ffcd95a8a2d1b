//! What a stack looks like: the pooler's mode and knobs and the images, with
//! `PGBF_*` environment overrides and a stable key for sharing stacks.
//! PgBouncer's own file is written in `pgbouncer_ini`, each profile's knobs
//! are set in `profile_settings`.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::support::digest::hex;
use crate::target::env::Env;
use crate::target::images::ImageSettings;
use crate::target::postgres_version::PostgresVersion;
use crate::target::profile::Profile;

pub use crate::target::pgbouncer_ini::PoolMode;
pub(crate) use crate::target::pgbouncer_ini::Ports;
pub use crate::target::profile_settings::supavisor_dropped_parameters;

/// How a stack's ports reach this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Network {
    /// [`Host`](Network::Host) when the Docker engine runs this machine's
    /// kernel and network (a local Linux engine, not rootless, not Docker
    /// Desktop's VM), else [`Bridge`](Network::Bridge).
    #[default]
    Auto,
    /// PostgreSQL and PgBouncer listen on 127.0.0.1 of this machine, on
    /// free ports the crate picks (below the ephemeral range): no
    /// `docker-proxy` copies every byte of every connection, and the
    /// containers start ~0.1 s sooner. Only on a local Linux engine.
    Host,
    /// Docker's bridge network, ports published through Docker (on
    /// 127.0.0.1 of a local engine, see
    /// [`publish_all_interfaces`](StackSettings::publish_all_interfaces)).
    Bridge,
}

impl std::str::FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Network> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Network::Auto),
            "host" => Ok(Network::Host),
            "bridge" => Ok(Network::Bridge),
            _ => Err(Error::InvalidEnv {
                var: "PGBF_NETWORK",
                value: crate::target::env::redact_value(s),
                expected: "auto, host or bridge",
            }),
        }
    }
}

/// The settings of a Postgres + PgBouncer stack: a plain PgBouncer's knobs.
///
/// The defaults are those of [`Profile::SupabaseShared`](crate::Profile):
/// `pool_mode = transaction`, no prepared-statement tracking
/// (`max_prepared_statements = 0`), unknown startup parameters ignored.
/// [`Profile::apply`](crate::Profile::apply) sets another profile's; the
/// `with_*` methods set single knobs for any other PgBouncer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackSettings {
    /// PgBouncer's `pool_mode`.
    pub pool_mode: PoolMode,
    /// PgBouncer's `max_prepared_statements` (0: no tracking, as Supabase's port 6543).
    pub max_prepared_statements: u32,
    /// PgBouncer's `default_pool_size`: server connections per database and user.
    pub default_pool_size: u32,
    /// PgBouncer's `max_db_client_connections`: clients per database at
    /// most, the next one refused at once (0: no cap). Supavisor's session
    /// mode refuses client `pool_size + 1`: [`Profile::SupabaseSession`]
    /// sets it to its pool size (15), and a cap equal to the pool size
    /// follows [`with_default_pool_size`](Self::with_default_pool_size).
    pub max_db_client_connections: u32,
    /// PgBouncer's `ignore_startup_parameters`: parameters accepted at
    /// startup and dropped (any other unknown one is refused).
    pub ignore_startup_parameters: Vec<String>,
    /// PgBouncer's `track_extra_parameters`: parameters kept per client and
    /// restored on each server connection, beyond its built-in five.
    pub track_extra_parameters: Vec<String>,
    /// Accept only TLS connections from clients, on both ports (Supabase's
    /// "Enforce SSL"; `PGBF_REQUIRE_TLS=1`). TLS is always offered.
    pub require_tls: bool,
    /// PgBouncer's `server_round_robin`.
    pub server_round_robin: bool,
    /// Which images run the stack.
    pub images: ImageSettings,
    /// The PostgreSQL major the stack runs (`PGBF_POSTGRES_VERSION`: 15 or
    /// 17; default 17). PgBouncer is the same (1.24) either way.
    pub postgres_version: PostgresVersion,
    /// How long starting the stack may take before it is a timeout.
    pub startup_timeout: Duration,
    /// Iterations of the stack's SCRAM-SHA-256 verifier (default 16;
    /// PostgreSQL's and Supabase's: 4096). Every login derives a key with
    /// this many HMAC rounds on the client: 4096 cost sqlx ~20 ms per
    /// connection in a debug build (`cargo test`), 16 cost ~0.1 ms. Drivers
    /// follow the count the server sends, so nothing else changes; the
    /// password is random and the ports private.
    pub scram_iterations: u32,
    /// How long the stack outlives its last user (`PGBF_REAP_AFTER_SECS`):
    /// the PostgreSQL container stops itself once no process has held a
    /// lease on it for this long, and both containers remove themselves.
    pub reap_after: Duration,
    /// Pins the run id that decides which processes share a stack
    /// (`PGBF_RUN_ID`); unset: every run of the checkout (with the same
    /// settings) shares the checkout's stack while it lives.
    pub run_id: Option<String>,
    /// Publish the stack's ports on every interface of the Docker host
    /// (`PGBF_PUBLISH_ALL_INTERFACES=1`). Off: a local engine (Unix socket,
    /// or TCP on a loopback address) publishes them on 127.0.0.1 only, so a
    /// superuser PostgreSQL is not reachable from the network; a remote
    /// engine publishes them on every interface anyway (they must be
    /// reachable from this machine through the engine's address).
    pub publish_all_interfaces: bool,
    /// How the stack's ports reach this machine (`PGBF_NETWORK`: `auto`,
    /// `host` or `bridge`; default `auto`). Publishing on every interface
    /// needs the bridge network.
    pub network: Network,
    /// How long the checkout's shared stack stays up after its last lease,
    /// so that the next run (the edit-and-rerun loop) finds it, its
    /// templates and prepared clones (`PGBF_KEEP_WARM_SECS`; default 120 s,
    /// 0 when `CI` is set). Stacks of a pinned run id and private stacks
    /// go [`reap_after`](Self::reap_after) after their last lease.
    pub keep_warm: Duration,
    /// Prepared clones the stack's janitor keeps ready between runs, in
    /// all templates together, at most (`PGBF_MAX_WARM_CLONES`; default
    /// 128, ~8 MB of the stack's tmpfs each; 0: the janitor prepares none).
    /// Between runs it makes as many clones of each template as the last
    /// run claimed, up to this. Only stacks that outlive their last lease by
    /// 30 s or more (the checkout's stack with [`keep_warm`](Self::keep_warm))
    /// get them: on others nobody would claim them. Read by the process that
    /// starts the stack.
    pub max_warm_clones: u32,
    /// The stack's memory budget in bytes (`PGBF_MEMORY_BUDGET`, e.g. `4G`;
    /// `None`: a quarter of the Docker engine's memory, between 1 and 8
    /// GiB). It covers the templates, prepared clones, databases in use and
    /// databases waiting to be dropped (each a full copy on the stack's
    /// tmpfs) plus the server's own ~448 MB; the databases' tmpfs is
    /// sized from it. Read by the process that starts the stack; joiners
    /// use the stack's.
    pub memory_budget: Option<u64>,
}

/// A stack reaped sooner than this after its last lease gets no prepared
/// clones from its janitor (it drops handed-over databases all the same).
pub(crate) const JANITOR_MIN_IDLE: Duration = Duration::from_secs(30);

/// Prepared clones a stack's janitor keeps between runs, in all, unless
/// `PGBF_MAX_WARM_CLONES` says otherwise: each costs a database's worth of
/// the stack's tmpfs (~8 MB), so 128 is ~1 GB at most.
pub(crate) const MAX_WARM_CLONES_DEFAULT: u32 = 128;
/// The checkout's stack outlives its last lease this long by default.
pub(crate) const KEEP_WARM_DEFAULT: Duration = Duration::from_secs(120);

/// `PGBF_KEEP_WARM_SECS` of `env` when set, else 0 in CI (`CI` set, as CI
/// services do, to anything but `false` or `0`), else 120 s. The one
/// parser of the variable: `from_env` refuses a bad value, `Default` (which
/// cannot fail) falls back to the rule without it.
fn keep_warm(env: &Env) -> Result<Duration> {
    let secs = env.number(
        "PGBF_KEEP_WARM_SECS",
        0..=3600,
        "a whole number of seconds from 0 to 3600",
    )?;
    Ok(secs.map_or_else(
        || keep_warm_unset(env),
        |n| Duration::from_secs(u64::from(n)),
    ))
}

/// The keep-warm time when `PGBF_KEEP_WARM_SECS` says nothing.
fn keep_warm_unset(env: &Env) -> Duration {
    match env.get("CI").map(str::trim) {
        Some(ci) if ci != "false" && ci != "0" => Duration::ZERO,
        _ => KEEP_WARM_DEFAULT,
    }
}

impl Default for StackSettings {
    /// The default profile's settings; the keep-warm time follows the
    /// process environment and `.env` (see [`StackSettings::keep_warm`]).
    fn default() -> Self {
        let env = Env::load().unwrap_or_default();
        let keep_warm = keep_warm(&env).unwrap_or_else(|_| keep_warm_unset(&env));
        StackSettings::with_defaults(keep_warm)
    }
}

impl StackSettings {
    /// The default profile's settings with this keep-warm time.
    fn with_defaults(keep_warm: Duration) -> StackSettings {
        Profile::default().apply(StackSettings {
            pool_mode: PoolMode::Transaction,
            max_prepared_statements: 0,
            default_pool_size: 20,
            max_db_client_connections: 0,
            ignore_startup_parameters: vec!["extra_float_digits".to_string()],
            track_extra_parameters: vec!["IntervalStyle".to_string()],
            require_tls: false,
            server_round_robin: false,
            images: ImageSettings::default(),
            postgres_version: PostgresVersion::V17,
            startup_timeout: Duration::from_secs(120),
            scram_iterations: 16,
            reap_after: Duration::from_secs(10),
            run_id: None,
            publish_all_interfaces: false,
            network: Network::Auto,
            keep_warm,
            max_warm_clones: MAX_WARM_CLONES_DEFAULT,
            memory_budget: None,
        })
    }

    /// The defaults, with `PGBF_PROFILE`'s settings, overridden by
    /// `PGBF_POOL_MODE`, `PGBF_MAX_PREPARED_STATEMENTS`,
    /// `PGBF_DEFAULT_POOL_SIZE`, `PGBF_MAX_DB_CLIENT_CONNECTIONS`, `PGBF_REQUIRE_TLS`, `PGBF_STARTUP_TIMEOUT_SECS`,
    /// `PGBF_REAP_AFTER_SECS`, `PGBF_RUN_ID`, `PGBF_PUBLISH_ALL_INTERFACES`,
    /// `PGBF_NETWORK`, `PGBF_KEEP_WARM_SECS`, `PGBF_MAX_WARM_CLONES`,
    /// `PGBF_POSTGRES_VERSION`, `PGBF_MEMORY_BUDGET` and the image variables.
    pub fn from_env(env: &Env) -> Result<StackSettings> {
        let mut s = StackSettings {
            images: ImageSettings::from_env(env),
            ..StackSettings::with_defaults(keep_warm(env)?)
        };
        if let Some(profile) = env.get("PGBF_PROFILE") {
            s = profile.parse::<Profile>()?.apply(s);
        }
        s.require_tls = env.flag("PGBF_REQUIRE_TLS")?;
        if let Some(version) = env.get("PGBF_POSTGRES_VERSION") {
            s.postgres_version = version.parse()?;
        }
        if let Some(mode) = env.get("PGBF_POOL_MODE") {
            s.pool_mode = mode.parse()?;
        }
        if let Some(n) = env.number(
            "PGBF_MAX_PREPARED_STATEMENTS",
            0..=u32::MAX,
            "a whole number >= 0",
        )? {
            s.max_prepared_statements = n;
        }
        if let Some(n) = env.number(
            "PGBF_DEFAULT_POOL_SIZE",
            1..=1000,
            "a whole number from 1 to 1000",
        )? {
            s = s.with_default_pool_size(n);
        }
        if let Some(n) = env.number(
            "PGBF_MAX_DB_CLIENT_CONNECTIONS",
            0..=100_000,
            "a whole number from 0 (no cap) to 100000",
        )? {
            s.max_db_client_connections = n;
        }
        if let Some(n) = env.number(
            "PGBF_STARTUP_TIMEOUT_SECS",
            0..=u32::MAX,
            "a whole number of seconds >= 1",
        )? {
            s.startup_timeout = Duration::from_secs(u64::from(n.max(1)));
        }
        if let Some(n) = env.number(
            "PGBF_REAP_AFTER_SECS",
            1..=3600,
            "a whole number of seconds from 1 to 3600",
        )? {
            s.reap_after = Duration::from_secs(u64::from(n));
        }
        if let Some(id) = env.get("PGBF_RUN_ID") {
            s.run_id = Some(check_run_id(id)?);
        }
        s.publish_all_interfaces = env.flag("PGBF_PUBLISH_ALL_INTERFACES")?;
        if let Some(network) = env.get("PGBF_NETWORK") {
            s.network = network.parse()?;
        }
        if let Some(n) = env.number(
            "PGBF_MAX_WARM_CLONES",
            0..=4096,
            "a whole number from 0 to 4096",
        )? {
            s.max_warm_clones = n;
        }
        s.memory_budget = crate::target::memory::budget_from_env(env)?;
        Ok(s)
    }

    /// Sets `pool_mode`.
    pub fn with_pool_mode(mut self, mode: PoolMode) -> Self {
        self.pool_mode = mode;
        self
    }

    /// Sets `max_prepared_statements` (0 turns PgBouncer's tracking off).
    pub fn with_max_prepared_statements(mut self, n: u32) -> Self {
        self.max_prepared_statements = n;
        self
    }

    /// Sets `default_pool_size`; a client cap equal to the old pool size
    /// (Supavisor's session-mode rule) moves with it.
    pub fn with_default_pool_size(mut self, n: u32) -> Self {
        if self.max_db_client_connections == self.default_pool_size {
            self.max_db_client_connections = n.max(1);
        }
        self.default_pool_size = n.max(1);
        self
    }

    /// Sets `max_db_client_connections` (0: no cap).
    pub fn with_max_db_client_connections(mut self, n: u32) -> Self {
        self.max_db_client_connections = n;
        self
    }

    /// Sets `ignore_startup_parameters`.
    pub fn with_ignore_startup_parameters(
        mut self,
        params: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.ignore_startup_parameters = params.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `track_extra_parameters`.
    pub fn with_track_extra_parameters(
        mut self,
        params: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.track_extra_parameters = params.into_iter().map(Into::into).collect();
        self
    }

    /// Accept only TLS connections from clients (Supabase's "Enforce SSL").
    pub fn with_require_tls(mut self, on: bool) -> Self {
        self.require_tls = on;
        self
    }

    /// Sets `server_round_robin`.
    pub fn with_server_round_robin(mut self, on: bool) -> Self {
        self.server_round_robin = on;
        self
    }

    /// Sets the PostgreSQL major the stack runs (15 or 17).
    pub fn with_postgres_version(mut self, version: PostgresVersion) -> Self {
        self.postgres_version = version;
        self
    }

    /// Sets the images.
    pub fn with_images(mut self, images: ImageSettings) -> Self {
        self.images = images;
        self
    }

    /// Pins the run id: processes asking for a stack with the same settings
    /// and run id (in the same checkout) share one.
    pub fn with_run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// Sets how long the checkout's shared stack stays up after its last
    /// lease, for the next run (0: [`reap_after`](Self::reap_after) only).
    pub fn with_keep_warm(mut self, idle: Duration) -> Self {
        self.keep_warm = idle;
        self
    }

    /// Sets how many prepared clones the stack's janitor keeps between
    /// runs at most (see [`StackSettings::max_warm_clones`]).
    pub fn with_max_warm_clones(mut self, n: u32) -> Self {
        self.max_warm_clones = n;
        self
    }

    /// Sets the stack's memory budget in bytes (at least 512 MiB: smaller
    /// values are raised to it). See [`StackSettings::memory_budget`].
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes.max(crate::target::memory::MIN_MEMORY_BUDGET));
        self
    }

    /// What the stack's janitor may prepare: none when the stack is reaped
    /// within `JANITOR_MIN_IDLE` of its last lease.
    pub(crate) fn janitor_clones(&self) -> u32 {
        if self.reap_after >= JANITOR_MIN_IDLE {
            self.max_warm_clones
        } else {
            0
        }
    }

    /// The settings a shared stack runs with: the checkout's stack (no
    /// pinned run id) is reaped `max(reap_after, keep_warm)` after its last
    /// lease.
    pub(crate) fn for_shared_stack(&self) -> StackSettings {
        let mut s = self.clone();
        if s.run_id.is_none() {
            s.reap_after = s.reap_after.max(s.keep_warm);
        }
        s
    }

    /// Sets how long the stack outlives its last user (at least 1 s).
    pub fn with_reap_after(mut self, after: Duration) -> Self {
        self.reap_after = after.max(Duration::from_secs(1));
        self
    }

    /// Publishes the stack's ports on every interface of the Docker host
    /// (`true`), or on 127.0.0.1 when the engine is local (`false`, the
    /// default). See [`StackSettings::publish_all_interfaces`].
    pub fn with_publish_all_interfaces(mut self, on: bool) -> Self {
        self.publish_all_interfaces = on;
        self
    }

    /// How the stack's ports reach this machine. See [`StackSettings::network`].
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// A short stable key: stacks are shared only between identical settings.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.pgbouncer_ini("127.0.0.1").as_bytes());
        h.update(format!("{:?}", self.images).as_bytes());
        h.update(self.reap_after.as_secs().to_le_bytes());
        if self.publish_all_interfaces {
            // Only when set: the keys of default stacks stay as they were.
            h.update(b"publish on all interfaces");
        }
        if self.postgres_version != PostgresVersion::V17 {
            // Only when not the default: the keys of default stacks stay as they were.
            h.update(format!("postgres {}", self.postgres_version).as_bytes());
        }
        if let Some(budget) = self.memory_budget {
            // Its tmpfs is sized from it: another budget, another stack.
            h.update(format!("memory budget {budget}").as_bytes());
        }
        if self.network != Network::Auto {
            h.update(format!("network {:?}", self.network).as_bytes());
        }
        hex(&h.finalize()[..6])
    }
}

/// A run id is hashed, never used as a name, but it is still user input:
/// refuse what is clearly a mistake (control characters, absurd length).
pub(crate) fn check_run_id(raw: &str) -> Result<String> {
    let id = raw.trim();
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(Error::InvalidEnv {
            var: "PGBF_RUN_ID",
            value: crate::target::env::redact_value(raw)
                .chars()
                .take(80)
                .collect(),
            expected: "1 to 200 printable characters",
        });
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_warm_of(vars: &[(&str, &str)]) -> Option<Duration> {
        StackSettings::from_env(&Env::from_vars(vars.iter().copied()))
            .map(|s| s.keep_warm)
            .ok()
    }

    #[test]
    fn keep_warm_is_120_s_0_in_ci_or_what_the_variable_says() {
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(keep_warm_of(&[]), secs(120));
        assert_eq!(keep_warm_of(&[("CI", "true")]), secs(0));
        assert_eq!(keep_warm_of(&[("CI", "1")]), secs(0));
        for not_ci in ["false", "0", " "] {
            assert_eq!(keep_warm_of(&[("CI", not_ci)]), secs(120), "{not_ci:?}");
        }
        let set = [("CI", "true"), ("PGBF_KEEP_WARM_SECS", "30")];
        assert_eq!(keep_warm_of(&set), secs(30));
        let bad = Env::from_vars([("PGBF_KEEP_WARM_SECS", "3601")]);
        let err = StackSettings::from_env(&bad).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidEnv {
                var: "PGBF_KEEP_WARM_SECS",
                ..
            }
        ));
    }

    #[test]
    fn the_session_profile_caps_clients_at_its_pool_size_which_the_cap_follows() {
        let session = |vars: &[(&str, &str)]| {
            let mut all = vec![("PGBF_PROFILE", "supabase-session")];
            all.extend_from_slice(vars);
            StackSettings::from_env(&Env::from_vars(all)).unwrap()
        };
        let s = session(&[]);
        assert_eq!((s.default_pool_size, s.max_db_client_connections), (15, 15));
        let s = session(&[("PGBF_DEFAULT_POOL_SIZE", "30")]);
        assert_eq!((s.default_pool_size, s.max_db_client_connections), (30, 30));
        let s = session(&[("PGBF_MAX_DB_CLIENT_CONNECTIONS", "0")]);
        assert_eq!((s.default_pool_size, s.max_db_client_connections), (15, 0));
        let shared = StackSettings::from_env(&Env::from_vars([("PGBF_DEFAULT_POOL_SIZE", "30")]));
        assert_eq!(shared.unwrap().max_db_client_connections, 0);
        assert!(s
            .pgbouncer_ini("127.0.0.1")
            .contains("max_db_client_connections = 0\n"));
    }

    #[test]
    fn the_postgres_major_is_read_checked_and_keys_the_stack() {
        let of = |v: &str| StackSettings::from_env(&Env::from_vars([("PGBF_POSTGRES_VERSION", v)]));
        let v15 = of("15").unwrap();
        assert_eq!(v15.postgres_version, PostgresVersion::V15);
        let v17 = of("17").unwrap();
        assert_eq!(v17.postgres_version, PostgresVersion::V17);
        assert_ne!(v15.key(), v17.key());
        let default =
            StackSettings::from_env(&Env::from_vars([("PGBF_PROFILE", "supabase-shared")]))
                .unwrap();
        assert_eq!(default.key(), v17.key());
        assert!(matches!(
            of("16").unwrap_err(),
            Error::InvalidEnv {
                var: "PGBF_POSTGRES_VERSION",
                ..
            }
        ));
    }
}
