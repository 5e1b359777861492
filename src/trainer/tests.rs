//! Unit tests of the trainer on generated `micro` bases (fast on a 2-core CPU).

use super::data::{self, Example, IGNORE};
use super::eval::{self, EvalSet};
use super::init;
use super::lora::{LoraSet, LoraSpec};
use super::model::Base;
use super::train::{self, TrainConfig};
use super::utility::{UtilityJob, UtilityOptions};
use super::{DeviceChoice, Family, TorchSession, TrainError, weights};
use crate::manifest::{EvalSlice, Recipe, TaskKind};
use serde_json::{Value, json};
use std::path::Path;

fn recipe(targets: &[&str], rank: u32, steps: u32) -> Recipe {
    Recipe {
        lora_rank: rank,
        lora_alpha: 2 * rank,
        lora_dropout_ppm: 50_000,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        steps,
        learning_rate_ppm: 10_000,
        batch: 4,
        sequence_length: 32,
        records_per_unit_max: 100,
        seed: 7,
    }
}

fn texts(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"text": format!("record {i}: the quick brown fox {}", i * 7 % 13)})).collect()
}

fn micro_llama() -> Base {
    init::random_base(Family::Llama, "micro", 0, 0, 1).unwrap()
}

fn train_adapter(base: &Base, r: &Recipe, records: &[Value]) -> LoraSet {
    let cfg = TrainConfig::from_recipe(r).unwrap();
    let ex = data::examples(base, &TaskKind::Text, records, cfg.sequence_length).unwrap();
    let _s = TorchSession::begin(cfg.seed, 1);
    train::train_lora(base, &LoraSpec::from_recipe(r).unwrap(), &ex, &cfg, &mut |_| {}).unwrap().0
}

fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

// Training leaves every base tensor bit-identical, and only LoRA A/B receive gradients.
#[test]
fn base_frozen_only_lora_trains() {
    let base = micro_llama();
    let before: Vec<Vec<u8>> = base.named_tensors().iter().map(|(_, t)| weights::f32_bytes(t).unwrap()).collect();
    let r = recipe(&["all"], 4, 3);
    let lora = train_adapter(&base, &r, &texts(8));
    let after: Vec<Vec<u8>> = base.named_tensors().iter().map(|(_, t)| weights::f32_bytes(t).unwrap()).collect();
    assert_eq!(before, after);
    let ex = data::examples(&base, &TaskKind::Text, &texts(2), 32).unwrap();
    let b = data::batch(&ex.iter().collect::<Vec<_>>(), 0, tch::Device::Cpu);
    data::loss(&base.forward(&b.input, Some(&lora), true), &b.target).backward();
    assert!(base.named_tensors().iter().all(|(_, t)| !t.requires_grad() && !t.grad().defined()));
    assert!(lora.parameters().iter().all(|t| t.grad().defined()));
    assert!(f64::try_from(lora.parameters()[1].abs().sum(tch::Kind::Float)).unwrap() > 0.0, "B moved off zero");
}

// The same seed (same device and threads) gives byte-identical adapter files; another seed does not.
#[test]
fn same_seed_identical_adapter_bytes() {
    let base = micro_llama();
    let r = recipe(&["q_proj", "v_proj"], 2, 4);
    let a = train_adapter(&base, &r, &texts(10)).to_peft_bytes(&base).unwrap();
    let b = train_adapter(&base, &r, &texts(10)).to_peft_bytes(&base).unwrap();
    assert_eq!(a, b);
    let c = train_adapter(&base, &Recipe { seed: 8, ..r }, &texts(10)).to_peft_bytes(&base).unwrap();
    assert_ne!(a.1, c.1);
}

// A merged base (W + alpha/r·B·A) gives the same logits as base + adapter (≤ 1e-5, f32).
#[test]
fn merged_forward_matches_adapter() {
    let base = micro_llama();
    let lora = train_adapter(&base, &recipe(&["all"], 4, 5), &texts(8));
    let dir = tempfile::tempdir().unwrap();
    init::save_base(&base, dir.path(), Some(lora.merged_tensors(&base))).unwrap();
    let merged = Base::load(dir.path(), tch::Device::Cpu).unwrap();
    let tokens = tch::Tensor::from_slice(&[256i64, 10, 20, 30, 40, 50, 60, 257]).view([1, 8]);
    let (x, y) = tch::no_grad(|| (base.forward(&tokens, Some(&lora), false), merged.forward(&tokens, None, false)));
    let d = max_abs_diff(&x, &y);
    assert!(d <= 1e-5, "max abs diff {d}");
    assert!(max_abs_diff(&x, &tch::no_grad(|| base.forward(&tokens, None, false))) > 1e-4, "adapter changes logits");
}

