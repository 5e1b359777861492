//! The screen: exact KNN-Shapley values of records against the public evaluation set, in fixed
//! point, and the low tail it excludes before valuation.
//!
//! For a K-nearest-neighbour classifier the Shapley value of every training record has a closed form
//! (Jia et al., "Efficient task-specific data valuation for nearest neighbor algorithms", 2019): sort
//! the records by distance to each evaluation point and run one recursion from the farthest to the
//! nearest. Distances are exact integers and ties go to the lower record index (records are in hash
//! order), so the values are identical everywhere. Values have scale 2^[`VALUE_BITS`].
//!
//! The screen's score ([`screen_values`]) adds to the normalized KNN-Shapley value a bounded label
//! agreement term: how many of a record's K nearest contributed records (a deterministic sample,
//! never itself) share its label. The excluded low tail is the negative scores in the low group of
//! a two-means split of all scores ([`low_tail`]), plus every record outside the support of the
//! evaluation set ([`out_of_support`]: crafted outliers, which would otherwise be paid for
//! stopping the adapter from learning anything).

use super::features::Embedding;

/// Fixed-point fractional bits of a KNN-Shapley value.
pub const VALUE_BITS: u32 = 40;

/// KNN-Shapley value of each of `train` (scale 2^40), averaged over `test`, with `k` neighbours.
pub fn knn_shapley(train: &[&Embedding], test: &[&Embedding], k: u32) -> Vec<i64> {
    let n = train.len();
    let mut acc = vec![0i128; n];
    if n == 0 || test.is_empty() {
        return vec![0; n];
    }
    let mut order = Vec::with_capacity(n);
    for t in test {
        accumulate(train, t, None, k, &mut order, &mut acc);
    }
    acc.iter().map(|a| a.div_euclid(test.len() as i128) as i64).collect()
}

/// For each of `train`, how many of its `k` nearest records among `pool` (indices into `train`;
/// never itself) share its label, and how many neighbours that was (k, or fewer in a small pool).
/// Ties in distance go to the lower index.
pub fn label_agreement(train: &[&Embedding], pool: &[usize], k: u32) -> Vec<(u32, u32)> {
    let k = k.max(1) as usize;
    let mut near: Vec<(i64, usize)> = Vec::with_capacity(pool.len());
    train
        .iter()
        .enumerate()
        .map(|(i, r)| {
            near.clear();
            near.extend(pool.iter().filter(|&&p| p != i).map(|&p| (train[p].distance2(r), p)));
            let kk = k.min(near.len());
            if kk == 0 {
                return (0, 0);
            }
            if kk < near.len() {
                near.select_nth_unstable(kk - 1);
            }
            let same = near[..kk].iter().filter(|&&(_, p)| train[p].label == r.label).count();
            (same as u32, kk as u32)
        })
        .collect()
}

/// The screen's score of each record (scale 2^40): its KNN-Shapley value against the public
/// evaluation set divided by the mean absolute value over all records, plus its label agreement
/// with its `k` nearest records of `pool` mapped to [−1, 1] (2·same/k − 1). Both terms are
/// dimensionless and of order 1, so neither dominates by its units. KNN-Shapley alone is sparse
/// — the evaluation set is small, so most records have no evaluation point among their neighbours
/// and score near 0 whatever their label — and long-tailed on the positive side, which drags a
/// two-means split away from the mislabeled; the agreement term is bounded and two-humped (a
/// flipped label disagrees with most of its neighbourhood), so the sum splits cleanly.
pub fn screen_values(train: &[&Embedding], eval: &[&Embedding], pool: &[usize], k: u32) -> Vec<i64> {
    let e = knn_shapley(train, eval, k);
    let agree = label_agreement(train, pool, k);
    let one: i128 = 1 << VALUE_BITS;
    let mean_abs = (e.iter().map(|&v| (v as i128).abs()).sum::<i128>() / e.len().max(1) as i128).max(1);
    e.iter()
        .zip(&agree)
        .map(|(&v, &(same, kk))| {
            let knn = v as i128 * one / mean_abs;
            let agreement = if kk == 0 { 0 } else { (2 * same as i128 - kk as i128) * one / kk as i128 };
            (knn + agreement).clamp(i64::MIN as i128, i64::MAX as i128) as i64
        })
        .collect()
}

