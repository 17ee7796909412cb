//! The etcd record store (cargo feature `etcd`): several controllers share
//! one catalogue.
//!
//! ```text
//! <prefix>/volumes/<service>/<name>            -> VolumeRecord
//! <prefix>/snapshots/<service>/<name>          -> SnapshotRecord
//! <prefix>/intents/volumes/<service>/<name>    -> Intent
//! <prefix>/intents/snapshots/<service>/<name>  -> Intent
//! <prefix>/locks/volumes/<service>/<name>      -> controller id, bound to its lease
//! <prefix>/locks/snapshots/<service>/<name>    -> controller id, bound to its lease
//! ```
//!
//! Values are written as JSON ([`crate::volumes::encoding::encode_json`]),
//! the form every release reads, so that controllers of two releases can
//! share one etcd during a rolling upgrade; the binary form the sled store
//! writes is read too ([`crate::volumes::encoding::decode`]).
//!
//! Each controller holds one lease (TTL `--etcd-lease-ttl`, default 10 s),
//! kept alive in the background. An operation takes the object's lock: a
//! transaction that creates the lock key, bound to the lease, only if it
//! does not exist. Every write of the operation is a transaction that
//! compares the lock key's revision with the one it was taken at, so a
//! controller whose lease expired (and whose lock was therefore deleted, or
//! since taken by someone else) cannot overwrite anything. A create's intent
//! also compares that the record key does not exist.
//!
//! etcd acknowledges a write once it is committed to a quorum and on disk,
//! so [`Records::flush`] has nothing left to do. Every call is bounded by
//! the store's timeout and answers [`StoreError::Unavailable`] past it.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::volumes::encoding::{decode, encode_json, Stored};
use crate::volumes::journal::Change;
use crate::volumes::records::{Fence, FenceToken, KeepSnapshot, KeepVolume, Records};
use crate::volumes::store::{
    Intent, Kind, Page, SnapshotRecord, StoreError, VolumeKey, VolumeRecord,
};

/// How many times start-up tries to reach etcd.
pub const CONNECT_ATTEMPTS: u32 = 5;

/// How to reach etcd and lay out the keys.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `HOST:PORT` of each etcd member.
    pub endpoints: Vec<String>,
    /// The key prefix (default `/berth`), without a trailing slash.
    pub prefix: String,
    /// The TTL of this controller's lease: its locks outlive it by at most
    /// this long.
    pub lease_ttl: Duration,
    /// The longest one etcd call may take before it answers UNAVAILABLE.
    pub timeout: Duration,
    /// The longest an operation waits for a lock another holds.
    pub lock_wait: Duration,
    /// TLS to etcd (CA, client certificate), if asked for.
    pub tls: Option<crate::volumes::backend::EtcdTls>,
    /// User authentication to etcd, if asked for.
    pub user: Option<crate::volumes::backend::EtcdUser>,
}

/// Reads one PEM file for TLS to etcd; the error names the flag and file.
fn pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::Backend(format!("{what} {}: cannot read it: {e}", path.display())))
}

/// The connection options: bounds, TLS, user.
fn connect_options(options: &EtcdOptions) -> Result<ConnectOptions, StoreError> {
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(options.timeout)
        .with_timeout(options.timeout);
    if let Some(tls) = &options.tls {
        let mut config = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(pem("--etcd-ca", &tls.ca)?),
        );
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(etcd_client::Identity::from_pem(
                pem("--etcd-cert", cert)?,
                pem("--etcd-key", key)?,
            ));
        }
        connect = connect.with_tls(config);
    }
    if let Some(user) = &options.user {
        // The token etcd hands out expires; the client takes a new one.
        connect = connect
            .with_user(user.name.clone(), user.password.0.clone())
            .with_auto_token_refresh(true);
    }
    Ok(connect)
}

/// The etcd-backed [`Records`].
pub struct EtcdStore {
    client: Client,
    prefix: String,
    id: String,
    lease: Arc<AtomicI64>,
    ttl: Duration,
    timeout: Duration,
    lock_wait: Duration,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) =>
        {
            StoreError::Unavailable(format!("etcd: {}", s.message()))
        }
        E::TransportError(e) => StoreError::Unavailable(format!("etcd: {e}")),
        E::IoError(e) => StoreError::Unavailable(format!("etcd: {e}")),
        other => StoreError::Backend(format!("etcd: {other}")),
    }
}

/// Runs one etcd call within `timeout`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd did not answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

