//! Readiness: a stack is ready when a real query answers through PgBouncer
//! (which implies PostgreSQL accepts logins too), not merely a log line;
//! and the retrying connect that readiness and the lease share.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::connect::sqlx_compat::audited;
use crate::error::{Error, Result};
use crate::stack::endpoints::Endpoints;
use crate::target::DbUrl;

/// Between two attempts to reach a stack that is starting: an attempt costs
/// a refused connection; a stack start waits on two of these in a row.
const RETRY_PAUSE: Duration = Duration::from_millis(15);

/// Waits until a query answers through PgBouncer; returns that connection.
/// Tries at least once, then until `timeout`.
pub(super) async fn wait_until_ready(
    endpoints: &Endpoints,
    timeout: Duration,
) -> Result<PgConnection> {
    let url = endpoints.pooled_url("postgres");
    let what = format!("the first query through PgBouncer at {url}");
    // Simple protocol: no prepared statement involved.
    connect_until(
        &url,
        "pgbouncer-fixtures admin",
        "select 1",
        timeout,
        what,
        |e| {
            // The server answered with a refusal that waiting will not change.
            match e {
                sqlx::Error::Database(e) if e.code().as_deref() != Some("57P03") => {
                    Some(Error::Stack {
                        reason: format!(
                            "PgBouncer at {url} refused the readiness query: {}",
                            e.message()
                        ),
                    })
                }
                _ => None,
            }
        },
    )
    .await
}

/// Waits for the first login straight to PostgreSQL, and closes it.
pub(super) async fn wait_for_postgres(endpoints: &Endpoints, timeout: Duration) -> Result<()> {
    let url = endpoints.direct_url("postgres");
    let what = format!("the first login to PostgreSQL at {url}");
    let direct = connect_until(
        &url,
        "pgbouncer-fixtures admin",
        "select 1",
        timeout,
        what,
        |_| None,
    )
    .await?;
    let _ = direct.close().await;
    Ok(())
}

/// Connects to `url` and runs `first` (simple protocol), 5 s at most per
/// attempt, at least once and then until `timeout`, [`RETRY_PAUSE`] apart;
/// returns the connection. An error `fatal` turns into one ends it at once.
pub(super) async fn connect_until(
    url: &DbUrl,
    app: &str,
    first: &str,
    timeout: Duration,
    what: String,
    fatal: impl Fn(&sqlx::Error) -> Option<Error>,
) -> Result<PgConnection> {
    let options = crate::connect::options(url, app);
    let deadline = Instant::now() + timeout;
    let mut last_error: String;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = PgConnection::connect_with(&options).await?;
            sqlx::raw_sql(audited(first)).execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(conn)
        })
        .await;
        match attempt {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => match fatal(&e) {
                Some(error) => return Err(error),
                None => last_error = e.to_string(),
            },
            Err(_) => last_error = "no answer within 5 s".into(),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(Error::Timeout {
        what,
        after: timeout,
        hint: format!("last error: {}", crate::target::env::redact(&last_error)),
    })
}
