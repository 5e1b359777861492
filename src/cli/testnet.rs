//! `datanet testnet up|down|status|run`: a local testnet of N daemons on loopback (see
//! [`crate::testnet`]).

use super::Global;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TestnetCmd {
    /// Create (once) and start N peers forming one Datanet's committee; wait until they mesh.
    Up {
        #[arg(long, default_value_t = 5)]
        peers: usize,
        #[arg(long, default_value = "testnet/run")]
        dir: PathBuf,
        /// The Datanet's manifest (its committee and seeds are replaced by the testnet's).
        #[arg(long, default_value = "config/datanets/instruct.toml")]
        manifest: PathBuf,
        /// Run this scenario after the peers are up.
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Stop every peer of the testnet.
    Down {
        #[arg(long, default_value = "testnet/run")]
        dir: PathBuf,
    },
    /// Peers, replication and contributions of every peer.
    Status {
        #[arg(long, default_value = "testnet/run")]
        dir: PathBuf,
    },
}

/// Runs a testnet command.
pub async fn run(cmd: TestnetCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        TestnetCmd::Up { peers, dir, manifest, scenario } => {
            if let Some(s) = scenario {
                return crate::testnet::scenario::run(&s, &dir).await;
            }
            let t = crate::testnet::up(&dir, peers, &manifest).await?;
            println!(
                "testnet of {} peers up in {} — datanet {} ({})",
                t.peers.len(),
                t.dir.display(),
                t.datanet_name,
                t.datanet
            );
            println!("stop it with: datanet testnet down --dir {}", t.dir.display());
            Ok(())
        }
        TestnetCmd::Down { dir } => {
            crate::testnet::down(&dir)?;
            println!("testnet in {} stopped", dir.display());
            Ok(())
        }
        TestnetCmd::Status { dir } => {
            let t = crate::testnet::Testnet::load(&dir)?;
            let mut rows = Vec::new();
            for i in 0..t.peers.len() {
                match crate::testnet::status_of(&t, i).await {
                    Ok(s) => rows.push(serde_json::json!({"peer": i, "up": true, "key": s.peer_key, "peers": s.peers,
                        "contributions": s.datanets.iter().map(|d| d.contributions.len()).sum::<usize>()})),
                    Err(_) => rows.push(serde_json::json!({"peer": i, "up": false})),
                }
            }
            if g.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("datanet {} ({})", t.datanet_name, t.datanet);
                println!("{:<5} {:<5} {:<17} {:>6} {:>14}", "peer", "up", "key", "peers", "contributions");
                for r in rows {
                    println!(
                        "{:<5} {:<5} {:<17} {:>6} {:>14}",
                        r["peer"],
                        r["up"],
                        r["key"].as_str().map(|k| &k[..16]).unwrap_or("-"),
                        r["peers"],
                        r["contributions"]
                    );
                }
            }
            Ok(())
        }
    }
}
