//! The gateway's host key: an ed25519 key kept in the data directory (mode 0600), made on first
//! start, so that clients see the same host key across restarts.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::RngCore as _;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{Algorithm, PrivateKey};

/// A host key that could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The file exists but is not an OpenSSH private key.
    #[error("the SSH host key {path} cannot be read: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A new key could not be written.
    #[error("the SSH host key {path} cannot be written: {reason}")]
    Unwritable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The key at `path`, or a new ed25519 key written there.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let shown = path.display().to_string();
    if path.exists() {
        let text = fs::read_to_string(path)
            .map_err(|e| HostKeyError::Unreadable { path: shown.clone(), reason: e.to_string() })?;
        return PrivateKey::from_openssh(&text)
            .map_err(|e| HostKeyError::Unreadable { path: shown, reason: e.to_string() });
    }
    let unwritable = |reason: String| HostKeyError::Unwritable { path: shown.clone(), reason };
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    debug_assert_eq!(key.algorithm(), Algorithm::Ed25519);
    let text = key.to_openssh(LineEnding::LF).map_err(|e| unwritable(e.to_string()))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| unwritable(e.to_string()))?;
    }
    let partial = path.with_extension("partial");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| unwritable(e.to_string()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| unwritable(e.to_string()))?;
    fs::rename(&partial, path).map_err(|e| unwritable(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("ssh_host_ed25519_key");
        let first = load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        let second = load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.public_key(), second.public_key());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(&path).unwrap_or_else(|e| panic!("{e}")).permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&path, "not a key").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(load_or_create(&path), Err(HostKeyError::Unreadable { .. })));
    }
}
