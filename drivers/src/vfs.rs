//! The `vfs` driver: each volume is a real directory under a root.
//!
//! Options: `root` (required), the directory holding the volumes. Per-volume
//! option: `mode`, the octal permissions of the volume directory (default
//! `0755`). The size is recorded as a quota hint; it is not enforced.
//!
//! Layout under `root`:
//!
//! ```text
//! <root>/<name>/                   the volume's data
//! <root>/.berth/volumes/<name>     its metadata (`size_bytes=N`); a volume
//!                                  exists exactly when this file does
//! <root>/.berth/trash/             volumes being deleted
//! ```
//!
//! Volume names never start with `.`, so `.berth` cannot collide with one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::{
    Capabilities, CreateRequest, DriverError, DriverOptions, DriverResult, DriverVolume,
    VolumeDriver, VolumeName,
};

/// The name the `vfs` driver is registered under.
pub const DRIVER_NAME: &str = "vfs";

const DEFAULT_MODE: u32 = 0o755;

/// Volumes as directories under a root.
#[derive(Debug, Clone)]
pub struct VfsDriver {
    inner: Arc<Layout>,
}

#[derive(Debug)]
struct Layout {
    root: PathBuf,
    meta: PathBuf,
    trash: PathBuf,
}

impl VfsDriver {
    /// Opens (creating if needed) a `vfs` store rooted at `root`, and finishes
    /// any delete a crash interrupted.
    pub fn open(root: impl Into<PathBuf>) -> DriverResult<Self> {
        let root = root.into();
        let layout = Layout {
            meta: root.join(".berth").join("volumes"),
            trash: root.join(".berth").join("trash"),
            root,
        };
        for dir in [&layout.root, &layout.meta, &layout.trash] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
        }
        layout.empty_trash();
        Ok(Self {
            inner: Arc::new(layout),
        })
    }

    /// Builds the driver from a service's options (`root`).
    pub fn from_options(options: &DriverOptions) -> DriverResult<Self> {
        options.only(&["root"])?;
        let root = options.require("root")?;
        if root.is_empty() {
            return Err(DriverError::InvalidOption {
                option: "root".into(),
                reason: "must be a directory path, not empty".into(),
            });
        }
        Self::open(root)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T, F>(&self, f: F) -> DriverResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Layout) -> DriverResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| DriverError::Internal(format!("vfs worker failed: {e}")))?
    }
}

impl Layout {
    /// `dir/<name>`, refusing anything that is not exactly one normal
    /// component below `dir` (the second wall behind name validation).
    fn child(dir: &Path, name: &str) -> DriverResult<PathBuf> {
        let mut components = Path::new(name).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(c)), None) if c == name && !name.starts_with('.') => {
                Ok(dir.join(name))
            }
            _ => Err(DriverError::InvalidArgument(format!(
                "refusing volume name {name:?}: it would leave {}",
                dir.display()
            ))),
        }
    }

    fn data_path(&self, name: &VolumeName) -> DriverResult<PathBuf> {
        Self::child(&self.root, name.as_str())
    }

    fn meta_path(&self, name: &VolumeName) -> DriverResult<PathBuf> {
        Self::child(&self.meta, name.as_str())
    }

    fn read_meta(&self, name: &VolumeName) -> DriverResult<Option<u64>> {
        let path = self.meta_path(name)?;
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DriverError::io(format!("reading {}", path.display()), e)),
        };
        text.trim()
            .strip_prefix("size_bytes=")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                DriverError::Internal(format!(
                    "volume metadata {} is corrupt (expected `size_bytes=N`)",
                    path.display()
                ))
            })
    }

    fn volume(&self, name: &VolumeName, size_bytes: u64) -> DriverResult<DriverVolume> {
        let path = self.data_path(name)?;
        Ok(DriverVolume {
            name: name.clone(),
            size_bytes,
            fields: BTreeMap::from([("path".to_owned(), path.display().to_string())]),
        })
    }

    fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        let mode = parse_mode(&request.options)?;
        if let Some(size) = self.read_meta(&request.name)? {
            if size == request.size_bytes {
                return self.volume(&request.name, size);
            }
            return Err(DriverError::AlreadyExists(format!(
                "volume {} already exists with size {size} bytes, not {}",
                request.name, request.size_bytes
            )));
        }
        let data = self.data_path(&request.name)?;
        // A directory without metadata is a create that a crash interrupted
        // before it was acknowledged: adopt it.
        match fs::DirBuilder::new().mode(mode).create(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && data.is_dir() => {}
            Err(e) => return Err(DriverError::io(format!("creating {}", data.display()), e)),
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(mode))
            .map_err(|e| DriverError::io(format!("setting the mode of {}", data.display()), e))?;
        sync_dir(&self.root)?;
        write_atomic(
            &self.meta_path(&request.name)?,
            format!("size_bytes={}\n", request.size_bytes).as_bytes(),
        )?;
        self.volume(&request.name, request.size_bytes)
    }

    fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        let data = self.data_path(name)?;
        if data.exists() {
            // Move the data out of sight first, so a crash never leaves a
            // half-deleted directory that a later create would adopt.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let doomed = self.trash.join(format!("{name}.{nanos}"));
            fs::rename(&data, &doomed).map_err(|e| {
                DriverError::io(
                    format!("moving {} to {}", data.display(), doomed.display()),
                    e,
                )
            })?;
            sync_dir(&self.root)?;
            sync_dir(&self.trash)?;
        }
        let meta = self.meta_path(name)?;
        match fs::remove_file(&meta) {
            Ok(()) => sync_dir(&self.meta)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::io(format!("removing {}", meta.display()), e)),
        }
        self.empty_trash();
        Ok(())
    }

    fn list(&self) -> DriverResult<Vec<DriverVolume>> {
        let entries = fs::read_dir(&self.meta)
            .map_err(|e| DriverError::io(format!("listing {}", self.meta.display()), e))?;
        let mut volumes = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| DriverError::io(format!("listing {}", self.meta.display()), e))?;
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| VolumeName::parse(n).ok())
            else {
                continue; // temporary files and strays
            };
            if let Some(size) = self.read_meta(&name)? {
                volumes.push(self.volume(&name, size)?);
            }
        }
        Ok(volumes)
    }

    /// Best effort: what fails to go now goes at the next delete or start.
    fn empty_trash(&self) {
        let Ok(entries) = fs::read_dir(&self.trash) else {
            return;
        };
        for entry in entries.flatten() {
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not empty vfs trash");
            }
        }
    }
}

