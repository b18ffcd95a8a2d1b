//! What a server or pooler does with startup parameters and TLS: the seeds'
//! recipes (asyncpg's `server_settings={"jit": "off"}`, `search_path`,
//! `options=-c jit=off`) and Supabase's `sslmode=require`.
//!
//! Top-level parameters are sent in a raw StartupMessage (sqlx cannot send
//! arbitrary ones): the pooler either asks the client to authenticate
//! (accepted) or answers with an error (refused). Parameters in `options`
//! go through sqlx, and whether they took effect is read back.

use std::fmt;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection, PgConnection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ClientEnd, ClientError, Outcome, WrongAnswer};
use crate::connect::sqlx_compat::audited;
use crate::error::{Error, Result};

/// A startup-parameter recipe from the seeds, or TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartupProbe {
    /// `jit=off` as a top-level startup parameter (asyncpg's
    /// `server_settings`, seeds 000 and 003).
    TopLevelJit,
    /// `search_path` as a top-level startup parameter (seed 004): whether
    /// the login is accepted (its effect is not checked: the probe does not
    /// log in).
    TopLevelSearchPath,
    /// `options=-c jit=off` (sqlx: `PgConnectOptions::options`).
    OptionsJit,
    /// `options=-c search_path=...`, checked by what an unqualified name
    /// resolves to: the same table name in two schemas, each with its own
    /// row (the crate's stacks only: it creates them).
    OptionsSearchPath,
    /// sqlx's default startup parameters (it sends `extra_float_digits`).
    SqlxDefaults,
    /// `sslmode=require` on the pooled port, and `verify-full` against the
    /// stack's CA when there is one.
    Tls,
}

impl StartupProbe {
    /// Every probe, in the order of the matrix.
    pub const ALL: [StartupProbe; 6] = [
        StartupProbe::TopLevelJit,
        StartupProbe::TopLevelSearchPath,
        StartupProbe::OptionsJit,
        StartupProbe::OptionsSearchPath,
        StartupProbe::SqlxDefaults,
        StartupProbe::Tls,
    ];

    /// How it reads in code.
    pub fn description(self) -> &'static str {
        match self {
            StartupProbe::TopLevelJit => "startup parameter `jit=off` (asyncpg `server_settings`)",
            StartupProbe::TopLevelSearchPath => {
                "startup parameter `search_path` (the login only; its effect is not checked)"
            }
            StartupProbe::OptionsJit => "`options=-c jit=off`",
            StartupProbe::OptionsSearchPath => {
                "`options=-c search_path=...`: what an unqualified name resolves to"
            }
            StartupProbe::SqlxDefaults => {
                "sqlx's default startup parameters (`extra_float_digits`)"
            }
            StartupProbe::Tls => "`sslmode=require`; `verify-full` with the stack's CA",
        }
    }
}

impl fmt::Display for StartupProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// How a server answered a StartupMessage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupAnswer {
    /// It asked the client to authenticate: the parameters were accepted.
    Accepted,
    /// It refused with this error.
    Refused(ClientError),
}

