//! Contamination: records that copy or nearly copy an evaluation record, refused at admission.
//!
//! A Datanet's utilities are measured on its evaluation records; a contribution that hands those
//! records back to the grader would be paid for the test itself. [`ContaminationIndex`] holds the
//! evaluation records a Datanet knows (the public file; later also revealed sealed records, added
//! with [`ContaminationIndex::extend`]) under the Datanet's own duplicate rules: the canonical
//! record hash (an evaluation record is canonicalized without its `slice` field, exactly like a
//! contributed record), and the near-duplicate rule of [`crate::records::neardup`] — MinHash similarity at
//! the manifest's `near_duplicate_threshold_ppm` for text and instruct Datanets, quantized
//! features at `near_duplicate_digits` (same label) for tabular ones, candidates found by the same
//! LSH band keys the store's near-duplicate index uses. Pure; [`contamination_index`] builds it
//! from the store's copy of the public evaluation file once per Datanet and caches it.

use super::{AdmitError, EvalRecord};
use crate::ids::{DatanetId, RecordHash};
use crate::manifest::{Manifest, TaskKind};
use crate::records::neardup;
use crate::records::{CanonicalRecord, RecordError};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// How a record matches an evaluation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contamination {
    /// The evaluation record it matches, e.g. "evaluation record 3".
    pub eval: String,
    /// `None` for an exact duplicate; the estimated similarity (ppm) of a text near-duplicate;
    /// `Some(1_000_000)` for a tabular near-duplicate (within the quantization).
    pub near_ppm: Option<u32>,
}

impl Contamination {
    /// The reason a record is refused, as a [`RecordError`] (the caller adds the line).
    pub fn error(&self) -> RecordError {
        let what = match self.near_ppm {
            None => format!("duplicates {}", self.eval),
            Some(ppm) => format!("nearly duplicates {} (similarity {:.2})", self.eval, ppm as f64 / 1e6),
        };
        RecordError::Contaminated(what)
    }
}

/// A record's near-duplicate key material under the Datanet's rule.
#[derive(Debug, Clone)]
enum Near {
    Text(Box<neardup::Signature>),
    Tabular { label: String, features: Vec<f64> },
}

/// The evaluation records a Datanet knows, indexed for the duplicate and near-duplicate checks.
#[derive(Debug, Clone)]
pub struct ContaminationIndex {
    task: TaskKind,
    threshold_ppm: u32,
    digits: u32,
    /// Per entry: its name in refusals.
    names: Vec<String>,
    /// Per entry: its near-duplicate material.
    near: Vec<Near>,
    exact: HashMap<RecordHash, usize>,
    /// LSH band key (text) or tabular band key → entries holding it.
    bands: HashMap<u64, Vec<usize>>,
    /// How many entries each source has added (numbers the names per source).
    per_source: HashMap<String, usize>,
}

impl ContaminationIndex {
    /// The index of a Datanet's public evaluation records (named "evaluation record N", N counting
    /// the file's records from 1).
    pub fn new(manifest: &Manifest, eval: &[EvalRecord]) -> Self {
        let mut ix = ContaminationIndex {
            task: manifest.task.clone(),
            threshold_ppm: manifest.admission.near_duplicate_threshold_ppm,
            digits: manifest.admission.near_duplicate_digits,
            names: Vec::new(),
            near: Vec::new(),
            exact: HashMap::new(),
            bands: HashMap::new(),
            per_source: HashMap::new(),
        };
        ix.extend("evaluation record", eval.iter().map(|e| &e.record));
        ix
    }

