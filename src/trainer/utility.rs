//! The attribution unit of work (DESIGN.md §7.3): u(S) for a coalition S of records.
//!
//! [`UtilityJob`] loads the frozen base and prepares the public evaluation set **once**, and
//! measures the base's weighted evaluation loss once. Each [`UtilityJob::utility`] call then trains
//! a fresh short LoRA adapter with the manifest's fixed recipe on the given records (in the order
//! given; the seed shuffles them) and returns
//!
//! ```text
//! u(S) = round(1e6 × (weighted_loss(base) − weighted_loss(base + adapter(S))))
//! ```
//!
//! in **micro-nats** of weighted evaluation cross-entropy (slice weights from the manifest): positive
//! when S helps, negative when it hurts, exactly `0` for the empty coalition (no training).
//! Loss rather than accuracy because it moves smoothly with small coalitions, which keeps the
//! Banzhaf differences informative.
//!
//! Guarantees: no disk writes; no global state left behind; deterministic — the same base, eval
//! set, recipe, records (same order), seed, device and thread count give the same i64 (on CPU,
//! bit-for-bit). Calls are serialized process-wide by [`super::TorchSession`] (libtorch's RNG and
//! thread pool are global), so running jobs on several threads is safe but not faster; set
//! `threads` instead. Capping records per unit (`records_per_unit_max`) is the caller's job.
//!
//! Cost: the mlp family with a few hundred records and a recipe of tens of steps takes a few
//! milliseconds per call on one CPU core; llama cost is `steps × batch × sequence_length` tokens of
//! forward+backward plus one evaluation pass.
//!
//! ```ignore
//! let mut job = UtilityJob::open(&base_dir, &manifest.task, &manifest.recipe, &manifest.eval.slices,
//!                                &eval_records, UtilityOptions::default())?;
//! let u: i64 = job.utility(&coalition_records)?;            // seed = recipe.seed
//! let u2: i64 = job.utility_seeded(&coalition_records, 7)?; // per-job seed
//! ```

use super::data::{self, Example};
use super::eval::{self, EvalReport, EvalSet};
use super::lora::LoraSpec;
use super::model::Base;
use super::train::{self, TrainConfig};
use super::{DeviceChoice, Result, TorchSession, TrainError};
use crate::manifest::{EvalSlice, Recipe, TaskKind};
use serde_json::Value;
use std::path::Path;

/// Where and how a job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtilityOptions {
    pub device: DeviceChoice,
    /// libtorch CPU threads during a call (0 = leave libtorch's setting).
    pub threads: usize,
    /// Evaluation batch size.
    pub eval_batch: usize,
}

impl Default for UtilityOptions {
    fn default() -> Self {
        UtilityOptions { device: DeviceChoice::Cpu, threads: 1, eval_batch: 64 }
    }
}

/// A loaded base + evaluation set that measures u(S) for many coalitions.
pub struct UtilityJob {
    base: Base,
    task: TaskKind,
    spec: LoraSpec,
    train: TrainConfig,
    eval: EvalSet,
    base_report: EvalReport,
    opts: UtilityOptions,
}

impl UtilityJob {
    /// Loads the base model folder and prepares the evaluation records (each with a `slice` field).
    pub fn open(
        base_dir: &Path,
        task: &TaskKind,
        recipe: &Recipe,
        slices: &[EvalSlice],
        eval_records: &[Value],
        opts: UtilityOptions,
    ) -> Result<Self> {
        let base = Base::load(base_dir, opts.device.resolve()?)?;
        Self::new(base, task, recipe, slices, eval_records, opts)
    }

