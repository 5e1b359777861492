//! Swarm benchmarks (`make bench-gossip`, `make bench-replicate`), all on 127.0.0.1.
//!
//! `gossip [--peers 32] [--rounds 10]`: N daemons in one process bootstrapped from one seed. Each
//! round peer 0 admits and announces a new 20-record contribution, and the time until the
//! announcement is accepted (validated) at 50 %, 95 % and 100 % of the other peers is recorded.
//! Prints the median over rounds: `RESULT peers=N p50_ms=… p95_ms=… p100_ms=…`.
//!
//! `replicate [--mb 256]`: a contribution of that many MiB of records is admitted offline at
//! daemon A. First a bare iroh-blobs node (no gossip, no admission) fetches its HashSeq and
//! chunks from A; then daemon B starts, discovers it by catch-up, fetches, re-runs admission and
//! stores it. Prints `RESULT daemon_mb_s=… bare_mb_s=… ratio=…` (MiB/s; daemon time runs from
//! B queuing the fetch to the contribution being admitted).

use datanet::admission::{self, CanonicalRecord};
use datanet::codec::Signed;
use datanet::config::Config;
use datanet::daemon::{self, Daemon};
use datanet::identity::Identity;
use datanet::manifest::{ManifestFile, SignedManifest};
use datanet::net::TopicKind;
use datanet::store::Store;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(contribution_mb: u64) -> SignedManifest {
    let founder = Identity::from_seed([200; 32]);
    let mut file = ManifestFile::read(&root().join("config/datanets/instruct.toml")).expect("instruct manifest");
    file.admission.contribution_bytes_max = (contribution_mb + 16) << 20;
    file.admission.contribution_records_max = 4_000_000;
    let check = |s: &str| datanet::net::parse_seed_addr(s).map(|_| ()).map_err(|e| e.to_string());
    let (m, _) = file.into_manifest(&root().join("config/datanets"), founder.public_key(), &check).expect("manifest");
    Signed::sign(m, &founder.signing_key())
}

fn bench_config(seeds: &[String]) -> Config {
    let mut c = Config::default();
    c.net.seeds = seeds.to_vec();
    c.net.gossip_heartbeat_ms = 200;
    c.net.reconnect_backoff_min_ms = 100;
    c.net.fetch_timeout_ms = 600_000;
    c.net.peer_record_interval_secs = 2;
    c
}

fn records(n: usize, size: usize, salt: &str, task: &datanet::manifest::TaskKind) -> Vec<CanonicalRecord> {
    (0..n)
        .map(|i| {
            let body: String = (0..size / 8).map(|j| format!("w{:x} ", (i * 7919 + j * 104729) % 1_000_003)).collect();
            let v = serde_json::json!({"prompt": format!("{salt} q{i}"), "completion": body});
            admission::canonical::canonicalize(task, v, 1 << 19).expect("canonical record")
        })
        .collect()
}

/// Admits `batches` contributions at `datadir` before its daemon starts; returns their ids.
async fn prepare(
    datadir: &Path,
    m: &SignedManifest,
    batches: &[Vec<CanonicalRecord>],
) -> Vec<datanet::ids::ContributionId> {
    let id = Identity::load(datadir).expect("identity");
    let store = Store::open(datadir).await.expect("store");
    let d = store.put_manifest(m).await.expect("manifest");
    let mut out = Vec::new();
    for b in batches {
        out.push(admission::admit_local(&store, &id, &d, b.clone()).await.expect("admit").id);
    }
    store.close().await.expect("close");
    out
}

async fn start(dir: &Path, cfg: Config, m: &SignedManifest) -> Daemon {
    if !dir.join("identity.key").exists() {
        Identity::init(dir).expect("init");
    }
    let d = daemon::start(dir, cfg).await.expect("daemon");
    d.handle().join(m.clone()).await.expect("join");
    d
}

