//! Credentials the controller issues and verifies: signed tokens (JWT,
//! EdDSA) and client certificates signed by its CA, each recorded with its
//! scope so that revocation and listing work.
//!
//! ```text
//! <data-dir>/auth/signing.key   Ed25519 token signing key (PKCS#8, 0600)
//! <data-dir>/auth/signing.pub   its public half
//! <data-dir>/auth/admin.token   the bootstrap admin token (0600)
//! <data-dir>/auth/controller.id  this controller's id: whose bootstrap tokens are whose
//! registry `tokens`: jti    -> TokenRecord
//! registry `certs`:  serial -> CertRecord
//! ```
//!
//! The registry is the sled database (one controller) or etcd (several;
//! see [`crate::auth::registry`]).

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

use crate::auth::identity::{Identity, Role, Scope, Via};
use crate::auth::registry::{Changed, Registry, SledRegistry};
use crate::auth::subject::{normalize_subject, shown, SubjectError};
use crate::fsio::{self, FileError};
use crate::paths;
use crate::tls::ca::{check_key, random_serial, Ca, PkiError};
use crate::tls::x509::validity;

/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default client-certificate lifetime.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of the bootstrap admin token.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The bootstrap admin token's file name in the auth directory.
pub const ADMIN_TOKEN_FILE: &str = paths::ADMIN_TOKEN;
/// Clock skew tolerated on `exp`/`nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Claims of a Berth token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The subject (`sub`).
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not valid before, seconds since the epoch.
    pub nbf: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// The token id revocation names.
    pub jti: String,
    /// The role granted.
    pub role: Role,
    /// The services granted (`*` for all).
    pub services: BTreeSet<String>,
}

/// What the controller remembers of a token it issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token id.
    pub jti: String,
    /// Whom it was issued to.
    pub subject: String,
    /// What it grants.
    pub scope: Scope,
    /// Issued at, seconds since the epoch.
    pub issued_at: u64,
    /// Expires at, seconds since the epoch.
    pub expires_at: u64,
    /// Whether it has been revoked.
    pub revoked: bool,
    /// Whether this is a bootstrap admin token (the one written to
    /// `admin.token`); rotating that file revokes every earlier one.
    #[serde(default)]
    pub bootstrap: bool,
    /// For a bootstrap token, the controller whose `admin.token` holds it
    /// (its `auth/controller.id`): a rotation revokes only that
    /// controller's earlier bootstrap tokens, not those of the other
    /// controllers sharing the registry. `None` in records from before
    /// the field existed, which count as this controller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// What the controller remembers of a client certificate it signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRecord {
    /// Lowercase hex of the serial number's bytes.
    pub serial: String,
    /// Whom it was issued to (its CN).
    pub subject: String,
    /// What it grants.
    pub scope: Scope,
    /// Valid from, seconds since the epoch.
    pub not_before: u64,
    /// Valid until, seconds since the epoch.
    pub not_after: u64,
    /// Whether it has been revoked.
    pub revoked: bool,
}

