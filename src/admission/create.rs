//! Creating a Datanet from a manifest file: one function for `datanet datanet create` and the
//! running daemon's `POST /api/v1/datanets`, so both store exactly the same things.

use crate::codec::Signed;
use crate::identity::Identity;
use crate::ids::DatanetId;
use crate::manifest::ManifestFile;
use crate::store::Store;
use std::path::Path;

/// What [`create_datanet`] stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Created {
    pub id: DatanetId,
    pub name: String,
    /// Records committed to by the sealed evaluation pool (0 without one).
    pub sealed_records: u32,
}

/// Reads, checks and signs (as founder `identity`) the manifest file `from`, seals its evaluation
/// pool, and stores the public evaluation file, the pool (in the database, never a blob) and the
/// signed manifest. `check_seed` validates each seed address. Nothing is stored when a check fails.
pub async fn create_datanet(
    store: &Store,
    identity: &Identity,
    from: &Path,
    check_seed: &(dyn Fn(&str) -> Result<(), String> + Sync),
) -> Result<Created, String> {
    let file = ManifestFile::read(from).map_err(|e| e.to_string())?;
    let base = from.parent().unwrap_or(Path::new("."));
    let (mut manifest, eval) =
        file.into_manifest(base, identity.public_key(), check_seed).map_err(|e| e.to_string())?;
    super::parse_eval(&manifest, &eval.public).map_err(|e| format!("eval.public: {e}"))?;
    let pool =
        super::sealed::seal_manifest(&mut manifest, eval.secret.as_deref()).map_err(|e| format!("eval.secret: {e}"))?;
    let public_hash = store.put_blob(eval.public).await.map_err(|e| e.to_string())?;
    debug_assert_eq!(public_hash, manifest.eval.public_hash);
    let signed = Signed::sign(manifest, &identity.signing_key());
    let id = signed.body.id();
    // The sealed pool stays in the founder's database (never a blob: nobody can fetch it) until
    // `datanet datanet sealed export` hands it to the other members.
    if let Some(pool) = &pool {
        store.put_sealed_pool(&id, pool).await.map_err(|e| e.to_string())?;
    }
    store.put_manifest(&signed).await.map_err(|e| e.to_string())?;
    let sealed_records = signed.body.eval.sealed.iter().map(|p| p.count).sum();
    Ok(Created { id, name: signed.body.name.clone(), sealed_records })
}
