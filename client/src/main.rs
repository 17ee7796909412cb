//! `berth`: the Berth command-line client.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use berth_client::config::Loaded;
use berth_client::connect::{self, ConnectError, ServerTrust};
use berth_client::deadline::{self, Deadline};
use berth_client::output::{self, Format};
use berth_client::pinning::{Fingerprint, PinSource, TrustStore};
use berth_client::{pb, size};
use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;

/// The controller used when nothing else names one.
const DEFAULT_HOST: &str = "127.0.0.1:7979";

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
        let text = match cause.downcast_ref::<tonic::Status>() {
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

/// Everything the command line and the config file say about the target.
struct Target {
    host: String,
    loaded: Loaded,
}

impl Target {
    fn resolve(cli: &Cli) -> anyhow::Result<Self> {
        let loaded = Loaded::load(cli.config.as_deref())?;
        let host = cli
            .host
            .clone()
            .or_else(|| loaded.config.host.clone())
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        Ok(Self { host, loaded })
    }

    /// The trust decision: flags first, then the config file (preseeded,
    /// never prompts), then the trust store (opened only if needed).
    fn trust(&self, cli: &Cli) -> anyhow::Result<ServerTrust> {
        if cli.plaintext {
            return Ok(ServerTrust::DangerousPlaintext);
        }
        if let Some(roots) = &cli.ca {
            return Ok(ServerTrust::Ca {
                roots: roots.clone(),
            });
        }
        if let Some(fingerprint) = cli.fingerprint {
            return Ok(ServerTrust::Pinned {
                fingerprint,
                source: PinSource::Flag,
            });
        }
        if let Some(entry) = self.loaded.controller(&self.host) {
            if entry.plaintext {
                return Ok(ServerTrust::DangerousPlaintext);
            }
            if let Some(roots) = entry.ca {
                return Ok(ServerTrust::Ca { roots });
            }
            if let Some(fp) = entry.fingerprint {
                let path = self.loaded.path.clone().unwrap_or_default();
                let fingerprint = fp.parse().with_context(|| {
                    format!("client config {}, controller {}", path.display(), self.host)
                })?;
                return Ok(ServerTrust::Pinned {
                    fingerprint,
                    source: PinSource::Config(path),
                });
            }
        }
        let store = TrustStore::open_default()?;
        Ok(match store.get(&self.host)? {
            Some(fingerprint) => ServerTrust::Pinned {
                fingerprint,
                source: PinSource::Store(store.path().to_owned()),
            },
            None => ServerTrust::FirstContact,
        })
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Deadline<Channel>, Bearer>;

struct Session {
    channel: Deadline<Channel>,
    bearer: Bearer,
}

impl Session {
    /// Opens a session; with `--wait`, keeps trying (re-reading the config,
    /// which a starting controller may be writing) while it is unreachable.
    async fn open(cli: &Cli) -> anyhow::Result<Self> {
        let deadline = std::time::Instant::now() + cli.wait;
        loop {
            match Self::open_once(cli).await {
                Err(e)
                    if std::time::Instant::now() < deadline
                        && matches!(
                            e.downcast_ref::<ConnectError>(),
                            Some(ConnectError::Unreachable { .. })
                        ) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn open_once(cli: &Cli) -> anyhow::Result<Self> {
        let target = Target::resolve(cli)?;
        let host = target.host.as_str();
        let trust = target.trust(cli)?;
        let entry = target.loaded.controller(host).unwrap_or_default();
        // Credentials on the command line replace the config's entirely: a
        // --cert alone authenticates with the certificate alone.
        let from_flags = cli.token.is_some() || cli.token_file.is_some() || cli.cert.is_some();
        let token = match (&cli.token, &cli.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            (Some(_), _) => bail!("--token (or BERTH_TOKEN) is empty"),
            (None, Some(f)) => Some(read_token(f)?),
            (None, None) if from_flags => None,
            (None, None) => match (&entry.token, &entry.token_file) {
                (Some(t), _) => Some(t.trim().to_owned()),
                (None, Some(f)) => Some(read_token(f)?),
                (None, None) => None,
            },
        };
        let bearer = match token {
            Some(t) => Bearer(Some(format!("Bearer {t}").parse().map_err(|_| {
                anyhow::anyhow!("the token holds characters that cannot be sent")
            })?)),
            None => Bearer(None),
        };
        let (cert, key) = if from_flags {
            (cli.cert.as_ref(), cli.key.as_ref())
        } else {
            (entry.cert.as_ref(), entry.key.as_ref())
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => bail!("a client certificate needs both cert and key"),
        };
        let id = || -> anyhow::Result<Option<connect::ClientIdentity>> {
            identity
                .as_ref()
                .map(|(c, k)| connect::read_identity(c, k))
                .transpose()
                .map_err(Into::into)
        };
        let channel = match connect::connect(host, &trust, id()?, Duration::ZERO).await {
            Ok(channel) => channel,
            Err(ConnectError::Unknown { host, observed }) => {
                if !ask_to_trust(&host, observed)? {
                    bail!("the controller at {host} was not trusted; nothing was saved");
                }
                let store = TrustStore::open_default()?;
                store.add(&host, observed)?;
                let source = PinSource::Store(store.path().to_owned());
                drop(store);
                eprintln!("Saved the fingerprint of {host} in {source}.");
                connect::connect(
                    &host,
                    &ServerTrust::Pinned {
                        fingerprint: observed,
                        source,
                    },
                    id()?,
                    Duration::ZERO,
                )
                .await?
            }
            Err(ConnectError::Changed {
                host,
                pinned,
                presented,
                pin_source,
            }) => {
                eprintln!("{}", changed_banner(&host, pinned, presented, &pin_source));
                bail!("refusing to talk to {host}: its fingerprint changed from {pinned} to {presented}");
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            channel: Deadline::new(channel, host, cli.timeout),
            bearer,
        })
    }

    fn catalog(&self) -> pb::service_catalog_client::ServiceCatalogClient<Authed> {
        pb::service_catalog_client::ServiceCatalogClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    fn volumes(&self) -> pb::volumes_client::VolumesClient<Authed> {
        pb::volumes_client::VolumesClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    fn snapshots(&self) -> pb::snapshots_client::SnapshotsClient<Authed> {
        pb::snapshots_client::SnapshotsClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    fn admin(&self) -> pb::admin_client::AdminClient<Authed> {
        pb::admin_client::AdminClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    async fn services(&self) -> anyhow::Result<Vec<pb::Service>> {
        Ok(self
            .catalog()
            .list_services(pb::ListServicesRequest {})
            .await?
            .into_inner()
            .services)
    }

    /// The `--service` given, or the only service there is.
    async fn service(&self, arg: &ServiceArg) -> anyhow::Result<String> {
        if let Some(s) = &arg.service {
            return Ok(s.clone());
        }
        let services = self.services().await?;
        match services.as_slice() {
            [only] => Ok(only.name.clone()),
            [] => bail!("the controller has no service you may use"),
            several => bail!(
                "the controller has several services ({}): choose one with --service",
                several
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

/// First contact. On a terminal, asks; anywhere else, refuses with how to
/// trust it. Never trusts silently.
fn ask_to_trust(host: &str, fp: Fingerprint) -> anyhow::Result<bool> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        bail!(
            "the controller at {host} is not trusted yet; it presents fingerprint {fp}. \
             Check it on the controller with `berthd fingerprint`, then trust it with \
             `berth trust add {host} {fp}` or preseed it with `fingerprint = \"{fp}\"` under \
             [controllers.\"{host}\"] in the client config (or pass --fingerprint for one command)"
        );
    }
    let mut err = std::io::stderr().lock();
    writeln!(err, "The controller at {host} is not known to this client.")?;
    writeln!(
        err,
        "Its certificate authority has the SHA-256 fingerprint:"
    )?;
    writeln!(err, "  {fp}")?;
    writeln!(
        err,
        "Check it on the controller's machine: `berthd fingerprint` prints the same value."
    )?;
    write!(err, "Trust this controller? [y/N] ")?;
    err.flush()?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn changed_banner(
    host: &str,
    pinned: Fingerprint,
    presented: Fingerprint,
    source: &PinSource,
) -> String {
    let fix = match source {
        PinSource::Flag => "drop or correct the --fingerprint option".to_owned(),
        PinSource::Config(p) => format!(
            "correct the `fingerprint` of [controllers.\"{host}\"] in {}",
            p.display()
        ),
        PinSource::Store(_) => {
            format!("remove the old pin with `berth trust remove {host}`, then connect again")
        }
    };
    format!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         @   WARNING: CONTROLLER IDENTIFICATION HAS CHANGED!          @\n\
         @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
         Someone could be intercepting your connection to {host} (a man-in-the-middle attack),\n\
         or the controller's certificate authority was replaced.\n\
         \x20 controller:  {host}\n\
         \x20 pinned:      {pinned}\n\
         \x20              (from {source})\n\
         \x20 presented:   {presented}\n\
         If the change is legitimate (compare with `berthd fingerprint` on the controller),\n\
         {fix}.\n\
         Nothing was sent to the controller."
    )
}

async fn trust_command(cli: &Cli, command: &TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::List => {
            let target = Target::resolve(cli)?;
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
                None => Target::resolve(cli)?.host,
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
    let session = Session::open(&cli).await?;
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
            let service = session.service(service).await?;
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
            let service = session.service(service).await?;
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
            let service = session.service(service).await?;
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
            let service = session.service(service).await?;
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
            let service = session.service(service).await?;
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
            let service = session.service(service).await?;
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
        Command::Trust(_) => unreachable!("handled above"),
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
            let service = session.service(service).await?;
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
                (Some(_), None) => session.service(&ServiceArg { service: None }).await?,
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
            let service = session.service(service).await?;
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
            let service = session.service(service).await?;
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
