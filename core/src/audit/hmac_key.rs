//! The audit HMAC key: what `value_hmac` is computed with.
//!
//! An investigator who holds the key and a candidate value can tell whether an entry was about
//! that value; the log alone says nothing about it. The key comes from
//! `KEYTURN_AUDIT_HMAC_KEY_FILE` (shared across installs, so HMACs compare across the fleet),
//! or, failing that, from a per-install key generated on first use (see [`KeySource`]).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::chain::ChainKey;
use crate::SecretValue;
use crate::exit::{ExitCode, HasExitCode};

/// Names the key file.
pub const KEY_FILE_ENV: &str = "KEYTURN_AUDIT_HMAC_KEY_FILE";
/// keyturn's state directory; the per-install key lives there.
pub const STATE_DIR_ENV: &str = "KEYTURN_STATE_DIR";
/// The salt [`HmacKey::chain_key`] derives the chain key with. Changing it changes every
/// chain key, so it names a version.
pub const CHAIN_KEY_LABEL: &[u8] = b"keyturn audit chain key v1";

/// File name of the per-install key inside the state directory.
pub const PER_INSTALL_KEY_FILE: &str = "audit-hmac.key";

/// Key files larger than this are refused: a key file is a few dozen bytes, and a large one is
/// almost certainly the wrong file.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Errors loading or creating the audit HMAC key. None carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read the audit HMAC key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key is shorter than [`HmacKey::MIN_LEN`] bytes.
    #[error(
        "the audit HMAC key in {path} is {len} bytes; at least {min} are needed \
         (raw bytes, or hex digits for them)",
        min = HmacKey::MIN_LEN
    )]
    TooShort {
        /// The key file.
        path: PathBuf,
        /// Key length in bytes, after hex decoding.
        len: usize,
    },
    /// The key file is larger than any key.
    #[error("{path} is {len} bytes, too large to be an audit HMAC key file")]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
    },
    /// The per-install key (or its directory) could not be created.
    #[error("cannot create the per-install audit HMAC key {path}: {source}")]
    Create {
        /// The key file being created.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No key file was given and no directory is known to keep a per-install key in.
    #[error(
        "no audit HMAC key: set {KEY_FILE_ENV}, or {STATE_DIR_ENV}, XDG_STATE_HOME or HOME \
         for a per-install key"
    )]
    NoLocation,
    /// The operating system's random source failed.
    #[error("cannot generate an audit HMAC key: the OS random source failed: {reason}")]
    Random {
        /// The OS error, as text.
        reason: String,
    },
}

impl HasExitCode for KeyError {
    /// 64 for configuration (no key, or one of the wrong size), 77 for a key file the
    /// operating system refuses, 74 for other I/O, 70 for a failed random source.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::TooShort { .. } | Self::TooLarge { .. } | Self::NoLocation => ExitCode::Usage,
            Self::Read { source, .. } | Self::Create { source, .. } => ExitCode::for_io(source),
            Self::Random { .. } => ExitCode::Software,
        }
    }
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file given by the operator: it must exist and hold a key.
    File(PathBuf),
    /// The per-install key: created (random, 32 bytes, mode 0600) on first use, then reused.
    PerInstall(PathBuf),
}

impl KeySource {
    /// Reads the process environment; see [`KeySource::from_env_with`].
    ///
    /// # Errors
    /// [`KeyError::NoLocation`] when nothing names a place for the key.
    pub fn from_env() -> Result<Self, KeyError> {
        Self::from_env_with(|name| std::env::var_os(name))
    }

    /// `KEYTURN_AUDIT_HMAC_KEY_FILE` if set; else the per-install key at
    /// `$KEYTURN_STATE_DIR/audit-hmac.key`, else `$XDG_STATE_HOME/keyturn/audit-hmac.key`,
    /// else `$HOME/.local/state/keyturn/audit-hmac.key`. Empty variables count as unset.
    ///
    /// # Errors
    /// [`KeyError::NoLocation`] when none of those is set.
    pub fn from_env_with(get: impl Fn(&str) -> Option<OsString>) -> Result<Self, KeyError> {
        let get = |name: &str| get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(file) = get(KEY_FILE_ENV) {
            return Ok(Self::File(file));
        }
        let dir = get(STATE_DIR_ENV)
            .or_else(|| get("XDG_STATE_HOME").map(|d| d.join("keyturn")))
            .or_else(|| get("HOME").map(|d| d.join(".local/state/keyturn")))
            .ok_or(KeyError::NoLocation)?;
        Ok(Self::PerInstall(dir.join(PER_INSTALL_KEY_FILE)))
    }
}

/// The audit HMAC key. Zeroized on drop; `Debug` shows only [`HmacKey::id`].
pub struct HmacKey(SecretValue);

impl HmacKey {
    /// The shortest key accepted, in bytes (HMAC-SHA256's output size).
    pub const MIN_LEN: usize = 32;

