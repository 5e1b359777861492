//! The daemon: wires the net room, the store and admission into one long-running peer.
//!
//! Bird's-eye view. [`start`] loads the identity, opens the [`Store`], starts the net room
//! ([`crate::net::start`]), joins the configured Datanets, dials the seeds and spawns the
//! [`DaemonActor`]; the launcher ([`crate::node`]) puts the local HTTP API ([`crate::api`]) in
//! front of it. The actor owns all mutable state and
//! receives a closed set of messages: [`NetEvent`]s from the net room, commands from
//! [`DaemonHandle`]s (API, tests) and results from the tasks it spawns (fetches, catch-up,
//! local admissions), all over bounded channels.
//!
//! The flow of a replicated contribution: a gossip `Announce` is checked (size, canonical
//! decoding, signature, Datanet membership, manifest limits) and answered Accept / Reject /
//! Ignore; an accepted one is queued; at most `net.fetch_in_flight_max` fetch tasks download its
//! HashSeq and chunks with iroh-blobs from the announcer or any peer that said it holds it,
//! re-run admission locally ([`admission::admit_replicated`]), store, and gossip `Holding`. A
//! fetch that fails is retried with backoff up to `net.fetch_attempts_max` times; a peer that
//! announced data it did not serve, or data that fails admission, loses application score.
//!
//! Catch-up: when a peer subscribes to a joined Datanet's contributions topic, the daemon asks it
//! for its inventory ([`crate::net::catchup`]) and treats every contribution it lacks like an
//! announcement from that peer.
//!
//! Epochs: messages on `datanet/<id>/epochs` reach [`DaemonActor::on_epoch_message`], which hands
//! them to the epoch driver ([`epoch`]): one `attribution::epoch` state machine per Datanet,
//! its timers on the actor's tick, training on blocking threads.

pub mod epoch;
pub mod metrics;
mod status;
pub mod wire;

pub use status::{ContributionStatus, DatanetStatus, Earnings, EpochView, LedgerView, LocalDatanet, Status};

use crate::admission::{self, SignedContribution};
use crate::codec::{self, Signed};
use crate::config::{Config, JoinTarget};
use crate::identity::Identity;
use crate::ids::{ContributionId, DatanetId, PeerKey};
use crate::manifest::{Manifest, SignedManifest};
use crate::net::blobs::FetchKind;
use crate::net::catchup::{CatchupRequest, CatchupResponse};
use crate::net::{self, NetEvent, NetHandle, TopicKind, keys};
use crate::store::Store;
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use metrics::{DaemonMetrics, RejectReason};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use wire::{ContributionsMessage, Holding};

/// Why the daemon could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Net(#[from] crate::net::swarm::NetError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("datanet {0}: {1}")]
    Join(String, String),
    #[error("api: {0}")]
    Api(String),
    #[error("the daemon has stopped")]
    Stopped,
}

/// Where the list of Datanets joined at run time is kept.
const JOINED_FILE: &str = "joined";
/// How long a queued fetch waits for a provider's address before trying anyway.
const ADDRESS_WAIT: Duration = Duration::from_secs(2);
/// Largest number of contributions whose holders are remembered.
const HOLDERS_MAX: usize = 100_000;
/// Holders remembered per contribution, at most (enough providers to fetch from; a flood of
/// `Holding` messages from fresh keys cannot grow one entry).
const HOLDERS_PER_CONTRIBUTION_MAX: usize = 64;
/// How far a `Holding` message's `issued_ms` may be from this peer's clock, either way.
const HOLDING_FRESH_MS: u64 = 10 * 60 * 1000;

/// Whether a `Holding` message is news worth keeping and forwarding: it must name a contribution
/// this peer knows (queued, being fetched or stored) and be fresh. Otherwise `Err(None)` — ignored
/// and not forwarded, so `Holding` for made-up ids or replayed old ones does not spread.
fn holding_news(known: bool, issued_ms: u64, now_ms: u64) -> Result<(), Option<RejectReason>> {
    if !known || issued_ms.abs_diff(now_ms) > HOLDING_FRESH_MS {
        return Err(None);
    }
    Ok(())
}

/// The outcome of `contribute` through the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContributeReport {
    pub id: String,
    pub records: u32,
    pub new_records: u32,
    pub duplicates: u32,
    pub near_duplicates: u32,
    pub skipped: usize,
    /// Records skipped with `--skip-invalid` as copies of evaluation records.
    #[serde(default)]
    pub contaminated: usize,
    pub already_present: bool,
    pub announced: bool,
}

enum Command {
    Status(oneshot::Sender<Status>),
    Join(Box<SignedManifest>, oneshot::Sender<Result<DatanetId, String>>),
    JoinId(DatanetId, oneshot::Sender<Result<DatanetId, String>>),
    Create(PathBuf, oneshot::Sender<Result<admission::create::Created, String>>),
    /// A Datanet's name, id or unique id prefix, resolved against the stored manifests.
    JoinKey(String, oneshot::Sender<Result<DatanetId, String>>),
    Contribute {
        datanet: String,
        path: PathBuf,
        skip_invalid: bool,
        reply: oneshot::Sender<Result<ContributeReport, String>>,
    },
    Announce(ContributionId, oneshot::Sender<Result<(), String>>),
    Root(ContributionId, oneshot::Sender<Option<crate::ids::BlobHash>>),
    Epoch(epoch::EpochCommand),
    Shutdown(oneshot::Sender<()>),
}

