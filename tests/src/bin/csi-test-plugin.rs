//! A small CSI plugin for Berth's tests: volumes are directories under a
//! root, its state a JSON file there (so a restarted plugin still knows its
//! volumes). It serves Identity, Controller (create/delete/list, publish,
//! snapshots, clones) and Node (stage and publish as bind mounts, root only)
//! on a unix socket, so the `csi` driver's mapping is checked on machines
//! without the reference plugin.
//!
//! ```text
//! csi-test-plugin --endpoint unix:///tmp/x.sock --root DIR [--nodeid N] [--not-idempotent]
//!                 [--hang-create NAME]
//! ```
//!
//! `--hang-create NAME` makes the first CreateVolume of NAME create and
//! save the volume, touch `ROOT/hung` and then never answer (a test kills
//! the caller there). `--not-idempotent` makes CreateVolume break the CSI contract (a new
//! volume for every call, even for a name it holds), for the test that the
//! driver names such a plugin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use berth_proto::csi::v1 as pb;
use pb::controller_service_capability::rpc::Type as Rpc;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

/// The plugin's name in GetPluginInfo.
const NAME: &str = "test.csi.berth.dev";
/// The size a volume gets when none is asked for.
const DEFAULT_SIZE: i64 = 1 << 20;
/// The largest volume it makes.
const MAX_SIZE: i64 = 1 << 40;

#[derive(Clone, Debug)]
struct Volume {
    name: String,
    size: i64,
    source: String,
    published: Vec<String>,
}

#[derive(Clone, Debug)]
struct Snapshot {
    name: String,
    volume: String,
    size: i64,
}

#[derive(Default)]
struct State {
    next: u64,
    volumes: BTreeMap<String, Volume>,
    snapshots: BTreeMap<String, Snapshot>,
}

struct Plugin {
    root: PathBuf,
    node: String,
    idempotent: bool,
    hang: Option<String>,
    state: Mutex<State>,
}

