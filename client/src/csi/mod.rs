//! `berth plugin csi`: Berth as a Container Storage Interface (v1) plugin.
//!
//! A CSI plugin is a gRPC server on a unix socket that an orchestrator
//! (Kubernetes through its sidecars, Nomad, ...) calls without TLS. This one
//! answers from a long-running [`Session`] with `berthd`: the same config,
//! pin and credentials as any `berth` command, so the controller may sit on
//! another host and the plugin can only touch the services its credential
//! allows.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`ids`] | `SERVICE/NAME` ids and CSI names to Berth names |
//! | [`backend`] | the session with berthd, reopened when it drops |
//! | [`identity`] | the Identity service |
//! | [`controller`] | the Controller service (volumes, publish, snapshots) |
//! | [`node`] | the Node service (stage, publish, stats) |
//! | [`mounts`] | bind mounts and mount-table look-ups for the Node service |

pub mod backend;
pub mod controller;
pub mod identity;
pub mod ids;
pub mod mounts;
pub mod node;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_proto::csi::v1 as csi;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::session::SessionOptions;

/// The plugin name GetPluginInfo reports unless configured.
pub const DEFAULT_DRIVER_NAME: &str = "berth.csi.io";

/// Which CSI services the plugin serves (Identity always).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Identity and Controller: next to the provisioner, attacher,
    /// snapshotter sidecars.
    Controller,
    /// Identity and Node: on every node, next to the node registrar.
    Node,
    /// All three (one machine, tests, csi-sanity).
    All,
}

impl Mode {
    /// Whether the Controller service is served.
    pub fn controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }

    /// Whether the Node service is served.
    pub fn node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

/// The command line of `berth plugin csi`.
#[derive(Debug, Clone, clap::Args)]
pub struct CsiArgs {
    /// The unix socket to serve on, `unix:///PATH` (a stale socket there is replaced).
    #[arg(long, env = "CSI_ENDPOINT", value_name = "unix:///PATH")]
    pub endpoint: String,
    /// This node's id: what NodeGetInfo reports and the instance volumes are attached to [default: `instance` in the client config, else the host name].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Which CSI services to serve besides Identity.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// The plugin name GetPluginInfo reports (the StorageClass `provisioner`).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// Size of volumes created without a capacity range, e.g. 1GiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse_size, default_value = "1GiB")]
    pub default_size: u64,
    /// A node ControllerPublishVolume may attach to besides this plugin's
    /// own (repeatable). With none in controller mode, any node id is accepted.
    #[arg(long = "known-node", value_name = "ID")]
    pub known_nodes: Vec<String>,
    /// Where the Node service keeps its mount state and image staging
    /// mounts [default: `mount_root` in the client config, else /var/lib/berth/mounts for root].
    #[arg(long, value_name = "DIR")]
    pub mount_root: Option<PathBuf>,
}

