//! The measured jobs between the phases: the plan, training answers, commits and their window,
//! and reveals.

use super::{Action, EpochMachine};
use crate::attribution::EpochPlan;
use crate::attribution::epoch::assign;
use crate::attribution::epoch::messages::*;
use crate::codec::Signed;

impl EpochMachine {
    /// The plan for the frozen input set (answer to [`Action::NeedPlan`]).
    pub fn set_plan(&mut self, now: u64, plan: EpochPlan) -> Vec<Action> {
        let mut out = Vec::new();
        if self.plan.is_some() || self.seed.is_none() {
            return out;
        }
        let jobs = plan.job_count();
        self.plan = Some(plan);
        if let Some(me) = self.me {
            let seed = self.seed.expect("seed set with the input certificate");
            for job in assign::jobs_of(&seed, jobs, &self.cfg.members, self.cfg.replication, me) {
                if let Some(&u) = self.measured.get(&job) {
                    self.make_commit(now, job, u, &mut out);
                } else {
                    out.push(Action::Train { job });
                }
            }
        }
        // Proposals that arrived before the plan can be checked now.
        let views: Vec<u32> = self.rounds[1].proposals.keys().copied().collect();
        for v in views {
            self.consider_proposal(now, Phase::Score, v, &mut out);
        }
        self.maybe_propose_score_early(now, &mut out);
        self.maybe_close_commits(now);
        out
    }

    /// The measured utility of one of this member's jobs (answer to [`Action::Train`]).
    pub fn on_utility(&mut self, now: u64, job: u32, utility: i64) -> Vec<Action> {
        let mut out = Vec::new();
        let (Some(me), Some(seed)) = (self.me, self.seed) else { return out };
        if self.measured.contains_key(&job)
            || !assign::is_assigned(&seed, job, &self.cfg.members, self.cfg.replication, me)
        {
            return out;
        }
        self.measured.insert(job, utility);
        self.persist(&mut out);
        self.make_commit(now, job, utility, &mut out);
        out
    }

    fn salt(&self, job: u32) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("datanet/epoch/salt/v1");
        h.update(&self.key.to_bytes());
        h.update(self.cfg.datanet.as_bytes());
        h.update(&self.cfg.epoch.to_le_bytes());
        h.update(&job.to_le_bytes());
        *h.finalize().as_bytes()
    }

    pub(super) fn my_reveal(&self, job: u32) -> Option<Signed<Reveal>> {
        let u = *self.measured.get(&job)?;
        let body = Reveal { datanet: self.cfg.datanet, epoch: self.cfg.epoch, job, utility: u, salt: self.salt(job) };
        Some(Signed::sign(body, &self.key))
    }

    fn make_commit(&mut self, now: u64, job: u32, utility: i64, out: &mut Vec<Action>) {
        let salt = self.salt(job);
        let digest = commit_digest(&self.key(), &self.cfg.datanet, self.cfg.epoch, job, utility, &salt);
        let c = Signed::sign(Commit { datanet: self.cfg.datanet, epoch: self.cfg.epoch, job, digest }, &self.key);
        self.my_commits.insert(job, c.clone());
        out.extend(self.handle(now, EpochMessage::Commit(c.clone())));
        out.push(Action::Broadcast(EpochMessage::Commit(c)));
        if self.revealed {
            if let Some(r) = self.my_reveal(job) {
                out.extend(self.handle(now, EpochMessage::Reveal(r.clone())));
                out.push(Action::Broadcast(EpochMessage::Reveal(r)));
            }
        }
    }

    pub(super) fn on_frozen(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(input) = &self.input else { return };
        if self.seed.is_some() {
            return;
        }
        let seed = assign::epoch_seed(&input.header);
        self.seed = Some(seed);
        self.commit_deadline = Some(now + self.cfg.timing.commit_window_ms);
        self.reveal_deadline = Some(now + self.cfg.timing.commit_window_ms + self.cfg.timing.reveal_window_ms);
        out.push(Action::NeedPlan { seed, items: self.input_items.clone() });
    }

    pub(super) fn on_commit(&mut self, now: u64, c: Signed<Commit>, out: &mut Vec<Action>) {
        let Some(i) = self.member_index(&c.signer) else {
            return out.extend(Self::reject(Some(c.signer), "commit from a key outside the committee"));
        };
        if c.verify().is_err() {
            return out.extend(Self::reject(Some(c.signer), "commit signature does not verify"));
        }
        if let Some(seed) = &self.seed {
            if !assign::is_assigned(seed, c.body.job, &self.cfg.members, self.cfg.replication, i) {
                return out.extend(Self::reject(Some(c.signer), "commit for a job the signer is not assigned"));
            }
        }
        match self.commits.get(&(c.body.job, i)) {
            Some((prev, _)) if prev.body != c.body => {
                let e = Evidence::new(Statement::Commit(prev.clone()), Statement::Commit(c));
                self.add_evidence(e, out);
            }
            Some(_) => {}
            None => {
                let in_time = self.commit_deadline.is_none_or(|d| now <= d);
                self.commits.insert((c.body.job, i), (c, in_time));
                self.maybe_close_commits(now);
            }
        }
    }

    /// The commit window ends as soon as every assigned reporter of every job has committed in
    /// time: nothing is left to hide, so waiting out the window only idles. Revealing then is safe,
    /// every utility being fixed by its commit.
    fn maybe_close_commits(&mut self, now: u64) {
        let (Some(plan), Some(seed), false) = (&self.plan, &self.seed, self.revealed) else { return };
        if self.commit_deadline.is_some_and(|d| d <= now) {
            return;
        }
        let r = self.cfg.replication;
        if self.commits.len() < plan.job_count() as usize * r {
            return;
        }
        let all = (0..plan.job_count()).all(|j| {
            assign::assignees(seed, j, &self.cfg.members, r)
                .iter()
                .all(|i| self.commits.get(&(j, *i)).is_some_and(|c| c.1))
        });
        if all {
            self.commit_deadline = Some(now);
            self.reveal_deadline = Some(now + self.cfg.timing.reveal_window_ms);
        }
    }

    pub(super) fn on_reveal(&mut self, now: u64, r: Signed<Reveal>, out: &mut Vec<Action>) {
        let Some(i) = self.member_index(&r.signer) else {
            return out.extend(Self::reject(Some(r.signer), "reveal from a key outside the committee"));
        };
        if self.reveals.contains_key(&(r.body.job, i)) {
            return;
        }
        let Some((c, _)) = self.commits.get(&(r.body.job, i)) else {
            return; // a reveal without its commit is dropped (the sender re-sends both)
        };
        let d = commit_digest(&r.signer, &self.cfg.datanet, self.cfg.epoch, r.body.job, r.body.utility, &r.body.salt);
        if d != c.body.digest {
            return out.extend(Self::reject(Some(r.signer), "reveal does not match its commit"));
        }
        if r.verify().is_err() {
            return out.extend(Self::reject(Some(r.signer), "reveal signature does not verify"));
        }
        self.reveals.insert((r.body.job, i), r);
        self.maybe_propose_score_early(now, out);
    }
}
