//! The node side: make a controller's volume usable on this host, and undo
//! it.
//!
//! [`Node::mount`] attaches a volume to an instance through the controller
//! (a [`Session`], which already holds the trust decision and the
//! credentials), then makes it usable at a directory:
//!
//! * `vfs`: a bind mount of the attachment's directory;
//! * `image` raw: a loop device over the image file; on first use a
//!   filesystem is made (the volume's `fs` option, default `ext4`), never
//!   over a device that already holds anything `blkid` recognises; the
//!   filesystem is mounted once under the mount root (*staging*) and
//!   bind-mounted at each path;
//! * `image` qcow2: the same through `qemu-nbd`, where `/dev/nbd*` exists;
//! * `csi`: the plugin's own Node service does it ([`csi`]): stage (when
//!   the plugin stages) under the mount root, publish at each path, with
//!   the publish context the controller returned; the node socket comes
//!   from the client config's `[csi_plugins]`.
//!
//! [`Node::unmount`] unmounts the path and, when it was the volume's last
//! one, unmounts the staging mount, releases the block device and detaches.
//!
//! Both are idempotent, and every step is checked against the host before it
//! is taken (is this path a mount point? is there already a loop device over
//! this file? does the device already hold a filesystem?), so a call that
//! was interrupted (even by `kill -9`) is settled by the next one. What the
//! node mounted is kept in a small state file under the mount root
//! ([`state`]), written atomically before and after each step.
//!
//! ```no_run
//! # async fn demo(session: &berth_client::session::Session) -> Result<(), berth_client::node::NodeError> {
//! use berth_client::node::{MountRequest, Node, UnmountRequest};
//! let node = Node::new("/var/lib/berth/mounts");
//! let path = node
//!     .mount(session, &MountRequest::new("fast", "db", "node-1"))
//!     .await?;
//! println!("db is at {}", path.display());
//! node.unmount(session, &UnmountRequest::new("fast", "db", "node-1")).await?;
//! # Ok(()) }
//! ```

pub mod csi;
pub mod state;
mod sys;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::config::ClientConfig;
use crate::pb;
use crate::session::Session;

pub use state::{NodeState, PathState, VolumeState};

/// The mount root for root: `/var/lib/berth/mounts`.
pub const ROOT_MOUNT_ROOT: &str = "/var/lib/berth/mounts";

/// How long a call waits for another agent on this node to finish its step.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// The filesystem made on an image's first use when it has no `fs` option.
pub const DEFAULT_FS: &str = "ext4";

/// The filesystems a volume's `fs` option may name.
pub const FILESYSTEMS: &[&str] = &["ext4", "xfs"];

/// Test hook: with `BERTH_NODE_PAUSE_AFTER=STEP` a call stops after STEP
/// (`attach`, `block`, `format`, `stage`, `bind`, `unbind`, `release`),
/// says so on stderr and sleeps, so a test can `kill -9` it right there.
pub const PAUSE_ENV: &str = "BERTH_NODE_PAUSE_AFTER";

