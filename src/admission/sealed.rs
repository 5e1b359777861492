//! The sealed evaluation pool's records under the Datanet's rules: sealing a file into a pool,
//! reading revealed records back, and the evaluation set an epoch's utilities are measured on.
//! The commitment, split and reveal rules are [`crate::sealed`]'s.

use super::{AdmitError, EvalRecord, LineError, parse_eval};
use crate::manifest::Manifest;
use crate::records::{CanonicalRecord, RecordError, canonical};
use crate::sealed::{self, PoolPart, Reveal, SealedPool};
use serde_json::Value;

/// Seals an evaluation file (the public file's format: the task's fields plus `"slice"`) into a
/// pool under `key`: one part per slice holding records, in the manifest's slice order, records
/// in file order. The manifest's `eval.sealed` is then `pool.commitment()`.
pub fn seal_pool(manifest: &Manifest, bytes: &[u8], key: [u8; 32]) -> Result<SealedPool, AdmitError> {
    Ok(SealedPool { key, parts: pool_parts(manifest, bytes)?, extensions: Vec::new() })
}

/// A sealed evaluation file's records as parts, one per slice holding records (manifest order).
fn pool_parts(manifest: &Manifest, bytes: &[u8]) -> Result<Vec<PoolPart>, AdmitError> {
    let records = parse_eval(manifest, bytes).map_err(|e| rename(e, "sealed evaluation file"))?;
    let mut parts = Vec::new();
    for s in &manifest.eval.slices {
        let recs: Vec<Vec<u8>> = records.iter().filter(|r| r.slice == s.name).map(|r| r.record.bytes.clone()).collect();
        if recs.is_empty() {
            continue;
        }
        if recs.len() > sealed::PART_RECORDS_MAX as usize {
            return Err(AdmitError::TooManyRecords { records: recs.len(), max: sealed::PART_RECORDS_MAX });
        }
        parts.push(PoolPart { slice: s.name.clone(), records: recs });
    }
    Ok(parts)
}

/// Extends `pool` (the founder's) with the records of another sealed file, drawn from epoch
/// `from_epoch` on: the new parts join the pool under its key and the founder signs the
/// extension that commits to them. `from_epoch` must come after every earlier extension's.
pub fn extend_pool(
    manifest: &Manifest,
    pool: &mut SealedPool,
    bytes: &[u8],
    from_epoch: u64,
    founder: &ed25519_dalek::SigningKey,
) -> Result<sealed::SignedExtension, String> {
    if let Some(last) = pool.extensions.last() {
        if from_epoch <= last.body.from_epoch {
            return Err(format!(
                "the last extension is drawn from epoch {}; a new one must start later",
                last.body.from_epoch
            ));
        }
    }
    let new = pool_parts(manifest, bytes).map_err(|e| e.to_string())?;
    let at = pool.parts.len();
    pool.parts.extend(new);
    let parts = pool.commitment()[at..].to_vec();
    let ext =
        crate::codec::Signed::sign(sealed::SealedExtension { datanet: manifest.id(), from_epoch, parts }, founder);
    if let Err(e) = manifest.check_extension(&ext) {
        pool.parts.truncate(at);
        return Err(e);
    }
    pool.extensions.push(ext.clone());
    Ok(ext)
}

/// Seals `secret` (the manifest file's `eval.secret`, when it has one) under a fresh random key
/// and writes the commitment into the manifest before it is signed. The pool returned goes to
/// the committee's stores only ([`crate::store::Store::put_sealed_pool`]).
pub fn seal_manifest(manifest: &mut Manifest, secret: Option<&[u8]>) -> Result<Option<SealedPool>, AdmitError> {
    let Some(bytes) = secret else { return Ok(None) };
    let pool = seal_pool(manifest, bytes, rand::random())?;
    manifest.eval.sealed = pool.commitment();
    Ok(Some(pool))
}

fn rename(e: AdmitError, path: &str) -> AdmitError {
    match e {
        AdmitError::Invalid { count, errors, .. } => AdmitError::Invalid { path: path.into(), count, errors },
        AdmitError::Empty { .. } => AdmitError::Empty { path: path.into() },
        other => other,
    }
}