// A merge keeps every key of the base's config.json (e.g. llama3 RoPE scaling, the dtype, keys this build does not read), and the merged folder loads to the adapter's logits.
#[test]
fn merge_keeps_the_base_config() {
    let base_dir = tempfile::tempdir().unwrap();
    write_micro(base_dir.path());
    let cfg_path = base_dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["torch_dtype"] = json!("bfloat16");
    cfg["datanet_test_unknown_key"] = json!({"kept": [1, 2, 3]});
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let base = Base::load(base_dir.path(), tch::Device::Cpu).unwrap();
    let lora = train_adapter(&base, &recipe(&["all"], 4, 5), &texts(8));
    let out = tempfile::tempdir().unwrap();
    init::save_merged(base_dir.path(), out.path(), lora.merged_tensors(&base)).unwrap();
    assert_eq!(std::fs::read(out.path().join("config.json")).unwrap(), std::fs::read(&cfg_path).unwrap());
    let merged = Base::load(out.path(), tch::Device::Cpu).unwrap();
    let tokens = tch::Tensor::from_slice(&[256i64, 10, 20, 30, 257]).view([1, 5]);
    let (x, y) = tch::no_grad(|| (base.forward(&tokens, Some(&lora), false), merged.forward(&tokens, None, false)));
    assert!(max_abs_diff(&x, &y) <= 1e-5);
}

// An adapter saved in PEFT layout loads back with identical tensors and PEFT names.
#[test]
fn peft_round_trip() {
    let base = micro_llama();
    let lora = train_adapter(&base, &recipe(&["q_proj", "down_proj"], 2, 2), &texts(4));
    let dir = tempfile::tempdir().unwrap();
    lora.save_peft(&base, dir.path()).unwrap();
    let back = LoraSet::load_peft(&base, dir.path()).unwrap();
    assert_eq!(lora.to_peft_bytes(&base).unwrap(), back.to_peft_bytes(&base).unwrap());
    let names: Vec<String> = lora.peft_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight".to_string()));
    assert!(names.contains(&"base_model.model.model.layers.0.mlp.down_proj.lora_B.weight".to_string()));
}

// Instruct records learn only from completion tokens (and EOS): prompt targets are masked.
#[test]
fn instruct_masks_prompt() {
    let base = micro_llama();
    let rec = json!({"prompt": "abc", "completion": "xy"});
    let Example::Tokens { input, target } = data::example(&base, &TaskKind::Instruct, &rec, 0, 32).unwrap() else {
        panic!("token example expected")
    };
    assert_eq!(input, vec![256, 97, 98, 99, 120, 121]);
    assert_eq!(target, vec![IGNORE, IGNORE, IGNORE, 120, 121, 257]);
}

fn write_micro(dir: &Path) {
    init::save_base(&micro_llama(), dir, None).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Base::load(dir, tch::Device::Cpu) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

// Missing or malformed config.json is refused with the file named.
#[test]
fn bad_config() {
    let d = tempfile::tempdir().unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("malformed"), "{e}");
    std::fs::write(d.path().join("config.json"), r#"{"model_type": "llama", "hidden_size": 32}"#).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("num_attention_heads"), "{e}");
}

// A checkpoint with a missing tensor or a wrong shape names the file and the tensor.
#[test]
fn bad_safetensors() {
    let d = tempfile::tempdir().unwrap();
    write_micro(d.path());
    let path = d.path().join("model.safetensors");
    let mut ts: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(&path).unwrap();
    ts.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    weights::write(&path, &ts).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"), "{e}");
    ts.push((
        "model.layers.1.mlp.up_proj.weight".into(),
        tch::Tensor::zeros([64, 31], (tch::Kind::Float, tch::Device::Cpu)),
    ));
    weights::write(&path, &ts).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("up_proj") && e.contains("[64, 31]"), "{e}");
    std::fs::write(&path, b"\x10\0\0\0\0\0\0\0{}").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("malformed"), "{e}");
    // Headers whose offsets disagree with the shape, or point past the file, are refused by name.
    let file = |header: &str, data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    std::fs::write(&path, file(r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#, 12)).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("malformed"), "{e}");
    std::fs::write(&path, file(r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 8)).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("16 data bytes"), "{e}");
}

