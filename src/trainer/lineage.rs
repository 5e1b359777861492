//! Lineage: what an adapter was trained on, signed by the training peer (DESIGN.md §6).
//!
//! A [`Lineage`] names the adapter files, the base, the Datanet, the recipe and seed, the crate
//! version, the evaluation metrics, and the Merkle root of the training records' hashes **in
//! training order** (first use). The ordered hashes themselves travel as a [`RecordList`] blob so a
//! peer holding it can prove any record's inclusion; a [`LineageProof`] (signed lineage + Merkle
//! path) is self-contained and checks offline on any machine. Pure codec: no tch, no I/O.

use crate::codec::{self, Canonical, Signed, VerifyError};
use crate::ids::{BlobHash, DatanetId, MerkleRoot, PeerKey, RecordHash};
use crate::manifest::Recipe;
use crate::merkle::{self, Proof, ProofError};
use serde::{Deserialize, Serialize};

/// One evaluation slice's result in fixed point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageMetric {
    pub slice: String,
    pub weight_ppm: u32,
    /// Mean cross-entropy in micro-nats.
    pub loss_micro: i64,
    /// Accuracy in parts per million.
    pub accuracy_ppm: u32,
    /// Targets counted (tokens or rows).
    pub count: u64,
}

/// The signed body of a lineage manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// BLAKE3 of `adapter_model.safetensors`: the adapter's id.
    pub adapter: BlobHash,
    /// BLAKE3 of `adapter_config.json`.
    pub adapter_config: BlobHash,
    /// BLAKE3 over the base model folder (`trainer::model::folder_hash`).
    pub base_model: BlobHash,
    pub datanet: DatanetId,
    /// Merkle root over the training records' hashes in training order.
    pub records_root: MerkleRoot,
    pub record_count: u64,
    /// BLAKE3 of the [`RecordList`] blob holding those hashes.
    pub records_blob: BlobHash,
    /// [`recipe_hash`] of the recipe trained with.
    pub recipe_hash: [u8; 32],
    pub seed: u64,
    pub steps: u32,
    pub crate_version: String,
    pub metrics: Vec<LineageMetric>,
    pub weighted_loss_micro: i64,
    pub weighted_accuracy_ppm: u32,
}

impl Canonical for Lineage {
    const TAG: &'static [u8] = b"datanet/lineage/v1";
    const MAX_BYTES: usize = 64 * 1024;
}

/// A lineage manifest signed by the peer that trained the adapter.
pub type SignedLineage = Signed<Lineage>;

/// The training records' hashes in training order (a blob next to the adapter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordList {
    pub hashes: Vec<RecordHash>,
}

impl Canonical for RecordList {
    const TAG: &'static [u8] = b"datanet/lineage-records/v1";
    const MAX_BYTES: usize = 64 * 1024 * 1024;
}

impl RecordList {
    /// The Merkle root over the hashes.
    pub fn root(&self) -> MerkleRoot {
        merkle::root(&self.leaves())
    }
    fn leaves(&self) -> Vec<[u8; 32]> {
        self.hashes.iter().map(|h| h.0).collect()
    }
    /// The inclusion proof of `record`, if it was trained on.
    pub fn prove(&self, record: &RecordHash) -> Option<Proof> {
        let i = self.hashes.iter().position(|h| h == record)?;
        merkle::prove(&self.leaves(), i)
    }
}

/// A self-contained inclusion proof: "this adapter's signed lineage includes this record".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageProof {
    pub lineage: SignedLineage,
    pub proof: Proof,
}

impl Canonical for LineageProof {
    const TAG: &'static [u8] = b"datanet/lineage-proof/v1";
    const MAX_BYTES: usize = Lineage::MAX_BYTES + 32 + 64 + 8 + Proof::MAX_BYTES + 16;
}

