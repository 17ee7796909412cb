//! `berth cert`: sign requests, issue key pairs, list and revoke client
//! certificates (admin).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use berth_client::output::{self, Format};
use berth_client::pb;
use serde_json::json;

use super::{print, print_json};
use crate::cli::{parse_ttl, Globals, ScopeArgs};

/// `berth cert ...`
#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// Sign a PEM certificate request (e.g. from `openssl req`) and print the certificate.
    #[command(
        after_help = "Example:\n  berth cert sign --csr alice.csr --services web > alice.crt"
    )]
    Sign {
        /// The CSR file.
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Lifetime, e.g. 30d.
        #[arg(long, value_parser = parse_ttl, default_value = "30d")]
        ttl: u64,
    },
    /// Make a key here, have the controller sign it, and write SUBJECT.key, SUBJECT.crt, ca.crt to DIR.
    #[command(
        after_help = "Example:\n  berth cert issue alice --services web --out ./alice\n  \
                            berth --cert alice/alice.crt --key alice/alice.key volume ls"
    )]
    Issue {
        /// Who the certificate is for (its subject common name).
        subject: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Lifetime, e.g. 30d.
        #[arg(long, value_parser = parse_ttl, default_value = "30d")]
        ttl: u64,
        /// Directory for the files (never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List signed client certificates.
    #[command(visible_alias = "ls", after_help = "Example:\n  berth cert ls -o json")]
    List,
    /// Revoke a client certificate by serial.
    #[command(
        after_help = "Example:\n  berth cert revoke 5A3F...   # the SERIAL column of `berth cert ls`"
    )]
    Revoke {
        /// The certificate's serial (the SERIAL column of `berth cert ls`).
        serial: String,
    },
}

/// A signing request for `scope` and `ttl` seconds.
fn sign_request(csr_pem: String, scope: &ScopeArgs, ttl: u64) -> pb::SignCertificateRequest {
    pb::SignCertificateRequest {
        csr_pem,
        scope: Some(scope.to_proto()),
        ttl_seconds: ttl,
        allow_unknown_services: scope.allow_unknown,
    }
}

/// Runs `berth cert ...`.
pub async fn run(globals: &Globals, command: &CertCommand) -> anyhow::Result<()> {
    let mut admin = globals.session().await?.admin();
    let format = globals.output;
    match command {
        CertCommand::Sign { csr, scope, ttl } => {
            let csr_pem = std::fs::read_to_string(csr).with_context(|| {
                format!("cannot read the certificate request {}", csr.display())
            })?;
            let signed = admin
                .sign_certificate(sign_request(csr_pem, scope, *ttl))
                .await?
                .into_inner();
            match format {
                Format::Table => print!("{}", signed.certificate_pem),
                Format::Json => {
                    let mut v = info_json(signed.info.as_ref());
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
            let csr_pem = csr.pem().context("cannot encode the certificate request")?;
            let signed = admin
                .sign_certificate(sign_request(csr_pem, scope, *ttl))
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
                    let mut v = info_json(signed.info.as_ref());
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
            print(
                format,
                || output::cert_table(&certs),
                || certs.iter().map(output::cert_json).collect(),
            )?;
        }
        CertCommand::Revoke { serial } => {
            let info = admin
                .revoke_certificate(pb::RevokeCertificateRequest {
                    serial: serial.clone(),
                })
                .await?
                .into_inner();
            print(
                format,
                || format!("revoked certificate {} of {}", info.serial, info.subject),
                || output::cert_json(&info),
            )?;
        }
    }
    Ok(())
}

/// The signed certificate's record as JSON (`null` when the reply has none).
fn info_json(info: Option<&pb::CertificateInfo>) -> serde_json::Value {
    info.map(output::cert_json).unwrap_or_default()
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
