//! Blob transfer: one iroh endpoint per peer, serving the store's iroh-blobs `FsStore` and
//! fetching into it with verified BLAKE3 streaming.
//!
//! The endpoint's key is the peer's identity key, so a [`PeerKey`] is also its endpoint id. By
//! default there are no relays, no DNS/pkarr discovery and no port mapping: the only addresses
//! ever dialed are those learned from signed peer records ([`BlobNode::learn`]). `net.public`
//! switches to iroh's public presets for real deployments. Serving is bounded: at most
//! `peers_max` client connections at once.

use crate::config::NetConfig;
use crate::identity::Identity;
use crate::ids::{BlobHash, PeerKey};
use crate::net::{NetMetrics, keys};
use futures::StreamExt;
use iroh::address_lookup::MemoryLookup;
use iroh::endpoint::presets;
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, RelayMode, TransportAddr};
use iroh_blobs::api::downloader::{DownloadProgressItem, Downloader, Shuffled};
use iroh_blobs::provider::events::{AbortReason, ConnectMode, EventMask, EventSender, ProviderMessage};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::{BlobsProtocol, HashAndFormat};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Why the blob endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum BlobNodeError {
    #[error("net.iroh_bind {addr:?}: {reason}")]
    Bind { addr: String, reason: String },
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("no provider to fetch {0} from")]
    NoProviders(String),
    #[error("fetching {hash} timed out after {ms} ms")]
    Timeout { hash: String, ms: u64 },
    #[error("fetching {hash} failed: {reason}")]
    Failed { hash: String, reason: String },
    #[error("fetching {hash} stopped: more than the {max} bytes it may take")]
    TooLarge { hash: String, max: u64 },
}

/// What to fetch: one blob, or a HashSeq and every blob it lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchKind {
    Raw,
    HashSeq,
}

/// The iroh side of a peer.
#[derive(Clone, Debug)]
pub struct BlobNode {
    router: Router,
    lookup: MemoryLookup,
    downloader: Downloader,
    metrics: Arc<NetMetrics>,
}

impl BlobNode {
    /// Binds the endpoint and starts serving `store`.
    pub async fn start(
        identity: &Identity,
        cfg: &NetConfig,
        store: &FsStore,
        metrics: Arc<NetMetrics>,
    ) -> Result<Self, BlobNodeError> {
        let bind_err = |reason: String| BlobNodeError::Bind { addr: cfg.iroh_bind.clone(), reason };
        let bind: SocketAddr = cfg.iroh_bind.parse().map_err(|e| bind_err(format!("{e}")))?;
        let lookup = MemoryLookup::new();
        let builder = if cfg.public {
            Endpoint::builder(presets::N0)
        } else {
            Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Disabled)
                .portmapper_config(iroh::endpoint::PortmapperConfig::Disabled)
        };
        let ep = builder
            .secret_key(keys::iroh_secret_key(identity))
            .address_lookup(lookup.clone())
            .bind_addr(bind)
            .map_err(|e| bind_err(format!("{e}")))?
            .bind()
            .await
            .map_err(|e| bind_err(format!("{e}")))?;
        let events = limit_connections(cfg.peers_max as usize);
        let blobs = BlobsProtocol::new(store, Some(events));
        let router = Router::builder(ep).accept(iroh_blobs::ALPN, blobs).spawn();
        let downloader = Downloader::new(store, router.endpoint());
        Ok(BlobNode { router, lookup, downloader, metrics })
    }

    /// This endpoint's address (id and socket addresses).
    pub fn addr(&self) -> EndpointAddr {
        self.router.endpoint().addr()
    }

    /// The socket addresses to advertise in the peer record.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.addr().ip_addrs().copied().collect();
        if v.is_empty() {
            v = self.router.endpoint().bound_sockets();
        }
        v.truncate(crate::net::record::ADDRS_MAX);
        v
    }

    /// Makes `key` dialable at `addrs` (from a verified peer record).
    pub fn learn(&self, key: &PeerKey, addrs: &[SocketAddr]) {
        if let Ok(id) = keys::endpoint_id(key) {
            let addr = EndpointAddr::from_parts(id, addrs.iter().map(|a| TransportAddr::Ip(*a)));
            self.lookup.set_endpoint_info(addr);
        }
    }

    /// Forgets `key`'s addresses.
    pub fn forget(&self, key: &PeerKey) {
        if let Ok(id) = keys::endpoint_id(key) {
            self.lookup.remove_endpoint_info(id);
        }
    }

    /// Whether an address for `key` is known.
    pub fn knows(&self, key: &PeerKey) -> bool {
        keys::endpoint_id(key).ok().and_then(|id| self.lookup.get_endpoint_info(id)).is_some()
    }

    /// Fetches `hash` (and, for a HashSeq, every blob it lists) from any of `providers`,
    /// verifying every byte against its BLAKE3 hash; gives up after `timeout`, and stops (dropping
    /// the download) as soon as more than `max_bytes` have arrived — the bound is checked while
    /// downloading, not after: a provider cannot make this peer store more than that.
    pub async fn fetch(
        &self,
        hash: BlobHash,
        kind: FetchKind,
        providers: &[PeerKey],
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<u64, FetchError> {
        let ids: Vec<iroh::EndpointId> = providers.iter().filter_map(|k| keys::endpoint_id(k).ok()).collect();
        if ids.is_empty() {
            return Err(FetchError::NoProviders(hash.short()));
        }
        let h = iroh_blobs::Hash::from_bytes(hash.0);
        let req = match kind {
            FetchKind::Raw => HashAndFormat::raw(h),
            FetchKind::HashSeq => HashAndFormat::hash_seq(h),
        };
        let metrics = self.metrics.clone();
        let run = async {
            let mut stream = self
                .downloader
                .download(req, Shuffled::new(ids))
                .stream()
                .await
                .map_err(|e| FetchError::Failed { hash: hash.short(), reason: e.to_string() })?;
            let (mut bytes, mut last) = (0u64, 0u64);
            while let Some(item) = stream.next().await {
                match item {
                    DownloadProgressItem::Progress(n) => {
                        bytes += n.saturating_sub(last);
                        last = n;
                        if bytes > max_bytes {
                            return Err(FetchError::TooLarge { hash: hash.short(), max: max_bytes });
                        }
                    }
                    DownloadProgressItem::PartComplete { .. } | DownloadProgressItem::TryProvider { .. } => last = 0,
                    DownloadProgressItem::ProviderFailed { id, .. } => {
                        tracing::debug!(target: "datanet::net::blobs", hash = %hash.short(), provider = %id, "provider failed");
                        last = 0;
                    }
                    DownloadProgressItem::Error(e) => {
                        return Err(FetchError::Failed { hash: hash.short(), reason: format!("{e:#}") });
                    }
                    DownloadProgressItem::DownloadError => {
                        return Err(FetchError::Failed { hash: hash.short(), reason: "every provider failed".into() });
                    }
                }
            }
            Ok(bytes)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(bytes)) => {
                NetMetrics::inc(&metrics.blob_fetches);
                metrics.blob_bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
                Ok(bytes)
            }
            Ok(Err(e)) => {
                NetMetrics::inc(&metrics.blob_fetch_failures);
                Err(e)
            }
            Err(_) => {
                NetMetrics::inc(&metrics.blob_fetch_timeouts);
                Err(FetchError::Timeout { hash: hash.short(), ms: timeout.as_millis() as u64 })
            }
        }
    }

    /// Closes the endpoint (and, through the blobs protocol, shuts the blob store down).
    pub async fn shutdown(&self) {
        if let Err(e) = self.router.shutdown().await {
            tracing::warn!(target: "datanet::net::blobs", error = %e, "router shutdown");
        }
    }
}

