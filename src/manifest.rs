//! Datanet manifests: what a community agreed on — schema, admission rules, base model, training
//! recipe, evaluation suite commitment, committee, seed list and reward pool.
//!
//! A manifest is written by its founder as TOML ([`ManifestFile`]), checked by
//! [`ManifestFile::into_manifest`] (every error names its key), encoded canonically and signed.
//! The Datanet id is the BLAKE3 of the canonical manifest (tag included).

use crate::codec::{self, Canonical, Signed};
use crate::ids::{BlobHash, DatanetId, PeerKey};
use serde::{Deserialize, Serialize};

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

/// The wire protocol version this build speaks; a manifest naming another is refused.
pub const PROTOCOL_VERSION: u32 = 3;

/// Everything the committee's members must share to agree (DESIGN.md §3): a member with other
/// values would recompute other roots and refuse honest proposals, so these live in the signed
/// manifest, not in a peer's config. `[protocol]` in a manifest file; every key has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protocol {
    /// Wire protocol version ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// T: coalition jobs per epoch at least (the plan may size more, up to `jobs_max`).
    pub jobs: u32,
    pub jobs_max: u32,
    /// Reporters per job, at most (fewer when the committee is smaller); the default, 5, is
    /// 3 for committees of 3–4 members.
    pub replication: u32,
    /// First view's timeout of the freeze and score rounds; view v waits `× min(2^v, 8)`.
    pub view_timeout_ms: u64,
    /// From the input certificate to the commit deadline (training happens in here).
    pub commit_window_ms: u64,
    /// From the commit deadline to the score proposal.
    pub reveal_window_ms: u64,
    /// How often a member re-sends its current messages.
    pub rebroadcast_ms: u64,
    /// How far a member's clock may run ahead of the epoch schedule: epoch e opens at
    /// `genesis_ms + (e − 1) × epoch_length_secs × 1000 − clock_skew_ms` on its clock.
    pub clock_skew_ms: u64,
    /// Unit formation: records per unit k-means aims for, its band, the most units, iterations.
    pub unit_records_target: u32,
    pub unit_records_min: u32,
    pub unit_records_max: u32,
    pub unit_count_max: u32,
    pub kmeans_iterations: u32,
    /// The screen: K, evaluation points, label-agreement pool, largest excluded tail (ppm).
    pub screen_k: u32,
    pub screen_eval_max: u32,
    pub screen_pool_max: u32,
    pub screen_tail_max_ppm: u32,
    /// Largest part of the total positive value one unit may count for (ppm).
    pub unit_cap_ppm: u32,
    /// Standard errors (×1000) a unit's value must stand above to earn.
    pub noise_floor_milli: u32,
    /// Sealed records each epoch opens per slice ([`crate::sealed::select`]).
    pub sealed_split: u32,
    /// Warn (status, metrics) when the sealed pool has fewer epochs of full splits left than this.
    pub sealed_low_epochs: u32,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            version: PROTOCOL_VERSION,
            jobs: 32,
            jobs_max: 256,
            replication: 5,
            view_timeout_ms: 10_000,
            commit_window_ms: 60_000,
            reveal_window_ms: 10_000,
            rebroadcast_ms: 2_000,
            clock_skew_ms: 30_000,
            unit_records_target: 200,
            unit_records_min: 50,
            unit_records_max: 500,
            unit_count_max: 1000,
            kmeans_iterations: 10,
            screen_k: 10,
            screen_eval_max: 500,
            screen_pool_max: 500,
            screen_tail_max_ppm: 300_000,
            unit_cap_ppm: 500_000,
            noise_floor_milli: 3000,
            sealed_split: 16,
            sealed_low_epochs: 3,
        }
    }
}

