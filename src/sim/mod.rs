//! Deterministic simulation of epoch agreement (DESIGN.md §9), in the spirit of TigerBeetle's VOPR.
//!
//! Every committee member runs the real [`EpochMachine`] in one process. A seeded ChaCha RNG
//! drives everything: the clock (an event queue in simulated milliseconds), the network (drop,
//! delay, duplication, reordering, partitions), crashes and restarts (the machine is rebuilt from
//! the last snapshot it asked to persist, round-tripped through its canonical encoding), the
//! Byzantine members' strategies ([`byzantine`]) and training, a noisy oracle. Messages travel as
//! canonical bytes, so decoding, size limits and signatures are exercised on every hop.
//!
//! After each run [`checks`] asserts safety (one payload per (Datanet, epoch, phase)), that the
//! certified credit recomputes from the certified report set, that honest members signed
//! identical bytes, that every equivocator is named by evidence at every honest member, and
//! liveness after faults heal. A failing run prints its seed; `datanet sim --seed S` replays it.

pub mod byzantine;
pub mod checks;

use crate::attribution::epoch::messages::{EpochMessage, Phase};
use crate::attribution::epoch::{Action, Attestation, Certificate, EpochConfig, EpochMachine, Snapshot, Timing};
use crate::attribution::{ContributorSummary, EpochParams, EpochPlan, Unit};
use crate::codec;
use crate::ids::{ContributionId, DatanetId, PeerKey, RecordHash};
use byzantine::Strategy;
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;

/// One simulated run's knobs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub peers: usize,
    /// Byzantine members (strategies drawn from the seed unless `strategies` is set).
    pub byzantine: usize,
    pub seed: u64,
    /// Inject network faults, partitions and crashes.
    pub faults: bool,
    /// Fixed link latency instead of random delays (benchmarks).
    pub fixed_link_ms: Option<u64>,
    pub strategies: Option<Vec<Strategy>>,
    pub jobs: u32,
    pub units: u32,
    pub timing: Timing,
    /// The Datanet id (default: derived from the seed); set it to a real manifest's id to verify
    /// the resulting attestation offline.
    pub datanet: Option<DatanetId>,
}

impl SimConfig {
    /// Defaults for `peers` members, `byzantine` of them Byzantine, with faults.
    pub fn new(peers: usize, byzantine: usize, seed: u64) -> Self {
        SimConfig {
            peers,
            byzantine,
            seed,
            faults: true,
            fixed_link_ms: None,
            strategies: None,
            jobs: 8,
            units: 6,
            timing: Timing {
                view_timeout_ms: 1_000,
                commit_window_ms: 3_000,
                reveal_window_ms: 1_000,
                rebroadcast_ms: 300,
            },
            datanet: None,
        }
    }
}

/// What happened in one run.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub peers: usize,
    pub byzantine: Vec<(PeerKey, Strategy)>,
    /// Check failures; empty when the run passed.
    pub violations: Vec<String>,
    /// When faults healed (ms).
    pub healed_ms: u64,
    /// First score certificate at an honest member (ms).
    pub certified_ms: Option<u64>,
    /// Last honest reveal sent (ms).
    pub last_reveal_ms: Option<u64>,
    pub deliveries: u64,
    pub rejected: u64,
    pub end_ms: u64,
    pub honest_attested: usize,
    pub honest: usize,
    pub evidence_offenders: usize,
}

