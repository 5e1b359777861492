//! Contributions in sled: the signed records, their local metadata, and the Datanet-wide indexes
//! that make exact and near-duplicate detection cheap at admission.
//!
//! [`Store::commit_contribution`] classifies a contribution's records against everything admitted
//! before in its Datanet, writes its index entries as one sorted value per bucket (so the cost of
//! an admission grows with its buckets, not with its records × band keys) and then the
//! contribution's marker in one small transaction, then flushes. These indexes give admission its
//! counts (new, duplicate, near-duplicate); they are local, not agreed on. [`Store::datanet_records`] gives attribution the
//! Datanet's records with duplicates and near-duplicate clusters resolved in the canonical order
//! (the priority of the contribution holding a record — the epoch's witnessed priority —, then the
//! record hash), so every peer derives the same owners and clusters regardless of the order it
//! received things, and no contributor's own claim (its `created_ms`, its ids) enters.

use super::{Store, StoreError, key2, record_key, trees};
use crate::codec::{self, Canonical};
use crate::ids::{BlobHash, ContributionId, DatanetId, PeerKey, RecordHash};
use crate::manifest::{Manifest, TaskKind};
use crate::records::{self, CanonicalRecord, SignedContribution, neardup};
use rustc_hash::FxHashMap;
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
    /// The priority it is credited at: the earliest of the contributions holding it.
    pub priority: u64,
    /// The first contribution holding it at that priority (by id).
    pub contribution: ContributionId,
    /// Every contributor holding it at that priority, sorted, each once: they split its credit.
    pub owners: Vec<PeerKey>,
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
    fn get(&mut self, key: u64) -> Option<RecordHash>;
    fn put(&mut self, key: u64, canonical: RecordHash);
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>>;
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>);
}

/// A record's near-duplicate band keys and the signature stored for it. Pure, so computed for
/// many records in parallel before the sequential classification.
struct NearParts {
    keys: Vec<u64>,
    sig: Vec<u8>,
}

fn near_parts(manifest: &Manifest, rec: &CanonicalRecord) -> NearParts {
    match manifest.task {
        TaskKind::Tabular { .. } => {
            let (_, f) = neardup::tabular_parts(&rec.value);
            NearParts {
                keys: neardup::tabular_band_keys(&rec.value, manifest.admission.near_duplicate_digits),
                sig: neardup::features_bytes(&f),
            }
        }
        TaskKind::Text | TaskKind::Instruct => {
            let sig = neardup::minhash(&neardup::record_text(&rec.value));
            NearParts { keys: neardup::band_keys(&sig).to_vec(), sig: neardup::signature_bytes(&sig) }
        }
    }
}

/// Every record's [`NearParts`], in order, computed on all cores.
fn near_parts_all(manifest: &Manifest, records: &[&CanonicalRecord]) -> Vec<NearParts> {
    use rayon::prelude::*;
    records.par_iter().map(|r| near_parts(manifest, r)).collect()
}

/// Returns the canonical record whose near-duplicate cluster `rec` joins, or `None` (then `rec`
/// is indexed as a new canonical record under every band key not taken yet).
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
    let hits: Vec<Option<RecordHash>> = keys.iter().map(|k| idx.get(*k)).collect();
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

/// One entry of a bucketed index: a 64-bit key (big-endian, so entries sort by it) and the
/// record it leads to.
const ENTRY: usize = 8 + 32;
/// Bits of an entry's key that pick its bucket.
/// Bits of an entry's key that pick its bucket (few in unit tests, so buckets fill and merge).
const BUCKET_BITS: u32 = if cfg!(test) { 3 } else { 16 };
/// A bucket holding more values than this after an admission is merged into one value.
const MERGE_AT: usize = 16;
/// The contribution part of a merged value's key: merged values hold only live entries.
const MERGED: [u8; 32] = [0; 32];

