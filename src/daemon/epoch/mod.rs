//! Epoch agreement in the daemon: drives one [`EpochMachine`] per joined Datanet over gossip.
//!
//! Bird's-eye view. The sans-IO machine (`attribution::epoch`) decides; this driver carries out
//! its [`Action`]s, like [`crate::sim`] does over a simulated network:
//! - `Broadcast` → publish the canonical bytes on `datanet/<id>/epochs`;
//! - `Persist` → the snapshot into the ledger's sled tree, flushed, before any later action (so a
//!   restarted member never votes twice: [`EpochMachine::restore`] resumes from it);
//! - `NeedPlan` → a task reads the frozen input set's records and the public evaluation file
//!   (fetched from the committee when missing), computes the [`EpochPlan`] on a blocking thread,
//!   and answers through the actor's channel ([`EpochInternal::Planned`]);
//! - `Train` → jobs run one after another on `spawn_blocking` (libtorch, `epoch.train_threads`
//!   threads); each utility comes back as [`EpochInternal::Measured`]. The actor never blocks on
//!   training;
//! - `Attested` → [`ledger::append_and_store_blob`]: the hash-chained ledger and the attestation's
//!   canonical bytes as a blob.
//!
//! Who starts an epoch: `POST /api/v1/epoch/run` (`datanet epoch run`) starts the next epoch (per
//! this peer's ledger) here; a peer receiving a message for its next epoch creates the machine for
//! it and feeds the message. The machine keeps running after attestation, answering laggards,
//! until the next epoch replaces it. Time is milliseconds since the driver was created
//! (monotonic); the actor's 100 ms tick calls [`EpochMachine::on_timer`] when it is due.
//!
//! [`EpochPlan`]: crate::attribution::EpochPlan

mod gate;
mod ledger_sync;
mod plan;
mod sealed;
#[cfg(test)]
mod tests;
mod train;

pub use gate::{StartGate, may_start_from};
pub(super) use ledger_sync::answer_attestations;
pub(crate) use plan::uncontaminated;
pub use plan::{EVAL_FILE_BYTES_MAX, base_dir, eval_records, eval_values};
pub use sealed::{SealedPartStatus, SealedStatus, sealed_status, sealed_used};

use super::{DaemonActor, DaemonError, DaemonHandle};
use crate::attribution::epoch::{Action, EpochConfig, EpochMachine, EpochStatus, Snapshot, Timing};
use crate::codec;
use crate::ids::{ContributionId, DatanetId, PeerKey};
use crate::manifest::Manifest;
use crate::net::TopicKind;
use crate::store::Store;
use crate::store::ledger::{self, Ledger, RewardsReport};
use plan::Planned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The first epoch of a Datanet whose ledger is empty.
pub const FIRST_EPOCH: u64 = 1;

/// The machine's timing: the manifest's windows.
pub fn timing(m: &Manifest) -> Timing {
    let p = &m.protocol;
    Timing {
        view_timeout_ms: p.view_timeout_ms,
        commit_window_ms: p.commit_window_ms,
        reveal_window_ms: p.reveal_window_ms,
        rebroadcast_ms: p.rebroadcast_ms,
    }
}

/// Unix milliseconds on this peer's clock.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The certified priorities of every contribution frozen in an attested epoch of this ledger.
fn known_priorities(ledger: &Ledger, d: &DatanetId) -> Result<BTreeMap<ContributionId, u64>, String> {
    let mut known = BTreeMap::new();
    for a in ledger.attestations(d).map_err(|e| e.to_string())? {
        for (c, p) in a.inputs {
            known.entry(c).or_insert(p);
        }
    }
    Ok(known)
}

/// Held contributions with the time this peer first saw each (its local admission time).
fn held_with_times(store: &Store, d: &DatanetId) -> Result<Vec<(ContributionId, u64)>, String> {
    Ok(store.contributions(d).map_err(|e| e.to_string())?.iter().map(|c| (c.id, c.meta.admitted_ms)).collect())
}