/// Adds test point `t`'s KNN-Shapley values (scale 2^40) to `acc`, skipping record `exclude`.
/// Neighbours are ordered by exact integer distance, ties by the lower index, so the result is
/// identical everywhere.
fn accumulate(
    train: &[&Embedding],
    t: &Embedding,
    exclude: Option<usize>,
    k: u32,
    order: &mut Vec<(i64, usize)>,
    acc: &mut [i128],
) {
    order.clear();
    order.extend(train.iter().enumerate().filter(|(i, _)| Some(*i) != exclude).map(|(i, e)| (e.distance2(t), i)));
    let n = order.len();
    if n == 0 {
        return;
    }
    order.sort_unstable();
    let k = k.max(1) as i128;
    let one: i128 = 1 << VALUE_BITS;
    let hit = |pos: usize| i128::from(train[order[pos].1].label == t.label);
    let mut s = hit(n - 1) * one / n as i128;
    acc[order[n - 1].1] += s;
    for pos in (0..n - 1).rev() {
        let i = pos as i128 + 1; // 1-based rank
        let num = (hit(pos) - hit(pos + 1)) * one * k.min(i);
        s += num.div_euclid(k * i);
        acc[order[pos].1] += s;
    }
}

/// Records outside the support the evaluation suite measures: farther from every evaluation point
/// than the most isolated evaluation point is from its nearest other one. Crafted outliers land
/// here; so does nothing an honest contributor could be paid for, since no evaluation point is near
/// it. Fewer than two evaluation points flag nothing.
pub fn out_of_support(train: &[&Embedding], eval: &[&Embedding]) -> Vec<bool> {
    if eval.len() < 2 {
        return vec![false; train.len()];
    }
    let reach = eval
        .iter()
        .enumerate()
        .map(|(i, e)| eval.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, f)| e.distance2(f)).min().unwrap_or(0))
        .max()
        .unwrap_or(0);
    train.iter().map(|r| eval.iter().all(|e| r.distance2(e) > reach)).collect()
}

/// Which records the screen excludes: a negative value in the low group of a deterministic
/// one-dimensional two-means split of all values, at most `tail_max_ppm` of the records (lowest
/// first, ties by index). Returns a flag per record.
pub fn low_tail(values: &[i64], tail_max_ppm: u32) -> Vec<bool> {
    let n = values.len();
    let mut out = vec![false; n];
    if n < 2 {
        return out;
    }
    let threshold = two_means_threshold(values);
    let mut cands: Vec<(i64, usize)> =
        values.iter().enumerate().filter(|&(_, &v)| v < 0 && v <= threshold).map(|(i, &v)| (v, i)).collect();
    cands.sort_unstable();
    let max = (n as u128 * tail_max_ppm.min(1_000_000) as u128 / 1_000_000) as usize;
    for &(_, i) in cands.iter().take(max) {
        out[i] = true;
    }
    out
}

