//! Epoch agreement between real daemons: four in-process peers on 127.0.0.1 form the committee of
//! a small tabular Datanet (mlp base) with a sealed evaluation pool, each contributes part of the
//! breast-cancer training rows, one of them starts an epoch, and every peer must append the same
//! attestation, which verifies offline against the signed manifest alone, the reveal of the
//! sealed split included. Every awaited event has a timeout.

mod common;
use common::wait_until;
use datanet::attribution::epoch::Attestation;
use datanet::codec::{self, Signed};
use datanet::config::Config;
use datanet::daemon::DaemonHandle;
use datanet::identity::Identity;
use datanet::ids::DatanetId;
use datanet::manifest::{ManifestFile, SignedManifest};
use datanet::net::TopicKind;
use datanet::node::{self, Node};
use datanet::store::Store;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const PEERS: usize = 4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Training rows held out as the sealed evaluation pool (slice `all`), the rest contributed.
const SEALED_ROWS: usize = 40;

/// The breast-cancer Datanet with the four peers as its committee, founded by peer 0, sealing
/// `sealed` (JSONL evaluation records); also returns the public evaluation file's bytes and the
/// sealed pool.
fn manifest(
    founder: &Identity,
    committee: &[String],
    sealed: &[u8],
) -> (SignedManifest, Vec<u8>, datanet::sealed::SealedPool) {
    let mut file = ManifestFile::read(&root().join("config/datanets/breast_cancer.toml")).unwrap();
    file.committee.members = committee.to_vec();
    // Epoch windows short enough for a test (few jobs): the manifest's, every member's.
    file.protocol.jobs = 6;
    file.protocol.view_timeout_ms = 3_000;
    file.protocol.commit_window_ms = 12_000;
    file.protocol.reveal_window_ms = 3_000;
    file.protocol.rebroadcast_ms = 1_000;
    let check = |s: &str| datanet::net::parse_seed_addr(s).map(|_| ()).map_err(|e| e.to_string());
    file.protocol.sealed_split = 8;
    let (mut m, eval) = file.into_manifest(&root().join("config/datanets"), founder.public_key(), &check).unwrap();
    let pool = datanet::admission::sealed::seal_manifest(&mut m, Some(sealed)).unwrap().unwrap();
    (Signed::sign(m, &founder.signing_key()), eval.public, pool)
}

/// Loopback and quick gossip.
fn test_config(seeds: &[String]) -> Config {
    let mut c = Config::default();
    c.net.seeds = seeds.to_vec();
    c.net.gossip_heartbeat_ms = 100;
    c.net.reconnect_backoff_min_ms = 100;
    c.net.reconnect_backoff_max_ms = 1000;
    c.net.peer_record_interval_secs = 1;
    c.net.fetch_timeout_ms = 10_000;
    c.epoch.eval_fetch_timeout_ms = 10_000;
    c
}

async fn start(dir: &Path, cfg: Config, m: &SignedManifest) -> Node {
    let d = tokio::time::timeout(WAIT, node::start(dir, cfg)).await.expect("daemon start timed out").unwrap();
    d.handle().join(m.clone()).await.unwrap();
    d
}

async fn holds(h: &DaemonHandle, d: &DatanetId) -> usize {
    let s = h.status().await.unwrap();
    s.datanets.iter().find(|x| x.id == d.to_hex()).map(|x| x.contributions.len()).unwrap_or(0)
}

async fn head(h: &DaemonHandle, d: &DatanetId) -> Option<u64> {
    let all = h.epoch_status().await.unwrap();
    all.into_iter().find(|x| x.datanet == d.to_hex()).and_then(|x| x.head_epoch)
}

