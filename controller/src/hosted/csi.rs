//! The `csi` driver: a CSI plugin's controller service, reached on its unix
//! socket, as a Berth driver.
//!
//! ```toml
//! [[services]]
//! name = "hostpath"
//! driver = "csi"
//! [services.options]
//! endpoint = "unix:///run/csi/hostpath.sock"   # the plugin's controller socket
//! parameters = "type=dir"                      # CreateVolume parameters, optional
//! ```
//!
//! # Mapping
//!
//! | Berth | CSI |
//! | --- | --- |
//! | create | `CreateVolume` (name = the Berth name, one mount capability, the service's `parameters`) |
//! | create from snapshot, copy | `CreateVolume` with a snapshot or volume content source |
//! | delete | `DeleteVolume` |
//! | list, get | `ListVolumes` / `ControllerGetVolume` where the plugin has them |
//! | attach, detach | `ControllerPublishVolume` / `ControllerUnpublishVolume` when the plugin has them; otherwise attach only records the instance |
//! | snapshots | `CreateSnapshot`, `DeleteSnapshot`, `ListSnapshots` |
//!
//! The plugin's volume id is kept in the volume's record (field
//! [`VOLUME_ID`]) and learnt back at start-up through
//! [`VolumeDriver::recall`]; Berth's names stay the user's handle. A name
//! the driver has no id for (an interrupted create, at the next start) is
//! resolved through `CreateVolume`'s idempotency on the name, as CSI
//! orchestrators do, and then deleted.
//!
//! # Availability
//!
//! The socket is dialled lazily: a plugin that is down does not stop
//! `berthd`. Calls then fail with [`DriverError::Unavailable`] naming the
//! socket, `berth service list` shows the service unavailable, and both
//! recover when the plugin answers again (a background probe every
//! [`PROBE_EVERY`], and every call redials). Every call is bounded
//! ([`CALL_TIMEOUT`], [`CONNECT_TIMEOUT`]).
//!
//! # Contract
//!
//! An answer that breaks CSI's contract (a `CreateVolume` that is not
//! idempotent on its name, an empty volume id, less capacity than asked)
//! is an error naming the plugin and the broken rule.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use berth_drivers::{
    async_trait, echo, Attachment, Capabilities, CreateRequest, DriverError, DriverOptions,
    DriverResult, DriverSnapshot, DriverVolume, VolumeDriver, VolumeName,
};
use berth_proto::csi::v1 as pb;
use hyper_util::rt::TokioIo;
use pb::controller_client::ControllerClient;
use pb::controller_service_capability::rpc::Type as Rpc;
use pb::identity_client::IdentityClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The driver's registered name.
pub const DRIVER_NAME: &str = "csi";

/// The service options the driver takes.
pub const OPTIONS: &[&str] = &["endpoint", "parameters"];

/// The record field holding the plugin's volume id.
pub const VOLUME_ID: &str = "csi.volume_id";
/// The record field holding the plugin's name (from `GetPluginInfo`).
pub const PLUGIN: &str = "csi.plugin";
/// Prefix of record fields holding the volume context `CreateVolume`
/// returned (the node passes it back to the plugin's Node service).
pub const CONTEXT_PREFIX: &str = "csi.context.";
/// Prefix of attachment fields holding the publish context
/// `ControllerPublishVolume` returned.
pub const PUBLISH_PREFIX: &str = "csi.publish.";

/// How long dialling the socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one call to the plugin may take before it is given up as
/// unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a plugin that is down (or not yet probed) is probed again.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// The most pages one listing reads from the plugin.
const MAX_PAGES: usize = 10_000;

/// What `Probe`, `GetPluginInfo` and `ControllerGetCapabilities` said.
#[derive(Clone, Debug, Default)]
struct Plugin {
    name: String,
    version: String,
    create_delete: bool,
    publish: bool,
    list_volumes: bool,
    get_volume: bool,
    snapshots: bool,
    list_snapshots: bool,
    clone: bool,
}

/// The live view of the plugin.
#[derive(Debug, Default)]
struct State {
    /// The last successful probe, cleared when the plugin stops answering
    /// (so it is probed again when it comes back).
    probed: Option<Plugin>,
    /// The last capabilities known, kept while the plugin is down.
    last: Option<Plugin>,
    /// Why the plugin is unreachable, while it is.
    down: Option<String>,
}

/// What the driver knows of one volume.
#[derive(Clone, Debug)]
struct Known {
    id: String,
    context: BTreeMap<String, String>,
}

/// What the driver knows of one snapshot.
#[derive(Clone, Debug)]
struct KnownSnapshot {
    /// `None` when learnt from a record (snapshot records keep no plugin
    /// id): resolved on use through `CreateSnapshot`'s idempotency.
    id: Option<String>,
    volume: VolumeName,
}

