//! Trainer commands: `datanet model init|pretrain|hash|import`, `datanet train`, `datanet eval`,
//! `datanet adapter merge`, `datanet lineage show|prove|verify`. Thin: the work is in
//! [`crate::trainer`]; this file moves bytes between the store, the files and the trainer.
//!
//! Where things live in a datadir: installed bases in `models/<folder hash>/` (generated bases from
//! a manifest's preset are created there on first use); trained adapters in
//! `adapters/<adapter hash>/` in PEFT layout with `lineage.bin` (signed) and `records.bin` (the
//! training record hashes in order). Every adapter file, lineage and record list is also a blob in
//! the store, so peers can fetch them by hash.

use super::Global;
use crate::codec::{self, Signed};
use crate::ids::{BlobHash, ContributionId, PeerKey, RecordHash};
use crate::manifest::TaskKind;
use crate::trainer::eval::{self, EvalReport, EvalSet};
use crate::trainer::lineage::{Lineage, LineageMetric, LineageProof, RecordList, SignedLineage, recipe_hash};
use crate::trainer::lora::{self, LoraSet, LoraSpec};
use crate::trainer::model::folder_hash;
use crate::trainer::train::{StepReport, TrainConfig};
use crate::trainer::{self, Base, DeviceChoice, Family, TorchSession, data, init, provision};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// Device and thread options shared by the training commands.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch CPU threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl DeviceArgs {
    fn resolve(&self) -> anyhow::Result<tch::Device> {
        Ok(self.device.parse::<DeviceChoice>()?.resolve()?)
    }
}

#[derive(Subcommand, Debug)]
pub enum TrainerCmd {
    /// Base models: generate, pretrain, hash, install.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Train a LoRA adapter on a Datanet's admitted records; stores it with a signed lineage.
    Train(TrainArgs),
    /// Evaluate an adapter (or the base alone) on a Datanet's public evaluation slices.
    Eval(EvalArgs),
    /// Adapter tools.
    #[command(subcommand)]
    Adapter(AdapterCmd),
    /// Lineage manifests and inclusion proofs.
    #[command(subcommand)]
    Lineage(LineageCmd),
}

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Write a random base of a preset in Hugging Face layout.
    Init {
        #[arg(long, default_value = "llama")]
        family: Family,
        /// micro or tiny.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Tabular inputs (mlp only).
        #[arg(long, default_value_t = 8)]
        features: u32,
        /// Tabular classes (mlp only).
        #[arg(long, default_value_t = 2)]
        classes: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder; default: install into the datadir's `models/`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train every tensor of a base on a JSONL corpus (text, instruct or tabular records).
    Pretrain {
        /// The starting base folder.
        #[arg(long)]
        base: PathBuf,
        #[arg(long)]
        corpus: PathBuf,
        /// text, instruct or tabular.
        #[arg(long, default_value = "text")]
        task: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 200)]
        steps: u32,
        #[arg(long, default_value_t = 0.001)]
        lr: f64,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Print a model folder's hash (what a manifest's `base_model.hash` names).
    Hash { dir: PathBuf },
    /// Copy a model folder into the datadir's `models/<hash>/`.
    Import { dir: PathBuf },
    /// The Rust half of `make bench-train` (writes base, data, initial adapter and rust.json to --out).
    BenchTrain {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 20)]
        steps: u32,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 0.001)]
        lr: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        dev: DeviceArgs,
    },
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    pub datanet: String,
    /// Train on these contributions only (ids or prefixes, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub contributions: Vec<String>,
    /// Base folder instead of the one the manifest names.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Adapter id (or prefix) in the datadir, a PEFT adapter folder, or `base`.
    pub adapter: String,
    /// The Datanet whose evaluation suite to use (default: the adapter's lineage).
    #[arg(long)]
    pub datanet: Option<String>,
    #[arg(long)]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

