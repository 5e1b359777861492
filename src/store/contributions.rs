//! Contributions in sled: the signed records, their local metadata, and the Datanet-wide indexes
//! that make exact and near-duplicate detection cheap at admission.
//!
//! [`Store::commit_contribution`] classifies a contribution's records against everything admitted
//! before in its Datanet, writes the index entries in batches and then the contribution's marker
//! in one small transaction, then flushes. [`Store::datanet_records`] gives attribution the
//! Datanet's records with duplicates and near-duplicate clusters resolved in the canonical order
//! (contribution `created_ms`, then id), so every peer derives the same first contributor
//! regardless of the order it received things.

use super::{Store, StoreError, key2, record_key, trees};
use crate::admission::{self, CanonicalRecord, SignedContribution, neardup};
use crate::codec::{self, Canonical};
use crate::ids::{BlobHash, ContributionId, DatanetId, PeerKey, RecordHash};
use crate::manifest::{Manifest, TaskKind};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use std::collections::HashMap;

/// What this peer knows about a stored contribution beyond the signed record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributionMeta {
    /// Local admission order.
    pub seq: u64,
    pub admitted_ms: u64,
    pub chunks: Vec<BlobHash>,
    pub records: u32,
    /// Records not admitted before in this Datanet (here).
    pub new_records: u32,
    /// Exact duplicates of records admitted before (credited to the earliest contribution).
    pub duplicates: u32,
    /// New records in the near-duplicate cluster of an earlier record.
    pub near_duplicates: u32,
    /// `local`, or the peer it was replicated from.
    pub source: String,
}

impl Canonical for ContributionMeta {
    const TAG: &'static [u8] = b"datanet/contribution-meta/v1";
    const MAX_BYTES: usize = 64 * 1024 * 1024;
}

/// A committed contribution.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub id: ContributionId,
    pub meta: ContributionMeta,
}

/// One record of a Datanet as attribution sees it.
#[derive(Debug, Clone)]
pub struct AdmittedRecord {
    pub hash: RecordHash,
    pub value: serde_json::Value,
    /// The contribution that holds it first in canonical order, and its contributor.
    pub contribution: ContributionId,
    pub contributor: PeerKey,
    /// The canonical record of the near-duplicate cluster this record joined, if any.
    pub cluster: Option<RecordHash>,
}

/// A contribution with its local metadata.
#[derive(Debug, Clone)]
pub struct ContributionInfo {
    pub id: ContributionId,
    pub signed: SignedContribution,
    pub meta: ContributionMeta,
}

fn abort<E: std::fmt::Display>(e: E) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(e.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Near-duplicate classification state, either backed by the store (admission) or by memory
/// (canonical recomputation): band key → canonical record, record → its stored signature (MinHash
/// slots for text, feature values for tabular).
trait NearIndex {
    fn get(&mut self, key: &[u8]) -> Option<RecordHash>;
    fn put(&mut self, key: Vec<u8>, canonical: RecordHash);
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>>;
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>);
}

/// A record's near-duplicate index keys (Datanet-prefixed) and the signature stored for it.
/// Pure, so computed for many records in parallel before the sequential classification.
struct NearParts {
    keys: Vec<Vec<u8>>,
    sig: Vec<u8>,
}

fn near_parts(manifest: &Manifest, d: &DatanetId, rec: &CanonicalRecord) -> NearParts {
    match manifest.task {
        TaskKind::Tabular { .. } => {
            let (_, f) = neardup::tabular_parts(&rec.value);
            NearParts {
                keys: neardup::tabular_band_keys(&rec.value, manifest.admission.near_duplicate_digits)
                    .iter()
                    .map(|k| key2(&d.0, k))
                    .collect(),
                sig: neardup::features_bytes(&f),
            }
        }
        TaskKind::Text | TaskKind::Instruct => {
            let sig = neardup::minhash(&neardup::record_text(&rec.value));
            NearParts {
                keys: neardup::band_keys(&sig).iter().map(|k| key2(&d.0, k)).collect(),
                sig: neardup::signature_bytes(&sig),
            }
        }
    }
}

/// Every record's [`NearParts`], in order, computed on all cores.
fn near_parts_all(manifest: &Manifest, d: &DatanetId, records: &[&CanonicalRecord]) -> Vec<NearParts> {
    use rayon::prelude::*;
    records.par_iter().map(|r| near_parts(manifest, d, r)).collect()
}

