//! Ledger catch-up: fetching the attestations this peer missed from a peer that has them,
//! verifying each against the committee and the chain before appending, and serving them.

use super::FIRST_EPOCH;
use crate::attribution::epoch::Attestation;
use crate::attribution::epoch::machine::DEFAULT_TAU;
use crate::codec;
use crate::daemon::{DaemonActor, Internal};
use crate::ids::DatanetId;
use crate::manifest::Manifest;
use crate::net::NetHandle;
use crate::net::catchup::{CatchupRequest, CatchupResponse, RESPONSE_BYTES_MAX};
use crate::store::Store;
use crate::store::ledger::{self, Ledger};
use libp2p::PeerId;

/// Attestations asked for per catch-up request.
const LEDGER_CATCHUP_BATCH: u32 = 16;

/// Answers a ledger catch-up request: consecutive attestations from `from`, at most `limit` and
/// at most half the response bound in bytes (at least one, which always fits: an attestation's
/// canonical size limit is below the response bound).
pub(in crate::daemon) fn answer_attestations(store: &Store, d: &DatanetId, from: u64, limit: usize) -> CatchupResponse {
    let ledger = Ledger::open(store.db());
    let (mut items, mut bytes) = (Vec::new(), 0usize);
    for e in from..from.saturating_add(limit.min(LEDGER_CATCHUP_BATCH as usize) as u64) {
        match ledger.attestation(d, e) {
            Ok(Some(a)) => {
                let b = codec::encode(&a);
                bytes += b.len();
                if !items.is_empty() && bytes > RESPONSE_BYTES_MAX as usize / 2 {
                    break;
                }
                items.push(b);
            }
            Ok(None) => break,
            Err(e) => return CatchupResponse::Refused { reason: e.to_string() },
        }
    }
    CatchupResponse::Attestations { items }
}

/// Appends attestations learned by catch-up, in order: each must be this peer's next epoch,
/// verify against the manifest's committee and chain to the head (as `datanet attestation verify
/// --prev` checks). Returns how many were appended; stops with an error at the first that does not.
pub(in crate::daemon) async fn adopt_attestations(
    store: &Store,
    manifest: &Manifest,
    items: &[Vec<u8>],
) -> Result<usize, String> {
    let ledger = Ledger::open(store.db());
    let d = manifest.id();
    for (n, bytes) in items.iter().enumerate() {
        let a: Attestation = codec::decode(bytes).map_err(|e| format!("attestation {n}: {e}"))?;
        let head = ledger.head(&d).map_err(|e| e.to_string())?;
        let prev = match head {
            Some(h) => {
                Some(ledger.attestation(&d, h.epoch).map_err(|e| e.to_string())?.ok_or("head attestation missing")?)
            }
            None => None,
        };
        let want = head.map(|h| h.epoch + 1).unwrap_or(FIRST_EPOCH);
        let got = a.score.header.epoch;
        if got != want {
            return Err(format!("attestation of epoch {got} where epoch {want} was expected"));
        }
        a.verify(manifest, prev.as_ref()).map_err(|e| format!("attestation of epoch {got}: {e}"))?;
        let standing_lost = crate::attribution::epoch::machine::standing_lost(&a, DEFAULT_TAU);
        ledger::append_and_store_blob(store, &a, &standing_lost).await.map_err(|e| e.to_string())?;
    }
    Ok(items.len())
}

/// Asks `peer` for the attestations after this peer's ledger head until it has no more, appending
/// each (see [`adopt_attestations`]). Returns how many were appended.
pub(in crate::daemon) async fn catch_up_ledger(
    store: &Store,
    net: &NetHandle,
    peer: PeerId,
    manifest: &Manifest,
) -> Result<usize, String> {
    let d = manifest.id();
    let mut appended = 0;
    loop {
        let head = Ledger::open(store.db()).head(&d).map_err(|e| e.to_string())?;
        let from_epoch = head.map(|h| h.epoch + 1).unwrap_or(FIRST_EPOCH);
        let req = CatchupRequest::Attestations { datanet: d, from_epoch, limit: LEDGER_CATCHUP_BATCH };
        let items = match net.catchup(peer, req).await.map_err(|e| e.to_string())? {
            CatchupResponse::Attestations { items } => items,
            CatchupResponse::Refused { reason } => return Err(format!("refused: {reason}")),
            _ => return Err("unexpected answer to attestations".into()),
        };
        if items.is_empty() || items.len() > LEDGER_CATCHUP_BATCH as usize {
            return Ok(appended);
        }
        appended += adopt_attestations(store, manifest, &items).await?;
    }
}

impl DaemonActor {
    /// Starts a ledger-only catch-up from `peer` unless one is running for `d`.
    pub(in crate::daemon) fn start_ledger_catchup(&mut self, d: DatanetId, peer: PeerId) {
        let Some(manifest) = self.joined.get(&d).cloned() else { return };
        if !self.ledger_catchup.insert(d) {
            return;
        }
        let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
        self.tasks.spawn(async move {
            let appended = catch_up_ledger(&store, &net, peer, &manifest).await.unwrap_or_else(|e| {
                tracing::info!(target: "datanet::daemon::catchup", %peer, error = %e, "ledger catch-up stopped");
                0
            });
            let _ = internal.send(Internal::LedgerCaughtUp { datanet: d, appended }).await;
        });
    }

    /// A ledger catch-up ended: a machine left behind by the attestations it appended (an epoch
    /// the committee attested without this peer) is dropped, so the next epoch can start here.
    pub(in crate::daemon) fn on_ledger_caught_up(&mut self, d: DatanetId, appended: usize) {
        self.ledger_catchup.remove(&d);
        if appended == 0 {
            return;
        }
        let head = self.next_epoch(&d).unwrap_or(FIRST_EPOCH).saturating_sub(1);
        tracing::info!(target: "datanet::daemon::catchup", datanet = %d.short(), appended, head, "ledger caught up");
        if self
            .epochs
            .running
            .get(&d)
            .is_some_and(|r| r.machine.config().epoch <= head && r.machine.attestation().is_none())
        {
            self.epochs.running.remove(&d);
        }
    }
}
