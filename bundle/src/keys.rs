//! ed25519 keys: files, key ids, the trusted key set and the [`Signer`] trait.
//!
//! Files are one line of text so they can be pasted into configs and CI secrets:
//!
//! ```text
//! NAME.key  abupdate-secret-key-v1 <64 hex digits: the 32-byte ed25519 seed>
//! NAME.pub  abupdate-public-key-v1 <64 hex digits: the 32-byte public key> [NAME]
//! ```
//!
//! A key id is the first 8 bytes of SHA-256 over the 32 public key bytes, shown as 16 hex digits.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::error::FormatError;

const SECRET_TAG: &str = "abupdate-secret-key-v1";
const PUBLIC_TAG: &str = "abupdate-public-key-v1";

/// Short identifier of a public key, stored next to each signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Anything that can sign a manifest: a key file today, an HSM or KMS later.
pub trait Signer {
    fn key_id(&self) -> KeyId;
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

/// A public key with its id and the name it was given.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: VerifyingKey,
    pub name: String,
}

impl PublicKey {
    pub fn id(&self) -> KeyId {
        key_id(self.key.as_bytes())
    }

    /// The `.pub` file's line.
    pub fn to_line(&self) -> String {
        format!(
            "{PUBLIC_TAG} {} {}\n",
            hex::encode(self.key.as_bytes()),
            self.name
        )
    }

    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let mut words = text.split_whitespace();
        if words.next() != Some(PUBLIC_TAG) {
            return Err(format!(
                "not an abupdate public key (expected '{PUBLIC_TAG}')"
            ));
        }
        let bytes = parse_hex32(words.next().unwrap_or(""))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 point")?;
        let name = words.next().unwrap_or("").to_string();
        Ok(PublicKey { key, name })
    }

    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        // verify_strict rejects malleable and small-order edge cases that plain verify allows.
        self.key.verify_strict(message, &sig).is_ok() && self.key.verify(message, &sig).is_ok()
    }
}

/// A secret signing key.
pub struct SecretKey {
    key: SigningKey,
    pub name: String,
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> SecretKey {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        SecretKey {
            key,
            name: name.to_string(),
        }
    }

    /// A key from a fixed seed: for tests and reproducible fixtures only.
    pub fn from_seed(seed: [u8; 32], name: &str) -> SecretKey {
        SecretKey {
            key: SigningKey::from_bytes(&seed),
            name: name.to_string(),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            name: self.name.clone(),
        }
    }

    pub fn to_line(&self) -> String {
        format!("{SECRET_TAG} {}\n", hex::encode(self.key.to_bytes()))
    }

    pub fn parse(text: &str, name: &str) -> Result<SecretKey, String> {
        let mut words = text.split_whitespace();
        if words.next() != Some(SECRET_TAG) {
            return Err(format!(
                "not an abupdate secret key (expected '{SECRET_TAG}')"
            ));
        }
        let seed = parse_hex32(words.next().unwrap_or(""))?;
        Ok(SecretKey::from_seed(seed, name))
    }

