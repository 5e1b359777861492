//! What the commit certificates yield: the frozen input set, the attestation (formed here or
//! received and verified), and the standing each reporter lost in it.

use super::{Action, EpochMachine};
use crate::attribution::epoch::certificate::{self, Attestation, Certificate};
use crate::attribution::epoch::freeze;
use crate::attribution::epoch::messages::*;
use crate::ids::PeerKey;
use std::collections::BTreeMap;

/// Flagged reports per reporter in an attestation's report set (standing lost), recomputed from
/// the attestation alone: what a member that was not there (or catches up later) records.
pub fn standing_lost(a: &Attestation, tau: i64) -> Vec<(PeerKey, u32)> {
    let jobs = a.reports.iter().map(|r| r.job + 1).max().unwrap_or(0);
    let table = crate::attribution::median_table(jobs, &a.reports, 1, tau);
    let mut standing: BTreeMap<PeerKey, u32> = BTreeMap::new();
    for (k, _) in table.flagged {
        *standing.entry(k).or_default() += 1;
    }
    standing.into_iter().collect()
}

impl EpochMachine {
    /// Freezes once both the freeze certificate and its proposal (the item list) are here.
    pub(super) fn try_freeze(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.input.is_some() {
            return;
        }
        let Some(cert) = self.rounds[0].cert.clone() else { return };
        let r = &self.rounds[0];
        let Some(prop) = r
            .proposals
            .get(&cert.header.view)
            .filter(|p| p.body.header == cert.header)
            .or_else(|| r.alternates.get(&cert.header.hash()))
        else {
            return;
        };
        let Payload::Freeze { items, deferred, .. } = &prop.body.payload else { return };
        if prop.body.header != cert.header {
            return;
        }
        self.input_items = items.clone();
        self.deferred = *deferred;
        self.input = Some(cert);
        self.persist(out);
        self.on_frozen(now, out);
    }

    pub(super) fn try_attest(&mut self, cert: Certificate, out: &mut Vec<Action>) {
        if self.attestation.is_some() {
            return;
        }
        let Some(input) = self.input.clone() else { return };
        let Some(outcome) = self.outcomes.get(&cert.header.view) else { return };
        if outcome.report_set_root != cert.header.report_set_root || outcome.credit_root != cert.header.credit_root {
            return;
        }
        let att = Attestation {
            input,
            score: cert,
            inputs: self.input_items.clone(),
            deferred: self.deferred,
            reports: outcome.reports.clone(),
            leaves: outcome.scores.leaves.clone(),
            sealed: self.plan.as_ref().and_then(|p| p.sealed.clone()),
        };
        let standing_lost = outcome.standing_lost.clone();
        self.attestation = Some(att.clone());
        self.persist(out);
        out.push(Action::Attested { attestation: Box::new(att.clone()), standing_lost });
        out.push(Action::Broadcast(EpochMessage::Attestation(Box::new(att))));
    }

    pub(super) fn on_attestation(&mut self, _now: u64, a: Attestation, out: &mut Vec<Action>) {
        if self.attestation.is_some() {
            return;
        }
        let ok = a.input.kind == VoteKind::Commit
            && a.score.kind == VoteKind::Commit
            && a.input.header.phase == Phase::Freeze
            && a.score.header.phase == Phase::Score
            && self.header_basics_ok(&a.input.header)
            && self.header_basics_ok(&a.score.header)
            && a.input.header.input_root == a.score.header.input_root
            && freeze::input_root(&a.inputs, a.deferred) == a.input.header.input_root
            && certificate::report_set_root(&a.reports, a.sealed.as_ref()) == a.score.header.report_set_root
            && crate::attribution::credit_root(&a.leaves) == a.score.header.credit_root
            && a.input.verify(&self.cfg.members).is_ok()
            && a.score.verify(&self.cfg.members).is_ok();
        if !ok {
            return out.extend(Self::reject(None, "attestation does not verify"));
        }
        if self.input.is_none() {
            self.input = Some(a.input.clone());
            self.input_items = a.inputs.clone();
            self.deferred = a.deferred;
            self.rounds[0].cert = Some(a.input.clone());
        }
        self.rounds[1].cert = Some(a.score.clone());
        let standing_lost = standing_lost(&a, self.cfg.tau);
        self.attestation = Some(a.clone());
        self.persist(out);
        out.push(Action::Certified(a.score.clone()));
        out.push(Action::Attested { attestation: Box::new(a), standing_lost });
    }
}
