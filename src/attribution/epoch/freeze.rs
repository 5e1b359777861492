//! Witnessed priority and the fair freeze: which contributions an epoch values, and in which
//! order their records were first — decided by when the committee saw them, never by a
//! timestamp the contributor signed.
//!
//! Each member signs a [`Witness`]: its own first-seen time of every contribution it holds that
//! has no certified priority yet (the oldest [`witness_cap`] of them). The freeze leader puts at
//! least a quorum of witnesses in its proposal, and every member recomputes the same items:
//! - a new contribution's **priority** is the lower median of the witnesses' times, a witness
//!   that does not list it counting as "never seen"; with w ≥ 2f + 1 witnesses of which at most f
//!   lie, that median lies between two honest members' times, so neither a backdated
//!   `created_ms` nor a lying member can move it outside what honest members saw. A contribution
//!   seen by fewer than half of the witnesses has no priority yet and waits for the next epoch.
//! - a contribution frozen in an earlier epoch keeps its certified priority forever (`known`,
//!   read from the ledger's attestations).
//! - the input set is every prioritized contribution in (priority, id) order, oldest first, up to
//!   [`INPUT_ITEMS_MAX`]; what does not fit is counted as **deferred** and carried to the next
//!   epoch. A flood announced after an honest contribution therefore cannot push it out.
//!
//! Pure: no clock, no I/O.

use super::messages::{INPUT_ITEMS_MAX, Witness};
use crate::ids::{ContributionId, MerkleRoot};
use crate::manifest::quorum_for;
use std::collections::BTreeMap;

/// Most items one witness may list in a committee of `n`: 2,048, fewer in large committees so
/// that a proposal's quorum of witnesses stays within ~2 MiB.
pub fn witness_cap(n: usize) -> usize {
    const ITEM_BYTES: usize = 32 + 10;
    ((2 * 1024 * 1024) / (quorum_for(n.max(1)) * ITEM_BYTES)).clamp(16, 2048)
}

/// The lower median of `times` among `witnesses` reports, absent reports counting as infinite;
/// `None` when fewer than half saw it.
fn lower_median(mut times: Vec<u64>, witnesses: usize) -> Option<u64> {
    if witnesses == 0 {
        return None;
    }
    let m = (witnesses - 1) / 2;
    if times.len() <= m {
        return None;
    }
    times.sort_unstable();
    Some(times[m])
}

/// The certified freeze: items (sorted by id) with their priorities, and how many prioritized or
/// pending contributions did not fit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frozen {
    pub items: Vec<(ContributionId, u64)>,
    pub deferred: u32,
}

/// The freeze every member derives from the same witnesses and the same certified priorities.
pub fn freeze(known: &BTreeMap<ContributionId, u64>, witnesses: &[&Witness]) -> Frozen {
    let w = witnesses.len();
    let mut times: BTreeMap<ContributionId, Vec<u64>> = BTreeMap::new();
    for wi in witnesses {
        for (c, t) in &wi.seen {
            if !known.contains_key(c) {
                times.entry(*c).or_default().push(*t);
            }
        }
    }
    let mut candidates: Vec<(u64, ContributionId)> = known.iter().map(|(c, p)| (*p, *c)).collect();
    candidates.extend(times.into_iter().filter_map(|(c, ts)| lower_median(ts, w).map(|p| (p, c))));
    candidates.sort_unstable();
    let over = candidates.len().saturating_sub(INPUT_ITEMS_MAX);
    candidates.truncate(INPUT_ITEMS_MAX);
    // Contributions some witness holds but could not list (over its cap): lower median as well.
    let unlisted: Vec<u64> = witnesses.iter().map(|w| w.pending.saturating_sub(w.seen.len() as u32) as u64).collect();
    let unlisted = lower_median(unlisted, w).unwrap_or(0);
    let mut items: Vec<(ContributionId, u64)> = candidates.into_iter().map(|(p, c)| (c, p)).collect();
    items.sort_unstable();
    Frozen { items, deferred: (over as u64 + unlisted).min(u32::MAX as u64) as u32 }
}

/// The input root a freeze certificate signs: the Merkle root of `H(id ‖ priority)` leaves in id
/// order, bound to the deferred count.
pub fn input_root(items: &[(ContributionId, u64)], deferred: u32) -> MerkleRoot {
    let leaves: Vec<[u8; 32]> = items
        .iter()
        .map(|(c, p)| {
            let mut h = blake3::Hasher::new_derive_key("datanet/epoch/freeze-item/v1");
            h.update(c.as_bytes());
            h.update(&p.to_le_bytes());
            *h.finalize().as_bytes()
        })
        .collect();
    let mut h = blake3::Hasher::new_derive_key("datanet/epoch/input-root/v1");
    h.update(crate::merkle::root(&leaves).as_bytes());
    h.update(&deferred.to_le_bytes());
    MerkleRoot(*h.finalize().as_bytes())
}

