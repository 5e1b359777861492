//! The daemon's configuration: one TOML file whose sections mirror the rooms (`[net]`, `[api]`,
//! `[datanets]`, `[epoch]`). This module owns every section's type, so it imports no room.
//!
//! Every key has a default (`serde(default)`), so an empty file is a valid loopback-only config.
//! Precedence, lowest first: defaults, the file, `DATANET_*` environment variables (one per key,
//! derived from the types, see [`env`]), command-line flags (applied by `datanet run`).
//! [`Config::validate`] names the key that is wrong. `config/example.toml` documents every key
//! and is parsed by a test.

pub mod env;

use crate::ids::DatanetId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("environment variable {var} (config key `{key}`): {reason}")]
    Env { var: String, key: String, reason: String },
}

impl ConfigError {
    /// A bad value of `key` (rooms that check their own keys, e.g. `net::check_addresses`).
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), reason: reason.into() }
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, reason)
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data folder (identity, database, blobs, API cookie). Empty: the `--datadir` flag's value.
    pub datadir: Option<PathBuf>,
    /// Peer-to-peer networking.
    pub net: NetConfig,
    /// The local HTTP API.
    pub api: ApiConfig,
    /// Which Datanets this peer serves.
    pub datanets: DatanetsConfig,
    /// This peer's side of epoch agreement (`crate::daemon::epoch`): training threads, timeouts.
    pub epoch: EpochSettings,
}

/// `[net]`: libp2p (gossip, discovery, catch-up) and iroh (blob transfer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// libp2p listen multiaddrs (TCP and QUIC). Port 0 lets the OS choose.
    pub listen: Vec<String>,
    /// Socket address the iroh endpoint (blob transfer) binds to.
    pub iroh_bind: String,
    /// Bootstrap peers: multiaddrs ending in `/p2p/<peer id>`, added to those of `seeds_file`
    /// and of each joined Datanet's manifest.
    pub seeds: Vec<String>,
    /// A TOML file with `seeds = [...]` (such as `config/seeds.toml`); empty for none.
    pub seeds_file: Option<PathBuf>,
    /// Use iroh's public relays and public address discovery. Off: nothing but the configured
    /// addresses and what peers tell us over gossip is ever used.
    pub public: bool,
    /// Most peers connected at once (libp2p connections are refused beyond it).
    pub peers_max: u32,
    /// Largest gossip message payload accepted; larger ones are rejected and cost the sender score.
    pub gossip_message_bytes_max: u32,
    /// Largest epoch-topic message accepted (proposals carry report sets and input lists, so this
    /// is larger than `gossip_message_bytes_max`; at most the protocol's 4 MiB cap).
    pub epoch_message_bytes_max: u32,
    /// Gossipsub heartbeat.
    pub gossip_heartbeat_ms: u64,
    /// Gossipsub target mesh degree (low and high bounds are derived from it).
    pub gossip_mesh_n: u32,
    /// Contribution fetches running at once; more announcements wait.
    pub fetch_in_flight_max: u32,
    /// Time one fetch attempt may take before the providers are considered unresponsive.
    pub fetch_timeout_ms: u64,
    /// Attempts per announced contribution before it is given up (until announced again).
    pub fetch_attempts_max: u32,
    /// Contributions waiting for a fetch slot; announcements beyond it are ignored.
    pub fetch_queue_max: u32,
    /// First delay before redialing a seed that is down; doubles up to `reconnect_backoff_max_ms`.
    pub reconnect_backoff_min_ms: u64,
    /// Longest delay between redials of a seed.
    pub reconnect_backoff_max_ms: u64,
    /// Connections with no traffic are closed after this long.
    pub idle_connection_timeout_secs: u64,
    /// How often this peer re-publishes its signed peer record.
    pub peer_record_interval_secs: u64,
    /// Most contribution ids or records in one catch-up response.
    pub catchup_batch_max: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into(), "/ip4/127.0.0.1/udp/0/quic-v1".into()],
            iroh_bind: "127.0.0.1:0".into(),
            seeds: Vec::new(),
            seeds_file: None,
            public: false,
            peers_max: 64,
            gossip_message_bytes_max: 64 * 1024,
            epoch_message_bytes_max: crate::attribution::epoch::messages::EPOCH_MESSAGE_BYTES_MAX as u32,
            gossip_heartbeat_ms: 500,
            gossip_mesh_n: 6,
            fetch_in_flight_max: 8,
            fetch_timeout_ms: 30_000,
            fetch_attempts_max: 5,
            fetch_queue_max: 4096,
            reconnect_backoff_min_ms: 500,
            reconnect_backoff_max_ms: 60_000,
            idle_connection_timeout_secs: 120,
            peer_record_interval_secs: 30,
            catchup_batch_max: 256,
        }
    }
}

