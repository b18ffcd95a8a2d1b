//! The matrix: every probe (statements, session state,
//! startup parameters, TLS, migrations) run under every [`Profile`] on the
//! crate's own stacks, answers checked, as a Markdown table.

use std::fmt;

use crate::diagnose::probes::pooler::{run_pooler_probe, PoolerProbe, PoolerTarget};
use crate::diagnose::probes::prepared::{run_prepared_probe, PreparedProbe};
use crate::diagnose::probes::session::{run_session_probe, SessionProbe};
use crate::diagnose::probes::startup::{run_startup_probe, StartupProbe};
#[cfg(feature = "tokio-postgres")]
use crate::diagnose::probes::tokio_postgres::{run_tokio_pg_pattern, TokioPgPattern};
use crate::diagnose::probes::{run_pattern, Outcome, SqlxPattern, Workload};
use crate::error::{Error, Result};
use crate::fixture::test_db::TestDb;
use crate::target::profile::Profile;

/// One row of the matrix: a behaviour an application relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// A way of running parameterised queries, as a concurrent workload.
    Statements(SqlxPattern),
    /// Session state across transactions, or the migrator's lock.
    Session(SessionProbe),
    /// A startup parameter or TLS.
    Startup(StartupProbe),
    /// Where poolers differ in what a client sees: a tracked `SET`,
    /// `application_name`, startup `TimeZone` and custom settings, the
    /// session-mode limit.
    Pooler(PoolerProbe),
    /// Named prepared statements as Supavisor's `named_prepared_statements`
    /// flag judges them.
    Prepared(PreparedProbe),
    /// A tokio-postgres way of running parameterised queries, as a
    /// concurrent workload (feature `tokio-postgres`).
    #[cfg(feature = "tokio-postgres")]
    TokioPostgres(TokioPgPattern),
}

impl Behaviour {
    /// Every row, in the matrix's order.
    pub fn all() -> Vec<Behaviour> {
        SqlxPattern::ALL
            .into_iter()
            .map(Behaviour::Statements)
            .chain(SessionProbe::ALL.into_iter().map(Behaviour::Session))
            .chain(StartupProbe::ALL.into_iter().map(Behaviour::Startup))
            .chain(PoolerProbe::ALL.into_iter().map(Behaviour::Pooler))
            .chain(PreparedProbe::ALL.into_iter().map(Behaviour::Prepared))
            .chain(tokio_postgres_rows())
            .collect()
    }

    /// How it reads in code.
    pub fn description(self) -> &'static str {
        match self {
            Behaviour::Statements(p) => p.description(),
            Behaviour::Session(p) => p.description(),
            Behaviour::Startup(p) => p.description(),
            Behaviour::Pooler(p) => p.description(),
            Behaviour::Prepared(p) => p.description(),
            #[cfg(feature = "tokio-postgres")]
            Behaviour::TokioPostgres(p) => p.description(),
        }
    }

    /// Runs it against `db`'s pooled endpoint (the direct one for `NoPooler`).
    pub async fn run(self, db: &TestDb, workload: Workload) -> Result<Outcome> {
        let options = db.connect_options();
        match self {
            Behaviour::Statements(p) => run_pattern(p, &options, workload).await,
            Behaviour::Session(p) => {
                let direct = db
                    .direct_connect_options()
                    .ok_or(Error::DirectUrlRequired {
                        feature: "the matrix's session rows",
                    })?;
                bounded(run_session_probe(p, &options, &direct), p.description()).await
            }
            Behaviour::Startup(p) => {
                bounded(
                    run_startup_probe(p, &options, db.ca_cert_pem()),
                    p.description(),
                )
                .await
            }
            Behaviour::Pooler(p) => {
                let direct = db.direct_connect_options();
                let target = PoolerTarget {
                    pooled: &options,
                    direct: direct.as_ref(),
                };
                match p {
                    // Each of its clients has a time limit of its own.
                    PoolerProbe::SessionLimit => run_pooler_probe(p, target).await,
                    _ => bounded(run_pooler_probe(p, target), p.description()).await,
                }
            }
            Behaviour::Prepared(p) => {
                let probe = run_prepared_probe(
                    p,
                    db.db_url(),
                    &options,
                    crate::diagnose::probes::CLIENT_TIMEOUT,
                );
                bounded(probe, p.description()).await
            }
            #[cfg(feature = "tokio-postgres")]
            Behaviour::TokioPostgres(p) => {
                run_tokio_pg_pattern(p, &db.tokio_postgres_config(), workload).await
            }
        }
    }
}

/// The tokio-postgres rows, with the feature on.
#[cfg(feature = "tokio-postgres")]
fn tokio_postgres_rows() -> impl Iterator<Item = Behaviour> {
    TokioPgPattern::ALL
        .into_iter()
        .map(Behaviour::TokioPostgres)
}

/// No tokio-postgres rows without the feature.
#[cfg(not(feature = "tokio-postgres"))]
fn tokio_postgres_rows() -> impl Iterator<Item = Behaviour> {
    std::iter::empty()
}