/// Why a lineage proof does not check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyLineageError {
    #[error("lineage signature: {0}")]
    Signature(#[from] VerifyError),
    #[error("merkle path: {0}")]
    Path(#[from] ProofError),
    #[error("proof is for a tree of {proof} leaves, the lineage records {lineage}")]
    LeafCount { proof: u64, lineage: u64 },
    #[error("signed by {got}, expected {expected}")]
    WrongSigner { got: String, expected: String },
}

impl LineageProof {
    /// Checks the signature and the Merkle path; returns the proven record and the adapter.
    pub fn verify(&self) -> Result<(RecordHash, BlobHash), VerifyLineageError> {
        self.lineage.verify()?;
        let body = &self.lineage.body;
        if self.proof.leaf_count != body.record_count {
            return Err(VerifyLineageError::LeafCount { proof: self.proof.leaf_count, lineage: body.record_count });
        }
        self.proof.verify(&body.records_root)?;
        Ok((RecordHash(self.proof.leaf), body.adapter))
    }

    /// [`LineageProof::verify`] and that `trainer` signed the lineage.
    pub fn verify_by(&self, trainer: &PeerKey) -> Result<(RecordHash, BlobHash), VerifyLineageError> {
        if &self.lineage.signer != trainer {
            return Err(VerifyLineageError::WrongSigner {
                got: self.lineage.signer.short(),
                expected: trainer.short(),
            });
        }
        self.verify()
    }

    /// Hex of the canonical bytes (what `datanet lineage prove` prints).
    pub fn to_hex(&self) -> String {
        hex::encode(codec::encode(self))
    }

    /// Parses [`LineageProof::to_hex`] output (size limit checked first).
    pub fn from_hex(s: &str) -> Result<Self, VerifyLineageError> {
        let bytes = hex::decode(s.trim()).map_err(|e| {
            VerifyError::Decode(codec::DecodeError::Malformed { what: "LineageProof", reason: e.to_string() })
        })?;
        codec::decode(&bytes).map_err(|e| VerifyLineageError::Signature(VerifyError::Decode(e)))
    }
}

/// BLAKE3 of the recipe's canonical (postcard) encoding under its own context.
pub fn recipe_hash(recipe: &Recipe) -> [u8; 32] {
    let bytes = postcard::to_stdvec(recipe).expect("postcard encoding of an in-memory recipe");
    let mut h = blake3::Hasher::new_derive_key("datanet/recipe/v1");
    h.update(&bytes);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn lineage(list: &RecordList) -> Lineage {
        Lineage {
            adapter: BlobHash([1; 32]),
            adapter_config: BlobHash([2; 32]),
            base_model: BlobHash([3; 32]),
            datanet: DatanetId([4; 32]),
            records_root: list.root(),
            record_count: list.hashes.len() as u64,
            records_blob: BlobHash::of(&codec::encode(list)),
            recipe_hash: [5; 32],
            seed: 9,
            steps: 10,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            metrics: vec![],
            weighted_loss_micro: 1,
            weighted_accuracy_ppm: 2,
        }
    }

    // A proof printed as hex verifies after parsing (as on another machine); a tampered one does not.
    #[test]
    fn proof_round_trip_and_tamper() {
        let list = RecordList { hashes: (0u8..7).map(|i| RecordHash([i; 32])).collect() };
        let key = SigningKey::from_bytes(&[7; 32]);
        let signed = Signed::sign(lineage(&list), &key);
        let proof = LineageProof { lineage: signed, proof: list.prove(&RecordHash([3; 32])).unwrap() };
        let parsed = LineageProof::from_hex(&proof.to_hex()).unwrap();
        assert_eq!(parsed.verify().unwrap().0, RecordHash([3; 32]));
        let mut bad = parsed.clone();
        bad.proof.leaf = [9; 32];
        assert!(bad.verify().is_err());
        let mut bad = parsed;
        bad.lineage.body.seed += 1;
        assert!(matches!(bad.verify(), Err(VerifyLineageError::Signature(_))));
        assert!(list.prove(&RecordHash([99; 32])).is_none());
    }
}
