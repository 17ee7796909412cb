//! Credentials the controller issues and verifies: signed tokens (JWT,
//! EdDSA) and client certificates signed by its CA, each recorded with its
//! scope so that revocation and listing work.
//!
//! ```text
//! <data-dir>/auth/signing.key   Ed25519 token signing key (PKCS#8, 0600)
//! <data-dir>/auth/signing.pub   its public half
//! <data-dir>/auth/admin.token   the bootstrap admin token (0600)
//! sled tree `tokens`: jti    -> TokenRecord
//! sled tree `certs`:  serial -> CertRecord
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SubjectPublicKeyInfo,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};

use crate::auth::{Identity, Role, Scope, Via};
use crate::pki::{self, Ca, PkiError};

/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default client-certificate lifetime.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of the bootstrap admin token.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Clock skew tolerated on `exp`/`nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Claims of a Berth token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    pub role: Role,
    pub services: BTreeSet<String>,
}

/// What the controller remembers of a token it issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub jti: String,
    pub subject: String,
    pub scope: Scope,
    pub issued_at: u64,
    pub expires_at: u64,
    pub revoked: bool,
}

/// What the controller remembers of a client certificate it signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRecord {
    /// Lowercase hex of the serial number's bytes.
    pub serial: String,
    pub subject: String,
    pub scope: Scope,
    pub not_before: u64,
    pub not_after: u64,
    pub revoked: bool,
}

/// Why a credential was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} does not exist")]
    NotFound(String),
    /// The controller's own records are damaged (Internal).
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("credential database error: {0}")]
    Db(#[from] sled::Error),
}

/// A verified credential, remembered by the SHA-256 of its bytes so that
/// repeated requests skip signature checks and parsing. Entries go when the
/// credential expires or is revoked.
#[derive(Clone)]
struct Verified {
    identity: Identity,
    /// The jti or serial revocation names.
    id: String,
    expires_at: u64,
}

/// The most verified credentials remembered at once.
const CACHE_LIMIT: usize = 10_000;

/// Issues and verifies credentials.
pub struct Credentials {
    verified: std::sync::RwLock<std::collections::HashMap<[u8; 32], Verified>>,
    /// Bumped by every revocation, under the cache's write lock.
    revocations: std::sync::atomic::AtomicU64,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    tokens: sled::Tree,
    certs: sled::Tree,
    ca: Arc<Ca>,
    dir: PathBuf,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, CredentialError> {
    serde_json::from_slice(raw)
        .map_err(|e| CredentialError::Corrupt(format!("corrupt credential record: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Checks a subject name: printable, 1 to 128 characters.
pub fn check_subject(subject: &str) -> Result<(), CredentialError> {
    if subject.is_empty() || subject.len() > 128 || subject.chars().any(|c| c.is_control()) {
        return Err(CredentialError::Invalid(format!(
            "subject {subject:?} must be 1 to 128 printable characters"
        )));
    }
    Ok(())
}

/// Checks a scope: users need at least one service.
pub fn check_scope(scope: &Scope) -> Result<(), CredentialError> {
    if scope.role == Role::User && scope.services.is_empty() {
        return Err(CredentialError::Invalid(
            "a user credential needs at least one service (or `*` for all)".into(),
        ));
    }
    for s in &scope.services {
        if s != "*" && berth_drivers::VolumeName::parse(s).is_err() {
            return Err(CredentialError::Invalid(format!(
                "{s:?} is not a service name"
            )));
        }
    }
    Ok(())
}

impl Credentials {
    /// Loads the signing key from `dir` (creating it on first start) and opens
    /// the credential trees in `db`.
    pub fn open(dir: &Path, db: &sled::Db, ca: Arc<Ca>) -> Result<Self, CredentialError> {
        crate::paths::create_private_dir(dir).map_err(PkiError::from)?;
        let (key_path, pub_path) = (dir.join("signing.key"), dir.join("signing.pub"));
        if !key_path.exists() {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(PkiError::from)?;
            pki::write_private_new(&key_path, key.serialize_pem().as_bytes())?;
            tracing::info!(path = %key_path.display(), "created the token signing key");
        }
        pki::check_private(&key_path)?;
        let invalid = |path: &Path, e: &dyn std::fmt::Display| {
            CredentialError::Pki(PkiError::Invalid {
                path: path.to_owned(),
                problem: format!("not a usable Ed25519 key: {e}"),
            })
        };
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| PkiError::Io {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, &e))?;
        // The public half is derived from the key; signing.pub is a copy for
        // operators, rewritten when missing (e.g. after a crash).
        let pub_pem = key.public_key_pem();
        if !pub_path.exists() {
            pki::replace_file(&pub_path, pub_pem.as_bytes(), 0o644)?;
        }
        let encoding =
            EncodingKey::from_ed_pem(key_pem.as_bytes()).map_err(|e| invalid(&key_path, &e))?;
        let decoding =
            DecodingKey::from_ed_pem(pub_pem.as_bytes()).map_err(|e| invalid(&key_path, &e))?;
        // Pinned to EdDSA: `none`, HMAC (key confusion) and others are refused.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "jti"]);
        Ok(Self {
            verified: Default::default(),
            revocations: Default::default(),
            encoding,
            decoding,
            validation,
            tokens: db.open_tree("tokens")?,
            certs: db.open_tree("certs")?,
            ca,
            dir: dir.to_owned(),
        })
    }

    /// Issues a token. The record is durable once the store is flushed.
    pub fn issue_token(
        &self,
        subject: &str,
        scope: Scope,
        ttl: Duration,
    ) -> Result<(String, TokenRecord), CredentialError> {
        check_subject(subject)?;
        check_scope(&scope)?;
        let now = now_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs()),
            jti: uuid::Uuid::new_v4().to_string(),
            role: scope.role,
            services: scope.services.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .map_err(|e| CredentialError::Invalid(format!("cannot sign the token: {e}")))?;
        let record = TokenRecord {
            jti: claims.jti.clone(),
            subject: claims.sub,
            scope,
            issued_at: now,
            expires_at: claims.exp,
            revoked: false,
        };
        self.tokens.insert(record.jti.as_bytes(), encode(&record))?;
        Ok((token, record))
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<Identity> {
        let cache = self.verified.read().ok()?;
        let hit = cache.get(digest)?;
        (now_secs() <= hit.expires_at.saturating_add(LEEWAY_SECS)).then(|| hit.identity.clone())
    }

    /// Remembers a credential verified while the revocation generation was
    /// `generation`; if anything was revoked since, it is not remembered (the
    /// check it passed may predate the revocation).
    fn remember(&self, digest: [u8; 32], verified: Verified, generation: u64) {
        if let Ok(mut cache) = self.verified.write() {
            if self.revocations.load(std::sync::atomic::Ordering::SeqCst) != generation {
                return;
            }
            if cache.len() >= CACHE_LIMIT {
                let now = now_secs();
                cache.retain(|_, v| now <= v.expires_at.saturating_add(LEEWAY_SECS));
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            cache.insert(digest, verified);
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.verified.write() {
            self.revocations
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            cache.retain(|_, v| v.id != id);
        }
    }

    /// Verifies a token: signature (EdDSA only), dates, and that this
    /// controller issued it and has not revoked it. Verified tokens are
    /// remembered by digest until they expire or are revoked.
    pub fn verify_token(&self, token: &str) -> Result<Identity, CredentialError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.remembered(&digest) {
            return Ok(identity);
        }
        let generation = self.revocations.load(std::sync::atomic::Ordering::SeqCst);
        let (identity, jti, exp) = self.verify_token_fully(token)?;
        self.remember(
            digest,
            Verified {
                identity: identity.clone(),
                id: jti,
                expires_at: exp,
            },
            generation,
        );
        Ok(identity)
    }

    fn verify_token_fully(&self, token: &str) -> Result<(Identity, String, u64), CredentialError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                CredentialError::Invalid(match e.kind() {
                    K::ExpiredSignature => "it has expired; ask an admin for a new one".into(),
                    K::ImmatureSignature => "it is not valid yet (nbf is in the future)".into(),
                    K::InvalidSignature => {
                        "its signature does not verify: it was not issued by this controller".into()
                    }
                    K::InvalidAlgorithm | K::MissingAlgorithm => {
                        "it is not signed with EdDSA, the only algorithm accepted".into()
                    }
                    _ => format!("it is not a valid token ({e})"),
                })
            })?;
        let claims = data.claims;
        let record: TokenRecord = match self.tokens.get(claims.jti.as_bytes())? {
            Some(raw) => decode(&raw)?,
            None => {
                return Err(CredentialError::Invalid(format!(
                    "token {} is unknown to this controller",
                    claims.jti
                )))
            }
        };
        if record.revoked {
            return Err(CredentialError::Invalid(format!(
                "token {} has been revoked",
                claims.jti
            )));
        }
        // The registry, not the token, is the authority on what was issued:
        // claims that differ from the record under this id are a forgery
        // (someone holding the signing key), never a wider scope.
        if claims.sub != record.subject
            || claims.role != record.scope.role
            || claims.services != record.scope.services
            || claims.exp != record.expires_at
        {
            return Err(CredentialError::Invalid(format!(
                "its claims do not match token {} as this controller issued it",
                claims.jti
            )));
        }
        let identity = Identity {
            subject: record.subject,
            scope: record.scope,
            via: Via::Token,
        };
        Ok((identity, record.jti, record.expires_at))
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, CredentialError> {
        self.tokens.iter().map(|e| decode(&e?.1)).collect()
    }

    pub fn revoke_token(&self, jti: &str) -> Result<TokenRecord, CredentialError> {
        let mut record: TokenRecord = match self.tokens.get(jti.as_bytes())? {
            Some(raw) => decode(&raw)?,
            None => return Err(CredentialError::NotFound(format!("token {jti:?}"))),
        };
        record.revoked = true;
        self.tokens.insert(jti.as_bytes(), encode(&record))?;
        self.forget(jti);
        Ok(record)
    }

    /// Signs a PEM CSR as a client certificate for its CN. Everything but the
    /// CN and the public key is decided here: clientAuth only, never a CA,
    /// this controller's validity.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        scope: Scope,
        ttl: Duration,
    ) -> Result<(String, CertRecord), CredentialError> {
        check_scope(&scope)?;
        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
                CredentialError::Invalid(format!("not a PEM certificate request: {}", brief(&e)))
            })?;
        use x509_parser::prelude::FromDer;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .map_err(|e| {
                    CredentialError::Invalid(format!("the certificate request does not parse: {e}"))
                })?;
        csr.verify_signature().map_err(|_| {
            CredentialError::Invalid(
                "the certificate request's signature does not verify: it was altered or is corrupt"
                    .into(),
            )
        })?;
        let info = &csr.certification_request_info;
        let subject = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| {
                CredentialError::Invalid("the certificate request has no subject CN".into())
            })?
            .to_owned();
        check_subject(&subject)?;
        let public_key = SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(|e| {
            CredentialError::Invalid(format!("the request's public key is not supported: {e}"))
        })?;

        let serial = pki::random_serial();
        let now = SystemTime::now();
        let (_, ca_not_after) = pki::validity(&self.ca.cert_der).ok_or_else(|| {
            CredentialError::Invalid("the CA certificate has no readable validity".into())
        })?;
        let not_after = now
            .checked_add(ttl)
            .unwrap_or(ca_not_after)
            .min(ca_not_after);
        let not_before = now - Duration::from_secs(300);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let cert = self.ca.sign(&params, &public_key)?;
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        };
        let record = CertRecord {
            serial: hex(&serial.to_bytes()),
            subject,
            scope,
            not_before: secs(not_before),
            not_after: secs(not_after),
            revoked: false,
        };
        self.certs
            .insert(record.serial.as_bytes(), encode(&record))?;
        Ok((cert, record))
    }

    /// The identity of a client certificate the TLS layer already verified
    /// (chain to a trusted CA, dates): it must carry clientAuth and not be
    /// revoked. Certificates from extra `--client-ca` CAs have no recorded
    /// scope: they get the user role and only what allow lists grant.
    pub fn verify_certificate(
        &self,
        der: &CertificateDer<'_>,
    ) -> Result<Identity, CredentialError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(der.as_ref()).into();
        if let Some(identity) = self.remembered(&digest) {
            return Ok(identity);
        }
        let generation = self.revocations.load(std::sync::atomic::Ordering::SeqCst);
        let (identity, serial, not_after) = self.verify_certificate_fully(der)?;
        self.remember(
            digest,
            Verified {
                identity: identity.clone(),
                id: serial,
                expires_at: not_after,
            },
            generation,
        );
        Ok(identity)
    }

    fn verify_certificate_fully(
        &self,
        der: &CertificateDer<'_>,
    ) -> Result<(Identity, String, u64), CredentialError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CredentialError::Invalid(format!("it does not parse: {e}")))?;
        let client_auth =
            matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
        if !client_auth {
            return Err(CredentialError::Invalid(
                "it lacks the clientAuth extended key usage".into(),
            ));
        }
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| CredentialError::Invalid("it has no subject CN".into()))?
            .to_owned();
        let serial = hex(cert.raw_serial());
        // Ours only if our CA's key signed it: a --client-ca CA can copy our
        // CA's name and a known serial, but not its signature.
        let (_, ca) =
            x509_parser::parse_x509_certificate(self.ca.cert_der.as_ref()).map_err(|e| {
                CredentialError::Invalid(format!("the CA certificate does not parse: {e}"))
            })?;
        let ours = cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok();
        let scope = match self.certs.get(serial.as_bytes())? {
            Some(raw) if ours => {
                let record: CertRecord = decode(&raw)?;
                if record.subject != subject {
                    return Err(CredentialError::Invalid(format!(
                        "certificate {serial} names {subject:?}, not the subject it was issued to"
                    )));
                }
                if record.revoked {
                    return Err(CredentialError::Invalid(format!(
                        "certificate {serial} has been revoked"
                    )));
                }
                record.scope
            }
            None if ours => {
                return Err(CredentialError::Invalid(format!(
                    "certificate {serial} was not issued by this controller"
                )))
            }
            _ => Scope {
                role: Role::User,
                services: BTreeSet::new(),
            },
        };
        let not_after = cert.validity().not_after.timestamp().max(0) as u64;
        // The cache must not outlive the TLS layer's date check.
        Ok((
            Identity {
                subject,
                scope,
                via: Via::Certificate,
            },
            serial,
            not_after.saturating_sub(LEEWAY_SECS),
        ))
    }

    pub fn list_certs(&self) -> Result<Vec<CertRecord>, CredentialError> {
        self.certs.iter().map(|e| decode(&e?.1)).collect()
    }

    pub fn revoke_cert(&self, serial: &str) -> Result<CertRecord, CredentialError> {
        let key = serial.trim().to_ascii_lowercase().replace(':', "");
        let mut record: CertRecord = match self.certs.get(key.as_bytes())? {
            Some(raw) => decode(&raw)?,
            None => return Err(CredentialError::NotFound(format!("certificate {serial:?}"))),
        };
        record.revoked = true;
        self.certs.insert(key.as_bytes(), encode(&record))?;
        self.forget(&key);
        Ok(record)
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Creates the bootstrap admin token file if it is missing (or no longer
    /// valid). Returns its path.
    pub fn ensure_admin_token(&self) -> Result<PathBuf, CredentialError> {
        let path = self.dir.join("admin.token");
        if let Ok(existing) = std::fs::read_to_string(&path) {
            match self.verify_token(existing.trim()) {
                Ok(id) if id.scope.role == Role::Admin => return Ok(path),
                _ => {
                    tracing::warn!(path = %path.display(), "the bootstrap admin token is no longer valid; issuing a new one");
                    std::fs::remove_file(&path).map_err(|source| PkiError::Io {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        let (token, record) = self.issue_token(
            "admin",
            Scope {
                role: Role::Admin,
                services: ["*".to_owned()].into(),
            },
            ADMIN_TOKEN_TTL,
        )?;
        pki::write_private_new(&path, format!("{token}\n").as_bytes())?;
        tracing::info!(path = %path.display(), jti = %record.jti, "created the bootstrap admin token");
        Ok(path)
    }
}

/// The start of a parser's message: some echo parts of the input (the PEM
/// parser lists a section label's bytes), which must not come back whole.
fn brief(e: &dyn std::fmt::Display) -> String {
    const MAX_CHARS: usize = 120;
    let text = e.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Credentials {
        let ca = Arc::new(Ca::load_or_create(&dir.join("tls")).expect("CA"));
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("database");
        Credentials::open(&dir.join("auth"), &db, ca).expect("credentials")
    }

    /// Found by the `csr` fuzz target (its first byte, the mode, dropped): a
    /// PEM block whose label never ends was refused with every byte of the
    /// label listed in decimal, six times the input's size.
    #[test]
    fn refused_pem_is_not_echoed_whole() {
        let input: &[u8] = b"-----BEGIN CERTIFICAT\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
            \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
            \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
            \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
            \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
            E R(EQUEST-----\nMIGPMEMCAQAwEDEOMAwGA1UEAwwFY2Fyb2wwKj.FBgMrZXA\
            DIQBeaDylmuUFBbJ\x010\x81\x8f0C\x02\x01\x0020\x101\x0e0\x0c\x06\
            \x03U\x04\x03";
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = open(dir.path());
        let scope = Scope {
            role: Role::User,
            services: ["alpha".to_owned()].into(),
        };
        let pem = String::from_utf8_lossy(input);
        let err = credentials
            .sign_csr(&pem, scope, DEFAULT_CERT_TTL)
            .expect_err("not a CSR");
        let message = err.to_string();
        assert!(matches!(err, CredentialError::Invalid(_)), "{err:?}");
        assert!(
            message.starts_with("not a PEM certificate request: "),
            "{message}"
        );
        assert!(message.len() <= 200, "{} bytes: {message}", message.len());
    }
}
