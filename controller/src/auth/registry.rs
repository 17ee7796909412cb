//! The credential registry seam: where the records of issued tokens and
//! client certificates (and their revocations) live, so that
//! [`crate::auth::credentials::Credentials`] works the same on the embedded
//! sled database (the default, one controller) and on etcd (several
//! controllers share one registry, cargo feature `etcd`).
//!
//! Every call is async, as in [`crate::volumes::records::Records`]: a
//! shared registry answers over the network. The credentials keep a cache
//! of verified credentials; a shared registry tells them of every change
//! another controller makes ([`Registry::watch`]), so a revocation made
//! anywhere is refused everywhere without a registry read per call.

use std::sync::Arc;

use crate::auth::credentials::{CertRecord, CredentialError, TokenRecord};

/// What a registry's watch reports to the credentials' cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The record of this token id or certificate serial changed (issued,
    /// revoked): forget what was verified under it.
    Record(String),
    /// The watch was lost: changes may be missed from now on, so forget
    /// everything and remember nothing until [`Changed::Resumed`].
    Lost,
    /// The watch is back and has replayed what it missed.
    Resumed,
}

/// Where a registry's changes go.
pub type Notify = Arc<dyn Fn(Changed) + Send + Sync>;

/// What the credentials need of a registry.
#[tonic::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The record of token `jti`.
    async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, CredentialError>;
    /// Writes a token record (a new one, or a revocation).
    async fn put_token(&self, record: &TokenRecord) -> Result<(), CredentialError>;
    /// Every token record.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, CredentialError>;
    /// The record of the certificate with this serial (lowercase hex).
    async fn cert(&self, serial: &str) -> Result<Option<CertRecord>, CredentialError>;
    /// Writes a certificate record.
    async fn put_cert(&self, record: &CertRecord) -> Result<(), CredentialError>;
    /// Every certificate record.
    async fn certs(&self) -> Result<Vec<CertRecord>, CredentialError>;
    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<(), CredentialError>;
    /// Starts telling `notify` of changes other controllers make. A
    /// registry only this controller writes has nothing to tell.
    async fn watch(&self, _notify: Notify) -> Result<(), CredentialError> {
        Ok(())
    }
    /// Whether several controllers share this registry.
    fn shared(&self) -> bool {
        false
    }
    /// Checks that this controller holds the cluster's identity (CA and
    /// token signing key) in a shared registry, recording it when it is the
    /// first; a registry of one controller has nothing to check.
    async fn claim_identity(
        &self,
        _ca_fingerprint: &str,
        _signing_pub: &str,
    ) -> Result<(), CredentialError> {
        Ok(())
    }
}

/// The sled registry: trees `tokens` (jti -> record) and `certs` (serial ->
/// record) in the controller's database.
#[derive(Clone)]
pub struct SledRegistry {
    db: sled::Db,
    tokens: sled::Tree,
    certs: sled::Tree,
}

impl SledRegistry {
    /// Opens the credential trees of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, CredentialError> {
        Ok(Self {
            db: db.clone(),
            tokens: db.open_tree("tokens")?,
            certs: db.open_tree("certs")?,
        })
    }
}

/// A record from its JSON.
pub fn decode<T: for<'de> serde::Deserialize<'de>>(raw: &[u8]) -> Result<T, CredentialError> {
    serde_json::from_slice(raw)
        .map_err(|e| CredentialError::Corrupt(format!("corrupt credential record: {e}")))
}

/// A record as JSON.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CredentialError> {
    serde_json::to_vec(value).map_err(CredentialError::Encode)
}

#[tonic::async_trait]
impl Registry for SledRegistry {
    async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, CredentialError> {
        self.tokens
            .get(jti.as_bytes())?
            .map(|raw| decode(&raw))
            .transpose()
    }

    async fn put_token(&self, record: &TokenRecord) -> Result<(), CredentialError> {
        self.tokens.insert(record.jti.as_bytes(), encode(record)?)?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, CredentialError> {
        self.tokens.iter().map(|e| decode(&e?.1)).collect()
    }

    async fn cert(&self, serial: &str) -> Result<Option<CertRecord>, CredentialError> {
        self.certs
            .get(serial.as_bytes())?
            .map(|raw| decode(&raw))
            .transpose()
    }

    async fn put_cert(&self, record: &CertRecord) -> Result<(), CredentialError> {
        self.certs
            .insert(record.serial.as_bytes(), encode(record)?)?;
        Ok(())
    }

    async fn certs(&self) -> Result<Vec<CertRecord>, CredentialError> {
        self.certs.iter().map(|e| decode(&e?.1)).collect()
    }

    async fn flush(&self) -> Result<(), CredentialError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
