//! Coalition jobs: which units each job of an epoch trains on, derived from the epoch seed alone.
//!
//! Every job's coalition is uniformly distributed over all subsets (each unit in with probability
//! ½), as MSR-Banzhaf needs, but the jobs are not drawn independently: they come in **orthogonal
//! blocks** (a randomized two-level fractional factorial design). The job count T is split into
//! blocks by its binary digits, largest first (T = 200 → 128 + 64 + 8). In a block of B = 2^k jobs,
//! unit i gets a distinct non-zero column label a_i < B and a flip bit c_i, both drawn from
//! BLAKE3-XOF(derive_key(context), seed ‖ block start ‖ B), and row r of the block includes unit i
//! when parity(r & a_i) ⊕ c_i = 1. Then
//! - every unit is in exactly B/2 jobs of the block and, for every other unit, in exactly B/4 of
//!   the jobs that include it: the other units' effects cancel exactly in mean(u | in) − mean(u | out)
//!   instead of adding sampling noise (an additive game is recovered exactly);
//! - the labels all have their top bit set (resolution IV): a unit's column is never the product of
//!   two others, so no two-unit interaction is read as a third unit's value. This needs M ≤ B/2;
//!   a block with more units falls back to independent draws ([`coalition`]). (A resolution III
//!   block would fit up to B − 1 units, but there a strong interaction — two curated units that
//!   together fix what either alone does — lands, in full and with a random sign, on one unrelated
//!   unit; independent draws spread it as noise instead.)
//!
//! The flip bits make each row, and so each job, a uniform random subset, so the MSR estimate stays
//! unbiased for the Banzhaf value; only its variance drops. Every peer derives the same table. A
//! job's training records are a pure function of the plan (see
//! [`crate::attribution::EpochPlan::job_records`]).

const CONTEXT: &str = "datanet/attribution/coalitions/v1";
const DESIGN_CONTEXT: &str = "datanet/attribution/coalition-design/v1";

/// An independent coalition for job `job`: `out[i]` says whether unit `i` is in (bit `i` of
/// BLAKE3-XOF(seed ‖ job)). Used by blocks too small to be orthogonal.
pub fn coalition(epoch_seed: [u8; 32], unit_count: u32, job: u32) -> Vec<bool> {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(&epoch_seed);
    h.update(&job.to_le_bytes());
    let mut bytes = vec![0u8; (unit_count as usize).div_ceil(8)];
    h.finalize_xof().fill(&mut bytes);
    (0..unit_count as usize).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect()
}

