//! Generated bases and pretraining.
//!
//! Presets (random weights from a seed, byte tokenizer for llama):
//! - llama `micro`: 2 layers, d=32, 4 heads / 2 KV heads, tied embeddings — unit tests.
//! - llama `tiny`: 4 layers, d=256, 8 heads / 4 KV heads, untied — interop test and benchmarks.
//! - mlp `micro`: one hidden layer of 16; mlp `tiny`: hidden layers 64, 64.
//!
//! [`pretrain`] trains every base tensor from a corpus of records (the benchmark's text task starts
//! from a pretrained tiny base, so LoRA has something to adapt).

use super::data;
use super::llama::{Llama, LlamaConfig};
use super::mlp::{Mlp, MlpConfig};
use super::model::Base;
use super::tokenizer::Tokenizer;
use super::train::{self, StepReport, TrainConfig, TrainOutcome};
use super::weights::{self, TensorSet};
use super::{Family, Result, TorchSession, TrainError, io_err};
use crate::manifest::TaskKind;
use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A llama preset's config.
pub fn llama_preset(preset: &str) -> Result<LlamaConfig> {
    let (layers, d, heads, kv, inter, tied) = match preset {
        "micro" => (2, 32, 4, 2, 64, true),
        "tiny" => (4, 256, 8, 4, 688, false),
        _ => return Err(TrainError::Recipe(format!("unknown llama preset `{preset}`; use micro or tiny"))),
    };
    Ok(LlamaConfig {
        vocab_size: 260,
        hidden_size: d,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: d / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 1024,
        tie_word_embeddings: tied,
        attention_bias: false,
        mlp_bias: false,
        datanet_tokenizer: Some("bytes".into()),
        bos_token_id: Some(256),
        eos_token_id: Some(257),
    })
}

/// An mlp preset's config for `features` inputs and `classes` outputs.
pub fn mlp_preset(preset: &str, features: u32, classes: u32) -> Result<MlpConfig> {
    let hidden_sizes = match preset {
        "micro" => vec![16],
        "tiny" => vec![64, 64],
        _ => return Err(TrainError::Recipe(format!("unknown mlp preset `{preset}`; use micro or tiny"))),
    };
    if features == 0 || classes < 2 {
        return Err(TrainError::Recipe("an mlp needs features ≥ 1 and classes ≥ 2".into()));
    }
    Ok(MlpConfig { features: i64::from(features), classes: i64::from(classes), hidden_sizes })
}

/// A random llama with the given config (normal(0, 0.02) weights, unit norms).
pub fn random_llama(config: LlamaConfig, seed: u64, device: Device) -> Result<Base> {
    let _s = TorchSession::begin(seed, 0);
    let mut ts = TensorSet::empty("<generated>");
    for (name, shape) in config.tensor_shapes() {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(&shape, (Kind::Float, device))
        } else if name.ends_with(".bias") {
            Tensor::zeros(&shape, (Kind::Float, device))
        } else {
            Tensor::randn(&shape, (Kind::Float, device)) * 0.02
        };
        ts.insert(name, t);
    }
    let tokenizer = match config.datanet_tokenizer.as_deref() {
        Some("bytes") => {
            Tokenizer::Bytes { bos: config.bos_token_id.unwrap_or(256), eos: config.eos_token_id.unwrap_or(257) }
        }
        _ => return Err(TrainError::Recipe("generated llama bases use the byte tokenizer".into())),
    };
    Ok(Base::Llama(Llama::from_tensors(config, tokenizer, &mut ts)?))
}

/// A random mlp (uniform(±1/√in) weights and biases, identity standardization).
pub fn random_mlp(config: MlpConfig, seed: u64, device: Device) -> Result<Base> {
    let _s = TorchSession::begin(seed, 0);
    let mut ts = TensorSet::empty("<generated>");
    let shapes: std::collections::HashMap<String, Vec<i64>> = config.tensor_shapes().into_iter().collect();
    for (name, shape) in config.tensor_shapes() {
        let t = match name.as_str() {
            "input.mean" => Tensor::zeros(&shape, (Kind::Float, device)),
            "input.std" => Tensor::ones(&shape, (Kind::Float, device)),
            _ => {
                let prefix = name.rsplit_once('.').map_or("", |p| p.0);
                let fan_in = shapes.get(&format!("{prefix}.weight")).and_then(|s| s.last().copied()).unwrap_or(1);
                let bound = 1.0 / (fan_in as f64).sqrt();
                Tensor::rand(&shape, (Kind::Float, device)) * (2.0 * bound) - bound
            }
        };
        ts.insert(name, t);
    }
    Ok(Base::Mlp(Mlp::from_tensors(config, &mut ts)?))
}

