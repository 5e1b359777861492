//! Frozen bases: the text decoder pretrained on the common slice, and the cache both it and the
//! manifest's provisioned base folder live in.

use super::scenario::Scenario;
use crate::manifest::{Manifest, TaskKind};
use crate::trainer::{init, train::TrainConfig};
use serde_json::Value;
use std::path::PathBuf;

/// The text base: a small llama (byte tokenizer, 4 heads, 2 KV heads, tied embeddings) of the
/// scenario's depth and width, random from `seed`, then pretrained on `records` (the common slice)
/// with every tensor trainable. Deterministic in its inputs; cached under [`cache_dir`] by a hash of
/// the config, the pretraining settings and the records, since every seed's variants share it.
pub(super) fn text_base(
    s: &Scenario,
    task: &TaskKind,
    recipe: &crate::manifest::Recipe,
    records: &[Value],
    seed: u64,
) -> anyhow::Result<crate::trainer::Base> {
    let hidden = i64::from(s.model_hidden);
    let config = crate::trainer::llama::LlamaConfig {
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_hidden_layers: i64::from(s.model_layers),
        head_dim: hidden / 4,
        max_position_embeddings: i64::from(s.sequence_length).max(64) * 2,
        ..init::llama_preset("micro")?
    };
    let cfg = TrainConfig {
        steps: s.base_steps,
        learning_rate: s.base_learning_rate.unwrap_or(s.learning_rate),
        seed,
        ..TrainConfig::from_recipe(recipe)?
    };
    let mut h = blake3::Hasher::new_derive_key("datanet/bench/text-base/v1");
    h.update(config.to_json().to_string().as_bytes());
    h.update(format!("{cfg:?}").as_bytes());
    for r in records {
        h.update(r.to_string().as_bytes());
        h.update(b"\n");
    }
    let dir = cache_dir().map(|d| d.join(format!("text-base-{}", &h.finalize().to_hex()[..16])));
    if let Some(d) = &dir
        && d.join("model.safetensors").exists()
        && let Ok(base) = crate::trainer::Base::load(d, tch::Device::Cpu)
    {
        return Ok(base);
    }
    let t = std::time::Instant::now();
    let base = init::random_llama(config, seed, tch::Device::Cpu)?;
    let out = init::pretrain(&base, task, records, &cfg, 1, &mut |_| {})?;
    eprintln!(
        "pretrained the text base on {} common records: {} steps, loss {:.3} → {:.3} ({:.1} s)",
        records.len(),
        cfg.steps,
        out.losses.first().copied().unwrap_or(0.0),
        out.losses.last().copied().unwrap_or(0.0),
        t.elapsed().as_secs_f64()
    );
    if let Some(d) = &dir {
        // Written aside and renamed, so a concurrent or interrupted run never reads half a base.
        let tmp = d.with_extension(format!("tmp{}", std::process::id()));
        if init::save_base(&base, &tmp, None).is_ok() && std::fs::rename(&tmp, d).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(base)
}

/// The manifest's base folder exactly as the daemon and the CLI provision it
/// ([`crate::trainer::provision_base`]), kept under [`cache_dir`] (else the system temp folder).
pub(crate) fn manifest_base_dir(manifest: &Manifest, eval: &[Value]) -> anyhow::Result<PathBuf> {
    let root = cache_dir().unwrap_or_else(|| std::env::temp_dir().join("datanet-bench"));
    Ok(crate::trainer::provision_base(&root, manifest, eval, None)?)
}

/// Where pretrained text bases are cached: `$DATANET_BENCH_CACHE`, else `bench-cache/` in
/// `$CARGO_TARGET_DIR` or in `./target` when that exists (a checkout); else nowhere.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DATANET_BENCH_CACHE") {
        return Some(PathBuf::from(d));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.is_dir().then(|| target.join("bench-cache"))
}
