//! Wire types of epoch agreement: the fixed-layout certificate header, votes, proposals,
//! commits, reveals, view changes and evidence, wrapped in one [`EpochMessage`].
//!
//! Every type is canonical (postcard, size limit checked before decoding) and carries its own
//! domain tag. A vote signs `kind tag || header bytes`, where the header is a fixed 233-byte layout
//! that itself opens with a domain tag, so the offline verifier needs nothing but this module.

use crate::codec::{self, Canonical, Signed};
use crate::ids::{ContributionId, DatanetId, MerkleRoot, PeerKey};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// First bytes of every certificate header.
pub const HEADER_DOMAIN: &[u8; 28] = b"datanet/epoch/cert-header/v1";
/// Length of a header's fixed layout.
pub const HEADER_BYTES: usize = 28 + 32 + 8 + 1 + 4 + 32 * 5;
/// Tag of first-round (prepare) votes.
pub const PREPARE_TAG: &[u8] = b"datanet/epoch/prepare/v1";
/// Tag of second-round votes: the signatures a certificate carries.
pub const VOTE_TAG: &[u8] = b"datanet/epoch/vote/v1";
/// Largest committee a certificate may describe.
pub const COMMITTEE_MAX: usize = 512;
/// Largest input set a freeze proposal may list.
pub const INPUT_ITEMS_MAX: usize = 16_384;
/// Most reports a score proposal may carry.
pub const REPORTS_MAX: usize = 8_192;
/// Largest encoded epoch message (gossipsub `max_transmit_size` must be at least this); it lives
/// in `codec` so that `sealed`, whose reveals epoch messages carry, can bound by it too.
pub use crate::codec::EPOCH_MESSAGE_BYTES_MAX;

/// The certified steps of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// The input set is frozen.
    Freeze,
    /// The report set and credit are certified: the attestation.
    Score,
}

impl Phase {
    fn byte(self) -> u8 {
        match self {
            Phase::Freeze => 1,
            Phase::Score => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Phase::Freeze),
            2 => Some(Phase::Score),
            _ => None,
        }
    }
}

/// What a certificate certifies, in a fixed layout (see [`CertHeader::to_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CertHeader {
    pub datanet: DatanetId,
    pub epoch: u64,
    pub phase: Phase,
    pub view: u32,
    pub committee_root: MerkleRoot,
    pub input_root: MerkleRoot,
    /// Zero in the freeze phase.
    pub report_set_root: MerkleRoot,
    /// Zero in the freeze phase.
    pub credit_root: MerkleRoot,
    /// Hash of the previous epoch's attestation (zero for the first epoch).
    pub prev_attestation: [u8; 32],
}

/// Why header bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("certificate header has {0} bytes, expected {HEADER_BYTES}")]
    Length(usize),
    #[error("certificate header does not start with the domain tag datanet/epoch/cert-header/v1")]
    Domain,
    #[error("certificate header names unknown phase {0}")]
    Phase(u8),
}

impl CertHeader {
    /// domain tag ‖ datanet ‖ epoch (u64 LE) ‖ phase (u8) ‖ view (u32 LE) ‖ committee root ‖
    /// input root ‖ report set root ‖ credit root ‖ previous attestation hash.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        let mut at = 0;
        let mut put = |x: &[u8]| {
            b[at..at + x.len()].copy_from_slice(x);
            at += x.len();
        };
        put(HEADER_DOMAIN);
        put(self.datanet.as_bytes());
        put(&self.epoch.to_le_bytes());
        put(&[self.phase.byte()]);
        put(&self.view.to_le_bytes());
        put(self.committee_root.as_bytes());
        put(self.input_root.as_bytes());
        put(self.report_set_root.as_bytes());
        put(self.credit_root.as_bytes());
        put(&self.prev_attestation);
        b
    }

    /// Parses the fixed layout.
    pub fn from_bytes(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() != HEADER_BYTES {
            return Err(HeaderError::Length(b.len()));
        }
        if &b[..28] != HEADER_DOMAIN {
            return Err(HeaderError::Domain);
        }
        let h32 = |at: usize| -> [u8; 32] { b[at..at + 32].try_into().expect("32 bytes") };
        let phase = Phase::from_byte(b[68]).ok_or(HeaderError::Phase(b[68]))?;
        Ok(CertHeader {
            datanet: DatanetId(h32(28)),
            epoch: u64::from_le_bytes(b[60..68].try_into().expect("8 bytes")),
            phase,
            view: u32::from_le_bytes(b[69..73].try_into().expect("4 bytes")),
            committee_root: MerkleRoot(h32(73)),
            input_root: MerkleRoot(h32(105)),
            report_set_root: MerkleRoot(h32(137)),
            credit_root: MerkleRoot(h32(169)),
            prev_attestation: h32(201),
        })
    }

    /// BLAKE3 of the header bytes: the attestation hash that chains epochs.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }

    /// The hash with the view zeroed: equal for the same proposal re-proposed in another view.
    pub fn payload_key(&self) -> [u8; 32] {
        CertHeader { view: 0, ..*self }.hash()
    }
}

