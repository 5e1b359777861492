//! Deterministic fixed-point content features: the space units and the screen work in.
//!
//! Units and the KNN-Shapley screen must come out bit-identical on every peer, whatever its CPU,
//! BLAS or thread count, so they do not use float neural embeddings. Features are computed from the
//! canonical record with integer arithmetic only:
//!
//! - **tabular**: each feature's canonical decimal text is parsed into fixed point (scale
//!   2^[`FRAC_BITS`]) and standardized with integer mean and integer square-root deviation taken over
//!   the public evaluation set (which contributors cannot move), then clipped to ±[`Z_CLIP`] deviations
//!   so a crafted outlier cannot dominate distances;
//! - **text / instruct**: a signed, hashed bag of character 3-grams (FNV-1a) in [`TEXT_DIMS`]
//!   dimensions, L2-normalized in fixed point with an integer square root.
//!
//! A record's label (tabular) is carried along for the screen; text records all have label 0, so the
//! screen then measures closeness to the evaluation set only.

use crate::manifest::TaskKind;
use serde_json::Value;

/// Fixed-point fractional bits of every feature (scale 2^16).
pub const FRAC_BITS: u32 = 16;
const ONE: i64 = 1 << FRAC_BITS;
/// Standardized tabular features are clipped to this many deviations.
pub const Z_CLIP: i64 = 8;
/// Dimensions of the hashed character n-gram bag for text records.
pub const TEXT_DIMS: usize = 128;
const NGRAM: usize = 3;

/// A record's fixed-point feature vector and its class label (0 for text).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Embedding {
    pub features: Vec<i32>,
    pub label: u32,
}

impl Embedding {
    /// Squared Euclidean distance in fixed point (scale 2^32), exact.
    pub fn distance2(&self, other: &Embedding) -> i64 {
        distance2(&self.features, &other.features)
    }
}

/// Squared Euclidean distance between two fixed-point vectors of equal length.
pub fn distance2(a: &[i32], b: &[i32]) -> i64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as i64 - y as i64;
            d * d
        })
        .sum()
}

/// Why a record could not be turned into features.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeatureError {
    #[error("record is not a JSON object")]
    NotObject,
    #[error("field `{0}` missing or of the wrong type")]
    Field(&'static str),
    #[error("field `features` has {got} values, the manifest says {want}")]
    FeatureCount { got: usize, want: usize },
    #[error("field `features`[{index}]: `{text}` is not a decimal number")]
    Number { index: usize, text: String },
    #[error("field `label`: {label} is outside the {classes} classes")]
    LabelOutOfRange { label: u64, classes: u32 },
}

/// Turns canonical records into [`Embedding`]s; built once per epoch from the public eval set.
#[derive(Clone, Debug)]
pub struct Featurizer {
    kind: TaskKind,
    /// Per-feature (mean, deviation) in fixed point, tabular only.
    stats: Vec<(i64, i64)>,
}

impl Featurizer {
    /// A featurizer for `kind`; tabular statistics come from `reference` (the public evaluation
    /// records), so no contribution can shift the feature space.
    pub fn new(kind: &TaskKind, reference: &[Value]) -> Result<Self, (usize, FeatureError)> {
        let mut stats = Vec::new();
        if let TaskKind::Tabular { features, .. } = kind {
            let n = *features as usize;
            let mut rows = Vec::with_capacity(reference.len());
            for (i, r) in reference.iter().enumerate() {
                rows.push(raw_tabular(kind, r).map_err(|e| (i, e))?.0);
            }
            stats = (0..n).map(|j| column_stats(rows.iter().map(|r| r[j]))).collect();
        }
        Ok(Featurizer { kind: kind.clone(), stats })
    }

