//! Connection set-up, in one place: resolve, connect, (secure,) and hand the
//! stream to tonic.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long to wait for the controller to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the client could not talk to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the controller at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("cannot set up the gRPC channel to {host}: {source}")]
    Channel {
        host: String,
        source: tonic::transport::Error,
    },
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (is berthd running?)".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Opens a TCP connection to `host` (`HOST:PORT`), trying each address it
/// resolves to.
pub async fn dial(host: &str) -> Result<TcpStream, ConnectError> {
    let unreachable = |reason: String| ConnectError::Unreachable {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<_> = tokio::net::lookup_host(host)
        .await
        .map_err(|e| unreachable(format!("cannot resolve {host:?} ({e}); use HOST:PORT")))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(describe(&e)),
            Err(_) => last = Some(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())),
        }
    }
    Err(unreachable(last.unwrap_or_else(|| {
        "the name resolves to no address".into()
    })))
}

/// Builds a tonic channel over an already-established stream. The channel
/// does not reconnect: one command, one connection.
pub async fn channel_over<S>(host: &str, stream: S) -> Result<Channel, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let slot = Arc::new(Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_: Uri| {
        let taken = slot.lock().ok().and_then(|mut s| s.take());
        async move {
            taken.map(TokioIo::new).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "the connection was closed")
            })
        }
    });
    Endpoint::from_static("http://berth.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Channel {
            host: host.to_owned(),
            source,
        })
}
