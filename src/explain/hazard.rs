//! What goes wrong behind a pooler, in words: for each hazard the crate can
//! recognise, what happened, why it happens behind a given pooler, and what a
//! sqlx user changes. `doctor` and the failure explanations of `TestDb` both
//! speak from here, so they never say two different things.

use std::fmt;

use crate::target::profile::Profile;

/// A pooler hazard the crate recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hazard {
    /// A named prepared statement met an earlier client's statement of the
    /// same name (`42P05 prepared statement "sqlx_s_1" already exists`).
    DuplicateStatement,
    /// A named prepared statement was bound on a server connection that
    /// never prepared it (`26000 prepared statement "sqlx_s_1" does not exist`).
    MissingStatement,
    /// `.persistent(false)`'s Parse and Bind landed on different server
    /// connections (`26000 unnamed prepared statement does not exist`).
    MissingUnnamedStatement,
    /// Another client's statement answered: a wrong result with no error.
    WrongAnswer,
    /// The pooler refused a startup parameter (`08P01 unsupported startup parameter`).
    StartupParameterRefused,
    /// SQL-level `PREPARE` was gone at `EXECUTE` time.
    SqlPrepareLost,
    /// A temporary table was gone in a later transaction.
    TempTableLost,
    /// `pg_advisory_unlock` ran on another server session than the lock:
    /// it returned false, and the lock stays held.
    AdvisoryUnlockMissed,
    /// A session waited for an advisory lock another server session kept,
    /// as sqlx's migrator does once its unlock went astray.
    AdvisoryLockHeld,
    /// `SET` (or another piece of session state) did not survive to the
    /// next transaction.
    SessionStateLost,
}

/// Where the pooler in question is described from: a profile of the crate,
/// or words for anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pooler {
    /// One of the crate's profiles.
    Profile(Profile),
    /// Something described in words (e.g. "this PgBouncer
    /// (pool_mode=transaction, max_prepared_statements=0)").
    Other(String),
}

impl fmt::Display for Pooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pooler::Profile(p) => write!(f, "the {p} profile, which mirrors {}", p.mirrors()),
            Pooler::Other(words) => f.write_str(words),
        }
    }
}

const PERSISTENT_FALSE_IN_TX: &str =
    "run parameterised queries with `.persistent(false)` inside `begin()`..`commit()`, or use \
     `sqlx::raw_sql` (no prepared statement at all)";
const TRACKING_POOLER: &str =
    "or deploy behind a pooler that tracks prepared statements: Supabase's dedicated pooler \
     (test with `Profile::SupabaseDedicated`) or the session pooler on port 5432 \
     (`Profile::SupabaseSession`)";
const CAPACITY_ZERO: &str =
    "`statement_cache_capacity(0)` does not help: sqlx 0.8.6 and 0.9.0 still name their \
     statements and never close them (sqlx issue 4328); `query!` macros always use named statements";
const SESSION_ENDPOINT: &str =
    "session features need a session: use `connect_direct()` in tests, and the direct \
     connection or the session pooler (port 5432) in production";
const TRANSACTION_SCOPED: &str =
    "or keep the state inside one transaction: `SET LOCAL`, `pg_advisory_xact_lock`, temporary \
     tables `ON COMMIT DROP`, statements prepared and used in the same `begin()`..`commit()`";

