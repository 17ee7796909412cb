//! Authorisation: what an authenticated caller may do, with the operator's
//! per-service allow and deny lists. Every decision is logged on the
//! [`AUDIT`] target.

use std::sync::Arc;

use crate::auth::identity::{Identity, Role, AUDIT};
use crate::auth::subject::shown;
use crate::volumes::catalog::Catalog;

/// Why a call was not authorised; [`crate::rpc::status`] maps each to its
/// gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The request names no service (InvalidArgument).
    #[error("service is required: name one of the configured services")]
    NoService,
    /// The request names something that cannot be a service
    /// (InvalidArgument); the name is already escaped.
    #[error("\"{0}\" is not a service name: 1 to 128 characters of [A-Za-z0-9][A-Za-z0-9_.-]*")]
    NotAServiceName(String),
    /// An admin named a service that is not configured (NotFound).
    #[error("service {0:?} does not exist; `berth service list` shows the services you may use")]
    UnknownService(String),
    /// The caller may not use the service (PermissionDenied).
    #[error("{subject} may not use service {service}: {reason}")]
    Refused {
        /// The caller.
        subject: String,
        /// The service.
        service: String,
        /// What the caller is told (see [`Refusal::public`]).
        reason: &'static str,
    },
    /// A non-admin called an admin method (PermissionDenied).
    #[error("{subject} may not call {method}: it needs the admin role")]
    NotAdmin {
        /// The caller.
        subject: String,
        /// The method.
        method: String,
    },
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

    /// The `reason` label of `berth_authz_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::OutOfScope => "out_of_scope",
            Refusal::Denied => "denied",
            Refusal::Unknown => "unknown_service",
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
    pub fn check(&self, who: &Identity, method: &str, service: &str) -> Result<(), AuthzError> {
        if service.is_empty() {
            tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, decision = "denied", reason = "no service named");
            crate::metrics::global().refused("no_service");
            return Err(AuthzError::NoService);
        }
        if berth_drivers::VolumeName::parse(service).is_err() {
            tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, service = %shown(service), decision = "denied", reason = "not a service name");
            crate::metrics::global().refused("not_a_service_name");
            // Configured services all have valid names: this reveals nothing.
            return Err(AuthzError::NotAServiceName(shown(service)));
        }
        match self.decide(who, service) {
            Ok(()) => {
                tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, service, decision = "allowed");
                Ok(())
            }
            Err(why) => {
                tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, service, decision = "denied", reason = %why.reason());
                crate::metrics::global().refused(why.label());
                let admin = who.scope.role == Role::Admin;
                if admin && why == Refusal::Unknown {
                    return Err(AuthzError::UnknownService(service.to_owned()));
                }
                Err(AuthzError::Refused {
                    subject: who.subject.clone(),
                    service: service.to_owned(),
                    reason: if admin { why.reason() } else { why.public() },
                })
            }
        }
    }

    /// Whether a listing may show `service` to `who` (filtered, not refused).
    pub fn visible(&self, who: &Identity, service: &str) -> bool {
        self.decide(who, service).is_ok()
    }

    /// A listing that names no service: allowed for every authenticated
    /// caller, who sees only the services [`Authorizer::visible`] allows.
    /// Logged like every other decision.
    pub fn listing(&self, who: &Identity, method: &str) {
        tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, scope = "the services this subject may use", decision = "allowed");
    }

    /// Admin calls need the admin role.
    pub fn admin(&self, who: &Identity, method: &str) -> Result<(), AuthzError> {
        if who.scope.role == Role::Admin {
            tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, decision = "allowed");
            return Ok(());
        }
        tracing::info!(target: AUDIT, subject = %who.subject, via = ?who.via, method, decision = "denied", reason = "not an admin");
        crate::metrics::global().refused("not_admin");
        Err(AuthzError::NotAdmin {
            subject: who.subject.clone(),
            method: method.to_owned(),
        })
    }
}
