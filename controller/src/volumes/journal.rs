//! The journaled operation: the one place crash safety is decided.
//!
//! Every change to a driver's storage runs as one [`Journal::run`]:
//!
//! 1. write the [`Intent`] and flush it: from here a crash is settled at the
//!    next start ([`crate::volumes::Volumes::reconcile`]);
//! 2. call the driver;
//! 3. on success, apply the record change and drop the intent in one atomic
//!    batch, and flush before answering ([`Records::commit_durably`]: the
//!    sled store applies concurrent operations' commits in one batch);
//! 4. on failure, undo what the driver may have made (unless the error says
//!    it touched nothing), drop the intent and flush; if the undo itself
//!    fails, the intent stays for the next start to settle.
//!
//! A batch of creates ([`Journal::create_many`]) follows the same steps with
//! one durable write for all its intents before the driver is called and
//! one for all its records after, so a crash anywhere in a batch leaves
//! intents that the next start undoes, and nothing of the batch is
//! acknowledged.
//!
//! The journal speaks to its records through [`Records`]: the sled
//! [`Store`](crate::volumes::store::Store) by default, etcd when asked. Every
//! write carries the [`Fence`] of the lock the operation holds.

use std::future::Future;
use std::sync::Arc;

use berth_drivers::{DriverError, DriverVolume};

use crate::volumes::records::{Fence, Records};
use crate::volumes::store::{Intent, Kind, SnapshotRecord, StoreError, VolumeKey, VolumeRecord};

/// The record change an operation commits together with dropping its
/// intent.
#[derive(Debug)]
pub enum Change<'a> {
    /// Set (`Some`) or remove (`None`) a volume record.
    Volume(Option<&'a VolumeRecord>),
    /// Set (`Some`) or remove (`None`) a snapshot record.
    Snapshot(Option<&'a SnapshotRecord>),
}

/// Why a journaled operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The driver refused or failed; the records are as before.
    #[error(transparent)]
    Driver(DriverError),
    /// The records could not be written or flushed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs driver operations between an intent and its commit.
#[derive(Clone)]
pub struct Journal {
    log: Arc<dyn Records>,
}

impl Journal {
    /// A journal writing to `log`.
    pub fn new(log: Arc<dyn Records>) -> Self {
        Self { log }
    }

    /// Runs one journaled operation (see the module documentation).
    /// `call` is the driver operation; `undo` removes what a failed `call`
    /// may have left (`None` when a failure leaves nothing to undo, as for
    /// deletes); `settle` turns the driver's answer into the record change
    /// to commit (a record to set, or `None` to remove it) and the value to
    /// return. Every write is fenced on `fence`, the lock of `key`.
    pub async fn run<T, Rec, Out>(
        &self,
        fence: &Fence,
        key: &VolumeKey,
        intent: &Intent,
        call: impl Future<Output = Result<T, DriverError>>,
        undo: Option<impl Future<Output = Result<(), DriverError>>>,
        settle: impl FnOnce(T) -> (Option<Rec>, Out),
    ) -> Result<Out, JournalError>
    where
        Rec: Recorded,
    {
        let kind = intent.kind();
        self.log.begin(fence, key, intent).await?;
        self.log.flush().await?;
        match call.await {
            Ok(done) => {
                let (record, value) = settle(done);
                self.log
                    .commit_durably(fence, key, Rec::change(record.as_ref()))
                    .await?;
                Ok(value)
            }
            Err(failed) => {
                if let Some(undo) = undo.filter(|_| !untouched(&failed)) {
                    if let Err(e) = undo.await {
                        // Keep the intent: the next start undoes it.
                        tracing::warn!(service = %key.service, name = %key.name, op = intent.op(), error = %e,
                            "could not undo a failed operation; it will be undone at the next start");
                        return Err(JournalError::Driver(failed));
                    }
                }
                self.log.abandon(fence, kind, key).await?;
                self.log.flush().await?;
                Err(JournalError::Driver(failed))
            }
        }
    }

    /// Commits the outcome of settling a left-over intent (at start).
    pub async fn settle(
        &self,
        fence: &Fence,
        key: &VolumeKey,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        self.log.commit(fence, key, change).await
    }

    /// Drops a left-over intent whose operation was undone (at start).
    pub async fn abandon(
        &self,
        fence: &Fence,
        kind: Kind,
        key: &VolumeKey,
    ) -> Result<(), StoreError> {
        self.log.abandon(fence, kind, key).await
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.log.flush().await
    }
}

/// One create of a journaled batch ([`Journal::create_many`]).
pub struct Creating<'a, C, U> {
    /// The lock the create holds.
    pub fence: &'a Fence,
    /// The volume's key.
    pub key: &'a VolumeKey,
    /// The record it will have; the driver's answer fills in its size and
    /// fields.
    pub record: VolumeRecord,
    /// The driver's create.
    pub call: C,
    /// Removes what a failed `call` may have left.
    pub undo: U,
}