/// Berth names to the plugin's ids.
#[derive(Debug, Default)]
struct Book {
    volumes: HashMap<VolumeName, Known>,
    snapshots: HashMap<VolumeName, KnownSnapshot>,
}

/// A CSI plugin as a Berth driver (see the module documentation).
pub struct CsiDriver {
    endpoint: String,
    socket: PathBuf,
    parameters: HashMap<String, String>,
    channel: OnceLock<Channel>,
    state: RwLock<State>,
    book: Mutex<Book>,
}

impl std::fmt::Debug for CsiDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsiDriver")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Parses `k=v,k2=v2` (the `parameters` option).
pub fn parse_parameters(text: &str) -> DriverResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(DriverError::InvalidOption {
                option: "parameters".into(),
                reason: format!(
                    "item {} is not KEY=VALUE; write them as \"k=v,k2=v2\"",
                    echo(item)
                ),
            });
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(DriverError::InvalidOption {
                option: "parameters".into(),
                reason: format!("item {} has an empty key", echo(item)),
            });
        }
        if out.insert(k.to_owned(), v.trim().to_owned()).is_some() {
            return Err(DriverError::InvalidOption {
                option: "parameters".into(),
                reason: format!("key {} is given twice", echo(k)),
            });
        }
    }
    Ok(out)
}

/// The socket path of a `unix:///abs/path` endpoint.
pub fn parse_endpoint(endpoint: &str) -> DriverResult<PathBuf> {
    let bad = |reason: String| DriverError::InvalidOption {
        option: "endpoint".into(),
        reason,
    };
    let Some(path) = endpoint.strip_prefix("unix://") else {
        return Err(bad(format!(
            "{} is not a unix socket endpoint; write unix:///path/to/plugin.sock",
            echo(endpoint)
        )));
    };
    if !path.starts_with('/') {
        return Err(bad(format!(
            "{} names a relative path; write unix:///absolute/path.sock",
            echo(endpoint)
        )));
    }
    Ok(PathBuf::from(path))
}

/// The one volume capability the driver asks for: a filesystem, written by
/// one node.
fn mount_capability() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

