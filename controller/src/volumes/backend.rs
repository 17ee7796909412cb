//! Choosing the record store: sled (embedded, the default) or etcd
//! (`--store etcd://HOST:PORT[,HOST:PORT...]`, cargo feature `etcd`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::registry::{Registry, SledRegistry};
use crate::volumes::records::Records;
use crate::volumes::store::Store;

/// The stores a controller works on: volume records and the credential
/// registry, both in sled or both in etcd.
pub struct Opened {
    /// Volume and snapshot records, intents, attachments.
    pub records: Arc<dyn Records>,
    /// Issued tokens and client certificates, revocations.
    pub registry: Arc<dyn Registry>,
}

/// The default key prefix in etcd.
pub const DEFAULT_ETCD_PREFIX: &str = "/berth";
/// The default TTL of a controller's etcd lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The default bound on one etcd call.
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(2);
/// The default bound on waiting for a lock another operation holds.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);

/// The `[etcd]` table of the configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The key prefix (`--etcd-prefix`).
    pub prefix: Option<String>,
    /// The lease TTL, as `10s` (`--etcd-lease-ttl`).
    pub lease_ttl: Option<String>,
    /// The bound on one call, as `2s` (`--etcd-timeout`).
    pub timeout: Option<String>,
    /// A CA bundle for TLS to etcd (not implemented yet: refused).
    pub ca: Option<PathBuf>,
    /// A client certificate for TLS to etcd (not implemented yet: refused).
    pub cert: Option<PathBuf>,
    /// The client certificate's key (not implemented yet: refused).
    pub key: Option<PathBuf>,
    /// An etcd user name (not implemented yet: refused).
    pub user: Option<String>,
}

/// The record-store flags of `berthd` (each also a config-file key; a flag
/// wins).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// Where volume records live: `sled` (embedded, default) or
    /// `etcd://HOST:PORT[,HOST:PORT...]` (config key `store`).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Key prefix in etcd [default: /berth] (config `[etcd] prefix`).
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// TTL of this controller's etcd lease [default: 10s] (config `[etcd] lease_ttl`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub etcd_lease_ttl: Option<Duration>,
    /// The longest one etcd call may take [default: 2s] (config `[etcd] timeout`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub etcd_timeout: Option<Duration>,
    /// CA bundle for TLS to etcd (not implemented yet).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for TLS to etcd (not implemented yet).
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Key of --etcd-cert (not implemented yet).
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name (not implemented yet).
    #[arg(long, value_name = "USER")]
    pub etcd_user: Option<String>,
}

/// Why the store settings are refused.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A setting is malformed or not supported.
    #[error("{0}")]
    Invalid(String),
    /// The store cannot be reached or opened.
    #[error(transparent)]
    Store(#[from] crate::volumes::store::StoreError),
}

/// The record store chosen, resolved from flags and the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded sled database in the data directory.
    Sled,
    /// etcd.
    Etcd {
        /// `HOST:PORT` of each member.
        endpoints: Vec<String>,
        /// The key prefix.
        prefix: String,
        /// The lease TTL.
        lease_ttl: Duration,
        /// The bound on one call.
        timeout: Duration,
    },
}

fn duration(what: &str, text: Option<&str>) -> Result<Option<Duration>, BackendError> {
    text.map(|t| {
        humantime::parse_duration(t)
            .map_err(|e| BackendError::Invalid(format!("{what} {t:?} is not a duration: {e}")))
    })
    .transpose()
}