/// Returns the canonical record whose near-duplicate cluster `rec` joins, or `None` (then `rec`
/// is indexed as a new canonical record).
fn classify_near(
    idx: &mut dyn NearIndex,
    manifest: &Manifest,
    rec: RecordHash,
    parts: NearParts,
) -> Option<RecordHash> {
    let digits = manifest.admission.near_duplicate_digits;
    let NearParts { keys, sig } = parts;
    // Score every candidate; the most similar wins, ties to the smaller hash.
    let mut best: Option<(u64, std::cmp::Reverse<RecordHash>)> = None;
    let hits: Vec<Option<RecordHash>> = keys.iter().map(|k| idx.get(k)).collect();
    for c in hits.iter().flatten().copied() {
        let Some(other) = idx.signature(&c) else { continue };
        let score = match manifest.task {
            TaskKind::Tabular { .. } => {
                let (a, b) = (neardup::features_from_bytes(&sig), neardup::features_from_bytes(&other));
                if neardup::tabular_near(&a, &b, digits) { 1 } else { continue }
            }
            _ => {
                let (Some(a), Some(b)) = (neardup::signature_from_bytes(&sig), neardup::signature_from_bytes(&other))
                else {
                    continue;
                };
                let s = neardup::similarity_ppm(&a, &b);
                if s < manifest.admission.near_duplicate_threshold_ppm {
                    continue;
                }
                s as u64
            }
        };
        let cand = (score, std::cmp::Reverse(c));
        if best.is_none_or(|b| cand > b) {
            best = Some(cand);
        }
    }
    if let Some((_, std::cmp::Reverse(c))) = best {
        return Some(c);
    }
    for (k, hit) in keys.into_iter().zip(hits) {
        if hit.is_none() {
            idx.put(k, rec);
        }
    }
    idx.put_signature(rec, sig);
    None
}

/// The Datanet's committed indexes in sled plus this admission's pending writes.
///
/// Index entries are written in batches *before* the contribution's marker (its record and
/// metadata), so an entry is live only if the contribution it leads to is committed: a crash
/// between the two leaves dead entries that every lookup skips and a later admission overwrites.
struct StoreNear<'a> {
    trees: &'a IndexTrees,
    datanet: DatanetId,
    pending_near: HashMap<Vec<u8>, RecordHash>,
    pending_sigs: HashMap<RecordHash, Vec<u8>>,
    /// Committed-or-not, per contribution id seen in the record index.
    committed: HashMap<ContributionId, bool>,
    failed: Option<sled::Error>,
}

/// The sled trees admission reads and writes.
struct IndexTrees {
    recs: sled::Tree,
    near: sled::Tree,
    sigs: sled::Tree,
    metas: sled::Tree,
}

impl StoreNear<'_> {
    fn ok<T>(&mut self, r: Result<Option<T>, sled::Error>) -> Option<T> {
        r.unwrap_or_else(|e| {
            self.failed = Some(e);
            None
        })
    }

    /// The committed contribution that first admitted `rec` here, if any.
    fn record_owner(&mut self, rec: &RecordHash) -> Option<ContributionId> {
        let v = self.trees.recs.get(record_key(&self.datanet, rec));
        let cid = ContributionId(self.ok(v)?.as_ref().try_into().ok()?);
        if let Some(&live) = self.committed.get(&cid) {
            return live.then_some(cid);
        }
        let live = self.trees.metas.contains_key(cid.0);
        let live = self.ok(live.map(Some)).unwrap_or(false);
        self.committed.insert(cid, live);
        live.then_some(cid)
    }
}

impl NearIndex for StoreNear<'_> {
    fn get(&mut self, key: &[u8]) -> Option<RecordHash> {
        if let Some(r) = self.pending_near.get(key) {
            return Some(*r);
        }
        let v = self.trees.near.get(key);
        let rec = RecordHash(self.ok(v)?.as_ref().try_into().ok()?);
        self.record_owner(&rec).map(|_| rec)
    }
    fn put(&mut self, key: Vec<u8>, canonical: RecordHash) {
        self.pending_near.insert(key, canonical);
    }
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>> {
        if let Some(s) = self.pending_sigs.get(record) {
            return Some(s.clone());
        }
        let v = self.trees.sigs.get(record_key(&self.datanet, record));
        self.ok(v).map(|v| v.to_vec())
    }
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>) {
        self.pending_sigs.insert(record, sig);
    }
}

