//! The protocol parameters every committee member must share (`[protocol]` of a manifest), their
//! defaults and their checks.

use super::ManifestError;
use super::file::key_err;
use serde::{Deserialize, Serialize};

/// The wire protocol version this build speaks; a manifest naming another is refused.
pub const PROTOCOL_VERSION: u32 = 3;

/// Everything the committee's members must share to agree (DESIGN.md §3): a member with other
/// values would recompute other roots and refuse honest proposals, so these live in the signed
/// manifest, not in a peer's config. `[protocol]` in a manifest file; every key has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protocol {
    /// Wire protocol version ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// T: coalition jobs per epoch at least (the plan may size more, up to `jobs_max`).
    pub jobs: u32,
    pub jobs_max: u32,
    /// Reporters per job, at most (fewer when the committee is smaller); the default, 5, is
    /// 3 for committees of 3–4 members.
    pub replication: u32,
    /// First view's timeout of the freeze and score rounds; view v waits `× min(2^v, 8)`.
    pub view_timeout_ms: u64,
    /// From the input certificate to the commit deadline (training happens in here).
    pub commit_window_ms: u64,
    /// From the commit deadline to the score proposal.
    pub reveal_window_ms: u64,
    /// How often a member re-sends its current messages.
    pub rebroadcast_ms: u64,
    /// How far a member's clock may run ahead of the epoch schedule: epoch e opens at
    /// `genesis_ms + (e − 1) × epoch_length_secs × 1000 − clock_skew_ms` on its clock.
    pub clock_skew_ms: u64,
    /// Unit formation: records per unit k-means aims for, its band, the most units, iterations.
    pub unit_records_target: u32,
    pub unit_records_min: u32,
    pub unit_records_max: u32,
    pub unit_count_max: u32,
    pub kmeans_iterations: u32,
    /// The screen: K, evaluation points, label-agreement pool, largest excluded tail (ppm).
    pub screen_k: u32,
    pub screen_eval_max: u32,
    pub screen_pool_max: u32,
    pub screen_tail_max_ppm: u32,
    /// Largest part of the total positive value one unit may count for (ppm).
    pub unit_cap_ppm: u32,
    /// Standard errors (×1000) a unit's value must stand above to earn.
    pub noise_floor_milli: u32,
    /// Sealed records each epoch opens per slice ([`crate::sealed::select`]).
    pub sealed_split: u32,
    /// Warn (status, metrics) when the sealed pool has fewer epochs of full splits left than this.
    pub sealed_low_epochs: u32,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            version: PROTOCOL_VERSION,
            jobs: 32,
            jobs_max: 256,
            replication: 5,
            view_timeout_ms: 10_000,
            commit_window_ms: 60_000,
            reveal_window_ms: 10_000,
            rebroadcast_ms: 2_000,
            clock_skew_ms: 30_000,
            unit_records_target: 200,
            unit_records_min: 50,
            unit_records_max: 500,
            unit_count_max: 1000,
            kmeans_iterations: 10,
            screen_k: 10,
            screen_eval_max: 500,
            screen_pool_max: 500,
            screen_tail_max_ppm: 300_000,
            unit_cap_ppm: 500_000,
            noise_floor_milli: 3000,
            sealed_split: 16,
            sealed_low_epochs: 3,
        }
    }
}

impl Protocol {
    /// Checks the values, naming the bad key.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |k: &str, m: &str| Err(key_err(format!("protocol.{k}"), m));
        if self.version != PROTOCOL_VERSION {
            return bad("version", &format!("this build speaks protocol {PROTOCOL_VERSION}, not {}", self.version));
        }
        if self.jobs == 0 || self.jobs > self.jobs_max || self.jobs_max > 100_000 {
            return bad("jobs", "must be at least 1 and at most jobs_max (at most 100000)");
        }
        if self.replication == 0 || self.replication > 64 {
            return bad("replication", "must be between 1 and 64");
        }
        for (k, v) in [
            ("view_timeout_ms", self.view_timeout_ms),
            ("commit_window_ms", self.commit_window_ms),
            ("reveal_window_ms", self.reveal_window_ms),
            ("rebroadcast_ms", self.rebroadcast_ms),
        ] {
            if v == 0 || v > 86_400_000 {
                return bad(k, "must be between 1 and 86400000 (a day)");
            }
        }
        if self.sealed_split == 0 || self.sealed_split > crate::sealed::SPLIT_MAX {
            return bad("sealed_split", &format!("must be between 1 and {}", crate::sealed::SPLIT_MAX));
        }
        Ok(())
    }

    /// When epoch `epoch` (1, 2, …) opens on a member's clock (unix ms), the skew allowance taken.
    pub fn epoch_opens_ms(&self, genesis_ms: u64, epoch_length_secs: u64, epoch: u64) -> u64 {
        let start = genesis_ms.saturating_add(epoch.saturating_sub(1).saturating_mul(epoch_length_secs * 1000));
        start.saturating_sub(self.clock_skew_ms)
    }
}
