//! Admission against the example manifests (`config/datanets/`) and the test data (`tests/data/`):
//! contamination (records that copy or nearly copy an evaluation record) is refused.

use super::*;
use crate::manifest::ManifestFile;
use serde_json::{Value, json};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A store holding the example manifest `name` (founded by a test key) and its public evaluation
/// file; with `eval`, that JSONL replaces the example's evaluation file.
async fn datanet(dir: &Path, name: &str, eval: Option<&str>) -> (Store, DatanetId, Manifest) {
    let examples = root().join("config/datanets");
    let (file, base) = match eval {
        None => (examples.join(name), examples),
        Some(jsonl) => {
            let text = std::fs::read_to_string(examples.join(name)).unwrap();
            let public = text.lines().find(|l| l.starts_with("public = ")).unwrap();
            // Without the sealed file (it stays next to the example).
            let text: String = text.lines().filter(|l| !l.starts_with("secret = ")).map(|l| format!("{l}\n")).collect();
            std::fs::write(dir.join("eval.jsonl"), jsonl).unwrap();
            std::fs::write(dir.join("m.toml"), text.replace(public, "public = \"eval.jsonl\"")).unwrap();
            (dir.join("m.toml"), dir.to_path_buf())
        }
    };
    let founder = Identity::from_seed([14; 32]);
    let (m, blobs) =
        ManifestFile::read(&file).unwrap().into_manifest(&base, founder.public_key(), &|_| Ok(())).unwrap();
    let store = Store::open(&dir.join("peer")).await.unwrap();
    store.put_blob(blobs.public).await.unwrap();
    let d = store.put_manifest(&Signed::sign(m.clone(), &founder.signing_key())).await.unwrap();
    (store, d, m)
}

fn write_jsonl(dir: &Path, name: &str, values: &[Value]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, values.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
    p
}

/// The example evaluation file's records without their `slice` field, as a contributor would copy them.
fn eval_copies(file: &str) -> Vec<Value> {
    std::fs::read_to_string(root().join("config/datanets").join(file))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("slice");
            v
        })
        .collect()
}

async fn contribute(
    store: &Store,
    d: &DatanetId,
    m: &Manifest,
    path: &Path,
    skip_invalid: bool,
) -> Result<LocalAdmission, AdmitError> {
    let parsed = parse_input(m, path, skip_invalid, None)?;
    admit_input(store, &Identity::from_seed([15; 32]), d, parsed, skip_invalid).await
}

fn unrelated_instruct() -> Vec<Value> {
    vec![
        json!({"prompt": "What color is cherry?", "completion": "red"}),
        json!({"prompt": "Negate 12.", "completion": "-12"}),
        json!({"prompt": "Name a planet with rings.", "completion": "Saturn"}),
    ]
}

// The public evaluation records submitted verbatim (text and tabular) are refused, each named by its line and evaluation record, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn contamination_verbatim_eval_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "instruct.toml", None).await;
    let mut values = unrelated_instruct();
    values.extend(eval_copies("instruct.eval.jsonl"));
    let file = write_jsonl(dir.path(), "copy.jsonl", &values);
    let err = contribute(&store, &d, &m, &file, false).await.unwrap_err();
    let AdmitError::Contaminated { count, errors, .. } = &err else { panic!("{err}") };
    assert_eq!(*count, 14);
    assert_eq!(errors[0].to_string(), "line 4: duplicates evaluation record 1 (contamination)");
    assert!(err.to_string().contains("nothing was stored (use --skip-invalid"), "{err}");
    assert!(store.contributions(&d).unwrap().is_empty());
    // The same check guards `admit_local` (records counted from 1).
    let recs = parse_input(&m, &file, false, None).unwrap().records;
    let err = admit_local(&store, &Identity::from_seed([16; 32]), &d, recs).await.unwrap_err();
    assert!(err.to_string().contains("line 5: duplicates evaluation record 2 (contamination)"), "{err}");
    assert!(store.contributions(&d).unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "breast_cancer.toml", None).await;
    let file = write_jsonl(dir.path(), "copy.jsonl", &eval_copies("breast_cancer.eval.jsonl"));
    let err = contribute(&store, &d, &m, &file, false).await.unwrap_err();
    assert!(matches!(err, AdmitError::Contaminated { count: 114, .. }), "{err}");
    assert!(store.contributions(&d).unwrap().is_empty());
}