#[derive(Default)]
struct MemNear {
    near: HashMap<Vec<u8>, RecordHash>,
    sigs: HashMap<RecordHash, Vec<u8>>,
}

impl NearIndex for MemNear {
    fn get(&mut self, key: &[u8]) -> Option<RecordHash> {
        self.near.get(key).copied()
    }
    fn put(&mut self, key: Vec<u8>, canonical: RecordHash) {
        self.near.insert(key, canonical);
    }
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>> {
        self.sigs.get(record).cloned()
    }
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>) {
        self.sigs.insert(record, sig);
    }
}

/// What classifying a contribution against the store produced: counts and the index writes.
struct Classified {
    new: u32,
    duplicates: u32,
    near_duplicates: u32,
    recs: sled::Batch,
    near: sled::Batch,
    sigs: sled::Batch,
}

impl Store {
    /// Classifies `records` (as contribution `id`) against the Datanet's committed indexes.
    fn classify(
        &self,
        trees: &IndexTrees,
        manifest: &Manifest,
        d: DatanetId,
        id: ContributionId,
        records: &[CanonicalRecord],
    ) -> Result<Classified, StoreError> {
        let mut idx = StoreNear {
            trees,
            datanet: d,
            pending_near: HashMap::new(),
            pending_sigs: HashMap::new(),
            committed: HashMap::new(),
            failed: None,
        };
        // Exact duplicates first (of committed records, or earlier in this contribution).
        let mut seen = std::collections::HashSet::new();
        let mut fresh = Vec::with_capacity(records.len());
        let mut dups = 0u32;
        for rec in records {
            if !seen.insert(rec.hash) || idx.record_owner(&rec.hash).is_some() {
                dups += 1;
            } else {
                fresh.push(rec);
            }
        }
        let mut out = Classified {
            new: fresh.len() as u32,
            duplicates: dups,
            near_duplicates: 0,
            recs: sled::Batch::default(),
            near: sled::Batch::default(),
            sigs: sled::Batch::default(),
        };
        let parts = near_parts_all(manifest, &d, &fresh);
        for (rec, parts) in fresh.iter().zip(parts) {
            out.recs.insert(record_key(&d, &rec.hash), &id.0[..]);
            if classify_near(&mut idx, manifest, rec.hash, parts).is_some() {
                out.near_duplicates += 1;
            }
        }
        if let Some(e) = idx.failed {
            return Err(e.into());
        }
        for (k, r) in idx.pending_near {
            out.near.insert(k, &r.0[..]);
        }
        for (r, sig) in idx.pending_sigs {
            out.sigs.insert(record_key(&d, &r), sig);
        }
        Ok(out)
    }

