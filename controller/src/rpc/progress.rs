//! Server-streaming progress for the long operations (`CopyVolumeWithProgress`,
//! `CreateVolumeWithProgress`, `CreateSnapshotWithProgress`): the operation
//! runs in its own task with a [`Progress`] the driver reports to, and a
//! second task sends the latest figures at most every
//! [`PROGRESS_EVERY`], then the result as the last event (or the error as
//! the stream's status). A caller that goes away stops receiving, never
//! the operation.

use std::future::Future;
use std::time::{Duration, Instant};

use berth_drivers::Progress;
use berth_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::volumes::VolumeError;

/// The least time between two progress events of one call.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A stream of events, each a message or the call's final error.
pub type EventStream<T> = ReceiverStream<Result<T, Status>>;

/// Runs `work` with a progress its driver reports to, and streams
/// `progress_event`s while it runs, then `done_event` of its result.
pub fn watched<R, T, F>(
    work: impl FnOnce(Progress) -> F,
    progress_event: fn(pb::Progress) -> T,
    done_event: fn(R) -> T,
) -> EventStream<T>
where
    F: Future<Output = Result<R, VolumeError>> + Send + 'static,
    R: Send + 'static,
    T: Send + 'static,
{
    let (latest_tx, mut latest) = tokio::sync::watch::channel((0u64, 0u64));
    let progress = Progress::new(move |done, total| {
        latest_tx.send_replace((done, total));
    });
    let mut task = tokio::spawn(work(progress));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first figure goes at once (the caller learns the total), the
        // next ones at most every PROGRESS_EVERY.
        let (mut last_sent, mut pending, mut open) = (None::<Instant>, false, true);
        loop {
            let send_now = tokio::select! {
                biased;
                joined = &mut task => {
                    let last = match joined {
                        Ok(Ok(result)) => Ok(done_event(result)),
                        Ok(Err(e)) => Err(Status::from(e)),
                        Err(e) => Err(Status::internal(format!("the operation's task failed: {e}"))),
                    };
                    let _ = tx.send(last).await;
                    return;
                }
                changed = latest.changed(), if open => {
                    open = changed.is_ok();
                    pending = open;
                    last_sent.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY)
                }
                _ = tick.tick(), if pending => true,
            };
            if send_now && pending {
                let (done_bytes, total_bytes) = *latest.borrow_and_update();
                // A full queue (a slow reader) or a caller gone: skip this
                // figure, the next one says more.
                let _ = tx.try_send(Ok(progress_event(pb::Progress {
                    done_bytes,
                    total_bytes,
                })));
                last_sent = Some(Instant::now());
                pending = false;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A progress event of a volume operation.
pub fn volume_progress(p: pb::Progress) -> pb::VolumeProgress {
    pb::VolumeProgress {
        event: Some(pb::volume_progress::Event::Progress(p)),
    }
}

/// The last event of a volume operation.
pub fn volume_done(v: pb::Volume) -> pb::VolumeProgress {
    pb::VolumeProgress {
        event: Some(pb::volume_progress::Event::Volume(v)),
    }
}

/// A progress event of a snapshot.
pub fn snapshot_progress(p: pb::Progress) -> pb::SnapshotProgress {
    pb::SnapshotProgress {
        event: Some(pb::snapshot_progress::Event::Progress(p)),
    }
}

/// The last event of a snapshot.
pub fn snapshot_done(s: pb::Snapshot) -> pb::SnapshotProgress {
    pb::SnapshotProgress {
        event: Some(pb::snapshot_progress::Event::Snapshot(s)),
    }
}