/// Why the node could not mount or unmount a volume.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A bad name, path or option.
    #[error("{0}")]
    InvalidArgument(String),
    /// The controller refused or failed a call.
    #[error("{action}: {}", status_text(.status))]
    Controller {
        /// What the node was doing (`attaching fast/db to node-1`).
        action: String,
        /// The controller's answer.
        status: tonic::Status,
    },
    /// The volume is attached to another instance.
    #[error("volume {volume} is attached to {holders}, not to {instance}; unmount it there (or `berth volume detach {volume} --force`) first")]
    AttachedElsewhere {
        /// `service/name`.
        volume: String,
        /// The instances holding it.
        holders: String,
        /// The instance asking.
        instance: String,
    },
    /// This node cannot make such a volume usable.
    #[error("volume {volume}: {reason}")]
    Unsupported {
        /// `service/name`.
        volume: String,
        /// Why, and what would work.
        reason: String,
    },
    /// The path is a mount point of something else.
    #[error("{path} is already in use: {by}; choose another --path or unmount it first")]
    PathInUse {
        /// The path asked for.
        path: PathBuf,
        /// What holds it.
        by: String,
    },
    /// The volume is already mounted at this path with other options.
    #[error(
        "volume {volume} is already mounted at {path} {mode}; unmount it first to change that"
    )]
    OtherMode {
        /// `service/name`.
        volume: String,
        /// The path.
        path: PathBuf,
        /// `read-only` or `read-write`.
        mode: &'static str,
    },
    /// Unmounting while something uses the mount.
    #[error("{path} is busy (a process has a file open or its working directory there); stop it, or unmount with --force for a lazy unmount")]
    Busy {
        /// The busy mount point.
        path: PathBuf,
    },
    /// The device holds something that is not a filesystem: never formatted.
    #[error("volume {volume}: {device} holds {what}, not a filesystem; refusing to format it")]
    ForeignContent {
        /// `service/name`.
        volume: String,
        /// The block device.
        device: String,
        /// What `blkid` found.
        what: String,
    },
    /// The kernel said no: mounting needs root (CAP_SYS_ADMIN).
    #[error("not permitted to {action} {path}: mounting needs root (CAP_SYS_ADMIN); run as root or with sudo")]
    NotPermitted {
        /// `mounting`, `unmounting`...
        action: String,
        /// The path.
        path: PathBuf,
    },
    /// A needed program is not installed.
    #[error("{tool} is not installed; {}", install_hint(.tool))]
    MissingTool {
        /// The program.
        tool: String,
    },
    /// A program failed or did not finish in time.
    #[error("{tool}: {message}")]
    Tool {
        /// The program.
        tool: String,
        /// What went wrong, one line.
        message: String,
    },
    /// Another agent on this node holds the state lock.
    #[error("another berth on this node has held {path} for {}s; try again when it is done", .waited.as_secs())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// How long this call waited.
        waited: Duration,
    },
    /// The state file cannot be used.
    #[error("node state {path} is not usable: {message}; move it away only after unmounting what it lists by hand")]
    BadState {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CSI plugin's Node service refused or failed a call.
    #[error("CSI plugin at {endpoint}: {action}: {}", status_text(.status))]
    CsiPlugin {
        /// The plugin's node socket.
        endpoint: String,
        /// The call, with the volume id and path.
        action: String,
        /// The plugin's answer.
        status: tonic::Status,
    },
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the node was doing.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl NodeError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The gRPC code that describes this error (for a CSI plugin's answers).
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Controller { status, .. } | Self::CsiPlugin { status, .. } => status.code(),
            Self::AttachedElsewhere { .. }
            | Self::Unsupported { .. }
            | Self::PathInUse { .. }
            | Self::OtherMode { .. }
            | Self::Busy { .. }
            | Self::ForeignContent { .. }
            | Self::MissingTool { .. } => Code::FailedPrecondition,
            Self::NotPermitted { .. } => Code::PermissionDenied,
            Self::Locked { .. } => Code::Aborted,
            Self::Tool { .. } | Self::BadState { .. } | Self::Io { .. } => Code::Internal,
        }
    }
}

fn install_hint(tool: &str) -> &'static str {
    match tool {
        "losetup" | "blkid" | "mkfs.ext4" => {
            "install util-linux and e2fsprogs (Debian: apt-get install util-linux e2fsprogs)"
        }
        "mkfs.xfs" => "install xfsprogs (Debian: apt-get install xfsprogs) or create the volume with --opt fs=ext4",
        "qemu-nbd" => "install qemu-utils (Debian: apt-get install qemu-utils)",
        _ => "install it and try again",
    }
}

/// A controller status as words, the way `berth` prints it
/// ([`crate::report::status_line`]), kept on one line.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    sys::one_line(&crate::report::status_line(status))
}

/// Where mounts go by default: `mount_root` in the client config, else
/// `/var/lib/berth/mounts` for root, else `$XDG_RUNTIME_DIR/berth/mounts`.
pub fn default_mount_root(config: &ClientConfig) -> Result<PathBuf, NodeError> {
    if let Some(root) = &config.mount_root {
        return Ok(root.clone());
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from(ROOT_MOUNT_ROOT));
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir).join("berth").join("mounts")),
        None => Err(NodeError::InvalidArgument(
            "no mount root: XDG_RUNTIME_DIR is not set; set mount_root in the client config".into(),
        )),
    }
}

/// The instance this node attaches as: `flag`, else the config's
/// `instance`, else the host name.
pub fn default_instance(flag: Option<&str>, config: &ClientConfig) -> String {
    flag.map(str::to_owned)
        .or_else(|| config.instance.clone())
        .unwrap_or_else(host_name)
}

