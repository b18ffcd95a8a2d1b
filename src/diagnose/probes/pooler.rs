//! What tells Supavisor from PgBouncer from PostgreSQL, each with a known
//! answer: a tracked `SET` outside a transaction (kept per client, or left
//! on the backend), `application_name` as the server sees it, the startup
//! `TimeZone` sqlx sends (applied or dropped), a dotted custom setting at
//! startup (applied, dropped or refused), the session-mode limit (client
//! `pool_size + 1` refused at once, or not) and the answer to a wrong
//! password. `doctor` runs them read-only against any URL, except the wrong
//! password (on Supabase each one counts toward Supavisor's circuit
//! breaker); the matrix runs them on the crate's stacks, where the
//! startup-`TimeZone` probe also gives the database a default of its own.

use std::fmt;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use super::startup::{send_startup, StartupAnswer};
use super::{clients_a_and_b, within, ClientEnd, ClientError, Outcome, WrongAnswer};
use crate::connect::sqlx_compat::audited;
use crate::error::{sql_error, Error, Result};
use crate::target::profile::WRONG_PASSWORD_DELAY;

/// A behaviour where poolers differ in what a client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolerProbe {
    /// `SET TIME ZONE 'America/New_York'` outside a transaction on client
    /// A, then a transaction on client B (on A's server connection, where
    /// the pooler hands it over) and one on A: B must see its own TimeZone,
    /// A New York.
    TrackedSet,
    /// `application_name("pgbf-probe-<n>")`: what `current_setting` and
    /// `pg_stat_activity` say the session's name is.
    ApplicationName,
    /// The `TimeZone=UTC` sqlx sends at every login, where the database's
    /// default is another (`Asia/Tokyo`, set by the matrix): applied or dropped.
    StartupTimeZone,
    /// `options=-c app.tenant=pgbf`, read back with `current_setting`.
    OptionsCustomSetting,
    /// `app.tenant` as a top-level startup parameter (the login only).
    TopLevelCustomSetting,
    /// [`SESSION_LIMIT_CLIENTS`] clients held at once, each running a query.
    SessionLimit,
    /// A login with a wrong password: refused (a login is a wrong answer),
    /// with which SQLSTATE and words, and whether after Supavisor's delay
    /// (500 ms). The matrix's only: on a real endpoint a failed login
    /// counts toward Supavisor's circuit breaker.
    WrongPassword,
}

/// Clients the session-limit probe holds at once: Supabase's default pool
/// size (15) plus one.
pub const SESSION_LIMIT_CLIENTS: usize =
    crate::target::profile_settings::SUPABASE_POOL_SIZE as usize + 1;

/// The zone client A sets.
pub const SET_ZONE: &str = "America/New_York";
/// The database default the matrix gives its database for the
/// startup-`TimeZone` probe (sqlx asks for UTC).
pub const DATABASE_ZONE: &str = "Asia/Tokyo";
/// The note of a tracked `SET` kept per client, B having run on A's
/// server connection (the transaction poolers).
pub const KEPT_ON_SHARED_BACKEND: &str = "kept per client, B on A's server connection";
/// The note of a tracked `SET` kept per client on separate server connections.
pub const KEPT: &str = "kept per client";

impl PoolerProbe {
    /// Every probe, in the order of the matrix.
    pub const ALL: [PoolerProbe; 7] = [
        PoolerProbe::TrackedSet,
        PoolerProbe::ApplicationName,
        PoolerProbe::StartupTimeZone,
        PoolerProbe::OptionsCustomSetting,
        PoolerProbe::TopLevelCustomSetting,
        PoolerProbe::SessionLimit,
        PoolerProbe::WrongPassword,
    ];

    /// How it reads in code.
    pub fn description(self) -> &'static str {
        match self {
            PoolerProbe::TrackedSet => {
                "`SET TIME ZONE` outside a transaction, then another client's transaction and the setter's"
            }
            PoolerProbe::ApplicationName => "`application_name` as the server sees it",
            PoolerProbe::StartupTimeZone => {
                "sqlx's startup `TimeZone=UTC` where the database's default is another"
            }
            PoolerProbe::OptionsCustomSetting => "`options=-c app.tenant=...`, read back",
            PoolerProbe::TopLevelCustomSetting => {
                "startup parameter `app.tenant` (the login only; its effect is not checked)"
            }
            PoolerProbe::SessionLimit => "16 clients at once (Supabase's pool of 15, plus one)",
            PoolerProbe::WrongPassword => "a login with a wrong password: the answer, and when",
        }
    }
}

