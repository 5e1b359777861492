//! Multi-peer tests of the daemon with real sockets on 127.0.0.1 (ports chosen by the OS): seed
//! bootstrap, gossip + iroh-blobs replication, catch-up of a late peer, restart mid-replication,
//! the local API, and hostile input. Every awaited condition has a timeout.

mod common;
use common::wait_until;
use datanet::admission::{ContributionRecord, SignedContribution};
use datanet::codec::{self, Signed};
use datanet::config::Config;
use datanet::daemon::metrics::RejectReason;
use datanet::daemon::wire::ContributionsMessage;
use datanet::daemon::{self, DaemonHandle};
use datanet::identity::Identity;
use datanet::ids::{BlobHash, DatanetId, MerkleRoot};
use datanet::manifest::{ManifestFile, SignedManifest};
use datanet::net::TopicKind;
use datanet::node::{self, Node};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The instruct demo Datanet, founded by a fixed identity.
fn manifest() -> SignedManifest {
    manifest_named(None)
}

/// The instruct demo Datanet, renamed when `name` is given (another Datanet id).
fn manifest_named(name: Option<&str>) -> SignedManifest {
    let founder = Identity::from_seed([200; 32]);
    let mut file = ManifestFile::read(&root().join("config/datanets/instruct.toml")).unwrap();
    if let Some(n) = name {
        file.name = n.to_string();
    }
    let check = |s: &str| datanet::net::parse_seed_addr(s).map(|_| ()).map_err(|e| e.to_string());
    let (m, _) = file.into_manifest(&root().join("config/datanets"), founder.public_key(), &check).unwrap();
    Signed::sign(m, &founder.signing_key())
}

/// A loopback config with quick heartbeats and retries for tests.
fn test_config(seeds: &[String]) -> Config {
    let mut c = Config::default();
    c.net.seeds = seeds.to_vec();
    c.net.gossip_heartbeat_ms = 100;
    c.net.reconnect_backoff_min_ms = 100;
    c.net.reconnect_backoff_max_ms = 1000;
    c.net.peer_record_interval_secs = 1;
    c.net.fetch_timeout_ms = 10_000;
    c
}

struct Peer {
    datadir: PathBuf,
    daemon: Option<Node>,
}

impl Peer {
    async fn start(tmp: &Path, name: &str, cfg: Config, m: &SignedManifest) -> Peer {
        let datadir = tmp.join(name);
        if !datadir.join("identity.key").exists() {
            Identity::init(&datadir).unwrap();
        }
        let d = tokio::time::timeout(WAIT, node::start(&datadir, cfg)).await.expect("daemon start timed out").unwrap();
        d.handle().join(m.clone()).await.unwrap();
        Peer { datadir, daemon: Some(d) }
    }

    fn h(&self) -> &DaemonHandle {
        self.daemon.as_ref().expect("running").handle()
    }

    async fn seed_addr(&self) -> String {
        let h = self.h();
        h.net().wait_listening(Duration::from_secs(5)).await;
        h.net().seed_addrs().into_iter().find(|a| a.contains("/tcp/")).expect("a tcp listen address")
    }

    async fn contributions(&self, d: &DatanetId) -> usize {
        let s = self.h().status().await.unwrap();
        s.datanets.iter().find(|x| x.id == d.to_hex()).map(|x| x.contributions.len()).unwrap_or(0)
    }

    async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            tokio::time::timeout(WAIT, d.shutdown()).await.expect("shutdown timed out");
        }
    }
}

/// Writes `n` instruct records (distinct, about `size` bytes each) to a JSONL file.
fn records_file(dir: &Path, name: &str, n: usize, size: usize, salt: &str) -> PathBuf {
    use std::io::Write;
    let p = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    for i in 0..n {
        let body: String = (0..size / 8).map(|j| format!("w{:x} ", (i * 7919 + j * 104729) % 1_000_003)).collect();
        writeln!(f, "{}", serde_json::json!({"prompt": format!("{salt} question {i}"), "completion": body})).unwrap();
    }
    f.flush().unwrap();
    p
}

async fn mesh(p: &Peer, d: DatanetId) {
    wait_until("a gossip mesh peer", WAIT, || async { p.h().net().mesh_peers(d, TopicKind::Contributions).await > 0 })
        .await;
}

