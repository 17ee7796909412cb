//! `berth-controller`: the Berth controller (`berthd`) as a library.
//!
//! `berthd` is a thin `main` over [`Controller`]; tests and custom controller
//! binaries embed it the same way and may register extra drivers in the
//! [`berth_drivers::DriverRegistry`] they pass in.
//!
//! Where things live:
//!
//! | module | what it is |
//! | --- | --- |
//! | [`config`] | the TOML configuration file and its services |
//! | [`catalog`] | configured services bound to built drivers |
//! | [`store`] | durable volume records and operation intents (sled) |
//! | [`locks`] | per-volume serialisation |
//! | [`volumes`] | volume operations: idempotency, crash safety |
//! | [`api`] | the gRPC services and error codes |
//! | [`pipeline`] | the layer every request passes (logging, authentication) |
//! | [`server`] | serving the router on a listener until shutdown |
//! | [`paths`] | the data directory and what lives in it |

pub mod api;
pub mod catalog;
pub mod config;
pub mod locks;
pub mod paths;
pub mod pipeline;
pub mod server;
pub mod store;
pub mod volumes;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use berth_drivers::DriverRegistry;
use tokio::net::TcpListener;

use crate::catalog::Catalog;
use crate::config::{ConfigFile, ServiceConfig};
use crate::store::Store;
use crate::volumes::Volumes;

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
}

/// A controller ready to serve: store open, drivers built, interrupted
/// operations reconciled.
pub struct Controller {
    volumes: Arc<Volumes>,
    config: Option<ConfigFile>,
}

impl Controller {
    /// Opens the data directory and builds every configured service.
    pub async fn open(options: &Options, registry: &DriverRegistry) -> anyhow::Result<Self> {
        let layout = paths::DataDir::create(&options.data_dir)?;
        let (config, services, source) = match &options.config {
            Some(path) => {
                let file = ConfigFile::load(path)?;
                let services = file.services.clone();
                (Some(file), services, path.clone())
            }
            None => (
                None,
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
        let catalog = Arc::new(Catalog::build(registry, &services, &source)?);
        let store = Store::open(&layout.db())?;
        let volumes = Arc::new(Volumes::new(catalog, store));
        volumes.reconcile().await?;
        Ok(Self { volumes, config })
    }

    /// The listen address the configuration file asks for, if any.
    pub fn configured_listen(&self) -> Option<&str> {
        self.config.as_ref().and_then(|c| c.listen.as_deref())
    }

    /// Serves on `listener` until `shutdown`, then flushes the store.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        server::run(listener, Arc::clone(&self.volumes), shutdown).await?;
        self.volumes.flush().await?;
        Ok(())
    }
}
