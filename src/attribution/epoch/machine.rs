//! The epoch state machine: one committee member's view of one (Datanet, epoch).
//!
//! Sans-IO: the driver (the daemon over gossipsub, or the simulator) feeds it messages and clock
//! ticks and carries out the [`Action`]s it returns, in order. Time is milliseconds on the
//! driver's clock. The machine never blocks, never reads a clock, never touches a disk.
//!
//! Each certified phase (freeze, score) is a two-round agreement per view: the leader
//! (`(epoch + view) mod n`) proposes; members that find the proposal valid (freeze: they hold every
//! item; score: they re-derive both roots from the listed reports) send a prepare vote; on a
//! prepare quorum they lock on the proposal and send a commit vote; a commit quorum is the
//! certificate. A member never signs two votes of one kind in one (epoch, phase, view). On a
//! timeout it moves to the next view and sends `NewView` carrying its lock; a locked member only
//! prepares its locked payload, or a payload justified by a newer prepare certificate, so two
//! certificates of one phase always carry the same payload while at most f members are faulty.
//! Between the phases the assigned members measure their jobs and commit, then reveal.
//!
//! Persistence: every [`Action::Persist`] snapshot must be durable before the driver performs the
//! actions after it (it precedes the votes it protects). [`EpochMachine::restore`] resumes from it.

use super::assign;
use super::certificate::{Attestation, Certificate, committee_root};
use super::freeze::witness_cap;
use super::messages::*;
use super::scoring::{ScoreOutcome, score_reports};
use crate::attribution::{EpochPlan, Report};
use crate::codec::{self, Canonical, Signed};
use crate::ids::{ContributionId, DatanetId, MerkleRoot, PeerKey};
use crate::manifest::quorum_for;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Clock and window settings; every member should use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// First view's timeout; view v waits `view_timeout_ms × min(2^v, 8)`.
    pub view_timeout_ms: u64,
    /// From the input certificate to the commit deadline (training happens in here).
    pub commit_window_ms: u64,
    /// From the commit deadline to the score proposal.
    pub reveal_window_ms: u64,
    /// How often a member re-sends its current messages (lossy links).
    pub rebroadcast_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { view_timeout_ms: 10_000, commit_window_ms: 60_000, reveal_window_ms: 10_000, rebroadcast_ms: 2_000 }
    }
}

impl Timing {
    /// Nominal length of an epoch without faults: the "epoch timeout" liveness is measured in.
    /// The freeze leader first collects a quorum of witnesses, which on a lossy link may take one
    /// re-send period.
    pub fn epoch_timeout_ms(&self) -> u64 {
        2 * self.view_timeout_ms + self.commit_window_ms + self.reveal_window_ms + self.rebroadcast_ms
    }
    fn view_timeout(&self, view: u32) -> u64 {
        self.view_timeout_ms * (1u64 << view.min(3))
    }
}

/// What a member needs to know to take part in one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochConfig {
    pub datanet: DatanetId,
    pub epoch: u64,
    /// Committee keys in manifest order.
    pub members: Vec<PeerKey>,
    /// Hash of the previous attestation (zero for the first epoch).
    pub prev_attestation: [u8; 32],
    /// Reports farther than this from a job's median are flagged (micro-units).
    pub tau: i64,
    pub timing: Timing,
    /// Reporters per job ([`assign::replication`] of the committee size and the manifest's cap).
    pub replication: usize,
    /// Certified priorities of every contribution frozen in an earlier epoch (from the ledger):
    /// they keep them forever ([`super::freeze`]).
    pub known: BTreeMap<ContributionId, u64>,
}

