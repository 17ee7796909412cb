//! Serving: the gRPC router over a listener until shutdown, through TLS
//! (always, unless the operator chose `--insecure-plaintext`), within the
//! connection and stream [`Limits`] ([`crate::rpc::limits`]).
//!
//! The accept loop and each connection are driven here rather than by
//! tonic's own server, because the limits need what only a per-connection
//! view gives: the number of calls in flight on a connection (a connection
//! with none for [`Limits::idle_timeout`] is closed), a permit per
//! connection (one over [`Limits::max_connections`] is closed at once), and
//! a deadline on each request body.
//!
//! What tonic's server did besides is kept: the peer's certificates reach
//! [`crate::auth`] as [`tonic::transport::server::TlsConnectInfo`], the
//! client's `grpc-timeout` bounds the call, and a graceful shutdown stops
//! accepting at once and lets calls in flight finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_proto::v1 as pb;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic::Status;
use tower::{Layer as _, ServiceExt as _};

use crate::auth::Authenticator;
use crate::rpc::admin::AdminApi;
use crate::rpc::limits::Limits;
use crate::rpc::pipeline::{Pipeline, PipelineLayer};
use crate::rpc::volumes::Api;
use crate::tls::live::Tls;

/// A handshake that does not finish in this time is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection being closed (idle, or at shutdown) has to say
/// goodbye (HTTP/2 GOAWAY) before it is dropped; it is dropped only once
/// no call is in flight on it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The first pause after a failed `accept`; it doubles on each failure in
/// a row up to [`ACCEPT_BACKOFF_MAX`], and resets on a success.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);

/// The longest pause between two `accept` attempts after failures.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A warning that repeats (accept failures, the connection cap) is logged
/// at most once per this period, with how many were left out.
const REPEAT_LOG_PERIOD: Duration = Duration::from_secs(10);

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
    /// `ServiceCatalog`, `Volumes` and `Snapshots`.
    pub api: Api,
    /// `Admin`.
    pub admin: AdminApi,
    /// What the pipeline authenticates with.
    pub auth: Arc<Authenticator>,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built.
    #[error("gRPC reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The router every connection serves: the Berth API, health and
/// reflection behind the request pipeline.
type Router = Pipeline<Routes>;