/// Serving bound: refuse client connections beyond `max` at once.
fn limit_connections(max: usize) -> EventSender {
    let mask = EventMask { connected: ConnectMode::Intercept, ..EventMask::DEFAULT };
    let (tx, mut rx) = EventSender::channel(64, mask);
    tokio::spawn(async move {
        let open = AtomicUsize::new(0);
        while let Some(msg) = rx.recv().await {
            match msg {
                ProviderMessage::ClientConnected(msg) => {
                    let ok = open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
                    let res = if ok.is_ok() { Ok(()) } else { Err(AbortReason::RateLimited) };
                    msg.tx.send(res).await.ok();
                }
                ProviderMessage::ConnectionClosed(_) => {
                    open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).ok();
                }
                _ => {}
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    // A download stops once more than its byte bound has arrived (and the blob is not kept
    // complete); within the bound the same blob arrives whole.
    #[tokio::test]
    async fn fetch_stops_past_its_byte_bound() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = NetConfig { iroh_bind: "127.0.0.1:0".into(), ..NetConfig::default() };
        let (ia, ib) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let sa = FsStore::load(da.path().join("blobs")).await.unwrap();
        let sb = FsStore::load(db.path().join("blobs")).await.unwrap();
        let a = BlobNode::start(&ia, &cfg, &sa, Arc::default()).await.unwrap();
        let b = BlobNode::start(&ib, &cfg, &sb, Arc::default()).await.unwrap();
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let tag = sa.add_bytes(data.clone()).await.unwrap();
        let hash = BlobHash(*tag.hash.as_bytes());
        b.learn(&ia.public_key(), &a.socket_addrs());
        let t = Duration::from_secs(20);
        let err = b.fetch(hash, FetchKind::Raw, &[ia.public_key()], t, 64 * 1024).await.unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { max: 65_536, .. }), "{err}");
        assert!(!sb.blobs().has(tag.hash).await.unwrap(), "a stopped download leaves no complete blob");
        let got = b.fetch(hash, FetchKind::Raw, &[ia.public_key()], t, 1 << 20).await.unwrap();
        assert_eq!(got, data.len() as u64);
        assert_eq!(sb.get_bytes(tag.hash).await.unwrap().to_vec(), data);
        a.shutdown().await;
        b.shutdown().await;
    }
}
