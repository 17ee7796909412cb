//! The credential registry in etcd (cargo feature `etcd`): every controller
//! of a cluster sees the tokens and certificates any of them issued, and
//! their revocations.
//!
//! ```text
//! <prefix>/credentials/tokens/<jti>       -> TokenRecord (JSON)
//! <prefix>/credentials/certs/<serial>     -> CertRecord (JSON)
//! <prefix>/credentials/identity           -> the cluster's CA fingerprint and
//!                                            token signing key (public half)
//! ```
//!
//! No private key is ever written to etcd: a controller gets the cluster's
//! CA and signing keys from a running controller (`berthd join`), and the
//! `identity` key lets each controller check at start that it holds the
//! same ones as the first (it refuses to start otherwise).
//!
//! A watch on `<prefix>/credentials/` tells the credentials' cache of every
//! record another controller changes, so a revocation anywhere is refused
//! here as soon as etcd delivers the event (milliseconds), never after a
//! poll. When the watch breaks (etcd away), the cache is emptied and
//! nothing is remembered until the watch is back, resumed from the last
//! revision seen so no event is missed.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};

use crate::auth::credentials::{CertRecord, CredentialError, TokenRecord};
use crate::auth::registry::{decode, encode, Changed, Notify, Registry};
use crate::volumes::etcd::bounded;
use crate::volumes::store::StoreError;

/// How long the watch waits before it tries again after a break.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// What the `identity` key holds: what every controller of the cluster
/// must share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// The SHA-256 fingerprint of the cluster's CA (what clients pin).
    pub ca_fingerprint: String,
    /// The public half of the token signing key (PEM).
    pub signing_pub: String,
}

/// The etcd-backed [`Registry`].
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    timeout: Duration,
    watcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        if let Ok(mut w) = self.watcher.lock() {
            if let Some(task) = w.take() {
                task.abort();
            }
        }
    }
}

fn failed(e: StoreError) -> CredentialError {
    match e {
        StoreError::Unavailable(m) => CredentialError::Unavailable(m),
        other => CredentialError::Registry(other.to_string()),
    }
}

impl EtcdRegistry {
    /// A registry under `<prefix>/credentials/` on `client`, each call
    /// bounded by `timeout`.
    pub fn new(client: Client, prefix: &str, timeout: Duration) -> Self {
        Self {
            client,
            prefix: format!("{}/credentials/", prefix.trim_end_matches('/')),
            timeout,
            watcher: std::sync::Mutex::new(None),
        }
    }

    fn token_key(&self, jti: &str) -> String {
        format!("{}tokens/{jti}", self.prefix)
    }