/// The answer to `POST /api/v1/epoch/run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRunReply {
    /// Datanet id (hex).
    pub datanet: String,
    pub epoch: u64,
    /// False when this epoch was already running here.
    pub started: bool,
    pub status: EpochStatus,
}

/// One joined Datanet in `GET /api/v1/epoch/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatanetEpochs {
    pub datanet: String,
    pub name: String,
    /// The epoch machine running here (attested ones stay until the next epoch starts).
    pub current: Option<EpochStatus>,
    /// The last attested epoch in this peer's ledger and its hash.
    pub head_epoch: Option<u64>,
    pub head_hash: Option<String>,
    /// The last problem the driver met (plan, training, ledger), if any.
    pub last_error: Option<String>,
}

/// Commands from [`DaemonHandle`]s.
pub(super) enum EpochCommand {
    Run { datanet: String, reply: oneshot::Sender<Result<EpochRunReply, String>> },
    Status(oneshot::Sender<Vec<DatanetEpochs>>),
    Attestation { datanet: String, epoch: Option<u64>, reply: oneshot::Sender<Result<(u64, Vec<u8>), String>> },
    Rewards { datanet: String, reply: oneshot::Sender<Result<RewardsReport, String>> },
}

/// Results of the driver's tasks.
pub(super) enum EpochInternal {
    Planned { datanet: DatanetId, epoch: u64, result: Result<Box<Planned>, String> },
    Measured { datanet: DatanetId, epoch: u64, job: u32, result: Result<i64, String> },
    TrainingDone { datanet: DatanetId, epoch: u64, error: Option<String> },
}

struct Running {
    machine: EpochMachine,
    planned: Option<Arc<Planned>>,
    /// Jobs the machine asked for that no training task has taken yet.
    jobs: Vec<u32>,
    training: bool,
    /// Every job the machine assigned to this peer, and those measured (for the status).
    assigned: BTreeSet<u32>,
    measured: BTreeSet<u32>,
    /// Committee members whose messages for this epoch the machine accepted.
    heard: BTreeSet<PeerKey>,
}

/// The driver's state, owned by the actor.
pub(super) struct Epochs {
    origin: Instant,
    running: HashMap<DatanetId, Running>,
    errors: HashMap<DatanetId, String>,
    last_refresh: Instant,
    /// The last [`EpochFrame::sent`] this daemon published (starts at the wall clock, so it keeps
    /// increasing across restarts).
    sent: u64,
    /// Inner epoch message hash → when this daemon last let a frame of it propagate: a message
    /// re-framed faster than half the rebroadcast period is processed but not forwarded, so a
    /// relay re-wrapping someone's message cannot amplify it.
    forwarded: HashMap<[u8; 32], u64>,
}

/// Most inner messages [`Epochs::forwarded`] remembers before it starts afresh.
const FORWARDED_MAX: usize = 16_384;

/// How often a machine still freezing learns of newly held contributions.
const INPUT_REFRESH: Duration = Duration::from_secs(1);

impl Epochs {
    pub(super) fn new() -> Self {
        Epochs {
            origin: Instant::now(),
            running: HashMap::new(),
            errors: HashMap::new(),
            last_refresh: Instant::now(),
            sent: unix_ms(),
            forwarded: HashMap::new(),
        }
    }

    /// The next publish counter.
    fn next_sent(&mut self) -> u64 {
        self.sent = self.sent.max(unix_ms()).saturating_add(1);
        self.sent
    }

