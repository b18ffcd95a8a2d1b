//! Which processes share a stack: the sharing rule, as one hash.
//!
//! Processes share a stack when they agree on all of: the stack settings
//! (`StackSettings::key`), the run id, and the checkout. The run id is
//! `PGBF_RUN_ID` when set, else `NEXTEST_RUN_ID` (one id for every process of
//! a `cargo nextest run`), else the `cargo test` invocation: the parent
//! process (cargo runs every test binary as its child) identified by pid and
//! start time, so a recycled pid is another run. The checkout is
//! `CARGO_MANIFEST_DIR` as cargo and nextest set it at run time (else the
//! current directory), so two clones never share by accident.

use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::settings::StackSettings;

/// What identifies one run of tests, and the key derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunKey {
    /// 16 hex digits: the stack id of the run's shared stack.
    pub key: String,
    /// Where the run id came from, for messages (never secret).
    pub origin: String,
    /// The checkout the run belongs to (also a container label).
    pub checkout: String,
}

impl RunKey {
    /// The run key of the current process for these settings.
    pub(crate) fn current(settings: &StackSettings) -> RunKey {
        let (run_id, origin) = match &settings.run_id {
            Some(id) => (id.clone(), "PGBF_RUN_ID".to_string()),
            None => run_id_from_process(),
        };
        RunKey::derive(settings, &run_id, origin, checkout())
    }

    pub(crate) fn derive(
        settings: &StackSettings,
        run_id: &str,
        origin: String,
        checkout: String,
    ) -> RunKey {
        let mut h = Sha256::new();
        for part in [settings.key().as_str(), run_id, checkout.as_str()] {
            // Length-prefixed, so no two different triples hash alike.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        RunKey {
            key: hex(&h.finalize()[..8]),
            origin,
            checkout,
        }
    }
}

fn run_id_from_process() -> (String, String) {
    if let Some(id) = std::env::var("NEXTEST_RUN_ID")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        return (format!("nextest:{id}"), "NEXTEST_RUN_ID".to_string());
    }
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() };
    let started = process_start_time(ppid).unwrap_or_default();
    (
        format!("parent:{ppid}:{started}"),
        format!("the parent process (pid {ppid}, e.g. `cargo test`)"),
    )
}

/// The start time of `pid` in clock ticks since boot (Linux), so that a
/// recycled pid does not look like the same run.
fn process_start_time(pid: libc::pid_t) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 (starttime) is the 20th after the command name.
    rest.split_whitespace().nth(19).map(str::to_string)
}

pub(crate) fn checkout() -> String {
    std::env::var("CARGO_MANIFEST_DIR")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            std::env::current_dir()
                .ok()
                .map(|d| d.display().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_the_rule_separates_runs() {
        let s = StackSettings::default();
        let base = RunKey::derive(&s, "r1", String::new(), "/a".into());
        assert_eq!(base, RunKey::derive(&s, "r1", String::new(), "/a".into()));
        assert_ne!(
            base.key,
            RunKey::derive(&s, "r2", String::new(), "/a".into()).key
        );
        assert_ne!(
            base.key,
            RunKey::derive(&s, "r1", String::new(), "/b".into()).key
        );
        let other = s.clone().with_max_prepared_statements(100);
        assert_ne!(
            base.key,
            RunKey::derive(&other, "r1", String::new(), "/a".into()).key
        );
        assert_eq!(base.key.len(), 16);
    }

    #[test]
    fn the_parent_start_time_is_read() {
        // SAFETY: as above.
        let ppid = unsafe { libc::getppid() };
        assert!(process_start_time(ppid).is_some_and(|t| t.parse::<u64>().is_ok()));
    }
}