/// This machine's host name (`localhost` when it has none).
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What to mount, where, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    /// The service holding the volume.
    pub service: String,
    /// The volume's name.
    pub name: String,
    /// Where to mount it; `None`: `<mount root>/<service>/<name>`.
    pub path: Option<PathBuf>,
    /// Mount it read-only.
    pub read_only: bool,
    /// The instance to attach it to (see [`default_instance`]).
    pub instance: String,
    /// A holder of this mount (e.g. a container's mount ID): the path stays
    /// mounted until every holder has unmounted. `None`: a plain mount.
    pub holder: Option<String>,
}

impl MountRequest {
    /// A read-write mount at the default path, with no holder.
    pub fn new(service: &str, name: &str, instance: &str) -> Self {
        Self {
            service: service.to_owned(),
            name: name.to_owned(),
            path: None,
            read_only: false,
            instance: instance.to_owned(),
            holder: None,
        }
    }
}

/// What to unmount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmountRequest {
    /// The service holding the volume.
    pub service: String,
    /// The volume's name.
    pub name: String,
    /// The path; `None`: `<mount root>/<service>/<name>`.
    pub path: Option<PathBuf>,
    /// Lazy unmount (`umount -l`) when the mount is busy.
    pub force: bool,
    /// The instance it was attached to.
    pub instance: String,
    /// The holder letting go; `None` unmounts whoever holds it.
    pub holder: Option<String>,
}

impl UnmountRequest {
    /// A plain unmount of the default path.
    pub fn new(service: &str, name: &str, instance: &str) -> Self {
        Self {
            service: service.to_owned(),
            name: name.to_owned(),
            path: None,
            force: false,
            instance: instance.to_owned(),
            holder: None,
        }
    }
}

/// How a volume is made usable, decided from its driver and attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Bind-mount the device directory.
    Bind,
    /// Loop device over a raw image, filesystem `fs` on first use.
    Loop { fs: String },
    /// qemu-nbd over a qcow2 image.
    Nbd { fs: String },
    /// The CSI plugin's Node service.
    Csi,
}

impl Plan {
    fn of(volume: &pb::Volume, format: Option<&str>) -> Result<Self, NodeError> {
        let id = state::key(&volume.service, &volume.name);
        let fs = volume
            .options
            .get("fs")
            .map(String::as_str)
            .unwrap_or(DEFAULT_FS)
            .to_owned();
        if !FILESYSTEMS.contains(&fs.as_str()) {
            return Err(NodeError::Unsupported {
                volume: id,
                reason: format!(
                    "its fs option {:?} is not one this node makes ({})",
                    sys::one_line(&fs),
                    FILESYSTEMS.join(", ")
                ),
            });
        }
        let format = format
            .or_else(|| volume.fields.get("format").map(String::as_str))
            .unwrap_or("raw");
        match (volume.driver.as_str(), format) {
            ("vfs", _) => Ok(Plan::Bind),
            ("csi", _) => Ok(Plan::Csi),
            ("image", "raw") => Ok(Plan::Loop { fs }),
            ("image", "qcow2") => Ok(Plan::Nbd { fs }),
            (driver, format) => Err(NodeError::Unsupported {
                volume: id,
                reason: format!(
                    "this node mounts vfs directories, raw or qcow2 images and csi volumes, not driver {driver:?} format {format:?}; use `berth volume attach` and make it usable by hand"
                ),
            }),
        }
    }

    /// Refuses early (before attaching) what this host cannot do.
    fn check_host(&self, volume: &str) -> Result<(), NodeError> {
        let fs = match self {
            Plan::Bind | Plan::Csi => return Ok(()),
            Plan::Loop { fs } => {
                for tool in ["losetup", "blkid"] {
                    if !sys::have_tool(tool) {
                        return Err(NodeError::MissingTool { tool: tool.into() });
                    }
                }
                fs
            }
            Plan::Nbd { fs } => {
                if sys::nbd_devices().is_empty() {
                    return Err(NodeError::Unsupported {
                        volume: volume.to_owned(),
                        reason: "it is a qcow2 image, which this node mounts through qemu-nbd, but this kernel has no /dev/nbd* devices; load the nbd module (`modprobe nbd`), or keep such volumes on an image service with format = \"raw\" (mounted through a loop device)".into(),
                    });
                }
                for tool in ["qemu-nbd", "blkid"] {
                    if !sys::have_tool(tool) {
                        return Err(NodeError::MissingTool { tool: tool.into() });
                    }
                }
                fs
            }
        };
        let mkfs = format!("mkfs.{fs}");
        if !sys::have_tool(&mkfs) {
            return Err(NodeError::MissingTool { tool: mkfs });
        }
        Ok(())
    }
}