    /// The embedding of one canonical record.
    pub fn embed(&self, record: &Value) -> Result<Embedding, FeatureError> {
        match &self.kind {
            TaskKind::Tabular { .. } => {
                let (raw, label) = raw_tabular(&self.kind, record)?;
                let features = raw
                    .iter()
                    .zip(&self.stats)
                    .map(|(&x, &(mean, sd))| {
                        if sd == 0 {
                            // Constant on the evaluation set: it cannot tell evaluation points apart,
                            // so it must not make contributed records look far from all of them.
                            return 0;
                        }
                        let z = ((x as i128 - mean as i128) * ONE as i128).div_euclid(sd as i128);
                        z.clamp(-(Z_CLIP * ONE) as i128, (Z_CLIP * ONE) as i128) as i32
                    })
                    .collect();
                Ok(Embedding { features, label })
            }
            TaskKind::Text => {
                let t = str_field(record, "text")?;
                Ok(Embedding { features: text_features(t), label: 0 })
            }
            TaskKind::Instruct => {
                let p = str_field(record, "prompt")?;
                let c = str_field(record, "completion")?;
                Ok(Embedding { features: text_features(&format!("{p}\u{1f}{c}")), label: 0 })
            }
        }
    }
}

fn str_field<'a>(record: &'a Value, name: &'static str) -> Result<&'a str, FeatureError> {
    record
        .as_object()
        .ok_or(FeatureError::NotObject)?
        .get(name)
        .and_then(Value::as_str)
        .ok_or(FeatureError::Field(name))
}

/// Raw fixed-point features and the label of a tabular record.
fn raw_tabular(kind: &TaskKind, record: &Value) -> Result<(Vec<i64>, u32), FeatureError> {
    let TaskKind::Tabular { features, classes } = kind else { return Err(FeatureError::Field("features")) };
    let obj = record.as_object().ok_or(FeatureError::NotObject)?;
    let xs = obj.get("features").and_then(Value::as_array).ok_or(FeatureError::Field("features"))?;
    if xs.len() != *features as usize {
        return Err(FeatureError::FeatureCount { got: xs.len(), want: *features as usize });
    }
    let mut out = Vec::with_capacity(xs.len());
    for (index, x) in xs.iter().enumerate() {
        let text = match x {
            Value::Number(n) => n.to_string(),
            other => return Err(FeatureError::Number { index, text: other.to_string() }),
        };
        out.push(parse_fixed(&text).ok_or(FeatureError::Number { index, text })?);
    }
    let label = obj.get("label").and_then(Value::as_u64).ok_or(FeatureError::Field("label"))?;
    if label >= *classes as u64 {
        return Err(FeatureError::LabelOutOfRange { label, classes: *classes });
    }
    Ok((out, label as u32))
}

/// Parses decimal text (`-12.5`, `3e-4`, `7`) into fixed point with scale 2^16, rounding toward
/// negative infinity and saturating at ±2^46, without touching floats.
pub fn parse_fixed(text: &str) -> Option<i64> {
    let s = text.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    const LIMIT: i128 = 1 << 46;
    let mut m: i128 = 0;
    let mut e = exp as i64;
    for b in int.bytes().chain(frac.bytes()) {
        if m < 1 << 100 {
            m = m * 10 + (b - b'0') as i128;
        } else {
            e += 1; // digits beyond i128 precision only scale the value
        }
    }
    e -= frac.len() as i64;
    if neg {
        m = -m;
    }
    let mut v = m * ONE as i128;
    if e >= 0 {
        for _ in 0..e.min(40) {
            v = (v * 10).clamp(-LIMIT * 10, LIMIT * 10);
        }
    } else if -e > 60 {
        v = if v < 0 { -1 } else { 0 };
    } else {
        v = v.div_euclid(10i128.pow((-e) as u32));
    }
    Some(v.clamp(-LIMIT, LIMIT) as i64)
}

/// Integer mean and deviation of a column; deviation 0 marks a constant column.
fn column_stats(xs: impl Iterator<Item = i64> + Clone) -> (i64, i64) {
    let n = xs.clone().count() as i128;
    if n == 0 {
        return (0, 0);
    }
    let mean = xs.clone().map(|x| x as i128).sum::<i128>().div_euclid(n);
    let var = xs.map(|x| (x as i128 - mean).pow(2)).sum::<i128>() / n;
    let sd = isqrt(var as u128) as i64;
    (mean as i64, sd)
}