impl Serialize for CertHeader {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for CertHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(d)?;
        CertHeader::from_bytes(v).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod sig64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: &[u8; 64], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_bytes(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(de)?;
        v.try_into().map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

/// A 64-byte ed25519 signature that serializes as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sig(#[serde(with = "sig64")] pub [u8; 64]);

/// Round of a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    /// First round: "this proposal is valid and I am free to take it".
    Prepare,
    /// Second round, after a prepare quorum: these signatures form the certificate.
    Commit,
}

impl VoteKind {
    /// The domain tag the vote's signature is made under.
    pub fn tag(self) -> &'static [u8] {
        match self {
            VoteKind::Prepare => PREPARE_TAG,
            VoteKind::Commit => VOTE_TAG,
        }
    }
}

/// A committee member's signature on a header, in one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub kind: VoteKind,
    pub header: CertHeader,
    pub signer: PeerKey,
    pub signature: Sig,
}

impl Vote {
    /// Signs `header` in round `kind`.
    pub fn sign(kind: VoteKind, header: CertHeader, key: &SigningKey) -> Self {
        let signature = Sig(codec::sign_bytes(key, kind.tag(), &header.to_bytes()));
        Vote { kind, header, signer: PeerKey(key.verifying_key().to_bytes()), signature }
    }
    /// Strict signature check.
    pub fn verify(&self) -> Result<(), codec::VerifyError> {
        codec::verify_bytes(&self.signer, self.kind.tag(), &self.header.to_bytes(), &self.signature.0)
    }
}

/// What a leader proposes: the payload the header's roots commit to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The input set with each contribution's witnessed priority (sorted by id), how many
    /// prioritized contributions did not fit, and the quorum of witnesses they were derived
    /// from ([`super::freeze::freeze`]); the header's input root is
    /// [`super::freeze::input_root`] of items and deferred.
    Freeze { items: Vec<(ContributionId, u64)>, deferred: u32, witnesses: Vec<Signed<Witness>> },
    /// Every accepted report, sorted by (job, reporter); members re-derive both roots from them.
    Score { reports: Vec<SignedReport> },
}

/// A report as proposed: the reporter's commit and its matching reveal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReport {
    pub commit: Signed<Commit>,
    pub reveal: Signed<Reveal>,
}

/// A proposal for one (phase, view), signed by that view's leader. `justify` is the prepare
/// certificate of an earlier view when the leader re-proposes a payload some member locked on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propose {
    pub header: CertHeader,
    pub payload: Payload,
    pub justify: Option<crate::attribution::epoch::certificate::Certificate>,
}

impl Canonical for Propose {
    const TAG: &'static [u8] = b"datanet/epoch/propose/v1";
    const MAX_BYTES: usize = EPOCH_MESSAGE_BYTES_MAX - 256;
}

/// A member's first-seen times (milliseconds on its clock) of the contributions it holds that
/// have no certified priority yet, sorted by id: the evidence witnessed priority is the median of
/// ([`super::freeze`]). `pending` counts all such contributions it holds, listed or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witness {
    pub datanet: DatanetId,
    pub epoch: u64,
    pub pending: u32,
    pub seen: Vec<(ContributionId, u64)>,
}

