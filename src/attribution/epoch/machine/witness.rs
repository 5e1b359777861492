//! Freeze inputs: the contributions a member holds, its signed witness of them, and checking and
//! collecting the other members' witnesses.

use super::{Action, EpochMachine};
use crate::attribution::epoch::freeze::{self, witness_cap};
use crate::attribution::epoch::messages::*;
use crate::codec::Signed;
use crate::ids::ContributionId;

impl EpochMachine {
    /// Adds inputs this member now holds (acknowledged contributions, with the time it first saw
    /// each; an item already held keeps its first time). Before the freeze a changed witness is
    /// signed again; it goes out with the next re-send.
    pub fn add_inputs(&mut self, items: impl IntoIterator<Item = (ContributionId, u64)>) {
        let before = self.held.len();
        for (c, t) in items {
            self.held.entry(c).or_insert(t);
        }
        if self.held.len() != before && self.started && self.input.is_none() {
            self.sign_witness();
        }
    }

    /// Signs this member's witness of its held, not yet prioritized contributions.
    pub(super) fn sign_witness(&mut self) -> Option<Signed<Witness>> {
        let me = self.me?;
        let (seen, pending) = freeze::my_witness_items(&self.held, &self.cfg.known, witness_cap(self.n()));
        if self.my_witness.as_ref().is_some_and(|w| w.body.seen == seen && w.body.pending == pending) {
            return None;
        }
        let w = Signed::sign(Witness { datanet: self.cfg.datanet, epoch: self.cfg.epoch, pending, seen }, &self.key);
        self.my_witness = Some(w.clone());
        self.witnesses.insert(me, w.clone());
        Some(w)
    }

    /// Checks a witness: a member's, for this epoch, sorted, within the cap, signature valid.
    pub(super) fn witness_ok(&self, w: &Signed<Witness>) -> Result<usize, String> {
        let Some(i) = self.member_index(&w.signer) else {
            return Err("witness from a key outside the committee".into());
        };
        let b = &w.body;
        if b.datanet != self.cfg.datanet || b.epoch != self.cfg.epoch {
            return Err("witness for another epoch".into());
        }
        if b.seen.len() > witness_cap(self.n())
            || (b.pending as usize) < b.seen.len()
            || b.seen.windows(2).any(|p| p[0].0 >= p[1].0)
        {
            return Err("witness items not sorted, repeated or too many".into());
        }
        if w.verify().is_err() {
            return Err("witness signature does not verify".into());
        }
        Ok(i)
    }

    pub(super) fn on_witness(&mut self, now: u64, w: Signed<Witness>, out: &mut Vec<Action>) {
        if self.input.is_some() {
            return;
        }
        match self.witness_ok(&w) {
            Ok(i) => {
                if self.witnesses.get(&i).is_some_and(|old| old == &w) {
                    return;
                }
                self.witnesses.insert(i, w);
                self.try_propose(now, Phase::Freeze, out);
            }
            Err(reason) => out.extend(Self::reject(Some(w.signer), reason)),
        }
    }
}
