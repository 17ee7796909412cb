//! Trust on first use: fingerprints, the sled trust store (the client's
//! `known_hosts`), and the certificate verifier that enforces a pin.
//!
//! A pin is the SHA-256 of the DER of the *root* of the chain the controller
//! presents (its CA), so certificate renewal under the same CA never disturbs
//! it. A pin replaces host-name checking, never cryptography: the handshake
//! signature and the chain up to the pinned certificate (signatures,
//! validity dates, serverAuth) are still verified.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::pin_cache;

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// A string that is not a fingerprint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{input:?} is not a SHA-256 fingerprint: expected 64 hex digits, with or without colons and an optional `sha256:` prefix")]
pub struct BadFingerprint {
    input: String,
}

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    /// Accepts any case, with or without colons, with or without `sha256:`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint {
            input: s.chars().take(120).collect(),
        };
        let t = s.trim();
        let t = if t.len() >= 7 && t[..7].eq_ignore_ascii_case("sha256:") {
            &t[7..]
        } else {
            t
        };
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    /// Uppercase colon-separated hex, as `openssl x509 -fingerprint -sha256`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Where a pin came from (shown when it does not match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `--fingerprint` on the command line.
    Flag,
    /// A `fingerprint =` line in this client config file.
    Config(PathBuf),
    /// The trust store at this path (saved after a prompt or `berth trust add`).
    Store(PathBuf),
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("the --fingerprint option"),
            Self::Config(p) => write!(f, "the client config {}", p.display()),
            Self::Store(p) => write!(f, "the trust store {}", p.display()),
        }
    }
}

/// What the handshake showed: the root the controller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The fingerprint of the root of the presented chain.
    pub root: Fingerprint,
}

/// Enforces a pin (or, with none, only observes what is presented and
/// refuses: first contact is decided by a person, not here).
#[derive(Debug)]
pub struct PinVerifier {
    expected: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
    observed: Mutex<Option<Observed>>,
}

impl PinVerifier {
    /// A verifier accepting only a chain whose root has `expected`.
    pub fn pinned(expected: Fingerprint, provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected: Some(expected),
            provider,
            observed: Mutex::new(None),
        }
    }

    /// A verifier that accepts nothing and records what was presented.
    pub fn observe_only(provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected: None,
            provider,
            observed: Mutex::new(None),
        }
    }

    /// What the last handshake presented.
    pub fn observed(&self) -> Option<Observed> {
        self.observed.lock().ok().and_then(|o| *o)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates.last().unwrap_or(end_entity);
        let observed = Observed {
            root: Fingerprint::of(root),
        };
        if let Ok(mut slot) = self.observed.lock() {
            *slot = Some(observed);
        }
        match self.expected {
            Some(expected) if expected == observed.root => {}
            // Unknown or changed: refuse; the caller reads `observed`.
            _ => {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
        // The pin names the trust anchor; the chain below it must still be
        // cryptographically valid and current, for serverAuth.
        let anchor = webpki::anchor_from_trusted_cert(root)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        leaf.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &[anchor],
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::InvalidCertificate(webpki_error(e)))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn webpki_error(e: webpki::Error) -> CertificateError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    }
}

/// Errors of the trust store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened (or created).
    #[error("cannot open the trust store {path}: {source}")]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// The database error.
        source: sled::Error,
    },
    /// A read or write of the store failed.
    #[error("trust store {path}: {source}")]
    Db {
        /// The store's directory.
        path: PathBuf,
        /// The database error.
        source: sled::Error,
    },
    /// An entry is not a fingerprint.
    #[error("trust store {path} holds a corrupt entry for {host}")]
    Corrupt {
        /// The store's directory.
        path: PathBuf,
        /// The controller whose entry is corrupt.
        host: String,
    },
    /// Neither `XDG_DATA_HOME` nor `HOME` is set.
    #[error("cannot find the trust store: set XDG_DATA_HOME or HOME")]
    NoLocation,
}

/// The default trust store location: `$XDG_DATA_HOME/berth/trust` or
/// `~/.local/share/berth/trust`.
pub fn default_store_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("berth").join("trust"))
}

