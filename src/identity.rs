//! A peer's identity: one 32-byte ed25519 secret in `<datadir>/identity.key`, mode 0600.
//!
//! The same secret gives the `ed25519_dalek::SigningKey` used for every signature here, and (in
//! [`crate::net::keys`]) the libp2p keypair and the iroh secret key, so a peer is one public key
//! across both network stacks.

use crate::ids::PeerKey;
use ed25519_dalek::SigningKey;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The identity file's name inside a datadir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Why an identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0} already exists; refusing to overwrite an identity")]
    Exists(PathBuf),
    #[error("no identity in {0}; run `datanet init --datadir {0}` first")]
    Missing(PathBuf),
    #[error("{path} has mode {mode:o}; it must be readable by its owner only (chmod 600)")]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("{path}: expected 32 bytes, found {len}")]
    BadLength { path: PathBuf, len: usize },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A loaded identity.
#[derive(Clone)]
pub struct Identity {
    seed: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public_key().short())
    }
}

impl Identity {
    /// A fresh random identity (not written anywhere).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Identity { seed }
    }

    /// An identity from a known seed (tests, simulator, benchmarks).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Identity { seed }
    }

    /// Creates `<datadir>/identity.key` with mode 0600; refuses an existing file.
    pub fn init(datadir: &Path) -> Result<Self, IdentityError> {
        fs::create_dir_all(datadir).map_err(|source| IdentityError::Io { path: datadir.to_path_buf(), source })?;
        let path = datadir.join(IDENTITY_FILE);
        let id = Self::generate();
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| match e
            .kind()
        {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists(path.clone()),
            _ => IdentityError::Io { path: path.clone(), source: e },
        })?;
        f.write_all(&id.seed)
            .and_then(|_| f.sync_all())
            .map_err(|source| IdentityError::Io { path: path.clone(), source })?;
        Ok(id)
    }

    /// Loads `<datadir>/identity.key`, refusing group- or world-accessible files.
    pub fn load(datadir: &Path) -> Result<Self, IdentityError> {
        let path = datadir.join(IDENTITY_FILE);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing(datadir.to_path_buf()));
            }
            Err(e) => return Err(IdentityError::Io { path, source: e }),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::LoosePermissions { path, mode });
        }
        let bytes = fs::read(&path).map_err(|e| IdentityError::Io { path: path.clone(), source: e })?;
        let seed: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| IdentityError::BadLength { path, len: bytes.len() })?;
        Ok(Identity { seed })
    }

    /// The 32-byte secret (for deriving the libp2p and iroh keys).
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }

    /// The ed25519-dalek signing key.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.seed)
    }

    /// The public key: this peer's identity everywhere.
    pub fn public_key(&self) -> PeerKey {
        PeerKey(self.signing_key().verifying_key().to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // init writes a 0600 file, load reads the same key, and a second init is refused.
    #[test]
    fn init_load_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::init(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Identity::load(dir.path()).unwrap().public_key(), a.public_key());
        assert!(matches!(Identity::init(dir.path()), Err(IdentityError::Exists(_))));
        assert_eq!(Identity::load(dir.path()).unwrap().public_key(), a.public_key());
    }

    // A key file readable by group or others is refused on load.
    #[test]
    fn loose_permissions_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::init(dir.path()).unwrap();
        let p = dir.path().join(IDENTITY_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Identity::load(dir.path()), Err(IdentityError::LoosePermissions { .. })));
    }

    // A datadir without identity names the command that fixes it.
    #[test]
    fn missing_identity_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("datanet init"), "{e}");
    }
}
