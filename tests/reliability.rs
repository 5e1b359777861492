//! Reliability on real processes (issue 7): `datanet run` daemons started as separate processes on
//! loopback, `kill -9`ed at random points during replication and during an epoch, and a hostile
//! libp2p peer flooding their gossip topics. Every random choice comes from one seed, printed at
//! the start of each test; `DATANET_RELIABILITY_SEED=<n>` replays it (`random` draws a fresh one). Every wait has a timeout.
//! The tests of this file run one at a time (they share the machine's cores with the daemons).

mod common;
use common::wait_until;
use datanet::api::{ApiClient, ContributeRequest};
use datanet::codec::Signed;
use datanet::daemon::Status;
use datanet::daemon::epoch::DatanetEpochs;
use datanet::identity::Identity;
use datanet::ids::{ContributionId, DatanetId};
use datanet::manifest::{ManifestFile, SignedManifest};
use datanet::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_datanet");

/// One test at a time: each runs several daemons on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// splitmix64: small, seedable, good enough to pick kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The test's seed: `DATANET_RELIABILITY_SEED` (a number, or `random` for a fresh one), else a
/// fixed default so `make test` replays the same run; printed so a failure can be replayed.
fn seeded(test: &str) -> (u64, Rng) {
    let seed = match std::env::var("DATANET_RELIABILITY_SEED").ok().as_deref() {
        Some("random") => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
                % 1_000_000_007
        }
        Some(s) => s.parse().expect("DATANET_RELIABILITY_SEED is a number or `random`"),
        None => 20_261_126,
    };
    eprintln!("{test}: seed {seed} (replay with DATANET_RELIABILITY_SEED={seed})");
    (seed, Rng(seed))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `datanet run` process on its own datadir (log in `<datadir>/daemon.log`).
struct Proc {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        // A killed daemon leaves its API address behind; the new one writes its own.
        let _ = std::fs::remove_file(self.dir.join("api.addr"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        let child = Command::new(BIN)
            .arg("--datadir")
            .arg(&self.dir)
            .arg("run")
            .env("RUST_LOG", "warn,datanet=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn datanet run");
        self.child = Some(child);
    }

    /// SIGKILL: no flush, no clean close.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the clean shutdown (SIGKILL after 30 s).
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                assert!(status.success(), "{} exited with {status} after SIGTERM", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!("{} did not stop within 30 s of SIGTERM", self.name);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process is still running (not exited, not a zombie).
    fn alive(&self) -> bool {
        self.child.as_ref().is_some_and(|c| {
            std::fs::read_to_string(format!("/proc/{}/stat", c.id())).is_ok_and(|s| !s.contains(") Z "))
        })
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The API client once the daemon answers.
    async fn api(&self) -> ApiClient {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = ApiClient::from_datadir(&self.dir) {
                if c.alive().await {
                    return c;
                }
            }
            assert!(self.alive(), "{} exited; log:\n{}", self.name, self.log_tail());
            assert!(Instant::now() < deadline, "{} did not answer within 60 s", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn status(&self) -> Status {
        self.api().await.get("/api/v1/status").await.unwrap()
    }

    /// Contributions of `d` held here (0 while the API is not up).
    async fn held(&self, d: &DatanetId) -> BTreeSet<String> {
        let Some(c) = ApiClient::from_datadir(&self.dir) else { return BTreeSet::new() };
        let Ok(s) = c.get::<Status>("/api/v1/status").await else { return BTreeSet::new() };
        s.datanets
            .iter()
            .filter(|x| x.id == d.to_hex())
            .flat_map(|x| x.contributions.iter().map(|c| c.id.clone()))
            .collect()
    }

    async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = self.api().await.get_text("/metrics").await.unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
            .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- {} ({}) last log lines:\n{}", self.name, self.dir.display(), self.log_tail());
        }
        self.kill9();
    }
}

/// N peers: identities, one Datanet (committee: all of them, founder: peer 0) stored with its
/// evaluation file in every datadir, a config whose seed is peer 0, fixed loopback ports.
struct Net {
    // Declared first, dropped first: the daemons stop (and show their logs) before their folder goes.
    peers: Vec<Proc>,
    tmp: tempfile::TempDir,
    ids: Vec<Identity>,
    ports: Vec<u16>,
    manifest: SignedManifest,
    d: DatanetId,
}

async fn create(n: usize, manifest: &str, extra_config: &str) -> Net {
    create_with(n, manifest, "", extra_config).await
}

/// [`create`] with extra lines for the `[net]` table.
async fn create_with(n: usize, manifest: &str, net_extra: &str, extra_config: &str) -> Net {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("p{i}"))).collect();
    let ids: Vec<Identity> = dirs.iter().map(|d| Identity::init(d).unwrap()).collect();
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut file = ManifestFile::read(&root().join("config/datanets").join(manifest)).unwrap();
    file.committee.members = ids.iter().map(|i| i.public_key().to_hex()).collect();
    file.committee.quorum = None;
    // Short epoch windows for four daemons training on two shared cores (the manifest's, shared).
    file.protocol.jobs = 6;
    file.protocol.view_timeout_ms = 3_000;
    file.protocol.commit_window_ms = 15_000;
    file.protocol.reveal_window_ms = 3_000;
    file.protocol.rebroadcast_ms = 1_000;
    // Epochs back to back: one-second windows, all long open by the time a test starts one.
    file.epoch_length_secs = 1;
    let check = |s: &str| datanet::net::parse_seed_addr(s).map(|_| ()).map_err(|e| e.to_string());
    let (m, eval) = file.into_manifest(&root().join("config/datanets"), ids[0].public_key(), &check).unwrap();
    let manifest = Signed::sign(m, &ids[0].signing_key());
    let d = manifest.body.id();
    let seed =
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", ports[0], datanet::net::keys::peer_id(&ids[0].public_key()).unwrap());
    for (i, dir) in dirs.iter().enumerate() {
        let store = Store::open(dir).await.unwrap();
        store.put_blob(eval.public.clone()).await.unwrap();
        store.put_manifest(&manifest).await.unwrap();
        store.close().await.unwrap();
        let seeds = if i == 0 { String::new() } else { format!("{seed:?}") };
        let cfg = format!(
            "[net]\nlisten = [\"/ip4/127.0.0.1/tcp/{}\"]\nseeds = [{seeds}]\ngossip_heartbeat_ms = 100\n\
             reconnect_backoff_min_ms = 100\nreconnect_backoff_max_ms = 1000\npeer_record_interval_secs = 1\n\
             fetch_timeout_ms = 10000\n{net_extra}\n\n[datanets]\njoin = [\"{}\"]\n\n{extra_config}\n",
            ports[i],
            d.to_hex()
        );
        std::fs::write(dir.join("config.toml"), cfg).unwrap();
    }
    let peers = dirs.into_iter().enumerate().map(|(i, dir)| Proc { name: format!("p{i}"), dir, child: None }).collect();
    Net { tmp, peers, ids, ports, manifest, d }
}

impl Net {
    fn start_all(&mut self) {
        for p in &mut self.peers {
            p.start();
        }
    }

