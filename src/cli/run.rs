//! `datanet run`: the long-running daemon. Loads the config (file, then `DATANET_*` variables,
//! one per key and listed by `--help`, then these flags), starts [`crate::daemon`], and stops
//! cleanly on SIGINT or SIGTERM.

use super::Global;
use crate::config::Config;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Flags of `datanet run`; each overrides the config file and the environment.
#[derive(Args, Debug, Clone, Default)]
#[command(after_help = crate::config::env::help())]
pub struct RunArgs {
    /// Config file (default: `<datadir>/config.toml` when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// libp2p listen multiaddr (repeatable).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Bootstrap peer multiaddr ending in /p2p/<peer id> (repeatable).
    #[arg(long)]
    pub seed: Vec<String>,
    /// Seeds file (TOML with `seeds = [...]`).
    #[arg(long)]
    pub seeds_file: Option<PathBuf>,
    /// Datanet to join: id of a stored manifest, or a signed manifest file (repeatable).
    #[arg(long)]
    pub join: Vec<String>,
    /// API address (ip:port, loopback unless the config allows otherwise).
    #[arg(long)]
    pub api: Option<String>,
    /// iroh endpoint address (ip:port).
    #[arg(long)]
    pub iroh_bind: Option<String>,
    /// Use iroh's public relays and address discovery.
    #[arg(long)]
    pub public: bool,
}

/// Builds the effective config: file, environment, flags; validated.
pub fn effective_config(args: &RunArgs, g: &Global) -> anyhow::Result<(PathBuf, Config)> {
    let default_file = g.datadir().join("config.toml");
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None if default_file.exists() => Config::load(&default_file)?,
        None => Config::default(),
    };
    cfg.apply_env(|k| std::env::var(k).ok())?;
    if !args.listen.is_empty() {
        cfg.net.listen = args.listen.clone();
    }
    cfg.net.seeds.extend(args.seed.iter().cloned());
    if args.seeds_file.is_some() {
        cfg.net.seeds_file = args.seeds_file.clone();
    }
    cfg.datanets.join.extend(args.join.iter().cloned());
    if let Some(a) = &args.api {
        cfg.api.bind = a.clone();
    }
    if let Some(a) = &args.iroh_bind {
        cfg.net.iroh_bind = a.clone();
    }
    if args.public {
        cfg.net.public = true;
    }
    // The datadir flag (or DATANET_DATADIR) wins unless it was left at its default.
    let datadir = match (&cfg.datadir, g.datadir == std::path::Path::new("~/.datanet")) {
        (Some(d), true) => super::expand_home(d),
        _ => g.datadir(),
    };
    cfg.validate()?;
    crate::net::check_addresses(&cfg)?;
    Ok((datadir, cfg))
}

/// `datanet run`
pub async fn run(args: RunArgs, g: &Global) -> anyhow::Result<()> {
    let (datadir, cfg) = effective_config(&args, g)?;
    let daemon = crate::node::start(&datadir, cfg.clone())
        .await
        .with_context(|| format!("starting the daemon in {}", datadir.display()))?;
    let h = daemon.handle().clone();
    let addrs = h.net().wait_listening(std::time::Duration::from_secs(5)).await;
    eprintln!("datanet daemon {} running", h.net().key());
    for a in &addrs {
        eprintln!("  listening {a}/p2p/{}", h.net().peer_id());
    }
    if let Some(a) = h.api_addr() {
        eprintln!("  api http://{a} (token in {})", datadir.join(crate::api::COOKIE_FILE).display());
        if let Some(p) = crate::api::metrics::token_path(&datadir, &cfg.api) {
            eprintln!("  metrics http://{a}/metrics (token in {})", p.display());
        } else if cfg.api.metrics_open {
            eprintln!("  metrics http://{a}/metrics (open on loopback)");
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("SIGINT: stopping"),
        _ = term.recv() => eprintln!("SIGTERM: stopping"),
    }
    daemon.shutdown().await;
    eprintln!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // `datanet run --help` lists every DATANET_* variable, from the same key list the overlay uses.
    #[test]
    fn help_lists_the_environment() {
        use clap::Args as _;
        let help = RunArgs::augment_args(clap::Command::new("run")).render_long_help().to_string();
        for k in crate::config::env::keys() {
            assert!(help.contains(&k.env_var()), "{} missing from\n{help}", k.env_var());
        }
    }
}