// Near copies are refused: evaluation text with case and spacing changed, a long evaluation text with a few words changed (similarity above the threshold), tabular features perturbed below the quantization.
#[tokio::test(flavor = "multi_thread")]
async fn contamination_near_copies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "instruct.toml", None).await;
    let near = [json!({"prompt": "WHAT  COLOR IS APPLE?", "completion": "Red"})];
    let err = contribute(&store, &d, &m, &write_jsonl(dir.path(), "n.jsonl", &near), false).await.unwrap_err();
    assert!(err.to_string().contains("line 1: nearly duplicates evaluation record 1 (similarity 1.00)"), "{err}");

    let long = "Explain how a committee of peers agrees on the value of each contribution to a shared \
                dataset: every member trains the same short adapter on the same coalition, reveals its \
                utility after committing to it, and the leader proposes the median of the revealed numbers";
    let eval = format!(
        "{}\n{}\n",
        json!({"prompt": "Summarize the protocol.", "completion": long, "slice": "critical"}),
        json!({"prompt": "What color is sky?", "completion": "blue", "slice": "common"})
    );
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "instruct.toml", Some(&eval)).await;
    let edited = long.replace("short adapter", "small adapter").replace("the leader", "a leader");
    let rec = |c: &str| json!({"prompt": "Summarize the protocol.", "completion": c});
    let text = |c: &str| neardup::record_text(&rec(c));
    let s = neardup::similarity_ppm(&neardup::minhash(&text(long)), &neardup::minhash(&text(&edited)));
    assert!(s >= m.admission.near_duplicate_threshold_ppm && s < 1_000_000, "similarity {s}");
    let values = [json!({"prompt": "Negate 9.", "completion": "-9"}), rec(&edited)];
    let err = contribute(&store, &d, &m, &write_jsonl(dir.path(), "n.jsonl", &values), false).await.unwrap_err();
    let AdmitError::Contaminated { count: 1, errors, .. } = &err else { panic!("{err}") };
    assert!(errors[0].to_string().starts_with("line 2: nearly duplicates evaluation record 1"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "breast_cancer.toml", None).await;
    let mut v = eval_copies("breast_cancer.eval.jsonl").swap_remove(2);
    for x in v["features"].as_array_mut().unwrap() {
        *x = json!(x.as_f64().unwrap() * (1.0 + 2e-4));
    }
    let err = contribute(&store, &d, &m, &write_jsonl(dir.path(), "n.jsonl", &[v]), false).await.unwrap_err();
    assert!(err.to_string().contains("line 1: nearly duplicates evaluation record 3"), "{err}");
    assert!(store.contributions(&d).unwrap().is_empty());
}

// Unrelated records are admitted: instruct records near the evaluation records' topics, and the breast cancer training rows (none of the evaluation rows).
#[tokio::test(flavor = "multi_thread")]
async fn contamination_unrelated_records_are_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "instruct.toml", None).await;
    let file = write_jsonl(dir.path(), "ok.jsonl", &unrelated_instruct());
    let local = contribute(&store, &d, &m, &file, false).await.unwrap();
    assert_eq!((local.ack.meta.records, local.contaminated.len()), (3, 0));

    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "breast_cancer.toml", None).await;
    let train = root().join("tests/data/breast_cancer_train.csv");
    let local = contribute(&store, &d, &m, &train, false).await.unwrap();
    assert_eq!((local.ack.meta.records, local.contaminated.len()), (455, 0));
}