enum Internal {
    FetchDone {
        id: ContributionId,
        result: Result<(), FetchFailure>,
    },
    Discovered {
        datanet: DatanetId,
        bytes: Vec<u8>,
        peer: PeerId,
    },
    Contributed {
        signed: SignedContribution,
        reply: oneshot::Sender<Result<ContributeReport, String>>,
        report: ContributeReport,
    },
    Epoch(epoch::EpochInternal),
    /// A ledger catch-up ended after appending `appended` attestations.
    LedgerCaughtUp {
        datanet: DatanetId,
        appended: usize,
    },
}

#[derive(Debug)]
enum FetchFailure {
    Fetch(String),
    Admit(String),
}

/// A cheap, cloneable handle on a running daemon.
#[derive(Clone, Debug)]
pub struct DaemonHandle {
    tx: mpsc::Sender<Command>,
    net: NetHandle,
    metrics: Arc<DaemonMetrics>,
    api_addr: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl DaemonHandle {
    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, DaemonError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| DaemonError::Stopped)?;
        rx.await.map_err(|_| DaemonError::Stopped)
    }

    /// The status report (`datanet status`, `/`).
    pub async fn status(&self) -> Result<Status, DaemonError> {
        self.ask(Command::Status).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Vec<net::PeerInfo> {
        self.net.peers().await
    }

    /// Joins a Datanet given its founder-signed manifest (stored, then subscribed).
    pub async fn join(&self, manifest: SignedManifest) -> Result<DatanetId, DaemonError> {
        let id = manifest.body.id();
        self.ask(|r| Command::Join(Box::new(manifest), r)).await?.map_err(|e| DaemonError::Join(id.short(), e))
    }

    /// Joins a Datanet whose manifest is already in the store.
    pub async fn join_id(&self, id: DatanetId) -> Result<DatanetId, DaemonError> {
        self.ask(|r| Command::JoinId(id, r)).await?.map_err(|e| DaemonError::Join(id.short(), e))
    }

    /// Creates a Datanet from a manifest file (this peer signs as founder), stores it and joins it.
    pub async fn create(&self, path: &Path) -> Result<admission::create::Created, String> {
        let path = path.to_path_buf();
        self.ask(|r| Command::Create(path, r)).await.map_err(|e| e.to_string())?
    }

    /// Joins a stored Datanet given as its name, id or a unique id prefix (what every command takes).
    pub async fn join_key(&self, key: &str) -> Result<DatanetId, DaemonError> {
        let k = key.to_string();
        self.ask(|r| Command::JoinKey(k, r)).await?.map_err(|e| DaemonError::Join(key.to_string(), e))
    }

    /// Admits a local file as this peer's contribution and announces it.
    pub async fn contribute(&self, datanet: &str, path: &Path, skip_invalid: bool) -> Result<ContributeReport, String> {
        let (datanet, path) = (datanet.to_string(), path.to_path_buf());
        self.ask(|reply| Command::Contribute { datanet, path, skip_invalid, reply }).await.map_err(|e| e.to_string())?
    }

    /// Re-announces a stored contribution on gossip.
    pub async fn announce(&self, id: ContributionId) -> Result<(), String> {
        self.ask(|r| Command::Announce(id, r)).await.map_err(|e| e.to_string())?
    }

    /// The HashSeq root of a stored contribution.
    pub async fn contribution_root(&self, id: ContributionId) -> Option<crate::ids::BlobHash> {
        self.ask(|r| Command::Root(id, r)).await.ok().flatten()
    }

    /// The net room (for tests and the API).
    pub fn net(&self) -> &NetHandle {
        &self.net
    }

    /// The daemon's counters.
    pub fn metrics(&self) -> &Arc<DaemonMetrics> {
        &self.metrics
    }

    /// Prometheus text of every counter.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(self.net.metrics())
    }

    /// The bound API address, once an API serves this daemon.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api_addr.get().copied()
    }

    /// Records the address the API serving this daemon is bound to (the first one wins).
    pub fn set_api_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.api_addr.set(addr);
    }
}

/// A running daemon.
pub struct Daemon {
    handle: DaemonHandle,
    actor: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// The daemon's handle.
    pub fn handle(&self) -> &DaemonHandle {
        &self.handle
    }

    /// Stops the actor and its tasks, flushes the store, closes the swarm and the iroh endpoint.
    /// Returns once the datadir can be opened again.
    pub async fn shutdown(mut self) {
        let _ = self.handle.ask(Command::Shutdown).await;
        let _ = (&mut self.actor).await;
    }
}

/// Loads a signed manifest file (canonical bytes) and checks the founder's signature.
pub fn read_manifest_file(path: &Path) -> Result<SignedManifest, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let m: SignedManifest = SignedManifest::decode_verified(&bytes)
        .map_err(|e| format!("{}: not a signed manifest: {e}", path.display()))?;
    m.verify_by(&m.body.founder).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(m)
}

