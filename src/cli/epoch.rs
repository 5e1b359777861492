//! `datanet epoch run|status`: ask the running daemon to start an epoch now, or show epochs.
//!
//! The daemon serves `POST /api/v1/epoch/run` (body [`EpochRunRequest`]) and
//! `GET /api/v1/epoch/status` ([`crate::api::epoch`]). `run --timeout-secs N` (or `--wait`) polls
//! the status until this peer's ledger holds the epoch's attestation, printing each stage, and
//! fails at the timeout.

use super::Global;
use crate::api::ApiClient;
use crate::api::epoch::EpochRunRequest;
use crate::daemon::epoch::{DatanetEpochs, EpochRunReply};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::time::{Duration, Instant};

/// Epoch commands served by the daemon.
#[derive(Subcommand, Debug)]
pub enum EpochCmd {
    /// Start an epoch of a Datanet now (this peer must be on its committee).
    Run {
        datanet: String,
        /// Wait until the epoch is attested here, at most this long (fails after it).
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// Wait until the epoch is attested here (at most an hour unless --timeout-secs).
        #[arg(long)]
        wait: bool,
    },
    /// Show the epochs in progress and the last attested one per Datanet.
    Status,
}

/// How often `run --wait` asks for the status.
const POLL: Duration = Duration::from_millis(500);

/// Runs one epoch command through the daemon's API.
pub async fn run(cmd: EpochCmd, g: &Global) -> anyhow::Result<()> {
    let dir = g.datadir();
    let c = ApiClient::from_datadir(&dir)
        .with_context(|| format!("no daemon API found in {} (start one with `datanet run`)", dir.display()))?;
    match cmd {
        EpochCmd::Run { datanet, timeout_secs, wait } => {
            let r: EpochRunReply = c.post("/api/v1/epoch/run", &EpochRunRequest { datanet }).await?;
            if timeout_secs.is_none() && !wait {
                print_json(&serde_json::to_value(&r)?, g)?;
                return Ok(());
            }
            let verb = if r.started { "started" } else { "already running" };
            eprintln!("epoch {} of {} {verb} ({})", r.epoch, &r.datanet[..16], r.status.stage);
            let timeout = Duration::from_secs(timeout_secs.unwrap_or(3600));
            let done = wait_attested(&c, &r, timeout).await?;
            if g.json {
                println!("{}", serde_json::to_value(&done)?);
            } else {
                println!("epoch {} attested: head {}", r.epoch, done.head_hash.as_deref().unwrap_or("?"),);
            }
            Ok(())
        }
        EpochCmd::Status => {
            let v: serde_json::Value = c.get("/api/v1/epoch/status").await?;
            print_json(&v, g)
        }
    }
}

fn print_json(v: &serde_json::Value, g: &Global) -> anyhow::Result<()> {
    println!("{}", if g.json { v.to_string() } else { serde_json::to_string_pretty(v)? });
    Ok(())
}

/// Polls the status until the ledger's head reaches the epoch; prints stage changes to stderr.
async fn wait_attested(c: &ApiClient, r: &EpochRunReply, timeout: Duration) -> anyhow::Result<DatanetEpochs> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let all: Vec<DatanetEpochs> = c.get("/api/v1/epoch/status").await?;
        let d = all.into_iter().find(|d| d.datanet == r.datanet).context("the daemon left the Datanet")?;
        if d.head_epoch.is_some_and(|h| h >= r.epoch) {
            return Ok(d);
        }
        if let Some(s) = &d.current {
            let line = format!(
                "  epoch {} {}: freeze view {}, score view {}, measured {}, reveals {}{}",
                s.epoch,
                s.stage,
                s.freeze_view,
                s.score_view,
                s.measured,
                s.reveals,
                d.last_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default()
            );
            if line != last {
                eprintln!("{line}");
                last = line;
            }
        }
        if Instant::now() >= deadline {
            bail!("epoch {} not attested after {}s ({last})", r.epoch, timeout.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}
