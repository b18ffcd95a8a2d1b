//! This process's lease on a stack: one connection whose existence keeps
//! the stack alive (the container's watchdog counts leases) and whose loss
//! says the stack died. Taken here ([`take`]) and renewed here too.
//!
//! Why here: the lease is watched every second while the process is idle,
//! so a dead stack is noticed (and warned about) at once, and every later
//! call of the process fails fast with `StackDied` naming what Docker says
//! about the containers. Runs on the stack's background runtime.

use std::sync::OnceLock;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use sqlx::{Connection, PgConnection};

use crate::connect::quote::quote_literal;
use crate::contract::{LEASE_APP, LEASE_MARK, POOLED_LEASE_APP};
use crate::error::{Error, Result};
use crate::provision::worker::ServerLease;
use crate::stack::endpoints::Endpoints;
use crate::stack::ready::connect_until;
use crate::target::settings::PoolMode;

/// How long one lease check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle process checks its lease: a dead stack is noticed
/// within about this long, not at the process's next call.
const LEASE_WATCH: Duration = Duration::from_secs(1);

/// How long a broken lease through PgBouncer is retried while both
/// containers run (PgBouncer restarting in place takes ~1-2 s; after
/// `PGBF_REAP_AFTER_SECS` without leases the stack is reaped anyway).
const RENEW_TIMEOUT: Duration = Duration::from_secs(8);

/// Opens this process's lease: a connection the watchdog counts, through
/// PgBouncer (a login there starts no PostgreSQL backend: ~4.5 ms of the
/// server's CPU less per process) unless PgBouncer pools sessions, where it
/// would pin a server connection for the process's whole life: there it is
/// a direct one. Tries at least once, then until `timeout`.
pub(crate) async fn take(
    endpoints: &Endpoints,
    pool_mode: PoolMode,
    timeout: Duration,
) -> Result<PgConnection> {
    let (url, prefix) = if pool_mode == PoolMode::Session {
        (endpoints.direct_url("postgres"), LEASE_APP)
    } else {
        (endpoints.pooled_url("postgres"), POOLED_LEASE_APP)
    };
    // The watchdog counts both kinds (`docker/sql/leases.sql`, `pgbf_leases`).
    let app = format!("{prefix} pid {}", std::process::id());
    // Tells the watchdog a lease existed, however short it lives, which
    // ends its start-up grace (`docker/sql/watchdog.sql`).
    let first = format!("copy (select) to {}", quote_literal(LEASE_MARK));
    let what = format!("a lease connection to PostgreSQL at {url}");
    connect_until(&url, &app, &first, timeout, what, |_| None).await
}

/// The stack a lease is on: for saying why it broke, and for a new lease.
pub(crate) struct ProbeTarget {
    pub docker: bollard::Docker,
    pub stack_id: String,
    pub postgres_container: String,
    pub endpoints: Endpoints,
    /// Through PgBouncer (all but session pooling), a lease that a
    /// PgBouncer restarted in place breaks although the stack lives is
    /// renewed, within [`RENEW_TIMEOUT`].
    pub pool_mode: PoolMode,
}

/// A lease and what it knows of the stack's death.
pub(crate) struct Lease {
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    target: ProbeTarget,
    /// Set once the stack is known dead: the error every later call returns.
    dead: OnceLock<Error>,
}

impl Lease {
    pub(crate) fn new(conn: PgConnection, target: ProbeTarget) -> Lease {
        Lease {
            conn: tokio::sync::Mutex::new(Some(conn)),
            target,
            dead: OnceLock::new(),
        }
    }

    /// The error saying the stack died, once that is known.
    pub(crate) fn dead(&self) -> Option<Error> {
        self.dead.get().map(Error::again)
    }

    /// One round trip on the lease: `Err(StackDied)` when the stack is gone
    /// (then remembered, and warned about once).
    pub(crate) async fn check(&self) -> Result<()> {
        let mut conn = self.conn.lock().await;
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let Some(c) = conn.as_mut() else {
            return Ok(()); // closed at shutdown
        };
        let failure =
            match tokio::time::timeout(PROBE_TIMEOUT, sqlx::raw_sql("select 1").execute(c)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => format!("its lease connection failed ({e})"),
                Err(_) => format!("its lease connection did not answer within {PROBE_TIMEOUT:?}"),
            };
        *conn = None;
        let target = &self.target;
        // The lease goes through PgBouncer (unless it pools sessions): the
        // container that stopped may be either one, or neither (PgBouncer
        // restarted in place: a new lease then answers).
        let problem =
            crate::docker::containers::pair_problem(&target.docker, &target.stack_id).await;
        let renewable = target.pool_mode != PoolMode::Session;
        if let (true, Ok(None)) = (renewable, &problem) {
            let renew = take(&target.endpoints, target.pool_mode, RENEW_TIMEOUT);
            if let Ok(Ok(new)) = tokio::time::timeout(RENEW_TIMEOUT, renew).await {
                tracing::debug!(stack = %target.stack_id, "lease renewed (PgBouncer restarted)");
                *conn = Some(new);
                return Ok(());
            }
        }
        let state = match problem {
            Ok(Some(problem)) => problem,
            _ => {
                crate::docker::containers::describe(&target.docker, &target.postgres_container)
                    .await
            }
        };
        let error = Error::StackDied {
            stack: target.stack_id.clone(),
            reason: format!("{state}; {failure}"),
        };
        let _ = self.dead.set(error.again());
        tracing::warn!(
            stack = %target.stack_id,
            error = %error,
            "the stack died: every later call of this process fails with StackDied"
        );
        Err(error)
    }

    /// Both containers of the stack run, or `StackDied` saying which does
    /// not. Does not mark the stack dead (a restarting PgBouncer comes back).
    pub(crate) async fn containers(&self) -> Result<()> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let target = &self.target;
        match crate::docker::containers::pair_problem(&target.docker, &target.stack_id).await? {
            None => Ok(()),
            Some(reason) => Err(Error::StackDied {
                stack: target.stack_id.clone(),
                reason,
            }),
        }
    }

    /// Checks the lease every [`LEASE_WATCH`] while nobody else does, until
    /// the stack is known dead or the lease is closed.
    pub(crate) async fn watch(&self) {
        let mut tick = tokio::time::interval(LEASE_WATCH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.dead.get().is_some() || self.conn.lock().await.is_none() {
                return;
            }
            let _ = self.check().await;
        }
    }

    /// Ends the lease (the stack's watchdog counts one fewer).
    pub(crate) async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
        }
    }
}

impl ServerLease for Lease {
    fn dead(&self) -> Option<Error> {
        Lease::dead(self)
    }

    fn probe(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(self.check())
    }

    fn probe_limit(&self) -> Duration {
        PROBE_TIMEOUT + RENEW_TIMEOUT
    }

    fn close(&self) -> LocalBoxFuture<'_, ()> {
        Box::pin(Lease::close(self))
    }
}
