//! Durable volume records and operation intents, in a sled database.
//!
//! One sled tree holds two kinds of key, so that a record and the intent
//! that produced it change in one atomic batch:
//!
//! ```text
//! v\0<service>\0<name>  -> VolumeRecord    the volumes the controller acknowledged
//! i\0<service>\0<name>  -> Intent          an operation under way on that volume
//! s\0<service>\0<name>  -> SnapshotRecord  the snapshots
//! j\0<service>\0<name>  -> Intent          an operation under way on that snapshot
//! ```
//!
//! Values are in the form [`crate::volumes::encoding`] defines (binary,
//! reading the JSON of earlier releases).
//!
//! An intent is written and flushed before the driver is called; the record
//! change and the intent's removal are applied together afterwards. At
//! start-up any intent left over is a crash mid-operation, which
//! [`crate::volumes::Volumes::reconcile`] finishes or undoes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;

use serde::{Deserialize, Serialize};

use crate::volumes::encoding::{decode, encode, FormatError, Stored};

/// What the controller knows about one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Stable, unique id assigned at creation.
    pub id: String,
    /// The volume name.
    pub name: String,
    /// The service it belongs to.
    pub service: String,
    /// The driver that made it.
    pub driver: String,
    /// Its size, as the driver reported it.
    pub size_bytes: u64,
    /// Creation time, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The options it was created with.
    pub options: BTreeMap<String, String>,
    /// Driver-reported facts (`path`, ...).
    pub fields: BTreeMap<String, String>,
    /// Instances the volume is attached to.
    #[serde(default)]
    pub attachments: Vec<AttachmentRecord>,
    /// Where its contents came from: `snapshot:NAME`, `volume:NAME`, or none.
    #[serde(default)]
    pub source: Option<String>,
}

/// One instance a volume is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The instance it is attached to.
    pub instance: String,
    /// Where the instance finds it (a path or device).
    pub device: String,
    /// Driver-reported facts about the attachment.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// What the controller knows about one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Stable, unique id assigned at creation.
    pub id: String,
    /// The snapshot name.
    pub name: String,
    /// The service it belongs to.
    pub service: String,
    /// The volume it was taken from.
    pub volume: String,
    /// Its size, as the driver reported it.
    pub size_bytes: u64,
    /// Creation time, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl SnapshotRecord {
    /// Creation time.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_at_ms)
    }
}

/// Which kind of object a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A volume.
    Volume,
    /// A snapshot.
    Snapshot,
}

impl Kind {
    fn record(self) -> u8 {
        match self {
            Kind::Volume => b'v',
            Kind::Snapshot => b's',
        }
    }

    fn intent(self) -> u8 {
        match self {
            Kind::Volume => b'i',
            Kind::Snapshot => b'j',
        }
    }
}

impl VolumeRecord {
    /// Creation time.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_at_ms)
    }
}

/// An operation that was started and not yet finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// Creating a volume (empty, from a snapshot, or as a copy).
    Create {
        /// The record it will have.
        record: VolumeRecord,
    },
    /// Deleting a volume.
    Delete {
        /// The record being deleted.
        record: VolumeRecord,
    },
    /// Taking a snapshot.
    CreateSnapshot {
        /// The record it will have.
        record: SnapshotRecord,
    },
    /// Deleting a snapshot.
    DeleteSnapshot {
        /// The record being deleted.
        record: SnapshotRecord,
    },
}

impl Intent {
    /// Whether it is about a volume or a snapshot.
    pub fn kind(&self) -> Kind {
        match self {
            Intent::Create { .. } | Intent::Delete { .. } => Kind::Volume,
            Intent::CreateSnapshot { .. } | Intent::DeleteSnapshot { .. } => Kind::Snapshot,
        }
    }

    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Intent::Create { .. } => "create",
            Intent::Delete { .. } => "delete",
            Intent::CreateSnapshot { .. } => "create_snapshot",
            Intent::DeleteSnapshot { .. } => "delete_snapshot",
        }
    }
}