#[derive(Subcommand, Debug)]
pub enum AdapterCmd {
    /// Write base weights with the adapter merged in (`W + alpha/r·B·A`).
    Merge {
        #[arg(long)]
        base: PathBuf,
        /// Adapter id (or prefix) in the datadir, or a PEFT adapter folder.
        #[arg(long)]
        adapter: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum LineageCmd {
    /// Show an adapter's signed lineage.
    Show { adapter: String },
    /// Print an inclusion proof (hex) that a record was in an adapter's training set.
    Prove { adapter: String, record: RecordHash },
    /// Check a proof offline (hex, or a file holding it).
    Verify {
        proof: String,
        /// Also require this trainer key to have signed the lineage.
        #[arg(long)]
        signer: Option<PeerKey>,
    },
}

/// Runs one trainer command.
pub async fn run(cmd: TrainerCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        TrainerCmd::Model(m) => model(m, g).await,
        TrainerCmd::Train(a) => train(a, g).await,
        TrainerCmd::Eval(a) => eval_cmd(a, g).await,
        TrainerCmd::Adapter(AdapterCmd::Merge { base, adapter, out }) => {
            let dir = adapter_dir(g, &adapter)?;
            let base_model = Base::load(&base, tch::Device::Cpu)?;
            let lora = LoraSet::load_peft(&base_model, &dir)?;
            init::save_merged(&base, &out, lora.merged_tensors(&base_model))?;
            println!("merged {} into {} (hash {})", dir.display(), out.display(), folder_hash(&out)?);
            Ok(())
        }
        TrainerCmd::Lineage(l) => lineage(l, g),
    }
}

async fn model(cmd: ModelCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Init { family, preset, features, classes, seed, out } => {
            let base = init::random_base(family, &preset, features, classes, seed)?;
            let dir = match out {
                Some(o) => o,
                None => g.datadir().join("models").join(format!("tmp-{}", std::process::id())),
            };
            init::save_base(&base, &dir, None)?;
            let hash = folder_hash(&dir)?;
            let dir = if dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tmp-")) {
                install_rename(&dir, &g.datadir(), &hash)?
            } else {
                dir
            };
            println!("{} {preset} base in {} hash {hash}", family.name(), dir.display());
            Ok(())
        }
        ModelCmd::Pretrain { base, corpus, task, out, steps, lr, batch, seq, seed, dev } => {
            let device = dev.resolve()?;
            let model = Base::load(&base, device)?;
            let task = match (task.as_str(), &model) {
                ("text", _) => TaskKind::Text,
                ("instruct", _) => TaskKind::Instruct,
                ("tabular", Base::Mlp(m)) => {
                    TaskKind::Tabular { features: m.config.features as u32, classes: m.config.classes as u32 }
                }
                _ => bail!("--task must be text, instruct or tabular (tabular needs an mlp base)"),
            };
            let records = read_jsonl(&corpus)?;
            let cfg = TrainConfig {
                steps,
                learning_rate: lr,
                batch,
                grad_accum: 1,
                warmup_steps: (steps / 10).max(1),
                clip_norm: 1.0,
                adamw: Default::default(),
                sequence_length: seq,
                seed,
            };
            let bar = progress(u64::from(steps));
            let out_dir = out.clone();
            let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let o = init::pretrain(&model, &task, &records, &cfg, dev.threads, &mut |r| step_bar(&bar, r))?;
                bar.finish();
                init::save_base(&model, &out_dir, None)?;
                init::copy_tokenizer(&base, &out_dir)?;
                Ok(o)
            })
            .await??;
            println!(
                "pretrained {} steps, loss {:.4} → {:.4}, {:.0} tokens/s; base in {} hash {}",
                outcome.losses.len(),
                outcome.losses.first().copied().unwrap_or(f64::NAN),
                outcome.losses.last().copied().unwrap_or(f64::NAN),
                outcome.tokens as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
                out.display(),
                folder_hash(&out)?
            );
            Ok(())
        }
        ModelCmd::BenchTrain { out, steps, batch, seq, lr, seed, dev } => {
            let opts = trainer::bench::BenchOptions {
                steps,
                threads: dev.threads,
                device: dev.resolve()?,
                seed,
                batch,
                sequence_length: seq,
                learning_rate: lr,
            };
            let r = tokio::task::spawn_blocking(move || trainer::bench::run(&out, &opts)).await??;
            println!(
                "rust: {:.0} tokens/s, peak RSS {:.0} MiB",
                r["tok_s"].as_f64().unwrap_or(0.0),
                r["rss_mb"].as_f64().unwrap_or(0.0)
            );
            Ok(())
        }
        ModelCmd::Hash { dir } => {
            println!("{}", folder_hash(&dir)?);
            Ok(())
        }
        ModelCmd::Import { dir } => {
            Base::load(&dir, tch::Device::Cpu).with_context(|| format!("{} is not a loadable base", dir.display()))?;
            // Copied aside, re-hashed and renamed into place only when the copy hashes like the source.
            let (hash, dest) = provision::install_base(&dir, &g.datadir())?;
            println!("imported {} as {hash} ({})", dir.display(), dest.display());
            Ok(())
        }
    }
}