/// A Datanet-wide index kept as *bucketed values*: the entries one contribution adds to one
/// bucket are one sled value under `DatanetId ‖ bucket ‖ ContributionId` (sorted entries), so an
/// admission writes at most one value per bucket instead of one per entry, and looks a bucket up
/// with one prefix scan. A value is live only if its contribution has a marker (see
/// [`Store::commit_contribution`]); merging (after [`MERGE_AT`] values) keeps scans short and
/// drops dead values.
struct Buckets<'a> {
    tree: &'a sled::Tree,
    datanet: DatanetId,
}

/// Which contributions are committed (have a marker), cached per admission.
struct Liveness<'a> {
    metas: &'a sled::Tree,
    known: HashMap<[u8; 32], bool>,
}

impl Liveness<'_> {
    fn live(&mut self, cid: &[u8]) -> Result<bool, sled::Error> {
        let cid: [u8; 32] = cid.try_into().unwrap_or(MERGED);
        if cid == MERGED {
            return Ok(true);
        }
        if let Some(&l) = self.known.get(&cid) {
            return Ok(l);
        }
        let l = self.metas.contains_key(cid)?;
        self.known.insert(cid, l);
        Ok(l)
    }
}

fn bucket_of(key: u64) -> u16 {
    (key >> (64 - BUCKET_BITS)) as u16
}

/// The 64-bit index key of a record hash.
fn record_key64(h: &RecordHash) -> u64 {
    u64::from_be_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// Live index contents for some keys, and how many live values each looked-up bucket holds.
struct Found {
    entries: FxHashMap<u64, Vec<RecordHash>>,
    values: HashMap<u16, usize>,
}

impl Buckets<'_> {
    fn prefix(&self, bucket: u16) -> Vec<u8> {
        key2(&self.datanet.0, &bucket.to_be_bytes())
    }

    /// The live entries under `keys`, one prefix scan per bucket.
    fn lookup(&self, keys: &[u64], live: &mut Liveness) -> Result<Found, sled::Error> {
        let mut by_bucket: std::collections::BTreeMap<u16, Vec<u64>> = Default::default();
        for k in keys {
            by_bucket.entry(bucket_of(*k)).or_default().push(*k);
        }
        let mut found = Found { entries: FxHashMap::default(), values: HashMap::new() };
        for (b, mut ks) in by_bucket {
            ks.sort_unstable();
            ks.dedup();
            let mut n = 0;
            for kv in self.tree.scan_prefix(self.prefix(b)) {
                let (k, v) = kv?;
                if !live.live(&k[34..])? {
                    continue;
                }
                n += 1;
                for key in &ks {
                    for e in entries_with(&v, *key) {
                        found.entries.entry(*key).or_default().push(RecordHash(e[8..].try_into().expect("32 bytes")));
                    }
                }
            }
            found.values.insert(b, n);
        }
        Ok(found)
    }

    /// The values contribution `cid` adds: its entries grouped by bucket, each group sorted.
    fn values(&self, cid: &[u8; 32], mut entries: Vec<(u64, RecordHash)>) -> (sled::Batch, Vec<u16>) {
        entries.sort_unstable();
        entries.dedup();
        let mut batch = sled::Batch::default();
        let mut touched = Vec::new();
        for group in entries.chunk_by(|a, b| bucket_of(a.0) == bucket_of(b.0)) {
            let b = bucket_of(group[0].0);
            batch.insert(key2(&self.prefix(b), cid), encode_entries(group));
            touched.push(b);
        }
        (batch, touched)
    }

    /// Merges a bucket's live values into one and removes the dead ones, atomically.
    fn merge(&self, bucket: u16, live: &mut Liveness) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        let mut all = Vec::new();
        for kv in self.tree.scan_prefix(self.prefix(bucket)) {
            let (k, v) = kv?;
            if live.live(&k[34..])? {
                all.extend(v.chunks_exact(ENTRY).map(|e| {
                    (u64::from_be_bytes(e[..8].try_into().expect("8")), RecordHash(e[8..].try_into().expect("32")))
                }));
            }
            batch.remove(k);
        }
        all.sort_unstable();
        all.dedup();
        batch.insert(key2(&self.prefix(bucket), &MERGED), encode_entries(&all));
        self.tree.apply_batch(batch)
    }
}

