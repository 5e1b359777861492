//! End-to-end tests of the foundation commands through the real `datanet` binary: identity,
//! manifests, admission, listing, export, bad input that must store nothing, corruption, crashes.

use datanet::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_datanet");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dn(datadir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--datadir").arg(datadir).args(args).env("RUST_LOG", "error").output().expect("run datanet")
}

fn ok(datadir: &Path, args: &[&str]) -> String {
    let o = dn(datadir, args);
    assert!(o.status.success(), "datanet {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(datadir: &Path, args: &[&str], needle: &str) {
    let o = dn(datadir, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "datanet {args:?} should fail");
    assert!(err.contains(needle), "datanet {args:?}: expected `{needle}` in: {err}");
}

/// A datadir with an identity and the breast-cancer Datanet; returns (tempdir, datadir).
fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("peer");
    ok(&dir, &["init"]);
    let m = root().join("config/datanets/breast_cancer.toml");
    ok(&dir, &["datanet", "create", "--from", m.to_str().unwrap()]);
    (tmp, dir)
}

fn digest(dir: &Path) -> blake3::Hash {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let s = Store::open(dir).await.unwrap();
        let d = s.content_digest().await.unwrap();
        s.close().await.unwrap();
        d
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

fn row(i: usize, label: u32) -> String {
    let f: Vec<String> = (0..30).map(|j| format!("{}", (i * 31 + j) as f64 * 0.37 + 1.0)).collect();
    format!("{},{label}", f.join(","))
}

// A CSV contribution is acknowledged, listed with its counts, and exported byte-identical to its
// canonical form; a second copy of it counts entirely as duplicates.
#[test]
fn contribute_list_export_and_duplicates() {
    let (tmp, dir) = setup();
    let csv = root().join("tests/data/breast_cancer_train.csv");
    let out = ok(&dir, &["contribute", "breast-cancer", csv.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["records"], 455);
    assert_eq!(v["new"], 455);
    let id = v["acknowledged"].as_str().unwrap().to_string();
    // The same rows again under another file name: all duplicates, credited to the first.
    let copy = tmp.path().join("copy.csv");
    std::fs::copy(&csv, &copy).unwrap();
    let second = ok(&dir, &["contribute", "breast-cancer", copy.to_str().unwrap(), "--json"]);
    let v2: serde_json::Value = serde_json::from_str(second.trim()).unwrap();
    // Same records, same contributor: a different contribution (new timestamp) of pure duplicates.
    assert_eq!(v2["duplicates"], 455);
    assert_eq!(v2["new"], 0);
    let list = ok(&dir, &["contributions", "breast-cancer", "--json"]);
    let l: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 2);
    let out_path = tmp.path().join("export.jsonl");
    ok(&dir, &["export", &id, "--out", out_path.to_str().unwrap()]);
    let exported = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(exported.lines().count(), 455);
    assert!(exported.lines().next().unwrap().starts_with("{\"features\":[20.57,17.77,"));
}

// Near-duplicates (tiny jitter) are admitted but counted in an earlier record's cluster.
#[test]
fn near_duplicates_are_clustered() {
    let (tmp, dir) = setup();
    let a: String = (0..50).map(|i| row(i, 0) + "\n").collect();
    ok(&dir, &["contribute", "breast-cancer", &write(tmp.path(), "a.csv", a.as_bytes())]);
    let b: String = (0..50)
        .map(|i| {
            let r = row(i, 0);
            let (f, l) = r.rsplit_once(',').unwrap();
            let jittered: Vec<String> =
                f.split(',').map(|x| format!("{}", x.parse::<f64>().unwrap() * 1.0001)).collect();
            format!("{},{l}\n", jittered.join(","))
        })
        .collect();
    let out = ok(&dir, &["contribute", "breast-cancer", &write(tmp.path(), "b.csv", b.as_bytes()), "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["new"], 50);
    assert!(v["near_duplicates"].as_u64().unwrap() >= 45, "{v}");
}

// Every kind of bad input gets a clear error, a non-zero exit, and leaves the store untouched.
#[test]
fn bad_input_stores_nothing() {
    let (tmp, dir) = setup();
    let good: String = (0..5).map(|i| row(i, 1) + "\n").collect();
    ok(&dir, &["contribute", "breast-cancer", &write(tmp.path(), "good.csv", good.as_bytes())]);
    let before = digest(&dir);
    let t = tmp.path();
    let cases: Vec<(String, &str)> = vec![
        (write(t, "empty.csv", b""), "no records"),
        (write(t, "utf8.jsonl", b"{\"features\": [1], \"label\": \"\xff\"}\n"), "line 1: not valid UTF-8"),
        (write(t, "notobj.jsonl", b"[1,2,3]\n"), "line 1: expected a JSON object"),
        (write(t, "missing.jsonl", b"{\"features\": []}\n"), "field `label` missing"),
        (
            write(
                t,
                "extra.jsonl",
                format!("{{\"features\": [{}], \"label\": 0, \"x\": 1}}\n", vec!["1"; 30].join(",")).as_bytes(),
            ),
            "unexpected field `x`",
        ),
        (write(t, "cols.csv", format!("{}\n1,2,3\n", row(1, 0)).as_bytes()), "line 2: expected 31 columns"),
        (write(t, "label.csv", format!("{}\n", row(1, 7)).as_bytes()), "label 7 outside the classes 0..2"),
        (write(t, "x.txt", b"hello"), "unsupported file type"),
    ];
    for (file, needle) in &cases {
        fails(&dir, &["contribute", "breast-cancer", file], needle);
    }
    fails(&dir, &["contribute", "no-such-datanet", &cases[0].0], "datanet `no-such-datanet` is not known here");
    assert_eq!(digest(&dir), before, "a refused contribution changed the store");
    // A datadir without identity.
    let empty = t.join("no-identity");
    fails(&empty, &["contribute", "breast-cancer", &cases[0].0], "datanet init");
}

// Records over the manifest's byte limit and contributions over its record limit are refused.
#[test]
fn limits_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("peer");
    ok(&dir, &["init"]);
    let m = std::fs::read_to_string(root().join("config/datanets/instruct.toml"))
        .unwrap()
        .replace("record_bytes_max = 8192", "record_bytes_max = 100")
        .replace("contribution_records_max = 200000", "contribution_records_max = 3")
        .replace("\"instruct.eval.jsonl\"", &format!("{:?}", root().join("config/datanets/instruct.eval.jsonl")))
        .replace("\"instruct.sealed.jsonl\"", &format!("{:?}", root().join("config/datanets/instruct.sealed.jsonl")));
    let mp = write(tmp.path(), "m.toml", m.as_bytes());
    ok(&dir, &["datanet", "create", "--from", &mp]);
    let before = digest(&dir);
    let long = format!("{{\"prompt\": \"{}\", \"completion\": \"x\"}}\n", "a".repeat(200));
    fails(
        &dir,
        &["contribute", "instruct-demo", &write(tmp.path(), "long.jsonl", long.as_bytes())],
        "over the limit of 100",
    );
    let many: String = (0..4).map(|i| format!("{{\"prompt\": \"p{i}\", \"completion\": \"c\"}}\n")).collect();
    fails(
        &dir,
        &["contribute", "instruct-demo", &write(tmp.path(), "many.jsonl", many.as_bytes())],
        "over the Datanet's limit of 3",
    );
    assert_eq!(digest(&dir), before);
    // --skip-invalid admits the valid records and names the skipped ones.
    let mixed = format!("{{\"prompt\": \"ok\", \"completion\": \"c\"}}\n{long}");
    let o = dn(
        &dir,
        &["contribute", "instruct-demo", &write(tmp.path(), "mixed.jsonl", mixed.as_bytes()), "--skip-invalid"],
    );
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"));
}

// Invalid manifests are refused with the offending key named.
#[test]
fn invalid_manifests_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("peer");
    ok(&dir, &["init"]);
    let base = std::fs::read_to_string(root().join("config/datanets/breast_cancer.toml")).unwrap().replace(
        "\"breast_cancer.eval.jsonl\"",
        &format!("{:?}", root().join("config/datanets/breast_cancer.eval.jsonl")),
    );
    let cases = [
        (base.replace("kind = \"tabular\"", "kind = \"audio\""), "task.kind"),
        (base.replace("members = [\"self\"]", "members = [\"self\"]\nquorum = 5"), "committee.quorum"),
        (base.replace("members = [\"self\"]", "members = []"), "committee.members"),
        (base.replace("seeds = []", "seeds = [\"/ip4/1.2.3/tcp/x\"]"), "seeds[0]"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let p = write(tmp.path(), &format!("m{i}.toml"), text.as_bytes());
        fails(&dir, &["datanet", "create", "--from", &p], key);
    }
}

// A chunk corrupted on disk is detected by its hash when read, reported, and not exported.
#[test]
fn corrupt_chunk_is_detected() {
    let (tmp, dir) = setup();
    let csv = root().join("tests/data/breast_cancer_train.csv");
    let out = ok(&dir, &["contribute", "breast-cancer", csv.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = v["acknowledged"].as_str().unwrap().to_string();
    let data_dir = dir.join("blobs/data");
    let mut files: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "expected a chunk stored as a file");
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        bytes[100] ^= 0x20;
        std::fs::write(f, bytes).unwrap();
    }
    let out_path = tmp.path().join("x.jsonl");
    fails(&dir, &["export", &id, "--out", out_path.to_str().unwrap()], "corrupt");
}

// kill -9 at random points of a large contribution leaves it wholly present or wholly absent,
// and never harms contributions acknowledged before.
#[test]
fn crash_during_contribution_is_all_or_nothing() {
    let (tmp, dir) = setup();
    let csv = root().join("tests/data/breast_cancer_train.csv");
    let first = ok(&dir, &["contribute", "breast-cancer", csv.to_str().unwrap(), "--json"]);
    let first: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
    let first_id = first["acknowledged"].as_str().unwrap().to_string();
    let big: String = (0..60_000).map(|i| row(i + 1000, (i % 2) as u32) + "\n").collect();
    let big_path = write(tmp.path(), "big.csv", big.as_bytes());
    let mut rng = 0x9e37_79b9u64;
    for round in 0..4 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = 50 + (rng >> 33) % 1500;
        let mut child = Command::new(BIN)
            .arg("--datadir")
            .arg(&dir)
            .args(["contribute", "breast-cancer", &big_path])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let list: serde_json::Value =
            serde_json::from_str(&ok(&dir, &["contributions", "breast-cancer", "--json"])).unwrap();
        for c in list.as_array().unwrap() {
            let id = c["id"].as_str().unwrap();
            let out = tmp.path().join(format!("r{round}.jsonl"));
            ok(&dir, &["export", id, "--out", out.to_str().unwrap()]);
            let n = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
            assert_eq!(n, c["records"].as_u64().unwrap(), "round {round} delay {delay}ms: contribution {id} partial");
        }
        assert!(
            list.as_array().unwrap().iter().any(|c| c["id"] == first_id.as_str()),
            "acknowledged contribution lost"
        );
    }
    // Index entries a killed run wrote before its marker are dead: if no run got acknowledged,
    // the completed contribution counts every record new.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["contributions", "breast-cancer", "--json"])).unwrap();
    let done_before = list.as_array().unwrap().iter().any(|c| c["records"] == 60_000);
    let v: serde_json::Value =
        serde_json::from_str(ok(&dir, &["contribute", "breast-cancer", &big_path, "--json"]).trim()).unwrap();
    let (new, dups) = (v["new"].as_u64().unwrap(), v["duplicates"].as_u64().unwrap());
    assert_eq!(new + dups, 60_000);
    if !done_before {
        assert_eq!(new, 60_000, "records of killed runs counted as duplicates");
    }
}

// The sealed pool through the CLI: `create` commits to it and keeps it off the blob store, `sealed export` writes a private file, a member's `sealed import` checks it against the manifest (a tampered or foreign file is refused and nothing stored), `sealed status` reports what is left.
#[test]
fn sealed_pool_export_import_status() {
    let tmp = tempfile::tempdir().unwrap();
    let founder = tmp.path().join("founder");
    let member = tmp.path().join("member");
    ok(&founder, &["init"]);
    ok(&member, &["init"]);
    let m = root().join("config/datanets/instruct.toml");
    let out = ok(&founder, &["datanet", "create", "--from", m.to_str().unwrap()]);
    assert!(out.contains("248 records committed"), "{out}");
    // The founder's blob store holds the public file only: the sealed records are not a blob.
    let blobs = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = Store::open(&founder).await.unwrap();
            let n = s.blobs().list().hashes().await.unwrap().len();
            s.close().await.unwrap();
            n
        })
    };
    assert_eq!(blobs, 1, "only the public evaluation file is a blob");
    let status = ok(&founder, &["datanet", "sealed", "status", "instruct-demo"]);
    assert!(status.contains("common") && status.contains("48 of 48") && status.contains("epochs left 6"), "{status}");
    let pool = tmp.path().join("pool.bin");
    ok(&founder, &["datanet", "sealed", "export", "instruct-demo", "--out", pool.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&pool).unwrap().permissions().mode() & 0o777, 0o600);
    let manifest = tmp.path().join("manifest.bin");
    ok(&founder, &["datanet", "export", "instruct-demo", "--out", manifest.to_str().unwrap()]);
    ok(&member, &["datanet", "import", manifest.to_str().unwrap()]);
    let before = digest(&member);
    let mut tampered = std::fs::read(&pool).unwrap();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let bad = write(tmp.path(), "bad.bin", &tampered);
    let o = dn(&member, &["datanet", "sealed", "import", "instruct-demo", &bad]);
    assert!(!o.status.success(), "a tampered pool must be refused");
    // A pool sealed for another Datanet (another founder's key) does not match this manifest.
    let other = tmp.path().join("other");
    ok(&other, &["init"]);
    ok(&other, &["datanet", "create", "--from", m.to_str().unwrap()]);
    let other_pool = tmp.path().join("other.bin");
    ok(&other, &["datanet", "sealed", "export", "instruct-demo", "--out", other_pool.to_str().unwrap()]);
    fails(&member, &["datanet", "sealed", "import", "instruct-demo", other_pool.to_str().unwrap()], "does not match");
    assert_eq!(digest(&member), before, "refused pools store nothing");
    let s = ok(&member, &["datanet", "sealed", "status", "instruct-demo"]);
    assert!(s.contains("held here   no"), "{s}");
    ok(&member, &["datanet", "sealed", "import", "instruct-demo", pool.to_str().unwrap()]);
    let s = ok(&member, &["datanet", "sealed", "status", "instruct-demo"]);
    assert!(s.contains("held here   yes"), "{s}");
    // The founder extends the pool (a signed extension, drawn from epoch 2 on); a member cannot.
    let more: String = (0..16).map(|i| format!("{{\"prompt\": \"What is the colour of sky number {i}?\", \"completion\": \"blue\", \"slice\": \"common\"}}\n")).collect();
    let more = write(tmp.path(), "more.jsonl", more.as_bytes());
    fails(&member, &["datanet", "sealed", "extend", "instruct-demo", &more], "only the founder");
    fails(&founder, &["datanet", "sealed", "extend", "instruct-demo", &more, "--from-epoch", "1"], "give 2 or later");
    let out = ok(&founder, &["datanet", "sealed", "extend", "instruct-demo", &more]);
    assert!(out.contains("by 16 records, drawn from epoch 2"), "{out}");
    let s = ok(&founder, &["datanet", "sealed", "status", "instruct-demo"]);
    assert!(s.contains("16 of 16") && s.contains("epochs left 8"), "{s}");
    // The grown pool imports at the member (checked against the manifest plus the signed extension).
    ok(&founder, &["datanet", "sealed", "export", "instruct-demo", "--out", pool.to_str().unwrap()]);
    ok(&member, &["datanet", "sealed", "import", "instruct-demo", pool.to_str().unwrap()]);
    let s = ok(&member, &["datanet", "sealed", "status", "instruct-demo"]);
    assert!(s.contains("epochs left 8"), "{s}");
}
