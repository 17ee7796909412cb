//! `berthd`: the Berth controller.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use berth_controller::{paths, Controller, Options, DEFAULT_LISTEN};
use berth_drivers::DriverRegistry;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let data_dir = match cli.data_dir.clone() {
        Some(dir) => dir,
        None => paths::default_data_dir()
            .context("cannot find a data directory: set --data-dir, BERTH_DATA_DIR or HOME")?,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(cli, data_dir))
}

async fn serve(cli: Cli, data_dir: PathBuf) -> anyhow::Result<()> {
    let options = Options {
        data_dir,
        config: cli.config.clone(),
    };
    let controller = Controller::open(&options, &DriverRegistry::with_builtin()).await?;
    let listen: SocketAddr = match (cli.listen, controller.configured_listen()) {
        (Some(addr), _) => addr,
        (None, Some(addr)) => addr.parse().with_context(|| {
            format!("`listen = {addr:?}` in the config file is not an IP:PORT address")
        })?,
        (None, None) => DEFAULT_LISTEN.parse()?,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, data_dir = %options.data_dir.display(), "berthd serving");
    // A line scripts and tests can wait for.
    println!("berthd listening on {local}");
    controller.run(listener, shutdown_signal()).await?;
    tracing::info!("berthd stopped");
    Ok(())
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

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
