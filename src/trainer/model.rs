//! A loaded base model of either family, its config file and the hash of its folder.
//!
//! The base is frozen: its tensors never require gradients except in `model pretrain`. Every linear
//! layer a LoRA adapter may wrap is listed by [`Base::linears`] in a fixed order; adapters index
//! their A/B pairs by that position, so the forward pass needs no name lookups.

use super::llama::{Llama, LlamaConfig};
use super::lora::LoraSet;
use super::mlp::{Mlp, MlpConfig};
use super::tokenizer::Tokenizer;
use super::weights::TensorSet;
use super::{Result, TrainError, io_err};
use crate::ids::BlobHash;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The model families the trainer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mlp,
}

impl Family {
    /// `llama` or `mlp`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mlp => "mlp",
        }
    }
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "llama" => Ok(Family::Llama),
            "mlp" => Ok(Family::Mlp),
            _ => Err(format!("unknown model family `{s}`; use llama or mlp")),
        }
    }
}

/// One linear layer an adapter may wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearInfo {
    /// Module path as in the Hugging Face state dict, without `.weight` (`model.layers.0.self_attn.q_proj`).
    pub path: String,
    /// The target-module name a recipe uses for it (`q_proj`, `hidden`).
    pub module: &'static str,
    pub in_features: i64,
    pub out_features: i64,
}

/// A linear layer's frozen weight `[out, in]` and optional bias.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `x·Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `config.json` as a JSON object, with accessors whose errors name the file and the key.
pub struct ConfigJson {
    pub path: PathBuf,
    pub map: Map<String, Value>,
}

impl ConfigJson {
    /// Reads and parses `<dir>/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TrainError::MissingConfig { path }),
            Err(e) => return Err(TrainError::Io { path, source: e }),
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::Config { path: path.clone(), reason: format!("not JSON: {e}") })?;
        match v {
            Value::Object(map) => Ok(ConfigJson { path, map }),
            _ => Err(TrainError::Config { path, reason: "expected a JSON object".into() }),
        }
    }

    pub(crate) fn key_err(&self, key: &str, reason: impl Into<String>) -> TrainError {
        TrainError::ConfigKey { path: self.path.clone(), key: key.to_string(), reason: reason.into() }
    }

    /// A required positive integer.
    pub fn usize(&self, key: &str) -> Result<i64> {
        match self.map.get(key) {
            None => Err(self.key_err(key, "missing")),
            Some(v) => v
                .as_i64()
                .filter(|&n| n > 0)
                .ok_or_else(|| self.key_err(key, format!("expected a positive integer, found {v}"))),
        }
    }

    /// An optional positive integer.
    pub fn usize_opt(&self, key: &str) -> Result<Option<i64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }

    /// An optional number with a default.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.key_err(key, format!("expected a number, found {v}"))),
        }
    }

    /// An optional boolean with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.key_err(key, format!("expected true or false, found {v}"))),
        }
    }

    /// An optional string.
    pub fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.key_err(key, format!("expected a string, found {v}"))),
        }
    }

    /// A token id given as an integer or a list of integers (the first is used).
    pub fn token_id(&self, key: &str) -> Result<Option<i64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or_else(|| self.key_err(key, "expected integer token ids")),
            },
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.key_err(key, format!("expected a token id, found {v}"))),
        }
    }

    /// The family named by `model_type`.
    pub fn family(&self) -> Result<Family> {
        match self.str_opt("model_type")? {
            Some("llama") => Ok(Family::Llama),
            Some("datanet_mlp") => Ok(Family::Mlp),
            Some(other) => {
                Err(self.key_err("model_type", format!("unsupported `{other}`; supported: llama, datanet_mlp")))
            }
            None => Err(self.key_err("model_type", "missing")),
        }
    }
}

/// A frozen base model.
// One or two per process; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Base {
    Llama(Llama),
    Mlp(Mlp),
}

