//! The `llama` family: a decoder-only LM with RMSNorm, rotary position embeddings (default and
//! `llama3` scaling), SwiGLU MLPs, grouped-query attention and tied or untied embeddings, with the
//! Hugging Face `LlamaForCausalLM` tensor names and `config.json` keys, so real checkpoints load
//! unchanged. Shapes were checked against the configs of TinyLlama-1.1B (GQA 32/4, untied),
//! SmolLM2-135M (GQA 9/3, tied) and Llama-3.2-1B (`llama3` RoPE scaling, tied, explicit
//! `head_dim`) by comparing with the state dict `transformers` builds from the same config
//! (`tests/interop_llama.py`).
//!
//! The forward pass mirrors `transformers`' eager code in float32 so logits agree to ~1e-6.

use super::lora::LoraSet;
use super::model::{ConfigJson, Linear, LinearInfo};
use super::tokenizer::Tokenizer;
use super::weights::TensorSet;
use super::{Result, TrainError};
use serde_json::{Value, json};
use tch::{Kind, Tensor};

/// Target-module names of the llama family, in the order they appear in each layer.
pub const MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// `llama3` RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The subset of `LlamaConfig` the forward pass uses.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// `Some("bytes")` for the built-in byte tokenizer.
    pub datanet_tokenizer: Option<String>,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
}

impl LlamaConfig {
    /// Parses the Hugging Face keys; errors name the file and key.
    pub fn from_json(cfg: &ConfigJson) -> Result<Self> {
        let hidden_size = cfg.usize("hidden_size")?;
        let num_attention_heads = cfg.usize("num_attention_heads")?;
        let num_key_value_heads = cfg.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(cfg.key_err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = match cfg.usize_opt("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => return Err(cfg.key_err("hidden_size", "not a multiple of num_attention_heads")),
        };
        if head_dim % 2 != 0 {
            return Err(cfg.key_err("head_dim", format!("{head_dim} must be even for rotary embeddings")));
        }
        if let Some(act) = cfg.str_opt("hidden_act")?
            && act != "silu"
        {
            return Err(cfg.key_err("hidden_act", format!("unsupported `{act}`; llama uses silu")));
        }
        // transformers ≥ 5 writes `rope_parameters`; older files `rope_theta` + `rope_scaling`.
        let (rope_theta, scaling) = match cfg.map.get("rope_parameters") {
            Some(Value::Object(p)) => (p.get("rope_theta").and_then(Value::as_f64), Some(Value::Object(p.clone()))),
            _ => (None, cfg.map.get("rope_scaling").cloned()),
        };
        let rope_theta = match rope_theta {
            Some(t) => t,
            None => cfg.f64_or("rope_theta", 10000.0)?,
        };
        let rope_scaling = match scaling {
            None | Some(Value::Null) => None,
            Some(Value::Object(s)) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let num = |k: &str| {
                            s.get(k)
                                .and_then(Value::as_f64)
                                .ok_or_else(|| cfg.key_err("rope_scaling", format!("`{k}` missing")))
                        };
                        Some(Llama3Scaling {
                            factor: num("factor")?,
                            low_freq_factor: num("low_freq_factor")?,
                            high_freq_factor: num("high_freq_factor")?,
                            original_max_position_embeddings: num("original_max_position_embeddings")?,
                        })
                    }
                    other => {
                        return Err(cfg.key_err("rope_scaling", format!("unsupported rope_type `{other}`")));
                    }
                }
            }
            Some(v) => return Err(cfg.key_err("rope_scaling", format!("expected an object, found {v}"))),
        };
        Ok(LlamaConfig {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_hidden_layers: cfg.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: cfg.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
            attention_bias: cfg.bool_or("attention_bias", false)?,
            mlp_bias: cfg.bool_or("mlp_bias", false)?,
            datanet_tokenizer: cfg.str_opt("datanet_tokenizer")?.map(str::to_string),
            bos_token_id: cfg.token_id("bos_token_id")?,
            eos_token_id: cfg.token_id("eos_token_id")?,
        })
    }

    /// The `config.json` that `transformers` reads back as the same model.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        });
        if let Some(t) = &self.datanet_tokenizer {
            v["datanet_tokenizer"] = json!(t);
        }
        v
    }

    /// Shapes of the linear layers of one decoder layer, in [`MODULES`] order: (out, in).
    fn layer_linears(&self) -> [(i64, i64); 7] {
        let (d, hd, i) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        [(q, d), (kv, d), (kv, d), (d, q), (i, d), (i, d), (d, i)]
    }

    /// Every tensor name and shape of `LlamaForCausalLM` with this config.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, self.hidden_size])];
        for l in 0..self.num_hidden_layers {
            out.push((format!("model.layers.{l}.input_layernorm.weight"), vec![self.hidden_size]));
            out.push((format!("model.layers.{l}.post_attention_layernorm.weight"), vec![self.hidden_size]));
            for (m, (o, i)) in MODULES.iter().zip(self.layer_linears()) {
                let p = linear_path(l, m);
                out.push((format!("{p}.weight"), vec![o, i]));
                let has_bias = if is_attention(m) { self.attention_bias } else { self.mlp_bias };
                if has_bias {
                    out.push((format!("{p}.bias"), vec![o]));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), vec![self.hidden_size]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, self.hidden_size]));
        }
        out
    }

    /// Inverse RoPE frequencies, computed in float32 as `transformers` does.
    fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let mut f: Vec<f32> =
            (0..d / 2).map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / d as f32)).collect();
        if let Some(s) = &self.rope_scaling {
            let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            for x in f.iter_mut() {
                let inv = f64::from(*x);
                let wavelen = 2.0 * std::f64::consts::PI / inv;
                let scaled = if wavelen > low_wavelen { inv / s.factor } else { inv };
                let out = if wavelen < high_wavelen || wavelen > low_wavelen {
                    scaled
                } else {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * scaled / s.factor + smooth * scaled
                };
                *x = out as f32;
            }
        }
        f
    }
}

