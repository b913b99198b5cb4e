//! Secrets at rest: refresh tokens are sealed with ChaCha20-Poly1305 (RustCrypto) under a
//! 256-bit key kept in a file readable only by the service user (or a systemd credential).
//!
//! A missing key while sealed grants exist, or a key that does not open them, is an error
//! with a clear message; the daemon never silently makes a new key over old grants.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Token key file {path} cannot be read: {reason}.")]
    KeyUnreadable { path: String, reason: String },
    #[error("Token key file {path} is not a 32-byte key (64 hex characters).")]
    KeyMalformed { path: String },
    #[error("Stored grant cannot be decrypted with the key in {path}: wrong key or damaged data. Restore the original key file, or reconnect the account.")]
    WrongKey { path: String },
}

/// The key that seals refresh tokens.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    path: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("path", &self.path)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Sealer {
    /// Loads the key from `path`, creating it (mode 0600) when `create` is set and the file
    /// does not exist.
    pub fn load(path: &Path, create: bool) -> Result<Sealer, SecretError> {
        let shown = path.display().to_string();
        if !path.exists() && create {
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            write_private(path, hex.as_bytes()).map_err(|e| SecretError::KeyUnreadable {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
        let text = std::fs::read_to_string(path).map_err(|e| SecretError::KeyUnreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let text = text.trim();
        if text.len() != 64 {
            return Err(SecretError::KeyMalformed { path: shown });
        }
        let mut key = [0u8; 32];
        for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).map_err(|_| SecretError::KeyMalformed {
                path: shown.clone(),
            })?;
            key[i] = u8::from_str_radix(s, 16).map_err(|_| SecretError::KeyMalformed {
                path: shown.clone(),
            })?;
        }
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            path: shown,
        })
    }

    /// A sealer with a random key, for tests and the demo.
    pub fn ephemeral() -> Sealer {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            path: "<ephemeral>".into(),
        }
    }

    /// `nonce || ciphertext`.
    pub fn seal(&self, secret: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce only fails for messages over 256 GiB.
        if let Ok(ct) = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), secret.expose_secret().as_bytes())
        {
            out.extend_from_slice(&ct);
        }
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<SecretString, SecretError> {
        let wrong = || SecretError::WrongKey {
            path: self.path.clone(),
        };
        if sealed.len() < 12 + 16 {
            return Err(wrong());
        }
        let (nonce, ct) = sealed.split_at(12);
        let pt = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| wrong())?;
        String::from_utf8(pt)
            .map(SecretString::from)
            .map_err(|_| wrong())
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data)?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let s = Sealer::load(&path, true).unwrap();
        let sealed = s.seal(&SecretString::from("1//refresh-secret".to_string()));
        assert!(!String::from_utf8_lossy(&sealed).contains("refresh-secret"));
        let again = Sealer::load(&path, false).unwrap();
        assert_eq!(
            again.open(&sealed).unwrap().expose_secret(),
            "1//refresh-secret"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn wrong_or_missing_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = Sealer::ephemeral().seal(&SecretString::from("x".to_string()));
        let other = Sealer::load(&dir.path().join("k"), true).unwrap();
        let e = other.open(&sealed).unwrap_err();
        assert!(e.to_string().contains("wrong key"), "{e}");
        let e = Sealer::load(&dir.path().join("missing"), false).unwrap_err();
        assert!(e.to_string().contains("cannot be read"), "{e}");
        std::fs::write(dir.path().join("short"), "abcd").unwrap();
        assert!(matches!(
            Sealer::load(&dir.path().join("short"), false),
            Err(SecretError::KeyMalformed { .. })
        ));
        assert!(!format!("{other:?}").contains(&"0".repeat(8)));
    }
}
