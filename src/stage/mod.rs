//! The crate's own Supavisor-like front stage: a small PostgreSQL-protocol
//! proxy on `127.0.0.1` (an ephemeral port) in the process that asks for
//! it (a test's, or `up`'s), in front of the stack's PgBouncer, for what
//! PgBouncer's settings cannot make it do as Supavisor does: the
//! parameters a backend is opened with ([`Rules::startup`]), its answer
//! to a wrong password ([`Rules::wrong_password`]), the
//! `named_prepared_statements` flag's errors
//! ([`Rules::named_prepared_statements`]), its session-mode limit
//! ([`Rules::session_pool_size`]) and its transaction pooling
//! ([`Rules::pools_transactions`], `transactions.rs`), for the profiles
//! `supabase-shared`, `supabase-shared-prepared` and `supabase-session`;
//! its framing of both directions is the place for Supavisor's other rules.
//! A login naming a `search_path`, which PgBouncer cannot carry, goes
//! straight to PostgreSQL ([`Rules::search_path_direct`]).
//!
//! One stage per upstream and rules per process, on its own background
//! runtime: it outlives every test's runtime and ends with the process (an
//! exit hook stops its thread; its sockets close with it). It serves TLS
//! with the stack's own certificate (`tls`). It knows nothing of stacks: it
//! is given addresses ([`Upstream`]) and certificates.

mod link;
mod prepared;
mod simple_query;
mod startup;
mod tls;
mod transactions;
mod wire;

pub(crate) use startup::PoolMode;
pub(crate) use tls::Certificates;
use tls::StageTls;
use transactions::Pools;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::support::registry::OnceMap;
use crate::support::runtime::{at_exit, Background};
use crate::target::profile::Profile;
use crate::target::DbUrl;

/// Which of Supavisor's rules the stage applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Rules {
    /// Supavisor's per-tenant `named_prepared_statements` flag, on.
    pub named_prepared_statements: bool,
    /// Supavisor's startup rules in this pool mode (`startup.rs`: only
    /// `user`, `database`, `search_path` and its own `application_name`
    /// reach the database); `None`: the StartupMessage passes as sent.
    pub startup: Option<PoolMode>,
    /// Supavisor's answer to a wrong password: 500 ms, then its own FATAL
    /// `28P01` naming the user.
    pub wrong_password: bool,
    /// Supavisor's session mode over its pool of this size: PgBouncer's
    /// `max_db_client_connections` refusal at login answered with
    /// Supavisor's FATAL `XX000 (EMAXCONNSESSION)`.
    pub session_pool_size: Option<u32>,
    /// Supavisor's transaction pooling (`transactions.rs`): a client's
    /// transactions run on any idle link of its pool, so what a client
    /// leaves on a link outside a transaction stays with the link.
    pub pools_transactions: bool,
    /// Supavisor's pools keyed by `search_path`: a login whose startup
    /// names one gets a link straight to PostgreSQL, a backend opened with
    /// it, as Supavisor's (PgBouncer before PostgreSQL 18 cannot carry a
    /// startup `search_path`: the server does not report it).
    pub search_path_direct: bool,
}

impl Rules {
    /// The rules of `profile`'s Supavisor (its startup rules and login
    /// answers whatever the flag) in front of a pool of `pool_size`, `None`
    /// for a profile served without the stage.
    pub(crate) fn of(profile: Profile, pool_size: u32) -> Option<Rules> {
        let session = !profile.pools_transactions();
        profile.behind_stage().then(|| Rules {
            named_prepared_statements: profile == Profile::SupabaseSharedPrepared,
            startup: Some(if session {
                PoolMode::Session
            } else {
                PoolMode::Transaction
            }),
            wrong_password: true,
            session_pool_size: session.then_some(pool_size),
            // With the flag on, PgBouncer's tracking per link stands for
            // Supavisor's per client: a client keeps one link.
            pools_transactions: profile == Profile::SupabaseShared,
            // The flag-on profile keeps PgBouncer's tracking of named
            // statements, which a link straight to PostgreSQL has not.
            search_path_direct: profile != Profile::SupabaseSharedPrepared,
        })
    }
}

/// Where the stage sends its clients: the stack's PgBouncer, and its
/// PostgreSQL for the logins [`Rules::search_path_direct`] sends there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub pooler: Address,
    pub direct: Option<Address>,
}

/// A server's host and port, as the test process reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    fn of(url: &DbUrl) -> Address {
        Address {
            host: url.host().to_string(),
            port: url.port(),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A running stage: the address clients connect to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stage {
    pub addr: SocketAddr,
}

/// `pooled` (PgBouncer's URL) turned to the stage in front of it, with
/// `rules` (`direct`: PostgreSQL's own URL on the same stack): the one way
/// the fixture and `up` put a client behind the stage.
pub(crate) async fn in_front_of(
    pooled: DbUrl,
    direct: Option<&DbUrl>,
    rules: Rules,
    certs: Option<Certificates>,
) -> Result<DbUrl> {
    let upstream = Upstream {
        pooler: Address::of(&pooled),
        direct: direct.map(Address::of),
    };
    let stage = shared(upstream, rules, certs).await?;
    Ok(pooled.with_host_port("127.0.0.1", stage.addr.port()))
}

/// The stage in front of `upstream` with `rules`, started by the first
/// caller in the process; it serves TLS with `certs` (the upstream's
/// stack's: one stage per upstream), and answers `N` without.
pub(crate) async fn shared(
    upstream: Upstream,
    rules: Rules,
    certs: Option<Certificates>,
) -> Result<Stage> {
    static STAGES: OnceMap<Stage> = OnceMap::new();
    let key = format!("{} {rules:?}", upstream.pooler);
    let cell = STAGES.cell(&key, |_| false);
    cell.get_or_try_init(|| start(upstream, rules, certs))
        .await
        .copied()
}

/// Binds the stage's port and runs its accept loop on a background runtime
/// of its own, stopped at process exit.
async fn start(upstream: Upstream, rules: Rules, certs: Option<Certificates>) -> Result<Stage> {
    let tls = certs.as_ref().map(StageTls::new).transpose()?;
    let background = Background::start(format!("pgbf-stage-{}", upstream.pooler.port))?;
    let addr = background
        .run_within(
            Duration::from_secs(10),
            "the Supavisor-like stage's port",
            "the test process could not bind a port on 127.0.0.1",
            move || async move {
                let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(failed)?;
                let addr = listener.local_addr().map_err(failed)?;
                let pools = Rc::new(Pools::default());
                tokio::task::spawn_local(accept(listener, upstream, rules, tls, pools));
                Ok(addr)
            },
        )
        .await?;
    at_exit(move || background.stop());
    tracing::debug!(%addr, "Supavisor-like stage listening");
    Ok(Stage { addr })
}

fn failed(e: std::io::Error) -> Error {
    Error::Stage {
        reason: format!("cannot listen on 127.0.0.1: {e}"),
    }
}

/// Accepts clients until the runtime stops; each one is its own task.
async fn accept(
    listener: TcpListener,
    upstream: Upstream,
    rules: Rules,
    tls: Option<StageTls>,
    pools: Rc<Pools>,
) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let serving =
                    link::serve(client, upstream.clone(), rules, tls.clone(), pools.clone());
                tokio::task::spawn_local(serving);
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait, as a server does.
                tracing::warn!("the Supavisor-like stage cannot accept a client: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
