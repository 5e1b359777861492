//! Records (canonical JSON objects) to training examples and batches.
//!
//! - `text` `{"text"}`: `[BOS] text [EOS]`, loss on every next token.
//! - `instruct` `{"prompt","completion"}`: `[BOS] prompt completion [EOS]`, prompt and completion
//!   tokenized separately; loss only on completion tokens and the EOS.
//! - `tabular` `{"features":[…],"label":k}`: one row, cross-entropy on the label.
//!
//! Sequences are truncated to `sequence_length` inputs; a batch is right-padded to its longest
//! member, and padded targets are ignored (causal attention means padding after a sequence never
//! changes the positions before it). One record gives exactly one example, so training order over
//! examples is training order over records.

use super::model::Base;
use super::{Result, TrainError};
use crate::manifest::TaskKind;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Target id ignored by the loss.
pub const IGNORE: i64 = -100;

/// One training or evaluation example.
#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    /// Inputs and next-token targets of equal length (≥ 1); masked targets are [`IGNORE`].
    Tokens { input: Vec<i64>, target: Vec<i64> },
    /// A feature row and its class.
    Row { features: Vec<f32>, label: i64 },
}

impl Example {
    /// Input tokens (or 1 for a row), for throughput figures.
    pub fn tokens(&self) -> usize {
        match self {
            Example::Tokens { input, .. } => input.len(),
            Example::Row { .. } => 1,
        }
    }
}

fn field<'a>(rec: &'a Value, index: usize, name: &str) -> Result<&'a Value> {
    rec.get(name).ok_or_else(|| TrainError::Record { index, reason: format!("field `{name}` missing") })
}

fn text_field<'a>(rec: &'a Value, index: usize, name: &str) -> Result<&'a str> {
    field(rec, index, name)?
        .as_str()
        .ok_or_else(|| TrainError::Record { index, reason: format!("field `{name}` must be a string") })
}

/// Turns one record into an example for `base`.
pub fn example(base: &Base, task: &TaskKind, rec: &Value, index: usize, seq_len: usize) -> Result<Example> {
    let rec_err = |reason: String| TrainError::Record { index, reason };
    match (task, base) {
        (TaskKind::Text | TaskKind::Instruct, Base::Llama(_)) if seq_len == 0 => {
            Err(TrainError::Recipe("sequence_length must be positive for text and instruct".into()))
        }
        (TaskKind::Text | TaskKind::Instruct, Base::Llama(m)) => {
            let tok = &m.tokenizer;
            let enc = |s: &str| tok.encode(s).map_err(rec_err);
            let mut ids: Vec<i64> = tok.bos().into_iter().collect();
            let mut learn: Vec<bool> = vec![false; ids.len()];
            match task {
                TaskKind::Text => {
                    let t = enc(text_field(rec, index, "text")?)?;
                    learn.extend(std::iter::repeat_n(true, t.len()));
                    ids.extend(t);
                }
                _ => {
                    let p = enc(text_field(rec, index, "prompt")?)?;
                    let c = enc(text_field(rec, index, "completion")?)?;
                    learn.extend(std::iter::repeat_n(false, p.len()));
                    learn.extend(std::iter::repeat_n(true, c.len()));
                    ids.extend(p);
                    ids.extend(c);
                }
            }
            if let Some(e) = tok.eos() {
                ids.push(e);
                learn.push(true);
            }
            ids.truncate(seq_len + 1);
            learn.truncate(seq_len + 1);
            if ids.len() < 2 {
                return Err(rec_err("too short: needs at least two tokens".into()));
            }
            let input = ids[..ids.len() - 1].to_vec();
            let target = ids[1..].iter().zip(&learn[1..]).map(|(&t, &l)| if l { t } else { IGNORE }).collect();
            Ok(Example::Tokens { input, target })
        }
        (TaskKind::Tabular { .. }, Base::Mlp(m)) => {
            let (f, c) = (m.config.features as usize, m.config.classes);
            let features = field(rec, index, "features")?
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect::<Option<Vec<f32>>>())
                .ok_or_else(|| rec_err("field `features` must be a list of numbers".into()))?;
            if features.len() != f {
                return Err(rec_err(format!("{} features, the model takes {f}", features.len())));
            }
            let label = field(rec, index, "label")?
                .as_i64()
                .filter(|l| (0..c).contains(l))
                .ok_or_else(|| rec_err(format!("field `label` must be an integer in 0..{c}")))?;
            Ok(Example::Row { features, label })
        }
        _ => Err(TrainError::TaskMismatch { task: task.name(), family: base.family().name() }),
    }
}

