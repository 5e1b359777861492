//! The network room: the only module that touches libp2p and iroh endpoints.
//!
//! Bird's-eye view. [`start`] spawns one actor task, [`swarm::NetActor`], that owns the libp2p
//! swarm (TCP + noise + yamux and QUIC; gossipsub, Kademlia in server mode, identify, ping,
//! connection limits and the catch-up request-response protocol), and builds a [`blobs::BlobNode`]
//! (an iroh endpoint + router serving the store's iroh-blobs `FsStore`, and a downloader that
//! fetches into it). Others hold a cheap, cloneable [`NetHandle`]; the actor reports what it
//! sees as [`NetEvent`]s on one bounded channel, which the daemon (`crate::daemon`) consumes.
//!
//! The net room decides nothing about contributions: it hands every gossip message on a
//! Datanet topic to the daemon, which answers Accept / Reject / Ignore through
//! [`NetHandle::report`] (gossipsub forwards nothing until then, and a Reject costs the sender
//! peer score). It does own peer records ([`record`]): it signs and re-publishes its own on the
//! `datanet/peers/1` topic and in the catch-up hello, verifies others', and feeds their iroh
//! addresses to the endpoint's address lookup.
//!
//! Nothing leaves loopback unless configured: no mDNS, no relays, no public discovery unless
//! `net.public` is set.

pub mod blobs;
pub mod catchup;
pub mod keys;
pub mod record;
pub mod swarm;

pub use swarm::{NetEvent, NetHandle, PeerInfo, TopicKind, start};

use crate::ids::DatanetId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a seed address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeedAddrError {
    #[error("seed {addr:?} is not a multiaddr: {reason}")]
    Malformed { addr: String, reason: String },
    #[error("seed {addr:?} must end in /p2p/<peer id>")]
    MissingPeerId { addr: String },
    #[error("seed {addr:?} has no transport before /p2p (expected e.g. /ip4/1.2.3.4/tcp/4001/p2p/…)")]
    NoTransport { addr: String },
}

/// Splits a seed multiaddr `…/p2p/<peer id>` into the peer id and the address to dial.
pub fn parse_seed_addr(s: &str) -> Result<(PeerId, Multiaddr), SeedAddrError> {
    let mut addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e: libp2p::multiaddr::Error| SeedAddrError::Malformed { addr: s.into(), reason: e.to_string() })?;
    let peer = match addr.pop() {
        Some(Protocol::P2p(p)) => p,
        _ => return Err(SeedAddrError::MissingPeerId { addr: s.into() }),
    };
    let has_transport = addr.iter().any(|p| matches!(p, Protocol::Tcp(_) | Protocol::Udp(_)));
    if !has_transport {
        return Err(SeedAddrError::NoTransport { addr: s.into() });
    }
    Ok((peer, addr))
}

/// The gossip topic of a Datanet's contribution announcements.
pub fn contributions_topic(id: &DatanetId) -> String {
    format!("datanet/{}/contributions", id.to_hex())
}

/// The gossip topic of a Datanet's epoch agreement messages.
pub fn epochs_topic(id: &DatanetId) -> String {
    format!("datanet/{}/epochs", id.to_hex())
}

/// The topic every peer joins for signed peer records.
pub const PEERS_TOPIC: &str = "datanet/peers/1";

/// Counters the net room keeps (rendered by `/metrics`).
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub peers_connected: AtomicU64,
    /// Connected peers whose gossipsub score is below the graylist threshold (all they send is dropped).
    pub peers_graylisted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub seed_dials: AtomicU64,
    pub seed_dial_failures: AtomicU64,
    pub gossip_received: AtomicU64,
    pub gossip_published: AtomicU64,
    pub gossip_publish_failures: AtomicU64,
    pub peer_records_accepted: AtomicU64,
    pub peer_records_rejected: AtomicU64,
    pub catchup_requests_sent: AtomicU64,
    pub catchup_requests_served: AtomicU64,
    pub catchup_failures: AtomicU64,
    pub blob_bytes_fetched: AtomicU64,
    pub blob_fetches: AtomicU64,
    pub blob_fetch_failures: AtomicU64,
    pub blob_fetch_timeouts: AtomicU64,
}