fn is_attention(m: &str) -> bool {
    matches!(m, "q_proj" | "k_proj" | "v_proj" | "o_proj")
}

fn linear_path(layer: i64, module: &str) -> String {
    let block = if is_attention(module) { "self_attn" } else { "mlp" };
    format!("model.layers.{layer}.{block}.{module}")
}

/// One decoder layer.
pub struct Layer {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    /// In [`MODULES`] order.
    pub linears: [Linear; 7],
}

/// A loaded llama model.
pub struct Llama {
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `None` when the embeddings are tied.
    pub lm_head: Option<Tensor>,
    inv_freq: Tensor,
}

impl Llama {
    /// Takes the model's tensors out of `ts`, checking every name and shape.
    pub fn from_tensors(config: LlamaConfig, tokenizer: Tokenizer, ts: &mut TensorSet) -> Result<Self> {
        let (v, d) = (config.vocab_size, config.hidden_size);
        let embed = ts.take("model.embed_tokens.weight", &[v, d])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for l in 0..config.num_hidden_layers {
            let input_norm = ts.take(&format!("model.layers.{l}.input_layernorm.weight"), &[d])?;
            let post_norm = ts.take(&format!("model.layers.{l}.post_attention_layernorm.weight"), &[d])?;
            let mut lin = Vec::with_capacity(7);
            for (m, (o, i)) in MODULES.iter().zip(config.layer_linears()) {
                let p = linear_path(l, m);
                let weight = ts.take(&format!("{p}.weight"), &[o, i])?;
                let has_bias = if is_attention(m) { config.attention_bias } else { config.mlp_bias };
                let bias = if has_bias { Some(ts.take(&format!("{p}.bias"), &[o])?) } else { None };
                lin.push(Linear { weight, bias });
            }
            let linears: [Linear; 7] =
                lin.try_into().map_err(|_| TrainError::Recipe("internal: layer arity".into()))?;
            layers.push(Layer { input_norm, post_norm, linears });
        }
        let norm = ts.take("model.norm.weight", &[d])?;
        let lm_head = if config.tie_word_embeddings {
            // Some tied checkpoints still store a copy; it must agree in shape, and is ignored.
            ts.take_opt("lm_head.weight", &[v, d])?;
            None
        } else {
            Some(ts.take("lm_head.weight", &[v, d])?)
        };
        let inv_freq = Tensor::from_slice(&config.inv_freq()).to_device(embed.device());
        Ok(Llama { config, tokenizer, embed, layers, norm, lm_head, inv_freq })
    }

