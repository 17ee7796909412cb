//! `berthd join`: a new controller takes the cluster's identity (the CA
//! certificate and key, the token signing key) from a running controller,
//! so that every controller serves a certificate of one CA (the client's
//! one pin trusts them all) and verifies the tokens any of them issued.
//!
//! The keys travel once, over TLS pinned on the cluster's CA fingerprint
//! (`--fingerprint`), to a caller holding an admin token (`--token`), and
//! land in the new data directory as the files a controller makes for
//! itself (`tls/ca.key`, `auth/signing.key`, 0600). They never pass through
//! etcd. The new controller then issues its own server certificate from
//! that CA, for its own names (`--san`), at its first start.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use berth_client::connect::{self, ServerTrust};
use berth_client::pinning::{Fingerprint, PinSource};
use berth_client::session::Bearer;
use berth_proto::v1 as pb;
use rcgen::KeyPair;

use crate::fsio;
use crate::paths;

/// The longest the export call may take.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Where to join from, and where the identity goes.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `HOST:PORT` of a running controller of the cluster.
    pub from: String,
    /// The cluster's CA fingerprint (what clients pin).
    pub fingerprint: String,
    /// An admin token of the cluster.
    pub token: String,
    /// The new controller's (empty) data directory.
    pub data_dir: PathBuf,
}

/// What a join wrote.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The cluster's CA fingerprint.
    pub fingerprint: String,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// Why a join failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// `--fingerprint` is not a fingerprint.
    #[error("--fingerprint: {0}")]
    Fingerprint(#[from] berth_client::pinning::BadFingerprint),
    /// The data directory already holds an identity of its own.
    #[error("{path} exists: {data_dir} already has a TLS or token identity; join on a new, empty --data-dir (a joined controller must not keep a CA of its own)")]
    NotEmpty {
        /// The file found.
        path: PathBuf,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The controller could not be reached or is not the pinned one.
    #[error("cannot join from {from}: {source}")]
    Connect {
        /// `--from`.
        from: String,
        /// Why.
        source: connect::ConnectError,
    },
    /// The controller refused the export.
    #[error("{from} refused to export the cluster identity ({code:?}): {message}")]
    Refused {
        /// `--from`.
        from: String,
        /// The gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// `--token` is not usable as a header value.
    #[error("--token: {0}")]
    Token(String),
    /// The controller sent keys that do not fit together.
    #[error("{from} sent an unusable identity: {problem}; nothing was written")]
    Unusable {
        /// `--from`.
        from: String,
        /// What is wrong.
        problem: String,
    },
    /// The data directory could not be prepared.
    #[error(transparent)]
    DataDir(#[from] paths::DataDirError),
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] fsio::FileError),
}

/// The identity files a data directory may already hold.
fn identity_files(data_dir: &Path) -> [PathBuf; 3] {
    let layout = paths::DataDir::existing(data_dir);
    [
        layout.tls().join(paths::CA_KEY),
        layout.tls().join(paths::CA_CERT),
        layout.auth().join(paths::SIGNING_KEY),
    ]
}

/// Fetches the cluster identity from `options.from` and writes it into
/// `options.data_dir`, which must not hold an identity yet.
pub async fn join(options: &JoinOptions) -> Result<Joined, JoinError> {
    let pin = Fingerprint::from_str(&options.fingerprint)?;
    for path in identity_files(&options.data_dir) {
        if path.exists() {
            return Err(JoinError::NotEmpty {
                path,
                data_dir: options.data_dir.clone(),
            });
        }
    }
    let from = options.from.clone();
    let bearer =
        Bearer::new(Some(options.token.trim())).map_err(|e| JoinError::Token(e.to_string()))?;
    let trust = ServerTrust::Pinned {
        fingerprint: pin,
        source: PinSource::Flag,
    };
    let channel = connect::connect(&from, &trust, None, Duration::ZERO)
        .await
        .map_err(|source| JoinError::Connect {
            from: from.clone(),
            source,
        })?;
    let mut admin = pb::admin_client::AdminClient::with_interceptor(channel, bearer);
    let refused = |status: tonic::Status| JoinError::Refused {
        from: from.clone(),
        code: status.code(),
        message: status.message().to_owned(),
    };
    let identity = match tokio::time::timeout(
        JOIN_TIMEOUT,
        admin.export_identity(pb::ExportIdentityRequest {}),
    )
    .await
    {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Err(refused(status)),
        Err(_) => {
            return Err(refused(tonic::Status::deadline_exceeded(format!(
                "no answer within {} s",
                JOIN_TIMEOUT.as_secs()
            ))))
        }
    };
    let unusable = |problem: String| JoinError::Unusable {
        from: from.clone(),
        problem,
    };
    check(&identity, pin).map_err(unusable)?;

    let layout = paths::DataDir::create(&options.data_dir)?;
    paths::create_private_dir(&layout.tls())?;
    paths::create_private_dir(&layout.auth())?;
    let [ca_key, ca_cert, signing_key] = identity_files(&options.data_dir);
    // The key first, the certificate second, as the controller makes them.
    fsio::write_private_new(&ca_key, identity.ca_key_pem.as_bytes())?;
    fsio::replace(&ca_cert, identity.ca_cert_pem.as_bytes(), 0o644)?;
    fsio::write_private_new(&signing_key, identity.signing_key_pem.as_bytes())?;
    Ok(Joined {
        fingerprint: pin.to_string(),
        files: vec![ca_key, ca_cert, signing_key],
    })
}

/// Checks that the CA certificate is the pinned one, that the CA key is
/// its key, and that the signing key is an Ed25519 key.
fn check(identity: &pb::ExportIdentityResponse, pin: Fingerprint) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(identity.ca_cert_pem.as_bytes())
        .map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
    if Fingerprint::of(cert.as_ref()) != pin {
        return Err(format!(
            "the CA certificate's fingerprint is {}, not the pinned {pin}",
            Fingerprint::of(cert.as_ref())
        ));
    }
    let key = KeyPair::from_pem(&identity.ca_key_pem)
        .map_err(|e| format!("the CA key is not usable: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
    if parsed.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key)
    {
        return Err("the CA key is not the CA certificate's key".into());
    }
    let signing = KeyPair::from_pem(&identity.signing_key_pem)
        .map_err(|e| format!("the signing key is not usable: {e}"))?;
    if !signing.is_compatible(&rcgen::PKCS_ED25519) {
        return Err("the signing key is not an Ed25519 key".into());
    }
    Ok(())
}
