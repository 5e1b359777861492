//! The scenario file: its keys and their defaults, validation against the data set, and each
//! scenario's metric and target.

use super::data::{Dataset, generated_corpus};
use crate::attribution::EpochParams;
use serde::Deserialize;
use std::path::Path;

/// A scenario file. Unknown keys are refused; `validate` names impossible sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// S1, S2, S3, S4, S5, S6, S8, S9, S11, S12, S13 or S14.
    pub scenario: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "d_seeds")]
    pub seeds: u32,
    #[serde(default = "d_jobs")]
    pub jobs: u32,
    #[serde(default = "d_contributors")]
    pub contributors: u32,
    #[serde(default = "d_per")]
    pub records_per_contributor: u32,
    #[serde(default = "d_eval")]
    pub eval_records: u32,
    #[serde(default = "d_base")]
    pub base_records: u32,
    #[serde(default = "d_target")]
    pub unit_records_target: u32,
    #[serde(default = "d_min")]
    pub unit_records_min: u32,
    #[serde(default = "d_max")]
    pub unit_records_max: u32,
    /// Most units an epoch may form (S1 keeps M ≤ 10 so every coalition can be trained).
    #[serde(default = "d_unit_count")]
    pub unit_count_max: u32,
    #[serde(default = "d_rpu")]
    pub records_per_unit_max: u32,
    #[serde(default = "d_steps")]
    pub steps: u32,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_batch")]
    pub batch: u32,
    #[serde(default = "d_rank")]
    pub lora_rank: u32,
    #[serde(default = "d_base_steps")]
    pub base_steps: u32,
    #[serde(default = "d_cap")]
    pub unit_cap: f64,
    #[serde(default = "d_digits")]
    pub near_duplicate_digits: u32,
    /// Standard errors subtracted from each unit's φ before credit (the product default is 3).
    #[serde(default = "d_noise")]
    pub noise_floor: f64,
    /// S3: total copies of the manipulator's data (×2 … ×10).
    #[serde(default)]
    pub copies: Vec<u32>,
    /// S4: relative jitter of near-duplicate copies.
    #[serde(default)]
    pub jitter: f64,
    /// S5: identities to split into.
    #[serde(default)]
    pub sybil: Vec<u32>,
    /// S1/S6: fraction of labels flipped.
    #[serde(default)]
    pub flip_rate: f64,
    /// S8: crafted outlier records added by the manipulator.
    #[serde(default)]
    pub outliers: u32,
    /// S9: fraction of A's records that B also holds.
    #[serde(default)]
    pub overlap: f64,
    /// S2: curated records from the critical classes, redundant records from the common ones.
    #[serde(default)]
    pub curated: u32,
    #[serde(default)]
    pub redundant: u32,
    #[serde(default)]
    pub critical_classes: Vec<u32>,
    #[serde(default)]
    pub critical_weight: f64,
    /// S12: epoch seeds the unchanged inputs are measured under.
    #[serde(default = "d_epoch_seeds")]
    pub epoch_seeds: u32,
    /// S12: identities copying the volume contributor's records (a later priority; default 2).
    #[serde(default = "d_copiers")]
    pub copiers: u32,
    /// S14: junk contributions (fresh identities) witnessed after the honest ones; the freeze is
    /// computed over all of them, the junk it lets in is admitted and measured.
    #[serde(default)]
    pub flood: u32,
    /// S14: records per junk contribution, at most (each draws 1 to this many).
    #[serde(default = "d_junk_records")]
    pub junk_records: u32,
    /// S15: sealed pool records per slice, and records per slice each epoch's split opens.
    #[serde(default = "d_sealed_records")]
    pub sealed_records: u32,
    #[serde(default = "d_sealed_split")]
    pub sealed_split: u32,
    /// S11: committee size and replication of each job (S14: the committee that freezes).
    #[serde(default = "d_committee")]
    pub committee: u32,
    #[serde(default = "d_replication")]
    pub replication: u32,
    /// Contributors hold different regions of the data (sorted by the first feature) instead of
    /// random slices, so each has units of its own (always so for S1).
    #[serde(default)]
    pub regions: bool,
    /// Override the scenario's default target.
    #[serde(default)]
    pub target: Option<f64>,
    /// Text S2 without `--data`: the built-in corpus (`instruct`: the testnet's color questions as
    /// the common slice, negating integers as the critical slice; see [`generated_corpus`]).
    #[serde(default)]
    pub generator: Option<String>,
    /// Text: decoder layers and width of the base (a small llama with a byte tokenizer, 4 heads).
    #[serde(default = "d_layers")]
    pub model_layers: u32,
    #[serde(default = "d_hidden")]
    pub model_hidden: u32,
    /// Learning rate of base pretraining (default: `learning_rate`).
    #[serde(default)]
    pub base_learning_rate: Option<f64>,
    /// Text: input tokens per training sequence at most.
    #[serde(default = "d_seq")]
    pub sequence_length: u32,
    /// LoRA target modules (default: `all` for the mlp, the attention projections for the decoder).
    #[serde(default)]
    pub target_modules: Vec<String>,
}

