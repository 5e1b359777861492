//! The median table: agreeing on one utility per job from several peers' revealed reports.
//!
//! Pure and invariant to the order reports arrive in: reports are sorted canonically first. Per job
//! the agreed utility is the lower median of the distinct reporters' values; reports farther than
//! `tau` from it are flagged (they lower the reporter's standing); jobs with fewer than
//! `min_reports` reporters are re-queued and have no utility. The epoch state machine
//! (`attribution::epoch`) calls [`median_table`] and feeds [`MedianTable::utilities`] to
//! [`crate::attribution::score_table`].

use crate::ids::PeerKey;
use serde::{Deserialize, Serialize};

/// One peer's revealed utility for one job, in micro-units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Report {
    pub job: u32,
    pub reporter: PeerKey,
    pub utility: i64,
}

/// The agreed utilities of an epoch's jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MedianTable {
    /// Lower median per job; `None` when the job had too few reports.
    pub utilities: Vec<Option<i64>>,
    /// (reporter, job) of every report outside median ± tau, and of reporters who sent two
    /// different values for one job; sorted.
    pub flagged: Vec<(PeerKey, u32)>,
    /// Jobs with fewer than `min_reports` distinct reporters, ascending.
    pub requeue: Vec<u32>,
    /// Reports naming a job ≥ `job_count`, ignored; sorted.
    pub out_of_range: Vec<(PeerKey, u32)>,
}

/// Builds the median table of `job_count` jobs from `reports` (in any order).
///
/// A reporter that sent several values for one job counts once, with its lowest value, and is
/// flagged for that job.
pub fn median_table(job_count: u32, reports: &[Report], min_reports: usize, tau: i64) -> MedianTable {
    let mut sorted: Vec<Report> = reports.to_vec();
    sorted.sort_by_key(|r| (r.job, r.reporter, r.utility));
    sorted.dedup();
    let mut per_job: Vec<Vec<(PeerKey, i64)>> = vec![Vec::new(); job_count as usize];
    let mut flagged = Vec::new();
    let mut out_of_range = Vec::new();
    for r in &sorted {
        let Some(slot) = per_job.get_mut(r.job as usize) else {
            out_of_range.push((r.reporter, r.job));
            continue;
        };
        match slot.last() {
            Some((p, _)) if *p == r.reporter => flagged.push((r.reporter, r.job)),
            _ => slot.push((r.reporter, r.utility)),
        }
    }
    let mut utilities = Vec::with_capacity(job_count as usize);
    let mut requeue = Vec::new();
    for (job, entries) in per_job.iter().enumerate() {
        if entries.len() < min_reports.max(1) {
            utilities.push(None);
            requeue.push(job as u32);
            continue;
        }
        let mut values: Vec<i64> = entries.iter().map(|e| e.1).collect();
        values.sort_unstable();
        let median = values[(values.len() - 1) / 2];
        for (reporter, u) in entries {
            if (*u as i128 - median as i128).abs() > tau as i128 {
                flagged.push((*reporter, job as u32));
            }
        }
        utilities.push(Some(median));
    }
    flagged.sort();
    flagged.dedup();
    out_of_range.sort();
    out_of_range.dedup();
    MedianTable { utilities, flagged, requeue, out_of_range }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> PeerKey {
        PeerKey([i; 32])
    }

    // Lower median, flags beyond tau, and re-queue of thin jobs on a small hand-made table.
    #[test]
    fn lower_median_flags_and_requeues() {
        let reports = vec![
            Report { job: 0, reporter: key(1), utility: 10 },
            Report { job: 0, reporter: key(2), utility: 20 },
            Report { job: 0, reporter: key(3), utility: 1000 },
            Report { job: 0, reporter: key(4), utility: 12 },
            Report { job: 1, reporter: key(1), utility: 5 },
            Report { job: 7, reporter: key(1), utility: 5 },
        ];
        let t = median_table(2, &reports, 2, 15);
        assert_eq!(t.utilities, vec![Some(12), None]);
        assert_eq!(t.flagged, vec![(key(3), 0)]);
        assert_eq!(t.requeue, vec![1]);
        assert_eq!(t.out_of_range, vec![(key(1), 7)]);
    }

    // A reporter with two values for one job counts once (lowest) and is flagged.
    #[test]
    fn equivocating_reporter_counts_once() {
        let reports = vec![
            Report { job: 0, reporter: key(1), utility: 50 },
            Report { job: 0, reporter: key(1), utility: 10 },
            Report { job: 0, reporter: key(2), utility: 10 },
        ];
        let t = median_table(1, &reports, 2, 100);
        assert_eq!(t.utilities, vec![Some(10)]);
        assert_eq!(t.flagged, vec![(key(1), 0)]);
    }

    proptest! {
        // The table does not depend on the order reports arrive in.
        #[test]
        fn invariant_to_report_order(
            raw in proptest::collection::vec((0u32..6, 0u8..5, -1000i64..1000), 0..60),
            rot in any::<usize>(),
        ) {
            let reports: Vec<Report> = raw.iter().map(|&(job, k, utility)| Report { job, reporter: key(k), utility }).collect();
            let a = median_table(5, &reports, 2, 100);
            let mut shuffled = reports.clone();
            shuffled.reverse();
            if !shuffled.is_empty() { let n = shuffled.len(); shuffled.rotate_left(rot % n); }
            prop_assert_eq!(a, median_table(5, &shuffled, 2, 100));
        }
    }
}