/// Floor of the square root of `n`, exact.
pub fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    let mut x = 1u128 << (128 - n.leading_zeros()).div_ceil(2);
    loop {
        let y = (x + n / x) / 2;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// Signed hashed bag of character 3-grams, L2-normalized in fixed point.
fn text_features(text: &str) -> Vec<i32> {
    let mut bag = vec![0i64; TEXT_DIMS];
    let chars: Vec<char> = text.chars().collect();
    let mut add = |gram: &[char]| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for c in gram {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        let slot = (h % TEXT_DIMS as u64) as usize;
        bag[slot] += if (h >> 63) == 0 { 1 } else { -1 };
    };
    if chars.len() < NGRAM {
        add(&chars);
    } else {
        chars.windows(NGRAM).for_each(&mut add);
    }
    // The norm itself in fixed point (2^16), so short texts are normalized exactly enough.
    let norm = isqrt(bag.iter().map(|&c| (c * c) as u128).sum::<u128>() << (2 * FRAC_BITS)) as i64;
    bag.iter().map(|&c| if norm == 0 { 0 } else { ((c << (2 * FRAC_BITS)) / norm) as i32 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Decimal text parses into 2^16 fixed point exactly where representable, floors otherwise.
    #[test]
    fn parse_fixed_examples() {
        assert_eq!(parse_fixed("1"), Some(65536));
        assert_eq!(parse_fixed("-2.5"), Some(-163840));
        assert_eq!(parse_fixed("0.5e1"), Some(327680));
        assert_eq!(parse_fixed("1e-5"), Some(0));
        assert_eq!(parse_fixed("-1e-5"), Some(-1));
        assert_eq!(parse_fixed("1001"), Some(1001 * 65536));
        assert_eq!(parse_fixed("1e300"), Some(1 << 46));
        assert_eq!(parse_fixed("abc"), None);
        assert_eq!(parse_fixed("."), None);
    }

    // Integer square root is the exact floor.
    #[test]
    fn isqrt_exact() {
        for n in [0u128, 1, 2, 3, 4, 15, 16, 17, 1 << 64, (1 << 64) - 1, u128::MAX] {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1).checked_mul(r + 1).is_none_or(|s| s > n), "{n}");
        }
    }

    // Tabular records standardize against the reference set; a label outside the classes is refused.
    #[test]
    fn tabular_standardizes_and_checks_label() {
        let kind = TaskKind::Tabular { features: 2, classes: 2 };
        let refs = vec![json!({"features": [0, 10], "label": 0}), json!({"features": [2, 10], "label": 1})];
        let f = Featurizer::new(&kind, &refs).unwrap();
        let e = f.embed(&json!({"features": [2, 10], "label": 1})).unwrap();
        // Feature 1 is constant on the reference set, so it carries no distance.
        assert_eq!(e.features, vec![65536, 0]);
        assert_eq!(f.embed(&json!({"features": [0, 99], "label": 0})).unwrap().features, vec![-65536, 0]);
        assert_eq!(e.label, 1);
        let bad = f.embed(&json!({"features": [2, 10], "label": 2}));
        assert_eq!(bad, Err(FeatureError::LabelOutOfRange { label: 2, classes: 2 }));
    }

    // Text features are unit length in fixed point and identical for identical text.
    #[test]
    fn text_features_normalized() {
        let f = Featurizer::new(&TaskKind::Text, &[]).unwrap();
        let a = f.embed(&json!({"text": "the quick brown fox"})).unwrap();
        let b = f.embed(&json!({"text": "the quick brown fox"})).unwrap();
        assert_eq!(a, b);
        let norm2: i64 = a.features.iter().map(|&x| (x as i64).pow(2)).sum();
        assert!((norm2 - (1i64 << 32)).abs() < 1 << 24, "{norm2}");
    }
}
