//! One base for everyone: [`provision_base`] is how every path — the daemon's epochs, `datanet
//! attribute`, `datanet train|eval` and DatanetBench — finds the folder of a manifest's base model,
//! so the committee values data on the same weights a trainer trains on.
//!
//! - **Generated** (`base_model.hash` all zero): built by [`init::generated_base`] (for the mlp,
//!   input standardization from the public evaluation records) and saved once under
//!   `models/generated-<family>-<preset>-<seed>-<features>x<classes>-<key>`, where `key` hashes
//!   everything that determines the weights (family, preset, seed, task shape and, for the mlp, the
//!   evaluation features the standardization reads). Written aside and renamed into place, so no
//!   reader ever sees half a base.
//! - **Imported** (`base_model.hash` set): `models/<hash>/`, re-hashed ([`folder_hash`]) before
//!   use and refused when it no longer hashes to the manifest's hash. The verified hash is cached in
//!   [`VERIFIED_FILE`] inside the folder, keyed by every file's name, size and modification time, so
//!   a later use costs a few `stat` calls.
//! - [`install_base`] is `datanet model import`: copy aside, re-hash the copy, rename only a copy that
//!   hashes like its source.

use super::model::folder_hash;
use super::{Family, Result, TrainError, init, io_err};
use crate::ids::BlobHash;
use crate::manifest::{Manifest, TaskKind};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The file in a model folder that caches its verified hash (not part of the folder hash).
pub const VERIFIED_FILE: &str = ".datanet-verified";

/// Files modified this recently are not cached: a same-size rewrite could keep the mtime.
const RACY: Duration = Duration::from_secs(2);

/// The base folder for `manifest`: `explicit` when given (the caller's `--base`, used as is), else
/// the imported base `datadir/models/<hash>/` after checking it still hashes to `base_model.hash`,
/// else the generated base (built from `eval_records` on first use, see the module docs).
pub fn provision_base(
    datadir: &Path,
    manifest: &Manifest,
    eval_records: &[Value],
    explicit: Option<&Path>,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let bm = &manifest.base_model;
    let models = datadir.join("models");
    if bm.hash != BlobHash::default() {
        let dir = models.join(bm.hash.to_hex());
        if !dir.join("config.json").is_file() {
            return Err(TrainError::BaseNotInstalled { hash: bm.hash });
        }
        let found = cached_folder_hash(&dir)?;
        if found != bm.hash {
            return Err(TrainError::BaseHashMismatch { path: dir, expected: bm.hash, found });
        }
        return Ok(dir);
    }
    let dir = models.join(generated_name(manifest, eval_records)?);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let base = init::generated_base(manifest, eval_records)?;
    std::fs::create_dir_all(&models).map_err(io_err(&models))?;
    let tmp = tmp_dir(&models, "generated");
    if let Err(e) = init::save_base(&base, &tmp, None) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    publish(&tmp, &dir)?;
    Ok(dir)
}

/// The folder name of a manifest's generated base: readable parts, then 16 hex digits of a hash of
/// everything that determines the weights.
fn generated_name(m: &Manifest, eval_records: &[Value]) -> Result<String> {
    let bm = &m.base_model;
    let family: Family = bm.family.parse().map_err(TrainError::Recipe)?;
    let (features, classes) = match m.task {
        TaskKind::Tabular { features, classes } => (features, classes),
        _ => (0, 0),
    };
    let mut h = blake3::Hasher::new_derive_key("datanet/generated-base/v1");
    for part in [family.name(), bm.preset.as_str()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&bm.seed.to_le_bytes());
    h.update(&features.to_le_bytes());
    h.update(&classes.to_le_bytes());
    if family == Family::Mlp {
        // The standardization input as `generated_base` reads it: each feature as f32.
        for r in eval_records {
            match r.get("features").and_then(Value::as_array) {
                Some(xs) => {
                    h.update(&(xs.len() as u64).to_le_bytes());
                    for x in xs {
                        h.update(&(x.as_f64().unwrap_or(0.0) as f32).to_le_bytes());
                    }
                }
                None => {
                    h.update(&u64::MAX.to_le_bytes());
                }
            }
        }
    }
    let preset: String =
        bm.preset.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    let key = h.finalize().to_hex();
    Ok(format!("generated-{}-{preset}-{}-{features}x{classes}-{}", family.name(), bm.seed, &key[..16]))
}