fn install_rename(tmp: &Path, datadir: &Path, hash: &BlobHash) -> anyhow::Result<PathBuf> {
    let dest = datadir.join("models").join(hash.to_hex());
    if dest.exists() {
        std::fs::remove_dir_all(tmp)?;
    } else {
        std::fs::rename(tmp, &dest)?;
    }
    Ok(dest)
}

fn progress(steps: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn step_bar(bar: &indicatif::ProgressBar, r: &StepReport) {
    bar.set_position(u64::from(r.step));
    bar.set_message(format!(
        "loss {:.4} lr {:.2e} {:.0} tok/s",
        r.loss,
        r.learning_rate,
        r.tokens as f64 / r.elapsed.as_secs_f64().max(1e-9)
    ));
}

fn read_jsonl(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1)))
        .collect()
}

fn metrics(r: &EvalReport) -> (Vec<LineageMetric>, i64, u32) {
    let ms = r
        .slices
        .iter()
        .map(|s| LineageMetric {
            slice: s.name.clone(),
            weight_ppm: s.weight_ppm,
            loss_micro: (s.loss * 1e6).round() as i64,
            accuracy_ppm: (s.accuracy * 1e6).round() as u32,
            count: s.count,
        })
        .collect();
    (ms, (r.weighted_loss * 1e6).round() as i64, (r.weighted_accuracy * 1e6).round() as u32)
}

fn print_report(title: &str, r: &EvalReport, json: bool) {
    if json {
        println!("{}", serde_json::json!({"model": title, "report": r}));
        return;
    }
    println!("{title}");
    println!("  {:<16} {:>10} {:>10} {:>10} {:>8}", "slice", "weight", "loss", "accuracy", "count");
    for s in &r.slices {
        println!(
            "  {:<16} {:>10} {:>10.4} {:>10.4} {:>8}",
            s.name,
            format!("{:.3}", f64::from(s.weight_ppm) / 1e6),
            s.loss,
            s.accuracy,
            s.count
        );
    }
    println!("  {:<16} {:>10} {:>10.4} {:>10.4}", "weighted", "", r.weighted_loss, r.weighted_accuracy);
}

