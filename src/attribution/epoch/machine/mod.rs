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

mod agreement;
mod certified;
mod config;
mod evidence;
mod jobs;
mod persist;
mod propose;
mod rebroadcast;
mod status;
#[cfg(test)]
mod tests;
mod validate;
mod view;
mod witness;

pub use certified::standing_lost;
pub use config::{DEFAULT_TAU, EpochConfig, Timing};
pub use persist::Snapshot;
pub use status::EpochStatus;

use super::certificate::{Attestation, Certificate, committee_root};
use super::messages::*;
use super::scoring::ScoreOutcome;
use crate::attribution::EpochPlan;
use crate::codec::{self, Signed};
use crate::ids::{ContributionId, MerkleRoot, PeerKey};
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, BTreeSet, HashSet};

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

    /// Whether `view` lies beyond [`VIEW_AHEAD_MAX`] past round `p`'s current view.
    fn too_far_ahead(&self, p: usize, view: u32) -> bool {
        view > self.rounds[p].view.saturating_add(VIEW_AHEAD_MAX)
    }

    fn header_basics_ok(&self, h: &CertHeader) -> bool {
        h.datanet == self.cfg.datanet
            && h.epoch == self.cfg.epoch
            && h.committee_root == self.committee_root
            && h.prev_attestation == self.cfg.prev_attestation
    }

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
}