impl Hazard {
    /// A short name, for headings and verdicts.
    pub fn title(self) -> &'static str {
        match self {
            Hazard::DuplicateStatement => "prepared statement name collision",
            Hazard::MissingStatement => "prepared statement missing on this server connection",
            Hazard::MissingUnnamedStatement => "unnamed statement split across server connections",
            Hazard::WrongAnswer => "wrong results with no error",
            Hazard::StartupParameterRefused => "startup parameter refused by the pooler",
            Hazard::SqlPrepareLost => "SQL PREPARE lost between transactions",
            Hazard::TempTableLost => "temporary table lost between transactions",
            Hazard::AdvisoryUnlockMissed => "advisory unlock on another server session",
            Hazard::AdvisoryLockHeld => "advisory lock left held (sqlx migrator)",
            Hazard::SessionStateLost => "session state lost between transactions",
        }
    }

    /// Why it happens behind `pooler`, in one or two sentences.
    pub fn why(self, pooler: &Pooler) -> String {
        match self {
            Hazard::DuplicateStatement => format!(
                "sqlx names its prepared statements sqlx_s_1, sqlx_s_2, ... on every connection, \
                 even with statement_cache_capacity(0), and never closes them. Behind {pooler}, \
                 server connections pass from client to client between transactions with no \
                 prepared-statement tracking, so this client met a server connection where an \
                 earlier client's statement of the same name still exists."
            ),
            Hazard::MissingStatement => format!(
                "the statement was prepared on one server connection and bound on another: behind \
                 {pooler}, a client gets whichever server connection is free for each transaction, \
                 and nothing carries its prepared statements along."
            ),
            Hazard::MissingUnnamedStatement => format!(
                "`.persistent(false)` sends Parse and Bind in two round trips; outside an explicit \
                 transaction, {pooler} may route them to different server connections."
            ),
            Hazard::WrongAnswer => format!(
                "behind {pooler}, a client can execute another client's prepared statement of the \
                 same name on a shared server connection: the query runs, with the other \
                 client's SQL, and no error is raised."
            ),
            Hazard::StartupParameterRefused => format!(
                "behind {pooler}, PgBouncer accepts at startup only client_encoding, DateStyle, \
                 TimeZone, standard_conforming_strings, application_name, the parameters it \
                 tracks and those it is told to ignore; any other one ends the login."
            ),
            Hazard::SqlPrepareLost => format!(
                "SQL-level PREPARE lives in one server session; behind {pooler}, the next \
                 transaction ran on another server connection."
            ),
            Hazard::TempTableLost => format!(
                "temporary tables live in one server session; behind {pooler}, the next \
                 transaction ran on another server connection (the table is still there, \
                 on the other one)."
            ),
            Hazard::AdvisoryUnlockMissed => format!(
                "session advisory locks belong to a server session; behind {pooler}, the unlock \
                 ran on another server connection than the lock: it returned false and the lock \
                 is still held by a pooled server connection."
            ),
            Hazard::AdvisoryLockHeld => format!(
                "a session waited for an advisory lock that another server session kept. sqlx's \
                 migrator takes pg_advisory_lock and releases it in a later statement; behind \
                 {pooler}, the release can miss, the lock stays on a pooled server connection, and \
                 the next migration run blocks."
            ),
            Hazard::SessionStateLost => format!(
                "SET, LISTEN and other session state live in one server session; behind {pooler}, \
                 the next transaction ran on another server connection."
            ),
        }
    }

    /// What a sqlx user changes, most direct first.
    pub fn remedies(self) -> &'static [&'static str] {
        match self {
            Hazard::DuplicateStatement | Hazard::MissingStatement | Hazard::WrongAnswer => {
                &[PERSISTENT_FALSE_IN_TX, TRACKING_POOLER, CAPACITY_ZERO]
            }
            Hazard::MissingUnnamedStatement => &[
                "wrap the query in `begin()`..`commit()`: inside a transaction Parse and Bind stay \
                 on one server connection (or use `sqlx::raw_sql`)",
            ],
            Hazard::StartupParameterRefused => &[
                "Supabase's shared pooler (Supavisor) drops unknown startup parameters instead: if \
                 that is your production, test with `Profile::SupabaseShared`",
                "otherwise send no server settings at connect time (sqlx: drop \
                 `PgConnectOptions::options(..)`, keep `extra_float_digits(None)`): use `SET LOCAL` \
                 inside transactions or `ALTER ROLE/DATABASE .. SET`",
            ],
            Hazard::SqlPrepareLost
            | Hazard::TempTableLost
            | Hazard::AdvisoryUnlockMissed
            | Hazard::SessionStateLost => &[SESSION_ENDPOINT, TRANSACTION_SCOPED],
            Hazard::AdvisoryLockHeld => &[
                "run migrations on `connect_direct()` (production: the direct connection or the \
                 session pooler, port 5432), never through a transaction pooler",
            ],
        }
    }

    /// The remedies as one line, for `doctor`.
    pub fn remedy_line(self) -> String {
        self.remedies().join("; ")
    }

    /// The hazard a server error reveals, from its SQLSTATE, message and
    /// the statement that raised it (when known).
    pub fn of_error(code: &str, message: &str, statement: Option<&str>) -> Option<Hazard> {
        let executes = statement.is_some_and(|s| {
            s.trim_start()
                .get(..8)
                .is_some_and(|w| w.eq_ignore_ascii_case("execute "))
        });
        match code {
            "42P05" => Some(Hazard::DuplicateStatement),
            "26000" if message.contains("unnamed prepared statement") => {
                Some(Hazard::MissingUnnamedStatement)
            }
            "26000" if executes => Some(Hazard::SqlPrepareLost),
            "26000" => Some(Hazard::MissingStatement),
            "08P01" if message.contains("unsupported startup parameter") => {
                Some(Hazard::StartupParameterRefused)
            }
            _ => None,
        }
    }
}

