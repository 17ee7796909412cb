//! A bound on every call: a controller that accepts a request and never
//! answers must not hang a script.
//!
//! [`Deadline`] wraps a gRPC channel; a call that has no reply within its
//! limit fails with [`NoReply`], which says that the operation may still
//! complete on the controller (a create that was received may finish after
//! the client gave up).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

/// The default limit of `--timeout` (and `BERTH_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A call got no reply in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "no reply from {host} within {after}; the operation may still complete on the controller \
     (look before retrying, e.g. berth volume list), or raise --timeout"
)]
pub struct NoReply {
    /// The controller, as HOST:PORT.
    pub host: String,
    /// The limit, as the user would write it (`60s`, `500ms`).
    pub after: HumanDuration,
}

/// A duration shown the way `--timeout` takes it: whole seconds as `60s`,
/// anything finer in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}ms", self.0.as_millis())
        }
    }
}

/// A service (a gRPC channel) whose every call is bounded by `limit`, and
/// whose transport failures (tonic's bare `transport error`) come back as
/// `unavailable` with their cause in words (see
/// [`crate::connect::explain_transport`]).
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    host: String,
    limit: Duration,
    plaintext: bool,
}

impl<S> Deadline<S> {
    /// Bounds each call `inner` makes to `host` by `limit`.
    pub fn new(inner: S, host: &str, limit: Duration) -> Self {
        Self {
            inner,
            host: host.to_owned(),
            limit,
            plaintext: false,
        }
    }

    /// Says the channel runs without TLS (`--plaintext`), so a transport
    /// failure is checked against a controller that speaks TLS.
    pub fn plaintext(mut self, plaintext: bool) -> Self {
        self.plaintext = plaintext;
        self
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> Service<R> for Deadline<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let call = self.inner.call(request);
        let (host, limit, plaintext) = (self.host.clone(), self.limit, self.plaintext);
        Box::pin(async move {
            let status = match tokio::time::timeout(limit, call).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(e)) => tonic::Status::from_error(e.into()),
                Err(_) => {
                    return Err(Box::new(NoReply {
                        host,
                        after: HumanDuration(limit),
                    }) as BoxError)
                }
            };
            match crate::connect::explain_transport(&status, &host, plaintext).await {
                Some(cause) => Err(Box::new(tonic::Status::unavailable(cause)) as BoxError),
                None => Err(Box::new(status) as BoxError),
            }
        })
    }
}

/// The [`NoReply`] behind a failed call, if that is why it failed.
pub fn no_reply(status: &tonic::Status) -> Option<&NoReply> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<NoReply>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_they_are_written() {
        assert_eq!(HumanDuration(Duration::from_secs(60)).to_string(), "60s");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }
}