/// Sends a StartupMessage with `params` (after `user` and `database`) to the
/// server `options` point at, and reads its first answer. No login happens.
pub async fn send_startup(
    options: &PgConnectOptions,
    params: &[(&str, &str)],
) -> Result<StartupAnswer> {
    let addr = format!("{}:{}", options.get_host(), options.get_port());
    let io = |e: std::io::Error| Error::Stack {
        reason: format!("startup probe to {addr}: {e}"),
    };
    let mut stream = tokio::net::TcpStream::connect(&addr).await.map_err(io)?;
    let mut body = Vec::new();
    body.extend_from_slice(&196_608_i32.to_be_bytes()); // protocol 3.0
    let user = options.get_username().to_string();
    let database = options.get_database().unwrap_or("postgres").to_string();
    for (k, v) in [("user", user.as_str()), ("database", database.as_str())]
        .into_iter()
        .chain(params.iter().copied())
    {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    stream.write_all(&message).await.map_err(io)?;
    let kind = stream.read_u8().await.map_err(io)?;
    let len = stream.read_i32().await.map_err(io)?;
    let mut payload = vec![0; (len.max(4) - 4).min(64 * 1024) as usize];
    stream.read_exact(&mut payload).await.map_err(io)?;
    match kind {
        b'R' => Ok(StartupAnswer::Accepted),
        b'E' => {
            let mut error = ClientError {
                code: None,
                message: String::new(),
            };
            for field in payload.split(|b| *b == 0).filter(|f| !f.is_empty()) {
                let text = String::from_utf8_lossy(&field[1..]).into_owned();
                match field[0] {
                    b'C' => error.code = Some(text),
                    b'M' => error.message = text,
                    _ => {}
                }
            }
            Ok(StartupAnswer::Refused(error))
        }
        other => Err(Error::Stack {
            reason: format!("startup probe to {addr}: unexpected message type {other}"),
        }),
    }
}

/// Runs `probe` against `options` (the factory's options: no
/// `extra_float_digits`); `ca_pem` is the server's CA when known.
pub async fn run_startup_probe(
    probe: StartupProbe,
    options: &PgConnectOptions,
    ca_pem: Option<&str>,
) -> Result<Outcome> {
    let name = probe.description();
    let refused = |e: ClientError| Outcome::single(name, ClientEnd::Failed(e));
    let top_level = |answer: StartupAnswer, what: &str| match answer {
        StartupAnswer::Accepted => Outcome::single(name, ClientEnd::Ok).with_note(what.to_string()),
        StartupAnswer::Refused(e) => refused(e),
    };
    Ok(match probe {
        StartupProbe::TopLevelJit => {
            top_level(send_startup(options, &[("jit", "off")]).await?, "accepted")
        }
        StartupProbe::TopLevelSearchPath => top_level(
            send_startup(options, &[("search_path", "pgbf_probe,public")]).await?,
            "accepted",
        ),
        StartupProbe::OptionsJit => {
            match setting_after_connect(options.clone().options([("jit", "off")]), "jit").await {
                Ok(value) if value == "off" => {
                    Outcome::single(name, ClientEnd::Ok).with_note("applied")
                }
                // Dropped, as Supavisor does: harmless for jit.
                Ok(_) => Outcome::single(name, ClientEnd::Ok).with_note("accepted, dropped"),
                Err(e) => refused(e),
            }
        }
        StartupProbe::OptionsSearchPath => match resolve_unqualified(options).await {
            Ok(schema) if schema == SEARCH_PATH_SCHEMA => {
                Outcome::single(name, ClientEnd::Ok).with_note("applied")
            }
            Ok(schema) => Outcome::single(
                name,
                ClientEnd::Wrong(WrongAnswer {
                    asked: format!("select v from {SEARCH_PATH_TABLE}"),
                    expected: SEARCH_PATH_SCHEMA.into(),
                    got: schema,
                }),
            ),
            Err(e) => refused(e),
        },
        StartupProbe::SqlxDefaults => {
            match setting_after_connect(options.clone().extra_float_digits(2), "extra_float_digits")
                .await
            {
                Ok(_) => Outcome::single(name, ClientEnd::Ok),
                Err(e) => refused(e),
            }
        }
        StartupProbe::Tls => {
            let mut end = tls_end(options.clone().ssl_mode(PgSslMode::Require)).await;
            if let (ClientEnd::Ok, Some(ca)) = (&end, ca_pem) {
                end = tls_end(
                    options
                        .clone()
                        .ssl_mode(PgSslMode::VerifyFull)
                        .ssl_root_cert_from_pem(ca.as_bytes().to_vec()),
                )
                .await;
            }
            Outcome::single(name, end)
        }
    })
}

/// The schema the search-path probe names at startup; the same table name
/// is in `public` too, each holding its schema's name.
const SEARCH_PATH_SCHEMA: &str = "pgbf_probe_app";
/// The table both schemas hold.
const SEARCH_PATH_TABLE: &str = "pgbf_probe_where";

/// Creates the table in both schemas (through `options`, without startup
/// parameters), then connects with `search_path` in `options` and reads the
/// unqualified name: the schema whose row came back.
async fn resolve_unqualified(
    options: &PgConnectOptions,
) -> std::result::Result<String, ClientError> {
    let err = |e: sqlx::Error| ClientError::of(&e);
    let mut setup = PgConnection::connect_with(options).await.map_err(err)?;
    let ddl = format!(
        "create schema if not exists {SEARCH_PATH_SCHEMA};
         create table if not exists {SEARCH_PATH_SCHEMA}.{SEARCH_PATH_TABLE} as select '{SEARCH_PATH_SCHEMA}'::text as v;
         create table if not exists public.{SEARCH_PATH_TABLE} as select 'public'::text as v;"
    );
    let made = sqlx::raw_sql(audited(&ddl)).execute(&mut setup).await;
    let _ = setup.close().await;
    made.map_err(err)?;
    let with = options
        .clone()
        .options([("search_path", format!("{SEARCH_PATH_SCHEMA},public"))]);
    let mut conn = PgConnection::connect_with(&with).await.map_err(err)?;
    let value = sqlx::raw_sql(audited(&format!("select v from {SEARCH_PATH_TABLE}")))
        .fetch_one(&mut conn)
        .await
        .and_then(|row| row.try_get::<String, _>(0))
        .map_err(err);
    let _ = conn.close().await;
    value
}

async fn tls_end(options: PgConnectOptions) -> ClientEnd {
    match setting_after_connect(options, "server_version").await {
        Ok(_) => ClientEnd::Ok,
        Err(e) => ClientEnd::Failed(e),
    }
}

/// Connects with `options` and reads `setting` with the simple protocol.
async fn setting_after_connect(
    options: PgConnectOptions,
    setting: &str,
) -> std::result::Result<String, ClientError> {
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(|e| ClientError::of(&e))?;
    let value = sqlx::raw_sql(audited(&format!("show {setting}")))
        .fetch_one(&mut conn)
        .await
        .and_then(|row| row.try_get::<String, _>(0))
        .map_err(|e| ClientError::of(&e));
    let _ = conn.close().await;
    value
}