// An unparseable tokenizer.json is refused with its path.
#[test]
fn bad_tokenizer() {
    let d = tempfile::tempdir().unwrap();
    write_micro(d.path());
    let cfg_path = d.path().join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("datanet_tokenizer");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::fs::write(d.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("tokenizer.json") && e.contains("does not parse"), "{e}");
}

// Unknown target modules, rank 0 and rank above the layer width are refused by name.
#[test]
fn bad_recipe() {
    let base = micro_llama();
    let err = |r: Recipe| LoraSet::new(&base, &LoraSpec::from_recipe(&r).unwrap(), 0).err().unwrap().to_string();
    let e = err(recipe(&["qkv_proj"], 2, 1));
    assert!(e.contains("unknown target module `qkv_proj`") && e.contains("q_proj"), "{e}");
    assert!(err(recipe(&["q_proj"], 0, 1)).contains("lora_rank 0"));
    let e = err(recipe(&["q_proj"], 33, 1));
    assert!(e.contains("lora_rank 33") && e.contains("model.layers.0.self_attn.q_proj"), "{e}");
}

// Training on no records is an explicit error, and `--device cuda` without CUDA is refused.
#[test]
fn empty_set_and_missing_cuda() {
    let base = micro_llama();
    let r = recipe(&["q_proj"], 2, 1);
    let cfg = TrainConfig::from_recipe(&r).unwrap();
    let e = train::train_lora(&base, &LoraSpec::from_recipe(&r).unwrap(), &[], &cfg, &mut |_| {});
    assert!(matches!(e, Err(TrainError::EmptyTrainingSet)));
    if !tch::Cuda::is_available() {
        let e = "cuda".parse::<DeviceChoice>().unwrap().resolve().unwrap_err();
        assert!(e.to_string().contains("CUDA is not available"), "{e}");
    }
    assert!("tpu".parse::<DeviceChoice>().is_err());
}

fn tabular(n: usize, seed: u64, noise: bool) -> Vec<Value> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let f: Vec<f64> = (0..4).map(|_| rng.r#gen::<f64>() * 2.0 - 1.0).collect();
            let mut label = i64::from(f[0] + 0.5 * f[1] > 0.0);
            if noise {
                label = rng.gen_range(0..2);
            }
            json!({"features": f, "label": label})
        })
        .collect()
}

fn slices() -> Vec<EvalSlice> {
    vec![EvalSlice { name: "a".into(), weight_ppm: 700_000 }, EvalSlice { name: "b".into(), weight_ppm: 300_000 }]
}

fn mlp_job() -> UtilityJob {
    let base = init::random_base(Family::Mlp, "tiny", 4, 2, 3).unwrap();
    let mut evals = tabular(200, 99, false);
    for (i, e) in evals.iter_mut().enumerate() {
        e["slice"] = json!(if i % 3 == 0 { "b" } else { "a" });
    }
    let r = Recipe { batch: 32, sequence_length: 1, learning_rate_ppm: 20_000, ..recipe(&["hidden"], 4, 40) };
    UtilityJob::new(
        base,
        &TaskKind::Tabular { features: 4, classes: 2 },
        &r,
        &slices(),
        &evals,
        UtilityOptions::default(),
    )
    .unwrap()
}

// u(∅) = 0; u(S) is deterministic; clean data beats label noise; a call on 300 rows is fast.
#[test]
fn utility_mlp() {
    let mut job = mlp_job();
    assert_eq!(job.utility(&[]).unwrap(), 0);
    let clean = tabular(300, 1, false);
    let t = std::time::Instant::now();
    let u1 = job.utility(&clean).unwrap();
    let took = t.elapsed();
    assert_eq!(u1, job.utility(&clean).unwrap());
    let noisy = job.utility(&tabular(300, 2, true)).unwrap();
    assert!(u1 > noisy, "clean {u1} vs noisy {noisy}");
    assert!(u1 > 0, "clean data improves the base: {u1}");
    assert!(took.as_secs_f64() < 1.0, "utility took {took:?}");
}

