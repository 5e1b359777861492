//! `datanet bench attribution --data FILE --scenario FILE.toml`: attribution quality, end to end.
//!
//! A scenario file (`testnet/bench/*.toml`) names one of the DESIGN.md §10 scenarios and its sizes.
//! For each seed the runner splits the data set into a public evaluation set, base-pretraining
//! records and disjoint contributor slices; pretrains a frozen `mlp` base; then for every variant
//! of the scenario (honest, duplicated, split into sybils, …) creates a fresh datadir, admits each
//! contribution through the real admission path (`admission::admit_local`: canonicalization, exact
//! and near-duplicate detection, chunks, sled), reads the records back with
//! `Store::datanet_records`, and runs [`crate::measure::measure_epoch`] — the same plan, jobs and
//! scoring as `datanet attribute`. Variants that produce the same coalition reuse its measured
//! utility. It prints one row per seed, the mean and spread, a JSON line, and last a line
//! `RESULT scenario=… metric=… value=… target=… pass=…`.
//!
//! Data: CSV in the layout of `../shared/data` (label last; optional first line
//! `n_samples,n_features,class names…`; `.gz` accepted) or JSONL text (`{"text": …}`).

use crate::admission::{self, canonical};
use crate::attribution::EpochParams;
use crate::codec::Signed;
use crate::identity::Identity;
use crate::manifest::{Manifest, ManifestFile, TaskKind};
use crate::measure::{self, UtilityCache};
use crate::store::Store;
use crate::trainer::utility::{UtilityJob, UtilityOptions};
use crate::trainer::{init, train::TrainConfig};
use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub mod flood;
pub mod sealed_eval;

/// Options of `datanet bench attribution`.
#[derive(clap::Args, Debug, Clone)]
pub struct AttributionBenchArgs {
    /// Data set: CSV (label last, optional `n_samples,n_features,classes…` header, `.gz` ok) or JSONL
    /// text (`{"text"}` or `{"prompt","completion"}` records, optional `"slice": "critical"`).
    /// Optional when the scenario names a built-in `generator`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write the scenario's generated text corpus to this JSONL file and exit (to inspect or edit
    /// it, and to pass it back with --data).
    #[arg(long)]
    pub write_data: Option<PathBuf>,
    /// Scenario file (see testnet/bench/).
    #[arg(long)]
    pub scenario: PathBuf,
    /// Override the scenario's number of seeds.
    #[arg(long)]
    pub seeds: Option<u32>,
    /// Override the scenario's coalition jobs per epoch.
    #[arg(long)]
    pub jobs: Option<u32>,
}

/// A loaded data set.
#[derive(Clone, Debug)]
pub enum Dataset {
    Tabular {
        features: u32,
        classes: u32,
        rows: Vec<(Vec<f64>, u32)>,
    },
    /// JSONL text: all `{"text": …}` records, or all `{"prompt": …, "completion": …}` (instruct).
    Text {
        instruct: bool,
        rows: Vec<TextRow>,
    },
}

/// One text record and the slice it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct TextRow {
    /// The record as a contributor would submit it (without the `slice` field).
    pub record: Value,
    /// In the critical slice: the line's `"slice"` was `"critical"` (anything else is common).
    pub critical: bool,
}

impl Dataset {
    fn len(&self) -> usize {
        match self {
            Dataset::Tabular { rows, .. } => rows.len(),
            Dataset::Text { rows, .. } => rows.len(),
        }
    }

    fn task(&self) -> TaskKind {
        match self {
            Dataset::Tabular { features, classes, .. } => TaskKind::Tabular { features: *features, classes: *classes },
            Dataset::Text { instruct: true, .. } => TaskKind::Instruct,
            Dataset::Text { .. } => TaskKind::Text,
        }
    }
}

/// Why a data file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} line {line}: {reason}")]
    Line { path: String, line: usize, reason: String },
    #[error("{path}: no records")]
    Empty { path: String },
}

