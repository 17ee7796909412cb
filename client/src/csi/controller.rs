//! The CSI Controller service on Berth's volume API.
//!
//! | CSI | Berth |
//! | --- | --- |
//! | CreateVolume | CreateVolume (service from the `service` parameter, else the only one), CreateVolume `from_snapshot`, CopyVolume |
//! | DeleteVolume | DeleteVolume (a missing volume is success) |
//! | ControllerPublish / Unpublish | AttachVolume / DetachVolume to the node id |
//! | ListVolumes, ControllerGetVolume | ListVolumes (Berth's page tokens), GetVolume |
//! | Create / Delete / List Snapshots | Snapshots |
//!
//! Every id is `SERVICE/NAME` ([`ObjectId`]). An id this plugin could never
//! have issued names nothing: NOT_FOUND, or success for deletes. Berth's
//! own statuses (PERMISSION_DENIED above all) pass through unchanged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use berth_proto::csi::v1 as csi;
use csi::controller_service_capability::rpc::Type as Rpc;
use csi::volume_capability::access_mode::Mode as AccessMode;
use csi::volume_capability::AccessType;
use tonic::{Code, Request, Response, Status};

use super::backend::Backend;
use super::ids::{berth_name, ObjectId};
use super::PluginConfig;
use crate::pb;

/// The StorageClass parameter naming the Berth service.
pub const SERVICE_PARAMETER: &str = "service";

/// Parameters orchestrators add on their own (Kubernetes'
/// `--extra-create-metadata`); they are not driver options.
const ORCHESTRATOR_PREFIX: &str = "csi.storage.k8s.io/";

/// The Controller service.
pub struct ControllerService {
    backend: Arc<Backend>,
    config: Arc<PluginConfig>,
}

impl ControllerService {
    /// The service over `backend`.
    pub fn new(backend: Arc<Backend>, config: Arc<PluginConfig>) -> Self {
        Self { backend, config }
    }
}

/// Whether a service can serve a capability; `Err` says why not.
pub fn check_capability(
    service: Option<&pb::Service>,
    capability: &csi::VolumeCapability,
) -> Result<(), String> {
    let driver = service.map(|s| s.driver.as_str()).unwrap_or("");
    let multi = service
        .and_then(|s| s.capabilities.as_ref())
        .is_some_and(|c| c.multi_attach);
    match &capability.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) if driver == "image" => {}
        Some(AccessType::Block(_)) => {
            return Err(format!(
                "block access needs an image service; this service's driver is {driver:?}"
            ))
        }
        None => return Err("a volume capability needs an access type (mount or block)".into()),
    }
    let mode = capability
        .access_mode
        .as_ref()
        .and_then(|m| AccessMode::try_from(m.mode).ok())
        .unwrap_or(AccessMode::Unknown);
    match mode {
        AccessMode::SingleNodeWriter
        | AccessMode::SingleNodeReaderOnly
        | AccessMode::SingleNodeSingleWriter
        | AccessMode::SingleNodeMultiWriter => Ok(()),
        AccessMode::MultiNodeReaderOnly
        | AccessMode::MultiNodeSingleWriter
        | AccessMode::MultiNodeMultiWriter
            if multi =>
        {
            Ok(())
        }
        AccessMode::Unknown => Err("a volume capability needs an access mode".into()),
        other => Err(format!(
            "access mode {} needs a multi-attach service; this one attaches a volume to one node at a time",
            other.as_str_name()
        )),
    }
}

fn check_capabilities(
    service: Option<&pb::Service>,
    capabilities: &[csi::VolumeCapability],
) -> Result<(), String> {
    capabilities
        .iter()
        .try_for_each(|c| check_capability(service, c))
}

/// A capacity range checked: (required, limit), each 0 when unset.
fn capacity(range: Option<&csi::CapacityRange>) -> Result<(u64, u64), Status> {
    let Some(range) = range else {
        return Ok((0, 0));
    };
    let required = u64::try_from(range.required_bytes).map_err(|_| {
        Status::invalid_argument(format!(
            "capacity_range.required_bytes is negative ({})",
            range.required_bytes
        ))
    })?;
    let limit = u64::try_from(range.limit_bytes).map_err(|_| {
        Status::invalid_argument(format!(
            "capacity_range.limit_bytes is negative ({})",
            range.limit_bytes
        ))
    })?;
    if limit > 0 && limit < required {
        return Err(Status::invalid_argument(format!(
            "capacity_range.limit_bytes ({limit}) is below required_bytes ({required})"
        )));
    }
    Ok((required, limit))
}

