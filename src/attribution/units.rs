//! Content units: the players attribution values, formed from content alone.
//!
//! Seeded k-means over fixed-point features with a fixed iteration count, all in integers: the first
//! centroid is the first record in BLAKE3(seed ‖ record hash) order, the others are drawn k-means++
//! style (integer D² weights, BLAKE3(seed ‖ i) draws), assignment ties go to the lower centroid,
//! centroids are floored means. Then sizes are brought toward the target band:
//! oversized clusters are cut along their widest dimension, undersized ones are merged into the
//! nearest centroid. Units come out sorted by their smallest record hash. Identities never enter, so
//! splitting one contributor into many cannot change a unit.

use super::features::distance2;
use crate::ids::RecordHash;

const INIT_CONTEXT: &str = "datanet/attribution/kmeans-init/v1";

/// Sizes and iterations of unit formation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitShape {
    pub records_target: u32,
    pub records_min: u32,
    pub records_max: u32,
    pub count_max: u32,
    pub iterations: u32,
}

/// Groups `points` (sorted by hash, features of equal length) into units; returns indices into
/// `points`, each unit's indices ascending, units ordered by their first index.
pub fn form_units(seed: [u8; 32], points: &[(RecordHash, &[i32])], shape: &UnitShape) -> Vec<Vec<usize>> {
    let n = points.len();
    if n == 0 {
        return Vec::new();
    }
    let k = (n.div_ceil(shape.records_target.max(1) as usize)).clamp(1, shape.count_max.max(1) as usize);
    let dims = points[0].1.len();
    let mut order: Vec<(blake3::Hash, usize)> = points
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            let mut x = blake3::Hasher::new_derive_key(INIT_CONTEXT);
            x.update(&seed);
            x.update(h.as_bytes());
            (x.finalize(), i)
        })
        .collect();
    order.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    // k-means++ seeding with integer D² weights and BLAKE3-derived draws: rare but distinct content
    // (a small curated slice among a flood of volume) gets centroids of its own.
    let first = order[0].1;
    let mut centroids: Vec<Vec<i32>> = vec![points[first].1.to_vec()];
    let mut d2: Vec<u128> = points.iter().map(|(_, p)| distance2(p, points[first].1) as u128).collect();
    while centroids.len() < k {
        let total: u128 = d2.iter().sum();
        if total == 0 {
            break;
        }
        let mut x = blake3::Hasher::new_derive_key(INIT_CONTEXT);
        x.update(&seed);
        x.update(&(centroids.len() as u64).to_le_bytes());
        let r = u128::from_le_bytes(x.finalize().as_bytes()[..16].try_into().expect("16 bytes")) % total;
        let (mut acc, mut pick) = (0u128, n - 1);
        for (i, &w) in d2.iter().enumerate() {
            acc += w;
            if acc > r {
                pick = i;
                break;
            }
        }
        let c = points[pick].1.to_vec();
        for (w, (_, p)) in d2.iter_mut().zip(points) {
            *w = (*w).min(distance2(p, &c) as u128);
        }
        centroids.push(c);
    }
    let k = centroids.len();
    let mut assign = vec![0usize; n];
    for _ in 0..shape.iterations.max(1) {
        for (i, (_, p)) in points.iter().enumerate() {
            assign[i] = nearest(&centroids, p, usize::MAX);
        }
        let mut sums = vec![vec![0i128; dims]; k];
        let mut counts = vec![0i128; k];
        for (i, (_, p)) in points.iter().enumerate() {
            counts[assign[i]] += 1;
            for (s, &x) in sums[assign[i]].iter_mut().zip(p.iter()) {
                *s += x as i128;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                centroids[c] = sums[c].iter().map(|s| s.div_euclid(counts[c]) as i32).collect();
            }
        }
    }
    let mut clusters: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &a) in assign.iter().enumerate() {
        clusters[a].push(i);
    }
    // Cut oversized clusters along their widest dimension (ties by index).
    let max = shape.records_max.max(1) as usize;
    let mut sized: Vec<Vec<usize>> = Vec::new();
    for c in clusters.into_iter().filter(|c| !c.is_empty()) {
        if c.len() <= max {
            sized.push(c);
            continue;
        }
        let widest = (0..dims)
            .max_by_key(|&d| {
                let (lo, hi) = c
                    .iter()
                    .fold((i32::MAX, i32::MIN), |(lo, hi), &i| (lo.min(points[i].1[d]), hi.max(points[i].1[d])));
                (hi as i64 - lo as i64, std::cmp::Reverse(d))
            })
            .unwrap_or(0);
        let mut members = c;
        members.sort_by_key(|&i| (points[i].1.get(widest).copied().unwrap_or(0), i));
        let parts = members.len().div_ceil(max);
        let (base, extra) = (members.len() / parts, members.len() % parts);
        let mut at = 0;
        for p in 0..parts {
            let len = base + usize::from(p < extra);
            sized.push(members[at..at + len].to_vec());
            at += len;
        }
    }
    // Merge undersized clusters into the nearest other centroid, smallest first.
    let min = shape.records_min as usize;
    loop {
        if sized.len() <= 1 {
            break;
        }
        for c in sized.iter_mut() {
            c.sort_unstable();
        }
        let Some(small) =
            (0..sized.len()).filter(|&c| sized[c].len() < min).min_by_key(|&c| (sized[c].len(), sized[c][0]))
        else {
            break;
        };
        let cents: Vec<Vec<i32>> = sized.iter().map(|c| centroid(points, c, dims)).collect();
        let target = nearest(&cents, &cents[small], small);
        let moved = std::mem::take(&mut sized[small]);
        sized[target].extend(moved);
        sized.remove(small);
    }
    for c in sized.iter_mut() {
        c.sort_unstable();
    }
    sized.sort_by_key(|c| c[0]);
    sized
}

