//! The libp2p actor: owns the swarm, answers [`Command`]s from [`NetHandle`]s, and reports
//! [`NetEvent`]s to the daemon.
//!
//! One task runs [`NetActor::run`]: a `select!` over swarm events, commands and a 250 ms tick
//! (seed redials with exponential backoff, peer-record re-publication). Every gossip message on
//! a Datanet topic goes to the daemon for validation; peer records on [`PEERS_TOPIC`] and the
//! catch-up hello are validated here. All queues are bounded.

use crate::codec::Signed;
use crate::config::NetConfig;
use crate::identity::Identity;
use crate::ids::{DatanetId, PeerKey};
use crate::net::blobs::{BlobNode, BlobNodeError};
use crate::net::catchup::{self, CatchupRequest, CatchupResponse};
use crate::net::record::{PeerRecord, SignedPeerRecord, decode_peer_record};
use crate::net::{NetMetrics, PEERS_TOPIC, contributions_topic, epochs_topic, keys, now_ms};
use futures::StreamExt;
use iroh_blobs::store::fs::FsStore;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, connection_limits, identify, kad, noise, ping, tcp, yamux,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    catchup: request_response::cbor::Behaviour<CatchupRequest, CatchupResponse>,
}

/// Scoring for every topic: invalid messages (Reject) are what costs; quiet topics cost nothing.
fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.1,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // Squared count: 5 invalid messages in quick succession (-75) leave a peer just above the
        // graylist threshold (-80); the sixth gets everything it sends dropped unread.
        invalid_message_deliveries_weight: -3.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

fn gossip_behaviour(key: &libp2p::identity::Keypair, cfg: &NetConfig) -> Result<gossipsub::Behaviour, NetError> {
    let mesh_n = cfg.gossip_mesh_n.max(1) as usize;
    let mesh_n_low = (mesh_n * 2 / 3).max(1);
    let gcfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(cfg.gossip_heartbeat_ms))
        .mesh_n(mesh_n)
        .mesh_n_low(mesh_n_low)
        .mesh_n_high(mesh_n * 2)
        .mesh_outbound_min((mesh_n / 2).min(mesh_n_low))
        .gossip_lazy(mesh_n)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        // Room for the envelope (signature, key, topic) around the largest payload of any topic
        // (epoch proposals); each topic's own bound is checked by the daemon so that oversize
        // messages are Rejected and scored. Topics are joined at run time, so gossipsub's
        // per-topic limits (fixed when the behaviour is built) cannot carry them.
        .max_transmit_size(cfg.gossip_message_bytes_max.max(cfg.epoch_message_bytes_max) as usize + 4096)
        .message_id_fn(|m: &gossipsub::Message| MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
        .build()
        .map_err(|e| NetError::Gossip(e.to_string()))?;
    let mut g = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)
        .map_err(|e| NetError::Gossip(e.to_string()))?;
    let mut params = gossipsub::PeerScoreParams {
        app_specific_weight: 10.0,
        decay_interval: Duration::from_secs(1),
        ..Default::default()
    };
    // Every local test and testnet peer shares 127.0.0.1: colocation must not count there.
    params.ip_colocation_factor_whitelist.insert(std::net::Ipv4Addr::LOCALHOST.into());
    params.ip_colocation_factor_whitelist.insert(std::net::Ipv6Addr::LOCALHOST.into());
    params.topics.insert(IdentTopic::new(PEERS_TOPIC).hash(), topic_score_params());
    g.with_peer_score(params, gossipsub::PeerScoreThresholds::default()).map_err(NetError::Gossip)?;
    Ok(g)
}

fn build_swarm(identity: &Identity, cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let kp = keys::libp2p_keypair(identity);
    let cfg2 = cfg.clone();
    let swarm = SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(move |key| {
            let gossipsub =
                gossip_behaviour(key, &cfg2).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let pid = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(StreamProtocol::new("/datanet/kad/1"));
            kcfg.set_query_timeout(Duration::from_secs(10));
            let mut kad = kad::Behaviour::with_config(pid, kad::store::MemoryStore::new(pid), kcfg);
            // Loopback peers have no confirmed external address; force server mode so that
            // they enter each other's routing tables.
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new("/datanet/1".into(), key.public()));
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(cfg2.peers_max * 2))
                    .with_max_established_incoming(Some(cfg2.peers_max))
                    .with_max_established_per_peer(Some(2))
                    .with_max_pending_incoming(Some(cfg2.peers_max)),
            );
            let catchup = request_response::cbor::Behaviour::with_codec(
                request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(catchup::REQUEST_BYTES_MAX)
                    .set_response_size_maximum(catchup::RESPONSE_BYTES_MAX),
                [(StreamProtocol::new(catchup::PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(15)),
            );
            Ok(Behaviour { limits, gossipsub, kad, identify, ping: ping::Behaviour::default(), catchup })
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(cfg.idle_connection_timeout_secs)))
        .build();
    Ok(swarm)
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

