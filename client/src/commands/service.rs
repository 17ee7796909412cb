//! `berth service`: the services the caller may use.

use berth_client::output;

use super::print;
use crate::cli::Globals;

/// `berth service ...`
#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// List the services you may use, with their driver and what it can do.
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  berth service ls -o json"
    )]
    List,
}

/// Runs `berth service ...`.
pub async fn run(globals: &Globals, command: &ServiceCommand) -> anyhow::Result<()> {
    let session = globals.session().await?;
    match command {
        ServiceCommand::List => {
            let services = session.services().await?;
            print(
                globals.output,
                || output::service_table(&services),
                || services.iter().map(output::service_json).collect(),
            )
        }
    }
}
