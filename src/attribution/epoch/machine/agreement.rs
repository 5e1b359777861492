//! The two-round agreement per view: taking in proposals and votes, preparing, locking on a
//! prepare quorum, committing, and the commit certificate.

use super::{Action, EpochMachine, pidx};
use crate::attribution::epoch::certificate::Certificate;
use crate::attribution::epoch::messages::*;
use crate::codec::Signed;
use crate::manifest::quorum_for;

impl EpochMachine {
    pub(super) fn on_vote(&mut self, now: u64, v: Vote, out: &mut Vec<Action>) {
        let Some(i) = self.member_index(&v.signer) else {
            return out.extend(Self::reject(Some(v.signer), "vote from a key outside the committee"));
        };
        if !self.header_basics_ok(&v.header) {
            return out.extend(Self::reject(Some(v.signer), "vote for a header of another committee or chain"));
        }
        if v.verify().is_err() {
            return out.extend(Self::reject(Some(v.signer), "vote signature does not verify"));
        }
        let p = pidx(v.header.phase);
        let (kind, view, hh) = (v.kind, v.header.view, v.header.hash());
        if self.too_far_ahead(p, view) {
            return;
        }
        match self.rounds[p].first_votes.get(&(kind, view, i)) {
            Some(prev) if prev.header != v.header => {
                let e = Evidence::new(Statement::Vote(prev.clone()), Statement::Vote(v.clone()));
                self.add_evidence(e, out);
                return;
            }
            Some(_) => {}
            None => {
                self.rounds[p].first_votes.insert((kind, view, i), v.clone());
            }
        }
        let q = quorum_for(self.n());
        let n = self.n();
        let r = &mut self.rounds[p];
        let set = r.votes.entry((kind, view, hh)).or_default();
        if set.contains_key(&i) {
            return;
        }
        set.insert(i, v.signature);
        if set.len() != q {
            return;
        }
        let sigs: Vec<(usize, Sig)> = set.iter().map(|(i, s)| (*i, *s)).collect();
        let cert = Certificate::assemble(kind, v.header, n, &sigs);
        match kind {
            VoteKind::Prepare => self.on_prepared(now, v.header.phase, cert, out),
            VoteKind::Commit => self.on_committed(now, cert, out),
        }
    }

    fn on_prepared(&mut self, now: u64, phase: Phase, qc: Certificate, out: &mut Vec<Action>) {
        let p = pidx(phase);
        let view = qc.header.view;
        let Some(prop) = self.rounds[p].proposals.get(&view).cloned() else { return };
        if prop.body.header != qc.header || !self.rounds[p].valid.contains(&view) {
            return;
        }
        let locked = Locked { proposal: prop, prepared: qc };
        let r = &mut self.rounds[p];
        if r.highest.as_ref().is_none_or(|h| h.prepared.header.view < view) {
            r.highest = Some(locked.clone());
        }
        if r.view != view || r.my_votes.contains_key(&(VoteKind::Commit, view)) || r.cert.is_some() {
            return;
        }
        r.lock = Some(locked);
        self.vote(now, VoteKind::Commit, self.rounds[p].proposals[&view].body.header, out);
    }

    fn vote(&mut self, now: u64, kind: VoteKind, header: CertHeader, out: &mut Vec<Action>) {
        let Some(_) = self.me else { return };
        let p = pidx(header.phase);
        if self.rounds[p].my_votes.contains_key(&(kind, header.view)) {
            return;
        }
        let v = Vote::sign(kind, header, &self.key);
        self.rounds[p].my_votes.insert((kind, header.view), v.clone());
        self.persist(out);
        out.push(Action::Broadcast(EpochMessage::Vote(v.clone())));
        let mut inner = Vec::new();
        self.on_vote(now, v, &mut inner);
        out.extend(inner);
    }

    fn on_committed(&mut self, now: u64, cert: Certificate, out: &mut Vec<Action>) {
        let p = pidx(cert.header.phase);
        if self.rounds[p].cert.is_some() {
            return;
        }
        self.rounds[p].cert = Some(cert.clone());
        out.push(Action::Certified(cert.clone()));
        out.push(Action::Broadcast(EpochMessage::Certificate(cert.clone())));
        match cert.header.phase {
            Phase::Freeze => self.try_freeze(now, out),
            Phase::Score => self.try_attest(cert, out),
        }
    }