/// Examples for every record, in order.
pub fn examples(base: &Base, task: &TaskKind, records: &[Value], seq_len: usize) -> Result<Vec<Example>> {
    records.iter().enumerate().map(|(i, r)| example(base, task, r, i, seq_len)).collect()
}

/// A batch on a device.
pub struct Batch {
    /// `[B, L]` token ids (i64) or `[B, features]` (f32).
    pub input: Tensor,
    /// `[B, L]` next-token targets or `[B]` labels.
    pub target: Tensor,
    /// Non-padding input tokens (rows for tabular).
    pub tokens: usize,
}

/// Stacks examples into one batch, right-padding token sequences with `pad`.
pub fn batch(examples: &[&Example], pad: i64, device: Device) -> Batch {
    match examples.first() {
        Some(Example::Row { features, .. }) => {
            let f = features.len() as i64;
            let mut x = Vec::with_capacity(examples.len() * f as usize);
            let mut y = Vec::with_capacity(examples.len());
            for e in examples {
                if let Example::Row { features, label } = e {
                    x.extend_from_slice(features);
                    y.push(*label);
                }
            }
            let n = y.len() as i64;
            Batch {
                input: Tensor::from_slice(&x).view([n, f]).to_device(device),
                target: Tensor::from_slice(&y).to_device(device),
                tokens: y.len(),
            }
        }
        _ => {
            let l = examples.iter().map(|e| e.tokens()).max().unwrap_or(1);
            let mut x = Vec::with_capacity(examples.len() * l);
            let mut y = Vec::with_capacity(examples.len() * l);
            let mut tokens = 0;
            for e in examples {
                if let Example::Tokens { input, target } = e {
                    tokens += input.len();
                    x.extend_from_slice(input);
                    x.extend(std::iter::repeat_n(pad, l - input.len()));
                    y.extend_from_slice(target);
                    y.extend(std::iter::repeat_n(IGNORE, l - target.len()));
                }
            }
            let n = examples.len() as i64;
            Batch {
                input: Tensor::from_slice(&x).view([n, l as i64]).to_device(device),
                target: Tensor::from_slice(&y).view([n, l as i64]).to_device(device),
                tokens,
            }
        }
    }
}

/// Mean cross-entropy of `logits` against the batch targets (ignoring masked targets).
pub fn loss(logits: &Tensor, target: &Tensor) -> Tensor {
    let c = *logits.size().last().expect("logits have a class dimension");
    logits.reshape([-1, c]).cross_entropy_loss::<Tensor>(&target.reshape([-1]), None, tch::Reduction::Mean, IGNORE, 0.0)
}

/// (summed loss, correct predictions, counted targets) for evaluation.
pub fn loss_sum_and_correct(logits: &Tensor, target: &Tensor) -> Result<(f64, i64, i64)> {
    let c = *logits.size().last().expect("logits have a class dimension");
    let logits = logits.reshape([-1, c]);
    let target = target.reshape([-1]);
    let sum = logits.f_cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Sum, IGNORE, 0.0)?;
    let valid = target.ne(IGNORE);
    let correct = logits.argmax(-1, false).eq_tensor(&target).logical_and(&valid).sum(Kind::Int64);
    let n = valid.sum(Kind::Int64);
    Ok((f64::try_from(sum)?, i64::try_from(correct)?, i64::try_from(n)?))
}

/// The padding id for a base (EOS, else 0); padded positions are never learned from.
pub fn pad_id(base: &Base) -> i64 {
    base.tokenizer().and_then(|t| t.eos()).unwrap_or(0)
}
