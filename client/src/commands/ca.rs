//! `berth ca`: the controller's certificate authority.

use berth_client::output::{time, Format};
use berth_client::pb;

use super::print_json;
use crate::cli::Globals;

/// `berth ca ...`
#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Print the CA certificate (PEM) on stdout and when it (and the
    /// server certificate) expires on stderr; with -o json, all of it on
    /// stdout.
    #[command(
        after_help = "Example:\n  berth ca show > berth-ca.pem   # for --ca on other clients; the dates stay on the terminal"
    )]
    Show,
}

/// Runs `berth ca ...`.
pub async fn run(globals: &Globals, command: &CaCommand) -> anyhow::Result<()> {
    let session = globals.session().await?;
    match command {
        CaCommand::Show => {
            let ca = session
                .admin()
                .get_ca(pb::GetCaRequest {})
                .await?
                .into_inner();
            match globals.output {
                Format::Table => {
                    print!("{}", ca.ca_pem);
                    // On stderr, so `berth ca show > ca.pem` keeps a clean PEM.
                    for (what, at) in [("CA", &ca.not_after), ("server", &ca.server_not_after)] {
                        if at.is_some() {
                            eprintln!("{what} certificate expires {}", time(at.as_ref()));
                        }
                    }
                }
                Format::Json => print_json(&serde_json::json!({
                    "ca_pem": ca.ca_pem,
                    "fingerprint": ca.fingerprint,
                    "not_after": ca.not_after.as_ref().map(|t| time(Some(t))),
                    "server_not_after": ca.server_not_after.as_ref().map(|t| time(Some(t))),
                }))?,
            }
        }
    }
    Ok(())
}