    pub(super) fn on_certificate(&mut self, now: u64, c: Certificate, out: &mut Vec<Action>) {
        if c.kind != VoteKind::Commit || !self.header_basics_ok(&c.header) {
            return out.extend(Self::reject(None, "certificate for another committee, chain or round"));
        }
        let p = pidx(c.header.phase);
        if self.rounds[p].cert.is_some() {
            return;
        }
        if let Err(e) = c.verify(&self.cfg.members) {
            return out.extend(Self::reject(None, e.to_string()));
        }
        self.on_committed(now, c, out);
    }

    pub(super) fn on_propose(&mut self, now: u64, p: Signed<Propose>, out: &mut Vec<Action>) {
        let h = p.body.header;
        let view = h.view;
        if self.member_index(&p.signer) != Some(self.leader(view)) {
            return out.extend(Self::reject(Some(p.signer), "proposal from a member that does not lead this view"));
        }
        if !self.header_basics_ok(&h) {
            return out.extend(Self::reject(Some(p.signer), "proposal header for another committee or chain"));
        }
        if p.verify().is_err() {
            return out.extend(Self::reject(Some(p.signer), "proposal signature does not verify"));
        }
        let ph = pidx(h.phase);
        if self.too_far_ahead(ph, view) {
            return;
        }
        if let Some(prev) = self.rounds[ph].proposals.get(&view) {
            if prev.body != p.body {
                let e =
                    Evidence::new(Statement::Propose(Box::new(prev.clone())), Statement::Propose(Box::new(p.clone())));
                self.add_evidence(e, out);
                // Keep it: a certificate may name it, and laggards need its items.
                if self.rounds[ph].alternates.len() < 8 {
                    self.rounds[ph].alternates.insert(h.hash(), p);
                }
                if h.phase == Phase::Freeze {
                    self.try_freeze(now, out);
                }
            }
            return;
        }
        self.rounds[ph].proposals.insert(view, p);
        if h.phase == Phase::Freeze {
            self.try_freeze(now, out);
        }
        self.consider_proposal(now, h.phase, view, out);
    }

    /// Validates the stored proposal of `view` (if not yet) and prepares it when allowed.
    pub(super) fn consider_proposal(&mut self, now: u64, phase: Phase, view: u32, out: &mut Vec<Action>) {
        let ph = pidx(phase);
        let Some(p) = self.rounds[ph].proposals.get(&view).cloned() else { return };
        if !self.rounds[ph].valid.contains(&view) {
            match self.validate(&p.body) {
                Ok(Some(outcome)) => {
                    self.outcomes.insert(view, outcome);
                }
                Ok(None) => {}
                Err(Some(reason)) => return out.extend(Self::reject(Some(p.signer), reason)),
                Err(None) => return, // not checkable yet (no input certificate or plan)
            }
            self.rounds[ph].valid.insert(view);
            // A prepare quorum may already be waiting for this proposal.
            let hh = p.body.header.hash();
            let q = quorum_for(self.n());
            if let Some(set) = self.rounds[ph].votes.get(&(VoteKind::Prepare, view, hh)) {
                if set.len() >= q {
                    let sigs: Vec<(usize, Sig)> = set.iter().map(|(i, s)| (*i, *s)).collect();
                    let qc = Certificate::assemble(VoteKind::Prepare, p.body.header, self.n(), &sigs);
                    self.on_prepared(now, phase, qc, out);
                }
            }
            if let Some(c) = self.rounds[ph].cert.clone() {
                if phase == Phase::Score && c.header == p.body.header {
                    self.try_attest(c, out);
                }
            }
        }
        let r = &self.rounds[ph];
        if r.view != view || r.cert.is_some() || r.my_votes.contains_key(&(VoteKind::Prepare, view)) {
            return;
        }
        if phase == Phase::Score && r.deadline.is_none() {
            // A valid score proposal opens the score round early (the leader saw every reveal).
            self.rounds[ph].deadline = Some(now + self.cfg.timing.view_timeout(view));
        }
        let r = &self.rounds[ph];
        let allowed = match &r.lock {
            None => true,
            Some(l) => {
                l.proposal.body.header.payload_key() == p.body.header.payload_key()
                    || p.body.justify.as_ref().is_some_and(|j| j.header.view > l.prepared.header.view)
            }
        };
        if allowed {
            self.vote(now, VoteKind::Prepare, p.body.header, out);
        }
    }
}
