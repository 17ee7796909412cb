//! Connection set-up, in one place: resolve, connect, secure, and hand the
//! stream to tonic. Every trust decision is an explicit [`ServerTrust`].

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pinning::{Fingerprint, Observed, PinSource, PinVerifier};

/// How long to wait for the controller to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the client decides whether the controller is the right one.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The root of the presented chain must have this fingerprint.
    Pinned {
        /// The pinned fingerprint.
        fingerprint: Fingerprint,
        /// Where the pin came from (named in errors).
        source: PinSource,
    },
    /// Standard WebPKI verification (chain and host name) against these CAs.
    Ca {
        /// The PEM bundle of trusted CAs.
        roots: PathBuf,
    },
    /// Nothing known yet: connect only to see what is presented, then refuse
    /// with [`ConnectError::Unknown`] so a person can decide.
    FirstContact,
    /// No TLS at all (`--plaintext`), for an `--insecure-plaintext`
    /// controller. Never chosen by the client on its own.
    DangerousPlaintext,
}

/// A client certificate and its key, presented for mutual TLS.
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// Why the client could not talk to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No TCP connection could be made (a caller may wait and retry).
    #[error("cannot reach the controller at {host}: {reason}")]
    Unreachable {
        /// The controller.
        host: String,
        /// Why, in words.
        reason: String,
    },
    /// First contact: nothing pins this controller yet.
    #[error("the controller at {host} is not trusted yet (fingerprint {observed})")]
    Unknown {
        /// The controller.
        host: String,
        /// The fingerprint of the CA it presented.
        observed: Fingerprint,
    },
    /// The controller presented another CA than the pinned one.
    #[error("the controller at {host} presented fingerprint {presented}, but {pin_source} pins {pinned}")]
    Changed {
        /// The controller.
        host: String,
        /// The pin.
        pinned: Fingerprint,
        /// What it presented.
        presented: Fingerprint,
        /// Where the pin came from.
        pin_source: PinSource,
    },
    /// The TLS handshake failed.
    #[error("TLS with the controller at {host} failed: {reason}")]
    Tls {
        /// The controller.
        host: String,
        /// Why, in words.
        reason: String,
    },
    /// The client's own TLS material (CA bundle, certificate, key) is unusable.
    #[error("{0}")]
    Setup(String),
    /// The gRPC channel could not be built over the connection.
    #[error("cannot set up the gRPC channel to {host}: {source}")]
    Channel {
        /// The controller.
        host: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

impl ConnectError {
    /// Whether this is a failure to reach the controller at all (refused,
    /// no answer, a handshake that broke off or never came), after which a
    /// client may try another controller of the same cluster. A trust
    /// problem ([`ConnectError::Unknown`], [`ConnectError::Changed`]) or the
    /// client's own material ([`ConnectError::Setup`]) is not: another
    /// controller would not change it, and a changed fingerprint must stop
    /// the client.
    pub fn is_connection_failure(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Channel { .. } => true,
            // A handshake that timed out or whose connection broke; not one
            // that refused a certificate or met a plaintext server.
            Self::Tls { reason, .. } => !["certificate", "alert", "--plaintext"]
                .iter()
                .any(|w| reason.contains(w)),
            Self::Unknown { .. } | Self::Changed { .. } | Self::Setup(_) => false,
        }
    }
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (is berthd running?)".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Opens a TCP connection to `host` (`HOST:PORT`), trying each address it
/// resolves to. While the controller refuses connections (it is still
/// starting), retries until `wait` has passed.
pub async fn dial(host: &str, wait: Duration) -> Result<TcpStream, ConnectError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match dial_once(host).await {
            Err(ConnectError::Unreachable { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn dial_once(host: &str) -> Result<TcpStream, ConnectError> {
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

/// The host part of `HOST:PORT` as a TLS server name.
fn server_name(host: &str) -> Result<ServerName<'static>, ConnectError> {
    let name = match host.rsplit_once(':') {
        Some((name, _port)) => name.trim_start_matches('[').trim_end_matches(']'),
        None => host,
    };
    ServerName::try_from(name.to_owned())
        .map_err(|_| ConnectError::Setup(format!("{name:?} is not a valid host name")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connects and secures a channel to `host`.
pub async fn connect(
    host: &str,
    trust: &ServerTrust,
    identity: Option<ClientIdentity>,
    wait: Duration,
) -> Result<Channel, ConnectError> {
    let tcp = dial(host, wait).await?;
    if let ServerTrust::DangerousPlaintext = trust {
        return channel_over(host, tcp).await;
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Setup(e.to_string()))?;
    let mut pin_verifier = None;
    let builder = match trust {
        ServerTrust::Ca { roots } => {
            let mut store = rustls::RootCertStore::empty();
            let certs = read_pem_certs(roots)?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ConnectError::Setup(format!(
                    "{} holds no usable CA certificate",
                    roots.display()
                )));
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| ConnectError::Setup(format!("CA {}: {e}", roots.display())))?;
            builder.with_webpki_verifier(verifier)
        }
        ServerTrust::Pinned { fingerprint, .. } => {
            let v = Arc::new(PinVerifier::pinned(*fingerprint, Arc::clone(&provider)));
            pin_verifier = Some(Arc::clone(&v));
            builder.dangerous().with_custom_certificate_verifier(v)
        }
        ServerTrust::FirstContact => {
            let v = Arc::new(PinVerifier::observe_only(Arc::clone(&provider)));
            pin_verifier = Some(Arc::clone(&v));
            builder.dangerous().with_custom_certificate_verifier(v)
        }
        ServerTrust::DangerousPlaintext => unreachable!("handled above"),
    };
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| {
                ConnectError::Setup(format!("the client certificate is not usable: {e}"))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        connector.connect(server_name(host)?, tcp),
    )
    .await;
    let tls_error = |reason: String| ConnectError::Tls {
        host: host.to_owned(),
        reason,
    };
    match handshake {
        Ok(Ok(stream)) => channel_over(host, stream).await,
        Err(_) => Err(tls_error(format!(
            "no handshake within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => {
            let observed = pin_verifier.as_ref().and_then(|v| v.observed());
            Err(match (trust, observed) {
                (ServerTrust::FirstContact, Some(Observed { root, .. })) => ConnectError::Unknown {
                    host: host.to_owned(),
                    observed: root,
                },
                (
                    ServerTrust::Pinned {
                        fingerprint,
                        source,
                    },
                    Some(Observed { root, .. }),
                ) if root != *fingerprint => ConnectError::Changed {
                    host: host.to_owned(),
                    pinned: *fingerprint,
                    presented: root,
                    pin_source: source.clone(),
                },
                _ => tls_error(explain_tls(&e)),
            })
        }
    }
}

fn explain_tls(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("CorruptMessage")
        || text.contains("InvalidContentType")
        || text.contains("received corrupt message")
    {
        format!("{text} (is the controller serving plaintext? then use --plaintext)")
    } else {
        text
    }
}

/// Reads a PEM file of certificates.
pub fn read_pem_certs(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConnectError::Setup(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ConnectError::Setup(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads a client certificate chain and key.
pub fn read_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<ClientIdentity, ConnectError> {
    use rustls::pki_types::pem::PemObject;
    let chain = read_pem_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ConnectError::Setup(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    Ok(ClientIdentity { chain, key })
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

/// What a failed call's transport error means, in words, or `None` when the
/// call failed for another reason (the controller answered with a status,
/// the deadline passed). tonic says only `transport error`; this looks at
/// the causes below it (an I/O error, a TLS alert, an HTTP/2 error) and, on
/// a plaintext channel, checks whether the controller speaks TLS.
pub async fn explain_transport(
    status: &tonic::Status,
    host: &str,
    plaintext: bool,
) -> Option<String> {
    let (over_tls, detail) = classify_transport(status, host)?;
    if !plaintext {
        return Some(over_tls);
    }
    if speaks_tls(host).await {
        return Some(format!(
            "the controller at {host} speaks TLS, not plaintext: drop --plaintext \
             (and `plaintext = true` in the client config entry, if there is one)"
        ));
    }
    Some(format!(
        "the connection to {host} failed ({detail}); is it a berthd started with \
         --insecure-plaintext?"
    ))
}

/// For a transport failure: its explanation on a TLS channel, and the
/// innermost cause as text.
fn classify_transport(status: &tonic::Status, host: &str) -> Option<(String, String)> {
    use std::error::Error as _;
    if crate::deadline::no_reply(status).is_some() {
        return None;
    }
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut cause = status.source();
    while let Some(e) = cause {
        chain.push(e);
        cause = e.source();
    }
    let transport = chain
        .iter()
        .any(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
    let closed = status.message() == "the connection was closed";
    if !transport && !closed {
        return None;
    }
    let detail = chain
        .last()
        .map(|e| e.to_string())
        .unwrap_or_else(|| status.message().to_owned());
    let alert = chain.iter().find_map(|e| {
        e.downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| e.downcast_ref::<rustls::Error>())
    });
    if let Some(alert) = alert {
        return Some((
            format!(
                "the controller at {host} ended the TLS session ({alert}): it refused this \
                 client's certificate (--cert/--key or `cert` in the client config: revoked, \
                 expired or not signed by its CA?)"
            ),
            detail,
        ));
    }
    let kind = chain
        .iter()
        .find_map(|e| e.downcast_ref::<io::Error>().map(io::Error::kind));
    let why = match kind {
        Some(io::ErrorKind::BrokenPipe)
        | Some(io::ErrorKind::ConnectionReset)
        | Some(io::ErrorKind::UnexpectedEof)
        | Some(io::ErrorKind::NotConnected) => "the controller closed the connection",
        Some(io::ErrorKind::TimedOut) => "the connection timed out",
        _ if closed => "the controller closed the connection",
        _ => "the connection failed",
    };
    Some((
        format!(
            "{why} to {host} ({detail}); it refuses a client certificate it does not accept \
             and connections past its limit right after the handshake, and its log says which"
        ),
        detail,
    ))
}

/// Whether `host` answers a TLS handshake (it presents a certificate).
/// Used only to explain a failed plaintext call.
pub async fn speaks_tls(host: &str) -> bool {
    let probe = connect(host, &ServerTrust::FirstContact, None, Duration::ZERO);
    matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, probe).await,
        Ok(Err(ConnectError::Unknown { .. }))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_to_reach_a_controller_fail_over() {
        let fp = Fingerprint::of(b"a CA");
        let tls = |reason: &str| ConnectError::Tls {
            host: "h:1".into(),
            reason: reason.into(),
        };
        assert!(ConnectError::Unreachable {
            host: "h:1".into(),
            reason: "connection refused".into()
        }
        .is_connection_failure());
        assert!(tls("no handshake within 10s").is_connection_failure());
        assert!(tls("Connection reset by peer (os error 104)").is_connection_failure());
        assert!(!tls("invalid peer certificate: UnknownIssuer").is_connection_failure());
        assert!(!tls("received fatal alert: BadCertificate").is_connection_failure());
        assert!(!ConnectError::Changed {
            host: "h:1".into(),
            pinned: fp,
            presented: Fingerprint::of(b"another CA"),
            pin_source: PinSource::Flag,
        }
        .is_connection_failure());
        assert!(!ConnectError::Unknown {
            host: "h:1".into(),
            observed: fp
        }
        .is_connection_failure());
        assert!(!ConnectError::Setup("bad key".into()).is_connection_failure());
    }

    /// A refused connection is reported as such, quickly: the client moves
    /// on to the next controller at once.
    #[tokio::test]
    async fn a_refused_connection_is_a_connection_failure_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let started = std::time::Instant::now();
        let err = connect(
            &format!("127.0.0.1:{port}"),
            &ServerTrust::FirstContact,
            None,
            Duration::ZERO,
        )
        .await
        .expect_err("nothing listens");
        assert!(err.is_connection_failure(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
