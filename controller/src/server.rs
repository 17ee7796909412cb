//! Serving: the gRPC router over a listener until shutdown.

use std::future::Future;
use std::sync::Arc;

use berth_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::Api;
use crate::pipeline::PipelineLayer;
use crate::volumes::Volumes;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the Berth API, health and reflection on `listener` until
/// `shutdown` completes, then finishes in-flight calls and returns.
pub async fn run(
    listener: TcpListener,
    volumes: Arc<Volumes>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let api = Api::new(volumes);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::volumes_server::VolumesServer<Api>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    tonic::transport::Server::builder()
        .layer(PipelineLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(pb::service_catalog_server::ServiceCatalogServer::new(
            api.clone(),
        ))
        .add_service(pb::volumes_server::VolumesServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
