//! The node side of a `csi` service: the plugin's own Node service (stage,
//! publish, and their undoing) on the node's socket for that plugin, named
//! in the client config:
//!
//! ```toml
//! [csi_plugins]
//! hostpath = "unix:///run/csi/hostpath-node.sock"   # service name = node socket
//! ```
//!
//! The controller's attachment carries what the plugin needs: its volume id
//! ([`VOLUME_ID`]), the volume context ([`CONTEXT_PREFIX`]) and the publish
//! context ([`PUBLISH_PREFIX`]); these field names are the wire contract
//! with `berthd`'s `csi` driver.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use berth_proto::csi::v1 as pb;
use hyper_util::rt::TokioIo;
use pb::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

use super::NodeError;

/// The attachment field holding the plugin's volume id.
pub const VOLUME_ID: &str = "csi.volume_id";
/// Prefix of attachment fields holding the volume context.
pub const CONTEXT_PREFIX: &str = "csi.context.";
/// Prefix of attachment fields holding the publish context.
pub const PUBLISH_PREFIX: &str = "csi.publish.";

/// How long dialling the node socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Node call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What the plugin needs to stage and publish one volume.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    /// The plugin's volume id.
    pub volume_id: String,
    volume_context: HashMap<String, String>,
    publish_context: HashMap<String, String>,
}

impl Published {
    /// Reads the attachment's fields; `None` without a volume id.
    pub fn from_fields(fields: &BTreeMap<String, String>) -> Option<Self> {
        let volume_id = fields.get(VOLUME_ID)?.clone();
        let with = |prefix: &str| {
            fields
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_owned(), v.clone())))
                .collect()
        };
        Some(Self {
            volume_id,
            volume_context: with(CONTEXT_PREFIX),
            publish_context: with(PUBLISH_PREFIX),
        })
    }
}

fn capability() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

/// One plugin's Node service.
pub(crate) struct PluginNode {
    endpoint: String,
    client: NodeClient<Channel>,
}

impl PluginNode {
    /// Dials `endpoint` (`unix:///path`).
    pub async fn connect(endpoint: &str) -> Result<Self, NodeError> {
        let Some(path) = endpoint
            .strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
        else {
            return Err(NodeError::InvalidArgument(format!(
                "[csi_plugins] endpoint {endpoint:?} is not unix:///absolute/path.sock; fix the client config"
            )));
        };
        let path = path.to_owned();
        let channel = Endpoint::from_static("http://csi-node.invalid")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| NodeError::CsiPlugin {
                endpoint: endpoint.to_owned(),
                action: "connecting".into(),
                status: tonic::Status::unavailable(format!(
                    "{e}; is the plugin's node service running on that socket?"
                )),
            })?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            client: NodeClient::new(channel),
        })
    }

    fn failed(&self, action: String) -> impl FnOnce(tonic::Status) -> NodeError + '_ {
        move |status| NodeError::CsiPlugin {
            endpoint: self.endpoint.clone(),
            action,
            status,
        }
    }

    /// Whether the plugin stages volumes (`STAGE_UNSTAGE_VOLUME`).
    pub async fn stages(&mut self) -> Result<bool, NodeError> {
        let caps = self
            .client
            .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
            .await
            .map_err(self.failed("NodeGetCapabilities".into()))?
            .into_inner();
        Ok(caps.capabilities.iter().any(|c| {
            matches!(&c.r#type, Some(pb::node_service_capability::Type::Rpc(r))
                if r.r#type == pb::node_service_capability::rpc::Type::StageUnstageVolume as i32)
        }))
    }

    /// `NodeStageVolume` at `staging`.
    pub async fn stage(&mut self, volume: &Published, staging: &Path) -> Result<(), NodeError> {
        let action = format!(
            "NodeStageVolume of {} at {}",
            volume.volume_id,
            staging.display()
        );
        self.client
            .node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: volume.volume_id.clone(),
                publish_context: volume.publish_context.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability()),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await
            .map_err(self.failed(action))?;
        Ok(())
    }

    /// `NodePublishVolume` at `target`.
    pub async fn publish(
        &mut self,
        volume: &Published,
        staging: Option<&Path>,
        target: &Path,
        read_only: bool,
    ) -> Result<(), NodeError> {
        let action = format!(
            "NodePublishVolume of {} at {}",
            volume.volume_id,
            target.display()
        );
        self.client
            .node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                publish_context: volume.publish_context.clone(),
                staging_target_path: staging.map(|s| s.display().to_string()).unwrap_or_default(),
                target_path: target.display().to_string(),
                volume_capability: Some(capability()),
                readonly: read_only,
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await
            .map_err(self.failed(action))?;
        Ok(())
    }

    /// `NodeUnpublishVolume` at `target`.
    pub async fn unpublish(&mut self, volume_id: &str, target: &Path) -> Result<(), NodeError> {
        let action = format!("NodeUnpublishVolume of {volume_id} at {}", target.display());
        match self
            .client
            .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: volume_id.to_owned(),
                target_path: target.display().to_string(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(self.failed(action)(s)),
        }
    }

    /// `NodeUnstageVolume` at `staging`.
    pub async fn unstage(&mut self, volume_id: &str, staging: &Path) -> Result<(), NodeError> {
        let action = format!("NodeUnstageVolume of {volume_id} at {}", staging.display());
        match self
            .client
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: volume_id.to_owned(),
                staging_target_path: staging.display().to_string(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(self.failed(action)(s)),
        }
    }
}

/// The node socket configured for `service`.
pub(crate) fn endpoint_for<'a>(
    plugins: &'a BTreeMap<String, String>,
    service: &str,
    volume: &str,
) -> Result<&'a str, NodeError> {
    plugins
        .get(service)
        .map(String::as_str)
        .ok_or_else(|| NodeError::Unsupported {
            volume: volume.to_owned(),
            reason: format!(
                "its service {service:?} is a CSI plugin, and this node's client config names no node socket for it; add `[csi_plugins]` with `{service} = \"unix:///path/to/the/plugin's/node.sock\"`"
            ),
        })
}