/// Reads a CSV (optionally gzip-compressed) or JSONL data set.
pub fn load_data(path: &Path) -> Result<Dataset, DataError> {
    let shown = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| DataError::Read { path: shown.clone(), source })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    let bytes = if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|source| DataError::Read { path: shown.clone(), source })?;
        out
    } else {
        raw
    };
    let text = String::from_utf8(bytes).map_err(|_| DataError::Line {
        path: shown.clone(),
        line: 1,
        reason: "not UTF-8".into(),
    })?;
    let line_err = |line: usize, reason: String| DataError::Line { path: shown.clone(), line, reason };
    if name.trim_end_matches(".gz").ends_with(".jsonl") {
        let mut rows = Vec::new();
        let mut kind: Option<bool> = None;
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let line = i + 1;
            let kind_name = |instruct: bool| if instruct { "instruct (prompt, completion)" } else { "text" };
            let mut v: Value = serde_json::from_str(l).map_err(|e| line_err(line, format!("not JSON: {e}")))?;
            let obj = v.as_object_mut().ok_or_else(|| line_err(line, "not a JSON object".into()))?;
            let critical = match obj.remove("slice") {
                None => false,
                Some(Value::String(s)) => s == "critical",
                Some(_) => return Err(line_err(line, "field `slice` must be a string".into())),
            };
            let instruct = obj.contains_key("prompt") || obj.contains_key("completion");
            let fields: &[&str] = if instruct { &["prompt", "completion"] } else { &["text"] };
            for f in fields {
                if !obj.get(*f).is_some_and(Value::is_string) {
                    return Err(line_err(line, format!("field `{f}` missing or not a string")));
                }
            }
            match kind {
                Some(k) if k != instruct => {
                    return Err(line_err(
                        line,
                        format!("a {} record, but the file's first record is {}", kind_name(instruct), kind_name(k)),
                    ));
                }
                _ => kind = Some(instruct),
            }
            rows.push(TextRow { record: v, critical });
        }
        if rows.is_empty() {
            return Err(DataError::Empty { path: shown });
        }
        return Ok(Dataset::Text { instruct: kind.unwrap_or(false), rows });
    }
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    let Some(&(_, first)) = lines.first() else { return Err(DataError::Empty { path: shown }) };
    let fields = |l: &str| l.split(',').map(str::trim).map(String::from).collect::<Vec<_>>();
    let first_fields = fields(first);
    let numeric = |f: &[String]| f.iter().all(|x| x.parse::<f64>().is_ok());
    let header = !numeric(&first_fields) || lines.get(1).is_some_and(|(_, l)| fields(l).len() != first_fields.len());
    let (mut features, mut classes, body) = (None, None, if header { &lines[1..] } else { &lines[..] });
    if header {
        if first_fields.len() < 4 {
            return Err(line_err(1, "header must be `n_samples,n_features,class_name_0,class_name_1,…`".into()));
        }
        let nf = first_fields[1]
            .parse::<u32>()
            .map_err(|_| line_err(1, format!("n_features `{}` is not a count", first_fields[1])))?;
        features = Some(nf);
        classes = Some((first_fields.len() - 2) as u32);
    }
    let mut rows = Vec::with_capacity(body.len());
    for &(line, l) in body {
        let f = fields(l);
        let want = features.map_or(f.len(), |n| n as usize + 1);
        if f.len() != want || f.len() < 2 {
            return Err(line_err(line, format!("{} fields, expected {want} (features then the label)", f.len())));
        }
        features.get_or_insert((f.len() - 1) as u32);
        let mut xs = Vec::with_capacity(f.len() - 1);
        for (j, x) in f[..f.len() - 1].iter().enumerate() {
            let v: f64 = x.parse().map_err(|_| line_err(line, format!("feature {} `{x}` is not a number", j + 1)))?;
            if !v.is_finite() {
                return Err(line_err(line, format!("feature {} `{x}` is not finite", j + 1)));
            }
            xs.push(v);
        }
        let label_text = &f[f.len() - 1];
        let label: u32 =
            label_text.parse().map_err(|_| line_err(line, format!("label `{label_text}` is not a class index")))?;
        if let Some(c) = classes {
            if label >= c {
                return Err(line_err(line, format!("label {label} is outside the {c} classes of the header")));
            }
        }
        rows.push((xs, label));
    }
    if rows.is_empty() {
        return Err(DataError::Empty { path: shown });
    }
    let classes = classes.unwrap_or_else(|| rows.iter().map(|r| r.1).max().unwrap_or(0) + 1).max(2);
    Ok(Dataset::Tabular { features: features.unwrap_or(0), classes, rows })
}

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
    fn curated_vs_volume(&self) -> bool {
        matches!(self.scenario.as_str(), "S2" | "S12" | "S15")
    }

    /// Text S2: evaluation rows from the critical and the common slice (half each).
    fn text_eval_split(&self) -> (usize, usize) {
        let critical = self.eval_records as usize / 2;
        (critical, self.eval_records as usize - critical)
    }

    fn default_target(&self) -> (&'static str, f64, bool) {
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

/// One seed's world: data split, base, evaluation set, and the utility job shared by its variants.
impl Scenario {
    /// The epoch parameters of the Datanet `manifest` with this scenario's unit and reward settings.
    fn epoch_params(&self, manifest: &crate::manifest::Manifest, jobs: u32) -> EpochParams {
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

struct World {
    task: TaskKind,
    manifest_toml: String,
    eval_jsonl: String,
    eval: Vec<Value>,
    /// Contributor slices of the pool, in record form.
    slices: Vec<Vec<Value>>,
    /// S2: curated and redundant records.
    extra: Vec<Vec<Value>>,
    job: UtilityJob,
    cache: UtilityCache,
    params: EpochParams,
    epoch_seed: [u8; 32],
    recipe_seed: u64,
    rng: ChaCha8Rng,
    feature_scale: Vec<f64>,
}

pub(crate) fn tabular_value(xs: &[f64], label: u32) -> Value {
    json!({ "features": xs.iter().map(|&x| canonical::canonical_f64(x).unwrap_or(json!(0))).collect::<Vec<_>>(), "label": label })
}

/// `x` with four significant digits, like the source data (generated values stay short decimals).
fn round_sig(x: f64) -> f64 {
    format!("{x:.3e}").parse().unwrap_or(x)
}

fn record_parts(v: &Value) -> (Vec<f64>, u32) {
    let xs =
        v["features"].as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect()).unwrap_or_default();
    (xs, v["label"].as_u64().unwrap_or(0) as u32)
}

impl World {
    fn build(s: &Scenario, data: &Dataset, seed: u64, jobs: u32) -> anyhow::Result<World> {
        let Dataset::Tabular { features, classes, rows } = data else {
            return Self::build_text(s, data, seed, jobs);
        };
        let (features, classes) = (*features, *classes);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.shuffle(&mut rng);
        let critical = |l: u32| s.critical_classes.contains(&l);
        let value = |i: usize| tabular_value(&rows[i].0, rows[i].1);
        let eval_idx: Vec<usize> = idx[..s.eval_records as usize].to_vec();
        let rest: Vec<usize> = idx[s.eval_records as usize..].to_vec();
        let (base_idx, pool): (Vec<usize>, Vec<usize>) = if s.curated_vs_volume() {
            let common: Vec<usize> = rest.iter().copied().filter(|&i| !critical(rows[i].1)).collect();
            (common.iter().copied().take(s.base_records as usize).collect(), rest.clone())
        } else {
            (rest[..s.base_records as usize].to_vec(), rest[s.base_records as usize..].to_vec())
        };
        let mut slices = Vec::new();
        let mut extra = Vec::new();
        if s.curated_vs_volume() {
            let curated: Vec<Value> =
                pool.iter().copied().filter(|&i| critical(rows[i].1)).take(s.curated as usize).map(value).collect();
            let common: Vec<usize> =
                pool.iter().copied().filter(|&i| !critical(rows[i].1) && !base_idx.contains(&i)).collect();
            let mut redundant = Vec::with_capacity(s.redundant as usize);
            for j in 0..s.redundant as usize {
                let (xs, l) = &rows[common[j % common.len()]];
                // Resampled common-slice rows with four features nudged by one step of their own
                // scale: new records (not near-duplicates), no new knowledge.
                let mut noisy = xs.clone();
                let live: Vec<usize> = (0..noisy.len()).filter(|&f| noisy[f] != 0.0).collect();
                for _ in 0..4 {
                    // Only features that are already non-zero: no value outside the data's support.
                    let Some(&f) = live.get(rng.gen_range(0..live.len().max(1))) else { break };
                    let step = if noisy[f] == noisy[f].round() { 1.0 } else { noisy[f].abs() * 0.05 };
                    noisy[f] = (noisy[f] + if rng.gen_bool(0.5) { step } else { -step }).max(0.0);
                }
                redundant.push(tabular_value(&noisy, *l));
            }
            extra.push(curated);
            extra.push(redundant);
        } else {
            let per = s.records_per_contributor as usize;
            let mut pool = pool.clone();
            if s.scenario == "S1" || s.regions {
                // Contributors hold different regions of the data (sorted by the first feature), so
                // content units differ in what they hold and flipped labels concentrate in some.
                pool.truncate(per * s.contributors as usize);
                pool.sort_by(|&a, &b| rows[a].0[0].total_cmp(&rows[b].0[0]));
            }
            for c in 0..s.contributors as usize {
                let mut slice: Vec<Value> = pool[c * per..(c + 1) * per].iter().copied().map(value).collect();
                if s.flip_rate > 0.0 && s.scenario == "S1" {
                    // Honest but mixed: contributor c flips c/(n-1) × flip_rate of its labels.
                    let rate = s.flip_rate * c as f64 / (s.contributors as f64 - 1.0).max(1.0);
                    flip(&mut slice, rate, classes, &mut rng);
                }
                slices.push(slice);
            }
        }
        let slice_of = |l: u32| if s.curated_vs_volume() && critical(l) { "critical" } else { "common" };
        let eval: Vec<Value> = eval_idx
            .iter()
            .map(|&i| {
                let mut v = value(i);
                v["slice"] = json!(slice_of(rows[i].1));
                v
            })
            .collect();
        let eval_jsonl: String = eval.iter().map(|v| format!("{v}\n")).collect();
        let slices_toml = if s.curated_vs_volume() {
            format!(
                "[{{ name = \"common\", weight = {} }}, {{ name = \"critical\", weight = {} }}]",
                1.0 - s.critical_weight,
                s.critical_weight
            )
        } else {
            "[{ name = \"common\", weight = 1.0 }]".to_string()
        };
        let manifest_toml = format!(
            "name = \"bench-{name}\"\nlicense = \"CC-BY-4.0\"\nreward_pool = 1000000\n\
             [task]\nkind = \"tabular\"\nfeatures = {features}\nclasses = {classes}\n\
             [admission]\ncontribution_records_max = 10000000\nnear_duplicate_digits = {digits}\n\
             [base_model]\nfamily = \"mlp\"\npreset = \"tiny\"\nseed = {seed}\n\
             [recipe]\nlora_rank = {rank}\nlora_alpha = {alpha}\ntarget_modules = [\"all\"]\nsteps = {steps}\n\
             learning_rate = {lr}\nbatch = {batch}\nsequence_length = 16\nrecords_per_unit_max = {rpu}\nseed = {seed}\n\
             [eval]\npublic = \"eval.jsonl\"\nslices = {slices_toml}\n[committee]\nmembers = [\"self\"]\n",
            name = s.scenario,
            digits = s.near_duplicate_digits,
            rank = s.lora_rank.min(classes),
            alpha = 2 * s.lora_rank.min(classes),
            steps = s.steps,
            lr = s.learning_rate,
            batch = s.batch,
            rpu = s.records_per_unit_max,
        );
        let task = TaskKind::Tabular { features, classes };
        let (manifest, _) = manifest_from(&manifest_toml, &eval_jsonl)?;
        // The frozen base: the manifest's, provisioned as every peer does, then pretrained on the
        // base split (the common slice only, for S2).
        let base = crate::trainer::Base::load(&manifest_base_dir(&manifest, &eval)?, tch::Device::Cpu)?;
        let base_records: Vec<Value> = base_idx.iter().copied().map(value).collect();
        let cfg = TrainConfig { steps: s.base_steps, seed, ..TrainConfig::from_recipe(&manifest.recipe)? };
        if !base_records.is_empty() {
            init::pretrain(&base, &task, &base_records, &cfg, 1, &mut |_| {})?;
        }
        let job =
            UtilityJob::new(base, &task, &manifest.recipe, &manifest.eval.slices, &eval, UtilityOptions::default())?;
        let params = s.epoch_params(&manifest, jobs);
        let epoch_seed = *blake3::hash(format!("datanet-bench/{}/{seed}", s.scenario).as_bytes()).as_bytes();
        let mut feature_scale = vec![0f64; features as usize];
        for (xs, _) in rows {
            for (m, &x) in feature_scale.iter_mut().zip(xs) {
                *m = m.max(x.abs());
            }
        }
        Ok(World {
            task,
            manifest_toml,
            eval_jsonl,
            eval,
            slices,
            extra,
            job,
            cache: UtilityCache::new(),
            params,
            epoch_seed,
            recipe_seed: manifest.recipe.seed,
            rng,
            feature_scale,
        })
    }

    /// Text S2: the evaluation suite (half critical, half common rows), a small decoder pretrained
    /// on common rows only (so it gets the critical slice wrong), `curated` critical rows and
    /// `redundant` distinct common rows; LoRA coalition jobs through the same utility.
    fn build_text(s: &Scenario, data: &Dataset, seed: u64, jobs: u32) -> anyhow::Result<World> {
        let Dataset::Text { rows, .. } = data else { bail!("text world over tabular data") };
        let task = data.task();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut critical: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].critical).collect();
        let mut common: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].critical).collect();
        critical.shuffle(&mut rng);
        common.shuffle(&mut rng);
        let (ec, eo) = s.text_eval_split();
        let (curated, base_n, redundant) = (s.curated as usize, s.base_records as usize, s.redundant as usize);
        if critical.len() < ec + curated || common.len() < eo + base_n + redundant {
            bail!("{}: the data has too few rows for the scenario's sizes", s.scenario);
        }
        let rec = |i: &usize| rows[*i].record.clone();
        let mut eval: Vec<Value> = Vec::with_capacity(ec + eo);
        for (idx, slice) in [(&critical[..ec], "critical"), (&common[..eo], "common")] {
            for i in idx {
                let mut v = rec(i);
                v["slice"] = json!(slice);
                eval.push(v);
            }
        }
        let eval_jsonl: String = eval.iter().map(|v| format!("{v}\n")).collect();
        let curated: Vec<Value> = critical[ec..ec + curated].iter().map(rec).collect();
        let base_records: Vec<Value> = common[eo..eo + base_n].iter().map(rec).collect();
        let redundant: Vec<Value> = common[eo + base_n..eo + base_n + redundant].iter().map(rec).collect();
        let modules = if s.target_modules.is_empty() {
            vec!["q_proj".to_string(), "k_proj".into(), "v_proj".into(), "o_proj".into()]
        } else {
            s.target_modules.clone()
        };
        let manifest_toml = format!(
            "name = \"bench-{name}-text\"\nlicense = \"CC-BY-4.0\"\nreward_pool = 1000000\n\
             [task]\nkind = \"{kind}\"\n\
             [admission]\ncontribution_records_max = 10000000\n\
             [base_model]\nfamily = \"llama\"\npreset = \"tiny\"\nseed = {seed}\n\
             [recipe]\nlora_rank = {rank}\nlora_alpha = {alpha}\ntarget_modules = {modules:?}\nsteps = {steps}\n\
             learning_rate = {lr}\nbatch = {batch}\nsequence_length = {seq}\nrecords_per_unit_max = {rpu}\nseed = {seed}\n\
             [eval]\npublic = \"eval.jsonl\"\nslices = [{{ name = \"common\", weight = {wc} }}, {{ name = \"critical\", weight = {wk} }}]\n\
             [committee]\nmembers = [\"self\"]\n",
            name = s.scenario,
            kind = task.name(),
            rank = s.lora_rank,
            alpha = 2 * s.lora_rank,
            steps = s.steps,
            lr = s.learning_rate,
            batch = s.batch,
            seq = s.sequence_length,
            rpu = s.records_per_unit_max,
            wc = 1.0 - s.critical_weight,
            wk = s.critical_weight,
        );
        let (manifest, _) = manifest_from(&manifest_toml, &eval_jsonl)?;
        let base = text_base(s, &task, &manifest.recipe, &base_records, seed)?;
        let job =
            UtilityJob::new(base, &task, &manifest.recipe, &manifest.eval.slices, &eval, UtilityOptions::default())?;
        let params = s.epoch_params(&manifest, jobs);
        let epoch_seed = *blake3::hash(format!("datanet-bench/{}-text/{seed}", s.scenario).as_bytes()).as_bytes();
        Ok(World {
            task,
            manifest_toml,
            eval_jsonl,
            eval,
            slices: Vec::new(),
            extra: vec![curated, redundant],
            job,
            cache: UtilityCache::new(),
            params,
            epoch_seed,
            recipe_seed: manifest.recipe.seed,
            rng,
            feature_scale: Vec::new(),
        })
    }

    /// Admits `contributions` (identity name, records) in order into a fresh datadir and measures
    /// the epoch, the i-th contribution at priority i (the scenario's order); returns reward per
    /// identity name and the measurement.
    async fn run(&mut self, contributions: &[(String, Vec<Value>)]) -> anyhow::Result<Outcome> {
        let at: Vec<u64> = (0..contributions.len() as u64).collect();
        self.run_at(contributions, &at).await
    }

    /// [`World::run`] with the witnessed priority of each contribution given (`priorities[i]`
    /// for `contributions[i]`), passed to `Store::datanet_records` as the freeze would.
    async fn run_at(&mut self, contributions: &[(String, Vec<Value>)], priorities: &[u64]) -> anyhow::Result<Outcome> {
        let admitted = self.admit(contributions, priorities).await?;
        self.measure(&admitted)
    }

    /// Admits `contributions` into a fresh datadir (the i-th at witnessed priority `priorities[i]`)
    /// and reads the records attribution sees back.
    async fn admit(&self, contributions: &[(String, Vec<Value>)], priorities: &[u64]) -> anyhow::Result<Admitted> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        std::fs::write(dir.join("eval.jsonl"), &self.eval_jsonl)?;
        std::fs::write(dir.join("m.toml"), &self.manifest_toml)?;
        let founder = Identity::from_seed(*blake3::hash(b"datanet-bench/founder").as_bytes());
        let store = Store::open(&dir.join("peer")).await?;
        let (manifest, blobs) =
            ManifestFile::read(&dir.join("m.toml"))?.into_manifest(dir, founder.public_key(), &|_| Ok(()))?;
        store.put_blob(blobs.public).await?;
        let id = store.put_manifest(&Signed::sign(manifest.clone(), &founder.signing_key())).await?;
        let mut names = BTreeMap::new();
        let mut witnessed = BTreeMap::new();
        for ((name, records), &priority) in contributions.iter().zip(priorities) {
            let who = Identity::from_seed(*blake3::hash(format!("datanet-bench/{name}").as_bytes()).as_bytes());
            names.insert(who.public_key(), name.clone());
            let canon = records
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    canonical::canonicalize(&manifest.task, v.clone(), manifest.admission.record_bytes_max)
                        .with_context(|| format!("contributor {name} record {}", i + 1))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Records copying an evaluation record are skipped, as `contribute --skip-invalid` does
            // (the text corpus repeats the evaluation set's phrasings).
            let ack = admission::admit_local_skipping_contaminated(&store, &who, &id, canon).await?.ack;
            // Resubmitting an identical contribution changes nothing: it keeps its first priority.
            witnessed.entry(ack.id).or_insert(priority);
        }
        let records = store.datanet_records(&id, Some(&witnessed)).await?;
        store.close().await?;
        Ok(Admitted { records, names })
    }

    /// Measures one epoch (under `self.epoch_seed`) over admitted records.
    fn measure(&mut self, admitted: &Admitted) -> anyhow::Result<Outcome> {
        let Admitted { records, names } = admitted;
        let progress = indicatif::ProgressBar::hidden();
        let m = measure::measure_epoch(
            &self.task,
            self.recipe_seed,
            records,
            &self.eval,
            &self.params,
            self.epoch_seed,
            &mut self.job,
            &mut self.cache,
            &progress,
        )?;
        let mut rewards: BTreeMap<String, u64> = BTreeMap::new();
        for l in &m.scores.leaves {
            *rewards.entry(names.get(&l.contributor).cloned().unwrap_or_else(|| l.contributor.short())).or_default() +=
                l.reward;
        }
        let values = records.iter().map(|r| (r.hash, r.value.clone())).collect::<BTreeMap<_, _>>();
        Ok(Outcome { rewards, measured: m, admitted: values.len(), values })
    }
}

