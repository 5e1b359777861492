//! Trained adapters, the library under `datanet train | eval | adapter merge | lineage`: train a
//! LoRA adapter on a Datanet's admitted records and sign its lineage, find an adapter folder,
//! evaluate an adapter (or the base) on a Datanet's public slices, merge one into its base, and
//! prove that a record was in an adapter's training set. The CLI only parses, calls one of these
//! and prints.
//!
//! Where things live in a datadir: installed bases in `models/<folder hash>/` (generated bases
//! from a manifest's preset are created there on first use); trained adapters in
//! `adapters/<adapter hash>/` in PEFT layout with `lineage.bin` (signed) and `records.bin` (the
//! training record hashes in order). Every adapter file, lineage and record list is also a blob in
//! the store, so peers can fetch them by hash.

use crate::codec::{self, Signed};
use crate::identity::Identity;
use crate::ids::{BlobHash, ContributionId, RecordHash};
use crate::store::Store;
use crate::trainer::eval::{self, EvalReport, EvalSet};
use crate::trainer::lineage::{Lineage, LineageMetric, LineageProof, RecordList, SignedLineage, recipe_hash};
use crate::trainer::lora::{self, LoraSet, LoraSpec};
use crate::trainer::model::folder_hash;
use crate::trainer::train::{StepReport, TrainConfig};
use crate::trainer::{self, Base, DeviceChoice, TorchSession, data, init, provision};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lineage file inside an adapter folder.
pub const LINEAGE_FILE: &str = "lineage.bin";
/// The training-order record list inside an adapter folder.
pub const RECORDS_FILE: &str = "records.bin";

/// What `datanet train` asks for.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    /// The Datanet (name, id or unique id prefix).
    pub datanet: String,
    /// Train on these contributions only (ids or prefixes); empty: every admitted record.
    pub contributions: Vec<String>,
    /// A base folder instead of the one the manifest names.
    pub base: Option<PathBuf>,
    pub grad_accum: usize,
    pub device: DeviceChoice,
    /// libtorch CPU threads (0 = libtorch's default).
    pub threads: usize,
}

/// A trained, stored and signed adapter.
#[derive(Debug)]
pub struct Trained {
    pub adapter: BlobHash,
    pub lineage_blob: BlobHash,
    pub records: usize,
    pub steps: u32,
    pub tokens_per_s: f64,
    /// The base alone and the adapted model on the evaluation slices.
    pub base_report: EvalReport,
    pub report: EvalReport,
    /// The adapter folder in the datadir.
    pub dir: PathBuf,
}

/// The lineage's per-slice metrics in integer units, and the weighted loss (micro) and accuracy
/// (ppm).
pub fn lineage_metrics(r: &EvalReport) -> (Vec<LineageMetric>, i64, u32) {
    let ms = r
        .slices
        .iter()
        .map(|s| LineageMetric {
            slice: s.name.clone(),
            weight_ppm: s.weight_ppm,
            loss_micro: (s.loss * 1e6).round() as i64,
            accuracy_ppm: (s.accuracy * 1e6).round() as u32,
            count: s.count,
        })
        .collect();
    (ms, (r.weighted_loss * 1e6).round() as i64, (r.weighted_accuracy * 1e6).round() as u32)
}

