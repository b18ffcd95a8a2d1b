//! Profiles: the production endpoints users deploy to. A test names the
//! endpoint (`Profile::SupabaseShared`), not PgBouncer's knobs; the knobs
//! that mirror each endpoint are in `settings` (`Profile::apply`), and what a
//! PgBouncer cannot mimic is listed in [`Profile::residue`] and docs/profiles.md.

use std::fmt;

use crate::error::{Error, Result};

/// Which production endpoint a test mirrors, usable with rstest's
/// `#[values(..)]` so one test can run behind several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// Supabase's shared pooler in transaction mode (port 6543 of
    /// `*.pooler.supabase.com`: Supavisor, named prepared statements off, its
    /// default): transaction pooling, no prepared-statement tracking, and
    /// startup parameters accepted and dropped instead of refused. Through
    /// the crate's Supavisor-like stage, which pools its clients'
    /// transactions as Supavisor does (a `SET TIME ZONE` outside a
    /// transaction stays where it ran, for the next client there) and sends
    /// only `user`, `database`, `search_path` and `application_name =
    /// Supavisor` on, in front of PgBouncer without tracking. The default:
    /// the connection string most projects copy.
    #[default]
    SupabaseShared,
    /// Supabase's dedicated pooler (`db.<ref>.supabase.co:6543`): PgBouncer
    /// 1.24 in transaction mode with `max_prepared_statements = 200`,
    /// refusing startup parameters it does not know
    /// (`ignore_startup_parameters = extra_float_digits` only).
    SupabaseDedicated,
    /// Supabase's shared pooler in session mode (port 5432): a server
    /// connection per client for the client's lifetime, reset between clients.
    /// Through the crate's Supavisor-like stage in session mode: Supavisor's
    /// startup parameters (`application_name = Supavisor - <the client's>`)
    /// and, past the pool, its FATAL `XX000 (EMAXCONNSESSION)`.
    SupabaseSession,
    /// Supabase's dedicated pooler on a project whose image predates
    /// PgBouncer 1.21 (Supabase's image variables pin 1.19: a project not
    /// upgraded since, still named "Dedicated Pooler" in the dashboard): transaction
    /// mode **without** prepared-statement tracking, so sqlx's default
    /// statement cache collides (42P05/26000) as on that pooler, and
    /// startup parameters refused as by [`Profile::SupabaseDedicated`].
    SupabaseDedicatedLegacy,
    /// Supabase's shared pooler in transaction mode with Supavisor's
    /// per-tenant `named_prepared_statements` feature flag on (Supavisor
    /// 2.7+): sqlx's default statement cache works, while SQL `PREPARE`,
    /// `EXECUTE` and `DEALLOCATE` (`EPSSIMPLEQUERY`), a 101st named
    /// statement on one connection (`EMAXPREPARED`), and a duplicate or
    /// unknown statement name (`EPREPAREDDUP`, `EPREPAREDNOTFOUND`) end the
    /// connection with Supavisor's FATAL errors; only `user`, `database`,
    /// `search_path` and `application_name = Supavisor` reach the database
    /// (sqlx's `TimeZone`, dotted custom settings, `options` are dropped),
    /// as on every Supavisor endpoint. The crate's own
    /// Supavisor-like stage (a proxy in the test's or `up`'s process,
    /// serving TLS with the stack's certificate) in front of PgBouncer with
    /// prepared-statement tracking.
    SupabaseSharedPrepared,
    /// No pooler: `connect()` goes straight to PostgreSQL, as an application
    /// on Supabase's direct connection (`db.<ref>.supabase.co:5432`) does.
    NoPooler,
}

impl Profile {
    /// Every profile, in the order of the matrix.
    pub const ALL: [Profile; 6] = [
        Profile::SupabaseShared,
        Profile::SupabaseDedicated,
        Profile::SupabaseSession,
        Profile::SupabaseDedicatedLegacy,
        Profile::SupabaseSharedPrepared,
        Profile::NoPooler,
    ];

