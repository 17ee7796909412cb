//! The commands of `berth`, one file per command group. Each file holds its
//! subcommand enum and a `run` that does it; adding a group is a file here,
//! a variant of [`Command`] and a line of [`run`].

use berth_client::output::Format;

use crate::cli::Globals;

pub mod ca;
pub mod cert;
pub mod docs;
pub mod node;
pub mod service;
pub mod snapshot;
pub mod token;
pub mod trust;
pub mod volume;

/// The command groups.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// The services you may use (each is a storage driver the controller runs).
    #[command(
        subcommand,
        after_help = "Examples:\n  berth service ls\n  berth service ls -o json"
    )]
    Service(service::ServiceCommand),
    /// Create, list, inspect, attach, detach, copy and remove volumes.
    #[command(
        subcommand,
        after_help = "Examples:\n  berth volume create db --size 10GiB\n  berth volume attach db --instance vm1\n  berth volume ls --attached"
    )]
    Volume(volume::VolumeCommand),
    /// Take, list and remove point-in-time snapshots of volumes.
    #[command(
        subcommand,
        after_help = "Examples:\n  berth snapshot create db before-upgrade\n  berth snapshot ls db"
    )]
    Snapshot(snapshot::SnapshotCommand),
    /// Which controllers this client trusts (its known_hosts): list, pin, unpin, check.
    #[command(
        subcommand,
        after_help = "Examples:\n  berth trust show ctl.example       # compare with `berthd fingerprint`\n  berth trust add ctl.example:7979 AB:CD:...\n  berth trust ls"
    )]
    Trust(trust::TrustCommand),
    /// Issue, list and revoke bearer tokens (admin).
    #[command(
        subcommand,
        after_help = "Examples:\n  berth token issue alice --services web,db --ttl 30d > alice.token\n  berth token revoke 3f2a..."
    )]
    Token(token::TokenCommand),
    /// Sign, issue, list and revoke client certificates for mutual TLS (admin).
    #[command(
        subcommand,
        after_help = "Examples:\n  berth cert issue alice --services web --out ./alice\n  berth cert sign --csr alice.csr > alice.crt"
    )]
    Cert(cert::CertCommand),
    /// Show the controller's certificate authority (admin).
    #[command(subcommand, after_help = "Example:\n  berth ca show > berth-ca.pem")]
    Ca(ca::CaCommand),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = docs::COMPLETIONS_HELP)]
    Completions(docs::CompletionsArgs),
    /// Write the manual pages (berth.1 and one per command) or print berth.1.
    #[command(after_help = docs::MAN_HELP)]
    Man(docs::ManArgs),
    /// Node agents: Docker's volume plugin and the CSI plugin.
    #[command(subcommand)]
    Plugin(node::PluginCommand),
}

/// Runs one command. Every group but `trust`, `completions` and `man` opens
/// a session first.
pub async fn run(globals: &Globals, command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Service(c) => service::run(globals, c).await,
        Command::Volume(c) => volume::run(globals, c).await,
        Command::Snapshot(c) => snapshot::run(globals, c).await,
        Command::Trust(c) => trust::run(globals, c).await,
        Command::Token(c) => token::run(globals, c).await,
        Command::Cert(c) => cert::run(globals, c).await,
        Command::Ca(c) => ca::run(globals, c).await,
        Command::Completions(c) => docs::completions(c),
        Command::Man(c) => docs::man(c),
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
