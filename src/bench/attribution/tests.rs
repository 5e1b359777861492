//! Tests of the attribution bench: data and scenario files refused with their line or key, and
//! the reduced DatanetBench run of `make test` meeting its targets end to end.

use super::{BenchReport, Dataset, Scenario, TextRow, generated_corpus, load_data, run_scenario, write_jsonl};
use serde_json::json;
use std::path::PathBuf;

fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

// The shipped data sets load (both layouts); a label outside the header's classes names its line.
#[test]
fn loads_csv_and_refuses_bad_label() {
    let Dataset::Tabular { features, classes, rows } = load_data(&data_path("breast_cancer.csv")).unwrap() else {
        panic!()
    };
    assert_eq!((features, classes, rows.len()), (30, 2, 569));
    let Dataset::Tabular { features, classes, rows } = load_data(&data_path("digits.csv.gz")).unwrap() else {
        panic!()
    };
    assert_eq!((features, classes, rows.len()), (64, 10, 1797));
    let Dataset::Tabular { features, classes, rows } = load_data(&data_path("wine.csv")).unwrap() else { panic!() };
    assert_eq!((features, classes, rows.len()), (13, 3, 178));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.csv");
    std::fs::write(&p, "3,2,a,b\n1,2,0\n1,2,1\n1,2,5\n").unwrap();
    let e = load_data(&p).unwrap_err().to_string();
    assert!(e.contains("line 4") && e.contains("label 5 is outside the 2 classes"), "{e}");
}

// Unknown keys and impossible sizes in a scenario file are refused, naming the key.
#[test]
fn scenario_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("s.toml");
    std::fs::write(&p, "scenario = \"S3\"\ncopies = [2]\nbogus = 1\n").unwrap();
    let e = Scenario::read(&p).unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
    std::fs::write(&p, "scenario = \"S3\"\ncopies = [2]\nrecords_per_contributor = 100000\n").unwrap();
    let s = Scenario::read(&p).unwrap();
    let data = load_data(&data_path("breast_cancer.csv")).unwrap();
    let e = s.validate(&p, &data).unwrap_err().to_string();
    assert!(e.contains("records_per_contributor"), "{e}");
}

// JSONL text: both record kinds load with their slice; a mixed file, a missing field and a
// non-string slice name their line; the generated corpus written as JSONL reads back equal.
#[test]
fn loads_jsonl_text() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t.jsonl");
    std::fs::write(&p, "{\"text\":\"a b\"}\n\n{\"text\":\"c\",\"slice\":\"critical\"}\n").unwrap();
    let Dataset::Text { instruct, rows } = load_data(&p).unwrap() else { panic!() };
    assert!(!instruct);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1], TextRow { record: json!({"text": "c"}), critical: true });
    for (body, want) in [
        ("{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n", "line 2: a instruct"),
        ("{\"prompt\":\"p\"}\n", "line 1: field `completion` missing"),
        ("{\"text\":\"a\",\"slice\":3}\n", "line 1: field `slice` must be a string"),
        ("[1]\n", "line 1: not a JSON object"),
    ] {
        std::fs::write(&p, body).unwrap();
        let e = load_data(&p).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let data = generated_corpus("instruct", 40, 10).unwrap();
    write_jsonl(&data, &p).unwrap();
    let (Dataset::Text { instruct: true, rows: a }, Dataset::Text { instruct: true, rows: b }) =
        (&data, &load_data(&p).unwrap())
    else {
        panic!()
    };
    assert_eq!(a, b);
    assert_eq!(a.iter().filter(|r| r.critical).count(), 10);
    assert!(generated_corpus("instruct", 1, 991).unwrap_err().to_string().contains("990 distinct"));
}

// Text S2 sizes are checked against the data, naming the key.
#[test]
fn text_scenario_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("s.toml");
    let data = generated_corpus("instruct", 300, 60).unwrap();
    for (extra, key) in [
        ("curated = 100\nredundant = 10\n", "key `curated`"),
        ("curated = 10\nredundant = 400\n", "key `redundant`"),
        ("curated = 10\nredundant = 10\ncritical_classes = [1]\n", "key `critical_classes`"),
        ("curated = 10\nredundant = 10\nmodel_hidden = 30\n", "key `model_hidden`"),
        ("curated = 10\nredundant = 10\ngenerator = \"poems\"\n", "key `generator`"),
    ] {
        std::fs::write(
            &p,
            format!("scenario = \"S2\"\ncritical_weight = 0.5\nbase_records = 50\neval_records = 20\n{extra}"),
        )
        .unwrap();
        let e = Scenario::read(&p).unwrap().validate(&p, &data).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
    std::fs::write(&p, "scenario = \"S3\"\ncopies = [2]\n").unwrap();
    let e = Scenario::read(&p).unwrap().validate(&p, &data).unwrap_err().to_string();
    assert!(e.contains("key `scenario`") && e.contains("text data runs S2"), "{e}");
}

