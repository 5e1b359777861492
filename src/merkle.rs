//! Binary Merkle trees over 32-byte leaves, with inclusion proofs anyone can check offline.
//!
//! Used for a contribution's record hashes, an adapter's training records (lineage) and an
//! epoch's credit leaves. Leaves and inner nodes are hashed under different BLAKE3 contexts, so a
//! leaf can never pass for a node; an odd node at the end of a level is carried up unchanged.

use crate::codec::Canonical;
use crate::ids::MerkleRoot;
use serde::{Deserialize, Serialize};

const LEAF_CONTEXT: &str = "datanet/merkle/leaf/v1";
const NODE_CONTEXT: &str = "datanet/merkle/node/v1";
const ROOT_CONTEXT: &str = "datanet/merkle/root/v1";
/// Largest tree a proof may describe (2^32 leaves).
pub const MAX_DEPTH: usize = 32;

fn leaf_hash(leaf: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(LEAF_CONTEXT);
    h.update(leaf);
    *h.finalize().as_bytes()
}

fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(NODE_CONTEXT);
    h.update(l);
    h.update(r);
    *h.finalize().as_bytes()
}

/// The root commits to the tree size too, so a proof cannot claim another leaf count.
fn root_hash(leaf_count: u64, top: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    h.update(&leaf_count.to_le_bytes());
    h.update(top);
    *h.finalize().as_bytes()
}

/// The root over `leaves` in order; the empty tree has the all-zero root.
pub fn root(leaves: &[[u8; 32]]) -> MerkleRoot {
    if leaves.is_empty() {
        return MerkleRoot([0; 32]);
    }
    let mut level: Vec<[u8; 32]> = leaves.iter().map(leaf_hash).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] }).collect();
    }
    MerkleRoot(root_hash(leaves.len() as u64, &level[0]))
}

/// An inclusion proof: the leaf, its index, the tree size and the sibling path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub leaf: [u8; 32],
    pub index: u64,
    pub leaf_count: u64,
    pub siblings: Vec<[u8; 32]>,
}

impl Canonical for Proof {
    const TAG: &'static [u8] = b"datanet/merkle-proof/v1";
    const MAX_BYTES: usize = 32 + 10 + 10 + 1 + MAX_DEPTH * 32;
}

/// Why a proof does not check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("index {index} outside a tree of {leaf_count} leaves")]
    IndexOutOfRange { index: u64, leaf_count: u64 },
    #[error("proof has {got} siblings, a tree of {leaf_count} leaves needs {want} at index {index}")]
    WrongLength { got: usize, want: usize, index: u64, leaf_count: u64 },
    #[error("proof leads to root {got}, expected {expected}")]
    RootMismatch { got: String, expected: String },
}

/// Builds the proof for leaf `index`; `None` when out of range.
pub fn prove(leaves: &[[u8; 32]], index: usize) -> Option<Proof> {
    if index >= leaves.len() {
        return None;
    }
    let mut level: Vec<[u8; 32]> = leaves.iter().map(leaf_hash).collect();
    let mut i = index;
    let mut siblings = Vec::new();
    while level.len() > 1 {
        let sib = i ^ 1;
        if sib < level.len() {
            siblings.push(level[sib]);
        }
        level = level.chunks(2).map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] }).collect();
        i /= 2;
    }
    Some(Proof { leaf: leaves[index], index: index as u64, leaf_count: leaves.len() as u64, siblings })
}

impl Proof {
    /// The root this proof leads to, checking that its shape fits the tree size.
    pub fn computed_root(&self) -> Result<MerkleRoot, ProofError> {
        let (index, leaf_count) = (self.index, self.leaf_count);
        if index >= leaf_count {
            return Err(ProofError::IndexOutOfRange { index, leaf_count });
        }
        let mut acc = leaf_hash(&self.leaf);
        let (mut i, mut n) = (index, leaf_count);
        let mut used = 0usize;
        let mut want = 0usize;
        while n > 1 {
            let sib = i ^ 1;
            if sib < n {
                want += 1;
                if let Some(s) = self.siblings.get(used) {
                    acc = if i % 2 == 0 { node_hash(&acc, s) } else { node_hash(s, &acc) };
                }
                used += 1;
            }
            i /= 2;
            n = n.div_ceil(2);
        }
        if want != self.siblings.len() {
            return Err(ProofError::WrongLength { got: self.siblings.len(), want, index, leaf_count });
        }
        Ok(MerkleRoot(root_hash(leaf_count, &acc)))
    }

    /// Checks the proof against `expected`.
    pub fn verify(&self, expected: &MerkleRoot) -> Result<(), ProofError> {
        let got = self.computed_root()?;
        if &got != expected {
            return Err(ProofError::RootMismatch { got: got.to_hex(), expected: expected.to_hex() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| *blake3::hash(&(i as u64).to_le_bytes()).as_bytes()).collect()
    }

    proptest! {
        // Every leaf of every tree size up to 70 has a proof that verifies against the root.
        #[test]
        fn every_leaf_proves(n in 1usize..70, pick in any::<usize>()) {
            let l = leaves(n);
            let r = root(&l);
            let p = prove(&l, pick % n).unwrap();
            prop_assert!(p.verify(&r).is_ok());
            let back: Proof = decode(&encode(&p)).unwrap();
            prop_assert_eq!(back, p);
        }

        // Any single bit flipped in an encoded proof makes it fail to decode or to verify.
        #[test]
        fn bit_flip_fails(n in 2usize..40, pick in any::<usize>(), bit in any::<usize>()) {
            let l = leaves(n);
            let r = root(&l);
            let mut bytes = encode(&prove(&l, pick % n).unwrap());
            let i = bit % (bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            let ok = decode::<Proof>(&bytes).map(|p| p.verify(&r).is_ok()).unwrap_or(false);
            prop_assert!(!ok);
        }
    }

    // A leaf cannot pose as an inner node (second-preimage guard).
    #[test]
    fn leaf_and_node_domains_differ() {
        let l = leaves(2);
        let fake =
            Proof { leaf: node_hash(&leaf_hash(&l[0]), &leaf_hash(&l[1])), index: 0, leaf_count: 1, siblings: vec![] };
        assert!(fake.verify(&root(&l)).is_err());
    }
}
