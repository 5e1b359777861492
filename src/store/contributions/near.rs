//! Near-duplicate classification: a record's band keys and signature, and the greedy choice of
//! the cluster it joins, over an index kept in the store (admission) or in memory (canonical
//! recomputation, [`MemNear`]).

use crate::ids::RecordHash;
use crate::manifest::{Manifest, TaskKind};
use crate::records::{CanonicalRecord, neardup};
use rustc_hash::FxHashMap;

/// Near-duplicate classification state, either backed by the store (admission) or by memory
/// (canonical recomputation): band key → canonical record, record → its stored signature (MinHash
/// slots for text, feature values for tabular).
pub(super) trait NearIndex {
    fn get(&mut self, key: u64) -> Option<RecordHash>;
    fn put(&mut self, key: u64, canonical: RecordHash);
    fn signature(&mut self, record: &RecordHash) -> Option<Vec<u8>>;
    fn put_signature(&mut self, record: RecordHash, sig: Vec<u8>);
}

/// A record's near-duplicate band keys and the signature stored for it. Pure, so computed for
/// many records in parallel before the sequential classification.
pub(super) struct NearParts {
    pub(super) keys: Vec<u64>,
    pub(super) sig: Vec<u8>,
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
pub(super) fn near_parts_all(manifest: &Manifest, records: &[&CanonicalRecord]) -> Vec<NearParts> {
    use rayon::prelude::*;
    records.par_iter().map(|r| near_parts(manifest, r)).collect()
}

/// Returns the canonical record whose near-duplicate cluster `rec` joins, or `None` (then `rec`
/// is indexed as a new canonical record under every band key not taken yet).
pub(super) fn classify_near(
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

#[derive(Default)]
pub(super) struct MemNear {
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
