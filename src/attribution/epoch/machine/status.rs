//! What the driver and operators read of a member's state: accessors, the status summary and a
//! debug dump of one phase's agreement.

use super::{EpochConfig, EpochMachine, pidx};
use crate::attribution::epoch::certificate::{Attestation, Certificate};
use crate::attribution::epoch::messages::{Evidence, Phase};
use crate::ids::PeerKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

impl EpochMachine {
    /// This member's key.
    pub fn key(&self) -> PeerKey {
        PeerKey(self.key.verifying_key().to_bytes())
    }
    /// The configuration.
    pub fn config(&self) -> &EpochConfig {
        &self.cfg
    }
    /// The attestation, once the epoch is certified.
    pub fn attestation(&self) -> Option<&Attestation> {
        self.attestation.as_ref()
    }
    /// The freeze certificate, once formed.
    pub fn input_certificate(&self) -> Option<&Certificate> {
        self.input.as_ref()
    }
    /// All evidence this member holds.
    pub fn evidence(&self) -> impl Iterator<Item = &Evidence> {
        self.evidence.values()
    }
    /// Keys this member holds evidence against.
    pub fn offenders(&self) -> BTreeSet<PeerKey> {
        self.offenders.keys().copied().collect()
    }
    /// Current view of a phase.
    pub fn view(&self, phase: Phase) -> u32 {
        self.rounds[pidx(phase)].view
    }
    /// A short status line's worth of state.
    pub fn status(&self) -> EpochStatus {
        EpochStatus {
            epoch: self.cfg.epoch,
            stage: if self.attestation.is_some() {
                "attested"
            } else if self.rounds[1].deadline.is_some() {
                "scoring"
            } else if self.input.is_some() {
                "measuring"
            } else {
                "freezing"
            }
            .to_string(),
            freeze_view: self.rounds[0].view,
            score_view: self.rounds[1].view,
            measured: self.measured.len() as u32,
            reveals: self.reveals.len() as u32,
            evidence: self.evidence.len() as u32,
        }
    }
    /// A one-line dump of a phase's agreement state, for debugging simulator seeds.
    pub fn debug_round(&self, phase: Phase) -> String {
        let r = &self.rounds[pidx(phase)];
        let votes: Vec<String> =
            r.votes.iter().map(|((k, v, h), s)| format!("{k:?}@{v}:{}={}", hex::encode(&h[..2]), s.len())).collect();
        format!(
            "view {} deadline {:?} proposals {:?} valid {:?} lock {:?} my {:?} votes [{}] nv {:?} plan {} leader_me {} witnesses {:?}",
            r.view,
            r.deadline,
            r.proposals.iter().map(|(v, p)| (*v, hex::encode(&p.body.header.hash()[..2]))).collect::<Vec<_>>(),
            r.valid,
            r.lock.as_ref().map(|l| (l.prepared.header.view, hex::encode(&l.prepared.header.hash()[..2]))),
            r.my_votes.keys().collect::<Vec<_>>(),
            votes.join(" "),
            r.new_views.iter().map(|(v, m)| (*v, m.len())).collect::<Vec<_>>(),
            self.plan.is_some(),
            self.me.map(|m| m == self.leader(r.view)).unwrap_or(false),
            self.witnesses.keys().collect::<Vec<_>>(),
        )
    }
}

/// A summary for `datanet epoch status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStatus {
    pub epoch: u64,
    pub stage: String,
    pub freeze_view: u32,
    pub score_view: u32,
    pub measured: u32,
    pub reveals: u32,
    pub evidence: u32,
}