fn fits(size: u64, (required, limit): (u64, u64)) -> bool {
    size >= required && (limit == 0 || size <= limit)
}

fn out_of_range(size: u64, (required, limit): (u64, u64), why: &str) -> Status {
    Status::out_of_range(format!(
        "{why} is {size} bytes, outside the requested range (required {required}, limit {})",
        if limit == 0 {
            "none".to_owned()
        } else {
            limit.to_string()
        }
    ))
}

fn as_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

fn volume_context(volume: &pb::Volume) -> HashMap<String, String> {
    HashMap::from([
        ("service".to_owned(), volume.service.clone()),
        ("driver".to_owned(), volume.driver.clone()),
    ])
}

fn content_source(volume: &pb::Volume) -> Option<csi::VolumeContentSource> {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let id = |name: &str| {
        ObjectId {
            service: volume.service.clone(),
            name: name.to_owned(),
        }
        .id()
    };
    let r#type = if let Some(snap) = volume.source.strip_prefix("snapshot:") {
        Type::Snapshot(SnapshotSource {
            snapshot_id: id(snap),
        })
    } else if let Some(vol) = volume.source.strip_prefix("volume:") {
        Type::Volume(VolumeSource { volume_id: id(vol) })
    } else {
        return None;
    };
    Some(csi::VolumeContentSource {
        r#type: Some(r#type),
    })
}

/// A Berth volume as a CSI volume.
pub fn csi_volume(volume: &pb::Volume) -> csi::Volume {
    csi::Volume {
        capacity_bytes: as_i64(volume.size_bytes),
        volume_id: ObjectId {
            service: volume.service.clone(),
            name: volume.name.clone(),
        }
        .id(),
        volume_context: volume_context(volume),
        content_source: content_source(volume),
        accessible_topology: Vec::new(),
    }
}

fn csi_snapshot(snapshot: &pb::Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: as_i64(snapshot.size_bytes),
        snapshot_id: ObjectId {
            service: snapshot.service.clone(),
            name: snapshot.name.clone(),
        }
        .id(),
        source_volume_id: ObjectId {
            service: snapshot.service.clone(),
            name: snapshot.volume.clone(),
        }
        .id(),
        creation_time: snapshot.created_at,
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

fn published_nodes(volume: &pb::Volume) -> Vec<String> {
    volume
        .attachments
        .iter()
        .map(|a| a.instance.clone())
        .collect()
}

fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(value)
}

fn volume_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "volume {:?} does not exist (Berth volume ids are SERVICE/NAME)",
        id.chars().take(200).collect::<String>()
    ))
}

fn snapshot_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "snapshot {:?} does not exist (Berth snapshot ids are SERVICE/NAME)",
        id.chars().take(200).collect::<String>()
    ))
}

/// Logs a failed call on stderr (no parameters: they may hold secrets).
pub(crate) fn logged<T>(call: &str, subject: &str, result: Result<T, Status>) -> Result<T, Status> {
    if let Err(status) = &result {
        if status.code() != Code::NotFound {
            eprintln!(
                "berth plugin csi: {call} {subject}: {:?}: {}",
                status.code(),
                status.message()
            );
        }
    }
    result
}

