//! `datanet rewards <datanet>`: cumulative credit and rewards from this peer's ledger.

use super::Global;
use crate::store::Store;
use crate::store::ledger::Ledger;
use anyhow::Context;
use clap::Args;

/// Arguments of `datanet rewards`.
#[derive(Args, Debug)]
pub struct RewardsArgs {
    /// Datanet id or name.
    pub datanet: String,
}

/// Prints the ledger's totals for a Datanet.
pub async fn run(args: RewardsArgs, g: &Global) -> anyhow::Result<()> {
    let store = Store::open(&g.datadir())
        .await
        .with_context(|| format!("opening the store in {} (stop a daemon using it first)", g.datadir().display()))?;
    let (id, _) = store.resolve_datanet(&args.datanet)?.with_context(|| format!("no Datanet {} here", args.datanet))?;
    let ledger = Ledger::open(store.db());
    let totals = ledger.totals(&id)?;
    let head = ledger.head(&id)?;
    let standing = ledger.standing(&id)?;
    if g.json {
        let rows: Vec<_> = totals
            .iter()
            .map(|t| serde_json::json!({"contributor": t.contributor.to_hex(), "credit": t.credit.to_string(), "reward": t.reward.to_string(), "epochs": t.epochs}))
            .collect();
        // The same rows with u64 numbers (saturating), for scripts: `contributors[].reward`.
        let contributors: Vec<_> = totals
            .iter()
            .map(|t| serde_json::json!({"contributor": t.contributor.to_hex(), "credit": u64::try_from(t.credit).unwrap_or(u64::MAX), "reward": u64::try_from(t.reward).unwrap_or(u64::MAX), "epochs": t.epochs}))
            .collect();
        let flagged: Vec<_> =
            standing.iter().map(|(k, n)| serde_json::json!({"reporter": k.to_hex(), "flagged": n})).collect();
        println!(
            "{}",
            serde_json::json!({"datanet": id.to_hex(), "head_epoch": head.map(|h| h.epoch), "head_hash": head.map(|h| hex::encode(h.hash)), "totals": rows, "contributors": contributors, "standing": flagged})
        );
        store.close().await?;
        return Ok(());
    }
    match head {
        None => println!("Datanet {}: no attested epoch yet", id.short()),
        Some(h) => {
            println!("Datanet {}: attested up to epoch {} (head {})", id.short(), h.epoch, hex::encode(&h.hash[..8]))
        }
    }
    println!("{:<66} {:>20} {:>14} {:>7}", "contributor", "credit", "reward", "epochs");
    for t in &totals {
        println!("{:<66} {:>20} {:>14} {:>7}", t.contributor.to_hex(), t.credit, t.reward, t.epochs);
    }
    if !standing.is_empty() {
        println!("reports flagged far from the median (lost standing):");
        for (k, n) in standing {
            println!("  {} {n}", k.short());
        }
    }
    store.close().await?;
    Ok(())
}