/// The node agent: mounts and unmounts volumes under one mount root.
///
/// One `Node` serialises its own calls; several processes on one host
/// (the CLI, a plugin) serialise through the state file's lock.
pub struct Node {
    root: PathBuf,
    lock_wait: Duration,
    serial: tokio::sync::Mutex<()>,
    csi_plugins: BTreeMap<String, String>,
}

impl Node {
    /// A node keeping its mounts and state under `mount_root`.
    pub fn new(mount_root: impl Into<PathBuf>) -> Self {
        Self {
            root: mount_root.into(),
            lock_wait: DEFAULT_LOCK_WAIT,
            serial: tokio::sync::Mutex::new(()),
            csi_plugins: BTreeMap::new(),
        }
    }

    /// The node sockets of CSI plugins, by service name (the client
    /// config's `[csi_plugins]`), for volumes of `csi` services.
    pub fn with_csi_plugins(mut self, plugins: BTreeMap<String, String>) -> Self {
        self.csi_plugins = plugins;
        self
    }

    /// Waits at most `wait` for another agent's step (default
    /// [`DEFAULT_LOCK_WAIT`]).
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The mount root.
    pub fn mount_root(&self) -> &Path {
        &self.root
    }

    /// The default path of a volume: `<mount root>/<service>/<name>`.
    pub fn default_path(&self, service: &str, name: &str) -> Result<PathBuf, NodeError> {
        check_component("service", service)?;
        check_component("volume", name)?;
        Ok(self.root.join(service).join(name))
    }

    /// What this node has mounted, from its state file.
    pub async fn state(&self) -> Result<NodeState, NodeError> {
        let _serial = self.serial.lock().await;
        self.lock().await?.load()
    }

    /// The paths a volume is mounted at on this node (empty: none).
    pub async fn paths_of(&self, service: &str, name: &str) -> Result<Vec<PathBuf>, NodeError> {
        let state = self.state().await?;
        let Some(v) = state.volumes.get(&state::key(service, name)) else {
            return Ok(Vec::new());
        };
        let mounted = sys::mount_points()?;
        Ok(v.paths
            .keys()
            .filter(|p| mounted.contains(p))
            .cloned()
            .collect())
    }

    /// Where an image's filesystem is mounted once for all its paths.
    fn staging_path(&self, service: &str, name: &str) -> PathBuf {
        state::meta_dir(&self.root)
            .join("staging")
            .join(service)
            .join(name)
    }

    async fn lock(&self) -> Result<state::StateLock, NodeError> {
        let (root, wait) = (self.root.clone(), self.lock_wait);
        tokio::task::spawn_blocking(move || state::StateLock::acquire(&root, wait))
            .await
            .map_err(|e| NodeError::io("waiting for the node lock", std::io::Error::other(e)))?
    }

    /// The path a request names, absolute and without `..`.
    fn path_for(
        &self,
        path: Option<&Path>,
        service: &str,
        name: &str,
    ) -> Result<PathBuf, NodeError> {
        let path = match path {
            None => self.default_path(service, name)?,
            Some(p) => {
                if !p.is_absolute() {
                    return Err(NodeError::InvalidArgument(format!(
                        "--path {} is relative; give an absolute path",
                        p.display()
                    )));
                }
                if p.components().any(|c| c == Component::ParentDir) {
                    return Err(NodeError::InvalidArgument(format!(
                        "--path {} contains `..`; give the path itself",
                        p.display()
                    )));
                }
                p.to_owned()
            }
        };
        if path.starts_with(state::meta_dir(&self.root)) {
            return Err(NodeError::InvalidArgument(format!(
                "{} is inside the node's own directory; choose another path",
                path.display()
            )));
        }
        // Symbolic links in existing parents resolve to the real place,
        // which is what the mount table shows.
        match path.canonicalize() {
            Ok(real) => Ok(real),
            Err(_) => Ok(path),
        }
    }

