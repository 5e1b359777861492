//! Trainer commands: `datanet model init|pretrain|hash|import`, `datanet train`, `datanet eval`,
//! `datanet adapter merge`, `datanet lineage show|prove|verify`. Thin: each command parses, calls
//! one library function ([`crate::adapters`] or [`crate::trainer`]) and prints; progress bars are
//! the only thing it adds. The datadir layout is documented in [`crate::adapters`].

use super::Global;
use crate::adapters::{self, TrainRequest};
use crate::ids::{PeerKey, RecordHash};
use crate::manifest::TaskKind;
use crate::trainer::eval::EvalReport;
use crate::trainer::lineage::LineageProof;
use crate::trainer::model::folder_hash;
use crate::trainer::train::{StepReport, TrainConfig};
use crate::trainer::{self, Base, DeviceChoice, Family, init, provision};
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
    fn choice(&self) -> anyhow::Result<DeviceChoice> {
        Ok(self.device.parse::<DeviceChoice>()?)
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
            let dir = adapters::adapter_dir(&g.datadir(), &adapter)?;
            let hash = adapters::merge(&base, &dir, &out)?;
            println!("merged {} into {} (hash {hash})", dir.display(), out.display());
            Ok(())
        }
        TrainerCmd::Lineage(l) => lineage(l, g),
    }
}

async fn model(cmd: ModelCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Init { family, preset, features, classes, seed, out } => {
            let base = init::random_base(family, &preset, features, classes, seed)?;
            let (hash, dir) = match out {
                Some(dir) => {
                    init::save_base(&base, &dir, None)?;
                    (folder_hash(&dir)?, dir)
                }
                None => provision::install_new_base(&base, &g.datadir())?,
            };
            println!("{} {preset} base in {} hash {hash}", family.name(), dir.display());
            Ok(())
        }
        ModelCmd::Pretrain { base, corpus, task, out, steps, lr, batch, seq, seed, dev } => {
            let device = dev.choice()?.resolve()?;
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
                device: dev.choice()?.resolve()?,
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
    let req = TrainRequest {
        datanet: a.datanet,
        contributions: a.contributions,
        base: a.base,
        grad_accum: a.grad_accum,
        device: a.dev.choice()?,
        threads: a.dev.threads,
    };
    let (identity, store) = super::data::open_store(g).await?;
    let bar = progress(0);
    let on_step = {
        let bar = bar.clone();
        move |r: &StepReport| {
            bar.set_length(u64::from(r.steps));
            step_bar(&bar, r)
        }
    };
    let trained = adapters::train(&store, &identity, &g.datadir(), &req, on_step).await;
    bar.finish_and_clear();
    store.close().await?;
    let t = trained?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"adapter": t.adapter.to_hex(), "lineage": t.lineage_blob.to_hex(), "records": t.records,
                "tokens_per_s": t.tokens_per_s, "base": t.base_report, "adapted": t.report, "dir": t.dir})
        );
    } else {
        println!("trained {} steps on {} records, {:.0} tokens/s", t.steps, t.records, t.tokens_per_s);
        print_report("base", &t.base_report, false);
        print_report("adapter", &t.report, false);
        println!("adapter {}\nlineage {}\nfolder  {}", t.adapter, t.lineage_blob, t.dir.display());
    }
    Ok(())
}

async fn eval_cmd(a: EvalArgs, g: &Global) -> anyhow::Result<()> {
    let (_identity, store) = super::data::open_store(g).await?;
    let adir = if a.adapter == "base" { None } else { Some(adapters::adapter_dir(&g.datadir(), &a.adapter)?) };
    let r = adapters::evaluate(
        &store,
        &g.datadir(),
        adir.as_deref(),
        a.datanet.as_deref(),
        a.base.as_deref(),
        a.dev.choice()?,
        a.dev.threads,
    )
    .await;
    store.close().await?;
    print_report(if adir.is_some() { "adapter" } else { "base" }, &r?, g.json);
    Ok(())
}

fn lineage(cmd: LineageCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        LineageCmd::Show { adapter } => {
            let l = adapters::read_lineage(&adapters::adapter_dir(&g.datadir(), &adapter)?)?;
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
            let proof = adapters::prove(&adapters::adapter_dir(&g.datadir(), &adapter)?, &record)?;
            println!("{}", proof.to_hex());
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
