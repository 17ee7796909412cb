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

/// The controllers a `--host` value names: one `HOST[:PORT]`, or several
/// of one cluster separated by commas (`a:7979,b:7979`), each with the
/// default port added when it has none. Refused: an empty name in the list.
pub fn host_list(text: &str) -> Result<Vec<String>, SessionError> {
    let mut hosts: Vec<String> = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(SessionError::BadHosts(format!(
                "--host {text:?} holds an empty name; write HOST[:PORT] or a comma-separated \
                 list of them, as ctl-a:7979,ctl-b:7979"
            )));
        }
        let host = with_default_port(part);
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// Everything a caller says about how to reach the controller: the global
/// options of `berth`, and what a long-running plugin was started with.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// `HOST:PORT`, or a comma-separated list of the controllers of one
    /// cluster (tried in order; see [`host_list`]); else the config's
    /// `hosts` or `host`, else [`DEFAULT_HOST`].
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
    /// The list of controllers (`--host`, `hosts`) is malformed.
    #[error("{0}")]
    BadHosts(String),
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

/// Which controller (or controllers of one cluster), and what the client
/// config says about them.
pub struct Target {
    /// `HOST:PORT` of the controller (the first of [`Target::hosts`]).
    pub host: String,
    /// Every controller named, in the order they are tried; a connection
    /// error on one fails over to the next. One pin covers them all.
    pub hosts: Vec<String>,
    /// The client config as loaded (possibly empty).
    pub loaded: Loaded,
}

impl Target {
    /// The controllers named by the options, else the config (`hosts` or
    /// `host`), else the default.
    pub fn resolve(opts: &SessionOptions) -> Result<Self, SessionError> {
        let loaded = Loaded::load(opts.config.as_deref())?;
        let config = &loaded.config;
        let hosts = match (&opts.host, &config.host, config.hosts.as_slice()) {
            (Some(flag), _, _) => host_list(flag)?,
            (None, Some(_), [_, ..]) => {
                return Err(SessionError::BadHosts(format!(
                    "client config {}: both `host` and `hosts` are set; keep one (`hosts` \
                     lists the controllers of one cluster, `host` names one)",
                    loaded.path.as_deref().unwrap_or(Path::new("")).display()
                )))
            }
            (None, None, [_, ..]) => host_list(&config.hosts.join(",")).map_err(|_| {
                SessionError::BadHosts(format!(
                    "client config {}: `hosts` holds an empty name; list HOST[:PORT] strings, \
                     as hosts = [\"ctl-a:7979\", \"ctl-b:7979\"]",
                    loaded.path.as_deref().unwrap_or(Path::new("")).display()
                ))
            })?,
            (None, Some(one), []) => vec![with_default_port(one)],
            (None, None, []) => vec![DEFAULT_HOST.to_owned()],
        };
        let host = hosts
            .first()
            .cloned()
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        Ok(Self {
            host,
            hosts,
            loaded,
        })
    }

    /// The config's entry for this controller and the key it is under (see
    /// [`Target::entry_for`]).
    pub fn entry(&self) -> Option<(String, ControllerEntry)> {
        self.entry_for(&self.host)
    }

    /// The config's entry for `host` and the key it is under: the entry
    /// named exactly as `host`, else one under another name of the same
    /// controller (see [`same_controller`]), else the entry of another
    /// controller of the target's list (they are one cluster).
    pub fn entry_for(&self, host: &str) -> Option<(String, ControllerEntry)> {
        let keys = &self.loaded.config.controllers;
        let named = |h: &str| {
            if keys.contains_key(h) {
                Some(h.to_owned())
            } else {
                keys.keys().find(|k| same_controller(k, h)).cloned()
            }
        };
        let key = std::iter::once(host)
            .chain(self.hosts.iter().map(String::as_str))
            .find_map(named)?;
        let entry = self.loaded.controller(&key)?;
        Some((key, entry))
    }

    /// The trust store's pin for this controller, under its name or another
    /// name of the same controller, else under another controller of the
    /// target's list.
    pub fn stored_pin(
        &self,
        store: &TrustStore,
    ) -> Result<Option<(String, Fingerprint)>, SessionError> {
        self.stored_pin_for(&self.host, store)
    }

