//! The leader's side: building and signing a proposal for its view (the witnesses' median for
//! the freeze, the in-time reports for the score), and opening the score round.

use super::{Action, EpochMachine, pidx};
use crate::attribution::Report;
use crate::attribution::epoch::messages::*;
use crate::attribution::epoch::scoring::score_reports;
use crate::attribution::epoch::{assign, freeze};
use crate::codec::Signed;
use crate::ids::MerkleRoot;
use crate::manifest::quorum_for;

impl EpochMachine {
    fn base_header(&self, phase: Phase, view: u32) -> CertHeader {
        CertHeader {
            datanet: self.cfg.datanet,
            epoch: self.cfg.epoch,
            phase,
            view,
            committee_root: self.committee_root,
            input_root: self.input.as_ref().map(|c| c.header.input_root).unwrap_or_default(),
            report_set_root: MerkleRoot::default(),
            credit_root: MerkleRoot::default(),
            prev_attestation: self.cfg.prev_attestation,
        }
    }

    pub(super) fn try_propose(&mut self, now: u64, phase: Phase, out: &mut Vec<Action>) {
        let ph = pidx(phase);
        let view = self.rounds[ph].view;
        if self.me != Some(self.leader(view))
            || self.rounds[ph].proposed.contains(&view)
            || self.rounds[ph].cert.is_some()
        {
            return;
        }
        // After view 0 the leader needs a quorum of NewView messages and re-proposes the payload of
        // the newest prepare certificate among them.
        let mut justify: Option<Locked> = None;
        if view > 0 {
            let nv = self.rounds[ph].new_views.get(&view).map(|m| m.len()).unwrap_or(0);
            if nv < quorum_for(self.n()) {
                return;
            }
            let mut best = self.rounds[ph].highest.clone();
            for l in self.rounds[ph].new_views[&view].values().flatten() {
                if best.as_ref().is_none_or(|b| b.prepared.header.view < l.prepared.header.view) {
                    best = Some((**l).clone());
                }
            }
            justify = best;
        }
        let body = if let Some(l) = justify {
            let header = CertHeader { view, ..l.proposal.body.header };
            Propose { header, payload: l.proposal.body.payload.clone(), justify: Some(l.prepared.clone()) }
        } else {
            match phase {
                Phase::Freeze => {
                    // A quorum of witnesses first: the priorities are their median.
                    if self.witnesses.len() < quorum_for(self.n()) {
                        return;
                    }
                    let witnesses: Vec<Signed<Witness>> = self.witnesses.values().cloned().collect();
                    let refs: Vec<&Witness> = witnesses.iter().map(|w| &w.body).collect();
                    let frozen = freeze::freeze(&self.cfg.known, &refs);
                    let mut header = self.base_header(Phase::Freeze, view);
                    header.input_root = freeze::input_root(&frozen.items, frozen.deferred);
                    let payload = Payload::Freeze { items: frozen.items, deferred: frozen.deferred, witnesses };
                    Propose { header, payload, justify: None }
                }
                Phase::Score => {
                    let (Some(plan), Some(_)) = (&self.plan, &self.input) else { return };
                    let mut reports = Vec::new();
                    let mut plain = Vec::new();
                    for ((job, i), rv) in &self.reveals {
                        let Some((c, in_time)) = self.commits.get(&(*job, *i)) else { continue };
                        if !*in_time {
                            continue;
                        }
                        plain.push(Report { job: *job, reporter: c.signer, utility: rv.body.utility });
                        reports.push(SignedReport { commit: c.clone(), reveal: rv.clone() });
                    }
                    reports.sort_by_key(|r| (r.commit.body.job, r.commit.signer));
                    reports.truncate(REPORTS_MAX);
                    plain.truncate(REPORTS_MAX);
                    let Ok(outcome) =
                        score_reports(plan, &plain, assign::min_reports(self.cfg.replication), self.cfg.tau)
                    else {
                        return;
                    };
                    let mut header = self.base_header(Phase::Score, view);
                    header.report_set_root = outcome.report_set_root;
                    header.credit_root = outcome.credit_root;
                    Propose { header, payload: Payload::Score { reports }, justify: None }
                }
            }
        };
        self.rounds[ph].proposed.insert(view);
        let signed = Signed::sign(body, &self.key);
        // Durable before it leaves: after a restart this member re-sends it, never another one.
        let mut snap = self.snapshot();
        snap.proposals.push(signed.clone());
        out.push(Action::Persist(Box::new(snap)));
        out.push(Action::Broadcast(EpochMessage::Propose(Box::new(signed.clone()))));
        self.on_propose(now, signed, out);
    }

    /// The score leader may propose before its reveal deadline once every assigned reporter revealed.
    pub(super) fn maybe_propose_score_early(&mut self, now: u64, out: &mut Vec<Action>) {
        let (Some(plan), Some(seed)) = (&self.plan, &self.seed) else { return };
        if self.rounds[1].deadline.is_some() || !self.revealed || self.me != Some(self.leader(self.rounds[1].view)) {
            return;
        }
        let jobs = plan.job_count();
        let r = self.cfg.replication as u32;
        if (self.reveals.len() as u32) < jobs * r {
            return;
        }
        let complete = (0..jobs).all(|j| {
            assign::assignees(seed, j, &self.cfg.members, self.cfg.replication)
                .iter()
                .all(|i| self.reveals.contains_key(&(j, *i)) && self.commits.get(&(j, *i)).is_some_and(|c| c.1))
        });
        if complete {
            self.open_score_round(now, out);
        }
    }

    pub(super) fn open_score_round(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.rounds[1].deadline.is_some() {
            return;
        }
        let v = self.rounds[1].view;
        self.rounds[1].deadline = Some(now + self.cfg.timing.view_timeout(v));
        self.try_propose(now, Phase::Score, out);
        let views: Vec<u32> = self.rounds[1].proposals.keys().copied().collect();
        for v in views {
            self.consider_proposal(now, Phase::Score, v, out);
        }
    }
}