/// Trains a LoRA adapter on a Datanet's admitted records (the named contributions only, when
/// given) on the manifest's base and recipe; stores the adapter, its config, the record list and
/// the lineage signed by `identity` as blobs, flushes, and writes the adapter folder under
/// `datadir/adapters/`. `on_step` sees every optimizer step (on a blocking thread).
pub async fn train(
    store: &Store,
    identity: &Identity,
    datadir: &Path,
    req: &TrainRequest,
    mut on_step: impl FnMut(&StepReport) + Send + 'static,
) -> anyhow::Result<Trained> {
    let (datanet, m) = store.require_datanet(&req.datanet)?;
    // Training reads records, not credit: every named contribution at the same priority.
    let only: Option<BTreeMap<ContributionId, u64>> = if req.contributions.is_empty() {
        None
    } else {
        let mut ids = BTreeMap::new();
        for c in &req.contributions {
            let id = store.resolve_contribution(c)?.with_context(|| format!("contribution `{c}` is not known here"))?;
            ids.insert(id, 0);
        }
        Some(ids)
    };
    let admitted = store.datanet_records(&datanet, only.as_ref()).await?;
    if admitted.is_empty() {
        bail!(trainer::TrainError::EmptyTrainingSet);
    }
    let evals = crate::measure::eval_values(store, &m).await?;
    let bdir = trainer::provision_base(datadir, &m, &evals, req.base.as_deref())?;
    // Provisioned bases were just verified (and their hash cached); an explicit base is hashed here.
    let base_hash = if req.base.is_some() { folder_hash(&bdir)? } else { provision::cached_folder_hash(&bdir)? };
    let device = req.device.resolve()?;
    let (threads, grad_accum, manifest) = (req.threads, req.grad_accum, m.clone());
    let values: Vec<serde_json::Value> = admitted.iter().map(|r| r.value.clone()).collect();
    let hashes: Vec<RecordHash> = admitted.iter().map(|r| r.hash).collect();
    let job = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let base = Base::load(&bdir, device)?;
        let spec = LoraSpec::from_recipe(&manifest.recipe)?;
        let cfg = TrainConfig { grad_accum, ..TrainConfig::from_recipe(&manifest.recipe)? };
        let examples = data::examples(&base, &manifest.task, &values, cfg.sequence_length)?;
        let evalset = EvalSet::prepare(&base, &manifest.task, &manifest.eval.slices, &evals, cfg.sequence_length)?;
        let _s = TorchSession::begin(cfg.seed, threads);
        let base_report = eval::evaluate(&base, None, &evalset, 32)?;
        let (lora, outcome) = trainer::train::train_lora(&base, &spec, &examples, &cfg, &mut on_step)?;
        let report = eval::evaluate(&base, Some(&lora), &evalset, 32)?;
        let (cfg_bytes, weights) = lora.to_peft_bytes(&base)?;
        Ok((base_report, report, cfg_bytes, weights, outcome, cfg))
    });
    let (base_report, report, cfg_bytes, weights, outcome, cfg) = job.await??;
    let order = RecordList { hashes: outcome.order.iter().map(|&i| hashes[i]).collect() };
    let records_bytes = codec::encode(&order);
    let adapter = store.put_blob(weights.clone()).await?;
    let adapter_config = store.put_blob(cfg_bytes.clone()).await?;
    let records_blob = store.put_blob(records_bytes.clone()).await?;
    let (ms, wl, wa) = lineage_metrics(&report);
    let body = Lineage {
        adapter,
        adapter_config,
        base_model: base_hash,
        datanet,
        records_root: order.root(),
        record_count: order.hashes.len() as u64,
        records_blob,
        recipe_hash: recipe_hash(&m.recipe),
        seed: cfg.seed,
        steps: cfg.steps,
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        metrics: ms,
        weighted_loss_micro: wl,
        weighted_accuracy_ppm: wa,
    };
    let lineage_bytes = Signed::sign(body, &identity.signing_key()).to_bytes();
    let lineage_blob = store.put_blob(lineage_bytes.clone()).await?;
    store.flush().await?;
    let dir = datadir.join("adapters").join(adapter.to_hex());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in [
        (lora::ADAPTER_CONFIG, &cfg_bytes),
        (lora::ADAPTER_WEIGHTS, &weights),
        (LINEAGE_FILE, &lineage_bytes),
        (RECORDS_FILE, &records_bytes),
    ] {
        std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(Trained {
        adapter,
        lineage_blob,
        records: order.hashes.len(),
        steps: cfg.steps,
        tokens_per_s: outcome.tokens as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        base_report,
        report,
        dir,
    })
}