/// What a tokio-postgres user changes against statement hazards.
#[cfg(feature = "tokio-postgres")]
const TOKIO_POSTGRES_STATEMENTS: &str =
    "tokio-postgres: run parameterised queries with `query_typed` / `execute_typed` (the unnamed \
     statement, one round trip), or `simple_query` / `batch_execute` (no prepared statement): \
     plain `query` / `execute` with parameters and `prepare`d `Statement`s use named \
     statements, which this pooler does not carry from one server connection to the next";

#[cfg(feature = "tokio-postgres")]
impl Hazard {
    /// What a tokio-postgres user changes, most direct first (feature
    /// `tokio-postgres`); hazards that do not depend on the driver keep
    /// their [`remedies`](Hazard::remedies).
    pub fn tokio_postgres_remedies(self) -> Vec<&'static str> {
        match self {
            Hazard::DuplicateStatement
            | Hazard::MissingStatement
            | Hazard::MissingUnnamedStatement
            | Hazard::WrongAnswer => vec![TOKIO_POSTGRES_STATEMENTS, TRACKING_POOLER],
            other => other.remedies().to_vec(),
        }
    }

    /// [`tokio_postgres_remedies`](Hazard::tokio_postgres_remedies) as one
    /// line, for `doctor`.
    pub fn tokio_postgres_remedy_line(self) -> String {
        self.tokio_postgres_remedies().join("; ")
    }
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_hazards() {
        let of = Hazard::of_error;
        assert_eq!(
            of(
                "42P05",
                "prepared statement \"sqlx_s_1\" already exists",
                None
            ),
            Some(Hazard::DuplicateStatement)
        );
        assert_eq!(
            of("26000", "unnamed prepared statement does not exist", None),
            Some(Hazard::MissingUnnamedStatement)
        );
        assert_eq!(
            of(
                "26000",
                "prepared statement \"q\" does not exist",
                Some("EXECUTE q")
            ),
            Some(Hazard::SqlPrepareLost)
        );
        assert_eq!(
            of(
                "26000",
                "prepared statement \"sqlx_s_2\" does not exist",
                None
            ),
            Some(Hazard::MissingStatement)
        );
        assert_eq!(of("42601", "syntax error", None), None);
    }

    #[cfg(feature = "tokio-postgres")]
    #[test]
    fn tokio_postgres_remedies_speak_tokio_postgres() {
        for h in [
            Hazard::MissingStatement,
            Hazard::DuplicateStatement,
            Hazard::WrongAnswer,
        ] {
            let line = h.tokio_postgres_remedy_line();
            assert!(line.contains("`query_typed` / `execute_typed`"), "{line}");
            assert!(!line.contains("persistent(false)"), "{line}");
        }
        assert_eq!(
            Hazard::AdvisoryLockHeld.tokio_postgres_remedies(),
            Hazard::AdvisoryLockHeld.remedies()
        );
    }

    #[test]
    fn every_hazard_names_the_pooler_and_a_remedy() {
        let pooler = Pooler::Profile(Profile::SupabaseShared);
        for h in [
            Hazard::DuplicateStatement,
            Hazard::MissingStatement,
            Hazard::MissingUnnamedStatement,
            Hazard::WrongAnswer,
            Hazard::StartupParameterRefused,
            Hazard::SqlPrepareLost,
            Hazard::TempTableLost,
            Hazard::AdvisoryUnlockMissed,
            Hazard::AdvisoryLockHeld,
            Hazard::SessionStateLost,
        ] {
            assert!(
                h.why(&pooler).contains("the supabase-shared profile"),
                "{h:?}"
            );
            assert!(!h.remedies().is_empty(), "{h:?}");
        }
    }
}