    /// Attaches the volume to `request.instance` and makes it usable at the
    /// requested path, which it returns. Mounting again at the same path
    /// returns it (adding the holder, if any); a second path shares the
    /// volume's one attachment.
    pub async fn mount(
        &self,
        session: &Session,
        request: &MountRequest,
    ) -> Result<PathBuf, NodeError> {
        check_component("service", &request.service)?;
        check_component("volume", &request.name)?;
        check_instance(&request.instance)?;
        let path = self.path_for(request.path.as_deref(), &request.service, &request.name)?;
        state::make_dir(&path)?;
        let path = path
            .canonicalize()
            .map_err(|e| NodeError::io(format!("resolving {}", path.display()), e))?;
        let _serial = self.serial.lock().await;
        let lock = self.lock().await?;
        let mut state = lock.load()?;
        let key = state::key(&request.service, &request.name);
        if let Some((other, _)) = state
            .volumes
            .iter()
            .find(|(k, v)| **k != key && v.paths.contains_key(&path))
        {
            return Err(NodeError::PathInUse {
                path,
                by: format!("volume {other} is mounted there"),
            });
        }
        let mounted_now = sys::is_mount_point(&path)?;
        match state.volumes.get_mut(&key) {
            Some(v) if v.instance != request.instance => {
                return Err(NodeError::AttachedElsewhere {
                    volume: key,
                    holders: format!("{} (mounted on this node)", v.instance),
                    instance: request.instance.clone(),
                })
            }
            Some(v) if mounted_now && v.paths.contains_key(&path) => {
                let p = v.paths.get_mut(&path).ok_or_else(|| {
                    NodeError::io("node state", std::io::Error::other("path vanished"))
                })?;
                if p.read_only != request.read_only {
                    return Err(NodeError::OtherMode {
                        volume: key,
                        path,
                        mode: if p.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                    });
                }
                if let Some(h) = &request.holder {
                    if p.holders.insert(h.clone()) {
                        lock.save(&state)?;
                    }
                }
                return Ok(path);
            }
            _ if mounted_now => {
                return Err(NodeError::PathInUse {
                    path,
                    by: "something this node did not mount is mounted there".into(),
                })
            }
            _ => {}
        }
        // Intent first: a crash from here on leaves a record that the next
        // call settles.
        let entry = state
            .volumes
            .entry(key.clone())
            .or_insert_with(|| VolumeState {
                service: request.service.clone(),
                name: request.name.clone(),
                instance: request.instance.clone(),
                ..Default::default()
            });
        let p = entry.paths.entry(path.clone()).or_default();
        p.read_only = request.read_only;
        p.holders.extend(request.holder.iter().cloned());
        lock.save(&state)?;
        match self
            .bring_up(session, &lock, &mut state, &key, &path, request)
            .await
        {
            Ok(()) => Ok(path),
            Err(e) => {
                // Leave nothing behind that this call made: this path, and
                // the attachment if no other path uses it.
                let _ = self
                    .take_down(session, &lock, &mut state, &key, &path, false)
                    .await;
                Err(e)
            }
        }
    }