impl fmt::Display for PoolerProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Where a pooler probe runs.
#[derive(Clone, Copy, Debug)]
pub struct PoolerTarget<'a> {
    /// The endpoint probed (the factory's options: statement cache off).
    pub pooled: &'a PgConnectOptions,
    /// The same database without the pooler, on the crate's own stacks
    /// only: the startup-`TimeZone` probe gives the database the default
    /// [`DATABASE_ZONE`] through it (and resets it). `None` (`doctor`):
    /// nothing is changed, and that probe reads where the value came from.
    pub direct: Option<&'a PgConnectOptions>,
}

/// Runs `probe` against `target`.
pub async fn run_pooler_probe(probe: PoolerProbe, target: PoolerTarget<'_>) -> Result<Outcome> {
    let name = probe.description();
    let pooled = target.pooled.clone().statement_cache_capacity(0);
    let one = |end: ClientEnd| Outcome::single(name, end);
    let tag = rand::random::<u32>() % 1_000_000;
    Ok(match probe {
        PoolerProbe::TrackedSet => tracked_set(&pooled).await?.outcome(name),
        PoolerProbe::ApplicationName => application_name(&pooled, tag).await,
        PoolerProbe::StartupTimeZone => match target.direct {
            Some(direct) => startup_zone_with_default(&pooled, direct).await?,
            None => startup_zone(&pooled).await.outcome(name),
        },
        PoolerProbe::OptionsCustomSetting => {
            let value = format!("pgbf{tag}");
            let options = pooled.clone().options([("app.tenant", value.as_str())]);
            match read(&options, "select current_setting('app.tenant', true)").await {
                Ok(Some(v)) if v == value => one(ClientEnd::Ok).with_note("applied"),
                Ok(got) => one(ClientEnd::Wrong(WrongAnswer {
                    asked: "options=-c app.tenant=..., then current_setting('app.tenant')".into(),
                    expected: value,
                    got: got.unwrap_or_else(|| "NULL (dropped)".into()),
                })),
                Err(e) => one(ClientEnd::Failed(e)),
            }
        }
        PoolerProbe::TopLevelCustomSetting => {
            match send_startup(&pooled, &[("app.tenant", "pgbf")]).await? {
                StartupAnswer::Accepted => one(ClientEnd::Ok).with_note("accepted"),
                StartupAnswer::Refused(e) => one(ClientEnd::Failed(e)),
            }
        }
        PoolerProbe::SessionLimit => session_limit(&pooled).await,
        PoolerProbe::WrongPassword => wrong_password(&pooled).await,
    })
}

/// Logs in with a wrong password: a refusal of the password (`28P01`, or
/// PgBouncer's `08P01 SASL authentication failed`) passes, noted with its
/// words and, when it came after Supavisor's delay (500 ms), so; a login is
/// a wrong answer, any other error a failure.
async fn wrong_password(pooled: &PgConnectOptions) -> Outcome {
    let name = PoolerProbe::WrongPassword.description();
    let wrong = pooled.clone().password("pgbf-probe-not-the-password");
    let started = std::time::Instant::now();
    let error = match PgConnection::connect_with(&wrong).await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Outcome::single(
                name,
                ClientEnd::Wrong(WrongAnswer {
                    asked: "a login with a wrong password".into(),
                    expected: "refused".into(),
                    got: "logged in".into(),
                }),
            );
        }
        Err(e) => ClientError::of(&e),
    };
    let waited = started.elapsed();
    let about_the_password = match error.code.as_deref() {
        Some("28P01") => true,
        Some("08P01") => error.message == "SASL authentication failed",
        _ => false,
    };
    if !about_the_password {
        return Outcome::single(name, ClientEnd::Failed(error));
    }
    let note = match waited >= WRONG_PASSWORD_DELAY {
        true => format!("refused after 500 ms: {error}"),
        false => format!("refused: {error}"),
    };
    Outcome::single(name, ClientEnd::Ok).with_note(note)
}

