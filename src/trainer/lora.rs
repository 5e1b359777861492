//! LoRA adapters: a pair (A `[r, in]`, B `[out, r]`) around each targeted linear layer, so the layer
//! computes `W·x + (alpha/r)·B·A·dropout(x)`. A starts Kaiming-uniform (PEFT's default), B at zero,
//! so a fresh adapter leaves the base unchanged; only A and B ever require gradients.
//!
//! On disk an adapter is PEFT's layout: `adapter_config.json` and `adapter_model.safetensors` with
//! tensor names `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight`, which
//! `peft.PeftModel.from_pretrained` loads unchanged.

use super::model::Base;
use super::weights::{self, TensorSet};
use super::{Result, TrainError, io_err};
use crate::manifest::Recipe;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{Value, json};
use std::path::Path;
use tch::{Device, Tensor};

/// PEFT's file names.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const PEFT_PREFIX: &str = "base_model.model.";

/// The adapter shape a recipe asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub rank: u32,
    pub alpha: u32,
    /// Dropout probability in [0, 1).
    pub dropout: f64,
    /// Target module names as the recipe gives them (`q_proj`, `hidden`, `all`).
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// The adapter part of a recipe.
    pub fn from_recipe(r: &Recipe) -> Result<Self> {
        if r.lora_dropout_ppm >= 1_000_000 {
            return Err(TrainError::Recipe(format!("lora_dropout_ppm {} must be below 1000000", r.lora_dropout_ppm)));
        }
        Ok(LoraSpec {
            rank: r.lora_rank,
            alpha: r.lora_alpha,
            dropout: f64::from(r.lora_dropout_ppm) / 1e6,
            targets: r.target_modules.clone(),
        })
    }
}

/// One wrapped layer's trainable matrices.
pub struct LoraPair {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
}

/// An adapter for one base: a pair per targeted linear layer, indexed like [`Base::linears`].
pub struct LoraSet {
    pub rank: i64,
    pub alpha: u32,
    /// `alpha / rank`.
    pub scale: f64,
    pub dropout: f64,
    /// The resolved short module names, sorted (written to `adapter_config.json`).
    pub modules: Vec<String>,
    pairs: Vec<Option<LoraPair>>,
    paths: Vec<String>,
}