async fn wait(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn gossip(peers: usize, rounds: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = manifest(64);
    let d = m.body.id();
    let p0 = tmp.path().join("p0");
    Identity::init(&p0).expect("init");
    // Each round is a fresh contribution (an announcement of one a peer already holds is ignored
    // and not forwarded), written as a JSONL file the origin daemon admits and announces.
    let files: Vec<PathBuf> = (0..rounds)
        .map(|r| {
            let p = tmp.path().join(format!("round{r}.jsonl"));
            let lines: Vec<u8> = records(20, 200, &format!("round{r}"), &m.body.task)
                .iter()
                .flat_map(|x| x.bytes.iter().copied().chain([b'\n']))
                .collect();
            std::fs::write(&p, lines).expect("round file");
            p
        })
        .collect();
    let seed = start(&p0, bench_config(&[]), &m).await;
    seed.handle().net().wait_listening(Duration::from_secs(5)).await;
    let addr = seed.handle().net().seed_addrs().into_iter().find(|a| a.contains("/tcp/")).expect("tcp addr");
    let mut all = vec![seed];
    for i in 1..peers {
        all.push(start(&tmp.path().join(format!("p{i}")), bench_config(std::slice::from_ref(&addr)), &m).await);
    }
    eprintln!("{peers} daemons started; waiting for the mesh");
    for dmn in &all {
        wait("mesh", Duration::from_secs(120), async || {
            dmn.handle().net().mesh_peers(d, TopicKind::Contributions).await > 0
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let others: Vec<_> = all[1..].iter().map(|x| x.handle().metrics().clone()).collect();
    let (mut p50, mut p95, mut p100) = (Vec::new(), Vec::new(), Vec::new());
    let mut admit_ms = Vec::new();
    for (r, file) in files.iter().enumerate() {
        let before: Vec<u64> = others.iter().map(|m| m.announces_accepted.load(Ordering::Relaxed)).collect();
        let mut at: Vec<Option<f64>> = vec![None; others.len()];
        // The clock starts before the origin admits its 20 records (a few ms, printed): an upper
        // bound on the time from publishing.
        let t0 = Instant::now();
        all[0].handle().contribute(&d.to_hex(), file, false).await.expect("contribute");
        admit_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        while at.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(30) {
            for (i, m) in others.iter().enumerate() {
                if at[i].is_none() && m.announces_accepted.load(Ordering::Relaxed) > before[i] {
                    at[i] = Some(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let mut got: Vec<f64> = at.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
        got.sort_by(|a, b| a.total_cmp(b));
        let q = |f: f64| got[((got.len() as f64 * f).ceil() as usize).clamp(1, got.len()) - 1];
        eprintln!("round {r}: p50 {:.1} ms p95 {:.1} ms p100 {:.1} ms", q(0.5), q(0.95), q(1.0));
        p50.push(q(0.5));
        p95.push(q(0.95));
        p100.push(q(1.0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for dmn in all {
        dmn.shutdown().await;
    }
    eprintln!("origin admission and publish (included above): median {:.1} ms", median(admit_ms));
    println!("RESULT peers={peers} p50_ms={:.1} p95_ms={:.1} p100_ms={:.1}", median(p50), median(p95), median(p100));
}

async fn replicate(mb: u64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = manifest(mb);
    let d = m.body.id();
    let a_dir = tmp.path().join("a");
    Identity::init(&a_dir).expect("init");
    let n = (mb as usize) << 10; // ~1 KiB records
    eprintln!("admitting {mb} MiB ({n} records) at daemon A");
    let t = Instant::now();
    let ids = prepare(&a_dir, &m, &[records(n, 1000, "rep", &m.body.task)]).await;
    eprintln!("admitted in {:.1} s", t.elapsed().as_secs_f64());
    let a = start(&a_dir, bench_config(&[]), &m).await;
    let ah = a.handle().clone();
    ah.net().wait_listening(Duration::from_secs(5)).await;
    let addr = ah.net().seed_addrs().into_iter().find(|x| x.contains("/tcp/")).expect("tcp addr");
    let status = ah.status().await.expect("status");
    let c = &status.datanets[0].contributions[0];
    assert_eq!(c.id, ids[0].to_hex());
    let bytes = c.bytes;
    // Bare iroh-blobs: a node with its own store fetches the same HashSeq from A's endpoint.
    let bare_dir = tmp.path().join("bare");
    let bare_store = Store::open(&bare_dir).await.expect("bare store");
    let bare_id = Identity::from_seed([5; 32]);
    let metrics = std::sync::Arc::new(datanet::net::NetMetrics::default());
    let bare = datanet::net::blobs::BlobNode::start(&bare_id, &bench_config(&[]).net, bare_store.blobs(), metrics)
        .await
        .expect("bare node");
    bare.learn(&ah.net().key(), &ah.net().blobs().socket_addrs());
    let contribution_root = ah.contribution_root(ids[0]).await.expect("root");
    let t = Instant::now();
    bare.fetch(
        contribution_root,
        datanet::net::blobs::FetchKind::HashSeq,
        &[ah.net().key()],
        Duration::from_secs(600),
        u64::MAX,
    )
    .await
    .expect("bare fetch");
    let bare_s = t.elapsed().as_secs_f64();
    bare.shutdown().await;
    drop(bare_store);
    // The daemon path: B discovers it by catch-up, fetches, re-admits, stores.
    let b = start(&tmp.path().join("b"), bench_config(std::slice::from_ref(&addr)), &m).await;
    let bm = b.handle().metrics().clone();
    wait("fetch queued", Duration::from_secs(60), async || {
        bm.fetch_in_flight.load(Ordering::Relaxed) + bm.fetch_queued.load(Ordering::Relaxed) > 0
            || bm.contributions_replicated.load(Ordering::Relaxed) > 0
    })
    .await;
    let t = Instant::now();
    wait("replicated", Duration::from_secs(1200), async || bm.contributions_replicated.load(Ordering::Relaxed) > 0)
        .await;
    let daemon_s = t.elapsed().as_secs_f64();
    let st = b.handle().status().await.expect("status");
    assert_eq!(st.datanets.iter().find(|x| x.id == d.to_hex()).map(|x| x.contributions.len()), Some(1));
    b.shutdown().await;
    a.shutdown().await;
    let mib = bytes as f64 / (1u64 << 20) as f64;
    let (dm, bm_s) = (mib / daemon_s, mib / bare_s);
    eprintln!("{mib:.1} MiB: daemon {daemon_s:.2} s, bare iroh-blobs {bare_s:.2} s");
    println!("RESULT daemon_mb_s={dm:.1} bare_mb_s={bm_s:.1} ratio={:.2}", dm / bm_s);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,libp2p_gossipsub=error".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("gossip") => gossip(opt("--peers", 32) as usize, opt("--rounds", 10) as usize).await,
        Some("replicate") => replicate(opt("--mb", 256)).await,
        _ => {
            eprintln!("usage: swarm_bench gossip [--peers N] [--rounds R] | replicate [--mb M]");
            std::process::exit(2);
        }
    }
}
