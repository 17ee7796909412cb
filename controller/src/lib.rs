//! `berth-controller`: the Berth controller (`berthd`) as a library.
//!
//! `berthd` is a thin `main` over [`Controller`]; tests and custom controller
//! binaries embed it the same way and may register extra drivers in the
//! [`berth_drivers::DriverRegistry`] they pass in.
//!
//! Where things live, by layer (each room's `mod.rs` says more):
//!
//! | module | what it is |
//! | --- | --- |
//! | [`cli`] | the `berthd` command line, reusable by custom controllers |
//! | [`config`] | the TOML configuration file and its services |
//! | [`paths`] | the data directory, every file name in it, the private-path rule |
//! | [`fsio`] | the one private/atomic file writer |
//! | [`profile`] | the ready-made client profile written at start |
//! | [`metrics`] | Prometheus metrics: the instruments, the `--metrics-listen` listener, process metrics |
//! | [`logging`] | the log format (`--log-format text\|json`), colour only on a terminal |
//! | [`rpc`] | the gRPC face: server, pipeline, the authorising [`rpc::call::Gate`], one error-to-status table, the services |
//! | [`rpc::server`] | serving the router on a listener: connections, TLS handshakes, shutdown |
//! | [`rpc::limits`] | connection and stream limits: defaults, settings, resolution |
//! | [`rpc::pipeline`] | the layer every request passes (authentication, logging) |
//! | [`rpc::call`] | handlers get authorised calls; the method comes from the route |
//! | [`rpc::status`] | every error to its gRPC status, in one place |
//! | [`rpc::progress`] | server-streaming progress of copies, snapshots and restores |
//! | [`rpc::volumes`], [`rpc::snapshots`], [`rpc::admin`] | the gRPC services |
//! | [`auth`] | who is calling and what they may do |
//! | [`auth::identity`] | the leaf types: `Identity`, `Role`, `Scope`, `Via` |
//! | [`auth::authn`] | authentication from a token and/or a client certificate |
//! | [`auth::authz`] | per-service authorisation, allow and deny lists, audit log |
//! | [`auth::credentials`] | tokens and client certificates: issue, verify, revoke |
//! | [`auth::registry`] | the credential registry seam: the `Registry` trait, sled implementation |
//! | `auth::etcd_registry` | the credential registry in etcd, with its watch (feature `etcd`) |
//! | [`join`] | `berthd join`: a new controller takes the cluster's CA and signing keys |
//! | [`auth::subject`] | subject names: what is refused, normal form, display |
//! | [`tls`] | the controller's TLS identity |
//! | [`tls::ca`] | the CA and the certificates it issues |
//! | [`tls::live`] | the live TLS configuration: reload, renewal |
//! | [`tls::x509`], [`tls::names`], [`tls::crypto`] | reading certificates, the SAN policy, the one crypto provider |
//! | [`volumes`] | volume operations: validation, idempotency, locking |
//! | [`volumes::journal`] | the journaled operation: crash safety in one place |
//! | [`volumes::records`] | the record store seam: the `Records` trait, locks and fenced writes |
//! | [`volumes::backend`] | choosing the store: sled (default) or etcd (`--store`, feature `etcd`) |
//! | [`volumes::shared_storage`] | whether a driver's storage is shared between controllers (the local-`vfs`-root warning) |
//! | [`volumes::store`] | durable records and intents (sled) |
//! | [`volumes::encoding`] | the stored form of records and intents (binary; earlier releases' JSON read), for every store |
//! | [`volumes::catalog`] | configured services bound to built drivers |
//! | [`volumes::locks`] | per-volume serialisation |
//! | [`hosted`] | drivers served by another process, put behind Berth |
//! | [`hosted::csi`] | the `csi` driver: any CSI plugin on a unix socket |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod fsio;
pub mod hosted;
pub mod join;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod profile;
pub mod rpc;
pub mod tls;
pub mod volumes;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use berth_drivers::DriverRegistry;
use tokio::net::TcpListener;

use crate::config::{ConfigFile, ServiceConfig};
use crate::volumes::catalog::Catalog;
use crate::volumes::store::Store;
use crate::volumes::Volumes;

/// The longest a graceful shutdown waits for in-flight calls.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7979";

/// How to start a controller.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data directory (records, TLS identity, default volumes).
    pub data_dir: PathBuf,
    /// A configuration file declaring services; `None` for the default
    /// `local` service of driver `vfs` under `<data-dir>/volumes`.
    pub config: Option<PathBuf>,
    /// How connections are secured.
    pub security: Security,
    /// Connection and stream limits given on the command line; they win
    /// over the config file's `[limits]`, which wins over the defaults.
    pub limits: rpc::limits::LimitSettings,
    /// The record store given on the command line (`--store`, `--etcd-*`);
    /// they win over the config file's `store` and `[etcd]`. Default: sled.
    pub store: volumes::backend::StoreArgs,
}

