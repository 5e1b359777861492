//! Quality figures: the S6 screen against flipped labels (F1, AUROC and the KNN-Shapley
//! baseline) and Spearman rank correlation.

use super::world::World;
use crate::admission::canonical;
use crate::measure;
use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;

/// Quality of the screen on flipped labels, as figures: AUROC of the screen value (low = flipped),
/// F1 of the records the screen excludes (two-means low tail), and the baseline — KNN-Shapley
/// against the evaluation set alone, its F1 under the better of its two-means low group and its
/// value < 0 rule, and its AUROC.
pub(super) struct ScreenQuality {
    pub(super) auroc: f64,
    pub(super) f1: f64,
    pub(super) knn_auroc: f64,
    pub(super) knn_f1_kmeans: f64,
    pub(super) knn_f1_negative: f64,
    /// The screen value under the value < 0 rule, and the share of records the screen excluded.
    pub(super) f1_negative: f64,
    pub(super) screened_share: f64,
}

pub(super) async fn screen_quality(w: &mut World, all: &[Value], flipped: &[bool]) -> anyhow::Result<ScreenQuality> {
    let task = w.task.clone();
    // Canonical hash of every record, to match the plan's values back to the flip flags.
    let mut flag_by_hash = BTreeMap::new();
    let mut admitted = Vec::new();
    for (i, v) in all.iter().enumerate() {
        let c = canonical::canonicalize(&task, v.clone(), 1 << 20).with_context(|| format!("record {}", i + 1))?;
        if flag_by_hash.insert(c.hash, flipped[i]).is_none() {
            admitted.push(crate::store::contributions::AdmittedRecord {
                hash: c.hash,
                value: c.value,
                priority: 0,
                contribution: Default::default(),
                owners: vec![Default::default()],
                cluster: None,
            });
        }
    }
    let (mut inputs, eval_emb) = measure::input_records(&task, &admitted, &w.eval)?;
    let plan = crate::attribution::plan(&inputs, &eval_emb, w.epoch_seed, &w.params)?;
    let screened: std::collections::BTreeSet<_> = plan.screened.iter().copied().collect();
    // The baseline: KNN-Shapley against the evaluation set only, as the plan orders both sets.
    inputs.sort_by_key(|r| r.hash);
    let mut eval_sorted: Vec<&crate::attribution::features::Embedding> = eval_emb.iter().collect();
    eval_sorted.sort_by(|a, b| (&a.features, a.label).cmp(&(&b.features, b.label)));
    eval_sorted.truncate(w.params.screen_eval_max as usize);
    let train: Vec<&crate::attribution::features::Embedding> = inputs.iter().map(|r| &r.embedding).collect();
    let knn = crate::attribution::screen::knn_shapley(&train, &eval_sorted, w.params.screen_k);
    let knn_split = crate::attribution::screen::two_means_threshold(&knn);
    let f1 = |pred: &dyn Fn(usize) -> bool| {
        let (mut tp, mut fp, mut fneg) = (0f64, 0f64, 0f64);
        for (i, r) in inputs.iter().enumerate() {
            match (pred(i), flag_by_hash[&r.hash]) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fneg += 1.0,
                _ => {}
            }
        }
        if tp == 0.0 { 0.0 } else { 2.0 * tp / (2.0 * tp + fp + fneg) }
    };
    let flags: Vec<bool> = inputs.iter().map(|r| flag_by_hash[&r.hash]).collect();
    let scored: Vec<(i64, bool)> = plan.record_values.iter().map(|(h, v)| (*v, flag_by_hash[h])).collect();
    let value_of: BTreeMap<_, _> = plan.record_values.iter().copied().collect();
    Ok(ScreenQuality {
        f1_negative: f1(&|i| value_of[&inputs[i].hash] < 0),
        screened_share: screened.len() as f64 / inputs.len().max(1) as f64,
        auroc: auroc_low(&scored),
        f1: f1(&|i| screened.contains(&inputs[i].hash)),
        knn_auroc: auroc_low(&knn.iter().copied().zip(flags.iter().copied()).collect::<Vec<_>>()),
        knn_f1_kmeans: f1(&|i| knn[i] <= knn_split),
        knn_f1_negative: f1(&|i| knn[i] < 0),
    })
}

/// Probability that a random flipped record has a lower value than a random clean one.
fn auroc_low(scored: &[(i64, bool)]) -> f64 {
    let mut s: Vec<(i64, bool)> = scored.to_vec();
    s.sort_by_key(|x| x.0);
    let (npos, nneg) = (s.iter().filter(|x| x.1).count() as f64, s.iter().filter(|x| !x.1).count() as f64);
    if npos == 0.0 || nneg == 0.0 {
        return 0.5;
    }
    // Rank-sum with ties averaged; "positive" = flipped = low value.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < s.len() {
        let mut j = i;
        while j < s.len() && s[j].0 == s[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // 1-based ranks i+1..=j
        rank_sum += s[i..j].iter().filter(|x| !x.1).count() as f64 * avg;
        i = j;
    }
    // Clean records should rank high: AUROC = P(clean > flipped).
    (rank_sum - nneg * (nneg + 1.0) / 2.0) / (npos * nneg)
}

/// Spearman rank correlation (ties averaged).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(x: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0f64; x.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j < idx.len() && x[idx[j]] == x[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..j] {
                r[k] = (i + j - 1) as f64 / 2.0;
            }
            i = j;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 { 0.0 } else { cov / (va * vb).sqrt() }
}
