//! Record validation and canonicalization (DESIGN.md §4 steps 1–2), pure.
//!
//! A record is validated against the Datanet's task kind (exact field set, types, label range,
//! feature count) and brought to one canonical form: strings NFC-normalized and trimmed, keys
//! sorted, feature values as f64 in shortest round-trip form (`-0` as `0`), compact JSON. Its hash
//! is BLAKE3 of those bytes.

use crate::ids::RecordHash;
use crate::manifest::TaskKind;
use serde_json::{Map, Number, Value};
use unicode_normalization::UnicodeNormalization;

/// A record in canonical form.
#[derive(Clone, Debug, PartialEq)]
pub struct CanonicalRecord {
    pub hash: RecordHash,
    pub value: Value,
    /// Canonical JSON bytes (no trailing newline).
    pub bytes: Vec<u8>,
}

impl CanonicalRecord {
    /// Builds the canonical record from an already-canonical value.
    fn from_value(value: Value) -> Self {
        let bytes = serde_json::to_vec(&value).expect("serializing a JSON value");
        CanonicalRecord { hash: RecordHash::of(&bytes), value, bytes }
    }
}

/// What is wrong with one record (the caller adds the line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not valid UTF-8")]
    Utf8,
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON object, found {0}")]
    NotObject(&'static str),
    #[error("field `{0}` missing")]
    Missing(String),
    #[error("unexpected field `{0}` (allowed: {1})")]
    Extra(String, String),
    #[error("field `{0}` must be {1}")]
    Type(String, &'static str),
    #[error("field `{0}` is empty")]
    Empty(String),
    #[error("expected {expected} features, found {found}")]
    FeatureCount { expected: u32, found: usize },
    #[error("label {label} outside the classes 0..{classes}")]
    Label { label: String, classes: u32 },
    #[error("expected {expected} columns ({features} features and a label), found {found}")]
    Columns { expected: usize, features: u32, found: usize },
    #[error("record is {bytes} bytes in canonical form, over the limit of {max}")]
    TooLarge { bytes: usize, max: u32 },
    /// Copies or nearly copies an evaluation record (the text says which and how).
    #[error("{0} (contamination)")]
    Contaminated(String),
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn canonical_text(s: &str) -> String {
    // Most text is already NFC (all ASCII is): the quick check spares the rebuild.
    if unicode_normalization::is_nfc_quick(s.chars()) == unicode_normalization::IsNormalized::Yes {
        return s.trim().to_string();
    }
    s.nfc().collect::<String>().trim().to_string()
}

/// A finite f64 as a canonical JSON number (`-0` becomes `0`).
pub fn canonical_f64(x: f64) -> Option<Value> {
    if !x.is_finite() {
        return None;
    }
    let x = if x == 0.0 { 0.0 } else { x };
    Number::from_f64(x).map(Value::Number)
}

/// Validates `value` against `task` and returns its canonical form.
pub fn canonicalize(task: &TaskKind, value: Value, record_bytes_max: u32) -> Result<CanonicalRecord, RecordError> {
    let obj = match value {
        Value::Object(o) => o,
        other => return Err(RecordError::NotObject(kind_of(&other))),
    };
    let fields = task.fields();
    for f in fields {
        if !obj.contains_key(*f) {
            return Err(RecordError::Missing((*f).to_string()));
        }
    }
    if let Some(extra) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(RecordError::Extra(extra.clone(), fields.join(", ")));
    }
    let mut out = Map::new();
    match task {
        TaskKind::Text | TaskKind::Instruct => {
            for f in fields {
                let s = obj[*f].as_str().ok_or_else(|| RecordError::Type((*f).to_string(), "a string"))?;
                let c = canonical_text(s);
                if c.is_empty() {
                    return Err(RecordError::Empty((*f).to_string()));
                }
                out.insert((*f).to_string(), Value::String(c));
            }
        }
        TaskKind::Tabular { features, classes } => {
            let arr = obj["features"]
                .as_array()
                .ok_or_else(|| RecordError::Type("features".into(), "an array of numbers"))?;
            if arr.len() != *features as usize {
                return Err(RecordError::FeatureCount { expected: *features, found: arr.len() });
            }
            let mut feats = Vec::with_capacity(arr.len());
            for v in arr {
                let x = v.as_f64().ok_or_else(|| RecordError::Type("features".into(), "an array of finite numbers"))?;
                feats.push(canonical_f64(x).ok_or_else(|| RecordError::Type("features".into(), "finite numbers"))?);
            }
            let label = label_of(&obj["label"], *classes)?;
            out.insert("features".into(), Value::Array(feats));
            out.insert("label".into(), Value::from(label));
        }
    }
    let rec = CanonicalRecord::from_value(Value::Object(out));
    if rec.bytes.len() > record_bytes_max as usize {
        return Err(RecordError::TooLarge { bytes: rec.bytes.len(), max: record_bytes_max });
    }
    Ok(rec)
}

fn label_of(v: &Value, classes: u32) -> Result<u32, RecordError> {
    let bad = || RecordError::Label { label: v.to_string(), classes };
    let x = match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u
            } else {
                let f = n.as_f64().ok_or_else(bad)?;
                if f.fract() != 0.0 || f < 0.0 {
                    return Err(bad());
                }
                f as u64
            }
        }
        _ => return Err(RecordError::Type("label".into(), "an integer class index")),
    };
    if x >= classes as u64 {
        return Err(bad());
    }
    Ok(x as u32)
}

