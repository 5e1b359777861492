//! Evaluation per slice: loss (mean next-token or label cross-entropy, in nats) and accuracy
//! (argmax hits), combined with the manifest's slice weights (parts per million, normalized by
//! their sum). Evaluation records are training records plus a `"slice"` string naming a slice of
//! the suite.

use super::data::{self, Example};
use super::lora::LoraSet;
use super::model::Base;
use super::{Result, TrainError};
use crate::manifest::{EvalSlice, TaskKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Examples grouped by slice, in the suite's slice order.
pub struct EvalSet {
    pub slices: Vec<(EvalSlice, Vec<Example>)>,
}

impl EvalSet {
    /// Groups `records` by their `slice` field; every record's slice must be in `suite` and every
    /// weighted slice must have records.
    pub fn prepare(
        base: &Base,
        task: &TaskKind,
        suite: &[EvalSlice],
        records: &[Value],
        seq_len: usize,
    ) -> Result<Self> {
        if records.is_empty() {
            return Err(TrainError::EmptyEvalSet);
        }
        let mut slices: Vec<(EvalSlice, Vec<Example>)> = suite.iter().map(|s| (s.clone(), Vec::new())).collect();
        for (i, r) in records.iter().enumerate() {
            let name = r.get("slice").and_then(Value::as_str).ok_or_else(|| TrainError::Record {
                index: i,
                reason: "evaluation record: field `slice` missing".into(),
            })?;
            let slot = slices.iter_mut().find(|(s, _)| s.name == name).ok_or_else(|| TrainError::Record {
                index: i,
                reason: format!("evaluation record: slice `{name}` is not in the suite"),
            })?;
            slot.1.push(data::example(base, task, r, i, seq_len)?);
        }
        if let Some((s, _)) = slices.iter().find(|(s, e)| s.weight_ppm > 0 && e.is_empty()) {
            return Err(TrainError::Recipe(format!("evaluation slice `{}` has weight but no records", s.name)));
        }
        if slices.iter().all(|(s, _)| s.weight_ppm == 0) {
            return Err(TrainError::Recipe("evaluation slices all have weight 0".into()));
        }
        Ok(EvalSet { slices })
    }
}

/// One slice's metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceMetrics {
    pub name: String,
    pub weight_ppm: u32,
    pub loss: f64,
    pub accuracy: f64,
    /// Targets counted (tokens or rows).
    pub count: u64,
}

/// All slices and their weighted combination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub slices: Vec<SliceMetrics>,
    pub weighted_loss: f64,
    pub weighted_accuracy: f64,
}

/// Evaluates `base` (with `lora` when given) on every slice, in batches of `batch`.
pub fn evaluate(base: &Base, lora: Option<&LoraSet>, set: &EvalSet, batch: usize) -> Result<EvalReport> {
    let pad = data::pad_id(base);
    let device = base.device();
    let mut slices = Vec::with_capacity(set.slices.len());
    tch::no_grad(|| -> Result<()> {
        for (s, examples) in &set.slices {
            let (mut loss, mut correct, mut n) = (0.0, 0i64, 0i64);
            for chunk in examples.chunks(batch.max(1)) {
                let refs: Vec<&Example> = chunk.iter().collect();
                let b = data::batch(&refs, pad, device);
                let logits = base.forward(&b.input, lora, false);
                let (l, c, k) = data::loss_sum_and_correct(&logits, &b.target)?;
                loss += l;
                correct += c;
                n += k;
            }
            let d = n.max(1) as f64;
            slices.push(SliceMetrics {
                name: s.name.clone(),
                weight_ppm: s.weight_ppm,
                loss: loss / d,
                accuracy: correct as f64 / d,
                count: n as u64,
            });
        }
        Ok(())
    })?;
    let total: f64 = slices.iter().map(|s| f64::from(s.weight_ppm)).sum::<f64>().max(1.0);
    let weighted_loss = slices.iter().map(|s| f64::from(s.weight_ppm) * s.loss).sum::<f64>() / total;
    let weighted_accuracy = slices.iter().map(|s| f64::from(s.weight_ppm) * s.accuracy).sum::<f64>() / total;
    Ok(EvalReport { slices, weighted_loss, weighted_accuracy })
}
