//! Tests of contribution storage: admission counts against the bucketed indexes (dead and merged
//! values, concurrency), inventory pages, blob durability, the datadir lock, and the canonical
//! record order attribution reads.

use super::buckets::MERGED;
use super::classify::Classified;
use super::*;
// Tests admit through the real path, as a dev-dependency would: `store` itself never imports it.
use crate::admission;
use crate::identity::Identity;
use crate::manifest::ManifestFile;

async fn instruct_store(dir: &std::path::Path) -> (Store, DatanetId, Manifest) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/datanets");
    let founder = Identity::from_seed([3; 32]);
    let (m, _) = ManifestFile::read(&root.join("instruct.toml"))
        .unwrap()
        .into_manifest(&root, founder.public_key(), &|_| Ok(()))
        .unwrap();
    let store = Store::open(dir).await.unwrap();
    let d = store.put_manifest(&crate::codec::Signed::sign(m.clone(), &founder.signing_key())).await.unwrap();
    (store, d, m)
}

fn records(m: &Manifest, n: usize) -> Vec<CanonicalRecord> {
    (0..n)
        .map(|i| {
            let v = serde_json::json!({"prompt": format!("question {i}"), "completion": format!("answer {} {}", i * 7919, i % 13)});
            records::canonical::canonicalize(&m.task, v, 1 << 16).unwrap()
        })
        .collect()
}

// Index entries written by an admission that died before its marker are dead: the same records admitted later count as new, not as duplicates or near-duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn dead_index_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = instruct_store(dir.path()).await;
    let recs = records(&m, 200);
    let trees = index_trees(&store);
    let dead = store.classify(&trees, &m, d, ContributionId([9; 32]), &recs).unwrap();
    assert_eq!(dead.new, 200);
    apply(&trees, dead);
    let me = Identity::from_seed([4; 32]);
    let ack = admission::admit_local(&store, &me, &d, recs.clone()).await.unwrap();
    assert_eq!((ack.meta.new_records, ack.meta.duplicates, ack.meta.near_duplicates), (200, 0, 0));
    // Live entries do count: a second contribution of the same records is all duplicates.
    let again = admission::admit_local(&store, &Identity::from_seed([5; 32]), &d, recs).await.unwrap();
    assert_eq!((again.meta.new_records, again.meta.duplicates), (0, 200));
}

// An inventory page comes from the order index alone: the same ids, in the same order and with the same total as decoding every contribution, for any offset and limit (past the end: none).
#[tokio::test(flavor = "multi_thread")]
async fn inventory_pages_match_the_decoded_list() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = instruct_store(dir.path()).await;
    let all = records(&m, 12);
    for (i, chunk) in all.chunks(2).enumerate() {
        admission::admit_local(&store, &Identity::from_seed([20 + i as u8; 32]), &d, chunk.to_vec()).await.unwrap();
    }
    let list: Vec<ContributionId> = store.contributions(&d).unwrap().iter().map(|c| c.id).collect();
    assert_eq!(list.len(), 6);
    for (offset, limit) in [(0, 256), (0, 2), (2, 3), (5, 10), (6, 1), (100, 5)] {
        let (ids, total) = store.contribution_page(&d, offset, limit).unwrap();
        let want: Vec<ContributionId> = list.iter().skip(offset).take(limit).copied().collect();
        assert_eq!((ids, total), (want, 6), "offset {offset} limit {limit}");
    }
    assert_eq!(store.contribution_page(&DatanetId([7; 32]), 0, 10).unwrap(), (vec![], 0));
}

// Durability: a stored blob's own files (data and outboard), the blob database and their directories are fsynced by `sync_blobs`; a blob without files of its own (inlined) costs only the database and directories.
#[tokio::test(flavor = "multi_thread")]
async fn blob_files_are_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = instruct_store(dir.path()).await;
    let big = store.put_blob((0..300_000u32).map(|i| (i % 251) as u8).collect()).await.unwrap();
    store.flush().await.unwrap();
    assert!(store.blob_data_path(&big).exists(), "a 300 KB blob has a data file");
    // data, blobs.db, data/ and blobs/ (and the outboard when it is not inlined at this size)
    assert!(store.sync_blobs(&[big]).await.unwrap() >= 4);
    let small = store.put_blob(b"tiny".to_vec()).await.unwrap();
    assert_eq!(store.sync_blobs(&[small]).await.unwrap(), 3, "inlined: blobs.db and the two directories");
}