impl Base {
    /// Loads a model folder: `config.json`, `*.safetensors`, and the tokenizer for `llama`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg = ConfigJson::read(dir)?;
        match cfg.family()? {
            Family::Llama => {
                let config = LlamaConfig::from_json(&cfg)?;
                let tokenizer = Tokenizer::load(dir, &cfg, config.vocab_size)?;
                let mut ts = TensorSet::load_dir(dir, device)?;
                Ok(Base::Llama(Llama::from_tensors(config, tokenizer, &mut ts)?))
            }
            Family::Mlp => {
                let config = MlpConfig::from_json(&cfg)?;
                let mut ts = TensorSet::load_dir(dir, device)?;
                Ok(Base::Mlp(Mlp::from_tensors(config, &mut ts)?))
            }
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        match self {
            Base::Llama(_) => Family::Llama,
            Base::Mlp(_) => Family::Mlp,
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        match self {
            Base::Llama(m) => m.embed.device(),
            Base::Mlp(m) => m.mean.device(),
        }
    }

    /// Every linear layer an adapter may wrap, in the fixed order adapters index them by.
    pub fn linears(&self) -> Vec<LinearInfo> {
        match self {
            Base::Llama(m) => m.linears(),
            Base::Mlp(m) => m.linears(),
        }
    }

    /// The weight of linear layer `i` (in [`Base::linears`] order).
    pub fn linear(&self, i: usize) -> &Linear {
        match self {
            Base::Llama(m) => m.linear(i),
            Base::Mlp(m) => m.linear(i),
        }
    }

    /// Target-module names a recipe may use for this family (besides `all`).
    pub fn module_names(&self) -> &'static [&'static str] {
        match self {
            Base::Llama(_) => &super::llama::MODULES,
            Base::Mlp(_) => &super::mlp::MODULES,
        }
    }

    /// Logits: `[B, T, vocab]` for llama (input `[B, T]` token ids), `[B, classes]` for mlp
    /// (input `[B, features]`).
    pub fn forward(&self, input: &Tensor, lora: Option<&LoraSet>, train: bool) -> Tensor {
        match self {
            Base::Llama(m) => m.forward(input, lora, train),
            Base::Mlp(m) => m.forward(input, lora, train),
        }
    }

    /// All named base tensors in Hugging Face names (shallow clones), for saving and merging.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Base::Llama(m) => m.named_tensors(),
            Base::Mlp(m) => m.named_tensors(),
        }
    }

    /// Makes every base tensor trainable (pretraining) or frozen.
    pub fn set_trainable(&self, on: bool) -> Vec<Tensor> {
        let ts: Vec<Tensor> = self.unique_tensors();
        for t in &ts {
            let _ = t.set_requires_grad(on);
        }
        ts
    }

    fn unique_tensors(&self) -> Vec<Tensor> {
        match self {
            Base::Llama(m) => m.parameters(),
            Base::Mlp(m) => m.parameters(),
        }
    }

    /// The tokenizer (llama only).
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        match self {
            Base::Llama(m) => Some(&m.tokenizer),
            Base::Mlp(_) => None,
        }
    }
}

/// BLAKE3 over a model folder: `config.json`, `tokenizer.json` when present, and every
/// `*.safetensors`, in name order, each as (name, length, BLAKE3 of the bytes).
pub fn folder_hash(dir: &Path) -> Result<BlobHash> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .filter(|n| n == "config.json" || n == "tokenizer.json" || n.ends_with(".safetensors"))
        .collect();
    names.sort();
    let mut h = blake3::Hasher::new_derive_key("datanet/model-folder/v1");
    for n in names {
        let p = dir.join(&n);
        let mut fh = blake3::Hasher::new();
        let f = std::fs::File::open(&p).map_err(io_err(&p))?;
        fh.update_reader(f).map_err(io_err(&p))?;
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n.as_bytes());
        h.update(&std::fs::metadata(&p).map_err(io_err(&p))?.len().to_le_bytes());
        h.update(fh.finalize().as_bytes());
    }
    Ok(h.finalize().into())
}