/// Resolves `all` and checks every name against the family's modules.
fn resolve_targets(base: &Base, targets: &[String]) -> Result<Vec<String>> {
    let known = base.module_names();
    let mut out: Vec<String> = Vec::new();
    for t in targets {
        if t == "all" || t == "all-linear" {
            // Like PEFT's `all-linear`, every linear layer except the output layer (the mlp head).
            out.extend(known.iter().filter(|m| **m != "head").map(|s| s.to_string()));
        } else if known.contains(&t.as_str()) {
            out.push(t.clone());
        } else {
            return Err(TrainError::UnknownTargetModule {
                name: t.clone(),
                family: base.family().name(),
                known: format!("{}, all", known.join(", ")),
            });
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(TrainError::Recipe("target_modules is empty".into()));
    }
    Ok(out)
}

impl LoraSet {
    /// A fresh adapter: A Kaiming-uniform from `seed`, B zero, both requiring gradients.
    pub fn new(base: &Base, spec: &LoraSpec, seed: u64) -> Result<Self> {
        let modules = resolve_targets(base, &spec.targets)?;
        let linears = base.linears();
        let r = i64::from(spec.rank);
        for l in linears.iter().filter(|l| modules.iter().any(|m| m == l.module)) {
            let max = l.in_features.min(l.out_features);
            if r == 0 || r > max {
                return Err(TrainError::BadRank { rank: spec.rank, module: l.path.clone(), max });
            }
        }
        let device = base.device();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut pairs = Vec::with_capacity(linears.len());
        for l in &linears {
            if !modules.iter().any(|m| m == l.module) {
                pairs.push(None);
                continue;
            }
            // kaiming_uniform_(a=√5) on [r, in]: bound = 1/√in.
            let bound = 1.0 / (l.in_features as f32).sqrt();
            let a: Vec<f32> = (0..r * l.in_features).map(|_| (rng.r#gen::<f32>() * 2.0 - 1.0) * bound).collect();
            let a = Tensor::from_slice(&a).view([r, l.in_features]).to_device(device).set_requires_grad(true);
            let b = Tensor::zeros([l.out_features, r], (tch::Kind::Float, device)).set_requires_grad(true);
            pairs.push(Some(LoraPair { a, b }));
        }
        Ok(LoraSet {
            rank: r,
            alpha: spec.alpha,
            scale: f64::from(spec.alpha) / r as f64,
            dropout: spec.dropout,
            modules,
            pairs,
            paths: linears.into_iter().map(|l| l.path).collect(),
        })
    }

    /// The pair wrapping linear layer `i`, if any.
    pub fn pair(&self, i: usize) -> Option<&LoraPair> {
        self.pairs.get(i).and_then(|p| p.as_ref())
    }

    /// Every trainable tensor, A then B per wrapped layer, in layer order.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.pairs.iter().flatten().flat_map(|p| [p.a.shallow_clone(), p.b.shallow_clone()]).collect()
    }

    /// Tensors under PEFT names.
    pub fn peft_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (p, path) in self.pairs.iter().zip(&self.paths) {
            if let Some(p) = p {
                out.push((format!("{PEFT_PREFIX}{path}.lora_A.weight"), p.a.detach()));
                out.push((format!("{PEFT_PREFIX}{path}.lora_B.weight"), p.b.detach()));
            }
        }
        out
    }

    /// `adapter_config.json` for PEFT.
    pub fn peft_config(&self, base: &Base) -> Value {
        let task_type = match base.family() {
            super::Family::Llama => json!("CAUSAL_LM"),
            super::Family::Mlp => Value::Null,
        };
        json!({
            "alpha_pattern": {},
            "base_model_name_or_path": null,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.rank,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.modules,
            "task_type": task_type,
            "use_dora": false,
            "use_rslora": false,
        })
    }

    /// The two files of the PEFT layout as bytes: (`adapter_config.json`, `adapter_model.safetensors`).
    pub fn to_peft_bytes(&self, base: &Base) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut cfg =
            serde_json::to_vec_pretty(&self.peft_config(base)).map_err(|e| TrainError::Recipe(e.to_string()))?;
        cfg.push(b'\n');
        Ok((cfg, weights::to_bytes(&self.peft_tensors())?))
    }

    /// Writes the PEFT layout into `dir` (created when missing).
    pub fn save_peft(&self, base: &Base, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (cfg, w) = self.to_peft_bytes(base)?;
        std::fs::write(dir.join(ADAPTER_CONFIG), cfg).map_err(io_err(dir.join(ADAPTER_CONFIG)))?;
        std::fs::write(dir.join(ADAPTER_WEIGHTS), w).map_err(io_err(dir.join(ADAPTER_WEIGHTS)))
    }

    /// Loads a PEFT adapter folder for `base`; every expected tensor must be present with its shape.
    pub fn load_peft(base: &Base, dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let bad = |reason: String| TrainError::Adapter { path: cfg_path.clone(), reason };
        let bytes = std::fs::read(&cfg_path).map_err(io_err(&cfg_path))?;
        let cfg: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if cfg.get("peft_type").and_then(Value::as_str) != Some("LORA") {
            return Err(bad("`peft_type` must be \"LORA\"".into()));
        }
        for flag in ["use_dora", "use_rslora", "fan_in_fan_out"] {
            if cfg.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(bad(format!("`{flag}` is not supported")));
            }
        }
        let rank = cfg.get("r").and_then(Value::as_u64).filter(|&r| r > 0).ok_or_else(|| bad("`r` missing".into()))?;
        let alpha = cfg.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("`lora_alpha` missing".into()))?;
        let dropout = cfg.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let targets: Vec<String> = match cfg.get("target_modules") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            Some(Value::String(s)) if s == "all-linear" => vec!["all".into()],
            _ => return Err(bad("`target_modules` must be a list of module names".into())),
        };
        let modules = resolve_targets(base, &targets)?;
        let mut ts = TensorSet::load_file(&dir.join(ADAPTER_WEIGHTS), base.device())?;
        let r = rank as i64;
        let linears = base.linears();
        let mut pairs = Vec::with_capacity(linears.len());
        for l in &linears {
            if !modules.iter().any(|m| m == l.module) {
                pairs.push(None);
                continue;
            }
            let a = ts.take(&format!("{PEFT_PREFIX}{}.lora_A.weight", l.path), &[r, l.in_features])?;
            let b = ts.take(&format!("{PEFT_PREFIX}{}.lora_B.weight", l.path), &[l.out_features, r])?;
            pairs.push(Some(LoraPair { a, b }));
        }
        if let Some(extra) = ts.names().next() {
            return Err(TrainError::Adapter {
                path: dir.join(ADAPTER_WEIGHTS),
                reason: format!("tensor `{extra}` matches no targeted layer of this base"),
            });
        }
        Ok(LoraSet {
            rank: r,
            alpha: alpha as u32,
            scale: alpha / r as f64,
            dropout,
            modules,
            pairs,
            paths: linears.into_iter().map(|l| l.path).collect(),
        })
    }

    /// The base's named tensors with every wrapped weight replaced by `W + scale·B·A`.
    pub fn merged_tensors(&self, base: &Base) -> Vec<(String, Tensor)> {
        let mut merged = std::collections::HashMap::new();
        tch::no_grad(|| {
            for (i, (p, path)) in self.pairs.iter().zip(&self.paths).enumerate() {
                if let Some(p) = p {
                    let w = &base.linear(i).weight;
                    merged.insert(format!("{path}.weight"), w + p.b.matmul(&p.a) * self.scale);
                }
            }
        });
        base.named_tensors()
            .into_iter()
            .map(|(n, t)| match merged.remove(&n) {
                Some(m) => (n, m),
                None => (n, t),
            })
            .collect()
    }

    /// Moves the adapter to `device`.
    pub fn to_device(&mut self, device: Device) {
        for p in self.pairs.iter_mut().flatten() {
            p.a = p.a.to_device(device);
            p.b = p.b.to_device(device);
        }
    }
}
