//! One epoch of attribution measured on this machine: the library under `datanet attribute`,
//! DatanetBench and the daemon's epoch plan.
//!
//! [`input_records`] turns admitted records (`store`) into attribution inputs with the fixed-point
//! content features of `attribution::features` (pure; the daemon's plan calls it too);
//! [`measure_epoch`] builds the [`EpochPlan`], trains every coalition job through the trainer's API
//! ([`UtilityJob`], reusing a [`UtilityCache`]) and scores the utilities exactly as the committee
//! would; [`contributor_values`] sums the signed unit values per contributor; [`eval_values`] reads
//! a Datanet's public evaluation file from the store. [`attribute_local`] is all of `datanet
//! attribute`: a stored Datanet, its base provisioned, every job measured here, one row per
//! contributor. This room calls `trainer` and `attribution` and never touches tch itself.

use crate::admission::{self, AdmitError};
use crate::attribution::features::{Embedding, Featurizer};
use crate::attribution::{self, EpochParams, EpochPlan, InputRecord, PlanError, ScoreError, Scores};
use crate::ids::{DatanetId, PeerKey, RecordHash};
use crate::manifest::{Manifest, TaskKind};
use crate::store::contributions::{AdmittedRecord, ContributionInfo};
use crate::store::{Store, StoreError};
use crate::trainer::utility::{UtilityJob, UtilityOptions};
use crate::trainer::{Base, TrainError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Utilities already measured, by (job seed, job records): variants of one benchmark scenario that
/// produce the same coalition reuse them.
pub type UtilityCache = HashMap<[u8; 32], i64>;

/// The [`UtilityCache`] key of training `hashes` (in order) with `seed`.
pub fn cache_key(seed: u64, hashes: &[RecordHash]) -> [u8; 32] {
    let mut key = blake3::Hasher::new();
    key.update(&seed.to_le_bytes());
    for h in hashes {
        key.update(h.as_bytes());
    }
    *key.finalize().as_bytes()
}

/// Why an epoch could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A record or evaluation record the featurizer refuses (the message names which).
    #[error("{0}")]
    Inputs(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("job {job}")]
    Job {
        job: u32,
        #[source]
        source: TrainError,
    },
    #[error(transparent)]
    Score(#[from] ScoreError),
}

/// An epoch measured and scored.
pub struct Measured {
    pub plan: EpochPlan,
    pub utilities: Vec<i64>,
    pub scores: Scores,
    /// Jobs actually trained (not found in the cache) and their wall time.
    pub trained: u32,
    pub train_secs: f64,
}

/// Attribution inputs from admitted records: fixed-point features against the evaluation set.
pub fn input_records(
    task: &TaskKind,
    records: &[AdmittedRecord],
    eval: &[Value],
) -> Result<(Vec<InputRecord>, Vec<Embedding>), MeasureError> {
    let err = MeasureError::Inputs;
    let featurizer = Featurizer::new(task, eval).map_err(|(i, e)| err(format!("evaluation record {}: {e}", i + 1)))?;
    let inputs = records
        .iter()
        .map(|r| {
            let embedding = featurizer.embed(&r.value).map_err(|e| err(format!("record {}: {e}", r.hash.short())))?;
            Ok(InputRecord { hash: r.hash, owners: r.owners.clone(), cluster: r.cluster.unwrap_or(r.hash), embedding })
        })
        .collect::<Result<Vec<_>, MeasureError>>()?;
    let eval_emb = eval
        .iter()
        .enumerate()
        .map(|(i, v)| featurizer.embed(v).map_err(|e| err(format!("evaluation record {}: {e}", i + 1))))
        .collect::<Result<Vec<_>, MeasureError>>()?;
    Ok((inputs, eval_emb))
}

/// Plans, measures every job with `job` (reusing `cache`), and scores.
#[allow(clippy::too_many_arguments)]
pub fn measure_epoch(
    task: &TaskKind,
    recipe_seed: u64,
    records: &[AdmittedRecord],
    eval: &[Value],
    params: &EpochParams,
    epoch_seed: [u8; 32],
    job: &mut UtilityJob,
    cache: &mut UtilityCache,
    progress: &indicatif::ProgressBar,
) -> Result<Measured, MeasureError> {
    let (inputs, eval_emb) = input_records(task, records, eval)?;
    let plan = attribution::plan(&inputs, &eval_emb, epoch_seed, params)?;
    let by_hash: HashMap<RecordHash, &Value> = records.iter().map(|r| (r.hash, &r.value)).collect();
    progress.set_length(plan.job_count() as u64);
    let mut utilities = Vec::with_capacity(plan.job_count() as usize);
    let (mut trained, t) = (0u32, Instant::now());
    let seed = attribution::jobs::training_seed(epoch_seed, recipe_seed);
    for j in 0..plan.job_count() {
        let hashes = plan.job_records(j).expect("job in range");
        let key = cache_key(seed, &hashes);
        let u = match cache.get(&key) {
            Some(u) => *u,
            None => {
                let values: Vec<Value> = hashes.iter().map(|h| by_hash[h].clone()).collect();
                let u = job.utility_seeded(&values, seed).map_err(|source| MeasureError::Job { job: j, source })?;
                trained += 1;
                cache.insert(key, u);
                u
            }
        };
        utilities.push(u);
        progress.inc(1);
    }
    let train_secs = t.elapsed().as_secs_f64();
    let scores = attribution::score(&plan, &utilities)?;
    Ok(Measured { plan, utilities, scores, trained, train_secs })
}

/// Σ over units of φ × share per contributor (signed, micro-utility): the "value" column.
pub fn contributor_values(plan: &EpochPlan, unit_values: &[i64]) -> BTreeMap<PeerKey, i64> {
    let mut out: BTreeMap<PeerKey, i128> = BTreeMap::new();
    for (u, &phi) in plan.units.iter().zip(unit_values) {
        let n = u.weight_total().max(1) as i128;
        for (k, c) in &u.shares {
            *out.entry(*k).or_default() += phi as i128 * *c as i128 / n;
        }
    }
    out.into_iter().map(|(k, v)| (k, v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)).collect()
}

/// Why a stored public evaluation file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EvalFileError {
    #[error("the public evaluation file")]
    Read(#[source] StoreError),
    #[error(transparent)]
    Parse(#[from] AdmitError),
}

/// The public evaluation records of a Datanet held in `store`, each with its `slice` field.
pub async fn eval_values(store: &Store, m: &Manifest) -> Result<Vec<Value>, EvalFileError> {
    let bytes = store.get_blob(&m.eval.public_hash).await.map_err(EvalFileError::Read)?;
    Ok(admission::eval_values(m, &bytes)?)
}

/// What [`attribute_local`] measures.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Datanet id (hex, or a unique prefix) or name.
    pub datanet: String,
    /// Epoch seed (default: BLAKE3 of the Datanet id and "local").
    pub epoch_seed: Option<[u8; 32]>,
    /// Coalition jobs (T).
    pub jobs: u32,
    /// Base model folder (default: the installed or generated base of the manifest).
    pub base: Option<PathBuf>,
    /// libtorch CPU threads per job.
    pub threads: usize,
}

/// Why [`attribute_local`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("datanet `{0}` is not known here")]
    UnknownDatanet(String),
    #[error(transparent)]
    Eval(#[from] EvalFileError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("loading the base from {}", .dir.display())]
    LoadBase {
        dir: PathBuf,
        #[source]
        source: TrainError,
    },
    #[error(transparent)]
    Measure(#[from] MeasureError),
}

/// One contributor's line of a local epoch.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ContributorRow {
    pub contributor: String,
    pub records: u64,
    pub new: u64,
    pub duplicates: u64,
    pub units: u32,
    pub screened_out: u32,
    pub value: i64,
    pub credit: u64,
    pub reward: u64,
}

/// A local epoch: what `datanet attribute` prints.
pub struct LocalEpoch {
    pub datanet: DatanetId,
    pub epoch_seed: [u8; 32],
    pub params: EpochParams,
    pub measured: Measured,
    pub rows: BTreeMap<PeerKey, ContributorRow>,
}

/// One epoch of attribution over a stored Datanet, every job on this machine: its records and
/// public evaluation file from the store in `datadir`, the base from
/// [`crate::trainer::provision_base`] (or `options.base`), [`measure_epoch`], and per contributor
/// its admission counts, units, value, credit and reward.
pub async fn attribute_local(
    datadir: &Path,
    options: &LocalOptions,
    progress: &indicatif::ProgressBar,
) -> Result<LocalEpoch, LocalError> {
    let store = Store::open(datadir).await?;
    let (id, m) =
        store.resolve_datanet(&options.datanet)?.ok_or_else(|| LocalError::UnknownDatanet(options.datanet.clone()))?;
    let seed = options.epoch_seed.unwrap_or_else(|| {
        let mut h = blake3::Hasher::new();
        h.update(id.as_bytes());
        h.update(b"local");
        *h.finalize().as_bytes()
    });
    let records = store.datanet_records(&id, None).await?;
    let eval = eval_values(&store, &m).await?;
    let infos = store.contributions(&id)?;
    let dir = crate::trainer::provision_base(datadir, &m, &eval, options.base.as_deref())?;
    let opts = UtilityOptions { threads: options.threads, ..UtilityOptions::default() };
    let base = Base::load(&dir, opts.device.resolve()?).map_err(|source| LocalError::LoadBase { dir, source })?;
    let mut job = UtilityJob::new(base, &m.task, &m.recipe, &m.eval.slices, &eval, opts)?;
    let params = EpochParams { jobs: options.jobs, ..EpochParams::from_manifest(&m) };
    let mut cache = UtilityCache::new();
    let measured =
        measure_epoch(&m.task, m.recipe.seed, &records, &eval, &params, seed, &mut job, &mut cache, progress)?;
    progress.finish_and_clear();
    store.close().await?;
    let rows = contributor_rows(&infos, &measured);
    Ok(LocalEpoch { datanet: id, epoch_seed: seed, params, measured, rows })
}

/// Per contributor: admission counts from `infos`, units and screened records from the plan,
/// value, credit and reward from the scores.
pub fn contributor_rows(infos: &[ContributionInfo], out: &Measured) -> BTreeMap<PeerKey, ContributorRow> {
    let values = contributor_values(&out.plan, &out.scores.unit_values);
    let mut rows: BTreeMap<PeerKey, ContributorRow> = BTreeMap::new();
    fn row(rows: &mut BTreeMap<PeerKey, ContributorRow>, k: PeerKey) -> &mut ContributorRow {
        rows.entry(k).or_insert_with(|| ContributorRow { contributor: k.to_hex(), ..ContributorRow::default() })
    }
    for c in infos {
        let r = row(&mut rows, c.signed.body.contributor);
        r.records += c.meta.records as u64;
        r.new += c.meta.new_records as u64;
        r.duplicates += (c.meta.duplicates + c.meta.near_duplicates) as u64;
    }
    for s in &out.plan.contributors {
        let r = row(&mut rows, s.contributor);
        r.units = s.units;
        r.screened_out = s.screened_out;
    }
    for l in &out.scores.leaves {
        let r = row(&mut rows, l.contributor);
        r.credit = l.credit;
        r.reward = l.reward;
        r.value = values.get(&l.contributor).copied().unwrap_or(0);
    }
    rows
}
