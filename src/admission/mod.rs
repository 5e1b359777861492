//! Admission: how records become an acknowledged contribution (DESIGN.md §4).
//!
//! [`parse_input`] reads a JSONL or CSV file and validates every record against the Datanet's
//! manifest, reporting bad records by line, through the contribution format of [`crate::records`]
//! (re-exported here): [`canonical`] brings records to their one canonical form; [`pack`] cuts
//! canonical records into ≤ 1 MiB JSONL chunks with a HashSeq root and a Merkle root over record
//! hashes. [`admit_local`] signs the [`ContributionRecord`] and hands everything to
//! `store::contributions`, which classifies records (new, exact duplicate, near-duplicate) and
//! commits atomically. [`admit_replicated`] runs the same checks on a contribution whose chunks
//! came from another peer. Everything but the final commit is pure.

pub mod contamination;
pub mod create;
pub mod sealed;

use crate::codec::Signed;
use crate::identity::Identity;
use crate::ids::{BlobHash, ContributionId, DatanetId};
use crate::manifest::{CHUNK_BYTES_MAX, Manifest, TaskKind};
use crate::store::contributions::{Admitted, ContributionMeta};
use crate::store::{Store, StoreError};
pub use contamination::{Contamination, ContaminationIndex, contamination_index};
// The contribution format is `records`' (the store builds on it too); admission's callers reach it
// through here as well: parse, canonicalize, pack, sign, admit.
pub use crate::records::{
    CanonicalRecord, ContributionRecord, Packed, RecordError, SignedContribution, canonical, neardup, pack,
    record_hashes, unpack_chunk,
};
use std::path::Path;

/// How many bad records an error lists before summarizing.
const ERRORS_LISTED_MAX: usize = 20;

/// One bad record in an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub error: RecordError,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

fn list_errors(errors: &[LineError]) -> String {
    let mut s: Vec<String> = errors.iter().take(ERRORS_LISTED_MAX).map(|e| format!("  {e}")).collect();
    if errors.len() > ERRORS_LISTED_MAX {
        s.push(format!("  … and {} more", errors.len() - ERRORS_LISTED_MAX));
    }
    s.join("\n")
}

