//! How each profile maps to PgBouncer's knobs (here, so that `profile`
//! stays a leaf: names and words, no settings), and the startup parameters
//! the Supavisor-like profiles drop.

use crate::target::profile::Profile;
use crate::target::settings::{PoolMode, StackSettings};

/// Parameters PgBouncer keeps per client and restores on every server
/// connection (its built-in five are always kept); `search_path` is asked for
/// too, which takes effect from PostgreSQL 18 (see [`Profile::residue`]).
const SUPAVISOR_TRACKED: [&str; 2] = ["IntervalStyle", "search_path"];

/// Supavisor's default pool size per tenant, and `default_pool_size` in
/// Supabase's PgBouncer template.
pub(crate) const SUPABASE_POOL_SIZE: u32 = 15;

/// Every run-time setting of PostgreSQL 15 and of 17 (`pg_settings`)
/// except those PgBouncer tracks: behind the Supavisor-like profiles
/// PgBouncer ignores them at startup (top-level or in `options=-c ...`)
/// instead of refusing the login, as Supavisor drops them. Both majors'
/// names, so that one `pgbouncer.ini` serves either (a name the server does
/// not know is never sent on). `tests/target_profiles.rs` checks each list
/// against the stack's own `pg_settings` of that major.
const PG_SETTINGS: [&str; 2] = [
    include_str!("pg_settings_15.txt"),
    include_str!("pg_settings_17.txt"),
];

impl Profile {
    /// `base` with this profile's pooler settings. (`NoPooler` runs on the
    /// default profile's stack and bypasses its pooler.)
    pub fn apply(self, base: StackSettings) -> StackSettings {
        let supavisor_like = |s: StackSettings| {
            s.with_ignore_startup_parameters(supavisor_dropped_parameters())
                .with_track_extra_parameters(SUPAVISOR_TRACKED)
        };
        // Pool sizes and client caps: Supavisor's default pool is 15, and its
        // session mode refuses client `pool_size + 1` at once; Supabase's
        // PgBouncer template has `default_pool_size = 15`. The shared
        // profile keeps 20: Supavisor's transaction mode queues clients
        // beyond the pool as PgBouncer does, up to a per-plan client limit.
        let sized = |s: StackSettings, pool: u32, cap: u32| StackSettings {
            default_pool_size: pool,
            max_db_client_connections: cap,
            ..s
        };
        match self {
            Profile::SupabaseShared | Profile::NoPooler => sized(supavisor_like(base), 20, 0)
                .with_pool_mode(PoolMode::Transaction)
                .with_max_prepared_statements(0),
            Profile::SupabaseDedicated => sized(base, SUPABASE_POOL_SIZE, 0)
                .with_pool_mode(PoolMode::Transaction)
                .with_max_prepared_statements(200)
                .with_ignore_startup_parameters(["extra_float_digits"])
                .with_track_extra_parameters(["IntervalStyle"]),
            // PgBouncer before 1.21 tracks no prepared statement: 1.24 with
            // tracking off behaves so (see Profile::residue).
            Profile::SupabaseDedicatedLegacy => sized(base, SUPABASE_POOL_SIZE, 0)
                .with_pool_mode(PoolMode::Transaction)
                .with_max_prepared_statements(0)
                .with_ignore_startup_parameters(["extra_float_digits"])
                .with_track_extra_parameters(["IntervalStyle"]),
            // PgBouncer tracks the statements across its server connections,
            // as Supavisor re-prepares them (its backend limit is 200 too);
            // the stage in front adds the flag's errors.
            Profile::SupabaseSharedPrepared => sized(supavisor_like(base), 20, 0)
                .with_pool_mode(PoolMode::Transaction)
                .with_max_prepared_statements(200),
            Profile::SupabaseSession => {
                sized(supavisor_like(base), SUPABASE_POOL_SIZE, SUPABASE_POOL_SIZE)
                    .with_pool_mode(PoolMode::Session)
                    .with_max_prepared_statements(0)
            }
        }
    }
}

impl StackSettings {
    /// Whether these are `profile`'s pooler settings (what
    /// [`Profile::apply`] makes of them), whatever their pool size and
    /// client cap: a test may shrink the pool, the endpoint is the same.
    ///
    /// ```
    /// use pgbouncer_fixtures::{PoolMode, Profile, StackSettings};
    ///
    /// let defaults = StackSettings::default();
    /// assert!(defaults.is_profile(Profile::SupabaseShared));
    /// assert!(!defaults.with_pool_mode(PoolMode::Session).is_profile(Profile::SupabaseShared));
    /// ```
    pub fn is_profile(&self, profile: Profile) -> bool {
        let mut shaped = profile.apply(self.clone());
        shaped.default_pool_size = self.default_pool_size;
        shaped.max_db_client_connections = self.max_db_client_connections;
        shaped == *self
    }
}

/// The parameters the Supavisor-like profiles ignore at startup: every
/// PostgreSQL 15 or 17 setting PgBouncer does not track, sorted.
pub fn supavisor_dropped_parameters() -> Vec<String> {
    let names: std::collections::BTreeSet<&str> = PG_SETTINGS
        .iter()
        .flat_map(|list| list.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    names.into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dropped_parameters_exclude_what_pgbouncer_tracks() {
        let dropped = supavisor_dropped_parameters();
        assert!(dropped.len() > 300, "{}", dropped.len());
        // 17's, and 15's that 17 no longer has.
        for p in [
            "jit",
            "extra_float_digits",
            "statement_timeout",
            "allow_alter_system",
            "force_parallel_mode",
        ] {
            assert!(dropped.iter().any(|d| d == p), "{p}");
        }
        for tracked in [
            "application_name",
            "client_encoding",
            "DateStyle",
            "TimeZone",
            "standard_conforming_strings",
            "IntervalStyle",
            "search_path",
        ] {
            assert!(!dropped.iter().any(|d| d == tracked), "{tracked}");
        }
    }

    #[test]
    fn the_default_settings_are_the_default_profile() {
        let defaults = StackSettings::default();
        assert_eq!(Profile::default().apply(defaults.clone()), defaults);
    }
}
