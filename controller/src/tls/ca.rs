//! The controller's certificate authority: created once, then signing the
//! server certificates it issues itself and the client certificates admins
//! ask for.
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

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::fsio::{self, FileError};
use crate::paths;
use crate::tls::crypto::random_bytes;
use crate::tls::names::{host_name, san};
use crate::tls::x509::{fingerprint, read_chain};

/// Lifetime of the generated CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated server certificate.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates are back-dated this much against clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Errors of the controller's PKI and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// A file holds something unusable.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A name asked for a server certificate (`--san`) cannot be in one.
    #[error("--san {name:?}: {problem}")]
    Name {
        /// The name.
        name: String,
        /// Why not.
        problem: &'static str,
    },
    /// A TLS setting (not a file) cannot be used.
    #[error("{setting}: {problem}")]
    Setting {
        /// The flag that chose it (`--tls-min-version`, `--client-ca`).
        setting: &'static str,
        /// What rustls said.
        problem: String,
    },
    /// rcgen failed to generate or sign.
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The data directory or a key file fails its checks.
    #[error("{0}")]
    Data(#[from] paths::DataDirError),
}

/// Refuses a private-key file that is a symbolic link, is owned by another
/// user or that group or others can read ([`paths::check_private`]).
pub fn check_key(path: &Path) -> Result<(), PkiError> {
    Ok(paths::check_private(path, paths::Private::Key)?)
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// A random positive 128-bit serial number.
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = random_bytes();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

/// The controller's certificate authority.
pub struct Ca {
    /// The CA certificate, PEM (what `ca.crt` holds).
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl Ca {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        paths::create_private_dir(dir)?;
        let (cert_path, key_path) = (dir.join(paths::CA_CERT), dir.join(paths::CA_KEY));
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
            fsio::write_private_new(&key_path, key.serialize_pem().as_bytes())?;
        }
        check_key(&key_path)?;
        let key_pem = fsio::read_to_string(&key_path)?;
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
            fsio::replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(path = %cert_path.display(), "created the controller's certificate authority");
        }
        let cert_pem = fsio::read_to_string(&cert_path)?;
        let cert_der = read_chain(&cert_path)?.remove(0);
        Ok(Self {
            cert_pem,
            cert_der,
            key,
        })
    }

    /// The CA's private key (PEM), for a controller joining this one's
    /// cluster over an authenticated TLS connection (`berthd join`); it is
    /// never written anywhere else.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_created_once_with_private_key_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("tls");
        let ca = Ca::load_or_create(&tls).expect("create");
        let again = Ca::load_or_create(&tls).expect("load");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let mode = std::fs::metadata(tls.join(paths::CA_KEY))
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (chain, _key) = ca
            .issue_server(&crate::tls::names::server_sans(&["example.test".into()]))
            .expect("issue");
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);

        std::fs::set_permissions(
            tls.join(paths::CA_KEY),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let err = Ca::load_or_create(&tls).err().expect("exposed key refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