/// Records admitted once, and the names of their identities.
struct Admitted {
    records: Vec<crate::store::contributions::AdmittedRecord>,
    names: BTreeMap<crate::ids::PeerKey, String>,
}

/// The text base: a small llama (byte tokenizer, 4 heads, 2 KV heads, tied embeddings) of the
/// scenario's depth and width, random from `seed`, then pretrained on `records` (the common slice)
/// with every tensor trainable. Deterministic in its inputs; cached under [`cache_dir`] by a hash of
/// the config, the pretraining settings and the records, since every seed's variants share it.
fn text_base(
    s: &Scenario,
    task: &TaskKind,
    recipe: &crate::manifest::Recipe,
    records: &[Value],
    seed: u64,
) -> anyhow::Result<crate::trainer::Base> {
    let hidden = i64::from(s.model_hidden);
    let config = crate::trainer::llama::LlamaConfig {
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_hidden_layers: i64::from(s.model_layers),
        head_dim: hidden / 4,
        max_position_embeddings: i64::from(s.sequence_length).max(64) * 2,
        ..init::llama_preset("micro")?
    };
    let cfg = TrainConfig {
        steps: s.base_steps,
        learning_rate: s.base_learning_rate.unwrap_or(s.learning_rate),
        seed,
        ..TrainConfig::from_recipe(recipe)?
    };
    let mut h = blake3::Hasher::new_derive_key("datanet/bench/text-base/v1");
    h.update(config.to_json().to_string().as_bytes());
    h.update(format!("{cfg:?}").as_bytes());
    for r in records {
        h.update(r.to_string().as_bytes());
        h.update(b"\n");
    }
    let dir = cache_dir().map(|d| d.join(format!("text-base-{}", &h.finalize().to_hex()[..16])));
    if let Some(d) = &dir
        && d.join("model.safetensors").exists()
        && let Ok(base) = crate::trainer::Base::load(d, tch::Device::Cpu)
    {
        return Ok(base);
    }
    let t = std::time::Instant::now();
    let base = init::random_llama(config, seed, tch::Device::Cpu)?;
    let out = init::pretrain(&base, task, records, &cfg, 1, &mut |_| {})?;
    eprintln!(
        "pretrained the text base on {} common records: {} steps, loss {:.3} → {:.3} ({:.1} s)",
        records.len(),
        cfg.steps,
        out.losses.first().copied().unwrap_or(0.0),
        out.losses.last().copied().unwrap_or(0.0),
        t.elapsed().as_secs_f64()
    );
    if let Some(d) = &dir {
        // Written aside and renamed, so a concurrent or interrupted run never reads half a base.
        let tmp = d.with_extension(format!("tmp{}", std::process::id()));
        if init::save_base(&base, &tmp, None).is_ok() && std::fs::rename(&tmp, d).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(base)
}

/// The manifest's base folder exactly as the daemon and the CLI provision it
/// ([`crate::trainer::provision_base`]), kept under [`cache_dir`] (else the system temp folder).
pub(crate) fn manifest_base_dir(manifest: &Manifest, eval: &[Value]) -> anyhow::Result<PathBuf> {
    let root = cache_dir().unwrap_or_else(|| std::env::temp_dir().join("datanet-bench"));
    Ok(crate::trainer::provision_base(&root, manifest, eval, None)?)
}

/// Where pretrained text bases are cached: `$DATANET_BENCH_CACHE`, else `bench-cache/` in
/// `$CARGO_TARGET_DIR` or in `./target` when that exists (a checkout); else nowhere.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DATANET_BENCH_CACHE") {
        return Some(PathBuf::from(d));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.is_dir().then(|| target.join("bench-cache"))
}

