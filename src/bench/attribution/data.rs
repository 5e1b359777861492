//! Data sets: loads a CSV or JSONL file, generates the built-in text corpus, writes it as JSONL.

use crate::manifest::TaskKind;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::io::Read;
use std::path::Path;

/// A loaded data set.
#[derive(Clone, Debug)]
pub enum Dataset {
    Tabular {
        features: u32,
        classes: u32,
        rows: Vec<(Vec<f64>, u32)>,
    },
    /// JSONL text: all `{"text": …}` records, or all `{"prompt": …, "completion": …}` (instruct).
    Text {
        instruct: bool,
        rows: Vec<TextRow>,
    },
}

/// One text record and the slice it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct TextRow {
    /// The record as a contributor would submit it (without the `slice` field).
    pub record: Value,
    /// In the critical slice: the line's `"slice"` was `"critical"` (anything else is common).
    pub critical: bool,
}

impl Dataset {
    pub(super) fn len(&self) -> usize {
        match self {
            Dataset::Tabular { rows, .. } => rows.len(),
            Dataset::Text { rows, .. } => rows.len(),
        }
    }

    pub(super) fn task(&self) -> TaskKind {
        match self {
            Dataset::Tabular { features, classes, .. } => TaskKind::Tabular { features: *features, classes: *classes },
            Dataset::Text { instruct: true, .. } => TaskKind::Instruct,
            Dataset::Text { .. } => TaskKind::Text,
        }
    }
}

/// Why a data file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} line {line}: {reason}")]
    Line { path: String, line: usize, reason: String },
    #[error("{path}: no records")]
    Empty { path: String },
}

/// Reads a CSV (optionally gzip-compressed) or JSONL data set.
pub fn load_data(path: &Path) -> Result<Dataset, DataError> {
    let shown = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| DataError::Read { path: shown.clone(), source })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    let bytes = if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|source| DataError::Read { path: shown.clone(), source })?;
        out
    } else {
        raw
    };
    let text = String::from_utf8(bytes).map_err(|_| DataError::Line {
        path: shown.clone(),
        line: 1,
        reason: "not UTF-8".into(),
    })?;
    let line_err = |line: usize, reason: String| DataError::Line { path: shown.clone(), line, reason };
    if name.trim_end_matches(".gz").ends_with(".jsonl") {
        let mut rows = Vec::new();
        let mut kind: Option<bool> = None;
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let line = i + 1;
            let kind_name = |instruct: bool| if instruct { "instruct (prompt, completion)" } else { "text" };
            let mut v: Value = serde_json::from_str(l).map_err(|e| line_err(line, format!("not JSON: {e}")))?;
            let obj = v.as_object_mut().ok_or_else(|| line_err(line, "not a JSON object".into()))?;
            let critical = match obj.remove("slice") {
                None => false,
                Some(Value::String(s)) => s == "critical",
                Some(_) => return Err(line_err(line, "field `slice` must be a string".into())),
            };
            let instruct = obj.contains_key("prompt") || obj.contains_key("completion");
            let fields: &[&str] = if instruct { &["prompt", "completion"] } else { &["text"] };
            for f in fields {
                if !obj.get(*f).is_some_and(Value::is_string) {
                    return Err(line_err(line, format!("field `{f}` missing or not a string")));
                }
            }
            match kind {
                Some(k) if k != instruct => {
                    return Err(line_err(
                        line,
                        format!("a {} record, but the file's first record is {}", kind_name(instruct), kind_name(k)),
                    ));
                }
                _ => kind = Some(instruct),
            }
            rows.push(TextRow { record: v, critical });
        }
        if rows.is_empty() {
            return Err(DataError::Empty { path: shown });
        }
        return Ok(Dataset::Text { instruct: kind.unwrap_or(false), rows });
    }
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    let Some(&(_, first)) = lines.first() else { return Err(DataError::Empty { path: shown }) };
    let fields = |l: &str| l.split(',').map(str::trim).map(String::from).collect::<Vec<_>>();
    let first_fields = fields(first);
    let numeric = |f: &[String]| f.iter().all(|x| x.parse::<f64>().is_ok());
    let header = !numeric(&first_fields) || lines.get(1).is_some_and(|(_, l)| fields(l).len() != first_fields.len());
    let (mut features, mut classes, body) = (None, None, if header { &lines[1..] } else { &lines[..] });
    if header {
        if first_fields.len() < 4 {
            return Err(line_err(1, "header must be `n_samples,n_features,class_name_0,class_name_1,…`".into()));
        }
        let nf = first_fields[1]
            .parse::<u32>()
            .map_err(|_| line_err(1, format!("n_features `{}` is not a count", first_fields[1])))?;
        features = Some(nf);
        classes = Some((first_fields.len() - 2) as u32);
    }
    let mut rows = Vec::with_capacity(body.len());
    for &(line, l) in body {
        let f = fields(l);
        let want = features.map_or(f.len(), |n| n as usize + 1);
        if f.len() != want || f.len() < 2 {
            return Err(line_err(line, format!("{} fields, expected {want} (features then the label)", f.len())));
        }
        features.get_or_insert((f.len() - 1) as u32);
        let mut xs = Vec::with_capacity(f.len() - 1);
        for (j, x) in f[..f.len() - 1].iter().enumerate() {
            let v: f64 = x.parse().map_err(|_| line_err(line, format!("feature {} `{x}` is not a number", j + 1)))?;
            if !v.is_finite() {
                return Err(line_err(line, format!("feature {} `{x}` is not finite", j + 1)));
            }
            xs.push(v);
        }
        let label_text = &f[f.len() - 1];
        let label: u32 =
            label_text.parse().map_err(|_| line_err(line, format!("label `{label_text}` is not a class index")))?;
        if let Some(c) = classes {
            if label >= c {
                return Err(line_err(line, format!("label {label} is outside the {c} classes of the header")));
            }
        }
        rows.push((xs, label));
    }
    if rows.is_empty() {
        return Err(DataError::Empty { path: shown });
    }
    let classes = classes.unwrap_or_else(|| rows.iter().map(|r| r.1).max().unwrap_or(0) + 1).max(2);
    Ok(Dataset::Tabular { features: features.unwrap_or(0), classes, rows })
}