fn centroid(points: &[(RecordHash, &[i32])], members: &[usize], dims: usize) -> Vec<i32> {
    let mut s = vec![0i128; dims];
    for &i in members {
        for (a, &x) in s.iter_mut().zip(points[i].1) {
            *a += x as i128;
        }
    }
    s.iter().map(|a| a.div_euclid(members.len().max(1) as i128) as i32).collect()
}

/// Index of the centroid nearest `p` (ties to the lower index), never `skip`.
fn nearest(centroids: &[Vec<i32>], p: &[i32], skip: usize) -> usize {
    let mut best = (i64::MAX, usize::MAX);
    for (c, cent) in centroids.iter().enumerate() {
        if c == skip {
            continue;
        }
        let d = distance2(cent, p);
        if d < best.0 || best.1 == usize::MAX {
            best = (d, c);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(target: u32, min: u32, max: u32) -> UnitShape {
        UnitShape { records_target: target, records_min: min, records_max: max, count_max: 1000, iterations: 10 }
    }

    fn blobs(n_per: usize, centers: &[i32]) -> Vec<(RecordHash, Vec<i32>)> {
        let mut v: Vec<(RecordHash, Vec<i32>)> = Vec::new();
        for (ci, &c) in centers.iter().enumerate() {
            for j in 0..n_per {
                let h = RecordHash::of(format!("{ci}-{j}").as_bytes());
                v.push((h, vec![c + (j as i32 % 7) * 10, c - (j as i32 % 5) * 10]));
            }
        }
        v.sort_by_key(|p| p.0);
        v
    }

    // Well-separated blobs become one unit each; every record lands in exactly one unit.
    #[test]
    fn separated_blobs_form_units() {
        let pts = blobs(60, &[0, 1 << 20, 1 << 22]);
        let view: Vec<(RecordHash, &[i32])> = pts.iter().map(|(h, f)| (*h, f.as_slice())).collect();
        let units = form_units([1; 32], &view, &shape(60, 10, 100));
        let mut all: Vec<usize> = units.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..180).collect::<Vec<_>>());
        assert!(
            units.iter().all(|u| u.len() >= 10 && u.len() <= 100),
            "{:?}",
            units.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for u in &units {
            let c0 = pts[u[0]].1[0] >> 19;
            assert!(u.iter().all(|&i| pts[i].1[0] >> 19 == c0));
        }
    }

    // Oversized clusters are cut to the maximum and undersized ones merged.
    #[test]
    fn size_band_enforced() {
        let pts = blobs(300, &[0]);
        let view: Vec<(RecordHash, &[i32])> = pts.iter().map(|(h, f)| (*h, f.as_slice())).collect();
        let units = form_units([2; 32], &view, &shape(100, 50, 120));
        assert!(
            units.iter().all(|u| u.len() >= 50 && u.len() <= 120 * 2),
            "{:?}",
            units.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(units.iter().map(Vec::len).sum::<usize>(), 300);
    }
}
