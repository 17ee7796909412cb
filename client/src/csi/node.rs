//! The CSI Node service: makes an attached Berth volume usable where the
//! workload runs.
//!
//! Mount access goes through the node library ([`crate::node::Node`], the
//! same code as `berth volume mount` and the Docker plugin): NodeStage
//! mounts the volume at the staging path, NodePublish at the target path
//! (a second path of the same attachment, read-only when asked),
//! NodeUnpublish and NodeUnstage unmount them, and the last unmount
//! releases the loop device and detaches. The library records every step in
//! its state file under `--mount-root`, so a plugin killed mid-way is
//! settled by the next call.
//!
//! Block access (image volumes only), which the library does not do, is
//! handled here: stage sets up a loop device over the image file, publish
//! bind-mounts the device on a file at the target path.
//!
//! Every call checks the host first, so a repeated call answers the same;
//! unpublish removes the target path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_proto::csi::v1 as csi;
use csi::node_service_capability::rpc::Type as Rpc;
use csi::volume_capability::access_mode::Mode as AccessMode;
use csi::volume_capability::AccessType;
use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::controller::logged;
use super::ids::ObjectId;
use super::mounts::{self, MountError};
use super::PluginConfig;
use crate::node::{MountRequest, Node, NodeError, UnmountRequest};
use crate::pb;

/// The Node service.
pub struct NodeService {
    backend: Arc<Backend>,
    config: Arc<PluginConfig>,
    node: Arc<Node>,
}

impl NodeService {
    /// The service over `backend`, mounting under `config.mount_root`.
    pub fn new(backend: Arc<Backend>, config: Arc<PluginConfig>) -> Self {
        let node = Arc::new(
            Node::new(config.mount_root.clone()).with_csi_plugins(config.csi_plugins.clone()),
        );
        Self {
            backend,
            config,
            node,
        }
    }
}

/// A node-library error as a CSI status.
fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::Controller { status, .. } if status.code() == tonic::Code::Unavailable => status,
        // Published at this path already, with the other read-only flag:
        // the spec's answer for an incompatible repeat.
        e @ NodeError::OtherMode { .. } => Status::already_exists(e.to_string()),
        other => Status::new(other.code(), other.to_string()),
    }
}

fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(value)
}

fn parse_id(raw: &str) -> Result<ObjectId, Status> {
    ObjectId::parse(raw).ok_or_else(|| {
        Status::not_found(format!(
            "volume {:?} does not exist (Berth volume ids are SERVICE/NAME)",
            raw.chars().take(200).collect::<String>()
        ))
    })
}

fn internal(e: MountError) -> Status {
    Status::internal(e.to_string())
}

fn readonly_mode(capability: &csi::VolumeCapability) -> bool {
    matches!(
        capability
            .access_mode
            .as_ref()
            .and_then(|m| AccessMode::try_from(m.mode).ok()),
        Some(AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly)
    )
}

/// Runs blocking mount work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("the mount task failed: {e}")))?
}

/// What the node mounts for a volume.
enum Device {
    /// A directory (vfs).
    Directory,
    /// A file (image): attached as a loop device.
    Image(PathBuf),
}

