//! Who is calling, and what they may do.
//!
//! Authentication happens once per request in the [`crate::pipeline`]
//! layer: a bearer token, a client certificate, or both (then both must be
//! valid and name the same subject). The resulting [`Identity`] travels in
//! the request's extensions; handlers authorise each service they touch with
//! [`Authorizer`]. Every decision is logged on the `berthd::audit` target.
//! Token strings and keys never reach a log.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::catalog::Catalog;
use crate::credentials::{CredentialError, Credentials};

/// The audit log target.
pub const AUDIT: &str = "berthd::audit";

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May use the volumes of the services in scope.
    User,
    /// May do everything, including admin calls.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::User => "user",
            Role::Admin => "admin",
        })
    }
}

/// A credential's scope, fixed by the admin who issued it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub role: Role,
    /// Services a user may use; `*` for all.
    pub services: BTreeSet<String>,
}

impl Scope {
    /// Whether the scope names `service` (or `*`).
    pub fn covers(&self, service: &str) -> bool {
        self.role == Role::Admin || self.services.contains("*") || self.services.contains(service)
    }

    /// The narrower of two scopes (token and certificate presented together).
    pub fn intersect(&self, other: &Scope) -> Scope {
        let role = self.role.min(other.role);
        let services = match (
            self.services.contains("*") || self.role == Role::Admin,
            other.services.contains("*") || other.role == Role::Admin,
        ) {
            (true, true) => ["*".to_owned()].into(),
            (true, false) => other.services.clone(),
            (false, true) => self.services.clone(),
            (false, false) => self
                .services
                .intersection(&other.services)
                .cloned()
                .collect(),
        };
        Scope { role, services }
    }
}

/// How the caller proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Token,
    Certificate,
    Both,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Identity {
    pub subject: String,
    pub scope: Scope,
    pub via: Via,
}

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

/// Why an identity may not use a service. Only the audit log tells these
/// apart; callers are told what [`Refusal::public`] says, which never
/// depends on whether the service exists unless the caller is an admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Neither the credential's scope nor the service's allow list names
    /// the subject (whether or not the service exists).
    OutOfScope,
    /// The service's deny list names the subject.
    Denied,
    /// The scope would cover the service, but none is configured by that
    /// name.
    Unknown,
}

impl Refusal {
    /// The precise reason, for the audit log.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::OutOfScope => "the credential's scope does not include this service",
            Refusal::Denied => "the service's deny list names this subject",
            Refusal::Unknown => "the service is not configured",
        }
    }

    /// What a non-admin caller is told: a denied service and one that does
    /// not exist read the same, so a refusal reveals nothing about which
    /// services exist.
    pub fn public(self) -> &'static str {
        match self {
            Refusal::OutOfScope => Refusal::OutOfScope.reason(),
            Refusal::Denied | Refusal::Unknown => {
                "the service is closed to this subject (it is not configured, or its deny list names the subject); `berth service list` shows the services you may use"
            }
        }
    }
}

/// Decides what an identity may do, with the operator's per-service lists.
#[derive(Clone)]
pub struct Authorizer {
    catalog: Arc<Catalog>,
}

impl Authorizer {
    /// An authorizer over the configured services.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self { catalog }
    }

    /// The configured services.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether `who` may use `service`, and if not, why. The scope (or an
    /// allow list) is consulted first, so a caller it does not cover gets
    /// the same refusal for every service, configured or not; then deny
    /// lists, which win over everything; then existence.
    pub fn decide(&self, who: &Identity, service: &str) -> Result<(), Refusal> {
        let svc = self.catalog.get(service);
        let allowed = svc.is_some_and(|s| s.allow.iter().any(|a| a == &who.subject));
        if !who.scope.covers(service) && !allowed {
            return Err(Refusal::OutOfScope);
        }
        let Some(svc) = svc else {
            // Records of a service no longer configured are shown to nobody.
            return Err(Refusal::Unknown);
        };
        if svc.deny.iter().any(|s| s == &who.subject) {
            return Err(Refusal::Denied);
        }
        Ok(())
    }

    /// Authorises one call on one service, logging the decision. This comes
    /// before any lookup of the service: a caller not allowed a service is
    /// refused with PermissionDenied and the same message whether it exists
    /// or not. Admins, who may see every service, learn NotFound.
    pub fn check(&self, who: &Identity, method: &str, service: &str) -> Result<(), Status> {
        if service.is_empty() {
            return Err(Status::invalid_argument(
                "service is required: name one of the configured services",
            ));
        }
        if berth_drivers::VolumeName::parse(service).is_err() {
            // Configured services all have valid names: this reveals nothing.
            return Err(Status::invalid_argument(format!(
                "\"{}\" is not a service name: 1 to 128 characters of [A-Za-z0-9][A-Za-z0-9_.-]*",
                crate::credentials::shown(service)
            )));
        }
        match self.decide(who, service) {
            Ok(()) => {
                tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, service, decision = "allowed");
                Ok(())
            }
            Err(why) => {
                tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, service, decision = "denied", reason = %why.reason());
                if who.scope.role == Role::Admin {
                    if why == Refusal::Unknown {
                        return Err(Status::not_found(format!(
                            "service {service:?} does not exist; `berth service list` shows the services you may use"
                        )));
                    }
                    return Err(Status::permission_denied(format!(
                        "{} may not use service {service}: {}",
                        who.subject,
                        why.reason()
                    )));
                }
                Err(Status::permission_denied(format!(
                    "{} may not use service {service}: {}",
                    who.subject,
                    why.public()
                )))
            }
        }
    }

    /// Whether a listing may show `service` to `who` (filtered, not refused).
    pub fn visible(&self, who: &Identity, service: &str) -> bool {
        self.decide(who, service).is_ok()
    }

    /// Admin calls need the admin role.
    pub fn admin(&self, who: &Identity, method: &str) -> Result<(), Status> {
        if who.scope.role == Role::Admin {
            tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, decision = "allowed");
            return Ok(());
        }
        tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, decision = "denied", reason = "not an admin");
        Err(Status::permission_denied(format!(
            "{} may not call {method}: it needs the admin role",
            who.subject
        )))
    }
}

/// The identity the pipeline attached to a request.
pub fn identity<T>(request: &tonic::Request<T>) -> Result<Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no identity: the request bypassed authentication"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(role: Role, services: &[&str]) -> Scope {
        Scope {
            role,
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn scopes_cover_and_intersect() {
        assert!(scope(Role::User, &["*"]).covers("x"));
        assert!(scope(Role::User, &["a"]).covers("a"));
        assert!(!scope(Role::User, &["a"]).covers("b"));
        assert!(scope(Role::Admin, &[]).covers("b"));
        let both = scope(Role::Admin, &["*"]).intersect(&scope(Role::User, &["a", "b"]));
        assert_eq!(both, scope(Role::User, &["a", "b"]));
        let narrow = scope(Role::User, &["a", "b"]).intersect(&scope(Role::User, &["b", "c"]));
        assert_eq!(narrow, scope(Role::User, &["b"]));
    }
}