impl ControllerService {
    async fn get_volume(&self, id: &ObjectId) -> Result<pb::Volume, Status> {
        let (service, name) = (id.service.clone(), id.name.clone());
        self.backend
            .call(|s| {
                let req = pb::GetVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                };
                async move { Ok(s.volumes().get_volume(req).await?.into_inner()) }
            })
            .await
    }

    async fn get_snapshot(&self, id: &ObjectId) -> Result<pb::Snapshot, Status> {
        let (service, name) = (id.service.clone(), id.name.clone());
        self.backend
            .call(|s| {
                let req = pb::GetSnapshotRequest {
                    service: service.clone(),
                    name: name.clone(),
                };
                async move { Ok(s.snapshots().get_snapshot(req).await?.into_inner()) }
            })
            .await
    }

    async fn create(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        use csi::volume_content_source::Type as Source;
        let csi_name = required(&req.name, "name")?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let range = capacity(req.capacity_range.as_ref())?;
        let service = self
            .backend
            .choose_service(req.parameters.get(SERVICE_PARAMETER).map(String::as_str))
            .await?;
        let info = self.backend.service(&service).await?;
        check_capabilities(info.as_ref(), &req.volume_capabilities)
            .map_err(Status::invalid_argument)?;
        let mut options: BTreeMap<String, String> = req
            .parameters
            .iter()
            .filter(|(k, _)| k.as_str() != SERVICE_PARAMETER && !k.starts_with(ORCHESTRATOR_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // An image volume's filesystem is its `fs` option (made by the node
        // on first mount): a capability's fs_type says which.
        if info.as_ref().is_some_and(|s| s.driver == "image") && !options.contains_key("fs") {
            let fs_type = req
                .volume_capabilities
                .iter()
                .find_map(|c| match &c.access_type {
                    Some(AccessType::Mount(m)) if !m.fs_type.is_empty() => Some(m.fs_type.clone()),
                    _ => None,
                });
            if let Some(fs) = fs_type {
                options.insert("fs".into(), fs);
            }
        }
        let name = berth_name(csi_name);
        let target = ObjectId {
            service: service.clone(),
            name: name.clone(),
        };
        let _busy = self.backend.busy(format!("volume {target}"))?;
        let source = req
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.clone());
        let result = match &source {
            Some(Source::Snapshot(snap)) => {
                let sid = ObjectId::parse(required(&snap.snapshot_id, "snapshot_id")?)
                    .ok_or_else(|| snapshot_not_found(&snap.snapshot_id))?;
                if sid.service != service {
                    return Err(Status::invalid_argument(format!(
                        "snapshot {sid} is in service {}, the volume would be in {service}; \
                         Berth restores a snapshot within its service",
                        sid.service
                    )));
                }
                let snapshot = self.get_snapshot(&sid).await?;
                let size = snapshot.size_bytes.max(range.0);
                if !fits(size, range) {
                    return Err(out_of_range(size, range, "the snapshot"));
                }
                let request = pb::CreateVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                    size_bytes: size,
                    options: options.clone().into_iter().collect(),
                    from_snapshot: sid.name.clone(),
                };
                self.backend
                    .call(|s| {
                        let r = request.clone();
                        async move { Ok(s.volumes().create_volume(r).await?.into_inner()) }
                    })
                    .await
            }
            Some(Source::Volume(vol)) => {
                let vid = ObjectId::parse(required(&vol.volume_id, "volume_id")?)
                    .ok_or_else(|| volume_not_found(&vol.volume_id))?;
                if vid.service != service {
                    return Err(Status::invalid_argument(format!(
                        "volume {vid} is in service {}, the copy would be in {service}; \
                         Berth copies a volume within its service",
                        vid.service
                    )));
                }
                let src = self.get_volume(&vid).await?;
                if !fits(src.size_bytes, range) {
                    return Err(out_of_range(
                        src.size_bytes,
                        range,
                        "the source volume (a copy keeps its size)",
                    ));
                }
                let request = pb::CopyVolumeRequest {
                    service: service.clone(),
                    source: vid.name.clone(),
                    name: name.clone(),
                };
                self.backend
                    .call(|s| {
                        let r = request.clone();
                        async move { Ok(s.volumes().copy_volume(r).await?.into_inner()) }
                    })
                    .await
            }
            None => {
                let size = match range {
                    (0, 0) => self.config.default_size,
                    (0, limit) => self.config.default_size.min(limit),
                    (required, _) => required,
                };
                let request = pb::CreateVolumeRequest {
                    service: service.clone(),
                    name: name.clone(),
                    size_bytes: size,
                    options: options.clone().into_iter().collect(),
                    from_snapshot: String::new(),
                };
                self.backend
                    .call(|s| {
                        let r = request.clone();
                        async move { Ok(s.volumes().create_volume(r).await?.into_inner()) }
                    })
                    .await
            }
        };
        let volume = match result {
            Ok(v) => v,
            Err(status) if status.code() == Code::AlreadyExists => {
                // Berth compares sizes exactly; CSI asks whether the existing
                // volume is compatible with this request.
                let existing = self.get_volume(&target).await?;
                let want_source = match &source {
                    Some(Source::Snapshot(s)) => ObjectId::parse(&s.snapshot_id)
                        .map(|id| format!("snapshot:{}", id.name))
                        .unwrap_or_default(),
                    Some(Source::Volume(v)) => ObjectId::parse(&v.volume_id)
                        .map(|id| format!("volume:{}", id.name))
                        .unwrap_or_default(),
                    None => String::new(),
                };
                let same_options = matches!(source, Some(Source::Volume(_)))
                    || existing.options.iter().collect::<BTreeMap<_, _>>()
                        == options.iter().collect::<BTreeMap<_, _>>();
                if fits(existing.size_bytes, range)
                    && existing.source == want_source
                    && same_options
                {
                    existing
                } else {
                    return Err(Status::already_exists(format!(
                        "volume {csi_name:?} exists as {target} with size {} bytes{}{}, which this request does not match",
                        existing.size_bytes,
                        if existing.source.is_empty() { String::new() } else { format!(", from {}", existing.source) },
                        if existing.options.is_empty() { String::new() } else { format!(", options {:?}", existing.options.iter().collect::<BTreeMap<_, _>>()) },
                    )));
                }
            }
            Err(status)
                if status.code() == Code::InvalidArgument
                    && status.message().contains("smaller than snapshot") =>
            {
                return Err(Status::out_of_range(status.message().to_owned()))
            }
            Err(status) => return Err(status),
        };
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(csi_volume(&volume)),
        }))
    }

    async fn delete(&self, req: csi::DeleteVolumeRequest) -> Result<(), Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let Some(id) = ObjectId::parse(raw) else {
            return Ok(());
        };
        let _busy = self.backend.busy(format!("volume {id}"))?;
        let result = self
            .backend
            .call(|s| {
                let r = pb::DeleteVolumeRequest {
                    service: id.service.clone(),
                    name: id.name.clone(),
                    force: false,
                };
                async move { s.volumes().delete_volume(r).await.map(|_| ()) }
            })
            .await;
        match result {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => other,
        }
    }

    fn check_node(&self, node: &str) -> Result<(), Status> {
        match &self.config.known_nodes {
            Some(known) if !known.iter().any(|n| n == node) => Err(Status::not_found(format!(
                "node {:?} is not known to this plugin (known: {}); start it with --known-node",
                node.chars().take(200).collect::<String>(),
                known.join(", ")
            ))),
            _ => Ok(()),
        }
    }

    async fn publish(
        &self,
        req: csi::ControllerPublishVolumeRequest,
    ) -> Result<csi::ControllerPublishVolumeResponse, Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let node = required(&req.node_id, "node_id")?;
        let capability = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let id = ObjectId::parse(raw).ok_or_else(|| volume_not_found(raw))?;
        let _busy = self.backend.busy(format!("volume {id}"))?;
        // The volume first, so a missing one is NOT_FOUND whatever the node.
        let volume = self.get_volume(&id).await?;
        self.check_node(node)?;
        let info = self.backend.service(&id.service).await?;
        check_capability(info.as_ref(), capability).map_err(Status::invalid_argument)?;
        let request = pb::AttachVolumeRequest {
            service: id.service.clone(),
            name: id.name.clone(),
            instance: node.to_owned(),
        };
        let attached = self
            .backend
            .call(|s| {
                let r = request.clone();
                async move { Ok(s.volumes().attach_volume(r).await?.into_inner()) }
            })
            .await?;
        let attachment = attached.attachment.unwrap_or_default();
        let mut publish_context: HashMap<String, String> = attachment
            .fields
            .into_iter()
            .map(|(k, v)| (format!("berth.{k}"), v))
            .collect();
        publish_context.insert("device".into(), attachment.device);
        publish_context.insert("driver".into(), volume.driver);
        Ok(csi::ControllerPublishVolumeResponse { publish_context })
    }

    async fn unpublish(&self, req: csi::ControllerUnpublishVolumeRequest) -> Result<(), Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        let Some(id) = ObjectId::parse(raw) else {
            return Ok(());
        };
        let _busy = self.backend.busy(format!("volume {id}"))?;
        let request = pb::DetachVolumeRequest {
            service: id.service.clone(),
            name: id.name.clone(),
            instance: req.node_id.clone(),
            force: req.node_id.is_empty(),
        };
        let result = self
            .backend
            .call(|s| {
                let r = request.clone();
                async move { s.volumes().detach_volume(r).await.map(|_| ()) }
            })
            .await;
        match result {
            // Gone already: nothing is attached anywhere.
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => other,
        }
    }

    async fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Status> {
        let raw = required(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let id = ObjectId::parse(raw).ok_or_else(|| volume_not_found(raw))?;
        self.get_volume(&id).await?;
        let info = self.backend.service(&id.service).await?;
        Ok(
            match check_capabilities(info.as_ref(), &req.volume_capabilities) {
                Ok(()) => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: req.mutable_parameters,
                    }),
                    message: String::new(),
                },
                Err(why) => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: why,
                },
            },
        )
    }

    async fn list(&self, req: csi::ListVolumesRequest) -> Result<csi::ListVolumesResponse, Status> {
        let max = u32::try_from(req.max_entries).map_err(|_| {
            Status::invalid_argument(format!("max_entries is negative ({})", req.max_entries))
        })?;
        let request = pb::ListVolumesRequest {
            service: String::new(),
            max_entries: max,
            page_token: req.starting_token.clone(),
            attachment: pb::AttachmentFilter::Any as i32,
            with_usage: false,
        };
        let page = self
            .backend
            .call(|s| {
                let r = request.clone();
                async move { Ok(s.volumes().list_volumes(r).await?.into_inner()) }
            })
            .await
            .map_err(|status| {
                if status.code() == Code::InvalidArgument && !req.starting_token.is_empty() {
                    Status::aborted(format!(
                        "starting_token is not one this plugin issued: {}",
                        status.message()
                    ))
                } else {
                    status
                }
            })?;
        Ok(csi::ListVolumesResponse {
            entries: page
                .volumes
                .iter()
                .map(|v| csi::list_volumes_response::Entry {
                    volume: Some(csi_volume(v)),
                    status: Some(csi::list_volumes_response::VolumeStatus {
                        published_node_ids: published_nodes(v),
                        volume_condition: None,
                    }),
                })
                .collect(),
            next_token: page.next_page_token,
        })
    }

    async fn create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse, Status> {
        let csi_name = required(&req.name, "name")?;
        let raw = required(&req.source_volume_id, "source_volume_id")?;
        let volume = ObjectId::parse(raw).ok_or_else(|| volume_not_found(raw))?;
        let name = berth_name(csi_name);
        let _busy = self
            .backend
            .busy(format!("snapshot {}/{name}", volume.service))?;
        let request = pb::CreateSnapshotRequest {
            service: volume.service.clone(),
            volume: volume.name.clone(),
            name,
        };
        let snapshot = self
            .backend
            .call(|s| {
                let r = request.clone();
                async move { Ok(s.snapshots().create_snapshot(r).await?.into_inner()) }
            })
            .await?;
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        })
    }

    async fn delete_snapshot(&self, req: csi::DeleteSnapshotRequest) -> Result<(), Status> {
        let raw = required(&req.snapshot_id, "snapshot_id")?;
        let Some(id) = ObjectId::parse(raw) else {
            return Ok(());
        };
        let _busy = self.backend.busy(format!("snapshot {id}"))?;
        let result = self
            .backend
            .call(|s| {
                let r = pb::DeleteSnapshotRequest {
                    service: id.service.clone(),
                    name: id.name.clone(),
                };
                async move { s.snapshots().delete_snapshot(r).await.map(|_| ()) }
            })
            .await;
        match result {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => other,
        }
    }

    async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Status> {
        let max = usize::try_from(req.max_entries).map_err(|_| {
            Status::invalid_argument(format!("max_entries is negative ({})", req.max_entries))
        })?;
        // Tokens are the id of the last snapshot returned: a page stays
        // valid when that snapshot is deleted meanwhile.
        let after = match req.starting_token.as_str() {
            "" => None,
            token => Some(ObjectId::parse(token).ok_or_else(|| {
                Status::aborted(format!(
                    "starting_token {:?} is not one this plugin issued; start again without one",
                    token.chars().take(200).collect::<String>()
                ))
            })?),
        };
        let mut snapshots: Vec<pb::Snapshot> = if !req.snapshot_id.is_empty() {
            let Some(id) = ObjectId::parse(&req.snapshot_id) else {
                return Ok(csi::ListSnapshotsResponse::default());
            };
            match self.get_snapshot(&id).await {
                Ok(s) => vec![s],
                Err(status) if status.code() == Code::NotFound => Vec::new(),
                Err(status) => return Err(status),
            }
        } else {
            let (service, volume) = if req.source_volume_id.is_empty() {
                (String::new(), String::new())
            } else {
                let Some(id) = ObjectId::parse(&req.source_volume_id) else {
                    return Ok(csi::ListSnapshotsResponse::default());
                };
                (id.service, id.name)
            };
            let request = pb::ListSnapshotsRequest { service, volume };
            self.backend
                .call(|s| {
                    let r = request.clone();
                    async move {
                        Ok(s.snapshots()
                            .list_snapshots(r)
                            .await?
                            .into_inner()
                            .snapshots)
                    }
                })
                .await?
        };
        if !req.source_volume_id.is_empty() {
            snapshots.retain(|s| {
                ObjectId {
                    service: s.service.clone(),
                    name: s.volume.clone(),
                }
                .id()
                    == req.source_volume_id
            });
        }
        let key = |s: &pb::Snapshot| ObjectId {
            service: s.service.clone(),
            name: s.name.clone(),
        };
        snapshots.sort_by_key(key);
        if let Some(after) = &after {
            snapshots.retain(|s| key(s) > *after);
        }
        let mut next_token = String::new();
        if max > 0 && snapshots.len() > max {
            snapshots.truncate(max);
            if let Some(last) = snapshots.last() {
                next_token = key(last).id();
            }
        }
        Ok(csi::ListSnapshotsResponse {
            entries: snapshots
                .iter()
                .map(|s| csi::list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token,
        })
    }
}

