//! The command line: a thin client. Each area's commands live in their own file; this module
//! holds the top-level parser and the options every command shares.

pub mod attestation;
pub mod attribute;
pub mod bench;
pub mod data;
pub mod epoch;
pub mod node;
pub mod rewards;
pub mod run;
pub mod sim;
pub mod testnet;
pub mod train;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Options shared by every command.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The peer's data folder (identity, sled database, blob store).
    #[arg(long, global = true, env = "DATANET_DATADIR", default_value = "~/.datanet")]
    pub datadir: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    /// The datadir with a leading `~` expanded.
    pub fn datadir(&self) -> PathBuf {
        expand_home(&self.datadir)
    }
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(p: &std::path::Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
        Err(_) => p.to_path_buf(),
    }
}

#[derive(Parser, Debug)]
#[command(name = "datanet", version, about = "Build datasets together; get paid for the impact of your data")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create this peer's identity in the datadir.
    Init,
    /// Create, show and list Datanets.
    #[command(subcommand)]
    Datanet(data::DatanetCmd),
    /// Add a data set (JSONL, or CSV for tabular Datanets) to a Datanet.
    Contribute {
        datanet: String,
        file: PathBuf,
        /// Admit the valid records and list the invalid ones instead of refusing the file.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// List a Datanet's contributions with their record, duplicate and near-duplicate counts.
    Contributions { datanet: String },
    /// Write a contribution's records back out as JSONL, verified against their hashes.
    Export {
        contribution: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Benchmarks (each prints a RESULT line with its ratio against an anchor).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// A local testnet of N daemons on loopback.
    #[command(subcommand)]
    Testnet(testnet::TestnetCmd),
    /// Run the daemon: join Datanets, gossip, replicate, serve the local API (until SIGINT/SIGTERM).
    Run(run::RunArgs),
    #[command(flatten)]
    Node(node::NodeCmd),
    #[command(flatten)]
    Trainer(train::TrainerCmd),
    /// Run one epoch of attribution locally (every job on this peer) and print credit and rewards.
    Attribute(attribute::AttributeArgs),
    /// Epoch agreement through the daemon: run an epoch now, or show status.
    #[command(subcommand)]
    Epoch(epoch::EpochCmd),
    /// Offline checks of attestations and credit proofs (no daemon, no network).
    #[command(subcommand)]
    Attestation(attestation::AttestationCmd),
    /// Deterministic simulation of epoch agreement (`--bench` for the agreement benchmark).
    Sim(sim::SimArgs),
    /// Cumulative credit and rewards of a Datanet from this peer's ledger.
    Rewards(rewards::RewardsArgs),
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Init => {
            let id = crate::identity::Identity::init(&g.datadir())?;
            println!("identity {} created in {}", id.public_key(), g.datadir().display());
            Ok(())
        }
        Command::Datanet(cmd) => data::run_datanet(cmd, g).await,
        Command::Contribute { datanet, file, skip_invalid } => data::contribute(g, &datanet, &file, skip_invalid).await,
        Command::Contributions { datanet } => data::contributions(g, &datanet).await,
        Command::Export { contribution, out } => data::export(g, &contribution, out.as_deref()).await,
        Command::Bench(cmd) => bench::run(cmd, g).await,
        Command::Testnet(cmd) => testnet::run(cmd, g).await,
        Command::Run(args) => run::run(args, g).await,
        Command::Node(cmd) => node::run(cmd, g).await,
        Command::Trainer(cmd) => train::run(cmd, g).await,
        Command::Attribute(args) => attribute::run(args, g).await,
        Command::Epoch(cmd) => epoch::run(cmd, g).await,
        Command::Attestation(cmd) => attestation::run(cmd, g).await,
        Command::Sim(args) => sim::run_cmd(args, g).await,
        Command::Rewards(args) => rewards::run(args, g).await,
    }
}
