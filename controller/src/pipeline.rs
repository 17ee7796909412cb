//! The request pipeline: one tower layer every RPC passes through, where
//! requests are logged (and, from issue 3 on, authenticated).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tower::{Layer, Service};

/// Wraps the gRPC router.
#[derive(Clone, Default)]
pub struct PipelineLayer;

impl<S> Layer<S> for PipelineLayer {
    type Service = Pipeline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pipeline { inner }
    }
}

/// See [`PipelineLayer`].
#[derive(Clone)]
pub struct Pipeline<S> {
    inner: S,
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

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is ready only after poll_ready; swap so the ready one runs.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        let started = Instant::now();
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