    /// Whether a frame of `inner` may propagate now (`period_ms`: half the rebroadcast period).
    fn may_forward(&mut self, inner: &[u8], period_ms: u64) -> bool {
        let now = self.now_ms();
        let h = *blake3::hash(inner).as_bytes();
        match self.forwarded.get(&h) {
            Some(&t) if now < t.saturating_add(period_ms) => false,
            _ => {
                if self.forwarded.len() >= FORWARDED_MAX {
                    self.forwarded.clear();
                }
                self.forwarded.insert(h, now);
                true
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

impl DaemonHandle {
    /// Starts the next epoch of a Datanet at this peer now (or reports the one running).
    pub async fn epoch_run(&self, datanet: &str) -> Result<EpochRunReply, String> {
        let datanet = datanet.to_string();
        self.ask(|reply| super::Command::Epoch(EpochCommand::Run { datanet, reply }))
            .await
            .map_err(|e| e.to_string())?
    }

    /// The epochs of every joined Datanet.
    pub async fn epoch_status(&self) -> Result<Vec<DatanetEpochs>, DaemonError> {
        self.ask(|r| super::Command::Epoch(EpochCommand::Status(r))).await
    }

    /// The canonical bytes of an attestation in this peer's ledger (`epoch`: default the head).
    /// The ledger's [`RewardsReport`] for a Datanet.
    pub async fn rewards(&self, datanet: &str) -> Result<RewardsReport, String> {
        let datanet = datanet.to_string();
        self.ask(|reply| super::Command::Epoch(EpochCommand::Rewards { datanet, reply }))
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn epoch_attestation(&self, datanet: &str, epoch: Option<u64>) -> Result<(u64, Vec<u8>), String> {
        let datanet = datanet.to_string();
        self.ask(|reply| super::Command::Epoch(EpochCommand::Attestation { datanet, epoch, reply }))
            .await
            .map_err(|e| e.to_string())?
    }
}

impl DaemonActor {
    pub(super) async fn on_epoch_command(&mut self, cmd: EpochCommand) {
        match cmd {
            EpochCommand::Run { datanet, reply } => {
                let r = self.epoch_run(&datanet).await;
                let _ = reply.send(r);
            }
            EpochCommand::Status(reply) => {
                let _ = reply.send(self.epoch_status());
            }
            EpochCommand::Attestation { datanet, epoch, reply } => {
                let _ = reply.send(self.epoch_attestation(&datanet, epoch));
            }
            EpochCommand::Rewards { datanet, reply } => {
                let _ = reply.send(self.rewards(&datanet));
            }
        }
    }

    /// A Datanet this peer stores, by id or name.
    fn resolve_known(&self, datanet: &str) -> Result<DatanetId, String> {
        Ok(self.store.require_datanet(datanet).map_err(|e| e.to_string())?.0)
    }

    fn resolve_joined(&self, datanet: &str) -> Result<DatanetId, String> {
        let id = self.resolve_known(datanet)?;
        if !self.joined.contains_key(&id) {
            return Err(format!("datanet `{datanet}` is not joined by this daemon"));
        }
        Ok(id)
    }

    async fn epoch_run(&mut self, datanet: &str) -> Result<EpochRunReply, String> {
        self.cfg.epoch.validate()?;
        let d = self.resolve_joined(datanet)?;
        let me = self.identity.public_key();
        if !self.joined[&d].committee.members.contains(&me) {
            return Err(format!("this peer ({}) is not on the committee of datanet {}", me.short(), d.short()));
        }
        if let Some(r) = self.epochs.running.get(&d) {
            if r.machine.attestation().is_none() {
                let status = r.machine.status();
                return Ok(EpochRunReply { datanet: d.to_hex(), epoch: status.epoch, started: false, status });
            }
        }
        let epoch = self.next_epoch(&d)?;
        let opens = self.joined[&d].epoch_opens_ms(epoch);
        let now = unix_ms();
        if now < opens {
            return Err(format!(
                "epoch {epoch} of datanet {} opens in {} s (at unix ms {opens}; epochs are {} s long)",
                d.short(),
                (opens - now).div_ceil(1000),
                self.joined[&d].epoch_length_secs
            ));
        }
        self.epoch_create(d, epoch).await?;
        // Durable before the reply says "started": a crash before the machine persisted or sent
        // anything must not lose the epoch ([`DaemonActor::epoch_resume`] picks it up again).
        let ledger = Ledger::open(self.store.db());
        if ledger.snapshot(&d, epoch).map_err(|e| e.to_string())?.is_none() {
            ledger.save_snapshot(&d, epoch, &Snapshot::default()).map_err(|e| e.to_string())?;
        }
        let status = self.epochs.running[&d].machine.status();
        tracing::info!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch, "epoch started here");
        Ok(EpochRunReply { datanet: d.to_hex(), epoch, started: true, status })
    }

    fn epoch_status(&self) -> Vec<DatanetEpochs> {
        let ledger = Ledger::open(self.store.db());
        let mut out: Vec<DatanetEpochs> = self
            .joined
            .iter()
            .map(|(d, m)| {
                let head = ledger.head(d).ok().flatten();
                DatanetEpochs {
                    datanet: d.to_hex(),
                    name: m.name.clone(),
                    current: self.epochs.running.get(d).map(|r| r.machine.status()),
                    head_epoch: head.map(|h| h.epoch),
                    head_hash: head.map(|h| hex::encode(h.hash)),
                    last_error: self.epochs.errors.get(d).cloned(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The epoch side of a joined Datanet for [`super::Status`].
    pub(super) fn epoch_view(&self, d: &DatanetId, m: &Manifest) -> super::EpochView {
        let me = self.identity.public_key();
        let next_epoch = self.next_epoch(d).unwrap_or(FIRST_EPOCH);
        let now = self.epochs.now_ms();
        let r = self.epochs.running.get(d);
        let member = m.committee.members.contains(&me);
        let heard = r.map(|r| r.heard.len() + usize::from(member && !r.heard.contains(&me)));
        super::EpochView {
            committee: m.committee.members.len(),
            member,
            current: r.map(|r| r.machine.status()),
            heard_from: heard.unwrap_or(0),
            next_deadline_in_ms: r.and_then(|r| r.machine.next_deadline()).map(|t| t.saturating_sub(now)),
            next_epoch,
            next_opens_in_ms: m.epoch_opens_ms(next_epoch).saturating_sub(unix_ms()),
            jobs_assigned: r.map(|r| r.assigned.len() as u32).unwrap_or(0),
            jobs_measured: r.map(|r| r.measured.len() as u32).unwrap_or(0),
            training: r.is_some_and(|r| r.training),
            last_error: self.epochs.errors.get(d).cloned(),
        }
    }

    fn rewards(&self, datanet: &str) -> Result<RewardsReport, String> {
        let d = self.resolve_known(datanet)?;
        Ledger::open(self.store.db()).report(&d).map_err(|e| e.to_string())
    }

    fn epoch_attestation(&self, datanet: &str, epoch: Option<u64>) -> Result<(u64, Vec<u8>), String> {
        let d = self.resolve_known(datanet)?;
        let ledger = Ledger::open(self.store.db());
        let epoch = match epoch {
            Some(e) => e,
            None => ledger.head(&d).map_err(|e| e.to_string())?.ok_or("no attested epoch yet")?.epoch,
        };
        let a = ledger
            .attestation(&d, epoch)
            .map_err(|e| e.to_string())?
            .ok_or(format!("no attestation of epoch {epoch}"))?;
        Ok((epoch, codec::encode(&a)))
    }

    fn next_epoch(&self, d: &DatanetId) -> Result<u64, String> {
        let head = Ledger::open(self.store.db()).head(d).map_err(|e| e.to_string())?;
        Ok(head.map(|h| h.epoch + 1).unwrap_or(FIRST_EPOCH))
    }

    /// Creates (or restores from its snapshot) and starts the machine of `epoch`, replacing any
    /// earlier one, and carries out its first actions.
    async fn epoch_create(&mut self, d: DatanetId, epoch: u64) -> Result<(), String> {
        let m = self.joined.get(&d).ok_or("datanet not joined")?.clone();
        let ledger = Ledger::open(self.store.db());
        let prev = ledger.head(&d).map_err(|e| e.to_string())?.map(|h| h.hash).unwrap_or([0; 32]);
        let mut cfg = EpochConfig::from_manifest(&m, epoch, prev, timing(&m));
        cfg.known = known_priorities(&ledger, &d)?;
        let held = held_with_times(&self.store, &d)?;
        let key = self.identity.signing_key();
        let mut machine = match ledger.snapshot(&d, epoch).map_err(|e| e.to_string())? {
            Some(s) => {
                tracing::info!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch, "resuming from snapshot");
                EpochMachine::restore(cfg, key, held, s)
            }
            None => EpochMachine::new(cfg, key, held),
        };
        let now = self.epochs.now_ms();
        let mut actions = machine.start(now);
        // A snapshot may hold an attestation the ledger missed (crash between the two).
        if let Some(a) = machine.attestation() {
            actions.push(Action::Attested { attestation: Box::new(a.clone()), standing_lost: Vec::new() });
        }
        self.epochs.errors.remove(&d);
        self.epochs.running.insert(
            d,
            Running {
                machine,
                planned: None,
                jobs: Vec::new(),
                training: false,
                assigned: BTreeSet::new(),
                measured: BTreeSet::new(),
                heard: BTreeSet::new(),
            },
        );
        self.epoch_apply(d, actions).await;
        Ok(())
    }

    /// Resumes, at start, the epoch this peer had started or joined when it stopped: a snapshot
    /// of the ledger's next epoch is kept only for that. Without this, a member that crashed
    /// right after starting an epoch (its first messages not yet sent) would leave it running
    /// nowhere, and one that crashed later would stay silent until it heard from the others.
    pub(super) async fn epoch_resume(&mut self, d: DatanetId) {
        if self.epochs.running.contains_key(&d) {
            return;
        }
        let Ok(next) = self.next_epoch(&d) else { return };
        if !matches!(Ledger::open(self.store.db()).snapshot(&d, next), Ok(Some(_))) {
            return;
        }
        match self.epoch_create(d, next).await {
            Ok(()) => {
                tracing::info!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = next, "resumed after a restart")
            }
            Err(e) => self.epoch_error(d, format!("epoch {next}: not resumed: {e}")),
        }
    }

    /// Timers and input refresh; called on the actor's tick.
    pub(super) async fn epoch_tick(&mut self) {
        if self.epochs.running.is_empty() {
            return;
        }
        let refresh = self.epochs.last_refresh.elapsed() >= INPUT_REFRESH;
        if refresh {
            self.epochs.last_refresh = Instant::now();
        }
        let now = self.epochs.now_ms();
        let ds: Vec<DatanetId> = self.epochs.running.keys().copied().collect();
        for d in ds {
            let held = if refresh && self.epochs.running[&d].machine.input_certificate().is_none() {
                held_with_times(&self.store, &d).unwrap_or_default()
            } else {
                Vec::new()
            };
            let Some(r) = self.epochs.running.get_mut(&d) else { continue };
            r.machine.add_inputs(held);
            if r.machine.next_deadline().is_some_and(|t| t <= now) {
                let actions = r.machine.on_timer(now);
                self.epoch_apply(d, actions).await;
            }
        }
    }

    pub(super) async fn on_epoch_internal(&mut self, msg: EpochInternal) {
        let now = self.epochs.now_ms();
        match msg {
            EpochInternal::Planned { datanet, epoch, result } => {
                let Some(r) = self.epochs.running.get_mut(&datanet).filter(|r| r.machine.config().epoch == epoch)
                else {
                    return;
                };
                match result {
                    Ok(p) => {
                        tracing::info!(target: "datanet::daemon::epoch", datanet = %datanet.short(), epoch, units = p.plan.units.len(), jobs = p.plan.job_count(), "plan ready");
                        let p: Arc<Planned> = Arc::from(p);
                        r.planned = Some(p.clone());
                        let actions = r.machine.set_plan(now, p.plan.clone());
                        self.epoch_apply(datanet, actions).await;
                    }
                    Err(e) => self.epoch_error(datanet, format!("epoch {epoch}: plan: {e}")),
                }
            }
            EpochInternal::Measured { datanet, epoch, job, result } => {
                let Some(r) = self.epochs.running.get_mut(&datanet).filter(|r| r.machine.config().epoch == epoch)
                else {
                    return;
                };
                match result {
                    Ok(u) => {
                        tracing::info!(target: "datanet::daemon::epoch", datanet = %datanet.short(), epoch, job, utility = u, "job measured");
                        r.measured.insert(job);
                        let actions = r.machine.on_utility(now, job, u);
                        self.epoch_apply(datanet, actions).await;
                    }
                    Err(e) => self.epoch_error(datanet, format!("epoch {epoch}: job {job}: {e}")),
                }
            }
            EpochInternal::TrainingDone { datanet, epoch, error } => {
                if let Some(e) = error {
                    self.epoch_error(datanet, format!("epoch {epoch}: training: {e}"));
                }
                if let Some(r) = self.epochs.running.get_mut(&datanet).filter(|r| r.machine.config().epoch == epoch) {
                    r.training = false;
                }
                self.epoch_start_training(datanet);
            }
        }
    }

    fn epoch_error(&mut self, d: DatanetId, e: String) {
        tracing::error!(target: "datanet::daemon::epoch", datanet = %d.short(), error = %e, "epoch driver");
        self.epochs.errors.insert(d, e);
    }

    /// Carries out a machine's actions in order; stops at a snapshot that could not be persisted
    /// (the actions after it may be votes it protects).
    async fn epoch_apply(&mut self, d: DatanetId, actions: Vec<Action>) {
        let Some(epoch) = self.epochs.running.get(&d).map(|r| r.machine.config().epoch) else { return };
        let ledger = Ledger::open(self.store.db());
        for a in actions {
            match a {
                Action::Broadcast(m) => {
                    let frame = super::wire::EpochFrame::encode(self.epochs.next_sent(), &m);
                    if let Err(e) = self.net.publish(d, TopicKind::Epochs, frame).await {
                        tracing::debug!(target: "datanet::daemon::epoch", error = %e, "epoch message not published");
                    }
                }
                Action::Persist(s) => {
                    if let Err(e) = ledger.save_snapshot(&d, epoch, &s) {
                        self.epoch_error(d, format!("epoch {epoch}: snapshot not persisted: {e}"));
                        return;
                    }
                }
                Action::NeedPlan { seed, items } => self.epoch_spawn_plan(d, epoch, seed, items),
                Action::Train { job } => {
                    if let Some(r) = self.epochs.running.get_mut(&d) {
                        if !r.jobs.contains(&job) {
                            r.jobs.push(job);
                        }
                        r.assigned.insert(job);
                    }
                }
                Action::StoreEvidence(e) => {
                    tracing::warn!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch, offender = %e.offender().short(), "evidence of equivocation");
                    if let Err(err) = ledger.put_evidence(&d, &e) {
                        self.epoch_error(d, format!("evidence not stored: {err}"));
                    }
                }
                Action::Certified(c) => {
                    tracing::info!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch, phase = ?c.header.phase, view = c.header.view, signers = c.signer_indexes().len(), "certificate");
                }
                Action::Attested { attestation, standing_lost } => {
                    // Checked like any attestation from the network (the sealed reveal above all:
                    // a member without the pool attests none and must take its peers' instead).
                    if let Some(m) = self.joined.get(&d) {
                        let prev =
                            ledger.head(&d).ok().flatten().and_then(|h| ledger.attestation(&d, h.epoch).ok().flatten());
                        let prev = prev.filter(|p| p.score.header.epoch + 1 == epoch);
                        if let Err(e) = attestation.verify(m, prev.as_ref()) {
                            self.epoch_error(
                                d,
                                format!("epoch {epoch}: own attestation does not verify, not appended: {e}"),
                            );
                            continue;
                        }
                    }
                    match ledger::append_and_store_blob(&self.store, &attestation, &standing_lost).await {
                        Ok((appended, blob)) => {
                            self.refresh_sealed_gauge();
                            tracing::info!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch, hash = %hex::encode(attestation.hash()), blob = %blob.short(), contributors = attestation.leaves.len(), new = matches!(appended, ledger::Appended::New), "epoch attested");
                        }
                        Err(e) => self.epoch_error(d, format!("epoch {epoch}: ledger append: {e}")),
                    }
                }
                Action::Rejected { from, reason } => {
                    tracing::debug!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch, from = ?from.map(|k| k.short()), %reason, "epoch message refused");
                }
            }
        }
        self.epoch_start_training(d);
    }
}
