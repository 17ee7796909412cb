//! `berth`: the Berth command-line client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use berth_client::connect::{self, ConnectError, ServerTrust};
use berth_client::deadline;
use berth_client::output::{self, Format};
use berth_client::pinning::{Fingerprint, TrustStore};
use berth_client::session::{Authed, Session, SessionError, SessionOptions, Target};
use berth_client::{pb, size};
use clap::{Args, Parser, Subcommand};

/// Talk to a Berth controller.
#[derive(Parser, Debug)]
#[command(name = "berth", version, about)]
struct Cli {
    /// The controller, as HOST:PORT [default: `host` in the config, else 127.0.0.1:7979].
    #[arg(long, global = true, env = "BERTH_HOST")]
    host: Option<String>,
    /// Client config file [default: $XDG_CONFIG_HOME/berth/config.toml].
    #[arg(long, global = true, env = "BERTH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Trust the controller only if its CA has this SHA-256 fingerprint (no prompt).
    #[arg(long, global = true, value_name = "FP", conflicts_with_all = ["ca", "plaintext"])]
    fingerprint: Option<Fingerprint>,
    /// Verify the controller against this CA bundle and its host name (WebPKI) instead of pinning.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "plaintext")]
    ca: Option<PathBuf>,
    /// Talk plaintext to a controller started with --insecure-plaintext.
    #[arg(long, global = true)]
    plaintext: bool,
    /// Keep retrying while the controller is not up yet, this long (e.g. 10s).
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
    wait: std::time::Duration,
    /// Give up on a call that has no reply after this long (e.g. 60s, 5m).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout,
        default_value = "60s", env = "BERTH_TIMEOUT")]
    timeout: std::time::Duration,
    /// Authenticate with this token.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        conflicts_with = "token_file",
        hide_env_values = true,
        env = "BERTH_TOKEN"
    )]
    token: Option<String>,
    /// Authenticate with the token in this file.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configured services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Snapshots of volumes.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Pinned controllers (the client's known_hosts).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Client certificates (admin).
    #[command(subcommand)]
    Cert(CertCommand),
    /// The controller's certificate authority (admin).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Node agents: Docker's volume plugin.
    #[command(subcommand)]
    Plugin(node_cmd::PluginCommand),
}

