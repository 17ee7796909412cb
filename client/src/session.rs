//! A session with one controller: which controller (the target), whether to
//! trust it (the trust decision), who we are (bearer token or client
//! certificate), and the typed gRPC clients over one channel bounded by the
//! `--timeout` deadline.
//!
//! The `berth` binary, the node plugins and the tests all open sessions
//! here, so the trust decision and the credential plumbing exist once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::{ConfigError, ControllerEntry, Loaded};
use crate::connect::{self, ClientIdentity, ConnectError, ServerTrust};
use crate::deadline::Deadline;
use crate::pb;
use crate::pinning::{BadFingerprint, Fingerprint, PinSource, StoreError, TrustStore};
use crate::prompt;

/// The controller used when nothing else names one.
pub const DEFAULT_HOST: &str = "127.0.0.1:7979";

/// The port a controller listens on unless told otherwise, and the one a
/// `--host` without a port means.
pub const DEFAULT_PORT: u16 = 7979;

/// `HOST:PORT` for a host written with or without its port: `ctl` and
/// `127.0.0.1` get port 7979, a bare IPv6 address (`::1`) is bracketed
/// (`[::1]:7979`); a host with a port is left as it is.
pub fn with_default_port(host: &str) -> String {
    let host = host.trim();
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((_, "")) => format!("{host}:{DEFAULT_PORT}"),
            _ => host.to_owned(),
        };
    }
    match host.matches(':').count() {
        0 => format!("{host}:{DEFAULT_PORT}"),
        1 => host.to_owned(),
        _ => match host.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => format!("[{ip}]:{DEFAULT_PORT}"),
            Err(_) => host.to_owned(),
        },
    }
}

/// The socket addresses `HOST:PORT` resolves to (none when it does not).
fn socket_addrs(host: &str) -> Vec<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    host.to_socket_addrs()
        .map(|addrs| addrs.collect())
        .unwrap_or_default()
}

/// Whether two ways of writing a controller name the same one: equal once
/// the default port is added, or resolving to a common socket address
/// (`localhost:7979` and `127.0.0.1:7979`). A pin and a credential belong
/// to the controller, not to one of its names.
pub fn same_controller(a: &str, b: &str) -> bool {
    let (a, b) = (with_default_port(a), with_default_port(b));
    if a == b {
        return true;
    }
    let theirs = socket_addrs(&b);
    !theirs.is_empty() && socket_addrs(&a).iter().any(|addr| theirs.contains(addr))
}

/// Everything a caller says about how to reach the controller: the global
/// options of `berth`, and what a long-running plugin was started with.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// `HOST:PORT`; else the config's `host`, else [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// The client config file; else the default path.
    pub config: Option<PathBuf>,
    /// Pin this CA fingerprint (no prompt).
    pub fingerprint: Option<Fingerprint>,
    /// Verify with WebPKI against this CA bundle instead of pinning.
    pub ca: Option<PathBuf>,
    /// No TLS (for a controller started with `--insecure-plaintext`).
    pub plaintext: bool,
    /// Keep retrying an unreachable controller this long.
    pub wait: Duration,
    /// Bound on every call (`--timeout`); zero means none.
    pub timeout: Duration,
    /// A bearer token given directly.
    pub token: Option<String>,
    /// A file holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// Whether a first contact may ask a person on the terminal. Daemons
    /// set `false`: they refuse an unknown controller instead.
    pub may_prompt: bool,
}

/// Why a session could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client config file could not be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Connecting, TLS or the pin check failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The trust store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fingerprint in the client config is malformed.
    #[error("client config {path}, controller {host}: {source}")]
    BadPin {
        /// The config file.
        path: PathBuf,
        /// The controller entry.
        host: String,
        /// What is wrong with it.
        source: BadFingerprint,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token file holds nothing.
    #[error("the token file {0} is empty")]
    EmptyTokenFile(PathBuf),
    /// `--token` was given empty.
    #[error("--token (or BERTH_TOKEN) is empty")]
    EmptyToken,
    /// The token cannot be sent as an HTTP header value.
    #[error("the token holds characters that cannot be sent")]
    UnsendableToken,
    /// Only one of a certificate and its key was given.
    #[error("a client certificate needs both cert and key")]
    HalfIdentity,
    /// First contact where no person can be asked.
    #[error(
        "the controller at {host} is not trusted yet; it presents fingerprint {fingerprint}. \
         Check it on the controller with `berthd fingerprint`, then trust it with \
         `berth trust add {host} {fingerprint}` or preseed it with `fingerprint = \"{fingerprint}\"` under \
         [controllers.\"{host}\"] in the client config (or pass --fingerprint for one command)"
    )]
    NotTrusted {
        /// The controller.
        host: String,
        /// What it presented.
        fingerprint: Fingerprint,
    },
    /// The person at the prompt said no.
    #[error("the controller at {0} was not trusted; nothing was saved")]
    Declined(String),
    /// The pinned controller presented another fingerprint.
    #[error("refusing to talk to {host}: its fingerprint changed from {pinned} to {presented}")]
    Changed {
        /// The controller.
        host: String,
        /// The pin.
        pinned: Fingerprint,
        /// What it presented.
        presented: Fingerprint,
    },
    /// The terminal prompt failed.
    #[error("cannot ask whether to trust the controller: {0}")]
    Prompt(std::io::Error),
    /// The controller answered with an error.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// No `--service` and the caller may use none.
    #[error("the controller has no service you may use")]
    NoService,
    /// No `--service` and the caller may use several.
    #[error("the controller has several services ({0}): choose one with --service")]
    SeveralServices(String),
}

