//! Quorum certificates and attestations, and their offline verification.
//!
//! A [`Certificate`] is a header, a signer bitmap over the committee (in manifest order) and one
//! signature per set bit. [`Certificate::verify`] checks the bitmap, the quorum weight and every
//! signature with `verify_strict` ([`crate::codec::verify_bytes`], the one rule), naming the bad
//! signer. An [`Attestation`] is what an epoch leaves
//! behind: the input (freeze) certificate, the score certificate, the certified report set and the
//! credit leaves; [`Attestation::verify`] needs only the manifest.

use super::messages::{COMMITTEE_MAX, CertHeader, EPOCH_MESSAGE_BYTES_MAX, HEADER_BYTES, Phase, Sig, VoteKind};
use crate::attribution::{CreditLeaf, Report, credit_root};
use crate::codec::{self, Canonical};
use crate::ids::{MerkleRoot, PeerKey};
use crate::manifest::{Manifest, quorum_for};
use serde::{Deserialize, Serialize};

/// Signatures of at least a quorum of the committee on one header, in one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub kind: VoteKind,
    pub header: CertHeader,
    /// Bit i (byte i/8, bit i%8) set when member i signed; exactly ceil(n/8) bytes.
    pub signers: Vec<u8>,
    /// One signature per set bit, in member order.
    pub signatures: Vec<Sig>,
}

impl Canonical for Certificate {
    const TAG: &'static [u8] = b"datanet/epoch/certificate/v1";
    const MAX_BYTES: usize = 2 + HEADER_BYTES + 3 + COMMITTEE_MAX / 8 + 3 + COMMITTEE_MAX * 65;
}

/// Why a certificate does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyCertificateError {
    #[error("certificate is a {got:?}-round certificate, expected {want:?}")]
    Kind { got: VoteKind, want: VoteKind },
    #[error("certificate is for Datanet {got}, the manifest is {want}")]
    Datanet { got: String, want: String },
    #[error("certificate names committee root {got}, the manifest's committee has root {want}")]
    Committee { got: String, want: String },
    #[error("committee has {0} members; at most {COMMITTEE_MAX} are supported")]
    CommitteeSize(usize),
    #[error("signer bitmap has {got} bytes, a committee of {members} needs {want}")]
    BitmapLength { got: usize, want: usize, members: usize },
    #[error("signer bitmap sets bit {index}, outside a committee of {members}")]
    BitOutsideCommittee { index: usize, members: usize },
    #[error("bitmap names {signers} signers but the certificate carries {signatures} signatures")]
    SignatureCount { signers: usize, signatures: usize },
    #[error("only {got} of {members} members signed; the quorum is {need}")]
    NoQuorum { got: usize, need: usize, members: usize },
    #[error("member {index} ({signer}) has a key that is not a valid ed25519 point")]
    BadKey { index: usize, signer: String },
    #[error("signature of member {index} ({signer}) does not verify")]
    BadSignature { index: usize, signer: String },
    #[error("certificate is for phase {got:?}, expected {want:?}")]
    Phase { got: Phase, want: Phase },
}

/// The committee root: the Merkle root over the member keys in manifest order.
pub fn committee_root(members: &[PeerKey]) -> MerkleRoot {
    let leaves: Vec<[u8; 32]> = members.iter().map(|k| k.0).collect();
    crate::merkle::root(&leaves)
}

impl Certificate {
    /// Builds a certificate from `(member index, signature)` pairs (any order, duplicates ignored).
    pub fn assemble(kind: VoteKind, header: CertHeader, members: usize, sigs: &[(usize, Sig)]) -> Self {
        let mut sorted: Vec<(usize, Sig)> = sigs.iter().copied().filter(|(i, _)| *i < members).collect();
        sorted.sort_by_key(|(i, _)| *i);
        sorted.dedup_by_key(|(i, _)| *i);
        let mut signers = vec![0u8; members.div_ceil(8)];
        for (i, _) in &sorted {
            signers[i / 8] |= 1 << (i % 8);
        }
        Certificate { kind, header, signers, signatures: sorted.into_iter().map(|(_, s)| s).collect() }
    }

    /// Member indexes whose bit is set (within the bitmap, unchecked against the committee).
    pub fn signer_indexes(&self) -> Vec<usize> {
        (0..self.signers.len() * 8).filter(|i| self.signers[i / 8] >> (i % 8) & 1 == 1).collect()
    }

