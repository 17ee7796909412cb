//! Authentication: who is calling. It happens once per request in the
//! [`crate::rpc::pipeline`] layer: a bearer token, a client certificate, or
//! both (then both must be valid and name the same subject). The resulting
//! [`Identity`] travels in the request's extensions. Token strings and keys
//! never reach a log.

use std::sync::Arc;

use tonic::Status;

use crate::auth::credentials::{CredentialError, Credentials};
use crate::auth::identity::{Identity, Via};

/// Authenticates requests from their metadata and TLS peer certificates.
pub struct Authenticator {
    credentials: Arc<Credentials>,
}

impl Authenticator {
    pub fn new(credentials: Arc<Credentials>) -> Self {
        Self { credentials }
    }

    /// The identity behind a request, or why there is none (as the status to
    /// answer with).
    pub fn authenticate<B>(&self, request: &http::Request<B>) -> Result<Identity, Status> {
        let token = match request.headers().get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let text = value.to_str().ok().and_then(|v| {
                    let (scheme, rest) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                });
                match text {
                    Some(t) if !t.is_empty() => Some(t),
                    _ => {
                        return Err(Status::unauthenticated(
                            "the authorization header is not `Bearer <token>`",
                        ))
                    }
                }
            }
        };
        let leaf = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().cloned());

        let from_token = token.map(|t| self.credentials.verify_token(t)).transpose();
        let from_cert = leaf
            .map(|c| self.credentials.verify_certificate(&c))
            .transpose();
        let refused = |what: &str, e: CredentialError| match e {
            CredentialError::Invalid(_)
            | CredentialError::NotFound(_)
            | CredentialError::Subject(_) => {
                Status::unauthenticated(format!("{what} refused: {e}"))
            }
            // The controller's own trouble, not the caller's credential.
            other => Status::unavailable(format!("cannot check the {what} now: {other}")),
        };
        let (from_token, from_cert) = (
            from_token.map_err(|e| refused("token", e))?,
            from_cert.map_err(|e| refused("client certificate", e))?,
        );
        match (from_token, from_cert) {
            (None, None) => Err(Status::unauthenticated(
                "no credential: send a token (--token, --token-file, BERTH_TOKEN) or a client certificate (--cert/--key)",
            )),
            (Some(id), None) | (None, Some(id)) => Ok(id),
            (Some(t), Some(c)) if t.subject == c.subject => Ok(Identity {
                subject: t.subject,
                scope: t.scope.intersect(&c.scope),
                via: Via::Both,
            }),
            (Some(t), Some(c)) => Err(Status::unauthenticated(format!(
                "the token names {:?} but the client certificate names {:?}; present credentials of one subject",
                t.subject, c.subject
            ))),
        }
    }
}
