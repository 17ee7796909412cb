//! Serving: the gRPC router over a listener until shutdown, through TLS
//! (always, unless the operator chose `--insecure-plaintext`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::admin::AdminApi;
use crate::api::Api;
use crate::auth::Authenticator;
use crate::pipeline::PipelineLayer;
use crate::tls::Tls;

/// A handshake that does not finish in this time is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How connections are secured.
#[derive(Clone)]
pub enum Transport {
    /// TLS with the live configuration.
    Tls(Arc<Tls>),
    /// No encryption, no server identity: only with `--insecure-plaintext`.
    DangerousPlaintext,
}

/// What the server serves.
pub struct Services {
    pub api: Api,
    pub admin: AdminApi,
    pub auth: Arc<Authenticator>,
}

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
    transport: Transport,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let Services { api, admin, auth } = services;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::volumes_server::VolumesServer<Api>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let router = tonic::transport::Server::builder()
        .layer(PipelineLayer::new(auth))
        .add_service(health)
        .add_service(reflection)
        .add_service(pb::service_catalog_server::ServiceCatalogServer::new(
            api.clone(),
        ))
        .add_service(pb::volumes_server::VolumesServer::new(api.clone()))
        .add_service(pb::snapshots_server::SnapshotsServer::new(api))
        .add_service(pb::admin_server::AdminServer::new(admin));

    match transport {
        Transport::Tls(tls) => {
            router
                .serve_with_incoming_shutdown(tls_incoming(listener, tls), shutdown)
                .await?
        }
        Transport::DangerousPlaintext => {
            router
                .serve_with_incoming_shutdown(plaintext_incoming(listener), shutdown)
                .await?
        }
    }
    Ok(())
}

/// Accepts TCP connections and runs `prepare` on each in its own task (a
/// slow client never holds up the others), yielding the connections it
/// accepts. Stops when the server stops consuming.
fn incoming<IO, F, Fut>(listener: TcpListener, prepare: F) -> ReceiverStream<io::Result<IO>>
where
    IO: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (tx, ready) = (tx.clone(), prepare(tcp, peer));
            tokio::spawn(async move {
                if let Some(conn) = ready.await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Plaintext connections that start talking within [`HANDSHAKE_TIMEOUT`],
/// as on the TLS path: one that never sends a byte is dropped and never
/// holds up a graceful shutdown.
fn plaintext_incoming(listener: TcpListener) -> ReceiverStream<io::Result<TcpStream>> {
    incoming(listener, |tcp: TcpStream, peer| async move {
        let mut first = [0u8; 1];
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => Some(tcp),
            Ok(_) => None,
            Err(_) => {
                tracing::debug!(%peer, "connection sent nothing; dropped");
                None
            }
        }
    })
}

/// TLS connections whose handshake finishes within [`HANDSHAKE_TIMEOUT`],
/// with the configuration current when it started.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    incoming(listener, move |tcp, peer| {
        let acceptor = tls.acceptor();
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            }
        }
    })
}
