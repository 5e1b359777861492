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
//!
//! This file holds the stored types, the commit and the reads; `near` is near-duplicate
//! classification, `buckets` the bucketed index format, `classify` classifying an admission
//! against the store's indexes.

use super::{Store, StoreError, key2, trees};
use crate::codec::{self, Canonical};
use crate::ids::{BlobHash, ContributionId, DatanetId, PeerKey, RecordHash};
use crate::manifest::Manifest;
use crate::records::{self, CanonicalRecord, SignedContribution};
use classify::IndexTrees;
use near::{MemNear, classify_near, near_parts_all};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use std::collections::HashMap;

mod buckets;
mod classify;
mod near;
#[cfg(test)]
mod tests;

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
impl Store {
    /// Classifies and commits a contribution whose blobs are already stored and synced; returns
    /// after its marker is flushed (the moment it is "acknowledged").
    ///
    /// Admissions are serialized. The Datanet-wide index entries go in batches first (flushed),
    /// then one small transaction writes the marker — the signed record, its metadata and its
    /// place in the Datanet's order — and a second flush acknowledges it. A crash before the
    /// marker leaves only dead index values (see [`Buckets`](buckets::Buckets)), never a partial
    /// contribution.
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