impl Protocol {
    /// Checks the values, naming the bad key.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |k: &str, m: &str| Err(key_err(format!("protocol.{k}"), m));
        if self.version != PROTOCOL_VERSION {
            return bad("version", &format!("this build speaks protocol {PROTOCOL_VERSION}, not {}", self.version));
        }
        if self.jobs == 0 || self.jobs > self.jobs_max || self.jobs_max > 100_000 {
            return bad("jobs", "must be at least 1 and at most jobs_max (at most 100000)");
        }
        if self.replication == 0 || self.replication > 64 {
            return bad("replication", "must be between 1 and 64");
        }
        for (k, v) in [
            ("view_timeout_ms", self.view_timeout_ms),
            ("commit_window_ms", self.commit_window_ms),
            ("reveal_window_ms", self.reveal_window_ms),
            ("rebroadcast_ms", self.rebroadcast_ms),
        ] {
            if v == 0 || v > 86_400_000 {
                return bad(k, "must be between 1 and 86400000 (a day)");
            }
        }
        if self.sealed_split == 0 || self.sealed_split > crate::sealed::SPLIT_MAX {
            return bad("sealed_split", &format!("must be between 1 and {}", crate::sealed::SPLIT_MAX));
        }
        Ok(())
    }

    /// When epoch `epoch` (1, 2, …) opens on a member's clock (unix ms), the skew allowance taken.
    pub fn epoch_opens_ms(&self, genesis_ms: u64, epoch_length_secs: u64, epoch: u64) -> u64 {
        let start = genesis_ms.saturating_add(epoch.saturating_sub(1).saturating_mul(epoch_length_secs * 1000));
        start.saturating_sub(self.clock_skew_ms)
    }
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

/// Why a manifest file was refused; every variant names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("`{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_err(key: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError::Key { key: key.into(), message: message.into() }
}

/// `[task]` of a manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    pub kind: String,
    #[serde(default)]
    pub features: u32,
    #[serde(default)]
    pub classes: u32,
}

/// `[admission]` of a manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionFile {
    pub record_bytes_max: u32,
    pub contribution_bytes_max: u64,
    pub contribution_records_max: u32,
    /// Estimated Jaccard similarity in [0, 1].
    pub near_duplicate_threshold: f64,
    pub near_duplicate_digits: u32,
}

impl Default for AdmissionFile {
    fn default() -> Self {
        AdmissionFile {
            record_bytes_max: 16 * 1024,
            contribution_bytes_max: 256 * 1024 * 1024,
            contribution_records_max: 1_000_000,
            near_duplicate_threshold: 0.8,
            near_duplicate_digits: 3,
        }
    }
}

/// `[base_model]` of a manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModelFile {
    pub family: String,
    /// A generated base: preset name (`tiny`).
    #[serde(default)]
    pub preset: Option<String>,
    /// Real weights: BLAKE3 hash of the model folder (see `datanet model hash`).
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub seed: u64,
}

/// `[recipe]` of a manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeFile {
    pub lora_rank: u32,
    pub lora_alpha: u32,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub steps: u32,
    pub learning_rate: f64,
    pub batch: u32,
    pub sequence_length: u32,
    pub records_per_unit_max: u32,
    pub seed: u64,
}

impl Default for RecipeFile {
    fn default() -> Self {
        RecipeFile {
            lora_rank: 8,
            lora_alpha: 16,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            steps: 50,
            learning_rate: 0.001,
            batch: 8,
            sequence_length: 128,
            records_per_unit_max: 64,
            seed: 1,
        }
    }
}

/// One `[[eval.slices]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceFile {
    pub name: String,
    pub weight: f64,
}

/// `[eval]` of a manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalFile {
    /// Path of the public evaluation file, relative to the manifest file.
    pub public: String,
    /// Path of the sealed evaluation file (same format as the public one; committed to by the
    /// manifest, never published, revealed a split per epoch), if any.
    #[serde(default)]
    pub secret: Option<String>,
    pub slices: Vec<SliceFile>,
}

/// `[committee]` of a manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitteeFile {
    /// Hex public keys; `"self"` stands for the founder.
    pub members: Vec<String>,
    /// Optional explicit quorum; must be floor(2n/3)+1 ≤ quorum ≤ n.
    #[serde(default)]
    pub quorum: Option<usize>,
}

/// A manifest as its founder writes it (TOML); see `config/datanets/*.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub license: String,
    pub task: TaskFile,
    #[serde(default)]
    pub admission: AdmissionFile,
    pub base_model: BaseModelFile,
    #[serde(default)]
    pub recipe: RecipeFile,
    pub eval: EvalFile,
    pub committee: CommitteeFile,
    #[serde(default = "default_epoch_secs")]
    pub epoch_length_secs: u64,
    /// Start of epoch 1, unix ms; when absent, the moment the manifest is built.
    #[serde(default)]
    pub genesis_ms: Option<u64>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub seeds: Vec<String>,
    pub reward_pool: u64,
}

fn default_epoch_secs() -> u64 {
    3600
}