/// The built-in text corpus of `generator = "instruct"`, from the testnet's generators
/// ([`crate::testnet::scenario::generate`]) with a fixed corpus seed (the bench's seeds split it
/// differently): `common` records ask the colors of eight things in five phrasings, each numbered,
/// so all are distinct; `critical` records ask to negate an integer in 10..999, a skill a base
/// pretrained on the common slice does not have — one record per integer, so at most 990.
pub fn generated_corpus(generator: &str, common: usize, critical: usize) -> anyhow::Result<Dataset> {
    if generator != "instruct" {
        bail!("unknown generator `{generator}` (instruct)");
    }
    let mut rows: Vec<TextRow> = crate::testnet::scenario::generate("common", common, 1)?
        .into_iter()
        .map(|record| TextRow { record, critical: false })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut crit: Vec<TextRow> = crate::testnet::scenario::generate("critical", 20_000, 2)?
        .into_iter()
        .filter(|r| seen.insert(r["prompt"].as_str().unwrap_or_default().to_string()))
        .map(|record| TextRow { record, critical: true })
        .collect();
    if crit.len() < critical {
        bail!(
            "the instruct generator has {} distinct critical records; the scenario needs {critical} (curated + half of eval_records)",
            crit.len()
        );
    }
    crit.truncate(critical);
    rows.extend(crit);
    Ok(Dataset::Text { instruct: true, rows })
}

/// Writes a text data set as JSONL, each line with its `slice`: the layout `--data` reads back.
pub fn write_jsonl(data: &Dataset, path: &Path) -> anyhow::Result<()> {
    let Dataset::Text { rows, .. } = data else { bail!("only text data sets are written as JSONL") };
    let mut out = String::new();
    for r in rows {
        let mut v = r.record.clone();
        v["slice"] = json!(if r.critical { "critical" } else { "common" });
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn manifest_from(toml_text: &str, eval_jsonl: &str) -> anyhow::Result<(Manifest, crate::manifest::EvalBlobs)> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("eval.jsonl"), eval_jsonl)?;
    std::fs::write(tmp.path().join("m.toml"), toml_text)?;
    let founder = Identity::from_seed(*blake3::hash(b"datanet-bench/founder").as_bytes());
    Ok(ManifestFile::read(&tmp.path().join("m.toml"))?.into_manifest(tmp.path(), founder.public_key(), &|_| Ok(()))?)
}

fn flip(records: &mut [Value], rate: f64, classes: u32, rng: &mut ChaCha8Rng) -> Vec<bool> {
    records
        .iter_mut()
        .map(|v| {
            if rng.gen_bool(rate.clamp(0.0, 1.0)) {
                let l = v["label"].as_u64().unwrap_or(0) as u32;
                v["label"] = json!((l + rng.gen_range(1..classes)) % classes);
                true
            } else {
                false
            }
        })
        .collect()
}

/// S14: junk contribution `j` — 1 to `most` records whose every feature is one honest record's
/// value of that feature (the data's marginals, so no value is out of range) and whose label is
/// random: records distinct from everything, worth nothing. Deterministic in `seed` and `j`.
fn junk(parts: &[(Vec<f64>, u32)], classes: u32, most: u32, seed: u64, j: usize) -> Vec<Value> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ j as u64);
    let width = parts.first().map_or(0, |p| p.0.len());
    (0..rng.gen_range(1..=most.max(1)))
        .map(|_| {
            let xs: Vec<f64> = (0..width).map(|f| parts[rng.gen_range(0..parts.len())].0[f]).collect();
            tabular_value(&xs, rng.gen_range(0..classes.max(2)))
        })
        .collect()
}

struct Outcome {
    rewards: BTreeMap<String, u64>,
    measured: measure::Measured,
    admitted: usize,
    values: BTreeMap<crate::ids::RecordHash, Value>,
}

impl Outcome {
    fn reward(&self, name: &str) -> f64 {
        self.rewards.get(name).copied().unwrap_or(0) as f64
    }
    fn prefix_reward(&self, prefix: &str) -> f64 {
        self.rewards.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| *v as f64).sum()
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { if a == 0.0 { 1.0 } else { f64::INFINITY } } else { a / b }
}

fn named(slices: &[Vec<Value>]) -> Vec<(String, Vec<Value>)> {
    slices.iter().enumerate().map(|(i, s)| (format!("c{i}"), s.clone())).collect()
}

/// One seed's figures: the headline metric and extra named figures.
struct SeedResult {
    metric: f64,
    extra: Vec<(String, f64)>,
}

/// The manipulator c0's reward in the honest epoch; an error when it is 0, since no gain can be
/// measured against nothing (the scenario is then not well-posed: too few jobs for the noise floor,
/// or a base that leaves nothing to learn).
async fn honest_reward(s: &Scenario, w: &mut World, honest: &[(String, Vec<Value>)]) -> anyhow::Result<f64> {
    let r = w.run(honest).await?.reward("c0");
    if r == 0.0 {
        bail!(
            "{}: contributor c0 earned nothing in the honest epoch, so a manipulation gain cannot be measured; raise `jobs` or lower `base_records`",
            s.scenario
        );
    }
    Ok(r)
}

