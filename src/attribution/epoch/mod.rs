//! Epoch agreement (DESIGN.md §8): how a committee turns measured utilities into one certified,
//! hash-chained attestation of credit, safely with up to f = ⌊(n−1)/3⌋ faulty members.
//!
//! - [`messages`]: the wire types (proposals, two rounds of votes, commits, reveals, view
//!   changes, evidence) and the fixed-layout certificate header.
//! - [`certificate`]: quorum certificates, attestations and credit proofs, verified offline
//!   against a pinned manifest (`verify_strict` per signer, the one rule: no batch fast path).
//! - [`freeze`]: witnessed priority (the median of the members' first-seen times) and the fair
//!   freeze (oldest first, the rest deferred).
//! - [`assign`]: the epoch seed and which members measure which job.
//! - [`scoring`]: report set → median table → credit → the two roots members sign.
//! - [`machine`]: the sans-IO state machine, driven by the daemon over gossip and by
//!   [`crate::sim`] over a simulated network: `on_message`/`on_bytes`, `on_timer`, `set_plan`,
//!   `on_utility` in; [`machine::Action`]s out.
//!
//! No I/O here: persistence, training and the network are the driver's, through actions.

pub mod assign;
pub mod certificate;
pub mod freeze;
pub mod machine;
pub mod messages;
pub mod scoring;

pub use certificate::{Attestation, Certificate, CreditProof, VerifyAttestationError, VerifyCertificateError};
pub use machine::{Action, EpochConfig, EpochMachine, EpochStatus, Snapshot, Timing};
pub use messages::{CertHeader, EpochMessage, Evidence, Phase};
