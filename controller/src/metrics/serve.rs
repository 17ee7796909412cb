//! The metrics listener: plain HTTP/1.1, `GET /metrics` answers the
//! OpenMetrics text of [`super::global`]; anything else is 404.
//!
//! It is off unless `--metrics-listen ADDR` is given, and a non-loopback
//! address is refused unless `--metrics-allow-remote` is given too: the
//! metrics carry no secret, but service names, subjects' refusals and
//! load are nobody else's business, and there is no TLS or authentication
//! on this port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::CertLabels;
use crate::metrics::ServiceLabels;
use crate::tls::live::Tls;
use crate::volumes::Volumes;

/// Why the metrics address is refused.
#[derive(Debug, thiserror::Error)]
pub enum MetricsAddrError {
    /// A non-loopback address without the explicit permission.
    #[error("--metrics-listen {0}: metrics are served without TLS or authentication, so only a loopback address (127.0.0.1, [::1]) is accepted; add --metrics-allow-remote to serve them on {0} anyway")]
    NotLoopback(SocketAddr),
}

/// Checks the address against the loopback rule.
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), MetricsAddrError> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(MetricsAddrError::NotLoopback(addr))
    }
}

/// What a scrape reads besides the counters: the records by service and
/// the certificates' dates.
#[derive(Clone)]
pub struct Source {
    /// The volume manager, for counts by service.
    pub volumes: Arc<Volumes>,
    /// The live TLS configuration (`None` when serving plaintext).
    pub tls: Option<Arc<Tls>>,
    /// When the CA certificate expires.
    pub ca_not_after: Option<SystemTime>,
}

impl Source {
    /// Sets the scrape-time gauges, then encodes everything.
    pub async fn render(&self) -> String {
        let m = super::global();
        match self.volumes.counts().await {
            Ok(counts) => {
                for (service, volumes, snapshots) in counts {
                    let labels = ServiceLabels { service };
                    m.volumes.get_or_create(&labels).set(volumes as i64);
                    m.snapshots.get_or_create(&labels).set(snapshots as i64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count the records"),
        }
        let now = SystemTime::now();
        let until = |t: SystemTime| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let server = self.tls.as_ref().and_then(|t| t.presented().not_after);
        for (name, at) in [("server", server), ("ca", self.ca_not_after)] {
            if let Some(at) = at {
                m.cert_expiry
                    .get_or_create(&CertLabels {
                        certificate: name.to_owned(),
                    })
                    .set(until(at));
            }
        }
        let mut text = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, m.registry()) {
            tracing::warn!(error = %e, "metrics: cannot encode");
        }
        text
    }
}

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn run(listener: TcpListener, source: Source) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(&request, &source).await) }
            });
            let served = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            )
            .await;
            if let Ok(Err(e)) = served {
                tracing::debug!(%peer, error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

async fn answer<B>(request: &http::Request<B>, source: &Source) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            (http::StatusCode::OK, CONTENT_TYPE, source.render().await)
        }
        (_, "/metrics") => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