/// Which controller, and what the client config says about it.
pub struct Target {
    /// `HOST:PORT` of the controller.
    pub host: String,
    /// The client config as loaded (possibly empty).
    pub loaded: Loaded,
}

impl Target {
    /// The controller named by the options, else the config, else the default.
    pub fn resolve(opts: &SessionOptions) -> Result<Self, SessionError> {
        let loaded = Loaded::load(opts.config.as_deref())?;
        let host = opts
            .host
            .as_deref()
            .or(loaded.config.host.as_deref())
            .map(with_default_port)
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        Ok(Self { host, loaded })
    }

    /// The config's entry for this controller and the key it is under: the
    /// entry named exactly as the target, else one under another name of
    /// the same controller (see [`same_controller`]).
    pub fn entry(&self) -> Option<(String, ControllerEntry)> {
        let keys = &self.loaded.config.controllers;
        let key = if keys.contains_key(&self.host) {
            self.host.clone()
        } else {
            keys.keys()
                .find(|k| same_controller(k, &self.host))?
                .clone()
        };
        let entry = self.loaded.controller(&key)?;
        Some((key, entry))
    }

    /// The trust store's pin for this controller, under its name or another
    /// name of the same controller.
    pub fn stored_pin(
        &self,
        store: &TrustStore,
    ) -> Result<Option<(String, Fingerprint)>, SessionError> {
        if let Some(fp) = store.get(&self.host)? {
            return Ok(Some((self.host.clone(), fp)));
        }
        Ok(store
            .list()?
            .into_iter()
            .find(|(k, _)| same_controller(k, &self.host)))
    }

