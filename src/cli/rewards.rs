//! `datanet rewards <datanet>`: cumulative credit and rewards from this peer's ledger.

use super::Global;
use crate::store::Store;
use crate::store::ledger::{Ledger, RewardsReport};
use anyhow::Context;
use clap::Args;

/// Arguments of `datanet rewards`.
#[derive(Args, Debug)]
pub struct RewardsArgs {
    /// Datanet id or name.
    pub datanet: String,
}

/// The report from the running daemon (API) or, without one, from the store.
async fn report(g: &Global, datanet: &str) -> anyhow::Result<RewardsReport> {
    if let Some(c) = super::node::running_daemon(g).await {
        return c.get(&format!("/api/v1/rewards?datanet={}", super::attestation::urlencode(datanet))).await;
    }
    let store =
        Store::open(&g.datadir()).await.with_context(|| format!("opening the store in {}", g.datadir().display()))?;
    let r = (|| {
        let (id, _) = store.resolve_datanet(datanet)?.with_context(|| format!("no Datanet {datanet} here"))?;
        Ok(Ledger::open(store.db()).report(&id)?)
    })();
    store.close().await?;
    r
}

/// Prints the ledger's totals for a Datanet (through the daemon when one runs on this datadir).
pub async fn run(args: RewardsArgs, g: &Global) -> anyhow::Result<()> {
    let r = report(g, &args.datanet).await?;
    if g.json {
        // The same rows with u64 numbers (saturating), for scripts: `contributors[].reward`.
        let sat = |s: &str| s.parse::<u128>().map(|v| u64::try_from(v).unwrap_or(u64::MAX)).unwrap_or(0);
        let contributors: Vec<_> = r
            .totals
            .iter()
            .map(|t| serde_json::json!({"contributor": t.contributor, "credit": sat(&t.credit), "reward": sat(&t.reward), "epochs": t.epochs}))
            .collect();
        let mut v = serde_json::to_value(&r)?;
        v["contributors"] = serde_json::Value::Array(contributors);
        println!("{v}");
        return Ok(());
    }
    let short = |h: &str| h.get(..8).unwrap_or(h).to_string();
    match (r.head_epoch, &r.head_hash) {
        (Some(e), Some(h)) => {
            println!("Datanet {}: attested up to epoch {e} (head {})", short(&r.datanet), &h[..16.min(h.len())])
        }
        _ => println!("Datanet {}: no attested epoch yet", short(&r.datanet)),
    }
    println!("{:<66} {:>20} {:>14} {:>7}", "contributor", "credit", "reward", "epochs");
    for t in &r.totals {
        println!("{:<66} {:>20} {:>14} {:>7}", t.contributor, t.credit, t.reward, t.epochs);
    }
    if !r.standing.is_empty() {
        println!("reports flagged far from the median (lost standing):");
        for s in &r.standing {
            println!("  {} {}", short(&s.reporter), s.flagged);
        }
    }
    Ok(())
}