/// `[api]`: the local HTTP API the CLI talks to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the API listens on. Port 0 lets the OS choose; the bound address is written to
    /// `<datadir>/api.addr` for the CLI.
    pub bind: String,
    /// Allow `bind` to be a non-loopback address (the token still guards every call).
    pub allow_non_loopback: bool,
    /// A file holding a stable token that opens `/metrics` (and nothing else), for a Prometheus
    /// `credentials_file`; created with a random token (mode 0600) when missing. Relative paths
    /// are inside the datadir. Unset: `/metrics` takes the cookie token, which changes at every
    /// start.
    pub metrics_token_file: Option<PathBuf>,
    /// Serve `/metrics` without any token. Only allowed when `bind` is a loopback address.
    pub metrics_open: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: "127.0.0.1:0".into(),
            allow_non_loopback: false,
            metrics_token_file: None,
            metrics_open: false,
        }
    }
}

/// `[epoch]`: what may differ between this peer and the other members. What they must share
/// (jobs, windows, valuation knobs) is in the signed manifest's `[protocol]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpochSettings {
    /// libtorch CPU threads per training job.
    pub train_threads: usize,
    /// How long to wait for the public evaluation file from the committee when it is not stored here.
    pub eval_fetch_timeout_ms: u64,
}

impl Default for EpochSettings {
    fn default() -> Self {
        EpochSettings { train_threads: 1, eval_fetch_timeout_ms: 30_000 }
    }
}

impl EpochSettings {
    /// Checks the knobs, naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.train_threads == 0 || self.train_threads > 1024 {
            return Err("epoch.train_threads: must be between 1 and 1024".into());
        }
        if self.eval_fetch_timeout_ms == 0 {
            return Err("epoch.eval_fetch_timeout_ms: must be at least 1".into());
        }
        Ok(())
    }
}

/// `[datanets]`: the Datanets this peer joins at start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatanetsConfig {
    /// Datanet ids (64 hex digits) whose manifests are already in the store, or paths to signed
    /// manifest files.
    pub join: Vec<String>,
}

/// `config/seeds.toml`: a list of bootstrap peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedsFile {
    /// Multiaddrs ending in `/p2p/<peer id>`.
    pub seeds: Vec<String>,
}

/// One entry of `[datanets] join`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinTarget {
    Id(DatanetId),
    ManifestFile(PathBuf),
}

impl JoinTarget {
    /// A 64-hex-digit string is an id; anything else a manifest file path.
    pub fn parse(s: &str) -> Self {
        match s.parse::<DatanetId>() {
            Ok(id) => JoinTarget::Id(id),
            Err(_) => JoinTarget::ManifestFile(PathBuf::from(s)),
        }
    }
}

