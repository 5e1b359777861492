//! The store: the only module that touches sled and the iroh-blobs blob store.
//!
//! A datadir holds `db/` (sled: manifests, contribution records, their local metadata and the
//! Datanet-wide indexes used for deduplication) and `blobs/` (an iroh-blobs `FsStore`: record
//! chunks, HashSeqs, evaluation files, adapters, attestations). Blob bytes are checked against
//! their hash when written and again when read back; a corrupt blob is reported, never returned.
//!
//! A contribution is all-or-nothing: its Datanet-wide index entries are written in batches, then
//! a small sled transaction writes its marker (signed record, metadata, order), and callers
//! acknowledge only after the flush that follows; index entries whose contribution has no marker
//! are dead and skipped (see `contributions`). Blobs are written and synced *before* that transaction, so a crash leaves at
//! worst unreferenced blobs, never a record whose chunks are missing.

pub mod contributions;
pub mod ledger;

use crate::codec::{self, Canonical};
use crate::ids::{BlobHash, DatanetId, RecordHash};
use crate::manifest::{Manifest, SignedManifest};
use iroh_blobs::store::fs::FsStore;
use std::path::{Path, PathBuf};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "the datadir {path} is in use by another datanet process (a running `datanet run`?): stop it, or use the commands that ask the running daemon (`datanet status`, `datanet contribute`, `datanet rewards`, `datanet join`)"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the blob store in {path}: {reason}")]
    OpenBlobs { path: PathBuf, reason: String },
    #[error(
        "datanet `{0}` is not known here (give its id, a unique id prefix or its name; `datanet datanet ls` lists them)"
    )]
    UnknownDatanet(String),
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error("database transaction: {0}")]
    Transaction(String),
    #[error("blob store: {0}")]
    Blobs(String),
    #[error("blob {0} is not in the store")]
    BlobMissing(BlobHash),
    #[error("blob {hash} is corrupt on disk (its bytes hash to {actual}); it will not be served")]
    BlobCorrupt { hash: BlobHash, actual: BlobHash },
    #[error("blob {hash} failed verification on read (corrupt on disk?): {reason}; it will not be served")]
    BlobUnreadable { hash: BlobHash, reason: String },
    #[error("stored {what} is unreadable: {source}")]
    Decode { what: &'static str, source: codec::DecodeError },
}

/// Sled tree names, one per kind of entry.
pub(crate) mod trees {
    /// DatanetId → signed manifest.
    pub const MANIFESTS: &str = "manifests";
    /// ContributionId → signed contribution record.
    pub const CONTRIBUTIONS: &str = "contributions";
    /// ContributionId → local admission metadata.
    pub const CONTRIBUTION_META: &str = "contribution_meta";
    /// DatanetId ‖ seq (u64 BE) → ContributionId, in local admission order.
    pub const BY_DATANET: &str = "by_datanet";
    /// DatanetId ‖ bucket (u16 BE) ‖ ContributionId → sorted (record key, RecordHash) entries:
    /// the records that contribution admitted first here (bucketed index, see `contributions`).
    pub const RECORDS: &str = "record_buckets";
    /// DatanetId ‖ bucket (u16 BE) ‖ ContributionId → sorted (band key, canonical RecordHash)
    /// entries of the near-duplicate index.
    pub const NEAR_INDEX: &str = "near_buckets";
    /// DatanetId ‖ RecordHash → MinHash signature (text Datanets).
    pub const SIGNATURES: &str = "signatures";
    /// DatanetId → the sealed evaluation pool (committee members only; never a blob, never
    /// served or gossiped).
    pub const SEALED: &str = "sealed_pools";
    /// Counters.
    pub const META: &str = "meta";
}