/// With the peer-record table full, the record to drop for a new one from `newcomer`: the
/// oldest-issued record of a disconnected peer (ties by key), and only when the newcomer is
/// connected. `None`: keep the table, ignore the newcomer.
/// The table is only walked for a connected newcomer, so a flood of relayed records costs a set
/// lookup each.
fn record_to_evict(
    issued: impl Iterator<Item = (PeerKey, u64)>,
    connected: &std::collections::HashSet<PeerKey>,
    newcomer: &PeerKey,
) -> Option<PeerKey> {
    if !connected.contains(newcomer) {
        return None;
    }
    issued.filter(|(k, _)| !connected.contains(k)).min_by_key(|&(k, t)| (t, k)).map(|(k, _)| k)
}

impl NetActor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => { let _ = reply.send(()); break; }
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::info!(target: "datanet::net", "swarm stopped");
    }

    fn emit(&mut self, ev: NetEvent) -> bool {
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(target: "datanet::net", "daemon event queue full; dropping {:?}", std::mem::discriminant(&e.into_inner()));
                false
            }
        }
    }

    fn topic_for(&self, datanet: &DatanetId, kind: TopicKind) -> IdentTopic {
        IdentTopic::new(match kind {
            TopicKind::Contributions => contributions_topic(datanet),
            TopicKind::Epochs => epochs_topic(datanet),
        })
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Join(d, reply) => {
                let mut res = Ok(());
                for kind in [TopicKind::Contributions, TopicKind::Epochs] {
                    let t = self.topic_for(&d, kind);
                    let g = &mut self.swarm.behaviour_mut().gossipsub;
                    if let Err(e) = g.subscribe(&t) {
                        res = Err(NetError::Gossip(e.to_string()));
                    }
                    let _ = g.set_topic_params(t.clone(), topic_score_params());
                    self.topics.insert(t.hash(), (d, kind));
                }
                // Peers that subscribed before we joined will not announce it again.
                let ct = self.topic_for(&d, TopicKind::Contributions).hash();
                let already: Vec<PeerId> = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&ct))
                    .map(|(p, _)| *p)
                    .collect();
                for peer in already {
                    self.emit(NetEvent::PeerSubscribed { peer, datanet: d });
                }
                let _ = reply.send(res);
            }
            Command::Publish { datanet, kind, data, reply } => {
                let t = self.topic_for(&datanet, kind);
                let res = match self.swarm.behaviour_mut().gossipsub.publish(t.clone(), data) {
                    Ok(_) => {
                        NetMetrics::inc(&self.metrics.gossip_published);
                        Ok(())
                    }
                    Err(gossipsub::PublishError::Duplicate) => Ok(()),
                    Err(e) => {
                        NetMetrics::inc(&self.metrics.gossip_publish_failures);
                        Err(NetError::Publish { topic: t.to_string(), reason: e.to_string() })
                    }
                };
                let _ = reply.send(res);
            }
            Command::Report { message_id, source, acceptance } => {
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &source, acceptance);
            }
            Command::AddSeeds(list) => {
                let now = Instant::now();
                for (peer, addr) in list {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let s = self.seeds.entry(peer).or_insert_with(|| Seed {
                        addrs: Vec::new(),
                        backoff: Duration::from_millis(self.cfg.reconnect_backoff_min_ms),
                        next_dial: now,
                        dialing: false,
                    });
                    if !s.addrs.contains(&addr) {
                        s.addrs.push(addr);
                    }
                }
                self.dial_seeds();
            }
            Command::Peers(reply) => {
                let b = self.swarm.behaviour();
                let topics: HashMap<PeerId, usize> = b.gossipsub.all_peers().map(|(p, t)| (*p, t.len())).collect();
                let out = self
                    .connected
                    .iter()
                    .map(|(p, addrs)| {
                        let key = keys::peer_key(p).ok();
                        PeerInfo {
                            peer_id: p.to_string(),
                            key: key.map(|k| k.to_hex()),
                            addrs: addrs.iter().map(|a| a.to_string()).collect(),
                            score: b.gossipsub.peer_score(p),
                            topics: topics.get(p).copied().unwrap_or(0),
                            has_record: key.is_some_and(|k| self.records.contains_key(&k)),
                            seed: self.seeds.contains_key(p),
                        }
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Command::MeshPeers { datanet, kind, reply } => {
                let t = self.topic_for(&datanet, kind).hash();
                let _ = reply.send(self.swarm.behaviour().gossipsub.mesh_peers(&t).count());
            }
            Command::Penalize(peer) => {
                if self.app_scores.len() >= PEER_STATE_MAX && !self.app_scores.contains_key(&peer) {
                    let connected = &self.connected;
                    self.app_scores.retain(|p, _| connected.contains_key(p));
                }
                let s = self.app_scores.entry(peer).or_insert(0.0);
                *s -= 1.0;
                let s = *s;
                self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, s);
            }
            Command::Catchup { peer, request, reply } => {
                NetMetrics::inc(&self.metrics.catchup_requests_sent);
                let id = self.swarm.behaviour_mut().catchup.send_request(&peer, request);
                self.pending_out.insert(id, reply);
            }
            Command::Respond { respond, response } => {
                if let Some(ch) = self.pending_in.remove(&respond) {
                    NetMetrics::inc(&self.metrics.catchup_requests_served);
                    let _ = self.swarm.behaviour_mut().catchup.send_response(ch, response);
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    fn dial_seeds(&mut self) {
        let now = Instant::now();
        let mut to_dial = Vec::new();
        for (p, s) in self.seeds.iter_mut() {
            if !s.dialing && now >= s.next_dial && !self.connected.contains_key(p) {
                s.dialing = true;
                to_dial.push((*p, s.addrs.clone()));
            }
        }
        for (p, addrs) in to_dial {
            NetMetrics::inc(&self.metrics.seed_dials);
            let opts =
                DialOpts::peer_id(p).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(target: "datanet::net", peer = %p, error = %e, "seed dial not started");
                self.seed_failed(&p);
            }
        }
    }

    fn seed_failed(&mut self, peer: &PeerId) {
        let max = Duration::from_millis(self.cfg.reconnect_backoff_max_ms);
        if let Some(s) = self.seeds.get_mut(peer) {
            NetMetrics::inc(&self.metrics.seed_dial_failures);
            s.dialing = false;
            s.next_dial = Instant::now() + s.backoff;
            tracing::info!(target: "datanet::net", peer = %peer, retry_ms = s.backoff.as_millis() as u64, "seed unreachable");
            s.backoff = (s.backoff * 2).min(max);
        }
    }

    fn own_record(&mut self) -> SignedPeerRecord {
        let issued_ms = now_ms().max(self.last_record_ms + 1);
        self.last_record_ms = issued_ms;
        let mut p2p_addrs: Vec<String> = self.listen_addrs().iter().map(|a| a.to_string()).collect();
        p2p_addrs.truncate(crate::net::record::ADDRS_MAX);
        let body = PeerRecord {
            peer: self.identity.public_key(),
            iroh_addrs: self.blobs.socket_addrs(),
            p2p_addrs,
            issued_ms,
        };
        Signed::sign(body, &self.identity.signing_key())
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen.read().map(|l| l.clone()).unwrap_or_default()
    }

    fn on_tick(&mut self) {
        self.dial_seeds();
        // gossipsub drops everything a graylisted peer sends without telling anyone: count them.
        let gray = gossipsub::PeerScoreThresholds::default().graylist_threshold;
        let g = &self.swarm.behaviour().gossipsub;
        let graylisted = self.connected.keys().filter(|p| g.peer_score(p).is_some_and(|s| s < gray)).count();
        self.metrics.peers_graylisted.store(graylisted as u64, std::sync::atomic::Ordering::Relaxed);
        if Instant::now() >= self.next_record_at {
            self.next_record_at = Instant::now() + Duration::from_secs(self.cfg.peer_record_interval_secs);
            let rec = self.own_record();
            let t = IdentTopic::new(PEERS_TOPIC);
            if self.swarm.behaviour().gossipsub.mesh_peers(&t.hash()).next().is_some()
                || self.swarm.behaviour().gossipsub.all_peers().next().is_some()
            {
                let _ = self.swarm.behaviour_mut().gossipsub.publish(t, rec.to_bytes());
            }
        }
    }

    /// Verifies a peer record and learns it. `from` must be the record's peer when given.
    fn learn_record(&mut self, bytes: &[u8], from: Option<PeerId>) -> Result<bool, String> {
        let rec = decode_peer_record(bytes).map_err(|e| e.to_string())?;
        if let Some(from) = from {
            let k = keys::peer_key(&from).map_err(|e| e.to_string())?;
            if k != rec.body.peer {
                return Err(format!("record of {} relayed as from {}", rec.body.peer.short(), k.short()));
            }
        }
        let key = rec.body.peer;
        if key == self.identity.public_key() {
            return Ok(false);
        }
        if self.records.get(&key).is_some_and(|old| old.body.issued_ms >= rec.body.issued_ms) {
            return Ok(false);
        }
        if self.records.len() >= PEER_STATE_MAX && !self.records.contains_key(&key) {
            // Full: only a connected peer's record gets in, in place of the oldest record of a
            // disconnected peer. Self-signed records of fresh keys relayed by someone else are
            // ignored (and not forwarded), so they cannot evict the providers already known.
            let connected: std::collections::HashSet<PeerKey> =
                self.connected.keys().filter_map(|p| keys::peer_key(p).ok()).collect();
            let issued = self.records.iter().map(|(k, r)| (*k, r.body.issued_ms));
            match record_to_evict(issued, &connected, &key) {
                Some(old) => {
                    self.records.remove(&old);
                    self.blobs.forget(&old);
                }
                None => return Ok(false),
            }
        }
        self.blobs.learn(&key, &rec.body.iroh_addrs);
        if let Ok(pid) = keys::peer_id(&key) {
            for a in &rec.body.p2p_addrs {
                if let Ok(m) = a.parse::<Multiaddr>() {
                    self.swarm.behaviour_mut().kad.add_address(&pid, m);
                }
            }
        }
        self.records.insert(key, rec);
        NetMetrics::inc(&self.metrics.peer_records_accepted);
        self.emit(NetEvent::PeerRecord { key });
        Ok(true)
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(target: "datanet::net", %address, "listening");
                if let Ok(mut l) = self.listen.write() {
                    l.push(address);
                }
                // Re-announce soon with the new address.
                self.next_record_at = self.next_record_at.min(Instant::now() + Duration::from_millis(200));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if let Ok(mut l) = self.listen.write() {
                    l.retain(|a| a != &address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                let addr = endpoint.get_remote_address().clone();
                let entry = self.connected.entry(peer_id).or_default();
                if !entry.contains(&addr) {
                    entry.push(addr);
                }
                self.metrics.peers_connected.store(self.connected.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some(s) = self.seeds.get_mut(&peer_id) {
                    s.dialing = false;
                    s.backoff = Duration::from_millis(self.cfg.reconnect_backoff_min_ms);
                }
                if !self.bootstrapped && self.seeds.contains_key(&peer_id) {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                if num_established.get() == 1 {
                    let record = self.own_record().to_bytes();
                    self.swarm.behaviour_mut().catchup.send_request(&peer_id, CatchupRequest::Hello { record });
                }
                tracing::debug!(target: "datanet::net", peer = %peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.connected.remove(&peer_id);
                self.emit(NetEvent::PeerGone { peer: peer_id });
                self.metrics.peers_connected.store(self.connected.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some(s) = self.seeds.get_mut(&peer_id) {
                    s.next_dial = Instant::now() + Duration::from_millis(self.cfg.reconnect_backoff_min_ms);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. } => {
                tracing::debug!(target: "datanet::net", peer = %p, %error, "dial failed");
                if self.seeds.get(&p).is_some_and(|s| s.dialing) {
                    self.seed_failed(&p);
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                if matches!(error, libp2p::swarm::ListenError::Denied { .. }) {
                    NetMetrics::inc(&self.metrics.connections_refused);
                }
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                if message.topic == IdentTopic::new(PEERS_TOPIC).hash() {
                    let verdict = match self.learn_record(&message.data, message.source) {
                        Ok(true) => MessageAcceptance::Accept,
                        Ok(false) => MessageAcceptance::Ignore,
                        Err(e) => {
                            NetMetrics::inc(&self.metrics.peer_records_rejected);
                            tracing::info!(target: "datanet::net", peer = %propagation_source, error = %e, "peer record rejected");
                            MessageAcceptance::Reject
                        }
                    };
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        verdict,
                    );
                    return;
                }
                let Some(&(datanet, kind)) = self.topics.get(&message.topic) else {
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                    return;
                };
                NetMetrics::inc(&self.metrics.gossip_received);
                let ev = NetEvent::Gossip {
                    datanet,
                    kind,
                    source: message.source,
                    propagation_source,
                    message_id: message_id.clone(),
                    data: message.data,
                };
                if !self.emit(ev) {
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic, .. }) => {
                if let Some(&(datanet, TopicKind::Contributions)) = self.topics.get(&topic) {
                    self.emit(NetEvent::PeerSubscribed { peer: peer_id, datanet });
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if info.protocol_version == "/datanet/1" =>
            {
                for a in info.listen_addrs.into_iter().take(crate::net::record::ADDRS_MAX) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                }
            }
            BehaviourEvent::Catchup(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => match request {
                    CatchupRequest::Hello { record } => {
                        if let Err(e) = self.learn_record(&record, Some(peer)) {
                            NetMetrics::inc(&self.metrics.peer_records_rejected);
                            tracing::info!(target: "datanet::net", %peer, error = %e, "hello record rejected");
                        }
                        let record = self.own_record().to_bytes();
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .catchup
                            .send_response(channel, CatchupResponse::Hello { record });
                    }
                    request => {
                        if self.pending_in.len() >= PENDING_INBOUND_MAX {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .catchup
                                .send_response(channel, CatchupResponse::Refused { reason: "busy".into() });
                            return;
                        }
                        let respond = self.next_respond;
                        self.next_respond += 1;
                        self.pending_in.insert(respond, channel);
                        if !self.emit(NetEvent::CatchupRequest { peer, request, respond })
                            && let Some(ch) = self.pending_in.remove(&respond)
                        {
                            let busy = CatchupResponse::Refused { reason: "busy".into() };
                            let _ = self.swarm.behaviour_mut().catchup.send_response(ch, busy);
                        }
                    }
                },
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.pending_out.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    } else if let CatchupResponse::Hello { record } = response
                        && let Err(e) = self.learn_record(&record, Some(peer))
                    {
                        NetMetrics::inc(&self.metrics.peer_records_rejected);
                        tracing::info!(target: "datanet::net", %peer, error = %e, "hello record rejected");
                    }
                }
            },
            BehaviourEvent::Catchup(request_response::Event::OutboundFailure { peer, request_id, error, .. }) => {
                if let Some(reply) = self.pending_out.remove(&request_id) {
                    NetMetrics::inc(&self.metrics.catchup_failures);
                    let _ = reply.send(Err(NetError::Catchup { peer: peer.to_string(), reason: error.to_string() }));
                }
            }
            _ => {}
        }
    }
}

/// Joined topics, for tests.
pub fn topic_hashes(datanet: &DatanetId) -> HashSet<TopicHash> {
    [contributions_topic(datanet), epochs_topic(datanet)].into_iter().map(|t| IdentTopic::new(t).hash()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A full peer-record table takes a connected peer's record in place of the oldest
    // disconnected one, and never a relayed record of a key nobody is connected to.
    #[test]
    fn full_record_table_keeps_known_providers() {
        let k = |i: u8| PeerKey([i; 32]);
        let issued = [(k(1), 50), (k(2), 10), (k(3), 10), (k(4), 5)];
        let connected: std::collections::HashSet<PeerKey> = [k(4), k(9)].into_iter().collect();
        assert_eq!(record_to_evict(issued.iter().copied(), &connected, &k(9)), Some(k(2)));
        assert_eq!(
            record_to_evict(issued.iter().copied(), &connected, &k(7)),
            None,
            "a fresh relayed key gets no room"
        );
        let all: std::collections::HashSet<PeerKey> = [k(1), k(2), k(3), k(4), k(9)].into_iter().collect();
        assert_eq!(record_to_evict(issued.iter().copied(), &all, &k(9)), None, "connected peers are never evicted");
    }
}
