//! `doctor`: the report of one URL, or of a local stack of each profile,
//! as text or JSON. Exit codes: 0 no hazard, 1 a hazard (or a probe that
//! could not run), 2 bad input (with one URL: also when it could not be
//! probed), 3 the local stacks of the profiles could not be made.

use std::process::ExitCode;
use std::time::Duration;

use pgbouncer_fixtures::doctor::{diagnose, Report};
use pgbouncer_fixtures::env_vars::TEST_DATABASE_URL;
use pgbouncer_fixtures::probes::Workload;
use pgbouncer_fixtures::{not_reproduced_under, DbUrl, Env, Profile, TestDb};

use crate::args::DoctorArgs;

/// What `doctor` probes.
enum DoctorTargets {
    /// The URL given, or TEST_DATABASE_URL.
    Url(DbUrl),
    /// No URL anywhere: a local stack of each profile.
    EveryProfile,
}

/// One report, with the profile of the local stack it probed.
type Reports = Vec<(Option<Profile>, Report)>;

/// Runs `doctor` and prints its reports; the exit code says how they came out.
pub fn doctor(args: DoctorArgs) -> ExitCode {
    let targets = match doctor_targets(args.url) {
        Ok(t) => t,
        Err(message) => {
            say!("pgbouncer-fixtures: {message}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let reports = match crate::runtime().and_then(|rt| rt.block_on(probe(targets))) {
        Ok(r) => r,
        Err(message) => {
            say!("pgbouncer-fixtures: {message}");
            return ExitCode::from(crate::EXIT_FAILED);
        }
    };
    if args.json {
        print_json(&reports);
    } else {
        for (profile, r) in &reports {
            if let Some(p) = profile {
                println!("== profile {p}: {}", p.description());
            }
            print!("{}", r.to_text());
            if let Some(p) = profile {
                print!("{}", not_reproduced_text(*p));
            }
        }
    }
    let unreachable = reports.iter().any(|(_, r)| r.pool_behaviour.is_none());
    let hazard = reports.iter().any(|(_, r)| r.has_hazard());
    match (unreachable, hazard) {
        (true, _) if reports.len() == 1 => ExitCode::from(crate::EXIT_USAGE),
        (_, true) | (true, false) => ExitCode::from(crate::EXIT_HAZARD),
        (false, false) => ExitCode::SUCCESS,
    }
}

fn doctor_targets(url_arg: Option<String>) -> Result<DoctorTargets, String> {
    if let Some(raw) = url_arg {
        return DbUrl::parse("the doctor's URL argument", &raw)
            .map(DoctorTargets::Url)
            .map_err(|e| e.to_string());
    }
    let env = Env::load().map_err(|e| e.to_string())?;
    match env.get(TEST_DATABASE_URL) {
        Some(raw) => DbUrl::parse(TEST_DATABASE_URL, raw)
            .map(DoctorTargets::Url)
            .map_err(|e| e.to_string()),
        None => Ok(DoctorTargets::EveryProfile),
    }
}

async fn probe(targets: DoctorTargets) -> Result<Reports, String> {
    let workload = Workload {
        clients: 15,
        rounds: 100,
    };
    let timeout = Duration::from_secs(10);
    let mut reports = Vec::new();
    match targets {
        DoctorTargets::Url(url) => reports.push((None, diagnose(&url, workload, timeout).await)),
        DoctorTargets::EveryProfile => {
            say!("pgbouncer-fixtures: no URL and no TEST_DATABASE_URL: probing a local stack of each profile");
            for profile in Profile::ALL {
                let db = TestDb::builder()
                    .profile(profile)
                    .test_name(format!("doctor_{profile}"))
                    .build()
                    .await
                    .map_err(|e| e.to_string())?;
                reports.push((
                    Some(profile),
                    diagnose(db.db_url(), workload, timeout).await,
                ));
                db.close().await.map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(reports)
}

/// What the local stack of `profile` does otherwise than the endpoint it
/// mirrors, by name: an `ok` above may be `HAZARD` there, or the reverse.
fn not_reproduced_text(profile: Profile) -> String {
    let verdicts = not_reproduced_under(profile);
    if verdicts.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "  not reproduced by this profile ({}):\n",
        profile.mirrors()
    );
    for (behaviour, why) in verdicts {
        out.push_str(&format!("    - {behaviour}: {why}\n"));
    }
    out
}

/// One report as a JSON object; several as an array, each naming its profile.
fn print_json(reports: &Reports) {
    let mut values: Vec<serde_json::Value> = reports
        .iter()
        .map(|(profile, r)| {
            let mut v = r.to_json();
            if let Some(p) = profile {
                v["profile"] = serde_json::Value::from(p.name());
                v["not_reproduced"] = not_reproduced_under(*p)
                    .into_iter()
                    .map(|(b, why)| serde_json::json!({"behaviour": b.description(), "why": why}))
                    .collect();
            }
            v
        })
        .collect();
    let out = match values.len() {
        1 => values.remove(0),
        _ => serde_json::Value::from(values),
    };
    println!("{out:#}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_not_reproduced_verdict_of_the_profile() {
        let profile = Profile::SupabaseSharedPrepared;
        let text = not_reproduced_text(profile);
        assert!(text.contains(profile.mirrors()), "{text}");
        let verdicts = not_reproduced_under(profile);
        assert!(verdicts.len() >= 2, "{verdicts:?}");
        for (behaviour, why) in verdicts {
            assert!(text.contains(&format!("- {behaviour}: {why}")), "{text}");
        }
        assert_eq!(not_reproduced_text(Profile::SupabaseDedicated), "");
    }
}