// With --skip-invalid the full data set (training and evaluation rows) is admitted without exactly the 114 evaluation rows, each reported with its line.
#[tokio::test(flavor = "multi_thread")]
async fn contamination_skip_invalid_skips_exactly_the_contaminated() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "breast_cancer.toml", None).await;
    let all = root().join("tests/data/breast_cancer.csv");
    let err = contribute(&store, &d, &m, &all, false).await.unwrap_err();
    assert!(matches!(err, AdmitError::Contaminated { count: 114, .. }), "{err}");
    let local = contribute(&store, &d, &m, &all, true).await.unwrap();
    assert_eq!((local.ack.meta.records, local.contaminated.len(), local.skipped.len()), (455, 114, 0));
    // Data row i (line i + 2, after the header) is evaluation record i / 5 + 1 when i is a multiple of 5.
    let lines: Vec<usize> = local.contaminated.iter().map(|e| e.line).collect();
    assert_eq!(lines, (0..569).step_by(5).map(|i| i + 2).collect::<Vec<_>>());
    assert_eq!(local.contaminated[1].to_string(), "line 7: duplicates evaluation record 2 (contamination)");
    // The admitted records are exactly the training rows: the same file's records are all duplicates.
    let train = root().join("tests/data/breast_cancer_train.csv");
    let again = contribute(&store, &d, &m, &train, false).await.unwrap();
    assert_eq!((again.ack.meta.duplicates, again.ack.meta.new_records), (455, 0));
    // A file of nothing but contamination is refused even with --skip-invalid.
    let file = write_jsonl(dir.path(), "copy.jsonl", &eval_copies("breast_cancer.eval.jsonl"));
    assert!(matches!(contribute(&store, &d, &m, &file, true).await, Err(AdmitError::Contaminated { .. })));
}

// A replicated contribution holding one contaminated record is refused and leaves no contribution stored.
#[tokio::test(flavor = "multi_thread")]
async fn contamination_replicated_contribution_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, d, m) = datanet(dir.path(), "instruct.toml", None).await;
    let mut values = unrelated_instruct();
    values.push(eval_copies("instruct.eval.jsonl").swap_remove(8));
    let records: Vec<CanonicalRecord> = values
        .into_iter()
        .map(|v| canonical::canonicalize(&m.task, v, m.admission.record_bytes_max).unwrap())
        .collect();
    // What a dishonest origin would send: a validly signed record over chunks this peer fetched.
    let packed = pack(&records);
    for c in &packed.chunks {
        store.put_blob(c.clone()).await.unwrap();
    }
    store.put_blob(packed.hash_seq.clone()).await.unwrap();
    let origin = Identity::from_seed([17; 32]);
    let body = ContributionRecord {
        datanet: d,
        contributor: origin.public_key(),
        created_ms: 1,
        root: packed.root,
        records_root: packed.records_root,
        record_count: records.len() as u32,
        byte_count: packed.byte_count,
        chunk_count: packed.chunks.len() as u32,
    };
    let signed = Signed::sign(body, &origin.signing_key());
    let err = admit_replicated(&store, &signed, "test").await.unwrap_err();
    assert!(err.to_string().contains("line 4: duplicates evaluation record 9 (contamination)"), "{err}");
    assert!(store.contribution_meta(&signed.body.id()).unwrap().is_none());
    assert!(store.contributions(&d).unwrap().is_empty());
}

// Evaluation records added later (a revealed sealed split) join the index under their own name; the public ones stay.
#[test]
fn contamination_index_extends() {
    let examples = root().join("config/datanets");
    let (m, blobs) = ManifestFile::read(&examples.join("instruct.toml"))
        .unwrap()
        .into_manifest(&examples, Identity::from_seed([14; 32]).public_key(), &|_| Ok(()))
        .unwrap();
    let mut ix = ContaminationIndex::new(&m, &parse_eval(&m, &blobs.public).unwrap());
    let canon = |v: Value| canonical::canonicalize(&m.task, v, 8192).unwrap();
    let sealed = canon(json!({"prompt": "Negate 41.", "completion": "-41"}));
    assert_eq!(ix.check(&sealed), None);
    ix.extend("sealed evaluation record", [&sealed]);
    assert_eq!(ix.len(), 15);
    let hit = ix.check(&sealed).unwrap();
    assert_eq!(hit.error().to_string(), "duplicates sealed evaluation record 1 (contamination)");
    assert_eq!(
        ix.check(&canon(json!({"prompt": "Negate 2.", "completion": "-2"}))).unwrap().eval,
        "evaluation record 9"
    );
}