/// Whether opening failed because another process holds the database. sled
/// 0.34 reports a held lock as `ErrorKind::Other` with the OS error in the
/// message, not as `WouldBlock`.
fn is_locked(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// The client's pinned controllers, `HOST:PORT` -> fingerprint, in sled.
///
/// sled holds an exclusive lock on an open database, and scripts run many
/// `berth` commands at once: the store is opened only when needed, retried
/// with a short backoff while another process holds it, and closed at once.
/// Reads are served from the pin cache beside the store when it is current
/// ([`crate::pin_cache`]), without opening sled at all; the first write
/// opens it.
pub struct TrustStore {
    path: PathBuf,
    /// The pins as the cache holds them, when it was current at open.
    cached: Option<BTreeMap<String, Fingerprint>>,
    /// sled, once opened (at open when the cache was not current, or by the
    /// first write). Reads go to it whenever it is open.
    db: OnceLock<sled::Db>,
}

/// How long to keep retrying a locked store.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens (creating) the sled database at `path`, waiting up to
/// [`LOCK_WAIT`] while another process holds it.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut backoff = Duration::from_millis(2);
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(256 * 1024)
            .flush_every_ms(None)
            .mode(sled::Mode::LowSpace)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if is_locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

impl TrustStore {
    /// Opens (creating) the store at `path`: from its pin cache when that is
    /// current, else from sled (whose pins then refresh the cache).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(cached) = pin_cache::read(path) {
            return Ok(Self {
                path: path.to_owned(),
                cached: Some(cached),
                db: OnceLock::new(),
            });
        }
        let store = Self {
            path: path.to_owned(),
            cached: None,
            db: OnceLock::from(open_db(path)?),
        };
        // Best effort: without a cache the next command reads sled again.
        if let Ok(pins) = store.list() {
            let _ = pin_cache::write(path, &pins);
        }
        Ok(store)
    }

    /// Opens the store at its default location.
    pub fn open_default() -> Result<Self, StoreError> {
        Self::open(&default_store_path().ok_or(StoreError::NoLocation)?)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// sled, opened now if it is not yet.
    fn db(&self) -> Result<&sled::Db, StoreError> {
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let db = open_db(&self.path)?;
        Ok(self.db.get_or_init(|| db))
    }

    /// Runs a write on sled with the cache protocol of [`crate::pin_cache`]:
    /// the cache goes first, sled changes and is flushed, then the cache is
    /// written again from sled.
    fn write<T>(&self, change: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T, StoreError> {
        let db = self.db()?;
        pin_cache::invalidate(&self.path).map_err(|e| StoreError::Db {
            path: self.path.clone(),
            source: sled::Error::Io(e),
        })?;
        let out = change(db).map_err(self.db_err())?;
        db.flush().map_err(self.db_err())?;
        if let Ok(pins) = self.list() {
            let _ = pin_cache::write(&self.path, &pins);
        }
        Ok(out)
    }

    /// The pin for `host`, if any.
    pub fn get(&self, host: &str) -> Result<Option<Fingerprint>, StoreError> {
        let db = match (self.db.get(), &self.cached) {
            (Some(db), _) => db,
            (None, Some(cached)) => return Ok(cached.get(host).copied()),
            (None, None) => self.db()?,
        };
        match db.get(host.as_bytes()).map_err(self.db_err())? {
            None => Ok(None),
            Some(raw) => std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    path: self.path.clone(),
                    host: host.to_owned(),
                }),
        }
    }

    /// Pins `host` and makes it durable before returning.
    pub fn add(&self, host: &str, fingerprint: Fingerprint) -> Result<(), StoreError> {
        self.write(|db| db.insert(host.as_bytes(), fingerprint.to_string().as_bytes()))?;
        Ok(())
    }

    /// Removes the pin for `host`; returns whether there was one.
    pub fn remove(&self, host: &str) -> Result<bool, StoreError> {
        Ok(self.write(|db| db.remove(host.as_bytes()))?.is_some())
    }

    /// Every pin, sorted by host.
    pub fn list(&self) -> Result<Vec<(String, Fingerprint)>, StoreError> {
        let db = match (self.db.get(), &self.cached) {
            (Some(db), _) => db,
            (None, Some(cached)) => {
                return Ok(cached.iter().map(|(h, fp)| (h.clone(), *fp)).collect())
            }
            (None, None) => self.db()?,
        };
        let mut out = Vec::new();
        for entry in db.iter() {
            let (k, _) = entry.map_err(self.db_err())?;
            let host = String::from_utf8_lossy(&k).into_owned();
            if let Some(fp) = self.get(&host)? {
                out.push((host, fp));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_spelling() {
        let canonical = Fingerprint::of(b"x").to_string();
        let bare = canonical.replace(':', "");
        for spelling in [
            canonical.clone(),
            canonical.to_lowercase(),
            bare.clone(),
            format!("sha256:{bare}"),
            format!("SHA256:{}", canonical.to_lowercase()),
        ] {
            assert_eq!(
                spelling
                    .parse::<Fingerprint>()
                    .expect(&spelling)
                    .to_string(),
                canonical
            );
        }
        for bad in ["", "zz", &bare[..62], &format!("{bare}00"), "sha1:abcd"] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_held_store_is_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trust");
        let held = TrustStore::open(&path).expect("open");
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                // A write needs sled itself (a read could use the cache).
                TrustStore::open(&path)
                    .and_then(|store| store.add("h:1", Fingerprint::of(b"ca")))
                    .map(|_| started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        drop(held);
        let waited = waiter
            .join()
            .expect("thread")
            .expect("opened once released");
        assert!(
            waited >= Duration::from_millis(150),
            "it did not wait for the lock ({waited:?})"
        );
    }

    /// Reads come from the cache without sled's lock, and a pin removed by
    /// a writer is never served from it afterwards.
    #[test]
    fn reads_skip_sled_and_never_see_a_removed_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trust");
        let fp = Fingerprint::of(b"ca");
        // The writer keeps sled open (and locked) throughout.
        let writer = TrustStore::open(&path).expect("open");
        writer.add("h:1", fp).expect("add");
        let reader = TrustStore::open(&path).expect("a read does not need the lock");
        assert!(reader.db.get().is_none(), "the read opened sled");
        assert_eq!(reader.get("h:1").expect("get"), Some(fp));
        assert_eq!(reader.list().expect("list"), vec![("h:1".to_owned(), fp)]);
        assert!(writer.remove("h:1").expect("remove"));
        let after = TrustStore::open(&path).expect("open");
        assert!(after.db.get().is_none(), "the cache was not rewritten");
        assert_eq!(
            after.get("h:1").expect("get"),
            None,
            "a removed pin was served"
        );
    }

    /// A store changed by something that ignores the cache (an older
    /// `berth`) is read from sled, not from the stale cache.
    #[test]
    fn a_store_changed_behind_the_cache_is_read_from_sled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trust");
        TrustStore::open(&path)
            .expect("open")
            .add("old:1", Fingerprint::of(b"old"))
            .expect("add");
        {
            let db = open_db(&path).expect("sled");
            db.insert("new:1", Fingerprint::of(b"new").to_string().as_bytes())
                .expect("insert");
            db.flush().expect("flush");
        }
        let store = TrustStore::open(&path).expect("open");
        assert!(store.db.get().is_some(), "a stale cache was believed");
        assert_eq!(
            store.get("new:1").expect("get"),
            Some(Fingerprint::of(b"new"))
        );
    }

    #[test]
    fn store_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TrustStore::open(&dir.path().join("trust")).expect("open");
        let fp = Fingerprint::of(b"ca");
        store.add("h:1", fp).expect("add");
        assert_eq!(store.get("h:1").expect("get"), Some(fp));
        assert_eq!(store.list().expect("list").len(), 1);
        assert!(store.remove("h:1").expect("remove"));
        assert_eq!(store.get("h:1").expect("get"), None);
    }
}