impl Canonical for Witness {
    const TAG: &'static [u8] = b"datanet/epoch/witness/v1";
    const MAX_BYTES: usize = 32 + 10 + 5 + 5 + 2048 * (32 + 10);
}

/// `H(reporter ‖ datanet ‖ epoch ‖ job ‖ utility ‖ salt)`, sent before the utility is revealed.
/// Binding the reporter makes a copied commit useless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub datanet: DatanetId,
    pub epoch: u64,
    pub job: u32,
    pub digest: [u8; 32],
}

impl Canonical for Commit {
    const TAG: &'static [u8] = b"datanet/epoch/commit/v1";
    const MAX_BYTES: usize = 32 + 10 + 5 + 32;
}

/// The utility and salt behind a commit, sent after the commit deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    pub datanet: DatanetId,
    pub epoch: u64,
    pub job: u32,
    pub utility: i64,
    pub salt: [u8; 32],
}

impl Canonical for Reveal {
    const TAG: &'static [u8] = b"datanet/epoch/reveal/v1";
    const MAX_BYTES: usize = 32 + 10 + 5 + 10 + 32;
}

/// The commit digest of `utility` with `salt`, bound to the reporter and the job.
pub fn commit_digest(
    reporter: &PeerKey,
    datanet: &DatanetId,
    epoch: u64,
    job: u32,
    utility: i64,
    salt: &[u8; 32],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("datanet/epoch/commit-digest/v1");
    h.update(reporter.as_bytes());
    h.update(datanet.as_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(&job.to_le_bytes());
    h.update(&utility.to_le_bytes());
    h.update(salt);
    *h.finalize().as_bytes()
}

/// A member moving to `view` of `phase`, carrying the proposal it is locked on and the prepare
/// certificate that locked it, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    pub datanet: DatanetId,
    pub epoch: u64,
    pub phase: Phase,
    pub view: u32,
    pub lock: Option<Box<Locked>>,
}

/// A prepare certificate and the proposal it certifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locked {
    pub proposal: Signed<Propose>,
    pub prepared: crate::attribution::epoch::certificate::Certificate,
}

impl Canonical for NewView {
    const TAG: &'static [u8] = b"datanet/epoch/new-view/v1";
    const MAX_BYTES: usize = EPOCH_MESSAGE_BYTES_MAX - 256;
}

/// One signed statement that can contradict another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Statement {
    Vote(Vote),
    Commit(Signed<Commit>),
    Propose(Box<Signed<Propose>>),
}

impl Statement {
    /// Who signed it.
    pub fn signer(&self) -> PeerKey {
        match self {
            Statement::Vote(v) => v.signer,
            Statement::Commit(c) => c.signer,
            Statement::Propose(p) => p.signer,
        }
    }
    /// The slot an honest signer signs at most once, and the content it signed there.
    fn slot_and_content(&self) -> (Vec<u8>, [u8; 32]) {
        match self {
            Statement::Vote(v) => {
                let h = v.header;
                let mut slot = b"vote".to_vec();
                slot.extend_from_slice(h.datanet.as_bytes());
                slot.extend_from_slice(&h.epoch.to_le_bytes());
                slot.push(h.phase.byte());
                slot.extend_from_slice(&h.view.to_le_bytes());
                slot.push(v.kind as u8);
                (slot, h.hash())
            }
            Statement::Commit(c) => {
                let mut slot = b"commit".to_vec();
                slot.extend_from_slice(c.body.datanet.as_bytes());
                slot.extend_from_slice(&c.body.epoch.to_le_bytes());
                slot.extend_from_slice(&c.body.job.to_le_bytes());
                (slot, c.body.digest)
            }
            Statement::Propose(p) => {
                let h = p.body.header;
                let mut slot = b"propose".to_vec();
                slot.extend_from_slice(h.datanet.as_bytes());
                slot.extend_from_slice(&h.epoch.to_le_bytes());
                slot.push(h.phase.byte());
                slot.extend_from_slice(&h.view.to_le_bytes());
                (slot, *codec::hash(&p.body).as_bytes())
            }
        }
    }
    fn verify(&self) -> Result<(), codec::VerifyError> {
        match self {
            Statement::Vote(v) => v.verify(),
            Statement::Commit(c) => c.verify(),
            Statement::Propose(p) => p.verify(),
        }
    }
}

