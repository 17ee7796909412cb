//! `berth token`: issue, list, revoke tokens and rotate the bootstrap admin
//! token (admin).

use berth_client::output::{self, Format};
use berth_client::pb;
use serde_json::json;

use super::{print, print_json};
use crate::cli::{parse_ttl, Globals, ScopeArgs};

/// `berth token ...`
#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token and print it (only the token on stdout).
    #[command(
        after_help = "Examples:\n  berth token issue alice --services web,db --ttl 30d > alice.token\n  \
                            berth token issue ops --role admin"
    )]
    Issue {
        /// Who the token is for (a person or a machine); shown in logs and listings.
        subject: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Lifetime, e.g. 1h, 24h, 30d.
        #[arg(long, value_parser = parse_ttl, default_value = "24h")]
        ttl: u64,
    },
    /// List issued tokens.
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  berth token ls -o json"
    )]
    List,
    /// Revoke a token by its id (jti).
    #[command(
        after_help = "Example:\n  berth token revoke 3f2a9c...   # the JTI column of `berth token ls`"
    )]
    Revoke {
        /// The token's id (the JTI column of `berth token ls`).
        jti: String,
    },
    /// Replace the bootstrap admin token (admin.token on the controller's
    /// machine) with a new one and revoke every earlier one.
    #[command(after_help = "Example:\n  berth token rotate-admin")]
    RotateAdmin,
}

/// Runs `berth token ...`.
pub async fn run(globals: &Globals, command: &TokenCommand) -> anyhow::Result<()> {
    let mut admin = globals.session().await?.admin();
    let format = globals.output;
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
                            output::role(info.scope.as_ref()),
                            output::services(info.scope.as_ref()),
                            output::time(info.expires_at.as_ref())
                        );
                    }
                }
                Format::Json => {
                    let mut v = issued
                        .info
                        .as_ref()
                        .map(output::token_json)
                        .unwrap_or_default();
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
            print(
                format,
                || output::token_table(&tokens),
                || tokens.iter().map(output::token_json).collect(),
            )?;
        }
        TokenCommand::Revoke { jti } => {
            let info = admin
                .revoke_token(pb::RevokeTokenRequest { jti: jti.clone() })
                .await?
                .into_inner();
            print(
                format,
                || format!("revoked token {} of {}", info.jti, info.subject),
                || output::token_json(&info),
            )?;
        }
        TokenCommand::RotateAdmin => {
            let rotated = admin
                .rotate_admin_token(pb::RotateAdminTokenRequest {})
                .await?
                .into_inner();
            match format {
                Format::Json => {
                    let mut v = rotated
                        .info
                        .as_ref()
                        .map(output::token_json)
                        .unwrap_or_default();
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
