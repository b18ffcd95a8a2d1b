//! Prepared clones kept on the crate's stack, in its bookkeeping tables
//! (`pgbf_prepared`, shared with every process of the stack, later runs and
//! the stack's janitor, and gone with the stack).

use futures_util::future::BoxFuture;
use sqlx::postgres::PgRow;
use sqlx::Row;
use std::sync::Arc;

use crate::connect::quote::quote_literal;
use crate::contract::PREPARED_TABLE;
use crate::error::{Error, Result};
use crate::provision::admin::Admin;
use crate::provision::clones::{Store, Taken};
use crate::provision::database::Step;
use crate::provision::janitor;

/// The stack's tables, through the worker's bookkeeping connections.
pub(crate) struct OnStack {
    admin: Arc<Admin>,
    tables: tokio::sync::OnceCell<()>,
}

impl OnStack {
    pub(crate) fn new(admin: Arc<Admin>) -> OnStack {
        OnStack {
            admin,
            tables: tokio::sync::OnceCell::new(),
        }
    }

    /// `sql` on the stack's bookkeeping tables. The stack's janitor makes
    /// them when it starts; a process that comes first (a new stack) makes
    /// them itself and runs `sql` again: one round trip in the common case.
    async fn on_tables(&self, sql: &str) -> Result<Vec<PgRow>> {
        match self.admin.query(sql).await {
            Err(e) if sql_state(&e).as_deref() == Some("42P01") => {
                self.ensure_tables().await?;
                self.admin.query(sql).await
            }
            other => other,
        }
    }

    /// The stack's bookkeeping tables (shared with its janitor), made if
    /// missing.
    async fn ensure_tables(&self) -> Result<()> {
        self.tables
            .get_or_try_init(|| async {
                for table in janitor::TABLES {
                    match self.admin.query(table).await {
                        Ok(_) => {}
                        // Another process (or the janitor) made it at the same instant.
                        Err(e) if matches!(sql_state(&e).as_deref(), Some("42P07" | "23505")) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// The SQLSTATE of a server's error.
fn sql_state(error: &Error) -> Option<String> {
    match error {
        Error::Sql {
            source: sqlx::Error::Database(e),
            ..
        } => e.code().map(|code| code.into_owned()),
        _ => None,
    }
}

impl Store for OnStack {
    fn take<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<Option<Taken>>> {
        Box::pin(async move {
            // Any process of the stack (or its janitor) may have made it; the
            // claim is counted for the janitor in the same statement.
            let sql = janitor::claim_sql(template);
            let rows = self.on_tables(&sql).await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let typed = |e| Error::Sql {
                action: format!("reading the claim of `{sql}`"),
                source: e,
            };
            let name: String = row.try_get("name").map_err(typed)?;
            let left: i64 = row.try_get("left").map_err(typed)?;
            Ok(Some(Taken {
                name,
                left: Some(usize::try_from(left).unwrap_or(0)),
            }))
        })
    }

    fn ready<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let sql = format!(
                "select count(*) from {PREPARED_TABLE} where template = {}",
                quote_literal(template)
            );
            let rows = self.on_tables(&sql).await?;
            let ready = rows.first().and_then(|row| row.try_get::<i64, _>(0).ok());
            Ok(ready.and_then(|n| usize::try_from(n).ok()).unwrap_or(0))
        })
    }

    fn put<'a>(&'a self, template: &'a str, name: String) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sql = format!(
                "insert into {PREPARED_TABLE} (name, template) values ({}, {})",
                quote_literal(&name),
                quote_literal(template)
            );
            self.on_tables(&sql).await.map(|_| ())
        })
    }

    fn cloned_on_demand<'a>(&'a self, template: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Counted for the janitor, as a claim of a prepared clone is.
            if let Err(e) = self.on_tables(&janitor::claimed_sql(template)).await {
                tracing::debug!(error = %e, "could not count a claim for the janitor");
            }
        })
    }

    /// The janitor's warm clones per template between runs, capped: they
    /// are copies of the template on the stack's tmpfs too.
    fn cap_demand(&self, caps: Vec<(String, usize)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for (template, keep) in caps {
                let sql = janitor::cap_demand_sql(&template, keep);
                if let Err(e) = self.on_tables(&sql).await {
                    tracing::debug!(error = %e, "could not cap the janitor's demand");
                }
            }
        })
    }

    /// Gives queued drops to the stack's janitor, which runs them once the
    /// stack is idle, instead of making the process's exit wait for them
    /// (bounded: [`janitor::MAX_GARBAGE`] wait at most).
    fn hand_over(&self, queued: Vec<Vec<Step>>) -> BoxFuture<'_, Vec<Vec<Step>>> {
        Box::pin(async move {
            let names: Vec<String> = queued
                .iter()
                .filter_map(|steps| janitor::dropped_database(steps))
                .collect();
            if names.is_empty() {
                return queued;
            }
            let sql = janitor::hand_over_sql(&names, janitor::MAX_GARBAGE);
            let rows = self.on_tables(&sql).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "could not hand drops over to the stack's janitor");
                Vec::new()
            });
            let taken: Vec<String> = rows
                .iter()
                .filter_map(|row| row.try_get::<String, _>(0).ok())
                .collect();
            queued
                .into_iter()
                .filter(|steps| {
                    !janitor::dropped_database(steps).is_some_and(|n| taken.contains(&n))
                })
                .collect()
        })
    }

    fn take_own(&self) -> Vec<String> {
        // The stack's pool stays with the stack.
        Vec::new()
    }
}