    /// The keys that signed, given the committee.
    pub fn signer_keys(&self, members: &[PeerKey]) -> Vec<PeerKey> {
        self.signer_indexes().into_iter().filter_map(|i| members.get(i).copied()).collect()
    }

    /// Checks the bitmap, quorum weight, committee root and every signature against `members`,
    /// each with [`codec::verify_bytes`] (`verify_strict`): the one rule every signature of the
    /// project is checked by. No batch fast path — batch ed25519 accepts signatures that
    /// `verify_strict` refuses, so a certificate would verify differently here and elsewhere.
    pub fn verify(&self, members: &[PeerKey]) -> Result<(), VerifyCertificateError> {
        let n = members.len();
        if n > COMMITTEE_MAX {
            return Err(VerifyCertificateError::CommitteeSize(n));
        }
        let want_root = committee_root(members);
        if self.header.committee_root != want_root {
            return Err(VerifyCertificateError::Committee {
                got: self.header.committee_root.to_hex(),
                want: want_root.to_hex(),
            });
        }
        if self.signers.len() != n.div_ceil(8) {
            return Err(VerifyCertificateError::BitmapLength {
                got: self.signers.len(),
                want: n.div_ceil(8),
                members: n,
            });
        }
        let idx = self.signer_indexes();
        if let Some(&index) = idx.iter().find(|&&i| i >= n) {
            return Err(VerifyCertificateError::BitOutsideCommittee { index, members: n });
        }
        if idx.len() != self.signatures.len() {
            return Err(VerifyCertificateError::SignatureCount {
                signers: idx.len(),
                signatures: self.signatures.len(),
            });
        }
        let need = quorum_for(n);
        if idx.len() < need {
            return Err(VerifyCertificateError::NoQuorum { got: idx.len(), need, members: n });
        }
        let header = self.header.to_bytes();
        for (sig, &i) in self.signatures.iter().zip(&idx) {
            codec::verify_bytes(&members[i], self.kind.tag(), &header, &sig.0).map_err(|e| match e {
                codec::VerifyError::BadKey => VerifyCertificateError::BadKey { index: i, signer: members[i].short() },
                _ => VerifyCertificateError::BadSignature { index: i, signer: members[i].short() },
            })?;
        }
        Ok(())
    }
}

/// The offline proof of an epoch's credit: both certificates, the certified report set and the
/// credit leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// Commit-round certificate of the freeze phase.
    pub input: Certificate,
    /// Commit-round certificate of the score phase.
    pub score: Certificate,
    /// The frozen input set: each contribution with its witnessed priority, sorted by id (what
    /// the input root commits to, with `deferred`). Later epochs keep these priorities.
    pub inputs: Vec<(crate::ids::ContributionId, u64)>,
    /// Prioritized contributions that did not fit this epoch's input set (carried over).
    pub deferred: u32,
    /// The certified reports, sorted by (job, reporter).
    pub reports: Vec<Report>,
    /// One leaf per contributor, sorted by key.
    pub leaves: Vec<CreditLeaf>,
    /// The sealed evaluation split this epoch measured on, revealed (records, salts, Merkle
    /// paths, the revealed-index bitmaps): present exactly when the manifest has a sealed pool.
    /// Bound to the score certificate through the report set root, and checked against the
    /// manifest's commitment and the epoch seed ([`crate::sealed::verify_reveal`]).
    pub sealed: Option<crate::sealed::Reveal>,
}

impl Canonical for Attestation {
    const TAG: &'static [u8] = b"datanet/epoch/attestation/v2";
    const MAX_BYTES: usize = EPOCH_MESSAGE_BYTES_MAX - 256;
}