fn parse_mode(options: &BTreeMap<String, String>) -> DriverResult<u32> {
    if let Some(unknown) = options.keys().find(|k| k.as_str() != "mode") {
        return Err(DriverError::InvalidArgument(format!(
            "the vfs driver has no volume option {unknown:?} (known: mode)"
        )));
    }
    match options.get("mode") {
        None => Ok(DEFAULT_MODE),
        Some(text) => u32::from_str_radix(text, 8)
            .ok()
            .filter(|mode| *mode <= 0o7777)
            .ok_or_else(|| {
                DriverError::InvalidArgument(format!(
                    "option mode={text:?} is not an octal permission such as 0750"
                ))
            }),
    }
}

/// Writes `bytes` to `path` so that after a crash the file holds either its
/// old contents or all of the new ones.
fn write_atomic(path: &Path, bytes: &[u8]) -> DriverResult<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| DriverError::io(format!("writing {}", path.display()), e))?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> DriverResult<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DriverError::io(format!("syncing directory {}", dir.display()), e))
}

#[async_trait]
impl VolumeDriver for VfsDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn create(&self, request: &CreateRequest) -> DriverResult<DriverVolume> {
        let request = request.clone();
        self.blocking(move |l| l.create(&request)).await
    }

    async fn delete(&self, name: &VolumeName) -> DriverResult<()> {
        let name = name.clone();
        self.blocking(move |l| l.delete(&name)).await
    }

    async fn get(&self, name: &VolumeName) -> DriverResult<Option<DriverVolume>> {
        let name = name.clone();
        self.blocking(move |l| match l.read_meta(&name)? {
            Some(size) => l.volume(&name, size).map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn list(&self) -> DriverResult<Vec<DriverVolume>> {
        self.blocking(|l| l.list()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, size: u64) -> CreateRequest {
        CreateRequest {
            name: VolumeName::parse(name).expect("valid name"),
            size_bytes: size,
            options: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn volumes_are_directories_and_delete_removes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = VfsDriver::open(dir.path()).expect("open");
        let v = driver.create(&request("data", 10)).await.expect("create");
        assert_eq!(
            v.fields["path"],
            dir.path().join("data").display().to_string()
        );
        assert!(dir.path().join("data").is_dir());
        fs::write(dir.path().join("data/file"), b"x").expect("write");

        // Same parameters: the same volume; different: AlreadyExists.
        assert_eq!(driver.create(&request("data", 10)).await.expect("again"), v);
        assert!(matches!(
            driver.create(&request("data", 11)).await,
            Err(DriverError::AlreadyExists(_))
        ));

        driver.delete(&v.name).await.expect("delete");
        assert!(!dir.path().join("data").exists());
        assert_eq!(driver.get(&v.name).await.expect("get"), None);
        driver
            .delete(&v.name)
            .await
            .expect("delete of a missing volume is ok");
    }

    #[test]
    fn paths_never_leave_the_root() {
        let root = Path::new("/r");
        for bad in ["..", ".", "a/b", "/etc", ".berth", ""] {
            assert!(Layout::child(root, bad).is_err(), "{bad:?}");
        }
        assert_eq!(Layout::child(root, "ok").expect("ok"), root.join("ok"));
    }

    #[tokio::test]
    async fn bad_mode_is_refused_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = VfsDriver::open(dir.path()).expect("open");
        let mut req = request("m", 0);
        req.options.insert("mode".into(), "999".into());
        assert!(matches!(
            driver.create(&req).await,
            Err(DriverError::InvalidArgument(_))
        ));
        assert!(!dir.path().join("m").exists());
    }
}