fn encode_entries(entries: &[(u64, RecordHash)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * ENTRY);
    for (k, r) in entries {
        v.extend_from_slice(&k.to_be_bytes());
        v.extend_from_slice(&r.0);
    }
    v
}

/// The entries of a sorted value whose key is `key` (binary search).
fn entries_with(value: &[u8], key: u64) -> impl Iterator<Item = &[u8]> {
    let n = value.len() / ENTRY;
    let at = |i: usize| u64::from_be_bytes(value[i * ENTRY..i * ENTRY + 8].try_into().expect("8"));
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if at(mid) < key { lo = mid + 1 } else { hi = mid }
    }
    (lo..n).take_while(move |&i| at(i) == key).map(move |i| &value[i * ENTRY..(i + 1) * ENTRY])
}

/// The Datanet's committed near-duplicate index (the live entries for this admission's keys,
/// fetched up front) plus this admission's pending entries.
struct StoreNear<'a> {
    sigs: &'a sled::Tree,
    datanet: DatanetId,
    committed: FxHashMap<u64, RecordHash>,
    pending_near: FxHashMap<u64, RecordHash>,
    pending_sigs: FxHashMap<RecordHash, Vec<u8>>,
    failed: Option<sled::Error>,
}

impl NearIndex for StoreNear<'_> {
    fn get(&mut self, key: u64) -> Option<RecordHash> {
        self.pending_near.get(&key).or_else(|| self.committed.get(&key)).copied()
    }
    fn put(&mut self, key: u64, canonical: RecordHash) {
        self.pending_near.insert(key, canonical);
    }
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>> {
        if let Some(s) = self.pending_sigs.get(record) {
            return Some(s.clone());
        }
        match self.sigs.get(record_key(&self.datanet, record)) {
            Ok(v) => v.map(|v| v.to_vec()),
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>) {
        self.pending_sigs.insert(record, sig);
    }
}

#[derive(Default)]
struct MemNear {
    near: FxHashMap<u64, RecordHash>,
    sigs: FxHashMap<RecordHash, Vec<u8>>,
}

impl NearIndex for MemNear {
    fn get(&mut self, key: u64) -> Option<RecordHash> {
        self.near.get(&key).copied()
    }
    fn put(&mut self, key: u64, canonical: RecordHash) {
        self.near.insert(key, canonical);
    }
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>> {
        self.sigs.get(record).cloned()
    }
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>) {
        self.sigs.insert(record, sig);
    }
}

/// The sled trees admission reads and writes.
struct IndexTrees {
    recs: sled::Tree,
    near: sled::Tree,
    sigs: sled::Tree,
    metas: sled::Tree,
}

