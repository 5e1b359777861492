//! Inventory catch-up: asking a peer that subscribes for the contributions it holds and this peer
//! lacks (client), and answering such requests (server).

use super::metrics::{DaemonMetrics, RejectReason};
use super::{DaemonActor, Internal, epoch};
use crate::admission::SignedContribution;
use crate::ids::{ContributionId, DatanetId};
use crate::net::catchup::{CatchupRequest, CatchupResponse};
use crate::net::{NetHandle, keys};
use crate::store::Store;
use libp2p::PeerId;
use tokio::sync::mpsc;

impl DaemonActor {
    pub(super) fn catch_up_from(&mut self, peer: PeerId, datanet: DatanetId) {
        if !self.joined.contains_key(&datanet) || !self.asked.insert((peer, datanet)) {
            return;
        }
        let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
        let batch = self.cfg.net.catchup_batch_max;
        self.tasks.spawn(async move {
            if let Err(e) = catch_up(&store, &net, &internal, peer, datanet, batch).await {
                tracing::debug!(target: "datanet::daemon::catchup", %peer, error = %e, "catch-up stopped");
            }
        });
        self.start_ledger_catchup(datanet, peer);
    }

    pub(super) fn serve_catchup(&mut self, peer: PeerId, request: CatchupRequest, respond: u64) {
        let (store, net) = (self.store.clone(), self.net.clone());
        let joined = self.joined.contains_key(match &request {
            CatchupRequest::Inventory { datanet, .. }
            | CatchupRequest::Get { datanet, .. }
            | CatchupRequest::Attestations { datanet, .. } => datanet,
            CatchupRequest::Hello { .. } => &DatanetId([0; 32]),
        });
        let batch = self.cfg.net.catchup_batch_max as usize;
        self.tasks.spawn(async move {
            let response = if !joined {
                CatchupResponse::Refused { reason: "datanet not served here".into() }
            } else {
                answer_catchup(&store, request, batch)
            };
            tracing::debug!(target: "datanet::daemon::catchup", %peer, "answering catch-up");
            net.respond(respond, response).await;
        });
    }

    /// A contribution a catch-up found: checked like an announcement from that peer, then queued.
    pub(super) async fn on_discovered(&mut self, datanet: DatanetId, bytes: Vec<u8>, peer: PeerId) {
        let checked = SignedContribution::decode_verified(&bytes)
            .map_err(|_| Some(RejectReason::BadSignature))
            .and_then(|c| self.check_contribution(&datanet, &c).map(|()| c));
        match checked {
            Ok(c) => {
                DaemonMetrics::inc(&self.metrics.catchup_discovered);
                let providers = keys::peer_key(&peer).ok().into_iter().collect();
                self.enqueue(c, providers, Some(peer));
            }
            Err(_) => {
                DaemonMetrics::inc(&self.metrics.catchup_rejected);
                self.penalize(Some(peer)).await;
            }
        }
    }
}

fn answer_catchup(store: &Store, request: CatchupRequest, batch: usize) -> CatchupResponse {
    let refused = |e: crate::store::StoreError| CatchupResponse::Refused { reason: e.to_string() };
    match request {
        // The order index alone: an inventory request decodes nothing.
        CatchupRequest::Inventory { datanet, offset, limit } => {
            match store.contribution_page(&datanet, offset as usize, (limit as usize).min(batch)) {
                Ok((ids, total)) => CatchupResponse::Inventory { ids, total },
                Err(e) => refused(e),
            }
        }
        CatchupRequest::Get { datanet, ids } => {
            let mut records = Vec::new();
            for id in ids.iter().take(batch) {
                match store.contribution(id) {
                    Ok(Some(c)) if c.body.datanet == datanet => records.push(c.to_bytes()),
                    Ok(_) => {}
                    Err(e) => return refused(e),
                }
            }
            CatchupResponse::Contributions { records }
        }
        CatchupRequest::Attestations { datanet, from_epoch, limit } => {
            epoch::answer_attestations(store, &datanet, from_epoch, (limit as usize).min(batch))
        }
        CatchupRequest::Hello { .. } => CatchupResponse::Refused { reason: "hello is answered by the net room".into() },
    }
}

async fn catch_up(
    store: &Store,
    net: &NetHandle,
    internal: &mpsc::Sender<Internal>,
    peer: PeerId,
    datanet: DatanetId,
    batch: u32,
) -> Result<(), String> {
    let mut offset = 0u64;
    // Bounded whatever the peer claims (`total`): a liar listing endless fresh ids stops here, and
    // so does one that lists ids it then does not serve.
    for _ in 0..CATCHUP_PAGES_MAX {
        let resp = net
            .catchup(peer, CatchupRequest::Inventory { datanet, offset, limit: batch })
            .await
            .map_err(|e| e.to_string())?;
        let (ids, total) = match resp {
            CatchupResponse::Inventory { ids, total } => (ids, total),
            CatchupResponse::Refused { reason } => return Err(format!("refused: {reason}")),
            _ => return Err("unexpected answer to inventory".into()),
        };
        if ids.is_empty() || ids.len() > batch as usize {
            return Ok(());
        }
        offset += ids.len() as u64;
        let missing: Vec<ContributionId> =
            ids.into_iter().filter(|id| !matches!(store.contribution_meta(id), Ok(Some(_)))).collect();
        if !missing.is_empty() {
            match net.catchup(peer, CatchupRequest::Get { datanet, ids: missing }).await.map_err(|e| e.to_string())? {
                CatchupResponse::Contributions { records } if records.is_empty() => {
                    return Err("the peer listed contributions it does not serve".into());
                }
                CatchupResponse::Contributions { records } => {
                    for bytes in records.into_iter().take(batch as usize) {
                        if internal.send(Internal::Discovered { datanet, bytes, peer }).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                CatchupResponse::Refused { reason } => return Err(format!("refused: {reason}")),
                _ => return Err("unexpected answer to get".into()),
            }
        }
        if offset >= total {
            return Ok(());
        }
    }
    Err(format!("stopped after {CATCHUP_PAGES_MAX} inventory pages"))
}

/// Most inventory pages one catch-up asks a peer for (× `catchup_batch_max` ids each).
const CATCHUP_PAGES_MAX: usize = 4096;