impl EtcdStore {
    /// Connects to etcd and takes this controller's lease, trying for up
    /// to [`CONNECT_ATTEMPTS`] times the call timeout (etcd may still be
    /// electing its leader); then fails rather than waits on.
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let mut attempt = 1;
        loop {
            match Self::connect_once(&options).await {
                Err(StoreError::Unavailable(why)) if attempt < CONNECT_ATTEMPTS => {
                    tracing::info!(attempt, error = %why, "etcd not reachable yet; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    async fn connect_once(options: &EtcdOptions) -> Result<Self, StoreError> {
        let connect = connect_options(options)?;
        let client = bounded(
            options.timeout,
            Client::connect(options.endpoints.clone(), Some(connect)),
        )
        .await?;
        let ttl_secs = i64::try_from(options.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut leases = client.lease_client();
        let granted = bounded(options.timeout, leases.grant(ttl_secs, None)).await?;
        let lease = Arc::new(AtomicI64::new(granted.id()));
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            Arc::clone(&lease),
            options.lease_ttl,
            options.timeout,
        ));
        Ok(Self {
            client,
            prefix: options.prefix.trim_end_matches('/').to_owned(),
            id: uuid::Uuid::new_v4().to_string(),
            lease,
            ttl: options.lease_ttl,
            timeout: options.timeout,
            lock_wait: options.lock_wait,
            keeper,
        })
    }

    /// The etcd client this store uses (the credential registry shares it).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn kind_dir(kind: Kind) -> &'static str {
        match kind {
            Kind::Volume => "volumes",
            Kind::Snapshot => "snapshots",
        }
    }

    fn record_key(&self, kind: Kind, key: &VolumeKey) -> String {
        format!(
            "{}/{}/{}/{}",
            self.prefix,
            Self::kind_dir(kind),
            key.service,
            key.name
        )
    }

    fn intent_key(&self, kind: Kind, key: &VolumeKey) -> String {
        format!(
            "{}/intents/{}/{}/{}",
            self.prefix,
            Self::kind_dir(kind),
            key.service,
            key.name
        )
    }

    fn lock_key(&self, kind: Kind, key: &VolumeKey) -> String {
        format!(
            "{}/locks/{}/{}/{}",
            self.prefix,
            Self::kind_dir(kind),
            key.service,
            key.name
        )
    }

    async fn lease_id(&self) -> Result<i64, StoreError> {
        let id = self.lease.load(Ordering::SeqCst);
        if id != 0 {
            return Ok(id);
        }
        let ttl = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut leases = self.client.lease_client();
        let granted = bounded(self.timeout, leases.grant(ttl, None)).await?;
        self.lease.store(granted.id(), Ordering::SeqCst);
        Ok(granted.id())
    }

    async fn read<T: Stored>(&self, key: String) -> Result<Option<T>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = bounded(self.timeout, kv.get(key.clone(), None)).await?;
        resp.kvs()
            .first()
            .map(|kv| decode(key.as_bytes(), kv.value()))
            .transpose()
    }

    /// Runs a fenced transaction: `compares` and the fence's, then `ops`.
    /// A failed compare says which: the fence ([`StoreError::Fenced`]) or
    /// another (`otherwise`).
    async fn fenced(
        &self,
        fence: &Fence,
        mut compares: Vec<Compare>,
        ops: Vec<TxnOp>,
        what: &str,
        otherwise: impl FnOnce() -> StoreError,
    ) -> Result<(), StoreError> {
        let token = fence.token.as_ref().ok_or_else(|| {
            StoreError::Backend(format!("write to {what} without holding its lock"))
        })?;
        compares.push(Compare::mod_revision(
            token.key.clone(),
            CompareOp::Equal,
            token.revision,
        ));
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(vec![TxnOp::get(token.key.clone(), None)]);
        let mut kv = self.client.kv_client();
        let resp = bounded(self.timeout, kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let held = resp.op_responses().into_iter().any(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .is_some_and(|kv| kv.mod_revision() == token.revision),
            _ => false,
        });
        if held {
            Err(otherwise())
        } else {
            Err(StoreError::Fenced(what.to_owned()))
        }
    }

    async fn list<T: Stored>(&self, prefix: String) -> Result<Vec<(String, T)>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = bounded(
            self.timeout,
            kv.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = decode(kv.key(), kv.value())?;
            out.push((key, value));
        }
        Ok(out)
    }
}