    /// Waits until every running peer sees all others and has a contributions mesh.
    async fn wait_mesh(&mut self) {
        let n = self.peers.len();
        for p in &self.peers {
            let name = p.name.clone();
            wait_until(&format!("{name} meshed with {} peers", n - 1), Duration::from_secs(60), || async move {
                let s = p.status().await;
                s.peers >= n - 1 && s.datanets.iter().all(|x| x.mesh_peers >= 1)
            })
            .await;
        }
    }

    /// Every peer's libp2p id and TCP address, for an attacker to dial.
    fn targets(&self) -> Vec<(libp2p::PeerId, libp2p::Multiaddr)> {
        self.ids
            .iter()
            .zip(&self.ports)
            .map(|(id, port)| {
                let pid = datanet::net::keys::peer_id(&id.public_key()).unwrap();
                (pid, format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap())
            })
            .collect()
    }

    fn stop_all(&mut self) {
        for p in &mut self.peers {
            p.stop();
        }
    }
}

/// Writes `n` distinct instruct records (about `size` bytes each) to a JSONL file.
fn records_file(dir: &Path, name: &str, n: usize, size: usize, salt: &str) -> PathBuf {
    use std::io::Write;
    let p = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    for i in 0..n {
        let body: String =
            (0..size / 8).map(|j| format!("{salt}{:x} ", (i * 7919 + j * 104_729) % 1_000_003)).collect();
        writeln!(f, "{}", serde_json::json!({"prompt": format!("{salt} question {i}"), "completion": body})).unwrap();
    }
    f.flush().unwrap();
    p
}

async fn contribute(p: &Proc, d: &DatanetId, file: &Path) -> serde_json::Value {
    let req = ContributeRequest { datanet: d.to_hex(), path: file.to_path_buf(), skip_invalid: false };
    p.api().await.post("/api/v1/contribute", &req).await.unwrap()
}

/// Opens a stopped peer's store and reads every contribution of `d` back, each chunk checked
/// against its hash and the records against the signed count and Merkle root; returns id → record
/// hashes. Opening the store after a `kill -9` is itself part of the check.
async fn verified_contents(dir: &Path, d: &DatanetId, min_chunks: usize) -> BTreeMap<ContributionId, Vec<[u8; 32]>> {
    let store = Store::open(dir).await.unwrap_or_else(|e| panic!("store of {} does not open: {e}", dir.display()));
    let mut out = BTreeMap::new();
    for c in store.contributions(d).unwrap() {
        let records = store
            .contribution_records(&c.id)
            .await
            .unwrap_or_else(|e| panic!("contribution {} in {} is corrupt or partial: {e}", c.id, dir.display()));
        assert_eq!(records.len(), c.meta.records as usize);
        assert!(c.meta.chunks.len() >= min_chunks, "contribution {} has {} chunks", c.id, c.meta.chunks.len());
        out.insert(c.id, records.iter().map(|r| r.hash.0).collect());
    }
    store.close().await.unwrap();
    out
}

// kill -9 of the receiving daemon at random points while it replicates multi-chunk contributions:
// after each crash its store opens and holds only whole, verified contributions, and after the
// restarts it holds every contribution the sender acknowledged, record for record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_replication_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let (seed, mut rng) = seeded("crash_during_replication");
    let mut net = create(2, "instruct.toml", "").await;
    let d = net.d;
    net.start_all();
    net.wait_mesh().await;
    let tmp = net.tmp.path().to_path_buf();
    let (a, b) = net.peers.split_at_mut(1);
    let (a, b) = (&a[0], &mut b[0]);