    fn cert_key(&self, serial: &str) -> String {
        format!("{}certs/{serial}", self.prefix)
    }

    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        key: String,
    ) -> Result<Option<T>, CredentialError> {
        let mut kv = self.client.kv_client();
        let resp = bounded(self.timeout, kv.get(key, None))
            .await
            .map_err(failed)?;
        resp.kvs().first().map(|kv| decode(kv.value())).transpose()
    }

    async fn write<T: Serialize>(&self, key: String, value: &T) -> Result<(), CredentialError> {
        let mut kv = self.client.kv_client();
        bounded(self.timeout, kv.put(key, encode(value)?, None))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn all<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: String,
    ) -> Result<Vec<T>, CredentialError> {
        let mut kv = self.client.kv_client();
        let resp = bounded(
            self.timeout,
            kv.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(failed)?;
        resp.kvs().iter().map(|kv| decode(kv.value())).collect()
    }

    /// Records `mine` as the cluster's identity if none is recorded yet;
    /// otherwise refuses a controller whose CA or signing key differs (it
    /// would serve a certificate clients' pins refuse, or issue tokens the
    /// others refuse).
    async fn claim(&self, mine: &ClusterIdentity) -> Result<(), CredentialError> {
        let key = format!("{}identity", self.prefix);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.clone(), encode(mine)?, None)])
            .or_else(vec![TxnOp::get(key.clone(), None)]);
        let mut kv = self.client.kv_client();
        let resp = bounded(self.timeout, kv.txn(txn)).await.map_err(failed)?;
        if resp.succeeded() {
            tracing::info!(fingerprint = %mine.ca_fingerprint, "this controller's CA is now the cluster's identity in etcd");
            return Ok(());
        }
        let recorded: ClusterIdentity = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| decode(kv.value())),
                _ => None,
            })
            .ok_or_else(|| CredentialError::Registry(format!("{key} vanished while read")))??;
        if recorded.ca_fingerprint != mine.ca_fingerprint {
            return Err(CredentialError::Registry(format!(
                "this controller's CA ({}) is not the cluster's ({}) recorded in etcd under {key}: \
                 a controller joins a cluster with `berthd join --from HOST:PORT --fingerprint FP --token ADMIN_TOKEN` \
                 on an empty --data-dir, or uses another --etcd-prefix for a separate cluster",
                mine.ca_fingerprint, recorded.ca_fingerprint
            )));
        }
        if recorded.signing_pub.trim() != mine.signing_pub.trim() {
            return Err(CredentialError::Registry(format!(
                "this controller's token signing key is not the cluster's recorded in etcd under {key}: \
                 its tokens would be refused by the others; join with `berthd join` on an empty --data-dir"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Registry for EtcdRegistry {
    async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, CredentialError> {
        self.read(self.token_key(jti)).await
    }

    async fn put_token(&self, record: &TokenRecord) -> Result<(), CredentialError> {
        self.write(self.token_key(&record.jti), record).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, CredentialError> {
        self.all(format!("{}tokens/", self.prefix)).await
    }

    async fn cert(&self, serial: &str) -> Result<Option<CertRecord>, CredentialError> {
        self.read(self.cert_key(serial)).await
    }

    async fn put_cert(&self, record: &CertRecord) -> Result<(), CredentialError> {
        self.write(self.cert_key(&record.serial), record).await
    }

    async fn certs(&self) -> Result<Vec<CertRecord>, CredentialError> {
        self.all(format!("{}certs/", self.prefix)).await
    }

    async fn flush(&self) -> Result<(), CredentialError> {
        // etcd answers a put once it is durable on a quorum.
        Ok(())
    }

    async fn watch(&self, notify: Notify) -> Result<(), CredentialError> {
        // The watch starts right after the registry's revision now, so no
        // change made after this call is missed, even before the watch is
        // established.
        let mut kv = self.client.kv_client();
        let now = bounded(
            self.timeout,
            kv.get(
                self.prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await
        .map_err(failed)?;
        let from = now.header().map_or(0, |h| h.revision() + 1);
        let task = tokio::spawn(watch_loop(
            self.client.clone(),
            self.prefix.clone(),
            self.timeout,
            from,
            notify,
        ));
        if let Ok(mut w) = self.watcher.lock() {
            if let Some(old) = w.replace(task) {
                old.abort();
            }
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    async fn claim_identity(
        &self,
        ca_fingerprint: &str,
        signing_pub: &str,
    ) -> Result<(), CredentialError> {
        self.claim(&ClusterIdentity {
            ca_fingerprint: ca_fingerprint.to_owned(),
            signing_pub: signing_pub.to_owned(),
        })
        .await
    }
}

/// The id a credential key names: the last part of `.../tokens/<jti>` or
/// `.../certs/<serial>`.
fn id_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    rest.strip_prefix("tokens/")
        .or_else(|| rest.strip_prefix("certs/"))
}

/// Watches `prefix` from revision `from` for as long as the registry
/// lives, resuming after a break from the revision after the last one seen.
async fn watch_loop(client: Client, prefix: String, timeout: Duration, from: i64, notify: Notify) {
    // 0: from now (after a compaction, once everything was forgotten).
    let mut next: i64 = from;
    let mut lost = false;
    loop {
        let mut options = WatchOptions::new().with_prefix();
        if next > 0 {
            options = options.with_start_revision(next);
        }
        let mut watches = client.watch_client();
        match bounded(timeout, watches.watch(prefix.clone(), Some(options))).await {
            Ok(mut stream) => {
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            if resp.created() {
                                if next == 0 {
                                    next = resp.header().map_or(0, |h| h.revision() + 1);
                                }
                                if lost {
                                    lost = false;
                                    tracing::info!("the credential watch on etcd is back");
                                    notify(Changed::Resumed);
                                }
                            }
                            if resp.canceled() {
                                // Compacted past `next`: events were missed;
                                // forget everything and watch from now.
                                tracing::warn!(compact = resp.compact_revision(), reason = %resp.cancel_reason(),
                                    "the credential watch was cancelled by etcd; forgetting every verified credential");
                                next = 0;
                                break;
                            }
                            for event in resp.events() {
                                let Some(kv) = event.kv() else { continue };
                                next = next.max(kv.mod_revision() + 1);
                                let key = String::from_utf8_lossy(kv.key());
                                if let Some(id) = id_of(&prefix, &key) {
                                    notify(Changed::Record(id.to_owned()));
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "the credential watch on etcd broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the credential registry in etcd"),
        }
        if !lost {
            lost = true;
            notify(Changed::Lost);
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_token_and_cert_keys_only() {
        let p = "/berth/credentials/";
        assert_eq!(id_of(p, "/berth/credentials/tokens/abc"), Some("abc"));
        assert_eq!(id_of(p, "/berth/credentials/certs/0a1b"), Some("0a1b"));
        assert_eq!(id_of(p, "/berth/credentials/identity"), None);
        assert_eq!(id_of(p, "/other/credentials/tokens/abc"), None);
    }
}