/// Keeps the lease alive every third of its TTL; when it expired (etcd was
/// away longer than the TTL), the next lock takes a new one.
async fn keep_alive(client: Client, lease: Arc<AtomicI64>, ttl: Duration, timeout: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(every).await;
        let id = lease.load(Ordering::SeqCst);
        if id == 0 {
            continue;
        }
        let mut leases = client.lease_client();
        let refreshed = tokio::time::timeout(timeout, async {
            let (mut keeper, mut stream) = leases.keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match refreshed {
            Ok(Ok(Some(resp))) if resp.ttl() <= 0 => {
                tracing::warn!(
                    lease = id,
                    "the etcd lease expired; locks held under it are lost"
                );
                let _ = lease.compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the etcd lease"),
            Err(_) => tracing::warn!("etcd did not answer the lease renewal in time"),
        }
    }
}

/// Deletes a lock key when the operation ends, if it is still ours.
struct Release {
    client: Client,
    key: Vec<u8>,
    revision: i64,
    timeout: Duration,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut kv = self.client.kv_client();
        let key = std::mem::take(&mut self.key);
        let (revision, timeout) = (self.revision, self.timeout);
        runtime.spawn(async move {
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then(vec![TxnOp::delete(key, None)]);
            // Failing that, the lease's expiry releases it.
            let _ = tokio::time::timeout(timeout, kv.txn(txn)).await;
        });
    }
}

fn sorted<'a>(services: &[&'a str]) -> Vec<&'a str> {
    let mut sorted = services.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// How many records one range read fetches while paging.
const CHUNK: i64 = 256;

