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
    /// Start in the background: the log goes to DATA_DIR/berthd.log; returns
    /// once the controller serves (printing its pid and address), or fails
    /// with its error if it cannot start.
    #[arg(long)]
    detach: bool,
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
    /// Join a cluster of controllers on one etcd: take its CA and token
    /// signing keys from a running controller (over TLS pinned on
    /// --fingerprint, as an admin) into this --data-dir, which must be new.
    /// Then start berthd on it with the cluster's --store etcd://... and
    /// this host's --san names: it serves a certificate of the cluster's CA.
    Join {
        /// HOST:PORT of a running controller of the cluster.
        #[arg(long, value_name = "HOST:PORT")]
        from: String,
        /// The cluster's CA fingerprint (`berthd fingerprint` on a running controller).
        #[arg(long, value_name = "SHA256")]
        fingerprint: String,
        /// An admin token of the cluster (also BERTH_TOKEN).
        #[arg(
            long,
            env = "BERTH_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN",
            conflicts_with = "token_file",
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// A file holding the admin token (e.g. the other controller's auth/admin.token).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
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
    let data_dir = match cli.data_dir.clone() {
        Some(dir) => dir,
        None => paths::default_data_dir()
            .context("cannot find a data directory: set --data-dir, BERTH_DATA_DIR or HOME")?,
    };
    if cli.detach && cli.command.is_none() {
        return detach(&data_dir);
    }
    raise_open_file_limit();
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
                Some(Command::Join {
                    from,
                    fingerprint,
                    token,
                    token_file,
                }) => {
                    let token = match (token, token_file) {
                        (Some(token), _) => token,
                        (None, Some(file)) => std::fs::read_to_string(&file)
                            .with_context(|| format!("cannot read --token-file {}", file.display()))?,
                        (None, None) => anyhow::bail!("give the admin token with --token or --token-file"),
                    };
                    let joined = crate::join::join(&crate::join::JoinOptions {
                        from: from.clone(),
                        fingerprint,
                        token,
                        data_dir: data_dir.clone(),
                    })
                    .await?;
                    println!(
                        "joined the cluster of {from} (CA {}) in {}; start berthd --data-dir {} with the cluster's --store etcd://... and this host's --san names",
                        joined.fingerprint,
                        data_dir.display(),
                        data_dir.display()
                    );
                    Ok(())
                }
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
    // Another berthd on this data directory is the likelier story than a
    // foreign process on the port: say so before trying the port.
    paths::DataDirLock::check_free(&options.data_dir)?;
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

/// How long `berthd --detach` waits for the controller to serve.
const DETACH_TIMEOUT: Duration = Duration::from_secs(60);

/// `berthd --detach`: runs this same command line without `--detach` as a
/// child in its own process group, its stdout and stderr appended to
/// `<data-dir>/berthd.log`, and waits until it serves (then says where it
/// is and returns) or exits (then returns its error line).
fn detach(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{Read as _, Seek as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::process::CommandExt as _;
    paths::DataDirLock::check_free(data_dir)?;
    let layout = paths::DataDir::create(data_dir)?;
    let log_path = layout.root().join(paths::DETACHED_LOG);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
    let from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("cannot find the berthd executable")?;
    let mut child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1).filter(|a| a != "--detach"))
        // The flag, when given, wins over this; else the child finds the
        // directory chosen here, whatever its HOME.
        .env("BERTH_DATA_DIR", data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        // Ctrl-C in this terminal is not for the background controller.
        .process_group(0)
        .spawn()
        .context("cannot start berthd in the background")?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + DETACH_TIMEOUT;
    let written = |log: &mut std::fs::File| -> String {
        let mut text = String::new();
        if log.seek(std::io::SeekFrom::Start(from)).is_ok() {
            let _ = log.read_to_string(&mut text);
        }
        text
    };
    loop {
        let exited = child.try_wait()?;
        let text = written(&mut log);
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.strip_prefix("berthd listening on "))
        {
            println!(
                "berthd is running in the background (pid {pid}), listening on {addr}; its log: {}; stop it with: kill {pid}",
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = exited {
            let why = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .map(str::to_owned)
                .unwrap_or_else(|| format!("it exited ({status})"));
            anyhow::bail!("{why} (log: {})", log_path.display());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "berthd (pid {pid}) did not start serving within {}s; it is still running: see its log {}, or stop it with kill {pid}",
                DETACH_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
        let fail = |problem: String| crate::config::ConfigError::Service {
            path: path.to_owned(),
            service: service.name.clone(),
            problem,
        };
        // The driver's own check of its options: nothing is built or created.
        match registry.check(&service.driver, &service.driver_options()) {
            None => {
                return Err(fail(format!(
                    "unknown driver {:?} (known drivers: {})",
                    service.driver,
                    known.join(", ")
                ))
                .into())
            }
            Some(Err(e)) => return Err(fail(format!("driver {}: {e}", service.driver)).into()),
            Some(Ok(())) => {}
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