type Reply<T> = Result<Response<T>, Status>;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Plugin {
    fn state_file(root: &Path) -> PathBuf {
        root.join("state.json")
    }

    fn load(root: &Path) -> State {
        let Ok(text) = std::fs::read_to_string(Self::state_file(root)) else {
            return State::default();
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut s = State {
            next: v["next"].as_u64().unwrap_or(0),
            ..State::default()
        };
        if let Some(vols) = v["volumes"].as_object() {
            for (id, e) in vols {
                s.volumes.insert(
                    id.clone(),
                    Volume {
                        name: e["name"].as_str().unwrap_or("").into(),
                        size: e["size"].as_i64().unwrap_or(0),
                        source: e["source"].as_str().unwrap_or("").into(),
                        published: e["published"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|n| n.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    },
                );
            }
        }
        if let Some(snaps) = v["snapshots"].as_object() {
            for (id, e) in snaps {
                s.snapshots.insert(
                    id.clone(),
                    Snapshot {
                        name: e["name"].as_str().unwrap_or("").into(),
                        volume: e["volume"].as_str().unwrap_or("").into(),
                        size: e["size"].as_i64().unwrap_or(0),
                    },
                );
            }
        }
        s
    }

    fn save(&self, s: &State) -> Result<(), Status> {
        let vols: serde_json::Map<String, Value> = s
            .volumes
            .iter()
            .map(|(id, v)| {
                (
                    id.clone(),
                    json!({"name": v.name, "size": v.size, "source": v.source, "published": v.published}),
                )
            })
            .collect();
        let snaps: serde_json::Map<String, Value> = s
            .snapshots
            .iter()
            .map(|(id, v)| {
                (
                    id.clone(),
                    json!({"name": v.name, "volume": v.volume, "size": v.size}),
                )
            })
            .collect();
        let text = json!({"next": s.next, "volumes": vols, "snapshots": snaps}).to_string();
        let tmp = self.root.join("state.json.tmp");
        std::fs::write(&tmp, text).map_err(internal)?;
        std::fs::rename(&tmp, Self::state_file(&self.root)).map_err(internal)
    }

    fn dir(&self, kind: &str, id: &str) -> PathBuf {
        self.root.join(kind).join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// Copies the files directly in `from` into `to` (volumes here are flat).
fn copy_files(from: &Path, to: &Path) -> Result<(), Status> {
    std::fs::create_dir_all(to).map_err(internal)?;
    for entry in std::fs::read_dir(from).map_err(internal)? {
        let entry = entry.map_err(internal)?;
        if entry.file_type().map_err(internal)?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(internal)?;
        }
    }
    Ok(())
}

fn run(cmd: &str, args: &[&str]) -> Result<(), Status> {
    let out = Command::new(cmd).args(args).output().map_err(internal)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Status::internal(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn is_mount_point(path: &str) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn csi_volume(id: &str, v: &Volume) -> pb::Volume {
    pb::Volume {
        volume_id: id.into(),
        capacity_bytes: v.size,
        volume_context: [("made_by".to_owned(), NAME.to_owned())].into(),
        ..Default::default()
    }
}

fn csi_snapshot(id: &str, s: &Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        snapshot_id: id.into(),
        source_volume_id: s.volume.clone(),
        size_bytes: s.size,
        ready_to_use: true,
        ..Default::default()
    }
}

/// CreateVolume's work under the state lock: the volume, and whether to
/// hang before answering (`--hang-create`).
fn create(
    p: &Plugin,
    req: pb::CreateVolumeRequest,
    asked: i64,
) -> Result<(pb::Volume, bool), Status> {
    let mut s = p.lock();
    if p.idempotent {
        if let Some((id, v)) = s.volumes.iter().find(|(_, v)| v.name == req.name) {
            if asked > v.size {
                return Err(Status::already_exists(format!(
                    "volume {} exists with {} bytes",
                    req.name, v.size
                )));
            }
            return Ok((csi_volume(id, v), false));
        }
    }
    let size = if asked == 0 { DEFAULT_SIZE } else { asked };
    s.next += 1;
    let id = format!("vol-{}", s.next);
    let dir = p.dir("volumes", &id);
    let source = match req.volume_content_source.and_then(|c| c.r#type) {
        Some(pb::volume_content_source::Type::Snapshot(snap)) => {
            if !s.snapshots.contains_key(&snap.snapshot_id) {
                return Err(Status::not_found(format!(
                    "snapshot {} does not exist",
                    snap.snapshot_id
                )));
            }
            copy_files(&p.dir("snapshots", &snap.snapshot_id), &dir)?;
            format!("snapshot:{}", snap.snapshot_id)
        }
        Some(pb::volume_content_source::Type::Volume(vol)) => {
            if !s.volumes.contains_key(&vol.volume_id) {
                return Err(Status::not_found(format!(
                    "volume {} does not exist",
                    vol.volume_id
                )));
            }
            copy_files(&p.dir("volumes", &vol.volume_id), &dir)?;
            format!("volume:{}", vol.volume_id)
        }
        None => {
            std::fs::create_dir_all(&dir).map_err(internal)?;
            String::new()
        }
    };
    let hang = p.hang.as_deref() == Some(req.name.as_str());
    let v = Volume {
        name: req.name,
        size,
        source,
        published: vec![],
    };
    let answer = csi_volume(&id, &v);
    s.volumes.insert(id, v);
    p.save(&s)?;
    let marker = p.root.join("hung");
    let hang = hang && !marker.exists();
    if hang {
        std::fs::write(&marker, b"").map_err(internal)?;
    }
    Ok((answer, hang))
}

struct Identity;

#[tonic::async_trait]
impl pb::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Reply<pb::GetPluginInfoResponse> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: NAME.into(),
            vendor_version: "0.1.0".into(),
            ..Default::default()
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Reply<pb::GetPluginCapabilitiesResponse> {
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![pb::PluginCapability {
                r#type: Some(pb::plugin_capability::Type::Service(
                    pb::plugin_capability::Service {
                        r#type: pb::plugin_capability::service::Type::ControllerService as i32,
                    },
                )),
            }],
        }))
    }

    async fn probe(&self, _: Request<pb::ProbeRequest>) -> Reply<pb::ProbeResponse> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}

struct Controller(Arc<Plugin>);

