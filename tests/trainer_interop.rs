//! Interop: transformers' `LlamaForCausalLM` + peft's `PeftModel` (a client no one here wrote) load
//! the project's tiny base and adapter and reproduce the project's logits; transformers builds the
//! same tensor names and shapes for real Llama-architecture configs. Needs `DATANET_PYTHON` (set by
//! the Makefile and scripts/env.sh) pointing at the venv with transformers and peft.

use datanet::manifest::{Recipe, TaskKind};
use datanet::trainer::llama::LlamaConfig;
use datanet::trainer::lora::LoraSpec;
use datanet::trainer::model::ConfigJson;
use datanet::trainer::train::{self, TrainConfig};
use datanet::trainer::{Family, TorchSession, data, init, weights};
use serde_json::{Value, json};

fn real_configs() -> Vec<(&'static str, Value)> {
    vec![
        (
            "TinyLlama-1.1B",
            json!({"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
                "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "max_position_embeddings": 2048, "tie_word_embeddings": false}),
        ),
        (
            "SmolLM2-135M",
            json!({"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
                "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": true}),
        ),
        (
            "Llama-3.2-1B",
            json!({"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
                "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                "tie_word_embeddings": true, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
        ),
    ]
}

// transformers + peft reproduce the project's logits (≤ 1e-4) and tensor layouts.
#[test]
fn transformers_and_peft_agree() -> anyhow::Result<()> {
    let Some(python) = std::env::var_os("DATANET_PYTHON") else {
        eprintln!("DATANET_PYTHON is not set; skipping (make test sets it)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let base = init::random_base(Family::Llama, "tiny", 0, 0, 11)?;
    init::save_base(&base, &d.join("base"), None)?;
    let recipe = Recipe {
        lora_rank: 8,
        lora_alpha: 16,
        lora_dropout_ppm: 50_000,
        target_modules: vec!["all".into()],
        steps: 4,
        learning_rate_ppm: 5_000,
        batch: 4,
        sequence_length: 48,
        records_per_unit_max: 100,
        seed: 3,
    };
    let records: Vec<Value> =
        (0..16).map(|i| json!({"text": format!("interop record {i} says hello {}", i * i)})).collect();
    let cfg = TrainConfig::from_recipe(&recipe)?;
    let examples = data::examples(&base, &TaskKind::Text, &records, cfg.sequence_length)?;
    let lora = {
        let _s = TorchSession::begin(3, 2);
        train::train_lora(&base, &LoraSpec::from_recipe(&recipe)?, &examples, &cfg, &mut |_| {})?.0
    };
    lora.save_peft(&base, &d.join("adapter"))?;
    let ids: Vec<i64> = "\u{0}interop: the logits must agree".bytes().map(i64::from).chain([257]).collect();
    let tokens = tch::Tensor::from_slice(&ids).view([1, ids.len() as i64]);
    let (adapted, plain) =
        tch::no_grad(|| (base.forward(&tokens, Some(&lora), false), base.forward(&tokens, None, false)));
    weights::write(
        &d.join("rust.safetensors"),
        &[
            ("tokens".to_string(), tokens.to_kind(tch::Kind::Float)),
            ("logits_adapter".to_string(), adapted),
            ("logits_base".to_string(), plain),
        ],
    )?;
    let mut shapes = serde_json::Map::new();
    for (name, cfg) in real_configs() {
        let cdir = d.join(name);
        std::fs::create_dir_all(&cdir)?;
        std::fs::write(cdir.join("config.json"), cfg.to_string())?;
        let lc = LlamaConfig::from_json(&ConfigJson::read(&cdir)?)?;
        shapes.insert(name.into(), json!({"config": cfg, "shapes": lc.tensor_shapes()}));
    }
    std::fs::write(d.join("shapes.json"), Value::Object(shapes).to_string())?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop_llama.py");
    let out = std::process::Command::new(python).arg(script).arg(d).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "interop script failed:\n{text}");
    Ok(())
}

fn dn(datadir: &std::path::Path, args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_datanet"))
        .arg("--datadir")
        .arg(datadir)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run datanet");
    assert!(o.status.success(), "datanet {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// `datanet train` on a tabular Datanet improves the evaluation, stores a signed lineage, and a
// record's inclusion proof verifies from another datadir (as on another machine).
#[test]
fn cli_train_lineage_prove_verify() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().join("peer");
    dn(&d, &["init"]);
    dn(&d, &["datanet", "create", "--from", root.join("config/datanets/breast_cancer.toml").to_str().unwrap()]);
    dn(&d, &["contribute", "breast-cancer", root.join("tests/data/breast_cancer_train.csv").to_str().unwrap()]);
    let out: Value = serde_json::from_str(
        dn(&d, &["train", "breast-cancer", "--device", "cpu", "--threads", "1", "--json"]).trim(),
    )?;
    assert!(out["adapted"]["weighted_loss"].as_f64().unwrap() < out["base"]["weighted_loss"].as_f64().unwrap());
    let adapter = out["adapter"].as_str().unwrap().to_string();
    let records = std::fs::read(d.join("adapters").join(&adapter).join("records.bin"))?;
    let list: datanet::trainer::lineage::RecordList = datanet::codec::decode(&records)?;
    assert_eq!(list.hashes.len(), 455);
    let proof = dn(&d, &["lineage", "prove", &adapter[..12], &list.hashes[17].to_hex()]);
    let other = tmp.path().join("other");
    let ok = dn(&other, &["lineage", "verify", proof.trim()]);
    assert!(ok.contains(&list.hashes[17].to_hex()) && ok.contains(&adapter), "{ok}");
    Ok(())
}