/// Why the plugin could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// The endpoint is not a unix socket address.
    #[error("endpoint {0:?} is not a unix socket address such as unix:///run/berth/csi.sock")]
    BadEndpoint(String),
    /// The driver name breaks the CSI naming rule.
    #[error("driver name {0:?} is not a CSI plugin name (at most 63 characters: a letter, then letters, digits, '-', '.', '_', ending with a letter)")]
    BadDriverName(String),
    /// The node id is empty or too long.
    #[error("node id {0:?} must be 1 to 128 characters")]
    BadNodeId(String),
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; remove it or choose another endpoint")]
    NotASocket(PathBuf),
    /// Another process answers on the socket.
    #[error("another plugin is serving on {0}; stop it first")]
    InUse(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("cannot serve on {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The session with berthd cannot be opened for good (trust,
    /// credentials, config).
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// The Node service cannot keep its mounts anywhere.
    #[error("{0}")]
    Node(crate::node::NodeError),
    /// The gRPC server failed.
    #[error("the CSI server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Parses a CSI endpoint: `unix:///PATH`, `unix:/PATH` or an absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CsiError> {
    let bad = || CsiError::BadEndpoint(endpoint.chars().take(200).collect());
    let path = match endpoint.strip_prefix("unix://") {
        Some(rest) => rest,
        None => endpoint.strip_prefix("unix:").unwrap_or(endpoint),
    };
    if !path.starts_with('/') || path.len() < 2 || path.contains('\0') {
        return Err(bad());
    }
    Ok(PathBuf::from(path))
}

/// Whether `name` follows the CSI plugin-name rule.
pub fn valid_driver_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphabetic()
        && bytes[bytes.len() - 1].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Binds the socket: creates the parent directory, replaces a stale socket
/// (one nobody answers on), refuses anything else, and sets mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, CsiError> {
    let io = |source| CsiError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(CsiError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(CsiError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// The plugin's settings after checking the command line.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// GetPluginInfo's name.
    pub driver_name: String,
    /// This node's id.
    pub node_id: String,
    /// Served services.
    pub mode: Mode,
    /// Size of volumes created without a capacity range.
    pub default_size: u64,
    /// Node ids publish accepts; `None`: any.
    pub known_nodes: Option<Vec<String>>,
    /// The Node service's mount root (see [`crate::node::Node`]).
    pub mount_root: PathBuf,
    /// The client config's `[csi_plugins]`: node sockets of the plugins
    /// behind `csi` services, for mounting their volumes.
    pub csi_plugins: std::collections::BTreeMap<String, String>,
}

impl PluginConfig {
    /// Checks the command line; `config` is the client config file
    /// (for the default mount root).
    pub fn from_args(args: &CsiArgs, config: Option<&Path>) -> Result<Self, CsiError> {
        if !valid_driver_name(&args.driver_name) {
            return Err(CsiError::BadDriverName(args.driver_name.clone()));
        }
        let loaded =
            crate::config::Loaded::load(config).map_err(crate::session::SessionError::from)?;
        let node_id = crate::node::default_instance(args.node_id.as_deref(), &loaded.config);
        if node_id.is_empty() || node_id.len() > 128 || node_id.chars().any(char::is_control) {
            return Err(CsiError::BadNodeId(node_id));
        }
        let mut known: Vec<String> = args.known_nodes.clone();
        if args.mode.node() {
            known.push(node_id.clone());
        }
        let known_nodes = (!known.is_empty()).then_some(known);
        let mount_root = match &args.mount_root {
            Some(root) => root.clone(),
            None if args.mode.node() => {
                crate::node::default_mount_root(&loaded.config).map_err(CsiError::Node)?
            }
            None => PathBuf::new(),
        };
        Ok(Self {
            driver_name: args.driver_name.clone(),
            node_id,
            mode: args.mode,
            default_size: args.default_size,
            known_nodes,
            mount_root,
            csi_plugins: loaded.config.csi_plugins.clone(),
        })
    }
}

/// Resolves on SIGINT or SIGTERM: the plugin's orderly stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves the plugin on `args.endpoint` until `shutdown` resolves, then
/// removes the socket. `session` should have `may_prompt: false`.
pub async fn serve(
    session: SessionOptions,
    args: &CsiArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CsiError> {
    let config = PluginConfig::from_args(args, session.config.as_deref())?;
    let path = socket_path(&args.endpoint)?;
    let backend = Arc::new(backend::Backend::new(session));
    // Problems no retry can fix (trust, credentials, config) stop the start;
    // an unreachable controller only makes Probe say "not ready".
    if let Err(e) = backend.open().await {
        if !backend::is_transient(&e) {
            return Err(e.into());
        }
        eprintln!(
            "berth plugin csi: {e}; serving anyway, Probe reports not ready until it answers"
        );
    }
    let listener = bind(&path)?;
    println!(
        "berth plugin csi listening on unix://{} (mode {:?}, node {})",
        path.display(),
        config.mode,
        config.node_id
    );
    let config = Arc::new(config);
    let identity = identity::IdentityService::new(Arc::clone(&backend), Arc::clone(&config));
    let mut router = tonic::transport::Server::builder()
        .add_service(csi::identity_server::IdentityServer::new(identity))
        .add_optional_service(config.mode.controller().then(|| {
            csi::controller_server::ControllerServer::new(controller::ControllerService::new(
                Arc::clone(&backend),
                Arc::clone(&config),
            ))
        }));
    router = router.add_optional_service(config.mode.node().then(|| {
        csi::node_server::NodeServer::new(node::NodeService::new(
            Arc::clone(&backend),
            Arc::clone(&config),
        ))
    }));
    let result = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&path);
    result.map_err(CsiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").expect("ok"),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/run/csi.sock").expect("ok"),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            socket_path("/run/csi.sock").expect("ok"),
            PathBuf::from("/run/csi.sock")
        );
        for bad in [
            "",
            "unix://",
            "tcp://1.2.3.4:5",
            "relative.sock",
            "unix://x",
        ] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn driver_names_follow_the_csi_rule() {
        assert!(valid_driver_name(DEFAULT_DRIVER_NAME));
        assert!(valid_driver_name("hostpath.csi.k8s.io"));
        assert!(!valid_driver_name("berth.csi.io1"));
        assert!(!valid_driver_name("-berth"));
        assert!(!valid_driver_name(&"a".repeat(64)));
    }
}
