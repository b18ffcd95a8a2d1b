//! The labels that mark what the crate creates on an engine: how `gc`, the
//! sweep and CI's leftovers check find the crate's containers, and which
//! checkout's run made them.

use std::collections::HashMap;

/// Label put on every container the crate creates.
pub const LABEL_MANAGED: &str = "pgbouncer-fixtures.managed";
/// Label holding the id of the stack a resource belongs to.
pub const LABEL_STACK: &str = "pgbouncer-fixtures.stack";
/// Label naming what a container is: `postgres` or `pgbouncer`.
pub const LABEL_KIND: &str = "pgbouncer-fixtures.kind";
/// Label holding the checkout (`CARGO_MANIFEST_DIR`) whose run made the container.
pub const LABEL_CHECKOUT: &str = "pgbouncer-fixtures.checkout";
/// Label holding the pid of the process that created the container.
pub const LABEL_PID: &str = "pgbouncer-fixtures.pid";
/// Label: `true` for a run's shared stack, `false` for a private `Stack::start`.
pub const LABEL_SHARED: &str = "pgbouncer-fixtures.shared";

/// What a container of a stack runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Postgres,
    Pgbouncer,
}

impl Kind {
    /// The value of [`LABEL_KIND`].
    fn label(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Pgbouncer => "pgbouncer",
        }
    }
}

/// The labels of a container of stack `stack_id`.
pub(crate) fn labels_for(stack_id: &str, kind: Kind, shared: bool) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_STACK.to_string(), stack_id.to_string()),
        (LABEL_KIND.to_string(), kind.label().to_string()),
        (LABEL_CHECKOUT.to_string(), checkout()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
        (LABEL_SHARED.to_string(), shared.to_string()),
    ])
}

/// The checkout this process runs in: `CARGO_MANIFEST_DIR` as cargo and
/// nextest set it at run time, else the current directory. The value of
/// [`LABEL_CHECKOUT`], and part of the run's sharing key (`stack::run_key`).
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
