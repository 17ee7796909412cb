//! The identity types every other auth module speaks in: who a caller is
//! ([`Identity`]), what a credential may do ([`Role`], [`Scope`]) and how
//! it was proven ([`Via`]). A leaf: it imports nothing of the crate, so
//! authentication, authorisation and credentials all depend on it and not
//! on each other.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

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
    /// The role granted.
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
    /// A bearer token.
    Token,
    /// A client certificate.
    Certificate,
    /// A token and a certificate of the same subject.
    Both,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The subject, in normal form C.
    pub subject: String,
    /// What the caller may do.
    pub scope: Scope,
    /// How it was proven.
    pub via: Via,
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
