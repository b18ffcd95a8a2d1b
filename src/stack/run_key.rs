//! Which processes share a stack: the sharing rule, as one hash.
//!
//! Processes share a stack when they agree on all of: the stack settings
//! (`StackSettings::key`), the run id, and the checkout. The run id is
//! `PGBF_RUN_ID` when set; else there is none: every process of every run
//! of the checkout (every binary of a `cargo test`, every process of a
//! `cargo nextest run`, and the next run) shares the checkout's stack while
//! it lives, which is what makes a rerun warm (see `StackSettings::keep_warm`).
//! The checkout is `CARGO_MANIFEST_DIR` as cargo and nextest set it at run
//! time (else the current directory), so two clones never share by accident.

use sha2::{Digest, Sha256};

use crate::docker::labels::checkout;
use crate::support::digest::hex;
use crate::target::settings::StackSettings;

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
            // A control character: no PGBF_RUN_ID can spell it.
            None => (
                "\u{1}checkout".to_string(),
                "the checkout (no PGBF_RUN_ID)".to_string(),
            ),
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
}
