//! Reading X.509: PEM chains and keys from files, fingerprints, dates and
//! SANs of a certificate.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::tls::ca::PkiError;

/// SHA-256 of a certificate's DER as uppercase colon-separated hex: exactly
/// what `openssl x509 -noout -fingerprint -sha256` prints after the `=`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
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

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
    }
}