#[tonic::async_trait]
impl Records for EtcdStore {
    async fn lock(&self, kind: Kind, key: &VolumeKey, wait: bool) -> Result<Fence, StoreError> {
        let lock_key = self.lock_key(kind, key);
        let deadline = tokio::time::Instant::now() + self.lock_wait;
        let mut pause = Duration::from_millis(10);
        loop {
            let lease = self.lease_id().await?;
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    lock_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    lock_key.clone(),
                    self.id.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let mut kv = self.client.kv_client();
            let resp = match bounded(self.timeout, kv.txn(txn)).await {
                // The lease expired meanwhile: take a new one and retry.
                Err(StoreError::Backend(m)) if m.contains("lease not found") => {
                    let _ =
                        self.lease
                            .compare_exchange(lease, 0, Ordering::SeqCst, Ordering::SeqCst);
                    continue;
                }
                other => other?,
            };
            if resp.succeeded() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                let token = FenceToken {
                    key: lock_key.clone().into_bytes(),
                    revision,
                };
                let release = Release {
                    client: self.client.clone(),
                    key: token.key.clone(),
                    revision,
                    timeout: self.timeout,
                };
                return Ok(Fence::held(token, Box::new(release)));
            }
            if !wait || tokio::time::Instant::now() + pause > deadline {
                return Err(StoreError::Contended(format!(
                    "{} {} in service {} is being changed by another operation (on this or another controller); retry",
                    match kind {
                        Kind::Volume => "volume",
                        Kind::Snapshot => "snapshot",
                    },
                    key.name,
                    key.service
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn get(&self, key: &VolumeKey) -> Result<Option<VolumeRecord>, StoreError> {
        self.read(self.record_key(Kind::Volume, key)).await
    }

    async fn snapshot(&self, key: &VolumeKey) -> Result<Option<SnapshotRecord>, StoreError> {
        self.read(self.record_key(Kind::Snapshot, key)).await
    }

    async fn begin(
        &self,
        fence: &Fence,
        key: &VolumeKey,
        intent: &Intent,
    ) -> Result<(), StoreError> {
        let kind = intent.kind();
        let k = self.intent_key(kind, key);
        let v = encode_json(k.as_bytes(), intent)?;
        let mut compares = vec![];
        if matches!(
            intent,
            Intent::Create { .. } | Intent::CreateSnapshot { .. }
        ) {
            // A create: neither the record nor another intent may exist.
            compares.push(Compare::create_revision(
                self.record_key(kind, key),
                CompareOp::Equal,
                0,
            ));
            compares.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
        }
        let name = key.name.clone();
        self.fenced(
            fence,
            compares,
            vec![TxnOp::put(k.clone(), v, None)],
            &k,
            || {
                StoreError::Contended(format!(
                    "{name} was created meanwhile by another controller; retry"
                ))
            },
        )
        .await
    }

    async fn commit(
        &self,
        fence: &Fence,
        key: &VolumeKey,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        let kind = match change {
            Change::Volume(_) => Kind::Volume,
            Change::Snapshot(_) => Kind::Snapshot,
        };
        let rk = self.record_key(kind, key);
        let value = match change {
            Change::Volume(r) => r.map(|r| encode_json(rk.as_bytes(), r)).transpose()?,
            Change::Snapshot(r) => r.map(|r| encode_json(rk.as_bytes(), r)).transpose()?,
        };
        let record_op = match value {
            Some(v) => TxnOp::put(rk.clone(), v, None),
            None => TxnOp::delete(rk.clone(), None),
        };
        let ops = vec![record_op, TxnOp::delete(self.intent_key(kind, key), None)];
        self.fenced(fence, vec![], ops, &rk, || {
            StoreError::Backend("unreachable compare".into())
        })
        .await
    }

    async fn abandon(&self, fence: &Fence, kind: Kind, key: &VolumeKey) -> Result<(), StoreError> {
        let k = self.intent_key(kind, key);
        self.fenced(
            fence,
            vec![],
            vec![TxnOp::delete(k.clone(), None)],
            &k,
            || StoreError::Backend("unreachable compare".into()),
        )
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // etcd answers a write once it is durable on a quorum.
        Ok(())
    }

    async fn intents(&self) -> Result<Vec<(VolumeKey, Intent)>, StoreError> {
        let mut out = Vec::new();
        for kind in [Kind::Volume, Kind::Snapshot] {
            let prefix = format!("{}/intents/{}/", self.prefix, Self::kind_dir(kind));
            for (k, intent) in self.list::<Intent>(prefix.clone()).await? {
                let rest = k.strip_prefix(&prefix).unwrap_or_default();
                let Some((service, name)) = rest.split_once('/') else {
                    continue;
                };
                out.push((VolumeKey::new(service, name), intent));
            }
        }
        Ok(out)
    }

    async fn snapshots(
        &self,
        services: &[&str],
        keep: &KeepSnapshot<'_>,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let mut out = Vec::new();
        for service in sorted(services) {
            let prefix = format!("{}/snapshots/{service}/", self.prefix);
            for (_, record) in self.list::<SnapshotRecord>(prefix).await? {
                if keep(&record) {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    async fn page(
        &self,
        services: &[&str],
        after: Option<&VolumeKey>,
        limit: usize,
        budget: usize,
        keep: &KeepVolume<'_>,
    ) -> Result<Page, StoreError> {
        let budget = budget.max(1);
        let mut page = Page::default();
        let mut examined = 0;
        for service in sorted(services) {
            let prefix = format!("{}/volumes/{service}/", self.prefix);
            // The end of the prefix's range: its last byte, '/', plus one.
            let end = format!("{}/volumes/{service}0", self.prefix);
            let mut start = match after {
                Some(after) if after.service.as_str() > service => continue,
                Some(after) if after.service == service => format!("{prefix}{}\0", after.name),
                _ => prefix.clone(),
            };
            loop {
                let mut kv = self.client.kv_client();
                let options = GetOptions::new().with_range(end.clone()).with_limit(CHUNK);
                let resp = bounded(self.timeout, kv.get(start.clone(), Some(options))).await?;
                let kvs = resp.kvs();
                for entry in kvs {
                    if examined == budget {
                        return Ok(page);
                    }
                    examined += 1;
                    let record: VolumeRecord = decode(entry.key(), entry.value())?;
                    let key = VolumeKey::new(&record.service, &record.name);
                    if !keep(&record) {
                        page.next = Some(key);
                        continue;
                    }
                    if page.records.len() == limit {
                        page.next = page
                            .records
                            .last()
                            .map(|r| VolumeKey::new(&r.service, &r.name));
                        return Ok(page);
                    }
                    page.records.push(record);
                    page.next = Some(key);
                }
                match kvs.last() {
                    Some(last) if resp.more() => {
                        let mut next = last.key().to_vec();
                        next.push(0);
                        start = String::from_utf8_lossy(&next).into_owned();
                    }
                    _ => break,
                }
            }
        }
        page.next = None;
        Ok(page)
    }

    async fn volume_names(&self, service: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{}/volumes/{service}/", self.prefix);
        let mut kv = self.client.kv_client();
        let resp = bounded(
            self.timeout,
            kv.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .strip_prefix(&prefix)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect())
    }

    fn shared(&self) -> bool {
        true
    }

    async fn intent(&self, kind: Kind, key: &VolumeKey) -> Result<Option<Intent>, StoreError> {
        self.read(self.intent_key(kind, key)).await
    }

    /// A dead controller's locks go with its lease, at most one TTL after
    /// it died; scanning a few times per TTL (between 0.5 s and 2 s) settles
    /// its intents well within TTL + 5 s.
    fn orphan_scan(&self) -> Option<Duration> {
        Some((self.ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(2)))
    }
}