impl EpochConfig {
    /// The configuration for `epoch` of the Datanet `manifest` describes, chained to `prev_attestation`.
    pub fn from_manifest(
        manifest: &crate::manifest::Manifest,
        epoch: u64,
        prev_attestation: [u8; 32],
        timing: Timing,
    ) -> Self {
        EpochConfig {
            datanet: manifest.id(),
            epoch,
            members: manifest.committee.members.clone(),
            prev_attestation,
            tau: DEFAULT_TAU,
            timing,
            replication: assign::replication(manifest.committee.members.len(), manifest.protocol.replication as usize),
            known: BTreeMap::new(),
        }
    }
}

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

/// Default flagging distance: 0.05 nats of weighted evaluation loss, in micro-units.
pub const DEFAULT_TAU: i64 = 50_000;

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Gossip this message to the epoch topic.
    Broadcast(EpochMessage),
    /// The input set is frozen: build the [`EpochPlan`] from these items (each with its
    /// witnessed priority, sorted by id) and `seed`, then call [`EpochMachine::set_plan`].
    NeedPlan { seed: [u8; 32], items: Vec<(ContributionId, u64)> },
    /// Measure job `job` of the plan and answer with [`EpochMachine::on_utility`].
    Train { job: u32 },
    /// Make this snapshot durable before performing the following actions.
    Persist(Box<Snapshot>),
    /// Store this evidence (and the daemon may gossip-score the offender).
    StoreEvidence(Box<Evidence>),
    /// A commit certificate formed or arrived (freeze or score).
    Certified(Certificate),
    /// The epoch is attested: append to the ledger. `standing_lost`: flagged reports per reporter.
    Attested { attestation: Box<Attestation>, standing_lost: Vec<(PeerKey, u32)> },
    /// A message was refused; `from` is the signer when known (for peer scoring).
    Rejected { from: Option<PeerKey>, reason: String },
}

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

/// Views past a round's current view further than this are ignored: per-view state (votes,
/// proposals, new-views) stays bounded whatever views a member signs for. At most 8 view
/// timeouts per view, 256 views ahead is hours of an honest member's clock.
pub const VIEW_AHEAD_MAX: u32 = 256;
/// Evidence kept per offender: one proves it, a few show it was no accident.
pub const EVIDENCE_PER_OFFENDER_MAX: usize = 4;

#[derive(Clone, Debug, Default)]
struct Round {
    view: u32,
    deadline: Option<u64>,
    /// Leader-signed proposals by view (first one seen; signature and leader checked).
    proposals: BTreeMap<u32, Signed<Propose>>,
    /// Other leader-signed proposals (an equivocating leader's second ones), by header hash.
    alternates: BTreeMap<[u8; 32], Signed<Propose>>,
    /// Views whose proposal this member validated.
    valid: BTreeSet<u32>,
    votes: BTreeMap<(VoteKind, u32, [u8; 32]), BTreeMap<usize, Sig>>,
    first_votes: BTreeMap<(VoteKind, u32, usize), Vote>,
    my_votes: BTreeMap<(VoteKind, u32), Vote>,
    lock: Option<Locked>,
    highest: Option<Locked>,
    new_views: BTreeMap<u32, BTreeMap<usize, Option<Box<Locked>>>>,
    my_new_view: Option<Signed<NewView>>,
    proposed: BTreeSet<u32>,
    cert: Option<Certificate>,
}

