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
