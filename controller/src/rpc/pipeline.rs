//! The request pipeline: one tower layer every RPC passes through, where
//! requests are authenticated and logged. Only the standard health service
//! answers without an identity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tower::{Layer, Service};

use crate::auth::{Authenticator, AUDIT};
use crate::rpc::call::Method;

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
        if !method.starts_with(OPEN_PREFIX) {
            match self.auth.authenticate(&request) {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    request.extensions_mut().insert(Method::from_path(&method));
                }
                Err(error) => {
                    let status = tonic::Status::from(error);
                    tracing::info!(target: AUDIT, %method, decision = "unauthenticated", reason = %status.message());
                    tracing::debug!(target: "berthd::request", %method, grpc_status = status.code() as i32,
                        elapsed_us = started.elapsed().as_micros() as u64, "rpc");
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        Box::pin(async move {
            let response = inner.call(request).await?;
            let status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0");
            tracing::debug!(target: "berthd::request", %method, grpc_status = status,
                elapsed_us = started.elapsed().as_micros() as u64, "rpc");
            Ok(response)
        })
    }
}
