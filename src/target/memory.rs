//! A stack's memory budget: the bytes its PostgreSQL may hold in memory
//! (its data directory is a tmpfs), how it is written (`1G`, `512M`,
//! `1073741824`), its default from what the Docker engine reports, and how
//! it is split between the databases and the server itself.
//!
//! Why a budget: every template, prepared clone, database in use and
//! database waiting to be dropped is a full copy on the stack's tmpfs. The
//! budget is enforced twice: the worker counts databases in bytes before
//! each clone (`provision::memory`), and the databases' tmpfs is sized from
//! it, so a copy or a seed that would not fit fails with "no space left"
//! (only that statement: the server's own files have a tmpfs of their own)
//! instead of the host running out.

use crate::error::{Error, Result};
use crate::target::env::{redact_value, Env};

/// The variable that sets a stack's budget.
pub(crate) const MEMORY_BUDGET_VAR: &str = "PGBF_MEMORY_BUDGET";
/// What `PGBF_MEMORY_BUDGET` accepts.
const EXPECTED: &str =
    "a size of at least 512M: bytes (1073741824) or a whole number with K, M, G \
                        or T (1024-based: 512M, 1G, 16G)";
/// The smallest budget accepted: the server's own share and one small
/// template with a clone.
pub(crate) const MIN_MEMORY_BUDGET: u64 = 512 << 20;
/// Of the budget, what the server itself needs besides its databases:
/// `shared_buffers` (128 MB), its own files ([`SERVER_FILES`]), the
/// initial cluster's databases and the backends' own memory (~128 MB: with
/// the databases' tmpfs full, the container peaked ~100 MB above a share
/// that left the backends nothing).
pub(crate) const SERVER_SHARE: u64 = 448 << 20;
/// The default budget's share of the engine's memory (a quarter) ...
const DEFAULT_DIVISOR: u64 = 4;
/// ... at most this (8 GiB) ...
const DEFAULT_MAX: u64 = 8 << 30;
/// ... and at least this (1 GiB), or the budget of an engine that does not
/// say how much memory it has.
const DEFAULT_MIN: u64 = 1 << 30;

/// `text` as bytes: a plain number, or a whole number followed by K, M, G
/// or T (1024-based; an optional `B` or `iB` after it, any case).
pub(crate) fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// `PGBF_MEMORY_BUDGET` of `env`, when set.
pub(crate) fn budget_from_env(env: &Env) -> Result<Option<u64>> {
    let Some(raw) = env.get(MEMORY_BUDGET_VAR) else {
        return Ok(None);
    };
    match parse_bytes(raw) {
        Some(n) if n >= MIN_MEMORY_BUDGET => Ok(Some(n)),
        _ => Err(Error::InvalidEnv {
            var: MEMORY_BUDGET_VAR,
            value: redact_value(raw),
            expected: EXPECTED,
        }),
    }
}

/// The budget of a stack nobody set one for: a quarter of the engine's
/// memory (`docker info`'s `MemTotal`), between 1 and 8 GiB.
pub(crate) fn default_budget(engine_memory: Option<u64>) -> u64 {
    engine_memory
        .filter(|&m| m > 0)
        .map_or(DEFAULT_MIN, |m| m / DEFAULT_DIVISOR)
        .clamp(DEFAULT_MIN, DEFAULT_MAX)
}

/// Of a budget, the bytes the databases may take (templates, clones,
/// databases in use or waiting to be dropped).
pub(crate) fn databases_share(budget: u64) -> u64 {
    budget.saturating_sub(SERVER_SHARE)
}

/// Of the server's share, the room of its own files (the data directory's
/// tmpfs but for `base/`): WAL (`max_wal_size` 64 MB, up to twice that
/// while a checkpoint catches up), commit status, the checkpoint's files
/// and the logs. Apart from the databases' room, so that databases filling
/// theirs never leave the server unable to write WAL (a PANIC).
pub(crate) const SERVER_FILES: u64 = 160 << 20;
/// Of the server's share, the initial cluster's databases (`template1`,
/// `postgres`, the Supabase-shaped base: ~19 MB) and sorts' temporary
/// files, on the databases' tmpfs besides the databases' share.
const INITIAL_DATABASES: u64 = 32 << 20;
// Both are files within the server's share.
const _: () = assert!(INITIAL_DATABASES + SERVER_FILES < SERVER_SHARE);

/// The size of the databases' tmpfs (`base/`) for a budget: the
/// databases' share plus the initial cluster's databases. With
/// [`SERVER_FILES`], the files' part of the server's share (the rest is
/// process memory, not files).
pub(crate) fn databases_tmpfs_bytes(budget: u64) -> u64 {
    databases_share(budget) + INITIAL_DATABASES
}

/// `bytes` for people: `512 MB`, `1.5 GB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    let mb = bytes as f64 / f64::from(1u32 << 20);
    if mb >= 1024.0 {
        format!("{:.1} GB", mb / 1024.0)
    } else {
        format!("{mb:.0} MB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_in_each_documented_form_and_bad_ones_are_typed_errors() {
        assert_eq!(parse_bytes("1073741824"), Some(1 << 30));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes(" 2gib "), Some(2 << 30));
        assert_eq!(parse_bytes("64kB"), Some(64 << 10));
        for bad in ["", "G", "1.5G", "-1G", "1X", "99999999999T"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
        let env = |v: &str| Env::from_vars([(MEMORY_BUDGET_VAR, v.to_string())]);
        assert_eq!(budget_from_env(&env("1G")).unwrap(), Some(1 << 30));
        assert_eq!(budget_from_env(&Env::default()).unwrap(), None);
        for bad in ["lots", "100M"] {
            let err = budget_from_env(&env(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidEnv {
                        var: MEMORY_BUDGET_VAR,
                        ..
                    }
                ),
                "{bad}"
            );
            assert!(err.to_string().contains("512M, 1G"), "{err}");
        }
    }

    #[test]
    fn the_default_is_a_quarter_of_the_engine_between_1_and_8_gib() {
        assert_eq!(default_budget(Some(24 << 30)), 6 << 30);
        assert_eq!(default_budget(Some(2 << 30)), 1 << 30);
        assert_eq!(default_budget(Some(256 << 30)), 8 << 30);
        assert_eq!(default_budget(None), 1 << 30);
        assert!(databases_tmpfs_bytes(1 << 30) + SERVER_FILES < 1 << 30);
        assert_eq!(human_bytes(512 << 20), "512 MB");
        assert_eq!(human_bytes(3 << 29), "1.5 GB");
    }
}
