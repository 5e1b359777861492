//! The catch-up protocol (`/datanet/catchup/1`, CBOR request-response): how a peer that was
//! offline learns what it missed, and how two peers exchange peer records on connect.
//!
//! When a peer sees another subscribe to a Datanet's contributions topic it asks it for an
//! inventory page (`Inventory { offset }`: contribution ids in the responder's local admission
//! order), then asks for the records it lacks (`Get`), and treats each one exactly as a gossip
//! announcement from that peer: verify, fetch the chunks with iroh-blobs, re-run admission,
//! store, announce holding. Pages are bounded by `net.catchup_batch_max`; the request and
//! response sizes are bounded by the codec.
//!
//! A peer whose ledger is behind (it was offline for some epochs, or joined late) asks for the
//! attestations after its head (`Attestations { from_epoch }`) and appends each one that verifies
//! against the manifest's committee and chains to its head — the same check as `datanet
//! attestation verify --prev`, so nobody has to be trusted for it.
//!
//! Signed values travel as their canonical bytes and are decoded with their size limits by the
//! receiver; CBOR only frames them.

use crate::ids::{ContributionId, DatanetId};
use serde::{Deserialize, Serialize};

/// Protocol name.
pub const PROTOCOL: &str = "/datanet/catchup/1";
/// Largest request accepted (bytes).
pub const REQUEST_BYTES_MAX: u64 = 64 * 1024;
/// Largest response accepted (bytes).
pub const RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A catch-up question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatchupRequest {
    /// "Here is my signed peer record; send me yours." Answered by the net room itself.
    Hello { record: Vec<u8> },
    /// Contribution ids of `datanet` at positions `offset..offset+limit` of the responder's
    /// local admission order.
    Inventory { datanet: DatanetId, offset: u64, limit: u32 },
    /// Signed contribution records by id.
    Get { datanet: DatanetId, ids: Vec<ContributionId> },
    /// The attestations of epochs `from_epoch..from_epoch+limit` in the responder's ledger.
    Attestations { datanet: DatanetId, from_epoch: u64, limit: u32 },
}

/// A catch-up answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatchupResponse {
    Hello {
        record: Vec<u8>,
    },
    /// Ids from `offset`; `total` is how many the responder holds.
    Inventory {
        ids: Vec<ContributionId>,
        total: u64,
    },
    /// Canonical bytes of signed contribution records (unknown ids are left out).
    Contributions {
        records: Vec<Vec<u8>>,
    },
    /// Canonical bytes of consecutive attestations from the asked epoch (fewer than asked: the
    /// responder's ledger ends there, or the response size bound was reached).
    Attestations {
        items: Vec<Vec<u8>>,
    },
    /// The responder will not answer (unknown Datanet, too large a request).
    Refused {
        reason: String,
    },
}
