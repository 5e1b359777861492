//! `datanet epoch run|status`: ask the running daemon to start an epoch now, or show epochs.
//!
//! The daemon serves `POST /api/v1/epoch/run` (body [`EpochRunRequest`]) and
//! `GET /api/v1/epoch/status`; both answer JSON that is printed as is.

use super::Global;
use crate::api::ApiClient;
use anyhow::Context;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

/// Epoch commands served by the daemon.
#[derive(Subcommand, Debug)]
pub enum EpochCmd {
    /// Start an epoch of a Datanet now (this peer must be on its committee).
    Run { datanet: String },
    /// Show the epochs in progress and the last attested one per Datanet.
    Status,
}

/// Body of `POST /api/v1/epoch/run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRunRequest {
    /// Datanet id or name.
    pub datanet: String,
}

/// Runs one epoch command through the daemon's API.
pub async fn run(cmd: EpochCmd, g: &Global) -> anyhow::Result<()> {
    let dir = g.datadir();
    let c = ApiClient::from_datadir(&dir)
        .with_context(|| format!("no daemon API found in {} (start one with `datanet run`)", dir.display()))?;
    let v: serde_json::Value = match cmd {
        EpochCmd::Run { datanet } => c.post("/api/v1/epoch/run", &EpochRunRequest { datanet }).await?,
        EpochCmd::Status => c.get("/api/v1/epoch/status").await?,
    };
    println!("{}", if g.json { v.to_string() } else { serde_json::to_string_pretty(&v)? });
    Ok(())
}
