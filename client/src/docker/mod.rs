//! Docker's volume plugin API (`berth plugin docker`), served over a unix
//! socket as a long-running client of the controller.
//!
//! Docker finds the plugin through `/run/docker/plugins/<name>.sock` or a
//! spec file `/etc/docker/plugins/<name>.spec` naming the socket, and POSTs
//! JSON to `/Plugin.Activate` and `/VolumeDriver.*`. Every controller call
//! goes through one [`Session`] (the same config, pin and credentials as
//! every `berth` command, bounded by its `--timeout`), so the controller's
//! TLS and authorisation apply to everything Docker asks. Mounts go through
//! the node library ([`crate::node`]), reference-counted by Docker's mount
//! request ID and persisted in the node state, so a restarted plugin keeps
//! the counts.
//!
//! Every failure is answered `{"Err": "<one line>"}`. SIGTERM or SIGINT
//! stops the plugin gracefully (in-flight requests finish, the socket is
//! removed); SIGHUP re-reads the credential files by reopening the session.

mod api;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::RwLock;

use crate::node::Node;
use crate::session::{Session, SessionError, SessionOptions};

pub use api::router;

/// Where Docker looks for a plugin named `berth` without a spec file.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/berth.sock";

/// The socket's permissions: owner and group (Docker runs as root).
pub const SOCKET_MODE: u32 = 0o660;

/// What the plugin needs to run.
pub struct PluginConfig {
    /// How to reach and authenticate to the controller (never prompts).
    pub session: SessionOptions,
    /// The unix socket to serve on.
    pub socket: PathBuf,
    /// The node agent that mounts volumes.
    pub node: Node,
    /// The instance volumes are attached to.
    pub instance: String,
}

/// Why the plugin could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The session with the controller could not be opened.
    #[error("cannot reach the controller: {0}")]
    Session(#[from] SessionError),
    /// Another process serves on the socket.
    #[error("{0} is in use by a running plugin; stop it first or choose another --socket")]
    SocketInUse(PathBuf),
    /// Something that is not a socket is at the socket's path.
    #[error("{0} exists and is not a socket; move it away or choose another --socket")]
    NotASocket(PathBuf),
    /// Creating, binding or serving the socket failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The state every request handler shares.
pub struct Plugin {
    session: RwLock<Session>,
    node: Node,
    instance: String,
}

impl Plugin {
    /// A plugin over an open session.
    pub fn new(session: Session, node: Node, instance: String) -> Self {
        Self {
            session: RwLock::new(session),
            node,
            instance,
        }
    }

    async fn session(&self) -> Session {
        self.session.read().await.clone()
    }
}

/// Binds the socket: a stale one (nobody answering) is replaced, a live one
/// refused; the socket is made [`SOCKET_MODE`].
pub async fn bind(path: &Path) -> Result<UnixListener, PluginError> {
    let io = |what, source| PluginError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(PluginError::NotASocket(path.to_owned()));
        }
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::UnixStream::connect(path),
        )
        .await;
        if matches!(probe, Ok(Ok(_))) {
            return Err(PluginError::SocketInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| io("setting the permissions of", e))?;
    Ok(listener)
}

/// Serves until SIGTERM or SIGINT, then removes the socket.
pub async fn serve(config: PluginConfig) -> Result<(), PluginError> {
    let session = Session::open(&config.session).await?;
    let listener = bind(&config.socket).await?;
    let plugin = Arc::new(Plugin::new(session, config.node, config.instance));
    let io = |what, source| PluginError::Io {
        what,
        path: config.socket.clone(),
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| io("watching SIGTERM for", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| io("watching SIGINT for", e))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| io("watching SIGHUP for", e))?;
    let reloader = {
        let plugin = Arc::clone(&plugin);
        let opts = config.session.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match Session::open(&opts).await {
                    Ok(session) => {
                        *plugin.session.write().await = session;
                        eprintln!("berth plugin docker: SIGHUP: credentials re-read");
                    }
                    Err(e) => eprintln!(
                        "berth plugin docker: SIGHUP: keeping the old session: {}",
                        e.to_string().replace('\n', " ")
                    ),
                }
            }
        })
    };
    eprintln!(
        "berth plugin docker: serving on {} (instance {}, mount root {})",
        config.socket.display(),
        plugin.instance,
        plugin.node.mount_root().display()
    );
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("berth plugin docker: stopping");
    };
    let served = axum::serve(listener, router(plugin))
        .with_graceful_shutdown(shutdown)
        .await;
    reloader.abort();
    let _ = std::fs::remove_file(&config.socket);
    served.map_err(|e| io("serving on", e))
}
