//! Every cell of the matrix in docs/profiles.md, asserted: the matrix is run
//! for real (every probe behind every profile, answers checked) and each
//! cell must come out as the table says.

use pgbouncer_fixtures::probes::pooler::{PoolerProbe, KEPT, KEPT_ON_SHARED_BACKEND};
use pgbouncer_fixtures::probes::prepared::PreparedProbe;
use pgbouncer_fixtures::probes::session::SessionProbe;
use pgbouncer_fixtures::probes::startup::StartupProbe;
use pgbouncer_fixtures::probes::{Outcome, SqlxPattern, Workload};
use pgbouncer_fixtures::{matrix, Behaviour, Profile};

/// What a cell must show.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Every answer right, no error.
    Pass,
    /// Every answer right; the note says how (e.g. "accepted, dropped").
    PassNoted(&'static str),
    /// A refusal the probe expects: passed, the note `refused` and ending
    /// with these words (`after 500 ms` or not: PgBouncer's answer on a
    /// loaded machine may come that late too).
    RefusedNoted(&'static str),
    /// Never silent success: errors with these SQLSTATEs, and/or wrong answers.
    Breaks(&'static [&'static str]),
    /// A race that may not strike in one run: if anything fails, only with
    /// these SQLSTATEs and never with a wrong answer.
    #[cfg_attr(not(feature = "tokio-postgres"), allow(dead_code))]
    MayBreak(&'static [&'static str]),
    /// A wrong answer with no error (and no error at all).
    WrongSilently,
    /// A wrong answer with no error, this one.
    WrongGot(&'static str),
    /// Refused with this SQLSTATE and message fragment.
    Refused(&'static str, &'static str),
    /// Of the probe's clients, exactly one refused, with this SQLSTATE and
    /// message: the rest connected.
    OneRefused(&'static str, &'static str),
}

use Expect::*;

const NAMED: &[&str] = &["42P05", "26000"];

