//! The commands of `berth`, one file per command group. Each file holds its
//! subcommand enum and a `run` that does it; adding a group is a file here,
//! a variant of [`Command`] and a line of [`run`].

use berth_client::output::Format;

use crate::cli::Globals;

pub mod ca;
pub mod cert;
pub mod node;
pub mod service;
pub mod snapshot;
pub mod token;
pub mod trust;
pub mod volume;

/// The command groups.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Configured services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshots of volumes.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Pinned controllers (the client's known_hosts).
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Tokens (admin).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Client certificates (admin).
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// The controller's certificate authority (admin).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Node agents: Docker's volume plugin.
    #[command(subcommand)]
    Plugin(node::PluginCommand),
}

/// Runs one command. Every group but `trust` opens a session first.
pub async fn run(globals: &Globals, command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Service(c) => service::run(globals, c).await,
        Command::Volume(c) => volume::run(globals, c).await,
        Command::Snapshot(c) => snapshot::run(globals, c).await,
        Command::Trust(c) => trust::run(globals, c).await,
        Command::Token(c) => token::run(globals, c).await,
        Command::Cert(c) => cert::run(globals, c).await,
        Command::Ca(c) => ca::run(globals, c).await,
        Command::Plugin(c) => node::plugin(globals.session_options(), c).await,
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `table` for people or `json` for scripts, as `format` says.
pub fn print(
    format: Format,
    table: impl FnOnce() -> String,
    json: impl FnOnce() -> serde_json::Value,
) -> anyhow::Result<()> {
    match format {
        Format::Table => println!("{}", table()),
        Format::Json => print_json(&json())?,
    }
    Ok(())
}
