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
    /// The CA bundle that signed etcd's server certificate: talk TLS to
    /// etcd (`--etcd-ca`).
    pub ca: Option<PathBuf>,
    /// A client certificate for TLS to etcd (`--etcd-cert`).
    pub cert: Option<PathBuf>,
    /// The client certificate's key (`--etcd-key`).
    pub key: Option<PathBuf>,
    /// An etcd user name (`--etcd-user`); its password comes from
    /// `BERTH_ETCD_PASSWORD` or `password_file`.
    pub user: Option<String>,
    /// A file holding the etcd user's password (`--etcd-password-file`),
    /// readable by its owner only.
    pub password_file: Option<PathBuf>,
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
    /// Talk TLS to etcd, trusting this CA bundle (PEM) for its certificate (config `[etcd] ca`).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd; needs --etcd-ca and --etcd-key (config `[etcd] cert`).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key of --etcd-cert (PEM) (config `[etcd] key`).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name; the password comes from BERTH_ETCD_PASSWORD or --etcd-password-file, never a flag (config `[etcd] user`).
    #[arg(long, value_name = "USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password, readable by its owner only (config `[etcd] password_file`).
    #[arg(long, value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

/// The environment variable that may hold the etcd user's password.
pub const PASSWORD_ENV: &str = "BERTH_ETCD_PASSWORD";

/// A password: never shown in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// TLS to etcd: the CA that signed its server certificate, and an optional
/// client certificate and key (PEM files, read when connecting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA bundle.
    pub ca: PathBuf,
    /// The client certificate and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// An etcd user and its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUser {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: Password,
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
        /// TLS to etcd, if asked for.
        tls: Option<EtcdTls>,
        /// User authentication to etcd, if asked for.
        user: Option<EtcdUser>,
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
        if url == "sled" {
            return Ok(StoreChoice::Sled);
        }
        let Some(hosts) = url.strip_prefix("etcd://") else {
            return Err(BackendError::Invalid(format!(
                "--store {url:?}: expected `sled` or `etcd://HOST:PORT[,HOST:PORT...]` \
                 (for TLS to etcd add --etcd-ca)"
            )));
        };
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
        let tls = self.tls(file)?;
        let user = self.user(file, std::env::var(PASSWORD_ENV).ok())?;
        Ok(StoreChoice::Etcd {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_owned(),
            lease_ttl,
            timeout,
            tls,
            user,
        })
    }

    /// TLS to etcd from the flags over the file: none without a CA.
    fn tls(&self, file: &EtcdConfig) -> Result<Option<EtcdTls>, BackendError> {
        let ca = self.etcd_ca.clone().or_else(|| file.ca.clone());
        let cert = self.etcd_cert.clone().or_else(|| file.cert.clone());
        let key = self.etcd_key.clone().or_else(|| file.key.clone());
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(BackendError::Invalid(
                    "--etcd-cert and --etcd-key (`[etcd] cert`, `key`) go together: give both"
                        .into(),
                ))
            }
        };
        match (ca, identity) {
            (Some(ca), identity) => Ok(Some(EtcdTls { ca, identity })),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(BackendError::Invalid(
                "--etcd-cert needs --etcd-ca (`[etcd] ca`): the CA that signed etcd's server \
                 certificate, so that berthd talks TLS to etcd"
                    .into(),
            )),
        }
    }

    /// The etcd user from the flags over the file, its password from
    /// `env` (the value of [`PASSWORD_ENV`]) or the password file.
    fn user(
        &self,
        file: &EtcdConfig,
        env: Option<String>,
    ) -> Result<Option<EtcdUser>, BackendError> {
        let name = self.etcd_user.clone().or_else(|| file.user.clone());
        let password_file = self
            .etcd_password_file
            .clone()
            .or_else(|| file.password_file.clone());
        let Some(name) = name else {
            return match password_file {
                Some(f) => Err(BackendError::Invalid(format!(
                    "--etcd-password-file {}: no --etcd-user (`[etcd] user`) to use it for",
                    f.display()
                ))),
                None => Ok(None),
            };
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(BackendError::Invalid(format!(
                "--etcd-user {name:?}: name an etcd user"
            )));
        }
        let password = match (password_file, env) {
            (Some(path), _) => read_password(&path)?,
            (None, Some(p)) if !p.is_empty() => p,
            (None, _) => {
                return Err(BackendError::Invalid(format!(
                    "--etcd-user {name}: no password; set {PASSWORD_ENV} or give \
                     --etcd-password-file (`[etcd] password_file`), a file only its owner can read"
                )))
            }
        };
        Ok(Some(EtcdUser {
            name,
            password: Password(password),
        }))
    }
}

