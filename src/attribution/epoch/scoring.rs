//! Score a report set: the one function the leader and every member run to derive the roots
//! they sign. Pure: the same reports (any order) and plan give the same bytes everywhere.
//!
//! Jobs with fewer than `min_reports` reports are re-queued: they are left out of this epoch's
//! valuation (the plan is restricted to the remaining coalitions), and listed in the attestation.

use super::certificate::report_set_root;
use crate::attribution::{self, EpochPlan, MedianTable, Report, ScoreError, Scores};
use crate::ids::{MerkleRoot, PeerKey};

/// Everything derived from a report set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreOutcome {
    /// Reports sorted by (job, reporter).
    pub reports: Vec<Report>,
    pub table: MedianTable,
    pub scores: Scores,
    pub report_set_root: MerkleRoot,
    pub credit_root: MerkleRoot,
    /// Reporters whose reports were flagged, with how many (their lost standing this epoch).
    pub standing_lost: Vec<(PeerKey, u32)>,
}

/// Derives the median table, the credit and both roots from `reports`.
pub fn score_reports(
    plan: &EpochPlan,
    reports: &[Report],
    min_reports: usize,
    tau: i64,
) -> Result<ScoreOutcome, ScoreError> {
    let mut sorted = reports.to_vec();
    sorted.sort_by_key(|r| (r.job, r.reporter, r.utility));
    let table = attribution::median_table(plan.job_count(), &sorted, min_reports, tau);
    let kept: Vec<usize> = (0..plan.job_count() as usize).filter(|&j| table.utilities[j].is_some()).collect();
    let scores = if kept.len() == plan.job_count() as usize {
        attribution::score_table(plan, &table)?
    } else {
        let mut reduced = plan.clone();
        reduced.coalitions = kept.iter().map(|&j| plan.coalitions[j].clone()).collect();
        let utilities: Vec<i64> = kept.iter().map(|&j| table.utilities[j].expect("kept job has a utility")).collect();
        attribution::score(&reduced, &utilities)?
    };
    let mut standing: std::collections::BTreeMap<PeerKey, u32> = Default::default();
    for (k, _) in &table.flagged {
        *standing.entry(*k).or_default() += 1;
    }
    Ok(ScoreOutcome {
        report_set_root: report_set_root(&sorted, plan.sealed.as_ref()),
        credit_root: attribution::credit_root(&scores.leaves),
        reports: sorted,
        table,
        scores,
        standing_lost: standing.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::{ContributorSummary, EpochParams, Unit, coalitions};
    use crate::ids::RecordHash;
    use proptest::prelude::*;

    fn plan(jobs: u32) -> EpochPlan {
        let keys: Vec<PeerKey> = (0..4u8).map(|i| PeerKey([i; 32])).collect();
        let units = (0..5u32)
            .map(|u| Unit {
                records: (0..4u32).map(|i| RecordHash([(u * 4 + i) as u8; 32])).collect(),
                shares: vec![(keys[u as usize % 4], 3), (keys[(u as usize + 1) % 4], 1)],
            })
            .collect();
        EpochPlan {
            seed: [3; 32],
            params: EpochParams::with_jobs(jobs),
            units,
            coalitions: coalitions([3; 32], 5, jobs),
            contributors: keys.iter().map(|k| ContributorSummary { contributor: *k, ..Default::default() }).collect(),
            record_values: vec![],
            screened: vec![],
            sealed: None,
        }
    }

    proptest! {
        // The median table, the credit and both roots do not depend on the order of the reports.
        #[test]
        fn invariant_to_report_order(raw in proptest::collection::vec((0u32..6, 0u8..5, -100_000i64..100_000), 0..40), rot in any::<usize>()) {
            let p = plan(6);
            let reports: Vec<Report> = raw.iter().map(|&(job, k, utility)| Report { job, reporter: PeerKey([k; 32]), utility }).collect();
            let a = score_reports(&p, &reports, 2, 10_000).unwrap();
            let mut shuffled = reports.clone();
            shuffled.reverse();
            if !shuffled.is_empty() { let n = shuffled.len(); shuffled.rotate_left(rot % n); }
            let b = score_reports(&p, &shuffled, 2, 10_000).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}
