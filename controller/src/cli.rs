//! The `berthd` command line, as a function: `berthd` is
//! `cli::main(DriverRegistry::with_builtin())`, and a custom controller
//! binary registers its own drivers and calls the same function.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigFile;
use crate::logging::LogFormat;
use crate::rpc::limits::LimitSettings;
use crate::tls::live::{self as tls, IdentitySource, MinVersion};
use crate::{paths, profile, Controller, Options, Security, DEFAULT_LISTEN};
use anyhow::Context as _;
use berth_drivers::DriverRegistry;
use clap::{Parser, Subcommand};

/// The Berth storage-volume controller.
#[derive(Parser, Debug)]
#[command(name = "berthd", version, about)]
struct Cli {
    /// Address to serve on [default: 127.0.0.1:7979, or `listen` in the config file].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory [default: $XDG_DATA_HOME/berth or ~/.local/share/berth].
    #[arg(long, env = "BERTH_DATA_DIR", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// TOML file declaring services (default: one `vfs` service `local`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level or filter (also RUST_LOG).
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,
    /// Log lines as text (coloured only on a terminal) or as one JSON object a line.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Allow --metrics-listen on a non-loopback address (the metrics port has no TLS and no authentication).
    #[arg(long, requires = "metrics_listen")]
    metrics_allow_remote: bool,
    /// Serve this PEM certificate chain instead of the generated identity.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PKCS#8, SEC1 or PKCS#1 PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// An extra DNS name or IP address for the generated certificate (repeatable).
    #[arg(long = "san", value_name = "NAME_OR_IP", conflicts_with = "tls_cert")]
    sans: Vec<String>,
    /// The lowest TLS version accepted.
    #[arg(long, value_enum, default_value = "1.2")]
    tls_min_version: MinVersion,
    /// An extra CA bundle (PEM) trusted for client certificates (repeatable).
    #[arg(long = "client-ca", value_name = "FILE")]
    client_cas: Vec<PathBuf>,
    /// Serve WITHOUT TLS. Traffic can be read and altered by anyone on the path.
    #[arg(long, conflicts_with_all = ["tls_cert", "sans", "client_cas"])]
    insecure_plaintext: bool,
    #[command(flatten)]
    limits: LimitFlags,
    #[command(flatten)]
    store: crate::volumes::backend::StoreArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Connection and stream limits (each also a key of the config file's
/// `[limits]` table; a flag wins).
#[derive(clap::Args, Debug)]
struct LimitFlags {
    /// Connections served at once; more are closed at once [default: 3/4 of the open-file limit, at most 16384].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Calls in flight per connection (HTTP/2 MAX_CONCURRENT_STREAMS) [default: 128].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: Option<u32>,
    /// Close a connection with no call in flight for this long [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    idle_timeout: Option<Duration>,
    /// Send an HTTP/2 PING to a peer silent for this long [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    keepalive_interval: Option<Duration>,
    /// Close the connection when a PING is not answered within this [default: 20s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    keepalive_timeout: Option<Duration>,
    /// Fail a call (DEADLINE_EXCEEDED) whose request body has not arrived within this [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    request_body_timeout: Option<Duration>,
}

impl LimitFlags {
    fn settings(&self) -> LimitSettings {
        LimitSettings {
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            idle_timeout: self.idle_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            request_body_timeout: self.request_body_timeout,
        }
    }
}

/// A duration such as `10s` or `1m30s`, longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("it must be longer than zero (e.g. 10s)".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; write it like 10s, 500ms or 5m")),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the fingerprint clients pin (SHA-256 of the root of the
    /// presented chain, as `openssl x509 -fingerprint -sha256` prints it)
    /// on stdout, and when the CA and server certificates expire on stderr.
    Fingerprint,
    /// Check a configuration file without starting: parse it, check its
    /// services, drivers, limits and listen address. Creates nothing.
    CheckConfig {
        /// The TOML file to check.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Runs the `berthd` command line (arguments from the process) with the
/// drivers in `registry`.
pub fn main(mut registry: DriverRegistry) -> anyhow::Result<()> {
    crate::hosted::register(&mut registry);
    let cli = Cli::parse();
    crate::logging::init(cli.log_level.as_deref(), cli.log_format);
    if let Some(Command::CheckConfig { config }) = &cli.command {
        println!("{}", check_config(config, &registry)?);
        return Ok(());
    }
    raise_open_file_limit();
    let data_dir = match cli.data_dir.clone() {
        Some(dir) => dir,
        None => paths::default_data_dir()
            .context("cannot find a data directory: set --data-dir, BERTH_DATA_DIR or HOME")?,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
            match cli.command {
                Some(Command::Fingerprint) => {
                    let fp = tls::pinned_fingerprint(&paths::DataDir::existing(&data_dir).tls())
                        .with_context(|| {
                            format!(
                                "no TLS identity in {}: has berthd run with this --data-dir?",
                                data_dir.display()
                            )
                        })?;
                    println!("{fp}");
                    // The dates go to stderr: `$(berthd fingerprint)` stays
                    // the fingerprint alone.
                    let tls_dir = paths::DataDir::existing(&data_dir).tls();
                    for (what, file) in [("CA", paths::CA_CERT), ("server", paths::SERVER_CERT)] {
                        if let Some(at) = crate::tls::expiry::expires(&tls_dir.join(file)) {
                            eprintln!("{what} certificate expires {at}");
                        }
                    }
                    Ok(())
                }
                Some(Command::CheckConfig { .. }) => Ok(()),
                None => serve(cli, data_dir, registry).await,
            }
        })
}

async fn serve(cli: Cli, data_dir: PathBuf, registry: DriverRegistry) -> anyhow::Result<()> {
    let options = Options {
        data_dir,
        config: cli.config.clone(),
        security: if cli.insecure_plaintext {
            Security::DangerousPlaintext
        } else {
            Security::Tls {
                source: match (&cli.tls_cert, &cli.tls_key) {
                    (Some(cert), Some(key)) => IdentitySource::Files {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                    _ => IdentitySource::Generated {
                        sans: cli.sans.clone(),
                    },
                },
                min_version: cli.tls_min_version,
                client_cas: cli.client_cas.clone(),
            }
        },
        limits: cli.limits.settings(),
        store: cli.store.clone(),
    };
    // The configuration is checked and the address bound before anything
    // is created: a bad config or a taken port leaves no CA and no keys.
    let config = cli.config.as_deref().map(ConfigFile::load).transpose()?;
    let listen: SocketAddr = match (
        cli.listen,
        config.as_ref().and_then(|c| c.listen.as_deref()),
    ) {
        (Some(addr), _) => addr,
        (None, Some(addr)) => addr.parse().with_context(|| {
            format!("`listen = {addr:?}` in the config file is not an IP:PORT address")
        })?,
        (None, None) => DEFAULT_LISTEN.parse()?,
    };
    // Bind first, write the client profile, and only then listen: a client
    // that can connect always finds the profile in place.
    let socket = match listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("cannot create a socket")?;
    socket
        .set_reuseaddr(true)
        .context("cannot set SO_REUSEADDR")?;
    socket.bind(listen).map_err(|e| cannot_listen(listen, e))?;
    let metrics = match cli.metrics_listen {
        Some(addr) => {
            crate::metrics::serve::check_addr(addr, cli.metrics_allow_remote)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| cannot_listen(addr, e))
                .context("--metrics-listen")?;
            Some(listener)
        }
        None => None,
    };
    let controller = Controller::open_with(&options, config, &registry).await?;
    let _metrics_task = match metrics {
        Some(listener) => {
            let at = listener.local_addr()?;
            tracing::info!(address = %at, url = %format!("http://{at}/metrics"), "serving metrics");
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve::run(
                listener,
                controller.metrics_source(),
            ))))
        }
        None => None,
    };
    let local = socket.local_addr()?;
    let written = profile::write(
        controller.data_dir().root(),
        &profile::Profile {
            host: local.to_string(),
            fingerprint: controller.fingerprint(),
            token_file: Some(controller.admin_token_file().to_owned()),
        },
    )
    .context("cannot write the client profile")?;
    if let Some(path) = written {
        tracing::info!(path = %path.display(), "installed a client configuration for this controller (you had none)");
    }
    let listener = socket.listen(1024).map_err(|e| cannot_listen(listen, e))?;
    tracing::info!(address = %local, data_dir = %options.data_dir.display(), "berthd serving");
    // A line scripts and tests can wait for.
    println!("berthd listening on {local}");
    controller.run(listener, shutdown_signal()).await?;
    tracing::info!("berthd stopped");
    Ok(())
}

