//! What `doctor` reports: the verdict of each item, the findings and the
//! report as text (for people) and JSON (for machines).

use std::fmt;
use std::time::Duration;

/// How an item came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change.
    Ok,
    /// Worth knowing; not a failure.
    Info,
    /// sqlx code will fail here unless it follows the remedy.
    Hazard,
    /// Queries returned wrong results with no error: the worst case.
    WrongResults,
    /// The probe could not run (e.g. no connection).
    Error,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Info => "info",
            Verdict::Hazard => "HAZARD",
            Verdict::WrongResults => "WRONG",
            Verdict::Error => "ERROR",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of the report.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What was probed.
    pub item: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// What was observed.
    pub detail: String,
    /// What to change, when something should change.
    pub remedy: Option<String>,
}

impl Finding {
    /// A finding without a remedy.
    pub(crate) fn new(item: &'static str, verdict: Verdict, detail: impl Into<String>) -> Finding {
        Finding {
            item,
            verdict,
            detail: detail.into(),
            remedy: None,
        }
    }

    /// The finding with `remedy`.
    pub(crate) fn with_remedy(self, remedy: impl Into<String>) -> Finding {
        Finding {
            remedy: Some(remedy.into()),
            ..self
        }
    }
}

/// Pool behaviour inferred from a client's two transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolBehaviour {
    /// Session state and backend survive between transactions: PostgreSQL
    /// itself or a session pooler.
    Session,
    /// A transaction pooler: the client's next transaction may run on another
    /// backend, without its session state.
    Transaction,
}

/// Everything `doctor` found about one URL.
#[derive(Clone, Debug)]
pub struct Report {
    /// The URL probed, password redacted.
    pub target: String,
    /// The pool behaviour, when it could be inferred.
    pub pool_behaviour: Option<PoolBehaviour>,
    /// The items, in order.
    pub findings: Vec<Finding>,
    /// How long the probes took.
    pub elapsed: Duration,
}

impl Report {
    /// Whether any item is a hazard or could not run.
    pub fn has_hazard(&self) -> bool {
        self.findings.iter().any(|f| {
            matches!(
                f.verdict,
                Verdict::Hazard | Verdict::WrongResults | Verdict::Error
            )
        })
    }

    /// The finding for `item`, if probed.
    pub fn finding(&self, item: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.item == item)
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = format!("doctor: {}\n", self.target);
        for f in &self.findings {
            out.push_str(&format!(
                "  [{:^6}] {}: {}\n",
                f.verdict.as_str(),
                f.item,
                f.detail
            ));
            if let Some(remedy) = &f.remedy {
                out.push_str(&format!("           -> {remedy}\n"));
            }
        }
        let hazards = self
            .findings
            .iter()
            .filter(|f| matches!(f.verdict, Verdict::Hazard | Verdict::WrongResults))
            .count();
        out.push_str(&format!(
            "  {} in {:.1} s\n",
            match hazards {
                0 if !self.has_hazard() => "no hazard".to_string(),
                0 => "probes failed".to_string(),
                1 => "1 hazard".to_string(),
                n => format!("{n} hazards"),
            },
            self.elapsed.as_secs_f64()
        ));
        out
    }

    /// The report for machines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "pool_behaviour": self.pool_behaviour.map(|b| match b {
                PoolBehaviour::Session => "session",
                PoolBehaviour::Transaction => "transaction",
            }),
            "hazard": self.has_hazard(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "item": f.item,
                "verdict": f.verdict.as_str().to_ascii_lowercase(),
                "detail": f.detail,
                "remedy": f.remedy,
            })).collect::<Vec<_>>(),
        })
    }
}
