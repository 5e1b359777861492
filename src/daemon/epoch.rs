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

use super::{DaemonActor, DaemonError, DaemonHandle, Internal};
use crate::admission;
use crate::attribution::epoch::machine::DEFAULT_TAU;
use crate::attribution::epoch::{
    Action, Attestation, EpochConfig, EpochMachine, EpochMessage, EpochStatus, Snapshot, Timing,
};
use crate::attribution::{self, EpochParams, EpochPlan};
use crate::codec;
use crate::config::EpochSettings;
use crate::ids::{ContributionId, DatanetId, PeerKey, RecordHash};
use crate::manifest::Manifest;
use crate::measure::input_records;
use crate::net::blobs::FetchKind;
use crate::net::catchup::{CatchupRequest, CatchupResponse, RESPONSE_BYTES_MAX};
use crate::net::{NetHandle, TopicKind};
use crate::store::Store;
use crate::store::contributions::AdmittedRecord;
use crate::store::ledger::{self, Ledger, RewardsReport};
use crate::trainer::utility::{UtilityJob, UtilityOptions};
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Attestations asked for per catch-up request.
const LEDGER_CATCHUP_BATCH: u32 = 16;

/// Answers a ledger catch-up request: consecutive attestations from `from`, at most `limit` and
/// at most half the response bound in bytes (at least one, which always fits: an attestation's
/// canonical size limit is below the response bound).
pub(super) fn answer_attestations(store: &Store, d: &DatanetId, from: u64, limit: usize) -> CatchupResponse {
    let ledger = Ledger::open(store.db());
    let (mut items, mut bytes) = (Vec::new(), 0usize);
    for e in from..from.saturating_add(limit.min(LEDGER_CATCHUP_BATCH as usize) as u64) {
        match ledger.attestation(d, e) {
            Ok(Some(a)) => {
                let b = codec::encode(&a);
                bytes += b.len();
                if !items.is_empty() && bytes > RESPONSE_BYTES_MAX as usize / 2 {
                    break;
                }
                items.push(b);
            }
            Ok(None) => break,
            Err(e) => return CatchupResponse::Refused { reason: e.to_string() },
        }
    }
    CatchupResponse::Attestations { items }
}

/// Appends attestations learned by catch-up, in order: each must be this peer's next epoch,
/// verify against the manifest's committee and chain to the head (as `datanet attestation verify
/// --prev` checks). Returns how many were appended; stops with an error at the first that does not.
pub(super) async fn adopt_attestations(store: &Store, manifest: &Manifest, items: &[Vec<u8>]) -> Result<usize, String> {
    let ledger = Ledger::open(store.db());
    let d = manifest.id();
    for (n, bytes) in items.iter().enumerate() {
        let a: Attestation = codec::decode(bytes).map_err(|e| format!("attestation {n}: {e}"))?;
        let head = ledger.head(&d).map_err(|e| e.to_string())?;
        let prev = match head {
            Some(h) => {
                Some(ledger.attestation(&d, h.epoch).map_err(|e| e.to_string())?.ok_or("head attestation missing")?)
            }
            None => None,
        };
        let want = head.map(|h| h.epoch + 1).unwrap_or(FIRST_EPOCH);
        let got = a.score.header.epoch;
        if got != want {
            return Err(format!("attestation of epoch {got} where epoch {want} was expected"));
        }
        a.verify(manifest, prev.as_ref()).map_err(|e| format!("attestation of epoch {got}: {e}"))?;
        let standing_lost = crate::attribution::epoch::machine::standing_lost(&a, DEFAULT_TAU);
        ledger::append_and_store_blob(store, &a, &standing_lost).await.map_err(|e| e.to_string())?;
    }
    Ok(items.len())
}

/// Asks `peer` for the attestations after this peer's ledger head until it has no more, appending
/// each (see [`adopt_attestations`]). Returns how many were appended.
pub(super) async fn catch_up_ledger(
    store: &Store,
    net: &NetHandle,
    peer: PeerId,
    manifest: &Manifest,
) -> Result<usize, String> {
    let d = manifest.id();
    let mut appended = 0;
    loop {
        let head = Ledger::open(store.db()).head(&d).map_err(|e| e.to_string())?;
        let from_epoch = head.map(|h| h.epoch + 1).unwrap_or(FIRST_EPOCH);
        let req = CatchupRequest::Attestations { datanet: d, from_epoch, limit: LEDGER_CATCHUP_BATCH };
        let items = match net.catchup(peer, req).await.map_err(|e| e.to_string())? {
            CatchupResponse::Attestations { items } => items,
            CatchupResponse::Refused { reason } => return Err(format!("refused: {reason}")),
            _ => return Err("unexpected answer to attestations".into()),
        };
        if items.is_empty() || items.len() > LEDGER_CATCHUP_BATCH as usize {
            return Ok(appended);
        }
        appended += adopt_attestations(store, manifest, &items).await?;
    }
}

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