// Four committee daemons run one epoch started at one of them: every peer appends the same
// attestation, and it verifies offline against the manifest alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_daemons_attest_one_epoch() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..PEERS).map(|i| tmp.path().join(format!("p{i}"))).collect();
    for d in &dirs {
        Identity::init(d).unwrap();
    }
    let ids: Vec<Identity> = dirs.iter().map(|d| Identity::load(d).unwrap()).collect();
    let committee: Vec<String> = ids.iter().map(|i| i.public_key().to_hex()).collect();
    let csv = std::fs::read_to_string(root().join("tests/data/breast_cancer_train.csv")).unwrap();
    let all_rows: Vec<&str> = csv.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    let (sealed_rows, rows) = all_rows.split_at(SEALED_ROWS);
    let sealed_file: String = sealed_rows
        .iter()
        .map(|r| {
            let v: Vec<f64> = r.split(',').map(|x| x.trim().parse().unwrap()).collect();
            let (label, features) = v.split_last().unwrap();
            format!("{}\n", serde_json::json!({"features": features, "label": *label as i64, "slice": "all"}))
        })
        .collect();
    let (m, eval, pool) = manifest(&ids[0], &committee, sealed_file.as_bytes());
    let d = m.body.id();
    // The manifest commits to 40 sealed records in one part.
    assert_eq!(m.body.eval.sealed.iter().map(|p| p.count).sum::<u32>(), SEALED_ROWS as u32);
    // Only the founder holds the evaluation file; the others fetch it from the committee. Every
    // member holds the sealed pool (as `datanet datanet sealed import` leaves it), in its database.
    for (i, dir) in dirs.iter().enumerate() {
        let store = Store::open(dir).await.unwrap();
        if i == 0 {
            store.put_blob(eval.clone()).await.unwrap();
        }
        datanet::admission::sealed::check_pool(&m.body, &pool).unwrap();
        store.put_sealed_pool(&d, &pool).await.unwrap();
        store.close().await.unwrap();
    }

    let mut daemons = vec![start(&dirs[0], test_config(&[]), &m).await];
    let h0 = daemons[0].handle().clone();
    h0.net().wait_listening(Duration::from_secs(5)).await;
    let seed = h0.net().seed_addrs().into_iter().find(|a| a.contains("/tcp/")).expect("a tcp listen address");
    for dir in &dirs[1..] {
        daemons.push(start(dir, test_config(std::slice::from_ref(&seed)), &m).await);
    }
    let hs: Vec<DaemonHandle> = daemons.iter().map(|x| x.handle().clone()).collect();
    for (i, h) in hs.iter().enumerate() {
        // Each peer meshes on the epochs topic before anything is sent there.
        wait_until(&format!("p{i} in the epochs mesh"), WAIT, || async {
            h.net().mesh_peers(d, TopicKind::Epochs).await >= 1 && h.peers().await.len() >= PEERS - 1
        })
        .await;
    }

    // A quarter of the remaining training rows per peer, as its own contribution.
    let per = rows.len().div_ceil(PEERS);
    for (i, h) in hs.iter().enumerate() {
        let file = tmp.path().join(format!("part{i}.csv"));
        let part: String = rows.iter().skip(i * per).take(per).map(|r| format!("{r}\n")).collect();
        std::fs::write(&file, part).unwrap();
        let r = h.contribute(&d.to_hex(), &file, false).await.unwrap();
        // Every row of the part is admitted as a new record.
        assert_eq!(r.new_records as usize, rows.iter().skip(i * per).take(per).count());
    }
    for (i, h) in hs.iter().enumerate() {
        // Every peer holds all four contributions before the epoch freezes its inputs.
        wait_until(&format!("p{i} holding every contribution"), WAIT, || async { holds(h, &d).await == PEERS }).await;
    }
    let replicated = t0.elapsed();

    let r = hs[1].epoch_run(&d.to_hex()).await.unwrap();
    // The first epoch of an empty ledger is started at the asking peer.
    assert!(r.started && r.epoch == 1, "unexpected run reply {r:?}");
    // A second request while it runs reports the same epoch instead of starting another.
    assert!(!hs[1].epoch_run(&d.to_hex()).await.unwrap().started);
    for (i, h) in hs.iter().enumerate() {
        // Every peer, not only the one that started it, attests the epoch.
        wait_until(&format!("p{i} attesting epoch 1"), Duration::from_secs(90), || async {
            head(h, &d).await == Some(1)
        })
        .await;
    }
    let attested = t0.elapsed();

    let mut bytes = Vec::new();
    for h in &hs {
        bytes.push(h.epoch_attestation(&d.to_hex(), None).await.unwrap().1);
    }
    let atts: Vec<Attestation> = bytes.iter().map(|b| codec::decode(b).unwrap()).collect();
    let a = atts[0].clone();
    for x in &atts {
        // Every peer appended the same attestation: same certified headers (so the same chain
        // hash), reports and credit leaves; only which quorum of signatures each assembled may differ.
        assert_eq!(
            (x.hash(), &x.input.header, &x.score.header, &x.reports, &x.leaves),
            (a.hash(), &a.input.header, &a.score.header, &a.reports, &a.leaves)
        );
    }
    // The attestation certifies epoch 1 of this Datanet, chained to nothing.
    assert_eq!((a.score.header.datanet, a.score.header.epoch, a.score.header.prev_attestation), (d, 1, [0; 32]));
    // Every contribution is in the input set with a witnessed priority, none deferred.
    assert_eq!(a.inputs.len(), PEERS);
    assert_eq!(a.deferred, 0);
    // The epoch measured on a sealed split of 8 records, revealed in the attestation, the same at
    // every peer, and provably the split the epoch's seed chose from the manifest's commitment.
    let reveal = a.sealed.clone().expect("the attestation reveals the sealed split");
    assert_eq!(reveal.parts[0].opened.len(), 8);
    assert!(atts.iter().all(|x| x.sealed.as_ref() == Some(&reveal)));
    let epoch_seed = datanet::attribution::epoch::assign::epoch_seed(&a.input.header);
    datanet::sealed::verify_reveal(&m.body.eval.sealed, 8, &epoch_seed, &reveal, None).unwrap();
    // Epoch minting: a member asking for epoch 2 before its window opens (an hour after genesis)
    // is told when it opens, and no second attestation appears.
    let early = hs[2].epoch_run(&d.to_hex()).await.unwrap_err();
    assert!(early.contains("epoch 2") && early.contains("opens in"), "{early}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for h in &hs {
        assert_eq!(head(h, &d).await, Some(1), "no epoch 2 before its window");
    }
    println!("RESULT scenario=epoch-minting extra_attestations=0 pass=true");
    // Credit went only to the four contributors, and never more than the pool.
    assert!(a.leaves.iter().all(|l| committee.contains(&l.contributor.to_hex())));
    assert!(a.leaves.iter().map(|l| l.reward).sum::<u64>() <= m.body.reward_pool);

    // Offline: the files `attestation export` and `datanet export` write, checked like
    // `datanet attestation verify FILE --manifest M` does, with no daemon involved.
    let man_file = tmp.path().join("manifest.bin");
    std::fs::write(&man_file, m.to_bytes()).unwrap();
    for (i, b) in bytes.iter().enumerate() {
        let att_file = tmp.path().join(format!("attestation{i}.bin"));
        std::fs::write(&att_file, b).unwrap();
        let v = datanet::cli::attestation::verify_file(&att_file, &man_file, None).unwrap();
        // Each peer's copy verifies and is the attestation the peers agreed on.
        assert_eq!(v.hash(), a.hash());
    }

    // `datanet rewards` works while the daemon holds the store: it asks the API, and the totals
    // are the attestation's credit leaves.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_datanet"))
        .arg("--datadir")
        .arg(&dirs[1])
        .args(["rewards", &d.to_hex(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "rewards while running: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["head_epoch"], 1);
    let total: u64 = v["contributors"].as_array().unwrap().iter().map(|c| c["reward"].as_u64().unwrap()).sum();
    assert_eq!(total, a.leaves.iter().map(|l| l.reward).sum::<u64>());

    // The status tells the story after the epoch: the ledger head, this peer's reward (its credit
    // leaf), the attested epoch heard from the whole committee, and the jobs the peers measured.
    let mut assigned = 0;
    for (i, h) in hs.iter().enumerate() {
        let s = h.status().await.unwrap();
        let ds = s.datanets.iter().find(|x| x.id == d.to_hex()).unwrap();
        assert_eq!((ds.ledger.head_epoch, ds.ledger.attested), (Some(1), 1), "p{i}");
        let mine: u64 = a.leaves.iter().filter(|l| l.contributor == ids[i].public_key()).map(|l| l.reward).sum();
        assert_eq!(ds.mine.reward, mine.to_string(), "p{i}'s reward");
        let e = &ds.epoch;
        assert!(e.member && e.committee == PEERS && e.heard_from == PEERS, "p{i}: {e:?}");
        assert_eq!(e.current.as_ref().map(|c| c.epoch), Some(1), "p{i}: {e:?}");
        assert!(e.jobs_measured <= e.jobs_assigned && !e.training, "p{i}: {e:?}");
        assigned += e.jobs_assigned;
    }
    assert!(assigned >= m.body.protocol.jobs, "every job was assigned to a member ({assigned})");
    // `datanet status` prints the same story while the daemon runs, and so does the page, which a
    // real headless browser renders (screenshot under target/).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_datanet"))
        .arg("--datadir")
        .arg(&dirs[1])
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("ledger: head epoch 1"), "{text}");
    assert!(text.contains("this peer: credit") && text.contains("heard from 4 of 4"), "{text}");
    let api = hs[1].api_addr().unwrap();
    let token = std::fs::read_to_string(dirs[1].join("api.cookie")).unwrap();
    let shot = root().join("target/status-page.png");
    if let Some(dom) = common::headless_page(&format!("http://{api}/?token={}", token.trim()), &shot) {
        let p1: u64 = a.leaves.iter().filter(|l| l.contributor == ids[1].public_key()).map(|l| l.reward).sum();
        for want in [
            m.body.name.as_str(),
            "head: epoch 1",
            "heard from 4 of 4 committee members",
            &format!("reward <b class=\"reward\">{p1}</b>"),
            "http-equiv=\"refresh\"",
        ] {
            assert!(dom.contains(want), "the rendered page lacks {want:?}: {dom}");
        }
        println!("status page rendered by chromium, screenshot at {}", shot.display());
    }

    // A peer that joins after the epoch (not in the committee, empty ledger) catches its ledger up
    // from the others: it asks for the attestations after its head and appends each one that
    // verifies against the committee and chains.
    let late_dir = tmp.path().join("late");
    Identity::init(&late_dir).unwrap();
    let late = start(&late_dir, test_config(std::slice::from_ref(&seed)), &m).await;
    let hl = late.handle().clone();
    wait_until("the late peer's ledger at epoch 1", WAIT, || async { head(&hl, &d).await == Some(1) }).await;
    let (_, late_bytes) = hl.epoch_attestation(&d.to_hex(), None).await.unwrap();
    assert_eq!(codec::decode::<Attestation>(&late_bytes).unwrap().hash(), a.hash());

    // Sealed leak attempt: the non-member asks every member over iroh for the sealed pool by
    // hash (the pool file's and the sealed records' own bytes): nobody serves it.
    let founder_keys: Vec<_> = ids.iter().map(|i| i.public_key()).collect();
    let pool_bytes = codec::encode(&pool);
    let mut asked = 0;
    for hash in [datanet::ids::BlobHash::of(&pool_bytes), datanet::ids::BlobHash::of(sealed_file.as_bytes())] {
        for k in &founder_keys {
            let got = hl
                .net()
                .blobs()
                .fetch(hash, datanet::net::blobs::FetchKind::Raw, &[*k], Duration::from_secs(5), 64 << 20)
                .await;
            assert!(got.is_err(), "member {} served the sealed pool {}", k.short(), hash.short());
            asked += 1;
        }
    }
    println!("RESULT scenario=sealed-leak asked={asked} served=0 pass=true");

    // Revealed records join the contamination list: re-submitting a revealed sealed record is
    // refused at admission, at a member and at the non-member alike.
    let revealed_row = {
        let v: serde_json::Value = serde_json::from_slice(&reveal.parts[0].opened[0].record).unwrap();
        let f: Vec<String> = v["features"].as_array().unwrap().iter().map(|x| x.to_string()).collect();
        format!("{},{}\n", f.join(","), v["label"])
    };
    let copy = tmp.path().join("copy.csv");
    std::fs::write(&copy, &revealed_row).unwrap();
    for h in [&hs[3], &hl] {
        let err = h.contribute(&d.to_hex(), &copy, false).await.unwrap_err();
        assert!(err.contains("sealed evaluation record"), "{err}");
    }
    daemons.push(late);

    for x in daemons {
        tokio::time::timeout(WAIT, x.shutdown()).await.expect("shutdown timed out");
    }
    // The ledger survives shutdown: the head is the attestation every peer appended.
    let store = Store::open(&dirs[2]).await.unwrap();
    let ledger = datanet::store::ledger::Ledger::open(store.db());
    assert_eq!(ledger.head(&d).unwrap().map(|h| h.hash), Some(a.hash()));
    store.close().await.unwrap();
    eprintln!(
        "replicated in {:.1}s, attested at every peer {:.1}s later (total {:.1}s)",
        replicated.as_secs_f64(),
        (attested - replicated).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