async fn run_seed(s: &Scenario, w: &mut World) -> anyhow::Result<SeedResult> {
    let honest = named(&w.slices);
    let mut extra = Vec::new();
    let metric = match s.scenario.as_str() {
        "S1" => {
            let out = w.run(&honest).await?;
            let plan = &out.measured.plan;
            let m = plan.units.len();
            if m > 10 {
                bail!("S1 formed {m} units; exact Banzhaf needs at most 10 (raise unit_records_target)");
            }
            if 1u64 << m <= plan.job_count() as u64 {
                bail!(
                    "S1 formed {m} units: its {} jobs would cover all 2^{m} coalitions; lower `jobs` or raise the units",
                    plan.job_count()
                );
            }
            // Exact Banzhaf over all 2^M coalitions with the same capped job construction (and the
            // same cache, so coalitions the epoch already trained are not trained again).
            let seed = crate::attribution::jobs::training_seed(w.epoch_seed, w.recipe_seed);
            let cap = plan.params.records_per_unit_max as usize;
            let mut u = vec![0i64; 1 << m];
            for (mask, slot) in u.iter_mut().enumerate() {
                let hashes: Vec<crate::ids::RecordHash> = plan
                    .units
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> i & 1 == 1)
                    .flat_map(|(_, unit)| unit.records.iter().take(cap).copied())
                    .collect();
                let key = measure::cache_key(seed, &hashes);
                *slot = match w.cache.get(&key) {
                    Some(&v) => v,
                    None => {
                        let values: Vec<Value> = hashes.iter().map(|h| out.values[h].clone()).collect();
                        let v = w.job.utility_seeded(&values, seed)?;
                        w.cache.insert(key, v);
                        v
                    }
                };
            }
            let exact: Vec<f64> = (0..m)
                .map(|i| {
                    let (mut d, n) = (0f64, (1usize << m) / 2);
                    for mask in 0..(1usize << m) {
                        if mask >> i & 1 == 0 {
                            d += (u[mask | 1 << i] - u[mask]) as f64;
                        }
                    }
                    d / n as f64
                })
                .collect();
            let msr: Vec<f64> = out.measured.scores.unit_values.iter().map(|&v| v as f64).collect();
            // The same estimator on T independently drawn coalitions (the design before orthogonal
            // blocks), read from the exact table: what the blocks gain.
            let independent: Vec<Vec<bool>> =
                (0..plan.job_count()).map(|j| crate::attribution::jobs::coalition(w.epoch_seed, m as u32, j)).collect();
            let table: Vec<i64> = independent
                .iter()
                .map(|c| u[c.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| 1usize << i).sum::<usize>()])
                .collect();
            let plain = crate::attribution::value::msr_banzhaf(&independent, &table, m);
            extra.push((
                "spearman_independent_draws".into(),
                spearman(&plain.iter().map(|&v| v as f64).collect::<Vec<_>>(), &exact),
            ));
            extra.push(("units".into(), m as f64));
            extra.push(("jobs".into(), plan.job_count() as f64));
            spearman(&msr, &exact)
        }
        "S2" => {
            let contributions =
                vec![("curated".to_string(), w.extra[0].clone()), ("volume".to_string(), w.extra[1].clone())];
            let out = w.run(&contributions).await?;
            extra.push(("curated_reward".into(), out.reward("curated")));
            extra.push(("volume_reward".into(), out.reward("volume")));
            extra.push(("units".into(), out.measured.plan.units.len() as f64));
            extra.push(("admitted".into(), out.admitted as f64));
            let curated_key = Identity::from_seed(*blake3::hash(b"datanet-bench/curated").as_bytes()).public_key();
            let (plan, sc) = (&out.measured.plan, &out.measured.scores);
            let (mut cu, mut cphi, mut cse, mut vmax, mut vse) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (i, u) in plan.units.iter().enumerate() {
                let (phi, se) = (sc.unit_values[i] as f64, sc.unit_errors[i] as f64);
                if u.shares.iter().any(|(k, _)| *k == curated_key) {
                    cu += 1.0;
                    cphi += phi;
                    cse = cse.max(se);
                } else if phi > vmax {
                    (vmax, vse) = (phi, se);
                }
            }
            extra.push(("curated_units".into(), cu));
            extra.push(("curated_phi".into(), cphi));
            extra.push(("curated_max_se".into(), cse));
            extra.push(("volume_max_phi".into(), vmax));
            extra.push(("volume_max_phi_se".into(), vse));
            let u = &out.measured.utilities;
            extra.push(("utility_min".into(), u.iter().copied().min().unwrap_or(0) as f64));
            extra.push(("utility_max".into(), u.iter().copied().max().unwrap_or(0) as f64));
            extra.push(("screened".into(), plan.screened.len() as f64));
            // Well-posedness: the base gets the critical slice wrong, and the curated records alone
            // (one job's recipe and seed) teach it.
            let slice = |r: &crate::trainer::eval::EvalReport, name: &str| {
                r.slices.iter().find(|x| x.name == name).map_or((0.0, 0.0), |x| (x.loss, x.accuracy))
            };
            let critical = |r: &crate::trainer::eval::EvalReport| slice(r, "critical");
            let (base_loss, base_acc) = critical(w.job.base_report());
            extra.push(("base_common_loss".into(), slice(w.job.base_report(), "common").0));
            let seed = crate::attribution::jobs::training_seed(w.epoch_seed, w.recipe_seed);
            let (_, alone) = w.job.evaluate_seeded(&w.extra[0], seed)?;
            let (alone_loss, alone_acc) = critical(&alone);
            extra.push(("base_critical_loss".into(), base_loss));
            extra.push(("base_critical_accuracy".into(), base_acc));
            extra.push(("curated_alone_critical_loss".into(), alone_loss));
            extra.push(("curated_alone_critical_accuracy".into(), alone_acc));
            extra.push(("train_secs".into(), out.measured.train_secs));
            // Capped so a volume contributor paid nothing still averages to a finite figure.
            ratio(out.reward("curated"), out.reward("volume")).min(1000.0)
        }
        "S3" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut worst: f64 = 0.0;
            for &k in &s.copies {
                let mut c = honest.clone();
                for _ in 1..k {
                    c.push(("c0".into(), w.slices[0].clone()));
                }
                c.push(("c0".into(), w.slices[1].clone()));
                let g = ratio(w.run(&c).await?.reward("c0"), base);
                extra.push((format!("gain_x{k}"), g));
                worst = worst.max(g);
            }
            worst
        }
        "S13" => {
            // Backdating copier: c1's records re-submitted by a fresh identity that is admitted
            // FIRST here (earlier local admission, and any `created_ms` it likes) but witnessed
            // LATER by the committee. Value: the share of c1's honest reward c1 keeps, or 0 when
            // the copier earns anything at all.
            let base = w.run(&honest).await?.reward("c1");
            if base == 0.0 {
                bail!("S13: contributor c1 earned nothing in the honest epoch; raise `jobs` or lower `base_records`");
            }
            extra.push(("victim_honest_reward".into(), base));
            let mut c = vec![("copier".to_string(), w.slices[1].clone())];
            c.extend(honest.iter().cloned());
            let mut at: Vec<u64> = vec![1_000_000];
            at.extend(0..honest.len() as u64);
            let out = w.run_at(&c, &at).await?;
            let (kept, copier) = (out.reward("c1") / base, out.reward("copier"));
            extra.push(("copier_reward".into(), copier));
            extra.push(("victim_kept".into(), kept));
            if copier > 0.0 { 0.0 } else { kept }
        }
        "S15" => {
            let seed = u64::from_le_bytes(w.epoch_seed[..8].try_into().expect("8 bytes"));
            let r = sealed_eval::run(s, w, seed).await?;
            extra.extend(r.extra);
            r.metric
        }
        "S14" => {
            // Id-grinding flood: `flood` junk contributions from fresh identities, witnessed after
            // the honest ones ([`flood::flood_freeze`]: ground ids, colluding members, a bare
            // quorum). The real freeze picks the input set; its honest and junk contributions are
            // admitted at their certified priorities and measured. Value: the honest
            // contributions' total reward with the flood over their total without it.
            let seed = u64::from_le_bytes(w.epoch_seed[..8].try_into().expect("8 bytes"));
            let n = s.committee as usize;
            let calm = flood::flood_freeze(honest.len(), 0, n, seed);
            let calm_p = calm.priorities();
            let calm_at: Vec<u64> = calm
                .honest
                .iter()
                .map(|c| calm_p.get(c).copied())
                .collect::<Option<_>>()
                .context("S14: an honest contribution has no priority even without the flood")?;
            let base = w.run_at(&honest, &calm_at).await?;
            let names: Vec<&str> = honest.iter().map(|x| x.0.as_str()).collect();
            let last = *names.last().context("S14 needs honest contributors")?;
            let (base_total, base_last) = (names.iter().map(|k| base.reward(k)).sum::<f64>(), base.reward(last));
            if base_total == 0.0 {
                bail!(
                    "S14: the honest contributions earned nothing without the flood; raise `jobs` or lower `base_records`"
                );
            }
            let ff = flood::flood_freeze(honest.len(), s.flood as usize, n, seed);
            let p = ff.priorities();
            let mut c = Vec::new();
            let mut at = Vec::new();
            for (i, id) in ff.honest.iter().enumerate() {
                if let Some(&t) = p.get(id) {
                    c.push(honest[i].clone());
                    at.push(t);
                }
            }
            let classes = match w.task {
                TaskKind::Tabular { classes, .. } => classes,
                _ => 2,
            };
            let pool: Vec<(Vec<f64>, u32)> = w.slices.iter().flatten().map(record_parts).collect();
            let mut junk_records = 0usize;
            for (j, id) in ff.junk.iter().enumerate() {
                if let Some(&t) = p.get(id) {
                    let records = junk(&pool, classes, s.junk_records, seed, j);
                    junk_records += records.len();
                    c.push((format!("junk{j}"), records));
                    at.push(t);
                }
            }
            let started = std::time::Instant::now();
            let out = w.run_at(&c, &at).await?;
            let total: f64 = names.iter().map(|k| out.reward(k)).sum();
            extra.push(("honest_reward_without_flood".into(), base_total));
            extra.push(("honest_reward_with_flood".into(), total));
            extra.push(("last_honest_kept".into(), ratio(out.reward(last), base_last)));
            extra.push(("junk_reward".into(), out.prefix_reward("junk")));
            extra.push(("honest_in_input_fraction".into(), ff.honest_in() as f64 / honest.len() as f64));
            extra.push(("input_items".into(), ff.frozen.items.len() as f64));
            extra.push(("junk_in_input".into(), (ff.frozen.items.len() - ff.honest_in()) as f64));
            extra.push(("junk_before_last_honest".into(), ff.junk_before_last_honest() as f64));
            extra.push(("deferred".into(), ff.frozen.deferred as f64));
            extra.push(("junk_records_admitted".into(), junk_records as f64));
            extra.push(("units".into(), out.measured.plan.units.len() as f64));
            extra.push(("units_without_flood".into(), base.measured.plan.units.len() as f64));
            extra.push(("jobs".into(), out.measured.plan.job_count() as f64));
            extra.push(("screened".into(), out.measured.plan.screened.len() as f64));
            extra.push(("retained".into(), out.measured.scores.retained as f64));
            extra.push(("flood_epoch_secs".into(), started.elapsed().as_secs_f64()));
            // Where the junk's credit comes from: units shared with honest records (the unit's
            // value is split by record weight between its owners) or units of junk alone.
            let honest_keys: std::collections::BTreeSet<crate::ids::PeerKey> = names
                .iter()
                .map(|k| {
                    Identity::from_seed(*blake3::hash(format!("datanet-bench/{k}").as_bytes()).as_bytes()).public_key()
                })
                .collect();
            let (plan, sc) = (&out.measured.plan, &out.measured.scores);
            let credited =
                crate::attribution::value::above_noise(&sc.unit_values, &sc.unit_errors, plan.params.noise_floor_milli);
            let (mut mixed, mut mixed_credited, mut junk_only_credited) = (0f64, 0f64, 0f64);
            let (mut junk_mixed, mut junk_alone, mut honest_records_mixed) = (0f64, 0f64, 0f64);
            for (u, &v) in plan.units.iter().zip(&credited) {
                let total_w = u.weight_total().max(1) as f64;
                let hw: f64 = u.shares.iter().filter(|(k, _)| honest_keys.contains(k)).map(|x| x.1 as f64).sum();
                let jw = total_w - hw;
                let v = v.max(0) as f64;
                if hw > 0.0 && jw > 0.0 {
                    mixed += 1.0;
                    honest_records_mixed += hw / total_w * u.records.len() as f64;
                    if v > 0.0 {
                        mixed_credited += 1.0;
                        junk_mixed += v * jw / total_w;
                    }
                } else if jw > 0.0 && v > 0.0 {
                    junk_only_credited += 1.0;
                    junk_alone += v;
                }
            }
            extra.push(("units_mixed".into(), mixed));
            extra.push(("units_mixed_credited".into(), mixed_credited));
            extra.push(("units_junk_only_credited".into(), junk_only_credited));
            extra.push(("honest_records_in_mixed_units".into(), honest_records_mixed));
            extra.push((
                "junk_credit_from_mixed_fraction".into(),
                if junk_mixed + junk_alone == 0.0 { 0.0 } else { junk_mixed / (junk_mixed + junk_alone) },
            ));
            total / base_total
        }
        "S4" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut c = honest.clone();
            let jit = s.jitter;
            for src in [0usize, 1] {
                let copies: Vec<Value> = w.slices[src]
                    .iter()
                    .map(|v| {
                        let (xs, l) = record_parts(v);
                        let ys: Vec<f64> =
                            xs.iter().map(|&x| round_sig(x * (1.0 + w.rng.gen_range(-jit..jit)))).collect();
                        tabular_value(&ys, l)
                    })
                    .collect();
                c.push(("c0".into(), copies));
            }
            let out = w.run(&c).await?;
            extra.push((
                "near_duplicates_caught".into(),
                out.measured.plan.contributors.iter().map(|x| x.near_duplicates as f64).sum(),
            ));
            ratio(out.reward("c0"), base)
        }
        "S5" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut worst: f64 = 0.0;
            for &k in &s.sybil {
                let mut c: Vec<(String, Vec<Value>)> = (0..k).map(|j| (format!("sybil{j}"), Vec::new())).collect();
                for (i, r) in w.slices[0].iter().enumerate() {
                    c[i % k as usize].1.push(r.clone());
                }
                c.extend(honest.iter().skip(1).cloned());
                // The identities' contributions are witnessed when c0's would have been: priority 0;
                // the others keep theirs (1, 2, …).
                let at: Vec<u64> = (0..c.len()).map(|i| (i as u64 + 1).saturating_sub(k as u64)).collect();
                let g = ratio(w.run_at(&c, &at).await?.prefix_reward("sybil"), base);
                extra.push((format!("gain_k{k}"), g));
                worst = worst.max(g);
            }
            worst
        }
        "S6" => {
            let mut slices = w.slices.clone();
            let mut flipped = Vec::new();
            let classes = match w.task {
                TaskKind::Tabular { classes, .. } => classes,
                _ => 2,
            };
            for sl in slices.iter_mut() {
                flipped.extend(flip(sl, s.flip_rate, classes, &mut w.rng));
            }
            // The screen needs no training: plan only.
            let all: Vec<Value> = slices.iter().flatten().cloned().collect();
            let q = screen_quality(w, &all, &flipped).await?;
            let baseline = q.knn_f1_kmeans.max(q.knn_f1_negative);
            extra.push(("kmeans_f1".into(), q.f1));
            extra.push(("knn_shapley_f1".into(), baseline));
            extra.push(("knn_shapley_f1_kmeans".into(), q.knn_f1_kmeans));
            extra.push(("knn_shapley_f1_negative".into(), q.knn_f1_negative));
            extra.push(("knn_shapley_auroc".into(), q.knn_auroc));
            extra.push(("screen_f1_negative".into(), q.f1_negative));
            extra.push(("screened_share".into(), q.screened_share));
            extra.push(("flipped_share".into(), flipped.iter().filter(|&&f| f).count() as f64 / flipped.len() as f64));
            q.auroc
        }
        "S8" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut c = honest.clone();
            let classes = match w.task {
                TaskKind::Tabular { classes, .. } => classes,
                _ => 2,
            };
            let crafted: Vec<Value> = (0..s.outliers)
                .map(|_| {
                    let xs: Vec<f64> =
                        w.feature_scale.iter().map(|&m| round_sig(m.max(1.0) * w.rng.gen_range(5.0..20.0))).collect();
                    tabular_value(&xs, w.rng.gen_range(0..classes))
                })
                .collect();
            c.push(("c0".into(), crafted));
            let with = w.run(&c).await?;
            extra.push(("screened".into(), with.measured.plan.screened.len() as f64));
            // The measurement's own noise: the honest epoch again under another epoch seed (other
            // coalitions, another training seed). An inflation within this is not the outliers'.
            let seed = w.epoch_seed;
            w.epoch_seed = *blake3::hash(&seed).as_bytes();
            let rerun = w.run(&honest).await?.reward("c0");
            w.epoch_seed = seed;
            extra.push(("honest_rerun_change".into(), ratio(rerun, base) - 1.0));
            ratio(with.reward("c0"), base) - 1.0
        }
        "S9" => {
            let per = w.slices[0].len();
            let ov = ((per as f64) * s.overlap).round() as usize;
            let a = w.slices[0].clone();
            let mut b: Vec<Value> = a[per - ov..].to_vec();
            b.extend(w.slices[1][..per - ov].iter().cloned());
            let others: Vec<(String, Vec<Value>)> = honest.iter().skip(2).cloned().collect();
            let mut ab = vec![("A".to_string(), a.clone()), ("B".to_string(), b.clone())];
            ab.extend(others.clone());
            let mut ba = vec![("B".to_string(), b.clone()), ("A".to_string(), a.clone())];
            ba.extend(others.clone());
            let mut union = a.clone();
            union.extend(w.slices[1][..per - ov].iter().cloned());
            let mut single = vec![("C".to_string(), union)];
            single.extend(others);
            let o1 = w.run(&ab).await?;
            let o2 = w.run(&ba).await?;
            let o3 = w.run(&single).await?;
            if o3.reward("C") == 0.0 {
                bail!(
                    "{}: the single holder of the union earned nothing, so shares cannot be compared; raise `jobs` or lower `base_records`",
                    s.scenario
                );
            }
            let total = o1.reward("A") + o1.reward("B");
            let dev = (total - o3.reward("C")).abs() / o3.reward("C").max(1.0);
            let shift_a = o1.reward("A") - o2.reward("A");
            let shift_b = o2.reward("B") - o1.reward("B");
            let asym = (shift_a - shift_b).abs() / total.max(1.0);
            extra.push(("total_vs_one_copy".into(), dev));
            extra.push(("mirror_asymmetry".into(), asym));
            dev.max(asym)
        }
        "S12" => {
            // The demo's kind of inputs, unchanged, under `epoch_seeds` epoch seeds: the curator,
            // the volume contributor, and copiers re-submitting the volume's records later.
            let (curated, volume) = (w.extra[0].clone(), w.extra[1].clone());
            let mut c = vec![("curator".to_string(), curated), ("volume".to_string(), volume.clone())];
            let parts = s.copiers.max(1) as usize;
            for p in 0..s.copiers as usize {
                let part: Vec<Value> = volume.iter().skip(p).step_by(parts).cloned().collect();
                c.push((format!("copier{p}"), part));
            }
            let at: Vec<u64> = (0..c.len() as u64).map(|i| i.min(2)).collect();
            let admitted = w.admit(&c, &at).await?;
            let base_seed = w.epoch_seed;
            let mut runs: Vec<BTreeMap<String, u64>> = Vec::new();
            let (mut top, mut retained, mut capped, mut units, mut jobs) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for e in 0..s.epoch_seeds {
                w.epoch_seed = *blake3::hash(&[&base_seed[..], &e.to_le_bytes()].concat()).as_bytes();
                let out = w.measure(&admitted)?;
                let cur = out.reward("curator");
                if out.rewards.iter().all(|(k, &v)| k == "curator" || (v as f64) < cur) {
                    top += 1.0;
                }
                retained += out.measured.scores.retained as f64;
                capped += out.measured.scores.retained_by_cap as f64;
                units += out.measured.plan.units.len() as f64;
                jobs += out.measured.plan.job_count() as f64;
                runs.push(out.rewards);
            }
            w.epoch_seed = base_seed;
            let n = s.epoch_seeds as f64;
            let pool = w.params.pool as f64;
            let mut cv_max: f64 = 0.0;
            for name in c.iter().map(|x| x.0.clone()) {
                let r: Vec<f64> = runs.iter().map(|m| m.get(&name).copied().unwrap_or(0) as f64).collect();
                let mean = r.iter().sum::<f64>() / n;
                let sd = (r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
                extra.push((format!("{name}_mean"), mean));
                extra.push((format!("{name}_min"), r.iter().copied().fold(f64::INFINITY, f64::min)));
                extra.push((format!("{name}_max"), r.iter().copied().fold(0.0, f64::max)));
                if mean >= 0.05 * pool {
                    let cv = sd / mean;
                    extra.push((format!("{name}_cv"), cv));
                    cv_max = cv_max.max(cv);
                }
            }
            extra.push(("curator_top_fraction".into(), top / n));
            extra.push(("retained_mean".into(), retained / n));
            extra.push(("retained_by_cap_mean".into(), capped / n));
            extra.push(("units".into(), units / n));
            extra.push(("jobs".into(), jobs / n));
            cv_max
        }
        _ => {
            let out = w.run(&honest).await?;
            let m = &out.measured;
            let runs = m.plan.job_count() as f64 * s.replication as f64 / s.committee as f64;
            extra.push(("jobs".into(), m.plan.job_count() as f64));
            extra.push(("units".into(), m.plan.units.len() as f64));
            extra.push(("seconds_per_job".into(), m.train_secs / m.trained.max(1) as f64));
            extra.push((
                "records_per_job".into(),
                (0..m.plan.job_count()).map(|j| m.plan.job_records(j).map_or(0, |r| r.len())).sum::<usize>() as f64
                    / m.plan.job_count() as f64,
            ));
            runs
        }
    };
    Ok(SeedResult { metric, extra })
}