fn ppm(key: &str, x: f64, max: f64) -> Result<u32, ManifestError> {
    if !(0.0..=max).contains(&x) || !x.is_finite() {
        return Err(key_err(key, format!("must be between 0 and {max}, got {x}")));
    }
    Ok((x * 1_000_000.0).round() as u32)
}

/// The evaluation files a manifest refers to, read and ready to store as blobs.
#[derive(Debug, Clone)]
pub struct EvalBlobs {
    pub public: Vec<u8>,
    pub secret: Option<Vec<u8>>,
}

impl ManifestFile {
    /// Reads and parses a manifest file.
    pub fn read(path: &std::path::Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Read { path: path.display().to_string(), source })?;
        toml::from_str(&text)
            .map_err(|e| ManifestError::Toml { path: path.display().to_string(), message: e.to_string() })
    }

    /// Checks every key and builds the canonical manifest. `base_dir` resolves the evaluation
    /// file paths; `founder` replaces `"self"` in the committee; `check_seed` validates a seed
    /// multiaddr (the network layer's parser).
    pub fn into_manifest(
        self,
        base_dir: &std::path::Path,
        founder: PeerKey,
        check_seed: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(Manifest, EvalBlobs), ManifestError> {
        if self.name.trim().is_empty() {
            return Err(key_err("name", "must not be empty"));
        }
        if self.license.trim().is_empty() || self.license.contains(char::is_whitespace) {
            return Err(key_err("license", "must be an SPDX license id such as CC-BY-4.0"));
        }
        let task = match self.task.kind.as_str() {
            "text" => TaskKind::Text,
            "instruct" => TaskKind::Instruct,
            "tabular" => {
                if self.task.features == 0 {
                    return Err(key_err("task.features", "a tabular Datanet needs at least one feature"));
                }
                if self.task.classes < 2 {
                    return Err(key_err("task.classes", "a tabular Datanet needs at least two classes"));
                }
                TaskKind::Tabular { features: self.task.features, classes: self.task.classes }
            }
            other => {
                return Err(key_err(
                    "task.kind",
                    format!("unknown task kind `{other}` (expected text, instruct or tabular)"),
                ));
            }
        };
        let a = &self.admission;
        if a.record_bytes_max == 0 || a.record_bytes_max as usize >= CHUNK_BYTES_MAX {
            return Err(key_err("admission.record_bytes_max", "must be between 1 and 1 MiB − 1"));
        }
        if a.contribution_bytes_max < a.record_bytes_max as u64 {
            return Err(key_err("admission.contribution_bytes_max", "must be at least admission.record_bytes_max"));
        }
        if a.contribution_records_max == 0 {
            return Err(key_err("admission.contribution_records_max", "must be at least 1"));
        }
        if !(1..=17).contains(&a.near_duplicate_digits) {
            return Err(key_err("admission.near_duplicate_digits", "must be between 1 and 17"));
        }
        let admission = AdmissionRules {
            record_bytes_max: a.record_bytes_max,
            contribution_bytes_max: a.contribution_bytes_max,
            contribution_records_max: a.contribution_records_max,
            near_duplicate_threshold_ppm: ppm("admission.near_duplicate_threshold", a.near_duplicate_threshold, 1.0)?,
            near_duplicate_digits: a.near_duplicate_digits,
        };
        let b = &self.base_model;
        if !matches!(b.family.as_str(), "llama" | "mlp") {
            return Err(key_err("base_model.family", format!("unknown family `{}` (expected llama or mlp)", b.family)));
        }
        let base_model = match (&b.preset, &b.hash) {
            (Some(p), None) => {
                BaseModel { family: b.family.clone(), hash: BlobHash::default(), preset: p.clone(), seed: b.seed }
            }
            (None, Some(h)) => BaseModel {
                family: b.family.clone(),
                hash: h.parse().map_err(|e| key_err("base_model.hash", format!("{e}")))?,
                preset: String::new(),
                seed: b.seed,
            },
            _ => {
                return Err(key_err(
                    "base_model",
                    "set exactly one of `preset` (generated base) or `hash` (real weights)",
                ));
            }
        };
        let r = &self.recipe;
        if r.lora_rank == 0 {
            return Err(key_err("recipe.lora_rank", "must be at least 1"));
        }
        if r.target_modules.is_empty() {
            return Err(key_err("recipe.target_modules", "must name at least one layer"));
        }
        if r.steps == 0 || r.batch == 0 {
            return Err(key_err(if r.steps == 0 { "recipe.steps" } else { "recipe.batch" }, "must be at least 1"));
        }
        if r.records_per_unit_max == 0 {
            return Err(key_err("recipe.records_per_unit_max", "must be at least 1"));
        }
        let recipe = Recipe {
            lora_rank: r.lora_rank,
            lora_alpha: r.lora_alpha,
            lora_dropout_ppm: ppm("recipe.lora_dropout", r.lora_dropout, 1.0)?,
            target_modules: r.target_modules.clone(),
            steps: r.steps,
            learning_rate_ppm: ppm("recipe.learning_rate", r.learning_rate, 1.0)?,
            batch: r.batch,
            sequence_length: r.sequence_length,
            records_per_unit_max: r.records_per_unit_max,
            seed: r.seed,
        };
        // Evaluation suite.
        if self.eval.slices.is_empty() {
            return Err(key_err("eval.slices", "must list at least one slice"));
        }
        let total: f64 = self.eval.slices.iter().map(|s| s.weight).sum();
        if self.eval.slices.iter().any(|s| s.weight.is_nan() || s.weight <= 0.0 || !s.weight.is_finite())
            || total <= 0.0
        {
            return Err(key_err("eval.slices", "every slice weight must be a positive number"));
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.eval.slices {
            if !names.insert(s.name.clone()) {
                return Err(key_err("eval.slices", format!("slice `{}` listed twice", s.name)));
            }
        }
        let slices = self
            .eval
            .slices
            .iter()
            .map(|s| EvalSlice { name: s.name.clone(), weight_ppm: ((s.weight / total) * 1_000_000.0).round() as u32 })
            .collect();
        let read = |key: &str, p: &str| {
            std::fs::read(base_dir.join(p))
                .map_err(|e| key_err(key, format!("cannot read {}: {e}", base_dir.join(p).display())))
        };
        let public = read("eval.public", &self.eval.public)?;
        let secret = self.eval.secret.as_deref().map(|p| read("eval.secret", p)).transpose()?;
        let eval = EvalSuite {
            public_hash: BlobHash::of(&public),
            // Filled in by `admission::seal_pool` once the records can be canonicalized for the task.
            sealed: Vec::new(),
            slices,
        };
        // Committee.
        if self.committee.members.is_empty() {
            return Err(key_err("committee.members", "the committee must have at least one member"));
        }
        let mut members = Vec::new();
        for (i, m) in self.committee.members.iter().enumerate() {
            let k = if m == "self" {
                founder
            } else {
                m.parse().map_err(|e| key_err(format!("committee.members[{i}]"), format!("{e}")))?
            };
            if ed25519_dalek::VerifyingKey::from_bytes(k.as_bytes()).is_err() {
                return Err(key_err(format!("committee.members[{i}]"), "not a valid ed25519 public key"));
            }
            members.push(k);
        }
        members.sort();
        if members.windows(2).any(|w| w[0] == w[1]) {
            return Err(key_err("committee.members", "a member is listed twice"));
        }
        let n = members.len();
        if let Some(q) = self.committee.quorum {
            if q < quorum_for(n) || q > n {
                return Err(key_err(
                    "committee.quorum",
                    format!("quorum {q} is impossible for {n} members: it must be between {} and {n}", quorum_for(n)),
                ));
            }
        }
        if self.epoch_length_secs == 0 || self.epoch_length_secs > 366 * 86_400 {
            return Err(key_err("epoch_length_secs", "must be between 1 and 31622400 (a year)"));
        }
        self.protocol.validate()?;
        let genesis_ms = self.genesis_ms.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        });
        for (i, s) in self.seeds.iter().enumerate() {
            check_seed(s).map_err(|e| key_err(format!("seeds[{i}]"), e))?;
        }
        if self.reward_pool == 0 {
            return Err(key_err("reward_pool", "must be at least 1 credit unit"));
        }
        let manifest = Manifest {
            name: self.name.trim().to_string(),
            description: self.description,
            task,
            license: self.license,
            admission,
            base_model,
            recipe,
            eval,
            committee: Committee { members },
            epoch_length_secs: self.epoch_length_secs,
            genesis_ms,
            protocol: self.protocol,
            seeds: self.seeds,
            reward_pool: self.reward_pool,
            founder,
            version: 1,
        };
        Ok((manifest, EvalBlobs { public, secret }))
    }
}