/// One member's epoch agreement.
pub struct EpochMachine {
    cfg: EpochConfig,
    key: SigningKey,
    me: Option<usize>,
    committee_root: MerkleRoot,
    /// Held contributions and when this member first saw each (milliseconds, its clock).
    held: BTreeMap<ContributionId, u64>,
    /// The latest witness of each member (index), this member's own included.
    witnesses: BTreeMap<usize, Signed<Witness>>,
    my_witness: Option<Signed<Witness>>,
    rounds: [Round; 2],
    started: bool,
    input: Option<Certificate>,
    input_items: Vec<(ContributionId, u64)>,
    deferred: u32,
    seed: Option<[u8; 32]>,
    plan: Option<EpochPlan>,
    commit_deadline: Option<u64>,
    reveal_deadline: Option<u64>,
    measured: BTreeMap<u32, i64>,
    my_commits: BTreeMap<u32, Signed<Commit>>,
    revealed: bool,
    /// (job, reporter index) → (commit, received before my commit deadline).
    commits: BTreeMap<(u32, usize), (Signed<Commit>, bool)>,
    reveals: BTreeMap<(u32, usize), Signed<Reveal>>,
    /// Score outcomes of validated proposals, by view.
    outcomes: BTreeMap<u32, ScoreOutcome>,
    attestation: Option<Attestation>,
    evidence: BTreeMap<[u8; 32], Evidence>,
    offenders: BTreeMap<PeerKey, [u8; 32]>,
    next_rebroadcast: u64,
    catchup_due: bool,
    /// A member still in the freeze phase spoke: re-send the freeze certificate and its items.
    freeze_catchup_due: bool,
    seen: HashSet<[u8; 32]>,
    /// Ids of the freeze-certificate messages seen: a laggard that holds the certificate but not
    /// its items re-sends one to ask, and its bytes are a duplicate here.
    freeze_cert_ids: HashSet<[u8; 32]>,
}

fn pidx(p: Phase) -> usize {
    match p {
        Phase::Freeze => 0,
        Phase::Score => 1,
    }
}

const PHASES: [Phase; 2] = [Phase::Freeze, Phase::Score];
const SEEN_MAX: usize = 200_000;

impl EpochMachine {
    /// A member (or an observer, when `key` is not in the committee) holding `held` inputs.
    /// `held`: each contribution with the time this member first saw it.
    pub fn new(cfg: EpochConfig, key: SigningKey, held: impl IntoIterator<Item = (ContributionId, u64)>) -> Self {
        let me_key = PeerKey(key.verifying_key().to_bytes());
        let me = cfg.members.iter().position(|k| *k == me_key);
        let committee_root = committee_root(&cfg.members);
        EpochMachine {
            cfg,
            key,
            me,
            committee_root,
            held: held.into_iter().collect(),
            witnesses: BTreeMap::new(),
            my_witness: None,
            rounds: Default::default(),
            started: false,
            input: None,
            input_items: Vec::new(),
            deferred: 0,
            seed: None,
            plan: None,
            commit_deadline: None,
            reveal_deadline: None,
            measured: BTreeMap::new(),
            my_commits: BTreeMap::new(),
            revealed: false,
            commits: BTreeMap::new(),
            reveals: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            attestation: None,
            evidence: BTreeMap::new(),
            offenders: BTreeMap::new(),
            next_rebroadcast: 0,
            catchup_due: false,
            freeze_catchup_due: false,
            seen: HashSet::new(),
            freeze_cert_ids: HashSet::new(),
        }
    }

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

