//! Per-test isolation: a database of its own on a stack (or, on an external
//! server, a schema of its own unless the user opted in to databases), with
//! names that are never reused and clean-up the crate owns.

use crate::connect::quote::{quote_ident, quote_literal};

/// Where a step of admin work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum On {
    /// The admin URL (PostgreSQL, or the external target).
    Server,
    /// PgBouncer's admin console (simple protocol only).
    Console,
}

/// One statement of admin work, rendered to SQL in [`Step::sql`] only
/// (every name through [`quote_ident`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// An empty database.
    CreateDatabase(String),
    /// A clone of a template database (`name`, `template`).
    CloneDatabase {
        /// The clone.
        name: String,
        /// The template it copies.
        template: String,
    },
    /// An empty schema in the admin URL's database.
    CreateSchema(String),
    /// Drops a database, ending its sessions.
    DropDatabase(String),
    /// Drops a schema and all it holds.
    DropSchema(String),
    /// PgBouncer closes its server connections to the database and pauses it.
    KillPool(String),
    /// PgBouncer takes the database again after [`Step::KillPool`].
    ResumePool(String),
    /// Deletes `auth.users` rows a test created (by id) on a server whose
    /// `auth` schema the test shares (an external Supabase project).
    DeleteAuthUsers(Vec<String>),
}

impl Step {
    /// Where it runs.
    pub(crate) fn on(&self) -> On {
        match self {
            Step::KillPool(_) | Step::ResumePool(_) => On::Console,
            _ => On::Server,
        }
    }

    /// A failure is logged and the job goes on: PgBouncer housekeeping.
    pub(crate) fn best_effort(&self) -> bool {
        self.on() == On::Console
    }

    /// The database it drops, if it drops one.
    pub(crate) fn dropped_database(&self) -> Option<&str> {
        match self {
            Step::DropDatabase(name) => Some(name),
            _ => None,
        }
    }

    /// Its SQL text (PgBouncer's console reads a double-quoted name as
    /// PostgreSQL does).
    pub(crate) fn sql(&self) -> String {
        match self {
            Step::CreateDatabase(name) => format!("CREATE DATABASE {}", quote_ident(name)),
            // FILE_COPY: on a tmpfs data directory with fsync off it is the
            // fastest strategy (13 ms against 16-33 ms for WAL_LOG, measured).
            Step::CloneDatabase { name, template } => format!(
                "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
                quote_ident(name),
                quote_ident(template)
            ),
            Step::CreateSchema(name) => format!("CREATE SCHEMA {}", quote_ident(name)),
            Step::DropDatabase(name) => {
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))
            }
            Step::DropSchema(name) => {
                format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(name))
            }
            Step::DeleteAuthUsers(ids) => format!(
                "delete from auth.users where id::text in ({})",
                ids.iter()
                    .map(|id| quote_literal(id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::KillPool(name) => format!("KILL {}", quote_ident(name)),
            Step::ResumePool(name) => format!("RESUME {}", quote_ident(name)),
        }
    }
}

/// What a test was given to work in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// A database created for this test, dropped afterwards.
    Database(String),
    /// A schema created for this test in the target's database, dropped afterwards.
    Schema(String),
}

impl Isolation {
    /// The admin work that creates it: a database as a copy of `base`
    /// (the Supabase-shaped base) when there is one, else of `template1`.
    pub(crate) fn create_steps(&self, base: Option<&str>) -> Vec<Step> {
        vec![match (self, base) {
            (Isolation::Database(name), Some(base)) => Step::CloneDatabase {
                name: name.clone(),
                template: base.to_string(),
            },
            (Isolation::Database(name), None) => Step::CreateDatabase(name.clone()),
            (Isolation::Schema(name), _) => Step::CreateSchema(name.clone()),
        }]
    }

    /// The admin work that removes it (and nothing else: names are ours and unique).
    pub(crate) fn drop_steps(&self) -> Vec<Step> {
        match self {
            Isolation::Database(name) => vec![
                // PgBouncer keeps idle server connections to the database; DROP
                // .. WITH (FORCE) would terminate them and wait ~100 ms for
                // them to exit. Closing them from PgBouncer's side first makes
                // the drop as fast as for an unused database.
                Step::KillPool(name.clone()),
                Step::DropDatabase(name.clone()),
                Step::ResumePool(name.clone()),
            ],
            Isolation::Schema(name) => vec![Step::DropSchema(name.clone())],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_quoted_the_console_included() {
        let steps = Isolation::Database("we\"ird".into()).drop_steps();
        let sql: Vec<String> = steps.iter().map(Step::sql).collect();
        assert_eq!(
            sql,
            [
                "KILL \"we\"\"ird\"",
                "DROP DATABASE IF EXISTS \"we\"\"ird\" WITH (FORCE)",
                "RESUME \"we\"\"ird\"",
            ]
        );
        assert_eq!(
            steps.iter().map(Step::best_effort).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(steps[1].dropped_database(), Some("we\"ird"));
        let schema = Isolation::Schema("s".into());
        assert_eq!(schema.create_steps(None)[0].sql(), "CREATE SCHEMA \"s\"");
        assert_eq!(
            schema.create_steps(Some("pgbf_supabase"))[0].sql(),
            "CREATE SCHEMA \"s\""
        );
        let database = Isolation::Database("d".into());
        assert_eq!(
            database.create_steps(Some("pgbf_supabase"))[0].sql(),
            "CREATE DATABASE \"d\" TEMPLATE \"pgbf_supabase\" STRATEGY FILE_COPY"
        );
        assert_eq!(
            database.create_steps(None)[0].sql(),
            "CREATE DATABASE \"d\""
        );
        let users = Step::DeleteAuthUsers(vec!["a".into(), "b'c".into()]);
        assert_eq!(
            users.sql(),
            "delete from auth.users where id::text in ('a', 'b''c')"
        );
        assert_eq!(users.dropped_database(), None);
        assert_eq!(schema.drop_steps()[0].dropped_database(), None);
    }
}
