//! The bucketed index format of the Datanet-wide indexes (records, near-duplicate bands): values
//! per bucket and contribution, lookups by prefix scan, liveness by marker, and merging.

use crate::ids::{DatanetId, RecordHash};
use crate::store::key2;
use rustc_hash::FxHashMap;
use std::collections::HashMap;

/// One entry of a bucketed index: a 64-bit key (big-endian, so entries sort by it) and the
/// record it leads to.
const ENTRY: usize = 8 + 32;
/// Bits of an entry's key that pick its bucket.
/// Bits of an entry's key that pick its bucket (few in unit tests, so buckets fill and merge).
const BUCKET_BITS: u32 = if cfg!(test) { 3 } else { 16 };
/// A bucket holding more values than this after an admission is merged into one value.
pub(super) const MERGE_AT: usize = 16;
/// The contribution part of a merged value's key: merged values hold only live entries.
pub(super) const MERGED: [u8; 32] = [0; 32];

/// A Datanet-wide index kept as *bucketed values*: the entries one contribution adds to one
/// bucket are one sled value under `DatanetId ‖ bucket ‖ ContributionId` (sorted entries), so an
/// admission writes at most one value per bucket instead of one per entry, and looks a bucket up
/// with one prefix scan. A value is live only if its contribution has a marker (see
/// [`Store::commit_contribution`](crate::store::Store::commit_contribution)); merging (after
/// [`MERGE_AT`] values) keeps scans short and drops dead values.
pub(super) struct Buckets<'a> {
    pub(super) tree: &'a sled::Tree,
    pub(super) datanet: DatanetId,
}

/// Which contributions are committed (have a marker), cached per admission.
pub(super) struct Liveness<'a> {
    pub(super) metas: &'a sled::Tree,
    pub(super) known: HashMap<[u8; 32], bool>,
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
pub(super) fn record_key64(h: &RecordHash) -> u64 {
    u64::from_be_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// Live index contents for some keys, and how many live values each looked-up bucket holds.
pub(super) struct Found {
    pub(super) entries: FxHashMap<u64, Vec<RecordHash>>,
    pub(super) values: HashMap<u16, usize>,
}

impl Buckets<'_> {
    fn prefix(&self, bucket: u16) -> Vec<u8> {
        key2(&self.datanet.0, &bucket.to_be_bytes())
    }

    /// The live entries under `keys`, one prefix scan per bucket.
    pub(super) fn lookup(&self, keys: &[u64], live: &mut Liveness) -> Result<Found, sled::Error> {
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
    pub(super) fn values(&self, cid: &[u8; 32], mut entries: Vec<(u64, RecordHash)>) -> (sled::Batch, Vec<u16>) {
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
    pub(super) fn merge(&self, bucket: u16, live: &mut Liveness) -> Result<(), sled::Error> {
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
