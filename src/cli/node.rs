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