/// Quality of the screen on flipped labels, as figures: AUROC of the screen value (low = flipped),
/// F1 of the records the screen excludes (two-means low tail), and the baseline — KNN-Shapley
/// against the evaluation set alone, its F1 under the better of its two-means low group and its
/// value < 0 rule, and its AUROC.
struct ScreenQuality {
    auroc: f64,
    f1: f64,
    knn_auroc: f64,
    knn_f1_kmeans: f64,
    knn_f1_negative: f64,
    /// The screen value under the value < 0 rule, and the share of records the screen excluded.
    f1_negative: f64,
    screened_share: f64,
}

async fn screen_quality(w: &mut World, all: &[Value], flipped: &[bool]) -> anyhow::Result<ScreenQuality> {
    let task = w.task.clone();
    // Canonical hash of every record, to match the plan's values back to the flip flags.
    let mut flag_by_hash = BTreeMap::new();
    let mut admitted = Vec::new();
    for (i, v) in all.iter().enumerate() {
        let c = canonical::canonicalize(&task, v.clone(), 1 << 20).with_context(|| format!("record {}", i + 1))?;
        if flag_by_hash.insert(c.hash, flipped[i]).is_none() {
            admitted.push(crate::store::contributions::AdmittedRecord {
                hash: c.hash,
                value: c.value,
                priority: 0,
                contribution: Default::default(),
                owners: vec![Default::default()],
                cluster: None,
            });
        }
    }
    let (mut inputs, eval_emb) = measure::input_records(&task, &admitted, &w.eval)?;
    let plan = crate::attribution::plan(&inputs, &eval_emb, w.epoch_seed, &w.params)?;
    let screened: std::collections::BTreeSet<_> = plan.screened.iter().copied().collect();
    // The baseline: KNN-Shapley against the evaluation set only, as the plan orders both sets.
    inputs.sort_by_key(|r| r.hash);
    let mut eval_sorted: Vec<&crate::attribution::features::Embedding> = eval_emb.iter().collect();
    eval_sorted.sort_by(|a, b| (&a.features, a.label).cmp(&(&b.features, b.label)));
    eval_sorted.truncate(w.params.screen_eval_max as usize);
    let train: Vec<&crate::attribution::features::Embedding> = inputs.iter().map(|r| &r.embedding).collect();
    let knn = crate::attribution::screen::knn_shapley(&train, &eval_sorted, w.params.screen_k);
    let knn_split = crate::attribution::screen::two_means_threshold(&knn);
    let f1 = |pred: &dyn Fn(usize) -> bool| {
        let (mut tp, mut fp, mut fneg) = (0f64, 0f64, 0f64);
        for (i, r) in inputs.iter().enumerate() {
            match (pred(i), flag_by_hash[&r.hash]) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fneg += 1.0,
                _ => {}
            }
        }
        if tp == 0.0 { 0.0 } else { 2.0 * tp / (2.0 * tp + fp + fneg) }
    };
    let flags: Vec<bool> = inputs.iter().map(|r| flag_by_hash[&r.hash]).collect();
    let scored: Vec<(i64, bool)> = plan.record_values.iter().map(|(h, v)| (*v, flag_by_hash[h])).collect();
    let value_of: BTreeMap<_, _> = plan.record_values.iter().copied().collect();
    Ok(ScreenQuality {
        f1_negative: f1(&|i| value_of[&inputs[i].hash] < 0),
        screened_share: screened.len() as f64 / inputs.len().max(1) as f64,
        auroc: auroc_low(&scored),
        f1: f1(&|i| screened.contains(&inputs[i].hash)),
        knn_auroc: auroc_low(&knn.iter().copied().zip(flags.iter().copied()).collect::<Vec<_>>()),
        knn_f1_kmeans: f1(&|i| knn[i] <= knn_split),
        knn_f1_negative: f1(&|i| knn[i] < 0),
    })
}