/// Whether a message may start epoch `epoch` here (no machine runs for it yet).
#[derive(Debug, PartialEq, Eq)]
pub enum StartGate {
    Open,
    /// Signed by a key outside the committee: refused, and it costs the sender gossip score.
    NotMember,
    /// A certificate, attestation or evidence (no single signer): it starts nothing and is
    /// ignored without blame — an honest peer may relay one for an epoch not started here.
    NoSigner,
    /// A member's, before the epoch's window opens on this clock: ignored.
    Early {
        opens_ms: u64,
    },
}

/// Only a committee member's signed message starts an epoch here, and only once its window is
/// open on this clock (`now_ms`, unix): issuance follows the manifest's schedule, not the most
/// eager party. The signature itself is checked by the machine the message is then fed to.
pub fn may_start_from(m: &Manifest, epoch: u64, msg: &EpochMessage, now_ms: u64) -> StartGate {
    match msg.signer() {
        Some(k) if m.committee.members.contains(&k) => {}
        Some(_) => return StartGate::NotMember,
        None => return StartGate::NoSigner,
    }
    let opens_ms = m.epoch_opens_ms(epoch);
    if now_ms < opens_ms { StartGate::Early { opens_ms } } else { StartGate::Open }
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

/// The plan of an epoch and what training its jobs needs.
pub(super) struct Planned {
    plan: EpochPlan,
    values: HashMap<RecordHash, Value>,
    eval: Vec<Value>,
    base: PathBuf,
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
        Ok(self
            .store
            .resolve_datanet(datanet)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("datanet `{datanet}` is not known here"))?
            .0)
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
        let heard = r.map(|r| {
            let mut h = r.heard.clone();
            if m.committee.members.contains(&me) {
                h.insert(me);
            }
            h.len()
        });
        super::EpochView {
            committee: m.committee.members.len(),
            member: m.committee.members.contains(&me),
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

    /// The seam for epoch agreement: gossip bytes on `datanet/<id>/epochs`.
    /// An epoch-topic frame: the inner message goes to [`Self::on_epoch_bytes`]; a valid one
    /// propagates unless a frame of the same message did within half the rebroadcast period.
    pub(super) async fn on_epoch_frame(&mut self, d: DatanetId, from: PeerId, data: &[u8]) -> MessageAcceptance {
        let Some(m) = self.joined.get(&d) else { return MessageAcceptance::Ignore };
        let period = m.protocol.rebroadcast_ms / 2;
        let frame: super::wire::EpochFrame = match codec::decode(data) {
            Ok(f) => f,
            Err(_) => {
                self.metrics.reject(super::metrics::RejectReason::Malformed);
                return MessageAcceptance::Reject;
            }
        };
        match self.on_epoch_bytes(d, from, &frame.message).await {
            MessageAcceptance::Accept if !self.epochs.may_forward(&frame.message, period) => MessageAcceptance::Ignore,
            other => other,
        }
    }

    pub(super) async fn on_epoch_bytes(&mut self, d: DatanetId, from: PeerId, data: &[u8]) -> MessageAcceptance {
        if !self.joined.contains_key(&d) {
            return MessageAcceptance::Ignore;
        }
        let msg: EpochMessage = match codec::decode(data) {
            Ok(m) => m,
            Err(_) => {
                self.metrics.reject(super::metrics::RejectReason::Malformed);
                return MessageAcceptance::Reject;
            }
        };
        let running_epoch = self.epochs.running.get(&d).map(|r| r.machine.config().epoch);
        match (msg.epoch(), running_epoch) {
            (Some((md, _)), _) if md != d => return MessageAcceptance::Reject,
            (None, None) => return MessageAcceptance::Ignore,
            (None, Some(_)) => {}
            (Some((_, e)), Some(r)) if e == r => {}
            (Some((_, e)), r) => {
                let next = match self.next_epoch(&d) {
                    Ok(n) => n,
                    Err(_) => return MessageAcceptance::Ignore,
                };
                if e > next {
                    // This peer's ledger is behind the committee's: fetch the attestations it missed.
                    self.start_ledger_catchup(d, from);
                }
                if e != next || r.is_some_and(|r| r >= e) {
                    tracing::debug!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, next, "message for another epoch");
                    return MessageAcceptance::Ignore;
                }
                match may_start_from(&self.joined[&d], e, &msg, unix_ms()) {
                    StartGate::Open => {}
                    StartGate::NotMember => {
                        self.metrics.reject(super::metrics::RejectReason::EpochNotStarted);
                        return MessageAcceptance::Reject;
                    }
                    StartGate::NoSigner => return MessageAcceptance::Ignore,
                    StartGate::Early { opens_ms } => {
                        tracing::debug!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, opens_ms, "message for an epoch whose window is not open");
                        return MessageAcceptance::Ignore;
                    }
                }
                if let Err(err) = self.epoch_create(d, e).await {
                    tracing::warn!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, error = %err, "cannot join epoch");
                    return MessageAcceptance::Ignore;
                }
                tracing::info!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, "joined an epoch started elsewhere");
            }
        }
        let now = self.epochs.now_ms();
        let Some(r) = self.epochs.running.get_mut(&d) else { return MessageAcceptance::Ignore };
        let actions = r.machine.on_bytes(now, data);
        let rejected = actions.iter().any(|a| matches!(a, Action::Rejected { .. }));
        if let Some(k) = msg.signer().filter(|k| !rejected && self.joined[&d].committee.members.contains(k)) {
            r.heard.insert(k);
        }
        self.epoch_apply(d, actions).await;
        // The machine refuses only bad input for this epoch (signature, committee, assignment,
        // size): the sender loses gossip score.
        if rejected { MessageAcceptance::Reject } else { MessageAcceptance::Accept }
    }

    /// Starts a ledger-only catch-up from `peer` unless one is running for `d`.
    pub(super) fn start_ledger_catchup(&mut self, d: DatanetId, peer: PeerId) {
        let Some(manifest) = self.joined.get(&d).cloned() else { return };
        if !self.ledger_catchup.insert(d) {
            return;
        }
        let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
        self.tasks.spawn(async move {
            let appended = catch_up_ledger(&store, &net, peer, &manifest).await.unwrap_or_else(|e| {
                tracing::info!(target: "datanet::daemon::catchup", %peer, error = %e, "ledger catch-up stopped");
                0
            });
            let _ = internal.send(Internal::LedgerCaughtUp { datanet: d, appended }).await;
        });
    }

    /// A ledger catch-up ended: a machine left behind by the attestations it appended (an epoch
    /// the committee attested without this peer) is dropped, so the next epoch can start here.
    pub(super) fn on_ledger_caught_up(&mut self, d: DatanetId, appended: usize) {
        self.ledger_catchup.remove(&d);
        if appended == 0 {
            return;
        }
        let head = self.next_epoch(&d).unwrap_or(FIRST_EPOCH).saturating_sub(1);
        tracing::info!(target: "datanet::daemon::catchup", datanet = %d.short(), appended, head, "ledger caught up");
        if self
            .epochs
            .running
            .get(&d)
            .is_some_and(|r| r.machine.config().epoch <= head && r.machine.attestation().is_none())
        {
            self.epochs.running.remove(&d);
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

    /// Sets `datanet_sealed_pools_low`: joined Datanets whose sealed pool runs low.
    pub(super) fn refresh_sealed_gauge(&self) {
        let low = self
            .joined
            .values()
            .filter(|m| !m.eval.sealed.is_empty() && sealed_status(&self.store, m).is_ok_and(|s| s.low))
            .count();
        self.metrics.sealed_pools_low.store(low as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn epoch_spawn_plan(&mut self, d: DatanetId, epoch: u64, seed: [u8; 32], items: Vec<(ContributionId, u64)>) {
        let Some(m) = self.joined.get(&d).cloned() else { return };
        let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
        let (settings, datadir, me) = (self.cfg.epoch.clone(), self.datadir.clone(), self.identity.public_key());
        self.tasks.spawn(async move {
            let result =
                build_plan(&store, &net, me, &m, (d, epoch), seed, &items, &settings, &datadir).await.map(Box::new);
            let _ = internal.send(Internal::Epoch(EpochInternal::Planned { datanet: d, epoch, result })).await;
        });
    }

    fn epoch_start_training(&mut self, d: DatanetId) {
        let Some(m) = self.joined.get(&d).cloned() else { return };
        let Some(r) = self.epochs.running.get_mut(&d) else { return };
        if r.training || r.jobs.is_empty() {
            return;
        }
        let Some(planned) = r.planned.clone() else { return };
        let jobs = std::mem::take(&mut r.jobs);
        r.training = true;
        let epoch = r.machine.config().epoch;
        let threads = self.cfg.epoch.train_threads;
        let internal = self.internal.clone();
        self.tasks.spawn(async move {
            let tx = internal.clone();
            let error = match tokio::task::spawn_blocking(move || {
                train_jobs(&planned, &m, &jobs, threads, d, epoch, &tx)
            })
            .await
            {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(format!("training task: {e}")),
            };
            let _ = internal.send(Internal::Epoch(EpochInternal::TrainingDone { datanet: d, epoch, error })).await;
        });
    }
}

/// Measures `jobs` one after another and sends each utility to the actor (blocking thread).
fn train_jobs(
    planned: &Planned,
    m: &Manifest,
    jobs: &[u32],
    threads: usize,
    d: DatanetId,
    epoch: u64,
    tx: &mpsc::Sender<Internal>,
) -> Result<(), String> {
    let opts = UtilityOptions { threads, ..UtilityOptions::default() };
    let mut job = UtilityJob::open(&planned.base, &m.task, &m.recipe, &m.eval.slices, &planned.eval, opts)
        .map_err(|e| format!("loading the base from {}: {e}", planned.base.display()))?;
    let seed = attribution::jobs::training_seed(planned.plan.seed, m.recipe.seed);
    for &j in jobs {
        let result = match planned.plan.job_records(j) {
            None => Err(format!("job {j} is not in the plan")),
            Some(hashes) => {
                let values: Vec<Value> = hashes.iter().filter_map(|h| planned.values.get(h).cloned()).collect();
                job.utility_seeded(&values, seed).map_err(|e| e.to_string())
            }
        };
        if tx.blocking_send(Internal::Epoch(EpochInternal::Measured { datanet: d, epoch, job: j, result })).is_err() {
            break;
        }
    }
    Ok(())
}

/// Reads the frozen input set, the evaluation file and (with a sealed pool) this epoch's sealed
/// split, and computes the plan (blocking part on a blocking thread).
#[allow(clippy::too_many_arguments)]
async fn build_plan(
    store: &Store,
    net: &NetHandle,
    me: PeerKey,
    m: &Manifest,
    (d, epoch): (DatanetId, u64),
    seed: [u8; 32],
    items: &[(ContributionId, u64)],
    settings: &EpochSettings,
    datadir: &Path,
) -> Result<Planned, String> {
    // The freeze's certified witnessed priorities order the records: never the contributor's own
    // signed `created_ms`.
    let priorities: BTreeMap<ContributionId, u64> = items.iter().copied().collect();
    let records = store.datanet_records(&d, Some(&priorities)).await.map_err(|e| format!("input records: {e}"))?;
    let public = eval_records(store, net, me, m, Duration::from_millis(settings.eval_fetch_timeout_ms)).await?;
    let split = sealed_split(store, m, epoch, &seed)?;
    let revealed = admission::sealed::revealed_in_ledger(store, m).map_err(|e| e.to_string())?;
    let (m, datadir) = (m.clone(), datadir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let (reveal, opened) = split.unzip();
        let opened = opened.unwrap_or_default();
        let records = uncontaminated(&m, records, &public, &revealed, &opened, epoch);
        let public_values: Vec<Value> = public.iter().map(admission::sealed::with_slice).collect();
        let (inputs, eval_emb) = input_records(&m.task, &records, &public_values).map_err(|e| e.to_string())?;
        let params = EpochParams::from_manifest(&m);
        let mut plan = attribution::plan(&inputs, &eval_emb, seed, &params).map_err(|e| e.to_string())?;
        plan.sealed = reveal;
        let base = base_dir(&datadir, &m, &public_values)?;
        let values = records.into_iter().map(|r| (r.hash, r.value)).collect();
        let eval = admission::sealed::measured_eval(&public, &opened);
        Ok(Planned { plan, values, eval, base })
    })
    .await
    .map_err(|e| format!("plan task: {e}"))?
}

/// This epoch's sealed split and its reveal, when the Datanet has a sealed pool: the split the
/// seed chooses among the records the previous attestation had not revealed yet.
fn sealed_split(
    store: &Store,
    m: &Manifest,
    epoch: u64,
    seed: &[u8; 32],
) -> Result<Option<(crate::sealed::Reveal, Vec<admission::EvalRecord>)>, String> {
    if m.eval.sealed.is_empty() {
        return Ok(None);
    }
    let d = m.id();
    let pool = store.sealed_pool(&d).map_err(|e| e.to_string())?.ok_or_else(|| {
        format!(
            "the sealed evaluation pool of {} is not here: a committee member imports it with `datanet datanet sealed import {} FILE`",
            m.name, m.name
        )
    })?;
    // The founder's extensions in effect for this epoch add parts after the manifest's.
    let extensions = crate::sealed::in_effect(&pool.extensions, epoch);
    let parts = m.sealed_parts(&extensions, epoch)?;
    let before = sealed_used(store, m, epoch, &parts)?;
    let split = crate::sealed::select(seed, &parts, &before, m.protocol.sealed_split);
    let reveal = pool.reveal(&extensions, &before, &split);
    let opened = admission::sealed::opened_records(m, &reveal).map_err(|e| e.to_string())?;
    Ok(Some((reveal, opened)))
}

/// The revealed-index bitmaps of `parts` before `epoch`: the previous attestation's, and none
/// revealed of a part an extension added since.
pub fn sealed_used(
    store: &Store,
    m: &Manifest,
    epoch: u64,
    parts: &[crate::sealed::SealedPart],
) -> Result<Vec<Vec<u8>>, String> {
    let d = m.id();
    let ledger = Ledger::open(store.db());
    match ledger.head(&d).map_err(|e| e.to_string())? {
        None if epoch == FIRST_EPOCH => Ok(crate::sealed::fresh(parts)),
        Some(h) if h.epoch + 1 == epoch => {
            let a = ledger.attestation(&d, h.epoch).map_err(|e| e.to_string())?.ok_or("head attestation missing")?;
            let r = a.sealed.ok_or(format!("the attestation of epoch {} reveals no sealed split", h.epoch))?;
            let mut used: Vec<Vec<u8>> = r.parts.into_iter().map(|p| p.used).collect();
            if used.len() > parts.len() {
                return Err(format!(
                    "epoch {} drew from {} sealed parts, epoch {epoch} from {}",
                    h.epoch,
                    used.len(),
                    parts.len()
                ));
            }
            used.extend(parts[used.len()..].iter().map(|p| crate::sealed::bitmap_empty(p.count)));
            Ok(used)
        }
        head => Err(format!(
            "epoch {epoch} needs the attestation of epoch {} to choose its sealed split; the ledger's head is {}",
            epoch - 1,
            head.map_or("empty".to_string(), |h| format!("epoch {}", h.epoch))
        )),
    }
}

/// How much of a Datanet's sealed evaluation pool is left (`datanet datanet sealed status`,
/// `datanet status`, the `datanet_sealed_epochs_left` metric).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedStatus {
    /// Whether this peer holds the pool (committee members need it to measure).
    pub held: bool,
    pub parts: Vec<SealedPartStatus>,
    /// Epochs of full splits of every slice left after the ledger's head.
    pub epochs_left: u32,
    /// Fewer than the manifest's `protocol.sealed_low_epochs` left: the founder should extend it.
    pub low: bool,
}

/// One slice of [`SealedStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPartStatus {
    pub slice: String,
    pub count: u32,
    pub remaining: u32,
}