impl NetMetrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(name, help, kind, value)` rows for the Prometheus exposition.
    pub fn rows(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("datanet_peers_connected", "Connected libp2p peers.", "gauge", g(&self.peers_connected)),
            (
                "datanet_peers_graylisted",
                "Connected peers below gossipsub's graylist threshold (their messages are dropped unread).",
                "gauge",
                g(&self.peers_graylisted),
            ),
            (
                "datanet_connections_refused_total",
                "Connections refused by limits.",
                "counter",
                g(&self.connections_refused),
            ),
            ("datanet_seed_dials_total", "Dials of seed peers.", "counter", g(&self.seed_dials)),
            ("datanet_seed_dial_failures_total", "Failed dials of seed peers.", "counter", g(&self.seed_dial_failures)),
            (
                "datanet_gossip_received_total",
                "Gossip messages received on Datanet topics.",
                "counter",
                g(&self.gossip_received),
            ),
            ("datanet_gossip_published_total", "Gossip messages published.", "counter", g(&self.gossip_published)),
            (
                "datanet_gossip_publish_failures_total",
                "Gossip publishes that failed.",
                "counter",
                g(&self.gossip_publish_failures),
            ),
            (
                "datanet_peer_records_accepted_total",
                "Peer records accepted.",
                "counter",
                g(&self.peer_records_accepted),
            ),
            (
                "datanet_peer_records_rejected_total",
                "Peer records rejected.",
                "counter",
                g(&self.peer_records_rejected),
            ),
            (
                "datanet_catchup_requests_sent_total",
                "Catch-up requests sent.",
                "counter",
                g(&self.catchup_requests_sent),
            ),
            (
                "datanet_catchup_requests_served_total",
                "Catch-up requests answered.",
                "counter",
                g(&self.catchup_requests_served),
            ),
            ("datanet_catchup_failures_total", "Catch-up requests that failed.", "counter", g(&self.catchup_failures)),
            (
                "datanet_bytes_replicated_total",
                "Blob bytes fetched from peers.",
                "counter",
                g(&self.blob_bytes_fetched),
            ),
            ("datanet_blob_fetches_total", "Blob fetches completed.", "counter", g(&self.blob_fetches)),
            ("datanet_blob_fetch_failures_total", "Blob fetches that failed.", "counter", g(&self.blob_fetch_failures)),
            (
                "datanet_blob_fetch_timeouts_total",
                "Blob fetches that timed out.",
                "counter",
                g(&self.blob_fetch_timeouts),
            ),
        ]
    }
}

/// Checks the libp2p addresses of a config, which [`crate::config::Config::validate`] leaves to
/// this room: every `net.listen` multiaddr, and every seed of `net.seeds` and the seeds file
/// ([`parse_seed_addr`]). The error names the key to fix.
pub fn check_addresses(cfg: &crate::config::Config) -> Result<(), crate::config::ConfigError> {
    use crate::config::ConfigError;
    for (i, a) in cfg.net.listen.iter().enumerate() {
        a.parse::<Multiaddr>().map_err(|e| ConfigError::invalid(format!("net.listen[{i}]"), format!("{a:?}: {e}")))?;
    }
    for (key, s) in cfg.all_seeds_named()? {
        parse_seed_addr(&s).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A well-formed seed splits into peer id and dial address; malformed ones name the problem.
    #[test]
    fn seed_addrs() {
        let pid = keys::peer_id(&crate::identity::Identity::from_seed([3; 32]).public_key()).unwrap();
        let (p, a) = parse_seed_addr(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{pid}")).unwrap();
        assert_eq!(p, pid);
        assert_eq!(a.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert!(matches!(parse_seed_addr("/ip4/127.0.0.1/tcp/4001"), Err(SeedAddrError::MissingPeerId { .. })));
        assert!(matches!(parse_seed_addr("hello"), Err(SeedAddrError::Malformed { .. })));
        assert!(matches!(parse_seed_addr(&format!("/p2p/{pid}")), Err(SeedAddrError::NoTransport { .. })));
        assert!(parse_seed_addr(&format!("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{pid}")).is_ok());
    }

    // Bad listen or seed addresses in a config are reported with the exact key to fix.
    #[test]
    fn config_addresses_name_the_bad_key() {
        use crate::config::Config;
        let cases: &[(&str, &str)] = &[
            ("[net]\nlisten = [\"not a multiaddr\"]", "net.listen[0]"),
            ("[net]\nseeds = [\"/ip4/127.0.0.1/tcp/1\"]", "net.seeds[0]"),
        ];
        for (text, key) in cases {
            let c = Config::from_toml(text, std::path::Path::new("x.toml")).unwrap();
            c.validate().unwrap();
            let e = check_addresses(&c).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        check_addresses(&Config::default()).unwrap();
    }

    // config/seeds.toml parses and each entry is a valid seed multiaddr.
    #[test]
    fn seeds_file_parses() {
        let mut c = crate::config::Config::default();
        c.net.seeds_file = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/seeds.toml"));
        check_addresses(&c).unwrap();
        assert_eq!(c.all_seeds().unwrap().len(), c.all_seeds_named().unwrap().len());
    }
}