/// Serves the Berth API, health and reflection on `listener` within
/// `limits` until `shutdown` completes; then stops accepting, lets calls in
/// flight finish, and returns once every connection is closed.
pub async fn run(
    listener: TcpListener,
    transport: Transport,
    services: Services,
    limits: Limits,
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
    let routes = Routes::new(health)
        .add_service(reflection)
        .add_service(pb::service_catalog_server::ServiceCatalogServer::new(
            api.clone(),
        ))
        .add_service(pb::volumes_server::VolumesServer::new(api.clone()))
        .add_service(pb::snapshots_server::SnapshotsServer::new(api))
        .add_service(pb::admin_server::AdminServer::new(admin))
        .prepare();
    let server = Arc::new(Server {
        router: PipelineLayer::new(auth).layer(routes),
        transport,
        limits,
        http2: http2_builder(&limits),
        permits: Arc::new(Semaphore::new(limits.max_connections as usize)),
        stopping: watch::channel(false).0,
    });
    // The accept loop is a task of its own, on the runtime's workers: the
    // connection tasks it spawns then start from a worker's own queue, and
    // no accept waits for the thread that called `run` (berthd's main
    // thread, in `block_on`) to be woken. When the signal comes the task
    // is aborted and awaited, so the listening socket is closed (new
    // clients refused at once) before the connections are told to stop.
    let mut accepting = AcceptTask(tokio::spawn(accept_loop(listener, Arc::clone(&server))));
    tokio::select! {
        () = shutdown => {}
        ended = &mut accepting.0 => {
            // The loop never returns; only a panic ends it, and that panic
            // is the server's, as when the loop ran inside this function.
            let Err(e) = ended;
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
    accepting.0.abort();
    let _ = (&mut accepting.0).await;
    server.stopping.send_replace(true);
    // Every connection (handshakes included) holds a permit until it ends.
    let _all = server
        .permits
        .acquire_many(limits.max_connections)
        .await
        .ok();
    Ok(())
}

/// The accept loop's task, aborted when dropped (when [`run`] is dropped
/// before it returns, as the controller does after its shutdown grace), so
/// the listening socket never outlives the server.
struct AcceptTask(tokio::task::JoinHandle<Infallible>);

impl Drop for AcceptTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every connection task shares.
struct Server {
    router: Router,
    transport: Transport,
    limits: Limits,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// One permit per connection: [`Limits::max_connections`] of them.
    permits: Arc<Semaphore>,
    /// Becomes `true` when the server shuts down.
    stopping: watch::Sender<bool>,
}

/// The HTTP/2 settings every connection gets.
fn http2_builder(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    builder
}

/// Accepts connections forever: each gets a permit (or is closed at once
/// when none is left) and its own task, so a slow client never holds up
/// the others. Failures to accept (out of file descriptors and the like)
/// back off exponentially.
async fn accept_loop(listener: TcpListener, server: Arc<Server>) -> Infallible {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures = RepeatLog::new(REPEAT_LOG_PERIOD);
    let mut refusals = RepeatLog::new(REPEAT_LOG_PERIOD);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF_MIN;
                pair
            }
            Err(e) => {
                if let Some(left_out) = failures.hit() {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        similar_since_last_warning = left_out,
                        "accept failed; backing off (out of file descriptors? raise the open-file limit or lower --max-connections)");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&server.permits).try_acquire_owned() else {
            drop(tcp);
            crate::metrics::global().connections_refused.inc();
            if let Some(left_out) = refusals.hit() {
                tracing::warn!(limit = server.limits.max_connections, %peer,
                    refused_since_last_warning = left_out,
                    "connection limit reached; closing new connections (raise --max-connections or limits.max_connections)");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(Arc::clone(&server), tcp, peer, permit));
    }
}

/// One connection, from handshake to close, holding `permit` throughout.
async fn connection(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let mut stopping = server.stopping.subscribe();
    let _open = OpenConnection::new();
    let handshake = async {
        match &server.transport {
            Transport::Tls(tls) => {
                let acceptor = tls.acceptor();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        crate::metrics::global().handshake("ok");
                        Some(Conn::Tls(Box::new(stream)))
                    }
                    Ok(Err(e)) => {
                        crate::metrics::global().handshake("failed");
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        crate::metrics::global().handshake("timeout");
                        tracing::debug!(%peer, "TLS handshake timed out");
                        None
                    }
                }
            }
            // As on the TLS path: one that never sends a byte is dropped.
            Transport::DangerousPlaintext => {
                let mut first = [0u8; 1];
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => Some(Conn::Plain(tcp)),
                    Ok(_) => None,
                    Err(_) => {
                        tracing::debug!(%peer, "connection sent nothing; dropped");
                        None
                    }
                }
            }
        }
    };
    let conn = tokio::select! {
        conn = handshake => conn,
        _ = stopping.wait_for(|s| *s) => None,
    };
    match conn {
        Some(Conn::Tls(stream)) => serve(&server, *stream, peer, stopping).await,
        Some(Conn::Plain(stream)) => serve(&server, stream, peer, stopping).await,
        None => {}
    }
    drop(permit);
}

/// Counts a connection in `berth_connections_open` while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        crate::metrics::global().connections_open.inc();
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::global().connections_open.dec();
    }
}

