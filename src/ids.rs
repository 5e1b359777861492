//! Newtypes for the 32-byte identifiers the product passes around.
//!
//! Every id is a BLAKE3 hash (or, for [`PeerKey`], an ed25519 public key); ids print as lowercase
//! hex and parse back from it, so they can be typed on the command line and stored in TOML.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Error for an id given as text that is not 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected 64 hex digits, got {got:?}")]
pub struct ParseIdError {
    got: String,
}

pub(crate) fn parse_hex32(s: &str) -> Result<[u8; 32], ParseIdError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseIdError { got: s.chars().take(80).collect() })?;
    Ok(out)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hex, 64 digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex digits, for tables and logs.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s).map(Self)
            }
        }
        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }
    };
}

id_type!(
    /// BLAKE3 of a Datanet's canonical manifest.
    DatanetId
);
id_type!(
    /// BLAKE3 of a contribution's canonical body (tag included).
    ContributionId
);
id_type!(
    /// BLAKE3 of a record's canonical bytes.
    RecordHash
);
id_type!(
    /// BLAKE3 of a blob's bytes: the hash iroh-blobs uses.
    BlobHash
);
id_type!(
    /// A 32-byte Merkle root (see [`crate::merkle`]).
    MerkleRoot
);
id_type!(
    /// An ed25519 public key: a peer's, a contributor's or a committee member's identity.
    PeerKey
);

impl RecordHash {
    /// The hash of a record's canonical bytes.
    pub fn of(canonical: &[u8]) -> Self {
        blake3::hash(canonical).into()
    }
}

impl BlobHash {
    /// The hash of a blob's bytes.
    pub fn of(bytes: &[u8]) -> Self {
        blake3::hash(bytes).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ids print as 64 hex digits and parse back; garbage is refused.
    #[test]
    fn hex_round_trip_and_refusal() {
        let id = DatanetId([7u8; 32]);
        assert_eq!(id.to_hex().parse::<DatanetId>().unwrap(), id);
        assert!("xyz".parse::<DatanetId>().is_err());
        assert!("00".parse::<DatanetId>().is_err());
    }
}
