//! Commands that talk to a running daemon through its local API: `datanet status`,
//! `datanet peers`, `datanet join`, and [`contribute_via_daemon`] (used by `datanet contribute`
//! while a daemon holds the datadir).

use super::Global;
use crate::api::{ApiClient, ContributeRequest, JoinRequest};
use crate::daemon::{ContributeReport, Status};
use crate::net::PeerInfo;
use anyhow::Context;
use clap::Subcommand;
use std::path::{Path, PathBuf};

/// Commands served by the daemon.
#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Show the running daemon: peers, Datanets, contributions and their replication.
    Status,
    /// List connected peers.
    Peers,
    /// Join a Datanet: a signed manifest file, or the id of a manifest already stored.
    Join { datanet: String },
}

fn client(g: &Global) -> anyhow::Result<ApiClient> {
    let dir = g.datadir();
    ApiClient::from_datadir(&dir)
        .with_context(|| format!("no daemon API found in {} (start one with `datanet run`)", dir.display()))
}

/// The API client when a daemon is running on this datadir.
pub async fn running_daemon(g: &Global) -> Option<ApiClient> {
    let c = ApiClient::from_datadir(&g.datadir())?;
    c.alive().await.then_some(c)
}

/// Runs one node command.
pub async fn run(cmd: NodeCmd, g: &Global) -> anyhow::Result<()> {
    let c = client(g)?;
    match cmd {
        NodeCmd::Status => {
            let s: Status = c.get("/api/v1/status").await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
        }
        NodeCmd::Peers => {
            let peers: Vec<PeerInfo> = c.get("/api/v1/peers").await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
            } else {
                println!("{:<54} {:>7} {:<5} addresses", "peer", "score", "seed");
                for p in peers {
                    let score = p.score.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into());
                    println!(
                        "{:<54} {:>7} {:<5} {}",
                        p.peer_id,
                        score,
                        if p.seed { "yes" } else { "" },
                        p.addrs.join(" ")
                    );
                }
            }
        }
        NodeCmd::Join { datanet } => {
            let p = PathBuf::from(&datanet);
            let req = if p.exists() {
                let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                JoinRequest { manifest_hex: Some(hex::encode(bytes)), datanet: None }
            } else {
                JoinRequest { manifest_hex: None, datanet: Some(datanet.clone()) }
            };
            let v: serde_json::Value = c.post("/api/v1/join", &req).await?;
            if g.json {
                println!("{v}");
            } else {
                println!("joined {}", v["joined"].as_str().unwrap_or("?"));
            }
        }
    }
    Ok(())
}

fn print_status(s: &Status) {
    println!("peer      {}", s.peer_key);
    println!("peer id   {}", s.peer_id);
    for a in &s.listen {
        println!("listen    {a}");
    }
    println!("iroh      {}", s.iroh_addrs.join(" "));
    if let Some(a) = &s.api {
        println!("api       http://{a}");
    }
    println!("peers     {}", s.peers);
    println!("fetches   {} running, {} queued", s.fetch_in_flight, s.fetch_queued);
    for d in &s.datanets {
        println!(
            "\ndatanet {} ({}) — {} contributions, {} mesh peers",
            d.name,
            &d.id[..16],
            d.contributions.len(),
            d.mesh_peers
        );
        if let Some(sp) = &d.sealed {
            let left: Vec<String> =
                sp.parts.iter().map(|p| format!("{} {}/{}", p.slice, p.remaining, p.count)).collect();
            println!(
                "  sealed evaluation pool: {} epochs left ({} still sealed){}{}",
                sp.epochs_left,
                left.join(", "),
                if sp.held { "" } else { "; not held here (committee members import it)" },
                if sp.low { " — LOW: the founder should extend it" } else { "" }
            );
        }
        let e = &d.epoch;
        match &e.current {
            Some(c) => {
                let deadline = e
                    .next_deadline_in_ms
                    .map(|t| format!(", next deadline in {} s", t.div_ceil(1000)))
                    .unwrap_or_default();
                println!(
                    "  epoch {}: {} — heard from {} of {} committee members{deadline}",
                    c.epoch, c.stage, e.heard_from, e.committee
                );
                println!(
                    "  jobs of this peer: {} of {} measured{}",
                    e.jobs_measured,
                    e.jobs_assigned,
                    if e.training { ", training now" } else { "" }
                );
            }
            None if e.next_opens_in_ms == 0 => println!("  no epoch running; epoch {} may start now", e.next_epoch),
            None => {
                println!("  no epoch running; epoch {} opens in {} s", e.next_epoch, e.next_opens_in_ms.div_ceil(1000))
            }
        }
        if !e.member {
            println!("  this peer is not on the committee ({} members)", e.committee);
        }
        if let Some(err) = &e.last_error {
            println!("  last epoch problem: {err}");
        }
        match d.ledger.head_epoch {
            Some(h) => println!(
                "  ledger: head epoch {h} ({}), {} attested; pool per epoch {}",
                d.ledger.head_hash.as_deref().map(|x| &x[..16]).unwrap_or(""),
                d.ledger.attested,
                d.ledger.pool_per_epoch
            ),
            None => println!("  ledger: no attested epoch yet; pool per epoch {}", d.ledger.pool_per_epoch),
        }
        println!("  this peer: credit {}, reward {} over {} epochs", d.mine.credit, d.mine.reward, d.mine.epochs);
        println!(
            "  {:<16} {:<10} {:>8} {:>10} {:>7} source",
            "contribution", "contributor", "records", "bytes", "holders"
        );
        for c in &d.contributions {
            println!(
                "  {:<16} {:<10} {:>8} {:>10} {:>7} {}",
                &c.id[..16],
                &c.contributor[..8],
                c.records,
                c.bytes,
                c.holders,
                c.source
            );
        }
    }
    if !s.not_joined.is_empty() {
        println!("\nstored here, not joined (nothing replicates or runs for these):");
        for l in &s.not_joined {
            println!("  {:<24} {}  join with: {}", l.name, &l.id[..16], l.join_with);
        }
    }
}

/// `datanet contribute` while a daemon runs on the datadir: the daemon admits the file and
/// announces it. Returns `Ok(None)` when no daemon answers (the caller then admits offline).
pub async fn contribute_via_daemon(
    g: &Global,
    datanet: &str,
    file: &Path,
    skip_invalid: bool,
) -> anyhow::Result<Option<ContributeReport>> {
    let Some(c) = running_daemon(g).await else { return Ok(None) };
    let path = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let req = ContributeRequest { datanet: datanet.to_string(), path, skip_invalid };
    let r: ContributeReport = c.post("/api/v1/contribute", &req).await?;
    if g.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "acknowledged {} — {} records: {} new, {} duplicates, {} near-duplicates{}{}",
            r.id,
            r.records,
            r.new_records,
            r.duplicates,
            r.near_duplicates,
            if r.skipped > 0 { format!(", {} invalid skipped", r.skipped) } else { String::new() },
            if r.announced { "; announced to peers" } else { "; no peers yet, they will catch up" }
        );
    }
    Ok(Some(r))
}