/// The example instruct manifest sealed under `key`, with its pool.
fn sealed_instruct(key: u8) -> (Manifest, crate::sealed::SealedPool) {
    let examples = root().join("config/datanets");
    let (mut m, blobs) = ManifestFile::read(&examples.join("instruct.toml"))
        .unwrap()
        .into_manifest(&examples, Identity::from_seed([15; 32]).public_key(), &|_| Ok(()))
        .unwrap();
    let pool = sealed::seal_pool(&m, blobs.secret.as_deref().unwrap(), [key; 32]).unwrap();
    m.eval.sealed = pool.commitment();
    (m, pool)
}

// The example sealed file becomes one part per slice in the manifest's slice order; the pool checks against its own commitment and not against another key's or a tampered copy.
#[test]
fn sealed_pool_commits_per_slice_and_checks() {
    let (m, pool) = sealed_instruct(1);
    let parts: Vec<(&str, u32)> = m.eval.sealed.iter().map(|p| (p.slice.as_str(), p.count)).collect();
    assert_eq!(parts, vec![("common", 48), ("critical", 200)]);
    sealed::check_pool(&m, &pool).unwrap();
    let (_, other) = sealed_instruct(2);
    assert!(sealed::check_pool(&m, &other).unwrap_err().contains("does not match"));
    let mut tampered = pool.clone();
    tampered.parts[1].records[0] = br#"{"completion":"-1","prompt":"Negate 1."}"#.to_vec();
    assert!(sealed::check_pool(&m, &tampered).unwrap_err().contains("does not match"));
    let mut bad = pool.clone();
    bad.parts[0].records[0] = b"{\"prompt\": \"x\"}".to_vec();
    assert!(sealed::check_pool(&m, &bad).unwrap_err().contains("record 1"));
    let mut plain = m.clone();
    plain.eval.sealed.clear();
    assert!(sealed::check_pool(&plain, &pool).unwrap_err().contains("no sealed"));
    // A sealed file with a record of an undeclared slice is refused with its line.
    let err =
        sealed::seal_pool(&m, b"{\"prompt\":\"a\",\"completion\":\"b\",\"slice\":\"nope\"}\n", [0; 32]).unwrap_err();
    assert!(err.to_string().contains("sealed evaluation file") && err.to_string().contains("line 1"), "{err}");
}

// An epoch measures on its sealed split, and on public records only for slices the split has nothing for; the opened records come back canonical with their slice.
#[test]
fn measured_eval_is_the_split_plus_unsealed_slices() {
    let (m, pool) = sealed_instruct(3);
    let examples = root().join("config/datanets");
    let public = parse_eval(&m, &std::fs::read(examples.join("instruct.eval.jsonl")).unwrap()).unwrap();
    let before = crate::sealed::fresh(&m.eval.sealed);
    let split = crate::sealed::select(&[5; 32], &m.eval.sealed, &before, 8);
    let reveal = pool.reveal(&[], &before, &split);
    let opened = sealed::opened_records(&m, &reveal).unwrap();
    assert_eq!(opened.len(), 16);
    let eval = sealed::measured_eval(&public, &opened);
    assert_eq!(eval.len(), 16, "both slices sealed: no public record measured");
    // Only the critical part left: common is measured on its public records.
    let critical: Vec<EvalRecord> = opened.iter().filter(|e| e.slice == "critical").cloned().collect();
    let eval = sealed::measured_eval(&public, &critical);
    let slices = |s: &str| eval.iter().filter(|v| v["slice"] == s).count();
    assert_eq!((slices("critical"), slices("common")), (8, public.iter().filter(|e| e.slice == "common").count()));
    // A reveal whose record is not canonical for the task is refused.
    let mut bad = reveal.clone();
    bad.parts[0].opened[0].record = b"{\"prompt\":1}".to_vec();
    assert!(sealed::opened_records(&m, &bad).is_err());
}
