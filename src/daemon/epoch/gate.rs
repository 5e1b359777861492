//! The epoch message gate: which frames and messages on `datanet/<id>/epochs` reach a machine,
//! and which may start an epoch here (a committee member's, once its window is open).

use super::unix_ms;
use crate::attribution::epoch::{Action, EpochMessage};
use crate::codec;
use crate::daemon::DaemonActor;
use crate::ids::DatanetId;
use crate::manifest::Manifest;
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;

/// Whether a message may start epoch `epoch` here (no machine runs for it yet).
#[derive(Debug, PartialEq, Eq)]
pub enum StartGate {
    Open,
    /// Signed by a key outside the committee: refused, and it costs the sender gossip score.
    NotMember,
    /// A certificate, attestation or evidence (no single signer): it starts nothing and is
    /// ignored without blame — an honest peer may relay one for an epoch not started here.
    NoSigner,
    /// A member's, before the epoch's window opens on this clock: ignored.
    Early {
        opens_ms: u64,
    },
}

/// Only a committee member's signed message starts an epoch here, and only once its window is
/// open on this clock (`now_ms`, unix): issuance follows the manifest's schedule, not the most
/// eager party. The signature itself is checked by the machine the message is then fed to.
pub fn may_start_from(m: &Manifest, epoch: u64, msg: &EpochMessage, now_ms: u64) -> StartGate {
    match msg.signer() {
        Some(k) if m.committee.members.contains(&k) => {}
        Some(_) => return StartGate::NotMember,
        None => return StartGate::NoSigner,
    }
    let opens_ms = m.epoch_opens_ms(epoch);
    if now_ms < opens_ms { StartGate::Early { opens_ms } } else { StartGate::Open }
}

impl DaemonActor {
    /// The seam for epoch agreement: gossip bytes on `datanet/<id>/epochs`.
    /// An epoch-topic frame: the inner message goes to [`Self::on_epoch_bytes`]; a valid one
    /// propagates unless a frame of the same message did within half the rebroadcast period.
    pub(in crate::daemon) async fn on_epoch_frame(
        &mut self,
        d: DatanetId,
        from: PeerId,
        data: &[u8],
    ) -> MessageAcceptance {
        let Some(m) = self.joined.get(&d) else { return MessageAcceptance::Ignore };
        let period = m.protocol.rebroadcast_ms / 2;
        let frame: crate::daemon::wire::EpochFrame = match codec::decode(data) {
            Ok(f) => f,
            Err(_) => {
                self.metrics.reject(crate::daemon::metrics::RejectReason::Malformed);
                return MessageAcceptance::Reject;
            }
        };
        match self.on_epoch_bytes(d, from, &frame.message).await {
            MessageAcceptance::Accept if !self.epochs.may_forward(&frame.message, period) => MessageAcceptance::Ignore,
            other => other,
        }
    }

    pub(in crate::daemon) async fn on_epoch_bytes(
        &mut self,
        d: DatanetId,
        from: PeerId,
        data: &[u8],
    ) -> MessageAcceptance {
        if !self.joined.contains_key(&d) {
            return MessageAcceptance::Ignore;
        }
        let msg: EpochMessage = match codec::decode(data) {
            Ok(m) => m,
            Err(_) => {
                self.metrics.reject(crate::daemon::metrics::RejectReason::Malformed);
                return MessageAcceptance::Reject;
            }
        };
        let running_epoch = self.epochs.running.get(&d).map(|r| r.machine.config().epoch);
        match (msg.epoch(), running_epoch) {
            (Some((md, _)), _) if md != d => return MessageAcceptance::Reject,
            (None, None) => return MessageAcceptance::Ignore,
            (None, Some(_)) => {}
            (Some((_, e)), Some(r)) if e == r => {}
            (Some((_, e)), r) => {
                let next = match self.next_epoch(&d) {
                    Ok(n) => n,
                    Err(_) => return MessageAcceptance::Ignore,
                };
                if e > next {
                    // This peer's ledger is behind the committee's: fetch the attestations it missed.
                    self.start_ledger_catchup(d, from);
                }
                if e != next || r.is_some_and(|r| r >= e) {
                    tracing::debug!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, next, "message for another epoch");
                    return MessageAcceptance::Ignore;
                }
                match may_start_from(&self.joined[&d], e, &msg, unix_ms()) {
                    StartGate::Open => {}
                    StartGate::NotMember => {
                        self.metrics.reject(crate::daemon::metrics::RejectReason::EpochNotStarted);
                        return MessageAcceptance::Reject;
                    }
                    StartGate::NoSigner => return MessageAcceptance::Ignore,
                    StartGate::Early { opens_ms } => {
                        tracing::debug!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, opens_ms, "message for an epoch whose window is not open");
                        return MessageAcceptance::Ignore;
                    }
                }
                if let Err(err) = self.epoch_create(d, e).await {
                    tracing::warn!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, error = %err, "cannot join epoch");
                    return MessageAcceptance::Ignore;
                }
                tracing::info!(target: "datanet::daemon::epoch", datanet = %d.short(), epoch = e, "joined an epoch started elsewhere");
            }
        }
        let now = self.epochs.now_ms();
        let Some(r) = self.epochs.running.get_mut(&d) else { return MessageAcceptance::Ignore };
        let actions = r.machine.on_bytes(now, data);
        let rejected = actions.iter().any(|a| matches!(a, Action::Rejected { .. }));
        if let Some(k) = msg.signer().filter(|k| !rejected && self.joined[&d].committee.members.contains(k)) {
            r.heard.insert(k);
        }
        self.epoch_apply(d, actions).await;
        // The machine refuses only bad input for this epoch (signature, committee, assignment,
        // size): the sender loses gossip score.
        if rejected { MessageAcceptance::Reject } else { MessageAcceptance::Accept }
    }
}
