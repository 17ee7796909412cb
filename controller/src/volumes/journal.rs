//! The journaled operation: the one place crash safety is decided.
//!
//! Every change to a driver's storage runs as one [`Journal::run`]:
//!
//! 1. write the [`Intent`] and flush it: from here a crash is settled at the
//!    next start ([`crate::volumes::Volumes::reconcile`]);
//! 2. call the driver;
//! 3. on success, apply the record change and drop the intent in one atomic
//!    batch, and flush before answering;
//! 4. on failure, undo what the driver may have made (unless the error says
//!    it touched nothing), drop the intent and flush; if the undo itself
//!    fails, the intent stays for the next start to settle.
//!
//! The journal speaks to its records through [`IntentLog`]: the sled
//! [`Store`] is the one there is; a distributed store implements the same
//! calls.

use std::future::Future;

use berth_drivers::DriverError;

use crate::volumes::store::{
    Intent, Kind, SnapshotRecord, Store, StoreError, VolumeKey, VolumeRecord,
};

/// The record change an operation commits together with dropping its
/// intent.
#[derive(Debug)]
pub enum Change<'a> {
    /// Set (`Some`) or remove (`None`) a volume record.
    Volume(Option<&'a VolumeRecord>),
    /// Set (`Some`) or remove (`None`) a snapshot record.
    Snapshot(Option<&'a SnapshotRecord>),
}

/// What the journal needs of a record store.
pub trait IntentLog {
    /// Records an intent (durable after [`IntentLog::flush`]).
    fn begin(&self, key: &VolumeKey, intent: &Intent) -> Result<(), StoreError>;
    /// Applies `change` and drops the intent of its kind, atomically.
    fn commit(&self, key: &VolumeKey, change: Change<'_>) -> Result<(), StoreError>;
    /// Drops an intent without changing any record.
    fn abandon(&self, kind: Kind, key: &VolumeKey) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl IntentLog for Store {
    fn begin(&self, key: &VolumeKey, intent: &Intent) -> Result<(), StoreError> {
        Store::begin(self, key, intent)
    }

    fn commit(&self, key: &VolumeKey, change: Change<'_>) -> Result<(), StoreError> {
        match change {
            Change::Volume(record) => Store::commit(self, key, record),
            Change::Snapshot(record) => Store::commit_snapshot(self, key, record),
        }
    }

    fn abandon(&self, kind: Kind, key: &VolumeKey) -> Result<(), StoreError> {
        Store::abandon(self, kind, key)
    }

    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        Store::flush(self)
    }
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
pub struct Journal<L = Store> {
    log: L,
}

impl<L: IntentLog> Journal<L> {
    /// A journal writing to `log`.
    pub fn new(log: L) -> Self {
        Self { log }
    }

    /// Runs one journaled operation (see the module documentation).
    /// `call` is the driver operation; `undo` removes what a failed `call`
    /// may have left (`None` when a failure leaves nothing to undo, as for
    /// deletes); `settle` turns the driver's answer into the record change
    /// to commit (a record to set, or `None` to remove it) and the value to
    /// return.
    pub async fn run<T, Rec, Out>(
        &self,
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
        self.log.begin(key, intent)?;
        self.log.flush().await?;
        match call.await {
            Ok(done) => {
                let (record, value) = settle(done);
                self.log.commit(key, Rec::change(record.as_ref()))?;
                self.log.flush().await?;
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
                self.log.abandon(kind, key)?;
                self.log.flush().await?;
                Err(JournalError::Driver(failed))
            }
        }
    }

    /// Commits the outcome of settling a left-over intent (at start).
    pub fn settle(&self, key: &VolumeKey, change: Change<'_>) -> Result<(), StoreError> {
        self.log.commit(key, change)
    }

    /// Drops a left-over intent whose operation was undone (at start).
    pub fn abandon(&self, kind: Kind, key: &VolumeKey) -> Result<(), StoreError> {
        self.log.abandon(kind, key)
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.log.flush().await
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
