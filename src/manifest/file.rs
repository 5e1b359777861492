//! The manifest file a founder writes (TOML): its sections, and their checking into the canonical
//! [`Manifest`] (every error names its key).

use super::{
    AdmissionRules, BaseModel, CHUNK_BYTES_MAX, Committee, EvalSlice, EvalSuite, Manifest, Protocol, Recipe, TaskKind,
    quorum_for,
};
use crate::ids::{BlobHash, PeerKey};
use serde::Deserialize;

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

pub(super) fn key_err(key: impl Into<String>, message: impl Into<String>) -> ManifestError {
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
