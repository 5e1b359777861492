//! The sealed evaluation pool: evaluation records the contributors cannot see until the inputs
//! they are measured against are frozen.
//!
//! A Datanet's founder holds a pool of evaluation records besides the public file. The signed
//! manifest commits to it per slice ([`SealedPart`]: the slice, the record count and a Merkle root
//! over salted leaves `H(salt ‖ canonical record)`); the salts come from a random key kept in the
//! pool file ([`SealedPool`]), so a revealed record proves its membership without telling anything
//! about the records still sealed, and a guess of a sealed record cannot be checked against the
//! root. The pool is never a blob and never gossiped: the founder hands the pool file to the
//! committee (`datanet datanet sealed export|import`), and `import` checks it against the manifest.
//!
//! Each epoch, after the input freeze certificate fixes the seed, every member takes the same
//! **split** ([`select`]): per part, the `split` not-yet-revealed indices with the lowest
//! `H(seed ‖ part ‖ index)`. The epoch's utilities are measured on it. The attestation then carries
//! the [`Reveal`]: per part, the bitmap of every index revealed so far (this epoch's included) and
//! this epoch's records with their salts and Merkle paths, which [`verify_reveal`] checks against
//! the manifest offline — the bitmap before this epoch is the bitmap less this epoch's openings, so
//! one attestation is checkable alone, and against its predecessor's bitmap when that is given.
//! Revealed records join the Datanet's contamination list: from then on a copy is refused at
//! admission and an earlier-admitted copy earns nothing.
//!
//! Pure: no I/O. Parsing the pool's records is `admission::sealed`; storing the pool file is the
//! store's (`Store::put_sealed_pool`).

use crate::codec::{Canonical, Signed};
use crate::ids::{DatanetId, MerkleRoot};
use crate::merkle;
use serde::{Deserialize, Serialize};

const LEAF_CONTEXT: &str = "datanet/sealed/leaf/v1";
const SALT_CONTEXT: &str = "datanet/sealed/salt/v1";
const RANK_CONTEXT: &str = "datanet/sealed/rank/v1";
/// Most records one part may commit to.
pub const PART_RECORDS_MAX: u32 = 1 << 20;
/// Most parts (slices) a manifest may commit to.
pub const PARTS_MAX: usize = 64;
/// Most records one epoch may open per part.
pub const SPLIT_MAX: u32 = 4096;

/// One committed part of the pool: the sealed records of one evaluation slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPart {
    pub slice: String,
    pub count: u32,
    /// Merkle root over the part's salted leaves, in pool order.
    pub root: MerkleRoot,
}

/// The founder's signed extension of a Datanet's sealed pool: more parts, drawn from epoch
/// `from_epoch` on. A manifest's id is the hash of its body, so the pool grows by these
/// instead of by a new manifest; an attestation carries the extensions it used (in its reveal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedExtension {
    pub datanet: DatanetId,
    pub from_epoch: u64,
    pub parts: Vec<SealedPart>,
}

impl Canonical for SealedExtension {
    const TAG: &'static [u8] = b"datanet/sealed-extension/v1";
    const MAX_BYTES: usize = 64 * 1024;
}

/// A founder-signed [`SealedExtension`].
pub type SignedExtension = Signed<SealedExtension>;

/// The pool file a committee member holds: the salt key, per part its canonical records (JSON
/// bytes without the `slice` field) in the order the manifest and then its extensions commit to,
/// and the founder's signed extensions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPool {
    pub key: [u8; 32],
    pub parts: Vec<PoolPart>,
    pub extensions: Vec<SignedExtension>,
}

/// One slice's sealed records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPart {
    pub slice: String,
    pub records: Vec<Vec<u8>>,
}

impl Canonical for SealedPool {
    const TAG: &'static [u8] = b"datanet/sealed-pool/v1";
    const MAX_BYTES: usize = 64 << 20;
}