    async fn bring_up(
        &self,
        session: &Session,
        lock: &state::StateLock,
        state: &mut NodeState,
        key: &str,
        path: &Path,
        request: &MountRequest,
    ) -> Result<(), NodeError> {
        let (service, name, instance) = (&request.service, &request.name, &request.instance);
        let volume = session
            .volumes()
            .get_volume(pb::GetVolumeRequest {
                service: service.clone(),
                name: name.clone(),
            })
            .await
            .map_err(|status| NodeError::Controller {
                action: format!("looking up volume {key}"),
                status,
            })?
            .into_inner();
        let plan = Plan::of(&volume, None)?;
        plan.check_host(key)?;
        if plan == Plan::Csi {
            csi::endpoint_for(&self.csi_plugins, service, key)?;
        }
        let attached = session
            .volumes()
            .attach_volume(pb::AttachVolumeRequest {
                service: service.clone(),
                name: name.clone(),
                instance: instance.clone(),
            })
            .await
            .map_err(|status| {
                let holders: Vec<&str> = volume
                    .attachments
                    .iter()
                    .map(|a| a.instance.as_str())
                    .filter(|i| i != instance)
                    .collect();
                if status.code() == tonic::Code::FailedPrecondition && !holders.is_empty() {
                    NodeError::AttachedElsewhere {
                        volume: key.to_owned(),
                        holders: holders.join(", "),
                        instance: instance.clone(),
                    }
                } else {
                    NodeError::Controller {
                        action: format!("attaching volume {key} to {instance}"),
                        status,
                    }
                }
            })?
            .into_inner();
        let attachment = attached.attachment.unwrap_or_default();
        let plan = Plan::of(
            attached.volume.as_ref().unwrap_or(&volume),
            attachment.fields.get("format").map(String::as_str),
        )?;
        let device = attachment.device.clone();
        let entry = entry_mut(state, key)?;
        entry.driver = Some(volume.driver.clone());
        entry.device = Some(device.clone());
        lock.save(state)?;
        pause("attach");
        let read_only = request.read_only;
        if plan == Plan::Csi {
            return self
                .bring_up_csi(lock, state, key, path, request, &attachment.fields)
                .await;
        }
        let source = match &plan {
            Plan::Bind => {
                let dir = PathBuf::from(&device);
                if !dir.is_dir() {
                    return Err(NodeError::Unsupported {
                        volume: key.to_owned(),
                        reason: format!(
                            "its device {device} is not a directory on this node; a vfs volume can be mounted only where its service's root is reachable"
                        ),
                    });
                }
                dir
            }
            Plan::Csi => return Ok(()),
            Plan::Loop { fs } | Plan::Nbd { fs } => {
                if !Path::new(&device).is_file() {
                    return Err(NodeError::Unsupported {
                        volume: key.to_owned(),
                        reason: format!(
                            "its image {device} is not a file on this node; an image volume can be mounted only where its service's root is reachable"
                        ),
                    });
                }
                let block = match (&plan, entry_mut(state, key)?.block.clone()) {
                    (Plan::Nbd { .. }, Some(b)) if sys::nbd_devices().contains(&b) => b,
                    (Plan::Nbd { .. }, _) => sys::nbd_connect(&device).await?,
                    _ => sys::loop_for(&device).await?,
                };
                entry_mut(state, key)?.block = Some(block.clone());
                lock.save(state)?;
                pause("block");
                let staging = self.staging_path(service, name);
                state::make_dir(&staging)?;
                if !sys::is_mount_point(&staging)? {
                    let fs_type = match sys::probe(&block).await? {
                        sys::Content::Filesystem(t) => t,
                        sys::Content::Empty => {
                            sys::mkfs(&block, fs).await?;
                            pause("format");
                            fs.clone()
                        }
                        sys::Content::Other(what) => {
                            return Err(NodeError::ForeignContent {
                                volume: key.to_owned(),
                                device: block,
                                what,
                            })
                        }
                    };
                    sys::mount_fs(&block, &staging, &fs_type)?;
                }
                entry_mut(state, key)?.staging = Some(staging.clone());
                lock.save(state)?;
                pause("stage");
                staging
            }
        };
        if !sys::is_mount_point(path)? {
            sys::bind(&source, path, read_only)?;
        }
        pause("bind");
        Ok(())
    }

    /// The `csi` half of [`Node::mount`]: stage (when the plugin stages)
    /// and publish through the plugin's Node service.
    async fn bring_up_csi(
        &self,
        lock: &state::StateLock,
        state: &mut NodeState,
        key: &str,
        path: &Path,
        request: &MountRequest,
        fields: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), NodeError> {
        let endpoint = csi::endpoint_for(&self.csi_plugins, &request.service, key)?.to_owned();
        let published =
            csi::Published::from_fields(fields).ok_or_else(|| NodeError::Unsupported {
                volume: key.to_owned(),
                reason: format!(
                    "the controller's attachment carries no {}; is berthd's csi driver this version's?",
                    csi::VOLUME_ID
                ),
            })?;
        let entry = entry_mut(state, key)?;
        entry.device = Some(published.volume_id.clone());
        entry.csi_endpoint = Some(endpoint.clone());
        lock.save(state)?;
        let mut plugin = csi::PluginNode::connect(&endpoint).await?;
        let staging = if plugin.stages().await? {
            let staging = self.staging_path(&request.service, &request.name);
            state::make_dir(&staging)?;
            plugin.stage(&published, &staging).await?;
            entry_mut(state, key)?.staging = Some(staging.clone());
            lock.save(state)?;
            Some(staging)
        } else {
            None
        };
        pause("stage");
        if !sys::is_mount_point(path)? {
            plugin
                .publish(&published, staging.as_deref(), path, request.read_only)
                .await?;
        }
        pause("bind");
        Ok(())
    }