/// The fidelity contract: what each behaviour does behind each profile
/// (`Profile::ALL`).
fn expected(behaviour: Behaviour, profile: Profile) -> Expect {
    use Profile::*;
    let pooled_tx = profile.pools_transactions();
    let untracked = pooled_tx && !profile.tracks_prepared_statements();
    // Supabase's PgBouncer refuses what it does not know at startup.
    let strict = matches!(profile, SupabaseDedicated | SupabaseDedicatedLegacy);
    // Supavisor's `named_prepared_statements` flag on: its FATAL errors.
    let flag_on = profile == SupabaseSharedPrepared;
    let staged = profile.behind_stage();
    match behaviour {
        Behaviour::Statements(p) => match p {
            // With the cache off sqlx still names each statement and never
            // closes it: a connection's 101st query is a 101st name
            // (EMAXPREPARED), and the workload runs 200 per connection.
            SqlxPattern::ConnectionCacheOff if flag_on => Breaks(&["XX000"]),
            SqlxPattern::PoolDefaultCache
            | SqlxPattern::ConnectionCacheOff
            | SqlxPattern::SequentialConnects
                if untracked =>
            {
                Breaks(NAMED)
            }
            // Unnamed statements are not tracked by any PgBouncer: Parse and
            // Bind split across server connections behind every transaction pooler.
            SqlxPattern::UnnamedOutsideTransaction if pooled_tx => Breaks(&["26000"]),
            _ => Pass,
        },
        Behaviour::Session(p) if pooled_tx => match p {
            SessionProbe::SqlPrepare if flag_on => Refused("XX000", "(EPSSIMPLEQUERY)"),
            SessionProbe::SqlPrepare => Refused("26000", "does not exist"),
            SessionProbe::TempTable => Refused("42P01", "does not exist"),
            SessionProbe::Set
            | SessionProbe::AdvisoryLock
            | SessionProbe::Listen
            | SessionProbe::MigratorLock => WrongSilently,
        },
        Behaviour::Session(_) => Pass,
        // tokio-postgres numbers its statements per process: within one
        // process they never collide, but Parse and Bind can split (26000).
        #[cfg(feature = "tokio-postgres")]
        Behaviour::TokioPostgres(p) => {
            use pgbouncer_fixtures::probes::tokio_postgres::TokioPgPattern;
            match p {
                // Plain `query`: Parse and Bind split by chance (see
                // tests/connect_tokio_postgres.rs, which retries it).
                TokioPgPattern::Query if untracked => MayBreak(NAMED),
                TokioPgPattern::PreparedAcrossTransactions if untracked => Breaks(NAMED),
                _ => Pass,
            }
        }
        // Supavisor's startup rules, applied by the stage: its own
        // application_name, the rest dropped (the database's defaults apply).
        Behaviour::Pooler(PoolerProbe::ApplicationName) if profile == SupabaseSession => {
            WrongGot("Supavisor - <the client's> / Supavisor - <the client's>")
        }
        Behaviour::Pooler(PoolerProbe::ApplicationName) if staged => {
            WrongGot("Supavisor / Supavisor")
        }
        Behaviour::Pooler(PoolerProbe::StartupTimeZone) if staged => {
            WrongGot("Asia/Tokyo (dropped)")
        }
        Behaviour::Pooler(PoolerProbe::OptionsCustomSetting) if staged => {
            WrongGot("NULL (dropped)")
        }
        Behaviour::Pooler(PoolerProbe::TopLevelCustomSetting) if staged => PassNoted("accepted"),
        // Supavisor's answer, from the stage: its delay, code and words.
        Behaviour::Pooler(PoolerProbe::WrongPassword) if staged => PassNoted(
            "refused after 500 ms: 28P01 password authentication failed for user \"postgres\"",
        ),

        Behaviour::Pooler(p) => match p {
            // Supavisor's transaction pooling, by the stage: the zone stays
            // where it ran, and client B's next transaction runs there.
            PoolerProbe::TrackedSet if profile == SupabaseShared => {
                WrongGot("America/New_York (leaked to another client)")
            }
            PoolerProbe::TrackedSet if pooled_tx => PassNoted(KEPT_ON_SHARED_BACKEND),
            PoolerProbe::TrackedSet => PassNoted(KEPT),
            PoolerProbe::ApplicationName => PassNoted("the client's"),
            PoolerProbe::StartupTimeZone => PassNoted("applied"),
            PoolerProbe::OptionsCustomSetting if profile == NoPooler => PassNoted("applied"),
            PoolerProbe::OptionsCustomSetting => Refused(
                "08P01",
                "unsupported startup parameter in options: app.tenant",
            ),
            PoolerProbe::WrongPassword if profile == NoPooler => {
                RefusedNoted("28P01 password authentication failed for user \"postgres\"")
            }
            PoolerProbe::WrongPassword => RefusedNoted("08P01 SASL authentication failed"),
            PoolerProbe::TopLevelCustomSetting if profile == NoPooler => PassNoted("accepted"),
            PoolerProbe::TopLevelCustomSetting => {
                Refused("08P01", "unsupported startup parameter: app.tenant")
            }
            // Supavisor's words, from the stage, for PgBouncer's client cap.
            PoolerProbe::SessionLimit if profile == SupabaseSession => OneRefused(
                "XX000",
                "(EMAXCONNSESSION) max clients reached in session mode - max clients are \
                 limited to pool_size: 15",
            ),
            PoolerProbe::SessionLimit => Pass,
        },
        Behaviour::Startup(p) => match (p, profile) {
            (StartupProbe::TopLevelJit, _) if strict => {
                Refused("08P01", "unsupported startup parameter: jit")
            }
            (StartupProbe::TopLevelSearchPath, _) if strict => {
                Refused("08P01", "unsupported startup parameter: search_path")
            }
            (StartupProbe::OptionsJit, _) if strict => {
                Refused("08P01", "unsupported startup parameter in options: jit")
            }
            (StartupProbe::OptionsSearchPath, _) if strict => Refused(
                "08P01",
                "unsupported startup parameter in options: search_path",
            ),
            (StartupProbe::TopLevelJit | StartupProbe::TopLevelSearchPath, _) => {
                PassNoted("accepted")
            }
            (StartupProbe::OptionsJit, NoPooler) => PassNoted("applied"),
            (StartupProbe::OptionsJit, _) => PassNoted("accepted, dropped"),
            // The residue: the flag-on profile's clients stay on PgBouncer,
            // which accepts it and cannot apply it (PostgreSQL 17 does not
            // report search_path); Supavisor applies it, as the stage's
            // links straight to PostgreSQL do behind the other two.
            (StartupProbe::OptionsSearchPath, SupabaseSharedPrepared) => WrongSilently,
            (StartupProbe::OptionsSearchPath, _) => PassNoted("applied"),
            (StartupProbe::SqlxDefaults | StartupProbe::Tls, _) => Pass,
        },
        Behaviour::Prepared(p) => expected_prepared(p, profile),
    }
}