async fn train(a: TrainArgs, g: &Global) -> anyhow::Result<()> {
    let (identity, store) = super::data::open_store(g).await?;
    let (datanet, m) = super::data::resolve(&store, &a.datanet)?;
    // Training reads records, not credit: every named contribution at the same priority.
    let only: Option<std::collections::BTreeMap<ContributionId, u64>> = if a.contributions.is_empty() {
        None
    } else {
        let mut ids = std::collections::BTreeMap::new();
        for c in &a.contributions {
            let id = store.resolve_contribution(c)?.with_context(|| format!("contribution `{c}` is not known here"))?;
            ids.insert(id, 0);
        }
        Some(ids)
    };
    let admitted = store.datanet_records(&datanet, only.as_ref()).await?;
    if admitted.is_empty() {
        bail!(trainer::TrainError::EmptyTrainingSet);
    }
    let evals = crate::measure::eval_values(&store, &m).await?;
    let bdir = trainer::provision_base(&g.datadir(), &m, &evals, a.base.as_deref())?;
    // Provisioned bases were just verified (and their hash cached); an explicit --base is hashed here.
    let base_hash = if a.base.is_some() { folder_hash(&bdir)? } else { provision::cached_folder_hash(&bdir)? };
    let device = a.dev.resolve()?;
    let threads = a.dev.threads;
    let manifest = m.clone();
    let grad_accum = a.grad_accum;
    let values: Vec<serde_json::Value> = admitted.iter().map(|r| r.value.clone()).collect();
    let hashes: Vec<RecordHash> = admitted.iter().map(|r| r.hash).collect();
    let job = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let base = Base::load(&bdir, device)?;
        let spec = LoraSpec::from_recipe(&manifest.recipe)?;
        let cfg = TrainConfig { grad_accum, ..TrainConfig::from_recipe(&manifest.recipe)? };
        let examples = data::examples(&base, &manifest.task, &values, cfg.sequence_length)?;
        let evalset = EvalSet::prepare(&base, &manifest.task, &manifest.eval.slices, &evals, cfg.sequence_length)?;
        let _s = TorchSession::begin(cfg.seed, threads);
        let base_report = eval::evaluate(&base, None, &evalset, 32)?;
        let bar = progress(u64::from(cfg.steps));
        let (lora, outcome) = trainer::train::train_lora(&base, &spec, &examples, &cfg, &mut |r| step_bar(&bar, r))?;
        bar.finish();
        let report = eval::evaluate(&base, Some(&lora), &evalset, 32)?;
        let (cfg_bytes, weights) = lora.to_peft_bytes(&base)?;
        Ok((base_report, report, cfg_bytes, weights, outcome, cfg))
    });
    let (base_report, report, cfg_bytes, weights, outcome, cfg) = job.await??;
    let order = RecordList { hashes: outcome.order.iter().map(|&i| hashes[i]).collect() };
    let records_bytes = codec::encode(&order);
    let adapter = store.put_blob(weights.clone()).await?;
    let adapter_config = store.put_blob(cfg_bytes.clone()).await?;
    let records_blob = store.put_blob(records_bytes.clone()).await?;
    let (ms, wl, wa) = metrics(&report);
    let body = Lineage {
        adapter,
        adapter_config,
        base_model: base_hash,
        datanet,
        records_root: order.root(),
        record_count: order.hashes.len() as u64,
        records_blob,
        recipe_hash: recipe_hash(&m.recipe),
        seed: cfg.seed,
        steps: cfg.steps,
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        metrics: ms,
        weighted_loss_micro: wl,
        weighted_accuracy_ppm: wa,
    };
    let signed = Signed::sign(body, &identity.signing_key());
    let lineage_bytes = signed.to_bytes();
    let lineage_blob = store.put_blob(lineage_bytes.clone()).await?;
    store.flush().await?;
    store.close().await?;
    let dir = g.datadir().join("adapters").join(adapter.to_hex());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(lora::ADAPTER_CONFIG), &cfg_bytes)?;
    std::fs::write(dir.join(lora::ADAPTER_WEIGHTS), &weights)?;
    std::fs::write(dir.join("lineage.bin"), &lineage_bytes)?;
    std::fs::write(dir.join("records.bin"), &records_bytes)?;
    let tok_s = outcome.tokens as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
    if g.json {
        println!(
            "{}",
            serde_json::json!({"adapter": adapter.to_hex(), "lineage": lineage_blob.to_hex(), "records": order.hashes.len(),
                "tokens_per_s": tok_s, "base": base_report, "adapted": report, "dir": dir})
        );
    } else {
        println!("trained {} steps on {} records, {:.0} tokens/s", cfg.steps, order.hashes.len(), tok_s);
        print_report("base", &base_report, false);
        print_report("adapter", &report, false);
        println!("adapter {adapter}\nlineage {lineage_blob}\nfolder  {}", dir.display());
    }
    Ok(())
}

/// An adapter folder: a path holding `adapter_config.json`, or an id / unique prefix in the datadir.
fn adapter_dir(g: &Global, key: &str) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(key);
    if p.join(lora::ADAPTER_CONFIG).exists() {
        return Ok(p);
    }
    let root = g.datadir().join("adapters");
    let key = key.to_ascii_lowercase();
    let found: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&key))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => bail!("adapter `{key}` is not in {} (give an id, a unique prefix or a folder)", root.display()),
        n => bail!("adapter prefix `{key}` matches {n} adapters; give more digits"),
    }
}

fn read_lineage(dir: &Path) -> anyhow::Result<SignedLineage> {
    let p = dir.join("lineage.bin");
    let bytes = std::fs::read(&p).with_context(|| format!("{}: no lineage for this adapter", p.display()))?;
    SignedLineage::decode_verified(&bytes).with_context(|| format!("{}", p.display()))
}

