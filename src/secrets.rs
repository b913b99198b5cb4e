//! Secrets at rest: refresh tokens are sealed with ChaCha20-Poly1305 (RustCrypto) under a
//! 256-bit key kept in a file readable only by the service user (or a systemd credential).
//!
//! A sealed grant is `0x02 || nonce || ciphertext`, and the account id is the AEAD's
//! associated data: a grant copied to another account's key in the store does not open.
//! Grants sealed before that (`nonce || ciphertext`, no version byte, no associated data)
//! open once through [`Sealer::open_legacy`], which the boot sequence uses to re-seal them
//! bound to their account.
//!
//! The daemon never makes a key: `contact-sync gen-key PATH` does, and a missing key is a
//! start-up error that says so.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

/// First byte of a grant sealed with its account as associated data.
pub const SEALED_V2: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Token key file {path} cannot be read: {reason}.")]
    KeyUnreadable { path: String, reason: String },
    #[error("Token key file {path} is not a 32-byte key (64 hex characters).")]
    KeyMalformed { path: String },
    #[error("Token key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` (or load it with LoadCredential=).")]
    KeyExposed { path: String, mode: u32 },
    #[error("Stored grant cannot be decrypted with the key in {path}: wrong key, damaged data, or a grant that belongs to another account. Restore the original key file, or reconnect the account.")]
    WrongKey { path: String },
    #[error("{path} already exists; not overwriting it (whatever uses it would be locked out).")]
    KeyExists { path: String },
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

/// Associated data binding a sealed grant to its account.
fn associated(account: &str) -> Vec<u8> {
    let mut ad = b"contact-sync grant\0".to_vec();
    ad.extend_from_slice(account.as_bytes());
    ad
}

/// Writes a new random key (64 hex characters, mode 0600) to `path`; refuses to overwrite.
pub fn generate_key(path: &Path) -> Result<(), SecretError> {
    let shown = path.display().to_string();
    if path.exists() {
        return Err(SecretError::KeyExists { path: shown });
    }
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, format!("{hex}\n").as_bytes()).map_err(|e| SecretError::KeyUnreadable {
        path: shown,
        reason: e.to_string(),
    })
}

/// Writes a new random bearer token (48 hex characters, mode 0600); refuses to overwrite.
pub fn generate_token(path: &Path) -> Result<(), SecretError> {
    let shown = path.display().to_string();
    if path.exists() {
        return Err(SecretError::KeyExists { path: shown });
    }
    write_private(path, format!("{}\n", random_hex(24)).as_bytes()).map_err(|e| {
        SecretError::KeyUnreadable {
            path: shown,
            reason: e.to_string(),
        }
    })
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sealer {
    /// Loads the key from `path`. A key that group or others can read is refused.
    pub fn load(path: &Path) -> Result<Sealer, SecretError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SecretError::KeyUnreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if let Some(mode) = crate::config::loose_mode(path) {
            return Err(SecretError::KeyExposed { path: shown, mode });
        }
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

    /// Seals the refresh token of `account`: `0x02 || nonce || ciphertext`.
    pub fn seal(&self, account: &str, secret: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = vec![SEALED_V2];
        out.extend_from_slice(&nonce);
        let ad = associated(account);
        let payload = Payload {
            msg: secret.expose_secret().as_bytes(),
            aad: &ad,
        };
        // Encryption with a valid key and nonce only fails for messages over 256 GiB.
        if let Ok(ct) = self.cipher.encrypt(Nonce::from_slice(&nonce), payload) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens the grant stored for `account`; a grant sealed for another account fails.
    pub fn open(&self, account: &str, sealed: &[u8]) -> Result<SecretString, SecretError> {
        let wrong = || SecretError::WrongKey {
            path: self.path.clone(),
        };
        let Some((&SEALED_V2, rest)) = sealed.split_first() else {
            return Err(wrong());
        };
        if rest.len() < 12 + 16 {
            return Err(wrong());
        }
        let (nonce, ct) = rest.split_at(12);
        let ad = associated(account);
        let pt = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &ad })
            .map_err(|_| wrong())?;
        String::from_utf8(pt)
            .map(SecretString::from)
            .map_err(|_| wrong())
    }

    /// Opens a grant sealed before grants were bound to their account (`nonce ||
    /// ciphertext`, no associated data). Only the one-time migration at start-up uses it.
    pub fn open_legacy(&self, sealed: &[u8]) -> Result<SecretString, SecretError> {
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

    /// Seals `secret` the old way, for the migration test.
    #[doc(hidden)]
    pub fn seal_legacy(&self, secret: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        if let Ok(ct) = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), secret.expose_secret().as_bytes())
        {
            out.extend_from_slice(&ct);
        }
        out
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
        generate_key(&path).unwrap();
        let s = Sealer::load(&path).unwrap();
        let sealed = s.seal("acc", &SecretString::from("1//refresh-secret".to_string()));
        assert!(!String::from_utf8_lossy(&sealed).contains("refresh-secret"));
        let again = Sealer::load(&path).unwrap();
        assert_eq!(
            again.open("acc", &sealed).unwrap().expose_secret(),
            "1//refresh-secret"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            generate_key(&path),
            Err(SecretError::KeyExists { .. })
        ));
    }

    #[test]
    fn sealed_grant_is_bound_to_its_account() {
        let s = Sealer::ephemeral();
        let sealed = s.seal("sales-gmail", &SecretString::from("1//tok".to_string()));
        assert!(s.open("sales-gmail", &sealed).is_ok());
        let e = s.open("ops-gmail", &sealed).unwrap_err();
        assert!(e.to_string().contains("another account"), "{e}");
        // A legacy grant opens only through the migration path.
        let old = s.seal_legacy(&SecretString::from("1//old".to_string()));
        assert_eq!(s.open_legacy(&old).unwrap().expose_secret(), "1//old");
    }

    #[test]
    fn wrong_or_missing_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = Sealer::ephemeral().seal("a", &SecretString::from("x".to_string()));
        generate_key(&dir.path().join("k")).unwrap();
        let other = Sealer::load(&dir.path().join("k")).unwrap();
        let e = other.open("a", &sealed).unwrap_err();
        assert!(e.to_string().contains("wrong key"), "{e}");
        let e = Sealer::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("cannot be read"), "{e}");
        write_private(&dir.path().join("short"), b"abcd").unwrap();
        assert!(matches!(
            Sealer::load(&dir.path().join("short")),
            Err(SecretError::KeyMalformed { .. })
        ));
        assert!(!format!("{other:?}").contains(&"0".repeat(8)));
    }

    #[cfg(unix)]
    #[test]
    fn key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        generate_key(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Sealer::load(&p).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