/// A connection past its handshake.
enum Conn {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

/// Serves HTTP/2 on `io` until the peer leaves, it stays without a call in
/// flight for the idle timeout, or the server stops.
async fn serve<IO>(server: &Server, io: IO, peer: SocketAddr, mut stopping: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = ConnectionService {
        router: server.router.clone(),
        connect_info: io.connect_info(),
        activity: Arc::clone(&activity),
        body_timeout: server.limits.request_body_timeout,
    };
    let conn = server.http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.idle_for(server.limits.idle_timeout), if !closing => {
                tracing::debug!(%peer, idle_timeout_s = server.limits.idle_timeout.as_secs_f64(),
                    "closing a connection with no call in flight");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stopping.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // A peer that does not take part in the goodbye (one that never
            // sent its HTTP/2 preface, one that never answers the GOAWAY's
            // PING) is dropped once no call of its is in flight.
            () = async {
                tokio::time::sleep(CLOSE_GRACE).await;
                activity.idle_for(Duration::ZERO).await;
            }, if closing => {
                tracing::debug!(%peer, "connection did not close after GOAWAY; dropped");
                return;
            }
        }
    }
}

/// The calls in flight on one connection, and when that count last
/// changed.
struct Activity {
    /// (calls in flight, when a call last started or ended).
    state: Mutex<(usize, Instant)>,
    /// Woken when a call ends.
    ended: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new((0, Instant::now())),
            ended: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        // The state is two plain values, valid even after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call in flight until the returned guard drops.
    fn call_started(self: &Arc<Self>) -> CallInFlight {
        let mut state = self.lock();
        state.0 += 1;
        state.1 = Instant::now();
        CallInFlight(Arc::clone(self))
    }

    /// Completes once no call has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            // Registered before the state is read, so an end between the
            // read and the wait still wakes this.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let (in_flight, since) = *self.lock();
            if in_flight > 0 {
                ended.await;
                continue;
            }
            let at = since + limit;
            if Instant::now() >= at {
                return;
            }
            // A call that starts meanwhile moves `since`: look again then.
            tokio::time::sleep_until(at).await;
        }
    }
}

/// A call in flight on a connection (see [`Activity::call_started`]).
struct CallInFlight(Arc<Activity>);

impl Drop for CallInFlight {
    fn drop(&mut self) {
        let idle = {
            let mut state = self.0.lock();
            state.0 = state.0.saturating_sub(1);
            state.1 = Instant::now();
            state.0 == 0
        };
        // Only the last call's end can make the connection idle: waking the
        // connection's task at every other end was a wake-up per call.
        if idle {
            self.0.ended.notify_waiters();
        }
    }
}