/// What an attestation reveals: the extensions in effect for its epoch, and one entry per part
/// they and the manifest commit to, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    pub extensions: Vec<SignedExtension>,
    pub parts: Vec<PartReveal>,
}

impl Canonical for Reveal {
    const TAG: &'static [u8] = b"datanet/sealed-reveal/v1";
    const MAX_BYTES: usize = crate::codec::EPOCH_MESSAGE_BYTES_MAX;
}

/// One part's reveal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReveal {
    /// Bit i (byte i / 8, bit i % 8) set: index i has been revealed, this epoch or before.
    pub used: Vec<u8>,
    /// This epoch's split, sorted by index.
    pub opened: Vec<Opened>,
}

/// A revealed sealed record with its membership proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub index: u32,
    pub salt: [u8; 32],
    /// Canonical JSON bytes of the record (without `slice`).
    pub record: Vec<u8>,
    /// The Merkle path from the leaf to the part's root.
    pub siblings: Vec<[u8; 32]>,
}

/// Why a reveal does not match the manifest's commitment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevealError {
    #[error("the reveal has {got} parts, the manifest commits to {want}")]
    Parts { got: usize, want: usize },
    #[error("part `{slice}`: the revealed-index bitmap has {got} bytes, {want} expected")]
    BitmapLength { slice: String, got: usize, want: usize },
    #[error("part `{slice}`: the bitmap marks index {index}, beyond the part's {count} records")]
    BitBeyond { slice: String, index: u32, count: u32 },
    #[error("part `{slice}`: opened records are not sorted by index or repeat one")]
    Order { slice: String },
    #[error("part `{slice}`: record {index} is opened but not marked revealed")]
    Unmarked { slice: String, index: u32 },
    #[error("part `{slice}`: the epoch's split is {want:?}, the reveal opens {got:?}")]
    Split { slice: String, got: Vec<u32>, want: Vec<u32> },
    #[error("part `{slice}`: record {index} does not prove membership: {error}")]
    Proof { slice: String, index: u32, error: merkle::ProofError },
    #[error("part `{slice}`: the bitmap before this epoch differs from the previous attestation's")]
    Chain { slice: String },
    #[error("the previous attestation draws from {prev} parts, this one from {now}")]
    PartsShrank { prev: usize, now: usize },
    #[error("extension: {0}")]
    Extension(String),
}

/// The extensions of `all` in effect at `epoch` (from_epoch ≤ epoch), in (from_epoch, hash) order.
pub fn in_effect(all: &[SignedExtension], epoch: u64) -> Vec<SignedExtension> {
    let mut v: Vec<SignedExtension> = all.iter().filter(|e| e.body.from_epoch <= epoch).cloned().collect();
    v.sort_by_key(|e| (e.body.from_epoch, *crate::codec::hash(&e.body).as_bytes()));
    v
}

/// The parts an epoch draws from: the manifest's, then each extension's, in order.
pub fn parts_with(manifest_parts: &[SealedPart], extensions: &[SignedExtension]) -> Vec<SealedPart> {
    manifest_parts.iter().cloned().chain(extensions.iter().flat_map(|e| e.body.parts.iter().cloned())).collect()
}

