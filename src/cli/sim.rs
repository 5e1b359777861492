//! `datanet sim`: the deterministic epoch-agreement simulator (and `--bench`, the agreement
//! benchmark behind `make bench-agreement`).

use super::Global;
use crate::attribution::epoch::certificate::{Certificate, committee_root};
use crate::attribution::epoch::messages::{CertHeader, Phase, Sig, Vote, VoteKind};
use crate::ids::{DatanetId, MerkleRoot, PeerKey};
use crate::sim::byzantine::Strategy;
use crate::sim::{SimConfig, max_faulty, run};
use clap::Args;
use ed25519_dalek::SigningKey;
use std::time::Instant;

/// Arguments of `datanet sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Committee size.
    #[arg(long, default_value_t = 4)]
    pub peers: usize,
    /// Byzantine members (default f = ⌊(n−1)/3⌋; more runs beyond the threshold).
    #[arg(long)]
    pub byzantine: Option<usize>,
    /// Number of seeds to run (from --seed, default 0).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// Replay exactly this seed (with --seeds 1) or start here.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only these Byzantine strategies (repeatable): wrong-utilities, self-inflation,
    /// withhold-reveals, late-reveals, copy-reveals, invalid-signatures, equivocate, oversize, silent.
    #[arg(long = "strategy")]
    pub strategies: Vec<String>,
    /// No network faults, partitions or crashes.
    #[arg(long)]
    pub no_faults: bool,
    /// Train with the trainer's tiny LoRA instead of the noisy oracle.
    #[arg(long)]
    pub real: bool,
    /// Run the agreement benchmark instead (certificate verification and time to certificate).
    #[arg(long)]
    pub bench: bool,
}

/// Runs the simulator or the benchmark.
pub async fn run_cmd(args: SimArgs, g: &Global) -> anyhow::Result<()> {
    if args.bench {
        return bench();
    }
    if args.real {
        anyhow::bail!("--real is not wired yet: the simulator measures jobs with its noisy oracle (drop --real)");
    }
    let strategies: Vec<Strategy> = args
        .strategies
        .iter()
        .map(|s| Strategy::parse(s).ok_or_else(|| anyhow::anyhow!("unknown strategy {s:?}")))
        .collect::<anyhow::Result<_>>()?;
    let f = args.byzantine.unwrap_or_else(|| max_faulty(args.peers));
    anyhow::ensure!(args.peers >= 1 && args.peers <= 512, "--peers must be between 1 and 512");
    let (first, count) = match args.seed {
        Some(s) if args.seeds == 100 => (s, 1),
        Some(s) => (s, args.seeds),
        None => (0, args.seeds),
    };
    let cfg_for = |seed: u64| SimConfig {
        faults: !args.no_faults,
        strategies: (!strategies.is_empty()).then(|| strategies.clone()),
        ..SimConfig::new(args.peers, f, seed)
    };
    let started = Instant::now();
    let mut failed = 0u64;
    let mut certified = Vec::new();
    for seed in first..first + count {
        let r = run(cfg_for(seed));
        if let Some(t) = r.certified_ms {
            certified.push(t);
        }
        if !r.violations.is_empty() {
            failed += 1;
            eprintln!(
                "seed {seed} FAILED (byzantine: {:?})",
                r.byzantine.iter().map(|b| b.1.name()).collect::<Vec<_>>()
            );
            for v in &r.violations {
                eprintln!("  {v}");
            }
            eprintln!("  replay: datanet sim --peers {} --byzantine {f} --seed {seed}", args.peers);
            if count == 1 {
                // Replaying one seed: dump every member's agreement state at the end.
                let (_, _, lines) = crate::sim::Sim::new(cfg_for(seed)).run_debug();
                for l in lines {
                    eprintln!("  {l}");
                }
            }
        } else if count == 1 || g.json {
            println!(
                "seed {seed} ok: certificate at {:?} ms, {} of {} honest attested, {} deliveries, {} rejected, evidence against {} keys",
                r.certified_ms, r.honest_attested, r.honest, r.deliveries, r.rejected, r.evidence_offenders
            );
        }
    }
    certified.sort_unstable();
    let median = certified.get(certified.len() / 2).copied().unwrap_or(0);
    println!(
        "{} seeds, n={} f={}: {} passed, {} failed; median time to certificate {} ms (simulated); {:.1} s",
        count,
        args.peers,
        f,
        count - failed,
        failed,
        median,
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(failed == 0, "{failed} seeds failed");
    Ok(())
}

/// A certificate signed by all `n` members, with its committee.
pub fn full_certificate(n: usize) -> (Certificate, Vec<PeerKey>) {
    let mut keys: Vec<SigningKey> =
        (0..n).map(|i| SigningKey::from_bytes(blake3::hash(&[i as u8]).as_bytes())).collect();
    keys.sort_by_key(|k| k.verifying_key().to_bytes());
    let members: Vec<PeerKey> = keys.iter().map(|k| PeerKey(k.verifying_key().to_bytes())).collect();
    let header = CertHeader {
        datanet: DatanetId([1; 32]),
        epoch: 1,
        phase: Phase::Score,
        view: 0,
        committee_root: committee_root(&members),
        input_root: MerkleRoot([2; 32]),
        report_set_root: MerkleRoot([3; 32]),
        credit_root: MerkleRoot([4; 32]),
        prev_attestation: [5; 32],
    };
    let sigs: Vec<(usize, Sig)> =
        keys.iter().enumerate().map(|(i, k)| (i, Vote::sign(VoteKind::Commit, header, k).signature)).collect();
    (Certificate::assemble(VoteKind::Commit, header, n, &sigs), members)
}

fn time_us(iters: u32, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / iters as f64
}

fn bench() -> anyhow::Result<()> {
    let (cert, members) = full_certificate(21);
    let single = time_us(200, || cert.verify(&members).expect("certificate verifies"));
    println!("certificate verification, 21 signers: verify_strict per signer {single:.0} µs");
    let mut cert_ms = Vec::new();
    for n in [7usize, 31] {
        let mut cfg = SimConfig::new(n, 0, 1);
        cfg.faults = false;
        cfg.fixed_link_ms = Some(50);
        cfg.jobs = 16;
        cfg.units = 8;
        let t = Instant::now();
        let r = run(cfg);
        anyhow::ensure!(r.violations.is_empty(), "benchmark run failed: {:?}", r.violations);
        let ms = r.reveal_to_cert_ms().ok_or_else(|| anyhow::anyhow!("n={n}: no certificate"))?;
        println!(
            "n={n}: last reveal → certificate {ms} ms simulated (50 ms links), {} deliveries, {:.2} s wall",
            r.deliveries,
            t.elapsed().as_secs_f64()
        );
        cert_ms.push(ms);
    }
    println!("RESULT verify21_us={single:.0} cert_ms_n7={} cert_ms_n31={}", cert_ms[0], cert_ms[1]);
    Ok(())
}
