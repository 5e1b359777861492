//! Coalition jobs: which units each job of an epoch trains on, derived from the epoch seed alone.
//!
//! Job `j` includes unit `i` when bit `i` of BLAKE3-XOF(derive_key(context), seed ‖ j) is set, so
//! each unit is in with probability ½, independently, and every peer derives the same table. A job's
//! training records are a pure function of the plan (see [`crate::attribution::EpochPlan::job_records`]).

const CONTEXT: &str = "datanet/attribution/coalitions/v1";

/// The coalition of one job: `out[i]` says whether unit `i` is in.
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

/// All `job_count` coalitions of an epoch over `unit_count` units.
pub fn coalitions(epoch_seed: [u8; 32], unit_count: u32, job_count: u32) -> Vec<Vec<bool>> {
    (0..job_count).map(|j| coalition(epoch_seed, unit_count, j)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Coalitions are a pure function of the seed and include each unit about half the time.
    #[test]
    fn deterministic_and_balanced() {
        let a = coalitions([7; 32], 40, 200);
        assert_eq!(a, coalitions([7; 32], 40, 200));
        assert_ne!(a, coalitions([8; 32], 40, 200));
        let ins: usize = a.iter().flatten().filter(|&&b| b).count();
        let frac = ins as f64 / (40.0 * 200.0);
        assert!((0.45..0.55).contains(&frac), "{frac}");
        // A job's coalition does not depend on how many jobs are drawn.
        assert_eq!(coalitions([7; 32], 40, 3)[2], a[2]);
    }
}