/// Connects with `options` and reads `sql`'s one text value.
async fn read(
    options: &PgConnectOptions,
    sql: &str,
) -> std::result::Result<Option<String>, ClientError> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|e| ClientError::of(&e))?;
    let value = sqlx::raw_sql(audited(sql))
        .fetch_one(&mut conn)
        .await
        // An answer of another type is an error, never a wrong answer.
        .and_then(|row| row.try_get::<Option<String>, _>(0))
        .map_err(|e| ClientError::of(&e));
    let _ = conn.close().await;
    value
}

/// What two clients saw after one of them `SET TIME ZONE` outside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedSetAnswer {
    /// B's TimeZone in a transaction before A's `SET`.
    pub other_before: String,
    /// B's TimeZone after A's `SET`: the first of B's transactions that
    /// saw another than its own, else the last.
    pub other_after: String,
    /// A's TimeZone in its transaction after its `SET`.
    pub setter_after: String,
    /// Whether one of B's transactions ran on the backend where A's `SET` ran.
    pub other_on_setters_backend: bool,
}

impl TrackedSetAnswer {
    /// Whether the other client got the setter's value.
    pub fn leaked(&self) -> bool {
        self.other_after != self.other_before
    }

    /// Whether the setter lost its value.
    pub fn lost(&self) -> bool {
        self.setter_after != SET_ZONE
    }

    /// As an outcome: each unexpected value a wrong answer.
    pub fn outcome(&self, name: &str) -> Outcome {
        let mut ends = Vec::new();
        if self.leaked() {
            ends.push(ClientEnd::Wrong(WrongAnswer {
                asked: format!("client B's TimeZone after client A's SET TIME ZONE '{SET_ZONE}'"),
                expected: self.other_before.clone(),
                got: format!("{} (leaked to another client)", self.other_after),
            }));
        }
        if self.lost() {
            ends.push(ClientEnd::Wrong(WrongAnswer {
                asked: format!("client A's TimeZone after its SET TIME ZONE '{SET_ZONE}'"),
                expected: SET_ZONE.into(),
                got: format!("{} (lost by the setter)", self.setter_after),
            }));
        }
        if ends.is_empty() {
            let note = if self.other_on_setters_backend {
                KEPT_ON_SHARED_BACKEND
            } else {
                KEPT
            };
            return Outcome::single(name, ClientEnd::Ok).with_note(note);
        }
        Outcome::from_clients(name, ends)
    }
}

/// Transactions client B runs, at most, to meet the setter's backend.
const B_TRANSACTIONS: usize = 8;

/// TimeZone and backend of one transaction on `conn`.
async fn zone_in_transaction(conn: &mut PgConnection, who: &str) -> Result<(String, i32)> {
    let sql = "begin; select current_setting('TimeZone'), pg_backend_pid(); commit";
    let rows = sqlx::raw_sql(sql)
        .fetch_all(conn)
        .await
        .map_err(sql_error(who))?;
    let row = rows.first().ok_or_else(|| Error::Stack {
        reason: format!("{who}: `{sql}` returned no row"),
    })?;
    let zone = row
        .try_get::<Option<String>, _>(0)
        .map_err(sql_error(who))?
        .unwrap_or_else(|| "NULL".into());
    let pid = row.try_get::<i32, _>(1).map_err(sql_error(who))?;
    Ok((zone, pid))
}