/// What classifying a contribution against the store produced: counts, the index writes, and
/// the buckets that may need merging once it is committed.
struct Classified {
    new: u32,
    duplicates: u32,
    near_duplicates: u32,
    recs: sled::Batch,
    near: sled::Batch,
    sigs: sled::Batch,
    merge_recs: Vec<u16>,
    merge_near: Vec<u16>,
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
        let mut live = Liveness { metas: &trees.metas, known: HashMap::new() };
        let (rec_index, near_index) =
            (Buckets { tree: &trees.recs, datanet: d }, Buckets { tree: &trees.near, datanet: d });
        // Exact duplicates first (of committed records, or earlier in this contribution).
        let mut seen = rustc_hash::FxHashSet::default();
        let firsts: Vec<&CanonicalRecord> = records.iter().filter(|r| seen.insert(r.hash)).collect();
        let keys: Vec<u64> = firsts.iter().map(|r| record_key64(&r.hash)).collect();
        let held = rec_index.lookup(&keys, &mut live)?;
        let fresh: Vec<&CanonicalRecord> = firsts
            .into_iter()
            .filter(|r| !held.entries.get(&record_key64(&r.hash)).is_some_and(|hs| hs.contains(&r.hash)))
            .collect();
        let parts = near_parts_all(manifest, &fresh);
        let band_keys: Vec<u64> = parts.iter().flat_map(|p| p.keys.iter().copied()).collect();
        let near_found = near_index.lookup(&band_keys, &mut live)?;
        let committed = near_found.entries.iter().filter_map(|(k, rs)| rs.iter().min().map(|r| (*k, *r))).collect();
        let mut idx = StoreNear {
            sigs: &trees.sigs,
            datanet: d,
            committed,
            pending_near: FxHashMap::with_capacity_and_hasher(band_keys.len(), Default::default()),
            pending_sigs: FxHashMap::with_capacity_and_hasher(fresh.len(), Default::default()),
            failed: None,
        };
        let mut near_duplicates = 0;
        for (rec, parts) in fresh.iter().zip(parts) {
            if classify_near(&mut idx, manifest, rec.hash, parts).is_some() {
                near_duplicates += 1;
            }
        }
        if let Some(e) = idx.failed {
            return Err(e.into());
        }
        let over = |found: &Found, touched: Vec<u16>| -> Vec<u16> {
            touched.into_iter().filter(|b| found.values.get(b).copied().unwrap_or(0) + 1 > MERGE_AT).collect()
        };
        let (recs, touched) = rec_index.values(&id.0, fresh.iter().map(|r| (record_key64(&r.hash), r.hash)).collect());
        let merge_recs = over(&held, touched);
        let (near, touched) = near_index.values(&id.0, idx.pending_near.into_iter().collect());
        let merge_near = over(&near_found, touched);
        let mut sigs = sled::Batch::default();
        for (r, sig) in idx.pending_sigs {
            sigs.insert(record_key(&d, &r), sig);
        }
        Ok(Classified {
            new: fresh.len() as u32,
            duplicates: (records.len() - fresh.len()) as u32,
            near_duplicates,
            recs,
            near,
            sigs,
            merge_recs,
            merge_near,
        })
    }

    /// Merges the buckets a committed admission filled past [`MERGE_AT`] values.
    fn merge_buckets(&self, trees: &IndexTrees, d: DatanetId, c: &Classified) -> Result<(), StoreError> {
        let mut live = Liveness { metas: &trees.metas, known: HashMap::new() };
        for (tree, buckets) in [(&trees.recs, &c.merge_recs), (&trees.near, &c.merge_near)] {
            let index = Buckets { tree, datanet: d };
            for b in buckets {
                index.merge(*b, &mut live)?;
            }
        }
        Ok(())
    }

    /// Classifies and commits a contribution whose blobs are already stored and synced; returns
    /// after its marker is flushed (the moment it is "acknowledged").
    ///
    /// Admissions are serialized. The Datanet-wide index entries go in batches first (flushed),
    /// then one small transaction writes the marker — the signed record, its metadata and its
    /// place in the Datanet's order — and a second flush acknowledges it. A crash before the
    /// marker leaves only dead index values (see [`Buckets`]), never a partial contribution.
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
        let mut blobs = chunks.to_vec();
        blobs.push(signed.body.root);
        self.sync_blobs(&blobs).await?;
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
        let mut c = self.classify(&trees, manifest, d, id, records)?;
        let classified = started.elapsed();
        trees.recs.apply_batch(std::mem::take(&mut c.recs))?;
        trees.near.apply_batch(std::mem::take(&mut c.near))?;
        trees.sigs.apply_batch(std::mem::take(&mut c.sigs))?;
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
        // Merging rewrites live entries only (atomically per bucket): no flush needed for safety.
        self.merge_buckets(&trees, d, &c)?;
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

    /// A page of a Datanet's contribution ids in local admission order, and how many it holds,
    /// read from the order index alone (nothing is decoded): what an inventory request costs.
    pub fn contribution_page(
        &self,
        d: &DatanetId,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<ContributionId>, u64), StoreError> {
        let tree = self.tree(trees::BY_DATANET)?;
        let mut ids = Vec::with_capacity(limit.min(4096));
        let mut total = 0u64;
        for kv in tree.scan_prefix(d.0) {
            let (_, v) = kv?;
            if total as usize >= offset && ids.len() < limit {
                ids.push(ContributionId(v.as_ref().try_into().unwrap_or([0; 32])));
            }
            total += 1;
        }
        Ok((ids, total))
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
            let recs = records::unpack_chunk(&manifest.task, manifest.admission.record_bytes_max, i, &bytes)
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

    /// The Datanet's records for attribution: each distinct record once, ordered by (priority of
    /// the earliest contribution holding it, record hash), with near-duplicate clusters rebuilt
    /// greedily in that order, so which record is canonical never depends on identities, ids or the
    /// order within a file.
    ///
    /// `Some(priorities)`: only those contributions, each at its given priority (the epoch's
    /// witnessed priority, certified in the freeze). `None`: every contribution of the Datanet, each
    /// at its local `admitted_ms` (offline tools). A record held by several contributions takes the
    /// earliest priority; every contributor holding it at that same priority is one of its
    /// `owners` (sorted, each once), who split its credit equally.
    pub async fn datanet_records(
        &self,
        d: &DatanetId,
        priorities: Option<&std::collections::BTreeMap<ContributionId, u64>>,
    ) -> Result<Vec<AdmittedRecord>, StoreError> {
        let manifest =
            self.manifest(d)?.ok_or_else(|| StoreError::Transaction(format!("datanet {d} is not known here")))?.body;
        let mut infos: Vec<(u64, ContributionInfo)> = self
            .contributions(d)?
            .into_iter()
            .filter_map(|c| match priorities {
                Some(p) => p.get(&c.id).map(|&t| (t, c)),
                None => Some((c.meta.admitted_ms, c)),
            })
            .collect();
        infos.sort_by_key(|(t, c)| (*t, c.id));
        // hash → (record, priority, first contribution at it, owners at it)
        let mut held: HashMap<RecordHash, (CanonicalRecord, u64, ContributionId, Vec<PeerKey>)> = HashMap::new();
        for (t, c) in &infos {
            let who = c.signed.body.contributor;
            for rec in self.contribution_records(&c.id).await? {
                match held.get_mut(&rec.hash) {
                    None => {
                        held.insert(rec.hash, (rec, *t, c.id, vec![who]));
                    }
                    // Contributions come in (priority, id) order: a later priority never joins.
                    Some((_, first, _, owners)) if *first == *t => {
                        if !owners.contains(&who) {
                            owners.push(who);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        let mut ordered: Vec<(CanonicalRecord, u64, ContributionId, Vec<PeerKey>)> = held.into_values().collect();
        ordered.sort_by_key(|a| (a.1, a.0.hash));
        let parts = near_parts_all(&manifest, &ordered.iter().map(|o| &o.0).collect::<Vec<_>>());
        let mut near = MemNear::default();
        let mut out = Vec::with_capacity(ordered.len());
        for ((rec, priority, contribution, mut owners), parts) in ordered.into_iter().zip(parts) {
            let cluster = classify_near(&mut near, &manifest, rec.hash, parts);
            owners.sort();
            out.push(AdmittedRecord { hash: rec.hash, value: rec.value, priority, contribution, owners, cluster });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
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
            let ack =
                admission::admit_local(&store, &Identity::from_seed([c; 32]), &d, recs.clone()).await.unwrap().meta;
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
}
