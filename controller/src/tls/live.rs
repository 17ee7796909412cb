//! The controller's TLS configuration: built in one place, swapped
//! atomically on reload, renewal or SIGHUP, so new handshakes use the new
//! identity while open connections keep theirs.
//!
//! Policy: TLS 1.2 and 1.3 only (1.3 only with `--tls-min-version 1.3`),
//! rustls's default suites (AEAD, forward secrecy), ALPN `h2`. A client may
//! present a certificate chaining to the controller's CA or to a
//! `--client-ca` bundle; presenting none is allowed at this layer (tokens
//! authenticate too) and decided by [`crate::auth`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::fsio;
use crate::paths;
use crate::tls::ca::{check_key, Ca, PkiError};
use crate::tls::crypto;
use crate::tls::names::server_sans;
use crate::tls::x509::{fingerprint, read_chain, read_key, renew_at, sans_of, validity};

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// Issued by the controller's own CA into `<data-dir>/tls/`, renewed
    /// automatically. `sans` are the extra names it carries.
    Generated {
        /// Extra SANs (`--san`).
        sans: Vec<String>,
    },
    /// Operator-provided PEM files (`--tls-cert`, `--tls-key`), reloaded when
    /// they change and on SIGHUP.
    Files {
        /// The certificate chain (`--tls-cert`).
        cert: PathBuf,
        /// Its private key (`--tls-key`).
        key: PathBuf,
    },
}

/// The lowest protocol version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
}

/// Everything the TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// `<data-dir>/tls`.
    pub dir: PathBuf,
    /// Where the server certificate comes from.
    pub source: IdentitySource,
    /// The lowest protocol version accepted.
    pub min_version: MinVersion,
    /// Extra CA bundles trusted for client certificates.
    pub client_cas: Vec<PathBuf>,
}

/// What a built configuration presents.
#[derive(Debug, Clone)]
pub struct Presented {
    /// Fingerprint of the root of the presented chain (what clients pin).
    pub root_fingerprint: String,
    /// When the leaf should be renewed (generated identities only).
    pub renew_at: Option<SystemTime>,
    /// When the presented (leaf) certificate expires, if it could be read.
    pub not_after: Option<SystemTime>,
}

/// The live TLS configuration.
pub struct Tls {
    options: TlsOptions,
    ca_der: CertificateDer<'static>,
    config: ArcSwap<ServerConfig>,
    presented: ArcSwap<Presented>,
}

impl Tls {
    /// Builds the first configuration; any problem stops start-up.
    pub fn load(options: TlsOptions, ca: &Ca) -> Result<Self, PkiError> {
        if let IdentitySource::Generated { sans } = &options.source {
            ensure_server_cert(ca, &options.dir, sans, SystemTime::now())?;
        }
        let (config, presented) = build(&options, &ca.cert_der)?;
        write_pinned_root(&options, &presented)?;
        Ok(Self {
            options,
            ca_der: ca.cert_der.clone(),
            config: ArcSwap::from_pointee(config),
            presented: ArcSwap::from_pointee(presented),
        })
    }

    /// The configuration for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// What the current configuration presents.
    pub fn presented(&self) -> Arc<Presented> {
        self.presented.load_full()
    }

    /// What the configuration is built from.
    pub fn options(&self) -> &TlsOptions {
        &self.options
    }

    /// Rebuilds from the files and swaps it in; on any error the old
    /// configuration stays and the error is returned.
    pub fn reload(&self) -> Result<(), PkiError> {
        let (config, presented) = build(&self.options, &self.ca_der)?;
        write_pinned_root(&self.options, &presented)?;
        self.config.store(Arc::new(config));
        self.presented.store(Arc::new(presented));
        Ok(())
    }

    /// Renews a generated server certificate if it is due, then reloads.
    /// Returns whether it renewed.
    pub fn renew_if_due(&self, ca: &Ca, now: SystemTime) -> Result<bool, PkiError> {
        let IdentitySource::Generated { sans } = &self.options.source else {
            return Ok(false);
        };
        let renewed = ensure_server_cert(ca, &self.options.dir, sans, now)?;
        if renewed {
            self.reload()?;
        }
        Ok(renewed)
    }
}

