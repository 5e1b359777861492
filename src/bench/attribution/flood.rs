//! DatanetBench S14, the id-grinding flood: the witnesses a committee would sign when an attacker
//! floods the freeze with junk contributions right after an honest one, and the real
//! [`freeze`] over them.
//!
//! The model (times in milliseconds of the epoch):
//! - honest contribution `i` is announced at `1000 · (i + 1)`; each honest member first sees it
//!   after a gossip delay uniform in `[0, GOSSIP_SPREAD_MS)`;
//! - the flood: junk contribution `j` is announced at `t_last + 1 + j / FLOOD_PER_MS` (`t_last`:
//!   the last honest contribution's announcement) and seen after a delay from the same range, but
//!   never before that member saw the last honest contribution: witnessed AFTER the honest ones
//!   by every honest member;
//! - junk ids are ground to sort first in byte order (their first 32 bits are zero), so they win
//!   every (time, id) tie in [`my_witness_items`] and in the freeze;
//! - the committee has `n` members of which `f = ⌊(n − 1)/3⌋` collude with the flooder, and the
//!   freeze leader is one of them: its proposal carries a bare quorum of witnesses, every liar's
//!   among them. A liar lists the first-announced junk (as many as a witness may) at time 0,
//!   omits every honest contribution and claims `u32::MAX` pending contributions.
//!
//! Honest members sign what the daemon signs: [`my_witness_items`] over everything they hold,
//! under [`witness_cap`].

use crate::attribution::epoch::freeze::{Frozen, freeze, my_witness_items, witness_cap};
use crate::attribution::epoch::messages::Witness;
use crate::ids::{ContributionId, DatanetId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Spread of gossip delays between an announcement and a member's first sight of it.
pub const GOSSIP_SPREAD_MS: u64 = 200;
/// Junk contributions the flooder announces per millisecond.
pub const FLOOD_PER_MS: u64 = 10;

/// The freeze of one flooded epoch and the ids it was computed over.
#[derive(Clone, Debug)]
pub struct FloodFreeze {
    pub frozen: Frozen,
    /// Ids of the honest contributions, in announcement order.
    pub honest: Vec<ContributionId>,
    /// Ids of the junk contributions, in announcement order (ground: they sort first).
    pub junk: Vec<ContributionId>,
    /// Committee size, colluding members and witnesses in the proposal.
    pub committee: usize,
    pub liars: usize,
    pub witnesses: usize,
}

impl FloodFreeze {
    /// Each item's certified priority.
    pub fn priorities(&self) -> BTreeMap<ContributionId, u64> {
        self.frozen.items.iter().copied().collect()
    }

    /// How many of the honest contributions are in the input set.
    pub fn honest_in(&self) -> usize {
        let p = self.priorities();
        self.honest.iter().filter(|c| p.contains_key(c)).count()
    }

    /// Junk contributions in the input set with a priority before the last honest contribution's.
    pub fn junk_before_last_honest(&self) -> usize {
        let p = self.priorities();
        let Some(last) = self.honest.last().and_then(|c| p.get(c)) else { return 0 };
        self.junk.iter().filter_map(|c| p.get(c)).filter(|&&t| t < *last).count()
    }
}

/// The witnesses and the freeze of an epoch with `honest` honest contributions followed by a
/// flood of `flood` junk ones, in a committee of `committee`; deterministic in `seed`.
pub fn flood_freeze(honest: usize, flood: usize, committee: usize, seed: u64) -> FloodFreeze {
    let n = committee.max(1);
    let liars = (n - 1) / 3;
    let quorum = crate::manifest::quorum_for(n).min(n);
    let cap = witness_cap(n);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5314_f100d);
    let id = |kind: &str, i: usize| *blake3::hash(format!("datanet-bench/S14/{kind}/{seed}/{i}").as_bytes()).as_bytes();
    let honest_ids: Vec<ContributionId> = (0..honest).map(|i| ContributionId(id("honest", i))).collect();
    let junk_ids: Vec<ContributionId> = (0..flood)
        .map(|j| {
            let mut b = id("junk", j);
            b[..4].fill(0);
            ContributionId(b)
        })
        .collect();
    let t_last = 1000 * honest as u64;
    let datanet = DatanetId([0x14; 32]);
    let mut witnesses = Vec::with_capacity(quorum);
    for _ in 0..quorum - liars {
        let mut held = BTreeMap::new();
        let mut last_seen = 0;
        for (i, c) in honest_ids.iter().enumerate() {
            let t = 1000 * (i as u64 + 1) + rng.gen_range(0..GOSSIP_SPREAD_MS);
            last_seen = last_seen.max(t);
            held.insert(*c, t);
        }
        for (j, c) in junk_ids.iter().enumerate() {
            let t = t_last + 1 + j as u64 / FLOOD_PER_MS + rng.gen_range(0..GOSSIP_SPREAD_MS);
            held.insert(*c, t.max(last_seen + 1));
        }
        let (seen, pending) = my_witness_items(&held, &BTreeMap::new(), cap);
        witnesses.push(Witness { datanet, epoch: 1, pending, seen });
    }
    for _ in 0..liars {
        let mut seen: Vec<(ContributionId, u64)> = junk_ids.iter().take(cap).map(|c| (*c, 0)).collect();
        seen.sort_unstable();
        witnesses.push(Witness { datanet, epoch: 1, pending: u32::MAX, seen });
    }
    let refs: Vec<&Witness> = witnesses.iter().collect();
    FloodFreeze {
        frozen: freeze(&BTreeMap::new(), &refs),
        honest: honest_ids,
        junk: junk_ids,
        committee: n,
        liars,
        witnesses: witnesses.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The full 20,000-id flood of testnet/bench/s14-id-grinding-flood.toml (ground ids, a lying
    // member, a bare quorum): every honest contribution is in the input set, each at a time an
    // honest member saw it, and what does not fit is deferred.
    #[test]
    fn the_full_flood_keeps_the_honest_contributions() {
        for committee in [4, 5, 7] {
            for seed in 1..=3 {
                let f = flood_freeze(4, 20_000, committee, seed);
                let p = f.priorities();
                for (i, c) in f.honest.iter().enumerate() {
                    let t =
                        p.get(c).copied().unwrap_or_else(|| panic!("n={committee} seed {seed}: honest {i} left out"));
                    let sent = 1000 * (i as u64 + 1);
                    assert!((sent..sent + GOSSIP_SPREAD_MS).contains(&t), "honest {i} at {t}");
                }
                assert_eq!(f.honest_in(), 4);
                // Deferred: what the honest witnesses hold beyond what one witness may list.
                assert_eq!(f.frozen.deferred as usize, 20_004 - witness_cap(committee));
                assert!(f.frozen.items.len() <= crate::attribution::epoch::messages::INPUT_ITEMS_MAX);
            }
        }
        // Without the flood the same honest contributions are frozen, nothing deferred.
        let calm = flood_freeze(4, 0, 4, 1);
        assert_eq!((calm.honest_in(), calm.frozen.items.len(), calm.frozen.deferred), (4, 4, 0));
    }
}
