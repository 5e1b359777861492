//! Contributions in sled: the signed records, their local metadata, and the Datanet-wide indexes
//! that make exact and near-duplicate detection cheap at admission.
//!
//! [`Store::commit_contribution`] classifies a contribution's records against everything admitted
//! before in its Datanet and writes the record and every index entry in one transaction, then
//! flushes. [`Store::datanet_records`] gives attribution the Datanet's records with duplicates and
//! near-duplicate clusters resolved in the canonical order (contribution `created_ms`, then id), so
//! every peer derives the same first contributor regardless of the order it received things.

use super::{Store, StoreError, key2, record_key, trees};
use crate::admission::{self, CanonicalRecord, SignedContribution, neardup};
use crate::codec::{self, Canonical};
use crate::ids::{BlobHash, ContributionId, DatanetId, PeerKey, RecordHash};
use crate::manifest::{Manifest, TaskKind};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
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

/// Near-duplicate classification state, either backed by a transaction (admission) or by memory
/// (canonical recomputation): band key → canonical record, record → its stored signature (MinHash
/// slots for text, feature values for tabular).
trait NearIndex {
    fn get(&mut self, key: &[u8]) -> Option<RecordHash>;
    fn put(&mut self, key: Vec<u8>, canonical: RecordHash);
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>>;
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>);
}

/// Returns the canonical record whose near-duplicate cluster `rec` joins, or `None` (then `rec`
/// is indexed as a new canonical record).
fn classify_near(
    idx: &mut dyn NearIndex,
    manifest: &Manifest,
    d: &DatanetId,
    rec: &CanonicalRecord,
) -> Option<RecordHash> {
    let digits = manifest.admission.near_duplicate_digits;
    let (keys, sig): (Vec<Vec<u8>>, Vec<u8>) = match manifest.task {
        TaskKind::Tabular { .. } => {
            let (_, f) = neardup::tabular_parts(&rec.value);
            (
                neardup::tabular_band_keys(&rec.value, digits).iter().map(|k| key2(&d.0, k)).collect(),
                neardup::features_bytes(&f),
            )
        }
        TaskKind::Text | TaskKind::Instruct => {
            let sig = neardup::minhash(&neardup::record_text(&rec.value));
            (neardup::band_keys(&sig).iter().map(|k| key2(&d.0, k)).collect(), neardup::signature_bytes(&sig))
        }
    };
    // Score every candidate; the most similar wins, ties to the smaller hash.
    let mut best: Option<(u64, std::cmp::Reverse<RecordHash>)> = None;
    for k in &keys {
        let Some(c) = idx.get(k) else { continue };
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
    for k in keys {
        if idx.get(&k).is_none() {
            idx.put(k, rec.hash);
        }
    }
    idx.put_signature(rec.hash, sig);
    None
}

struct TxNear<'a> {
    near: &'a TransactionalTree,
    sigs: &'a TransactionalTree,
    datanet: DatanetId,
    failed: Option<String>,
}

impl NearIndex for TxNear<'_> {
    fn get(&mut self, key: &[u8]) -> Option<RecordHash> {
        match self.near.get(key) {
            Ok(v) => v.and_then(|v| v.as_ref().try_into().ok().map(RecordHash)),
            Err(e) => {
                self.failed = Some(e.to_string());
                None
            }
        }
    }
    fn put(&mut self, key: Vec<u8>, canonical: RecordHash) {
        if let Err(e) = self.near.insert(key, &canonical.0[..]) {
            self.failed = Some(e.to_string());
        }
    }
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>> {
        self.sigs.get(record_key(&self.datanet, record)).ok().flatten().map(|v| v.to_vec())
    }
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>) {
        if let Err(e) = self.sigs.insert(record_key(&self.datanet, &record), sig) {
            self.failed = Some(e.to_string());
        }
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

impl Store {
    /// Classifies and commits a contribution whose blobs are already stored and synced; returns
    /// after the sled transaction is flushed (the moment it is "acknowledged").
    pub async fn commit_contribution(
        &self,
        manifest: &Manifest,
        signed: &SignedContribution,
        chunks: &[BlobHash],
        records: &[CanonicalRecord],
        source: &str,
    ) -> Result<Admitted, StoreError> {
        self.flush().await?; // blob store metadata durable before anything points at it
        let id = signed.body.id();
        let d = signed.body.datanet;
        let t = |n| self.tree(n);
        let (recs, near, sigs, contribs, metas, by_d, meta) = (
            t(trees::RECORDS)?,
            t(trees::NEAR_INDEX)?,
            t(trees::SIGNATURES)?,
            t(trees::CONTRIBUTIONS)?,
            t(trees::CONTRIBUTION_META)?,
            t(trees::BY_DATANET)?,
            t(trees::META)?,
        );
        let admitted_ms = now_ms();
        let result = (&recs, &near, &sigs, &contribs, &metas, &by_d, &meta).transaction(
            |(recs, near, sigs, contribs, metas, by_d, meta)| {
                if let Some(v) = metas.get(id.0)? {
                    let m: ContributionMeta = codec::decode(&v).map_err(abort)?;
                    return Ok(m);
                }
                let seq =
                    meta.get(b"seq")?.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))).unwrap_or(0)
                        + 1;
                meta.insert(b"seq", &seq.to_be_bytes())?;
                let mut idx = TxNear { near, sigs, datanet: d, failed: None };
                let (mut new, mut dups, mut nears) = (0u32, 0u32, 0u32);
                for rec in records {
                    let k = record_key(&d, &rec.hash);
                    if recs.get(&k)?.is_some() {
                        dups += 1;
                        continue;
                    }
                    recs.insert(k, &id.0[..])?;
                    new += 1;
                    if classify_near(&mut idx, manifest, &d, rec).is_some() {
                        nears += 1;
                    }
                }
                if let Some(e) = idx.failed {
                    return Err(ConflictableTransactionError::Abort(e));
                }
                let m = ContributionMeta {
                    seq,
                    admitted_ms,
                    chunks: chunks.to_vec(),
                    records: records.len() as u32,
                    new_records: new,
                    duplicates: dups,
                    near_duplicates: nears,
                    source: source.to_string(),
                };
                contribs.insert(&id.0, signed.to_bytes())?;
                metas.insert(&id.0, codec::encode(&m))?;
                by_d.insert(key2(&d.0, &seq.to_be_bytes()), &id.0)?;
                Ok(m)
            },
        );
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
            for rec in self.contribution_records(&c.id).await? {
                if !seen.insert(rec.hash) {
                    continue;
                }
                let cluster = classify_near(&mut near, &manifest, d, &rec);
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
