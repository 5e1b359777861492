//! From agreed utilities to money: MSR-Banzhaf unit values, capped unit parts, contributor credit
//! and integer rewards. Integer arithmetic only, in canonical order (DESIGN.md §7, steps 3–4).

use crate::ids::PeerKey;

/// φ(unit) = mean(u | unit ∈ S) − mean(u | unit ∉ S) over the jobs, each mean floored; 0 when the
/// unit was never in, or never out of, a coalition.
pub fn msr_banzhaf(coalitions: &[Vec<bool>], utilities: &[i64], unit_count: usize) -> Vec<i64> {
    let mut sum_in = vec![0i128; unit_count];
    let mut sum_out = vec![0i128; unit_count];
    let mut n_in = vec![0i128; unit_count];
    let total: i128 = utilities.iter().map(|&u| u as i128).sum();
    for (c, &u) in coalitions.iter().zip(utilities) {
        for (i, _) in c.iter().enumerate().filter(|(_, b)| **b) {
            sum_in[i] += u as i128;
            n_in[i] += 1;
        }
    }
    let jobs = utilities.len() as i128;
    for i in 0..unit_count {
        sum_out[i] = total - sum_in[i];
    }
    (0..unit_count)
        .map(|i| {
            let n_out = jobs - n_in[i];
            if n_in[i] == 0 || n_out == 0 {
                return 0;
            }
            let v = sum_in[i].div_euclid(n_in[i]) - sum_out[i].div_euclid(n_out);
            v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
        })
        .collect()
}

/// Standard error of each unit's φ in the same units (integer square root of
/// var_in/n_in + var_out/n_out, sample variances floored); 0 where a side has fewer than 2 jobs.
pub fn msr_standard_errors(coalitions: &[Vec<bool>], utilities: &[i64], unit_count: usize) -> Vec<i64> {
    let total: i128 = utilities.iter().map(|&u| u as i128).sum();
    let total2: i128 = utilities.iter().map(|&u| (u as i128).pow(2)).sum();
    let (mut s, mut s2, mut n) = (vec![0i128; unit_count], vec![0i128; unit_count], vec![0i128; unit_count]);
    for (c, &u) in coalitions.iter().zip(utilities) {
        for (i, _) in c.iter().enumerate().filter(|(_, b)| **b) {
            s[i] += u as i128;
            s2[i] += (u as i128).pow(2);
            n[i] += 1;
        }
    }
    let jobs = utilities.len() as i128;
    let var_of_mean = |sum: i128, sum2: i128, k: i128| -> i128 {
        if k < 2 {
            return 0;
        }
        // (Σu² − (Σu)²/k) / (k − 1), then / k for the mean.
        ((sum2 - sum * sum / k).max(0) / (k - 1)) / k
    };
    (0..unit_count)
        .map(|i| {
            let v = var_of_mean(s[i], s2[i], n[i]) + var_of_mean(total - s[i], total2 - s2[i], jobs - n[i]);
            super::features::isqrt(v.max(0) as u128).min(i64::MAX as u128) as i64
        })
        .collect()
}

/// A unit's effect "stands out" when |φ| ≥ this many plain standard errors.
const STANDOUT_Z: i128 = 3;