    /// Adds more evaluation records (e.g. a revealed sealed split), named "`source` N" with N
    /// counting this source's records from 1 across calls. Records must be canonical for the
    /// Datanet's task (as [`super::parse_eval`] returns them).
    pub fn extend<'a>(&mut self, source: &str, records: impl IntoIterator<Item = &'a CanonicalRecord>) {
        for r in records {
            let n = self.per_source.entry(source.to_string()).or_insert(0);
            *n += 1;
            let i = self.names.len();
            self.names.push(format!("{source} {n}"));
            self.exact.entry(r.hash).or_insert(i);
            let (keys, near) = self.near_of(&r.value);
            for k in keys {
                self.bands.entry(k).or_default().push(i);
            }
            self.near.push(near);
        }
    }

    /// How many evaluation records the index holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the index holds no evaluation record.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn near_of(&self, value: &serde_json::Value) -> (Vec<u64>, Near) {
        match self.task {
            TaskKind::Tabular { .. } => {
                let (label, features) = neardup::tabular_parts(value);
                (neardup::tabular_band_keys(value, self.digits), Near::Tabular { label, features })
            }
            TaskKind::Text | TaskKind::Instruct => {
                let sig = neardup::minhash(&neardup::record_text(value));
                (neardup::band_keys(&sig).to_vec(), Near::Text(Box::new(sig)))
            }
        }
    }

    /// Whether `r` copies or nearly copies an evaluation record: the exact duplicate if any, else
    /// the most similar near-duplicate (ties to the earlier entry).
    pub fn check(&self, r: &CanonicalRecord) -> Option<Contamination> {
        self.check_value(&r.hash, &r.value)
    }

    /// [`Self::check`] of a canonical record given by its hash and value.
    pub fn check_value(&self, hash: &RecordHash, value: &serde_json::Value) -> Option<Contamination> {
        if let Some(&i) = self.exact.get(hash) {
            return Some(Contamination { eval: self.names[i].clone(), near_ppm: None });
        }
        let (keys, near) = self.near_of(value);
        let mut best: Option<(u32, usize)> = None;
        for i in keys.iter().filter_map(|k| self.bands.get(k)).flatten().copied() {
            let score = match (&near, &self.near[i]) {
                (Near::Text(a), Near::Text(b)) => {
                    let s = neardup::similarity_ppm(a, b);
                    if s < self.threshold_ppm {
                        continue;
                    }
                    s
                }
                (Near::Tabular { label: la, features: fa }, Near::Tabular { label: lb, features: fb }) => {
                    if la != lb || !neardup::tabular_near(fa, fb, self.digits) {
                        continue;
                    }
                    1_000_000
                }
                _ => continue,
            };
            if best.is_none_or(|(s, j)| score > s || (score == s && i < j)) {
                best = Some((score, i));
            }
        }
        best.map(|(s, i)| Contamination { eval: self.names[i].clone(), near_ppm: Some(s) })
    }

    /// Every contaminated record of `records` as (index into `records`, why), in order; all cores.
    pub fn screen(&self, records: &[CanonicalRecord]) -> Vec<(usize, Contamination)> {
        use rayon::prelude::*;
        if self.is_empty() {
            return Vec::new();
        }
        records.par_iter().enumerate().filter_map(|(i, r)| self.check(r).map(|c| (i, c))).collect()
    }
}

/// Per Datanet: the ledger head epoch the index was built at, and the index.
/// How revealed sealed records are named in refusals.
pub const SEALED_SOURCE: &str = "sealed evaluation record";

type Cache = Mutex<HashMap<DatanetId, (Option<u64>, Arc<ContaminationIndex>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The contamination index of Datanet `id` (whose manifest is `manifest`): the store's copy of
/// the public evaluation file plus every sealed record the ledger's attestations revealed
/// ("sealed evaluation record N"), cached for the process and rebuilt when the ledger head moves
/// (a Datanet id is the hash of its manifest, which names the public file by hash). `None` when
/// this store does not hold the evaluation file yet (a peer that imported only the manifest; the
/// epoch driver fetches it): admission then cannot check, and says so in the log.
pub async fn contamination_index(
    store: &Store,
    id: &DatanetId,
    manifest: &Manifest,
) -> Result<Option<Arc<ContaminationIndex>>, AdmitError> {
    let head = crate::store::ledger::Ledger::open(store.db())
        .head(id)
        .map_err(|e| AdmitError::Ledger(e.to_string()))?
        .map(|h| h.epoch);
    if let Some((at, ix)) = cache().lock().expect("contamination cache").get(id) {
        if *at == head {
            return Ok(Some(ix.clone()));
        }
    }
    let revealed = super::sealed::revealed_in_ledger(store, manifest)?;
    let h = manifest.eval.public_hash;
    let have_public = store.has_blob(&h).await?;
    let public = if have_public {
        super::parse_eval(manifest, &store.get_blob(&h).await?)?
    } else {
        tracing::warn!(
            target: "datanet::admission",
            datanet = %id.short(),
            eval = %h.short(),
            revealed = revealed.len(),
            "the public evaluation file is not here: contamination checked against revealed sealed records only"
        );
        if revealed.is_empty() {
            return Ok(None);
        }
        Vec::new()
    };
    let mut ix = ContaminationIndex::new(manifest, &public);
    ix.extend(SEALED_SOURCE, super::sealed::canonical_of(&revealed));
    let ix = Arc::new(ix);
    // Cached only when complete: a later call retries the public file.
    if have_public {
        cache().lock().expect("contamination cache").insert(*id, (head, ix.clone()));
    }
    Ok(Some(ix))
}
