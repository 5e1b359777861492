//! Tabular records as JSON values, and what the scenarios do to them: label flips, jittered
//! copies rounded like the source data, junk drawn from the data's marginals.

use crate::admission::canonical;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub(crate) fn tabular_value(xs: &[f64], label: u32) -> Value {
    json!({ "features": xs.iter().map(|&x| canonical::canonical_f64(x).unwrap_or(json!(0))).collect::<Vec<_>>(), "label": label })
}

/// `x` with four significant digits, like the source data (generated values stay short decimals).
pub(super) fn round_sig(x: f64) -> f64 {
    format!("{x:.3e}").parse().unwrap_or(x)
}

pub(super) fn record_parts(v: &Value) -> (Vec<f64>, u32) {
    let xs =
        v["features"].as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect()).unwrap_or_default();
    (xs, v["label"].as_u64().unwrap_or(0) as u32)
}

pub(super) fn flip(records: &mut [Value], rate: f64, classes: u32, rng: &mut ChaCha8Rng) -> Vec<bool> {
    records
        .iter_mut()
        .map(|v| {
            if rng.gen_bool(rate.clamp(0.0, 1.0)) {
                let l = v["label"].as_u64().unwrap_or(0) as u32;
                v["label"] = json!((l + rng.gen_range(1..classes)) % classes);
                true
            } else {
                false
            }
        })
        .collect()
}

/// S14: junk contribution `j` — 1 to `most` records whose every feature is one honest record's
/// value of that feature (the data's marginals, so no value is out of range) and whose label is
/// random: records distinct from everything, worth nothing. Deterministic in `seed` and `j`.
pub(super) fn junk(parts: &[(Vec<f64>, u32)], classes: u32, most: u32, seed: u64, j: usize) -> Vec<Value> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ j as u64);
    let width = parts.first().map_or(0, |p| p.0.len());
    (0..rng.gen_range(1..=most.max(1)))
        .map(|_| {
            let xs: Vec<f64> = (0..width).map(|f| parts[rng.gen_range(0..parts.len())].0[f]).collect();
            tabular_value(&xs, rng.gen_range(0..classes.max(2)))
        })
        .collect()
}