/// The sealed pool's state after this peer's ledger head.
pub fn sealed_status(store: &Store, m: &Manifest) -> Result<SealedStatus, String> {
    let ledger = Ledger::open(store.db());
    let head = ledger.head(&m.id()).map_err(|e| e.to_string())?;
    let pool = store.sealed_pool(&m.id()).map_err(|e| e.to_string())?;
    // Every extension known here: the pool's (a member's), else the ledger head's reveal's.
    let extensions = match &pool {
        Some(p) => p.extensions.clone(),
        None => head
            .and_then(|h| ledger.attestation(&m.id(), h.epoch).ok().flatten())
            .and_then(|a| a.sealed)
            .map(|r| r.extensions)
            .unwrap_or_default(),
    };
    let parts = crate::sealed::parts_with(&m.eval.sealed, &extensions);
    let used = if parts.is_empty() {
        Vec::new()
    } else {
        sealed_used(store, m, head.map_or(FIRST_EPOCH, |h| h.epoch + 1), &parts)?
    };
    let remaining = crate::sealed::remaining(&parts, &used);
    let epochs_left = crate::sealed::epochs_left(&parts, &used, m.protocol.sealed_split);
    Ok(SealedStatus {
        held: pool.is_some(),
        parts: parts
            .iter()
            .zip(remaining)
            .map(|(p, remaining)| SealedPartStatus { slice: p.slice.clone(), count: p.count, remaining })
            .collect(),
        epochs_left,
        low: !parts.is_empty() && epochs_left < m.protocol.sealed_low_epochs,
    })
}