    /// Loads the key from `source`. For [`KeySource::PerInstall`] this creates the key on first
    /// use and logs a warning either way, naming the file: HMACs made with a per-install key
    /// cannot be compared with another install's.
    ///
    /// # Errors
    /// See [`HmacKey::load`] and [`HmacKey::load_or_create`].
    pub fn from_source(source: &KeySource) -> Result<Self, KeyError> {
        match source {
            KeySource::File(path) => Self::load(path),
            KeySource::PerInstall(path) => {
                let (key, created) = Self::load_or_create(path)?;
                let verb = if created { "generated" } else { "using" };
                tracing::warn!(
                    path = %path.display(),
                    key_id = %key.id(),
                    "no {KEY_FILE_ENV} given: {verb} the per-install audit HMAC key at {}; \
                     value_hmac in this install's audit log can only be compared with this \
                     install's",
                    path.display(),
                );
                Ok(key)
            }
        }
    }

    /// [`KeySource::from_env`], then [`HmacKey::from_source`].
    ///
    /// # Errors
    /// As those.
    pub fn from_env() -> Result<Self, KeyError> {
        Self::from_source(&KeySource::from_env()?)
    }

    /// Loads a key file. The content is hex when, less surrounding whitespace, it is an even
    /// number of hex digits; otherwise it is the raw bytes, all of them. Either way the key must
    /// be at least [`HmacKey::MIN_LEN`] bytes.
    ///
    /// # Errors
    /// [`KeyError::Read`], [`KeyError::TooLarge`], [`KeyError::TooShort`], each naming `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        if len > MAX_KEY_FILE_LEN {
            return Err(KeyError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        // Sized up front so the buffer never reallocates and leaves a copy behind.
        let mut content = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
        (&mut file)
            .take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut content)
            .map_err(read_err)?;
        let bytes = decode(&content);
        if bytes.len() < Self::MIN_LEN {
            return Err(KeyError::TooShort {
                path: path.to_owned(),
                len: bytes.len(),
            });
        }
        Ok(Self(SecretValue::new(bytes.to_vec())))
    }

    /// Loads the key at `path`, or creates it (32 random bytes, written as hex, mode 0600,
    /// parent directories 0700) if there is none. Returns whether it was created.
    ///
    /// Creation is atomic: the key is written to a temporary file and hard-linked into place,
    /// so two processes starting at once end up with the same key.
    ///
    /// # Errors
    /// [`KeyError::Create`], or those of [`HmacKey::load`].
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other.map(|k| (k, false)),
        }
        let key = Self::generate()?;
        match key.publish(path) {
            Ok(()) => Ok((key, true)),
            // Someone else created it first: theirs is the key.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((Self::load(path)?, false)),
            Err(source) => Err(KeyError::Create {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// A fresh random key of [`HmacKey::MIN_LEN`] bytes, from the OS random source.
    ///
    /// # Errors
    /// [`KeyError::Random`] when the OS cannot provide randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new(vec![0u8; Self::MIN_LEN]);
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| KeyError::Random {
                reason: e.to_string(),
            })?;
        Ok(Self(SecretValue::new(bytes.to_vec())))
    }

    /// Hex HMAC-SHA256 of `value`'s bytes under this key.
    #[must_use]
    pub fn hmac_hex(&self, value: &SecretValue) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose())
            .expect("HMAC takes keys of any length");
        mac.update(value.expose());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The key the audit chain's MACs are made with (see [`chain`](super::chain)), derived from
    /// this key.
    ///
    /// Derived, not this key itself, because `value_hmac` is HMAC under this key of any value
    /// keyturn reads: used raw, the chain's MACs would be HMACs of 32-byte strings under the
    /// same key, and a secret value that happened to be an entry's hash would make its
    /// `value_hmac` that entry's MAC. The derivation is HKDF-Extract (RFC 5869 §2.2) with
    /// [`CHAIN_KEY_LABEL`] as salt: HMAC keyed by the label, over this key. No `value_hmac`
    /// (HMAC keyed by this key) can equal it, and it says nothing about this key.
    #[must_use]
    pub fn chain_key(&self) -> ChainKey {
        ChainKey::new(self.chain_key_bytes().as_slice(), self.id())
    }

    fn chain_key_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(CHAIN_KEY_LABEL)
            .expect("HMAC takes keys of any length");
        mac.update(self.0.expose());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// A key with these bytes, for tests that need two known keys.
    #[cfg(test)]
    pub(crate) fn from_bytes_for_test(bytes: &[u8]) -> Self {
        Self(SecretValue::new(bytes.to_vec()))
    }

    /// Another handle on the same key, for tests that open several logs with it.
    #[cfg(test)]
    pub(crate) fn clone_for_test(&self) -> Self {
        Self(SecretValue::new(self.0.expose().to_vec()))
    }

    /// The derived chain key's bytes, for tests that check the derivation.
    #[cfg(test)]
    pub(crate) fn chain_key_bytes_for_test(&self) -> [u8; 32] {
        *self.chain_key_bytes()
    }

    /// A short, non-secret fingerprint of the key, to tell keys apart in logs: the first 8 bytes
    /// of SHA-256 over a fixed label and the key, in hex. It reveals nothing usable about the
    /// key.
    #[must_use]
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"keyturn audit hmac key id\0");
        h.update(self.0.expose());
        hex::encode(&h.finalize()[..8])
    }

    /// Writes the key as hex to a private temporary file, then links it to `path`, which fails
    /// with `AlreadyExists` rather than replace a key someone else made.
    fn publish(&self, path: &Path) -> io::Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // create_new with 0600 is subject to the umask, which can only remove bits; set it
            // explicitly anyway so the mode does not depend on that reasoning.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            // Encoded straight into zeroizing storage of the final size: no stray copies.
            let key = self.0.expose();
            let mut text = Zeroizing::new(vec![b'\n'; 2 * key.len() + 1]);
            hex::encode_to_slice(key, &mut text[..2 * key.len()]).map_err(io::Error::other)?;
            f.write_all(&text)?;
            f.sync_all()?;
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        result?;
        File::open(dir)?.sync_all()
    }
}

