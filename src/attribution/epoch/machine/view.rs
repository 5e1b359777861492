//! View change: taking in `NewView` messages (and the locks they carry), following f + 1 members
//! to a later view, and entering a view.

use super::{Action, EpochMachine, pidx};
use crate::attribution::epoch::messages::*;
use crate::codec::Signed;
use std::collections::BTreeMap;

impl EpochMachine {
    pub(super) fn on_new_view(&mut self, now: u64, nv: Signed<NewView>, out: &mut Vec<Action>) {
        let Some(i) = self.member_index(&nv.signer) else {
            return out.extend(Self::reject(Some(nv.signer), "new-view from a key outside the committee"));
        };
        if nv.verify().is_err() {
            return out.extend(Self::reject(Some(nv.signer), "new-view signature does not verify"));
        }
        let ph = pidx(nv.body.phase);
        let view = nv.body.view;
        if self.too_far_ahead(ph, view) || self.rounds[ph].new_views.get(&view).is_some_and(|m| m.contains_key(&i)) {
            return;
        }
        if let Some(l) = &nv.body.lock {
            let ok = l.prepared.kind == VoteKind::Prepare
                && l.prepared.header == l.proposal.body.header
                && l.prepared.header.phase == nv.body.phase
                && l.prepared.header.view < view
                && self.member_index(&l.proposal.signer) == Some(self.leader(l.prepared.header.view))
                && l.proposal.verify().is_ok()
                && l.prepared.verify(&self.cfg.members).is_ok();
            if !ok {
                return out.extend(Self::reject(Some(nv.signer), "new-view lock does not verify"));
            }
            let r = &mut self.rounds[ph];
            if r.highest.as_ref().is_none_or(|h| h.prepared.header.view < l.prepared.header.view) {
                r.highest = Some((**l).clone());
            }
        }
        self.rounds[ph].new_views.entry(view).or_default().insert(i, nv.body.lock.clone());
        // f + 1 members moved past our view: at least one honest did; follow to the (f+1)-th highest.
        let cur = self.rounds[ph].view;
        if view > cur && self.rounds[ph].cert.is_none() {
            let mut newest: BTreeMap<usize, u32> = BTreeMap::new();
            for (v, m) in self.rounds[ph].new_views.range(cur + 1..) {
                for k in m.keys() {
                    newest.insert(*k, *v);
                }
            }
            let mut views: Vec<u32> = newest.into_values().collect();
            views.sort_unstable_by(|a, b| b.cmp(a));
            if views.len() > self.f() {
                let target = views[self.f()];
                self.enter_view(now, nv.body.phase, target, out);
            }
        }
        self.try_propose(now, nv.body.phase, out);
    }

    pub(super) fn enter_view(&mut self, now: u64, phase: Phase, view: u32, out: &mut Vec<Action>) {
        let ph = pidx(phase);
        if view <= self.rounds[ph].view && self.rounds[ph].my_new_view.is_some() {
            return;
        }
        self.rounds[ph].view = view;
        self.rounds[ph].deadline = Some(now + self.cfg.timing.view_timeout(view));
        if self.me.is_some() {
            let body = NewView {
                datanet: self.cfg.datanet,
                epoch: self.cfg.epoch,
                phase,
                view,
                lock: self.rounds[ph].lock.clone().map(Box::new),
            };
            let nv = Signed::sign(body, &self.key);
            self.rounds[ph].my_new_view = Some(nv.clone());
            self.persist(out);
            out.push(Action::Broadcast(EpochMessage::NewView(nv.clone())));
            self.on_new_view(now, nv, out);
        }
        self.try_propose(now, phase, out);
        self.consider_proposal(now, phase, view, out);
    }
}
