//! What the catalog says of a table for a role: row-level security on or
//! forced, the owner, the role's privileges, and the policies with whether
//! each applies to the role. Read over the direct endpoint as superuser.

use sqlx::{PgConnection, Row};

use crate::error::{sql_error, Result};

/// One policy of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub name: String,
    pub permissive: bool,
    pub roles: Vec<String>,
    /// `ALL`, `SELECT`, `INSERT`, `UPDATE` or `DELETE`.
    pub cmd: String,
    pub using: Option<String>,
    pub check: Option<String>,
    /// Whether the role is one of `roles` (or a member of one, or `public`).
    pub applies: bool,
}

impl Policy {
    /// Whether it governs `command` (`ALL` governs every one).
    pub fn governs(&self, command: &str) -> bool {
        self.cmd == "ALL" || self.cmd == command
    }
}

/// A table as `role` meets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableFacts {
    pub schema: String,
    pub name: String,
    pub owner: String,
    pub rls: bool,
    pub forced: bool,
    pub role: String,
    /// The role owns the table (or is a member of its owner).
    pub role_owns: bool,
    /// The role bypasses row-level security (`BYPASSRLS` or superuser).
    pub bypasses: bool,
    /// `USAGE` on the table's schema.
    pub schema_usage: bool,
    /// `SELECT`, `INSERT`, `UPDATE`, `DELETE` and whether the role has it.
    pub privileges: Vec<(&'static str, bool)>,
    pub policies: Vec<Policy>,
}

impl TableFacts {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether the role has `command` on the table.
    pub fn has(&self, command: &str) -> Option<bool> {
        self.privileges
            .iter()
            .find(|(c, _)| *c == command)
            .map(|(_, has)| *has)
    }

    /// Whether policies filter the role's rows: RLS on and not bypassed.
    pub fn filtered(&self) -> bool {
        self.rls && !self.bypasses && (!self.role_owns || self.forced)
    }
}

const COMMANDS: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// The tables named `relname` (any user schema), or with `relname` `None`
/// the tables that have policies or row-level security (outside the
/// shape's own `auth` and `storage` unless they have policies), as `role`
/// meets them; at most 12, `public` first.
pub(crate) async fn tables(
    conn: &mut PgConnection,
    role: &str,
    relname: Option<&str>,
) -> Result<Vec<TableFacts>> {
    let rows = sqlx::query(
        "select n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text, \
         c.relrowsecurity, c.relforcerowsecurity, pg_has_role($1, c.relowner, 'USAGE'), \
         coalesce((select rolbypassrls or rolsuper from pg_roles where rolname = $1), false), \
         has_schema_privilege($1, n.oid, 'USAGE'), \
         has_table_privilege($1, c.oid, 'SELECT'), has_table_privilege($1, c.oid, 'INSERT'), \
         has_table_privilege($1, c.oid, 'UPDATE'), has_table_privilege($1, c.oid, 'DELETE') \
         from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where c.relkind in ('r', 'p', 'v', 'm', 'f') \
         and n.nspname not in ('pg_catalog', 'information_schema') \
         and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%' \
         and case when $2::text is not null then c.relname = $2 \
         else exists (select 1 from pg_policy p where p.polrelid = c.oid) \
         or (c.relrowsecurity and n.nspname not in ('auth', 'storage')) end \
         order by n.nspname <> 'public', n.nspname, c.relname limit 12",
    )
    .bind(role)
    .bind(relname)
    .persistent(false)
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_error("reading the tables' row-level security"))?;
    let mut tables = Vec::new();
    for row in rows {
        let get = |i: usize| row.try_get::<bool, _>(i).unwrap_or(false);
        let text = |i: usize| row.try_get::<String, _>(i).unwrap_or_default();
        let mut t = TableFacts {
            schema: text(0),
            name: text(1),
            owner: text(2),
            rls: get(3),
            forced: get(4),
            role: role.to_string(),
            role_owns: get(5),
            bypasses: get(6),
            schema_usage: get(7),
            privileges: COMMANDS
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, get(8 + i)))
                .collect(),
            policies: Vec::new(),
        };
        t.policies = policies(conn, role, &t.schema, &t.name).await?;
        tables.push(t);
    }
    Ok(tables)
}

async fn policies(
    conn: &mut PgConnection,
    role: &str,
    schema: &str,
    table: &str,
) -> Result<Vec<Policy>> {
    let rows = sqlx::query(
        "select p.policyname::text, p.permissive = 'PERMISSIVE', p.roles::text[], p.cmd::text, \
         p.qual, p.with_check, exists (select 1 from unnest(p.roles) r \
         where case when r = 'public' then true else pg_has_role($1, r, 'MEMBER') end) \
         from pg_policies p where p.schemaname = $2 and p.tablename = $3 order by p.policyname",
    )
    .bind(role)
    .bind(schema)
    .bind(table)
    .persistent(false)
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_error("reading the table's policies"))?;
    Ok(rows
        .iter()
        .map(|row| Policy {
            name: row.try_get(0).unwrap_or_default(),
            permissive: row.try_get(1).unwrap_or(true),
            roles: row.try_get(2).unwrap_or_default(),
            cmd: row.try_get(3).unwrap_or_default(),
            using: row.try_get(4).unwrap_or_default(),
            check: row.try_get(5).unwrap_or_default(),
            applies: row.try_get(6).unwrap_or(false),
        })
        .collect())
}
