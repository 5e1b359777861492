//! What `datanet status` and the status page show: one [`Status`], built by the actor in one pass
//! (`GET /api/v1/status`), so the CLI and the page always tell the same story.
//!
//! Per joined Datanet: its contributions with replication counts, the epoch (phase, committee
//! members heard from, time to the next deadline or to the next epoch window, this peer's jobs),
//! the ledger head and this peer's credit and reward. Datanets stored here but not joined are
//! listed with the command that joins them.

use super::DaemonActor;
use super::epoch;
use crate::attribution::epoch::EpochStatus;
use crate::net::TopicKind;
use crate::store::ledger::Ledger;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// What `datanet status` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub peer_key: String,
    pub peer_id: String,
    pub listen: Vec<String>,
    pub iroh_addrs: Vec<String>,
    pub api: Option<String>,
    pub peers: usize,
    pub fetch_in_flight: usize,
    pub fetch_queued: usize,
    pub datanets: Vec<DatanetStatus>,
    /// Datanets stored on this peer (created or imported) that the daemon has not joined.
    #[serde(default)]
    pub not_joined: Vec<LocalDatanet>,
}

/// A Datanet stored here but not joined: no contributions replicate and no epochs run for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalDatanet {
    pub id: String,
    pub name: String,
    /// The command that joins it.
    pub join_with: String,
}

/// One joined Datanet in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatanetStatus {
    pub id: String,
    pub name: String,
    pub mesh_peers: usize,
    pub contributions: Vec<ContributionStatus>,
    /// The sealed evaluation pool, when the Datanet has one.
    #[serde(default)]
    pub sealed: Option<epoch::SealedStatus>,
    #[serde(default)]
    pub epoch: EpochView,
    #[serde(default)]
    pub ledger: LedgerView,
    /// This peer's cumulative credit and reward in the ledger (zero when it earned none).
    #[serde(default)]
    pub mine: Earnings,
}

/// One contribution in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContributionStatus {
    pub id: String,
    pub contributor: String,
    pub records: u32,
    pub bytes: u64,
    pub created_ms: u64,
    pub source: String,
    /// Peers known to hold it, this one included.
    pub holders: usize,
}

/// The epoch side of a joined Datanet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochView {
    /// Committee size and whether this peer is on it.
    pub committee: usize,
    pub member: bool,
    /// The machine running here (an attested one stays until the next epoch starts).
    pub current: Option<EpochStatus>,
    /// Committee members (this peer included) whose messages for the current epoch arrived.
    pub heard_from: usize,
    /// Milliseconds to the current epoch's next deadline (window end, view timeout).
    pub next_deadline_in_ms: Option<u64>,
    /// The epoch after the ledger head, and how long until its window opens (0: open now).
    pub next_epoch: u64,
    pub next_opens_in_ms: u64,
    /// Training: coalition jobs this peer was assigned in the current epoch, how many it measured,
    /// and whether a training task is running now.
    pub jobs_assigned: u32,
    pub jobs_measured: u32,
    pub training: bool,
    /// The last problem the epoch driver met (plan, training, ledger), if any.
    pub last_error: Option<String>,
}

/// The ledger head of a joined Datanet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LedgerView {
    pub head_epoch: Option<u64>,
    pub head_hash: Option<String>,
    /// Attestations held (one per attested epoch).
    pub attested: usize,
    /// The reward pool of one epoch (the manifest's).
    pub pool_per_epoch: String,
}

/// A contributor's ledger totals (u128 as decimal strings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Earnings {
    pub credit: String,
    pub reward: String,
    /// Attested epochs that paid it.
    pub epochs: u32,
}

impl DaemonActor {
    pub(super) async fn status(&self) -> Status {
        let ledger = Ledger::open(self.store.db());
        let me = self.identity.public_key();
        let mut datanets = Vec::new();
        for (id, m) in &self.joined {
            let list = self.store.contributions(id).unwrap_or_default();
            let contributions = list
                .iter()
                .map(|c| ContributionStatus {
                    id: c.id.to_hex(),
                    contributor: c.signed.body.contributor.to_hex(),
                    records: c.signed.body.record_count,
                    bytes: c.signed.body.byte_count,
                    created_ms: c.signed.body.created_ms,
                    source: c.meta.source.clone(),
                    holders: self.holders.get(&c.id).map(|h| h.len()).unwrap_or(0).max(1),
                })
                .collect();
            let mesh_peers = self.net.mesh_peers(*id, TopicKind::Contributions).await;
            let sealed = if m.eval.sealed.is_empty() { None } else { epoch::sealed_status(&self.store, m).ok() };
            let head = ledger.head(id).ok().flatten();
            let ledger_view = LedgerView {
                head_epoch: head.map(|h| h.epoch),
                head_hash: head.map(|h| hex::encode(h.hash)),
                attested: ledger.attested_count(id).unwrap_or(0),
                pool_per_epoch: m.reward_pool.to_string(),
            };
            let mine = ledger
                .total(id, &me)
                .ok()
                .flatten()
                .map(|t| Earnings { credit: t.credit.to_string(), reward: t.reward.to_string(), epochs: t.epochs })
                .unwrap_or_else(|| Earnings { credit: "0".into(), reward: "0".into(), epochs: 0 });
            datanets.push(DatanetStatus {
                id: id.to_hex(),
                name: m.name.clone(),
                mesh_peers,
                contributions,
                sealed,
                epoch: self.epoch_view(id, m),
                ledger: ledger_view,
                mine,
            });
        }
        datanets.sort_by(|a, b| a.name.cmp(&b.name));
        let low = datanets.iter().filter(|d| d.sealed.as_ref().is_some_and(|s| s.low)).count();
        self.metrics.sealed_pools_low.store(low as u64, Ordering::Relaxed);
        let mut not_joined: Vec<LocalDatanet> = self
            .store
            .manifests()
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, _)| !self.joined.contains_key(id))
            .map(|(id, m)| LocalDatanet {
                id: id.to_hex(),
                join_with: format!("datanet join {}", m.body.name),
                name: m.body.name,
            })
            .collect();
        not_joined.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            peer_key: me.to_hex(),
            peer_id: self.net.peer_id().to_string(),
            listen: self.net.seed_addrs(),
            iroh_addrs: self.net.blobs().socket_addrs().iter().map(|a| a.to_string()).collect(),
            api: None,
            peers: self.net.metrics().peers_connected.load(Ordering::Relaxed) as usize,
            fetch_in_flight: self.in_flight.len(),
            fetch_queued: self.pending.len(),
            datanets,
            not_joined,
        }
    }
}