/// Two statements by one signer in one slot with different content: proof of equivocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub first: Statement,
    pub second: Statement,
}

impl Canonical for Evidence {
    const TAG: &'static [u8] = b"datanet/epoch/evidence/v1";
    const MAX_BYTES: usize = 2 * (EPOCH_MESSAGE_BYTES_MAX / 2 - 256);
}

/// Why evidence does not prove anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvidenceError {
    #[error("evidence statements have different signers")]
    DifferentSigners,
    #[error("evidence statements are for different slots")]
    DifferentSlots,
    #[error("evidence statements are identical")]
    SameContent,
    #[error("evidence statement does not verify: {0}")]
    Signature(#[from] codec::VerifyError),
}

impl Evidence {
    /// Builds evidence in a canonical order (smaller encoding first), so every peer stores the
    /// same bytes for the same pair.
    pub fn new(a: Statement, b: Statement) -> Self {
        if postcard::to_stdvec(&a).ok() <= postcard::to_stdvec(&b).ok() {
            Evidence { first: a, second: b }
        } else {
            Evidence { first: b, second: a }
        }
    }
    /// The equivocating key, once [`Evidence::verify`] passed.
    pub fn offender(&self) -> PeerKey {
        self.first.signer()
    }
    /// Checks both signatures, the shared signer and slot, and that the content differs.
    pub fn verify(&self) -> Result<PeerKey, EvidenceError> {
        if self.first.signer() != self.second.signer() {
            return Err(EvidenceError::DifferentSigners);
        }
        let (s1, c1) = self.first.slot_and_content();
        let (s2, c2) = self.second.slot_and_content();
        if s1 != s2 {
            return Err(EvidenceError::DifferentSlots);
        }
        if c1 == c2 {
            return Err(EvidenceError::SameContent);
        }
        self.first.verify()?;
        self.second.verify()?;
        Ok(self.offender())
    }
    /// Content id (for deduplication in stores).
    pub fn id(&self) -> [u8; 32] {
        *codec::hash(self).as_bytes()
    }
}

/// Everything epoch agreement sends over gossip (topic `datanet/<id>/epochs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpochMessage {
    Propose(Box<Signed<Propose>>),
    Vote(Vote),
    Commit(Signed<Commit>),
    Reveal(Signed<Reveal>),
    NewView(Signed<NewView>),
    Evidence(Box<Evidence>),
    Certificate(crate::attribution::epoch::certificate::Certificate),
    Attestation(Box<crate::attribution::epoch::certificate::Attestation>),
    Witness(Box<Signed<Witness>>),
}

impl Canonical for EpochMessage {
    const TAG: &'static [u8] = b"datanet/epoch/message/v1";
    const MAX_BYTES: usize = EPOCH_MESSAGE_BYTES_MAX;
}

impl EpochMessage {
    /// (datanet, epoch) the message belongs to, when it names one.
    pub fn epoch(&self) -> Option<(DatanetId, u64)> {
        match self {
            EpochMessage::Propose(p) => Some((p.body.header.datanet, p.body.header.epoch)),
            EpochMessage::Vote(v) => Some((v.header.datanet, v.header.epoch)),
            EpochMessage::Commit(c) => Some((c.body.datanet, c.body.epoch)),
            EpochMessage::Reveal(r) => Some((r.body.datanet, r.body.epoch)),
            EpochMessage::NewView(n) => Some((n.body.datanet, n.body.epoch)),
            EpochMessage::Evidence(_) => None,
            EpochMessage::Certificate(c) => Some((c.header.datanet, c.header.epoch)),
            EpochMessage::Attestation(a) => Some((a.score.header.datanet, a.score.header.epoch)),
            EpochMessage::Witness(w) => Some((w.body.datanet, w.body.epoch)),
        }
    }

