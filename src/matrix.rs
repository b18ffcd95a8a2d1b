//! The compatibility matrix: every [`SqlxPattern`] run under every
//! [`Profile`] on the crate's own stacks, as a Markdown table.

use crate::error::Result;
use crate::factory::TestDb;
use crate::probes::{run_pattern, Outcome, SqlxPattern, Workload};
use crate::settings::Profile;

/// Outcomes, one row per pattern, one column per profile.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// The workload each cell ran.
    pub workload: Workload,
    /// `rows[p][q]`: pattern `SqlxPattern::ALL[p]` under `Profile::ALL[q]`.
    pub rows: Vec<Vec<Outcome>>,
}

/// Runs the whole matrix (starts one stack per distinct profile setting).
pub async fn compatibility_matrix(workload: Workload) -> Result<Matrix> {
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
    for pattern in SqlxPattern::ALL {
        let mut row = Vec::new();
        for db in &dbs {
            row.push(run_pattern(pattern, &db.connect_options(), workload).await?);
        }
        rows.push(row);
    }
    for db in dbs {
        db.close().await?;
    }
    Ok(Matrix { workload, rows })
}

impl Matrix {
    /// The table as Markdown: ✅ every client succeeded, ❌ with how many
    /// clients failed and the SQLSTATEs they met.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("| sqlx usage |");
        for p in Profile::ALL {
            out.push_str(&format!(" {p} |"));
        }
        out.push_str("\n|---|");
        for _ in Profile::ALL {
            out.push_str("---|");
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!("| {} |", row[0].pattern));
            for cell in row {
                if cell.passed() {
                    out.push_str(" ✅ |");
                } else {
                    out.push_str(&format!(" ❌ {} |", cell.summary()));
                }
            }
            out.push('\n');
        }
        out
    }
}