/// An error and its causes on one line, each cause once (many messages
/// already quote their cause).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// Why `addr` cannot be served on, and what to do about it, in one line.
fn cannot_listen(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let advice = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another process is already listening there; stop it, or pass --listen {}:PORT with a free port (or change `listen` in the config file)",
            addr.ip()
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            "no network interface of this machine has that address; pass --listen with one of its addresses, e.g. 127.0.0.1:7979".to_owned()
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges; pass --listen with a port of 1024 or more".to_owned()
        }
        _ => "pass --listen with another address".to_owned(),
    };
    anyhow::anyhow!("cannot listen on {addr}: {e}; {advice}")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight calls");
}

/// Raises the soft open-file limit to the hard one, so connections are
/// bounded by `--max-connections` rather than by `EMFILE`.
fn raise_open_file_limit() {
    let show = |n: Option<u64>| n.map_or("unlimited".to_owned(), |n| n.to_string());
    match crate::rpc::limits::raise_open_file_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(from = %show(before), to = %show(after), "raised the open-file limit");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, limit = %show(crate::rpc::limits::open_file_limit()),
                "cannot raise the open-file limit to its hard limit; the connection cap is sized to the current one");
        }
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `berthd check-config`: everything that can be known about a
/// configuration without creating anything, as one line. Driver options
/// are not checked here: building a driver opens (and creates) its root,
/// so they are checked when `berthd` starts.
pub fn check_config(path: &std::path::Path, registry: &DriverRegistry) -> anyhow::Result<String> {
    let config = ConfigFile::load(path)?;
    if let Some(listen) = &config.listen {
        listen.parse::<SocketAddr>().map_err(|_| {
            anyhow::anyhow!(
                "config file {}: `listen = {listen:?}` is not an IP:PORT address",
                path.display()
            )
        })?;
    }
    LimitSettings::default()
        .or(&config.limits)
        .resolve(crate::rpc::limits::open_file_limit())
        .map_err(|e| anyhow::anyhow!("config file {}: [limits] {e}", path.display()))?;
    let known: Vec<&str> = registry.names().collect();
    for service in &config.services {
        if !known.contains(&service.driver.as_str()) {
            anyhow::bail!(
                "config file {}, service {:?}: unknown driver {:?} (known drivers: {})",
                path.display(),
                service.name,
                service.driver,
                known.join(", ")
            );
        }
    }
    let services: Vec<String> = config
        .services
        .iter()
        .map(|s| format!("{} ({})", s.name, s.driver))
        .collect();
    Ok(format!(
        "OK: {}: {} service{}: {}",
        path.display(),
        services.len(),
        if services.len() == 1 { "" } else { "s" },
        services.join(", ")
    ))
}