/// Checks a pool file a member received against the manifest's commitment, record by record
/// canonical for the task.
pub fn check_pool(manifest: &Manifest, pool: &SealedPool) -> Result<(), String> {
    if manifest.eval.sealed.is_empty() {
        return Err(format!("datanet {} has no sealed evaluation pool", manifest.name));
    }
    for (i, e) in pool.extensions.iter().enumerate() {
        manifest.check_extension(e).map_err(|e| format!("extension {}: {e}", i + 1))?;
    }
    if pool.extensions.windows(2).any(|w| w[0].body.from_epoch >= w[1].body.from_epoch) {
        return Err("the pool's extensions are not in order of their first epoch".into());
    }
    for part in &pool.parts {
        for (i, r) in part.records.iter().enumerate() {
            record_of(manifest, &part.slice, r).map_err(|e| format!("slice `{}` record {}: {e}", part.slice, i + 1))?;
        }
    }
    if !pool.matches(&sealed::parts_with(&manifest.eval.sealed, &pool.extensions)) {
        return Err(format!(
            "this pool does not match datanet {}'s sealed commitment (another pool, or another Datanet's)",
            manifest.name
        ));
    }
    Ok(())
}

/// One revealed or pooled record, checked canonical for the task.
fn record_of(manifest: &Manifest, slice: &str, bytes: &[u8]) -> Result<EvalRecord, RecordError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| RecordError::Json(e.to_string()))?;
    let record = canonical::canonicalize(&manifest.task, v, manifest.admission.record_bytes_max)?;
    if record.bytes != bytes {
        return Err(RecordError::Json("not in canonical form".into()));
    }
    Ok(EvalRecord { slice: slice.to_string(), record })
}

/// The records a reveal opens, as evaluation records of their slices, in part order.
pub fn opened_records(manifest: &Manifest, reveal: &Reveal) -> Result<Vec<EvalRecord>, AdmitError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (part, r) in sealed::parts_with(&manifest.eval.sealed, &reveal.extensions).iter().zip(&reveal.parts) {
        for o in &r.opened {
            match record_of(manifest, &part.slice, &o.record) {
                Ok(e) => out.push(e),
                Err(error) => errors.push(LineError { line: o.index as usize + 1, error }),
            }
        }
    }
    if !errors.is_empty() {
        return Err(AdmitError::Invalid { path: "revealed sealed records".into(), count: errors.len(), errors });
    }
    Ok(out)
}

/// The evaluation set an epoch's utilities are measured on, as JSON values with their `slice`:
/// the epoch's sealed split, and the public records of every slice the split has nothing for (no
/// sealed part, or its part used up). Without a sealed pool: the public file.
pub fn measured_eval(public: &[EvalRecord], opened: &[EvalRecord]) -> Vec<Value> {
    let sealed_slices: std::collections::BTreeSet<&str> = opened.iter().map(|e| e.slice.as_str()).collect();
    opened.iter().chain(public.iter().filter(|e| !sealed_slices.contains(e.slice.as_str()))).map(with_slice).collect()
}

/// An evaluation record as the trainer reads it: the record's fields plus `slice`.
pub fn with_slice(e: &EvalRecord) -> Value {
    let mut v = e.record.value.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("slice".into(), Value::String(e.slice.clone()));
    }
    v
}

/// Every sealed record the ledger's attestations of this Datanet revealed, in epoch order.
pub fn revealed_in_ledger(store: &crate::store::Store, manifest: &Manifest) -> Result<Vec<EvalRecord>, AdmitError> {
    if manifest.eval.sealed.is_empty() {
        return Ok(Vec::new());
    }
    let atts = crate::store::ledger::Ledger::open(store.db())
        .attestations(&manifest.id())
        .map_err(|e| AdmitError::Ledger(e.to_string()))?;
    let mut out = Vec::new();
    for a in atts {
        if let Some(r) = &a.sealed {
            out.extend(opened_records(manifest, r)?);
        }
    }
    Ok(out)
}

/// The canonical records of evaluation records (what the contamination index takes).
pub fn canonical_of(e: &[EvalRecord]) -> impl Iterator<Item = &CanonicalRecord> {
    e.iter().map(|e| &e.record)
}