/// Why an attestation does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyAttestationError {
    #[error("input certificate: {0}")]
    Input(VerifyCertificateError),
    #[error("score certificate: {0}")]
    Score(VerifyCertificateError),
    #[error("input and score certificates disagree on {0}")]
    Mismatch(&'static str),
    #[error("report set hashes to {got}, the certificate says {want}")]
    ReportSet { got: String, want: String },
    #[error("credit leaves hash to {got}, the certificate says {want}")]
    CreditRoot { got: String, want: String },
    #[error("input items hash to {got}, the certificate says {want}")]
    InputRoot { got: String, want: String },
    #[error("credit leaves are not sorted by contributor or repeat one")]
    LeavesOrder,
    #[error("previous attestation hash is {got}, the previous attestation given hashes to {want}")]
    Chain { got: String, want: String },
    #[error("epoch {got} does not follow the previous attestation's epoch {prev}")]
    EpochOrder { got: u64, prev: u64 },
    #[error("sealed evaluation: {0}")]
    Sealed(&'static str),
    #[error("sealed evaluation reveal: {0}")]
    Reveal(#[from] crate::sealed::RevealError),
}

/// The report set root: what the epoch measured. The Merkle root over `H(job ‖ reporter ‖ utility)`
/// in (job, reporter) order; with a sealed evaluation split, bound to the split's reveal too
/// (`H(root ‖ H(reveal))`), so the score certificate's signers vouch for the records the
/// utilities were measured on and an attestation cannot carry another reveal.
pub fn report_set_root(reports: &[Report], sealed: Option<&crate::sealed::Reveal>) -> MerkleRoot {
    let root = reports_root(reports);
    match sealed {
        None => root,
        Some(r) => {
            let mut h = blake3::Hasher::new_derive_key("datanet/epoch/report-set-sealed/v1");
            h.update(root.as_bytes());
            h.update(codec::hash(r).as_bytes());
            MerkleRoot(*h.finalize().as_bytes())
        }
    }
}

fn reports_root(reports: &[Report]) -> MerkleRoot {
    let mut sorted: Vec<&Report> = reports.iter().collect();
    sorted.sort_by_key(|r| (r.job, r.reporter, r.utility));
    let leaves: Vec<[u8; 32]> = sorted
        .iter()
        .map(|r| {
            let mut h = blake3::Hasher::new_derive_key("datanet/epoch/report-leaf/v1");
            h.update(&r.job.to_le_bytes());
            h.update(r.reporter.as_bytes());
            h.update(&r.utility.to_le_bytes());
            *h.finalize().as_bytes()
        })
        .collect();
    crate::merkle::root(&leaves)
}

impl Attestation {
    /// The hash the next epoch's header chains to.
    pub fn hash(&self) -> [u8; 32] {
        self.score.header.hash()
    }

    /// Checks the attestation against a pinned manifest, and its chain link when `prev` is given.
    pub fn verify(&self, manifest: &Manifest, prev: Option<&Attestation>) -> Result<(), VerifyAttestationError> {
        use VerifyAttestationError as E;
        let members = &manifest.committee.members;
        let id = manifest.id();
        for (cert, phase, wrap) in [
            (&self.input, Phase::Freeze, E::Input as fn(VerifyCertificateError) -> E),
            (&self.score, Phase::Score, E::Score as fn(VerifyCertificateError) -> E),
        ] {
            if cert.kind != VoteKind::Commit {
                return Err(wrap(VerifyCertificateError::Kind { got: cert.kind, want: VoteKind::Commit }));
            }
            if cert.header.phase != phase {
                return Err(wrap(VerifyCertificateError::Phase { got: cert.header.phase, want: phase }));
            }
            if cert.header.datanet != id {
                return Err(wrap(VerifyCertificateError::Datanet {
                    got: cert.header.datanet.to_hex(),
                    want: id.to_hex(),
                }));
            }
            cert.verify(members).map_err(wrap)?;
        }
        let (i, s) = (&self.input.header, &self.score.header);
        if i.epoch != s.epoch {
            return Err(E::Mismatch("epoch"));
        }
        if i.input_root != s.input_root {
            return Err(E::Mismatch("input root"));
        }
        if i.prev_attestation != s.prev_attestation {
            return Err(E::Mismatch("previous attestation"));
        }
        let got = super::freeze::input_root(&self.inputs, self.deferred);
        if got != i.input_root || self.inputs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(E::InputRoot { got: got.to_hex(), want: i.input_root.to_hex() });
        }
        let got = report_set_root(&self.reports, self.sealed.as_ref());
        if got != s.report_set_root {
            return Err(E::ReportSet { got: got.to_hex(), want: s.report_set_root.to_hex() });
        }
        if self.leaves.windows(2).any(|w| w[0].contributor >= w[1].contributor) {
            return Err(E::LeavesOrder);
        }
        let got = credit_root(&self.leaves);
        if got != s.credit_root {
            return Err(E::CreditRoot { got: got.to_hex(), want: s.credit_root.to_hex() });
        }
        match (&self.sealed, manifest.eval.sealed.is_empty()) {
            (None, true) => {}
            (Some(_), true) => {
                return Err(E::Sealed("the manifest has no sealed pool, but the attestation reveals one"));
            }
            (None, false) => {
                return Err(E::Sealed("the manifest has a sealed pool, but the attestation reveals no split"));
            }
            (Some(r), false) => {
                let prev_reveal = match prev {
                    Some(p) => Some(p.sealed.as_ref().ok_or(E::Sealed("the previous attestation reveals no split"))?),
                    None => None,
                };
                let seed = super::assign::epoch_seed(i);
                let parts = manifest
                    .sealed_parts(&r.extensions, i.epoch)
                    .map_err(|e| E::Reveal(crate::sealed::RevealError::Extension(e)))?;
                crate::sealed::verify_reveal(&parts, manifest.protocol.sealed_split, &seed, r, prev_reveal)?;
            }
        }
        if let Some(p) = prev {
            if s.prev_attestation != p.hash() {
                return Err(E::Chain { got: hex::encode(s.prev_attestation), want: hex::encode(p.hash()) });
            }
            if s.epoch <= p.score.header.epoch {
                return Err(E::EpochOrder { got: s.epoch, prev: p.score.header.epoch });
            }
        }
        Ok(())
    }

    /// The inclusion proof of `contributor`'s leaf under the credit root.
    pub fn prove(&self, contributor: &PeerKey) -> Option<CreditProof> {
        let index = self.leaves.iter().position(|l| &l.contributor == contributor)?;
        let hashes: Vec<[u8; 32]> = self.leaves.iter().map(|l| *codec::hash(l).as_bytes()).collect();
        let proof = crate::merkle::prove(&hashes, index)?;
        Some(CreditProof { header: self.score.header, leaf: self.leaves[index], proof })
    }
}

/// A contributor's credit leaf with its Merkle proof under a certified credit root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditProof {
    /// The score certificate's header the proof is against.
    pub header: CertHeader,
    pub leaf: CreditLeaf,
    pub proof: crate::merkle::Proof,
}

