//! Who a test's transactions acted as: each `ActAs::begin` records its
//! role, claims and transaction here, keyed by the database it ran in, so
//! an explanation can say which role and claims were in effect when a
//! statement was refused (matched by the transaction's virtual id, which
//! PostgreSQL's log carries) or when an assertion about rows failed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::support::sync::lock;

/// At most this many transactions are kept per database (the latest).
const KEPT: usize = 32;

/// One transaction begun as a Data API role.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Acted {
    /// The PostgreSQL role (`anon`, `authenticated`, `service_role`).
    pub role: String,
    /// The request's claims, as `request.jwt.claims` got them.
    pub claims: Value,
    /// The transaction's virtual id (`3/45`), as `pg_locks` and the JSON
    /// log write it; `None` when the server did not say.
    pub vxid: Option<String>,
}

impl Acted {
    /// What `auth.uid()` answers in that transaction: the `sub` claim.
    pub fn sub(&self) -> Option<&str> {
        self.claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

fn registry() -> &'static Mutex<HashMap<String, VecDeque<Acted>>> {
    static ACTED: OnceLock<Mutex<HashMap<String, VecDeque<Acted>>>> = OnceLock::new();
    ACTED.get_or_init(Default::default)
}

/// Records a transaction begun in `database` as `acted`.
pub(crate) fn record(database: &str, acted: Acted) {
    let mut all = lock(registry());
    let list = all.entry(database.to_string()).or_default();
    if list.len() == KEPT {
        list.pop_front();
    }
    list.push_back(acted);
}

/// The transactions begun in `database`, oldest first.
pub(crate) fn of(database: &str) -> Vec<Acted> {
    lock(registry())
        .get(database)
        .map(|l| l.iter().cloned().collect())
        .unwrap_or_default()
}

/// Forgets `database` (its test is over).
pub(crate) fn forget(database: &str) {
    lock(registry()).remove(database);
}
