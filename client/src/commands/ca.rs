//! `berth ca`: the controller's certificate authority.

use berth_client::output::Format;
use berth_client::pb;

use super::print_json;
use crate::cli::Globals;

/// `berth ca ...`
#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Print the CA certificate (PEM); with -o json, its fingerprint too.
    #[command(
        after_help = "Example:\n  berth ca show > berth-ca.pem   # for --ca on other clients"
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
                Format::Table => print!("{}", ca.ca_pem),
                Format::Json => print_json(
                    &serde_json::json!({"ca_pem": ca.ca_pem, "fingerprint": ca.fingerprint}),
                )?,
            }
        }
    }
    Ok(())
}