// The reduced DatanetBench run of `make test`: S2 (tabular and text), S3, S5 (breast cancer and
// wine), S13 (backdating copier), S12 (6 epoch seeds, 1,500 volume records), S12 on text (4
// epoch seeds, 150 curated, 1,000 volume records) and S15 (eval copy refused, paraphrases of the
// public file paid no more per record than curation on the sealed split; 150 curated, 1,000
// volume) meet their targets end to end. S14 is below.
#[test]
fn reduced_bench_meets_targets() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testnet/bench");
    for (file, data) in [
        ("s3-duplication.toml", "breast_cancer.csv"),
        ("s5-sybil.toml", "breast_cancer.csv"),
        ("s5-sybil-wine.toml", "wine.csv"),
        ("s13-backdating.toml", "breast_cancer.csv"),
        ("s12-stability.toml", "digits.csv.gz"),
        ("s12-text-stability.toml", "generated"),
        ("s2-curated-vs-volume.toml", "digits.csv.gz"),
        ("s2-text-curated-vs-volume.toml", "generated"),
        ("s15-sealed-eval.toml", "generated"),
    ] {
        let mut s = Scenario::read(&dir.join(file)).unwrap();
        if s.scenario == "S2" {
            s.redundant = s.redundant.min(3000);
        }
        match file {
            "s12-stability.toml" => (s.redundant, s.epoch_seeds) = (1500, 6),
            "s12-text-stability.toml" => (s.curated, s.redundant, s.base_records, s.epoch_seeds) = (150, 1000, 1000, 4),
            "s15-sealed-eval.toml" => (s.curated, s.redundant, s.base_records, s.jobs) = (150, 1000, 1000, 32),
            _ => {}
        }
        let data = match data {
            "generated" => s.generate(s.generator.as_deref().unwrap()).unwrap(),
            file => load_data(&data_path(file)).unwrap(),
        };
        s.validate(&dir.join(file), &data).unwrap();
        // S3 and S5 variants admit the same distinct records, so their jobs hit the cache:
        // the file's T costs one epoch.
        let jobs = if s.scenario == "S2" { 64 } else { s.jobs };
        let r = rt.block_on(run_scenario(&data, &s, 1, jobs, false)).unwrap();
        assert!(r.pass, "{file}: {r:?}");
        if s.scenario == "S15" {
            // The copier's records were all refused, and the sealed split really was measured on.
            assert_eq!((r.extra["copier_records_admitted"], r.extra["copier_reward"]), (0.0, 0.0), "{r:?}");
            assert!(r.extra["sealed_split_records"] >= 2.0 * s.sealed_split as f64, "{r:?}");
        }
    }
}

/// S14 reduced: a flood of 300 junk contributions (the freeze of the full 20,000-id flood is
/// `flood::tests`), one seed, through admission and the trainer.
fn reduced_s14() -> BenchReport {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testnet/bench");
    let file = dir.join("s14-id-grinding-flood.toml");
    let mut s = Scenario::read(&file).unwrap();
    s.flood = 300;
    let data = load_data(&data_path("breast_cancer.csv")).unwrap();
    s.validate(&file, &data).unwrap();
    rt.block_on(run_scenario(&data, &s, 1, s.jobs, false)).unwrap()
}

// S14 reduced, the freeze half: every honest contribution is in the input set of the flooded
// epoch (each junk contribution the freeze let in is admitted and measured with them).
#[test]
fn reduced_s14_flood_keeps_honest_in_the_input_set() {
    let r = reduced_s14();
    assert_eq!(r.extra["honest_in_input_fraction"], 1.0, "{r:?}");
    assert_eq!(r.extra["junk_in_input"], 300.0, "{r:?}");
}

// S14 reduced, the reward target (honest reward kept >= 95 %). Fails today: the junk lands in
// the honest records' content units, and a unit's credit is split by record weight between
// its owners, so junk sharing a valuable unit takes part of it (measured: 0.56 kept, all of
// the junk's credit from units shared with honest records). With the full flood (≈ 2,040 junk
// contributions in the input set) the junk earns nothing but the honest units drown: 65 units
// in T = 256 jobs, most honest units under the noise floor, the rest capped (0.33 kept on
// average, 0 in one seed; docs/BENCHMARKS.md).
#[test]
#[ignore = "fails: junk sharing honest units takes their credit (issue 13, S14)"]
fn reduced_s14_flood_keeps_honest_reward() {
    let r = reduced_s14();
    assert!(r.pass, "{r:?}");
}