/// Why admission refused a contribution. Nothing is stored when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: unsupported file type; use .jsonl, .json or .csv")]
    FileType { path: String },
    #[error("{path}: no records")]
    Empty { path: String },
    #[error("{path}: {count} invalid record(s); nothing was stored (use --skip-invalid to admit the rest)\n{}", list_errors(.errors))]
    Invalid { path: String, count: usize, errors: Vec<LineError> },
    #[error("{path}: {count} record(s) copy or nearly copy an evaluation record of this Datanet (contamination); nothing was stored{}\n{}", if *.skippable { " (use --skip-invalid to admit the rest)" } else { "" }, list_errors(.errors))]
    Contaminated { path: String, count: usize, errors: Vec<LineError>, skippable: bool },
    #[error("{path}: CSV input is only for tabular Datanets; this Datanet is `{kind}`")]
    CsvNotTabular { path: String, kind: &'static str },
    #[error("contribution has {records} records, over the Datanet's limit of {max}")]
    TooManyRecords { records: usize, max: u32 },
    #[error("contribution is {bytes} bytes in canonical form, over the Datanet's limit of {max}")]
    TooManyBytes { bytes: u64, max: u64 },
    #[error("datanet {0} is not known here; `datanet datanet ls` lists the known ones")]
    UnknownDatanet(String),
    #[error("contribution signature: {0}")]
    Signature(#[from] crate::codec::VerifyError),
    #[error("contribution {what} does not match its chunks: record says {claimed}, chunks give {actual}")]
    Mismatch { what: &'static str, claimed: String, actual: String },
    #[error(transparent)]
    Chunk(#[from] crate::records::ChunkError),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an input file held.
#[derive(Debug, Clone)]
pub struct ParsedInput {
    /// The file, as shown in messages.
    pub path: String,
    pub records: Vec<CanonicalRecord>,
    /// Per record, its line in the file.
    pub lines: Vec<usize>,
    /// Records skipped with `--skip-invalid`.
    pub skipped: Vec<LineError>,
}

/// Reads `path` (JSONL, or CSV for tabular Datanets) and validates every record.
///
/// With `skip_invalid` bad records are dropped and listed; otherwise any bad record refuses the
/// whole file. Limits on record count and total bytes are checked after validation.
pub fn parse_input(
    manifest: &Manifest,
    path: &Path,
    skip_invalid: bool,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<ParsedInput, AdmitError> {
    let shown = path.display().to_string();
    let rules = &manifest.admission;
    let meta = std::fs::metadata(path).map_err(|source| AdmitError::Read { path: shown.clone(), source })?;
    // A file far over the contribution limit is refused before it is read into memory.
    if meta.len() > rules.contribution_bytes_max.saturating_mul(4).saturating_add(1 << 20) {
        return Err(AdmitError::TooManyBytes { bytes: meta.len(), max: rules.contribution_bytes_max });
    }
    let data = std::fs::read(path).map_err(|source| AdmitError::Read { path: shown.clone(), source })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut records = Vec::new();
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut push = |line: usize, r: Result<CanonicalRecord, RecordError>| match r {
        Ok(c) => {
            records.push(c);
            lines.push(line);
        }
        Err(error) => errors.push(LineError { line, error }),
    };
    let max = rules.record_bytes_max;
    match ext.as_str() {
        "jsonl" | "json" | "ndjson" => {
            let mut done = 0usize;
            for (i, raw) in data.split(|b| *b == b'\n').enumerate() {
                done += raw.len() + 1;
                if let Some(p) = progress {
                    if i % 4096 == 0 {
                        p.set_position(done as u64);
                    }
                }
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let r = std::str::from_utf8(raw)
                    .map_err(|_| RecordError::Utf8)
                    .and_then(|s| serde_json::from_str(s).map_err(|e| RecordError::Json(e.to_string())))
                    .and_then(|v| canonical::canonicalize(&manifest.task, v, max));
                push(i + 1, r);
            }
        }
        "csv" => {
            let TaskKind::Tabular { features, .. } = manifest.task else {
                return Err(AdmitError::CsvNotTabular { path: shown, kind: manifest.task.name() });
            };
            let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(data.as_slice());
            for (i, row) in rdr.records().enumerate() {
                let line = i + 1;
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        let error = if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) {
                            RecordError::Utf8
                        } else {
                            RecordError::Json(format!("csv: {e}"))
                        };
                        push(line, Err(error));
                        continue;
                    }
                };
                // An optional first line `n_samples,n_features,class names…` (the layout of the
                // shared data sets) is a header, not a record.
                if i == 0 && is_header(&row, features) {
                    continue;
                }
                push(
                    line,
                    canonical::csv_row_to_value(&row, features)
                        .and_then(|v| canonical::canonicalize(&manifest.task, v, max)),
                );
            }
        }
        _ => return Err(AdmitError::FileType { path: shown }),
    }
    if let Some(p) = progress {
        p.set_position(data.len() as u64);
    }
    if !errors.is_empty() && !skip_invalid {
        return Err(AdmitError::Invalid { path: shown, count: errors.len(), errors });
    }
    if records.is_empty() {
        return Err(AdmitError::Empty { path: shown });
    }
    check_limits(manifest, &records)?;
    Ok(ParsedInput { path: shown, records, lines, skipped: errors })
}

fn is_header(row: &csv::StringRecord, features: u32) -> bool {
    let numeric = |s: &str| s.trim().parse::<f64>().is_ok();
    let first_two_ints = row.len() >= 2 && row.iter().take(2).all(|s| s.trim().parse::<u64>().is_ok());
    let names_follow = row.iter().skip(2).any(|s| !numeric(s));
    let not_record = row.len() != features as usize + 1;
    first_two_ints && (names_follow || not_record) || row.iter().all(|s| !numeric(s))
}

fn check_limits(manifest: &Manifest, records: &[CanonicalRecord]) -> Result<(), AdmitError> {
    let rules = &manifest.admission;
    if records.len() > rules.contribution_records_max as usize {
        return Err(AdmitError::TooManyRecords { records: records.len(), max: rules.contribution_records_max });
    }
    let bytes: u64 = records.iter().map(|r| r.bytes.len() as u64 + 1).sum();
    if bytes > rules.contribution_bytes_max {
        return Err(AdmitError::TooManyBytes { bytes, max: rules.contribution_bytes_max });
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The outcome of an admission, after the store has made it durable.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub id: ContributionId,
    pub contribution: SignedContribution,
    pub meta: ContributionMeta,
    /// True when this exact contribution was already stored (nothing new written).
    pub already_present: bool,
}

/// What [`admit_input`] did.
#[derive(Debug, Clone)]
pub struct LocalAdmission {
    pub ack: Acknowledged,
    /// Invalid records skipped with `--skip-invalid` (from [`parse_input`]).
    pub skipped: Vec<LineError>,
    /// Records skipped with `--skip-invalid` because they copy or nearly copy an evaluation record.
    pub contaminated: Vec<LineError>,
}

/// The records of `records` that copy or nearly copy one of the Datanet's evaluation records
/// (none when this store does not hold the evaluation file, see [`contamination_index`]).
async fn screen(
    store: &Store,
    datanet: &DatanetId,
    manifest: &Manifest,
    records: &[CanonicalRecord],
) -> Result<Vec<(usize, Contamination)>, AdmitError> {
    Ok(match contamination_index(store, datanet, manifest).await? {
        Some(ix) => ix.screen(records),
        None => Vec::new(),
    })
}

/// Signs and admits validated records as this peer's contribution. A record that copies or nearly
/// copies an evaluation record refuses the whole contribution ([`AdmitError::Contaminated`], lines
/// counting the records from 1).
pub async fn admit_local(
    store: &Store,
    identity: &Identity,
    datanet: &DatanetId,
    records: Vec<CanonicalRecord>,
) -> Result<Acknowledged, AdmitError> {
    Ok(admit_parsed(store, identity, datanet, local_input(records), false, false).await?.ack)
}

/// Records handed over in memory, as an input whose lines count them from 1.
fn local_input(records: Vec<CanonicalRecord>) -> ParsedInput {
    let lines: Vec<usize> = (1..=records.len()).collect();
    ParsedInput { path: "contribution".into(), records, lines, skipped: Vec::new() }
}

/// [`admit_local`] that skips (and lists in [`LocalAdmission::contaminated`]) the records copying
/// or nearly copying an evaluation record instead of refusing the contribution, as `--skip-invalid`
/// does; refused only when nothing else is left.
pub async fn admit_local_skipping_contaminated(
    store: &Store,
    identity: &Identity,
    datanet: &DatanetId,
    records: Vec<CanonicalRecord>,
) -> Result<LocalAdmission, AdmitError> {
    admit_parsed(store, identity, datanet, local_input(records), true, false).await
}

/// Admits a parsed input file as this peer's contribution: a record that copies or nearly copies
/// an evaluation record refuses the whole file (errors name its line), or with `skip_invalid` is
/// skipped and listed in [`LocalAdmission::contaminated`].
pub async fn admit_input(
    store: &Store,
    identity: &Identity,
    datanet: &DatanetId,
    parsed: ParsedInput,
    skip_invalid: bool,
) -> Result<LocalAdmission, AdmitError> {
    admit_parsed(store, identity, datanet, parsed, skip_invalid, true).await
}

async fn admit_parsed(
    store: &Store,
    identity: &Identity,
    datanet: &DatanetId,
    parsed: ParsedInput,
    skip_invalid: bool,
    skippable: bool,
) -> Result<LocalAdmission, AdmitError> {
    let signed = store.manifest(datanet)?.ok_or_else(|| AdmitError::UnknownDatanet(datanet.to_hex()))?;
    let manifest = signed.body;
    let ParsedInput { path, mut records, lines, skipped } = parsed;
    check_limits(&manifest, &records)?;
    let hits = screen(store, datanet, &manifest, &records).await?;
    let contaminated: Vec<LineError> = hits
        .iter()
        .map(|(i, c)| LineError { line: lines.get(*i).copied().unwrap_or(i + 1), error: c.error() })
        .collect();
    if !contaminated.is_empty() {
        if !skip_invalid || hits.len() == records.len() {
            let count = contaminated.len();
            let skippable = skippable && !skip_invalid;
            return Err(AdmitError::Contaminated { path, count, errors: contaminated, skippable });
        }
        let mut refused = hits.iter().map(|(i, _)| *i).peekable();
        let mut kept = Vec::with_capacity(records.len() - hits.len());
        for (i, r) in records.into_iter().enumerate() {
            if refused.next_if_eq(&i).is_none() {
                kept.push(r);
            }
        }
        records = kept;
    }
    let ack = sign_and_admit(store, identity, datanet, &manifest, records).await?;
    Ok(LocalAdmission { ack, skipped, contaminated })
}

async fn sign_and_admit(
    store: &Store,
    identity: &Identity,
    datanet: &DatanetId,
    manifest: &Manifest,
    records: Vec<CanonicalRecord>,
) -> Result<Acknowledged, AdmitError> {
    let packed = pack(&records);
    let body = ContributionRecord {
        datanet: *datanet,
        contributor: identity.public_key(),
        created_ms: now_ms(),
        root: packed.root,
        records_root: packed.records_root,
        record_count: records.len() as u32,
        byte_count: packed.byte_count,
        chunk_count: packed.chunks.len() as u32,
    };
    let contribution = Signed::sign(body, &identity.signing_key());
    commit(store, manifest, contribution, packed, records, "local", true).await
}

/// Admits a contribution whose HashSeq and chunks are already in the blob store (replication):
/// verifies the signature, the Datanet, the limits, every chunk hash, every record's canonical
/// form, the record count, byte count and Merkle root, and refuses it when a record copies or nearly
/// copies an evaluation record (an honest origin refuses those) — then commits exactly as a local
/// admission.
pub async fn admit_replicated(
    store: &Store,
    contribution: &SignedContribution,
    source: &str,
) -> Result<Acknowledged, AdmitError> {
    let c = &contribution.body;
    contribution.verify_by(&c.contributor)?;
    let manifest = store.manifest(&c.datanet)?.ok_or_else(|| AdmitError::UnknownDatanet(c.datanet.to_hex()))?.body;
    check_claims(&manifest, c)?;
    let hash_seq = store.get_blob(&c.root).await?;
    if hash_seq.len() % 32 != 0 || hash_seq.len() / 32 != c.chunk_count as usize {
        return Err(AdmitError::Mismatch {
            what: "chunk count",
            claimed: c.chunk_count.to_string(),
            actual: (hash_seq.len() / 32).to_string(),
        });
    }
    let t = std::time::Instant::now();
    let mut chunks = Vec::with_capacity(c.chunk_count as usize);
    for h in hash_seq.chunks_exact(32) {
        let bytes = store.get_blob(&BlobHash(h.try_into().expect("32-byte chunk"))).await?;
        if bytes.len() > CHUNK_BYTES_MAX {
            return Err(AdmitError::Mismatch {
                what: "chunk size",
                claimed: format!("≤ {CHUNK_BYTES_MAX}"),
                actual: bytes.len().to_string(),
            });
        }
        chunks.push(bytes);
    }
    // Parsing and canonicality checks are independent per chunk: all cores, first error wins.
    let rules_max = manifest.admission.record_bytes_max;
    let parsed: Vec<Vec<CanonicalRecord>> = {
        use rayon::prelude::*;
        chunks
            .par_iter()
            .enumerate()
            .map(|(i, b)| unpack_chunk(&manifest.task, rules_max, i, b))
            .collect::<Result<_, _>>()?
    };
    drop(chunks);
    let records: Vec<CanonicalRecord> = parsed.into_iter().flatten().collect();
    tracing::debug!(target: "datanet::admission", records = records.len(), read_parse_ms = t.elapsed().as_millis() as u64, "chunks read and parsed");
    check_limits(&manifest, &records)?;
    let packed = pack(&records);
    let checks = [
        ("root", c.root.to_hex(), packed.root.to_hex()),
        ("records root", c.records_root.to_hex(), packed.records_root.to_hex()),
        ("record count", c.record_count.to_string(), records.len().to_string()),
        ("byte count", c.byte_count.to_string(), packed.byte_count.to_string()),
    ];
    for (what, claimed, actual) in checks {
        if claimed != actual {
            return Err(AdmitError::Mismatch { what, claimed, actual });
        }
    }
    let hits = screen(store, &c.datanet, &manifest, &records).await?;
    if !hits.is_empty() {
        let errors: Vec<LineError> = hits.iter().map(|(i, h)| LineError { line: i + 1, error: h.error() }).collect();
        let path = format!("contribution {}", c.id().short());
        return Err(AdmitError::Contaminated { path, count: errors.len(), errors, skippable: false });
    }
    // The chunks were verified as they streamed in and again on read: tag them, don't copy them.
    commit(store, &manifest, contribution.clone(), packed, records, source, false).await
}

/// Checks a contribution record's claims against the manifest limits (no chunk needed): what a
/// gossip validator can check before fetching anything.
pub fn check_claims(manifest: &Manifest, c: &ContributionRecord) -> Result<(), AdmitError> {
    let rules = &manifest.admission;
    if c.record_count > rules.contribution_records_max {
        return Err(AdmitError::TooManyRecords {
            records: c.record_count as usize,
            max: rules.contribution_records_max,
        });
    }
    if c.byte_count > rules.contribution_bytes_max {
        return Err(AdmitError::TooManyBytes { bytes: c.byte_count, max: rules.contribution_bytes_max });
    }
    if c.record_count == 0 || c.chunk_count == 0 || c.chunk_count > c.record_count {
        return Err(AdmitError::Mismatch {
            what: "counts",
            claimed: format!("{} records in {} chunks", c.record_count, c.chunk_count),
            actual: "an empty or impossible contribution".into(),
        });
    }
    Ok(())
}

async fn commit(
    store: &Store,
    manifest: &Manifest,
    contribution: SignedContribution,
    packed: Packed,
    records: Vec<CanonicalRecord>,
    source: &str,
    write_blobs: bool,
) -> Result<Acknowledged, AdmitError> {
    let id = contribution.body.id();
    if let Some(meta) = store.contribution_meta(&id)? {
        return Ok(Acknowledged { id, contribution, meta, already_present: true });
    }
    // Blobs first, synced; then one sled transaction; then flush. A crash before the transaction
    // leaves only unreferenced blobs.
    if write_blobs {
        for chunk in packed.chunks {
            store.put_blob(chunk).await?;
        }
        store.put_blob(packed.hash_seq).await?;
    }
    store.tag_contribution(&id, &packed.root).await?;
    let Admitted { meta, .. } =
        store.commit_contribution(manifest, &contribution, &packed.chunk_hashes, &records, source).await?;
    Ok(Acknowledged { id, contribution, meta, already_present: false })
}

/// One record of an evaluation suite: a task record plus the slice it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRecord {
    pub slice: String,
    pub record: CanonicalRecord,
}

/// Parses an evaluation file (JSONL: the task's fields plus `"slice"`), checking every slice is
/// declared in the manifest.
pub fn parse_eval(manifest: &Manifest, bytes: &[u8]) -> Result<Vec<EvalRecord>, AdmitError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let r = std::str::from_utf8(raw)
            .map_err(|_| RecordError::Utf8)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).map_err(|e| RecordError::Json(e.to_string())))
            .and_then(|mut v| {
                let slice = match v.as_object_mut().and_then(|o| o.remove("slice")) {
                    Some(serde_json::Value::String(s)) => s,
                    Some(_) => return Err(RecordError::Type("slice".into(), "a string")),
                    None => return Err(RecordError::Missing("slice".into())),
                };
                if !manifest.eval.slices.iter().any(|s| s.name == slice) {
                    return Err(RecordError::Type("slice".into(), "one of the manifest's eval.slices"));
                }
                canonical::canonicalize(&manifest.task, v, manifest.admission.record_bytes_max)
                    .map(|record| EvalRecord { slice, record })
            });
        match r {
            Ok(e) => out.push(e),
            Err(error) => errors.push(LineError { line: i + 1, error }),
        }
    }
    if !errors.is_empty() {
        return Err(AdmitError::Invalid { path: "evaluation file".into(), count: errors.len(), errors });
    }
    if out.is_empty() {
        return Err(AdmitError::Empty { path: "evaluation file".into() });
    }
    Ok(out)
}

/// The evaluation file's records as JSON values, each with its `slice` field: what the trainer and
/// the attribution featurizer read.
pub fn eval_values(manifest: &Manifest, bytes: &[u8]) -> Result<Vec<serde_json::Value>, AdmitError> {
    Ok(parse_eval(manifest, bytes)?.iter().map(sealed::with_slice).collect())
}

#[cfg(test)]
mod tests;