// A datadir another process (or handle) holds is refused with a message naming what to do, not a raw storage error.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_datadir_says_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let held = Store::open(dir.path()).await.unwrap();
    let err = Store::open(dir.path()).await.unwrap_err().to_string();
    assert!(err.contains("in use by another datanet process") && err.contains("datanet status"), "{err}");
    held.close().await.unwrap();
}

fn index_trees(store: &Store) -> IndexTrees {
    let t = |n| store.tree(n).unwrap();
    IndexTrees {
        recs: t(trees::RECORDS),
        near: t(trees::NEAR_INDEX),
        sigs: t(trees::SIGNATURES),
        metas: t(trees::CONTRIBUTION_META),
    }
}

fn apply(trees: &IndexTrees, c: Classified) {
    trees.recs.apply_batch(c.recs).unwrap();
    trees.near.apply_batch(c.near).unwrap();
    trees.sigs.apply_batch(c.sigs).unwrap();
}

// Admission counts from the bucketed sled indexes (with merged and dead values) equal an in-memory reference classification of the same sequence of contributions.
#[tokio::test(flavor = "multi_thread")]
async fn bucketed_index_matches_memory_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = instruct_store(dir.path()).await;
    let trees = index_trees(&store);
    let base: Vec<serde_json::Value> = (0..120)
        .map(|i| serde_json::json!({"prompt": format!("Explain item {i} of the maintenance checklist for pump station {}", i * 37 % 101), "completion": format!("Step {i}: inspect the seals, log pressure {} kPa, and report any vibration above {} mm/s to the duty engineer.", 100 + i * 13 % 97, i % 9)}))
        .collect();
    let canon = |v: &serde_json::Value| records::canonical::canonicalize(&m.task, v.clone(), 1 << 16).unwrap();
    let (mut seen, mut mem) = (std::collections::HashSet::new(), MemNear::default());
    let mut totals = (0, 0);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for c in 0..40u8 {
        // Some exact copies of earlier base records, some near-duplicates (one word changed), some new.
        let recs: Vec<CanonicalRecord> = (0..12)
            .map(|_| {
                let mut v = base[next(base.len() as u64) as usize].clone();
                if next(3) == 0 {
                    let p = v["completion"].as_str().unwrap().replace("inspect", "examine");
                    v["completion"] = p.into();
                }
                canon(&v)
            })
            .collect();
        if c % 9 == 4 {
            // A dead admission (no marker) of other records: must not count or survive a merge.
            apply(&trees, store.classify(&trees, &m, d, ContributionId([c; 32]), &records(&m, 30)).unwrap());
        }
        let ack = admission::admit_local(&store, &Identity::from_seed([c; 32]), &d, recs.clone()).await.unwrap().meta;
        let (mut new, mut dups, mut near) = (0, 0, 0);
        let firsts: Vec<_> = recs.into_iter().filter(|r| seen.insert(r.hash)).collect();
        dups += 12 - firsts.len() as u32;
        for (r, p) in firsts.iter().zip(near_parts_all(&m, &firsts.iter().collect::<Vec<_>>())) {
            new += 1;
            near += classify_near(&mut mem, &m, r.hash, p).is_some() as u32;
        }
        assert_eq!((ack.new_records, ack.duplicates, ack.near_duplicates), (new, dups, near), "contribution {c}");
        totals = (totals.0 + dups, totals.1 + near);
    }
    assert!(totals.0 > 50 && totals.1 > 10, "the sequence has duplicates and near-duplicates: {totals:?}");
    assert!(seen.len() > 100, "the sequence covers most base records and variants");
    let merged = trees.recs.iter().keys().filter(|k| k.as_ref().unwrap()[34..] == MERGED).count();
    assert!(merged > 0, "buckets were merged");
}

