//! The directories every file-backed driver keeps under its root, and the
//! blocking pool its file work runs on.
//!
//! ```text
//! <root>/.berth/volumes/        one metadata file per volume
//! <root>/.berth/snapshots/      snapshot data
//! <root>/.berth/snapshot-meta/  one metadata file per snapshot
//! <root>/.berth/staging/        data being made
//! <root>/.berth/trash/          data being deleted
//! ```

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::file::durable::remove_temporaries;
use crate::{DriverError, DriverResult};

/// The directories of a file-backed driver.
#[derive(Debug)]
pub(crate) struct Dirs {
    /// Where the volumes' data lives.
    pub(crate) root: PathBuf,
    /// Volume metadata files.
    pub(crate) meta: PathBuf,
    /// Snapshot data.
    pub(crate) snapshots: PathBuf,
    /// Snapshot metadata files.
    pub(crate) snapshot_meta: PathBuf,
    /// Data being made, renamed into place when complete.
    pub(crate) staging: PathBuf,
    /// Data being deleted, moved out of sight first.
    pub(crate) trash: PathBuf,
}

/// Refuses a `root` option that cannot be a driver's root, creating
/// nothing: empty, or naming something that exists and is not a directory.
pub(crate) fn check_root(root: &str) -> DriverResult<()> {
    let bad = |reason: String| {
        Err(crate::DriverError::InvalidOption {
            option: "root".into(),
            reason,
        })
    };
    if root.is_empty() {
        return bad("must be a directory path, not empty".into());
    }
    match fs::metadata(root) {
        Ok(meta) if !meta.is_dir() => bad(format!(
            "{} exists and is not a directory; name a directory (it is created if missing)",
            crate::echo(root)
        )),
        _ => Ok(()),
    }
}

impl Dirs {
    /// Creates (mode 0700, if missing) `root` and its hidden directories,
    /// and removes the temporary files of interrupted metadata writes.
    /// Emptying staging and trash is the driver's: what is in them differs.
    pub(crate) fn create(root: PathBuf) -> DriverResult<Self> {
        let hidden = root.join(".berth");
        let dirs = Self {
            meta: hidden.join("volumes"),
            snapshots: hidden.join("snapshots"),
            snapshot_meta: hidden.join("snapshot-meta"),
            staging: hidden.join("staging"),
            trash: hidden.join("trash"),
            root,
        };
        for dir in [
            &dirs.root,
            &dirs.meta,
            &dirs.snapshots,
            &dirs.snapshot_meta,
            &dirs.staging,
            &dirs.trash,
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
        }
        remove_temporaries(&dirs.meta);
        remove_temporaries(&dirs.snapshot_meta);
        Ok(dirs)
    }
}

/// Runs `f` on the blocking pool with the driver's state: file work never
/// holds up the async workers. `driver` names it if the task fails.
pub(crate) async fn blocking<S, T, F>(driver: &str, state: &Arc<S>, f: F) -> DriverResult<T>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> DriverResult<T> + Send + 'static,
{
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| DriverError::Internal(format!("{driver} worker failed: {e}")))?
}