/// The input records less those that copy or nearly copy an evaluation record known at this
/// epoch (public, revealed before, or in this epoch's split): a record admitted before its
/// evaluation twin became known earns nothing from then on. Every member drops the same ones.
pub(crate) fn uncontaminated(
    m: &Manifest,
    records: Vec<AdmittedRecord>,
    public: &[admission::EvalRecord],
    revealed: &[admission::EvalRecord],
    opened: &[admission::EvalRecord],
    epoch: u64,
) -> Vec<AdmittedRecord> {
    use admission::sealed::canonical_of;
    let mut ix = admission::ContaminationIndex::new(m, public);
    ix.extend(admission::contamination::SEALED_SOURCE, canonical_of(revealed).chain(canonical_of(opened)));
    let before = records.len();
    let kept: Vec<AdmittedRecord> =
        records.into_iter().filter(|r| ix.check_value(&r.hash, &r.value).is_none()).collect();
    if kept.len() < before {
        tracing::info!(target: "datanet::daemon::epoch", datanet = %m.id().short(), epoch, dropped = before - kept.len(), "records copying evaluation records earn nothing");
    }
    kept
}

/// The public evaluation records of a Datanet, each with its `slice` field; the file is fetched
/// from the committee and the founder when this peer does not hold it.
pub async fn eval_values(
    store: &Store,
    net: &NetHandle,
    me: PeerKey,
    m: &Manifest,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    Ok(eval_records(store, net, me, m, timeout).await?.iter().map(admission::sealed::with_slice).collect())
}