/// Issues `<dir>/server.crt` and `server.key` if missing, due for renewal or
/// not carrying `sans`. Returns whether it issued.
fn ensure_server_cert(
    ca: &Ca,
    dir: &Path,
    extra_sans: &[String],
    now: SystemTime,
) -> Result<bool, PkiError> {
    let (cert_path, key_path) = (dir.join(paths::SERVER_CERT), dir.join(paths::SERVER_KEY));
    let wanted = server_sans(extra_sans);
    let current = read_chain(&cert_path)
        .ok()
        .and_then(|chain| chain.into_iter().next());
    let fresh = current.as_ref().is_some_and(|leaf| {
        let due = validity(leaf)
            .map(|(nb, na)| renew_at(nb, na) <= now)
            .unwrap_or(true);
        let mut have = sans_of(leaf);
        let mut want = wanted.clone();
        have.sort();
        want.sort();
        !due && have == want && pair_matches(&cert_path, &key_path)
    });
    if fresh {
        return Ok(false);
    }
    let (chain, key) = ca.issue_server(&wanted)?;
    fsio::replace(&key_path, key.as_bytes(), 0o600)?;
    fsio::replace(&cert_path, chain.as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), sans = ?wanted, "issued a server certificate");
    Ok(true)
}

/// Whether a certificate file and a key file belong together (a crash
/// between writing the two can leave them apart).
fn pair_matches(cert: &Path, key: &Path) -> bool {
    let provider = crypto::provider();
    match (read_chain(cert), read_key(key)) {
        (Ok(chain), Ok(key)) => CertifiedKey::from_der(chain, key, &provider).is_ok(),
        _ => false,
    }
}

/// Records the root clients pin, so `berthd fingerprint` can read it while
/// the controller runs.
fn write_pinned_root(options: &TlsOptions, presented: &Presented) -> Result<(), PkiError> {
    Ok(fsio::replace(
        &options.dir.join(FINGERPRINT_FILE),
        format!("{}\n", presented.root_fingerprint).as_bytes(),
        0o644,
    )?)
}

fn build(
    options: &TlsOptions,
    ca_der: &CertificateDer<'static>,
) -> Result<(ServerConfig, Presented), PkiError> {
    let provider = crypto::provider();
    let (cert_path, key_path) = match &options.source {
        IdentitySource::Generated { .. } => (
            options.dir.join(paths::SERVER_CERT),
            options.dir.join(paths::SERVER_KEY),
        ),
        IdentitySource::Files { cert, key } => (cert.clone(), key.clone()),
    };
    match &options.source {
        // An operator's key may be reached through links (certbot's `live/`
        // holds links): the file they lead to is checked.
        IdentitySource::Files { .. } => {
            check_key(&std::fs::canonicalize(&key_path).map_err(fsio::at(&key_path))?)?
        }
        IdentitySource::Generated { .. } => check_key(&key_path)?,
    }
    let chain = read_chain(&cert_path)?;
    let key = read_key(&key_path)?;
    let certified =
        CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| PkiError::Invalid {
            path: key_path.clone(),
            problem: format!(
                "does not match the certificate in {} ({e})",
                cert_path.display()
            ),
        })?;
    let root = chain.last().unwrap_or(&chain[0]);
    let renew_at = match &options.source {
        IdentitySource::Generated { .. } => validity(&chain[0]).map(|(nb, na)| renew_at(nb, na)),
        IdentitySource::Files { .. } => None,
    };

    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone()).map_err(|e| PkiError::Invalid {
        path: options.dir.join(paths::CA_CERT),
        problem: format!("the controller's CA is not usable as a trust anchor: {e}"),
    })?;
    for bundle in &options.client_cas {
        for cert in read_chain(bundle)? {
            roots.add(cert).map_err(|e| PkiError::Invalid {
                path: bundle.clone(),
                problem: format!("holds a certificate that is not a usable CA: {e}"),
            })?;
        }
    }
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Setting {
                setting: "--client-ca",
                problem: format!("cannot build the client-certificate verifier: {e}"),
            })?;

    let versions: &[&rustls::SupportedProtocolVersion] = match options.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| PkiError::Setting {
            setting: "--tls-min-version",
            problem: e.to_string(),
        })?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let presented = Presented {
        root_fingerprint: fingerprint(root),
        renew_at,
        not_after: validity(&chain[0]).map(|(_, na)| na),
    };
    Ok((config, presented))
}

/// Presents one certificate; the whole [`ServerConfig`] is swapped to
/// change it.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The file in `<data-dir>/tls/` holding the fingerprint clients pin.
pub const FINGERPRINT_FILE: &str = paths::FINGERPRINT;

