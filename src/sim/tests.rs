use super::*;

fn assert_seeds(peers: usize, seeds: u64) {
    let f = max_faulty(peers);
    let failed = run_many(peers, f, 0, seeds, true);
    if let Some(r) = failed.first() {
        panic!(
            "{} of {seeds} seeds failed for n={peers}, f={f}; first: seed {} ({:?}): {:?}; replay with `datanet sim --peers {peers} --byzantine {f} --seed {}`",
            failed.len(),
            r.seed,
            r.byzantine.iter().map(|b| b.1).collect::<Vec<_>>(),
            r.violations,
            r.seed
        );
    }
}

// A fault-free run with no Byzantine member attests at every member with identical bytes.
#[test]
fn clean_run_attests_everywhere() {
    let r = run(SimConfig { faults: false, ..SimConfig::new(4, 0, 1) });
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.honest_attested, 4);
}

// 200 seeds with n = 4, f = 1 Byzantine and network faults pass every check.
#[test]
fn sim_n4_200_seeds() {
    assert_seeds(4, 200);
}

// 200 seeds with n = 7, f = 2 Byzantine and network faults pass every check.
#[test]
fn sim_n7_200_seeds() {
    assert_seeds(7, 200);
}

// 50 seeds with n = 16, f = 5 Byzantine and network faults pass every check.
#[test]
fn sim_n16_50_seeds() {
    assert_seeds(16, 50);
}

// The same seed replays to the same result (determinism).
#[test]
fn seed_replays_exactly() {
    let a = run(SimConfig::new(7, 2, 42));
    let b = run(SimConfig::new(7, 2, 42));
    assert_eq!(
        (a.deliveries, a.certified_ms, a.end_ms, a.rejected),
        (b.deliveries, b.certified_ms, b.end_ms, b.rejected)
    );
}

// Every equivocator is caught: with only equivocating Byzantine members, every honest member holds evidence.
#[test]
fn equivocators_are_named() {
    for seed in 0..20 {
        let r =
            run(SimConfig { strategies: Some(vec![byzantine::Strategy::Equivocate]), ..SimConfig::new(7, 2, seed) });
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        assert_eq!(r.evidence_offenders, 2, "seed {seed}");
    }
}

fn manifest_for(members: Vec<PeerKey>) -> crate::manifest::Manifest {
    use crate::ids::BlobHash;
    use crate::manifest::*;
    Manifest {
        name: "sim".into(),
        description: "simulated Datanet".into(),
        task: TaskKind::Text,
        license: "CC0-1.0".into(),
        admission: AdmissionRules {
            record_bytes_max: 4096,
            contribution_bytes_max: 1 << 20,
            contribution_records_max: 1000,
            near_duplicate_threshold_ppm: 900_000,
            near_duplicate_digits: 3,
        },
        base_model: BaseModel { family: "mlp".into(), hash: BlobHash::default(), preset: "tiny".into(), seed: 1 },
        recipe: Recipe {
            lora_rank: 4,
            lora_alpha: 8,
            lora_dropout_ppm: 0,
            target_modules: vec!["all".into()],
            steps: 10,
            learning_rate_ppm: 1000,
            batch: 8,
            sequence_length: 64,
            records_per_unit_max: 64,
            seed: 1,
        },
        eval: EvalSuite { public_hash: BlobHash::default(), sealed: vec![], slices: vec![] },
        founder: members[0],
        committee: Committee { members },
        epoch_length_secs: 3600,
        genesis_ms: 0,
        protocol: Default::default(),
        seeds: vec![],
        reward_pool: 1_000_000,
        version: 1,
    }
}

/// A manifest for `n` simulated members and the attestation of a simulated epoch 1 under it.
pub(crate) fn attested(
    n: usize,
    byzantine: usize,
    seed: u64,
) -> (crate::manifest::Manifest, crate::attribution::epoch::Attestation) {
    let members: Vec<PeerKey> = member_keys(seed, n).iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
    let m = manifest_for(members);
    let (r, atts) = Sim::new(SimConfig { datanet: Some(m.id()), ..SimConfig::new(n, byzantine, seed) }).run_keep();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    (m, atts.into_values().next().expect("an honest member attested"))
}

// A simulated epoch's attestation verifies offline against the manifest, and every contributor's proof checks.
#[test]
fn attestation_verifies_offline_with_proofs() {
    let (m, a) = attested(7, 2, 3);
    a.verify(&m, None).unwrap();
    let bytes = codec::encode(&a);
    let back: crate::attribution::epoch::Attestation = codec::decode(&bytes).unwrap();
    back.verify(&m, None).unwrap();
    for leaf in &a.leaves {
        let p = a.prove(&leaf.contributor).unwrap();
        p.verify(&a.score.header).unwrap();
        let pb = codec::encode(&p);
        for i in (0..pb.len() * 8).step_by(7) {
            let mut x = pb.clone();
            x[i / 8] ^= 1 << (i % 8);
            let ok = codec::decode::<crate::attribution::epoch::CreditProof>(&x)
                .map(|q| q.verify(&a.score.header).is_ok() && q.leaf == p.leaf)
                .unwrap_or(false);
            assert!(!ok || codec::decode::<crate::attribution::epoch::CreditProof>(&x).unwrap() == p, "proof bit {i}");
        }
    }
}

// Any single bit flipped in an encoded attestation makes it fail to decode or to verify.
#[test]
fn attestation_bit_flips_fail() {
    let (m, a) = attested(4, 1, 5);
    let bytes = codec::encode(&a);
    let step = (bytes.len() * 8 / 600).max(1);
    for i in (0..bytes.len() * 8).step_by(step) {
        let mut x = bytes.clone();
        x[i / 8] ^= 1 << (i % 8);
        let ok = codec::decode::<crate::attribution::epoch::Attestation>(&x)
            .map(|b| b.verify(&m, None).is_ok())
            .unwrap_or(false);
        assert!(!ok, "bit {i} of {} flipped and the attestation still verifies", bytes.len() * 8);
    }
}

// The next epoch chains to the previous attestation's hash; a wrong link is refused.
#[test]
fn attestations_chain() {
    let (m, a) = attested(4, 0, 8);
    let mut next = a.clone();
    next.score.header.epoch += 1;
    assert!(next.verify(&m, Some(&a)).is_err());
}

// Beyond the threshold (f ≥ n/3), any conflicting certificates come with evidence naming ≥ n/3 keys.
#[test]
fn beyond_threshold_conflicts_have_evidence() {
    for seed in 0..40 {
        let r = run(SimConfig {
            strategies: Some(vec![byzantine::Strategy::Equivocate, byzantine::Strategy::InvalidSignatures]),
            ..SimConfig::new(4, 2, seed)
        });
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
    }
}