impl CsiDriver {
    /// Builds the driver from its service options (`endpoint`, optional
    /// `parameters`). Nothing is dialled here: a plugin that is down does
    /// not stop start-up. Inside a tokio runtime, a background task probes
    /// the plugin at once and again every [`PROBE_EVERY`] while it is down.
    pub fn from_options(options: &DriverOptions) -> DriverResult<Arc<Self>> {
        options.only(OPTIONS)?;
        let endpoint = options.require("endpoint")?.to_owned();
        let socket = parse_endpoint(&endpoint)?;
        let parameters = parse_parameters(options.get("parameters").unwrap_or(""))?;
        let driver = Arc::new(Self {
            endpoint,
            socket,
            parameters,
            channel: OnceLock::new(),
            state: RwLock::new(State::default()),
            book: Mutex::new(Book::default()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(watch(Arc::downgrade(&driver)));
        }
        Ok(driver)
    }

    /// The registry factory.
    pub fn factory(options: &DriverOptions) -> DriverResult<Arc<dyn VolumeDriver>> {
        Ok(Self::from_options(options)? as Arc<dyn VolumeDriver>)
    }

    /// The endpoint as configured.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| {
                let socket = self.socket.clone();
                Endpoint::from_static("http://csi-plugin.invalid")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    }))
            })
            .clone()
    }

    /// "CSI plugin NAME at ENDPOINT", or without the name before a probe.
    fn who(&self) -> String {
        match self.read_state(|s| s.last.as_ref().map(|p| p.name.clone())) {
            Some(name) if !name.is_empty() => {
                format!("CSI plugin {name} at {}", self.endpoint)
            }
            _ => format!("CSI plugin at {}", self.endpoint),
        }
    }

    fn read_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write_state(&self, f: impl FnOnce(&mut State)) {
        match self.state.write() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn with_book<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        match self.book.lock() {
            Ok(mut b) => f(&mut b),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn mark_down(&self, why: &str) {
        let why = why.to_owned();
        self.write_state(|s| {
            s.probed = None;
            s.down = Some(why);
        });
    }

    fn unreachable(&self, operation: &str, detail: &str) -> DriverError {
        let why = format!(
            "{} is unavailable ({operation}: {detail}); start the plugin or check that socket {} is its controller socket, then retry",
            self.who(),
            self.socket.display()
        );
        self.mark_down(&why);
        DriverError::Unavailable(why)
    }

    /// Runs one call to the plugin, bounded by [`CALL_TIMEOUT`]; a
    /// transport failure or a timeout marks the plugin down.
    async fn call<T, Fut>(&self, operation: &'static str, call: Fut) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(CallError::Driver(self.unreachable(
                operation,
                &format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            ))),
            Ok(Ok(response)) => {
                if self.read_state(|s| s.down.is_some()) {
                    self.write_state(|s| s.down = None);
                }
                Ok(response.into_inner())
            }
            Ok(Err(status)) if transport_failure(&status) => Err(CallError::Driver(
                self.unreachable(operation, status.message()),
            )),
            Ok(Err(status)) => Err(CallError::Status(status)),
        }
    }

    /// The plugin's capabilities, probing it first if that has not been
    /// done since it was last seen down.
    async fn plugin(&self) -> DriverResult<Plugin> {
        if let Some(p) = self.read_state(|s| s.probed.clone()) {
            return Ok(p);
        }
        self.probe().await
    }

    /// `Probe`, `GetPluginInfo`, `GetPluginCapabilities` and
    /// `ControllerGetCapabilities`.
    async fn probe(&self) -> DriverResult<Plugin> {
        let mut identity = IdentityClient::new(self.channel());
        let refused = |op: &'static str| {
            move |e: CallError| match e {
                CallError::Driver(d) => d,
                CallError::Status(s) => DriverError::Unavailable(format!(
                    "{} answered {op} with {:?}: {}; it cannot serve until that is fixed",
                    self.who(),
                    s.code(),
                    s.message()
                )),
            }
        };
        let info = self
            .call(
                "GetPluginInfo",
                identity.get_plugin_info(pb::GetPluginInfoRequest {}),
            )
            .await
            .map_err(refused("GetPluginInfo"))?;
        let ready = self
            .call("Probe", identity.probe(pb::ProbeRequest {}))
            .await
            .map_err(refused("Probe"))?;
        if ready.ready == Some(false) {
            let why = format!(
                "CSI plugin {} at {} says it is not ready (Probe); wait for it, then retry",
                info.name, self.endpoint
            );
            self.mark_down(&why);
            return Err(DriverError::Unavailable(why));
        }
        let plugin_caps = self
            .call(
                "GetPluginCapabilities",
                identity.get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {}),
            )
            .await
            .map_err(refused("GetPluginCapabilities"))?;
        let has_controller = plugin_caps.capabilities.iter().any(|c| {
            matches!(
                &c.r#type,
                Some(pb::plugin_capability::Type::Service(s))
                    if s.r#type == pb::plugin_capability::service::Type::ControllerService as i32
            )
        });
        let mut plugin = Plugin {
            name: info.name.clone(),
            version: info.vendor_version.clone(),
            ..Plugin::default()
        };
        if has_controller {
            let caps = self
                .call(
                    "ControllerGetCapabilities",
                    ControllerClient::new(self.channel())
                        .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}),
                )
                .await
                .map_err(refused("ControllerGetCapabilities"))?;
            for cap in caps.capabilities {
                let Some(pb::controller_service_capability::Type::Rpc(rpc)) = cap.r#type else {
                    continue;
                };
                match Rpc::try_from(rpc.r#type) {
                    Ok(Rpc::CreateDeleteVolume) => plugin.create_delete = true,
                    Ok(Rpc::PublishUnpublishVolume) => plugin.publish = true,
                    Ok(Rpc::ListVolumes) => plugin.list_volumes = true,
                    Ok(Rpc::GetVolume) => plugin.get_volume = true,
                    Ok(Rpc::CreateDeleteSnapshot) => plugin.snapshots = true,
                    Ok(Rpc::ListSnapshots) => plugin.list_snapshots = true,
                    Ok(Rpc::CloneVolume) => plugin.clone = true,
                    _ => {}
                }
            }
        }
        tracing::info!(endpoint = %self.endpoint, plugin = %plugin.name, version = %plugin.version,
            create_delete = plugin.create_delete, publish = plugin.publish,
            snapshots = plugin.snapshots, clone = plugin.clone, "CSI plugin probed");
        self.write_state(|s| {
            s.probed = Some(plugin.clone());
            s.last = Some(plugin.clone());
            s.down = None;
        });
        Ok(plugin)
    }

    /// A plugin error, mapped to the driver error that tells the caller
    /// what to do; `what` says what was being done with which name.
    /// Runs a plugin delete (`operation`, of `what`): NOT_FOUND means it is
    /// already gone, which is what was asked (CSI deletes are idempotent).
    async fn delete_call<T, Fut>(
        &self,
        operation: &'static str,
        what: &str,
        call: Fut,
    ) -> DriverResult<()>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match self.call(operation, call).await {
            Ok(_) => Ok(()),
            Err(CallError::Status(s)) if s.code() == Code::NotFound => Ok(()),
            Err(e) => Err(self.refused(operation, what, e)),
        }
    }

    fn refused(&self, operation: &'static str, what: &str, e: CallError) -> DriverError {
        let status = match e {
            CallError::Driver(d) => return d,
            CallError::Status(s) => s,
        };
        let said = format!(
            "{} refused {operation} ({what}): {}",
            self.who(),
            status.message()
        );
        match status.code() {
            Code::InvalidArgument => DriverError::InvalidArgument(said),
            Code::NotFound => DriverError::NotFound(format!("{what} (the plugin says: {said})")),
            Code::AlreadyExists => DriverError::AlreadyExists(said),
            Code::OutOfRange => DriverError::OutOfRange(said),
            Code::FailedPrecondition => DriverError::FailedPrecondition(said),
            Code::Unimplemented => DriverError::Unsupported {
                driver: format!("{DRIVER_NAME} ({})", self.who()),
                operation,
            },
            Code::Aborted | Code::ResourceExhausted | Code::Unavailable => {
                DriverError::Unavailable(format!("{said}; retry later"))
            }
            _ => DriverError::Internal(format!("{said} [{:?}]", status.code())),
        }
    }

    /// An answer that breaks CSI's contract.
    fn broke(&self, rule: &str) -> DriverError {
        DriverError::Internal(format!(
            "{} broke the CSI contract: {rule}; report it to the plugin's authors",
            self.who()
        ))
    }

    fn require(&self, has: bool, operation: &'static str) -> DriverResult<()> {
        if has {
            Ok(())
        } else {
            Err(DriverError::Unsupported {
                driver: format!("{DRIVER_NAME} ({})", self.who()),
                operation,
            })
        }
    }

    /// Refuses names that are not Berth names (a second wall) and any
    /// per-volume options.
    fn check(request: &CreateRequest) -> DriverResult<()> {
        VolumeName::parse(request.name.as_str())
            .map_err(|e| DriverError::InvalidArgument(format!("volume {e}")))?;
        if let Some(key) = request.options.keys().next() {
            return Err(DriverError::InvalidArgument(format!(
                "unknown option {}: a csi service passes its `parameters` service option to the plugin and takes no per-volume options",
                echo(key)
            )));
        }
        Ok(())
    }

    fn volume_id(&self, name: &VolumeName) -> Option<String> {
        self.with_book(|b| b.volumes.get(name).map(|k| k.id.clone()))
    }

    /// `CreateVolume` with `source`; checks the answer against the contract.
    async fn create_volume(
        &self,
        request: &CreateRequest,
        source: Option<pb::VolumeContentSource>,
    ) -> DriverResult<DriverVolume> {
        Self::check(request)?;
        let plugin = self.plugin().await?;
        self.require(plugin.create_delete, "creating volumes")?;
        let size = i64::try_from(request.size_bytes).map_err(|_| {
            DriverError::OutOfRange(format!(
                "size {} bytes is past what CSI can ask for (at most {} bytes)",
                request.size_bytes,
                i64::MAX
            ))
        })?;
        let name = &request.name;
        let req = pb::CreateVolumeRequest {
            name: name.to_string(),
            capacity_range: (size > 0).then_some(pb::CapacityRange {
                required_bytes: size,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability()],
            parameters: self.parameters.clone(),
            volume_content_source: source,
            ..Default::default()
        };
        let what = format!("volume {name}");
        let answer = self
            .call(
                "CreateVolume",
                ControllerClient::new(self.channel()).create_volume(req),
            )
            .await
            .map_err(|e| self.refused("CreateVolume", &what, e))?;
        let Some(volume) = answer.volume else {
            return Err(self.broke(&format!("CreateVolume of {name} answered no volume")));
        };
        if volume.volume_id.is_empty() {
            return Err(self.broke(&format!(
                "CreateVolume of {name} answered an empty volume id"
            )));
        }
        let capacity = u64::try_from(volume.capacity_bytes).unwrap_or(0);
        if capacity != 0 && capacity < request.size_bytes {
            return Err(self.broke(&format!(
                "CreateVolume of {name} asked for at least {} bytes and answered {capacity}",
                request.size_bytes
            )));
        }
        let known = Known {
            id: volume.volume_id.clone(),
            context: volume.volume_context.into_iter().collect(),
        };
        // Idempotency on the name: the same name must give the same volume.
        let previous = self.with_book(|b| b.volumes.insert(name.clone(), known.clone()));
        if let Some(previous) = previous.filter(|p| p.id != known.id) {
            self.with_book(|b| b.volumes.insert(name.clone(), previous.clone()));
            return Err(self.broke(&format!(
                "CreateVolume is not idempotent: name {name} gave volume id {} before and {} now (CreateVolume must return the existing volume for a name it already holds)",
                echo(&previous.id),
                echo(&known.id)
            )));
        }
        let size_bytes = if capacity == 0 {
            request.size_bytes
        } else {
            capacity
        };
        Ok(self.volume(name, &known, size_bytes, &plugin))
    }

    fn volume(&self, name: &VolumeName, known: &Known, size: u64, plugin: &Plugin) -> DriverVolume {
        let mut fields = BTreeMap::from([(VOLUME_ID.to_owned(), known.id.clone())]);
        if !plugin.name.is_empty() {
            fields.insert(PLUGIN.to_owned(), plugin.name.clone());
        }
        for (k, v) in &known.context {
            fields.insert(format!("{CONTEXT_PREFIX}{k}"), v.clone());
        }
        DriverVolume {
            name: name.clone(),
            size_bytes: size,
            fields,
        }
    }

    /// Every volume the plugin lists: (id, capacity).
    async fn plugin_volumes(&self) -> DriverResult<Vec<(String, u64)>> {
        let mut client = ControllerClient::new(self.channel());
        let mut token = String::new();
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .call(
                    "ListVolumes",
                    client.list_volumes(pb::ListVolumesRequest {
                        max_entries: 0,
                        starting_token: token.clone(),
                    }),
                )
                .await
                .map_err(|e| self.refused("ListVolumes", "every volume", e))?;
            for entry in page.entries {
                if let Some(v) = entry.volume {
                    out.push((v.volume_id, u64::try_from(v.capacity_bytes).unwrap_or(0)));
                }
            }
            if page.next_token.is_empty() {
                return Ok(out);
            }
            token = page.next_token;
        }
        Err(self.broke(&format!(
            "ListVolumes went on for more than {MAX_PAGES} pages"
        )))
    }

    /// Every snapshot the plugin lists: (id, source volume id, size).
    async fn plugin_snapshots(&self) -> DriverResult<Vec<(String, String, u64)>> {
        let mut client = ControllerClient::new(self.channel());
        let mut token = String::new();
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .call(
                    "ListSnapshots",
                    client.list_snapshots(pb::ListSnapshotsRequest {
                        starting_token: token.clone(),
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| self.refused("ListSnapshots", "every snapshot", e))?;
            for entry in page.entries {
                if let Some(s) = entry.snapshot {
                    out.push((
                        s.snapshot_id,
                        s.source_volume_id,
                        u64::try_from(s.size_bytes).unwrap_or(0),
                    ));
                }
            }
            if page.next_token.is_empty() {
                return Ok(out);
            }
            token = page.next_token;
        }
        Err(self.broke(&format!(
            "ListSnapshots went on for more than {MAX_PAGES} pages"
        )))
    }

    /// The plugin's id of snapshot `name`: known, or resolved through
    /// `CreateSnapshot`'s idempotency (its source volume is known).
    async fn snapshot_id(&self, name: &VolumeName) -> DriverResult<Option<String>> {
        let Some(known) = self.with_book(|b| b.snapshots.get(name).cloned()) else {
            return Ok(None);
        };
        if let Some(id) = known.id {
            return Ok(Some(id));
        }
        match self.create_snapshot(&known.volume, name).await {
            Ok(_) => Ok(self.with_book(|b| b.snapshots.get(name).and_then(|k| k.id.clone()))),
            Err(DriverError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A failed call: already a driver error (transport, timeout), or the
/// plugin's own status.
enum CallError {
    Driver(DriverError),
    Status(Status),
}

/// Whether a status comes from the channel rather than from the plugin.
fn transport_failure(status: &Status) -> bool {
    use std::error::Error as _;
    status.code() == Code::Unavailable && status.source().is_some()
        || status.code() == Code::Unknown && status.message().contains("transport")
        || status.code() == Code::Cancelled && status.message().contains("Timeout")
}

/// Probes at once, then again every [`PROBE_EVERY`] while the plugin is
/// down or not yet probed; ends when the driver is dropped.
async fn watch(driver: Weak<CsiDriver>) {
    loop {
        {
            let Some(driver) = driver.upgrade() else {
                return;
            };
            if driver.read_state(|s| s.probed.is_none()) {
                if let Err(e) = driver.probe().await {
                    tracing::debug!(endpoint = %driver.endpoint, error = %e, "CSI plugin not reachable yet");
                }
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[async_trait]
impl VolumeDriver for CsiDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn capabilities(&self) -> Capabilities {
        let plugin = self.read_state(|s| s.last.clone()).unwrap_or_default();
        Capabilities {
            // Attach records the instance; it calls ControllerPublish when
            // the plugin has it.
            attach: true,
            multi_attach: false,
            snapshot: plugin.snapshots,
            copy: plugin.clone,
            create_from_snapshot: plugin.snapshots,
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.read_state(|s| match (&s.down, &s.last) {
            (Some(why), _) => Some(why.clone()),
            (None, None) => Some(format!(
                "CSI plugin at {} has not answered a probe yet",
                self.endpoint
            )),
            (None, Some(_)) => None,
        })
    }

    fn recall(&self, name: &VolumeName, fields: &BTreeMap<String, String>) {
        let Some(id) = fields.get(VOLUME_ID) else {
            return;
        };
        let context = fields
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(CONTEXT_PREFIX)
                    .map(|k| (k.to_owned(), v.clone()))
            })
            .collect();
        self.with_book(|b| {
            b.volumes.insert(
                name.clone(),
                Known {
                    id: id.clone(),
                    context,
                },
            )
        });
    }

    fn recall_snapshot(&self, snapshot: &VolumeName, volume: &VolumeName) {
        self.with_book(|b| {
            b.snapshots
                .entry(snapshot.clone())
                .or_insert_with(|| KnownSnapshot {
                    id: None,
                    volume: volume.clone(),
                });
        });
    }

    async fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        self.create_volume(request, None).await
    }

    async fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        let plugin = self.plugin().await?;
        self.require(plugin.create_delete, "deleting volumes")?;
        let id = match self.volume_id(name) {
            Some(id) => id,
            None => {
                // An interrupted create: the plugin may hold the name. Its
                // CreateVolume is idempotent on the name, so asking again
                // (no capacity: any size matches) gives the id to delete.
                let request = CreateRequest {
                    name: name.clone(),
                    size_bytes: 0,
                    options: BTreeMap::new(),
                };
                match self.create_volume(&request, None).await {
                    Ok(v) => v.fields.get(VOLUME_ID).cloned().unwrap_or_default(),
                    Err(DriverError::InvalidArgument(_)) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        let what = format!("volume {name} (plugin id {})", echo(&id));
        self.delete_call(
            "DeleteVolume",
            &what,
            ControllerClient::new(self.channel()).delete_volume(pb::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            }),
        )
        .await?;
        self.with_book(|b| b.volumes.remove(name));
        Ok(())
    }

    async fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>> {
        let Some(known) = self.with_book(|b| b.volumes.get(name).cloned()) else {
            return Ok(None);
        };
        let plugin = self.plugin().await?;
        if plugin.get_volume {
            let what = format!("volume {name}");
            return match self
                .call(
                    "ControllerGetVolume",
                    ControllerClient::new(self.channel()).controller_get_volume(
                        pb::ControllerGetVolumeRequest {
                            volume_id: known.id.clone(),
                        },
                    ),
                )
                .await
            {
                Ok(answer) => {
                    let size = answer
                        .volume
                        .map(|v| u64::try_from(v.capacity_bytes).unwrap_or(0))
                        .unwrap_or(0);
                    Ok(Some(self.volume(name, &known, size, &plugin)))
                }
                Err(CallError::Status(s)) if s.code() == Code::NotFound => Ok(None),
                Err(e) => Err(self.refused("ControllerGetVolume", &what, e)),
            };
        }
        if plugin.list_volumes {
            let held = self.plugin_volumes().await?;
            return Ok(held
                .into_iter()
                .find(|(id, _)| *id == known.id)
                .map(|(_, size)| self.volume(name, &known, size, &plugin)));
        }
        // The plugin cannot be asked: what the driver made is what it knows.
        Ok(Some(self.volume(name, &known, 0, &plugin)))
    }

    async fn list(&self) -> DriverResult<Vec<DriverVolume>> {
        let plugin = self.plugin().await?;
        let book: HashMap<String, (VolumeName, Known)> = self.with_book(|b| {
            b.volumes
                .iter()
                .map(|(n, k)| (k.id.clone(), (n.clone(), k.clone())))
                .collect()
        });
        if !plugin.list_volumes {
            return Ok(book
                .into_values()
                .map(|(n, k)| self.volume(&n, &k, 0, &plugin))
                .collect());
        }
        let mut out = Vec::new();
        for (id, size) in self.plugin_volumes().await? {
            match book.get(&id) {
                Some((name, known)) => out.push(self.volume(name, known, size, &plugin)),
                // A volume Berth did not make (or lost): shown under its id
                // when that is a valid name, so reconcile can report it.
                None => match VolumeName::parse(&id) {
                    Ok(name) => {
                        let known = Known {
                            id: id.clone(),
                            context: BTreeMap::new(),
                        };
                        out.push(self.volume(&name, &known, size, &plugin));
                    }
                    Err(_) => {
                        tracing::warn!(endpoint = %self.endpoint, volume_id = %id,
                            "the CSI plugin holds a volume Berth has no name for")
                    }
                },
            }
        }
        Ok(out)
    }

    async fn attach(&self, name: &VolumeName, instance: &str) -> DriverResult<Attachment> {
        let Some(known) = self.with_book(|b| b.volumes.get(name).cloned()) else {
            return Err(DriverError::NotFound(format!("volume {name}")));
        };
        let plugin = self.plugin().await?;
        let mut fields = BTreeMap::from([(VOLUME_ID.to_owned(), known.id.clone())]);
        for (k, v) in &known.context {
            fields.insert(format!("{CONTEXT_PREFIX}{k}"), v.clone());
        }
        if plugin.publish {
            let what = format!("volume {name} to node {}", echo(instance));
            let answer = self
                .call(
                    "ControllerPublishVolume",
                    ControllerClient::new(self.channel()).controller_publish_volume(
                        pb::ControllerPublishVolumeRequest {
                            volume_id: known.id.clone(),
                            node_id: instance.to_owned(),
                            volume_capability: Some(mount_capability()),
                            readonly: false,
                            volume_context: known.context.clone().into_iter().collect(),
                            ..Default::default()
                        },
                    ),
                )
                .await
                .map_err(|e| self.refused("ControllerPublishVolume", &what, e))?;
            for (k, v) in answer.publish_context {
                fields.insert(format!("{PUBLISH_PREFIX}{k}"), v);
            }
        }
        Ok(Attachment {
            instance: instance.to_owned(),
            device: known.id,
            fields,
        })
    }

    async fn detach(&self, name: &VolumeName, instance: &str) -> DriverResult<()> {
        let Some(id) = self.volume_id(name) else {
            return Ok(());
        };
        let plugin = self.plugin().await?;
        if plugin.publish {
            let what = format!("volume {name} from node {}", echo(instance));
            match self
                .call(
                    "ControllerUnpublishVolume",
                    ControllerClient::new(self.channel()).controller_unpublish_volume(
                        pb::ControllerUnpublishVolumeRequest {
                            volume_id: id,
                            node_id: instance.to_owned(),
                            ..Default::default()
                        },
                    ),
                )
                .await
            {
                Ok(_) => {}
                Err(CallError::Status(s)) if s.code() == Code::NotFound => {}
                Err(e) => return Err(self.refused("ControllerUnpublishVolume", &what, e)),
            }
        }
        Ok(())
    }

    async fn create_snapshot(
        &self,
        volume: &VolumeName,
        snapshot: &VolumeName,
    ) -> DriverResult<DriverSnapshot> {
        let plugin = self.plugin().await?;
        self.require(plugin.snapshots, "snapshots")?;
        let Some(source) = self.volume_id(volume) else {
            return Err(DriverError::NotFound(format!("volume {volume}")));
        };
        let what = format!("snapshot {snapshot} of volume {volume}");
        let answer = self
            .call(
                "CreateSnapshot",
                ControllerClient::new(self.channel()).create_snapshot(pb::CreateSnapshotRequest {
                    source_volume_id: source.clone(),
                    name: snapshot.to_string(),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.refused("CreateSnapshot", &what, e))?;
        let Some(taken) = answer.snapshot else {
            return Err(self.broke(&format!(
                "CreateSnapshot of {snapshot} answered no snapshot"
            )));
        };
        if taken.snapshot_id.is_empty() {
            return Err(self.broke(&format!(
                "CreateSnapshot of {snapshot} answered an empty snapshot id"
            )));
        }
        if !taken.source_volume_id.is_empty() && taken.source_volume_id != source {
            return Err(self.broke(&format!(
                "CreateSnapshot of {snapshot} from volume id {} answered a snapshot of volume id {}",
                echo(&source),
                echo(&taken.source_volume_id)
            )));
        }
        let previous = self.with_book(|b| {
            b.snapshots.insert(
                snapshot.clone(),
                KnownSnapshot {
                    id: Some(taken.snapshot_id.clone()),
                    volume: volume.clone(),
                },
            )
        });
        if let Some(prev) = previous
            .and_then(|p| p.id)
            .filter(|id| *id != taken.snapshot_id)
        {
            return Err(self.broke(&format!(
                "CreateSnapshot is not idempotent: name {snapshot} gave snapshot id {} before and {} now",
                echo(&prev),
                echo(&taken.snapshot_id)
            )));
        }
        Ok(DriverSnapshot {
            name: snapshot.clone(),
            volume: volume.clone(),
            size_bytes: u64::try_from(taken.size_bytes).unwrap_or(0),
        })
    }

    async fn delete_snapshot(&self, snapshot: &VolumeName) -> DriverResult<()> {
        let plugin = self.plugin().await?;
        self.require(plugin.snapshots, "snapshots")?;
        let Some(id) = self.snapshot_id(snapshot).await? else {
            return Ok(());
        };
        let what = format!("snapshot {snapshot} (plugin id {})", echo(&id));
        self.delete_call(
            "DeleteSnapshot",
            &what,
            ControllerClient::new(self.channel()).delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot_id: id,
                ..Default::default()
            }),
        )
        .await?;
        self.with_book(|b| b.snapshots.remove(snapshot));
        Ok(())
    }

    async fn list_snapshots(&self) -> DriverResult<Vec<DriverSnapshot>> {
        let plugin = self.plugin().await?;
        self.require(plugin.snapshots, "snapshots")?;
        let (snapshots, volumes): (HashMap<String, VolumeName>, HashMap<String, VolumeName>) = self
            .with_book(|b| {
                (
                    b.snapshots
                        .iter()
                        .filter_map(|(n, k)| k.id.clone().map(|id| (id, n.clone())))
                        .collect(),
                    b.volumes
                        .iter()
                        .map(|(n, k)| (k.id.clone(), n.clone()))
                        .collect(),
                )
            });
        if !plugin.list_snapshots {
            return Ok(self.with_book(|b| {
                b.snapshots
                    .iter()
                    .map(|(n, k)| DriverSnapshot {
                        name: n.clone(),
                        volume: k.volume.clone(),
                        size_bytes: 0,
                    })
                    .collect()
            }));
        }
        let mut out = Vec::new();
        for (id, source, size) in self.plugin_snapshots().await? {
            let name = snapshots
                .get(&id)
                .cloned()
                .or_else(|| VolumeName::parse(&id).ok());
            let volume = volumes
                .get(&source)
                .cloned()
                .or_else(|| VolumeName::parse(&source).ok());
            if let (Some(name), Some(volume)) = (name, volume) {
                out.push(DriverSnapshot {
                    name,
                    volume,
                    size_bytes: size,
                });
            }
        }
        Ok(out)
    }

    async fn create_from_snapshot(
        &self,
        snapshot: &VolumeName,
        request: &CreateRequest,
    ) -> DriverResult<DriverVolume> {
        let plugin = self.plugin().await?;
        self.require(plugin.snapshots, "creating volumes from snapshots")?;
        let Some(id) = self.snapshot_id(snapshot).await? else {
            return Err(DriverError::NotFound(format!("snapshot {snapshot}")));
        };
        let source = pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource { snapshot_id: id },
            )),
        };
        self.create_volume(request, Some(source)).await
    }

    async fn copy(
        &self,
        source: &VolumeName,
        request: &CreateRequest,
    ) -> DriverResult<DriverVolume> {
        let plugin = self.plugin().await?;
        self.require(plugin.clone, "copying volumes")?;
        let Some(id) = self.volume_id(source) else {
            return Err(DriverError::NotFound(format!("volume {source}")));
        };
        let source = pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Volume(
                pb::volume_content_source::VolumeSource { volume_id: id },
            )),
        };
        self.create_volume(request, Some(source)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_with_clear_errors() {
        assert_eq!(
            parse_endpoint("unix:///run/csi.sock").expect("ok"),
            PathBuf::from("/run/csi.sock")
        );
        let e = parse_endpoint("tcp://127.0.0.1:9").expect_err("tcp");
        assert!(e.to_string().contains("unix:///"), "{e}");
        let e = parse_endpoint("unix://rel.sock").expect_err("relative");
        assert!(e.to_string().contains("relative"), "{e}");
        let p = parse_parameters("type=dir, a = b ,").expect("ok");
        assert_eq!(p.get("type").map(String::as_str), Some("dir"));
        assert_eq!(p.get("a").map(String::as_str), Some("b"));
        let e = parse_parameters("type").expect_err("no =");
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
        let e = parse_parameters("a=1,a=2").expect_err("twice");
        assert!(e.to_string().contains("twice"), "{e}");
        let e = CsiDriver::from_options(&DriverOptions::new(BTreeMap::from([
            ("endpoint".to_owned(), "unix:///x.sock".to_owned()),
            ("paramters".to_owned(), "a=b".to_owned()),
        ])))
        .expect_err("typo");
        assert!(e.to_string().contains("paramters"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_plugin_is_unavailable_naming_the_socket_and_calls_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("none.sock");
        let driver = CsiDriver::from_options(&DriverOptions::new(BTreeMap::from([(
            "endpoint".to_owned(),
            format!("unix://{}", socket.display()),
        )])))
        .expect("built without dialling");
        let name = VolumeName::parse("v1").expect("name");
        let started = std::time::Instant::now();
        let e = driver.list().await.expect_err("no plugin");
        assert!(matches!(e, DriverError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
        let e = driver
            .create(&CreateRequest {
                name,
                size_bytes: 0,
                options: BTreeMap::new(),
            })
            .await
            .expect_err("no plugin");
        assert!(matches!(e, DriverError::Unavailable(_)), "{e:?}");
        assert!(started.elapsed() < CALL_TIMEOUT, "calls end quickly");
        let why = driver.unavailable().expect("reported unavailable");
        assert!(why.contains(&socket.display().to_string()), "{why}");
    }
}
