//! Attribution: who gets how much of an epoch's reward pool, paid for impact and not for volume
//! (DESIGN.md §7). A pure core: no I/O, no clocks, no floats from [`plan`] on, so the daemon, the
//! simulator, `datanet attribute` and DatanetBench run the same code and honest peers derive
//! identical bytes.
//!
//! # Flow
//! 1. [`features`]: each canonical record becomes a deterministic fixed-point feature vector
//!    ([`features::Featurizer`]). Not float embeddings of the frozen base: units and the screen must
//!    be bit-identical on every machine, whatever its CPU, GPU or thread count, so features are
//!    computed with integer arithmetic from the canonical record (tabular: standardized with integer
//!    statistics of the public evaluation set at scale 2^16; text: hashed character 3-gram bag,
//!    L2-normalized in fixed point).
//! 2. [`plan`]: near-duplicate clusters keep only their canonical record; [`screen`] computes exact
//!    KNN-Shapley values against the public evaluation set, adds each record's label agreement with
//!    its nearest contributed records, and excludes the low tail (reported per contributor); [`units`] forms content units by seeded integer k-means; each unit's contributor
//!    shares count the canonical records each contributor supplied first; [`jobs`] draws the
//!    coalitions from the epoch seed. The result is an [`EpochPlan`].
//! 3. Someone measures each job: [`EpochPlan::job_records`] names the records a job trains on (at
//!    most `records_per_unit_max` per unit), every job trains with the same seed
//!    ([`jobs::training_seed`], common random numbers), the trainer returns u(S) in micro-units. Several peers'
//!    reports become one utility per job with [`reports::median_table`].
//! 4. [`score`] / [`score_table`]: MSR-Banzhaf value per unit and its standard error, each after
//!    removing the effects of the other units that stand out ([`value::msr_with_errors`]); credit =
//!    Σ max(0, φ − z·SE) × share (z = `noise_floor_milli`/1000: only value above the measurement
//!    noise is paid, so hundreds of redundant units cannot sum their noise into a payout) with each
//!    unit's part capped, rewards = largest-remainder split of the pool (ties by key). The
//!    [`CreditLeaf`]s are canonical and sorted by key; [`credit_root`] is what the committee signs.
//!
//! Players are units, never identities: copying records adds nothing (admission credits the first
//! contributor; near-duplicates join a cluster), splitting an identity only splits its shares.
//!
//! Callers: `attribution::epoch` (the agreement state machine), `measure` (for `datanet attribute`
//! and DatanetBench), `daemon::epoch`.

pub mod epoch;
pub mod features;
pub mod jobs;
pub mod reports;
pub mod screen;
pub mod units;
pub mod value;

use crate::codec::{self, Canonical};
use crate::ids::{MerkleRoot, PeerKey, RecordHash};
use crate::manifest::Manifest;
use features::Embedding;
use serde::{Deserialize, Serialize};

pub use jobs::coalitions;
pub use reports::{MedianTable, Report, median_table};

const TRAIN_ORDER_CONTEXT: &str = "datanet/attribution/train-order/v1";
const UNIT_SEED_CONTEXT: &str = "datanet/attribution/unit-seed/v1";
/// The weight of one record in a unit's shares: lcm(1..=16), so a record held by up to 16
/// contributors at the same priority splits into equal integer parts (beyond that, floored parts).
pub const RECORD_WEIGHT: u64 = 720_720;
/// Weight of a one-hot label dimension in unit formation: 16 in fixed point, twice the feature clip.
const LABEL_WEIGHT: i32 = 16 << features::FRAC_BITS;

/// One admitted record of the epoch's frozen input set, as attribution sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRecord {
    /// Hash of the canonical record.
    pub hash: RecordHash,
    /// The contributors credited with it, sorted, each once: those holding it at the earliest
    /// (witnessed) priority of any contribution holding it. They split its credit equally
    /// ([`RECORD_WEIGHT`]).
    pub owners: Vec<PeerKey>,
    /// Canonical record of its near-duplicate cluster (its own hash when it is canonical).
    pub cluster: RecordHash,
    /// Its fixed-point features ([`features::Featurizer::embed`]).
    pub embedding: Embedding,
}

