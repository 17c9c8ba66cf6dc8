//! Key material for Gatehouse: the master key (a 0600 file in the data directory or the
//! `GATEHOUSE_MASTER_KEY` environment variable), the purpose-bound keys derived from it with
//! HKDF-SHA-256 (credential sealing, token hashing, audit chaining), AES-256-GCM sealing of
//! resource credentials, and the [`Secret`] type whose `Debug` never shows its value.
//! All cryptography comes from one provider, `ring`. This crate stores nothing but the key file.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// The environment variable that carries the master key (base64 or hex of 32 bytes).
pub const MASTER_KEY_ENV: &str = "GATEHOUSE_MASTER_KEY";
/// The master key file's name inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

const SEALED_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{MASTER_KEY_ENV} must be 32 bytes, base64 or hex encoded")]
    BadEnvKey,
    #[error("master key file {path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("the system random number generator failed")]
    Random,
    #[error("sealed credential is malformed or was sealed under another master key")]
    Unseal,
}

/// A secret value (a password, a token). Its `Debug` and `Display` never show the value; read it
/// deliberately with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Call it only where the secret must leave the process (upstream login,
    /// the one-time display of a new token).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the master key came from, for logs and `config check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "environment variable {MASTER_KEY_ENV}"),
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::Generated(p) => write!(f, "file {} (generated now)", p.display()),
        }
    }
}