/// Errors of the record store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened.
    #[error("cannot open the volume database at {path}: {source}; is another berthd using this data directory?")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// A database operation failed.
    #[error("volume database error: {0}")]
    Db(#[from] sled::Error),
    /// A record could not be encoded; nothing was written.
    #[error("cannot encode entry {key:?} for the record store: {source}; nothing was written (this is a bug: report it)")]
    Encode {
        /// The entry's key.
        key: String,
        /// What prost said.
        source: prost::EncodeError,
    },
    /// A record could not be written as JSON (the shared etcd store's
    /// form, see [`crate::volumes::encoding::encode_json`]); nothing was
    /// written.
    #[error("cannot encode entry {key:?} as JSON for the record store: {source}; nothing was written (this is a bug: report it)")]
    EncodeJson {
        /// The entry's key.
        key: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// An entry cannot be read.
    #[error("corrupt entry {key:?} in the record store: {source}")]
    Corrupt {
        /// The entry's key.
        key: String,
        /// Why it cannot be read, and what to do.
        source: FormatError,
    },
    /// A shared store did not answer in time or cannot be reached; nothing
    /// was acknowledged. Retry later.
    #[error("the record store is unavailable: {0}")]
    Unavailable(String),
    /// Another operation (possibly on another controller) holds the
    /// object's lock; nothing was done. Retry.
    #[error("{0}")]
    Contended(String),
    /// This controller no longer holds the lock its write was fenced on
    /// (its lease expired); the write was refused and nothing changed.
    #[error("write refused: this controller lost its lock on {0} (its lease expired); retry")]
    Fenced(String),
    /// A shared store refused a request.
    #[error("record store error: {0}")]
    Backend(String),
    /// A write of this controller's did not complete (its batch could not
    /// be applied, or the flushing task failed): the operation was not
    /// acknowledged, and its intent is settled at the next start.
    #[error("volume database write failed: {0}; the operation was not acknowledged: retry, and see berthd's log")]
    Write(String),
}

/// The key of one volume, without its kind prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeKey {
    /// The service.
    pub service: String,
    /// The volume or snapshot name.
    pub name: String,
}

impl VolumeKey {
    /// The key of `name` in `service`.
    pub fn new(service: &str, name: &str) -> Self {
        Self {
            service: service.to_owned(),
            name: name.to_owned(),
        }
    }

    fn encode(&self, kind: u8) -> Vec<u8> {
        let mut key = Vec::with_capacity(3 + self.service.len() + self.name.len());
        key.extend_from_slice(&[kind, 0]);
        key.extend_from_slice(self.service.as_bytes());
        key.push(0);
        key.extend_from_slice(self.name.as_bytes());
        key
    }

    /// The key's bytes without the kind prefix: `<service>\0<name>`.
    pub fn to_cursor(&self) -> Vec<u8> {
        self.encode(Kind::Volume.record())[2..].to_vec()
    }

    /// The inverse of [`to_cursor`](Self::to_cursor).
    pub fn from_cursor(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (service, name) = text.split_once('\0')?;
        Some(Self::new(service, name))
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        Self::from_cursor(raw.get(2..)?)
    }
}

/// The sled-backed store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    commits: std::sync::Arc<GroupCommit>,
}

/// Group commit: concurrent callers of [`Store::flush`] share one sled
/// flush (one fsync) instead of queueing one each. A caller's writes are
/// durable once a flush that *started* after its ticket was taken has
/// finished.
///
/// Why no caller can be stranded: nobody waits for a notification. Every
/// caller queues on the `flushing` mutex itself (tokio's mutex is fair and
/// hands the lock to each waiter in turn), and whoever holds it either sees
/// its ticket already covered by `done` and leaves, or flushes itself. A
/// waiter is therefore only ever waiting for a lock that its holder releases
/// when it returns, whatever it returns. The earlier design waited on a
/// `watch` for `done` to move after a failed `try_lock`; a leader that
/// published `done` just before the caller looked, and released the lock
/// just after the caller's `try_lock` failed, left it waiting for a change
/// that only the next, unrelated flush would make.
///
/// Batching is kept: while one flush runs, the callers that arrive queue on
/// the mutex, and the first of them to get it flushes for all of them (its
/// `upto` covers every ticket taken before its flush started).
///
/// Commits ([`Store::commit_durably`]) are grouped too: a caller does not
/// apply its record change itself but queues it, with its ticket, and
/// whoever flushes next applies every queued change in one sled batch
/// before its flush. Each change stays atomic (its record and its intent
/// are in one batch), and its caller returns only once a flush that
/// followed the batch's application has finished. This matters because
/// every sled batch rolls sled's log buffer twice (two log writes, each
/// handed to sled's I/O threads, which all wake for each): one batch per
/// group instead of one per operation.
///
/// Why a commit is never reported durable before it is: a ticket and its
/// change are queued under the `queued` lock, and the leader takes the queue
/// and reads its `upto` under that lock, so every commit ticket that `upto`
/// covers had its change taken by this leader or an earlier one. The
/// leader's whole turn (apply, flush, publish `done`) runs on a blocking
/// thread that owns the `flushing` lock, so a leader whose caller is
/// cancelled still finishes its turn before the next one starts. If
/// applying a batch fails, its changes are not in the store: their tickets
/// go to `failed`, which every caller checks along with `done`, so none of
/// them returns success. A caller cancelled while its change is still
/// queued takes it back (its lock on the object is released with it, so a
/// change applied later could overwrite the next operation's).
struct GroupCommit {
    /// The last ticket handed out; tickets start at 1.
    tickets: AtomicU64,
    /// The highest ticket a finished flush covers.
    done: AtomicU64,
    /// Held by the one caller that is flushing, queued on by the others.
    flushing: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Record changes waiting for the next flush to apply them.
    queued: std::sync::Mutex<Queued>,
    /// Told about every flush that succeeded (the metrics), once set.
    hook: std::sync::OnceLock<FlushHook>,
}