    /// The trust decision: options first, then the config file (preseeded,
    /// never prompts), then the trust store (opened only if needed).
    pub fn trust(&self, opts: &SessionOptions) -> Result<ServerTrust, SessionError> {
        if opts.plaintext {
            return Ok(ServerTrust::DangerousPlaintext);
        }
        if let Some(roots) = &opts.ca {
            return Ok(ServerTrust::Ca {
                roots: roots.clone(),
            });
        }
        if let Some(fingerprint) = opts.fingerprint {
            return Ok(ServerTrust::Pinned {
                fingerprint,
                source: PinSource::Flag,
            });
        }
        if let Some((_, entry)) = self.entry() {
            if entry.plaintext {
                return Ok(ServerTrust::DangerousPlaintext);
            }
            if let Some(roots) = entry.ca {
                return Ok(ServerTrust::Ca { roots });
            }
            if let Some(fp) = entry.fingerprint {
                let path = self.loaded.path.clone().unwrap_or_default();
                let fingerprint = fp.parse().map_err(|source| SessionError::BadPin {
                    path: path.clone(),
                    host: self.host.clone(),
                    source,
                })?;
                return Ok(ServerTrust::Pinned {
                    fingerprint,
                    source: PinSource::Config(path),
                });
            }
        }
        let store = TrustStore::open_default()?;
        Ok(match self.stored_pin(&store)?.map(|(_, fp)| fp) {
            Some(fingerprint) => ServerTrust::Pinned {
                fingerprint,
                source: PinSource::Store(store.path().to_owned()),
            },
            None => ServerTrust::FirstContact,
        })
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A bearer for this token (`None`: send no authorization header).
    pub fn new(token: Option<&str>) -> Result<Self, SessionError> {
        match token {
            Some(t) => Ok(Bearer(Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| SessionError::UnsendableToken)?,
            ))),
            None => Ok(Bearer(None)),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel every typed client of a session runs over.
pub type Authed = InterceptedService<Deadline<Channel>, Bearer>;

/// An open, trusted, authenticated connection to one controller.
#[derive(Clone)]
pub struct Session {
    host: String,
    channel: Deadline<Channel>,
    bearer: Bearer,
}

impl Session {
    /// Opens a session; with a `wait`, keeps trying (re-reading the config,
    /// which a starting controller may be writing) while it is unreachable.
    pub async fn open(opts: &SessionOptions) -> Result<Self, SessionError> {
        let deadline = Instant::now() + opts.wait;
        loop {
            match Self::open_once(opts).await {
                Err(SessionError::Connect(ConnectError::Unreachable { .. }))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn open_once(opts: &SessionOptions) -> Result<Self, SessionError> {
        let target = Target::resolve(opts)?;
        let host = target.host.as_str();
        let trust = target.trust(opts)?;
        let entry = target.entry().map(|(_, e)| e).unwrap_or_default();
        // Credentials in the options replace the config's entirely: a
        // --cert alone authenticates with the certificate alone.
        let from_flags = opts.token.is_some() || opts.token_file.is_some() || opts.cert.is_some();
        let token = match (&opts.token, &opts.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            (Some(_), _) => return Err(SessionError::EmptyToken),
            (None, Some(f)) => Some(read_token(f)?),
            (None, None) if from_flags => None,
            (None, None) => match (&entry.token, &entry.token_file) {
                (Some(t), _) => Some(t.trim().to_owned()),
                (None, Some(f)) => Some(read_token(f)?),
                (None, None) => None,
            },
        };
        let bearer = Bearer::new(token.as_deref())?;
        let (cert, key) = if from_flags {
            (opts.cert.as_ref(), opts.key.as_ref())
        } else {
            (entry.cert.as_ref(), entry.key.as_ref())
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(SessionError::HalfIdentity),
        };
        let id = || -> Result<Option<ClientIdentity>, SessionError> {
            Ok(identity
                .as_ref()
                .map(|(c, k)| connect::read_identity(c, k))
                .transpose()?)
        };
        let channel = match connect::connect(host, &trust, id()?, Duration::ZERO).await {
            Ok(channel) => channel,
            Err(ConnectError::Unknown { host, observed }) => {
                if !prompt::ask_to_trust(&host, observed, opts.may_prompt)? {
                    return Err(SessionError::Declined(host));
                }
                let store = TrustStore::open_default()?;
                store.add(&host, observed)?;
                let source = PinSource::Store(store.path().to_owned());
                drop(store);
                eprintln!("Saved the fingerprint of {host} in {source}.");
                let pinned = ServerTrust::Pinned {
                    fingerprint: observed,
                    source,
                };
                connect::connect(&host, &pinned, id()?, Duration::ZERO).await?
            }
            Err(ConnectError::Changed {
                host,
                pinned,
                presented,
                pin_source,
            }) => {
                eprintln!(
                    "{}",
                    prompt::changed_banner(&host, pinned, presented, &pin_source)
                );
                return Err(SessionError::Changed {
                    host,
                    pinned,
                    presented,
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            host: host.to_owned(),
            channel: Deadline::new(channel, host, opts.timeout)
                .plaintext(matches!(trust, ServerTrust::DangerousPlaintext)),
            bearer,
        })
    }

    /// `HOST:PORT` of the controller.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The service catalogue.
    pub fn catalog(&self) -> pb::service_catalog_client::ServiceCatalogClient<Authed> {
        pb::service_catalog_client::ServiceCatalogClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    /// Volumes.
    pub fn volumes(&self) -> pb::volumes_client::VolumesClient<Authed> {
        pb::volumes_client::VolumesClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    /// Snapshots.
    pub fn snapshots(&self) -> pb::snapshots_client::SnapshotsClient<Authed> {
        pb::snapshots_client::SnapshotsClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    /// Administration (tokens, certificates, the CA).
    pub fn admin(&self) -> pb::admin_client::AdminClient<Authed> {
        pb::admin_client::AdminClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// Every service the caller may use.
    pub async fn services(&self) -> Result<Vec<pb::Service>, SessionError> {
        Ok(self
            .catalog()
            .list_services(pb::ListServicesRequest {})
            .await?
            .into_inner()
            .services)
    }

    /// The service named, or the only service the caller may use.
    pub async fn service(&self, named: Option<&str>) -> Result<String, SessionError> {
        if let Some(s) = named {
            return Ok(s.to_owned());
        }
        let services = self.services().await?;
        match services.as_slice() {
            [only] => Ok(only.name.clone()),
            [] => Err(SessionError::NoService),
            several => Err(SessionError::SeveralServices(
                several
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }
}

/// Reads a token file: trimmed, and refused when empty.
pub fn read_token(path: &Path) -> Result<String, SessionError> {
    let text = std::fs::read_to_string(path).map_err(|source| SessionError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(SessionError::EmptyTokenFile(path.to_owned()));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_port_gets_7979() {
        assert_eq!(with_default_port("127.0.0.1"), "127.0.0.1:7979");
        assert_eq!(with_default_port("ctl.example"), "ctl.example:7979");
        assert_eq!(with_default_port("ctl.example:8000"), "ctl.example:8000");
        assert_eq!(with_default_port("::1"), "[::1]:7979");
        assert_eq!(with_default_port("[::1]"), "[::1]:7979");
        assert_eq!(with_default_port("[::1]:8000"), "[::1]:8000");
    }

    #[test]
    fn names_of_one_controller_are_the_same_controller() {
        assert!(same_controller("127.0.0.1", "127.0.0.1:7979"));
        assert!(same_controller("localhost:7979", "127.0.0.1:7979"));
        assert!(!same_controller("localhost:7979", "127.0.0.1:7980"));
        assert!(!same_controller("127.0.0.2:7979", "127.0.0.1:7979"));
    }
}