    /// Same as [`UtilityJob::open`] with an already loaded base (on its own device).
    pub fn new(
        base: Base,
        task: &TaskKind,
        recipe: &Recipe,
        slices: &[EvalSlice],
        eval_records: &[Value],
        opts: UtilityOptions,
    ) -> Result<Self> {
        let spec = LoraSpec::from_recipe(recipe)?;
        let train = TrainConfig::from_recipe(recipe)?;
        // Checks targets and rank against this base before any job runs.
        {
            let _s = TorchSession::begin(recipe.seed, opts.threads);
            super::lora::LoraSet::new(&base, &spec, recipe.seed)?;
        }
        let eval = EvalSet::prepare(&base, task, slices, eval_records, train.sequence_length)?;
        let base_report = {
            let _s = TorchSession::begin(recipe.seed, opts.threads);
            eval::evaluate(&base, None, &eval, opts.eval_batch)?
        };
        Ok(UtilityJob { base, task: task.clone(), spec, train, eval, base_report, opts })
    }

    /// Measures on another evaluation set from now on (an epoch's sealed split), re-measuring the
    /// base on it; the base and recipe stay.
    pub fn set_eval(&mut self, slices: &[EvalSlice], eval_records: &[Value]) -> Result<()> {
        let eval = EvalSet::prepare(&self.base, &self.task, slices, eval_records, self.train.sequence_length)?;
        let base_report = {
            let _s = TorchSession::begin(self.train.seed, self.opts.threads);
            eval::evaluate(&self.base, None, &eval, self.opts.eval_batch)?
        };
        (self.eval, self.base_report) = (eval, base_report);
        Ok(())
    }

    /// The base's evaluation (the reference every utility is measured against).
    pub fn base_report(&self) -> &EvalReport {
        &self.base_report
    }

    /// The loaded base.
    pub fn base(&self) -> &Base {
        &self.base
    }

    /// u(S) with the recipe's seed. See the module docs for the unit and guarantees.
    pub fn utility(&mut self, records: &[Value]) -> Result<i64, TrainError> {
        let seed = self.train.seed;
        self.utility_seeded(records, seed)
    }

    /// u(S) with an explicit training seed (LoRA init, data order, dropout).
    pub fn utility_seeded(&mut self, records: &[Value], seed: u64) -> Result<i64, TrainError> {
        Ok(self.evaluate_seeded(records, seed)?.0)
    }

    /// u(S) and the adapted model's evaluation report.
    pub fn evaluate_seeded(&mut self, records: &[Value], seed: u64) -> Result<(i64, EvalReport), TrainError> {
        if records.is_empty() {
            return Ok((0, self.base_report.clone()));
        }
        let examples: Vec<Example> = data::examples(&self.base, &self.task, records, self.train.sequence_length)?;
        let cfg = TrainConfig { seed, ..self.train.clone() };
        let _s = TorchSession::begin(seed, self.opts.threads);
        let (lora, _) = train::train_lora(&self.base, &self.spec, &examples, &cfg, &mut |_| {})?;
        let report = eval::evaluate(&self.base, Some(&lora), &self.eval, self.opts.eval_batch)?;
        Ok((micro_improvement(self.base_report.weighted_loss, report.weighted_loss)?, report))
    }
}

/// `round(1e6 × (before − after))`, saturating. A loss that is not finite (a diverged run) is an
/// error, never a utility: 0 would read as "no effect" and ±∞ as the largest possible one.
pub fn micro_improvement(before: f64, after: f64) -> Result<i64, TrainError> {
    if !before.is_finite() || !after.is_finite() {
        return Err(TrainError::Diverged { before, after });
    }
    Ok(((before - after) * 1e6).round().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A diverged run (NaN or infinite loss) is a job failure with its reason, not a utility.
    #[test]
    fn diverged_loss_is_an_error() {
        assert_eq!(micro_improvement(2.0, 1.5).unwrap(), 500_000);
        assert_eq!(micro_improvement(1.0, 1.25).unwrap(), -250_000);
        for (b, a) in [(1.0, f64::NAN), (1.0, f64::INFINITY), (f64::NAN, 1.0), (1.0, f64::NEG_INFINITY)] {
            let e = micro_improvement(b, a).unwrap_err();
            assert!(matches!(e, TrainError::Diverged { .. }), "{e}");
            assert!(e.to_string().contains("diverged"), "{e}");
        }
    }
}
