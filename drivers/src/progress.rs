//! [`Progress`]: how a driver reports how far a long operation (a copy, a
//! snapshot, a restore) has come, for the controller to pass on to the
//! client that asked. Reporting is optional: a driver that never reports
//! is correct, and the default [`Progress::none`] discards everything.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

/// Where a driver reports progress: bytes done so far out of a total.
/// Cheap to clone; calling [`report`](Self::report) often (every megabyte)
/// is fine, the receiver coalesces.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

impl Progress {
    /// Progress nobody listens to.
    pub fn none() -> Self {
        Self::default()
    }

    /// Progress passed to `sink(done_bytes, total_bytes)`.
    pub fn new(sink: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        Self {
            sink: Some(Arc::new(sink)),
        }
    }

    /// Whether anyone listens (a driver may skip measuring the total when
    /// nobody does).
    pub fn is_listened(&self) -> bool {
        self.sink.is_some()
    }

    /// Reports `done` bytes out of `total`.
    pub fn report(&self, done: u64, total: u64) {
        if let Some(sink) = &self.sink {
            sink(done, total);
        }
    }

    /// Runs `work` (on the current thread) with this progress as the one the
    /// file drivers' copy helpers report to.
    pub(crate) fn scope<T>(&self, work: impl FnOnce() -> T) -> T {
        if !self.is_listened() {
            return work();
        }
        let previous = CURRENT.with(|c| {
            c.borrow_mut().replace(Counter {
                progress: self.clone(),
                done: 0,
                total: 0,
            })
        });
        let out = work();
        CURRENT.with(|c| *c.borrow_mut() = previous);
        out
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("listened", &self.is_listened())
            .finish()
    }
}

struct Counter {
    progress: Progress,
    done: u64,
    total: u64,
}

thread_local! {
    static CURRENT: RefCell<Option<Counter>> = const { RefCell::new(None) };
}

/// Whether a [`Progress::scope`] with a listener is open on this thread.
pub(crate) fn listened() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// Adds `bytes` to the total of the open scope (and reports).
pub(crate) fn add_total(bytes: u64) {
    CURRENT.with(|c| {
        if let Some(counter) = c.borrow_mut().as_mut() {
            counter.total = counter.total.saturating_add(bytes);
            counter.progress.report(counter.done, counter.total);
        }
    });
}

/// Adds `bytes` to what the open scope has done (and reports).
pub(crate) fn advance(bytes: u64) {
    CURRENT.with(|c| {
        if let Some(counter) = c.borrow_mut().as_mut() {
            counter.done = counter.done.saturating_add(bytes);
            counter.progress.report(counter.done, counter.total);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_scope_reports_to_its_progress_and_nothing_outside() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let progress = Progress::new(move |d, t| sink.lock().expect("lock").push((d, t)));
        advance(5);
        progress.scope(|| {
            assert!(listened());
            add_total(10);
            advance(4);
            advance(6);
        });
        assert!(!listened());
        advance(1);
        assert_eq!(*seen.lock().expect("lock"), [(0, 10), (4, 10), (10, 10)]);
        Progress::none().scope(|| assert!(!listened()));
    }
}
