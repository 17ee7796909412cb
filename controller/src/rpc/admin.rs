//! `berth.v1.Admin`: issuing and revoking credentials, and the CA. Every
//! call needs the admin role.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::credentials::{self, CertRecord, Credentials, TokenRecord};
use crate::auth::{Authorizer, Role, Scope, AUDIT};
use crate::rpc::call::{Call, Gate};

/// Implements `berth.v1.Admin`.
#[derive(Clone)]
pub struct AdminApi {
    credentials: Arc<Credentials>,
    gate: Gate,
    /// The live TLS identity; `None` when the controller serves plaintext
    /// (the cluster identity is never exported then). Also the source of
    /// the server certificate's expiry in `GetCa`.
    tls: Option<Arc<crate::tls::live::Tls>>,
}

impl AdminApi {
    /// The admin service over `credentials`, authorising with `authz`;
    /// `tls`: the identity the controller serves, `None` over plaintext.
    pub fn new(
        credentials: Arc<Credentials>,
        authz: Authorizer,
        tls: Option<Arc<crate::tls::live::Tls>>,
    ) -> Self {
        Self {
            credentials,
            gate: Gate::new(authz),
            tls,
        }
    }

    async fn durable(&self) -> Result<(), Status> {
        Ok(self.credentials.flush().await?)
    }
}

fn scope_from(proto: Option<pb::Scope>) -> Result<Scope, Status> {
    let proto = proto.unwrap_or_default();
    let role = match pb::Role::try_from(proto.role) {
        Ok(pb::Role::Admin) => Role::Admin,
        Ok(pb::Role::User) | Ok(pb::Role::Unspecified) => Role::User,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown role {}",
                proto.role
            )))
        }
    };
    Ok(Scope {
        role,
        services: proto.services.into_iter().collect(),
    })
}

fn scope_to(scope: &Scope) -> pb::Scope {
    pb::Scope {
        role: match scope.role {
            Role::Admin => pb::Role::Admin,
            Role::User => pb::Role::User,
        } as i32,
        services: scope.services.iter().cloned().collect(),
    }
}

fn ts(secs: u64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

fn system_ts(at: std::time::SystemTime) -> Option<prost_types::Timestamp> {
    at.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| ts(d.as_secs()))
}

fn token_info(r: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        jti: r.jti.clone(),
        subject: r.subject.clone(),
        scope: Some(scope_to(&r.scope)),
        issued_at: ts(r.issued_at),
        expires_at: ts(r.expires_at),
        revoked: r.revoked,
        bootstrap: r.bootstrap,
    }
}

fn cert_info(r: &CertRecord) -> pb::CertificateInfo {
    pb::CertificateInfo {
        serial: r.serial.clone(),
        subject: r.subject.clone(),
        scope: Some(scope_to(&r.scope)),
        not_before: ts(r.not_before),
        not_after: ts(r.not_after),
        revoked: r.revoked,
    }
}

/// The longest lifetime a credential may be given.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn ttl(seconds: u64, default: Duration) -> Result<Duration, Status> {
    match seconds {
        0 => Ok(default),
        s if s > MAX_TTL.as_secs() => Err(Status::invalid_argument(format!(
            "a lifetime of {s} s is longer than the limit of ten years"
        ))),
        s => Ok(Duration::from_secs(s)),
    }
}