/// The fingerprint clients pin, for `berthd fingerprint`: what the running
/// (or last) controller recorded, else the CA's. Reads files only, so it
/// works while the controller runs.
pub fn pinned_fingerprint(tls_dir: &Path) -> Result<String, PkiError> {
    let recorded = tls_dir.join(FINGERPRINT_FILE);
    if let Ok(text) = std::fs::read_to_string(&recorded) {
        let fp = text.trim();
        if !fp.is_empty() {
            return Ok(fp.to_owned());
        }
    }
    let ca = tls_dir.join(paths::CA_CERT);
    let chain = read_chain(&ca)?;
    Ok(fingerprint(&chain[0]))
}

/// How often operator-provided files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps the configuration current until the returned task is aborted:
/// reloads on SIGHUP and when operator-provided files change, and renews a
/// generated certificate when due. Failures are logged and the old identity
/// keeps serving.
pub fn spawn_maintenance(tls: Arc<Tls>, ca: Arc<Ca>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let files: Vec<PathBuf> = match &tls.options().source {
            IdentitySource::Files { cert, key } => vec![cert.clone(), key.clone()],
            IdentitySource::Generated { .. } => vec![],
        }
        .into_iter()
        .chain(tls.options().client_cas.iter().cloned())
        .collect();
        let mut stamps = stamps_of(&files);
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reason = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = stamps_of(&files);
                    if now != stamps {
                        stamps = now;
                        "changed files"
                    } else {
                        if let Err(e) = tls.renew_if_due(&ca, SystemTime::now()) {
                            tracing::error!(error = %e, "renewing the server certificate failed; the current one keeps serving");
                        }
                        continue;
                    }
                }
            };
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(reason, fingerprint = %tls.presented().root_fingerprint, "reloaded the TLS identity")
                }
                Err(e) => {
                    tracing::error!(reason, error = %e, "refused the new TLS identity; the old one keeps serving")
                }
            }
        }
    })
}

type Stamp = Option<(SystemTime, u64)>;

fn stamps_of(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_renew_at_two_thirds_under_the_same_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_dir = dir.path().join("tls");
        let ca = Ca::load_or_create(&tls_dir).expect("ca");
        let tls = Tls::load(
            TlsOptions {
                dir: tls_dir.clone(),
                source: IdentitySource::Generated { sans: vec![] },
                min_version: MinVersion::Tls12,
                client_cas: vec![],
            },
            &ca,
        )
        .expect("load");
        let pin = tls.presented().root_fingerprint.clone();
        let leaf = |p: &Path| read_chain(&p.join(paths::SERVER_CERT)).expect("chain")[0].clone();
        let first = leaf(&tls_dir);
        let renew_at = tls.presented().renew_at.expect("renewal time");

        // Before two thirds of its life: nothing happens.
        assert!(!tls
            .renew_if_due(&ca, renew_at - Duration::from_secs(60))
            .expect("check"));
        assert_eq!(leaf(&tls_dir), first);
        // After: a new leaf under the same CA, so the pin is unchanged.
        assert!(tls
            .renew_if_due(&ca, renew_at + Duration::from_secs(60))
            .expect("renew"));
        assert_ne!(leaf(&tls_dir), first);
        assert_eq!(tls.presented().root_fingerprint, pin);
        let (nb, na) = validity(&leaf(&tls_dir)).expect("validity");
        let life = na.duration_since(nb).expect("life");
        assert!(
            life >= crate::tls::ca::SERVER_LIFETIME,
            "about 90 days: {life:?}"
        );
    }

    #[test]
    fn a_key_that_does_not_match_is_refused_and_the_old_identity_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_dir = dir.path().join("tls");
        let ca = Ca::load_or_create(&tls_dir).expect("ca");
        let (chain, key) = ca.issue_server(&server_sans(&[])).expect("issue");
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        fsio::replace(&cert_path, chain.as_bytes(), 0o644).expect("cert");
        fsio::replace(&key_path, key.as_bytes(), 0o600).expect("key");
        let tls = Tls::load(
            TlsOptions {
                dir: tls_dir,
                source: IdentitySource::Files {
                    cert: cert_path,
                    key: key_path.clone(),
                },
                min_version: MinVersion::Tls13,
                client_cas: vec![],
            },
            &ca,
        )
        .expect("load");
        let before = tls.presented().root_fingerprint.clone();
        let (_, other_key) = ca.issue_server(&server_sans(&[])).expect("issue");
        fsio::replace(&key_path, other_key.as_bytes(), 0o600).expect("key");
        let err = tls.reload().expect_err("mismatched key refused");
        assert!(err.to_string().contains("does not match"), "{err}");
        assert_eq!(tls.presented().root_fingerprint, before);
    }
}