fn d_layers() -> u32 {
    2
}
fn d_hidden() -> u32 {
    64
}
fn d_seq() -> u32 {
    48
}

fn d_seeds() -> u32 {
    5
}
fn d_jobs() -> u32 {
    64
}
fn d_contributors() -> u32 {
    4
}
fn d_per() -> u32 {
    80
}
fn d_eval() -> u32 {
    120
}
fn d_base() -> u32 {
    60
}
fn d_target() -> u32 {
    40
}
fn d_min() -> u32 {
    20
}
fn d_max() -> u32 {
    80
}
fn d_unit_count() -> u32 {
    1000
}
fn d_rpu() -> u32 {
    32
}
fn d_steps() -> u32 {
    40
}
fn d_lr() -> f64 {
    0.01
}
fn d_batch() -> u32 {
    32
}
fn d_rank() -> u32 {
    4
}
fn d_base_steps() -> u32 {
    150
}
fn d_cap() -> f64 {
    0.5
}
fn d_noise() -> f64 {
    3.0
}
fn d_digits() -> u32 {
    2
}
fn d_epoch_seeds() -> u32 {
    20
}
fn d_copiers() -> u32 {
    2
}
fn d_junk_records() -> u32 {
    3
}
fn d_sealed_records() -> u32 {
    100
}
fn d_sealed_split() -> u32 {
    8
}
fn d_committee() -> u32 {
    5
}
fn d_replication() -> u32 {
    3
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("{path}: key `{key}`: {reason}")]
    Key { path: String, key: &'static str, reason: String },
}