/// Starts a daemon on `datadir` with `config` (already validated).
pub async fn start(datadir: &Path, config: Config) -> Result<Daemon, DaemonError> {
    config.validate()?;
    net::check_addresses(&config)?;
    let identity = Identity::load(datadir)?;
    let store = Store::open(datadir).await?;
    let (net, events) = match net::start(&identity, &config.net, store.blobs()).await {
        Ok(x) => x,
        Err(e) => {
            let _ = store.close().await;
            return Err(e.into());
        }
    };
    let metrics = Arc::new(DaemonMetrics::default());
    let (tx, rx) = mpsc::channel(256);
    let (itx, irx) = mpsc::channel(1024);
    let api_addr = Arc::new(std::sync::OnceLock::new());
    let handle = DaemonHandle { tx, net: net.clone(), metrics: metrics.clone(), api_addr };
    let mut actor = DaemonActor {
        identity,
        store,
        net,
        cfg: config.clone(),
        datadir: datadir.to_path_buf(),
        metrics,
        joined: HashMap::new(),
        pending: HashMap::new(),
        in_flight: HashSet::new(),
        holders: HashMap::new(),
        asked: HashSet::new(),
        ledger_catchup: HashSet::new(),
        unannounced: Vec::new(),
        last_retry: Instant::now(),
        tasks: JoinSet::new(),
        internal: itx,
        epochs: epoch::Epochs::new(),
    };
    let mut targets: Vec<JoinTarget> = config.datanets.join.iter().map(|s| JoinTarget::parse(s)).collect();
    if let Ok(text) = std::fs::read_to_string(datadir.join(JOINED_FILE)) {
        targets.extend(text.lines().filter_map(|l| l.trim().parse().ok()).map(JoinTarget::Id));
    }
    for t in targets {
        let res = match &t {
            JoinTarget::Id(id) => actor.join_id(*id).await,
            JoinTarget::ManifestFile(p) => match read_manifest_file(p) {
                Ok(m) => actor.join_manifest(m).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = res {
            actor.shutdown().await;
            return Err(DaemonError::Join(format!("{t:?}"), e));
        }
    }
    let mut seeds = Vec::new();
    for s in config.all_seeds()? {
        if let Ok(p) = net::parse_seed_addr(&s) {
            seeds.push(p);
        }
    }
    actor.net.add_seeds(seeds).await;
    let actor = tokio::spawn(actor.run(rx, irx, events));
    Ok(Daemon { handle, actor })
}

struct Pending {
    signed: SignedContribution,
    providers: Vec<PeerKey>,
    announcer: Option<PeerId>,
    attempts: u32,
    queued_at: Instant,
    next_try: Instant,
}

/// The task that owns the daemon's state.
pub struct DaemonActor {
    identity: Identity,
    store: Store,
    net: NetHandle,
    cfg: Config,
    datadir: PathBuf,
    metrics: Arc<DaemonMetrics>,
    joined: HashMap<DatanetId, Manifest>,
    pending: HashMap<ContributionId, Pending>,
    in_flight: HashSet<ContributionId>,
    holders: HashMap<ContributionId, HashSet<PeerKey>>,
    asked: HashSet<(PeerId, DatanetId)>,
    /// Datanets with a ledger catch-up running (one at a time each).
    ledger_catchup: HashSet<DatanetId>,
    /// Local contributions whose announcement found no peer yet; retried every second.
    unannounced: Vec<ContributionId>,
    last_retry: Instant,
    tasks: JoinSet<()>,
    internal: mpsc::Sender<Internal>,
    epochs: epoch::Epochs,
}

/// When the fetch queue is full, the queued (not running) entry to drop for a newcomer from
/// `announcer`: one of the announcer with the most entries queued, if the newcomer's announcer
/// has fewer — so a peer flooding validly signed announcements it never serves crowds out only
/// its own, never the other peers' (fair share per announcing peer). `None`: drop the newcomer.
fn evict_for(
    pending: &HashMap<ContributionId, Pending>,
    in_flight: &HashSet<ContributionId>,
    announcer: Option<PeerId>,
) -> Option<ContributionId> {
    let mut counts: HashMap<Option<PeerId>, usize> = HashMap::new();
    for p in pending.values() {
        *counts.entry(p.announcer).or_default() += 1;
    }
    let mine = counts.get(&announcer).copied().unwrap_or(0);
    let (top, most) = counts.into_iter().max_by_key(|(a, n)| (*n, a.map(|p| p.to_bytes())))?;
    if mine + 1 >= most {
        return None;
    }
    // The top announcer's entry tried most, then queued last.
    pending
        .iter()
        .filter(|(id, p)| p.announcer == top && !in_flight.contains(*id))
        .max_by_key(|(id, p)| (p.attempts, p.queued_at, **id))
        .map(|(id, _)| *id)
}

/// Local contributions kept for a later announcement, at most.
const UNANNOUNCED_MAX: usize = 1024;

impl DaemonActor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
        mut events: mpsc::Receiver<NetEvent>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(ev) = events.recv() => self.on_net(ev).await,
                Some(msg) = internal.recv() => self.on_internal(msg).await,
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.on_command(cmd).await,
                    None => { self.shutdown().await; return; }
                },
                _ = tick.tick() => {
                    self.start_fetches();
                    self.retry_announcements().await;
                    self.epoch_tick().await;
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
    }

    async fn shutdown(&mut self) {
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.shutdown()).await.is_err() {
            tracing::warn!(target: "datanet::daemon", "tasks did not stop in time");
        }
        match tokio::time::timeout(Duration::from_secs(30), self.store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(target: "datanet::daemon", error = %e, "flush at shutdown"),
            Err(_) => tracing::error!(target: "datanet::daemon", "flush at shutdown timed out"),
        }
        self.net.shutdown().await;
        tracing::info!(target: "datanet::daemon", "stopped");
    }

    async fn join_manifest(&mut self, m: SignedManifest) -> Result<DatanetId, String> {
        m.verify_by(&m.body.founder).map_err(|e| format!("manifest signature: {e}"))?;
        for (i, s) in m.body.seeds.iter().enumerate() {
            net::parse_seed_addr(s).map_err(|e| format!("manifest seeds[{i}]: {e}"))?;
        }
        let id = self.store.put_manifest(&m).await.map_err(|e| e.to_string())?;
        self.join_id(id).await
    }

    async fn join_id(&mut self, id: DatanetId) -> Result<DatanetId, String> {
        let m = self
            .store
            .manifest(&id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "manifest not in the store; join with the signed manifest file".to_string())?;
        self.net.join(id).await.map_err(|e| e.to_string())?;
        let seeds = m.body.seeds.iter().filter_map(|s| net::parse_seed_addr(s).ok()).collect();
        self.net.add_seeds(seeds).await;
        if self.joined.insert(id, m.body).is_none() {
            let mut ids: Vec<String> = self.joined.keys().map(|d| d.to_hex()).collect();
            ids.sort();
            let _ = std::fs::write(self.datadir.join(JOINED_FILE), ids.join("\n") + "\n");
            tracing::info!(target: "datanet::daemon", datanet = %id.short(), "joined");
            self.epoch_resume(id).await;
        }
        Ok(id)
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            Command::Join(m, reply) => {
                let _ = reply.send(self.join_manifest(*m).await);
            }
            Command::JoinKey(key, reply) => {
                let r = match self.store.resolve_datanet(&key) {
                    Ok(Some((id, _))) => self.join_id(id).await,
                    Ok(None) => Err("not known here (give its name, its id or a unique id prefix of a stored manifest; `datanet datanet ls` lists them, `datanet join FILE` adds one from `datanet datanet export`)".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(r);
            }
            Command::JoinId(id, reply) => {
                let _ = reply.send(self.join_id(id).await);
            }
            Command::Create(path, reply) => {
                let check = |s: &str| net::parse_seed_addr(s).map(|_| ()).map_err(|e| e.to_string());
                let r = match admission::create::create_datanet(&self.store, &self.identity, &path, &check).await {
                    Ok(c) => self.join_id(c.id).await.map(|_| c),
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Command::Contribute { datanet, path, skip_invalid, reply } => {
                let (store, identity, internal) = (self.store.clone(), self.identity.clone(), self.internal.clone());
                self.tasks.spawn(async move {
                    match contribute_local(&store, &identity, &datanet, &path, skip_invalid).await {
                        Ok((signed, report)) => {
                            let _ = internal.send(Internal::Contributed { signed, reply, report }).await;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                });
            }
            Command::Announce(id, reply) => {
                let res = match self.store.contribution(&id) {
                    Ok(Some(c)) => self.announce(c).await,
                    Ok(None) => Err(format!("contribution {} is not stored here", id.short())),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(res);
            }
            Command::Root(id, reply) => {
                let _ = reply.send(self.store.contribution(&id).ok().flatten().map(|c| c.body.root));
            }
            Command::Epoch(c) => self.on_epoch_command(c).await,
            Command::Shutdown(_) => {}
        }
    }

    async fn announce(&mut self, c: SignedContribution) -> Result<(), String> {
        let d = c.body.datanet;
        self.holders.entry(c.body.id()).or_default().insert(self.identity.public_key());
        let msg = codec::encode(&ContributionsMessage::Announce(c));
        self.net.publish(d, TopicKind::Contributions, msg).await.map_err(|e| e.to_string())
    }

    async fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Gossip {
                datanet,
                kind: TopicKind::Contributions,
                source,
                propagation_source,
                message_id,
                data,
            } => {
                let verdict = self.on_contributions_message(datanet, source, propagation_source, &data);
                match verdict {
                    Ok(()) => DaemonMetrics::inc(&self.metrics.gossip_accepted),
                    Err(Some(r)) => {
                        tracing::info!(target: "datanet::daemon::gossip", peer = %propagation_source, reason = r.label(), "gossip rejected");
                        self.metrics.reject(r)
                    }
                    Err(None) => DaemonMetrics::inc(&self.metrics.gossip_ignored),
                }
                let acceptance = match verdict {
                    Ok(()) => MessageAcceptance::Accept,
                    Err(Some(_)) => MessageAcceptance::Reject,
                    Err(None) => MessageAcceptance::Ignore,
                };
                self.net.report(message_id, propagation_source, acceptance).await;
            }
            NetEvent::Gossip { datanet, kind: TopicKind::Epochs, propagation_source, message_id, data, .. } => {
                let acceptance = self.on_epoch_message(datanet, propagation_source, &data).await;
                self.net.report(message_id, propagation_source, acceptance).await;
            }
            NetEvent::CatchupRequest { peer, request, respond } => self.serve_catchup(peer, request, respond),
            NetEvent::PeerSubscribed { peer, datanet } => self.catch_up_from(peer, datanet),
            // Asked again when it comes back: it may hold more by then, and the set stays bounded
            // by the connected peers.
            NetEvent::PeerGone { peer } => self.asked.retain(|(p, _)| *p != peer),
            NetEvent::PeerRecord { key } => {
                let now = Instant::now();
                for p in self.pending.values_mut() {
                    if p.providers.contains(&key) {
                        p.next_try = p.next_try.min(now);
                    }
                }
            }
        }
    }

    /// The seam for epoch agreement: validated here, then handed to the state machine.
    async fn on_epoch_message(&mut self, datanet: DatanetId, from: PeerId, data: &[u8]) -> MessageAcceptance {
        DaemonMetrics::inc(&self.metrics.epoch_messages);
        // The frame adds a counter and a length to the message.
        if data.len() > self.cfg.net.epoch_message_bytes_max as usize + 32 {
            self.metrics.reject(RejectReason::Oversize);
            return MessageAcceptance::Reject;
        }
        self.on_epoch_frame(datanet, from, data).await
    }

    /// Checks an announced contribution before anything is fetched. `Err(Some)` is a Reject.
    fn check_contribution(&self, datanet: &DatanetId, c: &SignedContribution) -> Result<(), Option<RejectReason>> {
        if c.body.datanet != *datanet {
            return Err(Some(RejectReason::UnknownDatanet));
        }
        let Some(manifest) = self.joined.get(datanet) else {
            return Err(Some(RejectReason::UnknownDatanet));
        };
        if c.verify_by(&c.body.contributor).is_err() {
            return Err(Some(RejectReason::BadSignature));
        }
        admission::check_claims(manifest, &c.body).map_err(|_| Some(RejectReason::Limits))
    }

    /// One gossiped contributions message: `source` its author, `forwarder` the connected peer
    /// that delivered it — the one whose fair share of the fetch queue it takes and who is
    /// penalized when it cannot be served.
    fn on_contributions_message(
        &mut self,
        datanet: DatanetId,
        source: Option<PeerId>,
        forwarder: PeerId,
        data: &[u8],
    ) -> Result<(), Option<RejectReason>> {
        if data.len() > self.cfg.net.gossip_message_bytes_max as usize {
            return Err(Some(RejectReason::Oversize));
        }
        let msg: ContributionsMessage = codec::decode(data).map_err(|e| match e {
            codec::DecodeError::TooLarge { .. } => Some(RejectReason::Oversize),
            _ => Some(RejectReason::Malformed),
        })?;
        match msg {
            ContributionsMessage::Announce(c) => {
                self.check_contribution(&datanet, &c)?;
                // Already stored here: valid but old news. Not forwarded again, so a replay after
                // gossipsub's duplicate window does not spread across the network once more.
                if matches!(self.store.contribution_meta(&c.body.id()), Ok(Some(_))) {
                    return Err(None);
                }
                DaemonMetrics::inc(&self.metrics.announces_accepted);
                let mut providers: Vec<PeerKey> = source.and_then(|p| keys::peer_key(&p).ok()).into_iter().collect();
                // The contributor holds it too: a peer that re-publishes a captured announcement
                // first must not become the only place it is fetched from.
                if !providers.contains(&c.body.contributor) {
                    providers.push(c.body.contributor);
                }
                self.enqueue(c, providers, Some(forwarder));
                Ok(())
            }
            ContributionsMessage::Holding(h) => {
                if h.body.datanet != datanet || !self.joined.contains_key(&datanet) {
                    return Err(Some(RejectReason::UnknownDatanet));
                }
                let id = h.body.contribution;
                let known = self.pending.contains_key(&id)
                    || self.in_flight.contains(&id)
                    || matches!(self.store.contribution_meta(&id), Ok(Some(_)));
                holding_news(known, h.body.issued_ms, net::now_ms())?;
                if h.verify_by(&h.body.holder).is_err() {
                    return Err(Some(RejectReason::BadSignature));
                }
                self.add_holder(id, h.body.holder);
                Ok(())
            }
        }
    }

    fn add_holder(&mut self, id: ContributionId, holder: PeerKey) {
        // Bounded without forgetting what is known: a full table takes no new contribution, a
        // contribution's holder set no more than HOLDERS_PER_CONTRIBUTION_MAX keys (first come).
        if self.holders.len() >= HOLDERS_MAX && !self.holders.contains_key(&id) {
            return;
        }
        let set = self.holders.entry(id).or_default();
        if set.len() >= HOLDERS_PER_CONTRIBUTION_MAX && !set.contains(&holder) {
            return;
        }
        set.insert(holder);
        if let Some(p) = self.pending.get_mut(&id) {
            if !p.providers.contains(&holder) {
                p.providers.push(holder);
            }
            p.next_try = Instant::now();
        }
    }

    /// Queues a valid contribution for fetching unless it is stored, queued or running.
    fn enqueue(&mut self, c: SignedContribution, providers: Vec<PeerKey>, announcer: Option<PeerId>) {
        let id = c.body.id();
        let me = self.identity.public_key();
        for k in &providers {
            if *k != me {
                self.holders.entry(id).or_default().insert(*k);
            }
        }
        if self.in_flight.contains(&id) || matches!(self.store.contribution_meta(&id), Ok(Some(_))) {
            return;
        }
        if let Some(p) = self.pending.get_mut(&id) {
            for k in providers {
                if k != me && !p.providers.contains(&k) {
                    p.providers.push(k);
                }
            }
            return;
        }
        if self.pending.len() >= self.cfg.net.fetch_queue_max as usize {
            DaemonMetrics::inc(&self.metrics.fetch_queue_full);
            match evict_for(&self.pending, &self.in_flight, announcer) {
                Some(victim) => {
                    self.pending.remove(&victim);
                }
                None => return,
            }
        }
        let mut all: Vec<PeerKey> = providers.into_iter().filter(|k| *k != me).collect();
        if let Some(h) = self.holders.get(&id) {
            let more: Vec<PeerKey> = h.iter().filter(|k| **k != me && !all.contains(k)).copied().collect();
            all.extend(more);
        }
        let now = Instant::now();
        self.pending
            .insert(id, Pending { signed: c, providers: all, announcer, attempts: 0, queued_at: now, next_try: now });
        self.metrics.fetch_queued.store(self.pending.len() as u64, Ordering::Relaxed);
    }

    fn start_fetches(&mut self) {
        let max = self.cfg.net.fetch_in_flight_max as usize;
        if self.in_flight.len() >= max || self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let blobs = self.net.blobs();
        let mut ready: Vec<(Instant, ContributionId)> = self
            .pending
            .iter()
            .filter(|(id, p)| {
                !self.in_flight.contains(*id)
                    && p.next_try <= now
                    && (p.providers.iter().any(|k| blobs.knows(k)) || now.duration_since(p.queued_at) >= ADDRESS_WAIT)
            })
            .map(|(id, p)| (p.queued_at, *id))
            .collect();
        ready.sort();
        for (_, id) in ready.into_iter().take(max - self.in_flight.len()) {
            let Some(p) = self.pending.get_mut(&id) else { continue };
            p.attempts += 1;
            self.in_flight.insert(id);
            let (signed, providers) = (p.signed.clone(), p.providers.clone());
            let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
            let timeout = Duration::from_millis(self.cfg.net.fetch_timeout_ms);
            let source = providers.first().map(|k| k.short()).unwrap_or_default();
            self.tasks.spawn(async move {
                let result = fetch_and_admit(&store, &net, &signed, &providers, timeout, &source).await;
                let _ = internal.send(Internal::FetchDone { id, result }).await;
            });
        }
        self.metrics.fetch_in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::FetchDone { id, result } => {
                self.in_flight.remove(&id);
                self.metrics.fetch_in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        let p = self.pending.remove(&id);
                        DaemonMetrics::inc(&self.metrics.contributions_replicated);
                        if let Some(p) = p {
                            self.publish_holding(p.signed.body.datanet, id).await;
                        }
                    }
                    Err(FetchFailure::Admit(e)) => {
                        DaemonMetrics::inc(&self.metrics.replication_rejected);
                        tracing::warn!(target: "datanet::daemon", contribution = %id.short(), error = %e, "replicated contribution refused");
                        if let Some(p) = self.pending.remove(&id) {
                            self.penalize(p.announcer).await;
                        }
                    }
                    Err(FetchFailure::Fetch(e)) => {
                        DaemonMetrics::inc(&self.metrics.fetch_failures);
                        let max = self.cfg.net.fetch_attempts_max;
                        let give_up = self.pending.get(&id).is_none_or(|p| p.attempts >= max);
                        if give_up {
                            DaemonMetrics::inc(&self.metrics.fetch_given_up);
                            tracing::warn!(target: "datanet::daemon", contribution = %id.short(), error = %e, "fetch given up");
                            if let Some(p) = self.pending.remove(&id) {
                                self.penalize(p.announcer).await;
                            }
                        } else if let Some(p) = self.pending.get_mut(&id) {
                            let backoff = Duration::from_millis(500u64 << p.attempts.min(6));
                            tracing::info!(target: "datanet::daemon", contribution = %id.short(), error = %e, attempt = p.attempts, "fetch failed; will retry");
                            p.next_try = Instant::now() + backoff;
                        }
                    }
                }
                self.metrics.fetch_queued.store(self.pending.len() as u64, Ordering::Relaxed);
            }
            Internal::Discovered { datanet, bytes, peer } => {
                let checked = SignedContribution::decode_verified(&bytes)
                    .map_err(|_| Some(RejectReason::BadSignature))
                    .and_then(|c| self.check_contribution(&datanet, &c).map(|()| c));
                match checked {
                    Ok(c) => {
                        DaemonMetrics::inc(&self.metrics.catchup_discovered);
                        let providers = keys::peer_key(&peer).ok().into_iter().collect();
                        self.enqueue(c, providers, Some(peer));
                    }
                    Err(_) => {
                        DaemonMetrics::inc(&self.metrics.catchup_rejected);
                        self.penalize(Some(peer)).await;
                    }
                }
            }
            Internal::Contributed { signed, reply, mut report } => {
                DaemonMetrics::inc(&self.metrics.contributions_local);
                let id = signed.body.id();
                report.announced = self.announce(signed).await.is_ok();
                if !report.announced && self.unannounced.len() < UNANNOUNCED_MAX {
                    self.unannounced.push(id);
                }
                let _ = reply.send(Ok(report));
            }
            Internal::Epoch(m) => self.on_epoch_internal(m).await,
            Internal::LedgerCaughtUp { datanet, appended } => self.on_ledger_caught_up(datanet, appended),
        }
    }

    async fn retry_announcements(&mut self) {
        if self.unannounced.is_empty() || self.last_retry.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_retry = Instant::now();
        let mut still = Vec::new();
        for id in std::mem::take(&mut self.unannounced) {
            if let Ok(Some(c)) = self.store.contribution(&id) {
                if self.announce(c).await.is_err() {
                    still.push(id);
                }
            }
        }
        self.unannounced = still;
    }

    async fn publish_holding(&mut self, datanet: DatanetId, id: ContributionId) {
        let me = self.identity.public_key();
        self.holders.entry(id).or_default().insert(me);
        let h = Holding { datanet, contribution: id, holder: me, issued_ms: net::now_ms() };
        let msg = codec::encode(&ContributionsMessage::Holding(Signed::sign(h, &self.identity.signing_key())));
        if let Err(e) = self.net.publish(datanet, TopicKind::Contributions, msg).await {
            tracing::debug!(target: "datanet::daemon", error = %e, "holding not published");
        }
    }

    async fn penalize(&self, peer: Option<PeerId>) {
        if let Some(p) = peer {
            if p != self.net.peer_id() {
                DaemonMetrics::inc(&self.metrics.peers_penalized);
                self.net.penalize(p).await;
            }
        }
    }

    fn catch_up_from(&mut self, peer: PeerId, datanet: DatanetId) {
        if !self.joined.contains_key(&datanet) || !self.asked.insert((peer, datanet)) {
            return;
        }
        let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
        let batch = self.cfg.net.catchup_batch_max;
        self.tasks.spawn(async move {
            if let Err(e) = catch_up(&store, &net, &internal, peer, datanet, batch).await {
                tracing::debug!(target: "datanet::daemon::catchup", %peer, error = %e, "catch-up stopped");
            }
        });
        self.start_ledger_catchup(datanet, peer);
    }

    fn serve_catchup(&mut self, peer: PeerId, request: CatchupRequest, respond: u64) {
        let (store, net) = (self.store.clone(), self.net.clone());
        let joined = self.joined.contains_key(match &request {
            CatchupRequest::Inventory { datanet, .. }
            | CatchupRequest::Get { datanet, .. }
            | CatchupRequest::Attestations { datanet, .. } => datanet,
            CatchupRequest::Hello { .. } => &DatanetId([0; 32]),
        });
        let batch = self.cfg.net.catchup_batch_max as usize;
        self.tasks.spawn(async move {
            let response = if !joined {
                CatchupResponse::Refused { reason: "datanet not served here".into() }
            } else {
                answer_catchup(&store, request, batch)
            };
            tracing::debug!(target: "datanet::daemon::catchup", %peer, "answering catch-up");
            net.respond(respond, response).await;
        });
    }
}

