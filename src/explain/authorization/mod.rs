//! Explanations for authorization failures: a statement refused with
//! `42501` (permission denied, or a new row that violates a row-level
//! security policy), and the roles, claims and policies in effect when a
//! test that acted as a Data API role fails an assertion (about rows it
//! did not see, say). The role and claims come from the test's own
//! `ActAs` transactions (`acting`), matched to the refused statement by
//! its transaction's virtual id in PostgreSQL's log; the table's
//! row-level security, privileges and policies from the catalog
//! (`facts`); the words from `words`.

pub(crate) mod acting;
mod facts;
mod words;

use sqlx::{Connection, PgConnection};

use crate::error::Result;
use crate::explain::{connect_for_evidence, log_field, log_settled, EvidenceSource};

use acting::Acted;
use facts::TableFacts;

/// What the servers refused a test for lack of authorization, and the
/// roles, claims and policies in effect; printed at a failing test.
/// [`TestDb::explain_authorization`](crate::TestDb::explain_authorization)
/// returns it on demand.
#[derive(Clone, Debug)]
pub struct AuthorizationExplanation {
    test: String,
    refusals: Vec<Refusal>,
    /// The test's `ActAs` transactions, oldest first.
    acted: Vec<Acted>,
    /// The tables with policies or row-level security, as the last
    /// `ActAs` role meets them.
    context: Vec<TableFacts>,
    /// Why a part could not be read, when one could not.
    unread: Option<String>,
}

impl AuthorizationExplanation {
    /// Whether there is nothing to say: no statement was refused with
    /// `42501` and the test never acted as a Data API role.
    pub fn is_empty(&self) -> bool {
        self.refusals.is_empty() && self.acted.is_empty()
    }

    /// How many different statements were refused with `42501`.
    pub fn refusal_count(&self) -> usize {
        self.refusals.len()
    }
}

/// What a refusal was about, from the server's message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refused {
    /// `new row violates row-level security policy ... for table "t"`.
    RowSecurity { table: String },
    /// `permission denied for table t` (or view, materialized view, ...).
    Relation { table: String },
    /// `permission denied for schema s` (sequence, function, ...).
    Other { kind: String, name: String },
}

/// One statement refused with `42501`.
#[derive(Clone, Debug)]
struct Refusal {
    message: String,
    statement: Option<String>,
    count: usize,
    /// The `ActAs` that began the refused statement's transaction.
    acted: Option<Acted>,
    /// The session's login role, from the log.
    session_user: String,
    refused: Refused,
    /// `SELECT`, `INSERT`, `UPDATE`, `DELETE`, from the statement.
    command: Option<&'static str>,
    tables: Vec<TableFacts>,
}

impl Refusal {
    /// The role the statement ran as.
    fn role(&self) -> &str {
        self.acted
            .as_ref()
            .map_or(self.session_user.as_str(), |a| a.role.as_str())
    }
}

/// Reads the test's `42501` refusals from PostgreSQL's log and the facts
/// that explain them.
pub(crate) async fn explain_authorization(
    test: &str,
    source: &EvidenceSource,
) -> Result<AuthorizationExplanation> {
    let acted = acting::of(&source.database);
    let mut conn = connect_for_evidence(source).await?;
    let lines = refusal_lines(&mut conn, &source.database).await?;
    let mut refusals: Vec<Refusal> = Vec::new();
    let mut unread = None;
    for line in lines {
        if let Some(same) = refusals
            .iter_mut()
            .find(|r| r.message == line.message && r.statement == line.statement)
        {
            same.count += 1;
            continue;
        }
        let Some(refused) = refused(&line.message) else {
            continue;
        };
        let mut refusal = Refusal {
            command: line.statement.as_deref().and_then(command),
            acted: line
                .vxid
                .as_ref()
                .and_then(|v| acted.iter().rev().find(|a| a.vxid.as_ref() == Some(v)))
                .cloned(),
            message: line.message,
            statement: line.statement,
            count: 1,
            session_user: line.user,
            refused,
            tables: Vec::new(),
        };
        let table = match &refusal.refused {
            Refused::RowSecurity { table } | Refused::Relation { table } => Some(table.clone()),
            Refused::Other { .. } => None,
        };
        if let Some(table) = table {
            let role = refusal.role().to_string();
            match facts::tables(&mut conn, &role, Some(&table)).await {
                Ok(t) => refusal.tables = t,
                Err(e) => unread = Some(e.to_string()),
            }
        }
        refusals.push(refusal);
    }
    let mut context = Vec::new();
    if let Some(last) = acted.last() {
        match facts::tables(&mut conn, &last.role, None).await {
            Ok(t) => context = t,
            Err(e) => unread = Some(e.to_string()),
        }
    }
    let _ = conn.close().await;
    Ok(AuthorizationExplanation {
        test: test.to_string(),
        refusals,
        acted,
        context,
        unread,
    })
}