// Five daemons bootstrap from one seed; a contribution at one appears, verified, at all others;
// a sixth peer started later catches up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_daemons_replicate_and_late_peer_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest();
    let d = m.body.id();
    let seed = Peer::start(tmp.path(), "p0", test_config(&[]), &m).await;
    let seed_addr = seed.seed_addr().await;
    let mut peers = vec![seed];
    for i in 1..5 {
        peers.push(Peer::start(tmp.path(), &format!("p{i}"), test_config(std::slice::from_ref(&seed_addr)), &m).await);
    }
    // Everyone finds everyone else through the seed (Kademlia + identify), not just the seed.
    for p in &peers[1..] {
        wait_until("peers beyond the seed", WAIT, || async { p.h().peers().await.len() >= 2 }).await;
        mesh(p, d).await;
    }
    let file = records_file(tmp.path(), "a.jsonl", 300, 200, "five");
    let r = peers[2].h().contribute(&d.to_hex(), &file, false).await.unwrap();
    assert_eq!(r.records, 300);
    for (i, p) in peers.iter().enumerate() {
        wait_until(&format!("contribution at p{i}"), WAIT, || async { p.contributions(&d).await == 1 }).await;
    }
    for p in &peers {
        assert_eq!(p.h().metrics().rejected_total(), 0);
    }
    let replicated =
        || peers.iter().map(|p| p.h().metrics().contributions_replicated.load(Ordering::Relaxed)).sum::<u64>();
    wait_until("four replications", WAIT, || async { replicated() >= 4 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replicated(), 4, "each of the four other peers fetched and admitted it once");
    // Holding announcements reach the contributor: its replication count grows.
    wait_until("holders seen by the contributor", WAIT, || async {
        let s = peers[2].h().status().await.unwrap();
        s.datanets[0].contributions[0].holders >= 3
    })
    .await;
    // A late peer asks the others for what it missed.
    let late = Peer::start(tmp.path(), "late", test_config(std::slice::from_ref(&seed_addr)), &m).await;
    wait_until("late peer catch-up", WAIT, || async { late.contributions(&d).await == 1 }).await;
    assert!(late.h().metrics().catchup_discovered.load(Ordering::Relaxed) >= 1);
    let mut all = peers;
    all.push(late);
    for p in all.iter_mut() {
        p.stop().await;
    }
}