/// The flag's rows: Supavisor's FATAL errors behind the flag-on profile,
/// PostgreSQL's ordinary ones (and PgBouncer's own) elsewhere.
fn expected_prepared(p: PreparedProbe, profile: Profile) -> Expect {
    use Profile::*;
    match (p, profile == Profile::SupabaseSharedPrepared) {
        (PreparedProbe::SqlPrepareInTransaction, true) => {
            Refused("XX000", "(EPSSIMPLEQUERY) transaction mode only supports prepared statements using the Extended Query Protocol [connection closed]")
        }
        (PreparedProbe::ManyNamedStatements, true) => {
            Refused("XX000", "(EMAXPREPARED) max prepared statements limit reached. Limit: 100 per connection [connection closed]")
        }
        (PreparedProbe::DuplicateName, true) => {
            Refused("42P05", "(EPREPAREDDUP) prepared statement \"pgbf_probe_stmt\" already exists [FATAL, connection closed]")
        }
        (PreparedProbe::UnknownName, true) => {
            Refused("26000", "(EPREPAREDNOTFOUND) prepared statement \"pgbf_probe_never_prepared\" does not exist [FATAL, connection closed]")
        }
        (PreparedProbe::SqlPrepareInTransaction | PreparedProbe::ManyNamedStatements, false) => Pass,
        // PgBouncer's tracking ends the connection with errors of its own.
        (PreparedProbe::DuplicateName, false) if profile == SupabaseDedicated => Refused(
            "08P01",
            "prepared statement name is already in use [FATAL, connection closed]",
        ),
        (PreparedProbe::UnknownName, false) if profile == SupabaseDedicated => Refused(
            "08P01",
            "prepared statement did not exist [FATAL, connection closed]",
        ),
        // PostgreSQL's ordinary errors: the connection stays.
        (PreparedProbe::DuplicateName, false) => Refused("42P05", "already exists [ERROR, connection kept]"),
        (PreparedProbe::UnknownName, false) => Refused("26000", "does not exist [ERROR, connection kept]"),
    }
}

