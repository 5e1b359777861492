//! Unit tests of the epoch machine: bounded per-view state, and a restarted leader's proposal.

use super::*;
use crate::attribution::epoch::certificate::committee_root;
use crate::codec::{self, Signed};
use crate::ids::{ContributionId, DatanetId, PeerKey};

/// Epoch 1 of Datanet [1; 32] with default timing and replication 3.
fn test_config(members: &[PeerKey]) -> EpochConfig {
    EpochConfig {
        datanet: DatanetId([1; 32]),
        epoch: 1,
        members: members.to_vec(),
        prev_attestation: [0; 32],
        tau: DEFAULT_TAU,
        timing: Timing::default(),
        replication: 3,
        known: Default::default(),
    }
}

// One member signing votes, and contradicting votes, for thousands of views grows neither the per-view maps past the view window nor the evidence (and so the snapshot) past a few per offender.
#[test]
fn a_member_cannot_grow_per_view_state() {
    let keys = crate::sim::member_keys(7, 4);
    let members: Vec<PeerKey> = keys.iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
    let cfg = test_config(&members);
    let me = members.iter().position(|k| *k == PeerKey(keys[0].verifying_key().to_bytes())).unwrap();
    let mut m = EpochMachine::new(cfg, keys[me].clone(), Vec::new());
    m.start(0);
    let liar = &keys[(me + 1) % 4];
    let mut last_snapshot = 0;
    for view in 0..3000u32 {
        for root in [1u8, 2] {
            let h = CertHeader {
                datanet: DatanetId([1; 32]),
                epoch: 1,
                phase: Phase::Freeze,
                view,
                committee_root: committee_root(&members),
                input_root: crate::ids::MerkleRoot([root; 32]),
                report_set_root: Default::default(),
                credit_root: Default::default(),
                prev_attestation: [0; 32],
            };
            for a in m.on_message(1, EpochMessage::Vote(Vote::sign(VoteKind::Prepare, h, liar))) {
                if let Action::Persist(s) = a {
                    last_snapshot = codec::encode(&*s).len();
                }
            }
        }
    }
    let r = &m.rounds[pidx(Phase::Freeze)];
    assert!(r.first_votes.len() <= (VIEW_AHEAD_MAX + 1) as usize, "{} first votes kept", r.first_votes.len());
    assert!(r.votes.len() <= 2 * (VIEW_AHEAD_MAX + 1) as usize, "{} vote sets kept", r.votes.len());
    assert_eq!(m.evidence.len(), EVIDENCE_PER_OFFENDER_MAX);
    assert!(last_snapshot < 64 * 1024, "snapshot of {last_snapshot} bytes");
}

// A freeze leader killed right after it proposed, restarted from its last durable snapshot
// while holding more contributions and hearing the witnesses in another order, re-sends the very proposal it signed for that view and
// signs no other: it cannot be made an equivocator by a crash.
#[test]
fn restarted_leader_re_sends_its_proposal() {
    let keys = crate::sim::member_keys(9, 4);
    let members: Vec<PeerKey> = keys.iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
    let cfg = test_config(&members);
    let held: Vec<(ContributionId, u64)> = (0..5u8).map(|i| (ContributionId([i + 1; 32]), 10 * i as u64)).collect();
    let mut ms: Vec<EpochMachine> =
        keys.iter().map(|k| EpochMachine::new(cfg.clone(), k.clone(), held.clone())).collect();
    let leader = ms.iter().position(|m| m.me == Some(m.leader(0))).unwrap();
    let mut pending: Vec<(usize, EpochMessage)> = Vec::new();
    let mut persisted: Option<Snapshot> = None;
    let mut proposed: Vec<Signed<Propose>> = Vec::new();
    let mut record = |from: usize, acts: Vec<Action>, pending: &mut Vec<(usize, EpochMessage)>| {
        for a in acts {
            match a {
                Action::Persist(s) if from == leader && proposed.is_empty() => persisted = Some(*s),
                Action::Broadcast(EpochMessage::Propose(p)) if from == leader => proposed.push(*p.clone()),
                Action::Broadcast(m) => pending.push((from, m)),
                _ => {}
            }
        }
    };
    for (i, m) in ms.iter_mut().enumerate() {
        let acts = m.start(0);
        record(i, acts, &mut pending);
    }
    let witnesses: Vec<(usize, EpochMessage)> =
        pending.iter().filter(|(_, m)| matches!(m, EpochMessage::Witness(_))).cloned().collect();
    for (_, msg) in witnesses.iter().filter(|(f, _)| *f != leader) {
        let acts = ms[leader].on_message(1, msg.clone());
        record(leader, acts, &mut pending);
    }
    assert_eq!(proposed.len(), 1, "the leader proposed once a quorum of witnesses arrived");
    let original = proposed[0].clone();
    let snap = persisted.expect("a snapshot persisted before the proposal was sent");
    assert!(snap.proposals.contains(&original), "the proposal is in the snapshot written before it left");
    // Restart with one more contribution held (its own witness now differs).
    let mut more = held.clone();
    more.push((ContributionId([99; 32]), 5));
    let mut again = EpochMachine::restore(cfg.clone(), keys[leader].clone(), more, snap);
    let mut sent = Vec::new();
    let mut collect = |acts: Vec<Action>| {
        for a in acts {
            if let Action::Broadcast(EpochMessage::Propose(p)) = a {
                sent.push(*p);
            }
        }
    };
    collect(again.start(2));
    // The others' witnesses arrive in the other order: another quorum would be first.
    for (_, msg) in witnesses.iter().rev() {
        collect(again.on_message(3, msg.clone()));
    }
    let later = 3 + Timing::default().rebroadcast_ms + 1;
    collect(again.on_timer(later));
    assert!(!sent.is_empty(), "the restarted leader re-sends its proposal");
    assert!(sent.iter().all(|p| *p == original), "no other proposal for view 0");
}
