//! Tests of the epoch driver's gate, plans, sealed pool and ledger catch-up.

use super::ledger_sync::adopt_attestations;
use super::sealed::sealed_split;
use super::*;
use crate::admission;
use crate::attribution::epoch::EpochMessage;
use crate::net::catchup::CatchupResponse;
use crate::store::contributions::AdmittedRecord;

// Epoch minting: a non-member's message never starts an epoch, a member's only once the epoch's window (less the skew) has opened; each window is one epoch length.
#[test]
fn only_members_start_epochs_and_only_on_schedule() {
    let (mut m, a) = crate::sim::tests::attested(4, 0, 1000);
    m.genesis_ms = 1_000_000_000;
    m.epoch_length_secs = 600;
    let member_msg = EpochMessage::Attestation(Box::new(a.clone()));
    assert_eq!(may_start_from(&m, 1, &member_msg, u64::MAX), StartGate::NoSigner, "no single signer");
    let outsider = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let w = |key: &ed25519_dalek::SigningKey, e: u64| {
        let body = crate::attribution::epoch::messages::Witness { datanet: m.id(), epoch: e, pending: 0, seen: vec![] };
        EpochMessage::Witness(Box::new(crate::codec::Signed::sign(body, key)))
    };
    assert_eq!(may_start_from(&m, 1, &w(&outsider, 1), u64::MAX), StartGate::NotMember);
    let member = crate::sim::member_keys(1000, 4)[0].clone();
    let skew = m.protocol.clock_skew_ms;
    let e2 = m.genesis_ms + 600_000 - skew;
    assert_eq!(may_start_from(&m, 1, &w(&member, 1), m.genesis_ms - skew), StartGate::Open);
    assert_eq!(may_start_from(&m, 2, &w(&member, 2), e2 - 1), StartGate::Early { opens_ms: e2 });
    assert_eq!(may_start_from(&m, 2, &w(&member, 2), e2), StartGate::Open);
    assert_eq!(m.epoch_window_ms(2), (m.genesis_ms + 600_000, m.genesis_ms + 1_200_000));
}

// Records admitted before their evaluation twin was known earn nothing: exact and near copies of public, earlier-revealed and this epoch's sealed records leave the input set; the rest stay.
#[test]
fn contaminated_inputs_leave_the_plan() {
    let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/datanets");
    let (m, blobs) = crate::manifest::ManifestFile::read(&examples.join("instruct.toml"))
        .unwrap()
        .into_manifest(&examples, crate::identity::Identity::from_seed([3; 32]).public_key(), &|_| Ok(()))
        .unwrap();
    let public = admission::parse_eval(&m, &blobs.public).unwrap();
    let canon = |p: &str, c: &str| {
        admission::canonical::canonicalize(&m.task, serde_json::json!({"prompt": p, "completion": c}), 8192).unwrap()
    };
    let eval = |p: &str, c: &str| admission::EvalRecord { slice: "critical".into(), record: canon(p, c) };
    let revealed = vec![eval("Negate 314.", "-314")];
    let opened = vec![eval(
        "Negate 2718 and write the result as one plain integer with its sign in front of it, nothing else at all.",
        "-2718",
    )];
    let rec = |p: &str, c: &str| {
        let r = canon(p, c);
        AdmittedRecord {
            hash: r.hash,
            value: r.value,
            priority: 1,
            contribution: ContributionId([1; 32]),
            owners: vec![PeerKey([1; 32])],
            cluster: None,
        }
    };
    let records = vec![
        rec("Negate 2.", "-2"),     // public evaluation record
        rec("Negate 314.", "-314"), // revealed in an earlier epoch
        rec(
            "Negate 2718 and write the result as one plain integer with its sign in front of it, nothing else at all!",
            "-2718",
        ), // near copy of this epoch's split
        rec("Negate 55.", "-55"),
        rec("What colour is a lemon?", "yellow"),
    ];
    let kept = uncontaminated(&m, records, &public, &revealed, &opened, 2);
    let prompts: Vec<&str> = kept.iter().map(|r| r.value["prompt"].as_str().unwrap()).collect();
    assert_eq!(prompts, vec!["Negate 55.", "What colour is a lemon?"]);
}