/// Reads a password file: its first line, refused when empty or when the
/// file is readable by group or others.
fn read_password(path: &std::path::Path) -> Result<String, BackendError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        BackendError::Invalid(format!("--etcd-password-file {shown}: cannot read it: {e}"))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(BackendError::Invalid(format!(
                "--etcd-password-file {shown} is readable by group or others (mode {mode:o}); \
                 run `chmod 600 {shown}`"
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(|e| {
        BackendError::Invalid(format!("--etcd-password-file {shown}: cannot read it: {e}"))
    })?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        return Err(BackendError::Invalid(format!(
            "--etcd-password-file {shown} is empty; put the etcd user's password on its first line"
        )));
    }
    Ok(password)
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
                tls,
                user,
            } => {
                let etcd =
                    crate::volumes::etcd::EtcdStore::connect(crate::volumes::etcd::EtcdOptions {
                        endpoints: endpoints.clone(),
                        prefix: prefix.clone(),
                        lease_ttl: *lease_ttl,
                        timeout: *timeout,
                        lock_wait: DEFAULT_LOCK_WAIT,
                        tls: tls.clone(),
                        user: user.clone(),
                    })
                    .await?;
                tracing::info!(endpoints = %endpoints.join(","), prefix = %prefix,
                    tls = tls.is_some(), user = user.as_ref().map(|u| u.name.as_str()).unwrap_or("-"),
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
    }

    #[test]
    fn tls_needs_a_ca_and_a_certificate_needs_its_key() {
        let tls = StoreArgs {
            etcd_ca: Some("ca.pem".into()),
            ..StoreArgs::default()
        };
        let choice = tls.resolve(Some("etcd://h:1"), None).expect("tls");
        assert!(matches!(
            choice,
            StoreChoice::Etcd {
                tls: Some(EtcdTls { identity: None, .. }),
                ..
            }
        ));
        let no_ca = StoreArgs {
            etcd_cert: Some("c.pem".into()),
            etcd_key: Some("k.pem".into()),
            ..StoreArgs::default()
        };
        let err = no_ca.resolve(Some("etcd://h:1"), None).expect_err("no CA");
        assert!(err.to_string().contains("needs --etcd-ca"), "{err}");
        let file = EtcdConfig {
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            ..EtcdConfig::default()
        };
        let err = StoreArgs::default()
            .resolve(Some("etcd://h:1"), Some(&file))
            .expect_err("half identity");
        assert!(err.to_string().contains("go together"), "{err}");
    }

    #[test]
    fn a_user_needs_a_private_password_file_or_the_environment() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let args = StoreArgs {
            etcd_user: Some("berth".into()),
            ..StoreArgs::default()
        };
        let file = EtcdConfig {
            password_file: Some(path.clone()),
            ..EtcdConfig::default()
        };
        let user = args.user(&file, None).expect("user").expect("some");
        assert_eq!(user.password, Password("s3cret".into()));
        assert!(!format!("{user:?}").contains("s3cret"));
        // From the environment when there is no file.
        let user = args
            .user(&EtcdConfig::default(), Some("from-env".into()))
            .expect("user")
            .expect("some");
        assert_eq!(user.password, Password("from-env".into()));
        // None at all, a file others can read, a file without a user.
        let err = args.user(&EtcdConfig::default(), None).expect_err("none");
        assert!(err.to_string().contains(PASSWORD_ENV), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = args.user(&file, None).expect_err("readable");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let err = StoreArgs::default().user(&file, None).expect_err("no user");
        assert!(err.to_string().contains("no --etcd-user"), "{err}");
    }
}