    /// The name used by `PGBF_PROFILE`, `up --profile` and the matrix.
    pub fn name(self) -> &'static str {
        match self {
            Profile::SupabaseShared => "supabase-shared",
            Profile::SupabaseDedicated => "supabase-dedicated",
            Profile::SupabaseSession => "supabase-session",
            Profile::SupabaseDedicatedLegacy => "supabase-dedicated-legacy",
            Profile::SupabaseSharedPrepared => "supabase-shared-prepared",
            Profile::NoPooler => "no-pooler",
        }
    }

    /// The production endpoint it stands for.
    pub fn mirrors(self) -> &'static str {
        match self {
            Profile::SupabaseShared => {
                "Supabase's shared pooler in transaction mode (Supavisor, port 6543)"
            }
            Profile::SupabaseDedicated => {
                "Supabase's dedicated pooler (PgBouncer 1.24 with prepared-statement tracking, port 6543)"
            }
            Profile::SupabaseSession => "Supabase's shared pooler in session mode (port 5432)",
            Profile::SupabaseDedicatedLegacy => {
                "Supabase's dedicated pooler on an older image (PgBouncer before 1.21, no prepared-statement tracking, port 6543)"
            }
            Profile::SupabaseSharedPrepared => {
                "Supabase's shared pooler in transaction mode with the named_prepared_statements \
                 flag on (Supavisor 2.7+, port 6543)"
            }
            Profile::NoPooler => "a direct PostgreSQL connection (no pooler)",
        }
    }

    /// How the crate mimics it.
    pub fn description(self) -> &'static str {
        match self {
            Profile::SupabaseShared => {
                "the crate's Supavisor-like stage (Supavisor's transaction pooling and startup \
                 parameters) in front of PgBouncer transaction mode, max_prepared_statements=0"
            }
            Profile::SupabaseDedicated => {
                "PgBouncer transaction mode, max_prepared_statements=200, ignore_startup_parameters=extra_float_digits"
            }
            Profile::SupabaseSession => {
                "the crate's Supavisor-like stage (Supavisor's startup parameters, its session \
                 limit's words) in front of PgBouncer session mode, server_reset_query=DISCARD ALL"
            }
            Profile::SupabaseDedicatedLegacy => {
                "PgBouncer transaction mode, max_prepared_statements=0, ignore_startup_parameters=extra_float_digits"
            }
            Profile::SupabaseSharedPrepared => {
                "the crate's Supavisor-like stage (Supavisor's startup parameters, the flag's \
                 errors) in front of PgBouncer transaction mode, max_prepared_statements=200"
            }
            Profile::NoPooler => "PostgreSQL without a pooler",
        }
    }

    /// What this profile does differently from the endpoint it mirrors:
    /// the part a PgBouncer-based fixture cannot reproduce.
    pub fn residue(self) -> &'static [&'static str] {
        match self {
            Profile::SupabaseShared => &SUPAVISOR_RESIDUE,
            Profile::SupabaseSession => &SESSION_RESIDUE,
            Profile::SupabaseSharedPrepared => &SHARED_PREPARED_RESIDUE,
            Profile::SupabaseDedicated => &[NO_LATENCY],
            Profile::SupabaseDedicatedLegacy => &[NO_LATENCY, LEGACY_VERSION],
            Profile::NoPooler => &[],
        }
    }

    /// Whether `connect()` bypasses the pooler (goes to the direct endpoint).
    pub fn bypasses_pooler(self) -> bool {
        self == Profile::NoPooler
    }

    /// Whether the pooler hands a client's server connection to others
    /// between transactions (session state is lost).
    pub fn pools_transactions(self) -> bool {
        matches!(
            self,
            Profile::SupabaseShared
                | Profile::SupabaseDedicated
                | Profile::SupabaseDedicatedLegacy
                | Profile::SupabaseSharedPrepared
        )
    }

    /// Whether a [`TestDb`](crate::TestDb) of this profile connects
    /// through the crate's Supavisor-like stage, a proxy that runs in the
    /// process that asks for the URL (the test's, or `up`'s:
    /// [`Stack::url_for_profile`](crate::Stack::url_for_profile)) in front
    /// of the stack's PgBouncer.
    pub fn behind_stage(self) -> bool {
        matches!(
            self,
            Profile::SupabaseShared | Profile::SupabaseSharedPrepared | Profile::SupabaseSession
        )
    }

    /// Whether named prepared statements are safe across clients.
    pub fn tracks_prepared_statements(self) -> bool {
        !matches!(
            self,
            Profile::SupabaseShared | Profile::SupabaseDedicatedLegacy
        )
    }
}

/// Supavisor's delay before it answers a wrong password.
pub(crate) const WRONG_PASSWORD_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// Supavisor's limits on logins (probed in part: the wrong-password row).
pub(crate) const LOGIN_LIMITS: &str =
    "not reproduced: Supavisor's circuit breaker (ECIRCUITBREAKER: new logins refused \
     for 120 s after 10 failed ones in 150 s, per tenant and address) and its checkout \
     timeout (ECHECKOUTTIMEOUT, 60 s); the answer to each wrong password is reproduced";