/// An adapter folder: a path holding `adapter_config.json`, or an id / unique prefix of one in
/// `datadir/adapters/`.
pub fn adapter_dir(datadir: &Path, key: &str) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(key);
    if p.join(lora::ADAPTER_CONFIG).exists() {
        return Ok(p);
    }
    let root = datadir.join("adapters");
    let key = key.to_ascii_lowercase();
    let found: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&key))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => bail!("adapter `{key}` is not in {} (give an id, a unique prefix or a folder)", root.display()),
        n => bail!("adapter prefix `{key}` matches {n} adapters; give more digits"),
    }
}

/// The signed lineage of an adapter folder, verified.
pub fn read_lineage(dir: &Path) -> anyhow::Result<SignedLineage> {
    let p = dir.join(LINEAGE_FILE);
    let bytes = std::fs::read(&p).with_context(|| format!("{}: no lineage for this adapter", p.display()))?;
    SignedLineage::decode_verified(&bytes).with_context(|| format!("{}", p.display()))
}

/// Evaluates an adapter folder (or, with `None`, the base alone) on a Datanet's public evaluation
/// slices; the Datanet is `datanet` or, when absent, the adapter lineage's. Returns whether an
/// adapter was evaluated, and the report.
pub async fn evaluate(
    store: &Store,
    datadir: &Path,
    adapter: Option<&Path>,
    datanet: Option<&str>,
    base: Option<&Path>,
    device: DeviceChoice,
    threads: usize,
) -> anyhow::Result<EvalReport> {
    let m = match (datanet, adapter) {
        (Some(d), _) => store.require_datanet(d)?.1,
        (None, Some(dir)) => {
            let l = read_lineage(dir)?;
            store.manifest(&l.body.datanet)?.with_context(|| format!("datanet {} not known here", l.body.datanet))?.body
        }
        (None, None) => bail!("give --datanet to evaluate the base"),
    };
    let evals = crate::measure::eval_values(store, &m).await?;
    let bdir = trainer::provision_base(datadir, &m, &evals, base)?;
    let device = device.resolve()?;
    let adapter = adapter.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || -> anyhow::Result<EvalReport> {
        let base = Base::load(&bdir, device)?;
        let seq = m.recipe.sequence_length as usize;
        let set = EvalSet::prepare(&base, &m.task, &m.eval.slices, &evals, seq)?;
        let _s = TorchSession::begin(0, threads);
        let lora = adapter.as_deref().map(|d| LoraSet::load_peft(&base, d)).transpose()?;
        Ok(eval::evaluate(&base, lora.as_ref(), &set, 32)?)
    })
    .await?
}

/// Writes `base` with the adapter in `adapter_dir` merged in (`W + alpha/r·B·A`) to `out`, every
/// key of the base config the trainer does not change kept; returns the merged folder's hash.
pub fn merge(base: &Path, adapter_dir: &Path, out: &Path) -> anyhow::Result<BlobHash> {
    let base_model = Base::load(base, DeviceChoice::Cpu.resolve()?)?;
    let lora = LoraSet::load_peft(&base_model, adapter_dir)?;
    init::save_merged(base, out, lora.merged_tensors(&base_model))?;
    Ok(folder_hash(out)?)
}

/// An inclusion proof that `record` was in the training set of the adapter in `dir`, after
/// checking the folder's record list against its lineage.
pub fn prove(dir: &Path, record: &RecordHash) -> anyhow::Result<LineageProof> {
    let lineage = read_lineage(dir)?;
    let p = dir.join(RECORDS_FILE);
    let list: RecordList = codec::decode(&std::fs::read(&p).with_context(|| format!("{}", p.display()))?)?;
    if list.root() != lineage.body.records_root {
        bail!("{}: record list does not match the lineage's records root", p.display());
    }
    let proof = list.prove(record).with_context(|| format!("record {record} is not in this adapter's training set"))?;
    Ok(LineageProof { lineage, proof })
}
