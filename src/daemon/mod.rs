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

mod catchup;
mod contribute;
pub mod epoch;
mod fetch;
mod gossip;
pub mod metrics;
mod status;
pub mod wire;

pub use contribute::ContributeReport;
pub use status::{ContributionStatus, DatanetStatus, Earnings, EpochView, LedgerView, LocalDatanet, Status};

use crate::admission::{self, SignedContribution};
use crate::config::{Config, JoinTarget};
use crate::identity::Identity;
use crate::ids::{ContributionId, DatanetId, PeerKey};
use crate::manifest::{Manifest, SignedManifest};
use crate::net::{self, NetEvent, NetHandle, TopicKind};
use crate::store::Store;
use fetch::{FetchFailure, Pending};
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use metrics::{DaemonMetrics, RejectReason};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

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
                self.contribute(datanet, path, skip_invalid, reply);
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

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::FetchDone { id, result } => self.on_fetch_done(id, result).await,
            Internal::Discovered { datanet, bytes, peer } => self.on_discovered(datanet, bytes, peer).await,
            Internal::Contributed { signed, reply, report } => self.on_contributed(signed, reply, report).await,
            Internal::Epoch(m) => self.on_epoch_internal(m).await,
            Internal::LedgerCaughtUp { datanet, appended } => self.on_ledger_caught_up(datanet, appended),
        }
    }
}