/// Knobs of an epoch's attribution; every peer must use the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochParams {
    /// T: coalition jobs per epoch at least. The plan sizes the count up to the smallest whole
    /// number of orthogonal blocks that hold all its units ([`job_count_for`]), at most `jobs_max`.
    pub jobs: u32,
    /// Most coalition jobs the plan may size the count up to (never below `jobs`).
    pub jobs_max: u32,
    /// Records per unit k-means aims for, and the band units are cut or merged into.
    pub unit_records_target: u32,
    pub unit_records_min: u32,
    pub unit_records_max: u32,
    /// Most units an epoch may have.
    pub unit_count_max: u32,
    pub kmeans_iterations: u32,
    /// K of the KNN-Shapley screen.
    pub screen_k: u32,
    /// Evaluation points the screen uses at most (the first in canonical order).
    pub screen_eval_max: u32,
    /// Contributed records the screen's label-agreement term looks for neighbours among, at most
    /// (the first canonical records in hash order); 0 leaves KNN-Shapley alone.
    pub screen_pool_max: u32,
    /// Largest fraction of records the screen may exclude, in ppm.
    pub screen_tail_max_ppm: u32,
    /// Records per unit a job trains on at most (from the recipe).
    pub records_per_unit_max: u32,
    /// Credit units paid this epoch.
    pub pool: u64,
    /// Largest part of the total positive value one unit may count for, in ppm.
    pub unit_cap_ppm: u32,
    /// Standard errors (×1000) subtracted from each unit's φ before it earns credit: a unit is paid
    /// for value that stands above the measurement noise, so many noisy units of redundant volume
    /// cannot add up to a payout. 0 gives the plain max(0, φ).
    pub noise_floor_milli: u32,
}

impl EpochParams {
    /// The knobs a manifest fixes for every member: its `[protocol]`, pool and per-unit record cap.
    pub fn from_manifest(m: &Manifest) -> Self {
        Self::from_protocol(&m.protocol, m.reward_pool, m.recipe.records_per_unit_max)
    }

    /// The knobs of `p` with this pool and per-unit record cap.
    pub fn from_protocol(p: &crate::manifest::Protocol, pool: u64, records_per_unit_max: u32) -> Self {
        EpochParams {
            jobs: p.jobs,
            jobs_max: p.jobs_max,
            unit_records_target: p.unit_records_target,
            unit_records_min: p.unit_records_min,
            unit_records_max: p.unit_records_max,
            unit_count_max: p.unit_count_max,
            kmeans_iterations: p.kmeans_iterations,
            screen_k: p.screen_k,
            screen_eval_max: p.screen_eval_max,
            screen_pool_max: p.screen_pool_max,
            screen_tail_max_ppm: p.screen_tail_max_ppm,
            records_per_unit_max,
            pool,
            unit_cap_ppm: p.unit_cap_ppm,
            noise_floor_milli: p.noise_floor_milli,
        }
    }

    /// The default protocol's knobs with `jobs` coalitions, pool 1,000,000 and 64 records per unit
    /// per job.
    pub fn with_jobs(jobs: u32) -> Self {
        EpochParams { jobs, ..Self::from_protocol(&crate::manifest::Protocol::default(), 1_000_000, 64) }
    }

    /// Checks the knobs, naming the bad one.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |key: &'static str, reason: &str| Err(PlanError::Param { key, reason: reason.to_string() });
        if self.jobs == 0 || self.jobs > 1_000_000 {
            return bad("jobs", "must be between 1 and 1000000");
        }
        if self.jobs_max > 1_000_000 {
            return bad("jobs_max", "must be at most 1000000");
        }
        if self.unit_records_min == 0 || self.unit_records_min > self.unit_records_max {
            return bad("unit_records_min", "must be at least 1 and at most unit_records_max");
        }
        if !(self.unit_records_min..=self.unit_records_max).contains(&self.unit_records_target) {
            return bad("unit_records_target", "must lie between unit_records_min and unit_records_max");
        }
        if self.unit_count_max == 0 || self.unit_count_max > 100_000 {
            return bad("unit_count_max", "must be between 1 and 100000");
        }
        if self.kmeans_iterations == 0 || self.kmeans_iterations > 100 {
            return bad("kmeans_iterations", "must be between 1 and 100");
        }
        if self.screen_k == 0 {
            return bad("screen_k", "must be at least 1");
        }
        if self.screen_tail_max_ppm > 1_000_000 || self.unit_cap_ppm == 0 || self.unit_cap_ppm > 1_000_000 {
            return bad("unit_cap_ppm", "ppm values must be in 1..=1000000");
        }
        if self.noise_floor_milli > 10_000 {
            return bad("noise_floor_milli", "must be at most 10000 (10 standard errors)");
        }
        if self.records_per_unit_max == 0 {
            return bad("records_per_unit_max", "must be at least 1");
        }
        Ok(())
    }
}

