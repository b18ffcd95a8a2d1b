//! A bench's result, printed as it comes and written into
//! docs/benchmarks.md when the bench is done, so the page holds what the
//! benches measured, never a retyped copy.
//!
//! Each bench's dated result sits between `<!-- bench:NAME:result -->` and
//! `<!-- bench:NAME:end -->`; `PGBF_BENCH_RECORD=0` prints without writing.

use std::path::Path;
use std::process::Command;

/// The lines of one bench's result.
#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
}

impl Report {
    /// Prints `line` and keeps it for the page.
    pub fn line(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.lines.push(line);
    }

    /// Replaces `bench`'s dated result in docs/benchmarks.md with this one.
    pub fn record(&self, bench: &str) {
        if std::env::var("PGBF_BENCH_RECORD").is_ok_and(|v| v.trim() == "0") {
            return;
        }
        let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
        let result = match std::fs::read_to_string(&page) {
            Ok(text) => replace_result(&text, bench, &self.dated()),
            Err(e) => Err(format!("cannot read {}: {e}", page.display())),
        };
        match result.and_then(|text| {
            std::fs::write(&page, text).map_err(|e| format!("cannot write {}: {e}", page.display()))
        }) {
            Ok(()) => eprintln!("(the result is written to docs/benchmarks.md, `{bench}`)"),
            Err(e) => eprintln!("(the result is not written to docs/benchmarks.md: {e})"),
        }
    }

    /// The result with its date, commit, machine and settings.
    pub fn dated(&self) -> String {
        let settings: Vec<String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("PGBF_") && k != "PGBF_BENCH_RECORD")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "Result of {} (commit `{}`; {}{}):\n\n```text\n{}\n```\n",
            run(&["date", "-u", "+%F"]).unwrap_or_else(|| "an unknown date".into()),
            commit(),
            machine(),
            match settings.is_empty() {
                true => String::new(),
                false => format!("; {}", settings.join(" ")),
            },
            self.lines.join("\n")
        )
    }
}

/// `text` with the part between `bench`'s markers replaced by `result`.
pub fn replace_result(text: &str, bench: &str, result: &str) -> Result<String, String> {
    let (open, close) = (
        format!("<!-- bench:{bench}:result -->\n"),
        format!("<!-- bench:{bench}:end -->"),
    );
    let start = text
        .find(&open)
        .ok_or_else(|| format!("no `{}` marker", open.trim()))?
        + open.len();
    let end = start
        + text[start..]
            .find(&close)
            .ok_or_else(|| format!("no `{close}` marker"))?;
    Ok(format!("{}{result}{}", &text[..start], &text[end..]))
}

fn run(argv: &[&str]) -> Option<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The checkout's commit, marked when the tree has uncommitted changes.
fn commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = run(&["git", "-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = run(&[
        "git",
        "-C",
        dir,
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])
    .is_some_and(|s| !s.is_empty());
    match (head, dirty) {
        (Some(h), true) => format!("{h}, with uncommitted changes"),
        (Some(h), false) => h,
        (None, _) => "unknown".into(),
    }
}

/// Cores and memory of the machine the bench ran on.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "? GiB".to_string(),
            |kb| format!("{} GiB", (kb + (1 << 19)) >> 20),
        );
    format!("{cores} cores, {gib}")
}