/// The salt of record `index` of part `part` under the pool's key.
pub fn salt(key: &[u8; 32], part: usize, index: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(SALT_CONTEXT);
    h.update(key);
    h.update(&(part as u64).to_le_bytes());
    h.update(&index.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The committed leaf of one record.
pub fn leaf(salt: &[u8; 32], record: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(LEAF_CONTEXT);
    h.update(salt);
    h.update(&(record.len() as u64).to_le_bytes());
    h.update(record);
    *h.finalize().as_bytes()
}

fn leaves(key: &[u8; 32], p: usize, part: &PoolPart) -> Vec<[u8; 32]> {
    part.records.iter().enumerate().map(|(i, r)| leaf(&salt(key, p, i as u32), r)).collect()
}

impl SealedPool {
    /// The manifest's commitment to this pool.
    pub fn commitment(&self) -> Vec<SealedPart> {
        self.parts
            .iter()
            .enumerate()
            .map(|(p, part)| SealedPart {
                slice: part.slice.clone(),
                count: part.records.len() as u32,
                root: merkle::root(&leaves(&self.key, p, part)),
            })
            .collect()
    }

    /// Whether this pool is the one `parts` (the manifest's, then its extensions') commits to
    /// (what `sealed import` checks).
    pub fn matches(&self, parts: &[SealedPart]) -> bool {
        self.commitment() == parts
    }

    /// The reveal of `split` (per part in effect, sorted indices) after `before` (per part, the
    /// bitmap of indices revealed by earlier epochs), drawing from the first `split.len()` parts.
    pub fn reveal(&self, extensions: &[SignedExtension], before: &[Vec<u8>], split: &[Vec<u32>]) -> Reveal {
        let parts = self.parts[..split.len()]
            .iter()
            .enumerate()
            .map(|(p, part)| {
                let all = leaves(&self.key, p, part);
                let mut used = before.get(p).cloned().unwrap_or_else(|| bitmap_empty(part.records.len() as u32));
                let opened = split[p]
                    .iter()
                    .map(|&i| {
                        set_bit(&mut used, i);
                        let proof = merkle::prove(&all, i as usize).expect("split indices lie in the part");
                        Opened {
                            index: i,
                            salt: salt(&self.key, p, i),
                            record: part.records[i as usize].clone(),
                            siblings: proof.siblings,
                        }
                    })
                    .collect();
                PartReveal { used, opened }
            })
            .collect();
        Reveal { extensions: extensions.to_vec(), parts }
    }
}

/// An all-clear bitmap for a part of `count` records.
pub fn bitmap_empty(count: u32) -> Vec<u8> {
    vec![0; count.div_ceil(8) as usize]
}

fn bit(map: &[u8], i: u32) -> bool {
    map.get((i / 8) as usize).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(map: &mut [u8], i: u32) {
    map[(i / 8) as usize] |= 1 << (i % 8);
}

/// How many indices of a bitmap are set.
pub fn revealed_count(map: &[u8]) -> u32 {
    map.iter().map(|b| b.count_ones()).sum()
}

/// The bitmaps before the first epoch.
pub fn fresh(parts: &[SealedPart]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| bitmap_empty(p.count)).collect()
}

/// The epoch's split of part `p` (`count` records, `used` revealed before): the `split` unused
/// indices with the lowest rank `H(seed ‖ p ‖ index)`, sorted by index; fewer when fewer are left.
pub fn select_part(seed: &[u8; 32], p: usize, count: u32, used: &[u8], split: u32) -> Vec<u32> {
    let rank = |i: u32| {
        let mut h = blake3::Hasher::new_derive_key(RANK_CONTEXT);
        h.update(seed);
        h.update(&(p as u64).to_le_bytes());
        h.update(&i.to_le_bytes());
        *h.finalize().as_bytes()
    };
    let mut open: Vec<([u8; 32], u32)> = (0..count).filter(|&i| !bit(used, i)).map(|i| (rank(i), i)).collect();
    let k = (split as usize).min(open.len());
    if k < open.len() {
        open.select_nth_unstable(k);
        open.truncate(k);
    }
    let mut out: Vec<u32> = open.into_iter().map(|(_, i)| i).collect();
    out.sort_unstable();
    out
}

/// The epoch's split of every part: `split` records per slice, from the slice's first part with
/// records left, continuing into its next part (an extension's) when that one runs short.
pub fn select(seed: &[u8; 32], parts: &[SealedPart], before: &[Vec<u8>], split: u32) -> Vec<Vec<u32>> {
    let mut need: std::collections::BTreeMap<&str, u32> = parts.iter().map(|p| (p.slice.as_str(), split)).collect();
    parts
        .iter()
        .enumerate()
        .map(|(p, part)| {
            let n = need.get_mut(part.slice.as_str()).expect("every part's slice is counted");
            let got = select_part(seed, p, part.count, &before[p], *n);
            *n -= got.len() as u32;
            got
        })
        .collect()
}

/// Records still sealed per part after `used`.
pub fn remaining(parts: &[SealedPart], used: &[Vec<u8>]) -> Vec<u32> {
    parts.iter().zip(used).map(|(p, u)| p.count.saturating_sub(revealed_count(u))).collect()
}

/// How many more epochs the pool can feed a full split of every sealed slice (its parts
/// together; 0: some slice is short now).
pub fn epochs_left(parts: &[SealedPart], used: &[Vec<u8>], split: u32) -> u32 {
    let mut per_slice: std::collections::BTreeMap<&str, u32> = Default::default();
    for (p, r) in parts.iter().zip(remaining(parts, used)) {
        *per_slice.entry(p.slice.as_str()).or_default() += r;
    }
    per_slice.into_values().map(|r| r / split.max(1)).min().unwrap_or(0)
}

/// Checks `reveal` against the manifest's `parts` for the epoch of `seed` (`split` records per
/// part), and against the bitmaps of the previous attestation's reveal when given.
pub fn verify_reveal(
    parts: &[SealedPart],
    split: u32,
    seed: &[u8; 32],
    reveal: &Reveal,
    prev: Option<&Reveal>,
) -> Result<(), RevealError> {
    if reveal.parts.len() != parts.len() {
        return Err(RevealError::Parts { got: reveal.parts.len(), want: parts.len() });
    }
    if let Some(prev) = prev {
        if prev.parts.len() > parts.len() {
            return Err(RevealError::PartsShrank { prev: prev.parts.len(), now: parts.len() });
        }
    }
    let mut befores = Vec::with_capacity(parts.len());
    for (p, (part, r)) in parts.iter().zip(&reveal.parts).enumerate() {
        let slice = || part.slice.clone();
        let want_len = part.count.div_ceil(8) as usize;
        if r.used.len() != want_len {
            return Err(RevealError::BitmapLength { slice: slice(), got: r.used.len(), want: want_len });
        }
        if let Some(index) = (part.count..want_len as u32 * 8).find(|&i| bit(&r.used, i)) {
            return Err(RevealError::BitBeyond { slice: slice(), index, count: part.count });
        }
        if r.opened.windows(2).any(|w| w[0].index >= w[1].index) {
            return Err(RevealError::Order { slice: slice() });
        }
        let mut before = r.used.clone();
        for o in &r.opened {
            if !bit(&r.used, o.index) {
                return Err(RevealError::Unmarked { slice: slice(), index: o.index });
            }
            before[(o.index / 8) as usize] &= !(1 << (o.index % 8));
        }
        if let Some(prev) = prev {
            // A part an extension added since the previous epoch starts with nothing revealed.
            let fresh = bitmap_empty(part.count);
            if prev.parts.get(p).map_or(&fresh, |q| &q.used) != &before {
                return Err(RevealError::Chain { slice: slice() });
            }
        }
        befores.push(before);
    }
    let want = select(seed, parts, &befores, split);
    for ((part, r), want) in parts.iter().zip(&reveal.parts).zip(want) {
        let slice = || part.slice.clone();
        let got: Vec<u32> = r.opened.iter().map(|o| o.index).collect();
        if got != want {
            return Err(RevealError::Split { slice: slice(), got, want });
        }
        for o in &r.opened {
            let proof = merkle::Proof {
                leaf: leaf(&o.salt, &o.record),
                index: o.index as u64,
                leaf_count: part.count as u64,
                siblings: o.siblings.clone(),
            };
            proof.verify(&part.root).map_err(|error| RevealError::Proof { slice: slice(), index: o.index, error })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(sizes: &[usize], key: u8) -> SealedPool {
        SealedPool {
            key: [key; 32],
            parts: sizes
                .iter()
                .enumerate()
                .map(|(p, &n)| PoolPart {
                    slice: format!("s{p}"),
                    records: (0..n).map(|i| format!("{{\"text\":\"r{p}-{i}\"}}").into_bytes()).collect(),
                })
                .collect(),
            extensions: vec![],
        }
    }

    /// Runs `epochs` epochs of reveals; returns them.
    fn run(pool: &SealedPool, split: u32, epochs: u8) -> Vec<Reveal> {
        let parts = pool.commitment();
        let mut used = fresh(&parts);
        let mut out = Vec::new();
        for e in 0..epochs {
            let seed = [e; 32];
            let s = select(&seed, &parts, &used, split);
            let r = pool.reveal(&[], &used, &s);
            used = r.parts.iter().map(|p| p.used.clone()).collect();
            out.push(r);
        }
        out
    }

    proptest! {
        // Over random pool sizes, splits and epochs: every honest reveal verifies alone and against its predecessor, splits never repeat an index, and the pool drains exactly.
        #[test]
        fn honest_reveals_verify_and_never_repeat(sizes in proptest::collection::vec(0usize..40, 1..4), split in 1u32..9, epochs in 1u8..8) {
            let pool = pool(&sizes, 7);
            let parts = pool.commitment();
            let reveals = run(&pool, split, epochs);
            let mut seen: Vec<std::collections::BTreeSet<u32>> = vec![Default::default(); parts.len()];
            for (e, r) in reveals.iter().enumerate() {
                let prev = e.checked_sub(1).map(|i| &reveals[i]);
                prop_assert_eq!(verify_reveal(&parts, split, &[e as u8; 32], r, prev), Ok(()));
                prop_assert_eq!(verify_reveal(&parts, split, &[e as u8; 32], r, None), Ok(()));
                for (p, pr) in r.parts.iter().enumerate() {
                    let left = sizes[p] as u32 - seen[p].len() as u32;
                    prop_assert_eq!(pr.opened.len() as u32, split.min(left));
                    for o in &pr.opened {
                        prop_assert!(seen[p].insert(o.index), "index {} revealed twice", o.index);
                    }
                }
            }
            let used: Vec<Vec<u8>> = reveals.last().unwrap().parts.iter().map(|p| p.used.clone()).collect();
            let total: u32 = remaining(&parts, &used).iter().sum();
            prop_assert_eq!(total as usize, sizes.iter().sum::<usize>() - seen.iter().map(|s| s.len()).sum::<usize>());
        }
    }

    // A reveal with a swapped record, a wrong salt, a split the seed did not choose, a forged bitmap or a broken chain is refused with the reason.
    #[test]
    fn tampered_reveals_are_refused() {
        let pool = pool(&[20, 5], 3);
        let parts = pool.commitment();
        let reveals = run(&pool, 4, 2);
        let (r1, r2) = (&reveals[0], &reveals[1]);
        let seed = [1u8; 32];
        assert_eq!(verify_reveal(&parts, 4, &seed, r2, Some(r1)), Ok(()));
        let mut bad = r2.clone();
        bad.parts[0].opened[0].record = b"{\"text\":\"forged\"}".to_vec();
        assert!(matches!(verify_reveal(&parts, 4, &seed, &bad, Some(r1)), Err(RevealError::Proof { .. })));
        let mut bad = r2.clone();
        bad.parts[0].opened[0].salt[0] ^= 1;
        assert!(matches!(verify_reveal(&parts, 4, &seed, &bad, Some(r1)), Err(RevealError::Proof { .. })));
        // The same reveal under another epoch's seed is another split.
        assert!(matches!(verify_reveal(&parts, 4, &[9u8; 32], r2, None), Err(RevealError::Split { .. })));
        // Dropping an opened record (hiding it while marking it used) breaks the chain and, alone, the split rule.
        let mut bad = r2.clone();
        bad.parts[0].opened.pop();
        assert!(matches!(verify_reveal(&parts, 4, &seed, &bad, Some(r1)), Err(RevealError::Chain { .. })));
        assert!(matches!(verify_reveal(&parts, 4, &seed, &bad, None), Err(RevealError::Split { .. })));
        // Marking extra indices used without opening them is caught against the predecessor.
        let mut bad = r2.clone();
        let free = (0..20).find(|&i| !bit(&bad.parts[0].used, i)).unwrap();
        set_bit(&mut bad.parts[0].used, free);
        assert!(verify_reveal(&parts, 4, &seed, &bad, Some(r1)).is_err());
        let mut bad = r2.clone();
        bad.parts[1].used[0] |= 0x80; // index 7 of a 5-record part
        assert!(matches!(verify_reveal(&parts, 4, &seed, &bad, Some(r1)), Err(RevealError::BitBeyond { .. })));
        assert!(matches!(verify_reveal(&parts[..1], 4, &seed, r2, None), Err(RevealError::Parts { .. })));
        // Another pool (another key) commits differently: its reveal does not verify here.
        let other = run(&super::tests::pool(&[20, 5], 4), 4, 1);
        assert!(matches!(verify_reveal(&parts, 4, &[0u8; 32], &other[0], None), Err(RevealError::Proof { .. })));
        assert!(pool.matches(&parts));
        assert!(!super::tests::pool(&[20, 5], 4).matches(&parts));
    }

    // A part an extension adds for a slice is drawn from once the slice's first part runs short, starting with nothing revealed; the chain from the epoch before the extension verifies, and a reveal that drops the added part is refused.
    #[test]
    fn extension_parts_continue_a_slice() {
        let mut pool = pool(&[5], 2);
        let before_ext = pool.commitment();
        pool.parts.push(PoolPart {
            slice: "s0".into(),
            records: (0..10).map(|i| format!("{{\"x\":{i}}}").into_bytes()).collect(),
        });
        let parts = pool.commitment();
        assert_eq!(parts[0], before_ext[0], "adding a part leaves the earlier commitment as it was");
        let e1 = select(&[1; 32], &before_ext, &fresh(&before_ext), 4);
        let r1 = pool.reveal(&[], &fresh(&before_ext), &e1);
        assert_eq!(verify_reveal(&before_ext, 4, &[1; 32], &r1, None), Ok(()));
        let mut used: Vec<Vec<u8>> = r1.parts.iter().map(|p| p.used.clone()).collect();
        used.push(bitmap_empty(10));
        let e2 = select(&[2; 32], &parts, &used, 4);
        assert_eq!(
            (e2[0].len(), e2[1].len()),
            (1, 3),
            "the last record of the first part, then three of the added one"
        );
        let r2 = pool.reveal(&[], &used, &e2);
        assert_eq!(verify_reveal(&parts, 4, &[2; 32], &r2, Some(&r1)), Ok(()));
        assert_eq!(epochs_left(&parts, &r2.parts.iter().map(|p| p.used.clone()).collect::<Vec<_>>(), 4), 1);
        let mut dropped = r2.clone();
        dropped.parts.pop();
        assert!(matches!(verify_reveal(&parts, 4, &[2; 32], &dropped, Some(&r1)), Err(RevealError::Parts { .. })));
        assert!(matches!(
            verify_reveal(&before_ext, 4, &[3; 32], &r1, Some(&r2)),
            Err(RevealError::PartsShrank { .. })
        ));
    }

    // The pool's low-water figures: remaining records per part and whole epochs left.
    #[test]
    fn remaining_and_epochs_left() {
        let pool = pool(&[10, 30], 1);
        let parts = pool.commitment();
        let reveals = run(&pool, 4, 2);
        let used: Vec<Vec<u8>> = reveals[1].parts.iter().map(|p| p.used.clone()).collect();
        assert_eq!(remaining(&parts, &used), vec![2, 22]);
        assert_eq!(epochs_left(&parts, &used, 4), 0);
        assert_eq!(epochs_left(&parts, &fresh(&parts), 4), 2);
    }
}