/// The per-connection service hyper calls for each stream.
///
/// hyper calls it on the connection's task as it reads the stream's
/// headers, so a call is counted in [`Activity`] before the connection can
/// look idle again.
#[derive(Clone)]
struct ConnectionService<C> {
    router: Router,
    connect_info: C,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl<C> hyper::service::Service<http::Request<hyper::body::Incoming>> for ConnectionService<C>
where
    C: Clone + Send + Sync + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = self.activity.call_started();
        let timeout = self.body_timeout;
        let mut request = request.map(|body| Body::new(BodyDeadline::new(body, timeout)));
        request.extensions_mut().insert(self.connect_info.clone());
        let client_deadline = grpc_timeout(request.headers());
        let call = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = match client_deadline {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(answer) => answer,
                    // What tonic's own server answers.
                    Err(_) => Ok(Status::cancelled("Timeout expired").into_http()),
                },
                None => call.await,
            };
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| {
                Body::new(ResponseBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// The client's deadline from a `grpc-timeout` header (`100m`, `5S`; at
/// most 8 digits), as the gRPC HTTP/2 protocol defines it; `None` when
/// absent or malformed.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request body that must arrive whole within a deadline; past it, it
/// fails with DEADLINE_EXCEEDED, which the handler reading it answers.
struct BodyDeadline<B> {
    inner: B,
    limit: Duration,
    /// `None` once the body has ended (or failed).
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl<B> BodyDeadline<B> {
    fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            expired: false,
        }
    }
}

impl<B> HttpBody for BodyDeadline<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = B::Data;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.deadline = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_trailers() || self.inner.is_end_stream() {
                    self.deadline = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.deadline = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let fired = match self.deadline.as_mut() {
                    Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if !fired {
                    return Poll::Pending;
                }
                self.deadline = None;
                self.expired = true;
                Poll::Ready(Some(Err(Box::new(Status::deadline_exceeded(format!(
                    "the request body did not arrive within {} of its headers; send the whole request at once",
                    humantime::format_duration(self.limit)
                ))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its call counted as in flight until hyper
/// has sent it all (or the peer reset the stream).
struct ResponseBody<B> {
    inner: B,
    _in_flight: CallInFlight,
}

impl<B: HttpBody + Unpin> HttpBody for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Rate-limits a repeating warning: the first is logged, then at most one
/// per period, saying how many were left out.
struct RepeatLog {
    period: Duration,
    last: Option<Instant>,
    left_out: u64,
}

impl RepeatLog {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            left_out: 0,
        }
    }

    /// Notes one occurrence; `Some(left out since the last)` when this one
    /// is to be logged.
    fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.period => {
                self.left_out += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.left_out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_parse_as_the_protocol_says() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().expect("header"));
            grpc_timeout(&h)
        };
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("-5S"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    /// The accept loop must not need the thread that drives [`run`]: that
    /// thread is berthd's main thread, in `block_on`, and waking it for
    /// every accept cost each new connection two cross-thread hand-offs.
    /// Here the driving thread stops polling after start-up and a client
    /// still gets its call answered.
    #[test]
    fn connections_are_served_while_the_thread_driving_the_server_is_blocked() {
        let data = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let options = crate::Options {
            data_dir: data.path().join("data"),
            config: None,
            security: crate::Security::DangerousPlaintext,
            limits: Default::default(),
            store: Default::default(),
        };
        let (controller, listener) = rt.block_on(async {
            let controller = crate::Controller::open_with(
                &options,
                None,
                &berth_drivers::DriverRegistry::with_builtin(),
            )
            .await
            .expect("controller");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            (controller, listener)
        });
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (blocked_tx, blocked_rx) = std::sync::mpsc::channel::<()>();
        let handle = rt.handle().clone();
        let driver = std::thread::spawn(move || {
            handle.block_on(async move {
                let serve = controller.run(listener, async {
                    let _ = stop_rx.await;
                });
                tokio::pin!(serve);
                // Start-up: the server polled for a while, then this thread
                // blocks without polling it until the client is done.
                let started =
                    tokio::time::timeout(Duration::from_millis(300), serve.as_mut()).await;
                if let Ok(ended) = started {
                    panic!("the server stopped on its own: {ended:?}");
                }
                let _ = blocked_tx.send(());
                let _ = release_rx.recv();
                serve.await.expect("server");
            });
        });
        blocked_rx.recv().expect("the server started");
        let answered = rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(5))
                .connect_lazy();
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            tokio::time::timeout(
                Duration::from_secs(5),
                health.check(tonic_health::pb::HealthCheckRequest::default()),
            )
            .await
        });
        let _ = release_tx.send(());
        let _ = stop_tx.send(());
        driver.join().expect("driver thread");
        let answer = answered.expect("no answer within 5 s while the driving thread was blocked");
        // Any gRPC answer (health is open, or refused without a token) shows
        // the connection was accepted and served; only a transport failure
        // would not.
        if let Err(status) = answer {
            assert_ne!(status.code(), tonic::Code::Unavailable, "{status}");
        }
    }

    #[test]
    fn a_repeating_warning_is_logged_once_per_period() {
        let mut log = RepeatLog::new(Duration::from_secs(3600));
        assert_eq!(log.hit(), Some(0));
        assert!((0..500).all(|_| log.hit().is_none()));
        log.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(log.hit(), Some(500));
    }
}
