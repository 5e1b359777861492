//! Classifying a contribution against the Datanet's committed indexes (exact duplicates, then
//! near-duplicates), the index writes that produces, and merging the buckets it fills.

use super::buckets::{Buckets, Found, Liveness, MERGE_AT, record_key64};
use super::near::{NearIndex, classify_near, near_parts_all};
use crate::ids::{ContributionId, DatanetId, RecordHash};
use crate::manifest::Manifest;
use crate::records::CanonicalRecord;
use crate::store::{Store, StoreError, record_key};
use rustc_hash::FxHashMap;
use std::collections::HashMap;

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

/// The sled trees admission reads and writes.
pub(super) struct IndexTrees {
    pub(super) recs: sled::Tree,
    pub(super) near: sled::Tree,
    pub(super) sigs: sled::Tree,
    pub(super) metas: sled::Tree,
}

/// What classifying a contribution against the store produced: counts, the index writes, and
/// the buckets that may need merging once it is committed.
pub(super) struct Classified {
    pub(super) new: u32,
    pub(super) duplicates: u32,
    pub(super) near_duplicates: u32,
    pub(super) recs: sled::Batch,
    pub(super) near: sled::Batch,
    pub(super) sigs: sled::Batch,
    pub(super) merge_recs: Vec<u16>,
    pub(super) merge_near: Vec<u16>,
}

impl Store {
    /// Classifies `records` (as contribution `id`) against the Datanet's committed indexes.
    pub(super) fn classify(
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
    pub(super) fn merge_buckets(&self, trees: &IndexTrees, d: DatanetId, c: &Classified) -> Result<(), StoreError> {
        let mut live = Liveness { metas: &trees.metas, known: HashMap::new() };
        for (tree, buckets) in [(&trees.recs, &c.merge_recs), (&trees.near, &c.merge_near)] {
            let index = Buckets { tree, datanet: d };
            for b in buckets {
                index.merge(*b, &mut live)?;
            }
        }
        Ok(())
    }
}