/// The transport security the operator chose.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS (the default): the identity source, version floor and extra
    /// client CAs. The TLS directory is always `<data-dir>/tls`.
    Tls {
        /// Where the server certificate comes from.
        source: tls::live::IdentitySource,
        /// The lowest TLS version accepted.
        min_version: tls::live::MinVersion,
        /// Extra CA bundles trusted for client certificates.
        client_cas: Vec<PathBuf>,
    },
    /// `--insecure-plaintext`: no encryption and no server identity.
    DangerousPlaintext,
}

impl Default for Security {
    fn default() -> Self {
        Self::Tls {
            source: tls::live::IdentitySource::Generated { sans: vec![] },
            min_version: tls::live::MinVersion::Tls12,
            client_cas: vec![],
        }
    }
}

/// A controller ready to serve: store open, drivers built, interrupted
/// operations reconciled.
pub struct Controller {
    volumes: Arc<Volumes>,
    config: Option<ConfigFile>,
    layout: paths::DataDir,
    ca: Arc<tls::ca::Ca>,
    transport: rpc::server::Transport,
    credentials: Arc<auth::credentials::Credentials>,
    admin_token: PathBuf,
    limits: rpc::limits::Limits,
    /// Held while the controller exists: no second one on this data directory.
    _lock: paths::DataDirLock,
}

impl Controller {
    /// Opens the data directory and builds every configured service.
    pub async fn open(options: &Options, registry: &DriverRegistry) -> anyhow::Result<Self> {
        let config = options
            .config
            .as_deref()
            .map(ConfigFile::load)
            .transpose()?;
        Self::open_with(options, config, registry).await
    }

    /// [`Controller::open`] with the configuration file already loaded
    /// (`berthd` loads it first, to bind the address it names before
    /// anything is created). Nothing is written before the configuration is
    /// known good and the existing data directory has passed its checks;
    /// the CA and keys come after the services are built.
    pub async fn open_with(
        options: &Options,
        config: Option<ConfigFile>,
        registry: &DriverRegistry,
    ) -> anyhow::Result<Self> {
        paths::DataDir::check(&options.data_dir)?;
        let layout = paths::DataDir::existing(&options.data_dir);
        let (services, source) = match &config {
            Some(file) => (
                file.services.clone(),
                options
                    .config
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("<configuration>")),
            ),
            None => (
                vec![ServiceConfig {
                    name: "local".into(),
                    driver: berth_drivers::vfs::DRIVER_NAME.into(),
                    options: [(
                        "root".to_owned(),
                        toml::Value::String(layout.volumes().display().to_string()),
                    )]
                    .into(),
                    allow: vec![],
                    deny: vec![],
                }],
                PathBuf::from("<built-in defaults>"),
            ),
        };
        // The flags alone first, so a bad value is blamed on where it is.
        let open_files = rpc::limits::open_file_limit();
        options.limits.resolve(open_files)?;
        let limits = match &config {
            Some(file) => options
                .limits
                .or(&file.limits)
                .resolve(open_files)
                .map_err(|e| anyhow::anyhow!("config file {}: [limits] {e}", source.display()))?,
            None => options.limits.resolve(open_files)?,
        };
        let records = options
            .store
            .resolve(
                config.as_ref().and_then(|c| c.store.as_deref()),
                config.as_ref().map(|c| &c.etcd),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut registry = registry.clone();
        hosted::register(&mut registry);
        let catalog = Arc::new(Catalog::build(&registry, &services, &source)?);
        if let volumes::backend::StoreChoice::Etcd { .. } = records {
            volumes::shared_storage::warn_local_vfs_roots(&services);
        }
        let layout = paths::DataDir::create(layout.root())?;
        // One controller per data directory, before anything in it changes.
        let lock = paths::DataDirLock::acquire(layout.root())?;
        let ca = Arc::new(tls::ca::Ca::load_or_create(&layout.tls())?);
        let transport = match &options.security {
            Security::Tls {
                source,
                min_version,
                client_cas,
            } => rpc::server::Transport::Tls(Arc::new(tls::live::Tls::load(
                tls::live::TlsOptions {
                    dir: layout.tls(),
                    source: source.clone(),
                    min_version: *min_version,
                    client_cas: client_cas.clone(),
                },
                &ca,
            )?)),
            Security::DangerousPlaintext => rpc::server::Transport::DangerousPlaintext,
        };
        let store = Store::open(&layout.db())?;
        store.on_flush(Arc::new(|stats| metrics::global().flushed(stats)));
        let opened = records.open(&store).await?;
        let credentials = Arc::new(auth::credentials::Credentials::open_with(
            &layout.auth(),
            opened.registry,
            Arc::clone(&ca),
        )?);
        credentials.start().await?;
        let admin_token = credentials.ensure_admin_token().await?;
        credentials.flush().await?;
        store.flush().await?;
        let volumes = Arc::new(Volumes::with_records(catalog, opened.records));
        volumes.reconcile().await?;
        Ok(Self {
            volumes,
            config,
            layout,
            ca,
            transport,
            credentials,
            admin_token,
            limits,
            _lock: lock,
        })
    }

