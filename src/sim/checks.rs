//! The invariants checked after every simulated run.

use super::{Sim, max_faulty};
use crate::attribution::epoch::assign;
use crate::attribution::epoch::messages::Phase;
use crate::attribution::epoch::scoring::score_reports;
use crate::attribution::leaves_bytes;
use std::collections::{BTreeMap, BTreeSet};

/// Returns one line per violated invariant.
pub fn check(sim: &mut Sim) -> Vec<String> {
    let mut v = Vec::new();
    let n = sim.cfg.peers;
    let members = sim.members.clone();
    let beyond = sim.cfg.byzantine > max_faulty(n);

    // 1. One payload per (Datanet, epoch, phase); every certificate verifies.
    let mut payloads: BTreeMap<Phase, BTreeSet<[u8; 32]>> = BTreeMap::new();
    for (node, c) in &sim.obs.certificates {
        if let Err(e) = c.verify(&members) {
            v.push(format!("member {node} accepted a certificate that does not verify: {e}"));
        }
        payloads.entry(c.header.phase).or_default().insert(c.header.payload_key());
    }
    let conflicts: Vec<Phase> = payloads.iter().filter(|(_, s)| s.len() > 1).map(|(p, _)| *p).collect();
    let offenders: BTreeSet<_> = sim.honest_machines().flat_map(|(_, m)| m.offenders()).collect();
    for p in &conflicts {
        if !beyond {
            v.push(format!("two certificates with different payloads for phase {p:?}"));
        } else if offenders.len() * 3 < n {
            v.push(format!(
                "conflicting {p:?} certificates beyond the threshold, but evidence names only {} of {n} keys",
                offenders.len()
            ));
        }
    }

    // 2. Certified credit recomputes from the certified report set; 3. identical signed bytes.
    let mut reference: Option<(usize, [u8; 32], Vec<u8>)> = None;
    let atts: Vec<(usize, crate::attribution::epoch::Attestation)> =
        sim.obs.attestations.iter().map(|(i, a)| (*i, a.clone())).collect();
    for (node, a) in &atts {
        let seed = assign::epoch_seed(&a.input.header);
        let plan = sim.plan_for(seed);
        match score_reports(&plan, &a.reports, assign::min_reports(sim.epoch_cfg.replication), sim.epoch_cfg.tau) {
            Ok(o) => {
                if o.credit_root != a.score.header.credit_root || o.scores.leaves != a.leaves {
                    v.push(format!("member {node}: certified credit differs from the recomputation"));
                }
            }
            Err(e) => v.push(format!("member {node}: certified report set does not score: {e}")),
        }
        let bytes = leaves_bytes(&a.leaves);
        match &reference {
            None => reference = Some((*node, a.score.header.payload_key(), bytes)),
            Some((r, key, b)) => {
                if !beyond && (*key != a.score.header.payload_key() || *b != bytes) {
                    v.push(format!("members {r} and {node} hold different attested bytes"));
                }
            }
        }
    }

    // 3b. Witnessed priority: every certified priority is a known one or lies within what the
    // honest members saw (no backdating witness can move it outside).
    if !beyond {
        let honest: Vec<usize> = (0..n).filter(|i| sim.nodes[*i].strategy.is_none()).collect();
        let seen: Vec<BTreeMap<_, u64>> = honest.iter().map(|i| sim.first_seen(*i).into_iter().collect()).collect();
        for (node, a) in &atts {
            for (c, p) in &a.inputs {
                if sim.epoch_cfg.known.get(c) == Some(p) {
                    continue;
                }
                let times: Vec<u64> = seen.iter().filter_map(|m| m.get(c).copied()).collect();
                let (lo, hi) = (times.iter().min().copied().unwrap_or(0), times.iter().max().copied().unwrap_or(0));
                if !(lo..=hi).contains(p) {
                    v.push(format!(
                        "member {node}: priority {p} of {} outside the honest times {lo}..={hi}",
                        c.short()
                    ));
                }
            }
        }
    }

    // 4. Every equivocator is named by evidence at every honest member that is up.
    for k in &sim.obs.equivocators {
        for (i, m) in sim.honest_machines() {
            if !m.offenders().contains(k) {
                v.push(format!("member {i} holds no evidence against equivocator {}", k.short()));
            }
        }
    }

    // 5. Liveness within two epoch timeouts after the faults healed.
    if !beyond {
        let bound = sim.healed_ms + 2 * sim.cfg.timing.epoch_timeout_ms();
        match sim.report.certified_ms {
            None => v.push(format!("no certificate by {} ms (faults healed at {} ms)", sim.now(), sim.healed_ms)),
            Some(t) if t > bound => v.push(format!("certificate at {t} ms, later than the bound {bound} ms")),
            _ => {}
        }
        let up: Vec<usize> = sim.honest_machines().map(|(i, _)| i).collect();
        for i in up {
            if !sim.obs.attestations.contains_key(&i) {
                v.push(format!("honest member {i} never attested"));
            }
        }
    }
    sim.report.evidence_offenders = offenders.len();
    v
}
