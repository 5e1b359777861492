//! Contribution gossip: the checks an `Announce` passes before it is queued, and `Holding`
//! (who holds what): kept when known and fresh, published once this peer stores a contribution.

use super::DaemonActor;
use super::metrics::{DaemonMetrics, RejectReason};
use super::wire::{ContributionsMessage, Holding};
use crate::admission::{self, SignedContribution};
use crate::codec::{self, Signed};
use crate::ids::{ContributionId, DatanetId, PeerKey};
use crate::net::{self, TopicKind, keys};
use libp2p::PeerId;
use std::time::Instant;

/// Largest number of contributions whose holders are remembered.
const HOLDERS_MAX: usize = 100_000;
/// Holders remembered per contribution, at most (enough providers to fetch from; a flood of
/// `Holding` messages from fresh keys cannot grow one entry).
const HOLDERS_PER_CONTRIBUTION_MAX: usize = 64;
/// How far a `Holding` message's `issued_ms` may be from this peer's clock, either way.
const HOLDING_FRESH_MS: u64 = 10 * 60 * 1000;

/// Whether a `Holding` message is news worth keeping and forwarding: it must name a contribution
/// this peer knows (queued, being fetched or stored) and be fresh. Otherwise `Err(None)` — ignored
/// and not forwarded, so `Holding` for made-up ids or replayed old ones does not spread.
fn holding_news(known: bool, issued_ms: u64, now_ms: u64) -> Result<(), Option<RejectReason>> {
    if !known || issued_ms.abs_diff(now_ms) > HOLDING_FRESH_MS {
        return Err(None);
    }
    Ok(())
}

impl DaemonActor {
    /// Checks an announced contribution before anything is fetched. `Err(Some)` is a Reject.
    pub(super) fn check_contribution(
        &self,
        datanet: &DatanetId,
        c: &SignedContribution,
    ) -> Result<(), Option<RejectReason>> {
        if c.body.datanet != *datanet {
            return Err(Some(RejectReason::UnknownDatanet));
        }
        let Some(manifest) = self.joined.get(datanet) else {
            return Err(Some(RejectReason::UnknownDatanet));
        };
        if c.verify_by(&c.body.contributor).is_err() {
            return Err(Some(RejectReason::BadSignature));
        }
        admission::check_claims(manifest, &c.body).map_err(|_| Some(RejectReason::Limits))
    }

    /// One gossiped contributions message: `source` its author, `forwarder` the connected peer
    /// that delivered it — the one whose fair share of the fetch queue it takes and who is
    /// penalized when it cannot be served.
    pub(super) fn on_contributions_message(
        &mut self,
        datanet: DatanetId,
        source: Option<PeerId>,
        forwarder: PeerId,
        data: &[u8],
    ) -> Result<(), Option<RejectReason>> {
        if data.len() > self.cfg.net.gossip_message_bytes_max as usize {
            return Err(Some(RejectReason::Oversize));
        }
        let msg: ContributionsMessage = codec::decode(data).map_err(|e| match e {
            codec::DecodeError::TooLarge { .. } => Some(RejectReason::Oversize),
            _ => Some(RejectReason::Malformed),
        })?;
        match msg {
            ContributionsMessage::Announce(c) => {
                self.check_contribution(&datanet, &c)?;
                // Already stored here: valid but old news. Not forwarded again, so a replay after
                // gossipsub's duplicate window does not spread across the network once more.
                if matches!(self.store.contribution_meta(&c.body.id()), Ok(Some(_))) {
                    return Err(None);
                }
                DaemonMetrics::inc(&self.metrics.announces_accepted);
                let mut providers: Vec<PeerKey> = source.and_then(|p| keys::peer_key(&p).ok()).into_iter().collect();
                // The contributor holds it too: a peer that re-publishes a captured announcement
                // first must not become the only place it is fetched from.
                if !providers.contains(&c.body.contributor) {
                    providers.push(c.body.contributor);
                }
                self.enqueue(c, providers, Some(forwarder));
                Ok(())
            }
            ContributionsMessage::Holding(h) => {
                if h.body.datanet != datanet || !self.joined.contains_key(&datanet) {
                    return Err(Some(RejectReason::UnknownDatanet));
                }
                let id = h.body.contribution;
                let known = self.pending.contains_key(&id)
                    || self.in_flight.contains(&id)
                    || matches!(self.store.contribution_meta(&id), Ok(Some(_)));
                holding_news(known, h.body.issued_ms, net::now_ms())?;
                if h.verify_by(&h.body.holder).is_err() {
                    return Err(Some(RejectReason::BadSignature));
                }
                self.add_holder(id, h.body.holder);
                Ok(())
            }
        }
    }

    fn add_holder(&mut self, id: ContributionId, holder: PeerKey) {
        // Bounded without forgetting what is known: a full table takes no new contribution, a
        // contribution's holder set no more than HOLDERS_PER_CONTRIBUTION_MAX keys (first come).
        if self.holders.len() >= HOLDERS_MAX && !self.holders.contains_key(&id) {
            return;
        }
        let set = self.holders.entry(id).or_default();
        if set.len() >= HOLDERS_PER_CONTRIBUTION_MAX && !set.contains(&holder) {
            return;
        }
        set.insert(holder);
        if let Some(p) = self.pending.get_mut(&id) {
            if !p.providers.contains(&holder) {
                p.providers.push(holder);
            }
            p.next_try = Instant::now();
        }
    }

    pub(super) async fn publish_holding(&mut self, datanet: DatanetId, id: ContributionId) {
        let me = self.identity.public_key();
        self.holders.entry(id).or_default().insert(me);
        let h = Holding { datanet, contribution: id, holder: me, issued_ms: net::now_ms() };
        let msg = codec::encode(&ContributionsMessage::Holding(Signed::sign(h, &self.identity.signing_key())));
        if let Err(e) = self.net.publish(datanet, TopicKind::Contributions, msg).await {
            tracing::debug!(target: "datanet::daemon", error = %e, "holding not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A `Holding` is kept and forwarded only for a contribution this peer knows and only when
    // fresh; made-up ids and replays are ignored (not rejected: an honest peer may be ahead).
    #[test]
    fn holding_must_be_known_and_fresh() {
        let now = 1_000_000_000;
        assert_eq!(holding_news(true, now - 1_000, now), Ok(()));
        assert_eq!(holding_news(true, now + HOLDING_FRESH_MS, now), Ok(()));
        assert_eq!(holding_news(false, now, now), Err(None));
        assert_eq!(holding_news(true, now - HOLDING_FRESH_MS - 1, now), Err(None));
        assert_eq!(holding_news(true, now + HOLDING_FRESH_MS + 1, now), Err(None));
    }
}