/// B reads its zone, A sets one outside a transaction, then B's and A's
/// next transactions read theirs.
pub async fn tracked_set(pooled: &PgConnectOptions) -> Result<TrackedSetAnswer> {
    let (mut a, mut b) = clients_a_and_b(pooled).await?;
    let (other_before, _) = zone_in_transaction(&mut b, "client B's first transaction").await?;
    let set = format!("set time zone '{SET_ZONE}'; select pg_backend_pid()");
    let setters_backend: i32 = sqlx::raw_sql(audited(&set))
        .fetch_all(&mut a)
        .await
        .map_err(sql_error("client A's SET TIME ZONE"))?
        .first()
        .map(|row| row.try_get::<i32, _>(0))
        .transpose()
        .map_err(sql_error("client A's SET TIME ZONE"))?
        .unwrap_or(-1);
    // A pooler handing out idle backends in turn (Supavisor's FIFO) may
    // give B another one first: B tries until it meets A's backend, and
    // any value other than its own counts.
    let mut other_after = other_before.clone();
    let mut met = false;
    for _ in 0..B_TRANSACTIONS {
        let (zone, backend) = zone_in_transaction(&mut b, "client B's transaction").await?;
        if other_after == other_before {
            other_after = zone;
        }
        met = backend == setters_backend;
        if met {
            break;
        }
    }
    let (setter_after, _) = zone_in_transaction(&mut a, "client A's transaction").await?;
    reset_zone_on(&mut a, setters_backend).await;
    let _ = b.close().await;
    let _ = a.close().await;
    Ok(TrackedSetAnswer {
        other_before,
        other_after,
        setter_after,
        other_on_setters_backend: met,
    })
}

/// Behind a pooler that leaves the value on the backend (Supavisor), no
/// other client of that endpoint may get it: resets TimeZone to the
/// backend's own default on the setter's backend, wherever `conn` lands,
/// within [`B_TRANSACTIONS`] * 2 tries.
async fn reset_zone_on(conn: &mut PgConnection, backend: i32) {
    let sql = format!(
        "select set_config('TimeZone', (select reset_val from pg_settings \
         where name = 'TimeZone'), false) where pg_backend_pid() = {backend}"
    );
    for _ in 0..B_TRANSACTIONS * 2 {
        match sqlx::raw_sql(audited(&sql)).fetch_all(&mut *conn).await {
            Ok(rows) if rows.is_empty() => continue,
            _ => break,
        }
    }
}

async fn application_name(pooled: &PgConnectOptions, tag: u32) -> Outcome {
    let name = PoolerProbe::ApplicationName.description();
    let sent = format!("pgbf-probe-{tag}");
    let sql = "select current_setting('application_name') || ' / ' || \
               coalesce((select application_name from pg_stat_activity \
               where pid = pg_backend_pid()), 'no row')";
    let expected = format!("{sent} / {sent}");
    match read(&pooled.clone().application_name(&sent), sql).await {
        Ok(Some(got)) if got == expected => {
            Outcome::single(name, ClientEnd::Ok).with_note("the client's")
        }
        Ok(got) => Outcome::single(
            name,
            ClientEnd::Wrong(WrongAnswer {
                asked: "current_setting('application_name') / pg_stat_activity".into(),
                expected,
                // The name sent is random: the table shows where it appears.
                got: got.map_or_else(|| "NULL".into(), |got| got.replace(&sent, "<the client's>")),
            }),
        ),
        Err(e) => Outcome::single(name, ClientEnd::Failed(e)),
    }
}

/// The session's TimeZone, and where the server says it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupZoneAnswer {
    /// `current_setting('TimeZone')`, or the error met.
    pub zone: std::result::Result<String, ClientError>,
    /// `pg_settings.source` of TimeZone (`client` when the startup packet
    /// set it, `session` when a pooler `SET` it for the client).
    pub source: Option<String>,
}

impl StartupZoneAnswer {
    /// Whether the server shows the value as the client's.
    pub fn applied(&self) -> bool {
        self.zone.as_deref() == Ok("UTC")
            && matches!(self.source.as_deref(), Some("client" | "session"))
    }

    /// As an outcome: a zone other than UTC is a wrong answer.
    pub fn outcome(&self, name: &str) -> Outcome {
        match &self.zone {
            Err(e) => Outcome::single(name, ClientEnd::Failed(e.clone())),
            Ok(zone) if zone == "UTC" => {
                Outcome::single(name, ClientEnd::Ok).with_note(if self.applied() {
                    "applied"
                } else {
                    "UTC, as the server's default: applied or dropped alike"
                })
            }
            Ok(zone) => Outcome::single(
                name,
                ClientEnd::Wrong(WrongAnswer {
                    asked: "current_setting('TimeZone') after sqlx's startup TimeZone=UTC".into(),
                    expected: "UTC".into(),
                    got: format!("{zone} (dropped)"),
                }),
            ),
        }
    }
}