/// A content unit: its records in this epoch's training order and its contributors' shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Canonical, unscreened records, ordered by BLAKE3(seed ‖ hash): a job takes the first
    /// `records_per_unit_max`.
    pub records: Vec<RecordHash>,
    /// (contributor, weight), sorted by key: each record of the unit has weight [`RECORD_WEIGHT`],
    /// split equally (by floor) between its owners, and the weights are divided by their greatest
    /// common divisor (a unit of single-owner records reads as record counts). A contributor's
    /// share of the unit is its weight / [`Unit::weight_total`].
    pub shares: Vec<(PeerKey, u32)>,
}

impl Unit {
    /// Σ of the shares' weights: the denominator of every share.
    pub fn weight_total(&self) -> u64 {
        self.shares.iter().map(|s| s.1 as u64).sum()
    }
}

/// Unit shares from records' owner lists: [`RECORD_WEIGHT`] per record split by floor between its
/// owners, summed per owner, reduced by their gcd (and, should the total still not fit `u32`
/// arithmetic, scaled down by floor: only ever less).
fn unit_shares<'a>(owner_lists: impl Iterator<Item = &'a [PeerKey]>) -> Vec<(PeerKey, u32)> {
    let mut w: std::collections::BTreeMap<PeerKey, u64> = Default::default();
    for owners in owner_lists {
        if owners.is_empty() {
            continue;
        }
        let part = RECORD_WEIGHT / owners.len() as u64;
        for o in owners {
            *w.entry(*o).or_default() += part;
        }
    }
    let g = w.values().fold(0u64, |g, &x| gcd(g, x)).max(1);
    let total: u64 = w.values().map(|x| x / g).sum();
    let limit = u32::MAX as u64;
    w.into_iter()
        .map(|(k, x)| {
            let x = x / g;
            let x = if total > limit { (x as u128 * limit as u128 / total as u128) as u64 } else { x };
            (k, x as u32)
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Coalition jobs per unit a plan sizes its job count up to (before rounding to whole blocks): with
/// fewer, the 3·SE noise floor swallows a curated unit's value in most epoch seeds (DatanetBench
/// S12 on digits: 14 units, 32 jobs paid the curator nothing in 15 of 20 seeds; 64 jobs paid it the
/// most in all 20, reward CV 0.04).
pub const JOBS_PER_UNIT_MIN: u32 = 4;

/// The job count of a plan with `units` units. Wanted: at least `params.jobs` and
/// [`JOBS_PER_UNIT_MIN`] × units, rounded up to a whole number of the smallest orthogonal block B
/// holding every unit (B = the power of two ≥ 2 × units: a block of B jobs holds B/2 units), so that
/// every block is orthogonal. Past `params.jobs_max`: the most whole blocks that fit, or
/// `params.jobs` when not even one does. Every member computes the same from the plan.
pub fn job_count_for(params: &EpochParams, units: u32) -> u32 {
    let block = (2 * units.max(1)).next_power_of_two().max(2);
    let want = params.jobs.max(JOBS_PER_UNIT_MIN.saturating_mul(units)).div_ceil(block).saturating_mul(block);
    if want <= params.jobs_max {
        return want.max(params.jobs);
    }
    let fit = params.jobs_max / block * block;
    if fit >= block && fit >= params.jobs { fit } else { params.jobs }
}

/// The seed unit formation draws from: BLAKE3 over the sorted canonical record hashes of the input
/// set, so unchanged inputs form the same units under every epoch seed (units that change with the
/// epoch seed move a contributor's records across the per-unit cap and its reward with them).
fn content_seed(sorted_hashes: &[RecordHash]) -> [u8; 32] {
    let mut x = blake3::Hasher::new_derive_key(UNIT_SEED_CONTEXT);
    x.update(&(sorted_hashes.len() as u64).to_le_bytes());
    for h in sorted_hashes {
        x.update(h.as_bytes());
    }
    *x.finalize().as_bytes()
}

/// What a contributor brought to the epoch, for tables and the quality signal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributorSummary {
    pub contributor: PeerKey,
    /// Records it is an owner of (held at the earliest priority; shared records count for each).
    pub records: u32,
    /// Of those, near-duplicates of another canonical record (no credit).
    pub near_duplicates: u32,
    /// Canonical records the screen excluded (its quality signal).
    pub screened_out: u32,
    /// Units it holds a share of.
    pub units: u32,
}

/// Everything an epoch's attribution needs besides the utilities; deterministic in its inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochPlan {
    pub seed: [u8; 32],
    pub params: EpochParams,
    pub units: Vec<Unit>,
    /// coalitions[job][unit]
    pub coalitions: Vec<Vec<bool>>,
    /// Sorted by key: every contributor of the input set.
    pub contributors: Vec<ContributorSummary>,
    /// Screen score (scale 2^40: normalized KNN-Shapley plus label agreement, see
    /// [`screen::screen_values`]) of every canonical record, sorted by hash.
    pub record_values: Vec<(RecordHash, i64)>,
    /// Records the screen excluded, sorted.
    pub screened: Vec<RecordHash>,
    /// The sealed evaluation split the jobs measure on, revealed by the attestation
    /// ([`crate::sealed`]); set by the driver that holds the pool, `None` without a sealed pool.
    pub sealed: Option<crate::sealed::Reveal>,
}

impl EpochPlan {
    /// Number of coalition jobs.
    pub fn job_count(&self) -> u32 {
        self.coalitions.len() as u32
    }

    /// The records job `job` trains on: for each unit in its coalition (in unit order), the first
    /// `records_per_unit_max` of the unit's records. `None` for a job that does not exist.
    pub fn job_records(&self, job: u32) -> Option<Vec<RecordHash>> {
        let c = self.coalitions.get(job as usize)?;
        let cap = self.params.records_per_unit_max as usize;
        Some(
            self.units
                .iter()
                .zip(c)
                .filter(|(_, b)| **b)
                .flat_map(|(u, _)| u.records.iter().take(cap).copied())
                .collect(),
        )
    }
}

/// Why a plan could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("parameter `{key}`: {reason}")]
    Param { key: &'static str, reason: String },
    #[error("record {0} appears twice in the input set")]
    DuplicateRecord(RecordHash),
    #[error("record {hash} has {got} features, others have {want}")]
    Dimensions { hash: RecordHash, got: usize, want: usize },
}

/// Builds the epoch plan from the frozen input set (any order), the public evaluation set's
/// embeddings and the epoch seed. Pure and deterministic.
pub fn plan(
    records: &[InputRecord],
    eval: &[Embedding],
    epoch_seed: [u8; 32],
    params: &EpochParams,
) -> Result<EpochPlan, PlanError> {
    params.validate()?;
    let mut recs: Vec<&InputRecord> = records.iter().collect();
    recs.sort_by_key(|r| r.hash);
    for w in recs.windows(2) {
        if w[0].hash == w[1].hash {
            return Err(PlanError::DuplicateRecord(w[0].hash));
        }
    }
    if let Some(first) = recs.first() {
        let want = first.embedding.features.len();
        if let Some(r) = recs.iter().find(|r| r.embedding.features.len() != want) {
            return Err(PlanError::Dimensions { hash: r.hash, got: r.embedding.features.len(), want });
        }
        if let Some(e) = eval.iter().find(|e| e.features.len() != want) {
            return Err(PlanError::Dimensions { hash: RecordHash::default(), got: e.features.len(), want });
        }
    }
    let present = |h: &RecordHash| recs.binary_search_by_key(h, |r| r.hash).is_ok();
    let canonical: Vec<&InputRecord> =
        recs.iter().copied().filter(|r| r.cluster == r.hash || !present(&r.cluster)).collect();

    // Screen: exact KNN-Shapley against the first `screen_eval_max` eval points in canonical order,
    // normalized, plus label agreement with the K nearest of the first `screen_pool_max` records.
    let mut eval_sorted: Vec<&Embedding> = eval.iter().collect();
    eval_sorted.sort_by(|a, b| (&a.features, a.label).cmp(&(&b.features, b.label)));
    eval_sorted.truncate(params.screen_eval_max as usize);
    let train: Vec<&Embedding> = canonical.iter().map(|r| &r.embedding).collect();
    let pool: Vec<usize> = (0..train.len().min(params.screen_pool_max as usize)).collect();
    let values = screen::screen_values(&train, &eval_sorted, &pool, params.screen_k);
    let mut excluded = screen::low_tail(&values, params.screen_tail_max_ppm);
    for (x, outside) in excluded.iter_mut().zip(screen::out_of_support(&train, &eval_sorted)) {
        *x |= outside;
    }
    let record_values: Vec<(RecordHash, i64)> = canonical.iter().zip(&values).map(|(r, &v)| (r.hash, v)).collect();
    let screened: Vec<RecordHash> = canonical.iter().zip(&excluded).filter(|(_, x)| **x).map(|(r, _)| r.hash).collect();
    let kept: Vec<&InputRecord> = canonical.iter().zip(&excluded).filter(|(_, x)| !**x).map(|(r, _)| *r).collect();

    // Units over the kept canonical records.
    let shape = units::UnitShape {
        records_target: params.unit_records_target,
        records_min: params.unit_records_min,
        records_max: params.unit_records_max,
        count_max: params.unit_count_max,
        iterations: params.kmeans_iterations,
    };
    // A record's content is its features and its label: one-hot label dimensions far wider than the
    // clipped feature range keep records of different classes in different units.
    let classes = kept.iter().map(|r| r.embedding.label as usize + 1).max().unwrap_or(1);
    let augmented: Vec<Vec<i32>> = kept
        .iter()
        .map(|r| {
            let mut v = r.embedding.features.clone();
            if classes > 1 {
                v.extend((0..classes).map(|c| if c == r.embedding.label as usize { LABEL_WEIGHT } else { 0 }));
            }
            v
        })
        .collect();
    let points: Vec<(RecordHash, &[i32])> = kept.iter().zip(&augmented).map(|(r, v)| (r.hash, v.as_slice())).collect();
    let unit_seed = content_seed(&canonical.iter().map(|r| r.hash).collect::<Vec<_>>());
    let groups = units::form_units(unit_seed, &points, &shape);
    let order_key = |h: &RecordHash| {
        let mut x = blake3::Hasher::new_derive_key(TRAIN_ORDER_CONTEXT);
        x.update(&epoch_seed);
        x.update(h.as_bytes());
        *x.finalize().as_bytes()
    };
    let units: Vec<Unit> = groups
        .iter()
        .map(|g| {
            let mut members: Vec<&InputRecord> = g.iter().map(|&i| kept[i]).collect();
            members.sort_by_cached_key(|r| order_key(&r.hash));
            let shares = unit_shares(members.iter().map(|r| r.owners.as_slice()));
            Unit { records: members.iter().map(|r| r.hash).collect(), shares }
        })
        .collect();

    // Per-contributor summary.
    let mut summary: std::collections::BTreeMap<PeerKey, ContributorSummary> = Default::default();
    for r in &recs {
        for o in &r.owners {
            let s = summary.entry(*o).or_insert_with(|| ContributorSummary { contributor: *o, ..Default::default() });
            s.records += 1;
            if r.cluster != r.hash && present(&r.cluster) {
                s.near_duplicates += 1;
            }
        }
    }
    let screened_set: std::collections::BTreeSet<RecordHash> = screened.iter().copied().collect();
    for r in &canonical {
        if screened_set.contains(&r.hash) {
            for o in &r.owners {
                summary.get_mut(o).expect("contributor present").screened_out += 1;
            }
        }
    }
    for u in &units {
        for (k, _) in &u.shares {
            summary.get_mut(k).expect("contributor present").units += 1;
        }
    }

    Ok(EpochPlan {
        seed: epoch_seed,
        params: params.clone(),
        coalitions: jobs::coalitions(epoch_seed, units.len() as u32, job_count_for(params, units.len() as u32)),
        units,
        contributors: summary.into_values().collect(),
        record_values,
        screened,
        sealed: None,
    })
}

/// One contributor's certified result for an epoch: a leaf of the credit tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CreditLeaf {
    pub contributor: PeerKey,
    /// Σ over units of capped max(0, φ − noise floor) × share, in micro-utility.
    pub credit: u64,
    /// Credit units of the pool paid to it.
    pub reward: u64,
}