impl Journal {
    /// Runs a batch of creates: every intent is written in one batch and
    /// flushed once, the driver is called for each volume in turn, then
    /// every record (and the removal of every intent whose create failed and
    /// was undone) is applied in one batch and flushed once. Returns each
    /// create's outcome in `items` order; an error of the store fails the
    /// whole batch, acknowledging none of it (the next start settles what
    /// it left). A failed create whose undo also failed keeps its intent for
    /// the next start, as in [`Journal::run`].
    pub async fn create_many<C, U>(
        &self,
        items: Vec<Creating<'_, C, U>>,
    ) -> Result<Vec<Result<VolumeRecord, DriverError>>, StoreError>
    where
        C: Future<Output = Result<DriverVolume, DriverError>>,
        U: Future<Output = Result<(), DriverError>>,
    {
        let intents: Vec<Intent> = items
            .iter()
            .map(|item| Intent::Create {
                record: item.record.clone(),
            })
            .collect();
        let begun: Vec<(&Fence, &VolumeKey, &Intent)> = items
            .iter()
            .zip(&intents)
            .map(|(item, intent)| (item.fence, item.key, intent))
            .collect();
        self.log.begin_many(&begun).await?;
        self.log.flush().await?;
        drop(begun);
        let mut outcomes = Vec::with_capacity(items.len());
        // (fence, key, record to set or None to drop the intent only)
        let mut settled = Vec::with_capacity(items.len());
        for item in items {
            let Creating {
                fence,
                key,
                mut record,
                call,
                undo,
            } = item;
            match call.await {
                Ok(created) => {
                    record.size_bytes = created.size_bytes;
                    record.fields = created.fields;
                    settled.push((fence, key, Some(record.clone())));
                    outcomes.push(Ok(record));
                }
                Err(failed) => {
                    if !untouched(&failed) {
                        if let Err(e) = undo.await {
                            tracing::warn!(service = %key.service, name = %key.name, op = "create", error = %e,
                                "could not undo a failed create of a batch; it will be undone at the next start");
                            outcomes.push(Err(failed));
                            continue;
                        }
                    }
                    // No record existed (the caller checked under the
                    // lock), so removing it and the intent is abandoning.
                    settled.push((fence, key, None));
                    outcomes.push(Err(failed));
                }
            }
        }
        let commits: Vec<(&Fence, &VolumeKey, Option<&VolumeRecord>)> = settled
            .iter()
            .map(|(fence, key, record)| (*fence, *key, record.as_ref()))
            .collect();
        self.log.commit_volumes(&commits).await?;
        self.log.flush().await?;
        Ok(outcomes)
    }
}

/// A record type the journal commits.
pub trait Recorded: Sized {
    /// The change that sets (`Some`) or removes (`None`) such a record.
    fn change(record: Option<&Self>) -> Change<'_>;
}

impl Recorded for VolumeRecord {
    fn change(record: Option<&Self>) -> Change<'_> {
        Change::Volume(record)
    }
}

impl Recorded for SnapshotRecord {
    fn change(record: Option<&Self>) -> Change<'_> {
        Change::Snapshot(record)
    }
}

/// Whether a driver error says it refused before touching anything, so there
/// is nothing to undo.
pub fn untouched(error: &DriverError) -> bool {
    matches!(
        error,
        DriverError::AlreadyExists(_)
            | DriverError::InvalidArgument(_)
            | DriverError::OutOfRange(_)
            | DriverError::InvalidOption { .. }
            | DriverError::NotFound(_)
            | DriverError::FailedPrecondition(_)
            | DriverError::Unsupported { .. }
    )
}