/// φ and its standard error per unit, each measured **after removing the main effects of the other
/// units that stand out**: greedily, the unit with the largest |φ| (ties by index) that is at least
/// 3 standard errors over the residual of the effects already removed, at most T/4 of them.
///
/// With independent coalitions (more units than an orthogonal block holds), a few strong units —
/// curated data fixing a failure — dominate the utilities' variance, and the plain estimate charges
/// that variance to every other unit twice: as noise in its φ (the strong units are not exactly
/// balanced between its "in" and "out" jobs) and as a large standard error, so the noise floor takes
/// most of the strong units' own value while the extremes of hundreds of redundant units clear it.
/// Subtracting the standing-out effects, u_j − Σ_k φ_k (x_jk − ½), is the control variate that an
/// orthogonal block provides by design: inside a block every other unit is exactly balanced, so φ is
/// unchanged there and only the standard error loses the other units' variance (the plain formula
/// overstates it). The variance is scaled by T / (T − L) for the L effects fitted. Integer arithmetic
/// in canonical order (doubled residuals, saturated to i64, then halved).
pub fn msr_with_errors(coalitions: &[Vec<bool>], utilities: &[i64], unit_count: usize) -> (Vec<i64>, Vec<i64>) {
    let t = utilities.len();
    let sat = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    let sign = |inside: bool, p: i64| if inside { p as i128 } else { -(p as i128) };
    // (unit, effect removed), in the order chosen.
    let mut standout: Vec<(usize, i64)> = Vec::new();
    loop {
        // 2·(u_j − Σ_k φ_k (x_jk − ½)) = 2·u_j − Σ_k ±φ_k.
        let doubled: Vec<i128> = coalitions
            .iter()
            .zip(utilities)
            .map(|(c, &u)| 2 * u as i128 - standout.iter().map(|&(k, p)| sign(c[k], p)).sum::<i128>())
            .collect();
        let fitted = standout.len();
        // Halved, and the variance scaled by T / (T − L).
        let scale = |e: i64| -> i64 {
            let v = (e as i128 / 2).pow(2) * t as i128 / (t - fitted).max(1) as i128;
            super::features::isqrt(v.max(0) as u128).min(i64::MAX as u128) as i64
        };
        let residual: Vec<i64> = doubled.iter().map(|&v| sat(v)).collect();
        let mut phi: Vec<i64> =
            msr_banzhaf(coalitions, &residual, unit_count).iter().map(|&v| v.div_euclid(2)).collect();
        let mut se: Vec<i64> = msr_standard_errors(coalitions, &residual, unit_count).into_iter().map(scale).collect();
        // Greedy: the largest effect that stands out over the current residual joins the fitted
        // ones; a spurious pick only removes an effect of about 3 residual errors.
        let next = (0..unit_count)
            .filter(|i| !standout.iter().any(|s| s.0 == *i))
            .filter(|&i| phi[i] != 0 && (phi[i] as i128).abs() >= STANDOUT_Z * se[i] as i128)
            .max_by_key(|&i| ((phi[i] as i128).abs(), std::cmp::Reverse(i)));
        match next {
            Some(i) if fitted < t / 4 => standout.push((i, phi[i])),
            _ if fitted == 0 => {
                return (
                    msr_banzhaf(coalitions, utilities, unit_count),
                    msr_standard_errors(coalitions, utilities, unit_count),
                );
            }
            _ => {
                // A standing-out unit is measured with the others' effects removed, its own kept.
                for &(i, p) in &standout {
                    let column: Vec<Vec<bool>> = coalitions.iter().map(|c| vec![c[i]]).collect();
                    let own: Vec<i64> = doubled.iter().zip(&column).map(|(&v, c)| sat(v + sign(c[0], p))).collect();
                    phi[i] = msr_banzhaf(&column, &own, 1)[0].div_euclid(2);
                    se[i] = scale(msr_standard_errors(&column, &own, 1)[0]);
                }
                return (phi, se);
            }
        }
    }
}

/// φ lowered by `z_milli`/1000 standard errors: the part of a unit's value that is not noise.
pub fn above_noise(values: &[i64], errors: &[i64], z_milli: u32) -> Vec<i64> {
    values
        .iter()
        .zip(errors)
        .map(|(&v, &e)| {
            (v as i128 - e as i128 * z_milli as i128 / 1000).clamp(i64::MIN as i128, i64::MAX as i128) as i64
        })
        .collect()
}

/// Each unit's value counted toward credit: max(0, φ), capped at `unit_cap_ppm` of the total
/// positive value. What a cap removes is not redistributed (it stays in the pool), so a cap never
/// hands money to noise.
pub fn capped_values(values: &[i64], unit_cap_ppm: u32) -> (Vec<u64>, u128) {
    let positive: Vec<u128> = values.iter().map(|&v| v.max(0) as u128).collect();
    let total: u128 = positive.iter().sum();
    let cap = total * unit_cap_ppm.min(1_000_000) as u128 / 1_000_000;
    (positive.iter().map(|&v| v.min(cap) as u64).collect(), total)
}

