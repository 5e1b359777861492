//! Datanet manifests: what a community agreed on — schema, admission rules, base model, training
//! recipe, evaluation suite commitment, committee, seed list and reward pool.
//!
//! A manifest is written by its founder as TOML ([`ManifestFile`]), checked by
//! [`ManifestFile::into_manifest`] (every error names its key), encoded canonically and signed.
//! The Datanet id is the BLAKE3 of the canonical manifest (tag included).
//!
//! This file holds the canonical types; `file` the founder's TOML and its checking, `protocol` the
//! parameters every member must share.

use crate::codec::{self, Canonical, Signed};
use crate::ids::{BlobHash, DatanetId, PeerKey};
use serde::{Deserialize, Serialize};

mod file;
mod protocol;

pub use file::{
    AdmissionFile, BaseModelFile, CommitteeFile, EvalBlobs, EvalFile, ManifestError, ManifestFile, RecipeFile,
    SliceFile, TaskFile,
};
pub use protocol::{PROTOCOL_VERSION, Protocol};

/// What one record of the Datanet looks like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// `{"text": …}`
    Text,
    /// `{"prompt": …, "completion": …}`
    Instruct,
    /// `{"features": [n numbers], "label": 0..classes}`; CSV rows are `f1,…,fn,label`.
    Tabular { features: u32, classes: u32 },
}

impl TaskKind {
    /// The record fields every record must have, and no others.
    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            TaskKind::Text => &["text"],
            TaskKind::Instruct => &["completion", "prompt"],
            TaskKind::Tabular { .. } => &["features", "label"],
        }
    }
    /// `text`, `instruct` or `tabular`.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Text => "text",
            TaskKind::Instruct => "instruct",
            TaskKind::Tabular { .. } => "tabular",
        }
    }
}

/// Largest chunk of canonical JSONL (DESIGN.md §4: ≤ 1 MiB), fixed for every Datanet: a manifest's
/// `record_bytes_max` stays below it, so a record always fits one chunk ([`crate::records::pack`]).
pub const CHUNK_BYTES_MAX: usize = 1 << 20;

/// Limits and thresholds applied at admission (DESIGN.md §4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionRules {
    pub record_bytes_max: u32,
    pub contribution_bytes_max: u64,
    pub contribution_records_max: u32,
    /// Estimated Jaccard similarity (MinHash, text) at or above which a record is a near-duplicate,
    /// in parts per million.
    pub near_duplicate_threshold_ppm: u32,
    /// Significant digits each tabular feature is quantized to before near-duplicate matching.
    pub near_duplicate_digits: u32,
}

/// The frozen base model adapters are trained on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModel {
    /// `llama` or `mlp`.
    pub family: String,
    /// BLAKE3 over the model folder's files (see `trainer`), or all zero for "initialize from
    /// `preset` and `seed`".
    pub hash: BlobHash,
    /// Preset name for a generated base (`tiny`, …), empty when `hash` names real weights.
    pub preset: String,
    /// Seed of a generated base.
    pub seed: u64,
}

/// The LoRA training recipe every job uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub lora_rank: u32,
    pub lora_alpha: u32,
    /// Dropout in parts per million.
    pub lora_dropout_ppm: u32,
    /// Linear layers to wrap: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj` (llama) or `hidden` (mlp); `all` for every linear layer.
    pub target_modules: Vec<String>,
    pub steps: u32,
    /// Learning rate in parts per million.
    pub learning_rate_ppm: u32,
    pub batch: u32,
    pub sequence_length: u32,
    /// Records per unit a coalition job trains on at most (volume beyond it is worthless).
    pub records_per_unit_max: u32,
    /// Seed rule: the training seed is BLAKE3(`seed_salt` ‖ job) truncated; here the salt.
    pub seed: u64,
}

/// One evaluation slice and its weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSlice {
    pub name: String,
    /// Weight in parts per million of the total.
    pub weight_ppm: u32,
}

/// The evaluation suite: public part by hash, sealed pool by commitment, slice weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSuite {
    /// BLAKE3 of the public evaluation file (records with an extra `slice` field).
    pub public_hash: BlobHash,
    /// The sealed evaluation pool's commitment, one part per slice that has sealed records
    /// ([`crate::sealed`]): utilities are measured on a per-epoch split of it, revealed in the
    /// attestation. Empty when the Datanet has no sealed pool (utilities use the public file).
    pub sealed: Vec<crate::sealed::SealedPart>,
    pub slices: Vec<EvalSlice>,
}

/// The committee that measures and certifies each epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committee {
    /// Member public keys in canonical (sorted) order.
    pub members: Vec<PeerKey>,
}

