//! Byzantine strategies: a Byzantine member runs the honest machine and this module rewrites
//! what it trains and sends.

use super::Sim;
use crate::attribution::epoch::messages::{Commit, EPOCH_MESSAGE_BYTES_MAX, EpochMessage, Reveal, Vote};
use crate::codec::{self, Signed};
use crate::ids::MerkleRoot;
use rand::Rng;

/// How a Byzantine member misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// Reports random utilities.
    WrongUtilities,
    /// Inflates utilities of coalitions holding its own units, deflates the others.
    SelfInflation,
    /// Commits but never reveals.
    WithholdReveals,
    /// Reveals long after the deadline.
    LateReveals,
    /// Re-signs other members' reveals as its own (and withholds its own).
    CopyReveals,
    /// Corrupts the signature of everything it signs.
    InvalidSignatures,
    /// Signs two different votes (and commits) for every slot.
    Equivocate,
    /// Sends oversize and malformed messages besides its normal traffic.
    Oversize,
    /// Sends nothing at all.
    Silent,
    /// Witnesses every contribution as first seen at time 0 (tries to backdate priorities).
    BackdateWitness,
}

impl Strategy {
    /// Every strategy, for random draws.
    pub const ALL: [Strategy; 10] = [
        Strategy::WrongUtilities,
        Strategy::SelfInflation,
        Strategy::WithholdReveals,
        Strategy::LateReveals,
        Strategy::CopyReveals,
        Strategy::InvalidSignatures,
        Strategy::Equivocate,
        Strategy::Oversize,
        Strategy::Silent,
        Strategy::BackdateWitness,
    ];

    /// Parses a strategy name (`equivocate`, `wrong-utilities`, …).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The strategy's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::WrongUtilities => "wrong-utilities",
            Strategy::SelfInflation => "self-inflation",
            Strategy::WithholdReveals => "withhold-reveals",
            Strategy::LateReveals => "late-reveals",
            Strategy::CopyReveals => "copy-reveals",
            Strategy::InvalidSignatures => "invalid-signatures",
            Strategy::Equivocate => "equivocate",
            Strategy::Oversize => "oversize",
            Strategy::Silent => "silent",
            Strategy::BackdateWitness => "backdate-witness",
        }
    }
}

/// The utility a Byzantine member reports instead of the measured `u`.
pub(crate) fn distort(rng: &mut impl Rng, s: Strategy, u: i64, owns_unit_in_job: bool) -> i64 {
    match s {
        Strategy::WrongUtilities => rng.gen_range(-500_000..500_000),
        Strategy::SelfInflation if owns_unit_in_job => u + 300_000,
        Strategy::SelfInflation => u - 100_000,
        _ => u,
    }
}

fn corrupt(sig: &mut [u8; 64]) {
    sig[7] ^= 0x40;
}

/// Sends `m` from Byzantine member `i` according to `s`.
pub(crate) fn send(sim: &mut Sim, i: usize, s: Strategy, m: EpochMessage) {
    let window = sim.cfg.timing.commit_window_ms + sim.cfg.timing.reveal_window_ms;
    match (s, m) {
        (Strategy::Silent, _) => {}
        (Strategy::WithholdReveals | Strategy::CopyReveals, EpochMessage::Reveal(_)) => {}
        (Strategy::LateReveals, m @ EpochMessage::Reveal(_)) => sim.send_bytes(i, codec::encode(&m), window),
        (Strategy::InvalidSignatures, mut m) => {
            match &mut m {
                EpochMessage::Vote(v) => corrupt(&mut v.signature.0),
                EpochMessage::Commit(c) => corrupt(&mut c.signature),
                EpochMessage::Reveal(r) => corrupt(&mut r.signature),
                EpochMessage::Propose(p) => corrupt(&mut p.signature),
                EpochMessage::NewView(n) => corrupt(&mut n.signature),
                EpochMessage::Witness(w) => corrupt(&mut w.signature),
                _ => {}
            }
            sim.send_bytes(i, codec::encode(&m), 0);
        }
        (Strategy::Equivocate, m) => {
            let key = sim.signing_key(i).clone();
            let twin = match &m {
                EpochMessage::Vote(v) => {
                    let mut h = v.header;
                    h.credit_root = MerkleRoot(*blake3::hash(&h.to_bytes()).as_bytes());
                    Some(EpochMessage::Vote(Vote::sign(v.kind, h, &key)))
                }
                EpochMessage::Commit(c) => {
                    let body = Commit { digest: *blake3::hash(&c.body.digest).as_bytes(), ..c.body.clone() };
                    Some(EpochMessage::Commit(Signed::sign(body, &key)))
                }
                EpochMessage::Propose(p) => {
                    let mut body = p.body.clone();
                    body.header.credit_root = MerkleRoot(*blake3::hash(&body.header.to_bytes()).as_bytes());
                    Some(EpochMessage::Propose(Box::new(Signed::sign(body, &key))))
                }
                _ => None,
            };
            sim.send_bytes(i, codec::encode(&m), 0);
            if let Some(t) = twin {
                sim.obs.equivocators.insert(sim.members[i]);
                sim.send_bytes(i, codec::encode(&t), 0);
            }
        }
        (Strategy::BackdateWitness, EpochMessage::Witness(w)) => {
            let mut body = w.body.clone();
            body.seen.iter_mut().for_each(|(_, t)| *t = 0);
            let lie = EpochMessage::Witness(Box::new(Signed::sign(body, sim.signing_key(i))));
            sim.send_bytes(i, codec::encode(&lie), 0);
        }
        (Strategy::Oversize, m) => {
            sim.send_bytes(i, codec::encode(&m), 0);
            if sim.rng().gen_bool(0.02) {
                sim.send_bytes(i, vec![0xAB; EPOCH_MESSAGE_BYTES_MAX + 1], 0);
            }
            let junk: Vec<u8> = (0..64).map(|_| sim.rng().r#gen()).collect();
            sim.send_bytes(i, junk, 0);
        }
        (_, m) => sim.send_bytes(i, codec::encode(&m), 0),
    }
}

/// Lets a Byzantine member react to what it received (copying reveals).
pub(crate) fn observe(sim: &mut Sim, i: usize, s: Strategy, bytes: &[u8]) {
    if s != Strategy::CopyReveals {
        return;
    }
    let Ok(EpochMessage::Reveal(r)) = codec::decode::<EpochMessage>(bytes) else { return };
    if r.signer == sim.members[i] || !sim.copied.insert((i, r.body.job, r.signer)) {
        return;
    }
    let copy = Signed::sign(Reveal { ..r.body.clone() }, sim.signing_key(i));
    sim.send_bytes(i, codec::encode(&EpochMessage::Reveal(copy)), 0);
}
