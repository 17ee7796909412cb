//! The record store seam: what [`crate::volumes::Volumes`] and the
//! [`crate::volumes::journal::Journal`] need of a store, so that the
//! embedded sled [`Store`] (the default) and a distributed store (etcd,
//! behind the `etcd` feature) are interchangeable.
//!
//! Every call is async, because a distributed store answers over the
//! network; the sled store answers at once. Writes take the [`Fence`] of
//! the lock the operation holds ([`Records::lock`]): a store shared by
//! several controllers refuses a write whose lock was lost (its lease
//! expired), so a controller that stalled cannot overwrite anyone. The sled
//! store has one controller and its locks are in memory, so its fence is
//! empty and every write goes through.

use std::any::Any;

use crate::volumes::journal::Change;
use crate::volumes::store::{
    Intent, Kind, Page, SnapshotRecord, Store, StoreError, VolumeKey, VolumeRecord,
};

/// A held store lock: what a write proves it still holds. Dropping it
/// releases the lock.
#[derive(Default)]
pub struct Fence {
    /// The lock key and the revision it was taken at, for stores that
    /// fence writes on it; `None` for stores with one writer.
    pub token: Option<FenceToken>,
    /// Releases the lock when dropped.
    _release: Option<Box<dyn Any + Send + Sync>>,
}

impl Fence {
    /// A fence for a store with one writer: nothing to compare.
    pub fn none() -> Self {
        Self::default()
    }

    /// A fence on `token`, releasing the lock through `release`'s drop.
    pub fn held(token: FenceToken, release: Box<dyn Any + Send + Sync>) -> Self {
        Self {
            token: Some(token),
            _release: Some(release),
        }
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("token", &self.token).finish()
    }
}

/// Which lock key a write is fenced on, and at which revision it was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceToken {
    /// The lock key.
    pub key: Vec<u8>,
    /// The revision at which the lock key was created.
    pub revision: i64,
}