    /// The listen address the configuration file asks for, if any.
    pub fn configured_listen(&self) -> Option<&str> {
        self.config.as_ref().and_then(|c| c.listen.as_deref())
    }

    /// The fingerprint clients pin, or `None` when serving plaintext.
    pub fn fingerprint(&self) -> Option<String> {
        match &self.transport {
            rpc::server::Transport::Tls(tls) => Some(tls.presented().root_fingerprint.clone()),
            rpc::server::Transport::DangerousPlaintext => None,
        }
    }

    /// The bootstrap admin token file.
    pub fn admin_token_file(&self) -> &std::path::Path {
        &self.admin_token
    }

    /// The data directory.
    pub fn data_dir(&self) -> &paths::DataDir {
        &self.layout
    }

    /// What the metrics listener reads at each scrape.
    pub fn metrics_source(&self) -> metrics::serve::Source {
        metrics::serve::Source {
            volumes: Arc::clone(&self.volumes),
            tls: match &self.transport {
                rpc::server::Transport::Tls(tls) => Some(Arc::clone(tls)),
                rpc::server::Transport::DangerousPlaintext => None,
            },
            ca_not_after: tls::x509::validity(&self.ca.cert_der).map(|(_, na)| na),
        }
    }

    /// Serves on `listener` until `shutdown`, then flushes the store.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let local = listener.local_addr()?;
        let maintenance = match &self.transport {
            rpc::server::Transport::Tls(tls) => {
                tracing::info!(fingerprint = %tls.presented().root_fingerprint,
                    "serving TLS; clients pin this fingerprint (also: berthd fingerprint)");
                let maintenance =
                    tls::live::spawn_maintenance(Arc::clone(tls), Arc::clone(&self.ca));
                let expiry = tls::expiry::spawn_warnings(Arc::clone(tls), Arc::clone(&self.ca));
                Some((maintenance, expiry))
            }
            rpc::server::Transport::DangerousPlaintext => {
                if local.ip().is_loopback() {
                    tracing::warn!(address = %local, "--insecure-plaintext: serving WITHOUT TLS; traffic is readable and the controller cannot be authenticated");
                } else {
                    tracing::error!(address = %local, "--insecure-plaintext on a NON-LOOPBACK address: anyone on the network can read and alter this traffic; use TLS");
                }
                None
            }
        };
        // With several controllers on one store, a dead one's unfinished
        // operations are settled here, without anyone restarting anything.
        let settler = self.volumes.spawn_orphan_settler();
        let authz = auth::Authorizer::new(Arc::clone(self.volumes.catalog_arc()));
        let services = rpc::server::Services {
            api: rpc::volumes::Api::new(Arc::clone(&self.volumes), authz.clone()),
            admin: rpc::admin::AdminApi::new(
                Arc::clone(&self.credentials),
                authz,
                match &self.transport {
                    rpc::server::Transport::Tls(tls) => Some(Arc::clone(tls)),
                    rpc::server::Transport::DangerousPlaintext => None,
                },
            ),
            auth: Arc::new(auth::Authenticator::new(Arc::clone(&self.credentials))),
        };
        // Graceful: stop accepting, let in-flight calls finish, but never
        // wait longer than SHUTDOWN_GRACE after the signal.
        let (fired_tx, mut fired) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = fired_tx.send(true);
        };
        let limits = self.limits;
        tracing::info!(
            max_connections = limits.max_connections,
            max_concurrent_streams = limits.max_concurrent_streams,
            idle_timeout = %humantime::format_duration(limits.idle_timeout),
            keepalive_interval = %humantime::format_duration(limits.keepalive_interval),
            keepalive_timeout = %humantime::format_duration(limits.keepalive_timeout),
            request_body_timeout = %humantime::format_duration(limits.request_body_timeout),
            "connection limits"
        );
        // Comparing the records with the drivers grows with the number of
        // volumes and only warns, so it runs while the controller serves.
        let drift = tokio::spawn({
            let volumes = Arc::clone(&self.volumes);
            async move { volumes.report_drift().await }
        });
        let serve = rpc::server::run(listener, self.transport.clone(), services, limits, shutdown);
        let result = tokio::select! {
            r = serve => r,
            _ = async {
                let _ = fired.wait_for(|f| *f).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("calls still running {} s after the shutdown signal; stopping anyway", SHUTDOWN_GRACE.as_secs());
                Ok(())
            }
        };
        drift.abort();
        if let Some((maintenance, expiry)) = maintenance {
            maintenance.abort();
            expiry.abort();
        }
        if let Some(settler) = settler {
            settler.abort();
        }
        result?;
        self.volumes.flush().await?;
        Ok(())
    }
}