/// Hex when the trimmed content is an even number of hex digits, else the raw bytes.
fn decode(content: &[u8]) -> Zeroizing<Vec<u8>> {
    let trimmed = content.trim_ascii();
    if !trimmed.is_empty()
        && trimmed.len().is_multiple_of(2)
        && trimmed.iter().all(u8::is_ascii_hexdigit)
    {
        let mut out = Zeroizing::new(vec![0u8; trimmed.len() / 2]);
        if hex::decode_to_slice(trimmed, &mut out).is_ok() {
            return out;
        }
    }
    Zeroizing::new(content.to_vec())
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HmacKey(id {})", self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_key_file_variable_wins_over_every_default() {
        let s = KeySource::from_env_with(env(&[
            (KEY_FILE_ENV, "/etc/keyturn/k"),
            (STATE_DIR_ENV, "/var/lib/keyturn"),
        ]))
        .unwrap();
        assert_eq!(s, KeySource::File("/etc/keyturn/k".into()));
    }

    #[test]
    fn the_per_install_key_goes_to_the_state_dir_then_xdg_then_home() {
        let at = |vars| match KeySource::from_env_with(env(vars)).unwrap() {
            KeySource::PerInstall(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            at(&[
                (STATE_DIR_ENV, "/s"),
                ("XDG_STATE_HOME", "/x"),
                ("HOME", "/h")
            ]),
            PathBuf::from("/s/audit-hmac.key")
        );
        assert_eq!(
            at(&[
                (STATE_DIR_ENV, ""),
                ("XDG_STATE_HOME", "/x"),
                ("HOME", "/h")
            ]),
            PathBuf::from("/x/keyturn/audit-hmac.key")
        );
        assert_eq!(
            at(&[("HOME", "/h")]),
            PathBuf::from("/h/.local/state/keyturn/audit-hmac.key")
        );
        assert!(matches!(
            KeySource::from_env_with(env(&[])),
            Err(KeyError::NoLocation)
        ));
    }

    #[test]
    fn the_per_install_key_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/keyturn/audit-hmac.key");
        let (first, created) = HmacKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let (second, created) = HmacKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.id(), second.id());
        let v = SecretValue::from_str_copy("v");
        assert_eq!(first.hmac_hex(&v), second.hmac_hex(&v));
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_key_file_may_hold_hex_or_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let raw_path = dir.path().join("raw");
        fs::write(&raw_path, &raw).unwrap();
        let hex_path = dir.path().join("hex");
        fs::write(&hex_path, format!("  {}\n", hex::encode_upper(&raw))).unwrap();
        let a = HmacKey::load(&raw_path).unwrap();
        let b = HmacKey::load(&hex_path).unwrap();
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn a_short_key_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.key");
        fs::write(&path, "00112233").unwrap();
        let e = HmacKey::load(&path).unwrap_err();
        assert!(matches!(e, KeyError::TooShort { len: 4, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("at least 32"), "{msg}");
        assert_eq!(e.exit_code(), 64);
    }

    #[test]
    fn a_missing_key_file_is_an_error_naming_it() {
        let e =
            HmacKey::from_source(&KeySource::File("/nonexistent/keyturn.key".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/keyturn.key"), "{e}");
        assert_eq!(e.exit_code(), 74);
    }

    #[test]
    fn the_hmac_is_hmac_sha256_of_the_value() {
        // RFC 4231 test case 2 uses a short key, so check against a direct computation.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, [7u8; 32]).unwrap();
        let key = HmacKey::load(&path).unwrap();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"what do ya want for nothing?");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            key.hmac_hex(&SecretValue::from_str_copy("what do ya want for nothing?")),
            want
        );
    }

    #[test]
    fn debug_shows_the_key_id_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, [0xabu8; 32]).unwrap();
        let key = HmacKey::load(&path).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&key.id()));
    }
}