impl Canonical for CreditProof {
    const TAG: &'static [u8] = b"datanet/epoch/credit-proof/v1";
    const MAX_BYTES: usize = 2 + HEADER_BYTES + CreditLeaf::MAX_BYTES + crate::merkle::Proof::MAX_BYTES;
}

/// Why a credit proof does not check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyProofError {
    #[error("proof is for a different attestation (header hash {got}, expected {want})")]
    Header { got: String, want: String },
    #[error("proof's leaf is not the contributor's credit leaf")]
    Leaf,
    #[error(transparent)]
    Merkle(#[from] crate::merkle::ProofError),
}

impl CreditProof {
    /// Checks the leaf against the credit root of `header` (a header from a verified attestation).
    pub fn verify(&self, header: &CertHeader) -> Result<(), VerifyProofError> {
        if self.header != *header {
            return Err(VerifyProofError::Header {
                got: hex::encode(self.header.hash()),
                want: hex::encode(header.hash()),
            });
        }
        if self.proof.leaf != *codec::hash(&self.leaf).as_bytes() {
            return Err(VerifyProofError::Leaf);
        }
        self.proof.verify(&header.credit_root)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::epoch::messages::Vote;
    use crate::ids::DatanetId;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn committee(n: usize) -> (Vec<SigningKey>, Vec<PeerKey>) {
        let mut keys: Vec<SigningKey> = (0..n).map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32])).collect();
        keys.sort_by_key(|k| k.verifying_key().to_bytes());
        let pubs = keys.iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
        (keys, pubs)
    }

    fn header(members: &[PeerKey]) -> CertHeader {
        CertHeader {
            datanet: DatanetId([1; 32]),
            epoch: 3,
            phase: Phase::Score,
            view: 0,
            committee_root: committee_root(members),
            input_root: MerkleRoot([3; 32]),
            report_set_root: MerkleRoot([4; 32]),
            credit_root: MerkleRoot([5; 32]),
            prev_attestation: [6; 32],
        }
    }

    fn cert_from(keys: &[SigningKey], members: &[PeerKey], subset: &[usize]) -> Certificate {
        let h = header(members);
        let sigs: Vec<(usize, Sig)> =
            subset.iter().map(|&i| (i, Vote::sign(VoteKind::Commit, h, &keys[i]).signature)).collect();
        Certificate::assemble(VoteKind::Commit, h, members.len(), &sigs)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        // Every quorum-sized signer subset verifies; every subset one short fails with NoQuorum.
        #[test]
        fn quorum_subsets(n in 1usize..22, seed in any::<u64>()) {
            let (keys, members) = committee(n);
            let q = quorum_for(n);
            let mut idx: Vec<usize> = (0..n).collect();
            let mut s = seed;
            for i in (1..n).rev() { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); idx.swap(i, (s >> 33) as usize % (i + 1)); }
            let full = cert_from(&keys, &members, &idx[..q]);
            prop_assert!(full.verify(&members).is_ok());
            if q > 0 {
                let short = cert_from(&keys, &members, &idx[..q - 1]);
                let is_no_quorum = matches!(short.verify(&members), Err(VerifyCertificateError::NoQuorum { .. }));
                prop_assert!(is_no_quorum);
            }
        }

        // Any single bit flipped anywhere in an encoded certificate makes it fail.
        #[test]
        fn any_bit_flip_fails(bit in any::<usize>()) {
            let (keys, members) = committee(7);
            let c = cert_from(&keys, &members, &[0, 1, 2, 4, 6]);
            let mut bytes = codec::encode(&c);
            let i = bit % (bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            let ok = codec::decode::<Certificate>(&bytes).map(|c2| c2.verify(&members).is_ok() && c2 == c).unwrap_or(false);
            // A flip that still decodes to the same certificate is impossible (canonical decoding).
            prop_assert!(!ok);
            let verifies = codec::decode::<Certificate>(&bytes).map(|c2| c2.verify(&members).is_ok()).unwrap_or(false);
            prop_assert!(!verifies);
        }
    }

    // A forged signature is named.
    #[test]
    fn bad_signer_is_named() {
        let (keys, members) = committee(7);
        let mut c = cert_from(&keys, &members, &[0, 1, 2, 3, 4]);
        c.signatures[2].0[5] ^= 1;
        assert!(matches!(c.verify(&members), Err(VerifyCertificateError::BadSignature { index: 2, .. })));
        let mut c = cert_from(&keys, &members, &[0, 1, 2, 3, 4]);
        c.signatures.swap(0, 1);
        assert!(matches!(c.verify(&members), Err(VerifyCertificateError::BadSignature { index: 0, .. })));
    }

    // One rule: a small-order member key with the trivial signature (R = identity, s = 0), which
    // cofactorless and batch ed25519 verification accept for every message, is refused.
    #[test]
    fn small_order_signer_is_refused() {
        let (keys, mut members) = committee(4);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        members[3] = PeerKey(identity);
        let h = header(&members);
        let mut sigs: Vec<(usize, Sig)> =
            (0..3).map(|i| (i, Vote::sign(VoteKind::Commit, h, &keys[i]).signature)).collect();
        let mut trivial = [0u8; 64];
        trivial[0] = 1;
        sigs.push((3, Sig(trivial)));
        let c = Certificate::assemble(VoteKind::Commit, h, 4, &sigs);
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
        let msg = codec::signing_message(VoteKind::Commit.tag(), &h.to_bytes());
        assert!(
            ed25519_dalek::Verifier::verify(&vk, &msg, &ed25519_dalek::Signature::from_bytes(&trivial)).is_ok(),
            "the lax rule accepts it"
        );
        assert!(
            matches!(
                c.verify(&members),
                Err(VerifyCertificateError::BadKey { index: 3, .. }
                    | VerifyCertificateError::BadSignature { index: 3, .. })
            ),
            "{:?}",
            c.verify(&members)
        );
    }

    // A prepare-round certificate is not accepted where a commit certificate is needed, by its tag.
    #[test]
    fn prepare_signatures_do_not_make_a_commit_certificate() {
        let (keys, members) = committee(4);
        let h = header(&members);
        let sigs: Vec<(usize, Sig)> =
            (0..4).map(|i| (i, Vote::sign(VoteKind::Prepare, h, &keys[i]).signature)).collect();
        let mut c = Certificate::assemble(VoteKind::Prepare, h, 4, &sigs);
        assert!(c.verify(&members).is_ok());
        c.kind = VoteKind::Commit;
        assert!(c.verify(&members).is_err());
    }
}
