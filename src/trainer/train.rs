//! The training loop shared by LoRA training, attribution jobs and base pretraining.
//!
//! Data order comes from the seed (a ChaCha20 permutation per pass over the examples); each step
//! takes `batch × grad_accum` examples, accumulates gradients over `grad_accum` micro-batches,
//! clips the global gradient norm, and takes one AdamW step at the warmed-up learning rate.

use super::data::{self, Example};
use super::lora::LoraSet;
use super::model::Base;
use super::optim::{AdamW, AdamWConfig, warmup_lr};
use super::{Result, TrainError};
use crate::manifest::Recipe;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use std::time::{Duration, Instant};

/// How to train (the recipe plus knobs the recipe does not fix).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub steps: u32,
    pub learning_rate: f64,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub warmup_steps: u32,
    /// Global gradient-norm limit (0 = no clipping).
    pub clip_norm: f64,
    pub adamw: AdamWConfig,
    /// Input tokens per sequence at most.
    pub sequence_length: usize,
    pub seed: u64,
}

impl TrainConfig {
    /// The recipe's settings: warm-up over the first tenth of the steps, clipping at 1.0.
    pub fn from_recipe(r: &Recipe) -> Result<Self> {
        if r.steps == 0 || r.batch == 0 {
            return Err(TrainError::Recipe("steps and batch must be positive".into()));
        }
        Ok(TrainConfig {
            steps: r.steps,
            learning_rate: f64::from(r.learning_rate_ppm) / 1e6,
            batch: r.batch as usize,
            grad_accum: 1,
            warmup_steps: (r.steps / 10).max(1),
            clip_norm: 1.0,
            adamw: AdamWConfig::default(),
            sequence_length: r.sequence_length as usize,
            seed: r.seed,
        })
    }
}

/// Progress after one optimizer step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// 1-based.
    pub step: u32,
    pub steps: u32,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    pub learning_rate: f64,
    /// Input tokens processed so far.
    pub tokens: u64,
    pub elapsed: Duration,
}

/// What a training run did.
#[derive(Clone, Debug, Default)]
pub struct TrainOutcome {
    /// Loss per step.
    pub losses: Vec<f64>,
    /// Indices of the examples in the order they were first trained on.
    pub order: Vec<usize>,
    pub tokens: u64,
    pub elapsed: Duration,
}

/// The example indices each step uses: seeded permutations, pass after pass.
pub fn schedule(n: usize, cfg: &TrainConfig) -> Vec<Vec<usize>> {
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed ^ 0x6461_7461_6e65_7400);
    let per_step = cfg.batch * cfg.grad_accum.max(1);
    let mut pool: Vec<usize> = Vec::new();
    let mut out = Vec::with_capacity(cfg.steps as usize);
    for _ in 0..cfg.steps {
        let mut step = Vec::with_capacity(per_step);
        while step.len() < per_step {
            if pool.is_empty() {
                pool = (0..n).collect();
                pool.shuffle(&mut rng);
                pool.reverse();
            }
            step.push(pool.pop().expect("refilled above"));
        }
        out.push(step);
    }
    out
}

/// One optimizer's worth of state: steps taken, AdamW moments, the schedule's configuration.
pub struct Stepper {
    opt: AdamW,
    cfg: TrainConfig,
    step: u32,
}

impl Stepper {
    /// A stepper over `params` (each requiring gradients).
    pub fn new(params: Vec<tch::Tensor>, cfg: &TrainConfig) -> Self {
        Stepper { opt: AdamW::new(params, cfg.adamw), cfg: cfg.clone(), step: 0 }
    }

    /// One optimizer step over `micro` batches (gradients accumulated, averaged, clipped); returns
    /// the mean loss and the learning rate used.
    pub fn step(&mut self, base: &Base, lora: Option<&LoraSet>, micro: &[data::Batch]) -> Result<(f64, f64)> {
        self.opt.zero_grad();
        let n = micro.len().max(1) as f64;
        let mut step_loss = 0.0;
        for b in micro {
            let logits = base.forward(&b.input, lora, true);
            let loss = data::loss(&logits, &b.target);
            (&loss / n).f_backward()?;
            step_loss += f64::try_from(&loss)? / n;
        }
        if self.cfg.clip_norm > 0.0 {
            self.opt.clip_grad_norm(self.cfg.clip_norm)?;
        }
        let lr = warmup_lr(self.cfg.learning_rate, self.step, self.cfg.warmup_steps);
        self.opt.step(lr)?;
        self.step += 1;
        Ok((step_loss, lr))
    }

    /// Drops gradients (call when done).
    pub fn finish(mut self) {
        self.opt.zero_grad();
    }
}

/// Trains `params` (the adapter's A/B, or every base tensor when pretraining) on `examples`.
/// The caller holds a [`super::TorchSession`] for reproducibility.
pub fn run(
    base: &Base,
    lora: Option<&LoraSet>,
    params: Vec<tch::Tensor>,
    examples: &[Example],
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TrainOutcome> {
    if examples.is_empty() {
        return Err(TrainError::EmptyTrainingSet);
    }
    let device = base.device();
    let pad = data::pad_id(base);
    let mut stepper = Stepper::new(params, cfg);
    let start = Instant::now();
    let mut out = TrainOutcome::default();
    let mut seen = vec![false; examples.len()];
    for (s, idx) in schedule(examples.len(), cfg).into_iter().enumerate() {
        for &i in &idx {
            if !std::mem::replace(&mut seen[i], true) {
                out.order.push(i);
            }
        }
        let micro: Vec<data::Batch> = idx
            .chunks(cfg.batch)
            .map(|c| data::batch(&c.iter().map(|&i| &examples[i]).collect::<Vec<_>>(), pad, device))
            .collect();
        out.tokens += micro.iter().map(|b| b.tokens as u64).sum::<u64>();
        let (loss, lr) = stepper.step(base, lora, &micro)?;
        out.losses.push(loss);
        on_step(&StepReport {
            step: s as u32 + 1,
            steps: cfg.steps,
            loss,
            learning_rate: lr,
            tokens: out.tokens,
            elapsed: start.elapsed(),
        });
    }
    stepper.finish();
    out.elapsed = start.elapsed();
    Ok(out)
}

/// Trains a fresh LoRA adapter on `examples`: A/B from `cfg.seed`, base frozen.
pub fn train_lora(
    base: &Base,
    spec: &super::lora::LoraSpec,
    examples: &[Example],
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<(LoraSet, TrainOutcome)> {
    if examples.is_empty() {
        return Err(TrainError::EmptyTrainingSet);
    }
    let lora = LoraSet::new(base, spec, cfg.seed)?;
    let params = lora.parameters();
    let outcome = run(base, Some(&lora), params, examples, cfg, on_step)?;
    Ok((lora, outcome))
}
