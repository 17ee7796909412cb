//! The controller's own PKI: its CA, the server certificate it issues
//! itself, and the files they live in.
//!
//! ```text
//! <data-dir>/tls/ca.crt       the CA certificate: what clients pin (0644)
//! <data-dir>/tls/ca.key       its private key                      (0600)
//! <data-dir>/tls/server.crt   server certificate + CA (the chain)   (0644)
//! <data-dir>/tls/server.key   its private key                      (0600)
//! ```
//!
//! The CA is ECDSA P-256, `CA:TRUE, pathlen:0`, keyCertSign + cRLSign, ten
//! years. The server certificate is ECDSA P-256, serverAuth, 90 days, with the
//! SANs `localhost`, `127.0.0.1`, `::1`, the host name and each `--san`; it is
//! renewed under the same CA at two thirds of its life, so pins (on the CA)
//! never change.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::paths;

/// Lifetime of the generated CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated server certificate.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates are back-dated this much against clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Errors of the controller's PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Data(#[from] paths::DataDirError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// SHA-256 of a certificate's DER as uppercase colon-separated hex: exactly
/// what `openssl x509 -noout -fingerprint -sha256` prints after the `=`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes a new private-key file: created exclusively with mode 0600, so it
/// is never readable by others, not even for a moment. Fails if it exists.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Replaces `path` atomically with a file of mode `mode` holding `bytes`.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Refuses a private-key file that is a symbolic link, is owned by another
/// user or that group or others can read ([`paths::check_private`]).
pub fn check_private(path: &Path) -> Result<(), PkiError> {
    Ok(paths::check_private(path, paths::Private::Key)?)
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// A random positive 128-bit serial number.
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

/// 16 random bytes from the OS (through ring, already in the tree).
pub fn rand_bytes<const N: usize>() -> [u8; N] {
    use rustls::crypto::ring::default_provider;
    let mut out = [0u8; N];
    // ring's SystemRandom only fails if the OS has no randomness at all.
    if default_provider().secure_random.fill(&mut out).is_err() {
        panic!("the operating system's random number generator failed");
    }
    out
}

/// Reads a PEM certificate chain.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let chain: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| PkiError::Invalid {
            path: path.to_owned(),
            problem: format!("cannot read PEM certificates: {e}"),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Invalid {
            path: path.to_owned(),
            problem: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(PkiError::Invalid {
            path: path.to_owned(),
            problem: "holds no CERTIFICATE block".into(),
        });
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| PkiError::Invalid {
        path: path.to_owned(),
        problem: format!("not a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
    })
}

/// The controller's certificate authority.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl Ca {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        paths::create_private_dir(dir)?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        // The key is written first (exclusively, 0600), the certificate
        // second: a crash between the two leaves a key without a certificate,
        // which the next start completes. The certificate was never served,
        // so no client can have pinned it.
        if !key_path.exists() {
            if cert_path.exists() {
                return Err(PkiError::Invalid {
                    path: key_path,
                    problem: "is missing while ca.crt exists; restore the key, or move the tls directory away to start a new CA".into(),
                });
            }
            let key = KeyPair::generate()?;
            write_private_new(&key_path, key.serialize_pem().as_bytes())?;
        }
        check_private(&key_path)?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            path: key_path.clone(),
            problem: format!("not a usable private key: {e}"),
        })?;
        if !cert_path.exists() {
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, format!("berthd CA {}", host_name()));
            dn.push(DnType::OrganizationName, "Berth");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.serial_number = Some(random_serial());
            let now = SystemTime::now();
            params.not_before = offset(now - BACKDATE);
            params.not_after = offset(now + CA_LIFETIME);
            let cert = params.self_signed(&key)?;
            replace_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(path = %cert_path.display(), "created the controller's certificate authority");
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let cert_der = read_chain(&cert_path)?.remove(0);
        Ok(Self {
            cert_pem,
            cert_der,
            key,
        })
    }

    /// The CA's fingerprint (what clients pin).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// Signs `params` for `public_key`, returning the certificate PEM.
    pub fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, PkiError> {
        Ok(params.signed_by(public_key, &self.issuer()?)?.pem())
    }

    /// Issues a server certificate for `sans`; returns (chain PEM, key PEM).
    pub fn issue_server(&self, sans: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("berthd {}", host_name()));
        params.distinguished_name = dn;
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + SERVER_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if name.contains('*') {
        return Err(PkiError::Invalid {
            path: PathBuf::from("--san"),
            problem: format!("{name:?}: wildcard names are never put in a certificate"),
        });
    }
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into().map_err(|_| PkiError::Invalid {
            path: PathBuf::from("--san"),
            problem: format!("{name:?} is neither a DNS name nor an IP address"),
        })?),
    })
}

/// The machine's host name, or `localhost`.
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The SANs of a generated server certificate: the loopback names, the host
/// name and each extra one, without duplicates.
pub fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for name in std::iter::once(host_name()).chain(extra.iter().cloned()) {
        if !sans.contains(&name) {
            sans.push(name);
        }
    }
    sans
}

/// When a certificate expires, and when it was issued, read from its DER.
pub fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let to_sys = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        (secs >= 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
    };
    Some((
        to_sys(cert.validity().not_before)?,
        to_sys(cert.validity().not_after)?,
    ))
}

/// The DNS and IP SANs of a certificate, as strings.
pub fn sans_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec![];
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return vec![];
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// When a server certificate issued at `not_before` and expiring at
/// `not_after` should be renewed: at two thirds of its life.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
    }

    #[test]
    fn ca_is_created_once_with_private_key_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("tls");
        let ca = Ca::load_or_create(&tls).expect("create");
        let again = Ca::load_or_create(&tls).expect("load");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let mode = fs::metadata(tls.join("ca.key"))
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (chain, _key) = ca
            .issue_server(&server_sans(&["example.test".into()]))
            .expect("issue");
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);

        fs::set_permissions(tls.join("ca.key"), fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Ca::load_or_create(&tls).err().expect("exposed key refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn wildcards_are_refused() {
        assert!(san("*.example.com").is_err());
    }
}
