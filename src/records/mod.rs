//! The format of a contribution, pure: what admission produces, the store keeps and peers
//! replicate (DESIGN.md §4).
//!
//! [`canonical`] validates a record against the Datanet's task and brings it to its one canonical
//! form and hash; [`neardup`] computes the near-duplicate keys (MinHash/LSH, quantized tabular)
//! every peer computes alike; [`pack`] cuts canonical records into ≤ 1 MiB JSONL chunks
//! ([`CHUNK_BYTES_MAX`]) with a HashSeq root and a Merkle root over record hashes, and [`unpack_chunk`] reads them
//! back, refusing any record not in canonical form; [`ContributionRecord`] is the signed statement
//! that commits to them. `admission` (which validates, signs and commits) and `store` (which
//! classifies and persists) both build on this room; it imports neither.

pub mod canonical;
pub mod neardup;

use crate::codec::{Canonical, Signed};
use crate::ids::{BlobHash, ContributionId, DatanetId, MerkleRoot, PeerKey, RecordHash};
use crate::manifest::{CHUNK_BYTES_MAX, TaskKind};
use crate::merkle;
pub use canonical::{CanonicalRecord, RecordError};
use serde::{Deserialize, Serialize};

/// The signed statement "this contributor added these records to this Datanet".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributionRecord {
    pub datanet: DatanetId,
    pub contributor: PeerKey,
    /// The contributor's clock when signing, in ms since the Unix epoch.
    pub created_ms: u64,
    /// Hash of the HashSeq of the contribution's chunks.
    pub root: BlobHash,
    /// Merkle root over the record hashes, in chunk order.
    pub records_root: MerkleRoot,
    pub record_count: u32,
    /// Canonical bytes of all records (JSONL, newlines included).
    pub byte_count: u64,
    pub chunk_count: u32,
}

impl Canonical for ContributionRecord {
    const TAG: &'static [u8] = b"datanet/contribution/v1";
    const MAX_BYTES: usize = 512;
}

/// A contribution record signed by its contributor.
pub type SignedContribution = Signed<ContributionRecord>;

impl ContributionRecord {
    /// The contribution id: BLAKE3 of the canonical record, tag included.
    pub fn id(&self) -> ContributionId {
        crate::codec::hash(self).into()
    }
}

/// A chunk line that is not a canonical record of the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {index} line {line}: {error}")]
pub struct ChunkError {
    /// The chunk's position in the contribution, from 0.
    pub index: usize,
    /// The line in the chunk, from 1.
    pub line: usize,
    pub error: String,
}

/// Records packed into chunks, with the roots a contribution record commits to.
#[derive(Debug, Clone)]
pub struct Packed {
    pub chunks: Vec<Vec<u8>>,
    pub chunk_hashes: Vec<BlobHash>,
    /// The HashSeq blob: the chunk hashes concatenated.
    pub hash_seq: Vec<u8>,
    pub root: BlobHash,
    pub records_root: MerkleRoot,
    pub byte_count: u64,
}

/// Packs canonical records into ≤ 1 MiB JSONL chunks (a record never spans two chunks).
pub fn pack(records: &[CanonicalRecord]) -> Packed {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for r in records {
        if !cur.is_empty() && cur.len() + r.bytes.len() + 1 > CHUNK_BYTES_MAX {
            chunks.push(std::mem::take(&mut cur));
        }
        cur.extend_from_slice(&r.bytes);
        cur.push(b'\n');
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    let chunk_hashes: Vec<BlobHash> = chunks.iter().map(|c| BlobHash::of(c)).collect();
    let hash_seq: Vec<u8> = chunk_hashes.iter().flat_map(|h| h.0).collect();
    let leaves: Vec<[u8; 32]> = records.iter().map(|r| r.hash.0).collect();
    Packed {
        root: BlobHash::of(&hash_seq),
        records_root: merkle::root(&leaves),
        byte_count: chunks.iter().map(|c| c.len() as u64).sum(),
        chunk_hashes,
        hash_seq,
        chunks,
    }
}

/// Reads canonical records back out of chunk bytes, checking each is canonical.
pub fn unpack_chunk(
    task: &TaskKind,
    rules_max: u32,
    index: usize,
    chunk: &[u8],
) -> Result<Vec<CanonicalRecord>, ChunkError> {
    let mut out = Vec::new();
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let err = |error: String| ChunkError { index, line: i + 1, error };
        let s = std::str::from_utf8(line).map_err(|_| err("not valid UTF-8".into()))?;
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| err(e.to_string()))?;
        let rec = canonical::canonicalize(task, v, rules_max).map_err(|e| err(e.to_string()))?;
        if rec.bytes != line {
            return Err(err("record is not in canonical form".into()));
        }
        out.push(rec);
    }
    Ok(out)
}

/// Hashes of a record list, in order.
pub fn record_hashes(records: &[CanonicalRecord]) -> Vec<RecordHash> {
    records.iter().map(|r| r.hash).collect()
}