    /// This member's key.
    pub fn key(&self) -> PeerKey {
        PeerKey(self.key.verifying_key().to_bytes())
    }
    /// The configuration.
    pub fn config(&self) -> &EpochConfig {
        &self.cfg
    }
    /// The attestation, once the epoch is certified.
    pub fn attestation(&self) -> Option<&Attestation> {
        self.attestation.as_ref()
    }
    /// The freeze certificate, once formed.
    pub fn input_certificate(&self) -> Option<&Certificate> {
        self.input.as_ref()
    }
    /// All evidence this member holds.
    pub fn evidence(&self) -> impl Iterator<Item = &Evidence> {
        self.evidence.values()
    }
    /// Keys this member holds evidence against.
    pub fn offenders(&self) -> BTreeSet<PeerKey> {
        self.offenders.keys().copied().collect()
    }
    /// Current view of a phase.
    pub fn view(&self, phase: Phase) -> u32 {
        self.rounds[pidx(phase)].view
    }
    /// A short status line's worth of state.
    pub fn status(&self) -> EpochStatus {
        EpochStatus {
            epoch: self.cfg.epoch,
            stage: if self.attestation.is_some() {
                "attested"
            } else if self.rounds[1].deadline.is_some() {
                "scoring"
            } else if self.input.is_some() {
                "measuring"
            } else {
                "freezing"
            }
            .to_string(),
            freeze_view: self.rounds[0].view,
            score_view: self.rounds[1].view,
            measured: self.measured.len() as u32,
            reveals: self.reveals.len() as u32,
            evidence: self.evidence.len() as u32,
        }
    }
    /// A one-line dump of a phase's agreement state, for debugging simulator seeds.
    pub fn debug_round(&self, phase: Phase) -> String {
        let r = &self.rounds[pidx(phase)];
        let votes: Vec<String> =
            r.votes.iter().map(|((k, v, h), s)| format!("{k:?}@{v}:{}={}", hex::encode(&h[..2]), s.len())).collect();
        format!(
            "view {} deadline {:?} proposals {:?} valid {:?} lock {:?} my {:?} votes [{}] nv {:?} plan {} leader_me {} witnesses {:?}",
            r.view,
            r.deadline,
            r.proposals.iter().map(|(v, p)| (*v, hex::encode(&p.body.header.hash()[..2]))).collect::<Vec<_>>(),
            r.valid,
            r.lock.as_ref().map(|l| (l.prepared.header.view, hex::encode(&l.prepared.header.hash()[..2]))),
            r.my_votes.keys().collect::<Vec<_>>(),
            votes.join(" "),
            r.new_views.iter().map(|(v, m)| (*v, m.len())).collect::<Vec<_>>(),
            self.plan.is_some(),
            self.me.map(|m| m == self.leader(r.view)).unwrap_or(false),
            self.witnesses.keys().collect::<Vec<_>>(),
        )
    }

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
    fn sign_witness(&mut self) -> Option<Signed<Witness>> {
        let me = self.me?;
        let (seen, pending) = super::freeze::my_witness_items(&self.held, &self.cfg.known, witness_cap(self.n()));
        if self.my_witness.as_ref().is_some_and(|w| w.body.seen == seen && w.body.pending == pending) {
            return None;
        }
        let w = Signed::sign(Witness { datanet: self.cfg.datanet, epoch: self.cfg.epoch, pending, seen }, &self.key);
        self.my_witness = Some(w.clone());
        self.witnesses.insert(me, w.clone());
        Some(w)
    }
    /// When the driver should call [`EpochMachine::on_timer`] next.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.started {
            return None;
        }
        let mut d = vec![self.next_rebroadcast];
        if self.attestation.is_some() {
            return Some(self.next_rebroadcast);
        }
        d.extend(self.rounds.iter().filter(|r| r.cert.is_none()).filter_map(|r| r.deadline));
        if !self.revealed {
            d.extend(self.commit_deadline);
        }
        if self.rounds[1].deadline.is_none() {
            d.extend(self.reveal_deadline);
        }
        d.into_iter().min()
    }

    fn n(&self) -> usize {
        self.cfg.members.len()
    }
    fn leader(&self, view: u32) -> usize {
        ((self.cfg.epoch % self.n() as u64 + view as u64) % self.n() as u64) as usize
    }
    fn f(&self) -> usize {
        (self.n() - 1) / 3
    }

    fn snapshot(&self) -> Snapshot {
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

    fn persist(&self, out: &mut Vec<Action>) {
        out.push(Action::Persist(Box::new(self.snapshot())));
    }

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

    /// Starts (or resumes) the epoch at `now`.
    pub fn start(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.started = true;
        self.next_rebroadcast = now + self.cfg.timing.rebroadcast_ms;
        if self.attestation.is_some() {
            return out;
        }
        let v0 = self.rounds[0].view;
        self.rounds[0].deadline = Some(now + self.cfg.timing.view_timeout(v0));
        if let Some(input) = self.input.clone() {
            self.rounds[0].cert = Some(input.clone());
            self.on_frozen(now, &mut out);
        } else {
            self.my_witness = None;
            if let Some(w) = self.sign_witness() {
                out.push(Action::Broadcast(EpochMessage::Witness(Box::new(w))));
            }
            self.try_propose(now, Phase::Freeze, &mut out);
        }
        out
    }

    // ---- inputs from the driver -----------------------------------------------------------

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

    fn my_reveal(&self, job: u32) -> Option<Signed<Reveal>> {
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

    /// Decodes gossip bytes (size limit first) and handles the message.
    pub fn on_bytes(&mut self, now: u64, bytes: &[u8]) -> Vec<Action> {
        let id = *blake3::hash(bytes).as_bytes();
        if self.seen.contains(&id) {
            if self.attestation.is_some() {
                self.catchup_due = true;
            }
            if self.input.is_some() && self.freeze_cert_ids.contains(&id) {
                self.freeze_catchup_due = true;
            }
            return Vec::new();
        }
        if self.seen.len() > SEEN_MAX {
            self.seen.clear();
        }
        match codec::decode::<EpochMessage>(bytes) {
            Ok(m) => {
                // A reveal may arrive before its commit and be dropped; its re-send must count.
                if !matches!(m, EpochMessage::Reveal(_)) {
                    self.seen.insert(id);
                }
                if matches!(&m, EpochMessage::Certificate(c) if c.header.phase == Phase::Freeze)
                    && self.freeze_cert_ids.len() < 64
                {
                    self.freeze_cert_ids.insert(id);
                }
                self.on_message(now, m)
            }
            Err(e) => vec![Action::Rejected { from: None, reason: e.to_string() }],
        }
    }

    /// Handles one message from the network.
    pub fn on_message(&mut self, now: u64, msg: EpochMessage) -> Vec<Action> {
        if let Some((d, e)) = msg.epoch() {
            if d != self.cfg.datanet || e != self.cfg.epoch {
                return vec![Action::Rejected {
                    from: None,
                    reason: format!("message for epoch {e} of {}", d.short()),
                }];
            }
        }
        if self.attestation.is_some() && !matches!(msg, EpochMessage::Attestation(_) | EpochMessage::Evidence(_)) {
            self.catchup_due = true;
        }
        self.handle(now, msg)
    }

    fn member_index(&self, k: &PeerKey) -> Option<usize> {
        self.cfg.members.iter().position(|m| m == k)
    }

    fn reject(from: Option<PeerKey>, reason: impl Into<String>) -> Vec<Action> {
        vec![Action::Rejected { from, reason: reason.into() }]
    }

    fn handle(&mut self, now: u64, msg: EpochMessage) -> Vec<Action> {
        let mut out = Vec::new();
        let freezing = match &msg {
            EpochMessage::Vote(v) => v.header.phase == Phase::Freeze,
            EpochMessage::NewView(n) => n.body.phase == Phase::Freeze,
            EpochMessage::Certificate(c) => c.header.phase == Phase::Freeze,
            _ => false,
        };
        if freezing && self.input.is_some() {
            self.freeze_catchup_due = true;
        }
        match msg {
            EpochMessage::Vote(v) => self.on_vote(now, v, &mut out),
            EpochMessage::Propose(p) => self.on_propose(now, *p, &mut out),
            EpochMessage::Commit(c) => self.on_commit(now, c, &mut out),
            EpochMessage::Reveal(r) => self.on_reveal(now, r, &mut out),
            EpochMessage::NewView(nv) => self.on_new_view(now, nv, &mut out),
            EpochMessage::Evidence(e) => self.on_evidence(*e, &mut out),
            EpochMessage::Certificate(c) => self.on_certificate(now, c, &mut out),
            EpochMessage::Attestation(a) => self.on_attestation(now, *a, &mut out),
            EpochMessage::Witness(w) => self.on_witness(now, *w, &mut out),
        }
        out
    }

    /// Checks a witness: a member's, for this epoch, sorted, within the cap, signature valid.
    fn witness_ok(&self, w: &Signed<Witness>) -> Result<usize, String> {
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

    fn on_witness(&mut self, now: u64, w: Signed<Witness>, out: &mut Vec<Action>) {
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

    /// Whether `view` lies beyond [`VIEW_AHEAD_MAX`] past round `p`'s current view.
    fn too_far_ahead(&self, p: usize, view: u32) -> bool {
        view > self.rounds[p].view.saturating_add(VIEW_AHEAD_MAX)
    }

    fn add_evidence(&mut self, e: Evidence, out: &mut Vec<Action>) {
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

    fn on_evidence(&mut self, e: Evidence, out: &mut Vec<Action>) {
        match e.verify() {
            Ok(k) if self.member_index(&k).is_some() => self.add_evidence(e, out),
            Ok(_) => out.extend(Self::reject(None, "evidence against a key outside the committee")),
            Err(err) => out.extend(Self::reject(None, err.to_string())),
        }
    }

    fn header_basics_ok(&self, h: &CertHeader) -> bool {
        h.datanet == self.cfg.datanet
            && h.epoch == self.cfg.epoch
            && h.committee_root == self.committee_root
            && h.prev_attestation == self.cfg.prev_attestation
    }

    // ---- votes ------------------------------------------------------------------------------

    fn on_vote(&mut self, now: u64, v: Vote, out: &mut Vec<Action>) {
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

    /// Freezes once both the freeze certificate and its proposal (the item list) are here.
    fn try_freeze(&mut self, now: u64, out: &mut Vec<Action>) {
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

    fn try_attest(&mut self, cert: Certificate, out: &mut Vec<Action>) {
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

    fn on_certificate(&mut self, now: u64, c: Certificate, out: &mut Vec<Action>) {
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

    fn on_attestation(&mut self, _now: u64, a: Attestation, out: &mut Vec<Action>) {
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
            && super::freeze::input_root(&a.inputs, a.deferred) == a.input.header.input_root
            && super::certificate::report_set_root(&a.reports, a.sealed.as_ref()) == a.score.header.report_set_root
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

    // ---- proposals --------------------------------------------------------------------------

    fn on_propose(&mut self, now: u64, p: Signed<Propose>, out: &mut Vec<Action>) {
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
    fn consider_proposal(&mut self, now: u64, phase: Phase, view: u32, out: &mut Vec<Action>) {
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

    /// Ok(Some(outcome)) for a valid score proposal, Ok(None) for a valid freeze proposal,
    /// Err(Some(reason)) for an invalid one, Err(None) when it cannot be checked yet.
    fn validate(&self, p: &Propose) -> Result<Option<ScoreOutcome>, Option<String>> {
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
                let frozen = super::freeze::freeze(&self.cfg.known, &refs);
                if &frozen.items != items || frozen.deferred != *deferred {
                    return Err(Some("freeze items or priorities differ from the witnesses' median".into()));
                }
                if super::freeze::input_root(items, *deferred) != h.input_root {
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

    fn try_propose(&mut self, now: u64, phase: Phase, out: &mut Vec<Action>) {
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
                    let frozen = super::freeze::freeze(&self.cfg.known, &refs);
                    let mut header = self.base_header(Phase::Freeze, view);
                    header.input_root = super::freeze::input_root(&frozen.items, frozen.deferred);
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
    fn maybe_propose_score_early(&mut self, now: u64, out: &mut Vec<Action>) {
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

    fn open_score_round(&mut self, now: u64, out: &mut Vec<Action>) {
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

    // ---- commit / reveal ------------------------------------------------------------------------

    fn on_frozen(&mut self, now: u64, out: &mut Vec<Action>) {
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

    fn on_commit(&mut self, now: u64, c: Signed<Commit>, out: &mut Vec<Action>) {
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

    fn on_reveal(&mut self, now: u64, r: Signed<Reveal>, out: &mut Vec<Action>) {
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

    // ---- view change --------------------------------------------------------------------------

    fn on_new_view(&mut self, now: u64, nv: Signed<NewView>, out: &mut Vec<Action>) {
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

    fn enter_view(&mut self, now: u64, phase: Phase, view: u32, out: &mut Vec<Action>) {
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

    // ---- timers ----------------------------------------------------------------------------------

    /// Advances timers: view changes, the reveal, the score round, re-sending.
    pub fn on_timer(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.started {
            return out;
        }
        if self.attestation.is_none() {
            for phase in PHASES {
                let ph = pidx(phase);
                if self.rounds[ph].cert.is_none() && self.rounds[ph].deadline.is_some_and(|d| now >= d) {
                    let v = self.rounds[ph].view + 1;
                    self.enter_view(now, phase, v, &mut out);
                }
            }
            if !self.revealed && self.commit_deadline.is_some_and(|d| now >= d) {
                self.revealed = true;
                for job in self.measured.keys().copied().collect::<Vec<_>>() {
                    if let Some(r) = self.my_reveal(job) {
                        out.extend(self.handle(now, EpochMessage::Reveal(r.clone())));
                        out.push(Action::Broadcast(EpochMessage::Reveal(r)));
                    }
                }
                self.maybe_propose_score_early(now, &mut out);
            }
            if self.reveal_deadline.is_some_and(|d| now >= d) {
                self.open_score_round(now, &mut out);
            }
        }
        if now >= self.next_rebroadcast {
            self.next_rebroadcast = now + self.cfg.timing.rebroadcast_ms;
            self.rebroadcast(&mut out);
        }
        out
    }

    fn rebroadcast(&mut self, out: &mut Vec<Action>) {
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

/// A summary for `datanet epoch status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStatus {
    pub epoch: u64,
    pub stage: String,
    pub freeze_view: u32,
    pub score_view: u32,
    pub measured: u32,
    pub reveals: u32,
    pub evidence: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch 1 of Datanet [1; 32] with default timing and replication 3.
    fn test_config(members: &[PeerKey]) -> EpochConfig {
        EpochConfig {
            datanet: DatanetId([1; 32]),
            epoch: 1,
            members: members.to_vec(),
            prev_attestation: [0; 32],
            tau: DEFAULT_TAU,
            timing: Timing::default(),
            replication: 3,
            known: Default::default(),
        }
    }

    // One member signing votes, and contradicting votes, for thousands of views grows neither the per-view maps past the view window nor the evidence (and so the snapshot) past a few per offender.
    #[test]
    fn a_member_cannot_grow_per_view_state() {
        let keys = crate::sim::member_keys(7, 4);
        let members: Vec<PeerKey> = keys.iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
        let cfg = test_config(&members);
        let me = members.iter().position(|k| *k == PeerKey(keys[0].verifying_key().to_bytes())).unwrap();
        let mut m = EpochMachine::new(cfg, keys[me].clone(), Vec::new());
        m.start(0);
        let liar = &keys[(me + 1) % 4];
        let mut last_snapshot = 0;
        for view in 0..3000u32 {
            for root in [1u8, 2] {
                let h = CertHeader {
                    datanet: DatanetId([1; 32]),
                    epoch: 1,
                    phase: Phase::Freeze,
                    view,
                    committee_root: committee_root(&members),
                    input_root: crate::ids::MerkleRoot([root; 32]),
                    report_set_root: Default::default(),
                    credit_root: Default::default(),
                    prev_attestation: [0; 32],
                };
                for a in m.on_message(1, EpochMessage::Vote(Vote::sign(VoteKind::Prepare, h, liar))) {
                    if let Action::Persist(s) = a {
                        last_snapshot = codec::encode(&*s).len();
                    }
                }
            }
        }
        let r = &m.rounds[pidx(Phase::Freeze)];
        assert!(r.first_votes.len() <= (VIEW_AHEAD_MAX + 1) as usize, "{} first votes kept", r.first_votes.len());
        assert!(r.votes.len() <= 2 * (VIEW_AHEAD_MAX + 1) as usize, "{} vote sets kept", r.votes.len());
        assert_eq!(m.evidence.len(), EVIDENCE_PER_OFFENDER_MAX);
        assert!(last_snapshot < 64 * 1024, "snapshot of {last_snapshot} bytes");
    }

    // A freeze leader killed right after it proposed, restarted from its last durable snapshot
    // while holding more contributions and hearing the witnesses in another order, re-sends the very proposal it signed for that view and
    // signs no other: it cannot be made an equivocator by a crash.
    #[test]
    fn restarted_leader_re_sends_its_proposal() {
        let keys = crate::sim::member_keys(9, 4);
        let members: Vec<PeerKey> = keys.iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
        let cfg = test_config(&members);
        let held: Vec<(ContributionId, u64)> = (0..5u8).map(|i| (ContributionId([i + 1; 32]), 10 * i as u64)).collect();
        let mut ms: Vec<EpochMachine> =
            keys.iter().map(|k| EpochMachine::new(cfg.clone(), k.clone(), held.clone())).collect();
        let leader = ms.iter().position(|m| m.me == Some(m.leader(0))).unwrap();
        let mut pending: Vec<(usize, EpochMessage)> = Vec::new();
        let mut persisted: Option<Snapshot> = None;
        let mut proposed: Vec<Signed<Propose>> = Vec::new();
        let mut record = |from: usize, acts: Vec<Action>, pending: &mut Vec<(usize, EpochMessage)>| {
            for a in acts {
                match a {
                    Action::Persist(s) if from == leader && proposed.is_empty() => persisted = Some(*s),
                    Action::Broadcast(EpochMessage::Propose(p)) if from == leader => proposed.push(*p.clone()),
                    Action::Broadcast(m) => pending.push((from, m)),
                    _ => {}
                }
            }
        };
        for (i, m) in ms.iter_mut().enumerate() {
            let acts = m.start(0);
            record(i, acts, &mut pending);
        }
        let witnesses: Vec<(usize, EpochMessage)> =
            pending.iter().filter(|(_, m)| matches!(m, EpochMessage::Witness(_))).cloned().collect();
        for (_, msg) in witnesses.iter().filter(|(f, _)| *f != leader) {
            let acts = ms[leader].on_message(1, msg.clone());
            record(leader, acts, &mut pending);
        }
        assert_eq!(proposed.len(), 1, "the leader proposed once a quorum of witnesses arrived");
        let original = proposed[0].clone();
        let snap = persisted.expect("a snapshot persisted before the proposal was sent");
        assert!(snap.proposals.contains(&original), "the proposal is in the snapshot written before it left");
        // Restart with one more contribution held (its own witness now differs).
        let mut more = held.clone();
        more.push((ContributionId([99; 32]), 5));
        let mut again = EpochMachine::restore(cfg.clone(), keys[leader].clone(), more, snap);
        let mut sent = Vec::new();
        let mut collect = |acts: Vec<Action>| {
            for a in acts {
                if let Action::Broadcast(EpochMessage::Propose(p)) = a {
                    sent.push(*p);
                }
            }
        };
        collect(again.start(2));
        // The others' witnesses arrive in the other order: another quorum would be first.
        for (_, msg) in witnesses.iter().rev() {
            collect(again.on_message(3, msg.clone()));
        }
        let later = 3 + Timing::default().rebroadcast_ms + 1;
        collect(again.on_timer(later));
        assert!(!sent.is_empty(), "the restarted leader re-sends its proposal");
        assert!(sent.iter().all(|p| *p == original), "no other proposal for view 0");
    }
}
