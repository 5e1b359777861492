//! The Rust half of `make bench-train`: LoRA training throughput against Python PyTorch + PEFT.
//!
//! [`run`] writes everything the reference script (`benches/train_peft.py`) needs to repeat the
//! exact same run — the base (`base/`, llama `tiny`: 4 layers, d=256), the token rows in training
//! order (`data.safetensors`), the adapter before training (`init_adapter/`, rank 8 on q,k,v,o, no
//! dropout) — then trains for the given steps and writes `rust.json` (tokens/s, peak RSS, losses,
//! settings). Throughput counts every step but the first (allocator and kernel warm-up).

use super::data::Batch;
use super::init;
use super::lora::{LoraSet, LoraSpec};
use super::train::{Stepper, TrainConfig};
use super::{Result, TorchSession, TrainError, io_err, weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub steps: u32,
    pub threads: usize,
    pub device: Device,
    pub seed: u64,
    pub batch: usize,
    pub sequence_length: usize,
    pub learning_rate: f64,
}

/// Peak resident set size of this process in MiB (`VmHWM`), 0 when unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A deterministic English-like byte stream (a small grammar), so the loss has something to learn.
fn corpus(bytes: usize, seed: u64) -> Vec<i64> {
    const SUBJ: [&str; 8] = ["the cat", "a dog", "my friend", "the model", "our team", "a peer", "the data", "she"];
    const VERB: [&str; 8] = ["sees", "trains", "shares", "finds", "likes", "builds", "reads", "pays"];
    const OBJ: [&str; 8] =
        ["the ball", "a dataset", "new records", "the adapter", "fair rewards", "a tree", "it", "them"];
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(bytes + 64);
    while out.len() < bytes {
        let s = format!("{} {} {}. ", SUBJ[rng.gen_range(0..8)], VERB[rng.gen_range(0..8)], OBJ[rng.gen_range(0..8)]);
        out.extend(s.bytes().map(i64::from));
    }
    out.truncate(bytes);
    out
}

/// Prepares the shared inputs in `out`, trains, and writes `out/rust.json`; returns its contents.
pub fn run(out: &Path, o: &BenchOptions) -> Result<serde_json::Value> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let mut cfg_llama = init::llama_preset("tiny")?;
    cfg_llama.max_position_embeddings = cfg_llama.max_position_embeddings.max(o.sequence_length as i64 + 1);
    let base = init::random_llama(cfg_llama, o.seed, Device::Cpu)?;
    init::save_base(&base, &out.join("base"), None)?;
    let base = super::Base::load(&out.join("base"), o.device)?;

    let rows = o.steps as usize * o.batch;
    let width = o.sequence_length + 1;
    let stream = corpus(rows * width, o.seed);
    let all = Tensor::from_slice(&stream).view([rows as i64, width as i64]);
    weights::write(&out.join("data.safetensors"), &[("tokens".to_string(), all.to_kind(Kind::Float))])?;

    let spec = LoraSpec {
        rank: 8,
        alpha: 16,
        dropout: 0.0,
        targets: ["q_proj", "k_proj", "v_proj", "o_proj"].iter().map(|s| s.to_string()).collect(),
    };
    let cfg = TrainConfig {
        steps: o.steps,
        learning_rate: o.learning_rate,
        batch: o.batch,
        grad_accum: 1,
        warmup_steps: (o.steps / 10).max(1),
        clip_norm: 1.0,
        adamw: Default::default(),
        sequence_length: o.sequence_length,
        seed: o.seed,
    };
    let _s = TorchSession::begin(o.seed, o.threads);
    let lora = LoraSet::new(&base, &spec, o.seed)?;
    lora.save_peft(&base, &out.join("init_adapter"))?;
    let mut stepper = Stepper::new(lora.parameters(), &cfg);
    let mut losses = Vec::with_capacity(o.steps as usize);
    let mut timed_from = Instant::now();
    for s in 0..o.steps as i64 {
        let rows = all.narrow(0, s * o.batch as i64, o.batch as i64).to_device(o.device);
        let input = rows.narrow(1, 0, o.sequence_length as i64);
        let target = rows.narrow(1, 1, o.sequence_length as i64);
        let b = Batch { input, target, tokens: o.batch * o.sequence_length };
        let (loss, _) = stepper.step(&base, Some(&lora), std::slice::from_ref(&b))?;
        losses.push(loss);
        if s == 0 {
            timed_from = Instant::now();
        }
    }
    let secs = timed_from.elapsed().as_secs_f64();
    stepper.finish();
    if o.steps < 2 {
        return Err(TrainError::Recipe("the benchmark needs at least 2 steps".into()));
    }
    let tok_s = (o.steps as usize - 1) as f64 * (o.batch * o.sequence_length) as f64 / secs.max(1e-9);
    let result = serde_json::json!({
        "tok_s": tok_s,
        "rss_mb": peak_rss_mb(),
        "losses": losses,
        "steps": o.steps,
        "threads": o.threads,
        "batch": o.batch,
        "sequence_length": o.sequence_length,
        "learning_rate": o.learning_rate,
        "warmup_steps": cfg.warmup_steps,
        "clip_norm": cfg.clip_norm,
        "device": format!("{:?}", o.device),
    });
    let path = out.join("rust.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&result).unwrap_or_default()).map_err(io_err(&path))?;
    Ok(result)
}