    /// The one committee key that signed this message, for the kinds a single member signs
    /// (certificates, attestations and evidence carry many or none). Not verified here.
    pub fn signer(&self) -> Option<PeerKey> {
        match self {
            EpochMessage::Propose(p) => Some(p.signer),
            EpochMessage::Vote(v) => Some(v.signer),
            EpochMessage::Commit(c) => Some(c.signer),
            EpochMessage::Reveal(r) => Some(r.signer),
            EpochMessage::NewView(n) => Some(n.signer),
            EpochMessage::Witness(w) => Some(w.signer),
            EpochMessage::Evidence(_) | EpochMessage::Certificate(_) | EpochMessage::Attestation(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(epoch: u64, view: u32) -> CertHeader {
        CertHeader {
            datanet: DatanetId([1; 32]),
            epoch,
            phase: Phase::Score,
            view,
            committee_root: MerkleRoot([2; 32]),
            input_root: MerkleRoot([3; 32]),
            report_set_root: MerkleRoot([4; 32]),
            credit_root: MerkleRoot([5; 32]),
            prev_attestation: [6; 32],
        }
    }

    proptest! {
        // The fixed header layout round-trips for any epoch and view, and through postcard.
        #[test]
        fn header_round_trip(epoch in any::<u64>(), view in any::<u32>()) {
            let h = header(epoch, view);
            prop_assert_eq!(CertHeader::from_bytes(&h.to_bytes()).unwrap(), h);
            let m = EpochMessage::Vote(Vote::sign(VoteKind::Commit, h, &SigningKey::from_bytes(&[9; 32])));
            prop_assert_eq!(codec::decode::<EpochMessage>(&codec::encode(&m)).unwrap(), m);
        }

        // A witness of up to the largest cap round-trips canonically inside an epoch message and fits its size limit; one byte over the limit is refused before decoding.
        #[test]
        fn witness_round_trips_within_its_limit(
            n in 0usize..2048, t in any::<u64>(), epoch in any::<u64>(), pending in any::<u32>(),
        ) {
            let seen: Vec<(ContributionId, u64)> = (0..n as u32)
                .map(|i| (ContributionId(*blake3::hash(&i.to_le_bytes()).as_bytes()), t.wrapping_add(i as u64)))
                .collect();
            let w = Witness { datanet: DatanetId([1; 32]), epoch, pending, seen };
            prop_assert!(codec::encode(&w).len() <= Witness::MAX_BYTES);
            let m = EpochMessage::Witness(Box::new(Signed::sign(w, &SigningKey::from_bytes(&[9; 32]))));
            let bytes = codec::encode(&m);
            prop_assert_eq!(codec::decode::<EpochMessage>(&bytes).unwrap(), m);
        }
    }

    // A witness encoding larger than its limit is refused before it is decoded.
    #[test]
    fn oversize_witness_is_refused() {
        let bytes = vec![0u8; Witness::MAX_BYTES + 1];
        assert!(codec::decode::<Witness>(&bytes).is_err());
    }

    // Two different commit votes in one view are evidence; a vote in another view is not.
    #[test]
    fn conflicting_votes_are_evidence() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let a = Vote::sign(VoteKind::Commit, header(1, 0), &k);
        let mut h = header(1, 0);
        h.credit_root = MerkleRoot([9; 32]);
        let b = Vote::sign(VoteKind::Commit, h, &k);
        let e = Evidence::new(Statement::Vote(a.clone()), Statement::Vote(b));
        assert_eq!(e.verify().unwrap(), PeerKey(k.verifying_key().to_bytes()));
        let c = Vote::sign(VoteKind::Commit, header(1, 1), &k);
        assert_eq!(
            Evidence::new(Statement::Vote(a.clone()), Statement::Vote(c)).verify(),
            Err(EvidenceError::DifferentSlots)
        );
        let p = Vote::sign(VoteKind::Prepare, h, &k);
        assert_eq!(Evidence::new(Statement::Vote(a), Statement::Vote(p)).verify(), Err(EvidenceError::DifferentSlots));
    }

    // A header with the wrong domain tag or phase byte is refused.
    #[test]
    fn header_refuses_bad_domain_and_phase() {
        let mut b = header(1, 2).to_bytes();
        b[68] = 9;
        assert_eq!(CertHeader::from_bytes(&b), Err(HeaderError::Phase(9)));
        b[0] ^= 1;
        assert_eq!(CertHeader::from_bytes(&b), Err(HeaderError::Domain));
    }
}