/// Why a credential was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The caller sent something unusable (a bad CSR, scope or credential).
    #[error("{0}")]
    Invalid(String),
    /// No credential by that id.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The controller's own records are damaged.
    #[error("{0}")]
    Corrupt(String),
    /// The controller failed on its side (signing, reading its own CA):
    /// nothing the caller sent is wrong.
    #[error("{0}")]
    Internal(String),
    /// A record could not be serialised for the database.
    #[error("cannot encode a credential record: {0}")]
    Encode(serde_json::Error),
    /// A subject name is refused.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The CA or a key file failed.
    #[error("{0}")]
    Pki(#[from] PkiError),
    /// The credential database failed.
    #[error("credential database error: {0}")]
    Db(#[from] sled::Error),
    /// A shared registry (etcd) cannot be reached now; retry.
    #[error("the credential registry is unavailable: {0}")]
    Unavailable(String),
    /// A shared registry (etcd) refused or failed a call.
    #[error("credential registry error: {0}")]
    Registry(String),
}

impl From<FileError> for CredentialError {
    fn from(e: FileError) -> Self {
        Self::Pki(e.into())
    }
}

/// A verified credential, remembered by the SHA-256 of its bytes so that
/// repeated requests skip signature checks and parsing. An entry is used
/// only while the clock is inside its validity window (checked on every
/// call, so a credential stops working on an open connection the second it
/// expires) and goes when the credential is revoked.
#[derive(Clone)]
struct Verified {
    identity: Identity,
    /// The jti or serial revocation names.
    id: String,
    /// First second the credential is accepted (leeway included).
    valid_from: u64,
    /// Last second the credential is accepted (leeway included).
    valid_until: u64,
}

impl Verified {
    fn current(&self, now: u64) -> bool {
        self.valid_from <= now && now <= self.valid_until
    }
}

/// The dates a verified credential is accepted between, inclusive.
struct Window {
    from: u64,
    until: u64,
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
    registry: Arc<dyn Registry>,
    /// Set while a shared registry's watch is lost: nothing is remembered
    /// then, since a revocation elsewhere could go unseen.
    paused: std::sync::atomic::AtomicBool,
    /// This controller's id, marking its bootstrap tokens.
    holder: String,
    /// The public half of the token signing key (PEM).
    signing_pub: String,
    ca: Arc<Ca>,
    dir: PathBuf,
    /// Serialises rotations of the bootstrap admin token.
    rotation: tokio::sync::Mutex<()>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
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
    /// the credential trees in `db` (the sled registry).
    pub fn open(dir: &Path, db: &sled::Db, ca: Arc<Ca>) -> Result<Self, CredentialError> {
        Self::open_with(dir, Arc::new(SledRegistry::open(db)?), ca)
    }

    /// Loads the signing key from `dir` (creating it on first start) over
    /// `registry`.
    pub fn open_with(
        dir: &Path,
        registry: Arc<dyn Registry>,
        ca: Arc<Ca>,
    ) -> Result<Self, CredentialError> {
        paths::create_private_dir(dir).map_err(PkiError::from)?;
        // Checked before anything is created or replaced: a token others
        // can read is refused like an exposed key.
        let admin_token = dir.join(ADMIN_TOKEN_FILE);
        if admin_token.exists() {
            check_key(&admin_token)?;
        }
        let (key_path, pub_path) = (dir.join(paths::SIGNING_KEY), dir.join(paths::SIGNING_PUB));
        if !key_path.exists() {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(PkiError::from)?;
            fsio::write_private_new(&key_path, key.serialize_pem().as_bytes())?;
            tracing::info!(path = %key_path.display(), "created the token signing key");
        }
        check_key(&key_path)?;
        let invalid = |path: &Path, e: &dyn std::fmt::Display| {
            CredentialError::Pki(PkiError::Invalid {
                path: path.to_owned(),
                problem: format!("not a usable Ed25519 key: {e}"),
            })
        };
        let key_pem = fsio::read_to_string(&key_path).map_err(PkiError::from)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, &e))?;
        // The public half is derived from the key; signing.pub is a copy for
        // operators, rewritten when missing (e.g. after a crash).
        let pub_pem = key.public_key_pem();
        if !pub_path.exists() {
            fsio::replace(&pub_path, pub_pem.as_bytes(), 0o644)?;
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
        let id_path = dir.join(paths::CONTROLLER_ID);
        if !id_path.exists() {
            fsio::write_private_new(&id_path, uuid::Uuid::new_v4().to_string().as_bytes())?;
        }
        let holder = fsio::read_to_string(&id_path)
            .map_err(PkiError::from)?
            .trim()
            .to_owned();
        Ok(Self {
            verified: Default::default(),
            revocations: Default::default(),
            encoding,
            decoding,
            validation,
            registry,
            paused: Default::default(),
            holder,
            signing_pub: pub_pem,
            ca,
            dir: dir.to_owned(),
            rotation: tokio::sync::Mutex::new(()),
        })
    }

    /// Joins the registry: checks (or records, when first) that this
    /// controller holds the cluster's CA and signing key, then listens to
    /// the registry's changes (a shared registry's watch): a credential
    /// changed elsewhere is forgotten here, so its next use is checked
    /// against the registry again.
    pub async fn start(self: &Arc<Self>) -> Result<(), CredentialError> {
        self.registry
            .claim_identity(&self.ca.fingerprint(), &self.signing_pub)
            .await?;
        let me = Arc::downgrade(self);
        self.registry
            .watch(Arc::new(move |change| {
                if let Some(me) = me.upgrade() {
                    me.changed(change);
                }
            }))
            .await
    }

    fn changed(&self, change: Changed) {
        use std::sync::atomic::Ordering::SeqCst;
        match change {
            Changed::Record(id) => self.forget(&id),
            Changed::Lost => {
                self.paused.store(true, SeqCst);
                if let Ok(mut cache) = self.verified.write() {
                    self.revocations.fetch_add(1, SeqCst);
                    cache.clear();
                }
            }
            Changed::Resumed => {
                if let Ok(mut cache) = self.verified.write() {
                    self.revocations.fetch_add(1, SeqCst);
                    cache.clear();
                    self.paused.store(false, SeqCst);
                }
            }
        }
    }

    /// Whether the registry is shared by several controllers (etcd).
    pub fn shared(&self) -> bool {
        self.registry.shared()
    }

    /// Makes every credential change so far durable.
    pub async fn flush(&self) -> Result<(), CredentialError> {
        self.registry.flush().await
    }

    /// The token signing key (PEM), for a controller joining this one's
    /// cluster.
    pub fn signing_key_pem(&self) -> Result<String, CredentialError> {
        Ok(fsio::read_to_string(&self.dir.join(paths::SIGNING_KEY)).map_err(PkiError::from)?)
    }

    /// Issues a token. The record is durable once the store is flushed.
    pub async fn issue_token(
        &self,
        subject: &str,
        scope: Scope,
        ttl: Duration,
    ) -> Result<(String, TokenRecord), CredentialError> {
        self.issue_token_as(subject, scope, ttl, false).await
    }

    async fn issue_token_as(
        &self,
        subject: &str,
        scope: Scope,
        ttl: Duration,
        bootstrap: bool,
    ) -> Result<(String, TokenRecord), CredentialError> {
        let subject = normalize_subject(subject)?;
        check_scope(&scope)?;
        let now = now_secs();
        let claims = Claims {
            sub: subject,
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs()),
            jti: uuid::Uuid::new_v4().to_string(),
            role: scope.role,
            services: scope.services.clone(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
                .map_err(|e| CredentialError::Internal(format!("cannot sign the token: {e}")))?;
        let record = TokenRecord {
            jti: claims.jti.clone(),
            subject: claims.sub,
            scope,
            issued_at: now,
            expires_at: claims.exp,
            revoked: false,
            bootstrap,
            holder: bootstrap.then(|| self.holder.clone()),
        };
        self.registry.put_token(&record).await?;
        Ok((token, record))
    }

    /// The identity of a remembered credential, if it is still inside its
    /// validity window now; outside it, the caller verifies in full and gets
    /// the precise refusal.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Identity> {
        let cache = self.verified.read().ok()?;
        let hit = cache.get(digest)?;
        hit.current(now_secs()).then(|| hit.identity.clone())
    }

    /// Remembers a credential verified while the revocation generation was
    /// `generation`; if anything was revoked since, it is not remembered (the
    /// check it passed may predate the revocation).
    fn remember(&self, digest: [u8; 32], verified: Verified, generation: u64) {
        if let Ok(mut cache) = self.verified.write() {
            if self.revocations.load(std::sync::atomic::Ordering::SeqCst) != generation
                || self.paused.load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            if cache.len() >= CACHE_LIMIT {
                let now = now_secs();
                cache.retain(|_, v| v.current(now));
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
    pub async fn verify_token(&self, token: &str) -> Result<Identity, CredentialError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.remembered(&digest) {
            return Ok(identity);
        }
        let generation = self.revocations.load(std::sync::atomic::Ordering::SeqCst);
        let (identity, jti, window) = self.verify_token_fully(token).await?;
        self.remember(
            digest,
            Verified {
                identity: identity.clone(),
                id: jti,
                valid_from: window.from,
                valid_until: window.until,
            },
            generation,
        );
        Ok(identity)
    }

    async fn verify_token_fully(
        &self,
        token: &str,
    ) -> Result<(Identity, String, Window), CredentialError> {
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
        let record = match self.registry.token(&claims.jti).await? {
            Some(record) => record,
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
        // Records made before subjects were checked may hold invisible
        // characters: such a token no longer authenticates.
        let subject = normalize_subject(&record.subject).map_err(|e| {
            CredentialError::Invalid(format!(
                "token {} names a subject that is no longer accepted ({e}); revoke it and issue a new one",
                record.jti
            ))
        })?;
        let identity = Identity {
            subject,
            scope: record.scope,
            via: Via::Token,
        };
        // The same window jsonwebtoken just checked, leeway included.
        let window = Window {
            from: claims.nbf.saturating_sub(LEEWAY_SECS),
            until: record.expires_at.saturating_add(LEEWAY_SECS),
        };
        Ok((identity, record.jti, window))
    }

    /// Every token issued, revoked ones included.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, CredentialError> {
        self.registry.tokens().await
    }

    /// Revokes a token by id; effective at its next use.
    pub async fn revoke_token(&self, jti: &str) -> Result<TokenRecord, CredentialError> {
        let Some(mut record) = self.registry.token(jti).await? else {
            return Err(CredentialError::NotFound(format!("token {jti:?}")));
        };
        record.revoked = true;
        self.registry.put_token(&record).await?;
        self.forget(jti);
        Ok(record)
    }

    /// Signs a PEM CSR as a client certificate for its CN. Everything but the
    /// CN and the public key is decided here: clientAuth only, never a CA,
    /// this controller's validity.
    pub async fn sign_csr(
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
            })?;
        let subject = normalize_subject(subject)?;
        let public_key = SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(|e| {
            CredentialError::Invalid(format!("the request's public key is not supported: {e}"))
        })?;

        let serial = random_serial();
        let now = SystemTime::now();
        let (_, ca_not_after) = validity(&self.ca.cert_der).ok_or_else(|| {
            CredentialError::Internal("the CA certificate has no readable validity".into())
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
        self.registry.put_cert(&record).await?;
        Ok((cert, record))
    }

    /// The identity of a client certificate the TLS layer already verified
    /// (chain to a trusted CA, dates): it must carry clientAuth and not be
    /// revoked. Certificates from extra `--client-ca` CAs have no recorded
    /// scope: they get the user role and only what allow lists grant.
    pub async fn verify_certificate(
        &self,
        der: &CertificateDer<'_>,
    ) -> Result<Identity, CredentialError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(der.as_ref()).into();
        if let Some(identity) = self.remembered(&digest) {
            return Ok(identity);
        }
        let generation = self.revocations.load(std::sync::atomic::Ordering::SeqCst);
        let (identity, serial, window) = self.verify_certificate_fully(der).await?;
        self.remember(
            digest,
            Verified {
                identity: identity.clone(),
                id: serial,
                valid_from: window.from,
                valid_until: window.until,
            },
            generation,
        );
        Ok(identity)
    }

    async fn verify_certificate_fully(
        &self,
        der: &CertificateDer<'_>,
    ) -> Result<(Identity, String, Window), CredentialError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CredentialError::Invalid(format!("it does not parse: {e}")))?;
        let client_auth =
            matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
        if !client_auth {
            return Err(CredentialError::Invalid(
                "it lacks the clientAuth extended key usage".into(),
            ));
        }
        let serial = hex(cert.raw_serial());
        // The TLS layer checked the dates at the handshake; a connection
        // outlives them, so they are checked again on every call, exactly as
        // the handshake does (no leeway: the controller back-dates the
        // certificates it signs).
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let now = i64::try_from(now_secs()).unwrap_or(i64::MAX);
        if now > not_after {
            return Err(CredentialError::Invalid(format!(
                "certificate {serial} expired at {} (UTC); get a new one signed (berth cert sign)",
                utc(not_after)
            )));
        }
        if now < not_before {
            return Err(CredentialError::Invalid(format!(
                "certificate {serial} is not valid before {} (UTC); check this machine's clock",
                utc(not_before)
            )));
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| CredentialError::Invalid("it has no subject CN".into()))?;
        let subject = normalize_subject(cn).map_err(|e| {
            CredentialError::Invalid(format!("certificate {serial} names a refused subject: {e}"))
        })?;
        // Ours only if our CA's key signed it: a --client-ca CA can copy our
        // CA's name and a known serial, but not its signature.
        let (_, ca) =
            x509_parser::parse_x509_certificate(self.ca.cert_der.as_ref()).map_err(|e| {
                CredentialError::Internal(format!("the CA certificate does not parse: {e}"))
            })?;
        let ours = cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok();
        let recorded = if ours {
            self.registry.cert(&serial).await?
        } else {
            None
        };
        let scope = match recorded {
            Some(record) => {
                if record.subject != cn {
                    return Err(CredentialError::Invalid(format!(
                        "certificate {serial} names \"{}\", not the subject it was issued to",
                        shown(cn)
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
        let window = Window {
            from: u64::try_from(not_before).unwrap_or(0),
            until: u64::try_from(not_after).unwrap_or(0),
        };
        Ok((
            Identity {
                subject,
                scope,
                via: Via::Certificate,
            },
            serial,
            window,
        ))
    }

    /// Every client certificate signed, revoked ones included.
    pub async fn list_certs(&self) -> Result<Vec<CertRecord>, CredentialError> {
        self.registry.certs().await
    }

    /// Revokes a client certificate by serial (hex, colons allowed).
    pub async fn revoke_cert(&self, serial: &str) -> Result<CertRecord, CredentialError> {
        let key = serial.trim().to_ascii_lowercase().replace(':', "");
        let Some(mut record) = self.registry.cert(&key).await? else {
            return Err(CredentialError::NotFound(format!("certificate {serial:?}")));
        };
        record.revoked = true;
        self.registry.put_cert(&record).await?;
        self.forget(&key);
        Ok(record)
    }

    /// The CA client certificates are signed by.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The bootstrap admin token file, `<auth-dir>/admin.token`.
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join(ADMIN_TOKEN_FILE)
    }

    async fn issue_bootstrap(&self) -> Result<(String, TokenRecord), CredentialError> {
        self.issue_token_as(
            "admin",
            Scope {
                role: Role::Admin,
                services: ["*".to_owned()].into(),
            },
            ADMIN_TOKEN_TTL,
            true,
        )
        .await
    }

    /// Revokes every bootstrap token of this controller but `keep`;
    /// returns their ids.
    async fn revoke_bootstrap_except(&self, keep: &str) -> Result<Vec<String>, CredentialError> {
        let mut revoked = Vec::new();
        for record in self.list_tokens().await? {
            let mine = record.holder.as_ref().is_none_or(|h| *h == self.holder);
            if record.bootstrap && mine && !record.revoked && record.jti != keep {
                self.revoke_token(&record.jti).await?;
                revoked.push(record.jti);
            }
        }
        Ok(revoked)
    }

    /// Makes sure `admin.token` holds a valid bootstrap admin token, and that
    /// no earlier bootstrap token is still valid. A missing file (deleted by
    /// an operator to rotate it offline), or one that no longer verifies, is
    /// replaced by a new token, and every earlier bootstrap token is
    /// revoked. A file holding a valid admin token is kept and marked as the
    /// bootstrap token (data directories from before the mark existed).
    /// Returns its path; the changes are durable once the store is flushed.
    pub async fn ensure_admin_token(&self) -> Result<PathBuf, CredentialError> {
        let _rotation = self.rotation.lock().await;
        let path = self.admin_token_path();
        let current = match std::fs::read(&path) {
            Ok(bytes) => match self
                .verify_token_fully(String::from_utf8_lossy(&bytes).trim())
                .await
            {
                Ok((id, jti, _)) if id.scope.role == Role::Admin => Some(jti),
                // The registry cannot be reached: not a reason to replace it.
                Err(e @ (CredentialError::Unavailable(_) | CredentialError::Registry(_))) => {
                    return Err(e)
                }
                _ => {
                    tracing::warn!(path = %path.display(), "the bootstrap admin token is no longer valid; issuing a new one");
                    std::fs::remove_file(&path)
                        .map_err(fsio::at(&path))
                        .map_err(PkiError::from)?;
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(PkiError::from(FileError { path, source }).into()),
        };
        if let Some(jti) = current {
            if let Some(mut record) = self.registry.token(&jti).await? {
                if !record.bootstrap {
                    record.bootstrap = true;
                    record.holder = Some(self.holder.clone());
                    self.registry.put_token(&record).await?;
                }
            }
            // Finishes a rotation a crash interrupted after the new file
            // was written.
            for old in self.revoke_bootstrap_except(&jti).await? {
                tracing::info!(jti = %old, "revoked an earlier bootstrap admin token");
            }
            return Ok(path);
        }
        let (token, record) = self.issue_bootstrap().await?;
        fsio::write_private_new(&path, format!("{token}\n").as_bytes())?;
        tracing::info!(path = %path.display(), jti = %record.jti, "created the bootstrap admin token");
        for old in self.revoke_bootstrap_except(&record.jti).await? {
            tracing::info!(jti = %old, "revoked the previous bootstrap admin token");
        }
        Ok(path)
    }

    /// Rotates the bootstrap admin token while the controller runs: issues
    /// a new one, replaces `admin.token` with it (atomically, 0600) and
    /// revokes every earlier bootstrap token, effective at their next
    /// request. Returns the new record and the revoked ids; durable once the
    /// store is flushed. A crash part-way is completed at the next start by
    /// [`Credentials::ensure_admin_token`].
    pub async fn rotate_admin_token(&self) -> Result<(TokenRecord, Vec<String>), CredentialError> {
        let _rotation = self.rotation.lock().await;
        let path = self.admin_token_path();
        let (token, record) = self.issue_bootstrap().await?;
        fsio::replace(&path, format!("{token}\n").as_bytes(), 0o600)?;
        let revoked = self.revoke_bootstrap_except(&record.jti).await?;
        Ok((record, revoked))
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time, for messages.
fn utc(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
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

    fn credentials() -> (tempfile::TempDir, Credentials) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(Ca::load_or_create(&dir.path().join("tls")).expect("ca"));
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("db");
        let creds = Credentials::open(&dir.path().join("auth"), &db, ca).expect("credentials");
        (dir, creds)
    }

    /// A client certificate for `cn` signed by the controller's CA and
    /// recorded, valid from `from` to `until` (seconds from now).
    async fn recorded_cert(
        c: &Credentials,
        cn: &str,
        from: i64,
        until: i64,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let serial = random_serial();
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(serial.clone());
        params.not_before = now + time::Duration::seconds(from);
        params.not_after = now + time::Duration::seconds(until);
        let pem = c.ca.sign(&params, &key).expect("sign");
        let record = CertRecord {
            serial: hex(&serial.to_bytes()),
            subject: cn.into(),
            scope: Scope {
                role: Role::User,
                services: ["*".to_owned()].into(),
            },
            not_before: 0,
            not_after: u64::MAX,
            revoked: false,
        };
        c.registry.put_cert(&record).await.expect("record");
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("der")
    }

    #[tokio::test]
    async fn certificate_dates_are_checked_at_every_verification() {
        let (_dir, c) = credentials();
        let future = recorded_cert(&c, "early", 3600, 7200).await;
        let err = c
            .verify_certificate(&future)
            .await
            .expect_err("not yet valid");
        assert!(err.to_string().contains("not valid before"), "{err}");
        let past = recorded_cert(&c, "late", -7200, -3600).await;
        let err = c.verify_certificate(&past).await.expect_err("expired");
        assert!(err.to_string().contains("expired at"), "{err}");
        // A remembered certificate is re-checked against its dates: it
        // stops working the second after not_after.
        let short = recorded_cert(&c, "short", -60, 2).await;
        assert_eq!(
            c.verify_certificate(&short)
                .await
                .expect("valid now")
                .subject,
            "short"
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        let err = c
            .verify_certificate(&short)
            .await
            .expect_err("expired while remembered");
        assert!(err.to_string().contains("expired at"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_admin_token_is_replaced_and_the_old_one_revoked() {
        let (dir, c) = credentials();
        let path = c.ensure_admin_token().await.expect("first");
        let old = std::fs::read_to_string(&path).expect("read");
        assert!(c.verify_token(old.trim()).await.is_ok());
        std::fs::remove_file(&path).expect("delete");
        c.ensure_admin_token().await.expect("again");
        let new = std::fs::read_to_string(&path).expect("read");
        assert_ne!(old, new);
        assert!(
            c.verify_token(old.trim()).await.is_err(),
            "the old one is revoked"
        );
        assert!(c.verify_token(new.trim()).await.is_ok());
        let (_, revoked) = c.rotate_admin_token().await.expect("rotate");
        assert_eq!(revoked.len(), 1);
        assert!(c.verify_token(new.trim()).await.is_err());
        drop(dir);
    }

    /// Two controllers on one registry (as on etcd): each start and each
    /// rotation revokes only the controller's own earlier bootstrap tokens.
    #[tokio::test]
    async fn bootstrap_rotations_on_a_shared_registry_revoke_only_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("database");
        let registry: Arc<dyn Registry> = Arc::new(SledRegistry::open(&db).expect("registry"));
        let ca = Arc::new(Ca::load_or_create(&dir.path().join("tls")).expect("CA"));
        let a = Credentials::open_with(
            &dir.path().join("a"),
            Arc::clone(&registry),
            Arc::clone(&ca),
        )
        .expect("a");
        let b = Credentials::open_with(&dir.path().join("b"), registry, ca).expect("b");
        let a_token =
            std::fs::read_to_string(a.ensure_admin_token().await.expect("a's")).expect("read a's");
        b.ensure_admin_token().await.expect("b's");
        b.rotate_admin_token().await.expect("b rotates");
        assert!(
            a.verify_token(a_token.trim()).await.is_ok(),
            "B's start and rotation left A's bootstrap token alone"
        );
        let (_, revoked) = a.rotate_admin_token().await.expect("a rotates");
        assert_eq!(revoked.len(), 1, "A revokes its own one: {revoked:?}");
        assert!(a.verify_token(a_token.trim()).await.is_err());
    }

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
    #[tokio::test]
    async fn refused_pem_is_not_echoed_whole() {
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
            .await
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
