//! `berth token`, `berth cert`: the admin commands (part of the `berth`
//! binary, not the library).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::json;

use super::{print_json, Authed, CertCommand, TokenCommand};
use berth_client::output::{self, Format};
use berth_client::pb;

type Admin = pb::admin_client::AdminClient<Authed>;

fn role(scope: Option<&pb::Scope>) -> &'static str {
    match scope.map(|s| pb::Role::try_from(s.role)) {
        Some(Ok(pb::Role::Admin)) => "admin",
        Some(Ok(pb::Role::User)) => "user",
        _ => "unknown",
    }
}

fn services(scope: Option<&pb::Scope>) -> String {
    scope.map(|s| s.services.join(",")).unwrap_or_default()
}

fn token_json(t: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "jti": t.jti,
        "subject": t.subject,
        "role": role(t.scope.as_ref()),
        "services": t.scope.as_ref().map(|s| s.services.clone()).unwrap_or_default(),
        "issued_at": output::time(t.issued_at.as_ref()),
        "expires_at": output::time(t.expires_at.as_ref()),
        "revoked": t.revoked,
        "bootstrap": t.bootstrap,
    })
}

fn cert_json(c: &pb::CertificateInfo) -> serde_json::Value {
    json!({
        "serial": c.serial,
        "subject": c.subject,
        "role": role(c.scope.as_ref()),
        "services": c.scope.as_ref().map(|s| s.services.clone()).unwrap_or_default(),
        "not_before": output::time(c.not_before.as_ref()),
        "not_after": output::time(c.not_after.as_ref()),
        "revoked": c.revoked,
    })
}