    /// Unmounts the volume at the requested path; when that was its last
    /// path on this node, releases its block device and detaches it.
    /// Unmounting what is not mounted succeeds. With a holder, only that
    /// holder lets go, and the path stays mounted while others hold it.
    pub async fn unmount(
        &self,
        session: &Session,
        request: &UnmountRequest,
    ) -> Result<(), NodeError> {
        check_component("service", &request.service)?;
        check_component("volume", &request.name)?;
        let path = self.path_for(request.path.as_deref(), &request.service, &request.name)?;
        let _serial = self.serial.lock().await;
        let lock = self.lock().await?;
        let mut state = lock.load()?;
        let key = state::key(&request.service, &request.name);
        let Some(entry) = state.volumes.get_mut(&key) else {
            return Ok(());
        };
        if !request.instance.is_empty() && entry.instance != request.instance {
            return Err(NodeError::AttachedElsewhere {
                volume: key,
                holders: format!("{} (mounted on this node)", entry.instance),
                instance: request.instance.clone(),
            });
        }
        if let (Some(holder), Some(p)) = (&request.holder, entry.paths.get_mut(&path)) {
            p.holders.remove(holder);
            if !p.holders.is_empty() {
                lock.save(&state)?;
                return Ok(());
            }
        }
        if !entry.paths.contains_key(&path) && !entry.paths.is_empty() {
            // Not a path of this volume: nothing of it is mounted there.
            return Ok(());
        }
        self.take_down(session, &lock, &mut state, &key, &path, request.force)
            .await
    }

    /// Unmounts `path` and forgets it; when the volume has no path left,
    /// unmounts its staging mount, releases its block device and detaches
    /// it from the controller.
    async fn take_down(
        &self,
        session: &Session,
        lock: &state::StateLock,
        state: &mut NodeState,
        key: &str,
        path: &Path,
        lazy: bool,
    ) -> Result<(), NodeError> {
        let csi_plugin = {
            let entry = entry_mut(state, key)?;
            match (entry.driver.as_deref(), &entry.device) {
                (Some("csi"), Some(volume_id)) => {
                    let endpoint = match &entry.csi_endpoint {
                        Some(e) => e.clone(),
                        None => {
                            csi::endpoint_for(&self.csi_plugins, &entry.service, key)?.to_owned()
                        }
                    };
                    Some((
                        csi::PluginNode::connect(&endpoint).await?,
                        volume_id.clone(),
                    ))
                }
                _ => None,
            }
        };
        let mut csi_plugin = csi_plugin;
        if entry_mut(state, key)?.paths.contains_key(path) {
            if let Some((plugin, volume_id)) = csi_plugin.as_mut() {
                plugin.unpublish(volume_id, path).await?;
            }
            if sys::is_mount_point(path)? {
                sys::unmount(path, lazy)?;
            }
            let _ = std::fs::remove_dir(path);
            entry_mut(state, key)?.paths.remove(path);
            lock.save(state)?;
            pause("unbind");
        }
        let entry = entry_mut(state, key)?.clone();
        if !entry.paths.is_empty() {
            return Ok(());
        }
        let staging = entry
            .staging
            .clone()
            .unwrap_or_else(|| self.staging_path(&entry.service, &entry.name));
        if let (Some((plugin, volume_id)), Some(staged)) = (csi_plugin.as_mut(), &entry.staging) {
            plugin.unstage(volume_id, staged).await?;
        }
        if sys::is_mount_point(&staging)? {
            sys::unmount(&staging, lazy)?;
        }
        let _ = std::fs::remove_dir(&staging);
        match (entry.driver.as_deref(), &entry.device, &entry.block) {
            (_, _, Some(block)) if block.starts_with("/dev/nbd") => {
                sys::nbd_disconnect(block).await?
            }
            (Some("image"), Some(device), _) => sys::release_loops(device).await?,
            _ => {}
        }
        pause("release");
        let volumes = session.volumes();
        let found = volumes
            .clone()
            .get_volume(pb::GetVolumeRequest {
                service: entry.service.clone(),
                name: entry.name.clone(),
            })
            .await;
        let attached_here = match found {
            Ok(v) => v
                .into_inner()
                .attachments
                .iter()
                .any(|a| a.instance == entry.instance),
            Err(status) if status.code() == tonic::Code::NotFound => false,
            Err(status) => {
                return Err(NodeError::Controller {
                    action: format!("looking up volume {key}"),
                    status,
                })
            }
        };
        if attached_here {
            volumes
                .clone()
                .detach_volume(pb::DetachVolumeRequest {
                    service: entry.service.clone(),
                    name: entry.name.clone(),
                    instance: entry.instance.clone(),
                    force: false,
                })
                .await
                .map_err(|status| NodeError::Controller {
                    action: format!("detaching volume {key} from {}", entry.instance),
                    status,
                })?;
        }
        state.volumes.remove(key);
        lock.save(state)?;
        Ok(())
    }
}