/// The commits waiting for a leader ([`GroupCommit`]).
#[derive(Default)]
struct Queued {
    /// Each waiting commit's ticket and writes, in ticket order.
    changes: Vec<(u64, Writes)>,
    /// Tickets whose changes a failed batch did not apply, with why.
    failed: std::collections::HashMap<u64, String>,
}

/// Locks a std mutex; a panic elsewhere cannot leave [`Queued`] half
/// changed (each change is one push, retain or take), so a poisoned lock is
/// used as it is.
fn lock_queued(queued: &std::sync::Mutex<Queued>) -> std::sync::MutexGuard<'_, Queued> {
    queued
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one group-commit flush did, for [`Store::on_flush`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlushStats {
    /// How many callers' writes the flush made durable (the batch size,
    /// at least 1).
    pub batch: u64,
    /// How long the flush (the fsync) took, in seconds.
    pub seconds: f64,
}

/// A function told about each flush.
pub type FlushHook = std::sync::Arc<dyn Fn(FlushStats) + Send + Sync>;

/// A queued commit's claim on its change: dropped before its caller is
/// covered (the caller was cancelled), it takes the change back out of the
/// queue if no leader has taken it yet.
struct Claim<'a> {
    commits: &'a GroupCommit,
    ticket: Option<u64>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            lock_queued(&self.commits.queued)
                .changes
                .retain(|(t, _)| *t != ticket);
        }
    }
}

impl GroupCommit {
    fn new() -> Self {
        Self {
            tickets: AtomicU64::new(0),
            done: AtomicU64::new(0),
            flushing: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            queued: std::sync::Mutex::new(Queued::default()),
            hook: std::sync::OnceLock::new(),
        }
    }

    async fn flush(
        self: &std::sync::Arc<Self>,
        db: &sled::Db,
        tree: &sled::Tree,
    ) -> Result<(), StoreError> {
        // Taken after the caller's writes, so a flush that starts later
        // covers them.
        let ticket = self.tickets.fetch_add(1, SeqCst) + 1;
        self.until_covered(db, tree, ticket).await
    }

    /// Queues `writes` for the next flush to apply in its batch, and
    /// returns once they are applied and durable.
    async fn commit(
        self: &std::sync::Arc<Self>,
        db: &sled::Db,
        tree: &sled::Tree,
        writes: Writes,
    ) -> Result<(), StoreError> {
        let ticket = {
            let mut queued = lock_queued(&self.queued);
            let ticket = self.tickets.fetch_add(1, SeqCst) + 1;
            queued.changes.push((ticket, writes));
            ticket
        };
        let mut claim = Claim {
            commits: self,
            ticket: Some(ticket),
        };
        let outcome = self.until_covered(db, tree, ticket).await;
        claim.ticket = None;
        outcome
    }

    /// The outcome for `ticket` once a flush covers it: the error of a
    /// failed batch that held its change, else success.
    fn covered(&self, ticket: u64) -> Option<Result<(), StoreError>> {
        let failed = lock_queued(&self.queued).failed.remove(&ticket);
        if let Some(why) = failed {
            return Some(Err(StoreError::Write(why)));
        }
        (self.done.load(SeqCst) >= ticket).then_some(Ok(()))
    }

