//! What a member needs to take part in an epoch: the timing every member shares, the epoch's
//! configuration and the default flagging distance.

use crate::attribution::epoch::assign;
use crate::ids::{ContributionId, DatanetId, PeerKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Clock and window settings; every member should use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// First view's timeout; view v waits `view_timeout_ms × min(2^v, 8)`.
    pub view_timeout_ms: u64,
    /// From the input certificate to the commit deadline (training happens in here).
    pub commit_window_ms: u64,
    /// From the commit deadline to the score proposal.
    pub reveal_window_ms: u64,
    /// How often a member re-sends its current messages (lossy links).
    pub rebroadcast_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { view_timeout_ms: 10_000, commit_window_ms: 60_000, reveal_window_ms: 10_000, rebroadcast_ms: 2_000 }
    }
}

impl Timing {
    /// Nominal length of an epoch without faults: the "epoch timeout" liveness is measured in.
    /// The freeze leader first collects a quorum of witnesses, which on a lossy link may take one
    /// re-send period.
    pub fn epoch_timeout_ms(&self) -> u64 {
        2 * self.view_timeout_ms + self.commit_window_ms + self.reveal_window_ms + self.rebroadcast_ms
    }
    pub(super) fn view_timeout(&self, view: u32) -> u64 {
        self.view_timeout_ms * (1u64 << view.min(3))
    }
}

/// What a member needs to know to take part in one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochConfig {
    pub datanet: DatanetId,
    pub epoch: u64,
    /// Committee keys in manifest order.
    pub members: Vec<PeerKey>,
    /// Hash of the previous attestation (zero for the first epoch).
    pub prev_attestation: [u8; 32],
    /// Reports farther than this from a job's median are flagged (micro-units).
    pub tau: i64,
    pub timing: Timing,
    /// Reporters per job ([`assign::replication`] of the committee size and the manifest's cap).
    pub replication: usize,
    /// Certified priorities of every contribution frozen in an earlier epoch (from the ledger):
    /// they keep them forever ([`freeze`](crate::attribution::epoch::freeze)).
    pub known: BTreeMap<ContributionId, u64>,
}

impl EpochConfig {
    /// The configuration for `epoch` of the Datanet `manifest` describes, chained to `prev_attestation`.
    pub fn from_manifest(
        manifest: &crate::manifest::Manifest,
        epoch: u64,
        prev_attestation: [u8; 32],
        timing: Timing,
    ) -> Self {
        EpochConfig {
            datanet: manifest.id(),
            epoch,
            members: manifest.committee.members.clone(),
            prev_attestation,
            tau: DEFAULT_TAU,
            timing,
            replication: assign::replication(manifest.committee.members.len(), manifest.protocol.replication as usize),
            known: BTreeMap::new(),
        }
    }
}

/// Default flagging distance: 0.05 nats of weighted evaluation loss, in micro-units.
pub const DEFAULT_TAU: i64 = 50_000;