fn entry_mut<'a>(state: &'a mut NodeState, key: &str) -> Result<&'a mut VolumeState, NodeError> {
    state
        .volumes
        .get_mut(key)
        .ok_or_else(|| NodeError::BadState {
            path: PathBuf::from("node.json"),
            message: format!("the entry for {key} vanished while in use"),
        })
}

/// A service or volume name must be one plain path component.
fn check_component(what: &str, value: &str) -> Result<(), NodeError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && !value.starts_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NodeError::InvalidArgument(format!(
            "{what} name {:?} is not valid: 1 to 128 characters of A-Z a-z 0-9 _ . - not starting with a dot",
            sys::one_line(&value.chars().take(48).collect::<String>())
        )))
    }
}

fn check_instance(instance: &str) -> Result<(), NodeError> {
    if instance.trim().is_empty() || instance.chars().any(char::is_control) {
        return Err(NodeError::InvalidArgument(
            "the instance ID is empty or holds control characters; pass --instance ID".into(),
        ));
    }
    Ok(())
}

/// The test hook of [`PAUSE_ENV`].
fn pause(step: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == step) {
        eprintln!("berth: paused after {step} ({PAUSE_ENV})");
        std::thread::sleep(Duration::from_secs(120));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_checked_before_anything_happens() {
        let node = Node::new("/tmp/berth-test-root");
        assert!(node.default_path("fast", "db").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "x\n"] {
            assert!(node.default_path("fast", bad).is_err(), "{bad:?}");
            assert!(node.default_path(bad, "db").is_err(), "{bad:?}");
        }
        assert!(node.path_for(Some(Path::new("rel")), "s", "v").is_err());
        assert!(node
            .path_for(Some(Path::new("/mnt/../etc")), "s", "v")
            .is_err());
        assert!(node
            .path_for(Some(Path::new("/tmp/berth-test-root/.berth/x")), "s", "v")
            .is_err());
    }

    #[test]
    fn plans_follow_driver_and_format() {
        let mut v = pb::Volume {
            service: "s".into(),
            name: "v".into(),
            driver: "vfs".into(),
            ..Default::default()
        };
        assert_eq!(Plan::of(&v, None).expect("vfs"), Plan::Bind);
        v.driver = "image".into();
        assert_eq!(
            Plan::of(&v, Some("raw")).expect("raw"),
            Plan::Loop { fs: "ext4".into() }
        );
        v.options.insert("fs".into(), "xfs".into());
        assert_eq!(
            Plan::of(&v, Some("qcow2")).expect("qcow2"),
            Plan::Nbd { fs: "xfs".into() }
        );
        v.options.insert("fs".into(), "ntfs".into());
        assert!(Plan::of(&v, None).is_err());
        v.options.clear();
        v.driver = "other".into();
        let err = Plan::of(&v, None).expect_err("unknown driver");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn qcow2_without_nbd_says_why_and_what_would_work() {
        if !sys::nbd_devices().is_empty() {
            return;
        }
        let err = Plan::Nbd { fs: "ext4".into() }
            .check_host("s/v")
            .expect_err("no nbd");
        let text = err.to_string();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            text.contains("/dev/nbd") && text.contains("modprobe nbd"),
            "{text}"
        );
        assert!(text.contains("raw"), "{text}");
    }
}