impl Committee {
    /// floor(2n/3) + 1 signatures.
    pub fn quorum(&self) -> usize {
        quorum_for(self.members.len())
    }
    /// The position of `key`, if it is a member.
    pub fn index_of(&self, key: &PeerKey) -> Option<usize> {
        self.members.iter().position(|m| m == key)
    }
}

/// floor(2n/3) + 1: the smallest number of votes two of which must share an honest member.
pub fn quorum_for(n: usize) -> usize {
    2 * n / 3 + 1
}

/// A Datanet manifest (DESIGN.md §3), canonical and signed by its founder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    pub task: TaskKind,
    /// SPDX license id of the contributed data.
    pub license: String,
    pub admission: AdmissionRules,
    pub base_model: BaseModel,
    pub recipe: Recipe,
    pub eval: EvalSuite,
    pub committee: Committee,
    pub epoch_length_secs: u64,
    /// Start of epoch 1 (unix milliseconds); epoch e covers
    /// `[genesis + (e − 1) × length, genesis + e × length)`.
    pub genesis_ms: u64,
    /// The parameters every member must share.
    pub protocol: Protocol,
    /// libp2p multiaddrs ending in `/p2p/<peer id>`.
    pub seeds: Vec<String>,
    /// Integer credit units paid out per epoch.
    pub reward_pool: u64,
    /// Founder's public key (the signer of this manifest).
    pub founder: PeerKey,
    /// Version, raised by reconfiguration.
    pub version: u32,
}

impl Canonical for Manifest {
    const TAG: &'static [u8] = b"datanet/manifest/v3";
    const MAX_BYTES: usize = 64 * 1024;
}

/// A founder-signed manifest.
pub type SignedManifest = Signed<Manifest>;

impl Manifest {
    /// The Datanet id: BLAKE3 of the canonical manifest.
    pub fn id(&self) -> DatanetId {
        codec::hash(self).into()
    }

    /// The window epoch `epoch` covers, unix ms `[start, end)`.
    pub fn epoch_window_ms(&self, epoch: u64) -> (u64, u64) {
        let len = self.epoch_length_secs.saturating_mul(1000);
        let start = self.genesis_ms.saturating_add(epoch.saturating_sub(1).saturating_mul(len));
        (start, start.saturating_add(len))
    }

    /// When epoch `epoch` may start on a member's clock (its window's start less the skew).
    pub fn epoch_opens_ms(&self, epoch: u64) -> u64 {
        self.protocol.epoch_opens_ms(self.genesis_ms, self.epoch_length_secs, epoch)
    }

    /// Checks a sealed-pool extension: signed by this Datanet's founder, for this Datanet, adding
    /// parts of declared slices (each 1 ..= `PART_RECORDS_MAX` records), from epoch 1 on at least.
    pub fn check_extension(&self, ext: &crate::sealed::SignedExtension) -> Result<(), String> {
        if self.eval.sealed.is_empty() {
            return Err(format!("datanet {} has no sealed pool to extend", self.name));
        }
        if ext.signer != self.founder || ext.verify_by(&self.founder).is_err() {
            return Err(format!("not signed by datanet {}'s founder {}", self.name, self.founder.short()));
        }
        if ext.body.datanet != self.id() {
            return Err(format!("for datanet {}, not {}", ext.body.datanet.short(), self.id().short()));
        }
        if ext.body.from_epoch == 0 || ext.body.parts.is_empty() {
            return Err("needs a first epoch of at least 1 and at least one part".into());
        }
        for p in &ext.body.parts {
            if !self.eval.slices.iter().any(|s| s.name == p.slice) {
                return Err(format!("slice `{}` is not one of the manifest's eval.slices", p.slice));
            }
            if p.count == 0 || p.count > crate::sealed::PART_RECORDS_MAX {
                return Err(format!("slice `{}`: {} records", p.slice, p.count));
            }
        }
        Ok(())
    }

    /// The sealed parts epoch `epoch` draws from: the manifest's, then those of the extensions in
    /// effect (`extensions` must be exactly [`crate::sealed::in_effect`] of what is known, each
    /// valid), and at most `PARTS_MAX` in all.
    pub fn sealed_parts(
        &self,
        extensions: &[crate::sealed::SignedExtension],
        epoch: u64,
    ) -> Result<Vec<crate::sealed::SealedPart>, String> {
        for e in extensions {
            self.check_extension(e)?;
        }
        if crate::sealed::in_effect(extensions, epoch) != extensions || extensions.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!("extensions not in effect at epoch {epoch}, repeated or out of order"));
        }
        let parts = crate::sealed::parts_with(&self.eval.sealed, extensions);
        if parts.len() > crate::sealed::PARTS_MAX {
            return Err(format!("{} sealed parts, over {}", parts.len(), crate::sealed::PARTS_MAX));
        }
        Ok(parts)
    }
}