    /// [`Target::stored_pin`] for `host`, one of the target's controllers.
    pub fn stored_pin_for(
        &self,
        host: &str,
        store: &TrustStore,
    ) -> Result<Option<(String, Fingerprint)>, SessionError> {
        let mut all: Option<Vec<(String, Fingerprint)>> = None;
        for h in std::iter::once(host).chain(self.hosts.iter().map(String::as_str)) {
            if let Some(fp) = store.get(h)? {
                return Ok(Some((h.to_owned(), fp)));
            }
            if all.is_none() {
                all = Some(store.list()?);
            }
            if let Some(found) = all
                .iter()
                .flatten()
                .find(|(k, _)| same_controller(k, h))
                .cloned()
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The trust decision for this controller (see [`Target::trust_for`]).
    pub fn trust(&self, opts: &SessionOptions) -> Result<ServerTrust, SessionError> {
        self.trust_for(&self.host, opts)
    }

    /// The trust decision for `host`, one of the target's controllers:
    /// options first, then the config file (preseeded, never prompts),
    /// then the trust store (opened only if needed). A pin of any
    /// controller of the list covers them all: they serve certificates of
    /// one CA.
    pub fn trust_for(
        &self,
        host: &str,
        opts: &SessionOptions,
    ) -> Result<ServerTrust, SessionError> {
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
        if let Some((key, entry)) = self.entry_for(host) {
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
                    host: key,
                    source,
                })?;
                return Ok(ServerTrust::Pinned {
                    fingerprint,
                    source: PinSource::Config(path),
                });
            }
        }
        let store = TrustStore::open_default()?;
        Ok(match self.stored_pin_for(host, &store)?.map(|(_, fp)| fp) {
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

    /// One round over the target's controllers, in order: the first that
    /// can be reached, secured and trusted gets the session. A connection
    /// error (refused, no answer, a failed handshake) moves on to the next;
    /// anything else (a changed fingerprint, a declined prompt, unusable
    /// credentials) ends the round there. With a `--timeout`, the round
    /// stays within it: each controller gets an equal share of what is
    /// left.
    async fn open_once(opts: &SessionOptions) -> Result<Self, SessionError> {
        let target = Target::resolve(opts)?;
        let started = Instant::now();
        let mut failures: Vec<String> = Vec::new();
        let mut last = None;
        for (i, host) in target.hosts.iter().enumerate() {
            let budget = if opts.timeout.is_zero() {
                None
            } else {
                let left = opts.timeout.saturating_sub(started.elapsed());
                let hosts_left = u32::try_from(target.hosts.len() - i).unwrap_or(u32::MAX);
                Some(left / hosts_left.max(1))
            };
            match Self::open_host(&target, host, opts, budget).await {
                Err(SessionError::Connect(e)) if e.is_connection_failure() => {
                    if let Some(next) = target.hosts.get(i + 1) {
                        eprintln!("note: {e}; trying {next}");
                    }
                    failures.push(e.to_string());
                    last = Some(e);
                }
                other => return other,
            }
        }
        match (target.hosts.len(), last) {
            (1, Some(e)) => Err(e.into()),
            (_, _) => Err(ConnectError::Unreachable {
                host: target.hosts.join(","),
                reason: format!(
                    "no controller of the list answered: {}",
                    failures.join("; ")
                ),
            }
            .into()),
        }
    }

    /// Opens a session with `host`, one of `target`'s controllers, giving
    /// up on connecting after `budget`.
    async fn open_host(
        target: &Target,
        host: &str,
        opts: &SessionOptions,
        budget: Option<Duration>,
    ) -> Result<Self, SessionError> {
        let trust = target.trust_for(host, opts)?;
        let entry = target.entry_for(host).map(|(_, e)| e).unwrap_or_default();
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
        let connect = connect::connect(host, &trust, id()?, Duration::ZERO);
        let connected = match budget {
            None => connect.await,
            Some(budget) => match tokio::time::timeout(budget, connect).await {
                Ok(connected) => connected,
                Err(_) => Err(ConnectError::Unreachable {
                    host: host.to_owned(),
                    reason: format!(
                        "no connection within {} (its share of --timeout)",
                        crate::deadline::HumanDuration(budget)
                    ),
                }),
            },
        };
        let channel = match connected {
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

    #[test]
    fn a_host_list_names_each_controller_once_with_its_port() {
        assert_eq!(
            host_list("a, b:8000 ,a:7979,[::1]").expect("list"),
            ["a:7979", "b:8000", "[::1]:7979"]
        );
        assert_eq!(host_list("ctl").expect("one"), ["ctl:7979"]);
        for bad in ["", "a,,b", "a,", " , "] {
            let err = host_list(bad).expect_err(bad).to_string();
            assert!(err.contains("empty name"), "{bad:?}: {err}");
        }
    }

    fn target_with(config: &str, host: Option<&str>) -> Result<Target, SessionError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("write config");
        Target::resolve(&SessionOptions {
            host: host.map(str::to_owned),
            config: Some(path),
            ..SessionOptions::default()
        })
    }

    #[test]
    fn the_config_names_a_cluster_with_hosts_and_the_flag_wins() {
        let config = "hosts = [\"ctl-a\", \"ctl-b:8000\"]\n";
        let t = target_with(config, None).expect("target");
        assert_eq!(t.hosts, ["ctl-a:7979", "ctl-b:8000"]);
        assert_eq!(t.host, "ctl-a:7979");
        let t = target_with(config, Some("x,y")).expect("target");
        assert_eq!(t.hosts, ["x:7979", "y:7979"]);
        // `host` alone still works.
        let t = target_with("host = \"one\"\n", None).expect("target");
        assert_eq!(t.hosts, ["one:7979"]);
        // Both at once is ambiguous; an empty name is refused.
        let err = target_with("host = \"one\"\nhosts = [\"two\"]\n", None)
            .err()
            .expect("both refused")
            .to_string();
        assert!(err.contains("both `host` and `hosts`"), "{err}");
        let err = target_with("hosts = [\"a\", \"\"]\n", None)
            .err()
            .expect("empty refused")
            .to_string();
        assert!(err.contains("empty name"), "{err}");
    }

    #[test]
    fn a_controller_of_the_list_uses_its_own_entry_else_the_clusters() {
        let config = "hosts = [\"ctl-a\", \"ctl-b\", \"ctl-c\"]\n\
            [controllers.\"ctl-a:7979\"]\nfingerprint = \"sha256:00\"\ntoken = \"for-a\"\n\
            [controllers.\"ctl-c:7979\"]\ntoken = \"for-c\"\n";
        let t = target_with(config, None).expect("target");
        let token = |h: &str| t.entry_for(h).and_then(|(_, e)| e.token);
        assert_eq!(token("ctl-a:7979").as_deref(), Some("for-a"));
        assert_eq!(token("ctl-c:7979").as_deref(), Some("for-c"));
        // ctl-b has no entry: the cluster's (the first of the list's) serves.
        assert_eq!(
            t.entry_for("ctl-b:7979").map(|(k, _)| k).as_deref(),
            Some("ctl-a:7979")
        );
        // A host outside every list and entry has nothing.
        let t = target_with("host = \"solo\"\n", None).expect("target");
        assert!(t.entry_for("solo:7979").is_none());
    }

    #[test]
    fn one_pin_in_the_config_covers_every_controller_of_the_list() {
        let fp = "AB".repeat(32);
        let config = format!(
            "hosts = [\"ctl-a\", \"ctl-b\"]\n[controllers.\"ctl-b:7979\"]\nfingerprint = \"{fp}\"\n"
        );
        let t = target_with(&config, None).expect("target");
        let expected: Fingerprint = fp.parse().expect("fingerprint");
        for host in ["ctl-a:7979", "ctl-b:7979"] {
            match t.trust_for(host, &SessionOptions::default()) {
                Ok(ServerTrust::Pinned { fingerprint, .. }) => assert_eq!(fingerprint, expected),
                other => panic!("{host}: {other:?}"),
            }
        }
    }
}
