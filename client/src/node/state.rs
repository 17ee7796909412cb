//! The node state file: what this node mounted, so a restarted agent (or
//! the next `berth volume mount`/`unmount`) knows it.
//!
//! It lives at `<mount root>/.berth/node.json`, is replaced atomically
//! (written to a temporary file, fsynced, renamed over the old one, and the
//! directory fsynced), and is only read or written under an exclusive
//! `flock` of `<mount root>/.berth/node.lock`, so the CLI and a plugin on
//! the same node never interleave their steps.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use super::NodeError;

/// The version written in the file; a newer file is refused, not guessed at.
pub const STATE_VERSION: u32 = 1;

/// Everything this node has mounted, keyed by `service/name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    /// The file format's version ([`STATE_VERSION`]).
    pub version: u32,
    /// One entry per volume that is (or is being) attached and mounted here.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeState>,
}

/// One volume on this node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeState {
    /// The service holding it.
    pub service: String,
    /// Its name in the service.
    pub name: String,
    /// The instance it is attached to.
    pub instance: String,
    /// The driver that serves it (`vfs`, `image`), once attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The attachment's device (a directory or an image file), once attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The block device made for it (`/dev/loop3`, `/dev/nbd0`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// The node socket of its CSI plugin (`csi` services), once attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi_endpoint: Option<String>,
    /// Where its filesystem is mounted once for all its paths (images, and
    /// CSI plugins that stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<PathBuf>,
    /// The paths it is (or is being) mounted at.
    #[serde(default)]
    pub paths: BTreeMap<PathBuf, PathState>,
}

/// One path a volume is mounted at.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathState {
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Who holds this mount (e.g. Docker's mount request IDs); the path is
    /// unmounted when the last holder lets go. Empty for a plain mount.
    #[serde(default)]
    pub holders: BTreeSet<String>,
}

/// The key of a volume in [`NodeState::volumes`].
pub fn key(service: &str, name: &str) -> String {
    format!("{service}/{name}")
}

/// The hidden directory under the mount root holding the state file, its
/// lock and the staging mounts.
pub fn meta_dir(root: &Path) -> PathBuf {
    root.join(".berth")
}

fn state_path(root: &Path) -> PathBuf {
    meta_dir(root).join("node.json")
}

/// Creates a directory and its parents (0755 for what it creates).
pub fn make_dir(dir: &Path) -> Result<(), NodeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| NodeError::io(format!("creating {}", dir.display()), source))
}

/// An exclusive hold on the node state; released on drop.
pub struct StateLock {
    file: fs::File,
    root: PathBuf,
}

impl StateLock {
    /// Takes the lock, waiting at most `wait` for another agent to let go.
    pub fn acquire(root: &Path, wait: Duration) -> Result<Self, NodeError> {
        let dir = meta_dir(root);
        make_dir(&dir)?;
        let path = dir.join("node.lock");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| NodeError::io(format!("opening {}", path.display()), source))?;
        let deadline = Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    return Ok(Self {
                        file,
                        root: root.to_owned(),
                    })
                }
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(NodeError::Locked { path, waited: wait })
                }
                Err(e) => {
                    return Err(NodeError::io(
                        format!("locking {}", path.display()),
                        e.into(),
                    ))
                }
            }
        }
    }

    /// Reads the state (empty when there is no file yet).
    pub fn load(&self) -> Result<NodeState, NodeError> {
        let path = state_path(&self.root);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(NodeState {
                    version: STATE_VERSION,
                    ..Default::default()
                })
            }
            Err(source) => {
                return Err(NodeError::io(format!("reading {}", path.display()), source))
            }
        };
        let state: NodeState = serde_json::from_str(&text).map_err(|e| NodeError::BadState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if state.version > STATE_VERSION {
            return Err(NodeError::BadState {
                path,
                message: format!(
                    "written by a newer berth (version {}, this one knows {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    /// Replaces the state atomically: temporary file, fsync, rename, fsync
    /// of the directory.
    pub fn save(&self, state: &NodeState) -> Result<(), NodeError> {
        let dir = meta_dir(&self.root);
        let path = state_path(&self.root);
        let tmp = dir.join(format!("node.json.{}.tmp", std::process::id()));
        let io = |what: &str, source| NodeError::io(format!("{what} {}", tmp.display()), source);
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| NodeError::BadState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("creating", e))?;
        file.write_all(&bytes).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        drop(file);
        fs::rename(&tmp, &path)
            .map_err(|e| NodeError::io(format!("replacing {}", path.display()), e))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| NodeError::io(format!("syncing {}", dir.display()), e))?;
        Ok(())
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = StateLock::acquire(dir.path(), Duration::from_secs(1)).expect("lock");
        assert!(lock.load().expect("empty").volumes.is_empty());
        let mut state = lock.load().expect("load");
        let mut v = VolumeState {
            service: "s".into(),
            name: "v".into(),
            instance: "i".into(),
            ..Default::default()
        };
        v.paths.insert(
            "/mnt/x".into(),
            PathState {
                read_only: true,
                holders: ["a".to_owned()].into(),
            },
        );
        state.volumes.insert(key("s", "v"), v);
        lock.save(&state).expect("save");
        assert_eq!(lock.load().expect("reload"), state);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(meta_dir(dir.path()))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_second_holder_waits_then_gives_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = StateLock::acquire(dir.path(), Duration::from_secs(1)).expect("lock");
        let err = StateLock::acquire(dir.path(), Duration::from_millis(100))
            .err()
            .expect("second lock must wait and fail");
        assert!(matches!(err, NodeError::Locked { .. }), "{err}");
    }

    #[test]
    fn a_corrupt_or_newer_file_is_refused_not_guessed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = StateLock::acquire(dir.path(), Duration::from_secs(1)).expect("lock");
        fs::write(state_path(dir.path()), "{ not json").expect("write");
        assert!(matches!(lock.load(), Err(NodeError::BadState { .. })));
        fs::write(state_path(dir.path()), r#"{"version": 99, "volumes": {}}"#).expect("write");
        let err = lock.load().expect_err("newer");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