/// Probability that a random flipped record has a lower value than a random clean one.
fn auroc_low(scored: &[(i64, bool)]) -> f64 {
    let mut s: Vec<(i64, bool)> = scored.to_vec();
    s.sort_by_key(|x| x.0);
    let (npos, nneg) = (s.iter().filter(|x| x.1).count() as f64, s.iter().filter(|x| !x.1).count() as f64);
    if npos == 0.0 || nneg == 0.0 {
        return 0.5;
    }
    // Rank-sum with ties averaged; "positive" = flipped = low value.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < s.len() {
        let mut j = i;
        while j < s.len() && s[j].0 == s[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // 1-based ranks i+1..=j
        rank_sum += s[i..j].iter().filter(|x| !x.1).count() as f64 * avg;
        i = j;
    }
    // Clean records should rank high: AUROC = P(clean > flipped).
    (rank_sum - nneg * (nneg + 1.0) / 2.0) / (npos * nneg)
}

/// Spearman rank correlation (ties averaged).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(x: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0f64; x.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j < idx.len() && x[idx[j]] == x[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..j] {
                r[k] = (i + j - 1) as f64 / 2.0;
            }
            i = j;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 { 0.0 } else { cov / (va * vb).sqrt() }
}

/// A scenario's summary over its seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub scenario: String,
    pub metric: String,
    pub values: Vec<f64>,
    pub mean: f64,
    pub spread: f64,
    /// The worst seed's value (lowest when higher is better): a mean can hide a failing seed.
    pub worst: f64,
    pub target: f64,
    pub higher_is_better: bool,
    pub pass: bool,
    pub extra: BTreeMap<String, f64>,
}