// The sealed split's starting bitmaps: fresh for the first epoch, the previous attestation's after it, a clear error when the ledger lacks it.
#[tokio::test(flavor = "multi_thread")]
async fn sealed_bitmaps_come_from_the_previous_attestation() {
    let (m, _) = crate::sim::tests::attested(4, 0, 1000);
    let mut m = m;
    m.eval.sealed = vec![crate::sealed::SealedPart { slice: "all".into(), count: 20, root: Default::default() }];
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(sealed_used(&store, &m, FIRST_EPOCH, &m.eval.sealed).unwrap(), vec![vec![0u8; 3]]);
    let err = sealed_used(&store, &m, 3, &m.eval.sealed).unwrap_err();
    assert!(err.contains("epoch 3 needs the attestation of epoch 2") && err.contains("empty"), "{err}");
    // Without the pool a member cannot choose a split, and says how to get it.
    let err = sealed_split(&store, &m, FIRST_EPOCH, &[0; 32]).unwrap_err();
    assert!(err.contains("datanet datanet sealed import"), "{err}");
    let s = sealed_status(&store, &m).unwrap();
    assert_eq!((s.held, s.epochs_left, s.parts[0].remaining), (false, 1, 20));
    assert!(s.low, "one epoch left is below the default of 3");
}

// Epochs draw their split from the manifest's parts and, from its first epoch on, a founder-signed extension's: the second epoch's reveal continues the first's bitmaps and verifies against the manifest plus the extension it carries.
#[tokio::test(flavor = "multi_thread")]
async fn sealed_split_follows_the_ledger_and_extensions() {
    let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/datanets");
    let founder = crate::identity::Identity::from_seed([4; 32]);
    let (mut m, blobs) = crate::manifest::ManifestFile::read(&examples.join("instruct.toml"))
        .unwrap()
        .into_manifest(&examples, founder.public_key(), &|_| Ok(()))
        .unwrap();
    let mut pool = admission::sealed::seal_pool(&m, blobs.secret.as_deref().unwrap(), [6; 32]).unwrap();
    m.eval.sealed = pool.commitment();
    let more = b"{\"prompt\":\"Negate 12345.\",\"completion\":\"-12345\",\"slice\":\"critical\"}\n";
    let ext = admission::sealed::extend_pool(&m, &mut pool, more, 2, &founder.signing_key()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store.put_sealed_pool(&m.id(), &pool).await.unwrap();
    let split = m.protocol.sealed_split;
    // Epoch 1: the manifest's two parts only (the extension starts at epoch 2).
    let (r1, opened1) = sealed_split(&store, &m, 1, &[1; 32]).unwrap().unwrap();
    assert_eq!((r1.extensions.len(), r1.parts.len(), opened1.len()), (0, 2, 2 * split as usize));
    crate::sealed::verify_reveal(&m.eval.sealed, split, &[1; 32], &r1, None).unwrap();
    // The ledger's epoch 1 (only its reveal matters here).
    let (_, mut a1) = crate::sim::tests::attested(4, 0, 1000);
    a1.score.header.datanet = m.id();
    a1.score.header.epoch = 1;
    a1.sealed = Some(r1.clone());
    Ledger::open(store.db()).append(&a1, &[]).unwrap();
    let (r2, _) = sealed_split(&store, &m, 2, &[2; 32]).unwrap().unwrap();
    assert_eq!((r2.extensions.clone(), r2.parts.len()), (vec![ext], 3));
    let parts = m.sealed_parts(&r2.extensions, 2).unwrap();
    crate::sealed::verify_reveal(&parts, split, &[2; 32], &r2, Some(&r1)).unwrap();
    // An extension claimed for an epoch before its own is refused.
    assert!(m.sealed_parts(&r2.extensions, 1).is_err());
    let s = sealed_status(&store, &m).unwrap();
    assert_eq!(s.parts.len(), 3);
}

// Ledger catch-up appends an attestation that verifies and is the next epoch, refuses a tampered one or a repeat, and serves what the ledger holds.
#[tokio::test(flavor = "multi_thread")]
async fn caught_up_attestations_are_verified_before_appending() {
    let (m, a) = crate::sim::tests::attested(4, 0, 1000); // the simulator's epoch is 1 + seed % 1000
    let d = m.id();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let mut forged = a.clone();
    forged.leaves[0].reward += 1;
    let err = adopt_attestations(&store, &m, &[codec::encode(&forged)]).await.unwrap_err();
    assert!(err.contains("epoch 1"), "{err}");
    assert!(Ledger::open(store.db()).head(&d).unwrap().is_none(), "nothing appended");
    assert_eq!(adopt_attestations(&store, &m, &[codec::encode(&a)]).await.unwrap(), 1);
    assert_eq!(Ledger::open(store.db()).head(&d).unwrap().map(|h| (h.epoch, h.hash)), Some((1, a.hash())));
    let again = adopt_attestations(&store, &m, &[codec::encode(&a)]).await.unwrap_err();
    assert!(again.contains("epoch 2 was expected"), "{again}");
    match answer_attestations(&store, &d, 1, 100) {
        CatchupResponse::Attestations { items } => assert_eq!(items, vec![codec::encode(&a)]),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(answer_attestations(&store, &d, 2, 100), CatchupResponse::Attestations { items } if items.is_empty())
    );
}
