//! One identity, three keys: the peer's 32-byte ed25519 seed gives the libp2p [`Keypair`] (and
//! so its [`PeerId`]) and the iroh [`iroh::SecretKey`] (and so its endpoint id). All three share
//! one public key, so a [`PeerKey`] names a peer on both network stacks.

use crate::identity::Identity;
use crate::ids::PeerKey;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

/// Why a key could not be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("peer key {0} is not a valid ed25519 public key")]
    BadKey(String),
    #[error("peer id {0} does not embed an ed25519 public key")]
    NotEd25519(String),
}

/// The libp2p keypair of an identity.
pub fn libp2p_keypair(id: &Identity) -> Keypair {
    let mut seed = id.seed(); // ed25519_from_bytes zeroizes its argument
    Keypair::ed25519_from_bytes(&mut seed).expect("any 32 bytes are an ed25519 secret key")
}

/// The iroh secret key of an identity.
pub fn iroh_secret_key(id: &Identity) -> iroh::SecretKey {
    iroh::SecretKey::from_bytes(&id.seed())
}

/// The libp2p peer id of a public key.
pub fn peer_id(key: &PeerKey) -> Result<PeerId, KeyError> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .map_err(|_| KeyError::BadKey(key.short()))?;
    Ok(PeerId::from_public_key(&PublicKey::from(pk)))
}

/// The public key inside a peer id (ed25519 peer ids embed their key).
pub fn peer_key(peer: &PeerId) -> Result<PeerKey, KeyError> {
    let digest = AsRef::<libp2p::multihash::Multihash<64>>::as_ref(peer).digest();
    let pk = PublicKey::try_decode_protobuf(digest).map_err(|_| KeyError::NotEd25519(peer.to_string()))?;
    let ed = pk.try_into_ed25519().map_err(|_| KeyError::NotEd25519(peer.to_string()))?;
    Ok(PeerKey(ed.to_bytes()))
}

/// The iroh endpoint id of a public key.
pub fn endpoint_id(key: &PeerKey) -> Result<iroh::EndpointId, KeyError> {
    iroh::PublicKey::from_bytes(key.as_bytes()).map_err(|_| KeyError::BadKey(key.short()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The seed's dalek, libp2p and iroh keys share one public key, and PeerId ↔ PeerKey round-trips.
    #[test]
    fn one_seed_three_keys() {
        let id = Identity::from_seed([9; 32]);
        let pk = id.public_key();
        let kp = libp2p_keypair(&id);
        assert_eq!(kp.public().try_into_ed25519().unwrap().to_bytes(), pk.0);
        assert_eq!(iroh_secret_key(&id).public().as_bytes(), &pk.0);
        let pid = PeerId::from_public_key(&kp.public());
        assert_eq!(peer_id(&pk).unwrap(), pid);
        assert_eq!(peer_key(&pid).unwrap(), pk);
        assert_eq!(endpoint_id(&pk).unwrap(), iroh_secret_key(&id).public());
    }

    // A random (non-ed25519) peer id is refused rather than misread.
    #[test]
    fn foreign_peer_id_refused() {
        let pid = PeerId::random();
        assert!(peer_key(&pid).is_err());
    }
}
