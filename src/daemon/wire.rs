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
}