impl Config {
    /// Parses TOML text (no validation).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Reads and parses a file (no validation).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, path)
    }

    /// Applies `DATANET_*` overrides read through `var` (the process environment in production):
    /// `DATANET_<SECTION>_<KEY>` for every key ([`env::keys`]), plus the older short names
    /// ([`env::ALIASES`]). A bad value is refused naming the variable.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        *self = env::overlay(self, var)?;
        Ok(())
    }

    /// Checks every key but the libp2p addresses (`net.listen`, `net.seeds` and the seeds
    /// file), which the net room parses: `net::check_addresses`. The error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.net;
        if n.listen.is_empty() {
            return Err(invalid("net.listen", "needs at least one multiaddr"));
        }
        n.iroh_bind
            .parse::<SocketAddr>()
            .map_err(|e| invalid("net.iroh_bind", format!("{:?} is not ip:port: {e}", n.iroh_bind)))?;
        let positive = [
            ("net.peers_max", n.peers_max as u64),
            ("net.gossip_message_bytes_max", n.gossip_message_bytes_max as u64),
            ("net.epoch_message_bytes_max", n.epoch_message_bytes_max as u64),
            ("net.gossip_heartbeat_ms", n.gossip_heartbeat_ms),
            ("net.gossip_mesh_n", n.gossip_mesh_n as u64),
            ("net.fetch_in_flight_max", n.fetch_in_flight_max as u64),
            ("net.fetch_timeout_ms", n.fetch_timeout_ms),
            ("net.fetch_attempts_max", n.fetch_attempts_max as u64),
            ("net.fetch_queue_max", n.fetch_queue_max as u64),
            ("net.reconnect_backoff_min_ms", n.reconnect_backoff_min_ms),
            ("net.idle_connection_timeout_secs", n.idle_connection_timeout_secs),
            ("net.peer_record_interval_secs", n.peer_record_interval_secs),
            ("net.catchup_batch_max", n.catchup_batch_max as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if n.gossip_message_bytes_max > 1024 * 1024 {
            return Err(invalid("net.gossip_message_bytes_max", "must be at most 1048576 (1 MiB)"));
        }
        let epoch_cap = crate::attribution::epoch::messages::EPOCH_MESSAGE_BYTES_MAX;
        if n.epoch_message_bytes_max as usize > epoch_cap {
            return Err(invalid("net.epoch_message_bytes_max", format!("must be at most {epoch_cap} (4 MiB)")));
        }
        if n.reconnect_backoff_max_ms < n.reconnect_backoff_min_ms {
            return Err(invalid("net.reconnect_backoff_max_ms", "must be at least net.reconnect_backoff_min_ms"));
        }
        let api: SocketAddr = self
            .api
            .bind
            .parse()
            .map_err(|e| invalid("api.bind", format!("{:?} is not ip:port: {e}", self.api.bind)))?;
        if !api.ip().is_loopback() && !self.api.allow_non_loopback {
            return Err(invalid(
                "api.bind",
                format!("{api} is not a loopback address; set api.allow_non_loopback = true to expose the API"),
            ));
        }
        if self.api.metrics_open && !api.ip().is_loopback() {
            return Err(invalid(
                "api.metrics_open",
                format!(
                    "serves /metrics without a token, so only on a loopback api.bind (not {api}); use api.metrics_token_file"
                ),
            ));
        }
        if self.api.metrics_token_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid("api.metrics_token_file", "empty path"));
        }
        for (i, j) in self.datanets.join.iter().enumerate() {
            if j.trim().is_empty() {
                return Err(invalid(format!("datanets.join[{i}]"), "empty entry"));
            }
        }
        self.epoch.validate().map_err(|e| match e.split_once(": ") {
            Some((key, reason)) => invalid(key, reason),
            None => invalid("epoch", e),
        })
    }

    /// Reads the seeds file, if one is configured, and returns every configured seed: first
    /// `net.seeds`, then the file's, each with the name of its key (`net.seeds[i]`,
    /// `<file>: seeds[i]`) for error messages. The addresses are not parsed here.
    pub fn all_seeds_named(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut out: Vec<(String, String)> =
            self.net.seeds.iter().enumerate().map(|(i, s)| (format!("net.seeds[{i}]"), s.clone())).collect();
        if let Some(p) = &self.net.seeds_file {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
            let f: SeedsFile =
                toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p.clone(), reason: e.to_string() })?;
            out.extend(f.seeds.into_iter().enumerate().map(|(i, s)| (format!("{}: seeds[{i}]", p.display()), s)));
        }
        Ok(out)
    }

    /// Every configured seed ([`Config::all_seeds_named`] without the names).
    pub fn all_seeds(&self) -> Result<Vec<String>, ConfigError> {
        Ok(self.all_seeds_named()?.into_iter().map(|(_, s)| s).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
    }

    // config/example.toml parses, validates, and documents every key with the default value.
    #[test]
    fn example_parses_and_matches_defaults() {
        let c = Config::load(&repo("config/example.toml")).unwrap();
        c.validate().unwrap();
        let mut d = Config::default();
        d.net.seeds_file = c.net.seeds_file.clone();
        d.datadir = c.datadir.clone();
        assert_eq!(c, d, "example.toml should show the defaults");
    }

    // An empty file is the default config and is valid.
    #[test]
    fn empty_is_default() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    // Bad values are reported with the exact key to fix.
    #[test]
    fn validate_names_bad_key() {
        let cases: &[(&str, &str)] = &[
            ("[net]\nfetch_in_flight_max = 0", "net.fetch_in_flight_max"),
            ("[net]\niroh_bind = \"nowhere\"", "net.iroh_bind"),
            ("[api]\nbind = \"0.0.0.0:80\"", "api.bind"),
            ("[net]\nreconnect_backoff_min_ms = 10\nreconnect_backoff_max_ms = 5", "net.reconnect_backoff_max_ms"),
            ("[net]\nepoch_message_bytes_max = 4194305", "net.epoch_message_bytes_max"),
            ("[net]\nepoch_message_bytes_max = 0", "net.epoch_message_bytes_max"),
            ("[api]\nbind = \"0.0.0.0:80\"\nallow_non_loopback = true\nmetrics_open = true", "api.metrics_open"),
            ("[api]\nmetrics_token_file = \"\"", "api.metrics_token_file"),
            ("[epoch]\ntrain_threads = 0", "epoch.train_threads"),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(text, Path::new("x.toml")).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }

    // Unknown keys are refused at parse time, naming the key.
    #[test]
    fn unknown_key_refused() {
        let e = Config::from_toml("[net]\nlisten_on = []", Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("listen_on"), "{e}");
    }

    // DATANET_* variables override the file.
    #[test]
    fn env_overrides() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "DATANET_API_BIND" => Some("127.0.0.1:9999".into()),
            "DATANET_LISTEN" => Some("/ip4/127.0.0.1/tcp/7000, /ip4/127.0.0.1/udp/7000/quic-v1".into()),
            "DATANET_PUBLIC" => Some("true".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.api.bind, "127.0.0.1:9999");
        assert_eq!(c.net.listen.len(), 2);
        assert!(c.net.public);
        c.validate().unwrap();
        assert!(c.apply_env(|k| (k == "DATANET_PEERS_MAX").then(|| "many".into())).is_err());
    }
}
