//! The libp2p actor: owns the swarm, answers [`Command`]s from [`NetHandle`]s, and reports
//! [`NetEvent`]s to the daemon.
//!
//! One task runs [`NetActor::run`]: a `select!` over swarm events, commands and a 250 ms tick
//! (seed redials with exponential backoff, peer-record re-publication). Every gossip message on
//! a Datanet topic goes to the daemon for validation; peer records on [`PEERS_TOPIC`] and the
//! catch-up hello are validated here. All queues are bounded.
//!
//! This file holds the room's face (events, errors, the handle), [`start`] and the actor's state;
//! `behaviour` builds the swarm, `actor` runs the loop (commands, tick, seed dials), `events`
//! handles swarm and behaviour events, `record_table` keeps the peer-record table.

use crate::config::NetConfig;
use crate::identity::Identity;
use crate::ids::{DatanetId, PeerKey};
use crate::net::blobs::{BlobNode, BlobNodeError};
use crate::net::catchup::{CatchupRequest, CatchupResponse};
use crate::net::record::SignedPeerRecord;
use crate::net::{NetMetrics, PEERS_TOPIC, contributions_topic, epochs_topic};
use behaviour::{Behaviour, build_swarm};
use iroh_blobs::store::fs::FsStore;
use libp2p::gossipsub::{IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod actor;
mod behaviour;
mod events;
mod record_table;

/// Which of a Datanet's topics a message is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Contributions,
    Epochs,
}

/// What the net room tells the daemon.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossip message on a joined Datanet's topic. Answer with [`NetHandle::report`].
    Gossip {
        datanet: DatanetId,
        kind: TopicKind,
        /// The original publisher (gossipsub signs messages).
        source: Option<PeerId>,
        /// The peer that forwarded it to us.
        propagation_source: PeerId,
        message_id: MessageId,
        data: Vec<u8>,
    },
    /// A peer asks for catch-up data. Answer with [`NetHandle::respond`].
    CatchupRequest { peer: PeerId, request: CatchupRequest, respond: u64 },
    /// A peer subscribed to a joined Datanet's contributions topic.
    PeerSubscribed { peer: PeerId, datanet: DatanetId },
    /// A newer signed peer record was accepted: the peer's blobs are now reachable.
    PeerRecord { key: PeerKey },
    /// The last connection to a peer closed.
    PeerGone { peer: PeerId },
}

/// One connected peer, for `datanet peers` and the status page.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub key: Option<String>,
    pub addrs: Vec<String>,
    pub score: Option<f64>,
    pub topics: usize,
    pub has_record: bool,
    pub seed: bool,
}

/// Why the net room could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("net.listen {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("libp2p transport: {0}")]
    Transport(String),
    #[error(transparent)]
    Blobs(#[from] BlobNodeError),
    #[error("the network actor has stopped")]
    Stopped,
    #[error("publish on {topic}: {reason}")]
    Publish { topic: String, reason: String },
    #[error("catch-up request to {peer}: {reason}")]
    Catchup { peer: String, reason: String },
    #[error("gossip configuration: {0}")]
    Gossip(String),
}

enum Command {
    Join(DatanetId, oneshot::Sender<Result<(), NetError>>),
    Publish { datanet: DatanetId, kind: TopicKind, data: Vec<u8>, reply: oneshot::Sender<Result<(), NetError>> },
    Report { message_id: MessageId, source: PeerId, acceptance: MessageAcceptance },
    AddSeeds(Vec<(PeerId, Multiaddr)>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    MeshPeers { datanet: DatanetId, kind: TopicKind, reply: oneshot::Sender<usize> },
    Penalize(PeerId),
    Catchup { peer: PeerId, request: CatchupRequest, reply: oneshot::Sender<Result<CatchupResponse, NetError>> },
    Respond { respond: u64, response: CatchupResponse },
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, cloneable handle on the net room.
#[derive(Clone, Debug)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    blobs: BlobNode,
    metrics: Arc<NetMetrics>,
    key: PeerKey,
    peer_id: PeerId,
    listen: Arc<RwLock<Vec<Multiaddr>>>,
}

impl NetHandle {
    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Subscribes to a Datanet's contributions and epochs topics.
    pub async fn join(&self, datanet: DatanetId) -> Result<(), NetError> {
        self.ask(|r| Command::Join(datanet, r)).await?
    }

    /// Publishes `data` on a Datanet topic.
    pub async fn publish(&self, datanet: DatanetId, kind: TopicKind, data: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::Publish { datanet, kind, data, reply }).await?
    }

    /// The daemon's verdict on a gossip message: Accept forwards it, Reject also costs the
    /// forwarding peer score, Ignore drops it silently.
    pub async fn report(&self, message_id: MessageId, source: PeerId, acceptance: MessageAcceptance) {
        self.tx.send(Command::Report { message_id, source, acceptance }).await.ok();
    }

    /// Adds bootstrap peers; they are dialed now and redialed with backoff while down.
    pub async fn add_seeds(&self, seeds: Vec<(PeerId, Multiaddr)>) {
        self.tx.send(Command::AddSeeds(seeds)).await.ok();
    }

