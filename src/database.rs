//! Per-test isolation: a database of its own on a stack (or, on an external
//! server, a schema of its own unless the user opted in to databases), with
//! names that are never reused and clean-up the crate owns.

use rand::Rng;

/// What a test was given to work in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// A database created for this test, dropped afterwards.
    Database(String),
    /// A schema created for this test in the target's database, dropped afterwards.
    Schema(String),
}

impl Isolation {
    /// The SQL that creates it.
    pub(crate) fn create_sql(&self) -> String {
        match self {
            Isolation::Database(name) => format!("CREATE DATABASE {}", quote_ident(name)),
            Isolation::Schema(name) => format!("CREATE SCHEMA {}", quote_ident(name)),
        }
    }

    /// The SQL that removes it (and nothing else: names are ours and unique).
    pub(crate) fn drop_sql(&self) -> String {
        match self {
            // FORCE: PgBouncer keeps idle server connections to the database.
            Isolation::Database(name) => {
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))
            }
            Isolation::Schema(name) => {
                format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(name))
            }
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
    let suffix: String = {
        let mut rng = rand::thread_rng();
        (0..10)
            .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
            .collect()
    };
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

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
