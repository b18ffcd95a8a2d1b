//! The authorization blocks in words: what was refused, as whom, the
//! table's row-level security and policies, and what to check.

use std::fmt;

use super::acting::Acted;
use super::facts::{Policy, TableFacts};
use super::{AuthorizationExplanation, Refusal, Refused};

/// The first words of the block of a refused statement.
pub(crate) const REFUSED_HEADER: &str = "pgbouncer-fixtures: refused for lack of authorization in";
/// The first words of the block of roles and policies in effect.
pub(crate) const CONTEXT_HEADER: &str = "pgbouncer-fixtures: roles and policies in effect in";

/// Statements are quoted up to this many characters.
const STATEMENT_MAX: usize = 240;

impl fmt::Display for AuthorizationExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.refusals.is_empty() {
            writeln!(f, "{REFUSED_HEADER} `{}` (42501):", self.test)?;
            for r in &self.refusals {
                write_refusal(f, r)?;
            }
        }
        if let Some(last) = self.acted.last() {
            self.write_context(f, last)?;
        }
        if let Some(why) = &self.unread {
            writeln!(f, "  (part of the catalog could not be read: {why})")?;
        }
        Ok(())
    }
}

fn write_refusal(f: &mut fmt::Formatter<'_>, r: &Refusal) -> fmt::Result {
    let times = match r.count {
        1 => "once".to_string(),
        n => format!("{n} times"),
    };
    writeln!(f, "  - 42501 {} ({times})", r.message)?;
    if let Some(s) = &r.statement {
        writeln!(f, "    statement: {}", shorten(s.trim()))?;
    }
    match &r.acted {
        Some(a) => {
            writeln!(
                f,
                "    acting as: {} (the ActAs that began this transaction)",
                who(a)
            )?;
        }
        None => writeln!(
            f,
            "    acting as: no ActAs began this transaction; its session logged in as `{}` (a \
             `SET ROLE` of its own is not seen here: the facts below are that role's)",
            r.session_user
        )?,
    }
    for t in &r.tables {
        write_table(f, t)?;
    }
    if r.tables.is_empty() {
        if let Refused::RowSecurity { table } | Refused::Relation { table } = &r.refused {
            writeln!(f, "    table {table}: not found in the catalog now")?;
        }
    }
    writeln!(f, "    what to check:")?;
    for check in checks(r) {
        writeln!(f, "      * {check}")?;
    }
    Ok(())
}

impl AuthorizationExplanation {
    fn write_context(&self, f: &mut fmt::Formatter<'_>, last: &Acted) -> fmt::Result {
        writeln!(
            f,
            "{CONTEXT_HEADER} `{}` (may explain rows a query did not see; which tables the failing \
             assertion's query read is not checked):",
            self.test
        )?;
        writeln!(
            f,
            "  acting as: {} (the last ActAs of this test)",
            who(last)
        )?;
        let mut earlier: Vec<String> = Vec::new();
        for a in &self.acted[..self.acted.len() - 1] {
            let w = format!("role `{}` (sub {})", a.role, a.sub().unwrap_or("none"));
            if !earlier.contains(&w) {
                earlier.push(w);
            }
        }
        if !earlier.is_empty() {
            writeln!(f, "  earlier in this test, also: {}", earlier.join("; "))?;
        }
        if self.context.is_empty() {
            writeln!(f, "  no table has policies or row-level security")?;
        }
        for t in &self.context {
            write_table(f, t)?;
        }
        writeln!(f, "  what to check:")?;
        for check in context_checks(last, &self.context) {
            writeln!(f, "    * {check}")?;
        }
        Ok(())
    }
}

/// `role `authenticated`, claims {..}; auth.uid() = ..`.
fn who(a: &Acted) -> String {
    let uid = a
        .sub()
        .map_or("null (no sub claim)".to_string(), str::to_string);
    format!("role `{}`, claims {}; auth.uid() = {uid}", a.role, a.claims)
}

fn write_table(f: &mut fmt::Formatter<'_>, t: &TableFacts) -> fmt::Result {
    let rls = match (t.rls, t.forced) {
        (false, _) => "row-level security off",
        (true, false) => "row-level security on (not forced)",
        (true, true) => "row-level security on and forced",
    };
    let privileges: Vec<String> = t
        .privileges
        .iter()
        .map(|(c, has)| format!("{c} {}", if *has { "yes" } else { "no" }))
        .collect();
    writeln!(
        f,
        "    table {}: owner {}; {rls}; `{}` has {}{}{}",
        t.qualified(),
        t.owner,
        t.role,
        privileges.join(", "),
        if t.schema_usage {
            ""
        } else {
            "; no USAGE on its schema"
        },
        if t.bypasses {
            "; the role bypasses row-level security"
        } else {
            ""
        },
    )?;
    if t.policies.is_empty() {
        writeln!(f, "      no policies")?;
    }
    for p in &t.policies {
        writeln!(f, "      {}", policy(p))?;
    }
    Ok(())
}

fn policy(p: &Policy) -> String {
    let mut s = format!(
        "policy \"{}\" ({}, for {}, to {}; {})",
        p.name,
        if p.permissive {
            "permissive"
        } else {
            "restrictive"
        },
        p.cmd,
        p.roles.join(", "),
        if p.applies {
            "applies to the role"
        } else {
            "not for the role"
        },
    );
    if let Some(u) = &p.using {
        s.push_str(&format!(" USING ({u})"));
    }
    if let Some(c) = &p.check {
        s.push_str(&format!(" WITH CHECK ({c})"));
    }
    s
}