impl NodeService {
    /// The device of the volume on this node: the publish context's, else
    /// the volume's attachment to this node.
    async fn device(
        &self,
        id: &ObjectId,
        publish_context: &std::collections::HashMap<String, String>,
    ) -> Result<Device, Status> {
        let path = match publish_context.get("device").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => {
                let volume = self.volume(id).await?;
                let attachment = volume
                    .attachments
                    .iter()
                    .find(|a| a.instance == self.config.node_id)
                    .ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "volume {id} is not published to node {} (ControllerPublishVolume first)",
                            self.config.node_id
                        ))
                    })?;
                PathBuf::from(&attachment.device)
            }
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Device::Directory),
            Ok(m) if m.is_file() => Ok(Device::Image(path)),
            Ok(_) => Err(Status::failed_precondition(format!(
                "the device {} of volume {id} is neither a directory nor an image file",
                path.display()
            ))),
            Err(e) => Err(Status::failed_precondition(format!(
                "the device {} of volume {id} is not reachable on this node: {e}",
                path.display()
            ))),
        }
    }

    async fn volume(&self, id: &ObjectId) -> Result<pb::Volume, Status> {
        let (service, name) = (id.service.clone(), id.name.clone());
        self.backend
            .call(|s| {
                let r = pb::GetVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                };
                async move { Ok(s.volumes().get_volume(r).await?.into_inner()) }
            })
            .await
    }

    /// Mounts through the node library at `path` (stage or publish).
    async fn lib_mount(&self, id: &ObjectId, path: &Path, read_only: bool) -> Result<(), Status> {
        let request = MountRequest {
            service: id.service.clone(),
            name: id.name.clone(),
            path: Some(path.to_owned()),
            read_only,
            instance: self.config.node_id.clone(),
            holder: None,
        };
        self.backend
            .call(|s| {
                let (node, request) = (Arc::clone(&self.node), request.clone());
                async move {
                    node.mount(&s, &request)
                        .await
                        .map(|_| ())
                        .map_err(node_status)
                }
            })
            .await
    }

    /// Unmounts through the node library at `path`; a path it never
    /// mounted is left alone.
    async fn lib_unmount(&self, id: &ObjectId, path: &Path) -> Result<(), Status> {
        let request = UnmountRequest {
            service: id.service.clone(),
            name: id.name.clone(),
            path: Some(path.to_owned()),
            force: false,
            instance: self.config.node_id.clone(),
            holder: None,
        };
        self.backend
            .call(|s| {
                let (node, request) = (Arc::clone(&self.node), request.clone());
                async move { node.unmount(&s, &request).await.map_err(node_status) }
            })
            .await
    }

    async fn stage(&self, req: csi::NodeStageVolumeRequest) -> Result<(), Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let capability = req
            .volume_capability
            .clone()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let id = parse_id(raw)?;
        let _busy = self.backend.busy(format!("node volume {id}"))?;
        match &capability.access_type {
            None => Err(Status::invalid_argument(
                "volume_capability needs an access type (mount or block)",
            )),
            Some(AccessType::Mount(_)) => self.lib_mount(&id, &staging, false).await,
            Some(AccessType::Block(_)) => match self.device(&id, &req.publish_context).await? {
                Device::Directory => Err(Status::invalid_argument(
                    "block access needs an image volume; this one is a directory",
                )),
                Device::Image(file) => {
                    blocking(move || mounts::attach_loop(&file).map(|_| ()).map_err(internal)).await
                }
            },
        }
    }

    async fn unstage(&self, req: csi::NodeUnstageVolumeRequest) -> Result<(), Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let Some(id) = ObjectId::parse(raw) else {
            return Ok(());
        };
        let _busy = self.backend.busy(format!("node volume {id}"))?;
        // Mount access: the library unmounts, and on the last path releases
        // and detaches.
        self.lib_unmount(&id, &staging).await?;
        // Block access: the loop device over the image file, unless the
        // library still uses the volume.
        let in_use = self
            .node
            .paths_of(&id.service, &id.name)
            .await
            .map_err(node_status)?;
        let image = match self.volume(&id).await {
            Ok(v) if in_use.is_empty() => v
                .attachments
                .iter()
                .find(|a| a.instance == self.config.node_id)
                .map(|a| PathBuf::from(&a.device))
                .filter(|p| p.is_file()),
            _ => None,
        };
        blocking(move || {
            if let Some(file) = image {
                mounts::detach_loop(&file).map_err(internal)?;
            }
            Ok(())
        })
        .await
    }

    async fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<(), Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let capability = req
            .volume_capability
            .clone()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let id = parse_id(raw)?;
        let readonly = req.readonly || readonly_mode(&capability);
        let _busy = self.backend.busy(format!("node volume {id}"))?;
        match &capability.access_type {
            None => Err(Status::invalid_argument(
                "volume_capability needs an access type (mount or block)",
            )),
            Some(AccessType::Mount(_)) => {
                let staged = {
                    let staging = staging.clone();
                    blocking(move || Ok(mounts::mounted_at(&staging).map_err(internal)?.is_some()))
                        .await?
                };
                if !staged {
                    return Err(Status::failed_precondition(format!(
                        "volume {id} is not staged at {} (NodeStageVolume first)",
                        staging.display()
                    )));
                }
                self.lib_mount(&id, &target, readonly).await
            }
            Some(AccessType::Block(_)) => {
                let Device::Image(file) = self.device(&id, &req.publish_context).await? else {
                    return Err(Status::invalid_argument(
                        "block access needs an image volume; this one is a directory",
                    ));
                };
                blocking(move || {
                    let dev = mounts::loop_of(&file).map_err(internal)?.ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "volume {id} is not staged (NodeStageVolume first)"
                        ))
                    })?;
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            Status::internal(format!("cannot create {}: {e}", parent.display()))
                        })?;
                    }
                    if !target.exists() {
                        std::fs::File::create(&target).map_err(|e| {
                            Status::internal(format!("cannot create {}: {e}", target.display()))
                        })?;
                    }
                    if mounts::mounted_at(&target).map_err(internal)?.is_some() {
                        return Ok(());
                    }
                    mounts::bind(&dev, &target, readonly).map_err(internal)
                })
                .await
            }
        }
    }

    async fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> Result<(), Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let id = parse_id(raw)?;
        let _busy = self.backend.busy(format!("node volume {id}"))?;
        self.lib_unmount(&id, &target).await?;
        // What the library did not mount (block access) comes down here.
        blocking(move || {
            while mounts::mounted_at(&target).map_err(internal)?.is_some() {
                mounts::unmount(&target).map_err(internal)?;
            }
            remove_target(&target)
        })
        .await
    }

    async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse, Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let id = parse_id(raw)?;
        let volume = self.volume(&id).await?;
        blocking(move || {
            let meta = std::fs::metadata(&path).map_err(|_| {
                Status::not_found(format!(
                    "volume {id} is not published at {}",
                    path.display()
                ))
            })?;
            if mounts::mounted_at(&path).map_err(internal)?.is_none() {
                return Err(Status::not_found(format!(
                    "volume {id} is not published at {}",
                    path.display()
                )));
            }
            use csi::volume_usage::Unit;
            let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            if !meta.is_dir() {
                // Block access: the device's size is all there is to say.
                return Ok(csi::NodeGetVolumeStatsResponse {
                    usage: vec![csi::VolumeUsage {
                        total: as_i64(volume.size_bytes),
                        unit: Unit::Bytes as i32,
                        ..Default::default()
                    }],
                    volume_condition: None,
                });
            }
            let u = mounts::usage(&path).map_err(internal)?;
            Ok(csi::NodeGetVolumeStatsResponse {
                usage: vec![
                    csi::VolumeUsage {
                        available: as_i64(u.available_bytes),
                        total: as_i64(u.total_bytes),
                        used: as_i64(u.used_bytes),
                        unit: Unit::Bytes as i32,
                    },
                    csi::VolumeUsage {
                        available: as_i64(u.free_inodes),
                        total: as_i64(u.total_inodes),
                        used: as_i64(u.total_inodes.saturating_sub(u.free_inodes)),
                        unit: Unit::Inodes as i32,
                    },
                ],
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: false,
                    message: String::new(),
                }),
            })
        })
        .await
    }
}

/// Removes the target path the plugin created (a directory, or a file for
/// block access); an absent one is fine.
fn remove_target(target: &Path) -> Result<(), Status> {
    let result = match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| Status::internal(format!("cannot remove {}: {e}", target.display())))
}

fn rpc(kind: Rpc) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(csi::node_service_capability::Type::Rpc(
            csi::node_service_capability::Rpc {
                r#type: kind as i32,
            },
        )),
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("NodeStageVolume", &id, self.stage(req).await)?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("NodeUnstageVolume", &id, self.unstage(req).await)?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("NodePublishVolume", &id, self.publish(req).await)?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("NodeUnpublishVolume", &id, self.unpublish(req).await)?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("NodeGetVolumeStats", &id, self.stats(req).await).map(Response::new)
    }

    async fn node_expand_volume(
        &self,
        _request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeExpandVolume: Berth volumes cannot be resized",
        ))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc(Rpc::StageUnstageVolume),
                rpc(Rpc::GetVolumeStats),
                rpc(Rpc::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