fn check(behaviour: Behaviour, profile: Profile, o: &Outcome) {
    // Each failure's words too: a cell that fails once says what it met.
    let cell = format!(
        "{behaviour} behind {profile}: {} {:?}",
        o.summary(),
        o.failures
    );
    match expected(behaviour, profile) {
        Pass => {
            assert!(o.passed(), "{cell}");
            assert_eq!(o.note, None, "{cell}");
        }
        PassNoted(note) => {
            assert!(o.passed(), "{cell}");
            assert_eq!(o.note.as_deref(), Some(note), "{cell}");
        }
        RefusedNoted(words) => {
            assert!(o.passed(), "{cell}");
            let note = o.note.as_deref().unwrap_or_default();
            assert!(
                note.starts_with("refused") && note.ends_with(words),
                "{cell}"
            );
        }
        Breaks(codes) => {
            assert!(!o.passed(), "never silent success: {cell}");
            for f in &o.failures {
                assert!(
                    f.code.as_deref().is_some_and(|c| codes.contains(&c)),
                    "unexpected failure {f:?} in {cell}"
                );
            }
        }
        MayBreak(codes) => {
            assert!(o.wrong.is_empty(), "{cell}");
            for f in &o.failures {
                assert!(
                    f.code.as_deref().is_some_and(|c| codes.contains(&c)),
                    "unexpected failure {f:?} in {cell}"
                );
            }
        }
        WrongSilently => {
            assert!(o.failures.is_empty(), "{cell}");
            assert!(o.has_wrong_answers(), "{cell}");
        }
        WrongGot(got) => {
            assert!(o.failures.is_empty(), "{cell}");
            assert!(!o.wrong.is_empty(), "{cell}");
            assert!(o.wrong.iter().all(|w| w.got == got), "{cell}");
        }
        OneRefused(code, message) => {
            assert!(o.wrong.is_empty(), "{cell}");
            assert_eq!(o.failures.len(), 1, "{cell}");
            assert_eq!(o.failures[0].code.as_deref(), Some(code), "{cell}");
            assert_eq!(o.failures[0].message, message, "{cell}");
        }
        Refused(code, fragment) => {
            assert!(o.wrong.is_empty(), "{cell}");
            let f = o.failures.first().unwrap_or_else(|| panic!("{cell}"));
            assert_eq!(f.code.as_deref(), Some(code), "{cell}");
            assert!(f.message.contains(fragment), "{cell}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_of_the_matrix_holds() {
    let matrix = matrix(Workload::default()).await.unwrap();
    assert_eq!(matrix.rows.len(), Behaviour::all().len());
    for (behaviour, row) in &matrix.rows {
        for (profile, outcome) in Profile::ALL.into_iter().zip(row) {
            check(*behaviour, profile, outcome);
        }
    }
    // The table shows wrong answers where they occur.
    let table = matrix.to_markdown();
    // The table as run, for docs/profiles.md (`--nocapture`).
    println!("{table}");
    assert!(table.contains("⚠️ wrong"), "{table}");
    documented_table_matches(&table);
}

/// The table of docs/profiles.md, as (behaviour, cells) rows.
fn documented_table() -> Vec<(String, Vec<String>)> {
    let page = include_str!("../docs/profiles.md");
    let start = page
        .find("| behaviour | `supabase-shared`")
        .expect("docs/profiles.md has the matrix");
    table_rows(page[start..].lines().take_while(|l| l.starts_with('|')))
}

/// A Markdown table's body (below its header and rule) as (behaviour, cells) rows.
fn table_rows<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, Vec<String>)> {
    lines
        .skip(2)
        .map(|line| {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

/// docs/profiles.md's table is the matrix's output: the same rows, the same
/// cells passing, the same cells saying "not reproduced" (the counts and
/// names in a failing cell vary from run to run).
fn documented_table_matches(table: &str) {
    let ran = table_rows(table.lines());
    let documented = documented_table();
    let ran_rows: Vec<&String> = ran
        .iter()
        .map(|(b, _)| b)
        .filter(|b| documented.iter().any(|(d, _)| d == *b) || !b.contains("tokio-postgres"))
        .collect();
    let documented_rows: Vec<&String> = documented.iter().map(|(b, _)| b).collect();
    assert_eq!(
        documented_rows, ran_rows,
        "rerun `pgbouncer-fixtures matrix` into docs/profiles.md"
    );
    for (behaviour, cells) in &documented {
        let (_, ran_cells) = ran.iter().find(|(b, _)| b == behaviour).unwrap();
        for (doc, got) in cells.iter().zip(ran_cells) {
            assert_eq!(
                doc.starts_with('✅'),
                got.starts_with('✅'),
                "{behaviour}: {doc} / {got}"
            );
            assert_eq!(
                doc.contains("not reproduced"),
                got.contains("not reproduced"),
                "{behaviour}: {doc} / {got}"
            );
        }
    }
}