/// The built-in text corpus of `generator = "instruct"`, from the testnet's generators
/// ([`crate::testnet::scenario::generate`]) with a fixed corpus seed (the bench's seeds split it
/// differently): `common` records ask the colors of eight things in five phrasings, each numbered,
/// so all are distinct; `critical` records ask to negate an integer in 10..999, a skill a base
/// pretrained on the common slice does not have — one record per integer, so at most 990.
pub fn generated_corpus(generator: &str, common: usize, critical: usize) -> anyhow::Result<Dataset> {
    if generator != "instruct" {
        bail!("unknown generator `{generator}` (instruct)");
    }
    let mut rows: Vec<TextRow> = crate::testnet::scenario::generate("common", common, 1)?
        .into_iter()
        .map(|record| TextRow { record, critical: false })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut crit: Vec<TextRow> = crate::testnet::scenario::generate("critical", 20_000, 2)?
        .into_iter()
        .filter(|r| seen.insert(r["prompt"].as_str().unwrap_or_default().to_string()))
        .map(|record| TextRow { record, critical: true })
        .collect();
    if crit.len() < critical {
        bail!(
            "the instruct generator has {} distinct critical records; the scenario needs {critical} (curated + half of eval_records)",
            crit.len()
        );
    }
    crit.truncate(critical);
    rows.extend(crit);
    Ok(Dataset::Text { instruct: true, rows })
}

/// Writes a text data set as JSONL, each line with its `slice`: the layout `--data` reads back.
pub fn write_jsonl(data: &Dataset, path: &Path) -> anyhow::Result<()> {
    let Dataset::Text { rows, .. } = data else { bail!("only text data sets are written as JSONL") };
    let mut out = String::new();
    for r in rows {
        let mut v = r.record.clone();
        v["slice"] = json!(if r.critical { "critical" } else { "common" });
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
