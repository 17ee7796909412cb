//! The request pipeline: one tower layer every RPC passes through, where
//! requests are authenticated, logged and counted. Only the standard health
//! service answers without an identity.
//!
//! Each call ends in one `berthd::request` line (debug) with the fields a
//! log pipeline indexes: `method` (the gRPC path), `service` (the Berth
//! service it was authorised on, when it names one), `subject`, `code` (the
//! gRPC code's name) and `duration` (seconds), beside the older
//! `grpc_status` and `elapsed_us`; and in `berth_rpc_requests_total` and
//! `berth_rpc_duration_seconds`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tower::{Layer, Service};

use crate::auth::{Authenticator, AUDIT};
use crate::metrics::{self, code_name};
use crate::rpc::call::{CallInfo, Method};

/// Calls under this prefix need no identity.
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// Wraps the gRPC router.
#[derive(Clone)]
pub struct PipelineLayer {
    auth: Arc<Authenticator>,
}

impl PipelineLayer {
    /// A pipeline authenticating with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for PipelineLayer {
    type Service = Pipeline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pipeline {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// See [`PipelineLayer`].
#[derive(Clone)]
pub struct Pipeline<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Pipeline<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is ready only after poll_ready; swap so the ready one runs.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let info = CallInfo::new();
        let auth = Arc::clone(&self.auth);
        Box::pin(async move {
            let mut subject = String::new();
            if !method.starts_with(OPEN_PREFIX) {
                let checked = match Authenticator::presented(&request) {
                    Ok((token, leaf)) => auth.verify(token, leaf).await,
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(identity) => {
                        // Only the debug line names the subject.
                        if tracing::enabled!(target: "berthd::request", tracing::Level::DEBUG) {
                            subject = identity.subject.clone();
                        }
                        request.extensions_mut().insert(identity);
                        request.extensions_mut().insert(Method::from_path(&method));
                        request.extensions_mut().insert(Arc::clone(&info));
                    }
                    Err(error) => {
                        let status = tonic::Status::from(error);
                        tracing::info!(target: AUDIT, %method, decision = "unauthenticated", reason = %status.message());
                        metrics::global().refused("unauthenticated");
                        finished(&method, "", "", status.code() as i32, started);
                        return Ok(status.into_http());
                    }
                }
            }
            let response = inner.call(request).await?;
            // Errors come as trailers-only responses (the status in the
            // headers); a reply with a body carries it in trailers, which
            // come later: it counts as OK here.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            finished(&method, info.service(), &subject, code, started);
            Ok(response)
        })
    }
}

/// The end of one call: its log line and its metrics.
fn finished(path: &str, service: &str, subject: &str, code: i32, started: Instant) {
    let elapsed = started.elapsed();
    let name = code_name(code);
    tracing::debug!(target: "berthd::request", method = %path, service, subject, code = name,
        duration = elapsed.as_secs_f64(), grpc_status = code, elapsed_us = elapsed.as_micros() as u64, "rpc");
    metrics::global().rpc(Method::label(path), service, name, elapsed.as_secs_f64());
}