/// The keys derived from the master key. Cheap to share behind an `Arc`.
pub struct Keys {
    sealing: LessSafeKey,
    token: hmac::Key,
    audit: hmac::Key,
    rng: SystemRandom,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(***)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(prk: &hkdf::Prk, label: &'static [u8]) -> Result<[u8; 32], KeyError> {
    let info = [label];
    let okm = prk.expand(&info, Len(32)).map_err(|_| KeyError::Random)?;
    let mut out = [0u8; 32];
    okm.fill(&mut out).map_err(|_| KeyError::Random)?;
    Ok(out)
}

impl Keys {
    /// Derives the purpose keys from 32 bytes of master key.
    pub fn from_master(master: &[u8; 32]) -> Result<Keys, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"gatehouse master key v1").extract(master);
        let sealing = derive(&prk, b"credential sealing")?;
        let token = derive(&prk, b"token hashing")?;
        let audit = derive(&prk, b"audit chain")?;
        let unbound = UnboundKey::new(&AES_256_GCM, &sealing).map_err(|_| KeyError::Random)?;
        Ok(Keys {
            sealing: LessSafeKey::new(unbound),
            token: hmac::Key::new(hmac::HMAC_SHA256, &token),
            audit: hmac::Key::new(hmac::HMAC_SHA256, &audit),
            rng: SystemRandom::new(),
        })
    }

    /// Loads the master key from [`MASTER_KEY_ENV`] if set, else from `<data_dir>/master.key`,
    /// generating that file (mode 0600) when it does not exist and `create` is true.
    pub fn load(data_dir: &Path, create: bool) -> Result<(Keys, KeySource), KeyError> {
        if let Ok(value) = std::env::var(MASTER_KEY_ENV) {
            let key = decode_key(value.trim()).ok_or(KeyError::BadEnvKey)?;
            return Ok((Keys::from_master(&key)?, KeySource::Env));
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        let file_err = |problem: String| KeyError::File { path: path.clone(), problem };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_private(&path).map_err(file_err)?;
                let key = decode_key(text.trim())
                    .ok_or_else(|| file_err("must hold 32 bytes, base64 or hex encoded".into()))?;
                Ok((Keys::from_master(&key)?, KeySource::File(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut key = [0u8; 32];
                SystemRandom::new().fill(&mut key).map_err(|_| KeyError::Random)?;
                write_private(&path, format!("{}\n", STANDARD.encode(key)).as_bytes())
                    .map_err(|e| file_err(e.to_string()))?;
                Ok((Keys::from_master(&key)?, KeySource::Generated(path)))
            }
            Err(e) => Err(file_err(e.to_string())),
        }
    }

    /// `n` random bytes from the system generator.
    pub fn random(&self, n: usize) -> Result<Vec<u8>, KeyError> {
        let mut out = vec![0u8; n];
        self.rng.fill(&mut out).map_err(|_| KeyError::Random)?;
        Ok(out)
    }

    /// A fresh random token: `prefix` followed by 32 random bytes (256 bits) in base64url.
    pub fn new_token(&self, prefix: &str) -> Result<Secret, KeyError> {
        Ok(Secret(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(self.random(32)?))))
    }

    /// The keyed hash under which a token is stored (HMAC-SHA-256 with the token key).
    pub fn token_hash(&self, token: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.token, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// An HMAC-SHA-256 over the given parts, each length-prefixed so no two different part
    /// lists share a MAC. Used to chain audit events.
    pub fn audit_mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.audit);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Seals a credential with AES-256-GCM. `aad` binds the ciphertext to where it is stored
    /// (connection and credential name), so a sealed value moved to another row fails to open.
    pub fn seal(&self, secret: &Secret, aad: &str) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut buf = secret.expose().as_bytes().to_vec();
        self.sealing
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what [`Keys::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Secret, KeyError> {
        let (&version, rest) = sealed.split_first().ok_or(KeyError::Unseal)?;
        if version != SEALED_VERSION || rest.len() < NONCE_LEN {
            return Err(KeyError::Unseal);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Unseal)?;
        let mut buf = ct.to_vec();
        let plain =
            self.sealing.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf).map_err(|_| KeyError::Unseal)?;
        String::from_utf8(plain.to_vec()).map(Secret).map_err(|_| KeyError::Unseal)
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        STANDARD.decode(text).or_else(|_| URL_SAFE_NO_PAD.decode(text)).ok()?
    };
    bytes.try_into().ok()
}

/// Writes `contents` to a new file readable by its owner only (0600 on Unix). Fails if the file
/// exists, so a key or token is never silently replaced.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| e.to_string())?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!("mode is {:o}; it must be readable by its owner only (chmod 600)", mode & 0o777));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_master(&[7u8; 32]).unwrap()
    }

    #[test]
    fn seal_round_trip_and_binding() {
        let k = keys();
        let sealed = k.seal(&Secret::new("hunter2"), "pg/default").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(&sealed, "pg/default").unwrap().expose(), "hunter2");
        assert!(k.open(&sealed, "other/default").is_err());
        let other = Keys::from_master(&[8u8; 32]).unwrap();
        assert!(other.open(&sealed, "pg/default").is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open(&tampered, "pg/default").is_err());
    }

    #[test]
    fn tokens_are_long_and_hashes_keyed() {
        let k = keys();
        let t = k.new_token("ghs_").unwrap();
        assert!(t.expose().len() >= 4 + 43);
        assert_ne!(k.new_token("ghs_").unwrap(), t);
        assert_eq!(k.token_hash(t.expose()), k.token_hash(t.expose()));
        let other = Keys::from_master(&[8u8; 32]).unwrap();
        assert_ne!(k.token_hash(t.expose()), other.token_hash(t.expose()));
        assert_eq!(format!("{t:?}"), "Secret(***)");
    }

    #[test]
    fn mac_parts_are_unambiguous() {
        let k = keys();
        assert_ne!(k.audit_mac(&[b"ab", b"c"]), k.audit_mac(&[b"a", b"bc"]));
    }

    #[test]
    fn key_file_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        // The environment variable would take precedence; this test only runs without it.
        if std::env::var(MASTER_KEY_ENV).is_ok() {
            return;
        }
        let (k1, src) = Keys::load(dir.path(), true).unwrap();
        assert!(matches!(src, KeySource::Generated(_)));
        let (k2, src) = Keys::load(dir.path(), true).unwrap();
        assert!(matches!(src, KeySource::File(_)));
        assert_eq!(k1.token_hash("x"), k2.token_hash("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(MASTER_KEY_FILE);
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Keys::load(dir.path(), true).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn decodes_hex_and_base64() {
        assert_eq!(decode_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode_key(&STANDARD.encode([1u8; 32])), Some([1; 32]));
        assert_eq!(decode_key("short"), None);
    }
}
