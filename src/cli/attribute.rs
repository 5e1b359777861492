//! `datanet attribute <datanet>`: one epoch of attribution run locally, every job on this peer.
//!
//! Parses the options and prints what [`attribute_local`] measured: it reads the Datanet's admitted
//! records and public evaluation set from the store, provisions the base, builds the
//! [`EpochPlan`](crate::attribution::EpochPlan) (units, screen, coalitions), trains one short LoRA
//! per coalition job with the real trainer and scores the utilities exactly as the committee
//! would (`measure::measure_epoch`, the code DatanetBench runs too).

use super::Global;
use crate::attribution;
use crate::measure::{LocalEpoch, LocalOptions, attribute_local};
use clap::Args;
use std::path::PathBuf;

/// Options of `datanet attribute`.
#[derive(Args, Debug, Clone)]
pub struct AttributeArgs {
    /// Datanet id (hex, or a unique prefix) or name.
    pub datanet: String,
    /// Epoch seed, 64 hex digits (default: BLAKE3 of the Datanet id and "local").
    #[arg(long)]
    pub epoch_seed: Option<String>,
    /// Coalition jobs (T).
    #[arg(long, default_value_t = 64)]
    pub jobs: u32,
    /// Base model folder (default: the installed or generated base of the manifest).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// libtorch CPU threads per job.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Parses 64 hex digits into a seed.
pub fn parse_seed(s: &str) -> anyhow::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out)
        .map_err(|_| anyhow::anyhow!("--epoch-seed: expected 64 hex digits, got {s:?}"))?;
    Ok(out)
}

/// Runs `datanet attribute`.
pub async fn run(args: AttributeArgs, g: &Global) -> anyhow::Result<()> {
    let options = LocalOptions {
        epoch_seed: args.epoch_seed.as_deref().map(parse_seed).transpose()?,
        datanet: args.datanet,
        jobs: args.jobs,
        base: args.base,
        threads: args.threads,
    };
    let progress =
        if g.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(args.jobs as u64) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("jobs {bar:40} {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let LocalEpoch { datanet: id, epoch_seed: seed, params, measured: out, rows } =
        attribute_local(&g.datadir(), &options, &progress).await?;
    let root = attribution::credit_root(&out.scores.leaves);
    if g.json {
        let v = serde_json::json!({
            "datanet": id.to_hex(),
            "epoch_seed": hex::encode(seed),
            "units": out.plan.units.len(),
            "jobs": out.plan.job_count(),
            "screened": out.plan.screened.len(),
            "retained": out.scores.retained,
            "credit_root": root.to_hex(),
            "unit_values": out.scores.unit_values,
            "contributors": rows.values().collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "datanet {}  units {}  jobs {} ({:.1} s)  screened {}  pool {}  retained {}",
        id.short(),
        out.plan.units.len(),
        out.plan.job_count(),
        out.train_secs,
        out.plan.screened.len(),
        params.pool,
        out.scores.retained
    );
    println!(
        "{:<10} {:>8} {:>8} {:>10} {:>6} {:>9} {:>12} {:>12} {:>10}",
        "contributor", "records", "new", "duplicates", "units", "screened", "value", "credit", "reward"
    );
    for (k, r) in &rows {
        println!(
            "{:<10} {:>8} {:>8} {:>10} {:>6} {:>9} {:>12} {:>12} {:>10}",
            k.short(),
            r.records,
            r.new,
            r.duplicates,
            r.units,
            r.screened_out,
            r.value,
            r.credit,
            r.reward
        );
    }
    println!("credit root {root}");
    Ok(())
}
