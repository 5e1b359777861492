//! The peer-record table: this peer's own signed record, and verifying and learning others' (a
//! full table takes a connected peer's record only, in place of a disconnected one's).

use super::{NetActor, NetEvent, PEER_STATE_MAX};
use crate::codec::Signed;
use crate::ids::PeerKey;
use crate::net::record::{PeerRecord, SignedPeerRecord, decode_peer_record};
use crate::net::{NetMetrics, keys, now_ms};
use libp2p::{Multiaddr, PeerId};

/// With the peer-record table full, the record to drop for a new one from `newcomer`: the
/// oldest-issued record of a disconnected peer (ties by key), and only when the newcomer is
/// connected. `None`: keep the table, ignore the newcomer.
/// The table is only walked for a connected newcomer, so a flood of relayed records costs a set
/// lookup each.
fn record_to_evict(
    issued: impl Iterator<Item = (PeerKey, u64)>,
    connected: &std::collections::HashSet<PeerKey>,
    newcomer: &PeerKey,
) -> Option<PeerKey> {
    if !connected.contains(newcomer) {
        return None;
    }
    issued.filter(|(k, _)| !connected.contains(k)).min_by_key(|&(k, t)| (t, k)).map(|(k, _)| k)
}

impl NetActor {
    pub(super) fn own_record(&mut self) -> SignedPeerRecord {
        let issued_ms = now_ms().max(self.last_record_ms + 1);
        self.last_record_ms = issued_ms;
        let mut p2p_addrs: Vec<String> = self.listen_addrs().iter().map(|a| a.to_string()).collect();
        p2p_addrs.truncate(crate::net::record::ADDRS_MAX);
        let body = PeerRecord {
            peer: self.identity.public_key(),
            iroh_addrs: self.blobs.socket_addrs(),
            p2p_addrs,
            issued_ms,
        };
        Signed::sign(body, &self.identity.signing_key())
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Verifies a peer record and learns it. `from` must be the record's peer when given.
    pub(super) fn learn_record(&mut self, bytes: &[u8], from: Option<PeerId>) -> Result<bool, String> {
        let rec = decode_peer_record(bytes).map_err(|e| e.to_string())?;
        if let Some(from) = from {
            let k = keys::peer_key(&from).map_err(|e| e.to_string())?;
            if k != rec.body.peer {
                return Err(format!("record of {} relayed as from {}", rec.body.peer.short(), k.short()));
            }
        }
        let key = rec.body.peer;
        if key == self.identity.public_key() {
            return Ok(false);
        }
        if self.records.get(&key).is_some_and(|old| old.body.issued_ms >= rec.body.issued_ms) {
            return Ok(false);
        }
        if self.records.len() >= PEER_STATE_MAX && !self.records.contains_key(&key) {
            // Full: only a connected peer's record gets in, in place of the oldest record of a
            // disconnected peer. Self-signed records of fresh keys relayed by someone else are
            // ignored (and not forwarded), so they cannot evict the providers already known.
            let connected: std::collections::HashSet<PeerKey> =
                self.connected.keys().filter_map(|p| keys::peer_key(p).ok()).collect();
            let issued = self.records.iter().map(|(k, r)| (*k, r.body.issued_ms));
            match record_to_evict(issued, &connected, &key) {
                Some(old) => {
                    self.records.remove(&old);
                    self.blobs.forget(&old);
                }
                None => return Ok(false),
            }
        }
        self.blobs.learn(&key, &rec.body.iroh_addrs);
        if let Ok(pid) = keys::peer_id(&key) {
            for a in &rec.body.p2p_addrs {
                if let Ok(m) = a.parse::<Multiaddr>() {
                    self.swarm.behaviour_mut().kad.add_address(&pid, m);
                }
            }
        }
        self.records.insert(key, rec);
        NetMetrics::inc(&self.metrics.peer_records_accepted);
        self.emit(NetEvent::PeerRecord { key });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A full peer-record table takes a connected peer's record in place of the oldest
    // disconnected one, and never a relayed record of a key nobody is connected to.
    #[test]
    fn full_record_table_keeps_known_providers() {
        let k = |i: u8| PeerKey([i; 32]);
        let issued = [(k(1), 50), (k(2), 10), (k(3), 10), (k(4), 5)];
        let connected: std::collections::HashSet<PeerKey> = [k(4), k(9)].into_iter().collect();
        assert_eq!(record_to_evict(issued.iter().copied(), &connected, &k(9)), Some(k(2)));
        assert_eq!(
            record_to_evict(issued.iter().copied(), &connected, &k(7)),
            None,
            "a fresh relayed key gets no room"
        );
        let all: std::collections::HashSet<PeerKey> = [k(1), k(2), k(3), k(4), k(9)].into_iter().collect();
        assert_eq!(record_to_evict(issued.iter().copied(), &all, &k(9)), None, "connected peers are never evicted");
    }
}
