//! Which PostgreSQL major a stack runs: Supabase projects run 15 or 17, and
//! a project on 15 should test against a server that refuses what its
//! production refuses. Each major comes from the Debian release that ships
//! it (17: trixie, 15: bookworm); PgBouncer stays trixie's in both cases.

use std::fmt;

use crate::error::{Error, Result};

/// The PostgreSQL major of a stack (`PGBF_POSTGRES_VERSION`, 15 or 17;
/// default 17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum PostgresVersion {
    /// PostgreSQL 15, Debian bookworm's `postgresql-15`.
    V15,
    /// PostgreSQL 17, Debian trixie's `postgresql-17` (the default).
    #[default]
    V17,
}

impl PostgresVersion {
    /// Every major a stack can run, oldest first.
    pub const ALL: [PostgresVersion; 2] = [PostgresVersion::V15, PostgresVersion::V17];

    /// The major as a number (`15`, `17`).
    pub fn major(self) -> u32 {
        match self {
            PostgresVersion::V15 => 15,
            PostgresVersion::V17 => 17,
        }
    }

    /// The Debian release whose packages carry it.
    pub fn debian_suite(self) -> &'static str {
        match self {
            PostgresVersion::V15 => "bookworm",
            PostgresVersion::V17 => "trixie",
        }
    }

    /// The major of a `server_version_num` (`150012` -> 15), when a stack
    /// can run it.
    pub fn of_server_version_num(num: u32) -> Option<PostgresVersion> {
        PostgresVersion::ALL
            .into_iter()
            .find(|v| v.major() == num / 10_000)
    }
}

impl fmt::Display for PostgresVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.major())
    }
}

impl std::str::FromStr for PostgresVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<PostgresVersion> {
        let wanted = s.trim();
        PostgresVersion::ALL
            .into_iter()
            .find(|v| v.major().to_string() == wanted)
            .ok_or_else(|| Error::InvalidEnv {
                var: "PGBF_POSTGRES_VERSION",
                value: crate::target::env::redact_value(s),
                expected: "15 or 17 (the PostgreSQL majors Supabase projects run; the major \
                           alone, e.g. PGBF_POSTGRES_VERSION=15)",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_majors_parse() {
        assert_eq!(
            "15".parse::<PostgresVersion>().unwrap(),
            PostgresVersion::V15
        );
        assert_eq!(
            " 17 ".parse::<PostgresVersion>().unwrap(),
            PostgresVersion::V17
        );
        for bad in ["16", "15.4", "pg15", ""] {
            let err = bad.parse::<PostgresVersion>().unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidEnv {
                        var: "PGBF_POSTGRES_VERSION",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        assert_eq!(
            PostgresVersion::of_server_version_num(150_012),
            Some(PostgresVersion::V15)
        );
        assert_eq!(PostgresVersion::of_server_version_num(160_001), None);
    }
}