// datanet_records credits each record to the contributors holding it at the earliest given
// priority (equal priorities share, a contributor holding it twice counts once, later ones get
// nothing, whatever their ids or created_ms: a copy made later but witnessed first wins),
// orders records by (priority, hash), reads only the listed contributions, and makes the
// earliest-priority record of a near-duplicate pair canonical.
#[tokio::test(flavor = "multi_thread")]
async fn records_follow_priority_not_identity() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = instruct_store(dir.path()).await;
    let recs = records(&m, 75);
    let (a, b, x) = (Identity::from_seed([11; 32]), Identity::from_seed([12; 32]), Identity::from_seed([13; 32]));
    let ca = admission::admit_local(&store, &a, &d, recs[..50].to_vec()).await.unwrap().id;
    let cb = admission::admit_local(&store, &b, &d, recs[25..].to_vec()).await.unwrap().id;
    // The copier re-submits a's records (its created_ms and id are its own choice).
    let cx = admission::admit_local(&store, &x, &d, recs[..50].to_vec()).await.unwrap().id;
    // a holds its first ten records a second time, in another contribution.
    let ca2 = admission::admit_local(&store, &a, &d, recs[..10].to_vec()).await.unwrap().id;
    let owners_of = |out: &[AdmittedRecord]| -> BTreeMap<RecordHash, Vec<PeerKey>> {
        out.iter().map(|r| (r.hash, r.owners.clone())).collect()
    };
    let (ka, kb, kx) = (a.public_key(), b.public_key(), x.public_key());
    let mut ab = vec![ka, kb];
    ab.sort();
    let pri = |v: &[(ContributionId, u64)]| v.iter().copied().collect::<BTreeMap<_, _>>();
    let out = store.datanet_records(&d, Some(&pri(&[(ca, 10), (cb, 10), (cx, 20), (ca2, 10)]))).await.unwrap();
    assert_eq!(out.len(), 75);
    assert!(out.windows(2).all(|w| (w[0].priority, w[0].hash) < (w[1].priority, w[1].hash)));
    let o = owners_of(&out);
    for (i, r) in recs.iter().enumerate() {
        let want = if i < 25 {
            vec![ka]
        } else if i < 50 {
            ab.clone()
        } else {
            vec![kb]
        };
        assert_eq!(o[&r.hash], want, "record {i}");
    }
    // The copy witnessed first takes a's records; a keeps nothing it shared with the copy.
    let out = store.datanet_records(&d, Some(&pri(&[(ca, 10), (cb, 10), (cx, 5)]))).await.unwrap();
    let o = owners_of(&out);
    assert!(recs[..50].iter().all(|r| o[&r.hash] == vec![kx]));
    assert!(recs[50..].iter().all(|r| o[&r.hash] == vec![kb]));
    assert!(out.iter().all(|r| r.priority == if r.owners == [kx] { 5 } else { 10 }));
    // Only the listed contributions are read.
    let out = store.datanet_records(&d, Some(&pri(&[(cb, 3)]))).await.unwrap();
    assert_eq!(out.len(), 50);
    assert!(out.iter().all(|r| r.owners == [kb] && r.contribution == cb));
    // `None`: every contribution, each at its local admission time.
    let out = store.datanet_records(&d, None).await.unwrap();
    assert_eq!(out.len(), 75);
    assert!(out.windows(2).all(|w| (w[0].priority, w[0].hash) < (w[1].priority, w[1].hash)));
    // A near-duplicate pair: the record at the earlier priority is canonical, either way round.
    let canon = |v: serde_json::Value| records::canonical::canonicalize(&m.task, v, 1 << 16).unwrap();
    let text = "Step 4: inspect the seals, log pressure 140 kPa, and report any vibration above 3 mm/s to the duty engineer on call.";
    let p = canon(
        serde_json::json!({"prompt": "Explain item 4 of the maintenance checklist for pump station 9", "completion": text}),
    );
    let q = canon(
        serde_json::json!({"prompt": "Explain item 4 of the maintenance checklist for pump station 9", "completion": text.replace("inspect", "examine")}),
    );
    let cp = admission::admit_local(&store, &a, &d, vec![p.clone()]).await.unwrap().id;
    let cq = admission::admit_local(&store, &b, &d, vec![q.clone()]).await.unwrap().id;
    for (tp, tq) in [(1, 2), (2, 1)] {
        let out = store.datanet_records(&d, Some(&pri(&[(cp, tp), (cq, tq)]))).await.unwrap();
        let (first, second) = if tp < tq { (&p, &q) } else { (&q, &p) };
        let get = |h: RecordHash| out.iter().find(|r| r.hash == h).unwrap();
        assert_eq!(get(first.hash).cluster, None, "priorities {tp}, {tq}");
        assert_eq!(get(second.hash).cluster, Some(first.hash), "priorities {tp}, {tq}");
    }
}

// Concurrent admissions of overlapping records are serialized: every record is new exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_admissions_count_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = instruct_store(dir.path()).await;
    let recs = records(&m, 300);
    let (a, b) = (Identity::from_seed([6; 32]), Identity::from_seed([7; 32]));
    let (x, y) = tokio::join!(
        admission::admit_local(&store, &a, &d, recs[..200].to_vec()),
        admission::admit_local(&store, &b, &d, recs[100..].to_vec())
    );
    let (x, y) = (x.unwrap().meta, y.unwrap().meta);
    assert_eq!(x.new_records + y.new_records, 300);
    assert_eq!(x.duplicates + y.duplicates, 100);
}