/// The split point of a two-means clustering of `values` (Lloyd iterations from min and max).
pub fn two_means_threshold(values: &[i64]) -> i64 {
    let (mut lo, mut hi) = (*values.iter().min().unwrap_or(&0) as i128, *values.iter().max().unwrap_or(&0) as i128);
    let mut t = (lo + hi).div_euclid(2);
    for _ in 0..50 {
        let (mut sl, mut nl, mut sh, mut nh) = (0i128, 0i128, 0i128, 0i128);
        for &v in values {
            if (v as i128) <= t {
                sl += v as i128;
                nl += 1;
            } else {
                sh += v as i128;
                nh += 1;
            }
        }
        if nl > 0 {
            lo = sl.div_euclid(nl);
        }
        if nh > 0 {
            hi = sh.div_euclid(nh);
        }
        let next = (lo + hi).div_euclid(2);
        if next == t {
            break;
        }
        t = next;
    }
    t as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(x: i32, label: u32) -> Embedding {
        Embedding { features: vec![x], label }
    }

    // A mislabeled record next to the test points gets a negative value; correct ones positive.
    #[test]
    fn mislabeled_record_is_negative() {
        let train = [e(0, 0), e(2, 1), e(3, 0), e(4, 0), e(100, 1), e(101, 1)];
        let test = [e(1, 0), e(2, 0), e(100, 1)];
        let tr: Vec<&Embedding> = train.iter().collect();
        let te: Vec<&Embedding> = test.iter().collect();
        let v = knn_shapley(&tr, &te, 1);
        assert!(v[1] < 0, "{v:?}");
        assert!(v.iter().enumerate().all(|(i, &x)| i == 1 || x >= 0), "{v:?}");
        let tail = low_tail(&v, 500_000);
        assert_eq!(tail, vec![false, true, false, false, false, false]);
    }

    // A flipped record among correctly labelled neighbours disagrees with them and scores lowest;
    // a record is never its own neighbour.
    #[test]
    fn agreement_flags_a_flip() {
        let train = [e(0, 0), e(1, 0), e(2, 1), e(3, 0), e(50, 1), e(51, 1), e(52, 1)];
        let tr: Vec<&Embedding> = train.iter().collect();
        let all: Vec<usize> = (0..train.len()).collect();
        let a = label_agreement(&tr, &all, 2);
        assert_eq!(a[2], (0, 2));
        assert_eq!(a[0], (1, 2)); // neighbours 1 (same) and 2 (flipped)
        assert_eq!(a[5], (2, 2));
        assert_eq!(label_agreement(&tr[..1], &[0], 2), vec![(0, 0)]);
        let te = [e(1, 0), e(51, 1)];
        let te: Vec<&Embedding> = te.iter().collect();
        let v = screen_values(&tr, &te, &all, 2);
        let lowest = (0..v.len()).min_by_key(|&i| v[i]).unwrap();
        assert_eq!(lowest, 2, "{v:?}");
        assert!(v[2] < 0 && v[5] > 0, "{v:?}");
    }

    // A record far beyond the evaluation points is out of support; one between them is not.
    #[test]
    fn out_of_support_flags_far_records() {
        let eval = [e(0, 0), e(2, 0), e(10, 1), e(13, 1)];
        let ev: Vec<&Embedding> = eval.iter().collect();
        let train = [e(1, 0), e(5, 1), e(16, 1), e(17, 0), e(400, 1)];
        let tr: Vec<&Embedding> = train.iter().collect();
        // The most isolated evaluation point is 3 from its neighbour (distance² 9).
        assert_eq!(out_of_support(&tr, &ev), vec![false, false, false, true, true]);
        assert_eq!(out_of_support(&tr, &ev[..1]), vec![false; 5]);
    }

    // Values sum to the K-NN utility on the full set (efficiency), up to fixed-point flooring.
    #[test]
    fn efficiency_holds() {
        let train = [e(0, 0), e(3, 1), e(5, 0), e(9, 1), e(12, 0)];
        let test = [e(1, 0), e(10, 1)];
        let tr: Vec<&Embedding> = train.iter().collect();
        let te: Vec<&Embedding> = test.iter().collect();
        let v = knn_shapley(&tr, &te, 3);
        // K=3 accuracy: test 1 → neighbours 0,3,5 labels 0,1,0 → 2/3; test 10 → 9,12,5 → 1,0,0 → 1/3.
        let total: i128 = v.iter().map(|&x| x as i128).sum();
        let want = (1i128 << VALUE_BITS) / 2;
        assert!((total - want).abs() < 16, "{total} vs {want}");
    }
}