/// The witness a member signs: its oldest `cap` held contributions without a certified priority,
/// by its own first-seen time (ties by id), listed in id order.
pub fn my_witness_items(
    held: &BTreeMap<ContributionId, u64>,
    known: &BTreeMap<ContributionId, u64>,
    cap: usize,
) -> (Vec<(ContributionId, u64)>, u32) {
    let mut fresh: Vec<(u64, ContributionId)> =
        held.iter().filter(|(c, _)| !known.contains_key(*c)).map(|(c, t)| (*t, *c)).collect();
    let pending = fresh.len().min(u32::MAX as usize) as u32;
    fresh.sort_unstable();
    fresh.truncate(cap);
    let mut seen: Vec<(ContributionId, u64)> = fresh.into_iter().map(|(t, c)| (c, t)).collect();
    seen.sort_unstable();
    (seen, pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DatanetId;
    use proptest::prelude::*;

    fn id(i: u32) -> ContributionId {
        ContributionId(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    fn witness(seen: Vec<(ContributionId, u64)>) -> Witness {
        let mut seen = seen;
        seen.sort_unstable();
        let pending = seen.len() as u32;
        Witness { datanet: DatanetId([1; 32]), epoch: 1, pending, seen }
    }

    // A contribution's priority is the median of what the witnesses saw: one lying witness of three cannot move it outside the honest times.
    #[test]
    fn priority_is_the_median_of_witnessed_times() {
        let c = id(1);
        let honest = [witness(vec![(c, 1_000)]), witness(vec![(c, 1_200)])];
        for lie in [0u64, 5, u64::MAX / 2] {
            let liar = witness(vec![(c, lie)]);
            let f = freeze(&BTreeMap::new(), &[&honest[0], &honest[1], &liar]);
            let p = f.items[0].1;
            assert!((1_000..=1_200).contains(&p), "lie {lie} gave priority {p}");
        }
        // Seen by one witness of three only: not prioritized yet.
        let only = witness(vec![(id(2), 10)]);
        let f = freeze(&BTreeMap::new(), &[&only, &honest[0], &honest[1]]);
        assert!(f.items.iter().all(|(x, _)| *x != id(2)));
    }

    // A contribution frozen in an earlier epoch keeps its certified priority whatever the witnesses say now.
    #[test]
    fn known_priorities_are_kept() {
        let c = id(7);
        let known: BTreeMap<_, _> = [(c, 42u64)].into();
        let w = witness(vec![(c, 99_999)]);
        let f = freeze(&known, &[&w, &w, &w]);
        assert_eq!(f.items, vec![(c, 42)]);
    }

    // 20,000 contributions announced after an honest one cannot keep it out of the input set: the oldest fit, the rest are deferred.
    #[test]
    fn a_flood_after_an_honest_contribution_is_deferred_not_the_honest_one() {
        let honest = id(u32::MAX);
        let mut held: BTreeMap<ContributionId, u64> = (0..20_000u32).map(|i| (id(i), 10_000 + i as u64)).collect();
        held.insert(honest, 9_999);
        let cap = witness_cap(4);
        let (seen, pending) = my_witness_items(&held, &BTreeMap::new(), cap);
        assert!(seen.iter().any(|(c, _)| *c == honest));
        let w = Witness { datanet: DatanetId([1; 32]), epoch: 1, pending, seen };
        let f = freeze(&BTreeMap::new(), &[&w, &w, &w]);
        assert!(f.items.iter().any(|(c, p)| *c == honest && *p == 9_999));
        assert_eq!(f.items.len() + f.deferred as usize, 20_001);
    }

    proptest! {
        // Whatever the (at most f) lying witnesses report, every certified priority lies between the honest witnesses' smallest and largest times.
        #[test]
        fn median_stays_in_the_honest_range(
            honest in proptest::collection::vec(0u64..1_000_000, 3..8),
            lies in proptest::collection::vec(any::<u64>(), 0..3),
        ) {
            let f_max = (honest.len() + lies.len() - 1) / 3;
            prop_assume!(lies.len() <= f_max);
            let c = id(3);
            let ws: Vec<Witness> =
                honest.iter().chain(&lies).map(|t| witness(vec![(c, *t)])).collect();
            let refs: Vec<&Witness> = ws.iter().collect();
            let fz = freeze(&BTreeMap::new(), &refs);
            let p = fz.items[0].1;
            prop_assert!(p >= *honest.iter().min().unwrap() && p <= *honest.iter().max().unwrap());
        }
    }
}