/// A single-client probe with a time limit: a hang is an outcome too.
async fn bounded(
    probe: impl std::future::Future<Output = Result<Outcome>>,
    name: &str,
) -> Result<Outcome> {
    match tokio::time::timeout(crate::diagnose::probes::CLIENT_TIMEOUT, probe).await {
        Ok(outcome) => outcome,
        Err(_) => Ok(Outcome::single(name, crate::diagnose::probes::hung())),
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Outcomes, one row per behaviour, one column per profile.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// The workload each statement row ran.
    pub workload: Workload,
    /// Each row: the behaviour and its outcome under `Profile::ALL[i]`.
    pub rows: Vec<(Behaviour, Vec<Outcome>)>,
}

/// Runs the whole matrix (one stack per distinct profile setting).
pub async fn matrix(workload: Workload) -> Result<Matrix> {
    matrix_with(workload, |_, _, _| {}).await
}

/// [`matrix`], calling `on_cell` as each cell is done.
pub async fn matrix_with(
    workload: Workload,
    mut on_cell: impl FnMut(Behaviour, Profile, &Outcome),
) -> Result<Matrix> {
    let mut dbs = Vec::new();
    for profile in Profile::ALL {
        dbs.push(
            TestDb::builder()
                .profile(profile)
                .test_name(format!("matrix_{profile}"))
                .build()
                .await?,
        );
    }
    let mut rows = Vec::new();
    for behaviour in Behaviour::all() {
        let mut row = Vec::new();
        for (db, profile) in dbs.iter().zip(Profile::ALL) {
            let outcome = behaviour.run(db, workload).await?;
            on_cell(behaviour, profile, &outcome);
            row.push(outcome);
        }
        rows.push((behaviour, row));
    }
    for db in dbs {
        db.close().await?;
    }
    Ok(Matrix { workload, rows })
}

impl Matrix {
    /// The outcome of `behaviour` under `profile`, if it ran.
    pub fn cell(&self, behaviour: Behaviour, profile: Profile) -> Option<&Outcome> {
        let column = Profile::ALL.iter().position(|p| *p == profile)?;
        self.rows
            .iter()
            .find(|(b, _)| *b == behaviour)
            .map(|(_, row)| &row[column])
    }

    /// The table as Markdown: ✅ every answer right (with a note where one
    /// matters), ❌ errors (how many clients, which SQLSTATEs), ⚠️ wrong
    /// answers that came with no error: the worst case.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("| behaviour |");
        for p in Profile::ALL {
            out.push_str(&format!(" `{p}` |"));
        }
        out.push_str("\n|---|");
        for _ in Profile::ALL {
            out.push_str("---|");
        }
        out.push('\n');
        for (behaviour, row) in &self.rows {
            out.push_str(&format!("| {behaviour} |"));
            for (cell, profile) in row.iter().zip(Profile::ALL) {
                let mut text = cell_text(cell);
                if let Some(reason) = not_reproduced(*behaviour, profile) {
                    text.push_str(&format!(" (not reproduced: {reason})"));
                }
                out.push_str(&format!(" {text} |"));
            }
            out.push('\n');
        }
        out
    }
}

/// Where `profile` behaves otherwise than the endpoint it mirrors for
/// `behaviour`: why, in words (the table's cell says "not reproduced").
/// The words are [`Profile::residue`]'s: one text per fact.
pub fn not_reproduced(behaviour: Behaviour, profile: Profile) -> Option<&'static str> {
    use crate::target::profile as residue;
    let line =
        match behaviour {
            // The other Supavisor-like profiles link such a login straight
            // to PostgreSQL; the flag-on one keeps PgBouncer's tracking.
            Behaviour::Startup(
                StartupProbe::TopLevelSearchPath | StartupProbe::OptionsSearchPath,
            ) if profile == Profile::SupabaseSharedPrepared => residue::SEARCH_PATH_AT_STARTUP,
            Behaviour::Pooler(PoolerProbe::WrongPassword) if profile.behind_stage() => {
                residue::LOGIN_LIMITS
            }
            Behaviour::Pooler(p) => match (p, profile) {
                // The flag-on stage keeps a client on one link (its named
                // statements are tracked per link); Supavisor's session mode
                // keeps one backend per client, as here.
                (PoolerProbe::TrackedSet, Profile::SupabaseSharedPrepared) => residue::TRACKED_SET,
                _ => return None,
            },
            _ => return None,
        };
    Some(line.strip_prefix("not reproduced: ").unwrap_or(line))
}

/// Every behaviour `profile` does not reproduce, with why: what `doctor`
/// names for the profile it runs under.
pub fn not_reproduced_under(profile: Profile) -> Vec<(Behaviour, &'static str)> {
    Behaviour::all()
        .into_iter()
        .filter_map(|b| not_reproduced(b, profile).map(|why| (b, why)))
        .collect()
}

fn cell_text(o: &Outcome) -> String {
    if o.passed() {
        return match &o.note {
            Some(note) => format!("✅ {note}"),
            None => "✅".into(),
        };
    }
    let mark = if o.has_wrong_answers() {
        "⚠️"
    } else {
        "❌"
    };
    if o.clients == 1 {
        // One client: its problem says more than a count.
        let problem = match (o.wrong.first(), o.failures.first()) {
            (Some(w), _) => format!("wrong answer, no error: got {}", w.got),
            (None, Some(f)) => f.to_string(),
            (None, None) => String::new(),
        };
        return format!("{mark} {}", problem.replace('|', "/"));
    }
    format!("{mark} {}", o.summary())
}