/// How long [`Store::open`] waits for another holder of the database lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A peer's persistent state: sled plus the iroh-blobs file store.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    blobs: FsStore,
    root: PathBuf,
    /// Serializes admissions: classification reads the indexes the previous one wrote.
    admit: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens (or creates) `<datadir>/db` and `<datadir>/blobs`.
    pub async fn open(datadir: &Path) -> Result<Self, StoreError> {
        let db_path = datadir.join("db");
        // Admission writes index entries in large batches: favour write throughput over file size,
        // and keep the hot part of the indexes in a cache large enough for a big contribution.
        let config = sled::Config::new().path(&db_path).mode(sled::Mode::HighThroughput).cache_capacity(256 << 20);
        // A process that just closed its store may still hold the lock for a moment (sled finishes
        // a flush on its own threads): wait briefly before reporting the datadir as in use.
        let mut waited = std::time::Duration::ZERO;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if waited >= LOCK_WAIT {
                        return Err(StoreError::InUse { path: datadir.to_path_buf() });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    waited += std::time::Duration::from_millis(50);
                }
                Err(source) => return Err(StoreError::Open { path: db_path, source }),
            }
        };
        let blob_path = datadir.join("blobs");
        let blobs = FsStore::load(&blob_path)
            .await
            .map_err(|e| StoreError::OpenBlobs { path: blob_path, reason: format!("{e:#}") })?;
        Ok(Store { db, blobs, root: datadir.to_path_buf(), admit: Default::default() })
    }

    /// The datadir this store lives in.
    pub fn datadir(&self) -> &Path {
        &self.root
    }

    /// The sled database (for other `store` submodules).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The iroh-blobs store (for `net` to serve and fetch into).
    pub fn blobs(&self) -> &FsStore {
        &self.blobs
    }

    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Makes every sled write so far durable, then the blob store's metadata.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.blobs.sync_db().await.map_err(|e| StoreError::Blobs(e.to_string()))?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Flushes and shuts the blob store down.
    pub async fn close(self) -> Result<(), StoreError> {
        self.flush().await?;
        self.blobs.shutdown().await.map_err(|e| StoreError::Blobs(e.to_string()))?;
        Ok(())
    }

    // ---- blobs -------------------------------------------------------------------------------

    /// Stores `bytes` under a persistent tag and returns their BLAKE3 hash.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<BlobHash, StoreError> {
        let expected = BlobHash::of(&bytes);
        let tag = self.blobs.add_bytes(bytes).await.map_err(|e| StoreError::Blobs(e.to_string()))?;
        let got = BlobHash(*tag.hash.as_bytes());
        if got != expected {
            return Err(StoreError::BlobCorrupt { hash: expected, actual: got });
        }
        Ok(got)
    }

    /// Reads a whole blob, checking its bytes against the hash.
    pub async fn get_blob(&self, hash: &BlobHash) -> Result<Vec<u8>, StoreError> {
        if !self.has_blob(hash).await? {
            return Err(StoreError::BlobMissing(*hash));
        }
        let bytes = self.blobs.get_bytes(iroh_blobs::Hash::from_bytes(hash.0)).await.map_err(|e| {
            tracing::error!(target: "datanet::store", blob = %hash, error = %e, "blob failed verification on read");
            StoreError::BlobUnreadable { hash: *hash, reason: e.to_string() }
        })?;
        let actual = BlobHash::of(&bytes);
        if &actual != hash {
            tracing::error!(target: "datanet::store", blob = %hash, %actual, "corrupt blob on disk");
            return Err(StoreError::BlobCorrupt { hash: *hash, actual });
        }
        Ok(bytes.to_vec())
    }

    /// Tags a contribution's HashSeq (and so every chunk it lists) so blob garbage collection
    /// keeps it; blobs that arrive by download carry no tag of their own.
    pub async fn tag_contribution(&self, id: &crate::ids::ContributionId, root: &BlobHash) -> Result<(), StoreError> {
        let value = iroh_blobs::HashAndFormat::hash_seq(iroh_blobs::Hash::from_bytes(root.0));
        self.blobs
            .tags()
            .set(format!("contribution/{}", id.to_hex()), value)
            .await
            .map_err(|e| StoreError::Blobs(e.to_string()))
    }

    /// Whether the blob is completely present.
    pub async fn has_blob(&self, hash: &BlobHash) -> Result<bool, StoreError> {
        self.blobs.has(iroh_blobs::Hash::from_bytes(hash.0)).await.map_err(|e| StoreError::Blobs(e.to_string()))
    }

    /// Makes `hashes` survive power loss: iroh-blobs' own `sync_db` does not fsync, and it renames
    /// data files into place without syncing them, so this fsyncs each blob's data and outboard
    /// file (when not inlined), the blob database file (which holds inlined blobs and every
    /// blob's entry) and the directories that name them. Called before anything points at the
    /// blobs (a contribution's marker). Returns how many files were synced.
    pub async fn sync_blobs(&self, hashes: &[BlobHash]) -> Result<usize, StoreError> {
        let root = self.root.join("blobs");
        let mut files: Vec<PathBuf> = Vec::with_capacity(hashes.len() * 2 + 1);
        for h in hashes {
            let data = self.blob_data_path(h);
            files.push(data.clone());
            files.push(data.with_extension("obao4"));
        }
        files.push(root.join("blobs.db"));
        let dirs = [root.join("data"), root.clone()];
        tokio::task::spawn_blocking(move || {
            let mut synced = 0;
            for f in files.iter().chain(&dirs) {
                match std::fs::File::open(f) {
                    Ok(file) => {
                        file.sync_all().map_err(|e| StoreError::Blobs(format!("fsync {}: {e}", f.display())))?;
                        synced += 1;
                    }
                    // Inlined blobs and small outboards have no file of their own.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::Blobs(format!("open {}: {e}", f.display()))),
                }
            }
            Ok(synced)
        })
        .await
        .map_err(|e| StoreError::Blobs(format!("fsync task: {e}")))?
    }

    /// Where a blob's bytes live on disk when they are not inlined in the blob database
    /// (used by the corruption tests and the operator's repair tools).
    pub fn blob_data_path(&self, hash: &BlobHash) -> PathBuf {
        self.root.join("blobs").join("data").join(format!("{}.data", iroh_blobs::Hash::from_bytes(hash.0).to_hex()))
    }

    // ---- manifests ---------------------------------------------------------------------------

    /// Stores a verified signed manifest under its id.
    pub async fn put_manifest(&self, m: &SignedManifest) -> Result<DatanetId, StoreError> {
        let id = m.body.id();
        self.tree(trees::MANIFESTS)?.insert(id.0, m.to_bytes())?;
        self.flush().await?;
        Ok(id)
    }

    /// The signed manifest of a Datanet, if known here.
    pub fn manifest(&self, id: &DatanetId) -> Result<Option<SignedManifest>, StoreError> {
        match self.tree(trees::MANIFESTS)?.get(id.0)? {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|source| StoreError::Decode { what: "manifest", source }),
        }
    }

    /// Every known Datanet.
    pub fn manifests(&self) -> Result<Vec<(DatanetId, SignedManifest)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(trees::MANIFESTS)?.iter() {
            let (k, v) = kv?;
            let m: SignedManifest =
                codec::decode(&v).map_err(|source| StoreError::Decode { what: "manifest", source })?;
            out.push((DatanetId(k.as_ref().try_into().unwrap_or([0; 32])), m));
        }
        Ok(out)
    }

    /// Resolves a Datanet given as full id, unique id prefix or name.
    pub fn resolve_datanet(&self, key: &str) -> Result<Option<(DatanetId, Manifest)>, StoreError> {
        let all = self.manifests()?;
        let hits: Vec<_> = all
            .into_iter()
            .filter(|(id, m)| {
                id.to_hex() == key || (key.len() >= 4 && id.to_hex().starts_with(key)) || m.body.name == key
            })
            .collect();
        Ok(if hits.len() == 1 { hits.into_iter().next().map(|(id, m)| (id, m.body)) } else { None })
    }

    /// [`Store::resolve_datanet`], with a Datanet that is not known (or not unique) as an error
    /// saying what to give instead.
    pub fn require_datanet(&self, key: &str) -> Result<(DatanetId, Manifest), StoreError> {
        self.resolve_datanet(key)?.ok_or_else(|| StoreError::UnknownDatanet(key.to_string()))
    }

    /// Keeps a Datanet's sealed evaluation pool (the caller checked it against the manifest's
    /// commitment). It lives in the database, not the blob store, so no peer can fetch it.
    pub async fn put_sealed_pool(&self, id: &DatanetId, pool: &crate::sealed::SealedPool) -> Result<(), StoreError> {
        self.tree(trees::SEALED)?.insert(id.0, codec::encode(pool))?;
        self.flush().await
    }

    /// The sealed evaluation pool of a Datanet, if this peer holds it.
    pub fn sealed_pool(&self, id: &DatanetId) -> Result<Option<crate::sealed::SealedPool>, StoreError> {
        match self.tree(trees::SEALED)?.get(id.0)? {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|source| StoreError::Decode { what: "sealed pool", source }),
        }
    }

    // ---- generic keyed access for other store rooms ------------------------------------------

    /// Reads and decodes one canonical value from a tree.
    pub(crate) fn get_canonical<T: Canonical>(&self, tree: &str, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree(tree)?.get(key)? {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|source| StoreError::Decode { what: "entry", source }),
        }
    }
}

