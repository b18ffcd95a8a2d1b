//! What a crate stack's processes and its janitor share: the SQL of the
//! stack's bookkeeping tables and the policy around them.
//!
//! The janitor itself runs in the PostgreSQL container
//! (`docker/sql/janitor.sql`, driven by `docker/sql/watchdog.sql`), between runs: it drops the databases
//! processes handed over at exit (`pgbf_garbage`), turns the claims of the
//! run that ended (`pgbf_claims`) into the demand per template
//! (`pgbf_demand`), and prepares clones (`pgbf_prepared`) up to that demand,
//! at most `StackSettings::max_warm_clones` (`PGBF_MAX_WARM_CLONES`) in all. The
//! processes' side is here: claiming a prepared clone records the claim in
//! the same statement, a process hands its queued drops over at exit
//! instead of waiting for them, and it caps the demand per template to what
//! the memory budget holds (the janitor's warm clones are full copies of
//! their template, counted in the budget as every clone is). Never used on an external server: the crate
//! leaves nothing on a user's server.

use crate::connect::quote::quote_literal;
use crate::contract::{self, CLAIMS_TABLE, DEMAND_TABLE, GARBAGE_TABLE, PREPARED_TABLE};
use crate::provision::database::Step;

/// Databases waiting for the janitor's drop, at most: each costs tmpfs
/// until dropped; beyond that a process drops its own at exit.
pub(crate) const MAX_GARBAGE: u32 = 128;

/// The stack's bookkeeping tables in its `postgres` database, one
/// statement at a time: the image's own definition
/// ([`contract::TABLES_SQL`], `docker/sql/tables.sql`).
pub(crate) const TABLES: Tables = Tables;

/// The statements of [`TABLES`] (iterate it).
#[derive(Clone, Copy)]
pub(crate) struct Tables;

impl IntoIterator for Tables {
    type Item = &'static str;
    type IntoIter = Box<dyn Iterator<Item = &'static str> + Send>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(contract::table_statements())
    }
}

/// Takes the oldest prepared clone of `template` (one round trip) and
/// records the claim for the janitor in the same statement; `SKIP LOCKED`:
/// two claimers never wait on each other nor get the same clone. Returns
/// one row, `name text` (the clone) and `left bigint` (the clones of
/// `template` still ready; the statement's snapshot still counts the one it
/// took, hence the `- 1`), or no row.
pub(crate) fn claim_sql(template: &str) -> String {
    let t = quote_literal(template);
    format!(
        "with taken as (delete from {PREPARED_TABLE} where name = (select name from {PREPARED_TABLE} \
         where template = {t} order by made_at limit 1 for update skip locked) returning name), \
         counted as (insert into {CLAIMS_TABLE} (template) select {t} from taken) \
         select name, (select count(*) from {PREPARED_TABLE} where template = {t}) - 1 as left from taken"
    )
}

/// Records a claim served by a clone made on demand (the pool was empty).
pub(crate) fn claimed_sql(template: &str) -> String {
    format!(
        "insert into {CLAIMS_TABLE} (template) values ({})",
        quote_literal(template)
    )
}

/// Caps what the janitor prepares of `template` between runs at `keep`
/// clones: the claims of the run beyond the newest `keep` are struck off,
/// and a demand rolled from an earlier run is lowered to `keep`.
pub(crate) fn cap_demand_sql(template: &str, keep: usize) -> String {
    let t = quote_literal(template);
    format!(
        "with trimmed as (delete from {CLAIMS_TABLE} where ctid in (select ctid from {CLAIMS_TABLE} \
         where template = {t} order by at desc offset {keep})) \
         update {DEMAND_TABLE} set claims = {keep} where template = {t} and claims > {keep}"
    )
}

/// Hands databases over to the janitor, as long as fewer than `max` wait
/// already (a memory bound: each costs tmpfs until dropped). Returns the
/// names it took; the caller drops the others itself.
pub(crate) fn hand_over_sql(names: &[String], max: u32) -> String {
    let values: Vec<String> = names.iter().map(|n| quote_literal(n)).collect();
    format!(
        "insert into {GARBAGE_TABLE} (name) select n from unnest(array[{}]::text[]) with ordinality as u(n, i) \
         where i <= {max} - (select count(*) from {GARBAGE_TABLE}) on conflict do nothing returning name",
        values.join(", ")
    )
}

/// The database that `steps` (from `Isolation::drop_steps`) drop, if they
/// drop one.
pub(crate) fn dropped_database(steps: &[Step]) -> Option<String> {
    steps
        .iter()
        .find_map(|step| step.dropped_database().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::database::Isolation;

    #[test]
    fn the_processes_make_the_tables_the_image_makes() {
        // What clones/on_stack.rs runs when the tables are missing is the image's
        // file, statement by statement (contract's tests: the image loads
        // that file and no other makes a table).
        let ours: Vec<&str> = TABLES.into_iter().collect();
        let file: String = ours.iter().map(|s| format!("{s};\n")).collect();
        assert_eq!(ours.len(), 4);
        assert!(contract::TABLES_SQL.ends_with(&file));
    }

    #[test]
    fn the_dropped_database_is_read_back_from_the_drop_steps() {
        for name in ["pgbf_c1a2b_0123456789", "we\"ird"] {
            let steps = Isolation::Database(name.into()).drop_steps();
            assert_eq!(dropped_database(&steps).as_deref(), Some(name));
        }
        let schema = Isolation::Schema("s".into()).drop_steps();
        assert_eq!(dropped_database(&schema), None);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert!(claim_sql("x'y").contains("'x''y'"));
        assert!(hand_over_sql(&["a".into(), "b'c".into()], 5).contains("'a', 'b''c'"));
        assert!(cap_demand_sql("x'y", 3).contains("'x''y'"));
    }
}