/// [`folder_hash`] of `dir`, cached in [`VERIFIED_FILE`] keyed by each file's (name, size, mtime):
/// a second call on an unchanged folder reads no model bytes.
pub fn cached_folder_hash(dir: &Path) -> Result<BlobHash> {
    let started = SystemTime::now();
    let before = stamps(dir)?;
    if let Some(h) = read_cache(dir, &before) {
        return Ok(h);
    }
    let hash = folder_hash(dir)?;
    // Cache only what did not change while it was hashed and is not racy-recent.
    let settled = before.iter().all(|s| s.mtime + RACY < started);
    if settled && stamps(dir).ok().as_ref() == Some(&before) {
        write_cache(dir, &before, &hash);
    }
    Ok(hash)
}

#[derive(PartialEq, Debug)]
struct Stamp {
    name: String,
    size: u64,
    mtime: SystemTime,
}

/// Every regular file of `dir` but the cache itself, in name order.
fn stamps(dir: &Path) -> Result<Vec<Stamp>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let Ok(name) = e.file_name().into_string() else { continue };
        if name.starts_with(VERIFIED_FILE) {
            continue;
        }
        let md = std::fs::metadata(e.path()).map_err(io_err(e.path()))?;
        if md.is_file() {
            out.push(Stamp { name, size: md.len(), mtime: md.modified().map_err(io_err(e.path()))? });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn render(stamps: &[Stamp]) -> String {
    stamps
        .iter()
        .map(|s| {
            let t = s.mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{} {}.{:09} {}\n", s.size, t.as_secs(), t.subsec_nanos(), s.name)
        })
        .collect()
}

fn read_cache(dir: &Path, stamps: &[Stamp]) -> Option<BlobHash> {
    let text = std::fs::read_to_string(dir.join(VERIFIED_FILE)).ok()?;
    let (head, rest) = text.split_once('\n')?;
    let hash = head.strip_prefix("v1 ")?.parse().ok()?;
    (rest == render(stamps)).then_some(hash)
}

fn write_cache(dir: &Path, stamps: &[Stamp], hash: &BlobHash) {
    let tmp = dir.join(format!("{VERIFIED_FILE}.tmp{}", std::process::id()));
    // Best effort: a read-only folder is simply re-hashed every time.
    if std::fs::write(&tmp, format!("v1 {hash}\n{}", render(stamps))).is_err()
        || std::fs::rename(&tmp, dir.join(VERIFIED_FILE)).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// `datanet model import`: installs the model folder `src` as `datadir/models/<hash>/`, `hash`
/// being its folder hash. Every regular file is copied into a temporary folder beside the
/// destination, the copy is re-hashed, and only a copy that hashes like its source is renamed into
/// place; on a mismatch nothing is left behind. An earlier install that no longer verifies is
/// replaced.
pub fn install_base(src: &Path, datadir: &Path) -> Result<(BlobHash, PathBuf)> {
    install_base_with(src, datadir, &|from, to| std::fs::copy(from, to).map(drop))
}

fn install_base_with(
    src: &Path,
    datadir: &Path,
    copy: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<(BlobHash, PathBuf)> {
    let expected = folder_hash(src)?;
    let models = datadir.join("models");
    let dest = models.join(expected.to_hex());
    if dest.is_dir() && cached_folder_hash(&dest).ok() == Some(expected) {
        return Ok((expected, dest));
    }
    std::fs::create_dir_all(&models).map_err(io_err(&models))?;
    let tmp = tmp_dir(&models, "import");
    let copied = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        for e in std::fs::read_dir(src).map_err(io_err(src))? {
            let p = e.map_err(io_err(src))?.path();
            let Some(name) = p.file_name() else { continue };
            if p.is_file() && !name.to_string_lossy().starts_with(VERIFIED_FILE) {
                copy(&p, &tmp.join(name)).map_err(io_err(&p))?;
            }
        }
        let found = folder_hash(&tmp)?;
        if found != expected {
            return Err(TrainError::ImportMismatch { src: src.to_path_buf(), expected, found });
        }
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
    }
    publish(&tmp, &dest)?;
    Ok((expected, dest))
}

/// A fresh temporary folder name under `models` (process id and a counter: unique across
/// processes and threads).
/// `datanet model init` without `--out`: saves `base` into a temporary folder beside
/// `datadir/models/`, hashes it and renames it to `models/<hash>/` (keeping an earlier identical
/// install).
pub fn install_new_base(base: &super::Base, datadir: &Path) -> Result<(BlobHash, PathBuf)> {
    let models = datadir.join("models");
    std::fs::create_dir_all(&models).map_err(io_err(&models))?;
    let tmp = tmp_dir(&models, "init");
    let saved = (|| -> Result<BlobHash> {
        init::save_base(base, &tmp, None)?;
        folder_hash(&tmp)
    })();
    let hash = match saved {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let dest = models.join(hash.to_hex());
    publish(&tmp, &dest)?;
    Ok((hash, dest))
}

fn tmp_dir(models: &Path, what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    models.join(format!(".tmp-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Renames the finished `tmp` to `dest`; when another writer got there first, keeps theirs.
fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    match std::fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            if dest.join("config.json").is_file() {
                Ok(())
            } else {
                Err(TrainError::Io { path: dest.into(), source: e })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::manifest::ManifestFile;
    use crate::trainer::{Base, init};

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// The breast-cancer manifest (mlp tiny, 30 features) and its public evaluation file's bytes.
    fn breast_cancer() -> (Manifest, Vec<u8>) {
        let dir = root().join("config/datanets");
        let founder = Identity::from_seed([9; 32]);
        let (m, blobs) = ManifestFile::read(&dir.join("breast_cancer.toml"))
            .unwrap()
            .into_manifest(&dir, founder.public_key(), &|_| Ok(()))
            .unwrap();
        (m, blobs.public)
    }

    /// A micro mlp base folder for the breast-cancer shape, written to `dir`.
    fn micro_base(dir: &Path) {
        let base = init::random_base(Family::Mlp, "micro", 30, 2, 4).unwrap();
        init::save_base(&base, dir, None).unwrap();
    }

    /// Sets every file's mtime an hour back, so the verified hash may be cached.
    fn age(dir: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        for e in std::fs::read_dir(dir).unwrap() {
            let f = std::fs::File::options().write(true).open(e.unwrap().path()).unwrap();
            f.set_modified(old).unwrap();
        }
    }

    // The daemon's plan, `datanet attribute`, `datanet train|eval` and the bench provision the same base (equal folder hashes), standardized on the evaluation set.
    #[tokio::test(flavor = "multi_thread")]
    async fn every_path_provisions_the_same_base() {
        let (m, public) = breast_cancer();
        // The daemon: `epoch::eval_values` (after fetching the file) then `epoch::base_dir`.
        let daemon_dir = tempfile::tempdir().unwrap();
        let daemon_eval = crate::admission::eval_values(&m, &public).unwrap();
        let daemon = crate::daemon::epoch::base_dir(daemon_dir.path(), &m, &daemon_eval).unwrap();
        // `datanet attribute` and `datanet train|eval`: the store's evaluation file, then provision_base.
        let cli_dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(cli_dir.path()).await.unwrap();
        assert_eq!(store.put_blob(public.clone()).await.unwrap(), m.eval.public_hash);
        let cli_eval = crate::measure::eval_values(&store, &m).await.unwrap();
        store.close().await.unwrap();
        let attribute = provision_base(cli_dir.path(), &m, &cli_eval, None).unwrap();
        let train_dir = tempfile::tempdir().unwrap();
        let train = provision_base(train_dir.path(), &m, &cli_eval, None).unwrap();
        // DatanetBench: evaluation values built from the CSV rows (every 5th row is the public file).
        let crate::bench::attribution::Dataset::Tabular { rows, .. } =
            crate::bench::attribution::load_data(&root().join("tests/data/breast_cancer.csv")).unwrap()
        else {
            panic!("tabular data")
        };
        let bench_eval: Vec<Value> = rows
            .iter()
            .step_by(5)
            .map(|(xs, l)| {
                let mut v = crate::bench::attribution::tabular_value(xs, *l);
                v["slice"] = "all".into();
                v
            })
            .collect();
        let bench = crate::bench::attribution::manifest_base_dir(&m, &bench_eval).unwrap();

        let hashes: Vec<BlobHash> = [&daemon, &attribute, &train, &bench].map(|d| folder_hash(d).unwrap()).to_vec();
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
        assert_eq!(daemon.file_name(), bench.file_name(), "the folder name is determined by the same inputs");
        // Standardized on the evaluation set, not identity: the 4th feature (area) has a mean near 650.
        let Base::Mlp(mlp) = Base::load(&daemon, tch::Device::Cpu).unwrap() else { panic!("mlp") };
        let mean: Vec<f32> = Vec::try_from(&mlp.mean).unwrap();
        assert!(mean[3] > 100.0, "{mean:?}");
        // Different evaluation features give a different folder.
        let other = provision_base(daemon_dir.path(), &m, &daemon_eval[..50], None).unwrap();
        assert_ne!(other, daemon);
    }

    // An installed base whose weights were modified after import is refused before use, naming both hashes; the verified hash of an unchanged folder is cached.
    #[test]
    fn modified_installed_base_is_refused() {
        let (mut m, _) = breast_cancer();
        let src = tempfile::tempdir().unwrap();
        micro_base(src.path());
        let datadir = tempfile::tempdir().unwrap();
        let (hash, dir) = install_base(src.path(), datadir.path()).unwrap();
        m.base_model.hash = hash;
        age(&dir);
        assert_eq!(provision_base(datadir.path(), &m, &[], None).unwrap(), dir);
        assert!(dir.join(VERIFIED_FILE).is_file(), "the verified hash is cached");
        assert_eq!(cached_folder_hash(&dir).unwrap(), hash);

        let w = dir.join("model.safetensors");
        let mut bytes = std::fs::read(&w).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&w, &bytes).unwrap();
        let err = provision_base(datadir.path(), &m, &[], None).unwrap_err();
        let found = folder_hash(&dir).unwrap();
        assert!(
            matches!(&err, TrainError::BaseHashMismatch { expected, found: f, .. } if *expected == hash && *f == found)
        );
        let msg = err.to_string();
        assert!(msg.contains(&hash.to_hex()) && msg.contains(&found.to_hex()), "{msg}");

        m.base_model.hash = BlobHash([7; 32]);
        assert!(matches!(provision_base(datadir.path(), &m, &[], None), Err(TrainError::BaseNotInstalled { .. })));
    }

    // Import re-hashes what it copied: a faithful copy is installed under its hash, a corrupted copy is refused and leaves nothing in models/.
    #[test]
    fn import_verifies_the_copy() {
        let src = tempfile::tempdir().unwrap();
        micro_base(src.path());
        let datadir = tempfile::tempdir().unwrap();
        let corrupt = |from: &Path, to: &Path| {
            std::fs::copy(from, to)?;
            if to.extension().is_some_and(|e| e == "safetensors") {
                let mut b = std::fs::read(to)?;
                b.push(0);
                std::fs::write(to, b)?;
            }
            Ok(())
        };
        let err = install_base_with(src.path(), datadir.path(), &corrupt).unwrap_err();
        let expected = folder_hash(src.path()).unwrap();
        assert!(matches!(&err, TrainError::ImportMismatch { expected: e, .. } if *e == expected), "{err}");
        assert!(err.to_string().contains(&expected.to_hex()), "{err}");
        let left: Vec<_> = std::fs::read_dir(datadir.path().join("models")).unwrap().collect();
        assert!(left.is_empty(), "nothing half-installed: {left:?}");

        let (hash, dir) = install_base(src.path(), datadir.path()).unwrap();
        assert_eq!(hash, expected);
        assert_eq!(dir, datadir.path().join("models").join(hash.to_hex()));
        assert_eq!(folder_hash(&dir).unwrap(), hash);
        assert_eq!(std::fs::read_dir(datadir.path().join("models")).unwrap().count(), 1, "no temporary folder left");
        Base::load(&dir, tch::Device::Cpu).unwrap();
    }
}
