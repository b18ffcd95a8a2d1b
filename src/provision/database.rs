//! Per-test isolation: a database of its own on a stack (or, on an external
//! server, a schema of its own unless the user opted in to databases), with
//! names that are never reused and clean-up the crate owns.

/// Where a step of admin work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum On {
    /// The admin URL (PostgreSQL, or the external target).
    Server,
    /// PgBouncer's admin console (simple protocol only).
    Console,
}

/// One statement of admin work.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub on: On,
    pub sql: String,
    /// A failure is logged and the job goes on (used for PgBouncer housekeeping).
    pub best_effort: bool,
}

impl Step {
    pub(crate) fn server(sql: String) -> Step {
        Step {
            on: On::Server,
            sql,
            best_effort: false,
        }
    }

    pub(crate) fn console(sql: String) -> Step {
        Step {
            on: On::Console,
            sql,
            best_effort: true,
        }
    }
}
use crate::connect::quote::quote_ident;

/// What a test was given to work in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// A database created for this test, dropped afterwards.
    Database(String),
    /// A schema created for this test in the target's database, dropped afterwards.
    Schema(String),
}

impl Isolation {
    /// The admin work that creates it.
    pub(crate) fn create_steps(&self) -> Vec<Step> {
        vec![Step::server(match self {
            Isolation::Database(name) => format!("CREATE DATABASE {}", quote_ident(name)),
            Isolation::Schema(name) => format!("CREATE SCHEMA {}", quote_ident(name)),
        })]
    }

    /// The admin work that removes it (and nothing else: names are ours and unique).
    pub(crate) fn drop_steps(&self) -> Vec<Step> {
        match self {
            Isolation::Database(name) => vec![
                // PgBouncer keeps idle server connections to the database; DROP
                // .. WITH (FORCE) would terminate them and wait ~100 ms for
                // them to exit. Closing them from PgBouncer's side first makes
                // the drop as fast as for an unused database.
                Step::console(format!("KILL {name}")),
                Step::server(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(name)
                )),
                Step::console(format!("RESUME {name}")),
            ],
            Isolation::Schema(name) => vec![Step::server(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(name)
            ))],
        }
    }

    /// The database or schema name.
    pub fn name(&self) -> &str {
        match self {
            Isolation::Database(n) | Isolation::Schema(n) => n,
        }
    }
}

/// A fresh name like `pgbf_my_test_3fa9c2d1e0`: recognisable, at most 63
/// bytes, never reused (PgBouncer caches a failed login to a dropped name).
pub(crate) fn unique_name(test_name: &str) -> String {
    let suffix = crate::support::digest::random_hex(10);
    let last = test_name.rsplit("::").next().unwrap_or(test_name);
    let mut slug: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    slug.truncate(40);
    let slug = slug.trim_matches('_');
    if slug.is_empty() {
        format!("pgbf_{suffix}")
    } else {
        format!("pgbf_{slug}_{suffix}")
    }
}
