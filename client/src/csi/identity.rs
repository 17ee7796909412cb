//! The CSI Identity service: name, version, capabilities, readiness.

use std::sync::Arc;

use berth_proto::csi::v1 as csi;
use csi::plugin_capability::{service::Type as ServiceType, Service, Type};
use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::PluginConfig;

/// Identity, answered for every mode.
pub struct IdentityService {
    backend: Arc<Backend>,
    config: Arc<PluginConfig>,
}

impl IdentityService {
    /// The service over `backend`.
    pub fn new(backend: Arc<Backend>, config: Arc<PluginConfig>) -> Self {
        Self { backend, config }
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.config.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: [("vendor".to_owned(), "berth".to_owned())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // The Controller service is part of the plugin even when this
        // process serves only Node (the spec asks for the plugin's view).
        let capabilities = vec![csi::PluginCapability {
            r#type: Some(Type::Service(Service {
                r#type: ServiceType::ControllerService as i32,
            })),
        }];
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse {
            ready: Some(self.backend.ready().await),
        }))
    }
}
