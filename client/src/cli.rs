//! The command line of `berth`: the global options, shown once here, and the
//! argument types several command groups share. Each group's own
//! subcommands live beside its code in [`crate::commands`].

use std::path::PathBuf;
use std::time::Duration;

use berth_client::output::Format;
use berth_client::pb;
use berth_client::pinning::Fingerprint;
use berth_client::session::{Session, SessionOptions};
use clap::{Args, Parser};

use crate::commands::Command;

/// What `berth --help` says after the usage: what the client is for.
const ABOUT: &str = "Create, attach and snapshot storage volumes on a Berth controller";

/// The longer story of `berth --help`.
const LONG_ABOUT: &str = "\
Create, attach and snapshot storage volumes on a Berth controller.

berth talks to one controller (berthd) over gRPC and TLS. The first time it
meets a controller it shows the fingerprint of the controller's certificate
authority and asks whether to trust it; `berthd fingerprint` on the
controller's machine prints the same value to compare. Where to connect, the
pin and the credential can live in ~/.config/berth/config.toml, which berthd
writes for its own user at first start.";

/// Examples shown at the end of `berth --help`.
const EXAMPLES: &str = "\
Examples:
  berth volume create db --size 10GiB     Create a 10 GiB volume
  berth volume ls                          List volumes
  berth --host ctl.example volume ls       Ask another controller (port 7979)
  berth --host ctl-a,ctl-b volume ls       Ask a cluster: ctl-b if ctl-a cannot be reached
  berth completions bash > ~/.local/share/bash-completion/completions/berth";

/// Talk to a Berth controller.
#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    // How to reach, trust and authenticate to the controller; how to print.
    #[command(flatten)]
    pub globals: Globals,
    // What to do: one command group, see `commands`.
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes, shown under their own heading.
#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
pub struct Globals {
    /// The controller, as HOST[:PORT] (port 7979 if omitted), or the controllers of one cluster as a comma-separated list, tried in order on connection errors [default: `hosts` or `host` in the config, else 127.0.0.1:7979].
    #[arg(long, global = true, env = "BERTH_HOST")]
    pub host: Option<String>,
    /// Client config file [default: $XDG_CONFIG_HOME/berth/config.toml].
    #[arg(long, global = true, env = "BERTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trust the controller only if its CA has this SHA-256 fingerprint (no prompt).
    #[arg(long, global = true, value_name = "FP", conflicts_with_all = ["ca", "plaintext"])]
    pub fingerprint: Option<Fingerprint>,
    /// Verify the controller against this CA bundle and its host name (WebPKI) instead of pinning.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "plaintext")]
    pub ca: Option<PathBuf>,
    /// Talk plaintext to a controller started with --insecure-plaintext.
    #[arg(long, global = true)]
    pub plaintext: bool,
    /// Keep retrying while the controller is not up yet, this long (e.g. 10s).
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
    pub wait: Duration,
    /// Give up on a call that has no reply after this long (e.g. 60s, 5m).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout,
        default_value = "60s", env = "BERTH_TIMEOUT")]
    pub timeout: Duration,
    /// Authenticate with this bearer token (prefer --token-file: a flag shows in `ps`).
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        conflicts_with = "token_file",
        hide_env_values = true,
        env = "BERTH_TOKEN"
    )]
    pub token: Option<String>,
    /// Authenticate with the token in this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Output format: a table for people or JSON for scripts.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    pub output: Format,
}

impl Globals {
    /// The global options that say how to reach and trust the controller.
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            host: self.host.clone(),
            config: self.config.clone(),
            fingerprint: self.fingerprint,
            ca: self.ca.clone(),
            plaintext: self.plaintext,
            wait: self.wait,
            timeout: self.timeout,
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            may_prompt: true,
        }
    }

    /// Opens the session a command talks over (asking on a terminal at
    /// first contact).
    pub async fn session(&self) -> anyhow::Result<Session> {
        Ok(Session::open(&self.session_options()).await?)
    }
}

/// `--service`: which service a volume or snapshot belongs to.
#[derive(Args, Debug)]
pub struct ServiceArg {
    /// The service (default: the only one, when there is one).
    #[arg(long, short)]
    pub service: Option<String>,
}

impl ServiceArg {
    /// The service named, or the only one the caller may use.
    pub async fn resolve(&self, session: &Session) -> anyhow::Result<String> {
        Ok(session.service(self.service.as_deref()).await?)
    }
}

/// Who a token or certificate is for: its role and services.
#[derive(Args, Debug)]
pub struct ScopeArgs {
    /// Role of the credential.
    #[arg(long, value_enum, default_value = "user")]
    role: RoleArg,
    /// Services it may use: a,b or * (default: * for admins).
    #[arg(long, value_delimiter = ',')]
    services: Vec<String>,
    /// Accept services that are not configured yet (otherwise refused).
    #[arg(long)]
    pub allow_unknown: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RoleArg {
    User,
    Admin,
}

impl ScopeArgs {
    /// The scope as the API takes it.
    pub fn to_proto(&self) -> pb::Scope {
        let (role, default): (pb::Role, &[&str]) = match self.role {
            RoleArg::User => (pb::Role::User, &[]),
            RoleArg::Admin => (pb::Role::Admin, &["*"]),
        };
        let services = if self.services.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            self.services.iter().map(|s| s.trim().to_owned()).collect()
        };
        pb::Scope {
            role: role as i32,
            services,
        }
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("the timeout must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{text:?} is not a duration such as 60s, 5m ({e})")),
    }
}

/// A credential's lifetime in seconds (`1h`, `24h`, `30d`), at least one.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{text:?} is not a duration such as 1h, 24h, 30d ({e})"))
        .and_then(|s| {
            if s == 0 {
                Err("the lifetime must be at least one second".into())
            } else {
                Ok(s)
            }
        })
}