    async fn until_covered(
        self: &std::sync::Arc<Self>,
        db: &sled::Db,
        tree: &sled::Tree,
        ticket: u64,
    ) -> Result<(), StoreError> {
        if let Some(outcome) = self.covered(ticket) {
            return outcome;
        }
        let leader = std::sync::Arc::clone(&self.flushing).lock_owned().await;
        if let Some(outcome) = self.covered(ticket) {
            // A flush that started after our ticket finished while we queued.
            return outcome;
        }
        // A blocking flush on a blocking thread: sled 0.34's flush_async can
        // deadlock under concurrent use (sled#1308). The turn owns the lock,
        // so if this caller is cancelled while it waits, the turn still
        // ends (publishing what it did) before the next caller's begins.
        let (commits, db, tree) = (std::sync::Arc::clone(self), db.clone(), tree.clone());
        tokio::task::spawn_blocking(move || {
            let outcome = commits.turn(&db, &tree, ticket);
            drop(leader);
            outcome
        })
        .await
        .map_err(|e| StoreError::Write(format!("the flush task failed: {e}")))?
    }

    /// One leader's turn, holding the `flushing` lock: applies the queued
    /// changes in one batch, flushes, publishes what it covered.
    fn turn(&self, db: &sled::Db, tree: &sled::Tree, ticket: u64) -> Result<(), StoreError> {
        // Every write made, and every commit queued, before this point is
        // covered by the flush below.
        let (changes, upto) = {
            let mut queued = lock_queued(&self.queued);
            (
                std::mem::take(&mut queued.changes),
                self.tickets.load(SeqCst),
            )
        };
        let before = self.done.load(SeqCst);
        let started = std::time::Instant::now();
        if !changes.is_empty() {
            let mut batch = sled::Batch::default();
            let mut tickets = Vec::with_capacity(changes.len());
            for (t, writes) in changes {
                add_writes(&mut batch, writes);
                tickets.push(t);
            }
            if let Err(e) = tree.apply_batch(batch) {
                // Never applied: each of these callers fails (the other
                // callers' writes are in the store; the next flush retries).
                let why = format!("a batch of record changes could not be applied: {e}");
                let mut queued = lock_queued(&self.queued);
                for t in tickets.into_iter().filter(|t| *t != ticket) {
                    queued.failed.insert(t, why.clone());
                }
                return Err(StoreError::Db(e));
            }
        }
        db.flush()?;
        self.done.fetch_max(upto, SeqCst);
        if let Some(hook) = self.hook.get() {
            hook(FlushStats {
                batch: upto.saturating_sub(before).max(1),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok(())
    }
}

impl Store {
    /// Opens (creating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // sled's default cache is 1 GiB; records are small.
            .cache_capacity(16 * 1024 * 1024)
            // Durability comes from explicit flushes, not a timer.
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.to_owned(),
                source,
            })?;
        let tree = db.open_tree("volumes")?;
        Ok(Self {
            db,
            tree,
            commits: std::sync::Arc::new(GroupCommit::new()),
        })
    }

    /// The underlying database, for other trees (credentials).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Calls `hook` after every flush that succeeded, with the number of
    /// callers it served and its duration. The first hook set stays (one
    /// per store, and its clones).
    pub fn on_flush(&self, hook: FlushHook) {
        let _ = self.commits.hook.set(hook);
    }