impl SimReport {
    /// Milliseconds from the last reveal to the first certificate.
    pub fn reveal_to_cert_ms(&self) -> Option<u64> {
        Some(self.certified_ms?.saturating_sub(self.last_reveal_ms?))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver { to: usize, msg: usize },
    Timer { node: usize },
    Utility { node: usize, incarnation: u32, job: u32, utility: i64 },
    Crash { node: usize },
    Restart { node: usize },
}

struct Node {
    key: SigningKey,
    machine: Option<EpochMachine>,
    store: Option<Snapshot>,
    incarnation: u32,
    timer_at: Option<u64>,
    strategy: Option<Strategy>,
}

/// Observations the checks read.
#[derive(Default)]
pub struct Observed {
    /// (node, certificate) for every commit certificate an honest member formed or accepted.
    pub certificates: Vec<(usize, Certificate)>,
    /// (node, attestation) of honest members.
    pub attestations: BTreeMap<usize, Attestation>,
    /// Keys that sent conflicting statements.
    pub equivocators: BTreeSet<PeerKey>,
    /// Plans by seed.
    pub plans: BTreeMap<[u8; 32], EpochPlan>,
}

/// The simulated world.
pub struct Sim {
    pub cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    messages: Vec<Rc<Vec<u8>>>,
    nodes: Vec<Node>,
    pub members: Vec<PeerKey>,
    epoch_cfg: EpochConfig,
    items: Vec<ContributionId>,
    drop_ppm: u32,
    dup_ppm: u32,
    delay: (u64, u64),
    /// (start, end, isolated set)
    partitions: Vec<(u64, u64, BTreeSet<usize>)>,
    pub healed_ms: u64,
    pub obs: Observed,
    pub report: SimReport,
    oracle_values: Vec<i64>,
    /// Units each member holds a share of (self-inflation targets).
    owned_units: BTreeMap<PeerKey, BTreeSet<usize>>,
    /// (copier, job, original reporter) already copied.
    pub(crate) copied: BTreeSet<(usize, u32, PeerKey)>,
}

const TAU: i64 = 40_000;
const NOISE: i64 = 5_000;

impl Sim {
    /// Builds the world for `cfg` (nothing runs yet).
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = cfg.peers;
        let keys = member_keys(cfg.seed, n);
        let members: Vec<PeerKey> = keys.iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
        // Byzantine members and their strategies.
        let mut idx: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            idx.swap(i, rng.gen_range(0..=i));
        }
        let byz: Vec<usize> = idx.into_iter().take(cfg.byzantine.min(n)).collect();
        let mut nodes: Vec<Node> = keys
            .into_iter()
            .map(|key| Node { key, machine: None, store: None, incarnation: 0, timer_at: None, strategy: None })
            .collect();
        let mut report = SimReport { seed: cfg.seed, peers: n, ..Default::default() };
        for (k, &i) in byz.iter().enumerate() {
            let s = match &cfg.strategies {
                Some(list) if !list.is_empty() => list[k % list.len()],
                _ => Strategy::ALL[rng.gen_range(0..Strategy::ALL.len())],
            };
            nodes[i].strategy = Some(s);
            report.byzantine.push((members[i], s));
        }
        let datanet = cfg.datanet.unwrap_or(DatanetId(*blake3::hash(&cfg.seed.to_le_bytes()).as_bytes()));
        let epoch_cfg = EpochConfig {
            datanet,
            epoch: 1 + cfg.seed % 1000,
            members: members.clone(),
            prev_attestation: *blake3::hash(b"previous").as_bytes(),
            tau: TAU,
            timing: cfg.timing,
            replication: crate::attribution::epoch::assign::replication(cfg.peers, 5),
            known: Default::default(),
        };
        let items: Vec<ContributionId> = {
            let mut v: Vec<ContributionId> = (0..12u64)
                .map(|i| ContributionId(*blake3::hash(&[cfg.seed, i].map(u64::to_le_bytes).concat()).as_bytes()))
                .collect();
            v.sort();
            v
        };
        // A third of the items were frozen in earlier epochs (certified priorities, the same for
        // everyone); each member saw the others at its own time: the item's time plus link delay.
        let mut epoch_cfg = epoch_cfg;
        epoch_cfg.known = items.iter().step_by(3).enumerate().map(|(k, c)| (*c, 1_000 + k as u64)).collect();
        let (drop_ppm, dup_ppm, delay) = if let Some(ms) = cfg.fixed_link_ms {
            (0, 0, (ms, ms))
        } else if cfg.faults {
            let hi = rng.gen_range(20..200);
            (rng.gen_range(0..50_000), rng.gen_range(0..30_000), (1, hi))
        } else {
            (0, 0, (1, 30))
        };
        let oracle_values: Vec<i64> = (0..cfg.units).map(|_| rng.gen_range(-20_000..120_000)).collect();
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            messages: Vec::new(),
            nodes,
            members,
            epoch_cfg,
            items,
            drop_ppm,
            dup_ppm,
            delay,
            partitions: Vec::new(),
            healed_ms: 0,
            obs: Observed::default(),
            report,
            oracle_values,
            owned_units: BTreeMap::new(),
            copied: BTreeSet::new(),
            cfg,
        };
        sim.schedule_faults();
        sim
    }

    fn schedule_faults(&mut self) {
        if !self.cfg.faults || self.cfg.fixed_link_ms.is_some() {
            return;
        }
        let n = self.cfg.peers;
        let span = self.cfg.timing.epoch_timeout_ms();
        if self.rng.gen_bool(0.35) {
            let start = self.rng.gen_range(0..span);
            let end = start + self.rng.gen_range(200..span);
            let size = self.rng.gen_range(1..=n.div_ceil(2));
            let mut set = BTreeSet::new();
            while set.len() < size {
                set.insert(self.rng.gen_range(0..n));
            }
            self.healed_ms = self.healed_ms.max(end);
            self.partitions.push((start, end, set));
        }
        if self.rng.gen_bool(0.35) {
            let honest: Vec<usize> = (0..n).filter(|&i| self.nodes[i].strategy.is_none()).collect();
            let node = honest[self.rng.gen_range(0..honest.len())];
            let at = self.rng.gen_range(0..span);
            let back = at + self.rng.gen_range(100..span);
            self.healed_ms = self.healed_ms.max(back);
            self.push(at, Event::Crash { node });
            self.push(back, Event::Restart { node });
        }
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, e)));
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions
            .iter()
            .any(|(s, e, set)| self.now >= *s && self.now < *e && set.contains(&a) != set.contains(&b))
    }

    /// Sends raw bytes from `from` to every other member.
    pub(crate) fn send_bytes(&mut self, from: usize, bytes: Vec<u8>, extra_delay: u64) {
        let id = self.messages.len();
        self.messages.push(Rc::new(bytes));
        for to in 0..self.cfg.peers {
            if to == from || self.partitioned(from, to) {
                continue;
            }
            if self.drop_ppm > 0 && self.rng.gen_range(0..1_000_000) < self.drop_ppm {
                continue;
            }
            let copies = if self.dup_ppm > 0 && self.rng.gen_range(0..1_000_000) < self.dup_ppm { 2 } else { 1 };
            for _ in 0..copies {
                let d = self.rng.gen_range(self.delay.0..=self.delay.1) + extra_delay;
                self.push(self.now + d, Event::Deliver { to, msg: id });
            }
        }
    }

    /// When member `i` first saw each held item: the item's own time plus a per-member delay.
    fn first_seen(&self, i: usize) -> Vec<(ContributionId, u64)> {
        self.items
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let mut h = blake3::Hasher::new_derive_key("datanet/sim/first-seen/v1");
                h.update(&self.cfg.seed.to_le_bytes());
                h.update(&(i as u64).to_le_bytes());
                h.update(c.as_bytes());
                let jitter = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes")) % 500;
                (*c, 10_000 + 1_000 * k as u64 + jitter)
            })
            .collect()
    }

    fn start_node(&mut self, i: usize) {
        let held = self.first_seen(i);
        let key = self.nodes[i].key.clone();
        let machine = match self.nodes[i].store.clone() {
            Some(snap) => {
                // The simulated disk holds canonical bytes: round-trip them.
                let bytes = codec::encode(&snap);
                let snap: Snapshot = codec::decode(&bytes).expect("a snapshot we encoded decodes");
                EpochMachine::restore(self.epoch_cfg.clone(), key, held, snap)
            }
            None => EpochMachine::new(self.epoch_cfg.clone(), key, held),
        };
        self.nodes[i].machine = Some(machine);
        let actions = self.nodes[i].machine.as_mut().expect("just set").start(self.now);
        self.apply(i, actions);
    }

    /// The oracle: the coalition's true utility plus small per-reporter noise.
    fn oracle(&self, plan: &EpochPlan, job: u32, reporter: &PeerKey) -> i64 {
        let base: i64 =
            plan.coalitions[job as usize].iter().zip(&self.oracle_values).filter(|(b, _)| **b).map(|(_, v)| *v).sum();
        let mut h = blake3::Hasher::new_derive_key("datanet/sim/noise/v1");
        h.update(&self.cfg.seed.to_le_bytes());
        h.update(&job.to_le_bytes());
        h.update(reporter.as_bytes());
        let r = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
        base + (r % (2 * NOISE as u64 + 1)) as i64 - NOISE
    }

    /// A deterministic plan for `seed`: units shared among members and outside contributors.
    pub fn plan_for(&mut self, seed: [u8; 32]) -> EpochPlan {
        if let Some(p) = self.obs.plans.get(&seed) {
            return p.clone();
        }
        let mut r = ChaCha8Rng::from_seed(seed);
        let mut contributors: Vec<PeerKey> = self.members.clone();
        contributors.extend((0..4u8).map(|i| PeerKey(*blake3::hash(&[i, 0xAA]).as_bytes())));
        contributors.sort();
        let mut units = Vec::new();
        for u in 0..self.cfg.units as usize {
            let mut shares: BTreeMap<PeerKey, u32> = BTreeMap::new();
            for _ in 0..r.gen_range(1..4) {
                let k = contributors[r.gen_range(0..contributors.len())];
                *shares.entry(k).or_default() += r.gen_range(1..20);
                self.owned_units.entry(k).or_default().insert(u);
            }
            let total: u32 = shares.values().sum();
            let records = (0..total)
                .map(|i| RecordHash(*blake3::hash(&[u as u32, i].map(u32::to_le_bytes).concat()).as_bytes()))
                .collect();
            units.push(Unit { records, shares: shares.into_iter().collect() });
        }
        let params = EpochParams { pool: 1_000_000, ..EpochParams::with_jobs(self.cfg.jobs) };
        let plan = EpochPlan {
            seed,
            coalitions: crate::attribution::coalitions(seed, self.cfg.units, self.cfg.jobs),
            units,
            contributors: contributors
                .iter()
                .map(|k| ContributorSummary { contributor: *k, ..Default::default() })
                .collect(),
            params,
            record_values: Vec::new(),
            screened: Vec::new(),
            sealed: None,
        };
        self.obs.plans.insert(seed, plan.clone());
        plan
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        let mut work: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = work.pop_front() {
            let honest = self.nodes[i].strategy.is_none();
            match a {
                Action::Broadcast(m) => {
                    if let (true, EpochMessage::Reveal(r)) = (honest, &m) {
                        // Only a reveal's first sending counts, not its re-sends.
                        if self.copied.insert((usize::MAX - i, r.body.job, r.signer)) {
                            self.report.last_reveal_ms = Some(self.report.last_reveal_ms.unwrap_or(0).max(self.now));
                        }
                    }
                    match self.nodes[i].strategy {
                        None => self.send_bytes(i, codec::encode(&m), 0),
                        Some(s) => byzantine::send(self, i, s, m),
                    }
                }
                Action::NeedPlan { seed, .. } => {
                    let plan = self.plan_for(seed);
                    let now = self.now;
                    let Some(m) = self.nodes[i].machine.as_mut() else { return };
                    work.extend(m.set_plan(now, plan));
                }
                Action::Train { job } => {
                    let Some(seed) = self.nodes[i]
                        .machine
                        .as_ref()
                        .and_then(|m| m.input_certificate())
                        .map(|c| crate::attribution::epoch::assign::epoch_seed(&c.header))
                    else {
                        continue;
                    };
                    let plan = self.plan_for(seed);
                    let key = self.members[i];
                    let mut u = self.oracle(&plan, job, &key);
                    if let Some(s) = self.nodes[i].strategy {
                        let owns = self
                            .owned_units
                            .get(&key)
                            .is_some_and(|set| set.iter().any(|&x| plan.coalitions[job as usize][x]));
                        u = byzantine::distort(&mut self.rng, s, u, owns);
                    }
                    let at = self.now + self.rng.gen_range(10..self.cfg.timing.commit_window_ms / 3);
                    let incarnation = self.nodes[i].incarnation;
                    self.push(at, Event::Utility { node: i, incarnation, job, utility: u });
                }
                Action::Persist(s) => self.nodes[i].store = Some(*s),
                Action::StoreEvidence(_) => {}
                Action::Certified(c) => {
                    if honest {
                        if c.header.phase == Phase::Score && self.report.certified_ms.is_none() {
                            self.report.certified_ms = Some(self.now);
                        }
                        self.obs.certificates.push((i, c));
                    }
                }
                Action::Attested { attestation, .. } => {
                    if honest {
                        self.obs.attestations.insert(i, *attestation);
                    }
                }
                Action::Rejected { .. } => self.report.rejected += 1,
            }
        }
        self.reschedule(i);
    }

    fn reschedule(&mut self, i: usize) {
        let Some(d) = self.nodes[i].machine.as_ref().and_then(|m| m.next_deadline()) else { return };
        let d = d.max(self.now);
        if self.nodes[i].timer_at.is_none_or(|t| d < t || t < self.now) {
            self.nodes[i].timer_at = Some(d);
            self.push(d, Event::Timer { node: i });
        }
    }

    fn honest_live_done(&self) -> bool {
        (0..self.cfg.peers)
            .filter(|&i| self.nodes[i].strategy.is_none())
            .all(|i| self.nodes[i].machine.as_ref().is_some_and(|m| m.attestation().is_some()))
    }

    /// Runs to completion (or the time limit) and checks the invariants.
    pub fn run(self) -> SimReport {
        self.run_keep().0
    }

    /// Runs like [`Sim::run`] and also returns the honest members' attestations.
    pub fn run_keep(self) -> (SimReport, BTreeMap<usize, Attestation>) {
        let (r, (a, _)) = self.run_keep_with(|_| Vec::new());
        (r, a)
    }

    fn run_keep_with(
        mut self,
        inspect: impl FnOnce(&Sim) -> Vec<String>,
    ) -> (SimReport, (BTreeMap<usize, Attestation>, Vec<String>)) {
        for i in 0..self.cfg.peers {
            self.start_node(i);
        }
        let limit = self.healed_ms + 3 * self.cfg.timing.epoch_timeout_ms();
        let mut done_at: Option<u64> = None;
        while let Some(Reverse((t, _, e))) = self.queue.pop() {
            if t > limit {
                break;
            }
            self.now = t;
            if let Some(d) = done_at {
                if t > d {
                    break;
                }
            }
            match e {
                Event::Deliver { to, msg } => {
                    self.report.deliveries += 1;
                    let bytes = Rc::clone(&self.messages[msg]);
                    let now = self.now;
                    let Some(m) = self.nodes[to].machine.as_mut() else { continue };
                    let actions = m.on_bytes(now, &bytes);
                    if let Some(s) = self.nodes[to].strategy {
                        byzantine::observe(&mut self, to, s, &bytes);
                    }
                    self.apply(to, actions);
                }
                Event::Timer { node } => {
                    if self.nodes[node].timer_at != Some(t) {
                        continue;
                    }
                    self.nodes[node].timer_at = None;
                    let now = self.now;
                    let Some(m) = self.nodes[node].machine.as_mut() else { continue };
                    let actions = m.on_timer(now);
                    self.apply(node, actions);
                }
                Event::Utility { node, incarnation, job, utility } => {
                    if self.nodes[node].incarnation != incarnation {
                        continue;
                    }
                    let now = self.now;
                    let Some(m) = self.nodes[node].machine.as_mut() else { continue };
                    let actions = m.on_utility(now, job, utility);
                    self.apply(node, actions);
                }
                Event::Crash { node } => {
                    self.nodes[node].machine = None;
                    self.nodes[node].incarnation += 1;
                    self.nodes[node].timer_at = None;
                }
                Event::Restart { node } => self.start_node(node),
            }
            if done_at.is_none() && self.now >= self.healed_ms && self.honest_live_done() {
                // Let evidence and catch-up settle for a few re-send periods.
                done_at = Some(self.now + 4 * self.cfg.timing.rebroadcast_ms);
            }
        }
        self.report.end_ms = self.now;
        self.report.healed_ms = self.healed_ms;
        self.report.honest = self.nodes.iter().filter(|n| n.strategy.is_none()).count();
        self.report.honest_attested = self.obs.attestations.len();
        let violations = checks::check(&mut self);
        self.report.violations = violations;
        let lines = inspect(&self);
        (self.report, (self.obs.attestations, lines))
    }

    /// Runs and returns one status line per member (debugging a failing seed).
    pub fn run_debug(self) -> (SimReport, BTreeMap<usize, Attestation>, Vec<String>) {
        let members = self.members.clone();
        let strategies: Vec<Option<Strategy>> = self.nodes.iter().map(|n| n.strategy).collect();
        let (r, (a, lines)) = self.run_keep_with(|sim| {
            sim.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let m = n.machine.as_ref();
                    format!(
                        "{i} {} {:?} {:?}\n   freeze: {:?}\n   score: {:?}",
                        members[i].short(),
                        strategies[i],
                        m.map(|m| m.status()),
                        m.map(|m| m.debug_round(Phase::Freeze)),
                        m.map(|m| m.debug_round(Phase::Score))
                    )
                })
                .collect()
        });
        (r, a, lines)
    }

    /// Honest members' machines (index, machine).
    pub fn honest_machines(&self) -> impl Iterator<Item = (usize, &EpochMachine)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.strategy.is_none())
            .filter_map(|(i, n)| n.machine.as_ref().map(|m| (i, m)))
    }

    /// The strategy of member `i`, if Byzantine.
    pub fn strategy(&self, i: usize) -> Option<Strategy> {
        self.nodes[i].strategy
    }

    pub(crate) fn signing_key(&self, i: usize) -> &SigningKey {
        &self.nodes[i].key
    }

    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    pub(crate) fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

/// The committee keys of a run with `seed` and `n` members, sorted by public key.
pub fn member_keys(seed: u64, n: usize) -> Vec<SigningKey> {
    let mut keys: Vec<SigningKey> = (0..n)
        .map(|i| {
            let mut h = blake3::Hasher::new_derive_key("datanet/sim/key/v1");
            h.update(&seed.to_le_bytes());
            h.update(&(i as u64).to_le_bytes());
            SigningKey::from_bytes(h.finalize().as_bytes())
        })
        .collect();
    keys.sort_by_key(|k| k.verifying_key().to_bytes());
    keys
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> SimReport {
    Sim::new(cfg).run()
}

/// f = ⌊(n−1)/3⌋.
pub fn max_faulty(n: usize) -> usize {
    n.saturating_sub(1) / 3
}

/// Runs `seeds` consecutive seeds from `first`; returns the failing reports.
pub fn run_many(peers: usize, byzantine: usize, first: u64, seeds: u64, faults: bool) -> Vec<SimReport> {
    (first..first + seeds)
        .map(|seed| run(SimConfig { faults, ..SimConfig::new(peers, byzantine, seed) }))
        .filter(|r| !r.violations.is_empty())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