async fn eval_cmd(a: EvalArgs, g: &Global) -> anyhow::Result<()> {
    let (_identity, store) = super::data::open_store(g).await?;
    let adir = if a.adapter == "base" { None } else { Some(adapter_dir(g, &a.adapter)?) };
    let (_id, m) = match (&a.datanet, &adir) {
        (Some(d), _) => super::data::resolve(&store, d)?,
        (None, Some(dir)) => {
            let l = read_lineage(dir)?;
            let m = store
                .manifest(&l.body.datanet)?
                .with_context(|| format!("datanet {} not known here", l.body.datanet))?;
            (l.body.datanet, m.body)
        }
        (None, None) => bail!("give --datanet to evaluate the base"),
    };
    let evals = crate::measure::eval_values(&store, &m).await?;
    store.close().await?;
    let bdir = trainer::provision_base(&g.datadir(), &m, &evals, a.base.as_deref())?;
    let device = a.dev.resolve()?;
    let threads = a.dev.threads;
    let json = g.json;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let base = Base::load(&bdir, device)?;
        let seq = m.recipe.sequence_length as usize;
        let set = EvalSet::prepare(&base, &m.task, &m.eval.slices, &evals, seq)?;
        let _s = TorchSession::begin(0, threads);
        let lora = adir.as_deref().map(|d| LoraSet::load_peft(&base, d)).transpose()?;
        let r = eval::evaluate(&base, lora.as_ref(), &set, 32)?;
        print_report(if lora.is_some() { "adapter" } else { "base" }, &r, json);
        Ok(())
    })
    .await?
}

fn lineage(cmd: LineageCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        LineageCmd::Show { adapter } => {
            let dir = adapter_dir(g, &adapter)?;
            let l = read_lineage(&dir)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"signer": l.signer, "lineage": l.body}))?
                );
                return Ok(());
            }
            let b = &l.body;
            println!("adapter          {}", b.adapter);
            println!("adapter config   {}", b.adapter_config);
            println!("base model       {}", b.base_model);
            println!("datanet          {}", b.datanet);
            println!("records root     {} ({} records, list blob {})", b.records_root, b.record_count, b.records_blob);
            println!("recipe hash      {}", hex::encode(b.recipe_hash));
            println!("seed / steps     {} / {}", b.seed, b.steps);
            println!("crate version    {}", b.crate_version);
            println!(
                "weighted loss    {:.6}  accuracy {:.4}",
                b.weighted_loss_micro as f64 / 1e6,
                f64::from(b.weighted_accuracy_ppm) / 1e6
            );
            for s in &b.metrics {
                println!(
                    "  slice {:<16} weight {:.3} loss {:.6} accuracy {:.4} ({} targets)",
                    s.slice,
                    f64::from(s.weight_ppm) / 1e6,
                    s.loss_micro as f64 / 1e6,
                    f64::from(s.accuracy_ppm) / 1e6,
                    s.count
                );
            }
            println!("signed by        {}", l.signer);
            Ok(())
        }
        LineageCmd::Prove { adapter, record } => {
            let dir = adapter_dir(g, &adapter)?;
            let l = read_lineage(&dir)?;
            let p = dir.join("records.bin");
            let list: RecordList = codec::decode(&std::fs::read(&p).with_context(|| format!("{}", p.display()))?)?;
            if list.root() != l.body.records_root {
                bail!("{}: record list does not match the lineage's records root", p.display());
            }
            let proof = list
                .prove(&record)
                .with_context(|| format!("record {record} is not in this adapter's training set"))?;
            println!("{}", LineageProof { lineage: l, proof }.to_hex());
            Ok(())
        }
        LineageCmd::Verify { proof, signer } => {
            let text = if Path::new(&proof).is_file() { std::fs::read_to_string(&proof)? } else { proof };
            let p = LineageProof::from_hex(&text)?;
            let (record, adapter) = match signer {
                Some(k) => p.verify_by(&k)?,
                None => p.verify()?,
            };
            println!(
                "ok: record {record} is in the training set of adapter {adapter} (datanet {}, signed by {})",
                p.lineage.body.datanet, p.lineage.signer
            );
            Ok(())
        }
    }
}