fn answer_catchup(store: &Store, request: CatchupRequest, batch: usize) -> CatchupResponse {
    let refused = |e: crate::store::StoreError| CatchupResponse::Refused { reason: e.to_string() };
    match request {
        // The order index alone: an inventory request decodes nothing.
        CatchupRequest::Inventory { datanet, offset, limit } => {
            match store.contribution_page(&datanet, offset as usize, (limit as usize).min(batch)) {
                Ok((ids, total)) => CatchupResponse::Inventory { ids, total },
                Err(e) => refused(e),
            }
        }
        CatchupRequest::Get { datanet, ids } => {
            let mut records = Vec::new();
            for id in ids.iter().take(batch) {
                match store.contribution(id) {
                    Ok(Some(c)) if c.body.datanet == datanet => records.push(c.to_bytes()),
                    Ok(_) => {}
                    Err(e) => return refused(e),
                }
            }
            CatchupResponse::Contributions { records }
        }
        CatchupRequest::Attestations { datanet, from_epoch, limit } => {
            epoch::answer_attestations(store, &datanet, from_epoch, (limit as usize).min(batch))
        }
        CatchupRequest::Hello { .. } => CatchupResponse::Refused { reason: "hello is answered by the net room".into() },
    }
}

async fn catch_up(
    store: &Store,
    net: &NetHandle,
    internal: &mpsc::Sender<Internal>,
    peer: PeerId,
    datanet: DatanetId,
    batch: u32,
) -> Result<(), String> {
    let mut offset = 0u64;
    // Bounded whatever the peer claims (`total`): a liar listing endless fresh ids stops here, and
    // so does one that lists ids it then does not serve.
    for _ in 0..CATCHUP_PAGES_MAX {
        let resp = net
            .catchup(peer, CatchupRequest::Inventory { datanet, offset, limit: batch })
            .await
            .map_err(|e| e.to_string())?;
        let (ids, total) = match resp {
            CatchupResponse::Inventory { ids, total } => (ids, total),
            CatchupResponse::Refused { reason } => return Err(format!("refused: {reason}")),
            _ => return Err("unexpected answer to inventory".into()),
        };
        if ids.is_empty() || ids.len() > batch as usize {
            return Ok(());
        }
        offset += ids.len() as u64;
        let missing: Vec<ContributionId> =
            ids.into_iter().filter(|id| !matches!(store.contribution_meta(id), Ok(Some(_)))).collect();
        if !missing.is_empty() {
            match net.catchup(peer, CatchupRequest::Get { datanet, ids: missing }).await.map_err(|e| e.to_string())? {
                CatchupResponse::Contributions { records } if records.is_empty() => {
                    return Err("the peer listed contributions it does not serve".into());
                }
                CatchupResponse::Contributions { records } => {
                    for bytes in records.into_iter().take(batch as usize) {
                        if internal.send(Internal::Discovered { datanet, bytes, peer }).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                CatchupResponse::Refused { reason } => return Err(format!("refused: {reason}")),
                _ => return Err("unexpected answer to get".into()),
            }
        }
        if offset >= total {
            return Ok(());
        }
    }
    Err(format!("stopped after {CATCHUP_PAGES_MAX} inventory pages"))
}

/// Most inventory pages one catch-up asks a peer for (× `catchup_batch_max` ids each).
const CATCHUP_PAGES_MAX: usize = 4096;

/// The most bytes a contribution's download may take: its signed chunk bytes plus its HashSeq
/// (32 bytes per chunk), doubled for a provider that fails mid-blob and a retry from another,
/// plus 1 MiB. The claims were checked against the manifest's limits before it was queued, so
/// no provider can make this peer store more than about twice `contribution_bytes_max`.
fn fetch_bytes_max(c: &crate::admission::ContributionRecord) -> u64 {
    c.byte_count.saturating_add(32 * c.chunk_count as u64).saturating_mul(2).saturating_add(1 << 20)
}

async fn fetch_and_admit(
    store: &Store,
    net: &NetHandle,
    signed: &SignedContribution,
    providers: &[PeerKey],
    timeout: Duration,
    source: &str,
) -> Result<(), FetchFailure> {
    let t = Instant::now();
    let bytes = net
        .blobs()
        .fetch(signed.body.root, FetchKind::HashSeq, providers, timeout, fetch_bytes_max(&signed.body))
        .await
        .map_err(|e| FetchFailure::Fetch(e.to_string()))?;
    let fetched = t.elapsed();
    admission::admit_replicated(store, signed, source).await.map_err(|e| FetchFailure::Admit(e.to_string()))?;
    tracing::debug!(
        target: "datanet::daemon",
        contribution = %signed.body.id().short(),
        bytes,
        fetch_ms = fetched.as_millis() as u64,
        admit_ms = (t.elapsed() - fetched).as_millis() as u64,
        "replicated"
    );
    Ok(())
}

async fn contribute_local(
    store: &Store,
    identity: &Identity,
    datanet: &str,
    path: &Path,
    skip_invalid: bool,
) -> Result<(SignedContribution, ContributeReport), String> {
    let (id, manifest) = store
        .resolve_datanet(datanet)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("datanet `{datanet}` is not known here"))?;
    let parsed = admission::parse_input(&manifest, path, skip_invalid, None).map_err(|e| e.to_string())?;
    let local = admission::admit_input(store, identity, &id, parsed, skip_invalid).await.map_err(|e| e.to_string())?;
    let ack = local.ack;
    let report = ContributeReport {
        id: ack.id.to_hex(),
        records: ack.meta.records,
        new_records: ack.meta.new_records,
        duplicates: ack.meta.duplicates,
        near_duplicates: ack.meta.near_duplicates,
        skipped: local.skipped.len(),
        contaminated: local.contaminated.len(),
        already_present: ack.already_present,
        announced: false,
    };
    Ok((ack.contribution, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::ContributionRecord;

    fn pending(n: u8, announcer: Option<PeerId>) -> (ContributionId, Pending) {
        let who = Identity::from_seed([n; 32]);
        let body = ContributionRecord {
            datanet: DatanetId([1; 32]),
            contributor: who.public_key(),
            created_ms: n as u64,
            root: crate::ids::BlobHash([n; 32]),
            records_root: crate::merkle::root(&[[n; 32]]),
            record_count: 1,
            byte_count: 10,
            chunk_count: 1,
        };
        let signed = Signed::sign(body, &who.signing_key());
        let now = Instant::now();
        let p = Pending { signed, providers: vec![], announcer, attempts: 0, queued_at: now, next_try: now };
        (p.signed.body.id(), p)
    }

    // A full queue makes room for a newcomer only at the expense of the announcer holding the most entries, and never of a running fetch.
    #[test]
    fn full_fetch_queue_evicts_the_flooder_not_the_newcomer() {
        let (flooder, honest, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut q: HashMap<ContributionId, Pending> = (0..6).map(|i| pending(i, Some(flooder))).collect();
        q.extend((6..8).map(|i| pending(i, Some(honest))));
        let running: HashSet<ContributionId> =
            q.iter().filter(|(_, p)| p.signed.body.created_ms == 0).map(|(id, _)| *id).collect();
        let victim = evict_for(&q, &running, Some(other)).expect("room for a new announcer");
        assert_eq!(q[&victim].announcer, Some(flooder));
        assert!(!running.contains(&victim));
        // The flooder itself gets no room: its newcomer is dropped.
        assert_eq!(evict_for(&q, &running, Some(flooder)), None);
        // Equal shares: nobody is evicted.
        let even: HashMap<_, _> = (0..4).map(|i| pending(i, Some(if i % 2 == 0 { flooder } else { honest }))).collect();
        assert_eq!(evict_for(&even, &HashSet::new(), Some(honest)), None);
        assert_eq!(evict_for(&HashMap::new(), &HashSet::new(), None), None);
    }

    // A `Holding` is kept and forwarded only for a contribution this peer knows and only when
    // fresh; made-up ids and replays are ignored (not rejected: an honest peer may be ahead).
    #[test]
    fn holding_must_be_known_and_fresh() {
        let now = 1_000_000_000;
        assert_eq!(holding_news(true, now - 1_000, now), Ok(()));
        assert_eq!(holding_news(true, now + HOLDING_FRESH_MS, now), Ok(()));
        assert_eq!(holding_news(false, now, now), Err(None));
        assert_eq!(holding_news(true, now - HOLDING_FRESH_MS - 1, now), Err(None));
        assert_eq!(holding_news(true, now + HOLDING_FRESH_MS + 1, now), Err(None));
    }
}