/// Runs a scenario over its seeds; `seeds`/`jobs` override the file.
pub async fn run_scenario(
    data: &Dataset,
    s: &Scenario,
    seeds: u32,
    jobs: u32,
    verbose: bool,
) -> anyhow::Result<BenchReport> {
    let (metric, default_target, higher) = s.default_target();
    let target = s.target.unwrap_or(default_target);
    let mut values = Vec::new();
    let mut extra_sum: BTreeMap<String, f64> = BTreeMap::new();
    for seed in 0..seeds as u64 {
        let t = std::time::Instant::now();
        let mut w = World::build(s, data, seed + 1, jobs)?;
        let r = run_seed(s, &mut w).await?;
        if verbose {
            let ex: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
            println!(
                "{:<4} seed {:<2} {metric} = {:.4}  {}  ({:.1} s)",
                s.scenario,
                seed + 1,
                r.metric,
                ex.join(" "),
                t.elapsed().as_secs_f64()
            );
        }
        for (k, v) in r.extra {
            *extra_sum.entry(k).or_default() += v / seeds as f64;
        }
        values.push(r.metric);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let spread = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let worst = values
        .iter()
        .copied()
        .fold(if higher { f64::INFINITY } else { f64::NEG_INFINITY }, |w, v| if higher { w.min(v) } else { w.max(v) });
    let mut pass = if higher { mean >= target } else { mean <= target };
    if matches!(s.scenario.as_str(), "S5" | "S12") {
        // Gains and swings are bounded in every seed, not on average.
        pass = worst <= target;
    }
    if s.scenario == "S14" {
        // Every seed keeps the honest reward, and the freeze kept every honest contribution.
        pass = worst >= target && extra_sum.get("honest_in_input_fraction").copied().unwrap_or(0.0) >= 1.0 - 1e-9;
    }
    if s.scenario == "S12" {
        // The curator tops the rewards under every epoch seed of every world.
        pass &= extra_sum.get("curator_top_fraction").copied().unwrap_or(0.0) >= 1.0 - 1e-9;
    }
    if s.scenario == "S6" {
        // Averaged over the seeds: the screen's F1 must beat KNN-Shapley alone.
        pass &= extra_sum.get("kmeans_f1").copied().unwrap_or(0.0)
            > extra_sum.get("knn_shapley_f1").copied().unwrap_or(0.0);
    }
    Ok(BenchReport {
        scenario: s.scenario.clone(),
        metric: metric.into(),
        values,
        mean,
        spread,
        worst,
        target,
        higher_is_better: higher,
        pass,
        extra: extra_sum,
    })
}

/// `datanet bench attribution`.
pub async fn run(args: AttributionBenchArgs) -> anyhow::Result<()> {
    let s = Scenario::read(&args.scenario)?;
    if let Some(out) = &args.write_data {
        let g = s
            .generator
            .as_deref()
            .with_context(|| format!("--write-data: {} names no built-in `generator`", args.scenario.display()))?;
        let data = s.generate(g)?;
        write_jsonl(&data, out)?;
        println!("wrote {} records to {}", data.len(), out.display());
        return Ok(());
    }
    let (data, shown) = match (&args.data, &s.generator) {
        (Some(p), _) => (load_data(p)?, p.display().to_string()),
        (None, Some(g)) => (s.generate(g)?, format!("the built-in `{g}` corpus")),
        (None, None) => bail!("--data FILE is required ({} names no built-in `generator`)", args.scenario.display()),
    };
    s.validate(&args.scenario, &data)?;
    let seeds = args.seeds.unwrap_or(s.seeds);
    let jobs = args.jobs.unwrap_or(s.jobs);
    println!("{} on {shown} ({} records): {}", s.scenario, data.len(), s.description);
    let r = run_scenario(&data, &s, seeds, jobs, true).await?;
    let extra: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
    println!(
        "{:<4} mean {} = {:.4} ± {:.4} over {} seeds  {}",
        r.scenario,
        r.metric,
        r.mean,
        r.spread,
        r.values.len(),
        extra.join(" ")
    );
    println!("{}", serde_json::to_string(&r)?);
    let cmp = if r.higher_is_better { ">=" } else { "<=" };
    println!(
        "RESULT scenario={} metric={} value={:.4} spread={:.4} worst_seed={:.4} target={cmp}{} pass={}",
        r.scenario, r.metric, r.mean, r.spread, r.worst, r.target, r.pass
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
    }

    // The shipped data sets load (both layouts); a label outside the header's classes names its line.
    #[test]
    fn loads_csv_and_refuses_bad_label() {
        let Dataset::Tabular { features, classes, rows } = load_data(&data_path("breast_cancer.csv")).unwrap() else {
            panic!()
        };
        assert_eq!((features, classes, rows.len()), (30, 2, 569));
        let Dataset::Tabular { features, classes, rows } = load_data(&data_path("digits.csv.gz")).unwrap() else {
            panic!()
        };
        assert_eq!((features, classes, rows.len()), (64, 10, 1797));
        let Dataset::Tabular { features, classes, rows } = load_data(&data_path("wine.csv")).unwrap() else { panic!() };
        assert_eq!((features, classes, rows.len()), (13, 3, 178));
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("bad.csv");
        std::fs::write(&p, "3,2,a,b\n1,2,0\n1,2,1\n1,2,5\n").unwrap();
        let e = load_data(&p).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("label 5 is outside the 2 classes"), "{e}");
    }

    // Unknown keys and impossible sizes in a scenario file are refused, naming the key.
    #[test]
    fn scenario_errors_name_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("s.toml");
        std::fs::write(&p, "scenario = \"S3\"\ncopies = [2]\nbogus = 1\n").unwrap();
        let e = Scenario::read(&p).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&p, "scenario = \"S3\"\ncopies = [2]\nrecords_per_contributor = 100000\n").unwrap();
        let s = Scenario::read(&p).unwrap();
        let data = load_data(&data_path("breast_cancer.csv")).unwrap();
        let e = s.validate(&p, &data).unwrap_err().to_string();
        assert!(e.contains("records_per_contributor"), "{e}");
    }

    // JSONL text: both record kinds load with their slice; a mixed file, a missing field and a
    // non-string slice name their line; the generated corpus written as JSONL reads back equal.
    #[test]
    fn loads_jsonl_text() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("t.jsonl");
        std::fs::write(&p, "{\"text\":\"a b\"}\n\n{\"text\":\"c\",\"slice\":\"critical\"}\n").unwrap();
        let Dataset::Text { instruct, rows } = load_data(&p).unwrap() else { panic!() };
        assert!(!instruct);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], TextRow { record: json!({"text": "c"}), critical: true });
        for (body, want) in [
            ("{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n", "line 2: a instruct"),
            ("{\"prompt\":\"p\"}\n", "line 1: field `completion` missing"),
            ("{\"text\":\"a\",\"slice\":3}\n", "line 1: field `slice` must be a string"),
            ("[1]\n", "line 1: not a JSON object"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = load_data(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let data = generated_corpus("instruct", 40, 10).unwrap();
        write_jsonl(&data, &p).unwrap();
        let (Dataset::Text { instruct: true, rows: a }, Dataset::Text { instruct: true, rows: b }) =
            (&data, &load_data(&p).unwrap())
        else {
            panic!()
        };
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|r| r.critical).count(), 10);
        assert!(generated_corpus("instruct", 1, 991).unwrap_err().to_string().contains("990 distinct"));
    }

    // Text S2 sizes are checked against the data, naming the key.
    #[test]
    fn text_scenario_errors_name_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("s.toml");
        let data = generated_corpus("instruct", 300, 60).unwrap();
        for (extra, key) in [
            ("curated = 100\nredundant = 10\n", "key `curated`"),
            ("curated = 10\nredundant = 400\n", "key `redundant`"),
            ("curated = 10\nredundant = 10\ncritical_classes = [1]\n", "key `critical_classes`"),
            ("curated = 10\nredundant = 10\nmodel_hidden = 30\n", "key `model_hidden`"),
            ("curated = 10\nredundant = 10\ngenerator = \"poems\"\n", "key `generator`"),
        ] {
            std::fs::write(
                &p,
                format!("scenario = \"S2\"\ncritical_weight = 0.5\nbase_records = 50\neval_records = 20\n{extra}"),
            )
            .unwrap();
            let e = Scenario::read(&p).unwrap().validate(&p, &data).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        std::fs::write(&p, "scenario = \"S3\"\ncopies = [2]\n").unwrap();
        let e = Scenario::read(&p).unwrap().validate(&p, &data).unwrap_err().to_string();
        assert!(e.contains("key `scenario`") && e.contains("text data runs S2"), "{e}");
    }

    // The reduced DatanetBench run of `make test`: S2 (tabular and text), S3, S5 (breast cancer and
    // wine), S13 (backdating copier), S12 (6 epoch seeds, 1,500 volume records), S12 on text (4
    // epoch seeds, 150 curated, 1,000 volume records) and S15 (eval copy refused, paraphrases of the
    // public file paid no more per record than curation on the sealed split; 150 curated, 1,000
    // volume) meet their targets end to end. S14 is below.
    #[test]
    fn reduced_bench_meets_targets() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testnet/bench");
        for (file, data) in [
            ("s3-duplication.toml", "breast_cancer.csv"),
            ("s5-sybil.toml", "breast_cancer.csv"),
            ("s5-sybil-wine.toml", "wine.csv"),
            ("s13-backdating.toml", "breast_cancer.csv"),
            ("s12-stability.toml", "digits.csv.gz"),
            ("s12-text-stability.toml", "generated"),
            ("s2-curated-vs-volume.toml", "digits.csv.gz"),
            ("s2-text-curated-vs-volume.toml", "generated"),
            ("s15-sealed-eval.toml", "generated"),
        ] {
            let mut s = Scenario::read(&dir.join(file)).unwrap();
            if s.scenario == "S2" {
                s.redundant = s.redundant.min(3000);
            }
            match file {
                "s12-stability.toml" => (s.redundant, s.epoch_seeds) = (1500, 6),
                "s12-text-stability.toml" => {
                    (s.curated, s.redundant, s.base_records, s.epoch_seeds) = (150, 1000, 1000, 4)
                }
                "s15-sealed-eval.toml" => (s.curated, s.redundant, s.base_records, s.jobs) = (150, 1000, 1000, 32),
                _ => {}
            }
            let data = match data {
                "generated" => s.generate(s.generator.as_deref().unwrap()).unwrap(),
                file => load_data(&data_path(file)).unwrap(),
            };
            s.validate(&dir.join(file), &data).unwrap();
            // S3 and S5 variants admit the same distinct records, so their jobs hit the cache:
            // the file's T costs one epoch.
            let jobs = if s.scenario == "S2" { 64 } else { s.jobs };
            let r = rt.block_on(run_scenario(&data, &s, 1, jobs, false)).unwrap();
            assert!(r.pass, "{file}: {r:?}");
            if s.scenario == "S15" {
                // The copier's records were all refused, and the sealed split really was measured on.
                assert_eq!((r.extra["copier_records_admitted"], r.extra["copier_reward"]), (0.0, 0.0), "{r:?}");
                assert!(r.extra["sealed_split_records"] >= 2.0 * s.sealed_split as f64, "{r:?}");
            }
        }
    }

    /// S14 reduced: a flood of 300 junk contributions (the freeze of the full 20,000-id flood is
    /// `flood::tests`), one seed, through admission and the trainer.
    fn reduced_s14() -> BenchReport {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testnet/bench");
        let file = dir.join("s14-id-grinding-flood.toml");
        let mut s = Scenario::read(&file).unwrap();
        s.flood = 300;
        let data = load_data(&data_path("breast_cancer.csv")).unwrap();
        s.validate(&file, &data).unwrap();
        rt.block_on(run_scenario(&data, &s, 1, s.jobs, false)).unwrap()
    }

    // S14 reduced, the freeze half: every honest contribution is in the input set of the flooded
    // epoch (each junk contribution the freeze let in is admitted and measured with them).
    #[test]
    fn reduced_s14_flood_keeps_honest_in_the_input_set() {
        let r = reduced_s14();
        assert_eq!(r.extra["honest_in_input_fraction"], 1.0, "{r:?}");
        assert_eq!(r.extra["junk_in_input"], 300.0, "{r:?}");
    }

    // S14 reduced, the reward target (honest reward kept >= 95 %). Fails today: the junk lands in
    // the honest records' content units, and a unit's credit is split by record weight between
    // its owners, so junk sharing a valuable unit takes part of it (measured: 0.56 kept, all of
    // the junk's credit from units shared with honest records). With the full flood (≈ 2,040 junk
    // contributions in the input set) the junk earns nothing but the honest units drown: 65 units
    // in T = 256 jobs, most honest units under the noise floor, the rest capped (0.33 kept on
    // average, 0 in one seed; docs/BENCHMARKS.md).
    #[test]
    #[ignore = "fails: junk sharing honest units takes their credit (issue 13, S14)"]
    fn reduced_s14_flood_keeps_honest_reward() {
        let r = reduced_s14();
        assert!(r.pass, "{r:?}");
    }
}