/// A `42501` line of PostgreSQL's JSON log.
struct LogLine {
    message: String,
    statement: Option<String>,
    vxid: Option<String>,
    user: String,
}

async fn refusal_lines(conn: &mut PgConnection, database: &str) -> Result<Vec<LogLine>> {
    let text = log_settled(conn).await?;
    let field = log_field;
    Ok(text
        .lines()
        .filter(|line| line.contains("\"42501\""))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| field(v, "dbname").as_deref() == Some(database))
        .filter(|v| field(v, "state_code").as_deref() == Some("42501"))
        .map(|v| LogLine {
            message: field(&v, "message").unwrap_or_default(),
            statement: field(&v, "statement"),
            vxid: field(&v, "vxid"),
            user: field(&v, "user").unwrap_or_default(),
        })
        .collect())
}

/// What the server's `42501` message refused.
fn refused(message: &str) -> Option<Refused> {
    if message.starts_with("new row violates row-level security policy") {
        let (_, rest) = message.rsplit_once("for table \"")?;
        let table = rest.strip_suffix('"')?.to_string();
        return Some(Refused::RowSecurity { table });
    }
    let rest = message.strip_prefix("permission denied for ")?;
    for kind in ["materialized view", "foreign table", "table", "view"] {
        if let Some(name) = rest.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) {
            return Some(Refused::Relation {
                table: name.to_string(),
            });
        }
    }
    let (kind, name) = rest.split_once(' ')?;
    Some(Refused::Other {
        kind: kind.to_string(),
        name: name.to_string(),
    })
}

/// The command of a statement: its first keyword, or after a `WITH` the
/// first data-modifying one; in a string of several (`begin; set ...;
/// delete ...`), the first that is one of these.
fn command(statement: &str) -> Option<&'static str> {
    statement.split(';').find_map(command_of_one)
}

fn command_of_one(statement: &str) -> Option<&'static str> {
    let lower = statement.trim_start().to_ascii_lowercase();
    let first = lower.split_whitespace().next()?;
    let of = |w: &str| match w {
        "select" | "table" => Some("SELECT"),
        "insert" => Some("INSERT"),
        "update" => Some("UPDATE"),
        "delete" => Some("DELETE"),
        _ => None,
    };
    if first != "with" {
        return of(first);
    }
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .collect();
    ["insert", "update", "delete"]
        .into_iter()
        .find(|w| words.contains(w))
        .and_then(of)
        .or(Some("SELECT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_was_refused() {
        assert_eq!(
            refused("new row violates row-level security policy for table \"notes\""),
            Some(Refused::RowSecurity {
                table: "notes".into()
            })
        );
        assert_eq!(
            refused("new row violates row-level security policy \"p\" for table \"my notes\""),
            Some(Refused::RowSecurity {
                table: "my notes".into()
            })
        );
        assert_eq!(
            refused("permission denied for table secrets"),
            Some(Refused::Relation {
                table: "secrets".into()
            })
        );
        assert_eq!(
            refused("permission denied for materialized view mv"),
            Some(Refused::Relation { table: "mv".into() })
        );
        assert_eq!(
            refused("permission denied for schema private"),
            Some(Refused::Other {
                kind: "schema".into(),
                name: "private".into()
            })
        );
        assert_eq!(refused("must be owner of table t"), None);
    }

    #[test]
    fn statements_name_their_command() {
        assert_eq!(command("  INSERT into t values (1)"), Some("INSERT"));
        assert_eq!(command("select 1"), Some("SELECT"));
        assert_eq!(
            command("with x as (select 1) update t set a = 1"),
            Some("UPDATE")
        );
        assert_eq!(
            command("with x as (select 1) select * from x"),
            Some("SELECT")
        );
        assert_eq!(command("call p()"), None);
        assert_eq!(
            command("begin; set local role anon; delete from t"),
            Some("DELETE")
        );
    }
}
