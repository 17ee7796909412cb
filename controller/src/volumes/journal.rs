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
//! The journal speaks to its records through [`Records`]: the sled
//! [`Store`](crate::volumes::store::Store) by default, etcd when asked. Every
//! write carries the [`Fence`] of the lock the operation holds.

use std::future::Future;
use std::sync::Arc;

use berth_drivers::DriverError;

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
                    .commit(fence, key, Rec::change(record.as_ref()))
                    .await?;
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
