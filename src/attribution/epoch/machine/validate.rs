//! Checking a proposal: its justification, a freeze payload against its witnesses and the items
//! held, a score payload against the commits, reveals and assignment, re-deriving both roots.

use super::EpochMachine;
use crate::attribution::Report;
use crate::attribution::epoch::messages::*;
use crate::attribution::epoch::scoring::{ScoreOutcome, score_reports};
use crate::attribution::epoch::{assign, freeze};
use crate::ids::{MerkleRoot, PeerKey};
use crate::manifest::quorum_for;
use std::collections::BTreeSet;

impl EpochMachine {
    /// Ok(Some(outcome)) for a valid score proposal, Ok(None) for a valid freeze proposal,
    /// Err(Some(reason)) for an invalid one, Err(None) when it cannot be checked yet.
    pub(super) fn validate(&self, p: &Propose) -> Result<Option<ScoreOutcome>, Option<String>> {
        let h = &p.header;
        if let Some(j) = &p.justify {
            let ok = j.kind == VoteKind::Prepare
                && j.header.phase == h.phase
                && j.header.view < h.view
                && j.header.payload_key() == h.payload_key()
                && j.verify(&self.cfg.members).is_ok();
            if !ok {
                return Err(Some("proposal justification is not a prepare certificate for its payload".into()));
            }
        }
        match (&p.payload, h.phase) {
            (Payload::Freeze { items, deferred, witnesses }, Phase::Freeze) => {
                if h.report_set_root != MerkleRoot::default() || h.credit_root != MerkleRoot::default() {
                    return Err(Some("freeze header with report or credit roots".into()));
                }
                if items.len() > INPUT_ITEMS_MAX || items.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err(Some("freeze items not sorted, repeated or too many".into()));
                }
                let mut signers = BTreeSet::new();
                for w in witnesses {
                    let i = self.witness_ok(w).map_err(Some)?;
                    if !signers.insert(i) {
                        return Err(Some("freeze proposal repeats a member's witness".into()));
                    }
                }
                if signers.len() < quorum_for(self.n()) {
                    return Err(Some("freeze proposal carries fewer witnesses than a quorum".into()));
                }
                let refs: Vec<&Witness> = witnesses.iter().map(|w| &w.body).collect();
                let frozen = freeze::freeze(&self.cfg.known, &refs);
                if &frozen.items != items || frozen.deferred != *deferred {
                    return Err(Some("freeze items or priorities differ from the witnesses' median".into()));
                }
                if freeze::input_root(items, *deferred) != h.input_root {
                    return Err(Some("freeze input root does not match its items".into()));
                }
                if let Some(missing) = items.iter().find(|(c, _)| !self.held.contains_key(c)) {
                    // Not invalid: this member cannot vouch for it (yet).
                    let _ = missing;
                    return Err(None);
                }
                Ok(None)
            }
            (Payload::Score { reports }, Phase::Score) => {
                let (Some(input), Some(plan), Some(seed)) = (&self.input, &self.plan, &self.seed) else {
                    return Err(None);
                };
                if h.input_root != input.header.input_root {
                    return Err(Some("score proposal for another input set".into()));
                }
                if reports.len() > REPORTS_MAX {
                    return Err(Some("score proposal has too many reports".into()));
                }
                let mut plain = Vec::with_capacity(reports.len());
                let mut last: Option<(u32, PeerKey)> = None;
                for r in reports {
                    let (c, v) = (&r.commit, &r.reveal);
                    let key = (c.body.job, c.signer);
                    if last.is_some_and(|l| l >= key) {
                        return Err(Some("score reports not sorted by (job, reporter) or repeated".into()));
                    }
                    last = Some(key);
                    let Some(i) = self.member_index(&c.signer) else {
                        return Err(Some("report from a key outside the committee".into()));
                    };
                    let ok = v.signer == c.signer
                        && c.body.datanet == self.cfg.datanet
                        && v.body.datanet == self.cfg.datanet
                        && c.body.epoch == self.cfg.epoch
                        && v.body.epoch == self.cfg.epoch
                        && c.body.job == v.body.job
                        && c.body.job < plan.job_count()
                        && assign::is_assigned(seed, c.body.job, &self.cfg.members, self.cfg.replication, i)
                        && commit_digest(
                            &c.signer,
                            &self.cfg.datanet,
                            self.cfg.epoch,
                            c.body.job,
                            v.body.utility,
                            &v.body.salt,
                        ) == c.body.digest;
                    if !ok || c.verify().is_err() || v.verify().is_err() {
                        return Err(Some(format!(
                            "report of {} for job {} does not check",
                            c.signer.short(),
                            c.body.job
                        )));
                    }
                    plain.push(Report { job: c.body.job, reporter: c.signer, utility: v.body.utility });
                }
                let outcome = score_reports(plan, &plain, assign::min_reports(self.cfg.replication), self.cfg.tau)
                    .map_err(|e| Some(format!("score proposal cannot be scored: {e}")))?;
                if outcome.report_set_root != h.report_set_root || outcome.credit_root != h.credit_root {
                    return Err(Some("score proposal roots differ from the recomputation".into()));
                }
                Ok(Some(outcome))
            }
            _ => Err(Some("proposal payload does not match its phase".into())),
        }
    }
}