    /// Connected peers.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.ask(Command::Peers).await.unwrap_or_default()
    }

    /// Peers in our gossipsub mesh for a Datanet topic.
    pub async fn mesh_peers(&self, datanet: DatanetId, kind: TopicKind) -> usize {
        self.ask(|reply| Command::MeshPeers { datanet, kind, reply }).await.unwrap_or(0)
    }

    /// Lowers a peer's application score (e.g. it announced data it then did not serve).
    pub async fn penalize(&self, peer: PeerId) {
        self.tx.send(Command::Penalize(peer)).await.ok();
    }

    /// Sends a catch-up request and waits for the answer (bounded by the protocol timeout).
    pub async fn catchup(&self, peer: PeerId, request: CatchupRequest) -> Result<CatchupResponse, NetError> {
        self.ask(|reply| Command::Catchup { peer, request, reply }).await?
    }

    /// Answers an inbound catch-up request.
    pub async fn respond(&self, respond: u64, response: CatchupResponse) {
        self.tx.send(Command::Respond { respond, response }).await.ok();
    }

    /// The blob endpoint.
    pub fn blobs(&self) -> &BlobNode {
        &self.blobs
    }

    /// The net room's counters.
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// This peer's public key.
    pub fn key(&self) -> PeerKey {
        self.key
    }

    /// This peer's libp2p id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Current libp2p listen addresses.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until at least one listen address is bound (or `timeout` passes).
    pub async fn wait_listening(&self, timeout: Duration) -> Vec<Multiaddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.listen_addrs();
            if !l.is_empty() || Instant::now() > deadline {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Seed multiaddrs (`…/p2p/<id>`) others can use to reach this peer.
    pub fn seed_addrs(&self) -> Vec<String> {
        self.listen_addrs().iter().map(|a| format!("{a}/p2p/{}", self.peer_id)).collect()
    }

    /// Stops the swarm (closing every connection), then closes the iroh endpoint.
    pub async fn shutdown(&self) {
        if tokio::time::timeout(SHUTDOWN_STEP, self.ask(Command::Shutdown)).await.is_err() {
            tracing::warn!(target: "datanet::net", "swarm did not stop in time");
        }
        if tokio::time::timeout(SHUTDOWN_STEP, self.blobs.shutdown()).await.is_err() {
            tracing::warn!(target: "datanet::net", "iroh endpoint did not close in time");
        }
    }
}

/// Starts the net room: binds the libp2p listeners and the iroh endpoint (serving `store`),
/// spawns the actor, and returns its handle and event stream.
pub async fn start(
    identity: &Identity,
    cfg: &NetConfig,
    store: &FsStore,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let metrics = Arc::new(NetMetrics::default());
    let blobs = BlobNode::start(identity, cfg, store, metrics.clone()).await?;
    let mut swarm = build_swarm(identity, cfg)?;
    for a in &cfg.listen {
        let addr: Multiaddr = a.parse().map_err(|e| NetError::Listen { addr: a.clone(), reason: format!("{e}") })?;
        swarm.listen_on(addr).map_err(|e| NetError::Listen { addr: a.clone(), reason: e.to_string() })?;
    }
    let peers_topic = IdentTopic::new(PEERS_TOPIC);
    swarm.behaviour_mut().gossipsub.subscribe(&peers_topic).map_err(|e| NetError::Gossip(e.to_string()))?;
    let (tx, rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let listen = Arc::new(RwLock::new(Vec::new()));
    let handle = NetHandle {
        tx,
        blobs: blobs.clone(),
        metrics: metrics.clone(),
        key: identity.public_key(),
        peer_id: *swarm.local_peer_id(),
        listen: listen.clone(),
    };
    let actor = NetActor {
        swarm,
        cfg: cfg.clone(),
        identity: identity.clone(),
        blobs,
        metrics,
        events: ev_tx,
        commands: rx,
        listen,
        topics: HashMap::new(),
        seeds: HashMap::new(),
        records: HashMap::new(),
        connected: HashMap::new(),
        app_scores: HashMap::new(),
        pending_out: HashMap::new(),
        pending_in: HashMap::new(),
        next_respond: 0,
        last_record_ms: 0,
        next_record_at: Instant::now() + Duration::from_millis(300),
        bootstrapped: false,
    };
    tokio::spawn(actor.run());
    Ok((handle, ev_rx))
}

struct Seed {
    addrs: Vec<Multiaddr>,
    backoff: Duration,
    next_dial: Instant,
    dialing: bool,
}

/// The task that owns the swarm.
pub struct NetActor {
    swarm: Swarm<Behaviour>,
    cfg: NetConfig,
    identity: Identity,
    blobs: BlobNode,
    metrics: Arc<NetMetrics>,
    events: mpsc::Sender<NetEvent>,
    commands: mpsc::Receiver<Command>,
    listen: Arc<RwLock<Vec<Multiaddr>>>,
    topics: HashMap<TopicHash, (DatanetId, TopicKind)>,
    seeds: HashMap<PeerId, Seed>,
    records: HashMap<PeerKey, SignedPeerRecord>,
    connected: HashMap<PeerId, Vec<Multiaddr>>,
    app_scores: HashMap<PeerId, f64>,
    pending_out: HashMap<OutboundRequestId, oneshot::Sender<Result<CatchupResponse, NetError>>>,
    pending_in: HashMap<u64, ResponseChannel<CatchupResponse>>,
    next_respond: u64,
    last_record_ms: u64,
    next_record_at: Instant,
    bootstrapped: bool,
}

/// Longest wait for one shutdown step (swarm, endpoint) before moving on.
const SHUTDOWN_STEP: Duration = Duration::from_secs(10);

/// Inbound catch-up requests waiting for the daemon's answer, at most.
const PENDING_INBOUND_MAX: usize = 1024;

/// Application scores and peer records kept, at most: past this, the entries of peers not
/// connected are dropped, so identity churn cannot grow them without bound. (A dropped penalty
/// is not a gift: gossipsub keeps its own score of a disconnected peer for `retain_score`.)
const PEER_STATE_MAX: usize = 4096;

/// Joined topics, for tests.
pub fn topic_hashes(datanet: &DatanetId) -> HashSet<TopicHash> {
    [contributions_topic(datanet), epochs_topic(datanet)].into_iter().map(|t| IdentTopic::new(t).hash()).collect()
}