fn rpc(kind: Rpc) -> csi::ControllerServiceCapability {
    csi::ControllerServiceCapability {
        r#type: Some(csi::controller_service_capability::Type::Rpc(
            csi::controller_service_capability::Rpc {
                r#type: kind as i32,
            },
        )),
    }
}

/// What the Controller service offers. Not offered: GET_CAPACITY (Berth's
/// API does not report free space), EXPAND_VOLUME and MODIFY_VOLUME (Berth
/// cannot resize or re-parameterise a volume), PUBLISH_READONLY (a Berth
/// attachment has no read-only flag; nodes mount read-only on request).
pub const CAPABILITIES: &[Rpc] = &[
    Rpc::CreateDeleteVolume,
    Rpc::PublishUnpublishVolume,
    Rpc::ListVolumes,
    Rpc::ListVolumesPublishedNodes,
    Rpc::GetVolume,
    Rpc::CreateDeleteSnapshot,
    Rpc::ListSnapshots,
    Rpc::CloneVolume,
];

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let name = req.name.clone();
        logged("CreateVolume", &name, self.create(req).await)
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("DeleteVolume", &id, self.delete(req).await)?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("ControllerPublishVolume", &id, self.publish(req).await).map(Response::new)
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("ControllerUnpublishVolume", &id, self.unpublish(req).await)?;
        Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        logged("ValidateVolumeCapabilities", &id, self.validate(req).await).map(Response::new)
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        logged("ListVolumes", "", self.list(request.into_inner()).await).map(Response::new)
    }

    async fn get_capacity(
        &self,
        _request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Err(Status::unimplemented(
            "GetCapacity: Berth's API does not report free space",
        ))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: CAPABILITIES.iter().map(|k| rpc(*k)).collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let name = req.name.clone();
        logged(
            "CreateSnapshot",
            &name,
            ControllerService::create_snapshot(self, req).await,
        )
        .map(Response::new)
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let id = req.snapshot_id.clone();
        logged(
            "DeleteSnapshot",
            &id,
            ControllerService::delete_snapshot(self, req).await,
        )?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        logged(
            "ListSnapshots",
            "",
            ControllerService::list_snapshots(self, request.into_inner()).await,
        )
        .map(Response::new)
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        let raw = required(&req.snapshot_id, "snapshot_id")?;
        let id = ObjectId::parse(raw).ok_or_else(|| snapshot_not_found(raw))?;
        let snapshot = ControllerService::get_snapshot(self, &id).await?;
        Ok(Response::new(csi::GetSnapshotResponse {
            snapshot: Some(csi_snapshot(&snapshot)),
        }))
    }

    async fn controller_expand_volume(
        &self,
        _request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerExpandVolume: Berth volumes cannot be resized",
        ))
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        let raw = required(&req.volume_id, "volume_id")?;
        let id = ObjectId::parse(raw).ok_or_else(|| volume_not_found(raw))?;
        let volume = self.get_volume(&id).await?;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(csi_volume(&volume)),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: published_nodes(&volume),
                volume_condition: None,
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume: Berth volumes take no mutable parameters",
        ))
    }
}
