//! Evidence of equivocation: keeping a bounded amount per offender, storing and spreading it, and
//! checking evidence that arrives.

use super::{Action, EVIDENCE_PER_OFFENDER_MAX, EpochMachine};
use crate::attribution::epoch::messages::*;

impl EpochMachine {
    pub(super) fn add_evidence(&mut self, e: Evidence, out: &mut Vec<Action>) {
        let id = e.id();
        if self.evidence.contains_key(&id)
            || self.evidence.values().filter(|x| x.offender() == e.offender()).count() >= EVIDENCE_PER_OFFENDER_MAX
        {
            return;
        }
        let first_for_offender = !self.offenders.contains_key(&e.offender());
        self.offenders.entry(e.offender()).or_insert(id);
        self.evidence.insert(id, e.clone());
        self.persist(out);
        out.push(Action::StoreEvidence(Box::new(e.clone())));
        if first_for_offender {
            out.push(Action::Broadcast(EpochMessage::Evidence(Box::new(e))));
        }
    }

    pub(super) fn on_evidence(&mut self, e: Evidence, out: &mut Vec<Action>) {
        match e.verify() {
            Ok(k) if self.member_index(&k).is_some() => self.add_evidence(e, out),
            Ok(_) => out.extend(Self::reject(None, "evidence against a key outside the committee")),
            Err(err) => out.extend(Self::reject(None, err.to_string())),
        }
    }
}
