//! What travels on a Datanet's contributions topic.
//!
//! One canonical enum, size-limited before decoding: an announcement of a new contribution (the
//! publisher holds its chunks) or a signed "I hold it" from a peer that replicated one. Both are
//! signed by their author, so a forwarder can change nothing.

use crate::admission::SignedContribution;
use crate::codec::{Canonical, Signed};
use crate::ids::{ContributionId, DatanetId, PeerKey};
use serde::{Deserialize, Serialize};

/// A peer's statement that it holds every chunk of a contribution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub datanet: DatanetId,
    pub contribution: ContributionId,
    pub holder: PeerKey,
    pub issued_ms: u64,
}

impl Canonical for Holding {
    const TAG: &'static [u8] = b"datanet/holding/v1";
    const MAX_BYTES: usize = 128;
}

/// A message on `datanet/<id>/contributions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContributionsMessage {
    /// A contribution its publisher holds and serves.
    Announce(SignedContribution),
    /// A peer holds (and serves) a contribution.
    Holding(Signed<Holding>),
}

impl Canonical for ContributionsMessage {
    const TAG: &'static [u8] = b"datanet/contributions-message/v1";
    const MAX_BYTES: usize = 4096;
}

/// A message on `datanet/<id>/epochs`: one encoded epoch message and the sender's publish
/// counter. Gossipsub names a message by the hash of its bytes and drops a repeat, and signed
/// epoch messages are deterministic, so without the counter a rebroadcast (or the re-sent reveal
/// after a commit) would never leave the node. The receiver hands `message` to the epoch machine,
/// which deduplicates by those inner bytes — and treats a repeat as a sign that the sender lags
/// (it re-sends the attestation or the freeze certificate), as the simulator models it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochFrame {
    /// Strictly increasing per sending daemon (it starts from the wall clock in ms).
    pub sent: u64,
    /// A canonical [`crate::attribution::epoch::EpochMessage`].
    pub message: Vec<u8>,
}

impl Canonical for EpochFrame {
    const TAG: &'static [u8] = b"datanet/epoch-frame/v1";
    const MAX_BYTES: usize = crate::attribution::epoch::messages::EPOCH_MESSAGE_BYTES_MAX + 32;
}

impl EpochFrame {
    /// The frame bytes of `message` sent as the sender's `sent`-th publish.
    pub fn encode(sent: u64, message: &crate::attribution::epoch::EpochMessage) -> Vec<u8> {
        crate::codec::encode(&EpochFrame { sent, message: crate::codec::encode(message) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    proptest! {
        // Holding messages round-trip through the canonical codec and stay under the size limit.
        #[test]
        fn holding_round_trip(seed in any::<[u8; 32]>(), c in any::<[u8; 32]>(), t in any::<u64>()) {
            let id = crate::identity::Identity::from_seed(seed);
            let h = Holding { datanet: DatanetId(c), contribution: ContributionId(c), holder: id.public_key(), issued_ms: t };
            let m = ContributionsMessage::Holding(Signed::sign(h, &id.signing_key()));
            let bytes = codec::encode(&m);
            prop_assert!(bytes.len() <= ContributionsMessage::MAX_BYTES);
            prop_assert_eq!(codec::decode::<ContributionsMessage>(&bytes).unwrap(), m);
        }
    }

    proptest! {
        // Epoch frames round-trip exactly, differ whenever the counter differs (so gossipsub never takes a re-send for a repeat), and a frame of the largest epoch message fits the frame limit.
        #[test]
        fn epoch_frames_round_trip_and_differ(a in any::<u64>(), b in any::<u64>(), e in any::<u64>(), seed in any::<[u8; 32]>()) {
            use crate::attribution::epoch::{EpochMessage, messages::Witness};
            let key = crate::identity::Identity::from_seed(seed).signing_key();
            let w = Witness { datanet: DatanetId(seed), epoch: e, pending: 0, seen: vec![] };
            let m = EpochMessage::Witness(Box::new(Signed::sign(w, &key)));
            let fa = EpochFrame::encode(a, &m);
            let back: EpochFrame = codec::decode(&fa).unwrap();
            prop_assert_eq!(back.sent, a);
            prop_assert_eq!(&codec::decode::<EpochMessage>(&back.message).unwrap(), &m);
            prop_assert_eq!(a == b, fa == EpochFrame::encode(b, &m));
            let big = EpochFrame { sent: u64::MAX, message: vec![0; crate::attribution::epoch::messages::EPOCH_MESSAGE_BYTES_MAX] };
            prop_assert!(codec::encode(&big).len() <= EpochFrame::MAX_BYTES);
        }
    }
}