    /// Classifies and commits a contribution whose blobs are already stored and synced; returns
    /// after its marker is flushed (the moment it is "acknowledged").
    ///
    /// Admissions are serialized. The Datanet-wide index entries go in batches first (flushed),
    /// then one small transaction writes the marker — the signed record, its metadata and its
    /// place in the Datanet's order — and a second flush acknowledges it. A crash before the
    /// marker leaves only dead index entries (see [`StoreNear`]), never a partial contribution.
    pub async fn commit_contribution(
        &self,
        manifest: &Manifest,
        signed: &SignedContribution,
        chunks: &[BlobHash],
        records: &[CanonicalRecord],
        source: &str,
    ) -> Result<Admitted, StoreError> {
        let _one_at_a_time = self.admit.lock().await;
        self.flush().await?; // blob store metadata durable before anything points at it
        let id = signed.body.id();
        let d = signed.body.datanet;
        let t = |n| self.tree(n);
        let trees = IndexTrees {
            recs: t(trees::RECORDS)?,
            near: t(trees::NEAR_INDEX)?,
            sigs: t(trees::SIGNATURES)?,
            metas: t(trees::CONTRIBUTION_META)?,
        };
        if let Some(m) = self.contribution_meta(&id)? {
            return Ok(Admitted { id, meta: m });
        }
        let started = std::time::Instant::now();
        let c = self.classify(&trees, manifest, d, id, records)?;
        let classified = started.elapsed();
        trees.recs.apply_batch(c.recs)?;
        trees.near.apply_batch(c.near)?;
        trees.sigs.apply_batch(c.sigs)?;
        let written = started.elapsed();
        self.db.flush_async().await?; // index entries durable before the marker names them
        tracing::debug!(
            target: "datanet::store",
            contribution = %id.short(),
            records = records.len(),
            classify_ms = classified.as_millis() as u64,
            write_ms = (written - classified).as_millis() as u64,
            flush_ms = (started.elapsed() - written).as_millis() as u64,
            "indexes written"
        );
        let (contribs, by_d, meta) = (t(trees::CONTRIBUTIONS)?, t(trees::BY_DATANET)?, t(trees::META)?);
        let admitted_ms = now_ms();
        let result = (&contribs, &trees.metas, &by_d, &meta).transaction(|(contribs, metas, by_d, meta)| {
            if let Some(v) = metas.get(id.0)? {
                let m: ContributionMeta = codec::decode(&v).map_err(abort)?;
                return Ok(m);
            }
            let seq =
                meta.get(b"seq")?.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))).unwrap_or(0) + 1;
            meta.insert(b"seq", &seq.to_be_bytes())?;
            let m = ContributionMeta {
                seq,
                admitted_ms,
                chunks: chunks.to_vec(),
                records: records.len() as u32,
                new_records: c.new,
                duplicates: c.duplicates,
                near_duplicates: c.near_duplicates,
                source: source.to_string(),
            };
            contribs.insert(&id.0, signed.to_bytes())?;
            metas.insert(&id.0, codec::encode(&m))?;
            by_d.insert(key2(&d.0, &seq.to_be_bytes()), &id.0)?;
            Ok(m)
        });
        let meta = result.map_err(|e| StoreError::Transaction(format!("{e:?}")))?;
        self.db.flush_async().await?;
        Ok(Admitted { id, meta })
    }

    /// The local metadata of a contribution, if stored.
    pub fn contribution_meta(&self, id: &ContributionId) -> Result<Option<ContributionMeta>, StoreError> {
        self.get_canonical(trees::CONTRIBUTION_META, &id.0)
    }

    /// A stored signed contribution record.
    pub fn contribution(&self, id: &ContributionId) -> Result<Option<SignedContribution>, StoreError> {
        self.get_canonical(trees::CONTRIBUTIONS, &id.0)
    }

    /// Resolves a contribution given as full id or unique hex prefix (≥ 4 digits).
    pub fn resolve_contribution(&self, key: &str) -> Result<Option<ContributionId>, StoreError> {
        if let Ok(id) = key.parse::<ContributionId>() {
            return Ok(self.contribution(&id)?.map(|_| id));
        }
        if key.len() < 4 || hex::decode(if key.len() % 2 == 0 { key } else { &key[..key.len() - 1] }).is_err() {
            return Ok(None);
        }
        let mut hits = Vec::new();
        for kv in self.tree(trees::CONTRIBUTIONS)?.iter() {
            let (k, _) = kv?;
            if hex::encode(&k).starts_with(key) {
                hits.push(ContributionId(k.as_ref().try_into().unwrap_or([0; 32])));
            }
        }
        Ok(if hits.len() == 1 { hits.pop() } else { None })
    }

    /// A Datanet's contributions in local admission order.
    pub fn contributions(&self, d: &DatanetId) -> Result<Vec<ContributionInfo>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(trees::BY_DATANET)?.scan_prefix(d.0) {
            let (_, v) = kv?;
            let id = ContributionId(v.as_ref().try_into().unwrap_or([0; 32]));
            let signed = self
                .contribution(&id)?
                .ok_or_else(|| StoreError::Transaction(format!("index names missing contribution {id}")))?;
            let meta = self
                .contribution_meta(&id)?
                .ok_or_else(|| StoreError::Transaction(format!("contribution {id} has no metadata")))?;
            out.push(ContributionInfo { id, signed, meta });
        }
        Ok(out)
    }

    /// Every contribution id stored here, any Datanet (for catch-up).
    pub fn contribution_ids(&self) -> Result<Vec<ContributionId>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(trees::CONTRIBUTIONS)?.iter() {
            let (k, _) = kv?;
            out.push(ContributionId(k.as_ref().try_into().unwrap_or([0; 32])));
        }
        Ok(out)
    }

    /// A contribution's records read back from its chunks, every chunk checked against its hash
    /// and the whole list against the signed record count and Merkle root.
    pub async fn contribution_records(&self, id: &ContributionId) -> Result<Vec<CanonicalRecord>, StoreError> {
        let signed = self
            .contribution(id)?
            .ok_or_else(|| StoreError::Transaction(format!("contribution {id} is not stored here")))?;
        let meta = self
            .contribution_meta(id)?
            .ok_or_else(|| StoreError::Transaction(format!("contribution {id} has no metadata")))?;
        let manifest = self
            .manifest(&signed.body.datanet)?
            .ok_or_else(|| StoreError::Transaction("datanet manifest missing".into()))?
            .body;
        let mut records = Vec::with_capacity(meta.records as usize);
        for (i, h) in meta.chunks.iter().enumerate() {
            let bytes = self.get_blob(h).await?;
            let recs = admission::unpack_chunk(&manifest.task, manifest.admission.record_bytes_max, i, &bytes)
                .map_err(|e| StoreError::Transaction(format!("contribution {}: {e}", id.short())))?;
            records.extend(recs);
        }
        let leaves: Vec<[u8; 32]> = records.iter().map(|r| r.hash.0).collect();
        if records.len() != signed.body.record_count as usize
            || crate::merkle::root(&leaves) != signed.body.records_root
        {
            return Err(StoreError::Transaction(format!(
                "contribution {}: records do not match the signed Merkle root",
                id.short()
            )));
        }
        Ok(records)
    }

    /// The Datanet's records for attribution: each distinct record once, credited to the first
    /// contribution holding it in canonical order (`created_ms`, then id), with near-duplicate
    /// clusters recomputed in that same order. `only` restricts to some contributions.
    pub async fn datanet_records(
        &self,
        d: &DatanetId,
        only: Option<&[ContributionId]>,
    ) -> Result<Vec<AdmittedRecord>, StoreError> {
        let manifest =
            self.manifest(d)?.ok_or_else(|| StoreError::Transaction(format!("datanet {d} is not known here")))?.body;
        let mut infos = self.contributions(d)?;
        if let Some(only) = only {
            infos.retain(|c| only.contains(&c.id));
        }
        infos.sort_by_key(|c| (c.signed.body.created_ms, c.id));
        let mut seen = std::collections::HashSet::new();
        let mut near = MemNear::default();
        let mut out = Vec::new();
        for c in &infos {
            let records: Vec<CanonicalRecord> =
                self.contribution_records(&c.id).await?.into_iter().filter(|r| seen.insert(r.hash)).collect();
            let parts = near_parts_all(&manifest, d, &records.iter().collect::<Vec<_>>());
            for (rec, parts) in records.into_iter().zip(parts) {
                let cluster = classify_near(&mut near, &manifest, rec.hash, parts);
                out.push(AdmittedRecord {
                    hash: rec.hash,
                    value: rec.value,
                    contribution: c.id,
                    contributor: c.signed.body.contributor,
                    cluster,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                admission::canonical::canonicalize(&m.task, v, 1 << 16).unwrap()
            })
            .collect()
    }

    // Index entries written by an admission that died before its marker are dead: the same records admitted later count as new, not as duplicates or near-duplicates.
    #[tokio::test(flavor = "multi_thread")]
    async fn dead_index_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, d, m) = instruct_store(dir.path()).await;
        let recs = records(&m, 200);
        let t = |n| store.tree(n).unwrap();
        let trees = IndexTrees {
            recs: t(trees::RECORDS),
            near: t(trees::NEAR_INDEX),
            sigs: t(trees::SIGNATURES),
            metas: t(trees::CONTRIBUTION_META),
        };
        let dead = store.classify(&trees, &m, d, ContributionId([9; 32]), &recs).unwrap();
        assert_eq!(dead.new, 200);
        trees.recs.apply_batch(dead.recs).unwrap();
        trees.near.apply_batch(dead.near).unwrap();
        trees.sigs.apply_batch(dead.sigs).unwrap();
        let me = Identity::from_seed([4; 32]);
        let ack = admission::admit_local(&store, &me, &d, recs.clone()).await.unwrap();
        assert_eq!((ack.meta.new_records, ack.meta.duplicates, ack.meta.near_duplicates), (200, 0, 0));
        // Live entries do count: a second contribution of the same records is all duplicates.
        let again = admission::admit_local(&store, &Identity::from_seed([5; 32]), &d, recs).await.unwrap();
        assert_eq!((again.meta.new_records, again.meta.duplicates), (0, 200));
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
}