pub async fn token(admin: &Admin, format: Format, command: &TokenCommand) -> anyhow::Result<()> {
    let mut admin = admin.clone();
    match command {
        TokenCommand::Issue {
            subject,
            scope,
            ttl,
        } => {
            let issued = admin
                .issue_token(pb::IssueTokenRequest {
                    subject: subject.clone(),
                    scope: Some(scope.to_proto()),
                    ttl_seconds: *ttl,
                    allow_unknown_services: scope.allow_unknown,
                })
                .await?
                .into_inner();
            match format {
                // The token alone on stdout, so `$(berth token issue ...)` works.
                Format::Table => {
                    println!("{}", issued.token);
                    if let Some(info) = &issued.info {
                        eprintln!(
                            "issued token {} for {} (role {}, services {}), expires {}",
                            info.jti,
                            info.subject,
                            role(info.scope.as_ref()),
                            services(info.scope.as_ref()),
                            output::time(info.expires_at.as_ref())
                        );
                    }
                }
                Format::Json => {
                    let mut v = issued.info.as_ref().map(token_json).unwrap_or_default();
                    v["token"] = json!(issued.token);
                    print_json(&v)?;
                }
            }
        }
        TokenCommand::List => {
            let tokens = admin
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            match format {
                Format::Json => print_json(&tokens.iter().map(token_json).collect())?,
                Format::Table => {
                    let mut t = output::table(&[
                        "JTI", "SUBJECT", "ROLE", "SERVICES", "EXPIRES", "REVOKED",
                    ]);
                    for tok in &tokens {
                        t.add_row(vec![
                            tok.jti.clone(),
                            tok.subject.clone(),
                            role(tok.scope.as_ref()).into(),
                            services(tok.scope.as_ref()),
                            output::time(tok.expires_at.as_ref()),
                            if tok.revoked {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                        ]);
                    }
                    println!("{}", output::render(&t));
                }
            }
        }
        TokenCommand::Revoke { jti } => {
            let info = admin
                .revoke_token(pb::RevokeTokenRequest { jti: jti.clone() })
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&token_json(&info))?,
                Format::Table => println!("revoked token {} of {}", info.jti, info.subject),
            }
        }
        TokenCommand::RotateAdmin => {
            let rotated = admin
                .rotate_admin_token(pb::RotateAdminTokenRequest {})
                .await?
                .into_inner();
            match format {
                Format::Json => {
                    let mut v = rotated.info.as_ref().map(token_json).unwrap_or_default();
                    v["path"] = json!(rotated.path);
                    v["revoked_jtis"] = json!(rotated.revoked_jtis);
                    print_json(&v)?;
                }
                Format::Table => {
                    let jti = rotated.info.as_ref().map(|i| i.jti.as_str()).unwrap_or("?");
                    println!(
                        "wrote a new bootstrap admin token {jti} to {} on the controller's machine",
                        rotated.path
                    );
                    for old in &rotated.revoked_jtis {
                        println!("revoked the previous bootstrap admin token {old}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Creates a new file with mode 0600, refusing to overwrite.
fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

pub async fn cert(admin: &Admin, format: Format, command: &CertCommand) -> anyhow::Result<()> {
    let mut admin = admin.clone();
    match command {
        CertCommand::Sign { csr, scope, ttl } => {
            let csr_pem = std::fs::read_to_string(csr).with_context(|| {
                format!("cannot read the certificate request {}", csr.display())
            })?;
            let signed = admin
                .sign_certificate(pb::SignCertificateRequest {
                    csr_pem,
                    scope: Some(scope.to_proto()),
                    ttl_seconds: *ttl,
                    allow_unknown_services: scope.allow_unknown,
                })
                .await?
                .into_inner();
            match format {
                Format::Table => print!("{}", signed.certificate_pem),
                Format::Json => {
                    let mut v = signed.info.as_ref().map(cert_json).unwrap_or_default();
                    v["certificate_pem"] = json!(signed.certificate_pem);
                    v["ca_pem"] = json!(signed.ca_pem);
                    print_json(&v)?;
                }
            }
        }
        CertCommand::Issue {
            subject,
            scope,
            ttl,
            out,
        } => {
            let files = [
                out.join(format!("{subject}.key")),
                out.join(format!("{subject}.crt")),
                out.join("ca.crt"),
            ];
            if subject.contains('/') || subject.starts_with('.') {
                bail!("subject {subject:?} cannot name files; use a plain name");
            }
            if let Some(existing) = files.iter().find(|f| f.exists()) {
                bail!(
                    "{} already exists; it is never overwritten: choose another --out",
                    existing.display()
                );
            }
            // The key is made here and never leaves this machine.
            let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, subject.clone());
            let csr = params
                .serialize_request(&key)
                .context("cannot make a certificate request")?;
            let signed = admin
                .sign_certificate(pb::SignCertificateRequest {
                    csr_pem: csr.pem().context("cannot encode the certificate request")?,
                    scope: Some(scope.to_proto()),
                    ttl_seconds: *ttl,
                    allow_unknown_services: scope.allow_unknown,
                })
                .await?
                .into_inner();
            // Only once the controller signed: a refusal leaves no trace.
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            write_new_private(&files[0], key.serialize_pem().as_bytes())?;
            write_new_private(&files[1], signed.certificate_pem.as_bytes())?;
            write_new_private(&files[2], signed.ca_pem.as_bytes())?;
            match format {
                Format::Json => {
                    let mut v = signed.info.as_ref().map(cert_json).unwrap_or_default();
                    v["files"] = json!(files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>());
                    print_json(&v)?;
                }
                Format::Table => {
                    for f in &files {
                        println!("wrote {}", f.display());
                    }
                    if let Some(info) = &signed.info {
                        println!(
                            "serial {} expires {}",
                            info.serial,
                            output::time(info.not_after.as_ref())
                        );
                    }
                }
            }
        }
        CertCommand::List => {
            let certs = admin
                .list_certificates(pb::ListCertificatesRequest {})
                .await?
                .into_inner()
                .certificates;
            match format {
                Format::Json => print_json(&certs.iter().map(cert_json).collect())?,
                Format::Table => {
                    let mut t = output::table(&[
                        "SERIAL", "SUBJECT", "ROLE", "SERVICES", "EXPIRES", "REVOKED",
                    ]);
                    for c in &certs {
                        t.add_row(vec![
                            c.serial.clone(),
                            c.subject.clone(),
                            role(c.scope.as_ref()).into(),
                            services(c.scope.as_ref()),
                            output::time(c.not_after.as_ref()),
                            if c.revoked { "yes".into() } else { "no".into() },
                        ]);
                    }
                    println!("{}", output::render(&t));
                }
            }
        }
        CertCommand::Revoke { serial } => {
            let info = admin
                .revoke_certificate(pb::RevokeCertificateRequest {
                    serial: serial.clone(),
                })
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&cert_json(&info))?,
                Format::Table => {
                    println!("revoked certificate {} of {}", info.serial, info.subject)
                }
            }
        }
    }
    Ok(())
}