/// A listing filter over volume records.
pub type KeepVolume<'a> = dyn for<'r> Fn(&'r VolumeRecord) -> bool + Send + Sync + 'a;
/// A listing filter over snapshot records.
pub type KeepSnapshot<'a> = dyn for<'r> Fn(&'r SnapshotRecord) -> bool + Send + Sync + 'a;

/// What the controller needs of a record store: volume and snapshot
/// records, intents, attachments (part of the volume record), listing by
/// service, durability and per-object locks.
#[tonic::async_trait]
pub trait Records: Send + Sync + 'static {
    /// Takes the store-wide lock of one object (`kind`, `key`) for one
    /// operation. `wait`: wait for a holder to finish (within the store's
    /// own bound) rather than answer [`StoreError::Contended`] at once.
    async fn lock(&self, kind: Kind, key: &VolumeKey, wait: bool) -> Result<Fence, StoreError>;
    /// A volume record.
    async fn get(&self, key: &VolumeKey) -> Result<Option<VolumeRecord>, StoreError>;
    /// A snapshot record.
    async fn snapshot(&self, key: &VolumeKey) -> Result<Option<SnapshotRecord>, StoreError>;
    /// Records an intent (durable after [`Records::flush`]). A create's
    /// intent is refused when another intent of the same key is recorded.
    async fn begin(
        &self,
        fence: &Fence,
        key: &VolumeKey,
        intent: &Intent,
    ) -> Result<(), StoreError>;
    /// Applies `change` and drops the intent of its kind, atomically.
    async fn commit(
        &self,
        fence: &Fence,
        key: &VolumeKey,
        change: Change<'_>,
    ) -> Result<(), StoreError>;
    /// [`Records::commit`] followed by [`Records::flush`]: returns once the
    /// change, and everything written before it, is durable. A store that
    /// can share one write and one flush among concurrent callers does (the
    /// sled store: [`Store::commit_durably`]).
    async fn commit_durably(
        &self,
        fence: &Fence,
        key: &VolumeKey,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        self.commit(fence, key, change).await?;
        self.flush().await
    }
    /// Records the intents of a batch (durable after [`Records::flush`]),
    /// each as [`Records::begin`] would. A store that can write them in one
    /// atomic batch does; the default writes them one by one.
    async fn begin_many(&self, items: &[(&Fence, &VolumeKey, &Intent)]) -> Result<(), StoreError> {
        for (fence, key, intent) in items {
            self.begin(fence, key, intent).await?;
        }
        Ok(())
    }
    /// Sets (`Some`) or removes (`None`) the volume records of a batch and
    /// drops their volume intents, each as [`Records::commit`] would; a
    /// store that can apply them in one atomic batch does.
    async fn commit_volumes(
        &self,
        items: &[(&Fence, &VolumeKey, Option<&VolumeRecord>)],
    ) -> Result<(), StoreError> {
        for (fence, key, record) in items {
            self.commit(fence, key, Change::Volume(*record)).await?;
        }
        Ok(())
    }
    /// Drops an intent without changing any record.
    async fn abandon(&self, fence: &Fence, kind: Kind, key: &VolumeKey) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<(), StoreError>;
    /// Every intent left over, volumes first, in key order.
    async fn intents(&self) -> Result<Vec<(VolumeKey, Intent)>, StoreError>;
    /// The intent of one object (`kind`, `key`), if one is recorded. A
    /// caller holding the object's lock reads what no live operation can be
    /// writing: an intent found then was left by an operation that ended
    /// without settling it (its controller died, or its undo failed).
    async fn intent(&self, kind: Kind, key: &VolumeKey) -> Result<Option<Intent>, StoreError> {
        Ok(self
            .intents()
            .await?
            .into_iter()
            .find(|(k, i)| k == key && i.kind() == kind)
            .map(|(_, i)| i))
    }
    /// Snapshots of `services`, in key order, that `keep` accepts.
    async fn snapshots(
        &self,
        services: &[&str],
        keep: &KeepSnapshot<'_>,
    ) -> Result<Vec<SnapshotRecord>, StoreError>;
    /// One page of volume records; see [`Store::page`].
    async fn page(
        &self,
        services: &[&str],
        after: Option<&VolumeKey>,
        limit: usize,
        budget: usize,
        keep: &KeepVolume<'_>,
    ) -> Result<Page, StoreError>;
    /// The names of `service`'s volumes.
    async fn volume_names(&self, service: &str) -> Result<Vec<String>, StoreError>;
    /// Whether several controllers share this store (locks and intents of
    /// others are then visible in it).
    fn shared(&self) -> bool {
        false
    }
    /// How often a running controller looks for intents that another,
    /// dead controller left (see [`crate::volumes::Volumes::settle_orphans`]);
    /// `None` for a store with one controller, whose left-overs are settled
    /// at its next start.
    fn orphan_scan(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The sled store: one controller, in-memory locks (in
/// [`crate::volumes::Volumes`]), so the fence is empty and ignored.
#[tonic::async_trait]
impl Records for Store {
    async fn lock(&self, _kind: Kind, _key: &VolumeKey, _wait: bool) -> Result<Fence, StoreError> {
        Ok(Fence::none())
    }

    async fn get(&self, key: &VolumeKey) -> Result<Option<VolumeRecord>, StoreError> {
        Store::get(self, key)
    }

    async fn snapshot(&self, key: &VolumeKey) -> Result<Option<SnapshotRecord>, StoreError> {
        Store::snapshot(self, key)
    }

    async fn begin(
        &self,
        _fence: &Fence,
        key: &VolumeKey,
        intent: &Intent,
    ) -> Result<(), StoreError> {
        Store::begin(self, key, intent)
    }

    async fn commit(
        &self,
        _fence: &Fence,
        key: &VolumeKey,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        match change {
            Change::Volume(record) => Store::commit(self, key, record),
            Change::Snapshot(record) => Store::commit_snapshot(self, key, record),
        }
    }

    async fn commit_durably(
        &self,
        _fence: &Fence,
        key: &VolumeKey,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        match change {
            Change::Volume(record) => Store::commit_durably(self, Kind::Volume, key, record).await,
            Change::Snapshot(record) => {
                Store::commit_durably(self, Kind::Snapshot, key, record).await
            }
        }
    }

    async fn begin_many(&self, items: &[(&Fence, &VolumeKey, &Intent)]) -> Result<(), StoreError> {
        Store::begin_many(self, items.iter().map(|(_, key, intent)| (*key, *intent)))
    }

    async fn commit_volumes(
        &self,
        items: &[(&Fence, &VolumeKey, Option<&VolumeRecord>)],
    ) -> Result<(), StoreError> {
        Store::commit_many(self, items.iter().map(|(_, key, record)| (*key, *record)))
    }

    async fn abandon(&self, _fence: &Fence, kind: Kind, key: &VolumeKey) -> Result<(), StoreError> {
        Store::abandon(self, kind, key)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Store::flush(self).await
    }

    async fn intents(&self) -> Result<Vec<(VolumeKey, Intent)>, StoreError> {
        Store::intents(self)
    }

    async fn snapshots(
        &self,
        services: &[&str],
        keep: &KeepSnapshot<'_>,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        Store::snapshots(self, services, keep)
    }

    async fn page(
        &self,
        services: &[&str],
        after: Option<&VolumeKey>,
        limit: usize,
        budget: usize,
        keep: &KeepVolume<'_>,
    ) -> Result<Page, StoreError> {
        Store::page(self, services, after, limit, budget, keep)
    }

    async fn volume_names(&self, service: &str) -> Result<Vec<String>, StoreError> {
        Store::volume_names(self, service)
    }
}