// The llama utility job trains and evaluates text records deterministically.
#[test]
fn utility_llama() {
    let base = micro_llama();
    let mut evals = texts(6);
    for (i, e) in evals.iter_mut().enumerate() {
        e["slice"] = json!(if i % 2 == 0 { "a" } else { "b" });
    }
    let r = recipe(&["q_proj", "v_proj"], 2, 3);
    let mut job = UtilityJob::new(base, &TaskKind::Text, &r, &slices(), &evals, UtilityOptions::default()).unwrap();
    let u = job.utility(&texts(12)).unwrap();
    assert_eq!(u, job.utility(&texts(12)).unwrap());
    assert_ne!(u, 0);
}

// Pretraining the mlp sets standardization statistics from data and lowers the loss.
#[test]
fn pretrain_mlp() {
    let base = init::random_base(Family::Mlp, "micro", 4, 2, 5).unwrap();
    let task = TaskKind::Tabular { features: 4, classes: 2 };
    let recs: Vec<Value> = tabular(256, 4, false)
        .into_iter()
        .map(|mut r| {
            r["features"][2] = json!(r["features"][2].as_f64().unwrap() * 100.0 + 50.0);
            r
        })
        .collect();
    let cfg = TrainConfig { learning_rate: 0.02, ..TrainConfig::from_recipe(&recipe(&["all"], 2, 60)).unwrap() };
    let out = init::pretrain(&base, &task, &recs, &cfg, 1, &mut |_| {}).unwrap();
    assert!(out.losses.last().unwrap() < &(out.losses[0] * 0.8), "{:?}", out.losses);
    let Base::Mlp(m) = &base else { unreachable!() };
    assert!((m.mean.double_value(&[2]) - 50.0).abs() < 10.0);
    assert!(base.named_tensors().iter().all(|(_, t)| !t.requires_grad()));
}

// Evaluation weights slices by their ppm weights (normalized).
#[test]
fn eval_weights_slices() {
    let base = init::random_base(Family::Mlp, "micro", 4, 2, 5).unwrap();
    let mut evals = tabular(30, 9, false);
    for (i, e) in evals.iter_mut().enumerate() {
        e["slice"] = json!(if i < 10 { "b" } else { "a" });
    }
    let task = TaskKind::Tabular { features: 4, classes: 2 };
    let set = EvalSet::prepare(&base, &task, &slices(), &evals, 1).unwrap();
    let r = eval::evaluate(&base, None, &set, 7).unwrap();
    let want = 0.7 * r.slices[0].loss + 0.3 * r.slices[1].loss;
    assert!((r.weighted_loss - want).abs() < 1e-12);
    assert_eq!(r.slices[1].count, 10);
    let mut bad = evals.clone();
    bad[0]["slice"] = json!("zzz");
    assert!(EvalSet::prepare(&base, &task, &slices(), &bad, 1).is_err());
}

// `llama3` RoPE scaling and GQA configs parse; unknown rope types are refused by key.
#[test]
fn llama3_config_parses() {
    let d = tempfile::tempdir().unwrap();
    let cfg = json!({"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
        "tie_word_embeddings": true, "datanet_tokenizer": "bytes",
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}, "rope_theta": 500000.0});
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let c = super::model::ConfigJson::read(d.path()).unwrap();
    let lc = super::llama::LlamaConfig::from_json(&c).unwrap();
    assert!(lc.rope_scaling.is_some());
    assert_eq!(lc.head_dim, 32);
    let mut bad = cfg.clone();
    bad["rope_scaling"]["rope_type"] = json!("yarn");
    std::fs::write(d.path().join("config.json"), bad.to_string()).unwrap();
    let c = super::model::ConfigJson::read(d.path()).unwrap();
    let e = super::llama::LlamaConfig::from_json(&c).unwrap_err().to_string();
    assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
}