impl StoreArgs {
    /// Resolves the flags over the config file's keys (`None`: no file).
    pub fn resolve(
        &self,
        store: Option<&str>,
        etcd: Option<&EtcdConfig>,
    ) -> Result<StoreChoice, BackendError> {
        let default = EtcdConfig::default();
        let file = etcd.unwrap_or(&default);
        let url = self.store.as_deref().or(store).unwrap_or("sled");
        let unsupported = [
            (
                "--etcd-ca / [etcd] ca",
                self.etcd_ca.is_some() || file.ca.is_some(),
            ),
            (
                "--etcd-cert / [etcd] cert",
                self.etcd_cert.is_some() || file.cert.is_some(),
            ),
            (
                "--etcd-key / [etcd] key",
                self.etcd_key.is_some() || file.key.is_some(),
            ),
            (
                "--etcd-user / [etcd] user",
                self.etcd_user.is_some() || file.user.is_some(),
            ),
        ];
        if url == "sled" {
            return Ok(StoreChoice::Sled);
        }
        let Some(hosts) = url.strip_prefix("etcd://") else {
            return Err(BackendError::Invalid(format!(
                "--store {url:?}: expected `sled` or `etcd://HOST:PORT[,HOST:PORT...]` \
                 (TLS to etcd, etcds://, is not implemented yet)"
            )));
        };
        if let Some((what, _)) = unsupported.iter().find(|(_, given)| *given) {
            return Err(BackendError::Invalid(format!(
                "{what}: TLS and user authentication to etcd are not implemented yet; \
                 reach etcd over a trusted network (loopback or a private link) for now"
            )));
        }
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(BackendError::Invalid(format!(
                "--store {url:?}: name at least one etcd member, as etcd://HOST:PORT"
            )));
        }
        for e in &endpoints {
            let ok = e.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok()
            });
            if !ok {
                return Err(BackendError::Invalid(format!(
                    "--store: etcd member {e:?} is not HOST:PORT"
                )));
            }
        }
        let prefix = self
            .etcd_prefix
            .clone()
            .or_else(|| file.prefix.clone())
            .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_owned());
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(BackendError::Invalid(format!(
                "--etcd-prefix {prefix:?}: must start with / and name something, as /berth"
            )));
        }
        let lease_ttl = match self.etcd_lease_ttl {
            Some(d) => d,
            None => duration("[etcd] lease_ttl", file.lease_ttl.as_deref())?
                .unwrap_or(DEFAULT_LEASE_TTL),
        };
        if lease_ttl < Duration::from_secs(2) {
            return Err(BackendError::Invalid(
                "--etcd-lease-ttl: at least 2s (etcd counts leases in seconds)".into(),
            ));
        }
        let timeout = match self.etcd_timeout {
            Some(d) => d,
            None => {
                duration("[etcd] timeout", file.timeout.as_deref())?.unwrap_or(DEFAULT_ETCD_TIMEOUT)
            }
        };
        Ok(StoreChoice::Etcd {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_owned(),
            lease_ttl,
            timeout,
        })
    }
}

impl StoreChoice {
    /// Opens the records and the credential registry: the sled `store`
    /// itself, or a connection to etcd.
    pub async fn open(&self, store: &Store) -> Result<Opened, BackendError> {
        match self {
            StoreChoice::Sled => Ok(Opened {
                records: Arc::new(store.clone()),
                registry: Arc::new(
                    SledRegistry::open(store.db())
                        .map_err(|e| BackendError::Invalid(e.to_string()))?,
                ),
            }),
            #[cfg(feature = "etcd")]
            StoreChoice::Etcd {
                endpoints,
                prefix,
                lease_ttl,
                timeout,
            } => {
                let etcd =
                    crate::volumes::etcd::EtcdStore::connect(crate::volumes::etcd::EtcdOptions {
                        endpoints: endpoints.clone(),
                        prefix: prefix.clone(),
                        lease_ttl: *lease_ttl,
                        timeout: *timeout,
                        lock_wait: DEFAULT_LOCK_WAIT,
                    })
                    .await?;
                tracing::info!(endpoints = %endpoints.join(","), prefix = %prefix,
                    "volume records and the credential registry in etcd");
                let registry =
                    crate::auth::etcd_registry::EtcdRegistry::new(etcd.client(), prefix, *timeout);
                Ok(Opened {
                    records: Arc::new(etcd),
                    registry: Arc::new(registry),
                })
            }
            #[cfg(not(feature = "etcd"))]
            StoreChoice::Etcd { .. } => Err(BackendError::Invalid(
                "--store etcd://: this berthd was built without etcd support; \
                 rebuild with `cargo build --features berth-controller/etcd` \
                 (needs protoc: apt install protobuf-compiler)"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_is_the_default_and_etcd_urls_are_checked() {
        let args = StoreArgs::default();
        assert_eq!(args.resolve(None, None).ok(), Some(StoreChoice::Sled));
        let choice = args
            .resolve(Some("etcd://127.0.0.1:2379,h:1"), None)
            .expect("etcd");
        assert!(
            matches!(choice, StoreChoice::Etcd { ref endpoints, ref prefix, .. }
            if endpoints.len() == 2 && prefix == "/berth")
        );
        assert!(args.resolve(Some("etcd://nohost"), None).is_err());
        assert!(args.resolve(Some("etcds://h:1"), None).is_err());
        let tls = StoreArgs {
            etcd_ca: Some("ca.pem".into()),
            ..StoreArgs::default()
        };
        let refused = tls.resolve(Some("etcd://h:1"), None);
        assert!(refused.is_err_and(|e| e.to_string().contains("not implemented")));
    }
}