/// A random base of `family` and `preset` (mlp presets need `features` and `classes`).
pub fn random_base(family: Family, preset: &str, features: u32, classes: u32, seed: u64) -> Result<Base> {
    match family {
        Family::Llama => random_llama(llama_preset(preset)?, seed, Device::Cpu),
        Family::Mlp => random_mlp(mlp_preset(preset, features, classes)?, seed, Device::Cpu),
    }
}

/// The `config.json` value describing `base`.
pub fn config_json(base: &Base) -> Value {
    match base {
        Base::Llama(m) => m.config.to_json(),
        Base::Mlp(m) => m.config.to_json(),
    }
}

/// Writes `base` into `dir` in Hugging Face layout (`config.json`, `model.safetensors`), with
/// `tensors` replacing the base's own (for merged weights) when given.
pub fn save_base(base: &Base, dir: &Path, tensors: Option<Vec<(String, Tensor)>>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut cfg = serde_json::to_vec_pretty(&config_json(base)).map_err(|e| TrainError::Recipe(e.to_string()))?;
    cfg.push(b'\n');
    std::fs::write(dir.join("config.json"), cfg).map_err(io_err(dir.join("config.json")))?;
    let tensors = tensors.unwrap_or_else(|| base.named_tensors());
    weights::write(&dir.join("model.safetensors"), &tensors)
}

/// Writes a base merged with an adapter into `dir`: the merged `tensors` (from
/// [`crate::trainer::lora::LoraSet::merged_tensors`] over the base loaded from `from`), and `from`'s own `config.json` byte for byte — a merge changes weights only, so
/// every key of the base's config (RoPE scaling, dtype, anything this build does not read)
/// survives, and the merged folder is the same model to every loader — plus its tokenizer.
pub fn save_merged(from: &Path, dir: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cfg = from.join("config.json");
    std::fs::copy(&cfg, dir.join("config.json")).map_err(io_err(&cfg))?;
    weights::write(&dir.join("model.safetensors"), &tensors)?;
    copy_tokenizer(from, dir)
}

/// Copies `tokenizer.json` from one model folder to another when present.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    let src = from.join("tokenizer.json");
    if src.exists() {
        std::fs::copy(&src, to.join("tokenizer.json")).map_err(io_err(&src))?;
    }
    Ok(())
}

/// Trains every tensor of `base` on `records` (mlp: standardization statistics are first set from
/// the records). The base is trainable during the call and frozen again after it.
pub fn pretrain(
    base: &Base,
    task: &TaskKind,
    records: &[Value],
    cfg: &TrainConfig,
    threads: usize,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TrainOutcome> {
    let examples = data::examples(base, task, records, cfg.sequence_length)?;
    if examples.is_empty() {
        return Err(TrainError::EmptyTrainingSet);
    }
    let _s = TorchSession::begin(cfg.seed, threads);
    if let Base::Mlp(m) = base {
        let rows: Vec<f32> = examples
            .iter()
            .flat_map(|e| match e {
                data::Example::Row { features, .. } => features.clone(),
                _ => Vec::new(),
            })
            .collect();
        let x = Tensor::from_slice(&rows).view([examples.len() as i64, m.config.features]).to_device(base.device());
        tch::no_grad(|| {
            m.mean.shallow_clone().copy_(&x.mean_dim(0, false, Kind::Float));
            m.std.shallow_clone().copy_(&x.std_correction(0, 0, false).clamp_min(1e-6));
        });
    }
    let params = base.set_trainable(true);
    let out = train::run(base, None, params, &examples, cfg, on_step);
    base.set_trainable(false);
    out
}

/// The base a manifest names when `base_model.hash` is all zero: its `preset` generated from its
/// `seed`. For the mlp, input standardization is set from the public evaluation records' features
/// (public and deterministic, so every peer builds the same base; raw tabular features can differ
/// by orders of magnitude).
pub fn generated_base(m: &crate::manifest::Manifest, eval_records: &[Value]) -> Result<Base> {
    let family: Family = m.base_model.family.parse().map_err(TrainError::Recipe)?;
    let (features, classes) = match m.task {
        TaskKind::Tabular { features, classes } => (features, classes),
        _ => (0, 0),
    };
    let base = random_base(family, &m.base_model.preset, features, classes, m.base_model.seed)?;
    if let Base::Mlp(mlp) = &base {
        let rows: Vec<f32> = eval_records
            .iter()
            .filter_map(|r| r.get("features").and_then(Value::as_array))
            .filter(|f| f.len() == features as usize)
            .flat_map(|f| f.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect::<Vec<_>>())
            .collect();
        let n = rows.len() as i64 / i64::from(features.max(1));
        if n >= 2 {
            let x = Tensor::from_slice(&rows).view([n, i64::from(features)]);
            tch::no_grad(|| {
                mlp.mean.shallow_clone().copy_(&x.mean_dim(0, false, Kind::Float));
                mlp.std.shallow_clone().copy_(&x.std_correction(0, 0, false).clamp_min(1e-6));
            });
        }
    }
    Ok(base)
}