    // Calibration: how long one contribution takes from acknowledgement to being held at b.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let file = records_file(&tmp, "c0.jsonl", 3000, 1000, "r0");
    let ack = contribute(a, &d, &file).await;
    let started = Instant::now();
    acked.insert(ack["id"].as_str().unwrap().to_string());
    let bb = &*b;
    wait_until("b replicating the first contribution", Duration::from_secs(60), || async move {
        bb.held(&d).await.len() == 1
    })
    .await;
    let window = started.elapsed().as_millis() as u64;
    eprintln!("one contribution ({} records) replicates in {window} ms", ack["records"]);

    let rounds = 5;
    let mut landed_before = 0;
    for round in 1..=rounds {
        let file = records_file(&tmp, &format!("c{round}.jsonl"), 3000, 1000, &format!("r{round}"));
        let ack = contribute(a, &d, &file).await;
        acked.insert(ack["id"].as_str().unwrap().to_string());
        // Kill somewhere in [0, 1.5 × the replication time]; sometimes twice (the second time
        // while the restarted peer catches up).
        let kills = if rng.range(0, 2) == 0 { 2 } else { 1 };
        for k in 0..kills {
            let delay = rng.range(0, window * 3 / 2);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let had = b.held(&d).await.len();
            b.kill9();
            if had < acked.len() {
                landed_before += 1;
            }
            // All or nothing, and nothing corrupt, straight after the crash.
            let on_disk = verified_contents(&b.dir, &d, 3).await;
            let ids: BTreeSet<String> = on_disk.keys().map(|i| i.to_hex()).collect();
            assert!(
                ids.is_subset(&acked),
                "seed {seed} round {round} kill {k}: b holds contributions nobody acknowledged"
            );
            eprintln!("round {round} kill {k}: after {delay} ms b held {} of {} on disk", on_disk.len(), acked.len());
            b.start();
        }
    }
    // After the last restart, b catches up on everything a acknowledged.
    let (bb, want) = (&*b, &acked);
    wait_until("b holding every acknowledged contribution", Duration::from_secs(120), || async move {
        bb.held(&d).await == *want
    })
    .await;
    net.stop_all();
    let a_all = verified_contents(&net.peers[0].dir, &d, 3).await;
    let b_all = verified_contents(&net.peers[1].dir, &d, 3).await;
    // Same contributions at both peers, record for record, each verified against its signed root.
    assert_eq!(a_all, b_all, "seed {seed}: b's replicas differ from a's originals");
    assert_eq!(a_all.len(), rounds + 1);
    assert!(landed_before >= 1, "seed {seed}: no kill landed before replication finished; widen the window");
    eprintln!(
        "crash_during_replication: seed {seed}, {landed_before} kills before replication finished, {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// A hostile peer: a libp2p swarm of its own (gossipsub with the daemons' topics, and the
/// catch-up protocol) that sends only bad input, as fast as its connections take it.
mod hostile {
    use super::Rng;
    use datanet::admission::ContributionRecord;
    use datanet::codec::{self, Signed};
    use datanet::daemon::wire::{ContributionsMessage, Holding};
    use datanet::identity::Identity;
    use datanet::ids::{BlobHash, ContributionId, DatanetId, MerkleRoot};
    use datanet::manifest::Manifest;
    use datanet::net::catchup::{self, CatchupRequest, CatchupResponse};
    use datanet::net::record::PeerRecord;
    use datanet::net::{PEERS_TOPIC, contributions_topic, epochs_topic};
    use futures::{FutureExt, StreamExt};
    use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, PublishError};
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::swarm::dial_opts::DialOpts;
    use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identity::Keypair, noise, tcp, yamux};
    use std::collections::{BTreeMap, HashSet};
    use std::time::{Duration, Instant};

    #[derive(NetworkBehaviour)]
    pub struct Attacker {
        gossipsub: gossipsub::Behaviour,
        catchup: request_response::cbor::Behaviour<CatchupRequest, CatchupResponse>,
    }

    /// What the hostile peer sent, by kind.
    #[derive(Debug, Default)]
    pub struct Sent {
        pub by_kind: BTreeMap<&'static str, u64>,
        pub queue_full: u64,
        pub identities: u32,
        pub captured: u64,
    }

    impl Sent {
        pub fn total(&self) -> u64 {
            self.by_kind.values().sum()
        }
    }

