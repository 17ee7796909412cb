//! Authentication: who is calling. It happens once per request in the
//! [`crate::rpc::pipeline`] layer: a bearer token, a client certificate, or
//! both (then both must be valid and name the same subject). The resulting
//! [`Identity`] travels in the request's extensions. Token strings and keys
//! never reach a log.

use std::sync::Arc;

use crate::auth::credentials::{CredentialError, Credentials};
use crate::auth::identity::{Identity, Via};

/// Why a request has no identity. [`crate::rpc::status`] answers
/// `Unavailable` for [`AuthnError::Unavailable`] (the controller cannot
/// check now) and `Unauthenticated` for everything else.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// An `authorization` header that is not a bearer token.
    #[error("the authorization header is not `Bearer <token>`")]
    BadHeader,
    /// The credential was checked and refused.
    #[error("{what} refused: {source}")]
    Refused {
        /// "token" or "client certificate".
        what: &'static str,
        /// Why.
        source: CredentialError,
    },
    /// The controller's own trouble, not the caller's credential.
    #[error("cannot check the {what} now: {source}")]
    Unavailable {
        /// "token" or "client certificate".
        what: &'static str,
        /// Why.
        source: CredentialError,
    },
    /// No credential at all.
    #[error("no credential: send a token (--token, --token-file, BERTH_TOKEN) or a client certificate (--cert/--key)")]
    Missing,
    /// A token and a certificate of different subjects.
    #[error("the token names {token:?} but the client certificate names {cert:?}; present credentials of one subject")]
    Mismatch {
        /// The token's subject.
        token: String,
        /// The certificate's subject.
        cert: String,
    },
    /// A request reached a handler without passing the pipeline.
    #[error("no identity: the request bypassed authentication")]
    Bypassed,
}

impl AuthnError {
    /// Sorts a verification failure: the caller's credential, or the
    /// controller's trouble.
    fn checking(what: &'static str, source: CredentialError) -> Self {
        match source {
            CredentialError::Invalid(_)
            | CredentialError::NotFound(_)
            | CredentialError::Subject(_) => Self::Refused { what, source },
            source => Self::Unavailable { what, source },
        }
    }
}

/// Authenticates requests from their metadata and TLS peer certificates.
pub struct Authenticator {
    credentials: Arc<Credentials>,
}

impl Authenticator {
    /// An authenticator checking against `credentials`.
    pub fn new(credentials: Arc<Credentials>) -> Self {
        Self { credentials }
    }

    /// The identity behind a request, or why there is none.
    pub async fn authenticate<B>(
        &self,
        request: &http::Request<B>,
    ) -> Result<Identity, AuthnError> {
        let (token, leaf) = Self::presented(request)?;
        self.verify(token, leaf).await
    }

    /// What a request presents: its bearer token and the client
    /// certificate of its connection. Taken apart from the checks so that
    /// the request (whose body is not `Sync`) is not held across them.
    pub fn presented<B>(
        request: &http::Request<B>,
    ) -> Result<
        (
            Option<String>,
            Option<rustls::pki_types::CertificateDer<'static>>,
        ),
        AuthnError,
    > {
        let token = match request.headers().get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let text = value.to_str().ok().and_then(|v| {
                    let (scheme, rest) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                });
                match text {
                    Some(t) if !t.is_empty() => Some(t.to_owned()),
                    _ => return Err(AuthnError::BadHeader),
                }
            }
        };
        let leaf = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().cloned());
        Ok((token, leaf))
    }

    /// The identity behind a presented token and/or client certificate.
    pub async fn verify(
        &self,
        token: Option<String>,
        leaf: Option<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<Identity, AuthnError> {
        let from_token = match token {
            Some(t) => Some(
                self.credentials
                    .verify_token(&t)
                    .await
                    .map_err(|e| AuthnError::checking("token", e))?,
            ),
            None => None,
        };
        let from_cert = match leaf {
            Some(c) => Some(
                self.credentials
                    .verify_certificate(&c)
                    .await
                    .map_err(|e| AuthnError::checking("client certificate", e))?,
            ),
            None => None,
        };
        match (from_token, from_cert) {
            (None, None) => Err(AuthnError::Missing),
            (Some(id), None) | (None, Some(id)) => Ok(id),
            (Some(t), Some(c)) if t.subject == c.subject => Ok(Identity {
                subject: t.subject,
                scope: t.scope.intersect(&c.scope),
                via: Via::Both,
            }),
            (Some(t), Some(c)) => Err(AuthnError::Mismatch {
                token: t.subject,
                cert: c.subject,
            }),
        }
    }
}