/// The largest public evaluation file a peer downloads.
pub const EVAL_FILE_BYTES_MAX: u64 = 64 << 20;

/// The public evaluation records of a Datanet (see [`eval_values`]).
pub async fn eval_records(
    store: &Store,
    net: &NetHandle,
    me: PeerKey,
    m: &Manifest,
    timeout: Duration,
) -> Result<Vec<admission::EvalRecord>, String> {
    let h = m.eval.public_hash;
    if !store.has_blob(&h).await.unwrap_or(false) {
        let mut providers: Vec<PeerKey> = m.committee.members.iter().copied().filter(|k| *k != me).collect();
        if m.founder != me && !providers.contains(&m.founder) {
            providers.insert(0, m.founder);
        }
        net.blobs()
            .fetch(h, FetchKind::Raw, &providers, timeout, EVAL_FILE_BYTES_MAX)
            .await
            .map_err(|e| format!("fetching the evaluation file {}: {e}", h.short()))?;
    }
    let bytes = store.get_blob(&h).await.map_err(|e| format!("the evaluation file {}: {e}", h.short()))?;
    admission::parse_eval(m, &bytes).map_err(|e| format!("the evaluation file: {e}"))
}

/// The base folder of a manifest, provisioned like every other path's ([`crate::trainer::provision_base`]):
/// `models/<hash>/` re-hashed before use, else its generated preset standardized on `eval` (created once).
pub fn base_dir(datadir: &Path, m: &Manifest, eval: &[Value]) -> Result<PathBuf, String> {
    crate::trainer::provision_base(datadir, m, eval, None).map_err(|e| format!("the base model: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Epoch minting: a non-member's message never starts an epoch, a member's only once the epoch's window (less the skew) has opened; each window is one epoch length.
    #[test]
    fn only_members_start_epochs_and_only_on_schedule() {
        let (mut m, a) = crate::sim::tests::attested(4, 0, 1000);
        m.genesis_ms = 1_000_000_000;
        m.epoch_length_secs = 600;
        let member_msg = EpochMessage::Attestation(Box::new(a.clone()));
        assert_eq!(may_start_from(&m, 1, &member_msg, u64::MAX), StartGate::NoSigner, "no single signer");
        let outsider = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let w = |key: &ed25519_dalek::SigningKey, e: u64| {
            let body =
                crate::attribution::epoch::messages::Witness { datanet: m.id(), epoch: e, pending: 0, seen: vec![] };
            EpochMessage::Witness(Box::new(crate::codec::Signed::sign(body, key)))
        };
        assert_eq!(may_start_from(&m, 1, &w(&outsider, 1), u64::MAX), StartGate::NotMember);
        let member = crate::sim::member_keys(1000, 4)[0].clone();
        let skew = m.protocol.clock_skew_ms;
        let e2 = m.genesis_ms + 600_000 - skew;
        assert_eq!(may_start_from(&m, 1, &w(&member, 1), m.genesis_ms - skew), StartGate::Open);
        assert_eq!(may_start_from(&m, 2, &w(&member, 2), e2 - 1), StartGate::Early { opens_ms: e2 });
        assert_eq!(may_start_from(&m, 2, &w(&member, 2), e2), StartGate::Open);
        assert_eq!(m.epoch_window_ms(2), (m.genesis_ms + 600_000, m.genesis_ms + 1_200_000));
    }

    // Records admitted before their evaluation twin was known earn nothing: exact and near copies of public, earlier-revealed and this epoch's sealed records leave the input set; the rest stay.
    #[test]
    fn contaminated_inputs_leave_the_plan() {
        let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/datanets");
        let (m, blobs) = crate::manifest::ManifestFile::read(&examples.join("instruct.toml"))
            .unwrap()
            .into_manifest(&examples, crate::identity::Identity::from_seed([3; 32]).public_key(), &|_| Ok(()))
            .unwrap();
        let public = admission::parse_eval(&m, &blobs.public).unwrap();
        let canon = |p: &str, c: &str| {
            admission::canonical::canonicalize(&m.task, serde_json::json!({"prompt": p, "completion": c}), 8192)
                .unwrap()
        };
        let eval = |p: &str, c: &str| admission::EvalRecord { slice: "critical".into(), record: canon(p, c) };
        let revealed = vec![eval("Negate 314.", "-314")];
        let opened = vec![eval(
            "Negate 2718 and write the result as one plain integer with its sign in front of it, nothing else at all.",
            "-2718",
        )];
        let rec = |p: &str, c: &str| {
            let r = canon(p, c);
            AdmittedRecord {
                hash: r.hash,
                value: r.value,
                priority: 1,
                contribution: ContributionId([1; 32]),
                owners: vec![PeerKey([1; 32])],
                cluster: None,
            }
        };
        let records = vec![
            rec("Negate 2.", "-2"),     // public evaluation record
            rec("Negate 314.", "-314"), // revealed in an earlier epoch
            rec(
                "Negate 2718 and write the result as one plain integer with its sign in front of it, nothing else at all!",
                "-2718",
            ), // near copy of this epoch's split
            rec("Negate 55.", "-55"),
            rec("What colour is a lemon?", "yellow"),
        ];
        let kept = uncontaminated(&m, records, &public, &revealed, &opened, 2);
        let prompts: Vec<&str> = kept.iter().map(|r| r.value["prompt"].as_str().unwrap()).collect();
        assert_eq!(prompts, vec!["Negate 55.", "What colour is a lemon?"]);
    }

    // The sealed split's starting bitmaps: fresh for the first epoch, the previous attestation's after it, a clear error when the ledger lacks it.
    #[tokio::test(flavor = "multi_thread")]
    async fn sealed_bitmaps_come_from_the_previous_attestation() {
        let (m, _) = crate::sim::tests::attested(4, 0, 1000);
        let mut m = m;
        m.eval.sealed = vec![crate::sealed::SealedPart { slice: "all".into(), count: 20, root: Default::default() }];
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(sealed_used(&store, &m, FIRST_EPOCH, &m.eval.sealed).unwrap(), vec![vec![0u8; 3]]);
        let err = sealed_used(&store, &m, 3, &m.eval.sealed).unwrap_err();
        assert!(err.contains("epoch 3 needs the attestation of epoch 2") && err.contains("empty"), "{err}");
        // Without the pool a member cannot choose a split, and says how to get it.
        let err = sealed_split(&store, &m, FIRST_EPOCH, &[0; 32]).unwrap_err();
        assert!(err.contains("datanet datanet sealed import"), "{err}");
        let s = sealed_status(&store, &m).unwrap();
        assert_eq!((s.held, s.epochs_left, s.parts[0].remaining), (false, 1, 20));
        assert!(s.low, "one epoch left is below the default of 3");
    }

    // Epochs draw their split from the manifest's parts and, from its first epoch on, a founder-signed extension's: the second epoch's reveal continues the first's bitmaps and verifies against the manifest plus the extension it carries.
    #[tokio::test(flavor = "multi_thread")]
    async fn sealed_split_follows_the_ledger_and_extensions() {
        let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/datanets");
        let founder = crate::identity::Identity::from_seed([4; 32]);
        let (mut m, blobs) = crate::manifest::ManifestFile::read(&examples.join("instruct.toml"))
            .unwrap()
            .into_manifest(&examples, founder.public_key(), &|_| Ok(()))
            .unwrap();
        let mut pool = admission::sealed::seal_pool(&m, blobs.secret.as_deref().unwrap(), [6; 32]).unwrap();
        m.eval.sealed = pool.commitment();
        let more = b"{\"prompt\":\"Negate 12345.\",\"completion\":\"-12345\",\"slice\":\"critical\"}\n";
        let ext = admission::sealed::extend_pool(&m, &mut pool, more, 2, &founder.signing_key()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.put_sealed_pool(&m.id(), &pool).await.unwrap();
        let split = m.protocol.sealed_split;
        // Epoch 1: the manifest's two parts only (the extension starts at epoch 2).
        let (r1, opened1) = sealed_split(&store, &m, 1, &[1; 32]).unwrap().unwrap();
        assert_eq!((r1.extensions.len(), r1.parts.len(), opened1.len()), (0, 2, 2 * split as usize));
        crate::sealed::verify_reveal(&m.eval.sealed, split, &[1; 32], &r1, None).unwrap();
        // The ledger's epoch 1 (only its reveal matters here).
        let (_, mut a1) = crate::sim::tests::attested(4, 0, 1000);
        a1.score.header.datanet = m.id();
        a1.score.header.epoch = 1;
        a1.sealed = Some(r1.clone());
        Ledger::open(store.db()).append(&a1, &[]).unwrap();
        let (r2, _) = sealed_split(&store, &m, 2, &[2; 32]).unwrap().unwrap();
        assert_eq!((r2.extensions.clone(), r2.parts.len()), (vec![ext], 3));
        let parts = m.sealed_parts(&r2.extensions, 2).unwrap();
        crate::sealed::verify_reveal(&parts, split, &[2; 32], &r2, Some(&r1)).unwrap();
        // An extension claimed for an epoch before its own is refused.
        assert!(m.sealed_parts(&r2.extensions, 1).is_err());
        let s = sealed_status(&store, &m).unwrap();
        assert_eq!(s.parts.len(), 3);
    }

    // Ledger catch-up appends an attestation that verifies and is the next epoch, refuses a tampered one or a repeat, and serves what the ledger holds.
    #[tokio::test(flavor = "multi_thread")]
    async fn caught_up_attestations_are_verified_before_appending() {
        let (m, a) = crate::sim::tests::attested(4, 0, 1000); // the simulator's epoch is 1 + seed % 1000
        let d = m.id();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut forged = a.clone();
        forged.leaves[0].reward += 1;
        let err = adopt_attestations(&store, &m, &[codec::encode(&forged)]).await.unwrap_err();
        assert!(err.contains("epoch 1"), "{err}");
        assert!(Ledger::open(store.db()).head(&d).unwrap().is_none(), "nothing appended");
        assert_eq!(adopt_attestations(&store, &m, &[codec::encode(&a)]).await.unwrap(), 1);
        assert_eq!(Ledger::open(store.db()).head(&d).unwrap().map(|h| (h.epoch, h.hash)), Some((1, a.hash())));
        let again = adopt_attestations(&store, &m, &[codec::encode(&a)]).await.unwrap_err();
        assert!(again.contains("epoch 2 was expected"), "{again}");
        match answer_attestations(&store, &d, 1, 100) {
            CatchupResponse::Attestations { items } => assert_eq!(items, vec![codec::encode(&a)]),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(answer_attestations(&store, &d, 2, 100), CatchupResponse::Attestations { items } if items.is_empty())
        );
    }
}
