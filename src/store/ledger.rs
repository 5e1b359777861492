//! The reward ledger: per Datanet, the hash chain of attestations and each contributor's
//! cumulative credit and rewards, in sled (and, through [`append_and_store_blob`], as blobs).
//!
//! [`Ledger::append`] accepts an attestation only when it extends the chain (its previous
//! attestation hash is the head's hash, its epoch is higher) and writes the attestation, the new
//! head, the cumulative totals and the reporters' lost standing in one transaction: a crash leaves
//! all of it or none. Appending the same attestation again is a no-op. The ledger trusts its
//! caller to have verified the certificates (the epoch machine does, or
//! [`crate::attribution::epoch::Attestation::verify`]). Evidence and the epoch machine's snapshots
//! are kept here too, keyed by Datanet.

use crate::attribution::epoch::{Attestation, Evidence, Snapshot};
use crate::codec::{self, DecodeError};
use crate::ids::{BlobHash, DatanetId, PeerKey};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

const ATTESTATIONS: &str = "ledger_attestations";
const HEADS: &str = "ledger_heads";
const TOTALS: &str = "ledger_totals";
const STANDING: &str = "ledger_standing";
const EVIDENCE: &str = "ledger_evidence";
const SNAPSHOTS: &str = "epoch_snapshots";

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error("attestation for epoch {epoch} does not extend the chain: it names previous {got}, the head is {want}")]
    Chain { epoch: u64, got: String, want: String },
    #[error("attestation for epoch {epoch} is not after the head's epoch {head}")]
    EpochOrder { epoch: u64, head: u64 },
    #[error("stored {what} is unreadable: {source}")]
    Decode { what: &'static str, source: DecodeError },
    #[error("blob store: {0}")]
    Blob(String),
}

/// A contributor's totals over every attested epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContributorTotal {
    pub contributor: PeerKey,
    pub credit: u128,
    pub reward: u128,
    pub epochs: u32,
}

/// A Datanet's ledger as `datanet rewards` shows it (and the daemon's API serves it): the head,
/// every contributor's totals (u128 as decimal strings), and reporters who lost standing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RewardsReport {
    pub datanet: String,
    pub head_epoch: Option<u64>,
    pub head_hash: Option<String>,
    pub totals: Vec<TotalRow>,
    pub standing: Vec<StandingRow>,
}

/// One contributor's line of a [`RewardsReport`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TotalRow {
    pub contributor: String,
    pub credit: String,
    pub reward: String,
    pub epochs: u32,
}

/// A reporter flagged far from the median, and how often.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StandingRow {
    pub reporter: String,
    pub flagged: u64,
}

/// The chain head of a Datanet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub epoch: u64,
    pub hash: [u8; 32],
}

/// Whether an append changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    New,
    AlreadyPresent,
}

/// The ledger trees of one sled database.
#[derive(Clone, Debug)]
pub struct Ledger {
    db: sled::Db,
}

fn key2(d: &DatanetId, rest: &[u8]) -> Vec<u8> {
    let mut k = d.0.to_vec();
    k.extend_from_slice(rest);
    k
}

fn encode_total(t: &ContributorTotal) -> Vec<u8> {
    let mut v = Vec::with_capacity(36);
    v.extend_from_slice(&t.credit.to_le_bytes());
    v.extend_from_slice(&t.reward.to_le_bytes());
    v.extend_from_slice(&t.epochs.to_le_bytes());
    v
}

fn decode_total(contributor: PeerKey, b: &[u8]) -> Option<ContributorTotal> {
    if b.len() != 36 {
        return None;
    }
    Some(ContributorTotal {
        contributor,
        credit: u128::from_le_bytes(b[0..16].try_into().ok()?),
        reward: u128::from_le_bytes(b[16..32].try_into().ok()?),
        epochs: u32::from_le_bytes(b[32..36].try_into().ok()?),
    })
}