/// The training seed every job of an epoch uses: BLAKE3(epoch seed ‖ recipe seed) truncated.
///
/// One seed for all jobs (common random numbers): two coalitions then differ only in their data,
/// not in their initialization and batch order, which removes most of the noise from the
/// differences MSR-Banzhaf averages.
pub fn training_seed(epoch_seed: [u8; 32], recipe_seed: u64) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("datanet/attribution/training-seed/v1");
    h.update(&epoch_seed);
    h.update(&recipe_seed.to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// All `job_count` coalitions of an epoch over `unit_count` units, in orthogonal blocks (module docs).
pub fn coalitions(epoch_seed: [u8; 32], unit_count: u32, job_count: u32) -> Vec<Vec<bool>> {
    let mut out = Vec::with_capacity(job_count as usize);
    let mut start = 0u32;
    for bit in (0..u32::BITS).rev() {
        let size = 1u32 << bit;
        if job_count & size != 0 {
            block(epoch_seed, unit_count, start, size, &mut out);
            start += size;
        }
    }
    out
}

/// Appends the `size` jobs of the block starting at job `start`.
fn block(epoch_seed: [u8; 32], unit_count: u32, start: u32, size: u32, out: &mut Vec<Vec<bool>>) {
    let m = unit_count as usize;
    // Candidate column labels: those with the top bit set (resolution IV).
    let (lo, hi) = (size / 2, size);
    if size < 2 || m > (hi - lo) as usize {
        out.extend((start..start + size).map(|j| coalition(epoch_seed, unit_count, j)));
        return;
    }
    let mut h = blake3::Hasher::new_derive_key(DESIGN_CONTEXT);
    h.update(&epoch_seed);
    h.update(&start.to_le_bytes());
    h.update(&size.to_le_bytes());
    let mut xof = h.finalize_xof();
    let mut next = || {
        let mut b = [0u8; 8];
        xof.fill(&mut b);
        u64::from_le_bytes(b)
    };
    // Partial Fisher–Yates over the candidates: m distinct labels, then m flip bits.
    let mut labels: Vec<u32> = (lo..hi).collect();
    for i in 0..m {
        let j = i + (next() % (labels.len() - i) as u64) as usize;
        labels.swap(i, j);
    }
    labels.truncate(m);
    let flips: Vec<bool> = (0..m).map(|_| next() & 1 == 1).collect();
    out.extend(
        (0..size).map(|r| labels.iter().zip(&flips).map(|(&a, &c)| ((r & a).count_ones() & 1 == 1) ^ c).collect()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::value::msr_banzhaf;
    use proptest::prelude::*;

    // Coalitions are a pure function of the seed and include each unit about half the time.
    #[test]
    fn deterministic_and_balanced() {
        let a = coalitions([7; 32], 40, 200);
        assert_eq!(a.len(), 200);
        assert_eq!(a, coalitions([7; 32], 40, 200));
        assert_ne!(a, coalitions([8; 32], 40, 200));
        let ins: usize = a.iter().flatten().filter(|&&b| b).count();
        let frac = ins as f64 / (40.0 * 200.0);
        assert!((0.45..0.55).contains(&frac), "{frac}");
        // Too many units for any block (M > T/2): independent draws, still about half in.
        let b = coalitions([7; 32], 60, 100);
        assert!((0..60).any(|i| b.iter().filter(|r| r[i]).count() != 50));
        let frac = b.iter().flatten().filter(|&&x| x).count() as f64 / 6_000.0;
        assert!((0.45..0.55).contains(&frac), "{frac}");
    }

    // In an orthogonal block every unit is in exactly half the jobs, every pair of units together
    // in exactly a quarter, and no unit's column is the product of two others (resolution IV).
    #[test]
    fn blocks_are_orthogonal() {
        for (m, t) in [(10u32, 64u32), (32, 64), (4, 8)] {
            let c = coalitions([3; 32], m, t);
            for i in 0..m as usize {
                assert_eq!(c.iter().filter(|r| r[i]).count(), t as usize / 2, "m={m} unit {i}");
                for j in 0..i {
                    assert_eq!(c.iter().filter(|r| r[i] && r[j]).count(), t as usize / 4, "m={m} {i},{j}");
                    for l in 0..j {
                        // x_l ≠ x_i ⊕ x_j (and ≠ its complement) in some job.
                        let alias: Vec<bool> = c.iter().map(|r| r[i] ^ r[j] ^ r[l]).collect();
                        assert!(alias.iter().any(|&b| b) && alias.iter().any(|&b| !b), "m={m} {i},{j},{l}");
                    }
                }
            }
        }
    }

    proptest! {
        // MSR-Banzhaf recovers every unit's value of an additive game exactly from T = 2^k jobs.
        #[test]
        fn additive_game_is_recovered(seed in any::<[u8; 32]>(), m in 1u32..33, k in 6u32..9, w in proptest::collection::vec(-1000i64..1000, 40)) {
            let t = 1u32 << k;
            let c = coalitions(seed, m, t);
            let u: Vec<i64> = c.iter().map(|row| row.iter().zip(&w).filter(|(b, _)| **b).map(|(_, v)| v * 1000).sum()).collect();
            let phi = msr_banzhaf(&c, &u, m as usize);
            prop_assert_eq!(phi, w[..m as usize].iter().map(|v| v * 1000).collect::<Vec<_>>());
        }
    }
}