/// Splits `amount` in proportion to `weights` by largest remainder; ties in the remainder go to
/// the smaller key. Keys must be distinct. Σ result = `amount` when Σ weights > 0, else all zero.
pub fn largest_remainder(amount: u64, weights: &[(PeerKey, u128)]) -> Vec<u64> {
    let total: u128 = weights.iter().map(|w| w.1).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut out = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    let mut given: u128 = 0;
    for (i, (key, w)) in weights.iter().enumerate() {
        // amount ≤ 2^64 and w ≤ total, so amount·w fits when total < 2^64; otherwise scale down.
        let (q, r) = mul_div_rem(amount as u128, *w, total);
        out.push(q as u64);
        given += q;
        rems.push((r, *key, i));
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let left = (amount as u128 - given) as usize;
    for &(_, _, i) in rems.iter().take(left) {
        out[i] += 1;
    }
    out
}

/// (a·b / c, a·b mod c) without overflow for a < 2^64, b ≤ c < 2^128.
pub(crate) fn mul_div_rem(a: u128, b: u128, c: u128) -> (u128, u128) {
    if let Some(p) = a.checked_mul(b) {
        return (p / c, p % c);
    }
    // Long multiplication by bits of a: keep q, r with q·c + r = (prefix of a)·b.
    let (mut q, mut r) = (0u128, 0u128);
    let (bq, br) = (b / c, b % c);
    for bit in (0..64).rev() {
        // double
        q <<= 1;
        let (r2, carry) = r.overflowing_add(r);
        r = r2;
        if carry || r >= c {
            r = r.wrapping_sub(c);
            q += 1;
        }
        if a >> bit & 1 == 1 {
            q += bq;
            let (r2, carry) = r.overflowing_add(br);
            r = r2;
            if carry || r >= c {
                r = r.wrapping_sub(c);
                q += 1;
            }
        }
    }
    (q, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A unit that adds 100 when present gets φ = 100; an idle unit gets 0.
    #[test]
    fn banzhaf_recovers_additive_game() {
        let coalitions = vec![vec![true, true], vec![true, false], vec![false, true], vec![false, false]];
        let utilities: Vec<i64> = coalitions.iter().map(|c| if c[0] { 100 } else { 0 }).collect();
        assert_eq!(msr_banzhaf(&coalitions, &utilities, 2), vec![100, 0]);
    }

    // The cap clips a dominant unit and does not redistribute what it removes.
    #[test]
    fn cap_clips_without_redistribution() {
        let (v, total) = capped_values(&[900, 100, -50], 500_000);
        assert_eq!(total, 1000);
        assert_eq!(v, vec![500, 100, 0]);
    }

    // Largest remainder: ties go to the smaller key.
    #[test]
    fn largest_remainder_ties_by_key() {
        let w = vec![(PeerKey([2; 32]), 1), (PeerKey([1; 32]), 1), (PeerKey([3; 32]), 1)];
        assert_eq!(largest_remainder(10, &w), vec![3, 4, 3]);
    }

    // A unit whose presence never matters has zero error; a noisy one a positive error.
    #[test]
    fn standard_errors() {
        let coalitions = vec![vec![true, true], vec![true, false], vec![false, true], vec![false, false]];
        let exact: Vec<i64> = coalitions.iter().map(|c| if c[0] { 100 } else { 0 }).collect();
        assert_eq!(msr_standard_errors(&coalitions, &exact, 2)[0], 0);
        let noisy = vec![100, 140, 0, 40];
        let e = msr_standard_errors(&coalitions, &noisy, 2);
        assert!(e[0] > 0 && e[1] > 0, "{e:?}");
        // That game is additive (100·x0 − 40·x1 + 40): once unit 0's standing-out effect is
        // removed, unit 1 is measured exactly.
        let (phi, se) = msr_with_errors(&coalitions, &noisy, 2);
        assert_eq!((phi, se[1]), (vec![100, -40], 0));
        assert!(se[0] >= e[0], "{se:?}: one fitted effect of 4 jobs scales the variance by 4/3");
        assert_eq!(above_noise(&[100, 5], &[10, 10], 2000), vec![80, -15]);
    }

    // Overflow-safe multiply-divide agrees with plain arithmetic where that fits.
    #[test]
    fn mul_div_rem_big() {
        let c = (1u128 << 100) + 7;
        let (q, r) = mul_div_rem(u64::MAX as u128, c - 1, c);
        assert!(q < u64::MAX as u128 && r < c);
        assert_eq!(mul_div_rem(10, 7, 3), (23, 1));
    }

    // Independent coalitions: two strong units and many null ones. Removing the strong units'
    // effects leaves the null units' φ within their (now small) errors and keeps the strong
    // units' value above the noise floor.
    #[test]
    fn standout_effects_are_removed() {
        let (m, t) = (60usize, 128u32);
        let c: Vec<Vec<bool>> = (0..t).map(|j| crate::attribution::jobs::coalition([9; 32], m as u32, j)).collect();
        let u: Vec<i64> = c
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let noise = (j as i64 * 7919) % 101 - 50;
                (r[0] as i64) * 1_000_000 + (r[1] as i64) * 800_000 + noise * 1_000
            })
            .collect();
        let (plain_phi, plain_se) = (msr_banzhaf(&c, &u, m), msr_standard_errors(&c, &u, m));
        let (phi, se) = msr_with_errors(&c, &u, m);
        for i in 2..m {
            assert!(se[i] * 5 < plain_se[i], "unit {i}: {} vs {}", se[i], plain_se[i]);
            assert!(phi[i].abs() <= 4 * se[i].max(1), "unit {i}: φ {} se {}", phi[i], se[i]);
        }
        assert!((phi[0] - 1_000_000).abs() < 20_000 && (phi[1] - 800_000).abs() < 20_000, "{phi:?}");
        assert!(plain_phi[2..].iter().zip(&plain_se[2..]).any(|(p, e)| p.abs() > *e), "the plain estimate is noisy");
        let credited = above_noise(&phi, &se, 3000);
        assert!(credited[0] > 900_000 && credited[1] > 700_000, "{credited:?}");
    }

    proptest! {
        // In an orthogonal block the other units are balanced: φ is the plain MSR value (up to the
        // rounding of the halved residuals).
        #[test]
        fn blocks_keep_phi(seed in any::<[u8; 32]>(), m in 1u32..17, w in proptest::collection::vec(-1000i64..1000, 16), noise in proptest::collection::vec(-300i64..300, 64)) {
            let c = crate::attribution::jobs::coalitions(seed, m, 64);
            let u: Vec<i64> = c.iter().zip(&noise).map(|(row, n)| row.iter().zip(&w).filter(|(b, _)| **b).map(|(_, v)| v * 1000).sum::<i64>() + n).collect();
            let (phi, se) = msr_with_errors(&c, &u, m as usize);
            let plain = msr_banzhaf(&c, &u, m as usize);
            for i in 0..m as usize {
                prop_assert!((phi[i] - plain[i]).abs() <= 1, "unit {}: {} vs {}", i, phi[i], plain[i]);
            }
            prop_assert_eq!(se.len(), m as usize);
        }

        // Rewards always sum to the amount exactly and each is within 1 of its exact share.
        #[test]
        fn largest_remainder_exact(amount in 0u64..1_000_000_000, ws in proptest::collection::vec(0u128..1_000_000, 1..30)) {
            let weights: Vec<(PeerKey, u128)> = ws.iter().enumerate().map(|(i, &w)| (PeerKey([i as u8; 32]), w)).collect();
            let out = largest_remainder(amount, &weights);
            let total: u128 = ws.iter().sum();
            if total > 0 {
                prop_assert_eq!(out.iter().map(|&x| x as u128).sum::<u128>(), amount as u128);
                for (o, w) in out.iter().zip(&ws) {
                    let exact = (amount as u128 * w).checked_div(total).unwrap_or(0);
                    prop_assert!(*o as u128 == exact || *o as u128 == exact + 1);
                }
            }
        }
    }
}