    /// `authenticity`: a normal signing identity, or one that claims another peer's id as the
    /// author of unsigned messages (the daemons validate strictly: signatures are required).
    fn swarm(key: Keypair, authenticity: MessageAuthenticity) -> Swarm<Attacker> {
        SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| {
                let cfg = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(100))
                    // Large enough to send messages over the daemons' transport limit.
                    .max_transmit_size(8 << 20)
                    .validation_mode(gossipsub::ValidationMode::None)
                    // The default id (author + sequence number) lets it publish the same bytes again.
                    .build()
                    .unwrap();
                let gossipsub = gossipsub::Behaviour::new(authenticity, cfg).unwrap();
                let catchup = request_response::cbor::Behaviour::with_codec(
                    request_response::cbor::codec::Codec::default()
                        .set_request_size_maximum(catchup::REQUEST_BYTES_MAX)
                        .set_response_size_maximum(catchup::RESPONSE_BYTES_MAX),
                    [(StreamProtocol::new(catchup::PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                );
                Ok(Attacker { gossipsub, catchup })
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    }

    fn announce(signer: &Identity, d: DatanetId, created_ms: u64, record_count: u32) -> Signed<ContributionRecord> {
        let body = ContributionRecord {
            datanet: d,
            contributor: signer.public_key(),
            created_ms,
            root: BlobHash([7; 32]),
            records_root: MerkleRoot([1; 32]),
            record_count,
            byte_count: 10,
            chunk_count: 1,
        };
        Signed::sign(body, &signer.signing_key())
    }

    /// Drives `sw` until `n` peers subscribed to `topic`, or `within` passed.
    async fn wait_subscribed(sw: &mut Swarm<Attacker>, topic: &gossipsub::TopicHash, n: usize, within: Duration) {
        let mut subscribed = HashSet::new();
        let ready_by = Instant::now() + within;
        while subscribed.len() < n && Instant::now() < ready_by {
            if let Ok(libp2p::swarm::SwarmEvent::Behaviour(AttackerEvent::Gossipsub(gossipsub::Event::Subscribed {
                peer_id,
                topic: t,
            }))) = tokio::time::timeout(Duration::from_millis(100), sw.select_next_some()).await
                && t == *topic
            {
                subscribed.insert(peer_id);
            }
        }
    }

    /// Announces `count` validly signed contributions (each from a fresh contributor key) that
    /// nobody serves, from one libp2p identity, then stays connected until `until`. Returns how
    /// many were published.
    pub async fn announce_spam(targets: Vec<(PeerId, Multiaddr)>, d: DatanetId, count: u64, until: Instant) -> u64 {
        let key = Keypair::generate_ed25519();
        let mut sw = swarm(key.clone(), MessageAuthenticity::Signed(key));
        let topic = IdentTopic::new(contributions_topic(&d));
        sw.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
        for (p, a) in &targets {
            sw.dial(DialOpts::peer_id(*p).addresses(vec![a.clone()]).build()).unwrap();
        }
        wait_subscribed(&mut sw, &topic.hash(), targets.len(), Duration::from_secs(20)).await;
        // Let the mesh form (heartbeats) so the announcements go out.
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle {
            let _ = tokio::time::timeout(Duration::from_millis(50), sw.select_next_some()).await;
        }
        let mut published = 0;
        for n in 0..count {
            let c = announce(&Identity::generate(), d, 1_000 + n, 1);
            if sw
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), codec::encode(&ContributionsMessage::Announce(c)))
                .is_ok()
            {
                published += 1;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), sw.select_next_some()).await;
        }
        while Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(100), sw.select_next_some()).await;
        }
        published
    }

    /// Kinds of message (see [`message`]): kind 2 is a replay, the last is over the daemons'
    /// transport limit and only sent once per identity that sends it (it ends its stream anyway).
    const KINDS: u64 = 12;

    /// One bad message of kind `kind`: (kind name, topic, bytes).
    fn message(kind: u64, rng: &mut Rng, d: DatanetId, m: &Manifest, n: u64) -> (&'static str, String, Vec<u8>) {
        let contributions = contributions_topic(&d);
        let epochs = epochs_topic(&d);
        let evil = Identity::from_seed(rng.bytes(32).try_into().unwrap());
        let limit = 64 * 1024;
        match kind {
            0 => ("malformed", contributions, {
                let len = rng.range(1, 3000) as usize;
                rng.bytes(len)
            }),
            1 => ("oversize", contributions, rng.bytes(limit + 100)),
            3 => {
                // Signed, then changed.
                let mut c = announce(&evil, d, n, 1);
                c.body.record_count = 2;
                ("bad_signature", contributions, codec::encode(&ContributionsMessage::Announce(c)))
            }
            4 => {
                let h = Holding {
                    datanet: d,
                    contribution: ContributionId([n as u8; 32]),
                    holder: evil.public_key(),
                    issued_ms: n,
                };
                let mut s = Signed::sign(h, &evil.signing_key());
                s.body.issued_ms += 1;
                ("bad_signature_holding", contributions, codec::encode(&ContributionsMessage::Holding(s)))
            }
            5 => {
                let c = announce(&evil, DatanetId(rng.bytes(32).try_into().unwrap()), n, 1);
                ("unknown_datanet", contributions, codec::encode(&ContributionsMessage::Announce(c)))
            }
            6 => {
                let c = announce(&evil, d, n, m.admission.contribution_records_max + 1);
                ("limits", contributions, codec::encode(&ContributionsMessage::Announce(c)))
            }
            7 => ("epoch_malformed", epochs, {
                let len = rng.range(1, 3000) as usize;
                rng.bytes(len)
            }),
            8 => ("epoch_large_malformed", epochs, rng.bytes(limit + 100)),
            9 => ("peer_record_malformed", PEERS_TOPIC.to_string(), {
                let len = rng.range(1, 500) as usize;
                rng.bytes(len)
            }),
            10 => {
                // A well-signed record of another peer, relayed as its own.
                let rec = PeerRecord { peer: evil.public_key(), iroh_addrs: vec![], p2p_addrs: vec![], issued_ms: n };
                ("peer_record_not_its_own", PEERS_TOPIC.to_string(), Signed::sign(rec, &evil.signing_key()).to_bytes())
            }
            // Over every topic's bound and over the daemons' transport limit (4 MiB epoch messages).
            _ => ("over_transport_limit", contributions, vec![n as u8; (4 << 20) + (64 << 10)]),
        }
    }

    /// Floods `targets` until `until`, under a new identity every `rotate`. Each identity first
    /// sends one message of every kind in order, then random kinds; every third identity also
    /// sends one message over the daemons' transport limit (their codec refuses it and closes the
    /// stream, which may end that identity's flood), and every third claims to be `impersonate` and sends
    /// unsigned messages (the daemons require signatures). A fifth of the messages replay what it
    /// sent before or received from the honest peers.
    pub async fn flood(
        targets: Vec<(PeerId, Multiaddr)>,
        d: DatanetId,
        m: Manifest,
        impersonate: PeerId,
        mut rng: Rng,
        until: Instant,
        rotate: Duration,
    ) -> Sent {
        let mut sent = Sent::default();
        let mut replay: Vec<(String, Vec<u8>)> = Vec::new();
        let mut n = 0u64;
        while Instant::now() < until {
            let key = Keypair::ed25519_from_bytes(rng.bytes(32)).unwrap();
            let k = sent.identities % 3;
            let auth = if k == 2 {
                MessageAuthenticity::Author(impersonate)
            } else {
                MessageAuthenticity::Signed(key.clone())
            };
            sent.identities += 1;
            let mut sw = swarm(key, auth);
            for t in [contributions_topic(&d), epochs_topic(&d), PEERS_TOPIC.to_string()] {
                sw.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(t)).unwrap();
            }
            for (p, a) in &targets {
                sw.dial(DialOpts::peer_id(*p).addresses(vec![a.clone()]).build()).unwrap();
            }
            let ct = IdentTopic::new(contributions_topic(&d)).hash();
            wait_subscribed(&mut sw, &ct, targets.len(), Duration::from_secs(10)).await;
            let end = until.min(Instant::now() + rotate);
            let mut probe = 0..if k == 1 { KINDS } else { KINDS - 1 };
            while Instant::now() < end {
                for _ in 0..32 {
                    n += 1;
                    let kind = probe.next().unwrap_or_else(|| rng.range(0, KINDS - 2));
                    let (kind, topic, data) = if kind == 2 || (!replay.is_empty() && rng.range(0, 5) == 0) {
                        if replay.is_empty() {
                            continue;
                        }
                        let (t, b) = replay[rng.range(0, replay.len() as u64 - 1) as usize].clone();
                        ("replay", t, b)
                    } else {
                        message(kind, &mut rng, d, &m, n)
                    };
                    match sw.behaviour_mut().gossipsub.publish(IdentTopic::new(topic.clone()), data.clone()) {
                        Ok(_) => {
                            *sent.by_kind.entry(kind).or_default() += 1;
                            if replay.len() < 256 && kind != "replay" && data.len() < 128 << 10 {
                                replay.push((topic, data));
                            }
                        }
                        Err(PublishError::AllQueuesFull(_)) => sent.queue_full += 1,
                        Err(_) => {}
                    }
                }
                // Catch-up requests: a garbage hello, an inventory page, a large get.
                for (p, _) in &targets {
                    let req = match rng.range(0, 2) {
                        0 => CatchupRequest::Hello { record: rng.bytes(200) },
                        1 => CatchupRequest::Inventory { datanet: d, offset: rng.range(0, 1 << 40), limit: u32::MAX },
                        _ => CatchupRequest::Get {
                            datanet: d,
                            ids: (0..1000).map(|_| ContributionId(rng.bytes(32).try_into().unwrap())).collect(),
                        },
                    };
                    sw.behaviour_mut().catchup.send_request(p, req);
                    *sent.by_kind.entry("catchup_request").or_default() += 1;
                }
                // Drive the swarm; keep what honest peers publish for replaying.
                while let Some(Some(ev)) = sw.next().now_or_never() {
                    if let libp2p::swarm::SwarmEvent::Behaviour(AttackerEvent::Gossipsub(gossipsub::Event::Message {
                        message,
                        ..
                    })) = ev
                    {
                        sent.captured += 1;
                        if replay.len() < 512 {
                            replay.push((message.topic.to_string(), message.data));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sent
    }
}

/// Largest growth of an honest daemon's resident memory under the flood, in each stretch of it
/// that does not include admitting the honest contribution (admission itself grows the sled
/// cache, bounded by the store's 256 MiB `cache_capacity`, whatever the flood does).
const FLOOD_RSS_GROWTH_MAX_MIB: u64 = 32;

// A hostile peer floods two honest daemons for 15 s (malformed, oversize, badly signed, unknown
// Datanet, over-limit, replayed and impersonated messages on every topic, catch-up spam, three
// identities): the daemons stay up, accept none of it, count it by reason, replicate a real
// contribution added mid-flood, and their resident memory grows by at most 32 MiB under the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_flood_is_rejected_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let (seed, mut rng) = seeded("hostile_peer_flood");
    let mut net = create(2, "instruct.toml", "").await;
    let d = net.d;
    net.start_all();
    net.wait_mesh().await;
    let tmp = net.tmp.path().to_path_buf();
    let targets = net.targets();
    let (a, b) = (&net.peers[0], &net.peers[1]);
    // Warm-up: one contribution replicated before the flood, so that the baseline includes what
    // admission and replication allocate anyway.
    let warm = contribute(a, &d, &records_file(&tmp, "warm.jsonl", 1500, 600, "warm")).await;
    let warm_id = warm["id"].as_str().unwrap().to_string();
    wait_until("warm-up replication", Duration::from_secs(60), || async move { b.held(&d).await.len() == 1 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = [a.metrics().await, b.metrics().await];
    let base = [a.rss_kib(), b.rss_kib()];

    let flood_for = Duration::from_secs(15);
    let flood_start = Instant::now();
    let until = flood_start + flood_for;
    let attacker = tokio::spawn(hostile::flood(
        targets.clone(),
        d,
        net.manifest.body.clone(),
        targets[0].0,
        Rng(rng.next()),
        until,
        Duration::from_secs(2),
    ));
    // (seconds into the flood, [rss of a, rss of b] in KiB)
    let mut timeline: Vec<(f64, [u64; 2])> = vec![(0.0, base)];
    let sample = |timeline: &mut Vec<(f64, [u64; 2])>| {
        for p in [a, b] {
            assert!(p.alive(), "seed {seed}: {} died during the flood", p.name);
        }
        timeline.push((flood_start.elapsed().as_secs_f64(), [a.rss_kib(), b.rss_kib()]));
    };
    // A real contribution, added a few seconds into the flood, must still replicate.
    let add_at = Instant::now() + Duration::from_millis(rng.range(2000, 6000));
    // Most graylisted peers b saw at once (gossipsub drops their traffic unread; the gauge shows it).
    let mut graylisted = 0f64;
    while Instant::now() < add_at {
        sample(&mut timeline);
        graylisted = graylisted.max(b.metrics().await.get("datanet_peers_graylisted").copied().unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let file = records_file(&tmp, "honest.jsonl", 1500, 600, "honest");
    let ack = contribute(a, &d, &file).await;
    let id = ack["id"].as_str().unwrap().to_string();
    let added = Instant::now();
    let deadline = added + Duration::from_secs(90);
    let mut replicated_after = None;
    while replicated_after.is_none() || Instant::now() < until + Duration::from_secs(2) {
        sample(&mut timeline);
        if replicated_after.is_none() && b.held(&d).await.contains(&id) {
            replicated_after = Some(added.elapsed());
        }
        assert!(Instant::now() < deadline, "seed {seed}: the honest contribution did not replicate during the flood");
        graylisted = graylisted.max(b.metrics().await.get("datanet_peers_graylisted").copied().unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sent = attacker.await.unwrap();
    sample(&mut timeline);
    let replicated_after = replicated_after.unwrap();
    eprintln!("attacker sent {} messages under {} identities: {:?}", sent.total(), sent.identities, sent);
    eprintln!("honest contribution replicated {:.1}s after it was added", replicated_after.as_secs_f64());
    eprintln!("b saw at most {graylisted} graylisted peers at once");
    assert!(graylisted >= 1.0, "seed {seed}: the metrics never showed a graylisted attacker");
    let shown: Vec<String> = timeline.iter().map(|(t, r)| format!("{t:.1}s {}/{}", r[0] >> 10, r[1] >> 10)).collect();
    eprintln!("rss MiB a/b: {}", shown.join(", "));
    // The stretches of the flood before the honest contribution was added and from a second after
    // it was replicated; growth within each, per daemon.
    let added_t = added.duration_since(flood_start).as_secs_f64();
    let settled_t = added_t + replicated_after.as_secs_f64() + 1.0;
    let growth = |i: usize| -> u64 {
        let before: Vec<u64> = timeline.iter().filter(|(t, _)| *t < added_t).map(|(_, r)| r[i]).collect();
        let after: Vec<u64> = timeline.iter().filter(|(t, _)| *t > settled_t).map(|(_, r)| r[i]).collect();
        [before, after]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.iter().max().unwrap().saturating_sub(s[0]))
            .max()
            .unwrap_or(0)
    };
    let peak = [0, 1].map(|i| timeline.iter().map(|(_, r)| r[i]).max().unwrap());

    for (i, p) in [a, b].iter().enumerate() {
        let m = p.metrics().await;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let delta = |k: &str| get(k) - before[i].get(k).copied().unwrap_or(0.0);
        let rejected = |r: &str| delta(&format!("datanet_gossip_rejected_total{{reason=\"{r}\"}}"));
        eprintln!(
            "{}: during the flood received {} accepted {} ignored {} rejected oversize {} malformed {} \
             bad_signature {} unknown_datanet {} limits {}; peer records rejected {}; catch-up served {}; \
             penalized {}; rss {} MiB, peak {} MiB, growth under the flood alone {} MiB",
            p.name,
            delta("datanet_gossip_received_total"),
            delta("datanet_gossip_accepted_total"),
            delta("datanet_gossip_ignored_total"),
            rejected("oversize"),
            rejected("malformed"),
            rejected("bad_signature"),
            rejected("unknown_datanet"),
            rejected("limits"),
            delta("datanet_peer_records_rejected_total"),
            delta("datanet_catchup_requests_served_total"),
            delta("datanet_peers_penalized_total"),
            base[i] >> 10,
            peak[i] >> 10,
            growth(i) >> 10,
        );
    }
    for (i, p) in [a, b].iter().enumerate() {
        let m = p.metrics().await;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let delta = |k: &str| get(k) - before[i].get(k).copied().unwrap_or(0.0);
        let rejected = |r: &str| delta(&format!("datanet_gossip_rejected_total{{reason=\"{r}\"}}"));
        // Every kind of bad message reached the daemon's validation and was refused there.
        for r in ["oversize", "malformed", "bad_signature", "unknown_datanet", "limits"] {
            assert!(rejected(r) >= 1.0, "seed {seed}: {} counted no `{r}` rejection", p.name);
        }
        assert!(delta("datanet_peer_records_rejected_total") >= 1.0, "seed {seed}: {} rejected no peer record", p.name);
        // The only gossip accepted is the honest traffic: a's announcement at b, b's holding at a.
        assert!(
            delta("datanet_gossip_accepted_total") <= 1.0,
            "seed {seed}: {} accepted {} gossip messages",
            p.name,
            delta("datanet_gossip_accepted_total")
        );
        // Nothing the attacker announced was queued or fetched.
        assert_eq!(get("datanet_fetch_queued"), 0.0, "seed {seed}: {} has fetches queued", p.name);
        assert_eq!(get("datanet_fetch_given_up_total"), 0.0, "seed {seed}: {} gave up a fetch", p.name);
        assert_eq!(
            delta("datanet_contributions_replicated_total"),
            i as f64,
            "seed {seed}: {} replication count",
            p.name
        );
        let growth_mib = growth(i) >> 10;
        assert!(
            growth_mib <= FLOOD_RSS_GROWTH_MAX_MIB,
            "seed {seed}: {} grew by {growth_mib} MiB under the flood (bound {FLOOD_RSS_GROWTH_MAX_MIB} MiB)",
            p.name
        );
    }
    net.stop_all();
    let a_all = verified_contents(&net.peers[0].dir, &d, 1).await;
    let b_all = verified_contents(&net.peers[1].dir, &d, 1).await;
    // Both hold exactly the honest contributions, verified.
    let mut want = vec![warm_id, id];
    want.sort();
    assert_eq!(a_all.keys().map(|k| k.to_hex()).collect::<Vec<_>>(), want);
    assert_eq!(a_all, b_all);
    eprintln!("hostile_peer_flood: seed {seed}, {:.1}s", t0.elapsed().as_secs_f64());
}

/// This peer's own epoch settings; the short windows every member shares are in the manifest
/// ([`create_with`]).
const EPOCH_CONFIG: &str = "[epoch]\neval_fetch_timeout_ms = 10000\n";

// A peer announcing 200 validly signed contributions it never serves fills a daemon's fetch queue (16 here); an honest contribution announced afterwards still replicates, because a full queue makes room at the expense of the announcer holding the most entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_spam_does_not_crowd_out_honest_contributions() {
    let _serial = SERIAL.lock().await;
    let mut net = create_with(2, "instruct.toml", "fetch_queue_max = 16\nfetch_in_flight_max = 2", "").await;
    let d = net.d;
    net.start_all();
    net.wait_mesh().await;
    let targets = net.targets();
    let until = Instant::now() + Duration::from_secs(120);
    let spammer = tokio::spawn(hostile::announce_spam(targets, d, 200, until));
    let (a, b) = (&net.peers[0], &net.peers[1]);
    wait_until("b's fetch queue is full of spam", Duration::from_secs(60), || async move {
        b.metrics().await.get("datanet_fetch_queue_full_total").copied().unwrap_or(0.0) >= 1.0
    })
    .await;
    let file = records_file(net.tmp.path(), "honest.jsonl", 200, 300, "honest");
    let id = contribute(a, &d, &file).await["id"].as_str().unwrap().to_string();
    let id2 = id.clone();
    wait_until("the honest contribution replicates to b", Duration::from_secs(60), || {
        let id = id2.clone();
        async move { b.held(&d).await.contains(&id) }
    })
    .await;
    let m = b.metrics().await;
    eprintln!(
        "b: announcements accepted {}, queue full {}, queued {}, given up {}",
        m.get("datanet_announces_accepted_total").copied().unwrap_or(0.0),
        m["datanet_fetch_queue_full_total"],
        m["datanet_fetch_queued"],
        m.get("datanet_fetch_given_up_total").copied().unwrap_or(0.0)
    );
    assert!(m["datanet_fetch_queued"] <= 16.0, "the queue stays bounded");
    spammer.abort();
    net.stop_all();
}

async fn epochs(p: &Proc) -> Option<Vec<DatanetEpochs>> {
    let c = ApiClient::from_datadir(&p.dir)?;
    c.get("/api/v1/epoch/status").await.ok()
}

/// `datanet --datadir <dir> args…` as a process; returns stdout, panics with stderr on failure.
fn cli(dir: Option<&Path>, args: &[&str]) -> String {
    let mut c = Command::new(BIN);
    if let Some(d) = dir {
        c.arg("--datadir").arg(d);
    }
    let o = c.args(args).env("RUST_LOG", "error").output().unwrap();
    assert!(o.status.success(), "datanet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// kill -9 of one committee member (f = 1 of n = 4) at a random point of each of two epochs,
// restarted after a random pause: each epoch still certifies at every member, the restarted one
// included, all four ledgers hold the same chain, and it verifies offline against the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_epoch_still_certifies() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let (seed, mut rng) = seeded("crash_during_epoch");
    let n = 4;
    let mut net = create(n, "breast_cancer.toml", EPOCH_CONFIG).await;
    let d = net.d;
    net.start_all();
    net.wait_mesh().await;
    let tmp = net.tmp.path().to_path_buf();
    // A quarter of the training rows per peer, as its own contribution.
    let csv = std::fs::read_to_string(root().join("tests/data/breast_cancer_train.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    let per = rows.len().div_ceil(n);
    for (i, p) in net.peers.iter().enumerate() {
        let file = tmp.join(format!("part{i}.csv"));
        std::fs::write(&file, rows.iter().skip(i * per).take(per).map(|r| format!("{r}\n")).collect::<String>())
            .unwrap();
        contribute(p, &d, &file).await;
    }
    for p in &net.peers {
        wait_until(&format!("{} holding all four contributions", p.name), Duration::from_secs(90), || async move {
            p.held(&d).await.len() == n
        })
        .await;
    }
    let replicated = t0.elapsed();

    // Two epochs, each with its own starter, victim, kill point and pause; in one of four the
    // starter itself is killed straight after `epoch run` answered.
    let mut files = Vec::new();
    let mut durations = Vec::new();
    for epoch in 1..=2u64 {
        let began = Instant::now();
        let starter = rng.range(0, n as u64 - 1) as usize;
        let (victim, kill_after) = if rng.range(0, 3) == 0 {
            (starter, 0)
        } else {
            (rng.range(0, n as u64 - 1) as usize, rng.range(0, 20_000))
        };
        let down_for = rng.range(300, 5_000);
        let reply: serde_json::Value = net.peers[starter]
            .api()
            .await
            .post("/api/v1/epoch/run", &serde_json::json!({"datanet": d.to_hex()}))
            .await
            .unwrap();
        assert_eq!(reply["epoch"], epoch, "{reply}");
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        let stage = if kill_after == 0 {
            None
        } else {
            epochs(&net.peers[victim]).await.and_then(|e| e[0].current.as_ref().map(|c| c.stage.clone()))
        };
        net.peers[victim].kill9();
        eprintln!(
            "epoch {epoch} started at p{starter}; p{victim} killed after {kill_after} ms (stage {stage:?}), down for \
             {down_for} ms"
        );
        tokio::time::sleep(Duration::from_millis(down_for)).await;
        net.peers[victim].start();
        for p in &net.peers {
            wait_until(
                &format!("seed {seed}: {} attesting epoch {epoch}", p.name),
                Duration::from_secs(150),
                || async move { epochs(p).await.is_some_and(|e| e[0].head_epoch == Some(epoch)) },
            )
            .await;
        }
        durations.push(began.elapsed().as_secs_f64());
        let mut hashes = Vec::new();
        for p in &net.peers {
            let v: serde_json::Value = p
                .api()
                .await
                .get(&format!("/api/v1/epoch/attestation?datanet={}&epoch={epoch}", d.to_hex()))
                .await
                .unwrap();
            let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
            let a: datanet::attribution::epoch::Attestation = datanet::codec::decode(&bytes).unwrap();
            hashes.push(a.hash());
        }
        // Every member, the restarted one included, appended the same attestation.
        assert!(hashes.iter().all(|h| *h == hashes[0]), "seed {seed}: epoch {epoch} attestations differ: {hashes:?}");
        files.push((victim, hashes[0]));
    }
    net.stop_all();

    // Offline, from each epoch's restarted peer: its ledger's attestation exported and verified
    // against the signed manifest (and the second against the first, the hash chain), no daemon.
    let man = tmp.join("manifest.bin");
    cli(Some(&net.peers[0].dir), &["datanet", "export", &d.to_hex(), "--out", man.to_str().unwrap()]);
    let mut paths = Vec::new();
    for (i, (victim, _)) in files.iter().enumerate() {
        let att = tmp.join(format!("attestation{}.bin", i + 1));
        let e = (i + 1).to_string();
        cli(
            Some(&net.peers[*victim].dir),
            &["attestation", "export", &d.to_hex(), "--epoch", &e, "--out", att.to_str().unwrap()],
        );
        paths.push(att);
    }
    let (a1, a2, m) = (paths[0].to_str().unwrap(), paths[1].to_str().unwrap(), man.to_str().unwrap());
    eprint!("{}", cli(None, &["attestation", "verify", a1, "--manifest", m]));
    eprint!("{}", cli(None, &["attestation", "verify", a2, "--manifest", m, "--prev", a1]));
    for p in &net.peers {
        let store = Store::open(&p.dir).await.unwrap();
        let ledger = datanet::store::ledger::Ledger::open(store.db());
        let head = ledger.head(&d).unwrap();
        let first = ledger.attestation(&d, 1).unwrap().map(|a| a.hash());
        store.close().await.unwrap();
        // The same two-epoch chain in every ledger.
        assert_eq!(head.map(|h| (h.epoch, h.hash)), Some((2, files[1].1)), "seed {seed}: {} ledger head", p.name);
        assert_eq!(first, Some(files[0].1), "seed {seed}: {} epoch 1", p.name);
    }
    eprintln!(
        "crash_during_epoch: seed {seed}, replicated {:.1}s, epochs attested everywhere in {durations:.1?}s, total {:.1}s",
        replicated.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