impl AdminApi {
    /// Refuses a scope naming services that are not configured, unless the
    /// admin asked for it (`--allow-unknown`: services configured later).
    /// A typo would otherwise issue a credential that silently grants
    /// nothing, or grants a service created later under that name.
    fn check_services(&self, scope: &Scope, allow_unknown: bool) -> Result<(), Status> {
        let catalog = self.gate.authz().catalog();
        let unknown: Vec<&str> = scope
            .services
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "*" && catalog.get(s).is_none())
            .collect();
        if unknown.is_empty() || allow_unknown {
            return Ok(());
        }
        let quoted = |names: Vec<&str>| {
            names
                .iter()
                .map(|n| format!("\"{}\"", crate::auth::subject::shown(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(Status::invalid_argument(format!(
            "the scope names services that are not configured: {}; the configured services are {}. Fix the names, or pass --allow-unknown (allow_unknown_services) to issue it for services configured later",
            quoted(unknown),
            quoted(catalog.names().collect()),
        )))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let Call {
            who, message: req, ..
        } = self.gate.admin(request)?;
        let scope = scope_from(req.scope)?;
        self.check_services(&scope, req.allow_unknown_services)?;
        let (token, record) = self
            .credentials
            .issue_token(
                &req.subject,
                scope,
                ttl(req.ttl_seconds, credentials::DEFAULT_TOKEN_TTL)?,
            )
            .await?;
        self.durable().await?;
        tracing::info!(target: AUDIT, subject = %who.subject, issued_to = %record.subject, jti = %record.jti, "issued a token");
        Ok(Response::new(pb::IssueTokenResponse {
            token,
            info: Some(token_info(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.gate.admin(request)?;
        let tokens = self
            .credentials
            .list_tokens()
            .await?
            .iter()
            .map(token_info)
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let Call {
            who, message: req, ..
        } = self.gate.admin(request)?;
        let record = self.credentials.revoke_token(&req.jti).await?;
        self.durable().await?;
        tracing::info!(target: AUDIT, subject = %who.subject, jti = %record.jti, "revoked a token");
        Ok(Response::new(token_info(&record)))
    }

    async fn sign_certificate(
        &self,
        request: Request<pb::SignCertificateRequest>,
    ) -> Result<Response<pb::SignCertificateResponse>, Status> {
        let Call {
            who, message: req, ..
        } = self.gate.admin(request)?;
        let scope = scope_from(req.scope)?;
        self.check_services(&scope, req.allow_unknown_services)?;
        let (certificate_pem, record) = self
            .credentials
            .sign_csr(
                &req.csr_pem,
                scope,
                ttl(req.ttl_seconds, credentials::DEFAULT_CERT_TTL)?,
            )
            .await?;
        self.durable().await?;
        tracing::info!(target: AUDIT, subject = %who.subject, issued_to = %record.subject, serial = %record.serial, "signed a client certificate");
        Ok(Response::new(pb::SignCertificateResponse {
            certificate_pem,
            ca_pem: self.credentials.ca().cert_pem.clone(),
            info: Some(cert_info(&record)),
        }))
    }

    async fn list_certificates(
        &self,
        request: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        self.gate.admin(request)?;
        let certificates = self
            .credentials
            .list_certs()
            .await?
            .iter()
            .map(cert_info)
            .collect();
        Ok(Response::new(pb::ListCertificatesResponse { certificates }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::CertificateInfo>, Status> {
        let Call {
            who, message: req, ..
        } = self.gate.admin(request)?;
        let record = self.credentials.revoke_cert(&req.serial).await?;
        self.durable().await?;
        tracing::info!(target: AUDIT, subject = %who.subject, serial = %record.serial, "revoked a client certificate");
        Ok(Response::new(cert_info(&record)))
    }

    async fn get_ca(
        &self,
        request: Request<pb::GetCaRequest>,
    ) -> Result<Response<pb::GetCaResponse>, Status> {
        self.gate.admin(request)?;
        let ca = self.credentials.ca();
        Ok(Response::new(pb::GetCaResponse {
            ca_pem: ca.cert_pem.clone(),
            fingerprint: ca.fingerprint(),
            not_after: crate::tls::x509::validity(&ca.cert_der).and_then(|(_, na)| system_ts(na)),
            server_not_after: self
                .tls
                .as_ref()
                .and_then(|tls| tls.presented().not_after)
                .and_then(system_ts),
        }))
    }

    async fn rotate_admin_token(
        &self,
        request: Request<pb::RotateAdminTokenRequest>,
    ) -> Result<Response<pb::RotateAdminTokenResponse>, Status> {
        let who = self.gate.admin(request)?.who;
        let (record, revoked) = self.credentials.rotate_admin_token().await?;
        self.durable().await?;
        tracing::info!(target: AUDIT, subject = %who.subject, jti = %record.jti, revoked = ?revoked, "rotated the bootstrap admin token");
        Ok(Response::new(pb::RotateAdminTokenResponse {
            info: Some(token_info(&record)),
            revoked_jtis: revoked,
            path: self.credentials.admin_token_path().display().to_string(),
        }))
    }

    async fn export_identity(
        &self,
        request: Request<pb::ExportIdentityRequest>,
    ) -> Result<Response<pb::ExportIdentityResponse>, Status> {
        let who = self.gate.admin(request)?.who;
        if self.tls.is_none() {
            return Err(Status::failed_precondition(
                "this controller serves plaintext (--insecure-plaintext): it never sends its keys over an unencrypted connection; serve TLS to let controllers join",
            ));
        }
        if !self.credentials.shared() {
            return Err(Status::failed_precondition(
                "this controller keeps its credentials in its own data directory (--store sled): a joined controller would not see them; run every controller with --store etcd://HOST:PORT",
            ));
        }
        let ca = self.credentials.ca();
        let signing_key_pem = self.credentials.signing_key_pem()?;
        tracing::warn!(target: AUDIT, subject = %who.subject, "exported the cluster identity (CA and signing keys) to a joining controller");
        Ok(Response::new(pb::ExportIdentityResponse {
            ca_cert_pem: ca.cert_pem.clone(),
            ca_key_pem: ca.key_pem(),
            signing_key_pem,
            fingerprint: ca.fingerprint(),
        }))
    }
}
