//! `datanet attribute <datanet>`: one epoch of attribution run locally, every job on this peer.
//!
//! Reads the Datanet's admitted records and public evaluation set from the store, provisions the
//! base, and hands them to [`measure_epoch`], which builds the
//! [`EpochPlan`](crate::attribution::EpochPlan) (units, screen, coalitions), trains one short LoRA
//! per coalition job with the real trainer ([`UtilityJob`]) and scores the utilities exactly as the
//! committee would (the same code DatanetBench runs); this file prints the result.

use super::Global;
use crate::attribution::{self, EpochParams};
use crate::ids::PeerKey;
use crate::measure::{UtilityCache, contributor_values, eval_values, measure_epoch};
use crate::store::Store;
use crate::trainer::Base;
use crate::trainer::utility::{UtilityJob, UtilityOptions};
use anyhow::Context;
use clap::Args;
use std::collections::BTreeMap;
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
    let store = Store::open(&g.datadir()).await?;
    let (id, m) = store
        .resolve_datanet(&args.datanet)?
        .with_context(|| format!("datanet `{}` is not known here", args.datanet))?;
    let seed = match &args.epoch_seed {
        Some(s) => parse_seed(s)?,
        None => {
            let mut h = blake3::Hasher::new();
            h.update(id.as_bytes());
            h.update(b"local");
            *h.finalize().as_bytes()
        }
    };
    let records = store.datanet_records(&id, None).await?;
    let eval = eval_values(&store, &m).await?;
    let infos = store.contributions(&id)?;
    let dir = crate::trainer::provision_base(&g.datadir(), &m, &eval, args.base.as_deref())?;
    let opts = UtilityOptions { threads: args.threads, ..UtilityOptions::default() };
    let base =
        Base::load(&dir, opts.device.resolve()?).with_context(|| format!("loading the base from {}", dir.display()))?;
    let mut job = UtilityJob::new(base, &m.task, &m.recipe, &m.eval.slices, &eval, opts)?;
    let params = EpochParams { jobs: args.jobs, ..EpochParams::from_manifest(&m) };
    let progress =
        if g.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(args.jobs as u64) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("jobs {bar:40} {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut cache = UtilityCache::new();
    let out = measure_epoch(&m.task, m.recipe.seed, &records, &eval, &params, seed, &mut job, &mut cache, &progress)?;
    progress.finish_and_clear();
    store.close().await?;

    let values = contributor_values(&out.plan, &out.scores.unit_values);
    #[derive(Default, serde::Serialize)]
    struct Row {
        contributor: String,
        records: u64,
        new: u64,
        duplicates: u64,
        units: u32,
        screened_out: u32,
        value: i64,
        credit: u64,
        reward: u64,
    }
    let mut rows: BTreeMap<PeerKey, Row> = BTreeMap::new();
    for c in &infos {
        let r = rows
            .entry(c.signed.body.contributor)
            .or_insert_with(|| Row { contributor: c.signed.body.contributor.to_hex(), ..Row::default() });
        r.records += c.meta.records as u64;
        r.new += c.meta.new_records as u64;
        r.duplicates += (c.meta.duplicates + c.meta.near_duplicates) as u64;
    }
    for s in &out.plan.contributors {
        let r =
            rows.entry(s.contributor).or_insert_with(|| Row { contributor: s.contributor.to_hex(), ..Row::default() });
        r.units = s.units;
        r.screened_out = s.screened_out;
    }
    for l in &out.scores.leaves {
        let r =
            rows.entry(l.contributor).or_insert_with(|| Row { contributor: l.contributor.to_hex(), ..Row::default() });
        r.credit = l.credit;
        r.reward = l.reward;
        r.value = values.get(&l.contributor).copied().unwrap_or(0);
    }
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