/// Parses one CSV row (`f1,…,fn,label`) of a tabular Datanet into a JSON record.
pub fn csv_row_to_value(row: &csv::StringRecord, features: u32) -> Result<Value, RecordError> {
    let expected = features as usize + 1;
    if row.len() != expected {
        return Err(RecordError::Columns { expected, features, found: row.len() });
    }
    let mut feats = Vec::with_capacity(features as usize);
    for f in row.iter().take(features as usize) {
        let x: f64 = f.trim().parse().map_err(|_| RecordError::Type("features".into(), "numbers"))?;
        feats.push(canonical_f64(x).ok_or_else(|| RecordError::Type("features".into(), "finite numbers"))?);
    }
    let last = row.get(features as usize).unwrap_or("").trim();
    let label: Value = match last.parse::<u64>() {
        Ok(u) => Value::from(u),
        Err(_) => match last.parse::<f64>() {
            Ok(f) => canonical_f64(f).unwrap_or(Value::Null),
            Err(_) => Value::String(last.to_string()),
        },
    };
    let mut m = Map::new();
    m.insert("features".into(), Value::Array(feats));
    m.insert("label".into(), label);
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Whitespace, Unicode composition and key order do not change a record's hash.
    #[test]
    fn canonical_form_is_stable() {
        let a =
            canonicalize(&TaskKind::Instruct, json!({"prompt": "  Cafe\u{301} ", "completion": "x"}), 1000).unwrap();
        let b = canonicalize(&TaskKind::Instruct, json!({"completion": "x ", "prompt": "Café"}), 1000).unwrap();
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.bytes, r#"{"completion":"x","prompt":"Café"}"#.as_bytes().to_vec());
    }

    // Integer and float spellings of the same feature value, and -0, canonicalize alike.
    #[test]
    fn numbers_are_canonical() {
        let t = TaskKind::Tabular { features: 2, classes: 2 };
        let a = canonicalize(&t, json!({"features": [1, -0.0], "label": 1}), 1000).unwrap();
        let b = canonicalize(&t, json!({"features": [1.0, 0], "label": 1.0}), 1000).unwrap();
        assert_eq!(a.bytes, b.bytes);
    }

    // Missing, extra, mistyped fields and out-of-range labels are each named.
    #[test]
    fn schema_errors_are_named() {
        let t = TaskKind::Tabular { features: 2, classes: 2 };
        assert_eq!(canonicalize(&t, json!({"features": [1, 2]}), 1000), Err(RecordError::Missing("label".into())));
        assert!(matches!(
            canonicalize(&t, json!({"features": [1, 2], "label": 0, "x": 1}), 1000),
            Err(RecordError::Extra(..))
        ));
        assert!(matches!(
            canonicalize(&t, json!({"features": [1, 2], "label": 2}), 1000),
            Err(RecordError::Label { .. })
        ));
        assert!(matches!(
            canonicalize(&t, json!({"features": [1], "label": 0}), 1000),
            Err(RecordError::FeatureCount { .. })
        ));
        assert!(matches!(canonicalize(&TaskKind::Text, json!([1]), 1000), Err(RecordError::NotObject(_))));
        assert!(matches!(
            canonicalize(&TaskKind::Text, json!({"text": "x".repeat(100)}), 50),
            Err(RecordError::TooLarge { .. })
        ));
    }
}