#[tonic::async_trait]
impl pb::controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Reply<pb::CreateVolumeResponse> {
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities are required"));
        }
        let asked = req
            .capacity_range
            .as_ref()
            .map(|c| c.required_bytes)
            .unwrap_or(0);
        if asked > MAX_SIZE {
            return Err(Status::out_of_range(format!(
                "{asked} bytes is more than {MAX_SIZE}"
            )));
        }
        let (answer, hang) = create(&self.0, req, asked)?;
        if hang {
            // Made and saved, never answered: the caller is killed here.
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(answer),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Reply<pb::DeleteVolumeResponse> {
        let id = request.into_inner().volume_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let p = &self.0;
        let mut s = p.lock();
        if s.volumes.remove(&id).is_some() {
            let _ = std::fs::remove_dir_all(p.dir("volumes", &id));
            p.save(&s)?;
        }
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        request: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Reply<pb::ControllerPublishVolumeResponse> {
        let req = request.into_inner();
        let p = &self.0;
        let mut s = p.lock();
        let Some(v) = s.volumes.get_mut(&req.volume_id) else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        };
        if !v.published.contains(&req.node_id) {
            v.published.push(req.node_id.clone());
        }
        p.save(&s)?;
        Ok(Response::new(pb::ControllerPublishVolumeResponse {
            publish_context: [("published_to".to_owned(), req.node_id)].into(),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Reply<pb::ControllerUnpublishVolumeResponse> {
        let req = request.into_inner();
        let p = &self.0;
        let mut s = p.lock();
        if let Some(v) = s.volumes.get_mut(&req.volume_id) {
            v.published.retain(|n| *n != req.node_id);
            p.save(&s)?;
        }
        Ok(Response::new(pb::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        _: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Reply<pb::ValidateVolumeCapabilitiesResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }

    async fn list_volumes(
        &self,
        _: Request<pb::ListVolumesRequest>,
    ) -> Reply<pb::ListVolumesResponse> {
        let s = self.0.lock();
        Ok(Response::new(pb::ListVolumesResponse {
            entries: s
                .volumes
                .iter()
                .map(|(id, v)| pb::list_volumes_response::Entry {
                    volume: Some(csi_volume(id, v)),
                    status: None,
                })
                .collect(),
            next_token: String::new(),
        }))
    }

    async fn get_capacity(
        &self,
        _: Request<pb::GetCapacityRequest>,
    ) -> Reply<pb::GetCapacityResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Reply<pb::ControllerGetCapabilitiesResponse> {
        let caps = [
            Rpc::CreateDeleteVolume,
            Rpc::PublishUnpublishVolume,
            Rpc::ListVolumes,
            Rpc::CreateDeleteSnapshot,
            Rpc::ListSnapshots,
            Rpc::CloneVolume,
        ];
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .map(|c| pb::ControllerServiceCapability {
                    r#type: Some(pb::controller_service_capability::Type::Rpc(
                        pb::controller_service_capability::Rpc { r#type: c as i32 },
                    )),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Reply<pb::CreateSnapshotResponse> {
        let req = request.into_inner();
        let p = &self.0;
        let mut s = p.lock();
        if let Some((id, snap)) = s.snapshots.iter().find(|(_, v)| v.name == req.name) {
            if snap.volume != req.source_volume_id {
                return Err(Status::already_exists(format!(
                    "snapshot {} is of another volume",
                    req.name
                )));
            }
            return Ok(Response::new(pb::CreateSnapshotResponse {
                snapshot: Some(csi_snapshot(id, snap)),
            }));
        }
        let Some(vol) = s.volumes.get(&req.source_volume_id).cloned() else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.source_volume_id
            )));
        };
        s.next += 1;
        let id = format!("snap-{}", s.next);
        copy_files(
            &p.dir("volumes", &req.source_volume_id),
            &p.dir("snapshots", &id),
        )?;
        let snap = Snapshot {
            name: req.name,
            volume: req.source_volume_id,
            size: vol.size,
        };
        let answer = csi_snapshot(&id, &snap);
        s.snapshots.insert(id, snap);
        p.save(&s)?;
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(answer),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Reply<pb::DeleteSnapshotResponse> {
        let id = request.into_inner().snapshot_id;
        let p = &self.0;
        let mut s = p.lock();
        if s.snapshots.remove(&id).is_some() {
            let _ = std::fs::remove_dir_all(p.dir("snapshots", &id));
            p.save(&s)?;
        }
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        _: Request<pb::ListSnapshotsRequest>,
    ) -> Reply<pb::ListSnapshotsResponse> {
        let s = self.0.lock();
        Ok(Response::new(pb::ListSnapshotsResponse {
            entries: s
                .snapshots
                .iter()
                .map(|(id, v)| pb::list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(id, v)),
                })
                .collect(),
            next_token: String::new(),
        }))
    }

    async fn get_snapshot(
        &self,
        _: Request<pb::GetSnapshotRequest>,
    ) -> Reply<pb::GetSnapshotResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }

    async fn controller_expand_volume(
        &self,
        _: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Reply<pb::ControllerExpandVolumeResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }

    async fn controller_get_volume(
        &self,
        _: Request<pb::ControllerGetVolumeRequest>,
    ) -> Reply<pb::ControllerGetVolumeResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Reply<pb::ControllerModifyVolumeResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }
}

struct Node(Arc<Plugin>);

#[tonic::async_trait]
impl pb::node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Reply<pb::NodeStageVolumeResponse> {
        let req = request.into_inner();
        let dir = self.0.dir("volumes", &req.volume_id);
        if !dir.is_dir() {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        }
        std::fs::create_dir_all(&req.staging_target_path).map_err(internal)?;
        if !is_mount_point(&req.staging_target_path) {
            let src = dir.display().to_string();
            run("mount", &["--bind", &src, &req.staging_target_path])?;
        }
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Reply<pb::NodeUnstageVolumeResponse> {
        let req = request.into_inner();
        if is_mount_point(&req.staging_target_path) {
            run("umount", &[&req.staging_target_path])?;
        }
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Reply<pb::NodePublishVolumeResponse> {
        let req = request.into_inner();
        if !is_mount_point(&req.staging_target_path) {
            return Err(Status::failed_precondition(format!(
                "volume {} is not staged at {}",
                req.volume_id, req.staging_target_path
            )));
        }
        std::fs::create_dir_all(&req.target_path).map_err(internal)?;
        if !is_mount_point(&req.target_path) {
            run(
                "mount",
                &["--bind", &req.staging_target_path, &req.target_path],
            )?;
        }
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Reply<pb::NodeUnpublishVolumeResponse> {
        let req = request.into_inner();
        if is_mount_point(&req.target_path) {
            run("umount", &[&req.target_path])?;
        }
        let _ = std::fs::remove_dir(&req.target_path);
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Reply<pb::NodeGetVolumeStatsResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<pb::NodeExpandVolumeRequest>,
    ) -> Reply<pb::NodeExpandVolumeResponse> {
        Err(Status::unimplemented("not in this test plugin"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Reply<pb::NodeGetCapabilitiesResponse> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: vec![pb::NodeServiceCapability {
                r#type: Some(pb::node_service_capability::Type::Rpc(
                    pb::node_service_capability::Rpc {
                        r#type: pb::node_service_capability::rpc::Type::StageUnstageVolume as i32,
                    },
                )),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Reply<pb::NodeGetInfoResponse> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.0.node.clone(),
            ..Default::default()
        }))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: csi-test-plugin --endpoint unix:///PATH --root DIR [--nodeid N] [--not-idempotent] [--hang-create NAME]"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut endpoint, mut root, mut node, mut idempotent) = (None, None, "n1".to_owned(), true);
    let mut hang = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--endpoint" => endpoint = args.next(),
            "--root" => root = args.next().map(PathBuf::from),
            "--nodeid" => node = args.next().unwrap_or_else(|| usage()),
            "--not-idempotent" => idempotent = false,
            "--hang-create" => hang = args.next(),
            _ => usage(),
        }
    }
    let (Some(endpoint), Some(root)) = (endpoint, root) else {
        usage()
    };
    let Some(socket) = endpoint.strip_prefix("unix://").map(PathBuf::from) else {
        usage()
    };
    for dir in ["volumes", "snapshots"] {
        if let Err(e) = std::fs::create_dir_all(root.join(dir)) {
            eprintln!("csi-test-plugin: cannot create {}: {e}", root.display());
            std::process::exit(1);
        }
    }
    let _ = std::fs::remove_file(&socket);
    let listener = match tokio::net::UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("csi-test-plugin: cannot bind {}: {e}", socket.display());
            std::process::exit(1);
        }
    };
    let plugin = Arc::new(Plugin {
        state: Mutex::new(Plugin::load(&root)),
        root,
        node,
        idempotent,
        hang,
    });
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("csi-test-plugin: {e}");
            std::process::exit(1);
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(Identity))
        .add_service(pb::controller_server::ControllerServer::new(Controller(
            Arc::clone(&plugin),
        )))
        .add_service(pb::node_server::NodeServer::new(Node(plugin)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            async move {
                term.recv().await;
            },
        )
        .await;
    let _ = std::fs::remove_file(&socket);
    if let Err(e) = served {
        eprintln!("csi-test-plugin: {e}");
        std::process::exit(1);
    }
}