/// `a ‖ b` as a sled key.
pub(crate) fn key2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

/// A record hash plus Datanet as a `records` key.
pub(crate) fn record_key(d: &DatanetId, r: &RecordHash) -> Vec<u8> {
    key2(&d.0, &r.0)
}

impl Store {
    /// A digest of everything stored: every sled tree's entries and every blob hash. Two equal
    /// digests mean nothing was added, removed or changed (used by the "bad input stores nothing"
    /// tests).
    pub async fn content_digest(&self) -> Result<blake3::Hash, StoreError> {
        let mut h = blake3::Hasher::new();
        let mut names = self.db.tree_names();
        names.sort();
        for name in names {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(&name);
            for kv in self.db.open_tree(&name)?.iter() {
                let (k, v) = kv?;
                h.update(&(k.len() as u64).to_le_bytes());
                h.update(&k);
                h.update(&(v.len() as u64).to_le_bytes());
                h.update(&v);
            }
        }
        let mut hashes: Vec<[u8; 32]> =
            (self.blobs.list().hashes().await.map_err(|e| StoreError::Blobs(e.to_string()))?)
                .into_iter()
                .map(|x| *x.as_bytes())
                .collect();
        hashes.sort();
        for x in hashes {
            h.update(&x);
        }
        Ok(h.finalize())
    }
}