    /// Linear layers in adapter order: layer by layer, [`MODULES`] order inside a layer.
    pub fn linears(&self) -> Vec<LinearInfo> {
        let mut out = Vec::new();
        for l in 0..self.config.num_hidden_layers {
            for (m, (o, i)) in MODULES.iter().zip(self.config.layer_linears()) {
                out.push(LinearInfo { path: linear_path(l, m), module: m, in_features: i, out_features: o });
            }
        }
        out
    }

    /// Linear layer `i` in [`Llama::linears`] order.
    pub fn linear(&self, i: usize) -> &Linear {
        &self.layers[i / 7].linears[i % 7]
    }

    /// Named tensors in Hugging Face names.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.shallow_clone())];
        for (l, layer) in self.layers.iter().enumerate() {
            out.push((format!("model.layers.{l}.input_layernorm.weight"), layer.input_norm.shallow_clone()));
            out.push((format!("model.layers.{l}.post_attention_layernorm.weight"), layer.post_norm.shallow_clone()));
            for (m, lin) in MODULES.iter().zip(&layer.linears) {
                let p = linear_path(l as i64, m);
                out.push((format!("{p}.weight"), lin.weight.shallow_clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.bias"), b.shallow_clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.shallow_clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.shallow_clone()));
        }
        out
    }

    /// Every distinct base tensor (for pretraining).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.named_tensors().into_iter().map(|(_, t)| t).collect()
    }

    fn rope(&self, t: i64) -> (Tensor, Tensor) {
        let pos = Tensor::arange(t, (Kind::Float, self.inv_freq.device()));
        let freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    /// Logits `[B, T, vocab]` for token ids `[B, T]`; `train` enables LoRA dropout.
    // `x = x + …` on purpose: `+=` would add in place into a tensor autograd saved for backward.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, tokens: &Tensor, lora: Option<&LoraSet>, train: bool) -> Tensor {
        let c = &self.config;
        let (b, t) = tokens.size2().expect("tokens must be [batch, time]");
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (cos, sin) = self.rope(t);
        let rot = |x: &Tensor| {
            let x1 = x.narrow(-1, 0, hd / 2);
            let x2 = x.narrow(-1, hd / 2, hd / 2);
            x * &cos + Tensor::cat(&[&(-x2), &x1], -1) * &sin
        };
        let mut x = Tensor::embedding(&self.embed, tokens, -1, false, false);
        for (l, layer) in self.layers.iter().enumerate() {
            let lin = |m: usize, x: &Tensor| apply_linear(&layer.linears[m], x, lora, l * 7 + m, train);
            let h = x.rms_norm([c.hidden_size], Some(&layer.input_norm), c.rms_norm_eps);
            let q = rot(&lin(0, &h).view([b, t, nh, hd]).transpose(1, 2));
            let mut k = rot(&lin(1, &h).view([b, t, nkv, hd]).transpose(1, 2));
            let mut v = lin(2, &h).view([b, t, nkv, hd]).transpose(1, 2);
            if nkv != nh {
                k = k.repeat_interleave_self_int(nh / nkv, 1, None);
                v = v.repeat_interleave_self_int(nh / nkv, 1, None);
            }
            let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false);
            let a = a.transpose(1, 2).reshape([b, t, nh * hd]);
            x = x + lin(3, &a);
            let h = x.rms_norm([c.hidden_size], Some(&layer.post_norm), c.rms_norm_eps);
            let m = lin(4, &h).silu() * lin(5, &h);
            x = x + lin(6, &m);
        }
        let x = x.rms_norm([c.hidden_size], Some(&self.norm), c.rms_norm_eps);
        x.linear::<Tensor>(self.lm_head.as_ref().unwrap_or(&self.embed), None)
    }
}

/// `base(x) + scale · B(A(dropout(x)))` — PEFT's LoRA forward — or just `base(x)` when the layer
/// is not wrapped.
pub(crate) fn apply_linear(base: &Linear, x: &Tensor, lora: Option<&LoraSet>, index: usize, train: bool) -> Tensor {
    let y = base.forward(x);
    match lora.and_then(|s| s.pair(index).map(|p| (s, p))) {
        None => y,
        Some((set, p)) => {
            let xd = if train && set.dropout > 0.0 { x.dropout(set.dropout, true) } else { x.shallow_clone() };
            y + xd.linear::<Tensor>(&p.a, None).linear::<Tensor>(&p.b, None) * set.scale
        }
    }
}