#[derive(Args, Debug)]
struct ScopeArgs {
    /// Role of the credential.
    #[arg(long, value_enum, default_value = "user")]
    role: RoleArg,
    /// Services it may use: a,b or * (default: * for admins).
    #[arg(long, value_delimiter = ',')]
    services: Vec<String>,
    /// Accept services that are not configured yet (otherwise refused).
    #[arg(long)]
    allow_unknown: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RoleArg {
    User,
    Admin,
}

impl ScopeArgs {
    fn to_proto(&self) -> pb::Scope {
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

fn parse_ttl(text: &str) -> Result<u64, String> {
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

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Issue a token and print it.
    Issue {
        subject: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Lifetime, e.g. 1h, 24h, 30d.
        #[arg(long, value_parser = parse_ttl, default_value = "24h")]
        ttl: u64,
    },
    /// List issued tokens.
    #[command(alias = "ls")]
    List,
    /// Revoke a token by its id (jti).
    Revoke { jti: String },
    /// Replace the bootstrap admin token (admin.token on the controller's
    /// machine) with a new one and revoke every earlier one.
    RotateAdmin,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Sign a PEM certificate request (e.g. from `openssl req`) and print the certificate.
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
    Issue {
        subject: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, value_parser = parse_ttl, default_value = "30d")]
        ttl: u64,
        /// Directory for the files (never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List signed client certificates.
    #[command(alias = "ls")]
    List,
    /// Revoke a client certificate by serial.
    Revoke { serial: String },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Print the CA certificate (PEM).
    Show,
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// List pinned controllers (trust store and config file).
    #[command(alias = "ls")]
    List,
    /// Pin a controller's fingerprint (get it with `berthd fingerprint`).
    Add {
        /// HOST:PORT
        host: String,
        fingerprint: Fingerprint,
    },
    /// Remove a controller's pin from the trust store.
    #[command(alias = "rm")]
    Remove {
        /// HOST:PORT
        host: String,
    },
    /// Connect and show what the controller presents, trusting nothing.
    Show {
        /// HOST:PORT [default: the controller in use]
        host: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// List the services you may use.
    #[command(alias = "ls")]
    List,
}

#[derive(Args, Debug)]
struct ServiceArg {
    /// The service (default: the only one, when there is one).
    #[arg(long, short)]
    service: Option<String>,
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// List volumes.
    #[command(alias = "ls")]
    List {
        /// Only this service's volumes.
        #[arg(long, short)]
        service: Option<String>,
        /// Only volumes attached to some instance.
        #[arg(long, conflicts_with = "available")]
        attached: bool,
        /// Only volumes attached nowhere.
        #[arg(long)]
        available: bool,
    },
    /// Create a volume (again with the same parameters: returns it).
    Create {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// Size, e.g. 4096, 512MiB, 10GiB, 1G.
        #[arg(long, value_parser = size::parse_size, default_value = "0", allow_hyphen_values = true)]
        size: u64,
        /// Driver option, KEY=VALUE (repeatable).
        #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_option)]
        options: Vec<(String, String)>,
        /// Restore this snapshot into the new volume.
        #[arg(long, value_name = "SNAPSHOT")]
        from_snapshot: Option<String>,
    },
    /// Show one volume.
    Inspect {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Remove a volume and its data.
    #[command(alias = "rm")]
    Remove {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// Detach it from every instance first.
        #[arg(long)]
        force: bool,
    },
    /// Attach a volume to an instance and print how to reach it.
    Attach {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// The instance [default: this machine's host name].
        #[arg(long)]
        instance: Option<String>,
    },
    /// Detach a volume from an instance.
    Detach {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
        /// The instance [default: this machine's host name].
        #[arg(long)]
        instance: Option<String>,
        /// Detach it from whichever instances hold it.
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Node(node_cmd::NodeVolumeCommand),
    /// Create DST as a copy of SRC.
    Copy {
        source: String,
        destination: String,
        #[command(flatten)]
        service: ServiceArg,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Take a point-in-time snapshot NAME of VOLUME.
    Create {
        volume: String,
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
    /// List snapshots (of VOLUME, if given).
    #[command(alias = "ls")]
    List {
        volume: Option<String>,
        /// Only this service's snapshots.
        #[arg(long, short)]
        service: Option<String>,
    },
    /// Show one snapshot.
    Inspect {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Remove a snapshot.
    #[command(alias = "rm")]
    Remove {
        name: String,
        #[command(flatten)]
        service: ServiceArg,
    },
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, with gRPC codes in words.
fn one_line(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status_line(status);
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let status = cause.downcast_ref::<tonic::Status>().or_else(|| {
            match cause.downcast_ref::<SessionError>() {
                Some(SessionError::Status(status)) => Some(status),
                _ => None,
            }
        });
        let text = match status {
            Some(status) => status_line(status),
            None => cause.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn status_line(status: &tonic::Status) -> String {
    use tonic::Code::*;
    if let Some(no_reply) = deadline::no_reply(status) {
        return no_reply.to_string();
    }
    let word = match status.code() {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown error",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "timed out",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "not supported",
        Internal => "internal error",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "not authenticated",
    };
    format!("{word}: {}", status.message())
}

impl Cli {
    /// The global options that say how to reach and trust the controller.
    fn session_options(&self) -> SessionOptions {
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
}

async fn trust_command(cli: &Cli, command: &TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::List => {
            let target = Target::resolve(&cli.session_options())?;
            let mut rows: Vec<(String, String, String)> = Vec::new();
            if let Some(path) = &target.loaded.path {
                for (host, entry) in &target.loaded.config.controllers {
                    let how = match (&entry.fingerprint, &entry.ca, entry.plaintext) {
                        (Some(fp), _, _) => fp.clone(),
                        (None, Some(ca), _) => format!("CA {}", ca.display()),
                        (None, None, true) => "plaintext".into(),
                        _ => continue,
                    };
                    rows.push((host.clone(), how, format!("config {}", path.display())));
                }
            }
            let store = TrustStore::open_default()?;
            for (host, fp) in store.list()? {
                rows.push((host, fp.to_string(), "trust store".into()));
            }
            match cli.output {
                Format::Json => print_json(
                    &rows
                        .iter()
                        .map(|(h, f, s)| serde_json::json!({"host": h, "fingerprint": f, "source": s}))
                        .collect(),
                )?,
                Format::Table => {
                    let mut t = output::table(&["HOST", "FINGERPRINT", "SOURCE"]);
                    for (h, f, s) in rows {
                        t.add_row(vec![h, f, s]);
                    }
                    println!("{}", output::render(&t));
                }
            }
        }
        TrustCommand::Add { host, fingerprint } => {
            let store = TrustStore::open_default()?;
            store.add(host, *fingerprint)?;
            println!(
                "pinned {host} to {fingerprint} in {}",
                store.path().display()
            );
        }
        TrustCommand::Remove { host } => {
            let store = TrustStore::open_default()?;
            if !store.remove(host)? {
                bail!(
                    "no pin for {host} in the trust store {}",
                    store.path().display()
                );
            }
            println!("removed the pin for {host}");
        }
        TrustCommand::Show { host } => {
            let host = match host {
                Some(h) => h.clone(),
                None => Target::resolve(&cli.session_options())?.host,
            };
            match connect::connect(&host, &ServerTrust::FirstContact, None, cli.wait).await {
                Err(ConnectError::Unknown { observed, .. }) => match cli.output {
                    Format::Json => print_json(&serde_json::json!({"host": host, "fingerprint": observed.to_string()}))?,
                    Format::Table => println!("{host} presents a certificate authority with SHA-256 fingerprint\n  {observed}"),
                },
                Err(e) => return Err(e.into()),
                Ok(_) => bail!("unexpectedly connected without trusting anything"),
            }
        }
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Trust(command) = &cli.command {
        return trust_command(&cli, command).await;
    }
    if let Command::Plugin(command) = &cli.command {
        return node_cmd::plugin(cli.session_options(), command).await;
    }
    let session = Session::open(&cli.session_options()).await?;
    match &cli.command {
        Command::Service(ServiceCommand::List) => {
            let services = session.services().await?;
            match cli.output {
                Format::Table => println!("{}", output::service_table(&services)),
                Format::Json => print_json(&services.iter().map(output::service_json).collect())?,
            }
        }
        Command::Volume(VolumeCommand::List {
            service,
            attached,
            available,
        }) => {
            let attachment = match (attached, available) {
                (true, _) => pb::AttachmentFilter::Attached,
                (_, true) => pb::AttachmentFilter::Available,
                _ => pb::AttachmentFilter::Any,
            } as i32;
            let mut volumes = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = session
                    .volumes()
                    .list_volumes(pb::ListVolumesRequest {
                        service: service.clone().unwrap_or_default(),
                        max_entries: 0,
                        page_token,
                        attachment,
                    })
                    .await?
                    .into_inner();
                volumes.extend(page.volumes);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            match cli.output {
                Format::Table => println!("{}", output::volume_table(&volumes)),
                Format::Json => print_json(&volumes.iter().map(output::volume_json).collect())?,
            }
        }
        Command::Volume(VolumeCommand::Create {
            name,
            service,
            size,
            options,
            from_snapshot,
        }) => {
            let service = session.service(service.service.as_deref()).await?;
            let volume = session
                .volumes()
                .create_volume(pb::CreateVolumeRequest {
                    service,
                    name: name.clone(),
                    size_bytes: *size,
                    options: options.iter().cloned().collect(),
                    from_snapshot: from_snapshot.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_volume(cli.output, &volume)?;
        }
        Command::Volume(VolumeCommand::Inspect { name, service }) => {
            let service = session.service(service.service.as_deref()).await?;
            let volume = session
                .volumes()
                .get_volume(pb::GetVolumeRequest {
                    service,
                    name: name.clone(),
                })
                .await?
                .into_inner();
            print_volume(cli.output, &volume)?;
        }
        Command::Volume(VolumeCommand::Remove {
            name,
            service,
            force,
        }) => {
            let service = session.service(service.service.as_deref()).await?;
            session
                .volumes()
                .delete_volume(pb::DeleteVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                    force: *force,
                })
                .await?;
            match cli.output {
                Format::Table => println!("removed volume {name} from service {service}"),
                Format::Json => {
                    print_json(&serde_json::json!({"removed": name, "service": service}))?
                }
            }
        }
        Command::Volume(VolumeCommand::Attach {
            name,
            service,
            instance,
        }) => {
            let service = session.service(service.service.as_deref()).await?;
            let attached = session
                .volumes()
                .attach_volume(pb::AttachVolumeRequest {
                    service,
                    name: name.clone(),
                    instance: instance.clone().unwrap_or_else(this_host),
                })
                .await?
                .into_inner();
            let attachment = attached.attachment.unwrap_or_default();
            match cli.output {
                Format::Table => println!(
                    "attached volume {name} to {}: {}",
                    attachment.instance, attachment.device
                ),
                Format::Json => print_json(&serde_json::json!({
                    "volume": attached.volume.as_ref().map(output::volume_json),
                    "instance": attachment.instance,
                    "device": attachment.device,
                    "fields": attachment.fields,
                }))?,
            }
        }
        Command::Volume(VolumeCommand::Detach {
            name,
            service,
            instance,
            force,
        }) => {
            let service = session.service(service.service.as_deref()).await?;
            let volume = session
                .volumes()
                .detach_volume(pb::DetachVolumeRequest {
                    service,
                    name: name.clone(),
                    instance: instance.clone().unwrap_or_else(this_host),
                    force: *force,
                })
                .await?
                .into_inner();
            match cli.output {
                Format::Table => {
                    if volume.attachments.is_empty() {
                        println!("volume {name} is attached to nothing");
                    } else {
                        let holders: Vec<_> = volume
                            .attachments
                            .iter()
                            .map(|a| a.instance.as_str())
                            .collect();
                        println!("volume {name} is still attached to {}", holders.join(", "));
                    }
                }
                Format::Json => print_json(&output::volume_json(&volume))?,
            }
        }
        Command::Volume(VolumeCommand::Copy {
            source,
            destination,
            service,
        }) => {
            let service = session.service(service.service.as_deref()).await?;
            let volume = session
                .volumes()
                .copy_volume(pb::CopyVolumeRequest {
                    service,
                    source: source.clone(),
                    name: destination.clone(),
                })
                .await?
                .into_inner();
            print_volume(cli.output, &volume)?;
        }
        Command::Snapshot(command) => snapshot_command(&session, cli.output, command).await?,
        Command::Volume(VolumeCommand::Node(command)) => {
            node_cmd::volume(&session, &cli.session_options(), cli.output, command).await?
        }
        Command::Trust(_) | Command::Plugin(_) => unreachable!("handled above"),
        Command::Token(command) => admin::token(&session.admin(), cli.output, command).await?,
        Command::Cert(command) => admin::cert(&session.admin(), cli.output, command).await?,
        Command::Ca(CaCommand::Show) => {
            let ca = session
                .admin()
                .get_ca(pb::GetCaRequest {})
                .await?
                .into_inner();
            match cli.output {
                Format::Table => print!("{}", ca.ca_pem),
                Format::Json => print_json(
                    &serde_json::json!({"ca_pem": ca.ca_pem, "fingerprint": ca.fingerprint}),
                )?,
            }
        }
    }
    Ok(())
}

mod admin;
mod node_cmd;

/// This machine's host name: the default instance ID.
fn this_host() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn snapshot_command(
    session: &Session,
    format: Format,
    command: &SnapshotCommand,
) -> anyhow::Result<()> {
    let mut client = session.snapshots();
    match command {
        SnapshotCommand::Create {
            volume,
            name,
            service,
        } => {
            let service = session.service(service.service.as_deref()).await?;
            let snap = client
                .create_snapshot(pb::CreateSnapshotRequest {
                    service,
                    volume: volume.clone(),
                    name: name.clone(),
                })
                .await?
                .into_inner();
            print_snapshot(format, &snap)?;
        }
        SnapshotCommand::List { volume, service } => {
            let service = match (volume, service) {
                (Some(_), None) => session.service(None).await?,
                (_, s) => s.clone().unwrap_or_default(),
            };
            let snaps = client
                .list_snapshots(pb::ListSnapshotsRequest {
                    service,
                    volume: volume.clone().unwrap_or_default(),
                })
                .await?
                .into_inner()
                .snapshots;
            match format {
                Format::Table => println!("{}", output::snapshot_table(&snaps)),
                Format::Json => print_json(&snaps.iter().map(output::snapshot_json).collect())?,
            }
        }
        SnapshotCommand::Inspect { name, service } => {
            let service = session.service(service.service.as_deref()).await?;
            let snap = client
                .get_snapshot(pb::GetSnapshotRequest {
                    service,
                    name: name.clone(),
                })
                .await?
                .into_inner();
            print_snapshot(format, &snap)?;
        }
        SnapshotCommand::Remove { name, service } => {
            let service = session.service(service.service.as_deref()).await?;
            client
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    service: service.clone(),
                    name: name.clone(),
                })
                .await?;
            match format {
                Format::Table => println!("removed snapshot {name} from service {service}"),
                Format::Json => {
                    print_json(&serde_json::json!({"removed": name, "service": service}))?
                }
            }
        }
    }
    Ok(())
}

fn print_snapshot(format: Format, snap: &pb::Snapshot) -> anyhow::Result<()> {
    match format {
        Format::Table => println!("{}", output::snapshot_table(std::slice::from_ref(snap))),
        Format::Json => print_json(&output::snapshot_json(snap))?,
    }
    Ok(())
}

fn print_volume(format: Format, volume: &pb::Volume) -> anyhow::Result<()> {
    match format {
        Format::Table => println!("{}", output::volume_detail(volume)),
        Format::Json => print_json(&output::volume_json(volume))?,
    }
    Ok(())
}