/// A startup `search_path`, not applied behind the flag-on profile
/// (probed: the matrix's startup rows).
pub(crate) const SEARCH_PATH_AT_STARTUP: &str =
    "not reproduced: search_path at startup (top level or `-c` in options) is accepted \
     and not applied behind the flag-on profile, so unqualified names resolve in public; \
     Supavisor applies it (since 2.8.9, and keys its pools by it). This profile's clients \
     stay on PgBouncer, which tracks their named statements, and PostgreSQL before 18 \
     does not report search_path, so PgBouncer cannot carry it";
/// Supavisor's flag-on errors: only the stage's profile has them.
const SUPAVISOR_ERRORS: &str =
    "errors are PostgreSQL's own: Supavisor's (EPREPAREDDUP)-style errors of its \
     named_prepared_statements flag and its 100-statement cap are the flag-on profile's \
     (supabase-shared-prepared); tenant routing is not mimicked";
/// A tracked `SET` outside a transaction (probed: the tracked-`SET` row).
pub(crate) const TRACKED_SET: &str =
    "not reproduced: a tracked SET outside a transaction (SET TIME ZONE, DateStyle, \
     IntervalStyle, application_name) is kept per client and re-applied on every \
     server connection; Supavisor passes SET through raw and resets nothing, so the \
     value stays on that backend (another client may get it, the setter may lose it)";
/// What no local stack has.
const NO_LATENCY: &str = "no network latency between the client, the pooler and the database";
/// The legacy profile's PgBouncer is 1.24 with tracking off, not 1.19.
const LEGACY_VERSION: &str =
    "PgBouncer 1.24 with max_prepared_statements = 0 stands for 1.19: prepared statements \
     behave alike (neither tracks them); what 1.20-1.24 added for clients (track_extra_parameters, \
     their error texts) is not probed against a real 1.19";

/// How the stage's transaction pooling differs from Supavisor's.
const LINKS_NOT_BACKENDS: &str =
    "the stage pools its logins to PgBouncer, not backends: a tracked setting (SET TIME ZONE, \
     DateStyle, application_name) stays with the link it was set on, other session state \
     (custom settings, temporary tables, named prepared statements) with PgBouncer's backend; \
     both reach other clients and go missing for the setter as on Supavisor, not always in \
     the same transactions (a login naming a search_path is linked straight to PostgreSQL: \
     there a link is a backend, as on Supavisor)";

/// What the shared pooler's profile does differently from Supavisor.
const SUPAVISOR_RESIDUE: [&str; 3] = [LOGIN_LIMITS, SUPAVISOR_ERRORS, LINKS_NOT_BACKENDS];

/// What the session pooler's profile does differently: Supavisor's
/// session mode keeps one backend per client, as here.
const SESSION_RESIDUE: [&str; 2] = [LOGIN_LIMITS, SUPAVISOR_ERRORS];

/// What the flag-on profile does differently: a client keeps one link
/// (PgBouncer tracks named statements per link, as Supavisor per client),
/// so a tracked `SET` is kept per client.
const SHARED_PREPARED_RESIDUE: [&str; 5] = [
    LOGIN_LIMITS,
    SEARCH_PATH_AT_STARTUP,
    TRACKED_SET,
    "SQL PREPARE/EXECUTE/DEALLOCATE are found by a lexer (the first word of each top-level \
     statement), not by Supavisor's SQL parser: a simple query Supavisor cannot parse is \
     passed on there, and refused here when one of its statements starts with those words",
    "the stage's refusals never reach the server's logs, so `TestDb::explain` does not \
     report them; the test's own error carries Supavisor's code and words",
];

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Profile> {
        let wanted: String = s
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        if wanted == "direct" {
            // The 0.1 name of `no-pooler`.
            return Ok(Profile::NoPooler);
        }
        Profile::ALL
            .into_iter()
            .find(|p| p.name().replace('-', "") == wanted)
            .ok_or_else(|| Error::InvalidEnv {
                var: "PGBF_PROFILE",
                value: crate::target::env::redact_value(s),
                expected: "supabase-shared, supabase-dedicated, supabase-session, \
                           supabase-dedicated-legacy, supabase-shared-prepared or no-pooler \
                           (the old names: transaction is now supabase-shared, tracking \
                           supabase-dedicated, session supabase-session; a plain PgBouncer is \
                           PGBF_POOL_MODE, PGBF_MAX_PREPARED_STATEMENTS, ...)",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_any_spelling() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
            assert_eq!(format!("{p:?}").parse::<Profile>().unwrap(), p);
            assert_eq!(p.name().replace('-', "_").parse::<Profile>().unwrap(), p);
        }
        assert!("transaction".parse::<Profile>().is_err());
        assert_eq!("direct".parse::<Profile>().unwrap(), Profile::NoPooler);
    }
}