/// Reads the zone of a fresh session through `pooled` (sqlx sends UTC).
pub async fn startup_zone(pooled: &PgConnectOptions) -> StartupZoneAnswer {
    let sql = "select current_setting('TimeZone') || '|' || \
               coalesce((select source from pg_settings where name = 'TimeZone'), '')";
    match read(pooled, sql).await {
        Ok(Some(both)) => {
            let (zone, source) = both.split_once('|').unwrap_or((both.as_str(), ""));
            StartupZoneAnswer {
                zone: Ok(zone.to_string()),
                source: (!source.is_empty()).then(|| source.to_string()),
            }
        }
        Ok(None) => StartupZoneAnswer {
            zone: Ok("NULL".into()),
            source: None,
        },
        Err(e) => StartupZoneAnswer {
            zone: Err(e),
            source: None,
        },
    }
}

/// Gives the database the default [`DATABASE_ZONE`], has the pooler renew
/// its server connections, reads a fresh session's zone through `pooled`,
/// and resets the default.
async fn startup_zone_with_default(
    pooled: &PgConnectOptions,
    direct: &PgConnectOptions,
) -> Result<Outcome> {
    let alter = |value: &str| {
        format!(
            "do $$ begin execute format('alter database %I {value}', current_database()); end $$"
        )
    };
    let mut admin = PgConnection::connect_with(direct)
        .await
        .map_err(sql_error("connecting to set the database's TimeZone"))?;
    sqlx::raw_sql(audited(&alter(&format!(
        "set timezone = ''{DATABASE_ZONE}''"
    ))))
    .execute(&mut admin)
    .await
    .map_err(sql_error("setting the database's TimeZone"))?;
    reconnect(pooled).await;
    let answer = startup_zone(pooled).await;
    let reset = sqlx::raw_sql(audited(&alter("reset timezone")))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    reset.map_err(sql_error("resetting the database's TimeZone"))?;
    let mut outcome = answer.outcome(PoolerProbe::StartupTimeZone.description());
    if outcome.passed() && !answer.applied() {
        // With the database's default elsewhere, UTC can only be the client's.
        outcome.note = Some("applied".into());
    }
    Ok(outcome)
}

/// Has the pooler in front of `pooled` close its server connections to
/// the database (PgBouncer's console `RECONNECT`), so that the next client
/// meets a backend started after the database's new default, as a new
/// backend is; without a console (no pooler: every session is a new
/// backend) nothing is done.
async fn reconnect(pooled: &PgConnectOptions) {
    let Some(database) = pooled.get_database().filter(|d| {
        d.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }) else {
        return;
    };
    let sql = format!("RECONNECT {database}");
    if let Ok(mut console) = PgConnection::connect_with(&pooled.clone().database("pgbouncer")).await
    {
        let _ = sqlx::raw_sql(audited(&sql)).execute(&mut console).await;
        let _ = console.close().await;
    }
}

/// Holds [`SESSION_LIMIT_CLIENTS`] clients at once, each running a query;
/// each refusal is a failure. Then waits until a client connects again, so
/// that the next probe finds its places free.
async fn session_limit(pooled: &PgConnectOptions) -> Outcome {
    let mut held = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..SESSION_LIMIT_CLIENTS {
        let client = async {
            let mut conn = PgConnection::connect_with(pooled).await?;
            sqlx::raw_sql("select 1").execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(conn)
        };
        let mut conn = None;
        let end = within(async {
            match client.await {
                Ok(c) => {
                    conn = Some(c);
                    ClientEnd::Ok
                }
                Err(e) => ClientEnd::Failed(ClientError::of(&e)),
            }
        })
        .await;
        held.extend(conn);
        ends.push(end);
    }
    for conn in held {
        let _ = conn.close().await;
    }
    // The pooler frees a place when it has seen the client go.
    for _ in 0..100 {
        match PgConnection::connect_with(pooled).await {
            Ok(conn) => {
                let _ = conn.close().await;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Outcome::from_clients(PoolerProbe::SessionLimit.description(), ends)
}