    /// Reads a `.key` file; the key's name is the file stem.
    pub fn load(path: &Path) -> io::Result<SecretKey> {
        let text = fs::read_to_string(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        SecretKey::parse(&text, &name).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl Signer for SecretKey {
    fn key_id(&self) -> KeyId {
        key_id(self.key.verifying_key().as_bytes())
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// The public keys a device accepts bundles from.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> TrustedKeys {
        TrustedKeys { keys }
    }

    /// Loads every `*.pub` file in `dir`. A malformed file is an error (naming it), and so
    /// is a directory with no keys: trusting nothing by accident would refuse every update.
    ///
    /// Like OpenSSH's StrictModes, the directory and every key file must be owned by root or
    /// by this process's user and not writable by group or others ([`KeysError::Unsafe`]):
    /// whoever can write there decides what this device installs. Key files must be regular
    /// files (after symlinks) of at most [`MAX_KEY_FILE_LEN`] bytes: a FIFO would hang the
    /// read, a link to a device would never end.
    pub fn load_dir(dir: &Path) -> Result<TrustedKeys, KeysError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| KeysError::Io { path, source }
        };
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        if !meta.is_dir() {
            return Err(KeysError::Unsafe(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        check_owner_and_mode(dir, &meta)?;
        let mut paths: Vec<_> = fs::read_dir(dir)
            .and_then(|d| d.collect::<io::Result<Vec<_>>>())
            .map_err(io_err(dir))?
            .into_iter()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        paths.sort();
        let mut keys = Vec::new();
        for p in paths {
            let text = read_key_file(&p)?;
            let key = PublicKey::parse(&text)
                .map_err(|e| KeysError::Invalid(format!("{}: {e}", p.display())))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeysError::Invalid(format!(
                "no trusted keys (*.pub) in {}",
                dir.display()
            )));
        }
        Ok(TrustedKeys { keys })
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks `(key id, signature)` pairs over `message`: passes if a trusted key made a
    /// valid signature and no entry under a trusted key id is bad. Signatures by keys we do
    /// not know are skipped (a bundle may be signed for several fleets), but a bad signature
    /// by a key we trust fails at once, wherever it stands in the list.
    pub fn verify(&self, message: &[u8], sigs: &[(KeyId, [u8; 64])]) -> Result<KeyId, FormatError> {
        if sigs.is_empty() {
            return Err(FormatError::NoSignature);
        }
        // Every entry under a trusted key id is checked, in order, even after a good one:
        // an entry that does not verify means the bundle was altered (docs/bundle-format.md).
        let mut good = None;
        for (id, sig) in sigs {
            let mut candidates = self.keys.iter().filter(|k| k.id() == *id).peekable();
            if candidates.peek().is_none() {
                continue;
            }
            if !candidates.any(|key| key.verify(message, sig)) {
                return Err(FormatError::BadSignature(id.to_string()));
            }
            good.get_or_insert(*id);
        }
        good.ok_or_else(|| FormatError::UntrustedKey {
            key_ids: join(sigs.iter().map(|s| s.0)),
            trusted: join(self.keys.iter().map(|k| k.id())),
        })
    }
}

/// Longest key file read: a public key line is under 200 bytes.
pub const MAX_KEY_FILE_LEN: u64 = 4096;

/// Why a trusted keys directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    /// A key file that does not parse or is too long, or no keys at all.
    #[error("{0}")]
    Invalid(String),
    /// Others could write the directory or a key file, it has a foreign owner, or a key
    /// "file" is not a regular file.
    #[error("{0}")]
    Unsafe(String),
}

/// Refuses what someone other than root or this user could have written.
fn check_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), KeysError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(KeysError::Unsafe(format!(
            "{} is owned by uid {}, not by root or this user: its keys are not trusted",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        let who = if meta.mode() & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        return Err(KeysError::Unsafe(format!(
            "{} is writable by {who} (mode {:o}): its keys are not trusted; run chmod go-w on it",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Reads one key file: regular files only, checked on the open descriptor (no race with a
/// rename), opened non-blocking so a FIFO cannot hang us, and at most MAX_KEY_FILE_LEN bytes.
fn read_key_file(path: &Path) -> Result<String, KeysError> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io_err = |source| KeysError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(KeysError::Unsafe(format!(
            "{} is {what}, not a regular file: the keys directory may hold only key files",
            path.display()
        )));
    }
    check_owner_and_mode(path, &meta)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| KeysError::Invalid(format!("{}: {e}", path.display())))?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(KeysError::Invalid(format!(
            "{}: longer than {MAX_KEY_FILE_LEN} bytes, not a public key file",
            path.display()
        )));
    }
    Ok(text)
}

fn join(ids: impl Iterator<Item = KeyId>) -> String {
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn key_id(public: &[u8; 32]) -> KeyId {
    let h = Sha256::digest(public);
    KeyId(h[..8].try_into().unwrap())
}

fn parse_hex32(s: &str) -> Result<[u8; 32], String> {
    let v = hex::decode(s).map_err(|_| "key is not hex".to_string())?;
    v.try_into()
        .map_err(|_| "key must be 32 bytes (64 hex digits)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_roundtrip_and_sign() {
        let sk = SecretKey::from_seed([7; 32], "test-only");
        let sk2 = SecretKey::parse(&sk.to_line(), "test-only").unwrap();
        let pk = PublicKey::parse(&sk.public().to_line()).unwrap();
        assert_eq!(pk.name, "test-only");
        assert_eq!(pk.id(), sk2.key_id());
        let sig = sk2.sign(b"hello");
        assert!(pk.verify(b"hello", &sig));
        assert!(!pk.verify(b"hellO", &sig));
    }

    #[test]
    fn trust_decisions() {
        let a = SecretKey::from_seed([1; 32], "a");
        let b = SecretKey::from_seed([2; 32], "b");
        let trusted = TrustedKeys::new(vec![a.public()]);
        let msg = b"manifest";
        assert!(trusted.verify(msg, &[(a.key_id(), a.sign(msg))]).is_ok());
        // An extra signature by an unknown key does not matter.
        let both = [(b.key_id(), b.sign(msg)), (a.key_id(), a.sign(msg))];
        assert!(trusted.verify(msg, &both).is_ok());
        assert!(matches!(
            trusted.verify(msg, &[(b.key_id(), b.sign(msg))]),
            Err(FormatError::UntrustedKey { .. })
        ));
        assert!(matches!(
            trusted.verify(msg, &[(a.key_id(), a.sign(b"other"))]),
            Err(FormatError::BadSignature(_))
        ));
        assert!(matches!(
            trusted.verify(msg, &[]),
            Err(FormatError::NoSignature)
        ));
    }
}
