//! Signed peer records: how a peer tells others where to reach it.
//!
//! A record names the peer's key, its iroh socket addresses (blob transfer) and its libp2p
//! multiaddrs, with the time it was issued; the peer signs it with its identity. Records travel
//! on the `datanet/peers/1` gossip topic and in the catch-up protocol's hello; a newer record
//! from the same peer replaces an older one. The iroh addresses are fed to the endpoint's
//! address lookup, so a blob fetch can dial a peer by key alone.

use crate::codec::{Canonical, Signed};
use crate::ids::PeerKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Most addresses of each kind in one record.
pub const ADDRS_MAX: usize = 16;

/// Where a peer can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub peer: PeerKey,
    /// iroh endpoint socket addresses.
    pub iroh_addrs: Vec<SocketAddr>,
    /// libp2p listen multiaddrs (without `/p2p/…`).
    pub p2p_addrs: Vec<String>,
    /// Milliseconds since the Unix epoch when the peer signed this record.
    pub issued_ms: u64,
}

impl Canonical for PeerRecord {
    const TAG: &'static [u8] = b"datanet/peer-record/v1";
    const MAX_BYTES: usize = 4096;
}

/// A record signed by the peer it describes.
pub type SignedPeerRecord = Signed<PeerRecord>;

/// Why a peer record was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerRecordError {
    #[error(transparent)]
    Verify(#[from] crate::codec::VerifyError),
    #[error("record for peer {peer} is signed by {signer}")]
    NotSelfSigned { peer: String, signer: String },
    #[error("record lists {0} addresses; at most {ADDRS_MAX} of each kind are allowed")]
    TooManyAddrs(usize),
    #[error("record address {0:?} is not a multiaddr")]
    BadMultiaddr(String),
}

/// Decodes (size first), checks the signature and that the peer signed its own record.
pub fn decode_peer_record(bytes: &[u8]) -> Result<SignedPeerRecord, PeerRecordError> {
    let r = SignedPeerRecord::decode_verified(bytes)?;
    if r.signer != r.body.peer {
        return Err(PeerRecordError::NotSelfSigned { peer: r.body.peer.short(), signer: r.signer.short() });
    }
    let n = r.body.iroh_addrs.len().max(r.body.p2p_addrs.len());
    if n > ADDRS_MAX {
        return Err(PeerRecordError::TooManyAddrs(n));
    }
    for a in &r.body.p2p_addrs {
        a.parse::<libp2p::Multiaddr>().map_err(|_| PeerRecordError::BadMultiaddr(a.clone()))?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn record(id: &Identity) -> PeerRecord {
        PeerRecord {
            peer: id.public_key(),
            iroh_addrs: vec!["127.0.0.1:4000".parse().unwrap()],
            p2p_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            issued_ms: 1,
        }
    }

    // A self-signed record round-trips; one signed by another key is refused.
    #[test]
    fn self_signed_only() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let good = Signed::sign(record(&a), &a.signing_key());
        assert_eq!(decode_peer_record(&good.to_bytes()).unwrap(), good);
        let forged = Signed::sign(record(&a), &b.signing_key());
        assert!(matches!(decode_peer_record(&forged.to_bytes()), Err(PeerRecordError::NotSelfSigned { .. })));
    }

    // Too many addresses, or a malformed multiaddr, are refused.
    #[test]
    fn bounded_and_well_formed() {
        let a = Identity::from_seed([1; 32]);
        let mut r = record(&a);
        r.p2p_addrs = vec!["/ip4/127.0.0.1/tcp/1".into(); ADDRS_MAX + 1];
        assert!(decode_peer_record(&Signed::sign(r, &a.signing_key()).to_bytes()).is_err());
        let mut r = record(&a);
        r.p2p_addrs = vec!["nonsense".into()];
        assert!(decode_peer_record(&Signed::sign(r, &a.signing_key()).to_bytes()).is_err());
    }
}