impl Ledger {
    /// The ledger over `db` (the store's database: `Store::db()`).
    pub fn open(db: &sled::Db) -> Self {
        Ledger { db: db.clone() }
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, LedgerError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The chain head of `datanet`, if any epoch was attested.
    pub fn head(&self, datanet: &DatanetId) -> Result<Option<Head>, LedgerError> {
        Ok(self.tree(HEADS)?.get(datanet.0)?.and_then(|v| {
            (v.len() == 40).then(|| Head {
                epoch: u64::from_le_bytes(v[0..8].try_into().expect("8 bytes")),
                hash: v[8..40].try_into().expect("32 bytes"),
            })
        }))
    }

    /// Appends `att` if it extends the chain; writes totals and standing in the same transaction.
    pub fn append(&self, att: &Attestation, standing_lost: &[(PeerKey, u32)]) -> Result<Appended, LedgerError> {
        let h = &att.score.header;
        let d = h.datanet;
        let (atts, heads, totals, standing) =
            (self.tree(ATTESTATIONS)?, self.tree(HEADS)?, self.tree(TOTALS)?, self.tree(STANDING)?);
        let bytes = codec::encode(att);
        let hash = att.hash();
        let r = (&atts, &heads, &totals, &standing).transaction(|(atts, heads, totals, standing)| {
            let akey = key2(&d, &h.epoch.to_be_bytes());
            if let Some(existing) = atts.get(&akey)? {
                if existing.as_ref() == bytes.as_slice() {
                    return Ok(Appended::AlreadyPresent);
                }
            }
            let (head_epoch, head_hash) = match heads.get(d.0)? {
                Some(v) if v.len() == 40 => {
                    (Some(u64::from_le_bytes(v[0..8].try_into().expect("8"))), v[8..40].to_vec())
                }
                _ => (None, vec![0u8; 32]),
            };
            if let Some(e) = head_epoch {
                if h.epoch <= e {
                    return Err(ConflictableTransactionError::Abort(LedgerError::EpochOrder {
                        epoch: h.epoch,
                        head: e,
                    }));
                }
            }
            // The first attested epoch may chain to any earlier history (e.g. a ledger started late).
            if head_epoch.is_some() && h.prev_attestation.as_slice() != head_hash.as_slice() {
                return Err(ConflictableTransactionError::Abort(LedgerError::Chain {
                    epoch: h.epoch,
                    got: hex::encode(h.prev_attestation),
                    want: hex::encode(&head_hash),
                }));
            }
            atts.insert(akey, bytes.as_slice())?;
            let mut head = h.epoch.to_le_bytes().to_vec();
            head.extend_from_slice(&hash);
            heads.insert(&d.0, head)?;
            for leaf in &att.leaves {
                let k = key2(&d, leaf.contributor.as_bytes());
                let mut t = totals
                    .get(&k)?
                    .and_then(|v| decode_total(leaf.contributor, &v))
                    .unwrap_or(ContributorTotal { contributor: leaf.contributor, credit: 0, reward: 0, epochs: 0 });
                t.credit += leaf.credit as u128;
                t.reward += leaf.reward as u128;
                t.epochs += 1;
                totals.insert(k, encode_total(&t))?;
            }
            for (k, lost) in standing_lost {
                let mut key = key2(&d, k.as_bytes());
                key.extend_from_slice(&h.epoch.to_be_bytes());
                standing.insert(key, &lost.to_le_bytes())?;
            }
            Ok(Appended::New)
        });
        match r {
            Ok(a) => Ok(a),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// The attestation of one epoch.
    pub fn attestation(&self, datanet: &DatanetId, epoch: u64) -> Result<Option<Attestation>, LedgerError> {
        match self.tree(ATTESTATIONS)?.get(key2(datanet, &epoch.to_be_bytes()))? {
            None => Ok(None),
            Some(v) => {
                codec::decode(&v).map(Some).map_err(|source| LedgerError::Decode { what: "attestation", source })
            }
        }
    }

    /// Every attestation of `datanet`, oldest first.
    pub fn attestations(&self, datanet: &DatanetId) -> Result<Vec<Attestation>, LedgerError> {
        self.tree(ATTESTATIONS)?
            .scan_prefix(datanet.0)
            .map(|r| {
                let (_, v) = r?;
                codec::decode(&v).map_err(|source| LedgerError::Decode { what: "attestation", source })
            })
            .collect()
    }

    /// How many attested epochs of `datanet` this ledger holds (keys counted, nothing decoded).
    pub fn attested_count(&self, datanet: &DatanetId) -> Result<usize, LedgerError> {
        let mut n = 0;
        for r in self.tree(ATTESTATIONS)?.scan_prefix(datanet.0).keys() {
            r?;
            n += 1;
        }
        Ok(n)
    }

    /// One contributor's cumulative credit and reward, if the ledger paid it anything.
    pub fn total(&self, datanet: &DatanetId, contributor: &PeerKey) -> Result<Option<ContributorTotal>, LedgerError> {
        Ok(self.tree(TOTALS)?.get(key2(datanet, contributor.as_bytes()))?.and_then(|v| decode_total(*contributor, &v)))
    }

    /// Cumulative credit and rewards per contributor, sorted by key.
    pub fn totals(&self, datanet: &DatanetId) -> Result<Vec<ContributorTotal>, LedgerError> {
        let mut out = Vec::new();
        for r in self.tree(TOTALS)?.scan_prefix(datanet.0) {
            let (k, v) = r?;
            let key = PeerKey(k[32..64].try_into().map_err(|_| LedgerError::Decode {
                what: "ledger total key",
                source: DecodeError::Malformed { what: "key", reason: "short".into() },
            })?);
            if let Some(t) = decode_total(key, &v) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The whole [`RewardsReport`] of a Datanet.
    pub fn report(&self, datanet: &DatanetId) -> Result<RewardsReport, LedgerError> {
        let head = self.head(datanet)?;
        Ok(RewardsReport {
            datanet: datanet.to_hex(),
            head_epoch: head.map(|h| h.epoch),
            head_hash: head.map(|h| hex::encode(h.hash)),
            totals: self
                .totals(datanet)?
                .into_iter()
                .map(|t| TotalRow {
                    contributor: t.contributor.to_hex(),
                    credit: t.credit.to_string(),
                    reward: t.reward.to_string(),
                    epochs: t.epochs,
                })
                .collect(),
            standing: self
                .standing(datanet)?
                .into_iter()
                .map(|(k, n)| StandingRow { reporter: k.to_hex(), flagged: n })
                .collect(),
        })
    }

    /// Flagged reports per reporter summed over epochs (lost standing), sorted by key.
    pub fn standing(&self, datanet: &DatanetId) -> Result<Vec<(PeerKey, u64)>, LedgerError> {
        let mut m: std::collections::BTreeMap<PeerKey, u64> = Default::default();
        for r in self.tree(STANDING)?.scan_prefix(datanet.0) {
            let (k, v) = r?;
            if k.len() == 72 && v.len() == 4 {
                let key = PeerKey(k[32..64].try_into().expect("32 bytes"));
                *m.entry(key).or_default() += u32::from_le_bytes(v.as_ref().try_into().expect("4 bytes")) as u64;
            }
        }
        Ok(m.into_iter().collect())
    }

    /// Stores a piece of evidence (deduplicated by content).
    pub fn put_evidence(&self, datanet: &DatanetId, e: &Evidence) -> Result<(), LedgerError> {
        self.tree(EVIDENCE)?.insert(key2(datanet, &e.id()), codec::encode(e))?;
        Ok(())
    }

    /// All evidence stored for `datanet`.
    pub fn evidence(&self, datanet: &DatanetId) -> Result<Vec<Evidence>, LedgerError> {
        self.tree(EVIDENCE)?
            .scan_prefix(datanet.0)
            .map(|r| {
                let (_, v) = r?;
                codec::decode(&v).map_err(|source| LedgerError::Decode { what: "evidence", source })
            })
            .collect()
    }

    /// Persists the epoch machine's snapshot (call on `Action::Persist`, then flush before acting on).
    pub fn save_snapshot(&self, datanet: &DatanetId, epoch: u64, s: &Snapshot) -> Result<(), LedgerError> {
        self.tree(SNAPSHOTS)?.insert(key2(datanet, &epoch.to_be_bytes()), codec::encode(s))?;
        self.db.flush()?;
        Ok(())
    }

    /// The last persisted snapshot of an epoch, for `EpochMachine::restore`.
    pub fn snapshot(&self, datanet: &DatanetId, epoch: u64) -> Result<Option<Snapshot>, LedgerError> {
        match self.tree(SNAPSHOTS)?.get(key2(datanet, &epoch.to_be_bytes()))? {
            None => Ok(None),
            Some(v) => {
                codec::decode(&v).map(Some).map_err(|source| LedgerError::Decode { what: "epoch snapshot", source })
            }
        }
    }
}

/// Appends to the ledger and stores the attestation's canonical bytes as a blob; returns its hash.
pub async fn append_and_store_blob(
    store: &super::Store,
    att: &Attestation,
    standing_lost: &[(PeerKey, u32)],
) -> Result<(Appended, BlobHash), LedgerError> {
    let blob = store.put_blob(codec::encode(att)).await.map_err(|e| LedgerError::Blob(e.to_string()))?;
    let a = Ledger::open(store.db()).append(att, standing_lost)?;
    store.db().flush_async().await?;
    Ok((a, blob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::CreditLeaf;
    use crate::attribution::epoch::Certificate;
    use crate::attribution::epoch::messages::{CertHeader, Phase, VoteKind};
    use crate::ids::MerkleRoot;

    fn att(epoch: u64, prev: [u8; 32], credit: u64) -> Attestation {
        let h = CertHeader {
            datanet: DatanetId([1; 32]),
            epoch,
            phase: Phase::Score,
            view: 0,
            committee_root: MerkleRoot::default(),
            input_root: MerkleRoot([epoch as u8; 32]),
            report_set_root: MerkleRoot::default(),
            credit_root: MerkleRoot::default(),
            prev_attestation: prev,
        };
        let c = |phase| Certificate {
            kind: VoteKind::Commit,
            header: CertHeader { phase, ..h },
            signers: vec![],
            signatures: vec![],
        };
        Attestation {
            input: c(Phase::Freeze),
            score: c(Phase::Score),
            inputs: vec![],
            deferred: 0,
            reports: vec![],
            leaves: vec![CreditLeaf { contributor: PeerKey([7; 32]), credit, reward: credit * 2 }],
            sealed: None,
        }
    }

    // Attestations chain by hash; totals accumulate; a broken link or an old epoch is refused; re-appending is a no-op.
    #[test]
    fn chain_and_totals() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let l = Ledger::open(&db);
        let d = DatanetId([1; 32]);
        let a1 = att(1, [0; 32], 10);
        assert_eq!(l.append(&a1, &[(PeerKey([9; 32]), 2)]).unwrap(), Appended::New);
        assert_eq!(l.append(&a1, &[]).unwrap(), Appended::AlreadyPresent);
        let a2 = att(2, a1.hash(), 5);
        l.append(&a2, &[(PeerKey([9; 32]), 1)]).unwrap();
        assert!(matches!(l.append(&att(3, [5; 32], 1), &[]), Err(LedgerError::Chain { .. })));
        assert!(matches!(l.append(&att(2, a2.hash(), 1), &[]), Err(LedgerError::EpochOrder { .. })));
        let t = l.totals(&d).unwrap();
        assert_eq!(t, vec![ContributorTotal { contributor: PeerKey([7; 32]), credit: 15, reward: 30, epochs: 2 }]);
        assert_eq!(l.head(&d).unwrap().unwrap(), Head { epoch: 2, hash: a2.hash() });
        assert_eq!(l.attestations(&d).unwrap(), vec![a1, a2]);
        assert_eq!(l.standing(&d).unwrap(), vec![(PeerKey([9; 32]), 3)]);
    }
}