impl Scenario {
    /// Reads and parses a scenario file (unknown keys are errors naming line and key).
    pub fn read(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|e| ScenarioError::Toml { path: shown, message: e.to_string() })
    }

    /// Checks the scenario against the data set, naming the key that cannot hold.
    pub fn validate(&self, path: &Path, data: &Dataset) -> Result<(), ScenarioError> {
        let bad = |key: &'static str, reason: String| {
            Err(ScenarioError::Key { path: path.display().to_string(), key, reason })
        };
        if !["S1", "S2", "S3", "S4", "S5", "S6", "S8", "S9", "S11", "S12", "S13", "S14", "S15"]
            .contains(&self.scenario.as_str())
        {
            return bad(
                "scenario",
                format!(
                    "unknown scenario `{}` (S1, S2, S3, S4, S5, S6, S8, S9, S11, S12, S13, S14, S15)",
                    self.scenario
                ),
            );
        }
        if self.scenario == "S15" && self.generator.as_deref() != Some("instruct") {
            return bad(
                "generator",
                "S15 draws its sealed pool from the built-in corpus: set generator = \"instruct\"".into(),
            );
        }
        if self.scenario == "S15" && !(1..=crate::sealed::SPLIT_MAX).contains(&self.sealed_split) {
            return bad("sealed_split", format!("must be between 1 and {}", crate::sealed::SPLIT_MAX));
        }
        if self.scenario == "S15" && self.sealed_records < self.sealed_split {
            return bad("sealed_records", "S15 needs at least sealed_split sealed records per slice".into());
        }
        if self.scenario == "S14" && !(1..=1_000_000).contains(&self.flood) {
            return bad("flood", "S14 needs between 1 and 1000000 junk contributions".into());
        }
        if self.scenario == "S14" && !(1..=100).contains(&self.junk_records) {
            return bad("junk_records", "must be between 1 and 100".into());
        }
        if self.scenario == "S14" && !(4..=100).contains(&self.committee) {
            return bad("committee", "S14 needs a committee of 4 to 100 (at least one colluding member)".into());
        }
        if self.scenario == "S12" && !(2..=100).contains(&self.epoch_seeds) {
            return bad("epoch_seeds", "S12 needs between 2 and 100 epoch seeds".into());
        }
        if self.seeds == 0 || self.seeds > 100 {
            return bad("seeds", "must be between 1 and 100".into());
        }
        if self.jobs < 2 || self.jobs > 100_000 {
            return bad("jobs", "must be between 2 and 100000".into());
        }
        if self.contributors < 2 {
            return bad("contributors", "needs at least 2 contributors".into());
        }
        if self.eval_records == 0 {
            return bad("eval_records", "must be at least 1".into());
        }
        if !(self.unit_records_min..=self.unit_records_max).contains(&self.unit_records_target)
            || self.unit_records_min == 0
        {
            return bad("unit_records_target", "must lie between unit_records_min (≥ 1) and unit_records_max".into());
        }
        if !(0.0..=1.0).contains(&self.flip_rate)
            || !(0.0..=1.0).contains(&self.overlap)
            || !(0.0..1.0).contains(&self.jitter)
        {
            return bad("flip_rate", "flip_rate and overlap must be in [0, 1], jitter in [0, 1)".into());
        }
        if self.unit_count_max == 0 || self.unit_count_max > 100_000 {
            return bad("unit_count_max", "must be between 1 and 100000".into());
        }
        if self.scenario == "S1" && self.unit_count_max > 10 {
            return bad("unit_count_max", "S1 trains all 2^M coalitions: at most 10 units".into());
        }
        if self.scenario == "S1" && self.jobs >= 1 << self.unit_count_max {
            return bad("jobs", "S1 needs fewer jobs than the 2^unit_count_max coalitions it compares with".into());
        }
        if !(0.0..=10.0).contains(&self.noise_floor) {
            return bad("noise_floor", "must be between 0 and 10 standard errors".into());
        }
        if !(0.0..=1.0).contains(&self.unit_cap) || self.unit_cap == 0.0 {
            return bad("unit_cap", "must be in (0, 1]".into());
        }
        if !(1..=8).contains(&self.model_layers) {
            return bad("model_layers", "must be between 1 and 8".into());
        }
        if !(8..=512).contains(&self.model_hidden) || self.model_hidden % 4 != 0 {
            return bad("model_hidden", "must be a multiple of 4 between 8 and 512".into());
        }
        if !(4..=1024).contains(&self.sequence_length) {
            return bad("sequence_length", "must be between 4 and 1024".into());
        }
        if self.base_learning_rate.is_some_and(|lr| !(lr > 0.0 && lr <= 1.0)) {
            return bad("base_learning_rate", "must be in (0, 1]".into());
        }
        if let Some(g) = &self.generator
            && g != "instruct"
        {
            return bad("generator", format!("unknown generator `{g}` (instruct)"));
        }
        if matches!(data, Dataset::Text { .. }) && !self.curated_vs_volume() {
            return bad("scenario", format!("{} runs on tabular data; text data runs S2", self.scenario));
        }
        let n = data.len() as u64;
        let need = self.eval_records as u64
            + self.base_records as u64
            + self.contributors as u64 * self.records_per_contributor as u64;
        if !self.curated_vs_volume() && need > n {
            return bad(
                "records_per_contributor",
                format!(
                    "eval_records + base_records + contributors × records_per_contributor = {need} exceeds the {n} records of the data"
                ),
            );
        }
        match if self.curated_vs_volume() { "S2" } else { self.scenario.as_str() } {
            "S3" if self.copies.is_empty() || self.copies.iter().any(|&k| !(2..=100).contains(&k)) => {
                bad("copies", "list copy counts between 2 and 100, e.g. [2, 5, 10]".into())
            }
            "S4" if self.jitter <= 0.0 => bad("jitter", "S4 needs a positive relative jitter".into()),
            "S5" if self.sybil.is_empty() || self.sybil.iter().any(|&k| !(2..=200).contains(&k)) => {
                bad("sybil", "list identity counts between 2 and 200, e.g. [2, 4, 8, 16]".into())
            }
            "S5" if self.sybil.iter().any(|&k| k > self.records_per_contributor) => {
                bad("sybil", "cannot split into more identities than the manipulator has records".into())
            }
            "S6" if self.flip_rate <= 0.0 => bad("flip_rate", "S6 needs a positive flip rate".into()),
            "S8" if self.outliers == 0 => bad("outliers", "S8 needs at least one crafted outlier".into()),
            "S9" if self.overlap <= 0.0 || self.overlap >= 1.0 => {
                bad("overlap", "S9 needs an overlap strictly between 0 and 1".into())
            }
            "S2" if !(0.0..1.0).contains(&self.critical_weight) || self.critical_weight == 0.0 => {
                bad("critical_weight", "must be in (0, 1)".into())
            }
            "S2" if self.redundant == 0 => bad("redundant", "S2 needs redundant records".into()),
            "S2" if matches!(data, Dataset::Text { .. }) => {
                let Dataset::Text { rows, .. } = data else { unreachable!() };
                if !self.critical_classes.is_empty() {
                    return bad(
                        "critical_classes",
                        "is for tabular data; text rows name their slice (`\"slice\": \"critical\"`)".into(),
                    );
                }
                let critical = rows.iter().filter(|r| r.critical).count() as u64;
                let common = rows.len() as u64 - critical;
                let (ec, eo) = self.text_eval_split();
                if ec == 0 {
                    return bad("eval_records", "text S2 takes half from each slice: at least 2".into());
                }
                if self.curated == 0 || self.curated as u64 + ec as u64 > critical {
                    return bad(
                        "curated",
                        format!(
                            "between 1 and {} (the data's {critical} critical rows less {ec} for evaluation)",
                            critical.saturating_sub(ec as u64)
                        ),
                    );
                }
                if self.base_records == 0 {
                    return bad("base_records", "the text base is pretrained on the common slice: at least 1".into());
                }
                let taken = eo as u64 + self.base_records as u64;
                if taken + self.redundant as u64 > common {
                    return bad(
                        "redundant",
                        format!(
                            "at most {} distinct common rows (the data's {common} less {eo} for evaluation and {} for the base)",
                            common.saturating_sub(taken),
                            self.base_records
                        ),
                    );
                }
                Ok(())
            }
            "S2" => {
                let Dataset::Tabular { classes, rows, .. } = data else { unreachable!() };
                if self.critical_classes.is_empty() || self.critical_classes.iter().any(|c| c >= classes) {
                    return bad(
                        "critical_classes",
                        format!("list classes below {classes} that form the critical slice"),
                    );
                }
                if self.critical_classes.len() as u32 >= *classes {
                    return bad("critical_classes", "the common slice needs at least one class".into());
                }
                let critical = rows.iter().filter(|r| self.critical_classes.contains(&r.1)).count() as u64;
                let crit_eval = (self.eval_records as u64 * critical).div_ceil(n);
                if self.curated == 0 || self.curated as u64 + crit_eval > critical {
                    return bad(
                        "curated",
                        format!(
                            "between 1 and {} (critical rows not used for evaluation)",
                            critical.saturating_sub(crit_eval)
                        ),
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The built-in corpus of `generator`, sized for this scenario's evaluation, base and
    /// contributors.
    pub fn generate(&self, generator: &str) -> anyhow::Result<Dataset> {
        let (ec, eo) = self.text_eval_split();
        let common = eo + self.base_records as usize + self.redundant as usize;
        generated_corpus(generator, common, ec + self.curated as usize)
    }

    /// S2 and S12: a curator's critical records against a volume contributor's common ones.
    pub(super) fn curated_vs_volume(&self) -> bool {
        matches!(self.scenario.as_str(), "S2" | "S12" | "S15")
    }

    /// Text S2: evaluation rows from the critical and the common slice (half each).
    pub(super) fn text_eval_split(&self) -> (usize, usize) {
        let critical = self.eval_records as usize / 2;
        (critical, self.eval_records as usize - critical)
    }

    pub(super) fn default_target(&self) -> (&'static str, f64, bool) {
        // (metric, target, higher is better)
        match self.scenario.as_str() {
            "S1" => ("spearman_vs_exact_banzhaf", 0.9, true),
            "S2" => ("curated_to_volume_reward_ratio", 3.0, true),
            "S3" => ("duplication_gain", 1.05, false),
            "S4" => ("near_duplicate_gain", 1.10, false),
            "S5" => ("sybil_gain", 1.02, false),
            "S6" => ("flip_auroc", 0.85, true),
            "S8" => ("outlier_inflation", 0.25, false),
            "S9" => ("overlap_asymmetry", 0.05, false),
            "S12" => ("reward_cv_max", 0.10, false),
            "S13" => ("victim_reward_kept", 0.95, true),
            "S14" => ("honest_reward_kept", 0.95, true),
            "S15" => ("paraphraser_vs_curator_per_record", 1.0, false),
            _ => ("lora_runs_per_peer", f64::INFINITY, false),
        }
    }
}

impl Scenario {
    /// The epoch parameters of the Datanet `manifest` with this scenario's unit and reward settings.
    pub(super) fn epoch_params(&self, manifest: &crate::manifest::Manifest, jobs: u32) -> EpochParams {
        EpochParams {
            unit_records_target: self.unit_records_target,
            unit_records_min: self.unit_records_min,
            unit_records_max: self.unit_records_max,
            unit_count_max: self.unit_count_max,
            unit_cap_ppm: (self.unit_cap * 1e6).round() as u32,
            noise_floor_milli: (self.noise_floor * 1000.0).round() as u32,
            jobs,
            ..EpochParams::from_manifest(manifest)
        }
    }
}