fn checks(r: &Refusal) -> Vec<String> {
    let role = r.role();
    let mut out = Vec::new();
    match &r.refused {
        Refused::RowSecurity { .. } => {
            let cmd = r.command.unwrap_or("INSERT");
            for t in &r.tables {
                out.extend(row_security_checks(t, cmd, r.acted.as_ref()));
            }
        }
        Refused::Relation { table } if r.acted.is_none() => {
            let cmd = r.command.unwrap_or("SELECT").to_lowercase();
            out.push(format!(
                "the role in effect is not known here: if the transaction set one (`SET ROLE`), \
                 grant it the privilege: `grant {cmd} on {table} to <that role>;`"
            ));
        }
        Refused::Relation { table } => {
            let cmd = r.command.unwrap_or("SELECT");
            for t in &r.tables {
                if !t.schema_usage {
                    out.push(format!("grant usage on schema {} to {role};", t.schema));
                }
                match t.has(cmd) {
                    Some(false) => out.push(format!(
                        "grant the privilege: `grant {} on {} to {role};` (Supabase's default \
                         privileges give anon, authenticated and service_role all of a table \
                         postgres makes in public; a table made by another role or in another \
                         schema, or a `revoke` in a migration, needs its own grant)",
                        cmd.to_lowercase(),
                        t.qualified()
                    )),
                    _ => out.push(format!(
                        "`{role}` has {cmd} on {}: the refusal is of another command of the \
                         statement (an `insert ... returning` needs SELECT too, an `update ... \
                         where` reads) or of a column: grant that",
                        t.qualified()
                    )),
                }
            }
            if r.tables.is_empty() {
                out.push(format!("grant {role} the privilege on {table}"));
            }
        }
        Refused::Other { kind, name } => out.push(match kind.as_str() {
            "schema" => format!("grant usage on schema {name} to {role};"),
            "sequence" => format!("grant usage, select on sequence {name} to {role};"),
            "function" | "procedure" => format!("grant execute on {kind} {name} to {role};"),
            _ => format!("grant {role} the privilege it lacks on {kind} {name}"),
        }),
    }
    out
}

fn row_security_checks(t: &TableFacts, cmd: &str, acted: Option<&Acted>) -> Vec<String> {
    let mut out = Vec::new();
    let applying: Vec<&Policy> = t
        .policies
        .iter()
        .filter(|p| p.applies && p.governs(cmd))
        .collect();
    if !applying.iter().any(|p| p.permissive) {
        out.push(format!(
            "no permissive policy for {cmd} applies to `{}` on {}: with row-level security on, \
             what no policy allows is refused; add one (`create policy ... on {} for {} to {} \
             with check (...)`)",
            t.role,
            t.qualified(),
            t.qualified(),
            cmd.to_lowercase(),
            t.role
        ));
    } else {
        let checks: Vec<String> = applying
            .iter()
            .map(|p| {
                let expr = p.check.as_ref().or(p.using.as_ref());
                format!("\"{}\": {}", p.name, expr.map_or("true", |e| e.as_str()))
            })
            .collect();
        out.push(format!(
            "the new row must pass the WITH CHECK (or, where a policy has none, the USING) of \
             one permissive policy and of every restrictive one: {}; compare the row's values \
             with it",
            checks.join("; ")
        ));
    }
    out.extend(uid_check(acted));
    if cmd == "UPDATE" {
        out.push(
            "for UPDATE, USING picks the rows the update may change (the others are skipped \
             with no error) and WITH CHECK must pass for the row as changed"
                .into(),
        );
    }
    out.push(format!(
        "service_role bypasses row-level security (BYPASSRLS), and so does the table's owner \
         ({}) unless `alter table {} force row level security`: a test that passes as either \
         says nothing of the policies",
        t.owner,
        t.qualified()
    ));
    out
}

/// What `auth.uid()` answers, when that may be the cause.
fn uid_check(acted: Option<&Acted>) -> Option<String> {
    match acted {
        Some(a) if a.sub().is_none() => Some(format!(
            "auth.uid() is null here: the claims carry no `sub` (role `{}`): a policy on \
             auth.uid() passes for no row; act as a user (`SupabaseUser::act_as`, `ActAs::user`)",
            a.role
        )),
        Some(a) => Some(format!(
            "auth.uid() is {}, the `sub` claim: is that the user who owns the row?",
            a.sub().unwrap_or_default()
        )),
        None => Some(
            "no ActAs began this transaction: unless it set them itself, no claims are set \
                 and auth.uid() is null"
                .into(),
        ),
    }
}

fn context_checks(last: &Acted, tables: &[TableFacts]) -> Vec<String> {
    let mut out = Vec::new();
    if tables.iter().any(|t| t.bypasses) {
        out.push(format!(
            "`{}` bypasses row-level security: rows it did not see are not the policies' doing \
             (not committed, rolled back, or filtered by the query)",
            last.role
        ));
        return out;
    }
    for t in tables {
        let select = t
            .policies
            .iter()
            .any(|p| p.applies && p.permissive && p.governs("SELECT"));
        if !t.rls {
            out.push(format!(
                "{}: row-level security is off, its policies filter nothing (`alter table {} \
                 enable row level security`)",
                t.qualified(),
                t.qualified()
            ));
        } else if t.filtered() && !select {
            out.push(format!(
                "{}: no SELECT policy applies to `{}`: it sees none of its rows",
                t.qualified(),
                t.role
            ));
        }
    }
    out.extend(uid_check(Some(last)));
    out.push(
        "each visible row must pass the USING of one permissive SELECT policy (and of every \
         restrictive one); rows made in a transaction that was not committed are seen by no \
         other"
            .into(),
    );
    out
}

fn shorten(s: &str) -> String {
    if s.len() <= STATEMENT_MAX {
        return s.to_string();
    }
    let mut end = STATEMENT_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
