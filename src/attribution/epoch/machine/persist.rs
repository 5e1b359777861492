//! The durable part of a member's state: the [`Snapshot`] it persists before the votes and
//! proposals it protects, and restoring a member from one after a crash.

use super::{Action, EpochConfig, EpochMachine, PHASES, pidx};
use crate::attribution::epoch::certificate::{Attestation, Certificate};
use crate::attribution::epoch::messages::*;
use crate::codec::{Canonical, Signed};
use crate::ids::ContributionId;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// The durable part of a member's state: enough to never vote twice after a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every vote this member signed.
    pub votes: Vec<Vote>,
    /// (phase, lock).
    pub locks: Vec<(Phase, Locked)>,
    /// (phase, current view).
    pub views: Vec<(Phase, u32)>,
    pub input: Option<Certificate>,
    pub input_items: Vec<(ContributionId, u64)>,
    pub deferred: u32,
    /// This member's measured utilities (job, utility); commits and reveals are re-derived.
    pub measured: Vec<(u32, i64)>,
    pub attestation: Option<Attestation>,
    pub evidence: Vec<Evidence>,
    /// Every proposal this member signed as leader, persisted before it is sent: a leader that
    /// restarts mid-view re-sends the same proposal instead of signing a different one for the
    /// same (phase, view), which would be equivocation.
    pub proposals: Vec<Signed<Propose>>,
}

impl Canonical for Snapshot {
    const TAG: &'static [u8] = b"datanet/epoch/snapshot/v2";
    const MAX_BYTES: usize = 64 * 1024 * 1024;
}

impl EpochMachine {
    /// Resumes from a persisted snapshot (after a crash); call [`EpochMachine::start`] next.
    pub fn restore(
        cfg: EpochConfig,
        key: SigningKey,
        held: impl IntoIterator<Item = (ContributionId, u64)>,
        snap: Snapshot,
    ) -> Self {
        let mut m = Self::new(cfg, key, held);
        for v in snap.votes {
            let r = &mut m.rounds[pidx(v.header.phase)];
            r.my_votes.insert((v.kind, v.header.view), v);
        }
        for (p, l) in snap.locks {
            m.rounds[pidx(p)].highest = Some(l.clone());
            m.rounds[pidx(p)].lock = Some(l);
        }
        for (p, v) in snap.views {
            m.rounds[pidx(p)].view = v;
        }
        m.input_items = snap.input_items;
        m.deferred = snap.deferred;
        m.input = snap.input;
        for (j, u) in snap.measured {
            m.measured.insert(j, u);
        }
        for e in snap.evidence {
            m.evidence.insert(e.id(), e.clone());
            m.offenders.entry(e.offender()).or_insert(e.id());
        }
        m.attestation = snap.attestation;
        for p in snap.proposals {
            let (ph, view) = (pidx(p.body.header.phase), p.body.header.view);
            m.rounds[ph].proposed.insert(view);
            m.rounds[ph].proposals.entry(view).or_insert(p);
        }
        m
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            votes: self.rounds.iter().flat_map(|r| r.my_votes.values().cloned()).collect(),
            locks: PHASES.iter().filter_map(|&p| self.rounds[pidx(p)].lock.clone().map(|l| (p, l))).collect(),
            views: PHASES.iter().map(|&p| (p, self.rounds[pidx(p)].view)).collect(),
            input: self.input.clone(),
            input_items: self.input_items.clone(),
            deferred: self.deferred,
            measured: self.measured.iter().map(|(j, u)| (*j, *u)).collect(),
            attestation: self.attestation.clone(),
            evidence: self.evidence.values().cloned().collect(),
            proposals: self.my_proposals(),
        }
    }

    /// The proposals this member signed (views it proposed in), in phase and view order.
    fn my_proposals(&self) -> Vec<Signed<Propose>> {
        let me = self.key();
        self.rounds
            .iter()
            .flat_map(|r| r.proposed.iter().filter_map(|v| r.proposals.get(v)).filter(|p| p.signer == me).cloned())
            .collect()
    }

    pub(super) fn persist(&self, out: &mut Vec<Action>) {
        out.push(Action::Persist(Box::new(self.snapshot())));
    }
}