// The API refuses calls without the cookie token (401), serves status, peers and Prometheus
// metrics with it, and the cookie file is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_token_and_serves_metrics() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest();
    // A Datanet stored on this peer but not joined: the status lists it with the command that joins it.
    let other = manifest_named(Some("stored-only"));
    {
        let dir = tmp.path().join("api");
        Identity::init(&dir).unwrap();
        let store = datanet::store::Store::open(&dir).await.unwrap();
        store.put_manifest(&other).await.unwrap();
        store.close().await.unwrap();
    }
    let mut p = Peer::start(tmp.path(), "api", test_config(&[]), &m).await;
    let s = p.h().status().await.unwrap();
    assert_eq!(s.not_joined.len(), 1, "{:?}", s.not_joined);
    assert_eq!(
        (s.not_joined[0].name.as_str(), s.not_joined[0].join_with.as_str()),
        ("stored-only", "datanet join stored-only")
    );
    // Before any epoch: the committee, and when the first epoch may start.
    let e = &s.datanets[0].epoch;
    assert!(e.current.is_none() && e.next_epoch == 1 && e.committee > 0, "{e:?}");
    assert_eq!((s.datanets[0].ledger.head_epoch, s.datanets[0].mine.reward.as_str()), (None, "0"));
    let addr = p.h().api_addr().expect("api bound");
    assert!(addr.ip().is_loopback());
    let cookie = p.datadir.join("api.cookie");
    assert_eq!(std::fs::metadata(&cookie).unwrap().permissions().mode() & 0o777, 0o600);
    let http = reqwest::Client::new();
    for path in ["/", "/metrics", "/api/v1/status", "/api/v1/peers"] {
        let r = http.get(format!("http://{addr}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without token");
        let r = http.get(format!("http://{addr}{path}")).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    let client = datanet::api::ApiClient::from_datadir(&p.datadir).unwrap();
    let s: daemon::Status = client.get("/api/v1/status").await.unwrap();
    assert_eq!(s.datanets.len(), 1);
    let metrics = client.get_text("/metrics").await.unwrap();
    for name in [
        "datanet_peers_connected",
        "datanet_gossip_rejected_total{reason=\"oversize\"}",
        "datanet_bytes_replicated_total",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    let page = client.get_text("/").await.unwrap();
    assert!(page.contains("instruct-demo") && page.contains("datanet join stored-only"), "{page}");
    // The page's `?token=` is URL-decoded like any query value.
    let token = std::fs::read_to_string(&cookie).unwrap();
    let r = http.get(format!("http://{addr}/?other=1&token={}", token.trim())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // `datanet join NAME` (the API's join by name or id prefix) works like every other command,
    // and an unknown name gets a message saying what to give instead.
    let join = |d: &str| datanet::api::JoinRequest { manifest_hex: None, datanet: Some(d.to_string()) };
    for key in ["instruct-demo", &m.body.id().to_hex()[..8]] {
        let r: serde_json::Value = client.post("/api/v1/join", &join(key)).await.unwrap();
        assert_eq!(r["joined"], m.body.id().to_hex(), "join {key}");
    }
    let err = client.post::<_, serde_json::Value>("/api/v1/join", &join("no-such-datanet")).await.unwrap_err();
    assert!(err.to_string().contains("not known here"), "{err}");
    // `datanet datanet create` while the daemon holds the datadir: created through the daemon,
    // which joins it; a bad manifest is refused with its reason and joins nothing.
    let create = |from: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_datanet"))
            .arg("--datadir")
            .arg(&p.datadir)
            .args(["--json", "datanet", "create", "--from"])
            .arg(from)
            .output()
            .unwrap()
    };
    let out = create(&root().join("config/datanets/breast_cancer.toml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["joined"], true, "{made}");
    let s: daemon::Status = client.get("/api/v1/status").await.unwrap();
    assert_eq!(s.datanets.len(), 2, "the new Datanet is joined");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n").unwrap();
    let out = create(&bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"), "{}", String::from_utf8_lossy(&out.stderr));
    let s: daemon::Status = client.get("/api/v1/status").await.unwrap();
    assert_eq!(s.datanets.len(), 2);
    p.stop().await;
}

/// A victim and a hostile daemon meshed on one Datanet.
async fn victim_and_hostile(tmp: &Path, m: &SignedManifest, tweak: impl Fn(&mut Config)) -> (Peer, Peer) {
    let mut vc = test_config(&[]);
    tweak(&mut vc);
    let victim = Peer::start(tmp, "victim", vc, m).await;
    let addr = victim.seed_addr().await;
    let hostile = Peer::start(tmp, "hostile", test_config(&[addr]), m).await;
    mesh(&hostile, m.body.id()).await;
    mesh(&victim, m.body.id()).await;
    (victim, hostile)
}

fn hostile_score(victim_peers: &[datanet::net::PeerInfo], hostile: &DaemonHandle) -> f64 {
    let id = hostile.net().peer_id().to_string();
    victim_peers.iter().find(|p| p.peer_id == id).and_then(|p| p.score).unwrap_or(0.0)
}

fn contribution(signer: &Identity, datanet: DatanetId, root: BlobHash) -> SignedContribution {
    let body = ContributionRecord {
        datanet,
        contributor: signer.public_key(),
        created_ms: 1,
        root,
        records_root: MerkleRoot([1; 32]),
        record_count: 1,
        byte_count: 10,
        chunk_count: 1,
    };
    Signed::sign(body, &signer.signing_key())
}

// Oversize, malformed, badly signed, unknown-Datanet and non-member epoch-starting gossip is rejected: counted by reason,
// the sender loses peer score, nothing is stored, and the daemon keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_gossip_is_rejected_and_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest();
    let d = m.body.id();
    let (mut victim, mut hostile) = victim_and_hostile(tmp.path(), &m, |_| {}).await;
    let evil = Identity::from_seed([66; 32]);
    let hn = hostile.h().net().clone();
    // A re-sent epoch message (byte-identical signed body, as every rebroadcast is) leaves the
    // node again in a new frame, where gossipsub would drop the bare repeat as a duplicate (a
    // message for a later epoch: ignored, so the sender keeps its score for what follows).
    let later = datanet::attribution::epoch::messages::Witness { datanet: d, epoch: 5, pending: 0, seen: vec![] };
    let later = datanet::attribution::epoch::EpochMessage::Witness(Box::new(Signed::sign(later, &evil.signing_key())));
    let vm = victim.h().metrics().clone();
    for sent in [1, 2] {
        hn.publish(d, TopicKind::Epochs, datanet::daemon::wire::EpochFrame::encode(sent, &later)).await.unwrap();
    }
    wait_until("both frames of the re-sent message delivered", WAIT, || async {
        vm.epoch_messages.load(Ordering::Relaxed) >= 2
    })
    .await;
    let limit = Config::default().net.gossip_message_bytes_max as usize;
    // Oversize (under the transport limit, over the payload limit).
    hn.publish(d, TopicKind::Contributions, vec![7u8; limit + 100]).await.unwrap();
    // Malformed bytes.
    hn.publish(d, TopicKind::Contributions, b"not a canonical message".to_vec()).await.unwrap();
    // Bad signature: the body changed after signing.
    let mut c = contribution(&evil, d, BlobHash([3; 32]));
    c.body.record_count = 2;
    hn.publish(d, TopicKind::Contributions, codec::encode(&ContributionsMessage::Announce(c))).await.unwrap();
    // A contribution to a Datanet this peer does not know, sent on a joined topic.
    let c = contribution(&evil, DatanetId([9; 32]), BlobHash([4; 32]));
    hn.publish(d, TopicKind::Contributions, codec::encode(&ContributionsMessage::Announce(c))).await.unwrap();
    // Over the manifest's limits.
    let mut body = contribution(&evil, d, BlobHash([5; 32])).body;
    body.record_count = m.body.admission.contribution_records_max + 1;
    let c = Signed::sign(body, &evil.signing_key());
    hn.publish(d, TopicKind::Contributions, codec::encode(&ContributionsMessage::Announce(c))).await.unwrap();
    // Epoch minting: a validly signed epoch message from a key outside the committee, for the
    // epoch that has not started here.
    let w = datanet::attribution::epoch::messages::Witness { datanet: d, epoch: 1, pending: 0, seen: vec![] };
    let mint = datanet::attribution::epoch::EpochMessage::Witness(Box::new(Signed::sign(w, &evil.signing_key())));
    hn.publish(d, TopicKind::Epochs, datanet::daemon::wire::EpochFrame::encode(3, &mint)).await.unwrap();
    wait_until("every rejection counted", WAIT, || async { RejectReason::ALL.iter().all(|r| vm.rejected(*r) >= 1) })
        .await;
    wait_until("hostile peer score below zero", WAIT, || async {
        hostile_score(&victim.h().peers().await, hostile.h()) < 0.0
    })
    .await;
    // The epoch topic carries messages far above the contributions limit (proposals with report
    // sets): a 1 MiB one is delivered to the daemon (and rejected there as malformed).
    let epochs_before = vm.epoch_messages.load(Ordering::Relaxed);
    hn.publish(d, TopicKind::Epochs, vec![9u8; 1 << 20]).await.unwrap();
    wait_until("large epoch message delivered", WAIT, || async {
        vm.epoch_messages.load(Ordering::Relaxed) > epochs_before
    })
    .await;
    let metrics = victim.h().render_metrics();
    assert!(metrics.contains("datanet_gossip_rejected_total{reason=\"bad_signature\"} 1"), "{metrics}");
    assert_eq!(victim.contributions(&d).await, 0);
    assert_eq!(vm.fetch_queued.load(Ordering::Relaxed), 0, "nothing rejected was queued for fetching");
    hostile.stop().await;
    victim.stop().await;
}

// A peer that announces a contribution and serves nothing, or serves chunks that do not match
// what it announced: the fetch gives up or admission refuses, the announcer is penalized,
// nothing is stored, and both show in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_without_data_and_mismatched_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest();
    let d = m.body.id();
    // The hostile peer's blob store holds one chunk that does not match the record it will sign.
    let hostile_dir = tmp.path().join("hostile");
    let hid = Identity::init(&hostile_dir).unwrap();
    let bad_root = {
        let store = datanet::store::Store::open(&hostile_dir).await.unwrap();
        let chunk = store.put_blob(b"{\"completion\":\"x\",\"prompt\":\"y\"}\n".to_vec()).await.unwrap();
        let root = store.put_blob(chunk.0.to_vec()).await.unwrap();
        store.close().await.unwrap();
        root
    };
    let (mut victim, mut hostile) = victim_and_hostile(tmp.path(), &m, |c| {
        c.net.fetch_timeout_ms = 2000;
        c.net.fetch_attempts_max = 2;
    })
    .await;
    let hn = hostile.h().net().clone();
    // Announced by its contributor, never served: the root is nowhere.
    let missing = contribution(&hid, d, BlobHash([42; 32]));
    hn.publish(d, TopicKind::Contributions, codec::encode(&ContributionsMessage::Announce(missing))).await.unwrap();
    // Served, but the chunk's records do not give the announced Merkle root and counts.
    let lying = contribution(&hid, d, bad_root);
    hn.publish(d, TopicKind::Contributions, codec::encode(&ContributionsMessage::Announce(lying))).await.unwrap();
    let vm = victim.h().metrics().clone();
    wait_until("fetch given up", WAIT, || async { vm.fetch_given_up.load(Ordering::Relaxed) >= 1 }).await;
    wait_until("mismatch refused", WAIT, || async { vm.replication_rejected.load(Ordering::Relaxed) >= 1 }).await;
    assert!(vm.peers_penalized.load(Ordering::Relaxed) >= 2);
    wait_until("hostile peer score below zero", WAIT, || async {
        hostile_score(&victim.h().peers().await, hostile.h()) < 0.0
    })
    .await;
    assert_eq!(victim.contributions(&d).await, 0);
    let metrics = victim.h().render_metrics();
    assert!(metrics.contains("datanet_fetch_given_up_total 1"), "{metrics}");
    assert!(victim.h().status().await.is_ok(), "the daemon still answers");
    hostile.stop().await;
    victim.stop().await;
}

// A seed that is down is redialed with backoff; the daemon keeps running and counts the failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_seed_does_not_stop_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest();
    // A port that was just free on loopback, with a peer id nobody has.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ghost = datanet::net::keys::peer_id(&Identity::from_seed([77; 32]).public_key()).unwrap();
    let seed = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{ghost}");
    let mut p = Peer::start(tmp.path(), "lonely", test_config(&[seed]), &m).await;
    let nm = p.h().net().metrics().clone();
    wait_until("several failed seed dials", WAIT, || async { nm.seed_dial_failures.load(Ordering::Relaxed) >= 3 })
        .await;
    assert!(p.h().status().await.is_ok());
    assert!(p.h().render_metrics().contains("datanet_seed_dial_failures_total"));
    p.stop().await;
}

// A peer shut down while it fetches a multi-chunk contribution completes it after a restart on
// the same datadir, and what it stores verifies (admission re-checks every chunk and root).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_mid_replication_completes_without_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest();
    let d = m.body.id();
    let mut a = Peer::start(tmp.path(), "a", test_config(&[]), &m).await;
    let addr = a.seed_addr().await;
    let file = records_file(tmp.path(), "big.jsonl", 6000, 1000, "big");
    let r = a.h().contribute(&d.to_hex(), &file, false).await.unwrap();
    assert_eq!(r.records, 6000);
    let mut b = Peer::start(tmp.path(), "b", test_config(std::slice::from_ref(&addr)), &m).await;
    let bm = b.h().metrics().clone();
    wait_until("fetch started", WAIT, || async {
        bm.fetch_in_flight.load(Ordering::Relaxed) >= 1 || b.contributions(&d).await == 1
    })
    .await;
    let finished_early = b.contributions(&d).await == 1;
    b.stop().await;
    let b = Peer::start(tmp.path(), "b", test_config(std::slice::from_ref(&addr)), &m).await;
    wait_until("replication after restart", WAIT, || async { b.contributions(&d).await == 1 }).await;
    let s = b.h().status().await.unwrap();
    assert_eq!(s.datanets[0].contributions[0].id, r.id);
    assert_eq!(s.datanets[0].contributions[0].records, 6000);
    let mut b = b;
    b.stop().await;
    // Reopen offline: every record reads back, and the bytes match their hashes.
    let store = datanet::store::Store::open(&b.datadir).await.unwrap();
    let id = r.id.parse().unwrap();
    assert_eq!(store.contribution_records(&id).await.unwrap().len(), 6000);
    store.close().await.unwrap();
    eprintln!("restart test: transfer finished before the stop: {finished_early}");
    a.stop().await;
}
