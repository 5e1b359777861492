//! The screen: exact KNN-Shapley values of records against the public evaluation set, in fixed
//! point, and the low tail it excludes before valuation.
//!
//! For a K-nearest-neighbour classifier the Shapley value of every training record has a closed form
//! (Jia et al., "Efficient task-specific data valuation for nearest neighbor algorithms", 2019): sort
//! the records by distance to each evaluation point and run one recursion from the farthest to the
//! nearest. Distances are exact integers and ties go to the lower record index (records are in hash
//! order), so the values are identical everywhere. Values have scale 2^[`VALUE_BITS`].

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
    let k = k.max(1) as i128;
    let one: i128 = 1 << VALUE_BITS;
    let mut order: Vec<(i64, usize)> = Vec::with_capacity(n);
    for t in test {
        order.clear();
        order.extend(train.iter().enumerate().map(|(i, e)| (e.distance2(t), i)));
        order.sort_unstable();
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
    acc.iter().map(|a| a.div_euclid(test.len() as i128) as i64).collect()
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
