//! The `mlp` family: a tabular classifier. Inputs are standardized with statistics stored in the
//! checkpoint (`input.mean`, `input.std`), then pass through ReLU hidden layers (`layers.N`) and a
//! linear head (`head`) giving class logits. Saved in the same layout as `llama`:
//! `config.json` with `"model_type": "datanet_mlp"`, `features`, `classes`, `hidden_sizes`.
//!
//! Recipe target modules: `hidden` (every hidden layer), `head`, or `all` (= `hidden`: like PEFT's
//! `all-linear`, the output layer is only wrapped when named).

use super::lora::LoraSet;
use super::model::{ConfigJson, Linear, LinearInfo};
use super::weights::TensorSet;
use super::{Result, TrainError};
use serde_json::{Value, json};
use tch::Tensor;

/// Standardized inputs are clipped to ±8 standard deviations of the data that set the statistics.
/// A feature (nearly) constant in that data has a tiny `input.std` (floored at 1e-6), and an unseen
/// value of it would otherwise enter the network scaled by up to 10^6: one such row dominates an
/// evaluation loss by hundreds of nats and one such training record the adapter's gradient.
pub const INPUT_CLIP: f64 = 8.0;

/// Target-module names of the mlp family.
pub const MODULES: [&str; 2] = ["hidden", "head"];

/// The mlp's `config.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpConfig {
    pub features: i64,
    pub classes: i64,
    pub hidden_sizes: Vec<i64>,
}

impl MlpConfig {
    /// Parses the config; errors name the file and key.
    pub fn from_json(cfg: &ConfigJson) -> Result<Self> {
        let hidden_sizes = match cfg.map.get("hidden_sizes") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_i64().filter(|&n| n > 0))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| cfg.key_err("hidden_sizes", "expected a list of positive integers"))?,
            Some(v) => return Err(cfg.key_err("hidden_sizes", format!("expected a list, found {v}"))),
            None => return Err(cfg.key_err("hidden_sizes", "missing")),
        };
        if let Some(act) = cfg.str_opt("activation")?
            && act != "relu"
        {
            return Err(cfg.key_err("activation", format!("unsupported `{act}`; the mlp uses relu")));
        }
        let classes = cfg.usize("classes")?;
        if classes < 2 {
            return Err(cfg.key_err("classes", "a classifier needs at least 2 classes"));
        }
        Ok(MlpConfig { features: cfg.usize("features")?, classes, hidden_sizes })
    }

    /// The `config.json` contents.
    pub fn to_json(&self) -> Value {
        json!({
            "architectures": ["DatanetMlp"],
            "model_type": "datanet_mlp",
            "features": self.features,
            "classes": self.classes,
            "hidden_sizes": self.hidden_sizes,
            "activation": "relu",
            "torch_dtype": "float32",
        })
    }

    /// (path, module, out, in) of every linear layer.
    fn linear_shapes(&self) -> Vec<(String, &'static str, i64, i64)> {
        let mut out = Vec::new();
        let mut prev = self.features;
        for (i, &h) in self.hidden_sizes.iter().enumerate() {
            out.push((format!("layers.{i}"), MODULES[0], h, prev));
            prev = h;
        }
        out.push(("head".to_string(), MODULES[1], self.classes, prev));
        out
    }

    /// Every tensor name and shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut out =
            vec![("input.mean".to_string(), vec![self.features]), ("input.std".to_string(), vec![self.features])];
        for (p, _, o, i) in self.linear_shapes() {
            out.push((format!("{p}.weight"), vec![o, i]));
            out.push((format!("{p}.bias"), vec![o]));
        }
        out
    }
}

/// A loaded tabular classifier.
pub struct Mlp {
    pub config: MlpConfig,
    pub mean: Tensor,
    pub std: Tensor,
    /// Hidden layers then the head.
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Takes the model's tensors out of `ts`, checking names and shapes.
    pub fn from_tensors(config: MlpConfig, ts: &mut TensorSet) -> Result<Self> {
        let mean = ts.take("input.mean", &[config.features])?;
        let std = ts.take("input.std", &[config.features])?;
        let bad_std = f64::try_from(std.le(0.0).any().to_kind(tch::Kind::Float))? != 0.0;
        if bad_std {
            return Err(TrainError::Safetensors {
                path: ts.origin.clone(),
                reason: "tensor `input.std` has a value ≤ 0".into(),
            });
        }
        let mut layers = Vec::new();
        for (p, _, o, i) in config.linear_shapes() {
            let weight = ts.take(&format!("{p}.weight"), &[o, i])?;
            let bias = Some(ts.take(&format!("{p}.bias"), &[o])?);
            layers.push(Linear { weight, bias });
        }
        Ok(Mlp { config, mean, std, layers })
    }

    /// Linear layers in adapter order.
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.config
            .linear_shapes()
            .into_iter()
            .map(|(path, module, o, i)| LinearInfo { path, module, in_features: i, out_features: o })
            .collect()
    }

    /// Linear layer `i`.
    pub fn linear(&self, i: usize) -> &Linear {
        &self.layers[i]
    }

    /// Named tensors.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("input.mean".to_string(), self.mean.shallow_clone()),
            ("input.std".to_string(), self.std.shallow_clone()),
        ];
        for ((p, ..), lin) in self.config.linear_shapes().into_iter().zip(&self.layers) {
            out.push((format!("{p}.weight"), lin.weight.shallow_clone()));
            if let Some(b) = &lin.bias {
                out.push((format!("{p}.bias"), b.shallow_clone()));
            }
        }
        out
    }

    /// Trainable tensors for pretraining (the statistics stay fixed).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.named_tensors().into_iter().filter(|(n, _)| !n.starts_with("input.")).map(|(_, t)| t).collect()
    }

    /// Class logits `[B, classes]` for features `[B, features]`.
    pub fn forward(&self, x: &Tensor, lora: Option<&LoraSet>, train: bool) -> Tensor {
        let mut h = ((x - &self.mean) / &self.std).clamp(-INPUT_CLIP, INPUT_CLIP);
        let last = self.layers.len() - 1;
        for (i, lin) in self.layers.iter().enumerate() {
            h = super::llama::apply_linear(lin, &h, lora, i, train);
            if i < last {
                h = h.relu();
            }
        }
        h
    }
}