impl Canonical for CreditLeaf {
    const TAG: &'static [u8] = b"datanet/credit-leaf/v1";
    const MAX_BYTES: usize = 32 + 10 + 10;
}

/// The values and payouts of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scores {
    /// MSR-Banzhaf φ per unit, micro-utility.
    pub unit_values: Vec<i64>,
    /// Standard error of each φ, micro-utility.
    pub unit_errors: Vec<i64>,
    /// One leaf per contributor of the input set, sorted by key.
    pub leaves: Vec<CreditLeaf>,
    /// Pool not paid out; stays in the pool: `retained_by_cap`, or all of it when no unit has
    /// positive value above the noise floor.
    pub retained: u64,
    /// The part of `retained` the per-unit cap kept: pool × (Σ value above the cap) / (Σ positive
    /// value), rounded so that paid + retained = pool. The cap never hands this to other units.
    pub retained_by_cap: u64,
}

/// Why utilities could not be scored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScoreError {
    #[error("utility table is missing job {job} (the plan has {jobs} jobs)")]
    MissingJob { job: u32, jobs: u32 },
    #[error("utility table has {got} jobs, the plan has {jobs}")]
    ExtraJobs { got: usize, jobs: u32 },
}

/// Scores a plan given one agreed utility per job (in job order).
pub fn score(plan: &EpochPlan, utilities: &[i64]) -> Result<Scores, ScoreError> {
    let jobs = plan.job_count();
    if utilities.len() < jobs as usize {
        return Err(ScoreError::MissingJob { job: utilities.len() as u32, jobs });
    }
    if utilities.len() > jobs as usize {
        return Err(ScoreError::ExtraJobs { got: utilities.len(), jobs });
    }
    let (unit_values, unit_errors) = value::msr_with_errors(&plan.coalitions, utilities, plan.units.len());
    let credited = value::above_noise(&unit_values, &unit_errors, plan.params.noise_floor_milli);
    let (capped, total) = value::capped_values(&credited, plan.params.unit_cap_ppm);
    let mut credit: std::collections::BTreeMap<PeerKey, u128> =
        plan.contributors.iter().map(|c| (c.contributor, 0u128)).collect();
    // weight_c = Σ_u ⌊capped_u · w_cu · 2^32 / Σ_c' w_c'u⌋ and credit_c = ⌊weight_c / 2^32⌋: every
    // term is floored, so splitting one owner's weight w over identities (w = w_1 + … + w_k) can
    // only lose (⌊x⌋ + ⌊y⌋ ≤ ⌊x + y⌋): a split never raises the total credit.
    for (u, &c) in plan.units.iter().zip(&capped) {
        let n = u.weight_total() as u128;
        if n == 0 {
            continue;
        }
        for (k, w) in &u.shares {
            *credit.entry(*k).or_default() += ((c as u128) << 32) * *w as u128 / n;
        }
    }
    let capped_total: u128 = capped.iter().map(|&c| c as u128).sum();
    let paid = if total == 0 { 0 } else { value::mul_div_rem(plan.params.pool as u128, capped_total, total).0 as u64 };
    let weights: Vec<(PeerKey, u128)> = credit.iter().map(|(k, w)| (*k, *w)).collect();
    let rewards = value::largest_remainder(paid, &weights);
    let paid_out: u64 = rewards.iter().sum();
    let leaves = weights
        .iter()
        .zip(&rewards)
        .map(|((k, w), &reward)| CreditLeaf { contributor: *k, credit: (w >> 32).min(u64::MAX as u128) as u64, reward })
        .collect();
    let retained = plan.params.pool - paid_out;
    let retained_by_cap = if total == 0 { 0 } else { retained };
    Ok(Scores { unit_values, unit_errors, leaves, retained, retained_by_cap })
}

/// Scores a plan from a median table; a job without an agreed utility is an error naming it.
pub fn score_table(plan: &EpochPlan, table: &MedianTable) -> Result<Scores, ScoreError> {
    let jobs = plan.job_count();
    let mut utilities = Vec::with_capacity(jobs as usize);
    for job in 0..jobs {
        match table.utilities.get(job as usize) {
            Some(Some(u)) => utilities.push(*u),
            _ => return Err(ScoreError::MissingJob { job, jobs }),
        }
    }
    if table.utilities.len() > jobs as usize {
        return Err(ScoreError::ExtraJobs { got: table.utilities.len(), jobs });
    }
    score(plan, &utilities)
}

/// The Merkle root over the leaves' canonical hashes, in the given (sorted) order.
pub fn credit_root(leaves: &[CreditLeaf]) -> MerkleRoot {
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|l| *codec::hash(l).as_bytes()).collect();
    crate::merkle::root(&hashes)
}

/// The canonical bytes of every leaf, concatenated: what "identical credit bytes" compares.
pub fn leaves_bytes(leaves: &[CreditLeaf]) -> Vec<u8> {
    leaves.iter().flat_map(codec::encode).collect()
}

#[cfg(test)]
mod tests;
