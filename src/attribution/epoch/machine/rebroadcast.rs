//! Re-sending a member's current messages over lossy links, and catching laggards up.

use super::{Action, EpochMachine};
use crate::attribution::epoch::messages::*;

impl EpochMachine {
    pub(super) fn rebroadcast(&mut self, out: &mut Vec<Action>) {
        let mut msgs = Vec::new();
        if let Some(a) = &self.attestation {
            if std::mem::take(&mut self.catchup_due) {
                msgs.push(EpochMessage::Attestation(Box::new(a.clone())));
                for id in self.offenders.values() {
                    msgs.push(EpochMessage::Evidence(Box::new(self.evidence[id].clone())));
                }
            }
            out.extend(msgs.into_iter().map(Action::Broadcast));
            return;
        }
        for id in self.offenders.values() {
            msgs.push(EpochMessage::Evidence(Box::new(self.evidence[id].clone())));
        }
        if let Some(c) = self.input.as_ref().filter(|_| std::mem::take(&mut self.freeze_catchup_due)) {
            msgs.push(EpochMessage::Certificate(c.clone()));
            // Laggards need the certified item list, not only its root.
            let r = &self.rounds[0];
            let certified = r.proposals.get(&c.header.view).filter(|p| p.body.header == c.header);
            if let Some(p) = certified.or_else(|| r.alternates.get(&c.header.hash())) {
                msgs.push(EpochMessage::Propose(Box::new(p.clone())));
            }
        }
        if let (None, Some(c)) = (&self.input, &self.rounds[0].cert) {
            // Certified but the item list never arrived: asking is re-sending the certificate.
            msgs.push(EpochMessage::Certificate(c.clone()));
        }
        if let (None, Some(w)) = (&self.input, &self.my_witness) {
            msgs.push(EpochMessage::Witness(Box::new(w.clone())));
        }
        for r in &self.rounds {
            if r.cert.is_some() {
                continue;
            }
            if let Some(nv) = &r.my_new_view {
                msgs.push(EpochMessage::NewView(nv.clone()));
            }
            if let Some(p) = r.proposals.get(&r.view) {
                if self.me.is_some_and(|me| me == self.leader(r.view)) {
                    msgs.push(EpochMessage::Propose(Box::new(p.clone())));
                }
            }
            for k in [VoteKind::Prepare, VoteKind::Commit] {
                if let Some(v) = r.my_votes.get(&(k, r.view)) {
                    msgs.push(EpochMessage::Vote(v.clone()));
                }
            }
        }
        for (job, c) in &self.my_commits {
            msgs.push(EpochMessage::Commit(c.clone()));
            if self.revealed {
                if let Some(r) = self.my_reveal(*job) {
                    msgs.push(EpochMessage::Reveal(r));
                }
            }
        }
        out.extend(msgs.into_iter().map(Action::Broadcast));
    }
}