    /// Makes everything written so far durable (sharing the flush with
    /// concurrent callers).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.commits.flush(&self.db, &self.tree).await
    }

    /// Like [`commit`](Self::commit) (or [`commit_snapshot`](Self::commit_snapshot)
    /// for [`Kind::Snapshot`]) followed by [`flush`](Self::flush), with
    /// concurrent callers' changes applied in one sled batch before one
    /// flush (see [`GroupCommit`]): returns once the change, and everything
    /// written before it, is durable.
    pub async fn commit_durably<T: Stored>(
        &self,
        kind: Kind,
        key: &VolumeKey,
        record: Option<&T>,
    ) -> Result<(), StoreError> {
        let writes = commit_writes(kind, key, record)?;
        self.commits.commit(&self.db, &self.tree, writes).await
    }

    /// A volume record.
    pub fn get(&self, key: &VolumeKey) -> Result<Option<VolumeRecord>, StoreError> {
        self.get_kind(Kind::Volume, key)
    }

    /// A snapshot record.
    pub fn snapshot(&self, key: &VolumeKey) -> Result<Option<SnapshotRecord>, StoreError> {
        self.get_kind(Kind::Snapshot, key)
    }

    fn get_kind<T: Stored>(&self, kind: Kind, key: &VolumeKey) -> Result<Option<T>, StoreError> {
        let k = key.encode(kind.record());
        self.tree.get(&k)?.map(|raw| decode(&k, &raw)).transpose()
    }

    /// Records an intent (not yet durable: call [`flush`](Self::flush)).
    pub fn begin(&self, key: &VolumeKey, intent: &Intent) -> Result<(), StoreError> {
        let k = key.encode(intent.kind().intent());
        let v = encode(&k, intent)?;
        self.tree.insert(k, v)?;
        Ok(())
    }

    /// Records several intents in one atomic batch (not yet durable: call
    /// [`flush`](Self::flush)).
    pub fn begin_many<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a VolumeKey, &'a Intent)>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, intent) in items {
            let k = key.encode(intent.kind().intent());
            let v = encode(&k, intent)?;
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) several volume records and drops
    /// their intents, all in one atomic batch (not yet durable: call
    /// [`flush`](Self::flush)).
    pub fn commit_many<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a VolumeKey, Option<&'a VolumeRecord>)>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, record) in items {
            let k = key.encode(Kind::Volume.record());
            match record {
                Some(record) => {
                    let v = encode(&k, record)?;
                    batch.insert(k, v);
                }
                None => batch.remove(k),
            }
            batch.remove(key.encode(Kind::Volume.intent()));
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Drops an intent without changing the record.
    pub fn abandon(&self, kind: Kind, key: &VolumeKey) -> Result<(), StoreError> {
        self.tree.remove(key.encode(kind.intent()))?;
        Ok(())
    }

    /// Atomically sets (or removes, with `None`) a volume record and drops
    /// its intent (not yet durable: call [`flush`](Self::flush)).
    pub fn commit(&self, key: &VolumeKey, record: Option<&VolumeRecord>) -> Result<(), StoreError> {
        self.commit_kind(Kind::Volume, key, record)
    }

    /// Like [`commit`](Self::commit), for a snapshot.
    pub fn commit_snapshot(
        &self,
        key: &VolumeKey,
        record: Option<&SnapshotRecord>,
    ) -> Result<(), StoreError> {
        self.commit_kind(Kind::Snapshot, key, record)
    }

    fn commit_kind<T: Stored>(
        &self,
        kind: Kind,
        key: &VolumeKey,
        record: Option<&T>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        add_writes(&mut batch, commit_writes(kind, key, record)?);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Every intent left over, volumes first, in key order.
    pub fn intents(&self) -> Result<Vec<(VolumeKey, Intent)>, StoreError> {
        let mut out = Vec::new();
        for kind in [Kind::Volume, Kind::Snapshot] {
            for entry in self.tree.scan_prefix([kind.intent(), 0]) {
                let (k, v) = entry?;
                let key = VolumeKey::decode(&k).ok_or_else(|| StoreError::Corrupt {
                    key: crate::volumes::encoding::key_name(&k),
                    source: FormatError::BadKey,
                })?;
                out.push((key, decode(&k, &v)?));
            }
        }
        Ok(out)
    }

    /// Snapshots of `services`, in key order, that `keep` accepts. Only
    /// those services' keys are read.
    pub fn snapshots(
        &self,
        services: &[&str],
        keep: impl Fn(&SnapshotRecord) -> bool,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let mut out = Vec::new();
        for service in sorted(services) {
            for entry in self
                .tree
                .scan_prefix(service_prefix(Kind::Snapshot, service))
            {
                let (k, v) = entry?;
                let record: SnapshotRecord = decode(&k, &v)?;
                if keep(&record) {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// One page of volume records of `services`, in key order (service,
    /// then name), starting after `after`, keeping those `keep` accepts, at
    /// most `limit`.
    ///
    /// Only the keys of `services` are read, and at most `budget` records
    /// are examined: a listing whose filter skips most records ends its page
    /// early, with a cursor at the last record it examined, so no call does
    /// unbounded work however many records the caller cannot see or filters
    /// out. A page may therefore be short (even empty) and still have a next
    /// one.
    pub fn page(
        &self,
        services: &[&str],
        after: Option<&VolumeKey>,
        limit: usize,
        budget: usize,
        keep: impl Fn(&VolumeRecord) -> bool,
    ) -> Result<Page, StoreError> {
        let budget = budget.max(1);
        // Sized once: growing a page of thousands of records by doubling
        // showed as memmove in the profile of a million-volume listing.
        let mut page = Page {
            records: Vec::with_capacity(limit.min(budget)),
            next: None,
        };
        let mut examined = 0;
        // The raw key of the last record examined: decoded into the cursor
        // only when the page ends, not for every record.
        let mut last: Option<sled::IVec> = None;
        let cursor = |last: Option<sled::IVec>| last.as_deref().and_then(VolumeKey::decode);
        for service in sorted(services) {
            let prefix = service_prefix(Kind::Volume, service);
            let start = match after {
                Some(after) if after.service.as_str() > service => continue,
                // The smallest key greater than `after`.
                Some(after) if after.service == service => {
                    let mut k = after.encode(Kind::Volume.record());
                    k.push(0);
                    k
                }
                _ => prefix.clone(),
            };
            for entry in self.tree.range(start..) {
                let (k, v) = entry?;
                if !k.starts_with(&prefix) {
                    break;
                }
                if examined == budget {
                    // Resume after the last record examined.
                    page.next = cursor(last);
                    return Ok(page);
                }
                examined += 1;
                let record: VolumeRecord = decode(&k, &v)?;
                if !keep(&record) {
                    last = Some(k);
                    continue;
                }
                if page.records.len() == limit {
                    // More follow: resume after the page's last record.
                    page.next = page
                        .records
                        .last()
                        .map(|r| VolumeKey::new(&r.service, &r.name));
                    return Ok(page);
                }
                page.records.push(record);
                last = Some(k);
            }
        }
        page.next = None;
        Ok(page)
    }

    /// The names of `service`'s volumes, reading keys only.
    pub fn volume_names(&self, service: &str) -> Result<Vec<String>, StoreError> {
        self.tree
            .scan_prefix(service_prefix(Kind::Volume, service))
            .keys()
            .map(|k| {
                let k = k?;
                Ok(VolumeKey::decode(&k)
                    .map(|key| key.name)
                    .unwrap_or_default())
            })
            .collect()
    }
}

/// Key writes: a value to set, or `None` to remove the key.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The writes that set (or remove, with `None`) the record of `key` and
/// drop its intent.
fn commit_writes<T: Stored>(
    kind: Kind,
    key: &VolumeKey,
    record: Option<&T>,
) -> Result<Writes, StoreError> {
    let k = key.encode(kind.record());
    let v = match record {
        Some(record) => Some(encode(&k, record)?),
        None => None,
    };
    Ok(vec![(k, v), (key.encode(kind.intent()), None)])
}

/// Adds `writes` to `batch`, in order.
fn add_writes(batch: &mut sled::Batch, writes: Writes) {
    for (k, v) in writes {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
}

/// One page of a volume listing; see [`Store::page`].
#[derive(Debug, Default)]
pub struct Page {
    /// The records, in key order.
    pub records: Vec<VolumeRecord>,
    /// The key the next page starts after, or `None` when this is the last.
    pub next: Option<VolumeKey>,
}

/// The key prefix of one service's records of `kind`.
fn service_prefix(kind: Kind, service: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(3 + service.len());
    prefix.extend_from_slice(&[kind.record(), 0]);
    prefix.extend_from_slice(service.as_bytes());
    prefix.push(0);
    prefix
}

/// Service names in key order, once each. Keys of service `a` sort before
/// those of `a-b` because the separator (NUL) is the smallest byte, so
/// string order is key order.
fn sorted<'a>(services: &[&'a str]) -> Vec<&'a str> {
    let mut sorted = services.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(service: &str, name: &str) -> VolumeRecord {
        VolumeRecord {
            id: format!("id-{service}-{name}"),
            name: name.into(),
            service: service.into(),
            driver: "vfs".into(),
            size_bytes: 1,
            created_at_ms: 0,
            options: BTreeMap::new(),
            fields: BTreeMap::new(),
            attachments: vec![],
            source: None,
        }
    }

    fn names(page: &Page) -> Vec<&str> {
        page.records.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn pages_in_order_and_by_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for (s, n) in [("a", "1"), ("a", "2"), ("a-b", "0"), ("b", "1"), ("b", "2")] {
            store
                .commit(&VolumeKey::new(s, n), Some(&record(s, n)))
                .expect("commit");
        }
        let all = ["b", "a-b", "a"];
        let page = store.page(&all, None, 2, 100, |_| true).expect("page");
        assert_eq!(names(&page), ["1", "2"]);
        assert_eq!(page.next, Some(VolumeKey::new("a", "2")));
        let rest = store
            .page(&all, page.next.as_ref(), 10, 100, |_| true)
            .expect("page");
        assert_eq!(names(&rest), ["0", "1", "2"]);
        assert_eq!(rest.next, None);
        let only_a = store.page(&["a"], None, 10, 100, |_| true).expect("page");
        assert_eq!(
            only_a.records.len(),
            2,
            "the service prefix must not match a-b"
        );
        // Services not asked for are not read at all.
        let only_b = store.page(&["b"], None, 10, 1, |_| true).expect("page");
        assert_eq!(names(&only_b), ["1"]);
    }

    #[test]
    fn a_page_examines_at_most_its_budget_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for i in 0..10 {
            let n = format!("{i}");
            store
                .commit(&VolumeKey::new("s", &n), Some(&record("s", &n)))
                .expect("commit");
        }
        // Only "7" passes the filter; a budget of 3 needs several pages.
        let mut found = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            pages += 1;
            let page = store
                .page(&["s"], after.as_ref(), 10, 3, |r| r.name == "7")
                .expect("page");
            assert!(page.records.len() <= 1);
            found.extend(page.records.into_iter().map(|r| r.name));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
            assert!(pages < 10, "pages never end");
        }
        assert_eq!(found, ["7"]);
        assert_eq!(pages, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_all_return_covered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = VolumeKey::new("s", &format!("v{i}"));
                    store
                        .commit(&key, Some(&record("s", &format!("v{i}"))))
                        .expect("commit");
                    store.flush().await.expect("flush");
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let flushed = store.commits.done.load(SeqCst);
        assert_eq!(flushed, 32, "every ticket is covered by a finished flush");
    }

    /// Bursts of concurrent flushes, each caller with a deadline: the
    /// lost wake-up this guards against needed a caller to arrive in the
    /// instant between a leader publishing its flush and releasing the lock,
    /// and then waited until some later flush. Between bursts nothing else
    /// flushes, so a stranded caller stays stranded and misses its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_caller_is_stranded_between_bursts() {
        // On tmpfs where there is one: the fsyncs are not what is tested.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for round in 0..3000 {
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let name = format!("v{i}");
                        store
                            .commit(&VolumeKey::new("s", &name), Some(&record("s", &name)))
                            .expect("commit");
                        tokio::time::timeout(Duration::from_secs(2), store.flush()).await
                    })
                })
                .collect();
            for t in tasks {
                let flushed = t.await.expect("task");
                assert!(
                    matches!(flushed, Ok(Ok(()))),
                    "round {round}: a flush did not return within 2 s"
                );
            }
        }
        let (taken, done) = (
            store.commits.tickets.load(SeqCst),
            store.commits.done.load(SeqCst),
        );
        assert_eq!(done, taken, "every ticket is covered by a finished flush");
    }

    /// A data directory an earlier release wrote (JSON values) is read,
    /// listed, changed and deleted; what this version writes is binary.
    #[test]
    fn json_of_earlier_releases_is_read_listed_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let old = |name: &str| {
            format!(
                r#"{{"id":"id-{name}","name":"{name}","service":"s","driver":"vfs","size_bytes":1,"created_at_ms":0,"options":{{"size":"1"}},"fields":{{}}}}"#
            )
        };
        for name in ["a", "b", "c"] {
            store
                .tree
                .insert(VolumeKey::new("s", name).encode(b'v'), old(name).as_bytes())
                .expect("insert old JSON");
        }
        let intent = r#"{"op":"create","record":{"id":"id-d","name":"d","service":"s","driver":"vfs","size_bytes":1,"created_at_ms":0,"options":{},"fields":{},"attachments":[],"source":null}}"#;
        store
            .tree
            .insert(VolumeKey::new("s", "d").encode(b'i'), intent.as_bytes())
            .expect("insert old intent");
        let snap = r#"{"id":"x","name":"snap","service":"s","volume":"a","size_bytes":1,"created_at_ms":0}"#;
        store
            .tree
            .insert(VolumeKey::new("s", "snap").encode(b's'), snap.as_bytes())
            .expect("insert old snapshot");

        let page = store.page(&["s"], None, 10, 100, |_| true).expect("page");
        assert_eq!(names(&page), ["a", "b", "c"]);
        assert_eq!(page.records[0].options["size"], "1");
        let intents = store.intents().expect("intents");
        assert_eq!(intents.len(), 1);
        assert_eq!(intents[0].1.op(), "create");
        let snaps = store.snapshots(&["s"], |_| true).expect("snapshots");
        assert_eq!(snaps[0].volume, "a");

        // Changed: written back in the binary form, read the same.
        let key = VolumeKey::new("s", "b");
        let mut b = store.get(&key).expect("get").expect("b");
        b.size_bytes = 2;
        store.commit(&key, Some(&b)).expect("commit");
        let raw = store.tree.get(key.encode(b'v')).expect("raw").expect("b");
        assert_eq!(raw[0], crate::volumes::encoding::BINARY);
        assert_eq!(store.get(&key).expect("get"), Some(b));
        // Deleted, and the intent settled.
        store
            .commit(&VolumeKey::new("s", "a"), None)
            .expect("delete");
        store
            .commit(&VolumeKey::new("s", "d"), Some(&record("s", "d")))
            .expect("commit d");
        let page = store.page(&["s"], None, 10, 100, |_| true).expect("page");
        assert_eq!(names(&page), ["b", "c", "d"]);
        assert!(store.intents().expect("intents").is_empty());
    }

    #[test]
    fn corrupt_values_are_refused_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .commit(&VolumeKey::new("s", "good"), Some(&record("s", "good")))
            .expect("commit");
        store
            .tree
            .insert(
                VolumeKey::new("s", "bad").encode(b'v'),
                &[0x01, 0x0a, 0x7f][..],
            )
            .expect("insert");
        let corrupt = |e: StoreError| match e {
            StoreError::Corrupt { key, .. } => key,
            other => panic!("not Corrupt: {other}"),
        };
        let err = store.get(&VolumeKey::new("s", "bad")).expect_err("bad");
        assert!(err.to_string().contains("\"v/s/bad\""), "{err}");
        assert_eq!(corrupt(err), "v/s/bad");
        let err = store
            .page(&["s"], None, 10, 100, |_| true)
            .expect_err("page");
        assert_eq!(corrupt(err), "v/s/bad");
        store
            .tree
            .insert(VolumeKey::new("s", "v").encode(b'i'), &b"{not json"[..])
            .expect("insert");
        assert_eq!(corrupt(store.intents().expect_err("intents")), "i/s/v");
        // The good record is still read.
        assert!(store
            .get(&VolumeKey::new("s", "good"))
            .expect("get")
            .is_some());
    }

    /// Concurrent durable commits are applied in shared batches and each
    /// returns with its record in place and its intent gone, in the store
    /// and after reopening it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_commits_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let name = format!("v{i}");
                    let key = VolumeKey::new("s", &name);
                    let rec = record("s", &name);
                    store
                        .begin(
                            &key,
                            &Intent::Create {
                                record: rec.clone(),
                            },
                        )
                        .expect("begin");
                    store.flush().await.expect("flush");
                    store
                        .commit_durably(Kind::Volume, &key, Some(&rec))
                        .await
                        .expect("commit");
                    // Durable commits of a removal too.
                    if i % 2 == 0 {
                        store
                            .begin(&key, &Intent::Delete { record: rec })
                            .expect("begin");
                        store
                            .commit_durably::<VolumeRecord>(Kind::Volume, &key, None)
                            .await
                            .expect("commit a removal");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let check = |store: &Store| {
            assert!(store.intents().expect("intents").is_empty());
            for i in 0..32 {
                let got = store
                    .get(&VolumeKey::new("s", &format!("v{i}")))
                    .expect("get");
                assert_eq!(got.is_some(), i % 2 == 1, "v{i}");
            }
        };
        check(&store);
        assert!(lock_queued(&store.commits.queued).changes.is_empty());
        drop(store);
        check(&Store::open(dir.path()).expect("reopen"));
    }

    /// A commit whose caller is cancelled while it waits for a leader takes
    /// its change back: its lock on the volume is gone with it, so a change
    /// applied later could overwrite the next operation's. Its intent stays
    /// for the next start to settle, as for any interrupted operation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_commit_is_not_applied_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let key = VolumeKey::new("s", "v");
        let rec = record("s", "v");
        store
            .begin(
                &key,
                &Intent::Create {
                    record: rec.clone(),
                },
            )
            .expect("begin");
        // Hold the leader's lock so the commit waits in the queue.
        let held = Arc::clone(&store.commits.flushing).lock_owned().await;
        let waiting = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.commit_durably(Kind::Volume, &key, Some(&rec)).await })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock_queued(&store.commits.queued).changes.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit never queued"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        waiting.abort();
        assert!(waiting.await.is_err(), "the commit was cancelled");
        assert!(lock_queued(&store.commits.queued).changes.is_empty());
        drop(held);
        store.flush().await.expect("flush");
        assert_eq!(store.get(&key).expect("get"), None);
        assert_eq!(store.intents().expect("intents").len(), 1);
    }

    #[test]
    fn commit_replaces_the_intent_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let key = VolumeKey::new("s", "v");
        let rec = record("s", "v");
        store
            .begin(
                &key,
                &Intent::Create {
                    record: rec.clone(),
                },
            )
            .expect("begin");
        assert_eq!(store.intents().expect("intents").len(), 1);
        store.commit(&key, Some(&rec)).expect("commit");
        assert!(store.intents().expect("intents").is_empty());
        assert_eq!(store.get(&key).expect("get"), Some(rec));
    }
}
