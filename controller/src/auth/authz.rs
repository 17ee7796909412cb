//! Authorisation: what an authenticated caller may do, with the operator's
//! per-service allow and deny lists. Every decision is logged on the
//! [`AUDIT`] target.

use std::sync::Arc;

use tonic::Status;

use crate::auth::identity::{Identity, Role, AUDIT};
use crate::volumes::catalog::Catalog;

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
                crate::auth::credentials::shown(service)
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
