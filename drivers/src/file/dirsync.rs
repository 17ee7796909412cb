//! Directory syncs shared by concurrent callers (group commit for `fsync`
//! of a directory).
//!
//! A create or delete of a file-backed volume ends with an `fsync` of the
//! directory that names it. With 32 creates in flight, 32 `fsync`s of the
//! same directory queue behind each other although one that starts after
//! all 32 changes covers every one of them. [`sync`] lets callers share:
//! each caller takes a ticket after its change; whoever finds no sync
//! running starts one that covers every ticket taken so far; the others wait
//! for a sync that covers theirs.
//!
//! Why no caller can return before its change is durable: a sync started by
//! a leader covers `requested` as the leader read it under the lock, just
//! before its `fsync`. Every ticket up to that value was taken, under the
//! same lock, after its caller's change, so the `fsync` began after each of
//! those changes. A caller returns `Ok` only once `synced` (the coverage of
//! a successful `fsync`) has reached its ticket.
//!
//! Why no caller can wait forever: waiters sleep on the condition variable
//! while holding the state lock, and the leader clears `syncing` and
//! notifies under that lock, so a wake-up cannot fall between a waiter's
//! check and its sleep. A waiter woken with its ticket still uncovered (the
//! leader's `fsync` began before its ticket, or failed) finds no sync
//! running and leads the next one itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

/// The sync state of one directory.
#[derive(Default)]
struct Gate {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// Tickets handed out (the last one taken).
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// A leader is in its `fsync`.
    syncing: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent at every unlock, so a panic elsewhere
    // (which poisons) leaves nothing half-done to refuse.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gate {
    /// Returns once a successful `fsync` (run by this caller or another)
    /// began after this call did; `fsync`'s error if this caller's own run
    /// failed.
    fn sync<E>(&self, fsync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut state = lock(&self.state);
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if !state.syncing {
                state.syncing = true;
                let covers = state.requested;
                drop(state);
                let result = fsync();
                let mut state = lock(&self.state);
                state.syncing = false;
                if result.is_ok() {
                    state.synced = state.synced.max(covers);
                }
                self.done.notify_all();
                return result;
            }
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The gates of the directories being synced now. An entry lives only while
/// someone uses it, so the map holds at most one entry per caller.
fn gates() -> &'static Mutex<HashMap<PathBuf, Arc<Gate>>> {
    static GATES: OnceLock<Mutex<HashMap<PathBuf, Arc<Gate>>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// Runs `fsync` for `dir`, or waits for a concurrent caller's `fsync` of the
/// same directory that began after this call (see the module documentation).
pub(crate) fn sync<E>(dir: &Path, fsync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
    let gate = Arc::clone(lock(gates()).entry(dir.to_path_buf()).or_default());
    let result = gate.sync(fsync);
    let mut map = lock(gates());
    drop(gate);
    // Both this check and every clone happen under the map's lock: a count
    // of one means nobody else holds or can be about to use this gate.
    if map.get(dir).is_some_and(|g| Arc::strong_count(g) == 1) {
        map.remove(dir);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_fsyncs_and_every_one_returns() {
        let dir = Path::new("/berth-test/dirsync/shared");
        let runs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let runs = Arc::clone(&runs);
                std::thread::spawn(move || {
                    sync(dir, || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        Ok::<(), ()>(())
                    })
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().expect("thread"), Ok(()));
        }
        let runs = runs.load(Ordering::SeqCst);
        assert!(
            (1..32).contains(&runs),
            "32 callers ran {runs} fsyncs; they should share"
        );
        assert!(
            !lock(gates()).contains_key(dir),
            "the gate outlived its callers"
        );
    }

    /// A sync already running when a caller arrives does not cover that
    /// caller's change: the caller must get a sync of its own.
    #[test]
    fn a_sync_begun_before_the_call_does_not_cover_it() {
        let dir = Path::new("/berth-test/dirsync/ordering");
        let (entered, entered_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let first = std::thread::spawn(move || {
            sync(dir, || {
                entered.send(()).expect("send");
                release_rx.recv().expect("release");
                Ok::<(), ()>(())
            })
        });
        entered_rx.recv().expect("first fsync started");
        let later_ran = Arc::new(AtomicUsize::new(0));
        let second = {
            let later_ran = Arc::clone(&later_ran);
            std::thread::spawn(move || {
                sync(dir, || {
                    later_ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ()>(())
                })
            })
        };
        // Give the second caller time to take its ticket and wait.
        std::thread::sleep(Duration::from_millis(50));
        release.send(()).expect("release");
        assert_eq!(first.join().expect("first"), Ok(()));
        assert_eq!(second.join().expect("second"), Ok(()));
        assert_eq!(
            later_ran.load(Ordering::SeqCst),
            1,
            "the second caller returned on a sync that began before it"
        );
    }

    /// A failed fsync is reported to the caller that ran it and covers
    /// nobody: a caller that waited on it runs its own.
    #[test]
    fn a_failed_sync_covers_nobody() {
        let dir = Path::new("/berth-test/dirsync/failure");
        let runs = Arc::new(AtomicUsize::new(0));
        let (entered, entered_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        // The first run blocks until released; the second fails; any later
        // one succeeds.
        let fsync = {
            let runs = Arc::clone(&runs);
            let gate = Arc::new(Mutex::new(Some((entered, release_rx))));
            move || {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some((entered, release_rx)) = lock(&gate).take() {
                    entered.send(()).expect("send");
                    release_rx.recv().expect("release");
                }
                if run == 2 {
                    Err("disk on fire")
                } else {
                    Ok(())
                }
            }
        };
        let spawn = |fsync: Box<dyn FnOnce() -> Result<(), &'static str> + Send>| {
            std::thread::spawn(move || sync(dir, fsync))
        };
        let first = spawn(Box::new(fsync.clone()));
        entered_rx.recv().expect("first fsync started");
        // Two callers arrive while the first sync runs: it cannot cover
        // them, so one of them leads the second (failing) run and the other
        // waits on it.
        let waiting = [spawn(Box::new(fsync.clone())), spawn(Box::new(fsync))];
        std::thread::sleep(Duration::from_millis(50));
        release.send(()).expect("release");
        assert_eq!(first.join().expect("first"), Ok(()));
        let mut outcomes: Vec<_> = waiting
            .into_iter()
            .map(|t| t.join().expect("caller"))
            .collect();
        outcomes.sort();
        assert_eq!(outcomes, vec![Ok(()), Err("disk on fire")]);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "the caller that waited on a failed sync returned without one of its own"
        );
    }
}
