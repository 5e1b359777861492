//! The sealed evaluation pool: this epoch's sealed split, the bitmaps of what earlier epochs
//! revealed, and how much of the pool is left.

use super::FIRST_EPOCH;
use crate::admission;
use crate::daemon::DaemonActor;
use crate::manifest::Manifest;
use crate::store::Store;
use crate::store::ledger::Ledger;
use serde::{Deserialize, Serialize};

/// This epoch's sealed split and its reveal, when the Datanet has a sealed pool: the split the
/// seed chooses among the records the previous attestation had not revealed yet.
pub(super) fn sealed_split(
    store: &Store,
    m: &Manifest,
    epoch: u64,
    seed: &[u8; 32],
) -> Result<Option<(crate::sealed::Reveal, Vec<admission::EvalRecord>)>, String> {
    if m.eval.sealed.is_empty() {
        return Ok(None);
    }
    let d = m.id();
    let pool = store.sealed_pool(&d).map_err(|e| e.to_string())?.ok_or_else(|| {
        format!(
            "the sealed evaluation pool of {} is not here: a committee member imports it with `datanet datanet sealed import {} FILE`",
            m.name, m.name
        )
    })?;
    // The founder's extensions in effect for this epoch add parts after the manifest's.
    let extensions = crate::sealed::in_effect(&pool.extensions, epoch);
    let parts = m.sealed_parts(&extensions, epoch)?;
    let before = sealed_used(store, m, epoch, &parts)?;
    let split = crate::sealed::select(seed, &parts, &before, m.protocol.sealed_split);
    let reveal = pool.reveal(&extensions, &before, &split);
    let opened = admission::sealed::opened_records(m, &reveal).map_err(|e| e.to_string())?;
    Ok(Some((reveal, opened)))
}

/// The revealed-index bitmaps of `parts` before `epoch`: the previous attestation's, and none
/// revealed of a part an extension added since.
pub fn sealed_used(
    store: &Store,
    m: &Manifest,
    epoch: u64,
    parts: &[crate::sealed::SealedPart],
) -> Result<Vec<Vec<u8>>, String> {
    let d = m.id();
    let ledger = Ledger::open(store.db());
    match ledger.head(&d).map_err(|e| e.to_string())? {
        None if epoch == FIRST_EPOCH => Ok(crate::sealed::fresh(parts)),
        Some(h) if h.epoch + 1 == epoch => {
            let a = ledger.attestation(&d, h.epoch).map_err(|e| e.to_string())?.ok_or("head attestation missing")?;
            let r = a.sealed.ok_or(format!("the attestation of epoch {} reveals no sealed split", h.epoch))?;
            let mut used: Vec<Vec<u8>> = r.parts.into_iter().map(|p| p.used).collect();
            if used.len() > parts.len() {
                return Err(format!(
                    "epoch {} drew from {} sealed parts, epoch {epoch} from {}",
                    h.epoch,
                    used.len(),
                    parts.len()
                ));
            }
            used.extend(parts[used.len()..].iter().map(|p| crate::sealed::bitmap_empty(p.count)));
            Ok(used)
        }
        head => Err(format!(
            "epoch {epoch} needs the attestation of epoch {} to choose its sealed split; the ledger's head is {}",
            epoch - 1,
            head.map_or("empty".to_string(), |h| format!("epoch {}", h.epoch))
        )),
    }
}

/// How much of a Datanet's sealed evaluation pool is left (`datanet datanet sealed status`,
/// `datanet status`, the `datanet_sealed_epochs_left` metric).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedStatus {
    /// Whether this peer holds the pool (committee members need it to measure).
    pub held: bool,
    pub parts: Vec<SealedPartStatus>,
    /// Epochs of full splits of every slice left after the ledger's head.
    pub epochs_left: u32,
    /// Fewer than the manifest's `protocol.sealed_low_epochs` left: the founder should extend it.
    pub low: bool,
}

/// One slice of [`SealedStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPartStatus {
    pub slice: String,
    pub count: u32,
    pub remaining: u32,
}

/// The sealed pool's state after this peer's ledger head.
pub fn sealed_status(store: &Store, m: &Manifest) -> Result<SealedStatus, String> {
    let ledger = Ledger::open(store.db());
    let head = ledger.head(&m.id()).map_err(|e| e.to_string())?;
    let pool = store.sealed_pool(&m.id()).map_err(|e| e.to_string())?;
    // Every extension known here: the pool's (a member's), else the ledger head's reveal's.
    let extensions = match &pool {
        Some(p) => p.extensions.clone(),
        None => head
            .and_then(|h| ledger.attestation(&m.id(), h.epoch).ok().flatten())
            .and_then(|a| a.sealed)
            .map(|r| r.extensions)
            .unwrap_or_default(),
    };
    let parts = crate::sealed::parts_with(&m.eval.sealed, &extensions);
    let used = if parts.is_empty() {
        Vec::new()
    } else {
        sealed_used(store, m, head.map_or(FIRST_EPOCH, |h| h.epoch + 1), &parts)?
    };
    let remaining = crate::sealed::remaining(&parts, &used);
    let epochs_left = crate::sealed::epochs_left(&parts, &used, m.protocol.sealed_split);
    Ok(SealedStatus {
        held: pool.is_some(),
        parts: parts
            .iter()
            .zip(remaining)
            .map(|(p, remaining)| SealedPartStatus { slice: p.slice.clone(), count: p.count, remaining })
            .collect(),
        epochs_left,
        low: !parts.is_empty() && epochs_left < m.protocol.sealed_low_epochs,
    })
}

impl DaemonActor {
    /// Sets `datanet_sealed_pools_low`: joined Datanets whose sealed pool runs low.
    pub(in crate::daemon) fn refresh_sealed_gauge(&self) {
        let low = self
            .joined
            .values()
            .filter(|m| !m.eval.sealed.is_empty() && sealed_status(&self.store, m).is_ok_and(|s| s.low))
            .count();
        self.metrics.sealed_pools_low.store(low as u64, std::sync::atomic::Ordering::Relaxed);
    }
}
